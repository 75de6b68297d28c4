#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what is missing, builds what the tests
# boot (a static virtagent, the guest image from Debian's packages), then runs every test.
# Tests that need something this machine lacks (hardware virtualization, ...) print
# "skipped: <reason>".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --all-targets

# A statically linked virtagent, for guests (the initramfs and UML guests run it).
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release -p agent --target x86_64-unknown-linux-gnu
export VIRTAGENT_BIN="$PWD/target/x86_64-unknown-linux-gnu/release/virtagent"

# The CI guest image (Debian cloud kernel + busybox initramfs with both agents); cached.
tests/guest-image/build.sh --agent "$VIRTAGENT_BIN"
export VIRTAGENT_GUEST_IMAGE="$PWD/.cache/guest"
export VIRTAGENT_GUEST_KERNEL="$PWD/.cache/guest/vmlinuz"
modules=(.cache/guest/pkgs/linux-image-*-cloud-amd64_*/lib/modules)
export VIRTAGENT_GUEST_MODULES="$PWD/${modules[0]}"

cargo test --workspace
.venv/bin/python -m pytest -rs tests/guest

# A short run of every fuzz target over its committed corpus (docs/hostile.md; longer runs:
# scripts/fuzz.sh SECONDS).
bash scripts/fuzz.sh 15
