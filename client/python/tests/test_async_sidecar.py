"""The asyncio client against the real governor binary."""
from __future__ import annotations

import asyncio
import gc
import logging
import time

import pytest
import pytest_asyncio

from governor_client import (
    AsyncGovernor,
    GovernorError,
    GovernorUnavailable,
    InvalidRequest,
    Outcome,
    RejectReason,
    Rejected,
)

from helpers import async_wait_until

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def agov(sidecar):
    client = AsyncGovernor(sidecar.addr, fail_open=False)
    yield client
    await client.close()


async def test_permit_is_held_in_block_and_released_after(sidecar, agov):
    before = sidecar.status("basic-async")
    async with agov.permit("basic-async", priority="sheddable", tenant="search") as permit:
        assert not permit.degraded and permit.lease_id
        assert sidecar.in_flight("basic-async") == 1
    assert permit.released and permit.outcome == Outcome.SUCCESS
    after = sidecar.status("basic-async")
    assert after.in_flight == 0
    assert after.granted_total == before.granted_total + 1


async def test_slot_returns_after_block_raises(sidecar, agov):
    with pytest.raises(KeyError):
        async with agov.permit("solo-async") as permit:
            assert sidecar.in_flight("solo-async") == 1
            raise KeyError("boom")
    assert permit.outcome == Outcome.FAILURE
    assert sidecar.in_flight("solo-async") == 0
    async with agov.permit("solo-async", max_wait=0) as again:
        assert again.lease_id != permit.lease_id


async def test_slot_returns_after_cancellation(sidecar, agov):
    entered = asyncio.Event()
    holder = {}

    async def worker():
        async with agov.permit("solo-async") as permit:
            holder["permit"] = permit
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(worker())
    await asyncio.wait_for(entered.wait(), timeout=5)
    assert sidecar.in_flight("solo-async") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert holder["permit"].outcome == Outcome.CANCELLED
    assert sidecar.in_flight("solo-async") == 0


async def test_rejection_queue_full_is_typed(sidecar, agov):
    async with agov.permit("full-async"):
        with pytest.raises(Rejected) as info:
            await agov.acquire("full-async")
    rej = info.value
    assert isinstance(rej, GovernorError) and not isinstance(rej, GovernorUnavailable)
    assert rej.reason is RejectReason.QUEUE_FULL
    assert rej.retry_after >= 0
    assert (rej.limit, rej.in_flight, rej.queued) == (1, 1, 0)


async def test_rejection_queue_timeout(sidecar, agov):
    async with agov.permit("qtimeout-async"):
        start = time.monotonic()
        with pytest.raises(Rejected) as info:
            await agov.acquire("qtimeout-async", max_wait=0.2)
        elapsed = time.monotonic() - start
    assert info.value.reason is RejectReason.QUEUE_TIMEOUT
    assert 0.15 <= elapsed < 3.0


async def test_queued_acquire_is_granted_when_slot_frees(sidecar, agov):
    first = await agov.acquire("qtimeout-async")
    waiter = asyncio.create_task(agov.acquire("qtimeout-async", max_wait=3))
    await async_wait_until(lambda: sidecar.status("qtimeout-async").queued == 1, timeout=3, what="queued == 1")
    assert not waiter.done()
    assert await first.release() is True
    second = await asyncio.wait_for(waiter, timeout=5)
    assert second.lease_id and second.queue_wait > 0
    assert await second.release() is True


async def test_renewal_keeps_permit_alive_past_ttl(sidecar, agov):
    before = sidecar.status("renew-async").expired_total
    async with agov.permit("renew-async") as permit:
        assert permit.lease_ttl == pytest.approx(0.6, abs=0.01)
        await asyncio.sleep(1.8)  # 3 TTLs
        assert sidecar.in_flight("renew-async") == 1
        assert permit.renewals >= 4 and not permit.lease_lost
    status = sidecar.status("renew-async")
    assert status.in_flight == 0
    assert status.expired_total == before
    assert permit._renew_task is not None and permit._renew_task.done()


async def test_without_renewal_the_lease_expires(sidecar):
    gov = AsyncGovernor(sidecar.addr, fail_open=False, auto_renew=False)
    try:
        before = sidecar.status("norenew-async").expired_total
        permit = await gov.acquire("norenew-async")
        await async_wait_until(
            lambda: sidecar.status("norenew-async").expired_total > before, timeout=5, what="lease expiry"
        )
        assert await permit.release() is False
    finally:
        await gov.close()


async def test_garbage_collected_permit_is_released(sidecar, agov):
    permit = await agov.acquire("gc-async")
    assert sidecar.in_flight("gc-async") == 1
    del permit
    gc.collect()
    await async_wait_until(lambda: sidecar.in_flight("gc-async") == 0, timeout=3, what="release of dropped permit")
    assert sidecar.status("gc-async").expired_total == 0


async def test_close_releases_held_permits(sidecar):
    gov = AsyncGovernor(sidecar.addr)
    permit = await gov.acquire("close-async")
    assert sidecar.in_flight("close-async") == 1
    await gov.close()
    assert permit.outcome == Outcome.UNSPECIFIED
    assert sidecar.in_flight("close-async") == 0


async def test_invalid_dependency_raises_even_when_fail_open(sidecar):
    gov = AsyncGovernor(sidecar.addr, fail_open=True)
    try:
        with pytest.raises(InvalidRequest) as info:
            await gov.acquire("bad name!")
        assert "dependency" in str(info.value)
    finally:
        await gov.close()


async def test_fail_open_proceeds_degraded(dead_target, caplog):
    gov = AsyncGovernor(dead_target, fail_open=True)
    try:
        with caplog.at_level(logging.WARNING, logger="governor_client"):
            async with gov.permit("payments", max_wait=0.2) as permit:
                assert permit.degraded
        assert gov.degraded_total == 1
        assert isinstance(permit.degraded_error, GovernorUnavailable)
        assert any(r.levelno == logging.WARNING and "unavailable" in r.getMessage() for r in caplog.records)
    finally:
        await gov.close()


async def test_fail_closed_raises_unavailable(dead_target):
    gov = AsyncGovernor(dead_target, fail_open=False)
    try:
        with pytest.raises(GovernorUnavailable):
            async with gov.permit("payments", max_wait=0.2):
                pytest.fail("the block must not run without a permit when fail_open=False")
        assert gov.degraded_total == 0
    finally:
        await gov.close()


async def test_call_with_retries_retries_failures_then_succeeds(sidecar, agov):
    before = sidecar.status("retry-async").granted_total
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("flaky")
        return 42

    assert await agov.call_with_retries("retry-async", flaky, max_attempts=3, backoff=lambda n: 0.01) == 42
    assert len(calls) == 3
    assert sidecar.status("retry-async").granted_total == before + 3
    assert sidecar.in_flight("retry-async") == 0


async def test_call_with_retries_stops_when_budget_exhausted(sidecar, agov):
    calls = []

    async def broken():
        calls.append(1)
        raise ConnectionError("down")

    with pytest.raises(Rejected) as info:
        await agov.call_with_retries("nobudget-async", broken, max_attempts=5, backoff=lambda n: 0)
    assert info.value.reason is RejectReason.RETRY_BUDGET_EXHAUSTED
    assert isinstance(info.value.__cause__, ConnectionError)
    assert len(calls) == 1


async def test_unix_socket_target(start_sidecar, tmp_path):
    sock = tmp_path / "agov.sock"
    sc = start_sidecar({}, extra_args=["--uds", str(sock)])
    gov = AsyncGovernor(f"unix://{sock}", fail_open=False)
    try:
        async with gov.permit("over-uds") as permit:
            assert permit.lease_id
            assert sc.in_flight("over-uds") == 1
        assert sc.in_flight("over-uds") == 0
    finally:
        await gov.close()
