"""The package as pip installs it from the folder (not the editable install the
other tests use): the stubs, type information and API are all in the wheel, and
the installed copy works against the real sidecar."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PKG_DIR = Path(__file__).resolve().parents[1]

SMOKE = """
import sys
import governor_client
from governor_client import Governor, Outcome
assert governor_client.__file__.startswith(sys.argv[2]), governor_client.__file__
gov = Governor(sys.argv[1], fail_open=False)
with gov.permit("installed") as permit:
    assert permit.lease_id and not permit.degraded
print("released", permit.outcome.name)
gov.close()
"""


def test_pip_installs_the_folder_and_the_installed_copy_works(sidecar, tmp_path):
    target = tmp_path / "site"
    # --no-deps: grpcio and protobuf come from this venv; the package itself is
    # built from the folder by setuptools, as `pip install client/python` does.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(PKG_DIR)],
        check=True,
    )
    installed = target / "governor_client"
    for name in ["py.typed", "v1/governor_pb2.py", "v1/governor_pb2.pyi", "v1/governor_pb2_grpc.py", "_aio.py"]:
        assert (installed / name).is_file(), f"{name} missing from the installed package"
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", SMOKE, sidecar.addr, str(target)],
        check=True, capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert out.stdout.strip() == "released SUCCESS"
    assert sidecar.in_flight("installed") == 0
