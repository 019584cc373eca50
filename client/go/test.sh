#!/usr/bin/env bash
# Builds and tests the Go client example against the real governor binary,
# offline, with Debian's Go toolchain and gRPC packages in GOPATH mode.
#
#   bash client/go/test.sh            # from any directory
#   GOVERNOR_BIN=/path/to/governor bash client/go/test.sh
#
# Steps: install the Debian packages if missing, generate the Go stubs
# (gen.sh), go vet, docs/grpcurl-check.sh (the grpcurl session documented in
# docs/any-language.md), then go test -v (which starts the sidecar on a free
# port).
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

bash "$HERE/gen.sh"

# GOPATH mode, offline: the example's import path points back at this folder
# through a symlink; everything else comes from Debian's /usr/share/gocode.
IMPORT_ROOT="github.com/governor-sidecar/governor/client/go"
GOPATH_DIR="$HERE/.build/gopath"
mkdir -p "$GOPATH_DIR/src/$(dirname "$IMPORT_ROOT")"
ln -sfn "$HERE" "$GOPATH_DIR/src/$IMPORT_ROOT"
export GO111MODULE=off
export GOPATH="$GOPATH_DIR:/usr/share/gocode"
export GOPROXY=off
export GOFLAGS=
export GOCACHE="$HERE/.build/gocache"

cd "$GOPATH_DIR/src/$IMPORT_ROOT"
go version
echo "test.sh: go vet"
go vet "$IMPORT_ROOT/governorclient" "$IMPORT_ROOT/cmd/governor-example"

# The documented grpcurl session (docs/any-language.md), asserted.
bash "$REPO/docs/grpcurl-check.sh"

# Last, so its summary line closes the output. The example program is built
# and run by TestExampleProgram.
echo "test.sh: go test -v (governor: $GOVERNOR_BIN)"
go test -v -count=1 "$IMPORT_ROOT/governorclient"
