"""Fixtures: the REAL governor binary on a free port, and a recording fake server."""
from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import grpc
import pytest

from governor_client.v1 import governor_pb2 as pb
from governor_client.v1 import governor_pb2_grpc as pb_grpc

from fake_governor import FakeGovernor

REPO_ROOT = Path(__file__).resolve().parents[3]
READY_RE = re.compile(r"^governor ready grpc=(\S+)(?: uds=(\S+))?(?: admin=(\S+))?\s*$")
READY_TIMEOUT = 30.0

#: Dependencies of the shared sidecar: one (or two) per test, so tests cannot
#: disturb each other through shared state.
DEPENDENCIES: Dict[str, Dict[str, object]] = {
    "basic-sync": {},
    "basic-async": {},
    "solo-sync": {"max_concurrency": 1, "max_queue": 0},
    "solo-async": {"max_concurrency": 1, "max_queue": 0},
    "full-sync": {"max_concurrency": 1, "max_queue": 0},
    "full-async": {"max_concurrency": 1, "max_queue": 0},
    "qtimeout-sync": {"max_concurrency": 1, "max_queue": 4, "max_wait": "5s"},
    "qtimeout-async": {"max_concurrency": 1, "max_queue": 4, "max_wait": "5s"},
    "renew-sync": {"lease_ttl": "600ms"},
    "renew-async": {"lease_ttl": "600ms"},
    "norenew-sync": {"lease_ttl": "300ms"},
    "norenew-async": {"lease_ttl": "300ms"},
    "killed-client": {"lease_ttl": "300ms"},
    "gc-sync": {},
    "gc-async": {},
    "retry-sync": {},
    "retry-async": {},
    "nobudget-sync": {"retry_budget": {"ratio": 0.0, "min_per_second": 0, "ttl": "10s"}},
    "nobudget-async": {"retry_budget": {"ratio": 0.0, "min_per_second": 0, "ttl": "10s"}},
    "close-sync": {},
    "close-async": {},
    "sess-close-sync": {},
    "sess-close-async": {},
    "sess-full-sync": {"max_concurrency": 1, "max_queue": 4, "max_wait": "5s"},
    "sess-full-async": {"max_concurrency": 1, "max_queue": 4, "max_wait": "5s"},
    "sess-free-sync": {},
    "sess-free-async": {},
    "sess-lost-sync": {},
    "sess-lost-async": {},
    "degrade-sync": {"max_concurrency": 1, "max_queue": 4, "max_wait": "5s"},
    "degrade-async": {"max_concurrency": 1, "max_queue": 4, "max_wait": "5s"},
    # Fair shares from the config file; "fair-admin" gets its own through the admin API.
    "fair-sync": {"max_concurrency": 4, "fairness": {"by": "tenant_route", "weights": {"acme": 3}}},
    "fair-async": {"max_concurrency": 4, "fairness": {"by": "tenant_route", "weights": {"acme": 3}}},
    "fair-admin": {"max_concurrency": 4},
}


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"unsupported TOML value {v!r}")


def render_config(dependencies: Dict[str, Dict[str, object]], limits: Optional[Dict[str, object]] = None) -> str:
    lines = [
        "[server]",
        'listen = "127.0.0.1:0"',
        "",
        "[defaults]",
        "max_concurrency = 64",
        "max_queue = 256",
        'max_wait = "1s"',
        'lease_ttl = "30s"',
        'retry_budget = { ratio = 0.2, min_per_second = 10, ttl = "10s" }',
        "",
        "[limits]",
        "allow_unknown_dependencies = true",
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in (limits or {}).items()]
    for name, limits in dependencies.items():
        lines += ["", f'[dependencies."{name}"]']
        lines += [f"{k} = {_toml_value(v)}" for k, v in limits.items()]
    return "\n".join(lines) + "\n"


def governor_binary() -> Path:
    path = Path(os.environ.get("GOVERNOR_BIN") or REPO_ROOT / "target" / "debug" / "governor")
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"governor binary not found at {path}: build it (cargo build -p rate-governor) "
            "or point GOVERNOR_BIN at one",
            pytrace=False,
        )
    return path


class Sidecar:
    """A running governor process (started with --listen 127.0.0.1:0 and,
    unless the extra args set it, --admin-listen 127.0.0.1:0)."""

    def __init__(self, binary: Path, workdir: Path, config: str, extra_args: Sequence[str] = ()) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "governor.toml"
        self.config_path.write_text(config)
        self.log_path = workdir / "governor.stderr.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(binary), "--config", str(self.config_path), "--listen", "127.0.0.1:0",
                # Never the default admin port: sidecars run side by side.
                *([] if "--admin-listen" in extra_args else ["--admin-listen", "127.0.0.1:0"]),
                *extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
        )
        self.stdout_lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self.addr, self.uds = self._wait_ready()
        self.channel = grpc.insecure_channel(self.addr)
        self.admin = pb_grpc.GovernorAdminStub(self.channel)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.stdout_lines.put(raw.decode("utf-8", "replace"))
        self.stdout_lines.put(None)

    def stderr_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise RuntimeError(f"governor printed no ready line within {READY_TIMEOUT}s; stderr:\n{self.stderr_text()}")
            try:
                line = self.stdout_lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                rc = self.proc.wait()
                raise RuntimeError(f"governor exited with {rc} before it was ready; stderr:\n{self.stderr_text()}")
            m = READY_RE.match(line.strip())
            if m:
                return m.group(1), m.group(2)

    def status(self, name: str) -> pb.DependencyStatus:
        return self.admin.GetDependency(pb.GetDependencyRequest(name=name), timeout=5)

    def in_flight(self, name: str) -> int:
        return self.status(name).in_flight

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "channel"):
            self.channel.close()
        self._log.close()


@pytest.fixture(scope="session")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """The shared sidecar, configured with :data:`DEPENDENCIES`."""
    binary = governor_binary()
    sc = Sidecar(binary, tmp_path_factory.mktemp("governor"), render_config(DEPENDENCIES))
    try:
        yield sc
    finally:
        sc.stop()


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """Start a dedicated sidecar: ``start_sidecar(dependencies, extra_args=[...])``."""
    started: List[Sidecar] = []

    def start(
        dependencies: Optional[Dict[str, Dict[str, object]]] = None,
        extra_args: Sequence[str] = (),
        limits: Optional[Dict[str, object]] = None,
    ) -> Sidecar:
        config = render_config(dependencies or {}, limits)
        sc = Sidecar(governor_binary(), tmp_path / f"governor-{len(started)}", config, extra_args)
        started.append(sc)
        return sc

    yield start
    for sc in started:
        sc.stop()


@pytest.fixture
def fake() -> Iterator[FakeGovernor]:
    """An in-test gRPC server implementing governor.v1.Governor that records every call."""
    server = FakeGovernor()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dead_target() -> str:
    """An address on which nothing listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"
