#!/usr/bin/env bash
# QMP proxy and monitor benchmark (not a test): the same client measures, in one run,
#  1. guest-ping through the VMM's QMP proxy vs straight to the same qemu-ga socket;
#  2. query-status round trips on the VMM's monitor vs QEMU's (`qemu-system-x86_64 -M none`).
# Usage: scripts/bench-qmp.sh [COUNT]   (default 20000). Prints a table and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-20000}
bash scripts/setup.sh >/dev/null
cargo build -q --release -p vmm
cargo build -q --release -p qmp --example qmp_bench
BENCH=target/release/examples/qmp_bench
T=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
wait_sock() { for _ in $(seq 500); do [ -S "$1" ] && return 0; sleep 0.01; done; echo "no socket $1" >&2; exit 1; }

mkdir -p "$T/qga"
/usr/sbin/qemu-ga -m unix-listen -p "$T/agent.sock" -t "$T/qga" -f "$T/qga/pid" & pids+=($!)
wait_sock "$T/agent.sock"
target/release/vmm -machine none -qmp "unix:$T/vmm.sock,server=on,wait=off" \
  -chardev "qmp_proxy,id=qga0,path=$T/agent.sock" & pids+=($!)
wait_sock "$T/vmm.sock"
qemu-system-x86_64 -M none -display none -nodefaults -qmp "unix:$T/qemu.sock,server=on,wait=off" & pids+=($!)
wait_sock "$T/qemu.sock"
sleep 0.3

run() { "$BENCH" "$1" "$2" "$COUNT"; }
# qemu-ga serves one client at a time: measure direct first, then hand it to the proxy.
# The proxy holds its connection, so for the direct run use a second qemu-ga on its own socket.
mkdir -p "$T/qga2"
/usr/sbin/qemu-ga -m unix-listen -p "$T/agent2.sock" -t "$T/qga2" -f "$T/qga2/pid" & pids+=($!)
wait_sock "$T/agent2.sock"
direct=$(run agent-guest-ping "$T/agent2.sock")
proxied=$(run qmp-guest-ping "$T/vmm.sock")
vmm_status=$(run qmp-query-status "$T/vmm.sock")
qemu_status=$(run qmp-query-status "$T/qemu.sock")

python3 - "$direct" "$proxied" "$vmm_status" "$qemu_status" <<'PY'
import json, sys
d, p, v, q = (json.loads(a) for a in sys.argv[1:])
print(f"{'measurement':<42} {'p50 us':>8} {'p99 us':>8} {'per s':>9}")
for name, r in [("guest-ping direct to qemu-ga", d), ("guest-ping via vmm QMP proxy", p),
                ("query-status on vmm", v), ("query-status on qemu-system-x86_64 -M none", q)]:
    print(f"{name:<42} {r['p50_us']:>8} {r['p99_us']:>8} {r['per_sec']:>9}")
print(f"proxy overhead p50: {p['p50_us'] - d['p50_us']:.1f} us (target < 50 us)")
print(f"query-status rate vmm/qemu: {v['per_sec'] / q['per_sec']:.2f}x (target >= 1.0x)")
PY
