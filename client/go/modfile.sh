#!/usr/bin/env bash
# Writes a temporary go.mod for building this module offline in module mode:
# a copy of the committed go.mod plus replace directives pointing every
# required module at Debian's packaged sources under /usr/share/gocode/src
# (golang-google-grpc-dev, golang-google-protobuf-dev and their
# dependencies), and modules Debian does not ship (requirements of grpc's
# go.mod that no package of this build imports) at empty stand-in modules.
#
#   bash client/go/modfile.sh OUT_DIR     # writes OUT_DIR/go.mod, prints its path
#
# Then: go build -modfile=OUT_DIR/go.mod ./...   (GOFLAGS=-mod=mod GOPROXY=off)
# The committed go.mod is never changed; go.sum is written next to the
# temporary go.mod.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:?usage: modfile.sh OUT_DIR}"
GOCODE="${GOCODE:-/usr/share/gocode/src}"
mkdir -p "$OUT/standins"
OUT="$(cd "$OUT" && pwd)"
cd "$HERE" # go mod edit -modfile needs to run inside the module
MODFILE="$OUT/go.mod"
cp "$HERE/go.mod" "$MODFILE"
rm -f "$OUT/go.sum"

export GO111MODULE=on GOPROXY=off GOSUMDB=off GOFLAGS=-mod=mod
export GOPATH="${GOPATH_MOD:-$HERE/.build/modpath}"
export GOCACHE="${GOCACHE:-$HERE/.build/gocache}"

# Every module Debian ships: its go.mod names it.
while IFS= read -r mod; do
  path="$(sed -n 's/^module[[:space:]]*//p' "$mod" | head -1 | tr -d '"[:space:]')"
  [ -n "$path" ] && go mod edit -modfile="$MODFILE" -replace="$path=$(dirname "$mod")"
done < <(find "$GOCODE" -name go.mod -not -path '*/testdata/*' -not -path '*/vendor/*')

# Modules in the requirement graph that Debian does not ship: an empty
# stand-in each, until the graph resolves (no package of theirs is built).
for _ in $(seq 1 30); do
  if errors="$(go list -modfile="$MODFILE" -m all 2>&1 >/dev/null)"; then
    echo "$MODFILE"
    exit 0
  fi
  missing="$(grep -oE '[a-zA-Z0-9._~/-]+@v[^: ]+: (module lookup disabled|reading|missing)' <<<"$errors" \
    | sed 's/@.*//' | sort -u)"
  if [ -z "$missing" ]; then
    echo "modfile.sh: cannot resolve the module graph:" >&2
    echo "$errors" >&2
    exit 1
  fi
  for path in $missing; do
    dir="$OUT/standins/$path"
    mkdir -p "$dir"
    printf 'module %s\n\ngo 1.11\n' "$path" >"$dir/go.mod"
    go mod edit -modfile="$MODFILE" -replace="$path=$dir"
  done
done
echo "modfile.sh: the module graph did not resolve after 30 rounds:" >&2
echo "$errors" >&2
exit 1
