#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets/, described in docs/hostile.md) over their
# corpora, each for SECONDS (default 15), and fails on the first crash.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     every target when none is named
#   FUZZ_MERGE=1 scripts/fuzz.sh 600           ... and keep what the run found: the inputs that
#                                              add coverage are merged into fuzz/corpus/TARGET
#
# Installs cargo-fuzz (from crates.io) when it is missing. With a nightly toolchain installed the
# targets are built with AddressSanitizer; otherwise with the stable one and no sanitizer (-s none).
# The committed corpus (fuzz/corpus/TARGET, minimized) and seeds (fuzz/seeds/TARGET) are only read;
# new inputs of a run go to .cache/fuzz/TARGET, so a run leaves the checkout as it was. A crash
# leaves its input in fuzz/artifacts/TARGET/ and this script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
shift || true
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install -q cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly) sanitizer=() kind="nightly, AddressSanitizer"
else
  toolchain=() sanitizer=(-s none) kind="stable, no sanitizer"
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^virtagent-fuzz$')
fi
root=$PWD
mkdir -p .cache/fuzz
cd fuzz
echo "fuzz: building the targets ($kind)"
cargo "${toolchain[@]}" fuzz build -O "${sanitizer[@]}" >/dev/null 2>"$root/.cache/fuzz/build.log" \
  || { cat "$root/.cache/fuzz/build.log" >&2; exit 1; }
for t in "${targets[@]}"; do
  scratch="$root/.cache/fuzz/$t"
  mkdir -p "$scratch" "corpus/$t" "seeds/$t" "artifacts/$t"
  log="$root/.cache/fuzz/$t.log"
  if ! cargo "${toolchain[@]}" fuzz run -O "${sanitizer[@]}" "$t" "$scratch" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/, log $log)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1)
  echo "fuzz: $t: ${runs:-?} runs in ${secs} s, $cov, no crash"
  if [ "${FUZZ_MERGE:-0}" = 1 ]; then
    cargo "${toolchain[@]}" fuzz run -O "${sanitizer[@]}" "$t" "corpus/$t" "$scratch" -- \
      -merge=1 -max_len=4096 >"$log.merge" 2>&1
    echo "fuzz: $t: corpus now $(ls "corpus/$t" | wc -l) inputs"
  fi
done
