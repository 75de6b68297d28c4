"""Drives the VMM's monitor with QEMU's own Python client library (qemu.qmp), unmodified.

Usage: qemu_qmp_client.py QMP_SOCKET
Exits non-zero with a message on the first mismatch; prints one line per check.
"""
import asyncio
import sys

from qemu.qmp import QMPClient, ExecuteError


async def main(sock: str) -> None:
    qmp = QMPClient("virtagent-test")
    await qmp.connect(sock)
    print("greeting:", qmp.greeting)
    assert qmp.greeting.QMP.version["qemu"]["major"] >= 1

    status = await qmp.execute("query-status")
    assert status["status"] == "running", status
    print("query-status:", status)

    ver = await qmp.execute("query-version")
    assert "qemu" in ver, ver

    # Guest commands are forwarded to the agent through the proxy.
    for _ in range(100):
        try:
            assert await qmp.execute("guest-ping") == {}
            break
        except ExecuteError:
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("guest-ping never succeeded")
    info = await qmp.execute("guest-info")
    names = {c["name"] for c in info["supported_commands"]}
    assert "guest-file-open" in names, names
    print("guest-info: version", info["version"], len(names), "commands")
    assert await qmp.execute("guest-sync", {"id": 1234}) == 1234

    # Errors from the agent and from the VMM arrive as ExecuteError with their class.
    try:
        await qmp.execute("guest-file-close", {"handle": 424242})
        raise AssertionError("expected an error")
    except ExecuteError as e:
        assert e.error_class == "GenericError", e
        print("agent error passed through:", e.error_class)
    try:
        await qmp.execute("no-such-command")
        raise AssertionError("expected an error")
    except ExecuteError as e:
        assert e.error_class == "CommandNotFound", e

    # Events: stop/cont produce STOP and RESUME.
    with qmp.listener() as listener:
        await qmp.execute("stop")
        await qmp.execute("cont")
        got = []
        async def collect():
            async for ev in listener:
                got.append(ev["event"])
                if "RESUME" in got:
                    return
        await asyncio.wait_for(collect(), 5)
        assert got[:2] == ["STOP", "RESUME"], got
        print("events:", got)

    await qmp.execute("quit")
    try:
        await qmp.disconnect()
    except EOFError:
        pass  # the VMM exits after `quit`, as QEMU does; the library reports the hang-up.
    print("qemu.qmp: all checks passed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
