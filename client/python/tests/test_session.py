"""The Session stream (issue 11), sync and asyncio, against the real governor
binary; the unary fallback against an in-test server without the Session RPC."""
from __future__ import annotations

import asyncio
import threading
from typing import List

import grpc
import pytest

from governor_client import AsyncGovernor, Governor, InvalidRequest, PermitLostError
from governor_client import _session as sess
from governor_client.v1 import governor_pb2 as pb

from fake_governor import FakeGovernor
from helpers import async_wait_until, wait_until


class UnaryOnlyGovernor(FakeGovernor):
    """Implements Acquire/Release/Renew only; counts the Session attempts it refuses."""

    def __post_init__(self) -> None:
        self.session_attempts = 0
        super().__post_init__()

    def Session(self, request_iterator, context):  # noqa: N802 - the gRPC method name
        with self._cv:
            self.session_attempts += 1
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found: governor.v1.Governor/Session")


@pytest.fixture
def unary_only():
    server = UnaryOnlyGovernor()
    try:
        yield server
    finally:
        server.stop()


# --- sync ----------------------------------------------------------------------


def test_sync_permits_go_over_the_session_and_close_frees_them_at_once(sidecar):
    before = sidecar.status("sess-close-sync")
    gov = Governor(sidecar.addr, fail_open=False)
    first = gov.acquire("sess-close-sync")
    second = gov.acquire("sess-close-sync")
    assert first.on_session and second.on_session
    assert first._stream is second._stream  # one stream per client
    assert sidecar.in_flight("sess-close-sync") == 2
    assert first.release() is True  # a release over the session, with its answer
    assert sidecar.in_flight("sess-close-sync") == 1
    gov.close()  # half-closes the stream: the sidecar frees what it still holds
    assert second.released
    assert sidecar.in_flight("sess-close-sync") == 0  # no Release was sent for it
    after = sidecar.status("sess-close-sync")
    assert after.granted_total == before.granted_total + 2
    assert after.expired_total == before.expired_total


def test_sync_two_acquires_on_one_session_are_independent(sidecar):
    holder = Governor(sidecar.addr, fail_open=False, use_session=False)
    gov = Governor(sidecar.addr, fail_open=False)
    held = holder.acquire("sess-full-sync")
    got: List[object] = []
    waiter = threading.Thread(target=lambda: got.append(gov.acquire("sess-full-sync")), daemon=True)
    waiter.start()
    try:
        wait_until(lambda: sidecar.status("sess-full-sync").queued == 1, timeout=5, what="the first acquire to queue")
        other = gov.acquire("sess-free-sync", max_wait=0)  # granted at once, past the waiting one
        assert other.on_session and waiter.is_alive() and got == []
        assert other._stream is gov._session._stream
        other.release()
        held.release()
        waiter.join(timeout=5)
        assert len(got) == 1 and got[0].on_session  # type: ignore[attr-defined]
        got[0].release()  # type: ignore[attr-defined]
    finally:
        gov.close()
        holder.close()


def test_sync_a_killed_session_reports_its_permit_lost_and_reconnects(sidecar):
    gov = Governor(sidecar.addr, fail_open=False)
    try:
        permit = gov.acquire("sess-lost-sync")
        in_block = gov.permit("sess-lost-sync")
        blocked = in_block.__enter__()
        assert permit.on_session and sidecar.in_flight("sess-lost-sync") == 2
        old = permit._stream
        old._call.cancel()  # the stream breaks as if the connection were reset
        wait_until(lambda: sidecar.in_flight("sess-lost-sync") == 0, timeout=2, what="the sidecar to free both")
        with pytest.raises(PermitLostError, match="sess-lost-sync") as lost:
            permit.release()
        assert "CANCELLED" in lost.value.reason and permit.lease_lost and permit.released
        assert permit.release() is False  # never a second release
        with pytest.raises(PermitLostError):  # the context manager surfaces it
            in_block.__exit__(None, None, None)
        assert blocked.lease_lost

        def on_new_session():
            p = gov.acquire("sess-lost-sync")
            p.release()
            return p.on_session and p._stream is not old

        # Unary while the reconnect backs off (<= 50 ms after one break), then a new stream.
        wait_until(on_new_session, timeout=5, what="a new session")
    finally:
        gov.close()


def test_sync_the_blocks_own_error_wins_over_the_lost_permit(sidecar, caplog):
    gov = Governor(sidecar.addr, fail_open=False)
    try:
        with pytest.raises(ValueError, match="downstream broke"):
            with gov.permit("sess-lost-sync") as permit:
                assert permit.on_session
                permit._stream._call.cancel()
                wait_until(lambda: permit._stream.broken is not None, timeout=2, what="the break")
                raise ValueError("downstream broke")
        assert permit.lease_lost and permit.released
        assert any("was lost" in r.getMessage() for r in caplog.records)
    finally:
        gov.close()


def test_sync_a_dead_sidecar_makes_held_permits_lost(start_sidecar):
    sc = start_sidecar({"gone": {}})
    gov = Governor(sc.addr, fail_open=False)
    try:
        permit = gov.acquire("gone")
        assert permit.on_session
        sc.proc.kill()
        sc.proc.wait(timeout=10)
        with pytest.raises(PermitLostError) as lost:
            permit.release()
        assert "UNAVAILABLE" in lost.value.reason
        assert permit.release() is False
    finally:
        gov.close()


def test_sync_per_message_error_keeps_the_session(sidecar):
    gov = Governor(sidecar.addr, fail_open=True)
    try:
        first = gov.acquire("sess-free-sync")
        with pytest.raises(InvalidRequest) as bad:
            gov.acquire("bad name!")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.details.startswith("dependency:")
        second = gov.acquire("sess-free-sync")
        assert second._stream is first._stream and second._stream.alive
        first.release()
        second.release()
    finally:
        gov.close()


def test_sync_unary_fallback_when_the_sidecar_has_no_session(unary_only, monkeypatch):
    gov = Governor(unary_only.target, fail_open=False)
    try:
        permits = [gov.acquire("payments") for _ in range(3)]
        assert not any(p.on_session for p in permits)
        assert len(unary_only.of("Acquire")) == 3
        assert unary_only.session_attempts == 1  # remembered: not tried again for 60 s
        assert all(p.release() is True for p in permits)
        assert len(unary_only.of("Release")) == 3
        monkeypatch.setattr(sess, "UNARY_RETRY", 0.0)
        gov._session._reconnect.unary_until = 0.0
        gov.acquire("payments").release()
        assert unary_only.session_attempts == 2  # tried again once the retry time passed
    finally:
        gov.close()


def test_sync_a_stream_reads_as_dead_only_once_the_session_chose_unary(unary_only, monkeypatch):
    # The reader thread that sees UNIMPLEMENTED tells the session before the
    # stream reads as dead; in between, a caller must not open a second stream.
    told = threading.Event()
    go_on = threading.Event()
    real_ended = sess.SyncSession._ended

    def slow_ended(self, stream, why):
        told.set()
        assert go_on.wait(5.0)
        real_ended(self, stream, why)

    monkeypatch.setattr(sess.SyncSession, "_ended", slow_ended)
    gov = Governor(unary_only.target, fail_open=False)
    try:
        first = gov._session.stream()
        assert first is not None
        assert told.wait(5.0)
        assert gov._session.stream() is first  # not yet dead: no second attempt
        go_on.set()
        first._reader.join(5.0)
        assert not first.alive
        assert gov._session.stream() is None  # unary for a while
        gov.acquire("payments").release()
        assert unary_only.session_attempts == 1
    finally:
        go_on.set()
        gov.close()


# --- asyncio -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_permits_go_over_the_session_and_close_frees_them_at_once(sidecar):
    before = sidecar.status("sess-close-async")
    gov = AsyncGovernor(sidecar.addr, fail_open=False)
    first = await gov.acquire("sess-close-async")
    second = await gov.acquire("sess-close-async")
    assert first.on_session and second.on_session and first._stream is second._stream
    assert sidecar.in_flight("sess-close-async") == 2
    assert await first.release() is True
    assert sidecar.in_flight("sess-close-async") == 1
    await gov.close()
    assert second.released
    assert sidecar.in_flight("sess-close-async") == 0
    assert sidecar.status("sess-close-async").expired_total == before.expired_total


@pytest.mark.asyncio
async def test_async_two_acquires_on_one_session_are_independent(sidecar):
    holder = AsyncGovernor(sidecar.addr, fail_open=False, use_session=False)
    gov = AsyncGovernor(sidecar.addr, fail_open=False)
    held = await holder.acquire("sess-full-async")
    waiting = asyncio.ensure_future(gov.acquire("sess-full-async"))
    try:
        await async_wait_until(lambda: sidecar.status("sess-full-async").queued == 1, timeout=5, what="queued")
        other = await gov.acquire("sess-free-async", max_wait=0)
        assert other.on_session and not waiting.done()
        await other.release()
        await held.release()
        granted = await asyncio.wait_for(waiting, 5)
        assert granted.on_session
        await granted.release()
    finally:
        await gov.close()
        await holder.close()


@pytest.mark.asyncio
async def test_async_cancelled_waiting_acquire_is_released_when_granted_late(sidecar):
    holder = AsyncGovernor(sidecar.addr, fail_open=False, use_session=False)
    gov = AsyncGovernor(sidecar.addr, fail_open=False)
    before = sidecar.status("sess-full-async")
    held = await holder.acquire("sess-full-async")
    waiting = asyncio.ensure_future(gov.acquire("sess-full-async"))
    try:
        await async_wait_until(lambda: sidecar.status("sess-full-async").queued == 1, timeout=5, what="queued")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # Still queued in the sidecar (a stream has no cancel message) ...
        assert sidecar.status("sess-full-async").queued == 1
        await held.release()
        # ... so its late grant is given straight back by the client.
        await async_wait_until(
            lambda: sidecar.status("sess-full-async").granted_total == before.granted_total + 2, timeout=5, what="grant"
        )
        await async_wait_until(lambda: sidecar.in_flight("sess-full-async") == 0, timeout=5, what="late release")
        assert sidecar.status("sess-full-async").expired_total == before.expired_total
        assert gov._session._stream is not None and gov._session._stream.alive
    finally:
        await gov.close()
        await holder.close()


@pytest.mark.asyncio
async def test_async_a_killed_session_reports_its_permit_lost(sidecar):
    gov = AsyncGovernor(sidecar.addr, fail_open=False)
    try:
        permit = await gov.acquire("sess-lost-async")
        assert permit.on_session
        permit._stream._call.cancel()
        await async_wait_until(lambda: sidecar.in_flight("sess-lost-async") == 0, timeout=2, what="freed")
        with pytest.raises(PermitLostError):
            await permit.release()
        assert permit.lease_lost and await permit.release() is False

        async def on_new_session():
            p = await gov.acquire("sess-lost-async")
            await p.release()
            return p.on_session

        await async_wait_until(on_new_session, timeout=5, what="a new session")  # after the backoff
        with pytest.raises(PermitLostError):  # async with surfaces it
            async with gov.permit("sess-lost-async") as inner:
                inner._stream._call.cancel()
                await async_wait_until(lambda: inner._stream.broken is not None, timeout=2, what="the break")
    finally:
        await gov.close()


@pytest.mark.asyncio
async def test_async_unary_fallback_when_the_sidecar_has_no_session(unary_only):
    gov = AsyncGovernor(unary_only.target, fail_open=False)
    try:
        permits = [await gov.acquire("payments") for _ in range(3)]
        assert not any(p.on_session for p in permits)
        assert len(unary_only.of("Acquire")) == 3 and unary_only.session_attempts == 1
        for p in permits:
            assert await p.release() is True
        assert [r.request.outcome for r in unary_only.of("Release")] == [pb.OUTCOME_SUCCESS] * 3
    finally:
        await gov.close()
