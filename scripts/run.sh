#!/usr/bin/env bash
# The main job for a newcomer: install what is needed, build, and start a real Linux guest whose
# guest agent (virtagent) answers on the VMM's QMP monitor socket.
#
#  - On a host with hardware virtualization (kvm_intel or kvm_amd loaded): the guest image
#    (Debian cloud kernel + busybox initramfs, built from Debian's packages) boots under `vmm`
#    on KVM, with virtio-serial on virtio-mmio described in ACPI.
#  - Elsewhere (e.g. nested hosts that only emulate guests): Debian's User-Mode Linux kernel
#    runs the guest, and `vmm -machine vhost-user` serves it the same virtio-serial device.
#
# Either way the same monitor, QMP proxy and agent are in the path. A short demo runs guest
# commands with `vmctl`; then the VM keeps running until Ctrl-C. RUN_DIR (default
# /tmp/virtagent-run) holds the sockets and logs; MODE=kvm|uml forces a mode.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash scripts/setup.sh
cargo build --release -p vmm
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p agent --target x86_64-unknown-linux-gnu
AGENT=$ROOT/target/x86_64-unknown-linux-gnu/release/virtagent
VMM=$ROOT/target/release/vmm
VMCTL=$ROOT/target/release/vmctl

RUN=${RUN_DIR:-/tmp/virtagent-run}
rm -rf "$RUN"; mkdir -p "$RUN"
MODE=${MODE:-}
if [ -z "$MODE" ]; then
  if [ -e /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then MODE=kvm; else MODE=uml; fi
fi

pids=()
uml_pgid=
cleanup() {
  # UML is many processes (its own session, started with setsid): end the whole group.
  [ -n "$uml_pgid" ] && kill -KILL -- "-$uml_pgid" 2>/dev/null
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
wait_sock() { for _ in $(seq 1000); do [ -S "$1" ] && return 0; sleep 0.01; done; echo "run.sh: no socket $1" >&2; exit 1; }

AGENT_PORT=(-chardev qmp_proxy,id=qga0 -device virtio-serial,max_ports=4
            -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0,id=agent0)
case "$MODE" in
kvm)
  tests/guest-image/build.sh --agent "$AGENT"
  IMG=$ROOT/.cache/guest
  echo "== booting the guest image under vmm on KVM (console: $RUN/console.log)"
  "$VMM" -kernel "$IMG/vmlinuz" -initrd "$IMG/initramfs.cpio.gz" -append "console=ttyS0 agent=virtagent" \
    -m 512M -smp 2 -name demo -qmp "unix:$RUN/qmp.sock,server=on,wait=off" "${AGENT_PORT[@]}" \
    -serial "file:$RUN/console.log" 2>"$RUN/vmm.log" & pids+=($!)
  ;;
uml)
  echo "== no hardware virtualization here: a User-Mode Linux guest on vmm's vhost-user device"
  "$VMM" -machine "vhost-user,socket=$RUN/serial.sock" -name demo \
    -qmp "unix:$RUN/qmp.sock,server=on,wait=off" "${AGENT_PORT[@]}" 2>"$RUN/vmm.log" & pids+=($!)
  wait_sock "$RUN/serial.sock"
  mkdir -p "$RUN/uml"
  setsid /usr/bin/linux mem=256M root=/dev/root rootfstype=hostfs rootflags=/ ro \
    "uml_dir=$RUN/uml" "init=$ROOT/tests/uml/init.sh" "virtio_uml.device=$RUN/serial.sock:3" \
    con=null con0=null,fd:1 "VA_AGENT=$AGENT" </dev/null >"$RUN/console.log" 2>&1 &
  uml_pgid=$!
  ;;
*) echo "run.sh: MODE must be kvm or uml" >&2; exit 2 ;;
esac
wait_sock "$RUN/qmp.sock"

V=("$VMCTL" -s "$RUN/qmp.sock")
echo "== waiting for the guest agent (GUEST_AGENT_UP)"
for _ in $(seq 600); do
  "${V[@]}" guest-ping >/dev/null 2>&1 && break
  sleep 0.1
done
demo() { echo "\$ vmctl $*"; "${V[@]}" "$@"; }
demo query-status
demo guest-ping
demo guest-get-osinfo
demo guest-get-host-name
out=$(demo guest-exec path=/bin/uname 'arg=["-a"]' capture-output=true)
echo "$out"
pid=$(echo "$out" | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
sleep 0.5
out=$(demo guest-exec-status "pid=$pid")
echo "$out"
echo "(out-data decoded: $(echo "$out" | sed -n 's/.*"out-data": *"\([^"]*\)".*/\1/p' | base64 -d))"
echo
echo "The VM is running (monitor: $RUN/qmp.sock, logs in $RUN). Try:"
echo "  vmctl=\"${V[*]}\""
echo "  \$vmctl guest-info    |    \$vmctl   (interactive)    |    \$vmctl --events"
echo "Ctrl-C stops it."
wait "${pids[0]}"
