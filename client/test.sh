#!/usr/bin/env bash
# Tests of the Rust client crate `rate-governor-client`: its unit tests (an
# in-process fake sidecar) and the end-to-end tests in tests/tests/client.rs,
# which run the real governor binary: $GOVERNOR_BIN, by default
# <repo>/target/debug/governor (build it first: cargo build -p rate-governor).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${GOVERNOR_BIN:-$root/target/debug/governor}"
# Test binaries run with the package folder as cwd: pass an absolute path.
[[ $bin == /* ]] || bin="$PWD/$bin"
if [[ ! -x $bin ]]; then
  echo "client/test.sh: no governor binary at $bin;" \
    "build it with 'cargo build -p rate-governor' or set GOVERNOR_BIN" >&2
  exit 1
fi
export GOVERNOR_BIN="$bin"

cd "$root"
cargo test -p rate-governor-client
cargo test -p governor-integration-tests --lib --test client
cargo test -p governor-integration-tests --doc
