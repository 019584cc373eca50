#!/usr/bin/env bash
# Builds the cargo-fuzz targets (libFuzzer) and runs each from its committed
# seed corpus; fails on the first crash, whose input is kept in
# fuzz/artifacts/<target>/.
#
#   bash fuzz/run.sh                          # every target, 20 s each
#   FUZZ_SECONDS=1200 bash fuzz/run.sh ledger_ops
#   FUZZ_RUNS=10000000 bash fuzz/run.sh config decode_requests
#   FUZZ_BUILD_ONLY=1 bash fuzz/run.sh        # install and build, run nothing
#
# cargo-fuzz is installed into .tools/ (not on PATH by default). It passes
# nightly-only -Z flags to rustc, which the stable toolchain accepts with
# RUSTC_BOOTSTRAP=1. Sanitizer: none; every crate of ours forbids unsafe code,
# so AddressSanitizer would only slow the search. Debug assertions (and so
# overflow checks) are on.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root/fuzz"

tools="$root/.tools"
if [[ ! -x "$tools/bin/cargo-fuzz" ]]; then
  echo "==> install cargo-fuzz into $tools"
  cargo install cargo-fuzz --version 0.13.2 --locked --root "$tools" --quiet
fi
export PATH="$tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(decode_requests config ledger_ops)
seconds=${FUZZ_SECONDS:-20}
runs=${FUZZ_RUNS:-}

flags=(--sanitizer none --debug-assertions)
# Outside the main workspace, so `cargo fmt --all` there does not see it.
cargo fmt --check
echo "==> build the fuzz targets"
cargo fuzz build "${flags[@]}"
[[ -z ${FUZZ_BUILD_ONLY:-} ]] || exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
for target in "${targets[@]}"; do
  mkdir -p "artifacts/$target" "$work/$target"
  if [[ -n $runs ]]; then
    limit=(-runs="$runs")
    echo "==> fuzz $target ($runs runs)"
  else
    limit=(-max_total_time="$seconds")
    echo "==> fuzz $target ($seconds s)"
  fi
  # New inputs go to a scratch corpus; the committed seeds are only read.
  if ! cargo fuzz run "${flags[@]}" "$target" "$work/$target" "corpus/$target" -- \
      "${limit[@]}" -print_final_stats=1 -artifact_prefix="artifacts/$target/" \
      >"$work/$target.log" 2>&1; then
    failed=1
    echo "FAILED: $target; the crashing input is in fuzz/artifacts/$target/" >&2
    grep -v '^#[0-9]' "$work/$target.log" | tail -60 >&2
  fi
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' \
    "$work/$target.log" | sed "s/^/$target /" || true
  grep -E '^Done [0-9]+ runs' "$work/$target.log" | sed "s/^/$target /" || true
done
exit $failed
