#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what is missing, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace
# Guest tests (real Linux guests); each reports "skipped: <reason>" where it cannot run.
if compgen -G "tests/guest/test_*.py" >/dev/null; then
  .venv/bin/python -m pytest -rs tests/guest
fi
