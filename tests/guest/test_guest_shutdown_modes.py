"""guest-shutdown mode=reboot and mode=halt inside a real guest, for both agents: the agent runs the
image's /sbin/shutdown (-r / -H), which reboots or halts the kernel. QEMU runs with -no-reboot, so a
reboot ends QEMU; a halted guest stays in QEMU with its CPU stopped and its agent silent."""

from __future__ import annotations

import os
import time

import pytest

from guest_qga import QgaTimeout
from guest_vm import BOOT_TIMEOUT, READY_MARKER, Guest

AGENTS = ["qemu-ga", "virtagent"]


def boot(image, agent: str, workdir) -> tuple[Guest, object]:
    if agent == "virtagent" and not os.environ.get("VIRTAGENT_BIN"):
        pytest.skip("VIRTAGENT_BIN is not set (path of a statically linked virtagent binary)")
    guest = Guest(image, agent, "pci", workdir)
    guest.wait_console(f"{READY_MARKER} agent={agent}", BOOT_TIMEOUT)
    qga = guest.connect()
    qga.sync(timeout=60)
    assert qga.execute("guest-ping") == {}
    return guest, qga


@pytest.mark.parametrize("agent", AGENTS)
def test_shutdown_reboot(qemu, image, tmp_path, agent):
    guest, qga = boot(image, agent, tmp_path)
    try:
        qga.send("guest-shutdown", {"mode": "reboot"}, req_id="reboot")
        sent = time.monotonic()
        rest = qga.read_until_eof(timeout=60)
        assert rest is not None, f"agent socket still open 60 s after reboot\n{guest.console_tail()}"
        assert rest == b"", f"guest-shutdown must not reply, got {rest!r}"
        # -no-reboot: the guest's reset ends QEMU (status 0).
        assert guest.wait_exit(timeout=30) == 0
        console = guest.console()
        assert "virtagent-guest: shutdown: reboot (" in console
        assert "reboot: Restarting system" in console
        assert "reboot: Power down" not in console and "System halted" not in console
        print(f"\n{agent}: QEMU exited {time.monotonic() - sent:.2f} s after guest-shutdown mode=reboot")
    finally:
        qga.close()
        guest.stop()


@pytest.mark.parametrize("agent", AGENTS)
def test_shutdown_halt(qemu, image, tmp_path, agent):
    guest, qga = boot(image, agent, tmp_path)
    try:
        qga.send("guest-shutdown", {"mode": "halt"}, req_id="halt")
        sent = time.monotonic()
        guest.wait_console("reboot: System halted", timeout=60)
        halted = time.monotonic() - sent
        console = guest.console()
        assert "virtagent-guest: shutdown: halt (" in console
        assert "reboot: Power down" not in console and "Restarting system" not in console
        # Halted, not powered off: QEMU is still there and answers on its monitor...
        assert guest.proc.poll() is None
        assert guest.qmp("query-status")["status"] == "running"
        time.sleep(2)
        assert guest.proc.poll() is None, "QEMU exited after a halt"
        # ... but nothing runs in the guest any more: the agent never answers again.
        assert qga.buf == b"", f"guest-shutdown must not reply, got {qga.buf!r}"
        with pytest.raises(QgaTimeout):
            qga.sync(timeout=5, attempt=5)
        assert guest.console().count("reboot: System halted") == 1
        print(f"\n{agent}: guest halted {halted:.2f} s after guest-shutdown mode=halt")
    finally:
        qga.close()
        guest.stop()
