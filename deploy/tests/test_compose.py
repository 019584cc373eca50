"""The compose stack: schema validation against the Compose Specification's
JSON schema (shipped in the docker-compose 1.29.2 wheel; see test.sh), the
wiring governor → collector → Jaeger, and the load script against the real
binary."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

import dockerfile
import helpers

COMPOSE = helpers.DEPLOY / "compose"
SCHEMA = helpers.DEPLOY / ".venv" / "compose-spec" / "compose_spec.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def collector() -> dict:
    return yaml.safe_load((COMPOSE / "otel-collector.yaml").read_text())


@pytest.fixture(scope="module")
def validator():
    if not SCHEMA.is_file():
        pytest.fail(f"{SCHEMA} missing: run deploy/test.sh, which extracts it")
    schema = json.loads(SCHEMA.read_text())
    # The 2021 schema predates the top-level `name` of today's spec.
    schema["properties"]["name"] = {"type": "string"}
    return jsonschema.Draft201909Validator(schema)


def test_compose_file_matches_the_compose_schema(compose, validator):
    errors = sorted(validator.iter_errors(compose), key=str)
    assert not errors, "\n".join(e.message for e in errors)


def test_compose_schema_rejects_a_typo(compose, validator):
    bad = copy.deepcopy(compose)
    bad["services"]["governor"]["enviroment"] = bad["services"]["governor"].pop("environment")
    assert list(validator.iter_errors(bad))


def _host_path(spec: str) -> tuple[Path, str]:
    host, target = spec.split(":")[:2]
    return (COMPOSE / host).resolve(), target


def test_governor_is_built_from_the_dockerfile(compose):
    build = compose["services"]["governor"]["build"]
    ctx = (COMPOSE / build["context"]).resolve()
    assert ctx == helpers.REPO
    assert (ctx / build["dockerfile"]).resolve() == helpers.DEPLOY / "docker" / "Dockerfile"


def test_governor_config_mount(compose):
    gov = compose["services"]["governor"]
    args = helpers.parse_args(gov["command"])
    assert args.get("--watch-config") is True
    config = args["--config"]
    mounts = [_host_path(v) for v in gov["volumes"]]
    (host_dir,) = [h for h, t in mounts if t == os.path.dirname(config)]
    # A directory mount, so edits that replace the file are seen.
    assert host_dir.is_dir()
    assert (host_dir / os.path.basename(config)).is_file()


def test_governor_ports_match_its_config(compose):
    gov = compose["services"]["governor"]
    config = helpers.parse_args(gov["command"])["--config"]
    host_dir = next(h for h, t in map(_host_path, gov["volumes"]) if t == os.path.dirname(config))
    server = tomllib.loads((host_dir / os.path.basename(config)).read_text())["server"]
    published = {int(p.rsplit(":", 1)[1]) for p in gov["ports"]}
    # The read-only listeners are published (on the host's loopback); the
    # data and control plane stay on the container's loopback.
    assert published == {
        helpers.split_hostport(server["health_listen"])[1],
        helpers.split_hostport(server["admin_listen"])[1],
    }
    assert all(p.startswith("127.0.0.1:") for p in gov["ports"])
    assert helpers.is_loopback(helpers.split_hostport(server["listen"])[0])
    assert "admin_token_file" not in server


def test_load_reaches_the_loopback_data_plane(compose):
    load = compose["services"]["load"]
    assert load["network_mode"] == "service:governor"
    host, port = helpers.split_hostport(load["environment"]["GOVERNOR_ADDR"])
    gov = compose["services"]["governor"]
    config = helpers.parse_args(gov["command"])["--config"]
    host_dir = next(h for h, t in map(_host_path, gov["volumes"]) if t == os.path.dirname(config))
    server = tomllib.loads((host_dir / os.path.basename(config)).read_text())["server"]
    assert (host, port) == helpers.split_hostport(server["listen"])


def test_traces_flow_governor_collector_jaeger(compose, collector):
    services = compose["services"]
    env = services["governor"]["environment"]
    assert env["OTEL_SERVICE_NAME"]
    url = urlparse(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert url.hostname in services, f"{url.hostname} is not a compose service"
    col = services[url.hostname]
    assert col["image"].startswith("otel/opentelemetry-collector-contrib:")
    config_arg = next(a for a in col["command"] if a.startswith("--config="))
    host, target = _host_path(col["volumes"][0])
    assert target == config_arg.split("=", 1)[1]
    assert host == (COMPOSE / "otel-collector.yaml").resolve()

    grpc_recv = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert helpers.split_hostport(grpc_recv) == ("0.0.0.0", url.port)

    pipeline = collector["service"]["pipelines"]["traces"]
    assert "otlp" in pipeline["receivers"]
    for kind in ("receivers", "processors", "exporters"):
        for name in pipeline[kind]:
            assert name in collector[kind], f"pipeline uses undefined {kind[:-1]} {name}"
    for ext in collector["service"].get("extensions", []):
        assert ext in collector["extensions"]
    jaeger_exporters = [e for e in pipeline["exporters"] if e.startswith("otlp")]
    assert jaeger_exporters
    jaeger_host, jaeger_port = helpers.split_hostport(collector["exporters"][jaeger_exporters[0]]["endpoint"])
    assert jaeger_host in services and jaeger_port == 4317
    jaeger = services[jaeger_host]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert any(p.endswith(":16686") for p in jaeger["ports"])


def test_images_are_pinned(compose):
    for name, svc in compose["services"].items():
        if "image" in svc and "build" not in svc:
            tag = svc["image"].rsplit(":", 1)
            assert len(tag) == 2 and tag[1] != "latest" and re.search(r"\d", tag[1]), name


def test_load_service_waits_for_a_healthy_governor(compose):
    load = compose["services"]["load"]
    assert load["depends_on"]["governor"]["condition"] == "service_healthy"
    # service_healthy needs the image's HEALTHCHECK.
    final = dockerfile.stages(dockerfile.parse(helpers.DEPLOY / "docker" / "Dockerfile"))
    assert any(i.cmd == "HEALTHCHECK" for i in final[max(final)])
    host, target = _host_path(load["volumes"][0])
    assert host == (COMPOSE / "load.sh").resolve() and load["entrypoint"][-1] == target
    # The address itself: test_load_reaches_the_loopback_data_plane.


def test_compose_governor_config_passes_check_config(governor_bin):
    res = subprocess.run(
        [str(governor_bin), "--check-config", str(COMPOSE / "config" / "governor.toml")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


def test_load_script_drives_the_governor(governor_bin, pb, tmp_path):
    """compose/load.sh (with grpcurl from the venv) against the real binary:
    every acquisition is released and the governor's own counters agree."""
    import grpc  # noqa: PLC0415

    args = [
        "--config", str(COMPOSE / "config" / "governor.toml"),
        "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
        "--health-listen", "127.0.0.1:0",
    ]
    with helpers.Governor(governor_bin, args) as gov:
        env = {
            **os.environ,
            "GOVERNOR_ADDR": gov.grpc,
            "ITERATIONS": "10",
            "WORKERS": "3",
            "DEPENDENCIES": "payments inventory",
            "HOLD": "0.01",
            "GRPCURL": str(helpers.VENV_BIN / "grpcurl"),
            "TMPDIR": str(tmp_path),
        }
        res = subprocess.run(
            ["sh", str(COMPOSE / "load.sh")], env=env, capture_output=True, text=True, timeout=180
        )
        assert res.returncode == 0, res.stdout + res.stderr
        m = re.search(r"^load: (\d+) acquired, (\d+) rejected, (\d+) released, (\d+) errors$", res.stdout, re.M)
        assert m, res.stdout
        acquired, rejected, released, errors = map(int, m.groups())
        assert acquired + rejected == 30 and errors == 0
        assert released == acquired and acquired > 0
        with grpc.insecure_channel(gov.grpc) as ch:
            admin = pb.grpc.GovernorAdminStub(ch)
            deps = {
                d.name: d
                for d in admin.ListDependencies(pb.pb2.ListDependenciesRequest(), timeout=5).dependencies
            }
        assert sum(deps[n].granted_total for n in ("payments", "inventory")) == acquired
        assert sum(deps[n].rejected_total for n in ("payments", "inventory")) == rejected
        assert all(deps[n].in_flight == 0 for n in ("payments", "inventory"))
        gov.stop()
