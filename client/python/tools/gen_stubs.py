#!/usr/bin/env python3
"""Generate (or check) the protobuf/gRPC stubs shipped in ``governor_client.v1``.

Usage::

    python tools/gen_stubs.py           # regenerate src/governor_client/v1/governor_pb2*.py(i)
    python tools/gen_stubs.py --check   # regenerate into a temp dir and diff; exit 1 on drift

The stubs are generated with the pinned ``grpcio-tools`` (see the ``test`` extra
in pyproject.toml) from ``proto/governor/v1/governor.proto`` at the repository
root. protoc writes ``from governor.v1 import governor_pb2`` into the gRPC
module; that import is rewritten so the stubs import from this package.
"""
from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PKG_ROOT = HERE.parent
REPO_ROOT = PKG_ROOT.parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_FILE = PROTO_ROOT / "governor" / "v1" / "governor.proto"
OUT_DIR = PKG_ROOT / "src" / "governor_client" / "v1"
GENERATED = ("governor_pb2.py", "governor_pb2.pyi", "governor_pb2_grpc.py")

_IMPORT_FROM = "from governor.v1 import governor_pb2 as"
_IMPORT_TO = "from governor_client.v1 import governor_pb2 as"


def generate() -> dict[str, str]:
    """Run protoc (from grpcio-tools) and return {file name: fixed-up text}."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="governor-stubs-") as tmp:
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{well_known}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTO_FILE),
            ]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        out: dict[str, str] = {}
        for name in GENERATED:
            text = (Path(tmp) / "governor" / "v1" / name).read_text(encoding="utf-8")
            if name.endswith("_grpc.py"):
                if _IMPORT_FROM not in text:
                    raise SystemExit(f"expected import line not found in {name}; protoc output changed")
                text = text.replace(_IMPORT_FROM, _IMPORT_TO)
            out[name] = text
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the shipped stubs differ from a fresh generation")
    args = parser.parse_args(argv)

    fresh = generate()
    if args.check:
        drift = False
        for name, text in fresh.items():
            shipped_path = OUT_DIR / name
            shipped = shipped_path.read_text(encoding="utf-8") if shipped_path.exists() else ""
            if shipped != text:
                drift = True
                sys.stdout.writelines(
                    difflib.unified_diff(
                        shipped.splitlines(keepends=True),
                        text.splitlines(keepends=True),
                        fromfile=f"shipped/{name}",
                        tofile=f"generated/{name}",
                    )
                )
        if drift:
            print(
                "stub drift: the shipped stubs in src/governor_client/v1 do not match "
                "proto/governor/v1/governor.proto; run `python tools/gen_stubs.py` and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"stubs up to date ({', '.join(sorted(fresh))})")
        return 0

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in fresh.items():
        (OUT_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote {OUT_DIR / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
