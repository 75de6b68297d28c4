#!/usr/bin/env bash
# Real-guest agent benchmark (not a test): a host QMP client on the vmm's monitor, through the
# QMP proxy, the vhost-user virtio-serial device and User-Mode Linux's real virtio_console
# driver, to an agent inside the guest. Our virtagent and Debian's qemu-ga are measured in the
# same guest in the same run (the guest's init switches agents), alternating, ROUNDS times each:
#   1. guest-ping round trip (COUNT sequential pings);
#   2. guest-file-read throughput (a SIZE_MIB file on the guest's tmpfs, 4 MiB per request).
# Usage: scripts/bench-uml.sh [COUNT] [SIZE_MIB] [ROUNDS]   (defaults 500, 64, 2)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-500}
SIZE_MIB=${2:-64}
ROUNDS=${3:-2}
[ -x /usr/bin/linux ] || { echo "bench-uml: /usr/bin/linux missing (user-mode-linux)" >&2; exit 1; }
cargo build -q --release -p vmm -p agent
ROOT=$(pwd)
T=$(mktemp -d /tmp/bench-uml.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
wait_sock() { for _ in $(seq 500); do [ -S "$1" ] && return 0; sleep 0.01; done; echo "no socket $1" >&2; exit 1; }

head -c $((SIZE_MIB << 20)) /dev/urandom > "$T/blob"
target/release/vmm -machine "vhost-user,socket=$T/vu.sock" \
  -qmp "unix:$T/qmp.sock,server=on,wait=off" \
  -chardev qmp_proxy,id=qga0 -device virtio-serial,max_ports=2 \
  -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0,id=port0 2>"$T/vmm.log" & pids+=($!)
wait_sock "$T/vu.sock"
wait_sock "$T/qmp.sock"
/usr/bin/linux mem=512M root=/dev/root rootfstype=hostfs rootflags=/ ro "uml_dir=$T" \
  "init=$ROOT/tests/uml/init.sh" "virtio_uml.device=$T/vu.sock:3" con=null con0=null,fd:1 \
  VA_AGENT=qemu-ga "VA_OUT=$T" >"$T/uml.log" 2>&1 & pids+=($!)

python3 - "$T/qmp.sock" "$ROOT/target/release/virtagent" "$COUNT" "$SIZE_MIB" "$ROUNDS" <<'PY'
import base64, json, socket, statistics, sys, time
path, virtagent, count, size_mib, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_UNIX); s.connect(path)
f = s.makefile("rwb", buffering=1 << 20)
events = []
def msg():
    while True:
        line = f.readline()
        if not line: raise SystemExit("vmm closed the monitor")
        line = line.strip()
        if line: return json.loads(line)
def cmd(c, a=None):
    m = {"execute": c}
    if a is not None: m["arguments"] = a
    f.write(json.dumps(m).encode() + b"\n"); f.flush()
    while True:
        r = msg()
        if "event" in r: events.append(r["event"]); continue
        if "error" in r: raise RuntimeError(f"{c}: {r['error']}")
        return r["return"]
def wait_event(name, limit=60):
    t = time.time()
    s.settimeout(limit)
    while name not in events:
        r = msg()
        if "event" in r: events.append(r["event"])
        if time.time() - t > limit: raise SystemExit(f"no {name}")
    events.remove(name)
msg(); cmd("qmp_capabilities")
wait_event("GUEST_AGENT_UP", 120)
cmd("guest-exec", {"path": "/bin/cp", "arg": ["/tmp/out/blob", "/tmp/blob"]})
time.sleep(1)

def switch(agent):
    events.clear()
    cmd("guest-exec", {"path": "/bin/sh", "arg": ["-c", f"sleep 0.2; echo {agent} > /tmp/agent.next; kill $(cat /tmp/agent.pid)"]})
    wait_event("GUEST_AGENT_DOWN"); wait_event("GUEST_AGENT_UP")
    cmd("guest-ping")

def measure():
    lat = []
    for _ in range(count):
        t = time.perf_counter(); cmd("guest-ping"); lat.append(time.perf_counter() - t)
    best = 0
    for _ in range(3):
        h = cmd("guest-file-open", {"path": "/tmp/blob", "mode": "r"})
        n = 0; t = time.perf_counter()
        while True:
            r = cmd("guest-file-read", {"handle": h, "count": 4 << 20})
            n += len(base64.b64decode(r["buf-b64"]))
            if r["eof"] or r["count"] == 0: break
        dt = time.perf_counter() - t
        cmd("guest-file-close", {"handle": h})
        assert n == size_mib << 20, n
        best = max(best, n / dt / 1e6)
    return statistics.median(lat) * 1e6, best

res = {"qemu-ga": [], "virtagent": []}
cur = "qemu-ga"
for r in range(rounds):
    for name, agent in (("qemu-ga", "qemu-ga"), ("virtagent", virtagent)):
        if cur != agent: switch(agent); cur = agent
        res[name].append(measure())
print(f"UML guest, vhost-user virtio-serial, {count} pings, {size_mib} MiB file read, {rounds} rounds (best of each)")
print(f"{'agent':<10} {'ping median us':>15} {'file-read MB/s':>15}")
best = {}
for name, v in res.items():
    p = min(x[0] for x in v); b = max(x[1] for x in v); best[name] = (p, b)
    print(f"{name:<10} {p:>15.1f} {b:>15.1f}")
q, o = best["qemu-ga"], best["virtagent"]
print(f"ratio virtagent/qemu-ga: ping latency {o[0]/q[0]:.2f}x, file-read throughput {o[1]/q[1]:.2f}x")
cmd("guest-exec", {"path": "/bin/sh", "arg": ["-c", "touch /tmp/stop; kill $(cat /tmp/agent.pid)"]})
PY
