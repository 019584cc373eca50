#!/usr/bin/env bash
# Tests for the Node client (@governor/client) against the real governor binary.
#   bash client/node/test.sh            (from any directory)
# The binary comes from $GOVERNOR_BIN, default <repo>/target/debug/governor.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

export GOVERNOR_BIN="${GOVERNOR_BIN:-$repo/target/debug/governor}"
if [ ! -x "$GOVERNOR_BIN" ]; then
  echo "client/node/test.sh: governor binary not found at $GOVERNOR_BIN" >&2
  echo "  build it with 'cargo build -p rate-governor' or set GOVERNOR_BIN" >&2
  exit 1
fi

command -v node >/dev/null || { echo "client/node/test.sh: node (>= 20) is required" >&2; exit 1; }
command -v npm >/dev/null || { echo "client/node/test.sh: npm is required" >&2; exit 1; }

# Install dependencies: `npm ci` from the committed lock, skipped when
# node_modules already matches it; `npm install` only when there is no lock.
# Lifecycle scripts are skipped (the package has none of its own).
npm_quiet=(--no-audit --no-fund --loglevel=error --ignore-scripts)
if [ ! -f package-lock.json ]; then
  npm install "${npm_quiet[@]}"
else
  stamp="node_modules/.governor-lock.sha256"
  want="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    npm ci "${npm_quiet[@]}"
    echo "$want" >"$stamp"
  fi
fi

node --test test/*.test.mjs
