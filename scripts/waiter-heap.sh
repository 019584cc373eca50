#!/usr/bin/env bash
# Where the heap of a waiting Acquire goes, by allocation site (the table in
# the README's memory section).
#
#   scripts/waiter-heap.sh [unary|session] [N1] [N2]
#
# Builds the release governor with the system allocator (feature
# `system-alloc`: jemalloc left out, so valgrind sees every malloc), runs it
# under valgrind's DHAT twice, with N1 and then N2 Acquires waiting behind
# one held permit (tests/examples/hold_waiters.rs holds them), and prints
# each allocation site's bytes live at the heap's peak (DHAT's t-gmax),
# divided per waiter: (bytes at N2 - bytes at N1) / (N2 - N1), so that what
# the process holds anyway cancels out. Defaults: unary 2000 4000, over 4
# connections (CONNECTIONS=...). GOVERNOR_HEAP_BIN=path runs a binary built
# before (with --features system-alloc) instead of building one. The DHAT
# files stay in target/waiter-heap/ for valgrind's dh_view.html.
#
# Needs valgrind and python3; loopback only; takes a few minutes.
set -euo pipefail

mode=${1:-unary}
n1=${2:-2000}
n2=${3:-4000}
connections=${CONNECTIONS:-4}
case $mode in
unary | session) ;;
*)
    echo "usage: $0 [unary|session] [N1] [N2]" >&2
    exit 64
    ;;
esac
if ! [[ $n1 =~ ^[0-9]+$ && $n2 =~ ^[0-9]+$ ]] || ((n1 >= n2)); then
    echo "$0: N1 and N2 must be integers with N1 < N2 (got $n1, $n2)" >&2
    exit 64
fi
for tool in valgrind python3; do
    command -v "$tool" >/dev/null || {
        echo "$0: $tool is not installed" >&2
        exit 69
    }
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=$root/target/waiter-heap
mkdir -p "$out"

if [[ -n ${GOVERNOR_HEAP_BIN:-} ]]; then
    # A binary built before, e.g. to compare with an earlier commit.
    bin=$GOVERNOR_HEAP_BIN
else
    cargo build --release -p rate-governor --bin governor --features system-alloc
    # Kept apart from target/release/governor, which the other builds own.
    bin=$out/governor
    cp target/release/governor "$bin"
fi
cargo build -p governor-integration-tests --example hold_waiters
driver=$root/target/debug/examples/hold_waiters

config=$out/config.toml
cat >"$config" <<EOF
[server]
max_calls = $((n2 + 64))
[limits]
max_waiters = $((n2 + 64))
max_session_pending = $((n2 + 64))
[dependencies.held]
max_concurrency = 1
max_queue = $((n2 + 64))
max_wait = "30m"
EOF

gov_pid=
cleanup() {
    if [[ -n $gov_pid ]]; then
        kill "$gov_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# One run: the governor under DHAT, N waiters held, then a clean exit.
run() {
    local n=$1
    local log=$out/governor-$mode-$n.log dhat=$out/dhat-$mode-$n.json
    rm -f "$dhat"
    valgrind --tool=dhat --read-inline-info=yes --dhat-out-file="$dhat" \
        "$bin" --config "$config" --listen 127.0.0.1:0 \
        --admin-listen 127.0.0.1:0 >"$log" 2>&1 &
    gov_pid=$!
    local addr=
    for _ in $(seq 1200); do
        addr=$(sed -n 's/^governor ready grpc=\([^ ]*\).*/\1/p' "$log")
        [[ -n $addr ]] && break
        kill -0 "$gov_pid" 2>/dev/null || {
            cat "$log" >&2
            exit 1
        }
        sleep 0.1
    done
    [[ -n $addr ]] || {
        echo "$0: the governor was not ready in 120 s" >&2
        exit 1
    }
    "$driver" "$addr" "$mode" "$n" "$connections" >&2
    kill -TERM "$gov_pid"
    wait "$gov_pid" || {
        echo "$0: the governor exited with $?; see $log" >&2
        exit 1
    }
    gov_pid=
    [[ -s $dhat ]] || {
        echo "$0: no DHAT output in $dhat" >&2
        exit 1
    }
}

run "$n1"
run "$n2"
python3 scripts/dhat-sites.py "$out/dhat-$mode-$n1.json" "$n1" "$out/dhat-$mode-$n2.json" "$n2"
