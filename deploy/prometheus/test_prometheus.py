"""The alert rules, the scrape config and the Grafana dashboard, checked by
promtool and by a real Prometheus that scrapes the real governor binary.

Static checks first (promtool check/test rules, every alert tested both ways,
runbook anchors, the dashboard's structure), then one stack: the governor
(GOVERNOR_BIN) with small dependencies, a trace endpoint and a fleet store
(Redis) that refuse connections (bound ports that do not listen), and
Prometheus on loopback running the example scrape job's relabeling and the
rules every second. The tests drive overload, leaked leases, refused retries,
a bad reload and a drain over real gRPC, see the fleet dependency fall back,
and read the results through Prometheus's HTTP API. They run in file order:
the last one stops the governor.
"""

from __future__ import annotations

import copy
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import pytest
import yaml

HERE = Path(__file__).resolve().parent
DEPLOY = HERE.parent
REPO = DEPLOY.parent
RULES = HERE / "governor-rules.yml"
UNIT_TESTS = sorted((HERE / "tests").glob("*.yml"))
SCRAPE_CONFIG = HERE / "scrape-config.yml"
DASHBOARD = DEPLOY / "grafana" / "governor.json"
README = DEPLOY / "README.md"
RUNBOOK_BASE = "https://github.com/governor-sidecar/governor/blob/main/deploy/README.md#"

sys.path.insert(0, str(REPO / "client" / "python" / "src"))
from governor_client.v1 import governor_pb2 as pb  # noqa: E402
from governor_client.v1 import governor_pb2_grpc as pb_grpc  # noqa: E402

# The pod the test's scrape target stands for (its Kubernetes meta labels).
POD = "checkout-7c9d-it0"
NAMESPACE = "shop-it"
NODE = "node-it"

GOVERNOR_CONFIG = """\
[server]
listen = "127.0.0.1:0"
shutdown_grace = "30s"

# Overloaded by the test: 2 permits, 4 waiters, 100 ms of waiting.
[dependencies.db]
max_concurrency = 2
max_queue = 4
max_wait = "100ms"

# Leases the test leaks expire after the shortest TTL.
[dependencies.leaky]
max_concurrency = 16
lease_ttl = "100ms"

# No deposits and no reserve: every retry is refused.
[dependencies.retrying]
retry_budget = {{ ratio = 0.0, min_per_second = 0, ttl = "1s" }}

# Holds a permit across the drain.
[dependencies.hold]
lease_ttl = "1m"

# A fleet-wide limit whose store refuses every call: the sidecar falls back
# to its fallback share after the first failed call.
[dependencies.payments]
max_concurrency = 8

[dependencies.payments.fleet]
max_concurrency = 20
fallback_share = 2

[fleet]
redis = "redis://127.0.0.1:{redis_port}/0"
share_ttl = "1s"
instance = "governor-it"

[telemetry]
otlp_endpoint = "http://127.0.0.1:{otlp_port}"
export_delay = "100ms"
export_timeout = "500ms"
"""


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.2):
    """Polls `check` (an external process's state) until it returns a truthy
    value; fails naming `what` and the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}", pytrace=False)
        time.sleep(interval)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def load_rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def alert_rules() -> list[dict]:
    return [r for r in load_rules() if "alert" in r]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def readme_sections() -> dict[str, str]:
    """Anchor → text of each heading's section in deploy/README.md."""
    text = README.read_text()
    parts = re.split(r"^(#{2,4}) (.+)$", text, flags=re.M)
    sections = {}
    for i in range(1, len(parts) - 2, 3):
        sections[github_slug(parts[i + 1])] = parts[i + 2]
    return sections


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query target."""
    return [
        (p["title"], t["expr"])
        for p in all_panels(dash)
        for t in p.get("targets", [])
    ]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variable interpolation for the variables this dashboard uses."""
    def repl(m):
        name = m.group(1) or m.group(2)
        if name not in values:
            raise AssertionError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:governor_\w+)|up)(?=\s*[{\[)\s])", expr))


# ---------------------------------------------------------------- promtool


def test_promtool_check_rules():
    res = promtool("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    n = len(load_rules())
    assert f"SUCCESS: {n} rules found" in res.stdout, res.stdout


def test_promtool_unit_tests_pass():
    assert len(UNIT_TESTS) >= 5
    res = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(UNIT_TESTS), res.stdout


def test_every_alert_is_unit_tested_firing_and_not_firing():
    firing, quiet = Counter(), Counter()
    for path in UNIT_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../governor-rules.yml"], path
        for case in doc["tests"]:
            for t in case.get("alert_rule_test", []):
                (firing if t.get("exp_alerts") else quiet)[t["alertname"]] += 1
    names = {r["alert"] for r in alert_rules()}
    assert len(names) == len(alert_rules()), "duplicate alert names"
    assert not names - set(firing), f"alerts never tested firing: {sorted(names - set(firing))}"
    assert not names - set(quiet), f"alerts never tested quiet: {sorted(names - set(quiet))}"
    assert not (set(firing) | set(quiet)) - names, "tests name alerts that do not exist"


def test_unit_tests_fail_without_each_alert(tmp_path):
    """Each alert's expected firing is asserted: a rules file without it fails."""
    shutil.copytree(HERE / "tests", tmp_path / "tests")
    doc = yaml.safe_load(RULES.read_text())
    for name in sorted(r["alert"] for r in alert_rules()):
        mutated = copy.deepcopy(doc)
        for group in mutated["groups"]:
            group["rules"] = [r for r in group["rules"] if r.get("alert") != name]
        (tmp_path / "governor-rules.yml").write_text(yaml.safe_dump(mutated))
        # Only the files that test this alert (all of them would pass or fail alike).
        files = [p for p in sorted((tmp_path / "tests").glob("*.yml")) if f"alertname: {name}\n" in p.read_text()]
        assert files, name
        res = promtool("test", "rules", *map(str, files))
        assert res.returncode != 0, f"the unit tests still pass without {name}"
        assert name in res.stdout + res.stderr


def test_alerts_have_severity_summary_description_and_runbook():
    sections = readme_sections()
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        ann = rule["annotations"]
        assert set(ann) == {"summary", "description", "runbook_url"}, name
        expr = rule["expr"]
        if name != "GovernorTargetsMissing":
            # Where the sidecar is: the pod (or the target, without one).
            assert "$labels.pod" in ann["description"] and "$labels.instance" in ann["description"], name
        per_dependency = re.search(r"governor_(dependency_|acquire|lease|queue|permit|release|retry|fleet)", expr)
        if per_dependency:
            assert "$labels.dependency" in ann["description"], name
            assert "$labels.dependency" in ann["summary"], name
        url = ann["runbook_url"]
        assert url == RUNBOOK_BASE + name.lower(), (name, url)
        section = sections.get(name.lower())
        assert section is not None, f"deploy/README.md has no section {name}"
        for part in ("**What it means.**", "**What to check.**", "**What to do.**"):
            assert part in section, f"runbook {name} lacks {part}"


def test_readme_alert_table_lists_every_alert_with_its_threshold():
    sections = readme_sections()
    table = sections["alerts"]
    for rule in alert_rules():
        row = next((line for line in table.splitlines() if f"[{rule['alert']}]" in line), None)
        assert row, f"the alerts table has no row for {rule['alert']}"
        assert f"(#{rule['alert'].lower()})" in row
        assert rule["labels"]["severity"] in row
        if "for" in rule:
            assert f"for {rule['for']}" in row, (rule["alert"], rule["for"], row)


# ---------------------------------------------------------------- scrape config


def manifest_admin_ports() -> list[tuple[str, str]]:
    """(container name, admin port name) of the governor sidecar in the
    example Deployment and in the injected sidecar patch."""
    found = []
    for path in (DEPLOY / "k8s" / "example" / "deployment.yaml",
                 DEPLOY / "k8s" / "inject" / "sidecar" / "sidecar-patch.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            pod = doc["spec"]["template"]["spec"]
            for c in pod.get("initContainers", []):
                for port in c.get("ports", []):
                    if port["containerPort"] == 9464:
                        found.append((c["name"], port["name"]))
    return found


def test_scrape_config_keeps_the_manifests_governor_admin_ports():
    job = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"][0]
    keep = next(r for r in job["relabel_configs"] if r.get("action") == "keep")
    ports = manifest_admin_ports()
    assert len(ports) == 2, ports
    for container, port in ports:
        assert re.fullmatch(keep["regex"], f"{container};{port}"), (container, port)
    assert not re.fullmatch(keep["regex"], "checkout;http")
    assert not re.fullmatch(keep["regex"], "governor;governor-grpc")


# ---------------------------------------------------------------- dashboard


def test_dashboard_structure():
    dash = dashboard()
    assert dash["schemaVersion"] == 42  # @grafana/schema 13's current version
    assert dash["id"] is None and dash["uid"] == "governor-sidecar" and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("pod", "dependency"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert v["query"]["query"].startswith("label_values(")
        assert v["multi"] and v["includeAll"] and v["allValue"] == ".*"
    ids = [p["id"] for p in all_panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    rows = [p for p in dash["panels"] if p["type"] == "row"]
    assert any(r.get("repeat") == "dependency" for r in rows), "no row repeated per dependency"
    cells = set()
    for p in all_panels(dash):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refids = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refids) == len(set(refids)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip(), p["title"]
    known = set(variables) | {"__rate_interval"}
    for title, expr in dashboard_exprs(dash):
        for name in re.findall(r"\$\{?(\w+)", expr):
            assert name in known, f"{title}: unknown variable ${name}"


# The dashboard as a TypeScript value that must satisfy @grafana/schema's
# Dashboard type, with string enums spelled as their JSON values: unknown keys,
# wrong types and invalid enum values are compile errors.
SCHEMA_CHECK = """\
import type { Dashboard } from "@grafana/schema";

type Json<T> = T extends string
  ? `${T}`
  : T extends readonly (infer U)[]
    ? Json<U>[]
    : T extends object
      ? { [K in keyof T]: Json<T[K]> }
      : T;

export const dashboard = %s satisfies Json<Dashboard>;
"""


def tsc_check(tmp_path: Path, dash_text: str) -> subprocess.CompletedProcess:
    modules = DEPLOY / "grafana" / "node_modules"
    assert (modules / "@grafana" / "schema").is_dir(), "run deploy/prometheus/test.sh (it installs @grafana/schema)"
    (tmp_path / "node_modules").symlink_to(modules)
    (tmp_path / "check.ts").write_text(SCHEMA_CHECK % dash_text.rstrip())
    (tmp_path / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "module": "nodenext",
                            "moduleResolution": "nodenext", "target": "es2022", "skipLibCheck": True},
        "files": ["check.ts"],
    }))
    return subprocess.run([str(modules / ".bin" / "tsc"), "-p", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)


def test_dashboard_satisfies_grafanas_schema(tmp_path):
    (tmp_path / "ok").mkdir()
    res = tsc_check(tmp_path / "ok", DASHBOARD.read_text())
    assert res.returncode == 0, res.stdout + res.stderr
    # The check can fail: a misspelled key and a wrong type are errors.
    bad = DASHBOARD.read_text().replace('"gridPos"', '"gridPosition"', 1).replace(
        '"schemaVersion": 42', '"schemaVersion": "42"')
    (tmp_path / "bad").mkdir()
    res = tsc_check(tmp_path / "bad", bad)
    assert res.returncode != 0
    assert "'\"gridPosition\"' does not exist" in res.stdout, res.stdout
    assert "Type 'string' is not assignable to type 'number'" in res.stdout, res.stdout


def test_dashboard_shows_what_operators_need_per_dependency():
    exprs = [e for _, e in dashboard_exprs(dashboard())]
    joined = "\n".join(exprs)
    for metric in (
        "governor_dependency_limit", "governor_dependency_adaptive_limit", "governor_dependency_in_flight",
        "governor_dependency_queued", "governor_dependency_max_queue", "governor_retry_budget_tokens",
        "governor_dependency_utilization", "governor_dependency_pressure", "governor_lease_expired_total",
        "governor_fleet_limit", "governor_fleet_share", "governor_fleet_enforced", "governor_fleet_demand",
        "governor_fleet_mode", "governor_fleet_store_errors_total", "governor_fleet_store_calls_total",
    ):
        assert re.search(rf"\b{metric}\{{[^}}]*dependency=~\"\$dependency\"", joined), metric
    for histogram in ("governor_queue_wait_seconds_bucket", "governor_permit_hold_seconds_bucket",
                      "governor_fleet_store_seconds_bucket"):
        for q in ("0.5", "0.95", "0.99"):
            assert any(
                re.search(rf"histogram_quantile\({q}, sum by \([^)]*\ble\b[^)]*\) \(rate\({histogram}\{{", e)
                for e in exprs
            ), (histogram, q)
    assert any("sum by (dependency, reason)" in e and 'result="rejected"' in e for e in exprs)


# ---------------------------------------------------------------- the stack


class Prometheus:
    """A Prometheus server on loopback with a temporary storage dir."""

    def __init__(self, config: dict, workdir: Path):
        self.workdir = workdir
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        check = promtool("check", "config", str(config_path))
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = open(workdir / "prometheus.log", "w")
        for _ in range(3):
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            )
            if self._wait_ready():
                return
            self.stop()
        raise AssertionError(f"prometheus did not start:\n{self.logs()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def api(self, path: str, **params) -> object:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise AssertionError(f"/api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def alerts(self, name: str) -> list[dict]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def logs(self) -> str:
        self.log.flush()
        return (self.workdir / "prometheus.log").read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Governor:
    """The real governor binary, started on loopback with an admin listener."""

    READY = re.compile(r"^governor ready grpc=(\S+)(?: uds=\S+)? admin=(\S+)$")

    def __init__(self, binary: Path, config: Path, workdir: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["RUST_LOG"] = "info"
        self.stderr_path = workdir / "governor.log"
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [str(binary), "--config", str(config), "--admin-listen", "127.0.0.1:0", "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr, env=env, text=True,
        )
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=30):
            self.kill()
            raise AssertionError(f"no ready line within 30s:\n{self.logs()}")
        line = self.proc.stdout.readline().strip()
        m = self.READY.match(line)
        if not m:
            self.kill()
            raise AssertionError(f"unexpected ready line {line!r}:\n{self.logs()}")
        self.grpc, self.admin = m.group(1), m.group(2)
        self.channel = grpc.insecure_channel(self.grpc)
        self.stub = pb_grpc.GovernorStub(self.channel)

    def acquire(self, dependency: str, attempt: int = 0) -> pb.AcquireResponse:
        return self.stub.Acquire(pb.AcquireRequest(dependency=dependency, attempt=attempt), timeout=5)

    def release(self, lease_id: str) -> bool:
        req = pb.ReleaseRequest(lease_id=lease_id, outcome=pb.OUTCOME_SUCCESS)
        return self.stub.Release(req, timeout=5).released

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=5) as r:
            return r.read().decode()

    def logs(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text()[-4000:]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def prometheus_config(admin: str) -> dict:
    """The example scrape job (scrape-config.yml) with its relabeling, fed the
    Kubernetes meta labels of the governor's pod through a static target (the
    Debian build has no Kubernetes discovery), plus two targets the relabeling
    must drop; scrape and rule evaluation every second."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    job = config["scrape_configs"][0]
    assert "kubernetes_sd_configs" in job
    del job["kubernetes_sd_configs"]

    def target(address, container, port, phase):
        return {
            "targets": [address],
            "labels": {
                "__meta_kubernetes_namespace": NAMESPACE,
                "__meta_kubernetes_pod_name": POD,
                "__meta_kubernetes_pod_node_name": NODE,
                "__meta_kubernetes_pod_phase": phase,
                "__meta_kubernetes_pod_container_name": container,
                "__meta_kubernetes_pod_container_port_name": port,
            },
        }

    job["static_configs"] = [
        target(admin, "governor", "admin", "Running"),
        target("127.0.0.1:1", "checkout", "http", "Running"),
        target("127.0.0.1:2", "governor", "admin", "Succeeded"),
    ]
    job["scrape_interval"] = "1s"
    job["scrape_timeout"] = "1s"
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    return config


class Stack:
    def __init__(self, workdir: Path):
        binary = Path(os.environ.get("GOVERNOR_BIN") or REPO / "target" / "debug" / "governor")
        assert binary.is_file(), f"governor binary not found at {binary}: cargo build -p rate-governor --bin governor"
        self.config_path = workdir / "governor.toml"
        # Ports bound but not listening: every span export and every fleet
        # store call is refused.
        self.otlp = socket.socket()
        self.otlp.bind(("127.0.0.1", 0))
        self.redis = socket.socket()
        self.redis.bind(("127.0.0.1", 0))
        self.config_path.write_text(GOVERNOR_CONFIG.format(
            otlp_port=self.otlp.getsockname()[1], redis_port=self.redis.getsockname()[1]))
        try:
            self.governor = Governor(binary, self.config_path, workdir)
        except BaseException:
            self.otlp.close()
            self.redis.close()
            raise
        try:
            self.prom = Prometheus(prometheus_config(self.governor.admin), workdir)
        except BaseException:
            self.governor.kill()
            self.otlp.close()
            self.redis.close()
            raise
        self.selector = f'job="governor", pod="{POD}"'

    def series(self, expr: str) -> float | None:
        return self.prom.value(expr)

    def active(self, name: str, **labels) -> list[dict]:
        return [
            a for a in self.prom.alerts(name)
            if a["state"] in ("pending", "firing") and all(a["labels"].get(k) == v for k, v in labels.items())
        ]

    def close(self):
        self.governor.channel.close()
        self.governor.kill()
        self.prom.stop()
        self.otlp.close()
        self.redis.close()


@pytest.fixture(scope="module")
def stack():
    workdir = Path(tempfile.mkdtemp(prefix="governor-prometheus-"))
    s = Stack(workdir)
    try:
        yield s
    finally:
        s.close()
        shutil.rmtree(workdir, ignore_errors=True)


class Load:
    """Bounded overload of `db`: workers that acquire, hold the permit 50 ms
    (the downstream call) and release; a rejected worker backs off 10 ms."""

    def __init__(self, gov: Governor, workers: int = 10, max_seconds: float = 90.0):
        self.gov = gov
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results: Counter = Counter()
        self.errors: list[str] = []
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def _run(self):
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                resp = self.gov.acquire("db")
            except grpc.RpcError as e:
                with self.lock:
                    self.errors.append(f"{e.code().name}: {e.details()}")
                return
            if resp.granted:
                self.stop.wait(0.05)
                released = self.gov.release(resp.lease_id)
                key = "granted" if released else "release_failed"
            else:
                key = pb.RejectReason.Name(resp.reason).removeprefix("REJECT_REASON_").lower()
                self.stop.wait(0.01)
            with self.lock:
                self.results[key] += 1

    def finish(self) -> Counter:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)
        assert not any(t.is_alive() for t in self.threads)
        return self.results


def test_relabeling_keeps_only_the_governor_admin_port(stack):
    def discovered():
        targets = stack.prom.api("targets")
        return targets if targets["activeTargets"] else None

    targets = wait_until(discovered, 15, "the scrape target")
    active = targets["activeTargets"]
    assert len(active) == 1, active
    labels = active[0]["labels"]
    assert labels == {"job": "governor", "instance": stack.governor.admin, "namespace": NAMESPACE,
                      "pod": POD, "node": NODE}, labels
    assert len(targets["droppedTargets"]) == 2
    wait_until(lambda: stack.series(f"up{{{stack.selector}}}") == 1, 15, "up == 1")


def test_overload_puts_rejection_saturation_and_queue_alerts_pending(stack):
    gov, sel = stack.governor, stack.selector
    load = Load(gov)
    try:
        rejecting = wait_until(
            lambda: stack.active("GovernorRejectionRateHigh", dependency="db"), 60,
            "GovernorRejectionRateHigh for db",
        )
        saturated = wait_until(
            lambda: stack.active("GovernorDependencySaturated", dependency="db"), 60,
            "GovernorDependencySaturated for db",
        )
        queue = wait_until(
            lambda: stack.active("GovernorQueueDepthHigh", dependency="db"), 60,
            "GovernorQueueDepthHigh for db",
        )
    finally:
        results = load.finish()
    assert not load.errors, load.errors[:5]
    assert results["granted"] > 0 and results["release_failed"] == 0, results
    rejected = {k: v for k, v in results.items() if k not in ("granted", "release_failed")}
    assert rejected and set(rejected) <= {"queue_full", "queue_timeout", "shed"}, results
    # Each alert names a reason the client saw, the dependency and the pod.
    for alert in rejecting:
        assert alert["labels"]["reason"] in rejected, (alert, results)
        assert alert["labels"]["pod"] == POD and alert["labels"]["severity"] == "warning"
        assert f"dependency db on pod {POD}" in alert["annotations"]["description"], alert
        assert alert["annotations"]["runbook_url"].endswith("#governorrejectionratehigh")
    for alert in saturated + queue:
        assert f"on pod {POD}" in alert["annotations"]["description"], alert
        assert "dependency db" in alert["annotations"]["description"].lower(), alert
    # Nothing else saturated: leaky had one short Acquire.
    assert not stack.active("GovernorDependencySaturated", dependency="leaky")
    # Prometheus's counters agree with what the client was answered.
    for reason in ("queue_full", "queue_timeout", "shed"):
        want = results.get(reason, 0)
        expr = f'governor_acquire_total{{{sel}, dependency="db", result="rejected", reason="{reason}"}}'
        wait_until(lambda: stack.series(expr) == want, 15, f"{expr} == {want}")
    expr = f'governor_acquire_total{{{sel}, dependency="db", result="granted"}}'
    wait_until(lambda: stack.series(expr) == results["granted"], 15, f"{expr} == {results['granted']}")
    stack.overloaded = results


def test_series_arrive_with_the_configured_values(stack):
    sel = stack.selector
    expected = {
        f'governor_dependency_limit{{{sel}, dependency="db"}}': 2,
        f'governor_dependency_max_queue{{{sel}, dependency="db"}}': 4,
        f'governor_dependency_in_flight{{{sel}, dependency="db"}}': 0,
        f'governor_dependency_queued{{{sel}, dependency="db"}}': 0,
        f'governor_dependency_limit{{{sel}, dependency="leaky"}}': 16,
        f'governor_retry_budget_tokens{{{sel}, dependency="retrying"}}': 0,
        f"governor_dependencies{{{sel}}}": 5,
        f"governor_draining{{{sel}}}": 0,
        # The fleet store refuses every call: the fallback share is in force.
        f'governor_fleet_mode{{{sel}, dependency="payments", mode="fallback"}}': 1,
        f'governor_fleet_mode{{{sel}, dependency="payments", mode="share"}}': 0,
        f'governor_fleet_enforced{{{sel}, dependency="payments"}}': 2,
        f'governor_fleet_fallback_share{{{sel}, dependency="payments"}}': 2,
        f'governor_dependency_limit{{{sel}, dependency="payments"}}': 2,
    }
    for expr, want in expected.items():
        wait_until(lambda: stack.series(expr) == want, 15, f"{expr} == {want}")
    # The request-path series appear with a dependency's first Acquire.
    for dep in ("leaky", "retrying"):
        first = stack.governor.acquire(dep)
        assert first.granted, first
        assert stack.governor.release(first.lease_id)
    for dep in ("leaky", "retrying"):
        wait_until(
            lambda: stack.series(f'sum(governor_acquire_total{{{sel}, dependency="{dep}", result="granted"}})') == 1,
            15, f"the granted Acquire of {dep}",
        )
    wait_until(lambda: stack.series(f'governor_lease_expired_total{{{sel}, dependency="leaky"}}') == 0,
               15, "the lease expiry counter of leaky")


def test_an_unreachable_fleet_store_puts_the_fleet_alerts_pending(stack):
    sel = stack.selector
    calls = f'governor_fleet_store_calls_total{{{sel}, dependency="payments"}}'
    errors = f'governor_fleet_store_errors_total{{{sel}, dependency="payments"}}'
    wait_until(lambda: (stack.series(calls) or 0) >= 3, 15, f"{calls} >= 3")
    failing = wait_until(lambda: stack.active("GovernorFleetStoreErrors", dependency="payments"), 30,
                         "GovernorFleetStoreErrors for payments")
    assert failing[0]["labels"]["pod"] == POD and failing[0]["labels"]["severity"] == "warning"
    description = failing[0]["annotations"]["description"]
    # 100%, or a hair less when a scrape fell between a call's two counters.
    assert re.match(rf"(100|9\d(\.\d+)?)% of the fleet store calls of dependency payments on pod {POD} failed",
                    description), description
    fallback = wait_until(lambda: stack.active("GovernorFleetFallback", dependency="payments"), 30,
                          "GovernorFleetFallback for payments")
    assert "mode" not in fallback[0]["labels"], fallback
    description = fallback[0]["annotations"]["description"]
    assert f"Dependency payments on pod {POD} has run on its fallback share, 2 permits" in description, description
    assert fallback[0]["annotations"]["runbook_url"].endswith("#governorfleetfallback")
    # Every call failed; dependencies without a fleet limit have no fleet series.
    wait_until(lambda: stack.series(f"{calls} - {errors}") == 0, 15, f"{calls} == {errors}")
    assert stack.prom.query(f'governor_fleet_mode{{{sel}, dependency!="payments"}}') == []


def test_every_dashboard_query_is_valid_and_answers(stack):
    dash = dashboard()
    names = set(stack.prom.api("label/__name__/values"))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    # The variable queries, as Grafana runs label_values(selector, label).
    values = {}
    for var in ("pod", "dependency"):
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", variables[var]["query"]["query"])
        assert m, variables[var]["query"]
        selector = substitute(m.group(1), {"pod": ".*", "dependency": ".*"})
        values[var] = stack.prom.api(f"label/{m.group(2)}/values", **{"match[]": selector})
    assert POD in values["pod"], values
    assert {"db", "leaky", "retrying", "hold", "payments"} <= set(values["dependency"]), values
    selections = [
        {"pod": ".*", "dependency": ".*"},  # All
        {"pod": f"({POD})", "dependency": "(db|leaky)"},  # several values, as Grafana joins them
        {"pod": POD, "dependency": "db"},  # one value (a repeated row)
        {"pod": POD, "dependency": "payments"},  # the repeated row of the fleet dependency
    ]
    checked = answered = 0
    for selection in selections:
        subst = {**selection, "__rate_interval": "30s", "datasource": "prometheus"}
        # The series this sidecar serves for the selected dependencies (fleet
        # series only for payments).
        served = set(stack.prom.api("label/__name__/values", **{
            "match[]": f'{{job="governor", dependency=~"{selection["dependency"]}"}}'}))
        for title, expr in dashboard_exprs(dash):
            q = substitute(expr, subst)
            result = stack.prom.query(q)  # raises on any query error
            checked += 1
            # Queries on series this sidecar serves must answer; those on
            # series it does not serve (adaptive limits: none is configured;
            # Acquires of payments: none is made) may not.
            if metric_names(expr) <= (served if "$dependency" in expr else names):
                assert result, f"{title}: {q} returned nothing"
                answered += 1
    assert answered >= checked // 2, (answered, checked)
    # The panels show the real values.
    one = {"pod": POD, "dependency": "db", "__rate_interval": "30s"}
    by_title = {}
    for title, expr in dashboard_exprs(dash):
        by_title.setdefault(title, []).append(substitute(expr, one))
    limit = [q for q in by_title["Concurrency: enforced limit and in flight"] if "dependency_limit" in q]
    assert stack.series(limit[0]) == 2
    max_queue = [q for q in by_title["Queue depth"] if "max_queue" in q]
    assert stack.series(max_queue[0]) == 4
    fleet = {"pod": POD, "dependency": "payments", "__rate_interval": "30s"}
    per_pod = {t["legendFormat"].split()[0]: substitute(t["expr"], fleet)
               for p in all_panels(dash) if p["title"] == "Fleet share per pod" for t in p["targets"]}
    assert stack.series(per_pod["enforced"]) == 2 and stack.series(per_pod["share"]) == 0, per_pod
    (mode,) = [substitute(e, fleet) for t, e in dashboard_exprs(dash) if t == "Fleet mode"]
    assert [r["metric"]["mode"] for r in stack.prom.query(mode)] == ["fallback"]
    (failed,) = [substitute(e, fleet) for t, e in dashboard_exprs(dash) if t == "Fleet store: failed calls"]
    assert stack.series(failed) > 0.9
    rejected = stack.prom.query(by_title["Rejections by dependency and reason"][0].replace("[30s]", "[5m]"))
    assert {r["metric"]["reason"] for r in rejected if float(r["value"][1]) > 0} == {
        k for k in stack.overloaded if k not in ("granted", "release_failed")
    }


def test_leaked_leases_put_the_expiry_alert_pending(stack):
    leases = [stack.governor.acquire("leaky") for _ in range(5)]
    assert all(r.granted for r in leases)
    # Never released: each expires after the dependency's 100 ms lease_ttl.
    expired = f'governor_lease_expired_total{{{stack.selector}, dependency="leaky"}}'
    wait_until(lambda: stack.series(expired) == 5, 15, f"{expired} == 5")
    alerts = wait_until(lambda: stack.active("GovernorLeaseExpiries", dependency="leaky"), 30,
                        "GovernorLeaseExpiries for leaky")
    assert f"leases of dependency leaky on pod {POD}" in alerts[0]["annotations"]["description"]
    assert all(not stack.governor.release(r.lease_id) for r in leases), "an expired lease was released"


def test_refused_retries_put_the_budget_alert_pending(stack):
    for _ in range(3):
        resp = stack.governor.acquire("retrying", attempt=1)
        assert not resp.granted and resp.reason == pb.REJECT_REASON_RETRY_BUDGET_EXHAUSTED, resp
    alerts = wait_until(lambda: stack.active("GovernorRetryBudgetExhausted", dependency="retrying"), 30,
                        "GovernorRetryBudgetExhausted for retrying")
    assert f"dependency retrying on pod {POD}" in alerts[0]["annotations"]["description"]
    # The budget's refusals are not also a rejection-rate alert.
    assert not stack.active("GovernorRejectionRateHigh", dependency="retrying")


def test_failing_trace_export_puts_its_alert_pending(stack):
    # Every request above made spans; the endpoint refuses every batch.
    alerts = wait_until(lambda: stack.active("GovernorTraceExportFailing"), 45, "GovernorTraceExportFailing")
    assert f"on pod {POD}" in alerts[0]["annotations"]["description"]
    assert stack.series(f"governor_trace_exports_failed_total{{{stack.selector}}}") > 0


def test_a_rejected_reload_puts_its_alert_pending(stack):
    good = stack.config_path.read_text()
    stack.config_path.write_text(good.replace('max_wait = "100ms"', 'max_wait = "soon"'))
    stack.governor.proc.send_signal(signal.SIGHUP)
    alerts = wait_until(lambda: stack.active("GovernorConfigReloadFailed"), 30, "GovernorConfigReloadFailed")
    assert f"on pod {POD}" in alerts[0]["annotations"]["description"]
    # The running limits were kept.
    assert stack.series(f'governor_dependency_limit{{{stack.selector}, dependency="db"}}') == 2
    stack.config_path.write_text(good)


def test_drain_then_exit_put_draining_and_down_alerts_pending(stack):
    gov = stack.governor
    held = gov.acquire("hold")
    assert held.granted
    gov.proc.send_signal(signal.SIGTERM)
    draining = wait_until(lambda: stack.active("GovernorDraining"), 30, "GovernorDraining")
    assert f"on pod {POD}" in draining[0]["annotations"]["description"]
    refused = gov.acquire("db")
    assert not refused.granted and refused.reason == pb.REJECT_REASON_SHUTTING_DOWN
    # The last permit back: the drain ends and the process exits cleanly.
    assert gov.release(held.lease_id)
    assert gov.proc.wait(timeout=30) == 0, gov.logs()
    down = wait_until(lambda: stack.active("GovernorDown"), 30, "GovernorDown")
    assert down[0]["labels"]["pod"] == POD and down[0]["labels"]["severity"] == "critical"
    assert f"on pod {POD} ({gov.admin})" in down[0]["annotations"]["description"]
