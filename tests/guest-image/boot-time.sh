#!/usr/bin/env bash
# Measure how long the guest image takes under QEMU TCG from QEMU's start to the init's
# VIRTAGENT-GUEST-READY marker (agent about to open its port), N times per configuration.
#
# Usage: tests/guest-image/boot-time.sh [N] [IMAGE_DIR]   (default 5, .cache/guest; build.sh first)
# Environment: MACHINES="pc q35 microvm,acpi=on" APPENDS="|quiet" AGENT=qemu-ga
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
N=${1:-5}
IMG=${2:-$HERE/../../.cache/guest}
MACHINES=${MACHINES:-pc q35 microvm,acpi=on}
APPENDS=${APPENDS:-|quiet}
AGENT=${AGENT:-qemu-ga}
if [ ! -s "$IMG/vmlinuz" ] || [ ! -s "$IMG/initramfs.cpio.gz" ]; then echo "no image in $IMG: run build.sh" >&2; exit 1; fi
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 is not installed" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

boot_once() { # machine extra-append -> seconds to READY
    local m=$1 extra=$2 log="$WORK/console.log" start now pid
    : > "$log"
    start=$(date +%s%N)
    local mach=(-M "$m" -nodefaults -serial stdio -device virtio-serial)
    case "$m" in
        # virtio-mmio in ACPI; microvm needs its defaults and the TSC rate (see docs/guest-image.md)
        microvm*) mach=(-M "$m" -device virtio-serial-device)
                  extra="$extra tsc_early_khz=$(awk -F': ' '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)" ;;
    esac
    qemu-system-x86_64 -accel tcg "${mach[@]}" -m 512 -smp 1 -nographic -no-reboot \
        -kernel "$IMG/vmlinuz" -initrd "$IMG/initramfs.cpio.gz" \
        -append "console=ttyS0 panic=-1 agent=$AGENT $extra" \
        -chardev "socket,path=$WORK/qga.sock,server=on,wait=off,id=qga0" \
        -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 </dev/null >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 1200); do
        grep -q VIRTAGENT-GUEST-READY "$log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    now=$(date +%s%N)
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    grep -q VIRTAGENT-GUEST-READY "$log" || { echo "no READY marker; console tail:" >&2; tail -20 "$log" >&2; exit 1; }
    awk -v a="$start" -v b="$now" 'BEGIN { printf "%.2f\n", (b - a) / 1e9 }'
}

echo "qemu: $(qemu-system-x86_64 --version | head -n1); cpus: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
IFS='|' read -r -a appends <<<"$APPENDS"
[ "${APPENDS: -1}" = "|" ] && appends+=("")
for m in $MACHINES; do
    for a in "${appends[@]}"; do
        times=()
        for _ in $(seq 1 "$N"); do times+=("$(boot_once "$m" "$a")"); done
        sorted=$(printf '%s\n' "${times[@]}" | sort -n)
        echo "machine=$m append='${a}' runs=$N min=$(head -n1 <<<"$sorted") median=$(sed -n "$(((N + 1) / 2))p" <<<"$sorted") max=$(tail -n1 <<<"$sorted") s"
    done
done
