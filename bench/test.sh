#!/usr/bin/env bash
# Tests of the benchmark harness: its unit tests (load generators, downstream
# model, OTLP sink, /proc readers, ledger scale runs), then a smoke run of every
# arm against the real governor binary over real gRPC, and a 60 s soak.
# The binary comes from $GOVERNOR_BIN, default <repo>/target/debug/governor
# (the top-level test command builds it first).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
governor_bin="${GOVERNOR_BIN:-$root/target/debug/governor}"
if [ ! -x "$governor_bin" ]; then
  echo "bench/test.sh: governor binary '$governor_bin' is missing: build it with" >&2
  echo "  cargo build -p rate-governor --bin governor   (or set GOVERNOR_BIN)" >&2
  exit 1
fi
cargo test -p governor-bench
cargo run -q -p governor-bench -- --smoke --governor-bin "$governor_bin"
cargo run -q -p governor-bench -- --soak --soak-duration 60s --governor-bin "$governor_bin" \
  --out-dir target/bench-smoke --doc target/bench-smoke/soak.md
