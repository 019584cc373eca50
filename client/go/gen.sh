#!/usr/bin/env bash
# Generates the Go stubs for governor.v1 into client/go/gen/governor/v1
# (package governorv1). The proto has no go_package option, so the import
# path is given with protoc's M mapping. Needs protoc, protoc-gen-go and
# protoc-gen-go-grpc on PATH (Debian: protobuf-compiler, protoc-gen-go,
# protoc-gen-go-grpc) and the well-known types (Debian: libprotobuf-dev).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PROTO_DIR="$REPO/proto"
PROTO="governor/v1/governor.proto"
# Override GO_PKG (import path) and GEN_OUT (output root) to generate for
# another layout, e.g. inside your own module.
GO_PKG="${GO_PKG:-github.com/governor-sidecar/governor/client/go/gen/governor/v1}"
OUT="${GEN_OUT:-$HERE/gen}"

# Directory holding google/protobuf/duration.proto.
WKT_DIR="${PROTOC_INCLUDE:-/usr/include}"
if [ ! -f "$WKT_DIR/google/protobuf/duration.proto" ]; then
  echo "gen.sh: google/protobuf/duration.proto not found under $WKT_DIR" >&2
  echo "gen.sh: install libprotobuf-dev or set PROTOC_INCLUDE" >&2
  exit 1
fi

mkdir -p "$OUT"
rm -f "$OUT/governor/v1/"*.go
protoc \
  -I "$PROTO_DIR" -I "$WKT_DIR" \
  --go_out="$OUT" --go_opt=paths=source_relative \
  --go_opt="M$PROTO=$GO_PKG;governorv1" \
  --go-grpc_out="$OUT" --go-grpc_opt=paths=source_relative \
  --go-grpc_opt="M$PROTO=$GO_PKG;governorv1" \
  "$PROTO"
echo "gen.sh: wrote $(ls "$OUT/governor/v1/"*.go | wc -l) files to $OUT/governor/v1"
