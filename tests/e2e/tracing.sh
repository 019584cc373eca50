#!/usr/bin/env bash
# End-to-end tracing check against a real tracing backend (Arize Phoenix).
#
# Installs Phoenix into tests/e2e/.venv (once; re-runs reuse it), starts
# `phoenix serve` on free loopback ports with a throw-away working dir, then
# twice starts the governor ($GOVERNOR_BIN, default <repo>/target/debug/governor)
# exporting traces to Phoenix -- over OTLP/gRPC into Phoenix's "default"
# project, then over OTLP/HTTP into a project named by a resource attribute --
# and runs drive.py: a queued and a rejected Acquire with W3C parent traces,
# whose spans it reads back from Phoenix's REST API and checks. Closes with
# `N passed, M failed`; exits non-zero on any failure. Phoenix and the
# governor are always stopped on exit.
#
#   bash tests/e2e/tracing.sh            # from any cwd
#   KEEP_E2E_TMP=1 bash tests/e2e/tracing.sh   # keep logs and Phoenix's DB
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.e2e-requirements"
PHOENIX_START_TIMEOUT=120   # seconds; the first start also creates the database
GOVERNOR_START_TIMEOUT=20

say() { printf '[tracing] %s\n' "$*"; }

# The closing `N passed, M failed` line; a setup failure counts as one failed check.
summary="0 passed, 1 failed"
setup_failed() {
  echo "[tracing] setup failed: $*" >&2
  exit 1
}

# --- processes, always cleaned up ---------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/governor-e2e.XXXXXX")"
phoenix_pid=""
governor_pid=""

# Sends a signal, then waits up to $3 seconds for the process to go; KILLs it after.
stop() {
  local pid=$1 target=$2 grace=$3 i
  kill -TERM -- "$target" 2>/dev/null || return 0
  for ((i = 0; i < grace * 20; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL -- "$target" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n "$governor_pid" ]] && stop "$governor_pid" "$governor_pid" 10
  # Phoenix runs in a process group of its own (setsid): stop all of it.
  [[ -n "$phoenix_pid" ]] && stop "$phoenix_pid" "-$phoenix_pid" 15
  if [[ $rc -ne 0 ]]; then
    for log in "$WORK"/governor-*.err "$WORK/phoenix.log"; do
      if [[ -s "$log" ]]; then
        echo "---- last lines of $(basename "$log") ----" >&2
        # Phoenix's access log of the span polling says nothing here.
        grep -v '"GET /v1/' "$log" | tail -n 25 >&2 || true
      fi
    done
    # The summary stays the closing line, after the logs.
    echo
    echo "$summary"
  fi
  if [[ -n "${KEEP_E2E_TMP:-}" ]]; then
    echo "[tracing] kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

GOVERNOR_BIN="${GOVERNOR_BIN:-$ROOT/target/debug/governor}"
if [[ ! -x "$GOVERNOR_BIN" ]]; then
  setup_failed "governor binary not found at $GOVERNOR_BIN: build it first
  (cargo build -p rate-governor --bin governor) or set GOVERNOR_BIN=/path/to/governor"
fi

# --- the Python environment ---------------------------------------------------
# Phoenix needs Python 3.11 to 3.14.
find_python() {
  local candidate
  for candidate in python3 python3.11 python3.12 python3.13 python3.14; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 15) else 1)' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

# A venv whose interpreter no longer runs (moved folder, removed Python) is rebuilt.
if [[ -d "$VENV" ]] && ! "$PY" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$VENV"
fi
if [[ ! -x "$PY" ]]; then
  python="$(find_python)" || setup_failed "no Python 3.11-3.14 found (Arize Phoenix needs one)"
  say "creating $VENV with $python"
  "$python" -m venv "$VENV"
fi
want="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" != "$have" ]] || ! "$PY" -c 'import phoenix, grpc, grpc_tools' >/dev/null 2>&1; then
  say "installing $(grep -v '^#' "$HERE/requirements.txt" | xargs) into $VENV (about 1-2 minutes)"
  "$PY" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt" ||
    setup_failed "pip install -r tests/e2e/requirements.txt failed"
  echo "$want" >"$STAMP"
fi

# Everything below talks to 127.0.0.1 only: never through a proxy.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

# Two free loopback ports for Phoenix's HTTP and OTLP/gRPC servers.
read -r http_port grpc_port < <("$PY" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
)

# --- Phoenix ------------------------------------------------------------------
mkdir -p "$WORK/phoenix"
say "starting Phoenix $("$PY" -c 'import importlib.metadata as m; print(m.version("arize-phoenix"))') (http 127.0.0.1:$http_port, otlp/grpc :$grpc_port)"
(
  # Only what this run sets: no inherited database, collector or auth settings.
  for name in $(env | grep -oE '^PHOENIX_[A-Z_]+' || true); do unset "$name"; done
  export PHOENIX_HOST=127.0.0.1
  export PHOENIX_PORT="$http_port"
  export PHOENIX_GRPC_PORT="$grpc_port"
  export PHOENIX_WORKING_DIR="$WORK/phoenix"
  # Offline: no usage telemetry, no fonts/WASM/CDN fetches, no agent assistant.
  export PHOENIX_TELEMETRY_ENABLED=false
  export PHOENIX_ALLOW_EXTERNAL_RESOURCES=false
  export PHOENIX_DISABLE_AGENT_ASSISTANT=true
  export PHOENIX_LOG_MIGRATIONS=false
  exec setsid "$VENV/bin/phoenix" serve
) >"$WORK/phoenix.log" 2>&1 &
phoenix_pid=$!

# Up when /healthz answers and the OTLP port accepts connections.
"$PY" - "$phoenix_pid" "$http_port" "$grpc_port" "$PHOENIX_START_TIMEOUT" <<'EOF' ||
import os, socket, sys, time, urllib.request
pid, http_port, grpc_port, timeout = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + timeout
def http_ok():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
def grpc_ok():
    try:
        socket.create_connection(("127.0.0.1", grpc_port), timeout=2).close()
        return True
    except OSError:
        return False
def exited():
    # An exited child stays a zombie until the shell reaps it.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True
while time.monotonic() < deadline:
    if exited():
        sys.exit("Phoenix exited during start-up")
    if http_ok() and grpc_ok():
        sys.exit(0)
    time.sleep(0.2)
sys.exit(f"Phoenix was not up within {timeout:.0f}s")
EOF
  setup_failed "Phoenix did not come up (the end of its log follows)"
say "Phoenix is up"

# --- the governor ---------------------------------------------------------------
cat >"$WORK/governor.toml" <<'EOF'
[limits]
allow_unknown_dependencies = false

[telemetry]
# Export within ~50 ms instead of the default 1 s batch delay.
export_delay = "50ms"

# One permit and a queue: the second request waits for the first's release.
[dependencies.e2e-one]
max_concurrency = 1
max_queue = 4
max_wait = "5s"
lease_ttl = "30s"

# One permit and no queue: a second request is rejected QUEUE_FULL.
[dependencies.e2e-full]
max_concurrency = 1
max_queue = 0
EOF

# One pass: a governor exporting with `protocol` to `endpoint`, driven and
# checked by drive.py, then stopped. Extra NAME=VALUE arguments go into the
# governor's environment.
total_passed=0
total_failed=0
# True while the governor runs (an exited child stays a zombie until reaped).
governor_running() {
  local stat
  stat="$(cat "/proc/$governor_pid/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z && "${stat:0:1}" != X ]]
}
run_pass() {
  local label=$1 protocol=$2 endpoint=$3 project=$4
  shift 4
  local out="$WORK/governor-$label.out" err="$WORK/governor-$label.err"
  : >"$out"
  (
    for name in $(env | grep -oE '^OTEL_[A-Z_]+' || true); do unset "$name"; done
    export OTEL_EXPORTER_OTLP_PROTOCOL="$protocol"
    export OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint"
    export OTEL_SERVICE_NAME=governor-e2e
    for assignment in "$@"; do export "${assignment?}"; done
    exec "$GOVERNOR_BIN" --config "$WORK/governor.toml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
  ) >"$out" 2>"$err" &
  governor_pid=$!

  local ready="" i
  for ((i = 0; i < GOVERNOR_START_TIMEOUT * 20; i++)); do
    ready="$(grep -m1 '^governor ready ' "$out" || true)"
    [[ -n "$ready" ]] && break
    governor_running || setup_failed "the governor exited during start-up (the end of its log follows)"
    sleep 0.05
  done
  [[ -n "$ready" ]] || setup_failed "no 'governor ready' line within ${GOVERNOR_START_TIMEOUT}s"
  local grpc_addr admin_addr
  grpc_addr="$(sed -nE 's/.*grpc=([^ ]+).*/\1/p' <<<"$ready")"
  admin_addr="$(sed -nE 's/.*admin=([^ ]+).*/\1/p' <<<"$ready")"
  [[ -n "$grpc_addr" ]] || setup_failed "cannot parse grpc= from: $ready"
  echo
  say "pass $label: OTLP $protocol to $endpoint, Phoenix project '$project' $*"
  say "$ready"

  set +e
  "$PY" -u "$HERE/drive.py" \
    --label "$label" \
    --governor "$grpc_addr" \
    --phoenix "http://127.0.0.1:$http_port" \
    --proto "$ROOT/proto" \
    --project "$project" \
    ${admin_addr:+--admin "$admin_addr"} | tee "$WORK/drive-$label.out"
  local rc=${PIPESTATUS[0]}
  set -e
  stop "$governor_pid" "$governor_pid" 10
  governor_pid=""

  local counts
  counts="$(sed -nE "s/^$label: ([0-9]+) passed, ([0-9]+) failed\$/\\1 \\2/p" "$WORK/drive-$label.out" | tail -n 1)"
  if [[ -z "$counts" ]]; then
    counts="0 1" # drive.py died before its summary
  elif [[ $rc -ne 0 && "${counts#* }" == 0 ]]; then
    counts="${counts% *} 1" # failed without a failed check: count one
  fi
  total_passed=$((total_passed + ${counts% *}))
  total_failed=$((total_failed + ${counts#* }))
}

# --- drive it and read the spans back ---------------------------------------------
# 1. OTLP/gRPC to Phoenix's gRPC port; no project named, so Phoenix files the
#    spans under its "default" project.
run_pass grpc grpc "http://127.0.0.1:$grpc_port" default
# 2. OTLP/HTTP (protobuf) to Phoenix's HTTP port (the governor appends
#    /v1/traces), with the Phoenix project named by a resource attribute.
run_pass http http/protobuf "http://127.0.0.1:$http_port" governor-e2e \
  OTEL_RESOURCE_ATTRIBUTES=openinference.project.name=governor-e2e

summary="$total_passed passed, $total_failed failed"
echo
if [[ $total_failed -ne 0 ]]; then
  exit 1
fi
echo "$summary"
