"""Degradable acquires and pressure (issue 10, "Degrade and pressure"), sync and
asyncio: against recording fakes (unary and Session) and the real binary."""
from __future__ import annotations

import grpc
import pytest

from governor_client import AsyncGovernor, Governor, Pressure, RejectReason, Rejected
from governor_client.v1 import governor_pb2 as pb

from fake_governor import FakeGovernor, SessionFakeGovernor, dur


@pytest.fixture
def session_fake():
    server = SessionFakeGovernor()
    try:
        yield server
    finally:
        server.stop()


def degrade(pressure=pb.PRESSURE_SATURATED, retry_after=0.25):
    return pb.AcquireResponse(
        granted=False,
        reason=pb.REJECT_REASON_DEGRADE,
        retry_after=dur(retry_after),
        limit=1,
        in_flight=1,
        pressure=pressure,
    )


def grant(pressure):
    return pb.AcquireResponse(granted=True, lease_id="lease-1", lease_ttl=dur(30), limit=4, in_flight=3, pressure=pressure)


def acquires(fake, method="Acquire"):
    return [c.request for c in fake.of(method)]


class Calls:
    """Records which of fn and fallback ran."""

    def __init__(self):
        self.ran = []

    def fn(self):
        self.ran.append("fn")
        return "fresh"

    def fallback(self, rej):
        self.ran.append("fallback")
        return ("cached", rej.reason, rej.pressure, rej.retry_after)

    async def afn(self):
        return self.fn()

    async def afallback(self, rej):
        return self.fallback(rej)


# -- the enums ----------------------------------------------------------------


def test_enums_match_the_wire():
    assert [(p.name, int(p)) for p in Pressure] == [
        ("UNSPECIFIED", pb.PRESSURE_UNSPECIFIED),
        ("NONE", pb.PRESSURE_NONE),
        ("ELEVATED", pb.PRESSURE_ELEVATED),
        ("SATURATED", pb.PRESSURE_SATURATED),
        ("OVERLOADED", pb.PRESSURE_OVERLOADED),
    ]
    assert int(RejectReason.DEGRADE) == pb.REJECT_REASON_DEGRADE == 7
    assert Pressure.from_wire(99) is Pressure.UNSPECIFIED  # a level newer than the client


# -- the flag and the pressure, unary and Session ------------------------------


@pytest.mark.parametrize("use_session", [False, True], ids=["unary", "session"])
def test_sync_degradable_is_sent_and_pressure_is_read(fake, session_fake, use_session):
    server: FakeGovernor = session_fake if use_session else fake
    method = "Session.Acquire" if use_session else "Acquire"
    gov = Governor(server.target, fail_open=False, use_session=use_session)
    try:
        server.acquire_script += [grant(pb.PRESSURE_ELEVATED), grant(pb.PRESSURE_OVERLOADED)]
        first = gov.acquire("payments", degradable=True)
        with gov.permit("payments") as second:
            pass
        old = gov.acquire("payments")  # the fake's default grant has no pressure: an old sidecar
        assert first.on_session is use_session
        assert first.pressure is Pressure.ELEVATED
        assert second.pressure is Pressure.OVERLOADED
        assert old.pressure is Pressure.UNSPECIFIED
        first.release()
        old.release()
    finally:
        gov.close()
    assert [r.degradable for r in acquires(server, method)] == [True, False, False]


@pytest.mark.asyncio
@pytest.mark.parametrize("use_session", [False, True], ids=["unary", "session"])
async def test_async_degradable_is_sent_and_pressure_is_read(fake, session_fake, use_session):
    server: FakeGovernor = session_fake if use_session else fake
    method = "Session.Acquire" if use_session else "Acquire"
    gov = AsyncGovernor(server.target, fail_open=False, use_session=use_session)
    try:
        server.acquire_script += [grant(pb.PRESSURE_NONE), grant(pb.PRESSURE_SATURATED)]
        first = await gov.acquire("payments", degradable=True)
        async with gov.permit("payments", degradable=True) as second:
            pass
        assert first.on_session is use_session
        assert first.pressure is Pressure.NONE
        assert second.pressure is Pressure.SATURATED
        await first.release()
    finally:
        await gov.close()
    assert [r.degradable for r in acquires(server, method)] == [True, True]


# -- DEGRADE and the fallback ----------------------------------------------------


@pytest.mark.parametrize("use_session", [False, True], ids=["unary", "session"])
def test_sync_degrade_runs_the_fallback_not_fn(fake, session_fake, use_session):
    server: FakeGovernor = session_fake if use_session else fake
    method = "Session.Acquire" if use_session else "Acquire"
    gov = Governor(server.target, fail_open=False, use_session=use_session)
    calls = Calls()
    try:
        server.acquire_script.append(degrade(pb.PRESSURE_OVERLOADED, 0.25))
        got = gov.call_with_retries("payments", calls.fn, fallback=calls.fallback, max_attempts=3)
    finally:
        gov.close()
    assert got == ("cached", RejectReason.DEGRADE, Pressure.OVERLOADED, 0.25)
    assert calls.ran == ["fallback"]
    # A fallback implies degradable; DEGRADE is never retried.
    assert [r.degradable for r in acquires(server, method)] == [True]
    assert server.of("Release") == [] and server.of("Session.Release") == []


def test_sync_explicit_degradable_false_wins_over_the_fallback(fake):
    gov = Governor(fake.target, fail_open=False, use_session=False)
    calls = Calls()
    try:
        assert gov.call_with_retries("payments", calls.fn, fallback=calls.fallback, degradable=False) == "fresh"
    finally:
        gov.close()
    assert calls.ran == ["fn"]
    assert [r.degradable for r in acquires(fake)] == [False]


def test_sync_other_rejections_still_raise_with_a_fallback(fake):
    gov = Governor(fake.target, fail_open=False, use_session=False)
    calls = Calls()
    try:
        for reason in (
            pb.REJECT_REASON_QUEUE_FULL,
            pb.REJECT_REASON_SHED,
            pb.REJECT_REASON_RETRY_BUDGET_EXHAUSTED,
            pb.REJECT_REASON_RATE_LIMITED,
        ):
            fake.acquire_script.append(
                pb.AcquireResponse(granted=False, reason=reason, pressure=pb.PRESSURE_OVERLOADED)
            )
            with pytest.raises(Rejected) as rej:
                gov.call_with_retries("payments", calls.fn, fallback=calls.fallback, max_attempts=1)
            assert int(rej.value.reason) == reason
            assert rej.value.pressure is Pressure.OVERLOADED
    finally:
        gov.close()
    assert calls.ran == []


def test_sync_degrade_without_a_fallback_raises_the_typed_rejection(fake):
    gov = Governor(fake.target, fail_open=False, use_session=False)
    calls = Calls()
    try:
        fake.acquire_script.append(degrade(pb.PRESSURE_SATURATED, 0.5))
        with pytest.raises(Rejected) as direct:
            gov.acquire("payments", degradable=True)
        fake.acquire_script.append(degrade(pb.PRESSURE_ELEVATED, 0.5))
        with pytest.raises(Rejected) as helper:
            gov.call_with_retries("payments", calls.fn, degradable=True, max_attempts=3)
        fake.acquire_script.append(degrade())
        with pytest.raises(Rejected) as block:
            with gov.permit("payments", degradable=True):
                calls.ran.append("block")
    finally:
        gov.close()
    assert direct.value.reason is RejectReason.DEGRADE and direct.value.pressure is Pressure.SATURATED
    assert direct.value.retry_after == 0.5
    assert "DEGRADE" in str(direct.value) and "pressure=SATURATED" in str(direct.value)
    assert helper.value.reason is RejectReason.DEGRADE and helper.value.pressure is Pressure.ELEVATED
    assert block.value.reason is RejectReason.DEGRADE
    assert calls.ran == []
    assert len(fake.of("Acquire")) == 3  # not retried


def test_sync_fail_open_is_unchanged_by_a_fallback(fake):
    gov = Governor(fake.target, fail_open=True, use_session=False)
    calls = Calls()
    try:
        fake.acquire_script.append(grpc.StatusCode.UNAVAILABLE)
        assert gov.call_with_retries("payments", calls.fn, fallback=calls.fallback) == "fresh"
        assert gov.degraded_total == 1
    finally:
        gov.close()
    assert calls.ran == ["fn"]


@pytest.mark.asyncio
@pytest.mark.parametrize("use_session", [False, True], ids=["unary", "session"])
async def test_async_degrade_runs_the_fallback_not_fn(fake, session_fake, use_session):
    server: FakeGovernor = session_fake if use_session else fake
    method = "Session.Acquire" if use_session else "Acquire"
    gov = AsyncGovernor(server.target, fail_open=False, use_session=use_session)
    calls = Calls()
    try:
        server.acquire_script += [degrade(pb.PRESSURE_SATURATED, 0.1), degrade(pb.PRESSURE_ELEVATED, 0.2)]
        # an async fallback is awaited, a plain one returned
        first = await gov.call_with_retries("payments", calls.afn, fallback=calls.afallback)
        second = await gov.call_with_retries("payments", calls.afn, fallback=calls.fallback)
        server.acquire_script.append(pb.AcquireResponse(granted=False, reason=pb.REJECT_REASON_QUEUE_TIMEOUT))
        with pytest.raises(Rejected) as other:
            await gov.call_with_retries("payments", calls.afn, fallback=calls.afallback, max_attempts=1)
        server.acquire_script.append(degrade())
        with pytest.raises(Rejected) as bare:
            await gov.acquire("payments", degradable=True)
    finally:
        await gov.close()
    assert first == ("cached", RejectReason.DEGRADE, Pressure.SATURATED, 0.1)
    assert second == ("cached", RejectReason.DEGRADE, Pressure.ELEVATED, 0.2)
    assert other.value.reason is RejectReason.QUEUE_TIMEOUT
    assert bare.value.reason is RejectReason.DEGRADE
    assert calls.ran == ["fallback", "fallback"]
    assert [r.degradable for r in acquires(server, method)] == [True, True, True, True]


@pytest.mark.asyncio
async def test_async_fail_open_is_unchanged_by_a_fallback(fake):
    gov = AsyncGovernor(fake.target, fail_open=True, use_session=False)
    calls = Calls()
    try:
        fake.acquire_script.append(grpc.StatusCode.UNAVAILABLE)
        assert await gov.call_with_retries("payments", calls.afn, fallback=calls.afallback) == "fresh"
    finally:
        await gov.close()
    assert calls.ran == ["fn"]


# -- the real binary ------------------------------------------------------------


def test_sync_real_sidecar_degrades_a_saturated_dependency(sidecar):
    holder = Governor(sidecar.addr, fail_open=False)
    gov = Governor(sidecar.addr, fail_open=False)
    calls = Calls()
    try:
        held = holder.acquire("degrade-sync")
        assert held.pressure is Pressure.SATURATED  # max_concurrency = 1, this one permit in use
        got = gov.call_with_retries("degrade-sync", calls.fn, fallback=calls.fallback)
        assert got[:2] == ("cached", RejectReason.DEGRADE)
        assert got[2] is Pressure.SATURATED  # a DEGRADE is not an overload
        assert calls.ran == ["fallback"]
        status = sidecar.status("degrade-sync")
        assert status.in_flight == 1 and status.queued == 0  # it never queued
        held.release()
        with gov.permit("degrade-sync", degradable=True) as free:  # free again: granted
            assert free.pressure is Pressure.SATURATED
    finally:
        gov.close()
        holder.close()


@pytest.mark.asyncio
async def test_async_real_sidecar_degrades_a_saturated_dependency(sidecar):
    holder = AsyncGovernor(sidecar.addr, fail_open=False)
    gov = AsyncGovernor(sidecar.addr, fail_open=False)
    calls = Calls()
    try:
        held = await holder.acquire("degrade-async")
        assert held.pressure is Pressure.SATURATED
        got = await gov.call_with_retries("degrade-async", calls.afn, fallback=calls.afallback)
        assert got[:3] == ("cached", RejectReason.DEGRADE, Pressure.SATURATED)
        assert calls.ran == ["fallback"]
        assert sidecar.status("degrade-async").queued == 0
        await held.release()
    finally:
        await gov.close()
        await holder.close()
