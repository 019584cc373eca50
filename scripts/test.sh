#!/usr/bin/env bash
# Runs every test of the project on a fresh machine, installing what the tests
# need into local folders (Python virtualenvs, node_modules) or from the
# machine's package manager (Go toolchain, redis-server, prometheus, chromium).
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh rust node  # only some suites
#
# Suites: rust python node go deploy prometheus tracing ops bench fuzz
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

all=(rust python node go deploy prometheus tracing ops bench fuzz)
suites=("${@:-${all[@]}}")

export GOVERNOR_BIN="${GOVERNOR_BIN:-$root/target/debug/governor}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Each step is stamped with the time and the minutes since the start, so a
# CI log shows where the run's time goes.
step() { printf '\n==> [%s +%dm%02ds] %s\n' "$(date -u +%T)" $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

# redis-server (and redis-cli) backs the fleet integration tests (rust) and
# the benchmark's Redis-semaphore arm (A4).
if [[ " ${suites[*]} " == *" rust "* || " ${suites[*]} " == *" bench "* ]] && ! command -v redis-server >/dev/null; then
  step "install redis-server (Debian package)"
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
    || { echo "cannot install redis-server" >&2; exit 1; }
fi

# prometheus (with promtool) runs the alert rules against the real sidecar.
if [[ " ${suites[*]} " == *" prometheus "* ]] && ! { command -v prometheus && command -v promtool; } >/dev/null; then
  step "install prometheus (Debian package)"
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || { echo "cannot install prometheus" >&2; exit 1; }
fi

# chromium runs the status page test (ops).
if [[ " ${suites[*]} " == *" ops "* ]] && [[ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]]; then
  step "install chromium (Debian package)"
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || { echo "cannot install chromium" >&2; exit 1; }
fi

df -h . | tail -1
step "build the governor binary (debug)"
cargo build --workspace --bins || exit 1

# The fuzz targets' instrumented build (its own target dir, about 6 minutes
# from cold) runs in the background while the other suites, which mostly
# wait on processes, run; the fuzz suite waits for it and fails with it.
fuzz_build_log=""
if [[ " ${suites[*]} " == *" fuzz "* ]]; then
  step "build the fuzz targets in the background"
  fuzz_build_log=$(mktemp)
  FUZZ_BUILD_ONLY=1 bash fuzz/run.sh >"$fuzz_build_log" 2>&1 &
  fuzz_build=$!
fi
fuzz_suite() {
  local status=0
  wait "$fuzz_build" || status=$?
  cat "$fuzz_build_log"
  rm -f "$fuzz_build_log"
  [[ $status -eq 0 ]] || { echo "the fuzz targets did not build" >&2; return 1; }
  bash fuzz/run.sh
}

passed=() failed=()
run_suite() {
  local name=$1; shift
  step "suite: $name"
  if "$@"; then passed+=("$name"); else failed+=("$name"); fi
}

for suite in "${suites[@]}"; do
  case $suite in
    rust)    run_suite rust cargo test --workspace ;;
    python)  run_suite python bash client/python/test.sh ;;
    node)    run_suite node bash client/node/test.sh ;;
    go)      run_suite go bash client/go/test.sh ;;
    deploy)  run_suite deploy bash deploy/test.sh ;;
    prometheus) run_suite prometheus bash deploy/prometheus/test.sh ;;
    tracing) run_suite tracing bash tests/e2e/tracing.sh ;;
    ops)     run_suite ops bash tests/ops/test.sh ;;
    bench)   run_suite bench bash bench/smoke.sh ;;
    # libFuzzer targets, FUZZ_SECONDS (default 20) each from fuzz/corpus/.
    fuzz)    run_suite fuzz fuzz_suite ;;
    *) echo "unknown suite: $suite (known: ${all[*]})" >&2; exit 2 ;;
  esac
done

# What the run left on disk (a CI machine once ran out of it).
step "disk"
du -sh target fuzz/target 2>/dev/null || true
df -h . | tail -1

step "summary"
echo "passed: ${passed[*]:-none}"
echo "failed: ${failed[*]:-none}"
echo "suites: ${#passed[@]} passed, ${#failed[@]} failed"
[[ ${#failed[@]} -eq 0 ]]
