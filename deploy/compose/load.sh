#!/bin/sh
# Drives a bounded amount of traffic through a governor with grpcurl (using
# server reflection, so no .proto files are needed): each iteration acquires a
# permit with a fresh W3C traceparent, holds it briefly and releases it.
#
# Environment:
#   GOVERNOR_ADDR  host:port of the governor          (127.0.0.1:50051)
#   ITERATIONS     acquisitions per worker             (50)
#   WORKERS        parallel workers                    (4)
#   DEPENDENCIES   space-separated dependency names    (payments inventory)
#   HOLD           seconds a permit is held            (0.05)
#   GRPCURL        the grpcurl command                 (grpcurl)
#
# Prints one summary line: "load: N acquired, N rejected, N released, N errors"
# and exits non-zero if any call failed.
set -eu

ADDR="${GOVERNOR_ADDR:-127.0.0.1:50051}"
ITERATIONS="${ITERATIONS:-50}"
WORKERS="${WORKERS:-4}"
DEPENDENCIES="${DEPENDENCIES:-payments inventory}"
HOLD="${HOLD:-0.05}"
GRPCURL="${GRPCURL:-grpcurl}"

if ! command -v "$GRPCURL" >/dev/null 2>&1; then
    echo "load.sh: grpcurl not found (set GRPCURL)" >&2
    exit 2
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

hex() {
    od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

call() {
    # call TRACEPARENT METHOD JSON
    "$GRPCURL" -plaintext -max-time 10 -H "traceparent: $1" -d "$3" "$ADDR" "governor.v1.Governor/$2"
}

worker() {
    w="$1"
    acquired=0 rejected=0 released=0 errors=0
    count=0
    for d in $DEPENDENCIES; do count=$((count + 1)); done
    i=0
    while [ "$i" -lt "$ITERATIONS" ]; do
        # Round-robin over the dependencies, offset per worker.
        idx=$(( (i + w) % count + 1 ))
        dep="" n=0
        for d in $DEPENDENCIES; do
            n=$((n + 1))
            if [ "$n" -eq "$idx" ]; then dep="$d"; fi
        done
        trace="$(hex 16)"
        if resp="$(call "00-$trace-$(hex 8)-01" Acquire "{\"dependency\":\"$dep\",\"tenant\":\"load-$w\"}")"; then
            lease="$(printf '%s\n' "$resp" | sed -n 's/.*"leaseId": *"\([^"]*\)".*/\1/p')"
            if [ -n "$lease" ]; then
                acquired=$((acquired + 1))
                sleep "$HOLD"
                if resp="$(call "00-$trace-$(hex 8)-01" Release "{\"leaseId\":\"$lease\",\"outcome\":\"OUTCOME_SUCCESS\"}")" \
                    && printf '%s\n' "$resp" | grep -q '"released": *true'; then
                    released=$((released + 1))
                else
                    errors=$((errors + 1))
                fi
            else
                rejected=$((rejected + 1))
            fi
        else
            errors=$((errors + 1))
        fi
        i=$((i + 1))
    done
    echo "$acquired $rejected $released $errors" > "$out/worker.$w"
}

w=0
while [ "$w" -lt "$WORKERS" ]; do
    worker "$w" &
    w=$((w + 1))
done
wait

total_acquired=0 total_rejected=0 total_released=0 total_errors=0
w=0
while [ "$w" -lt "$WORKERS" ]; do
    if [ -f "$out/worker.$w" ]; then
        read -r a r l e < "$out/worker.$w"
    else
        a=0 r=0 l=0 e="$ITERATIONS"
    fi
    total_acquired=$((total_acquired + a))
    total_rejected=$((total_rejected + r))
    total_released=$((total_released + l))
    total_errors=$((total_errors + e))
    w=$((w + 1))
done

echo "load: $total_acquired acquired, $total_rejected rejected, $total_released released, $total_errors errors"
[ "$total_errors" -eq 0 ]
