#!/usr/bin/env bash
# Tests of the Python client (client/python): stub drift check, then pytest
# against the real governor binary ($GOVERNOR_BIN, default <repo>/target/debug/governor).
# Runnable from any cwd; installs into client/python/.venv (idempotent, quick on re-runs).
set -euo pipefail

PKG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$PKG_DIR/../.." && pwd)"
VENV="$PKG_DIR/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.governor-client-installed"

export GOVERNOR_BIN="${GOVERNOR_BIN:-$REPO_ROOT/target/debug/governor}"
if [[ ! -x "$GOVERNOR_BIN" ]]; then
  echo "client/python/test.sh: governor binary not found at $GOVERNOR_BIN" >&2
  echo "  build it first (cargo build -p rate-governor) or set GOVERNOR_BIN=/path/to/governor" >&2
  exit 1
fi

# A venv whose interpreter no longer runs (moved folder, removed Python) is rebuilt.
if [[ -d "$VENV" ]] && ! "$PY" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$VENV"
fi
if [[ ! -x "$PY" ]]; then
  python3 -m venv "$VENV"
fi

want="$(cat "$PKG_DIR/pyproject.toml" | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" != "$have" ]] || ! "$PY" -c 'import governor_client, grpc_tools, pytest, pytest_asyncio, pytest_timeout, opentelemetry' >/dev/null 2>&1; then
  echo "installing governor-client[test,otel] into $VENV"
  "$PY" -m pip install --quiet --disable-pip-version-check -e "$PKG_DIR[test,otel]"
  echo "$want" > "$STAMP"
fi

echo "checking the shipped stubs against proto/governor/v1/governor.proto"
"$PY" "$PKG_DIR/tools/gen_stubs.py" --check

cd "$PKG_DIR"
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
