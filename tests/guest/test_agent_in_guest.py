"""The guest agent inside a real Linux guest (Debian cloud kernel + busybox initramfs, QEMU TCG),
driven over the virtio-serial port's chardev socket with the qemu-ga protocol.

Every test runs once per agent and transport: Debian's qemu-ga (the reference) and virtagent (when
VIRTAGENT_BIN names a static binary), over virtio-pci (-M pc) and virtio-mmio described in ACPI
(-M microvm,acpi=on, as vmm does it). The guest boots once per configuration; test_shutdown must stay the
last test here.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time

import pytest

from guest_vm import BootedGuest, rootfs_file
from guest_qga import QgaError

EXEC_TIMEOUT = 30.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def run(booted: BootedGuest, path: str, args: list[str], stdin: bytes | None = None):
    """guest-exec with captured output, then poll guest-exec-status until the process exited."""
    qga = booted.qga
    arguments = {"path": path, "arg": args, "capture-output": True}
    if stdin is not None:
        arguments["input-data"] = b64(stdin)
    pid = qga.execute("guest-exec", arguments)["pid"]
    assert isinstance(pid, int) and pid > 0
    end = time.monotonic() + EXEC_TIMEOUT
    while True:
        status = qga.execute("guest-exec-status", {"pid": pid})
        if status["exited"]:
            return status
        if time.monotonic() > end:
            raise AssertionError(f"{path} {args} still running after {EXEC_TIMEOUT:.0f} s: {status}\n"
                                 f"--- guest console (tail) ---\n{booted.guest.console_tail()}")
        time.sleep(0.05)


def test_port_is_on_the_expected_transport(booted):
    """The agent's port hangs off virtio-pci, or off a virtio-mmio device found through ACPI."""
    status = run(booted, "/bin/sh", ["-c", "readlink -f /dev/virtio-ports/org.qemu.guest_agent.0; "
                                     "readlink -f /sys/class/virtio-ports/$(basename $(readlink "
                                     "/dev/virtio-ports/org.qemu.guest_agent.0))"])
    dev, sysfs = unb64(status["out-data"]).decode().split()
    assert dev.startswith("/dev/vport")
    expected = {"pci": "/sys/devices/pci0000:00/", "mmio": "/sys/devices/platform/LNRO0005:"}
    assert sysfs.startswith(expected[booted.guest.transport]), sysfs


def test_ping(booted):
    assert booted.qga.execute("guest-ping") == {}


def test_info(booted):
    info = booted.qga.execute("guest-info")
    assert isinstance(info["version"], str) and info["version"]
    commands = {c["name"]: c for c in info["supported_commands"]}
    for name in ["guest-ping", "guest-info", "guest-sync-delimited", "guest-exec", "guest-exec-status",
                 "guest-file-open", "guest-file-read", "guest-file-write", "guest-file-seek",
                 "guest-file-close", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw",
                 "guest-fsfreeze-status", "guest-shutdown", "guest-get-time", "guest-set-time",
                 "guest-get-osinfo", "guest-get-host-name", "guest-network-get-interfaces"]:
        assert name in commands, f"{name} missing from guest-info"
        assert commands[name]["enabled"] is True, name
    assert commands["guest-shutdown"]["success-response"] is False
    assert commands["guest-ping"]["success-response"] is True


def test_osinfo(booted):
    osinfo = booted.qga.execute("guest-get-osinfo")
    os_release = dict(line.split("=", 1) for line in rootfs_file("etc/os-release").splitlines() if line)
    assert osinfo["kernel-release"] == booted.image.kernel_release
    assert osinfo["machine"] == "x86_64"
    assert osinfo["id"] == os_release["ID"]
    assert osinfo["pretty-name"] == os_release["PRETTY_NAME"].strip('"')
    assert "Debian" in osinfo["kernel-version"]


def test_host_name(booted):
    expected = rootfs_file("etc/hostname").strip()
    assert booted.qga.execute("guest-get-host-name") == {"host-name": expected}


def test_exec_captures_output_and_status(booted):
    status = run(booted, "/bin/sh", ["-c", "cat; echo err >&2; exit 3"], stdin=b"input\x00\xffdata\n")
    assert status["exitcode"] == 3
    assert unb64(status["out-data"]) == b"input\x00\xffdata\n"
    assert unb64(status["err-data"]) == b"err\n"
    assert not status.get("out-truncated") and not status.get("err-truncated")
    # The guest is a real Linux: the kernel the agent sees is the one the image was built with.
    status = run(booted, "/bin/uname", ["-r"])
    assert status["exitcode"] == 0
    assert unb64(status["out-data"]).decode().strip() == booted.image.kernel_release


def test_file_round_trip(booted):
    qga = booted.qga
    payload = bytes(range(256)) * 3 + os.urandom(3000)
    path = "/tmp/qga-round-trip.bin"
    handle = qga.execute("guest-file-open", {"path": path, "mode": "w+"})
    assert isinstance(handle, int)
    try:
        written = qga.execute("guest-file-write", {"handle": handle, "buf-b64": b64(payload)})
        assert written["count"] == len(payload)
        assert qga.execute("guest-file-seek", {"handle": handle, "offset": 0, "whence": "set"}) == \
            {"position": 0, "eof": False}
        got = qga.execute("guest-file-read", {"handle": handle, "count": len(payload) + 100})
        assert got["count"] == len(payload)
        assert unb64(got["buf-b64"]) == payload
        assert got["eof"] is True
        seek = qga.execute("guest-file-seek", {"handle": handle, "offset": 100, "whence": "set"})
        assert seek["position"] == 100
        part = qga.execute("guest-file-read", {"handle": handle, "count": 7})
        assert unb64(part["buf-b64"]) == payload[100:107] and part["count"] == 7
        seek = qga.execute("guest-file-seek", {"handle": handle, "offset": 3, "whence": "cur"})
        assert seek["position"] == 110
        seek = qga.execute("guest-file-seek", {"handle": handle, "offset": -5, "whence": "end"})
        assert seek["position"] == len(payload) - 5
        tail = qga.execute("guest-file-read", {"handle": handle, "count": 100})
        assert unb64(tail["buf-b64"]) == payload[-5:]
    finally:
        assert qga.execute("guest-file-close", {"handle": handle}) == {}
    with pytest.raises(QgaError) as err:
        qga.execute("guest-file-read", {"handle": handle})
    assert err.value.cls == "GenericError"
    # The bytes really are in the guest's file: check with the guest's own tools.
    status = run(booted, "/bin/sh", ["-c", f"wc -c < {path}; sha256sum {path}"])
    size, digest = unb64(status["out-data"]).decode().split("\n")[:2]
    assert int(size) == len(payload)
    assert digest.split()[0] == hashlib.sha256(payload).hexdigest()


def test_network_interfaces(booted):
    interfaces = {i["name"]: i for i in booted.qga.execute("guest-network-get-interfaces")}
    assert "lo" in interfaces, interfaces
    addresses = {(a["ip-address"], a["ip-address-type"], a["prefix"])
                 for a in interfaces["lo"].get("ip-addresses", [])}
    assert ("127.0.0.1", "ipv4", 8) in addresses


def test_get_time(booted):
    guest_ns = booted.qga.execute("guest-get-time")
    assert isinstance(guest_ns, int)
    # The guest's clock starts from the emulated RTC, which QEMU sets from the host's UTC clock.
    assert abs(guest_ns - time.time_ns()) < 30 * 10**9


def test_set_time(booted):
    qga = booted.qga
    target = 2_000_000_000 * 10**9  # 2033-05-18
    try:
        assert qga.execute("guest-set-time", {"time": target}) == {}
        now = qga.execute("guest-get-time")
        assert target <= now < target + 30 * 10**9
        status = run(booted, "/bin/date", ["-u", "+%Y"])
        assert unb64(status["out-data"]).decode().strip() == "2033"
    finally:
        assert qga.execute("guest-set-time", {"time": time.time_ns()}) == {}
    assert abs(qga.execute("guest-get-time") - time.time_ns()) < 30 * 10**9


def test_fsfreeze_real_ext4(booted):
    qga = booted.qga
    mounts = unb64(run(booted, "/bin/cat", ["/proc/mounts"])["out-data"]).decode()
    assert any(line.split()[1:3] == ["/mnt/test", "ext4"] for line in mounts.splitlines()), mounts
    assert qga.execute("guest-fsfreeze-status") == "thawed"
    frozen = qga.execute("guest-fsfreeze-freeze")
    try:
        assert isinstance(frozen, int) and frozen >= 1
        assert qga.execute("guest-fsfreeze-status") == "frozen"
        with pytest.raises(QgaError) as err:
            qga.execute("guest-file-open", {"path": "/mnt/test/while-frozen", "mode": "w"})
        assert err.value.cls == "CommandNotFound"
        with pytest.raises(QgaError) as err:
            qga.execute("guest-exec", {"path": "/bin/true"})
        assert err.value.cls == "CommandNotFound"
        assert qga.execute("guest-ping") == {}
    finally:
        thawed = qga.execute("guest-fsfreeze-thaw")
    assert thawed == frozen
    assert qga.execute("guest-fsfreeze-status") == "thawed"
    # Writable again after the thaw.
    handle = qga.execute("guest-file-open", {"path": "/mnt/test/after-thaw", "mode": "w"})
    assert qga.execute("guest-file-write", {"handle": handle, "buf-b64": b64(b"thawed\n")})["count"] == 7
    assert qga.execute("guest-file-close", {"handle": handle}) == {}
    status = run(booted, "/bin/sh", ["-c", "sync && cat /mnt/test/after-thaw"])
    assert unb64(status["out-data"]) == b"thawed\n"


def test_agent_restarted_after_it_dies(booted):
    """The image's init restarts a dead agent; the host resyncs on the same chardev connection."""
    qga, guest = booted.qga, booted.guest
    marker = f"VIRTAGENT-GUEST-READY agent={guest.agent}"
    starts = guest.console().count(marker)
    qga.execute("guest-exec", {"path": "/bin/sh",
                               "arg": ["-c", f"sleep 0.2; kill -9 $(pidof {guest.agent})"]})
    guest.wait_console(marker, timeout=60, count=starts + 1)
    assert f"agent {guest.agent} exited" in guest.console()
    qga.sync(timeout=60)
    assert qga.execute("guest-ping") == {}


def shadow_entry(booted: BootedGuest, user: str = "root") -> list[str]:
    """The user's /etc/shadow fields, read inside the guest with guest-file-read."""
    qga = booted.qga
    handle = qga.execute("guest-file-open", {"path": "/etc/shadow", "mode": "r"})
    try:
        text = unb64(qga.execute("guest-file-read", {"handle": handle, "count": 65536})["buf-b64"])
    finally:
        assert qga.execute("guest-file-close", {"handle": handle}) == {}
    for line in text.decode().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields
    raise AssertionError(f"no {user} in the guest's /etc/shadow:\n{text.decode()}")


def test_set_user_password(booted):
    """guest-set-user-password runs the guest's chpasswd (Debian's, with PAM's pam_unix for plain
    passwords and -e for crypted ones); the new hash lands in the guest's /etc/shadow."""
    qga = booted.qga
    before = shadow_entry(booted)
    password = "virt Agent-1 \u00e9"
    assert qga.execute("guest-set-user-password", {
        "username": "root", "password": b64(password.encode()), "crypted": False}) == {}
    plain = shadow_entry(booted)
    assert plain[1] != before[1]
    assert plain[1].startswith("$6$"), plain  # SHA-512, as etc/pam.d/chpasswd asks
    # The stored hash is the password's: the guest's busybox mkpasswd (its own SHA-512 crypt) agrees.
    salt = plain[1].split("$")[2]
    again = run(booted, "/bin/busybox", ["mkpasswd", "-m", "sha512", password, salt])
    assert unb64(again["out-data"]).decode().strip() == plain[1]
    days = int(unb64(run(booted, "/bin/sh", ["-c", "echo $(( $(date +%s) / 86400 ))"])["out-data"]))
    assert int(plain[2]) == days, plain  # date of last change updated by chpasswd

    # crypt("another secret", "$6$virtagentsalt$")
    hashed = ("$6$virtagentsalt$sR2MntuM3BX5aMsvc7d9eCbzxZ5yZ.YLiw0BhdnyDRWfW7/eiysgDHyrBPozzAhMxrJr"
              "FOzfrLq6mpxaLh/7j0")
    assert qga.execute("guest-set-user-password", {
        "username": "root", "password": b64(hashed.encode()), "crypted": True}) == {}
    assert shadow_entry(booted)[1] == hashed, "a crypted password is stored verbatim"

    with pytest.raises(QgaError) as err:
        qga.execute("guest-set-user-password", {
            "username": "nosuchuser", "password": b64(b"x"), "crypted": False})
    assert err.value.cls == "GenericError"
    assert shadow_entry(booted)[1] == hashed
    mode = unb64(run(booted, "/bin/stat", ["-c", "%a", "/etc/shadow"])["out-data"]).decode().strip()
    assert mode == "640", "chpasswd keeps /etc/shadow private"


def test_shutdown(booted):
    """Last test of the module: guest-shutdown sends no reply, the guest powers off, QEMU exits."""
    qga, guest = booted.qga, booted.guest
    qga.send("guest-shutdown", req_id="shutdown")
    sent = time.monotonic()
    rest = qga.read_until_eof(timeout=60)
    assert rest is not None, f"agent socket still open 60 s after guest-shutdown\n{guest.console_tail()}"
    assert rest == b"", f"guest-shutdown must not reply, got {rest!r}"
    assert guest.wait_exit(timeout=30) == 0
    assert "reboot: Power down" in guest.console()
    print(f"\n{guest.agent}: QEMU exited {time.monotonic() - sent:.2f} s after guest-shutdown")
