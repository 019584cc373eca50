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
# The open-loop probe (`governor-bench probe`, bench/src/probe.rs), both
# modes, briefly, against a sidecar of its own: it must connect, complete
# every pair and read the sidecar's CPU.
mkdir -p target/bench-smoke
probe_sock="$root/target/bench-smoke/probe.sock"
rm -f "$probe_sock"
coproc PROBE_SIDECAR { exec "$governor_bin" --listen 127.0.0.1:0 --admin-listen off --uds "$probe_sock" 2>target/bench-smoke/probe-sidecar.stderr; }
probe_pid=$PROBE_SIDECAR_PID
read -r -t 30 ready <&"${PROBE_SIDECAR[0]}" || { echo "smoke.sh: the probe's sidecar did not start" >&2; exit 1; }
case "$ready" in "governor ready "*) ;; *) echo "smoke.sh: unexpected first line from the sidecar: $ready" >&2; exit 1 ;; esac
for mode in unary session; do
  cargo run -q -p governor-bench -- probe --pid "$probe_pid" --target "unix:$probe_sock" \
    --mode "$mode" --rate 500 --seconds 0.4
done
kill "$probe_pid"
wait "$probe_pid" || true
exec cargo run -p governor-bench -- --soak --soak-duration 60s --governor-bin "$governor_bin" \
  --out-dir target/bench-smoke --doc target/bench-smoke/soak.md
