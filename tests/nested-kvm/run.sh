#!/usr/bin/env bash
# By hand, not yet in CI (issue #11 turns this into a harness): boots the CI guest image under a
# static `vmm` on a real KVM nested in a QEMU TCG guest ("L1", see shared/reference/nested-kvm.md),
# once with virtagent and once with Debian's qemu-ga, and runs agent commands on the real monitor
# from inside L1 (tests/nested-kvm/l1-init). Prints the L1 lines; exits non-zero if any check failed.
# Needs what scripts/test.sh builds first: the static virtagent and the guest image in .cache/guest.
set -euo pipefail
cd "$(dirname "$0")/../.."
G=.cache/guest
[ -f "$G/vmlinuz" ] || { echo "nested-kvm: run scripts/test.sh first (it builds $G)" >&2; exit 2; }
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build -q --release -p vmm --target x86_64-unknown-linux-gnu
R=target/x86_64-unknown-linux-gnu/release
W=.cache/nested-kvm
rm -rf "$W/root"
mkdir -p "$W/root"/{bin,mod,l2,proc,sys,dev,tmp}
cp tests/nested-kvm/l1-init "$W/root/init"
cp /bin/busybox "$W/root/bin/busybox"
M=$(echo "$G"/pkgs/linux-image-*-cloud-amd64_*/lib/modules/*/kernel)
cp "$M/virt/lib/irqbypass.ko" "$M/arch/x86/kvm/kvm.ko" "$M/arch/x86/kvm/kvm-amd.ko" "$W/root/mod/"
strip -o "$W/root/bin/vmm" "$R/vmm"
strip -o "$W/root/bin/vmctl" "$R/vmctl"
cp "$G/vmlinuz" "$G/initramfs.cpio.gz" "$W/root/l2/"
(cd "$W/root" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$W/l1.cpio.gz"
start=$(date +%s)
timeout 900 qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 2G -smp 2 -nographic -no-reboot \
  -kernel "$G/vmlinuz" -initrd "$W/l1.cpio.gz" -append "console=ttyS0 panic=-1 quiet" >"$W/l1.log" 2>&1
grep -a "L1:" "$W/l1.log" | sed 's/^.*L1:/L1:/'
echo "nested-kvm: whole run $(( $(date +%s) - start )) s (log $W/l1.log)"
grep -aq "L1: DONE fails=0" "$W/l1.log"
