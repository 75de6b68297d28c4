"""The guest image and guests booted from it, for tests/guest (and any test that needs a real Linux
guest running an agent): build_image(), Image, Guest (QEMU TCG), UmlGuest (User-Mode Linux),
TRANSPORTS, rootfs_file()."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guest_qga import QgaClient

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tests" / "guest-image" / "build.sh"
ROOTFS = ROOT / "tests" / "guest-image" / "rootfs"
IMAGE_DIR = ROOT / ".cache" / "guest" / "tests"
QEMU = "qemu-system-x86_64"
READY_MARKER = "VIRTAGENT-GUEST-READY"
BOOT_TIMEOUT = float(os.environ.get("GUEST_BOOT_TIMEOUT", "120"))


@dataclass
class Image:
    kernel: Path
    initrd: Path
    manifest: dict[str, list[str]]

    @property
    def kernel_release(self) -> str:
        return self.manifest["kernel-release"][0]

    @property
    def uml_kernel(self) -> Path:
        return self.kernel.parent / "linux.uml"

    @property
    def uml_kernel_release(self) -> str:
        return self.manifest["uml-kernel-release"][0]


def _read_manifest(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, rest = line.partition(" ")
            out.setdefault(key, []).append(rest)
    return out


class BuildError(Exception):
    """build.sh failed; the message carries its stderr."""


def build_image(agent: Path | None = None, out: Path = IMAGE_DIR) -> Image:
    """Run tests/guest-image/build.sh (cached: a no-op when inputs are unchanged)."""
    cmd = [str(BUILD), "--out", str(out)]
    if agent is not None:
        cmd += ["--agent", str(agent)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise BuildError(f"guest image build failed ({' '.join(cmd)}):\n{res.stderr[-4000:]}")
    return Image(out / "vmlinuz", out / "initramfs.cpio.gz", _read_manifest(out / "manifest.txt"))


def _host_tsc_khz() -> str | None:
    """The host's CPU clock in kHz (QEMU TCG's guest TSC is the host's TSC)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return str(int(float(line.split(":")[1]) * 1000))
    except (OSError, ValueError, IndexError):
        pass
    return None


def _microvm_append() -> str:
    # microvm has neither HPET nor an ACPI PM timer. Under TCG on a loaded host the kernel's PIT
    # calibration of the TSC sometimes fails, and then boot hangs for good (no timer ticks; observed
    # in 3 of 8 boots here). Telling the kernel the TSC rate skips that calibration (8 of 8 boots).
    khz = _host_tsc_khz()
    return f" tsc_early_khz={khz}" if khz else ""


# How the virtio-serial device reaches the guest: QEMU arguments and kernel command line additions.
TRANSPORTS = {
    # virtio-pci on a PC; no default devices (no NIC, VGA or monitor).
    "pci": (["-M", "pc", "-nodefaults", "-serial", "stdio", "-device", "virtio-serial"], ""),
    # virtio-mmio described in ACPI (LNRO0005), the layout vmm uses. microvm needs its default
    # devices (with -nodefaults the boot hangs at TSC calibration).
    "mmio": (["-M", "microvm,acpi=on", "-device", "virtio-serial-device"], _microvm_append()),
}


class _Machine:
    """A guest process whose console (stdout) is captured in a file; bounded waits on it."""

    name = "guest"
    cmd: list[str]
    proc: subprocess.Popen
    console_path: Path

    def _spawn(self, stdin) -> None:
        self.started = time.monotonic()
        with open(self.console_path, "wb") as console:
            self.proc = subprocess.Popen(self.cmd, stdin=stdin, stdout=console,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console().splitlines()[-lines:])

    def _fail(self, what: str) -> AssertionError:
        return AssertionError(f"{what}\ncommand: {' '.join(self.cmd)}\n"
                              f"--- guest console (tail) ---\n{self.console_tail()}")

    def wait_console(self, marker: str, timeout: float, count: int = 1) -> None:
        """Wait until `marker` appeared `count` times on the console."""
        end = time.monotonic() + timeout
        while self.console().count(marker) < count:
            if self.proc.poll() is not None:
                raise self._fail(f"{self.name} exited (status {self.proc.returncode}) before the "
                                 f"console showed {marker!r}")
            if time.monotonic() > end:
                raise self._fail(f"no {marker!r} on the guest console within {timeout:.0f} s")
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._fail(f"{self.name} still running {timeout:.0f} s later") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Guest(_Machine):
    """One QEMU TCG guest; console on stdout (captured in a file), agent port on a unix socket."""

    name = "QEMU"

    def __init__(self, image: Image, agent: str, transport: str, workdir: Path):
        self.agent = agent
        self.transport = transport
        self.console_path = workdir / "console.log"
        self.sock_path = workdir / "qga.sock"
        self.qmp_path = workdir / "qmp.sock"
        self.cmd = [
            QEMU, "-accel", "tcg", "-m", "512", "-smp", "1", "-nographic", "-no-reboot",
            *TRANSPORTS[transport][0],
            "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", f"console=ttyS0 panic=-1 agent={agent}{TRANSPORTS[transport][1]}",
            "-chardev", f"socket,path={self.sock_path},server=on,wait=off,id=qga0",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ]
        self._spawn(subprocess.DEVNULL)
        self.ready_after: float | None = None

    def connect(self, timeout: float = 10.0) -> QgaClient:
        end = time.monotonic() + timeout
        while True:
            try:
                return QgaClient(str(self.sock_path), self.console_tail)
            except (FileNotFoundError, ConnectionRefusedError):
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise self._fail(f"cannot connect to the agent socket {self.sock_path}") from None
                time.sleep(0.05)

    def qmp(self, command: str, arguments: dict | None = None, timeout: float = 10.0) -> Any:
        """Run one command on QEMU's own QMP monitor (a fresh connection each time)."""
        end = time.monotonic() + timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(self.qmp_path))
            lines = _Lines(sock, end)
            greeting = lines.next()
            if greeting is None or "QMP" not in json.loads(greeting):
                raise self._fail(f"no QMP greeting on {self.qmp_path}")
            for name, args in (("qmp_capabilities", None), (command, arguments)):
                req: dict[str, Any] = {"execute": name}
                if args is not None:
                    req["arguments"] = args
                sock.sendall(json.dumps(req).encode() + b"\r\n")
                while True:
                    line = lines.next()
                    if line is None:
                        raise self._fail(f"no QMP reply to {name} within {timeout:.0f} s")
                    reply = json.loads(line)
                    if "event" in reply:
                        continue
                    if "error" in reply:
                        raise AssertionError(f"QMP {name}: {reply['error']}")
                    break
            return reply["return"]

class UmlGuest(_Machine):
    """The same initramfs under Debian's User-Mode Linux kernel (linux.uml from the build output); the
    console is stdin/stdout, so `type()` can drive the guest's shell. `extra` adds kernel arguments,
    e.g. virtio_uml.device=SOCKET:3 for a vhost-user virtio-console device."""

    name = "User-Mode Linux"

    def __init__(self, image: Image, workdir: Path, agent: str = "qemu-ga", extra: tuple[str, ...] = ()):
        self.console_path = workdir / "console.log"
        self.cmd = [str(image.uml_kernel), "mem=256M", f"initrd={image.initrd}", "con0=fd:0,fd:1",
                    "con=null", "ssl=null", "panic=-1", f"agent={agent}", *extra]
        self._spawn(subprocess.PIPE)

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        super().stop()


class _Lines:
    """CRLF/LF-terminated lines from a socket, bounded by a deadline."""

    def __init__(self, sock: socket.socket, end: float):
        self.sock, self.end, self.buf = sock, end, b""

    def next(self) -> str | None:
        while b"\n" not in self.buf:
            left = self.end - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


@dataclass
class BootedGuest:
    guest: Guest
    qga: QgaClient
    image: Image


def rootfs_file(relpath: str) -> str:
    """Contents of a file of the image's root filesystem overlay (expected values come from here)."""
    return (ROOTFS / relpath).read_text()
