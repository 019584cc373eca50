"""End-to-end tracing check: drives a running governor over gRPC with a W3C
parent trace, then reads the governor's spans back from a running Arize
Phoenix through its REST API and checks their shape and timing.

Started by tracing.sh, which runs Phoenix and the governor:

    python drive.py --governor 127.0.0.1:PORT --phoenix http://127.0.0.1:PORT \
        --proto <repo>/proto [--admin 127.0.0.1:PORT] [--project default] [--label NAME]

The governor must have a dependency `e2e-one` (max_concurrency = 1, a queue,
max_wait of a few seconds) and a dependency `e2e-full` (max_concurrency = 1,
max_queue = 0). Prints one line per check and closes with `N passed, M failed`
(`NAME: N passed, M failed` with --label); exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import secrets
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any, Callable, Optional

import grpc
import grpc_tools
from grpc_tools import protoc

QUEUED_DEP = "e2e-one"
FULL_DEP = "e2e-full"
# How long the second request is left in the queue, and how long its permit is
# held: what the scenario is about, not a wait for something to happen.
QUEUE_FOR = 0.100
HOLD_FOR = 0.050
# The queue_wait span starts at the request's arrival and lasts exactly the
# wait the response reports; Phoenix keeps microseconds.
QUEUE_WAIT_TOLERANCE = 0.003
SPAN_POLL_TIMEOUT = 30.0
RPC_TIMEOUT = 10.0

SPAN_NAMES = ("governor.acquire", "governor.queue_wait", "governor.permit")


# ----------------------------------------------------------------------------
# stubs


def load_stubs(proto_root: str, out_dir: str):
    """Generates the governor.v1 stubs with grpcio-tools and imports them."""
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            "governor/v1/governor.proto",
        ]
    )
    if rc != 0:
        raise SystemExit(f"drive.py: protoc failed ({rc}) on {proto_root}/governor/v1/governor.proto")
    sys.path.insert(0, out_dir)
    pb2 = importlib.import_module("governor.v1.governor_pb2")
    pb2_grpc = importlib.import_module("governor.v1.governor_pb2_grpc")
    return pb2, pb2_grpc


# ----------------------------------------------------------------------------
# checks


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.failures: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"PASS {name}" + (f"  ({detail})" if detail else ""), flush=True)
        else:
            self.failed += 1
            self.failures.append(name)
            print(f"FAIL {name}" + (f"  ({detail})" if detail else ""), flush=True)
        return ok


def seconds(duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def new_ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def wait_until(what: str, timeout: float, probe: Callable[[], Any], interval: float = 0.01):
    """Calls probe until it returns something truthy; raises after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------------------
# Phoenix


def http_get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode("utf-8"))


def phoenix_spans(base: str, project: str, trace_id: str) -> list[dict]:
    query = urllib.parse.urlencode({"trace_id": trace_id, "limit": 1000})
    url = f"{base}/v1/projects/{urllib.parse.quote(project, safe='')}/spans?{query}"
    try:
        body = http_get_json(url)
    except urllib.error.HTTPError as error:
        if error.code == 404:  # the project does not exist yet
            return []
        raise
    return body.get("data", [])


def phoenix_projects(base: str) -> list[str]:
    return [p["name"] for p in http_get_json(f"{base}/v1/projects").get("data", [])]


def parse_time(text: str) -> float:
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text).timestamp()


def duration_of(span: dict) -> float:
    return parse_time(span["end_time"]) - parse_time(span["start_time"])


def by_name(spans: list[dict], name: str) -> list[dict]:
    return [s for s in spans if s.get("name") == name]


def one(spans: list[dict], name: str) -> Optional[dict]:
    found = by_name(spans, name)
    return found[0] if len(found) == 1 else None


def attr(span: Optional[dict], key: str) -> Any:
    if span is None:
        return None
    attributes = span.get("attributes") or {}
    if key in attributes:
        return attributes[key]
    # Older Phoenix versions return attributes nested by their dotted keys.
    node: Any = attributes
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def brief(span: dict) -> str:
    keep = {k: span.get(k) for k in ("name", "parent_id", "start_time", "end_time")}
    keep["span_id"] = (span.get("context") or {}).get("span_id")
    return json.dumps(keep)


# ----------------------------------------------------------------------------
# the scenario


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--governor", required=True, help="host:port of the governor's gRPC")
    parser.add_argument("--phoenix", required=True, help="base URL of Phoenix's HTTP server")
    parser.add_argument("--proto", required=True, help="the repository's proto/ folder")
    parser.add_argument("--project", default="default", help="the Phoenix project the spans land in")
    parser.add_argument("--admin", default="", help="host:port of the governor's admin HTTP (diagnostics)")
    parser.add_argument("--label", default="", help="one word naming this run in the summary line")
    args = parser.parse_args()
    phoenix = args.phoenix.rstrip("/")

    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="governor-e2e-stubs-") as stubs_dir:
        pb2, pb2_grpc = load_stubs(args.proto, stubs_dir)
        channel = grpc.insecure_channel(args.governor)
        try:
            grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
            run(checks, pb2, pb2_grpc, channel, phoenix, args.project, args.admin)
        except Exception as error:  # a crash of the scenario is a failed check, not a traceback alone
            checks.check("scenario ran to the end", False, f"{type(error).__name__}: {error}")
        finally:
            channel.close()

    print()
    if checks.failures:
        print("failed checks: " + ", ".join(checks.failures))
    prefix = f"{args.label}: " if args.label else ""
    print(f"{prefix}{checks.passed} passed, {checks.failed} failed", flush=True)
    return 0 if checks.failed == 0 and checks.passed > 0 else 1


def run(checks: Checks, pb2, pb2_grpc, channel, phoenix: str, project: str, admin: str) -> None:
    gov = pb2_grpc.GovernorStub(channel)
    admin_stub = pb2_grpc.GovernorAdminStub(channel)

    def queued(dependency: str) -> int:
        return admin_stub.GetDependency(
            pb2.GetDependencyRequest(name=dependency), timeout=RPC_TIMEOUT
        ).queued

    # --- 1. a queued request with a parent trace --------------------------
    holder_trace, holder_span = new_ids()
    holder = gov.Acquire(
        pb2.AcquireRequest(dependency=QUEUED_DEP),
        metadata=[("traceparent", traceparent(holder_trace, holder_span))],
        timeout=RPC_TIMEOUT,
    )
    checks.check("holder acquires the only permit of e2e-one", holder.granted and holder.limit == 1,
                 f"granted={holder.granted} limit={holder.limit}")
    if not holder.granted:
        return

    trace_id, caller_span = new_ids()
    pending = gov.Acquire.future(
        pb2.AcquireRequest(
            dependency=QUEUED_DEP,
            tenant="e2e-tenant",
            priority=pb2.PRIORITY_CRITICAL,
        ),
        metadata=[
            ("traceparent", traceparent(trace_id, caller_span)),
            ("tracestate", "e2e=queued"),
        ],
        timeout=RPC_TIMEOUT,
    )
    # The second request is in the queue once the dependency shows a waiter.
    wait_until("the second Acquire to queue", RPC_TIMEOUT, lambda: queued(QUEUED_DEP) == 1 or pending.done())
    checks.check("second Acquire is queued behind the holder", not pending.done() and queued(QUEUED_DEP) == 1)
    time.sleep(QUEUE_FOR)
    released = gov.Release(
        pb2.ReleaseRequest(lease_id=holder.lease_id, outcome=pb2.OUTCOME_SUCCESS), timeout=RPC_TIMEOUT
    )
    checks.check("holder's Release frees the permit", released.released)

    second = pending.result(timeout=RPC_TIMEOUT)
    granted_at = time.monotonic()
    client_wait = seconds(second.queue_wait)
    checks.check(
        "queued Acquire is granted after the release, with its queue_wait",
        second.granted and client_wait >= QUEUE_FOR,
        f"granted={second.granted} queue_wait={client_wait * 1000:.3f}ms",
    )
    if not second.granted:
        return
    time.sleep(HOLD_FOR)
    hold = time.monotonic() - granted_at
    done = gov.Release(
        pb2.ReleaseRequest(lease_id=second.lease_id, outcome=pb2.OUTCOME_SUCCESS), timeout=RPC_TIMEOUT
    )
    checks.check("queued request's Release succeeds", done.released)

    # --- 2. a rejected request with a parent trace -------------------------
    full_holder = gov.Acquire(pb2.AcquireRequest(dependency=FULL_DEP), timeout=RPC_TIMEOUT)
    checks.check("holder acquires the only permit of e2e-full", full_holder.granted)
    reject_trace, reject_caller = new_ids()
    rejected = gov.Acquire(
        pb2.AcquireRequest(dependency=FULL_DEP),
        metadata=[("traceparent", traceparent(reject_trace, reject_caller))],
        timeout=RPC_TIMEOUT,
    )
    checks.check(
        "Acquire on a full e2e-full (max_queue = 0) is rejected QUEUE_FULL",
        not rejected.granted and rejected.reason == pb2.REJECT_REASON_QUEUE_FULL,
        f"granted={rejected.granted} reason={pb2.RejectReason.Name(rejected.reason)}",
    )
    if full_holder.granted:
        gov.Release(pb2.ReleaseRequest(lease_id=full_holder.lease_id), timeout=RPC_TIMEOUT)

    # --- 3. read the spans back from Phoenix --------------------------------
    def ingested():
        spans = phoenix_spans(phoenix, project, trace_id)
        rejects = phoenix_spans(phoenix, project, reject_trace)
        holders = phoenix_spans(phoenix, project, holder_trace)
        if (all(by_name(spans, n) for n in SPAN_NAMES)
                and by_name(rejects, "governor.acquire")
                and by_name(holders, "governor.permit")):
            return spans, rejects, holders
        return None

    started = time.monotonic()
    try:
        spans, rejects, holders = wait_until(
            f"the spans of traces {trace_id} and {reject_trace} in Phoenix project {project!r}",
            SPAN_POLL_TIMEOUT,
            ingested,
            interval=0.25,
        )
    except TimeoutError as error:
        spans = phoenix_spans(phoenix, project, trace_id)
        rejects = phoenix_spans(phoenix, project, reject_trace)
        holders = phoenix_spans(phoenix, project, holder_trace)
        checks.check("spans reach Phoenix", False, str(error))
        diagnose(phoenix, project, trace_id, spans, admin)
        # Go on: the checks below say which spans are missing.
    else:
        checks.check("spans reach Phoenix", True,
                     f"after {time.monotonic() - started:.1f}s, project {project!r}")

    acquire = one(spans, "governor.acquire")
    queue_wait = one(spans, "governor.queue_wait")
    permit = one(spans, "governor.permit")
    for name, span in (("governor.acquire", acquire), ("governor.queue_wait", queue_wait),
                       ("governor.permit", permit)):
        checks.check(f"exactly one {name} span in the caller's trace", span is not None,
                     f"found {len(by_name(spans, name))}")
    checks.check("the caller's trace holds only its own three spans",
                 len(spans) == 3,
                 f"{len(spans)} spans: " + ", ".join(sorted(s.get('name', '?') for s in spans)))
    holder_names = sorted(s.get("name", "?") for s in holders)
    checks.check("the holder's spans are in the holder's own trace",
                 holder_names == ["governor.acquire", "governor.permit"], ", ".join(holder_names))

    if acquire is not None:
        checks.check("governor.acquire's parent is the caller's span",
                     acquire.get("parent_id") == caller_span,
                     f"parent={acquire.get('parent_id')} caller={caller_span}")
        checks.check("governor.acquire says governor.decision=granted",
                     attr(acquire, "governor.decision") == "granted",
                     f"governor.decision={attr(acquire, 'governor.decision')!r}")
        want = {
            "governor.dependency": QUEUED_DEP,
            "governor.tenant": "e2e-tenant",
            "governor.priority": "critical",
            "governor.attempt": 0,
            "governor.limit": 1,
        }
        got = {k: attr(acquire, k) for k in want}
        checks.check("governor.acquire carries the request's attributes", got == want, json.dumps(got))
        handle = attr(acquire, "governor.lease")
        checks.check("governor.acquire names the lease by an 8-digit handle, not its id",
                     isinstance(handle, str) and len(handle) == 8 and handle not in second.lease_id
                     and attr(acquire, "governor.lease_id") is None,
                     f"governor.lease={handle!r} governor.lease_id={attr(acquire, 'governor.lease_id')!r}")
    if permit is not None:
        checks.check("governor.permit's parent is the caller's span",
                     permit.get("parent_id") == caller_span,
                     f"parent={permit.get('parent_id')} caller={caller_span}")
        permit_duration = duration_of(permit)
        checks.check("governor.permit lasts at least the hold",
                     permit_duration >= hold,
                     f"permit={permit_duration * 1000:.3f}ms hold={hold * 1000:.3f}ms")
        checks.check("governor.permit ends at the Release, not at the lease's expiry",
                     permit_duration <= hold + 1.0 and attr(permit, "governor.lease.expired") is None,
                     f"permit={permit_duration * 1000:.3f}ms "
                     f"governor.lease.expired={attr(permit, 'governor.lease.expired')!r}")
        got = {k: attr(permit, k) for k in ("governor.lease", "governor.outcome", "governor.dependency")}
        checks.check("governor.permit carries the lease handle and the outcome",
                     got == {"governor.lease": attr(acquire, "governor.lease") if acquire else None,
                             "governor.outcome": "success", "governor.dependency": QUEUED_DEP},
                     json.dumps(got))
    everything = json.dumps(spans + holders)
    for name, lease_id in (("holder", holder.lease_id), ("caller", second.lease_id)):
        checks.check(f"no exported span carries the {name}'s lease id",
                     lease_id not in everything and lease_id[16:] not in everything,
                     "found in the exported spans")
    if queue_wait is not None and acquire is not None:
        acquire_id = (acquire.get("context") or {}).get("span_id")
        checks.check("governor.queue_wait's parent is governor.acquire",
                     queue_wait.get("parent_id") == acquire_id and acquire_id is not None,
                     f"parent={queue_wait.get('parent_id')} acquire={acquire_id}")
        span_wait = duration_of(queue_wait)
        checks.check(
            "governor.queue_wait lasts the queue_wait the client saw",
            abs(span_wait - client_wait) <= QUEUE_WAIT_TOLERANCE,
            f"span={span_wait * 1000:.3f}ms client={client_wait * 1000:.3f}ms "
            f"tolerance={QUEUE_WAIT_TOLERANCE * 1000:.0f}ms",
        )
        inside = (parse_time(queue_wait["start_time"]) >= parse_time(acquire["start_time"]) - 1e-6
                  and parse_time(queue_wait["end_time"]) <= parse_time(acquire["end_time"]) + 1e-6)
        checks.check("governor.queue_wait lies within governor.acquire", inside,
                     f"queue_wait={brief(queue_wait)} acquire={brief(acquire)}")
    if permit is not None and queue_wait is not None:
        checks.check("governor.permit starts where governor.queue_wait ends",
                     abs(parse_time(permit["start_time"]) - parse_time(queue_wait["end_time"])) <= 0.001,
                     f"permit start={permit['start_time']} queue_wait end={queue_wait['end_time']}")

    reject_acquire = one(rejects, "governor.acquire")
    checks.check("the rejected Acquire has exactly one span, governor.acquire",
                 reject_acquire is not None and len(rejects) == 1,
                 ", ".join(sorted(s.get("name", "?") for s in rejects)) or "no spans")
    if reject_acquire is not None:
        got = {k: attr(reject_acquire, k) for k in
               ("governor.decision", "governor.reject_reason", "governor.dependency")}
        checks.check("the rejected governor.acquire shows governor.reject_reason=queue_full",
                     got == {"governor.decision": "rejected", "governor.reject_reason": "queue_full",
                             "governor.dependency": FULL_DEP},
                     json.dumps(got))
        checks.check("the rejected governor.acquire's parent is the caller's span",
                     reject_acquire.get("parent_id") == reject_caller,
                     f"parent={reject_acquire.get('parent_id')} caller={reject_caller}")


def diagnose(phoenix: str, project: str, trace_id: str, spans: list[dict], admin: str) -> None:
    """Prints what helps tell a lost export from a wrong project or query."""
    try:
        print(f"  Phoenix projects: {phoenix_projects(phoenix)}; spans found in {project!r} for "
              f"trace {trace_id}: {[brief(s) for s in spans]}")
    except Exception as error:
        print(f"  cannot list Phoenix projects: {error}")
    if admin:
        try:
            with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as response:
                text = response.read().decode("utf-8")
            lines = [l for l in text.splitlines() if l.startswith("governor_trace_")]
            print("  governor trace metrics: " + "; ".join(lines))
        except Exception as error:
            print(f"  cannot read the governor's metrics: {error}")


if __name__ == "__main__":
    sys.exit(main())
