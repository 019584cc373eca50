"""Static checks of the Kubernetes manifests, on `kubectl kustomize` output."""

from __future__ import annotations

import copy
import os
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

import helpers

# Native sidecars (restartable init containers) are on by default from 1.29.
K8S_VERSIONS = ["1.29.0", "1.33.0"]


def test_base_has_the_configmap(built):
    cms = helpers.find(built["base"], "ConfigMap")
    assert [c["metadata"]["name"] for c in cms] == ["governor-config"]
    assert set(cms[0]["data"]) == {"governor.toml"}
    assert cms[0]["data"]["governor.toml"] == (helpers.K8S / "base" / "governor.toml").read_text()


@pytest.mark.parametrize("name", helpers.KUSTOMIZATIONS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_kubernetes_schema(built, name, version):
    docs = built[name]
    assert docs, f"{name} built no resources"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_rejects_a_broken_sidecar(built):
    """The validator is strict enough to catch a misspelled probe field."""
    dep = copy.deepcopy(helpers.find(built["example"], "Deployment")[0])
    sidecar = dep["spec"]["template"]["spec"]["initContainers"][0]
    sidecar["readinessProbe"]["grpc"]["serviceName"] = sidecar["readinessProbe"]["grpc"].pop("service")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("name", helpers.WORKLOADS)
def test_every_deployment_of_workloads_is_accounted_for(built, name):
    deps = helpers.find(built[name], "Deployment")
    injected = {s.deployment["metadata"]["name"] for s in helpers.sidecars(built[name])}
    opted_out = {
        d["metadata"]["name"]
        for d in deps
        if d["metadata"].get("annotations", {}).get("governor.dev/inject") == "false"
    }
    assert injected, f"{name}: no Deployment has the governor sidecar"
    assert injected | opted_out == {d["metadata"]["name"] for d in deps}
    assert not injected & opted_out


@pytest.fixture(params=helpers.WORKLOADS)
def sidecars(request, built):
    return helpers.sidecars(built[request.param])


def test_governor_is_a_native_sidecar(sidecars):
    for s in sidecars:
        assert s.container.get("restartPolicy") == "Always"
        assert all(c["name"] != helpers.SIDECAR for c in s.pod["containers"])
        assert s.app_containers, "the pod has no application container"
        assert s.pod.get("shareProcessNamespace") is False


def test_image_is_set_by_kustomize_images(sidecars):
    for s in sidecars:
        image = s.container["image"]
        assert "/" in image and ":" in image.rsplit("/", 1)[1], f"unresolved image {image!r}"


def test_data_and_control_plane_stay_off_the_pod_network(sidecars):
    # The containers of a pod share its loopback; the pod network does not.
    for s in sidecars:
        host, _ = helpers.split_hostport(s.listen)
        assert helpers.is_loopback(host), f"gRPC data plane on {s.listen}: reachable from the pod network"
        assert s.control_plane in ("all", "uds", "off")
        assert "admin_token_file" not in s.config.get("server", {}), "no token needed on loopback"


def test_only_read_only_listeners_bind_all_interfaces(sidecars):
    # Kubelet probes and Prometheus connect to the pod IP, not to loopback:
    # those two listeners serve nothing that changes state.
    for s in sidecars:
        assert s.admin_listen is not None, "no admin listener: nothing for Prometheus to scrape"
        assert helpers.split_hostport(s.admin_listen)[0] in ("0.0.0.0", "::")
        assert s.health_listen is not None, "no health listener: nothing for the kubelet to probe"
        assert helpers.split_hostport(s.health_listen)[0] in ("0.0.0.0", "::")


def test_probes_hit_the_health_listener_and_served_health_names(sidecars):
    for s in sidecars:
        _, port = helpers.split_hostport(s.health_listen)
        assert port != helpers.split_hostport(s.listen)[1]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            p = s.container.get(probe)
            assert p, f"{probe} missing"
            assert "grpc" in p, f"{probe} is not a gRPC probe"
            assert p["grpc"]["port"] == port, f"{probe} port {p['grpc']['port']} != health port {port}"
            assert p["grpc"].get("service", "") in helpers.SERVED_HEALTH_SERVICES
        assert s.container["readinessProbe"]["grpc"]["service"] == "governor.v1.Governor"


def test_container_ports_match_listeners(sidecars):
    for s in sidecars:
        declared = {p["containerPort"] for p in s.container["ports"]}
        assert helpers.split_hostport(s.health_listen)[1] in declared
        assert helpers.split_hostport(s.admin_listen)[1] in declared
        # The loopback gRPC port is not a pod port: nothing outside may use it.
        assert helpers.split_hostport(s.listen)[1] not in declared


def test_prometheus_scrape_annotations_match_admin_listener(sidecars):
    for s in sidecars:
        ann = s.deployment["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert ann["prometheus.io/path"] == "/metrics"
        assert ann["prometheus.io/port"] == str(helpers.split_hostport(s.admin_listen)[1])


def test_otlp_export_is_configured(sidecars):
    for s in sidecars:
        env = {e["name"]: e for e in s.container["env"]}
        url = urlparse(env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"])
        assert url.scheme in ("http", "https") and url.hostname and url.port == 4317
        assert env["OTEL_SERVICE_NAME"]["value"]
        # $(VAR) references in OTEL_RESOURCE_ATTRIBUTES only expand for
        # variables defined earlier in the list.
        names = [e["name"] for e in s.container["env"]]
        attrs = env["OTEL_RESOURCE_ATTRIBUTES"]["value"]
        for var in ("POD_NAME", "POD_NAMESPACE", "NODE_NAME"):
            if f"$({var})" in attrs:
                assert names.index(var) < names.index("OTEL_RESOURCE_ATTRIBUTES")


def test_config_is_a_live_updating_configmap_mount(sidecars):
    for s in sidecars:
        assert s.args.get("--watch-config") is True
        mount = next(
            m for m in s.container["volumeMounts"] if m["name"] == s.config_volume["name"]
        )
        # subPath mounts never see ConfigMap updates.
        assert "subPath" not in mount and "subPathExpr" not in mount
        assert mount.get("readOnly") is True
        assert mount["mountPath"] == os.path.dirname(s.args["--config"])
        # A hash-suffixed name would roll the Deployment on every edit instead.
        assert s.configmap["metadata"]["name"] == "governor-config"
        assert s.config_volume["configMap"]["name"] == "governor-config"


def test_unix_socket_lives_in_a_shared_emptydir(sidecars):
    for s in sidecars:
        assert s.uds, "no --uds / server.uds"
        sock_dir = os.path.dirname(s.uds)
        mounts = {m["mountPath"]: m["name"] for m in s.container["volumeMounts"]}
        assert sock_dir in mounts, f"socket dir {sock_dir} is not a volume mount"
        vol = next(v for v in s.pod["volumes"] if v["name"] == mounts[sock_dir])
        assert "emptyDir" in vol


def test_example_app_reaches_the_governor(built):
    (s,) = helpers.sidecars(built["example"])
    (app,) = s.app_containers
    env = {e["name"]: e.get("value") for e in app.get("env", [])}
    assert env["GOVERNOR_ADDR"] == f"localhost:{helpers.split_hostport(s.listen)[1]}"
    assert env["GOVERNOR_UDS"] == f"unix://{s.uds}"
    app_mounts = {m["mountPath"]: m["name"] for m in app["volumeMounts"]}
    sidecar_mounts = {m["mountPath"]: m["name"] for m in s.container["volumeMounts"]}
    sock_dir = os.path.dirname(s.uds)
    assert app_mounts.get(sock_dir) == sidecar_mounts[sock_dir]


def _effective_security(pod: dict, container: dict) -> dict:
    merged = {k: v for k, v in pod.get("securityContext", {}).items() if k in (
        "runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")}
    merged.update(container.get("securityContext", {}))
    return merged


def test_restrictive_security_context(built):
    checked = 0
    for name in helpers.WORKLOADS:
        for s in helpers.sidecars(built[name]):
            containers = [s.container]
            if name == "example":
                containers += s.app_containers
            for c in containers:
                sc = _effective_security(s.pod, c)
                where = f"{name}/{c['name']}"
                assert sc.get("runAsNonRoot") is True, where
                assert sc.get("runAsUser", 1) != 0, where
                assert sc.get("readOnlyRootFilesystem") is True, where
                assert sc.get("allowPrivilegeEscalation") is False, where
                assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
                assert not sc.get("capabilities", {}).get("add"), where
                assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
                checked += 1
    assert checked >= 3


def test_sidecar_security_context_stands_alone(built):
    """Injected into pods whose securityContext we do not control, the
    sidecar's own securityContext carries every restriction."""
    for s in helpers.sidecars(built["inject"]):
        sc = s.container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"


def test_resources_have_requests_within_limits(sidecars):
    for s in sidecars:
        for c in [s.container, *s.app_containers]:
            res = c["resources"]
            for r in ("cpu", "memory"):
                req, lim = res["requests"][r], res["limits"][r]
                assert helpers.parse_quantity(req) <= helpers.parse_quantity(lim), (c["name"], r)


def test_termination_grace_outlasts_the_drain(sidecars):
    for s in sidecars:
        grace = s.pod.get("terminationGracePeriodSeconds", 30)
        assert grace > s.shutdown_grace_s


def test_inject_applies_values(built):
    values = yaml.safe_load((helpers.K8S / "inject" / "values.yaml").read_text())["spec"]
    (s,) = helpers.sidecars(built["inject"])
    assert helpers.split_hostport(s.listen) == ("127.0.0.1", values["grpcPort"])
    assert helpers.split_hostport(s.health_listen)[1] == values["healthPort"]
    assert helpers.split_hostport(s.admin_listen)[1] == values["adminPort"]
    assert s.container["resources"] == values["resources"]
    # The values resource itself is local config, not applied to the cluster.
    assert not helpers.find(built["inject"], "GovernorSidecarValues")
    # The overlay's governor.toml replaced the base one.
    assert s.config_text == (helpers.K8S / "inject" / "governor.toml").read_text()


def test_inject_keeps_the_existing_deployment(built):
    existing = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((helpers.K8S / "inject" / "existing-app.yaml").read_text())
        if d
    }
    out = {d["metadata"]["name"]: d for d in helpers.find(built["inject"], "Deployment")}
    assert set(out) == set(existing)
    for name, orig in existing.items():
        spec = out[name]["spec"]["template"]["spec"]
        assert spec["containers"] == orig["spec"]["template"]["spec"]["containers"]
        assert spec["securityContext"] == orig["spec"]["template"]["spec"]["securityContext"]
    opted_out = out["orders-migrations"]["spec"]["template"]
    assert "initContainers" not in opted_out["spec"]
    assert "annotations" not in opted_out["metadata"]
