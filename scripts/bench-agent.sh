#!/bin/sh
# virtagent vs qemu-ga, same client, same run (see docs/agent.md).
# ROUNDS=N sets the number of interleaved rounds (default 7);
# VIRTAGENT_BIN=path benchmarks another virtagent build (e.g. the static one).
set -e
cd "$(dirname "$0")/.."
exec cargo bench -p agent --bench agent_bench "$@"
