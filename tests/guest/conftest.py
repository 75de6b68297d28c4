"""Fixtures that build the guest image (tests/guest-image/build.sh) and boot it under QEMU TCG with
the agent's virtio-serial port on a chardev socket the tests talk to directly."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guest_vm import (  # noqa: E402
    BOOT_TIMEOUT, QEMU, READY_MARKER, TRANSPORTS, BootedGuest, BuildError, Guest, Image, build_image,
)


@pytest.fixture(scope="session")
def qemu() -> str:
    """Skips (with the reason) where QEMU is not installed."""
    path = shutil.which(QEMU)
    if path is None:
        pytest.skip(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    return path


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> Image:
    """The guest image every test of the session boots (with virtagent when VIRTAGENT_BIN is set)."""
    staged = None
    agent = os.environ.get("VIRTAGENT_BIN")
    if agent:
        src = Path(agent)
        if not src.is_file():
            pytest.fail(f"VIRTAGENT_BIN={agent} does not exist")
        # The image names each agent after its file name; the init selects it with agent=virtagent.
        staged = tmp_path_factory.mktemp("agent") / "virtagent"
        shutil.copy(src, staged)
    try:
        return build_image(staged)
    except BuildError as e:
        pytest.fail(str(e))


AGENTS = ["qemu-ga", "virtagent"]
CONFIGS = [(agent, transport) for agent in AGENTS for transport in TRANSPORTS]


@pytest.fixture(scope="module", params=CONFIGS, ids=[f"{a}-{t}" for a, t in CONFIGS])
def booted(request, qemu, image, tmp_path_factory) -> BootedGuest:
    """A guest booted once per agent and transport (module scope), the agent already synced."""
    agent, transport = request.param
    if agent == "virtagent" and not os.environ.get("VIRTAGENT_BIN"):
        pytest.skip("VIRTAGENT_BIN is not set (path of a statically linked virtagent binary)")
    guest = Guest(image, agent, transport, tmp_path_factory.mktemp(f"guest-{agent}-{transport}"))
    try:
        guest.wait_console(f"{READY_MARKER} agent={agent}", BOOT_TIMEOUT)
        qga = guest.connect()
        qga.sync(timeout=60)
        guest.ready_after = time.monotonic() - guest.started
        print(f"\n{agent} over virtio-{transport}: guest booted and agent synced in "
              f"{guest.ready_after:.2f} s")
        yield BootedGuest(guest, qga, image)
        qga.close()
    finally:
        guest.stop()
