"""The sidecar as the manifests run it, against the real binary: the
ConfigMap's config, the container's args (listeners moved to free loopback
ports, the socket into a temp dir), the probes' health service names, the
scrape path, live config reload through a ConfigMap-style mount, and a
restart next to a stale socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest

import helpers
from conftest import health_status


def _configmap_dir(root: Path, text: str, stamp: str = "..2024_01_01_00_00_00.000000001") -> Path:
    """Lays out a directory the way the kubelet mounts a ConfigMap: the key is
    a symlink to ..data/<key>, and ..data a symlink to a timestamped dir that
    is swapped atomically on update."""
    root.mkdir(parents=True, exist_ok=True)
    (root / stamp).mkdir()
    (root / stamp / "governor.toml").write_text(text)
    os.symlink(stamp, root / "..data")
    os.symlink("..data/governor.toml", root / "governor.toml")
    return root / "governor.toml"


def _configmap_update(root: Path, text: str, stamp: str) -> None:
    old = os.readlink(root / "..data")
    (root / stamp).mkdir()
    (root / stamp / "governor.toml").write_text(text)
    os.symlink(stamp, root / "..data_tmp")
    os.rename(root / "..data_tmp", root / "..data")
    for f in (root / old).iterdir():
        f.unlink()
    (root / old).rmdir()


def _local_args(s: helpers.Sidecar, config: Path, sock: Path) -> list[str]:
    """The container's args with the listeners on free loopback ports and the
    socket and config under the test's temp dir."""
    args = list(s.container["args"])
    swap = {
        "--config": str(config),
        "--listen": "127.0.0.1:0",
        "--admin-listen": "127.0.0.1:0",
        "--health-listen": "127.0.0.1:0",
        "--uds": str(sock),
    }
    for i, a in enumerate(args[:-1]):
        if a in swap:
            args[i + 1] = swap[a]
    for flag, value in swap.items():
        if flag not in args:
            args += [flag, value]
    return args


@pytest.fixture(params=helpers.WORKLOADS)
def sidecar(request, built) -> helpers.Sidecar:
    (s,) = helpers.sidecars(built[request.param])
    return s


@pytest.fixture
def running(sidecar, governor_bin, tmp_path):
    config = _configmap_dir(tmp_path / "etc-governor", sidecar.config_text)
    sock = tmp_path / "run-governor" / os.path.basename(sidecar.uds)
    sock.parent.mkdir()
    gov = helpers.Governor(governor_bin, _local_args(sidecar, config, sock))
    yield sidecar, gov, sock
    gov.kill()


def test_check_config_accepts_the_configmaps(built, governor_bin, tmp_path):
    checked = 0
    for name in helpers.KUSTOMIZATIONS:
        for cm in helpers.find(built[name], "ConfigMap"):
            f = tmp_path / f"{name}-{cm['metadata']['name']}.toml"
            f.write_text(cm["data"]["governor.toml"])
            res = subprocess.run(
                [str(governor_bin), "--check-config", str(f)], capture_output=True, text=True
            )
            assert res.returncode == 0, f"{name}: {res.stdout}{res.stderr}"
            checked += 1
    assert checked == 3


def test_check_config_rejects_a_bad_key(governor_bin, tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[dependencies.payments]\nmax_concurency = 8\n')
    res = subprocess.run([str(governor_bin), "--check-config", str(f)], capture_output=True, text=True)
    assert res.returncode == 64
    assert "max_concurency" in res.stdout + res.stderr


def _commented_table(text: str, header: str) -> str:
    """A commented-out TOML table of the file: from `# [header]` to the
    first line that is not a `# ` comment, uncommented once."""
    lines = text.splitlines()
    start = lines.index(f"# {header}")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    return "\n".join(block) + "\n"


def test_check_config_accepts_the_commented_fleet_example(governor_bin, tmp_path):
    """The base ConfigMap's [fleet] and [dependencies.payments.fleet]
    examples, uncommented (the password file a Secret mount would give)."""
    text = (helpers.K8S / "base" / "governor.toml").read_text()
    fleet = _commented_table(text, "[fleet]")
    payments = _commented_table(text, "[dependencies.payments.fleet]")
    mounted = "/etc/governor-redis/password"
    assert f'password_file = "{mounted}"' in fleet and "max_concurrency" in payments
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    checked = []
    for name, extra in (("fleet", fleet.replace(mounted, str(password)) + "\n" + payments),
                        ("no-store", payments)):
        f = tmp_path / f"{name}.toml"
        f.write_text(text + "\n" + extra)
        checked.append(subprocess.run([str(governor_bin), "--check-config", str(f)], capture_output=True, text=True))
    ok, no_store = checked
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The dependency's table alone is refused: it needs [fleet].
    assert no_store.returncode == 64 and "dependencies.payments.fleet" in no_store.stdout + no_store.stderr


def test_probe_services_answer_serving(running):
    s, gov, sock = running
    assert gov.uds == str(sock)
    names = {s.container[p]["grpc"].get("service", "") for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert "governor.v1.Governor" in names
    # Over the socket with :authority localhost: gRPC C-core clients send the
    # socket path by default, which the server's HTTP/2 layer rejects (see
    # "Unix socket" in the main README).
    assert gov.health, f"the sidecar runs with --health-listen but its ready line has none: {gov.ready_line!r}"
    targets = ((gov.health, None), (gov.grpc, None), (f"unix://{sock}", "localhost"))
    for target, authority in targets:
        for name in names:
            assert health_status(target, name, authority) == "SERVING", (target, name)
        # A health check that could not fail would prove nothing.
        assert health_status(target, "no.such.Service", authority) == "NOT_FOUND"
    gov.stop()


def test_socket_is_reachable_by_the_pods_group(running):
    s, gov, sock = running
    mode = sock.stat().st_mode
    assert mode & 0o060 == 0o060, f"socket mode {oct(mode)}: fsGroup members cannot connect"
    assert mode & 0o007 == 0, f"socket mode {oct(mode)} is open to every user"


def test_configmap_limits_are_loaded(running, pb):
    s, gov, _ = running
    want = {
        name: dep.get("max_concurrency", s.config["defaults"]["max_concurrency"])
        for name, dep in s.config["dependencies"].items()
    }
    assert want
    with grpc.insecure_channel(gov.grpc) as ch:
        admin = pb.grpc.GovernorAdminStub(ch)
        for name, limit in want.items():
            st = admin.GetDependency(pb.pb2.GetDependencyRequest(name=name), timeout=5)
            assert st.max_concurrency == limit, name


def test_scrape_endpoint_serves_metrics(running):
    s, gov, _ = running
    assert gov.admin, (
        f"the sidecar runs with --admin-listen but its ready line has no admin=: {gov.ready_line!r}"
    )
    path = s.deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    with urllib.request.urlopen(f"http://{gov.admin}{path}", timeout=5) as resp:
        assert resp.status == 200
        body = resp.read().decode()
    assert "# TYPE" in body
    for health in ("/healthz", "/readyz"):
        with urllib.request.urlopen(f"http://{gov.admin}{health}", timeout=5) as resp:
            assert resp.status == 200


def _limit(pb, target: str, name: str) -> int:
    with grpc.insecure_channel(target) as ch:
        admin = pb.grpc.GovernorAdminStub(ch)
        return admin.GetDependency(pb.pb2.GetDependencyRequest(name=name), timeout=5).max_concurrency


def test_configmap_update_reaches_the_running_sidecar(sidecar, governor_bin, pb, tmp_path):
    """What the kubelet does on a ConfigMap edit (swap ..data), picked up by
    --watch-config without a signal or restart."""
    root = tmp_path / "etc-governor"
    config = _configmap_dir(root, sidecar.config_text)
    sock = tmp_path / "governor.sock"
    name = next(iter(sidecar.config["dependencies"]))
    before = sidecar.config["dependencies"][name]["max_concurrency"]
    after = before + 7
    text = sidecar.config_text.replace(
        f"[dependencies.{name}]\nmax_concurrency = {before}\n",
        f"[dependencies.{name}]\nmax_concurrency = {after}\n",
    )
    assert text != sidecar.config_text
    with helpers.Governor(governor_bin, _local_args(sidecar, config, sock)) as gov:
        assert _limit(pb, gov.grpc, name) == before
        _configmap_update(root, text, "..2024_01_01_00_05_00.000000002")
        helpers.wait_until(
            lambda: _limit(pb, gov.grpc, name) == after, timeout=20, what=f"{name} limit {after}"
        )
        assert health_status(gov.grpc, "governor.v1.Governor") == "SERVING"
        gov.stop()


def test_sighup_reloads_the_config(sidecar, governor_bin, pb, tmp_path):
    config = tmp_path / "governor.toml"
    config.write_text(sidecar.config_text)
    args = [a for a in _local_args(sidecar, config, tmp_path / "g.sock") if a != "--watch-config"]
    name = next(iter(sidecar.config["dependencies"]))
    before = sidecar.config["dependencies"][name]["max_concurrency"]
    with helpers.Governor(governor_bin, args) as gov:
        assert _limit(pb, gov.grpc, name) == before
        config.write_text(
            sidecar.config_text.replace(
                f"[dependencies.{name}]\nmax_concurrency = {before}\n",
                f"[dependencies.{name}]\nmax_concurrency = {before + 3}\n",
            )
        )
        gov.proc.send_signal(signal.SIGHUP)
        helpers.wait_until(lambda: _limit(pb, gov.grpc, name) == before + 3, timeout=10, what="reload")
        gov.stop()


def test_restart_next_to_a_stale_socket(sidecar, governor_bin, tmp_path):
    """A restarted sidecar finds its old socket in the emptyDir (the volume
    outlives the container) and must still come up."""
    sock = tmp_path / "governor.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()
    assert sock.exists()
    config = tmp_path / "governor.toml"
    config.write_text(sidecar.config_text)
    with helpers.Governor(governor_bin, _local_args(sidecar, config, sock)) as gov:
        assert health_status(f"unix://{sock}", "governor.v1.Governor", "localhost") == "SERVING"
        gov.stop()


def test_sigterm_drains_and_exits_zero(sidecar, governor_bin, tmp_path):
    """The kubelet sends SIGTERM whenever the pod goes away, also right after
    the sidecar started; the governor must drain and exit 0, not die from
    the signal (exit 143). Repeated, because the window is short."""
    config = tmp_path / "governor.toml"
    config.write_text(sidecar.config_text)
    codes = []
    for i in range(10):
        gov = helpers.Governor(governor_bin, _local_args(sidecar, config, tmp_path / f"g{i}.sock"))
        codes.append(gov.stop(timeout=sidecar.shutdown_grace_s + 5))
    assert codes == [0] * 10, f"exit codes after SIGTERM: {codes}"


def test_the_health_listener_serves_nothing_but_health(running, pb):
    """What the pod network reaches on the probe port cannot take a permit
    or change a limit."""
    import grpc  # noqa: PLC0415

    _, gov, _ = running
    with grpc.insecure_channel(gov.health) as ch:
        for call in (
            lambda: pb.grpc.GovernorStub(ch).Acquire(pb.pb2.AcquireRequest(dependency="payments"), timeout=5),
            lambda: pb.grpc.GovernorAdminStub(ch).ListDependencies(pb.pb2.ListDependenciesRequest(), timeout=5),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # The same calls work on the loopback gRPC listener.
    with grpc.insecure_channel(gov.grpc) as ch:
        pb.grpc.GovernorAdminStub(ch).ListDependencies(pb.pb2.ListDependenciesRequest(), timeout=5)
    gov.stop()
