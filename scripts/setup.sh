#!/usr/bin/env bash
# Installs everything the project needs on a Debian machine, idempotently:
# Debian packages used as peers/oracles and for guest images, and a Python venv
# with QEMU's own QMP client. Safe to run again; does nothing when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(qemu-guest-agent qemu-system-x86 socat busybox-static cpio user-mode-linux e2fsprogs python3-venv binutils libpam-modules)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python venv with qemu.qmp (QEMU's own QMP client library, used as an oracle client) and pytest.
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY_PKGS=('qemu.qmp==0.0.6' 'pytest==8.3.4')
if ! "$VENV/bin/python" -c 'import qemu.qmp, pytest' 2>/dev/null; then
  echo "setup: installing ${PY_PKGS[*]} into $VENV"
  "$VENV/bin/pip" install -q "${PY_PKGS[@]}"
fi
