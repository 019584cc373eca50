from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

import helpers


@pytest.fixture(scope="session")
def built() -> dict[str, list[dict]]:
    """`kubectl kustomize` output of base, example and inject."""
    return {name: helpers.kustomize(name) for name in helpers.KUSTOMIZATIONS}


@pytest.fixture(scope="session")
def governor_bin() -> Path:
    path = helpers.governor_bin()
    if not path.is_file() or not path.stat().st_mode & 0o111:
        pytest.fail(
            f"governor binary not found at {path}: build it with "
            "`cargo build -p rate-governor --bin governor` or point GOVERNOR_BIN at one "
            "(e.g. GOVERNOR_BIN=/tmp/governor-dev/governor)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """governor.v1 protobuf/gRPC modules generated from the repo's proto."""
    out = tmp_path_factory.mktemp("stubs")
    proto_root = helpers.REPO / "proto"
    res = subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{proto_root}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "governor/v1/governor.proto",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    sys.path.insert(0, str(out))
    from governor.v1 import governor_pb2, governor_pb2_grpc  # noqa: PLC0415

    class Stubs:
        pb2 = governor_pb2
        grpc = governor_pb2_grpc

    return Stubs


def health_status(target: str, service: str, authority: str | None = None) -> str:
    """grpc.health.v1 Check → status name (or the gRPC error code's name)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    options = [("grpc.default_authority", authority)] if authority else []
    with grpc.insecure_channel(target, options=options) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as e:
            return e.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
