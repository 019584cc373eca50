#!/usr/bin/env bash
# Builds and tests the Go client against the real governor binary, offline,
# in module mode: the committed go.mod through a temporary -modfile that
# points every module at Debian's packaged sources (modfile.sh).
#
#   bash client/go/test.sh            # from any directory
#   GOVERNOR_BIN=/path/to/governor bash client/go/test.sh
#
# Steps: install the Debian packages if missing, check the committed stubs
# in gen/ against the proto (gen.sh into a temp dir, diff), check go.mod is
# tidy, go build and go vet, docs/grpcurl-check.sh (the grpcurl session
# documented in docs/any-language.md), then go test -v (which starts the
# sidecar on a free port).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

APT_PACKAGES=(
  golang-go
  golang-google-grpc-dev
  golang-google-protobuf-dev
  protoc-gen-go
  protoc-gen-go-grpc
  protobuf-compiler
  # The 1-3 variant apt picks by default for github.com/golang/protobuf
  # panics at run time with the APIv2 runtime; 1-5 works.
  golang-github-golang-protobuf-1-5-dev
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  # Update the package lists first unless they are already there; retry
  # once after an update if an old list names files that are gone.
  if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then
    $SUDO apt-get update
  fi
  if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
  fi
fi

export GOVERNOR_BIN="${GOVERNOR_BIN:-$REPO/target/debug/governor}"
if [ ! -x "$GOVERNOR_BIN" ]; then
  echo "test.sh: governor binary not found at $GOVERNOR_BIN" >&2
  echo "test.sh: build it with 'cargo build -p rate-governor' or set GOVERNOR_BIN" >&2
  exit 1
fi

# The committed stubs must be what gen.sh makes from proto/ now.
echo "test.sh: checking gen/ against proto/governor/v1/governor.proto"
GEN_CHECK="$(mktemp -d)"
trap 'rm -rf "$GEN_CHECK"' EXIT
GEN_OUT="$GEN_CHECK" bash "$HERE/gen.sh" >/dev/null
if ! diff -r "$GEN_CHECK/governor/v1" "$HERE/gen/governor/v1"; then
  echo "test.sh: gen/ is stale: run 'bash client/go/gen.sh' and commit the result" >&2
  exit 1
fi

# Module mode, offline: the committed go.mod, through a temporary -modfile
# whose replace directives point at Debian's packaged module sources.
export GO111MODULE=on GOPROXY=off GOSUMDB=off GOFLAGS=-mod=mod
export GOPATH="$HERE/.build/modpath"
export GOCACHE="$HERE/.build/gocache"
MODFILE="$(bash "$HERE/modfile.sh" "$GEN_CHECK/mod")"
cd "$HERE"
go version

# The committed go.mod is tidy: go mod tidy changes none of its requirements.
requires() { sed -n '/^require/,/^)/p' "$1"; }
go mod tidy -modfile="$MODFILE"
if ! diff <(requires "$HERE/go.mod") <(requires "$MODFILE"); then
  echo "test.sh: go.mod is not tidy (above: committed vs go mod tidy)" >&2
  exit 1
fi

# From here on every go command (the example build in TestExampleProgram
# included) uses the temporary modfile.
export GOFLAGS="-mod=mod -modfile=$MODFILE"
echo "test.sh: go build and go vet (module mode)"
go build ./...
go vet ./...

# The documented grpcurl session (docs/any-language.md), asserted.
bash "$REPO/docs/grpcurl-check.sh"

# Last, so its summary line closes the output. The example program is built
# and run by TestExampleProgram.
echo "test.sh: go test -v (governor: $GOVERNOR_BIN)"
go test -v -count=1 ./governorclient
