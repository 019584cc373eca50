#!/usr/bin/env bash
# CI smoke run of the benchmark harness: builds the governor and the harness
# (dev profile: a release build is too slow to do twice in CI) and runs every
# arm very briefly, then a 60 s soak (mixed load, killed clients; fails if
# leases, waiters, tasks or fds do not come back after it). Exits non-zero if
# any arm failed or produced no samples, or the soak failed.
# A4 (Redis semaphore) is skipped with a note when redis-server is missing
# (Debian: apt-get install -y redis-server).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo build -p rate-governor --bin governor -p governor-bench
governor_bin="${GOVERNOR_BIN:-target/debug/governor}"
if [ ! -x "$governor_bin" ]; then
  echo "smoke.sh: governor binary '$governor_bin' is missing (cargo build -p rate-governor --bin governor)" >&2
  exit 1
fi
cargo run -p governor-bench -- --smoke --governor-bin "$governor_bin" "$@"
exec cargo run -p governor-bench -- --soak --soak-duration 60s --governor-bin "$governor_bin" \
  --out-dir target/bench-smoke --doc target/bench-smoke/soak.md
