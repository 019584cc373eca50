"""The container image: Dockerfile lint and structure, its build context, the
dependency-layer skeleton, and the image's entrypoint/healthcheck contract
checked against the real binary."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

import dockerfile
import helpers
from conftest import health_status

DOCKER = helpers.DEPLOY / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
IGNORE = DOCKER / "Dockerfile.dockerignore"
BUILD = "cargo build --release --locked -p rate-governor --bin governor"
BINARY = "/usr/local/bin/governor"
CONFIG = "/etc/governor/governor.toml"


@pytest.fixture(scope="module")
def instrs():
    return dockerfile.parse(DOCKERFILE)


@pytest.fixture(scope="module")
def final(instrs):
    st = dockerfile.stages(instrs)
    return st[max(st)]


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(helpers.VENV_BIN / "hadolint"), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_passes():
    res = _hadolint(DOCKERFILE)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\nUSER root\n")
    res = _hadolint(bad)
    assert res.returncode != 0
    assert "DL3007" in res.stdout  # :latest


def test_multi_stage_build_of_the_governor_binary(instrs):
    st = dockerfile.stages(instrs)
    assert len(st) >= 2
    froms = [i for i in instrs if i.cmd == "FROM"]
    args = {
        k: v
        for i in instrs
        if i.cmd == "ARG" and "=" in i.value
        for k, v in [i.value.split("=", 1)]
    }
    resolve = lambda s: re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], s)  # noqa: E731
    assert resolve(froms[0].value.split()[0]).startswith("rust:")
    builds = [i for i in instrs if i.cmd == "RUN" and BUILD in i.value]
    # One build on the stubbed workspace (dependency layer), one on the sources.
    assert len(builds) == 2 and builds[0].stage == builds[1].stage
    copies = [i for i in dockerfile.stages(instrs)[builds[0].stage] if i.cmd == "COPY"]
    assert copies[0].line < builds[0].line and "--from=skeleton" in copies[0].value
    assert any(c.value == ". ." and builds[0].line < c.line < builds[1].line for c in copies)
    runtime = resolve(froms[-1].value.split()[0])
    assert runtime.startswith("gcr.io/distroless/cc-debian12") and runtime.endswith(":nonroot")


def test_runtime_stage_contract(final):
    by = {}
    for i in final:
        by.setdefault(i.cmd, []).append(i)
    (user,) = by["USER"]
    uid = user.value.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER (runAsNonRoot needs a number)"
    copies = {i.value.split()[-1]: i.value.split()[-2] for i in by["COPY"]}
    assert copies[BINARY] == "/out/governor"
    assert copies[CONFIG] == "deploy/docker/governor.toml"
    assert (helpers.REPO / copies[CONFIG]).is_file()
    assert by["ENTRYPOINT"][0].exec_form() == [BINARY]
    assert by["CMD"][0].exec_form() == ["--config", CONFIG]
    hc = by["HEALTHCHECK"][0].value
    assert hc.split("CMD", 1)[1].strip() == f'["{BINARY}", "probe"]'
    exposed = {int(p.split("/")[0]) for i in by["EXPOSE"] for p in i.value.split()}
    cfg = tomllib.loads((DOCKER / "governor.toml").read_text())["server"]
    assert exposed == {
        helpers.split_hostport(cfg["health_listen"])[1],
        helpers.split_hostport(cfg["admin_listen"])[1],
    } == {50052, 9464}
    # Probes and Prometheus come from outside the container: the read-only
    # listeners bind all interfaces; the data and control plane stay on loopback.
    assert helpers.split_hostport(cfg["health_listen"])[0] == "0.0.0.0"
    assert helpers.split_hostport(cfg["admin_listen"])[0] == "0.0.0.0"
    assert helpers.is_loopback(helpers.split_hostport(cfg["listen"])[0])


def _workspace_files() -> list[str]:
    ws = tomllib.loads((helpers.REPO / "Cargo.toml").read_text())["workspace"]["members"]
    files = ["Cargo.toml", "Cargo.lock"]
    for member in ws:
        root = helpers.REPO / member
        files.append(f"{member}/Cargo.toml")
        for sub in ("src", "benches", "examples", "tests", "build.rs"):
            p = root / sub
            if p.is_file():
                files.append(f"{member}/{sub}")
            elif p.is_dir():
                files += [
                    str(f.relative_to(helpers.REPO))
                    for f in p.rglob("*")
                    if f.is_file() and "target" not in f.parts
                ]
    files += [str(p.relative_to(helpers.REPO)) for p in (helpers.REPO / "proto").rglob("*.proto")]
    return files


def test_dockerignore_keeps_what_the_build_needs():
    ign = dockerfile.DockerIgnore(IGNORE)
    needed = _workspace_files() + ["deploy/docker/governor.toml"]
    assert len(needed) > 5
    assert [f for f in needed if ign.excluded(f)] == []


def test_dockerignore_drops_heavy_and_unrelated_trees():
    ign = dockerfile.DockerIgnore(IGNORE)
    for path in (
        "target/debug/governor",
        ".git/HEAD",
        "client/node/node_modules/x/index.js",
        "deploy/.venv/bin/python",
        "deploy/k8s/base/governor.toml",
        "client/python/pyproject.toml",
    ):
        assert ign.excluded(path), path


def _context_copy(dest: Path) -> None:
    ign = dockerfile.DockerIgnore(IGNORE)
    for root, dirs, files in os.walk(helpers.REPO):
        rel_root = os.path.relpath(root, helpers.REPO)
        dirs[:] = [
            d for d in dirs
            if d not in (".git", "target", "node_modules", ".venv", "__pycache__")
        ]
        for f in files:
            rel = os.path.normpath(os.path.join(rel_root, f))
            if not ign.excluded(rel):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.join(root, f), dest / rel)


def test_dependency_skeleton_is_a_loadable_workspace(instrs, tmp_path):
    """Runs the skeleton stage's RUN on a copy of the build context and checks
    cargo can load the stubbed workspace (missing bench/example files, for
    instance, would break the cached dependency build)."""
    if shutil.which("cargo") is None:
        pytest.fail("cargo is needed to check the Dockerfile's dependency skeleton")
    skeleton = dockerfile.stages(instrs)[0]
    shell = next(i for i in skeleton if i.cmd == "SHELL").exec_form()
    (run,) = [i for i in skeleton if i.cmd == "RUN"]
    ctx = tmp_path / "src"
    ctx.mkdir()
    _context_copy(ctx)
    res = subprocess.run([*shell, run.value], cwd=ctx, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    left = sorted(str(p.relative_to(ctx)) for p in ctx.rglob("*") if p.is_file())
    assert "Cargo.lock" in left and "governor/Cargo.toml" in left
    assert all(p.endswith((".rs", "Cargo.toml", "Cargo.lock")) for p in left), left
    assert all((ctx / p).read_text() == "fn main() {}\n" for p in left if p.endswith(".rs"))
    meta = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--offline", "--locked", "--format-version", "1"],
        cwd=ctx,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert meta.returncode == 0, meta.stderr
    assert '"name":"governor"' in meta.stdout.replace(" ", "")


def _image_args(listen="127.0.0.1:0", admin="127.0.0.1:0", health="127.0.0.1:0") -> list[str]:
    """The image's CMD with the config path mapped to its COPY source and the
    listeners moved to free loopback ports."""
    return [
        "--config", str(DOCKER / "governor.toml"),
        "--listen", listen, "--admin-listen", admin, "--health-listen", health,
    ]


def _probe(binary, *args) -> int:
    return subprocess.run(
        [str(binary), "probe", *args], capture_output=True, timeout=30
    ).returncode


def test_probe_defaults_match_the_image_config(governor_bin):
    """The HEALTHCHECK runs `governor probe` without flags: its default address
    must be the embedded config's gRPC port on loopback, and its default
    service the one Kubernetes readiness asks for."""
    out = subprocess.run([str(governor_bin), "probe", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    addr = re.search(r"--addr <ADDR>.*?\[default: (\S+?)\]", out.stdout, re.S).group(1)
    service = re.search(r"--service <SERVICE>.*?\[default: (\S+?)\]", out.stdout, re.S).group(1)
    cfg = tomllib.loads((DOCKER / "governor.toml").read_text())["server"]
    assert helpers.split_hostport(addr) == ("127.0.0.1", helpers.split_hostport(cfg["listen"])[1])
    assert service == "governor.v1.Governor"


def test_image_config_serves_and_healthcheck_probe_works(governor_bin):
    with helpers.Governor(governor_bin, _image_args()) as gov:
        assert health_status(gov.grpc, "governor.v1.Governor") == "SERVING"
        assert _probe(governor_bin, "--addr", gov.grpc) == 0
        assert _probe(governor_bin, "--addr", gov.grpc, "--service", "") == 0
        assert _probe(governor_bin, "--addr", gov.grpc, "--service", "no.such.Service") != 0
        # The health-only listener answers the probe too, and serves nothing else.
        assert gov.health, f"no health= in {gov.ready_line!r}"
        assert _probe(governor_bin, "--addr", gov.health) == 0
        assert _probe(governor_bin, "--addr", gov.health, "--service", "") == 0
        addr = gov.grpc
        gov.stop()
    assert gov.proc.returncode is not None
    # Nothing listens any more: the health check must now fail.
    assert _probe(governor_bin, "--addr", addr, "--timeout", "1s") != 0


def test_image_config_passes_check_config(governor_bin):
    res = subprocess.run(
        [str(governor_bin), "--check-config", str(DOCKER / "governor.toml")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


def test_entrypoint_args_are_accepted(governor_bin, instrs):
    """Every flag the image and the manifests pass exists in the binary."""
    out = subprocess.run([str(governor_bin), "--help"], capture_output=True, text=True).stdout
    used = {
        "--config", "--watch-config", "--listen", "--admin-listen", "--uds", "--log-format",
        "--health-listen",
    }
    for flag in used:
        assert re.search(rf"^\s+{re.escape(flag)}\b", out, re.M), flag
    assert re.search(r"^\s+probe\b", out, re.M), "no `probe` subcommand for the HEALTHCHECK"
