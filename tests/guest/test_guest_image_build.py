"""tests/guest-image/build.sh: reproducible output, cached rebuilds, clear errors. No QEMU needed."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import time

import pytest

from guest_vm import BUILD


def build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BUILD), *args], capture_output=True, text=True, timeout=900)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_inputs_give_identical_bytes_and_skip_rebuild(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    first = build("--out", str(a))
    assert first.returncode == 0, first.stderr
    second = build("--out", str(b), "--force")
    assert second.returncode == 0, second.stderr
    for name in ["vmlinuz", "linux.uml", "initramfs.cpio.gz", "manifest.txt"]:
        assert sha(a / name) == sha(b / name), f"{name} differs between two builds of the same inputs"
    # newc archive, gzip without a name or timestamp in its header.
    raw = (a / "initramfs.cpio.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0" and not raw[3] & 0x08
    assert gzip.decompress(raw)[:6] == b"070701"

    mtime = (a / "initramfs.cpio.gz").stat().st_mtime_ns
    time.sleep(0.01)
    again = build("--out", str(a))
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stderr
    assert (a / "initramfs.cpio.gz").stat().st_mtime_ns == mtime

    manifest = (a / "manifest.txt").read_text()
    for key in ["kernel-release ", "package linux-image-cloud-amd64 ", "package busybox-static ",
                "package qemu-guest-agent ", "package user-mode-linux ", "uml-kernel-release ",
                "agent qemu-ga /usr/sbin/qemu-ga ", "modules-loaded ", "uml-modules-loaded "]:
        assert key in manifest, f"{key!r} missing from manifest:\n{manifest}"
    loaded = next(line for line in manifest.splitlines() if line.startswith("modules-loaded "))
    mods = loaded.split()[1:]
    # Dependencies before their users.
    assert mods.index("virtio") < mods.index("virtio_console")
    assert mods.index("virtio_ring") < mods.index("virtio_pci")
    assert {"virtio_mmio", "virtio_pci", "virtio_console"} <= set(mods)


def test_missing_agent_is_a_clear_error(tmp_path):
    res = build("--out", str(tmp_path), "--agent", str(tmp_path / "no-such-agent"))
    assert res.returncode != 0
    assert "no-such-agent' does not exist" in res.stderr


def test_unknown_argument_is_rejected(tmp_path):
    res = build("--bogus")
    assert res.returncode != 0
    assert "unknown argument '--bogus'" in res.stderr


def test_agent_with_a_missing_library_is_a_clear_error(tmp_path):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) to make a dynamically linked test binary")
    (tmp_path / "lib.c").write_text("int f(void) { return 1; }\n")
    (tmp_path / "main.c").write_text("int f(void);\nint main(void) { return f(); }\n")
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp_path / "libgone.so"), str(tmp_path / "lib.c")],
                   check=True)
    agent = tmp_path / "virtagent"
    subprocess.run([cc, "-o", str(agent), str(tmp_path / "main.c"), f"-L{tmp_path}", "-lgone",
                    f"-Wl,-rpath,{tmp_path}"], check=True)
    (tmp_path / "libgone.so").unlink()
    res = build("--out", str(tmp_path / "out"), "--agent", str(agent))
    assert res.returncode != 0
    assert "libraries of" in res.stderr and "libgone.so => not found" in res.stderr
    assert not (tmp_path / "out" / "initramfs.cpio.gz").exists()
