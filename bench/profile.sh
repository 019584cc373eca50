#!/usr/bin/env bash
# Profiles the sidecar during one happy-path arm: runs
#   governor-bench --quick --only main --arms ARM
# (release builds) and `perf record -e cpu-clock -g` on its plain sidecar (the
# one the happy path measures) until the happy path ends, then prints where
# the samples went, bucketed by crate, and the top symbols.
#   bash bench/profile.sh A5      # or A1, A0, ...
# Output: target/bench-profile/ARM/{perf.data,report.txt,stdout,stderr}.
# Needs perf (Debian: linux-perf) and permission to attach to the process.
set -euo pipefail
arm="${1:?usage: bash bench/profile.sh ARM (A0, A1, A2, A4 or A5)}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
command -v perf >/dev/null || { echo "profile.sh: perf is missing (Debian: apt-get install -y linux-perf)" >&2; exit 1; }
bench="${GOVERNOR_BENCH:-target/release/governor-bench}"
[ -x "$bench" ] || { echo "profile.sh: $bench is missing: cargo build --release -p governor-bench" >&2; exit 1; }
out="target/bench-profile/$arm"
mkdir -p "$out"
"$bench" --quick --only main --arms "$arm" --out-dir "$out" --doc "$out/benchmarks.md" \
  >"$out/stdout" 2>"$out/stderr" &
bench_pid=$!
pid=""
for _ in $(seq 1 400); do
  pid="$(ps -C governor -o pid=,args= | awk -v d="governor-bench-$bench_pid/plain.toml" 'index($0, d) {print $1; exit}')"
  [ -n "$pid" ] && break
  sleep 0.05
done
if [ -z "$pid" ]; then
  echo "profile.sh: the plain sidecar did not start; see $out/stderr" >&2
  wait "$bench_pid" || true
  exit 1
fi
perf record -F 1999 -e cpu-clock -g -p "$pid" -o "$out/perf.data" 2>"$out/perf.err" &
perf_pid=$!
# The happy path ends when the harness logs the overload group.
until grep -q '^overload' "$out/stderr" || ! kill -0 "$bench_pid" 2>/dev/null; do sleep 0.2; done
kill -INT "$perf_pid"
wait "$perf_pid" || true
status=0
wait "$bench_pid" || status=$?
python3 "$root/bench/profile_buckets.py" "$out/perf.data" | tee "$out/report.txt"
exit "$status"
