#!/usr/bin/env bash
# The operator-facing surfaces of the real governor binary:
#   - the status page in headless Chromium (Debian's chromium, driven by
#     playwright-core), under real overload over gRPC;
#   - /metrics read by the official Python client's text and OpenMetrics
#     parsers.
#   bash tests/ops/test.sh      (from any directory)
# The binary comes from $GOVERNOR_BIN (default <repo>/target/debug/governor);
# Chromium from $CHROMIUM (default /usr/bin/chromium; scripts/test.sh installs
# the Debian package when it is missing). Installs into tests/ops/node_modules
# and tests/ops/.venv; OPS_SCREENSHOT=PATH keeps the page's screenshot there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

export GOVERNOR_BIN="${GOVERNOR_BIN:-$repo/target/debug/governor}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[[ -x "$GOVERNOR_BIN" ]] || { echo "tests/ops/test.sh: no governor binary at $GOVERNOR_BIN (cargo build -p rate-governor)" >&2; exit 1; }
[[ -x "$CHROMIUM" ]] || { echo "tests/ops/test.sh: no Chromium at $CHROMIUM (apt-get install chromium)" >&2; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null || { echo "tests/ops/test.sh: node (>= 20) and npm are required" >&2; exit 1; }

# Node packages from the committed lock, reinstalled only when it changes.
stamp="node_modules/.governor-lock.sha256"
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  npm ci --no-audit --no-fund --loglevel=error --ignore-scripts
  echo "$want" >"$stamp"
fi

# Python's Prometheus client in a local venv.
venv="$here/.venv"
if [[ -d "$venv" ]] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then rm -rf "$venv"; fi
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
pystamp="$venv/.requirements.sha256"
pywant="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [[ "$(cat "$pystamp" 2>/dev/null || true)" != "$pywant" ]]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$pywant" >"$pystamp"
fi
export OPS_PYTHON="$venv/bin/python"

node --test --test-concurrency=1 page.test.mjs exposition.test.mjs
