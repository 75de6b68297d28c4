#!/usr/bin/env bash
# The main job for a newcomer: install what is needed, build, and start something real.
# Today that is the VMM's monitor + QMP proxy in front of a host-side guest agent
# (`-machine none`): a short demo runs guest-agent commands through the monitor, then the
# stack keeps running so you can talk to it (vmctl, qmp-shell, socat) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p vmm -p agent
RUN=${RUN_DIR:-/tmp/virtagent-run}
mkdir -p "$RUN/state"
AGENT=target/release/virtagent
if [ ! -x "$AGENT" ]; then AGENT=/usr/sbin/qemu-ga; fi
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
rm -f "$RUN/agent.sock"
"$AGENT" -m unix-listen -p "$RUN/agent.sock" -t "$RUN/state" -f "$RUN/state/agent.pid" & pids+=($!)
for _ in $(seq 300); do [ -S "$RUN/agent.sock" ] && break; sleep 0.01; done
target/release/vmm -machine none -name demo -qmp "unix:$RUN/qmp.sock,server=on,wait=off" \
  -chardev "qmp_proxy,id=qga0,path=$RUN/agent.sock" & pids+=($!)
for _ in $(seq 300); do [ -S "$RUN/qmp.sock" ] && break; sleep 0.01; done
sleep 0.3
V="target/release/vmctl -s $RUN/qmp.sock"
echo "== agent: $AGENT behind the VMM's QMP proxy; monitor: $RUN/qmp.sock"
for cmd in query-status query-name guest-ping guest-get-osinfo guest-get-host-name; do
  echo "\$ vmctl $cmd"; $V $cmd
done
echo
echo "The VMM is running. Try:  $V guest-info   |   $V   (interactive)   |   Ctrl-C to stop."
wait "${pids[1]}"
