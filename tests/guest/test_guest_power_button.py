"""The image reacts to the ACPI power button: QMP system_powerdown on QEMU's own monitor makes the
guest power off cleanly (busybox acpid -> /etc/acpi/PWRF/00000080 -> /sbin/shutdown), over both the
PC (ACPI fixed power button) and microvm (hardware-reduced ACPI, GED) machines."""

from __future__ import annotations

import time

import pytest

from guest_vm import BOOT_TIMEOUT, READY_MARKER, TRANSPORTS, Guest


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_system_powerdown_powers_the_guest_off(qemu, image, tmp_path, transport):
    guest = Guest(image, "qemu-ga", transport, tmp_path)
    try:
        guest.wait_console(f"{READY_MARKER} agent=qemu-ga", BOOT_TIMEOUT)
        assert guest.qmp("query-status")["status"] == "running"
        pressed = time.monotonic()
        assert guest.qmp("system_powerdown") == {}
        assert guest.wait_exit(timeout=60) == 0
        console = guest.console()
        assert "shutdown: poweroff (-P +0 ACPI power button)" in console
        assert "EXT4-fs (loop0): unmounting filesystem" in console
        assert "reboot: Power down" in console
        print(f"\n{transport}: QEMU exited {time.monotonic() - pressed:.2f} s after system_powerdown")
    finally:
        guest.stop()
