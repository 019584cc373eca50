"""Generated protobuf/gRPC stubs of ``governor.v1`` (see tools/gen_stubs.py; do not edit them by hand)."""
