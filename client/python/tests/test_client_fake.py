"""What the real sidecar does not show a client, checked against a recording fake server.

Outcome/latency reported on Release, the fields and deadline of an Acquire,
the trace context in the metadata of Acquire/Renew/Release, and the retry
helper's attempt numbers and respect of ``retry_after``.
"""
from __future__ import annotations

import asyncio
import re
import time

import pytest

from governor_client import (
    AsyncGovernor,
    ExponentialBackoff,
    Governor,
    Outcome,
    Priority,
    RejectReason,
    Rejected,
)
from governor_client.v1 import governor_pb2 as pb

from fake_governor import dur

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
except ImportError:  # the [otel] extra is not installed: only the trace tests skip
    otel_context = otel_trace = None

needs_otel = pytest.mark.skipif(otel_trace is None, reason="opentelemetry-api not installed")

TRACEPARENT_RE = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
#: gRPC encodes the deadline in a coarse unit rounded up, so the server may see a bit more.
SLACK = 0.05


def releases(fake):
    return [c.request for c in fake.of("Release")]


@pytest.fixture
def sgov(fake):
    gov = Governor(fake.target, fail_open=False)
    yield gov
    gov.close()


# -- outcome and latency ---------------------------------------------------------


def test_success_outcome_and_block_latency(fake, sgov):
    with sgov.permit("dep") as permit:
        time.sleep(0.15)
    (rel,) = releases(fake)
    assert rel.lease_id == permit.lease_id
    assert rel.outcome == pb.OUTCOME_SUCCESS
    latency = rel.latency.ToNanoseconds() / 1e9
    assert 0.15 <= latency < 2.0
    assert permit.latency == pytest.approx(latency, abs=1e-6)


@pytest.mark.parametrize(
    "exc, expected",
    [
        (ValueError("x"), pb.OUTCOME_FAILURE),
        (TimeoutError("slow"), pb.OUTCOME_TIMEOUT),
        (KeyboardInterrupt(), pb.OUTCOME_CANCELLED),
    ],
)
def test_outcome_from_exception(fake, sgov, exc, expected):
    with pytest.raises(type(exc)):
        with sgov.permit("dep"):
            raise exc
    (rel,) = releases(fake)
    assert rel.outcome == expected


def test_set_outcome_overrides(fake, sgov):
    with sgov.permit("dep") as permit:
        permit.set_outcome("failure", latency=0.042)
    (rel,) = releases(fake)
    assert rel.outcome == pb.OUTCOME_FAILURE
    assert rel.latency.ToNanoseconds() == 42_000_000


async def test_async_outcomes(fake):
    gov = AsyncGovernor(fake.target, fail_open=False)
    try:
        async with gov.permit("dep"):
            pass
        with pytest.raises(RuntimeError):
            async with gov.permit("dep"):
                raise RuntimeError("x")
        with pytest.raises(asyncio.TimeoutError):
            async with gov.permit("dep"):
                await asyncio.wait_for(asyncio.sleep(10), timeout=0.05)
        entered = asyncio.Event()

        async def worker():
            async with gov.permit("dep"):
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(worker())
        await asyncio.wait_for(entered.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await gov.close()
    assert [r.outcome for r in releases(fake)] == [
        pb.OUTCOME_SUCCESS,
        pb.OUTCOME_FAILURE,
        pb.OUTCOME_TIMEOUT,
        pb.OUTCOME_CANCELLED,
    ]


test_async_outcomes = pytest.mark.asyncio(test_async_outcomes)


# -- request fields and deadline --------------------------------------------------


def test_acquire_request_fields_and_deadline(fake, sgov):
    sgov.acquire("payments", priority=Priority.CRITICAL, tenant="t1", attempt=2, max_wait=0.4).release()
    sgov.acquire("payments", max_wait=0).release()
    sgov.acquire("payments").release()
    a, b, c = fake.of("Acquire")
    assert a.request.dependency == "payments"
    assert a.request.priority == pb.PRIORITY_CRITICAL
    assert a.request.tenant == "t1"
    assert a.request.attempt == 2
    assert a.request.max_wait.ToNanoseconds() == 400_000_000
    # deadline = max_wait + the default 1 s margin
    assert 1.3 < a.time_remaining <= 1.4 + SLACK
    # max_wait=0 is sent (try-acquire), not left unset
    assert b.request.HasField("max_wait") and b.request.max_wait.ToNanoseconds() == 0
    assert b.request.priority == pb.PRIORITY_NORMAL
    # no max_wait: unset, deadline = 1 h + 1 s, beyond any max_wait the sidecar accepts
    assert not c.request.HasField("max_wait")
    # (C-core rounds a deadline this long up to whole 10 s on the wire)
    assert 3600.9 < c.time_remaining <= 3611.0


def test_route_goes_with_every_helper(fake, sgov):
    sgov.acquire("payments", tenant="t1", route="/search").release()
    with sgov.permit("payments", tenant="t1", route="/checkout"):
        pass
    assert sgov.call_with_retries("payments", lambda: "ok", tenant="t1", route="/cart") == "ok"
    sgov.acquire("payments", tenant="t1").release()
    sent = [(c.request.tenant, c.request.route) for c in fake.of("Acquire")]
    assert sent == [("t1", "/search"), ("t1", "/checkout"), ("t1", "/cart"), ("t1", "")]


@pytest.mark.asyncio
async def test_async_route_goes_with_every_helper(fake):
    agov = AsyncGovernor(fake.target, fail_open=False)
    try:
        await (await agov.acquire("payments", tenant="t1", route="/search")).release()
        async with agov.permit("payments", tenant="t1", route="/checkout"):
            pass

        async def call() -> str:
            return "ok"

        assert await agov.call_with_retries("payments", call, tenant="t1", route="/cart") == "ok"
        await (await agov.acquire("payments", tenant="t1")).release()
    finally:
        await agov.close()
    sent = [(c.request.tenant, c.request.route) for c in fake.of("Acquire")]
    assert sent == [("t1", "/search"), ("t1", "/checkout"), ("t1", "/cart"), ("t1", "")]


def test_explicit_timeout_is_the_deadline(fake):
    gov = Governor(fake.target, max_wait=3.0, timeout_margin=0.25)
    try:
        gov.acquire("x").release()
        gov.acquire("x", timeout=1.0).release()
    finally:
        gov.close()
    a, b = fake.of("Acquire")
    assert a.request.max_wait.ToNanoseconds() == 3_000_000_000
    assert 3.0 < a.time_remaining <= 3.25 + SLACK
    assert 0.5 < b.time_remaining <= 1.0 + SLACK


def test_bad_arguments_rejected_locally(sgov):
    with pytest.raises(ValueError):
        sgov.acquire("dep", max_wait=-1)
    with pytest.raises(ValueError):
        sgov.acquire("dep", priority="urgent")
    with pytest.raises(ValueError):
        sgov.acquire("")


# -- trace propagation -------------------------------------------------------------


def _span_context():
    state = otel_trace.TraceState([("vendor", "abc")])
    sc = otel_trace.SpanContext(
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        is_remote=False,
        trace_flags=otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED),
        trace_state=state,
    )
    return otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(sc))


EXPECTED_TRACEPARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"


def _assert_traced(call):
    tp = call.metadata.get("traceparent")
    assert tp is not None, f"{call.method} carried no traceparent: {call.metadata}"
    assert TRACEPARENT_RE.match(tp)
    assert tp == EXPECTED_TRACEPARENT
    assert call.metadata.get("tracestate") == "vendor=abc"


@needs_otel
def test_trace_context_in_acquire_renew_release_metadata(fake):
    fake.lease_ttl = 0.15  # renew after ~50 ms
    gov = Governor(fake.target, fail_open=False)
    token = otel_context.attach(_span_context())
    try:
        with gov.permit("traced"):
            fake.wait_for(lambda calls: sum(c.method == "Renew" for c in calls) >= 2, timeout=5)
    finally:
        otel_context.detach(token)
        gov.close()
    for method in ("Acquire", "Renew", "Release"):
        calls = fake.of(method)
        assert calls, method
        for call in calls:
            _assert_traced(call)


@needs_otel
def test_no_trace_context_means_no_traceparent(fake, sgov):
    with sgov.permit("untraced"):
        pass
    for call in fake.calls:
        assert "traceparent" not in call.metadata


@needs_otel
async def test_async_trace_context(fake):
    fake.lease_ttl = 0.15
    gov = AsyncGovernor(fake.target, fail_open=False)
    token = otel_context.attach(_span_context())
    try:
        async with gov.permit("traced"):
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: fake.wait_for(lambda calls: any(c.method == "Renew" for c in calls), timeout=5)
            )
    finally:
        otel_context.detach(token)
        await gov.close()
    for method in ("Acquire", "Renew", "Release"):
        calls = fake.of(method)
        assert calls, method
        for call in calls:
            _assert_traced(call)


test_async_trace_context = pytest.mark.asyncio(test_async_trace_context)


def test_extra_metadata_is_sent(fake):
    gov = Governor(fake.target, metadata=[("x-caller", "svc-a")])
    try:
        with gov.permit("dep"):
            pass
    finally:
        gov.close()
    assert all(c.metadata.get("x-caller") == "svc-a" for c in fake.calls)


# -- renewal bookkeeping -------------------------------------------------------------


def test_lost_lease_is_flagged_and_renewal_stops(fake, sgov):
    fake.lease_ttl = 0.15

    fake.renew_answer = False
    with sgov.permit("dep") as permit:
        fake.wait_for(lambda calls: any(c.method == "Renew" for c in calls), timeout=5)
        deadline = time.monotonic() + 5
        while not permit.lease_lost and time.monotonic() < deadline:
            time.sleep(0.01)
        assert permit.lease_lost
        time.sleep(0.3)  # two renewal periods: no further Renew may be sent
        assert len(fake.of("Renew")) == 1


# -- retry helper ------------------------------------------------------------------------


@pytest.mark.parametrize("reason", [pb.REJECT_REASON_QUEUE_FULL, pb.REJECT_REASON_RATE_LIMITED])
def test_retry_helper_sets_attempt_and_honours_retry_after(fake, sgov, reason):
    fake.acquire_script.append(
        pb.AcquireResponse(granted=False, reason=reason, retry_after=dur(0.3), limit=1, in_flight=1)
    )
    calls = []

    def fn():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("first call fails")
        return "done"

    start = time.monotonic()
    assert sgov.call_with_retries("dep", fn, max_attempts=4, backoff=lambda n: 0) == "done"
    elapsed = time.monotonic() - start
    assert [c.request.attempt for c in fake.of("Acquire")] == [0, 1, 2]
    assert elapsed >= 0.3, "retry_after of the rejection was not honoured"
    assert [r.outcome for r in releases(fake)] == [pb.OUTCOME_FAILURE, pb.OUTCOME_SUCCESS]


def test_retry_helper_does_not_retry_unlisted_errors(fake, sgov):
    calls = []

    def fn():
        calls.append(1)
        raise ValueError("a bug, not a transient error")

    with pytest.raises(ValueError):
        sgov.call_with_retries("dep", fn, max_attempts=3, retry_on=(ConnectionError,))
    assert len(calls) == 1
    assert len(fake.of("Acquire")) == 1


def test_retry_helper_raises_last_rejection(fake, sgov):
    for _ in range(2):
        fake.acquire_script.append(
            pb.AcquireResponse(granted=False, reason=pb.REJECT_REASON_SHED, retry_after=dur(0.01))
        )
    with pytest.raises(Rejected) as info:
        sgov.call_with_retries("dep", lambda: "never", max_attempts=2, backoff=lambda n: 0)
    assert info.value.reason is RejectReason.SHED
    assert [c.request.attempt for c in fake.of("Acquire")] == [0, 1]


def test_exponential_backoff_bounds():
    b = ExponentialBackoff(base=0.1, multiplier=2.0, max_delay=0.5, jitter=False)
    assert [b(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]
    j = ExponentialBackoff(base=0.1, max_delay=0.5)
    assert all(0 <= j(3) <= 0.4 for _ in range(50))


def test_outcome_enum_matches_wire():
    assert int(Outcome.CANCELLED) == pb.OUTCOME_CANCELLED
    assert int(RejectReason.RETRY_BUDGET_EXHAUSTED) == pb.REJECT_REASON_RETRY_BUDGET_EXHAUSTED
    assert int(RejectReason.RATE_LIMITED) == pb.REJECT_REASON_RATE_LIMITED


# -- the table of docs/any-language.md ("What every client does") -------------------

import gc

import grpc

from governor_client import GovernorUnavailable, InvalidRequest

#: The fail-open row: the sidecar gave no answer.
NO_ANSWER = [
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DATA_LOSS,
]
#: The "always an error" row.
ANSWERS = [
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED,
]
REASONS = [
    pb.REJECT_REASON_QUEUE_FULL,
    pb.REJECT_REASON_QUEUE_TIMEOUT,
    pb.REJECT_REASON_RETRY_BUDGET_EXHAUSTED,
    pb.REJECT_REASON_SHED,
    pb.REJECT_REASON_SHUTTING_DOWN,
    pb.REJECT_REASON_RATE_LIMITED,
]


def test_every_code_follows_the_table(fake):
    opened, closed = Governor(fake.target, fail_open=True), Governor(fake.target, fail_open=False)
    try:
        for n, code in enumerate(NO_ANSWER, start=1):
            fake.acquire_script.append(code)
            permit = opened.acquire("payments")
            assert permit.degraded and permit.degraded_error.code == code, code
            assert opened.degraded_total == n
            fake.acquire_script.append(code)
            with pytest.raises(GovernorUnavailable) as unavailable:
                closed.acquire("payments")
            assert unavailable.value.code == code
        for code in ANSWERS:
            for gov in (opened, closed):
                fake.acquire_script.append(code)
                with pytest.raises(InvalidRequest) as invalid:
                    gov.acquire("payments")
                assert invalid.value.code == code
                assert invalid.value.details == "dependency: forced by the fake"
        assert opened.degraded_total == len(NO_ANSWER) and closed.degraded_total == 0
    finally:
        opened.close()
        closed.close()


@pytest.mark.asyncio
async def test_async_every_code_follows_the_table(fake):
    opened, closed = AsyncGovernor(fake.target, fail_open=True), AsyncGovernor(fake.target, fail_open=False)
    try:
        for code in NO_ANSWER:
            fake.acquire_script.append(code)
            assert (await opened.acquire("payments")).degraded, code
            fake.acquire_script.append(code)
            with pytest.raises(GovernorUnavailable):
                await closed.acquire("payments")
        for code in ANSWERS:
            for gov in (opened, closed):
                fake.acquire_script.append(code)
                with pytest.raises(InvalidRequest) as invalid:
                    await gov.acquire("payments")
                assert invalid.value.code == code
        assert opened.degraded_total == len(NO_ANSWER)
    finally:
        await opened.close()
        await closed.close()


@pytest.mark.parametrize("fail_open", [True, False])
def test_every_rejection_is_raised_whatever_the_policy(fake, fail_open):
    gov = Governor(fake.target, fail_open=fail_open)
    try:
        for reason in REASONS:
            fake.acquire_script.append(
                pb.AcquireResponse(granted=False, reason=reason, retry_after=dur(1.0), limit=1, in_flight=1)
            )
            with pytest.raises(Rejected) as rej:
                gov.acquire("payments")
            assert int(rej.value.reason) == reason
            assert rej.value.retry_after == 1.0
        assert gov.degraded_total == 0
    finally:
        gov.close()


def test_dropped_and_closed_permits_report_unspecified(fake):
    gov = Governor(fake.target)
    dropped = gov.acquire("payments")
    held = gov.acquire("payments")
    del dropped
    gc.collect()
    fake.wait_for(lambda calls: sum(c.method == "Release" for c in calls) == 1)
    gov.close()
    assert held.released and held.outcome == Outcome.UNSPECIFIED
    assert [r.outcome for r in releases(fake)] == [pb.OUTCOME_UNSPECIFIED, pb.OUTCOME_UNSPECIFIED]


@pytest.mark.asyncio
async def test_async_dropped_and_closed_permits_report_unspecified(fake):
    gov = AsyncGovernor(fake.target)
    dropped = await gov.acquire("payments")
    held = await gov.acquire("payments")
    del dropped
    gc.collect()
    for _ in range(500):  # the finalizer schedules the release on the loop
        if fake.of("Release"):
            break
        await asyncio.sleep(0.01)
    await gov.close()
    assert held.released and held.outcome == Outcome.UNSPECIFIED
    assert [r.outcome for r in releases(fake)] == [pb.OUTCOME_UNSPECIFIED, pb.OUTCOME_UNSPECIFIED]


def test_release_and_renew_deadlines(fake):
    fake.lease_ttl = 0.3
    gov = Governor(fake.target)
    try:
        permit = gov.acquire("payments")
        fake.wait_for(lambda calls: any(c.method == "Renew" for c in calls))
        permit.release()
    finally:
        gov.close()
    renew = fake.of("Renew")[0]
    release = fake.of("Release")[0]
    # Renew: min(TTL / 3, 2 s); Release: 2 s.
    assert 0.05 < renew.time_remaining <= 0.1 + SLACK
    assert 1.9 < release.time_remaining <= 2.0 + SLACK


def test_channels_have_keepalive():
    from governor_client import _common

    opts = dict(_common.channel_options("127.0.0.1:1", None))
    assert opts["grpc.keepalive_time_ms"] == 10_000 and opts["grpc.keepalive_timeout_ms"] == 5_000
    assert opts["grpc.http2.ping_timeout_ms"] == 5_000
    assert dict(_common.channel_options("x:1", [("grpc.keepalive_time_ms", 1)]))["grpc.keepalive_time_ms"] == 1
