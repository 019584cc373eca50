#!/usr/bin/env bash
# The alert rules, the scrape config and the Grafana dashboard against
# promtool and a real Prometheus that scrapes the real governor binary
# (deploy/prometheus/test_prometheus.py).
#
#   bash deploy/prometheus/test.sh [pytest args]
#
# Needs prometheus and promtool on PATH (Debian's `prometheus` package;
# scripts/test.sh installs it), and node with npm. GOVERNOR_BIN selects the
# binary (default: <repo>/target/debug/governor). Python packages go into
# deploy/prometheus/.venv and npm packages into deploy/grafana/node_modules on
# the first run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
export GOVERNOR_BIN="${GOVERNOR_BIN:-$REPO/target/debug/governor}"

if [[ ! -x "$GOVERNOR_BIN" ]]; then
    echo "deploy/prometheus/test.sh: governor binary not found at $GOVERNOR_BIN" >&2
    echo "  build it (cargo build -p rate-governor --bin governor) or set GOVERNOR_BIN" >&2
    exit 1
fi
for tool in prometheus promtool; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "deploy/prometheus/test.sh: $tool not found: apt-get install prometheus" >&2
        exit 1
    fi
done

REQUIREMENTS=(
    "pytest==9.2.0"
    "pyyaml==6.0.3"
    "grpcio==1.85.1"
    "protobuf==7.36.2"
)
STAMP="$VENV/.requirements"
WANT="$(printf '%s\n' "${REQUIREMENTS[@]}")"
if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
    printf '%s' "$WANT" > "$STAMP"
fi

# Grafana's dashboard schema types and TypeScript, from the committed lock
# (npm ci), to type-check the dashboard.
GRAFANA="$REPO/deploy/grafana"
for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "deploy/prometheus/test.sh: $tool is required (the dashboard's schema check)" >&2
        exit 1
    fi
done
LOCK_STAMP="$GRAFANA/node_modules/.governor-lock.sha256"
WANT_LOCK="$(sha256sum "$GRAFANA/package-lock.json" | cut -d' ' -f1)"
if [[ ! -f "$LOCK_STAMP" || "$(cat "$LOCK_STAMP")" != "$WANT_LOCK" ]]; then
    (cd "$GRAFANA" && npm ci --no-audit --no-fund --loglevel=error --ignore-scripts)
    echo "$WANT_LOCK" > "$LOCK_STAMP"
fi

prometheus --version 2>&1 | head -n 1
cd "$HERE"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -v -ra "$@" test_prometheus.py
