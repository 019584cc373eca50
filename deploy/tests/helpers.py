"""Shared helpers for the deploy/ checks: paths, built manifests, the sidecar's
effective settings as the manifests define them, and a governor process."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
REPO = DEPLOY.parent
VENV_BIN = Path(sys.executable).parent
K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = ["base", "example", "inject"]
# Kustomizations that contain a Deployment with the sidecar.
WORKLOADS = ["example", "inject"]
SIDECAR = "governor"
# What the binary reports SERVING on grpc.health.v1 (the brief's contract).
SERVED_HEALTH_SERVICES = {"", "governor.v1.Governor"}
# The binary's embedded defaults for settings a config may leave out.
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_SHUTDOWN_GRACE_S = 10.0

READY_RE = re.compile(
    r"^governor ready grpc=(\S+)(?: uds=(\S+))?(?: health=(\S+))?(?: admin=(\S+))?$"
)


def is_loopback(host: str) -> bool:
    """Whether a listener's host part is reachable only from its own network namespace."""
    return host in ("localhost", "::1") or host.startswith("127.")


def kustomize(name: str) -> list[dict]:
    """Builds deploy/k8s/<name> with `kubectl kustomize` and returns its docs."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {name} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [
        d
        for d in docs
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unsupported duration {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parse_quantity(text: str | int | float) -> float:
    """Kubernetes resource quantity (the suffixes used for cpu and memory)."""
    s = str(text)
    suffixes = {
        "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
    }
    for suf in sorted(suffixes, key=len, reverse=True):
        if s.endswith(suf):
            return float(s[: -len(suf)]) * suffixes[suf]
    return float(s)


def split_hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def parse_args(args: list[str]) -> dict[str, str | bool]:
    """The sidecar's args as {flag: value} (True for bare flags)."""
    flags_with_value = {
        "--config", "--listen", "--uds", "--admin-listen", "--log-format", "--check-config",
        "--health-listen",
    }
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if "=" in a and a.startswith("--"):
            k, v = a.split("=", 1)
            out[k] = v
        elif a in flags_with_value:
            out[a] = args[i + 1]
            i += 1
        else:
            out[a] = True
        i += 1
    return out


@dataclass
class Sidecar:
    """The governor sidecar of one Deployment, with what it resolves to."""

    deployment: dict
    container: dict
    args: dict
    config_text: str
    config: dict
    configmap: dict
    config_volume: dict
    app_containers: list[dict] = field(default_factory=list)

    @property
    def pod(self) -> dict:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def listen(self) -> str:
        return str(self.args.get("--listen") or self.config.get("server", {}).get("listen") or DEFAULT_LISTEN)

    @property
    def admin_listen(self) -> str | None:
        v = self.args.get("--admin-listen") or self.config.get("server", {}).get("admin_listen")
        return None if v in (None, "off") else str(v)

    @property
    def health_listen(self) -> str | None:
        v = self.args.get("--health-listen") or self.config.get("server", {}).get("health_listen")
        return None if v in (None, "off") else str(v)

    @property
    def control_plane(self) -> str:
        return str(self.config.get("server", {}).get("control_plane", "all"))

    @property
    def uds(self) -> str | None:
        v = self.args.get("--uds") or self.config.get("server", {}).get("uds")
        return str(v) if v else None

    @property
    def shutdown_grace_s(self) -> float:
        v = self.config.get("server", {}).get("shutdown_grace")
        return parse_duration(v) if v else DEFAULT_SHUTDOWN_GRACE_S


def sidecars(docs: list[dict]) -> list[Sidecar]:
    """Every Deployment's governor sidecar, with its mounted config resolved."""
    result = []
    for dep in find(docs, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        inits = [c for c in pod.get("initContainers", []) if c["name"] == SIDECAR]
        if not inits:
            continue
        c = inits[0]
        args = parse_args(c.get("args", []))
        config_path = args.get("--config")
        assert isinstance(config_path, str), f"{dep['metadata']['name']}: sidecar has no --config"
        mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == os.path.dirname(config_path)]
        assert mounts, f"no volume mounted at {os.path.dirname(config_path)} for --config {config_path}"
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
        assert "configMap" in volume, f"config volume {volume['name']} is not a ConfigMap"
        cms = find(docs, "ConfigMap", volume["configMap"]["name"])
        assert cms, f"ConfigMap {volume['configMap']['name']} is not in the kustomize output"
        key = os.path.basename(config_path)
        text = cms[0]["data"][key]
        result.append(
            Sidecar(
                deployment=dep,
                container=c,
                args=args,
                config_text=text,
                config=tomllib.loads(text),
                configmap=cms[0],
                config_volume=volume,
                app_containers=pod["containers"],
            )
        )
    return result


def governor_bin() -> Path:
    return Path(os.environ.get("GOVERNOR_BIN") or REPO / "target" / "debug" / "governor")


class Governor:
    """A running governor process started with the given args."""

    def __init__(self, binary: Path, args: list[str], env: dict | None = None, timeout: float = 20.0):
        self.args = [str(binary), *args]
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.stderr_lines: list[str] = []
        line = self._read_ready(timeout)
        m = READY_RE.match(line)
        if not m:
            self.kill()
            raise AssertionError(f"unexpected ready line {line!r}; stderr:\n{self.stderr()}")
        self.ready_line = line
        self.grpc, self.uds, self.health, self.admin = m.group(1), m.group(2), m.group(3), m.group(4)

    def _read_ready(self, timeout: float) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        sel.register(self.proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                chunk = os.read(key.fileobj.fileno(), 65536)
                if key.fileobj is self.proc.stderr:
                    if chunk:
                        self.stderr_lines.append(chunk.decode(errors="replace"))
                    continue
                if not chunk:
                    self.proc.wait(timeout=5)
                    raise AssertionError(
                        f"governor exited ({self.proc.returncode}) before its ready line: "
                        f"{' '.join(self.args)}\nstderr:\n{self.stderr()}"
                    )
                buf += chunk
                if b"\n" in buf:
                    sel.close()
                    return buf.split(b"\n", 1)[0].decode()
        self.kill()
        raise AssertionError(f"no ready line within {timeout}s: {' '.join(self.args)}\nstderr:\n{self.stderr()}")

    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait: returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rest = self.proc.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"governor did not exit within {timeout}s of SIGTERM")
        self.stderr_lines.append(rest.decode(errors="replace"))
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> "Governor":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Polls predicate() until it returns a truthy value; returns it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
