"""The same initramfs under Debian's User-Mode Linux kernel (the frontend of the project's vhost-user
tests): it boots, loads the UML build's own modules, mounts the ext4 test filesystem, keeps the agent
waiting (with a clear message) for a port no one provides here, and powers off cleanly."""

from __future__ import annotations

from guest_vm import UmlGuest


def test_initramfs_boots_under_user_mode_linux(image, tmp_path):
    guest = UmlGuest(image, tmp_path)
    try:
        guest.wait_console("virtagent-guest: system started", timeout=120)
        console = guest.console()
        assert f"Linux version {image.uml_kernel_release}" in console
        assert "warning" not in console.split("Run /init as init process", 1)[1], guest.console_tail()
        assert "virtagent-guest: ext4 test filesystem mounted on /mnt/test" in console
        # No virtio-serial port without a vhost-user device: the agent runner says so and keeps trying.
        guest.wait_console("waiting for virtio-serial port /dev/virtio-ports/org.qemu.guest_agent.0",
                           timeout=60)
        guest.type("\n")
        guest.wait_console("built-in shell", timeout=30)
        guest.type("/sbin/shutdown -P +0 uml-test\n")
        assert guest.wait_exit(timeout=60) == 0
        console = guest.console()
        assert "virtagent-guest: shutdown: poweroff (-P +0 uml-test)" in console
        assert "EXT4-fs (loop0): unmounting filesystem" in console
    finally:
        guest.stop()
