"""The asyncio client (``grpc.aio``)."""
from __future__ import annotations

import asyncio
import inspect
import time
import weakref
from types import TracebackType
from typing import Any, Awaitable, Callable, Optional, Sequence, Set, Tuple, Type, TypeVar, Union, cast

import grpc
import grpc.aio

from . import _common as c
from . import _session as sess
from ._common import (
    DEFAULT_ACQUIRE_TIMEOUT,
    DEFAULT_BACKOFF,
    DEFAULT_RPC_TIMEOUT,
    DEFAULT_TIMEOUT_MARGIN,
    Backoff,
    GovernorError,
    GovernorUnavailable,
    Outcome,
    OutcomeLike,
    Pressure,
    Priority,
    PriorityLike,
    RejectReason,
    Rejected,
    RetryOn,
    logger,
)
from .v1 import governor_pb2 as pb
from .v1 import governor_pb2_grpc as pb_grpc

T = TypeVar("T")


class AsyncPermit:
    """A concurrency permit held by an :class:`AsyncGovernor`.

    The asyncio twin of :class:`governor_client.Permit`: use ``async with``
    (or ``await permit.release(...)`` exactly once). On exit of the block the
    outcome is SUCCESS, FAILURE if it raised, CANCELLED for
    ``asyncio.CancelledError``, TIMEOUT for ``TimeoutError``; the latency is
    the block's duration. While held, a task renews the lease at about a third
    of its TTL; it stops at release. A permit garbage-collected while held is
    released (outcome UNSPECIFIED).

    Attributes: as :class:`governor_client.Permit`.
    """

    def __init__(
        self,
        client: "AsyncGovernor",
        dependency: str,
        resp: Optional[pb.AcquireResponse],
        otel_ctx: Any,
        degraded_error: Optional[GovernorUnavailable] = None,
        stream: Optional[sess.AsyncStream] = None,
    ) -> None:
        self._client = client
        self.dependency = dependency
        self._otel_ctx = otel_ctx
        self._stream = stream
        self.on_session = stream is not None
        self._done = False
        self._outcome_override: Optional[Outcome] = None
        self._latency_override: Optional[float] = None
        self._reported_outcome: Optional[Outcome] = None
        self._reported_latency: Optional[float] = None
        self._block_start: Optional[float] = None
        self._renew_task: Optional[asyncio.Task] = None
        self._finalizer: Optional[weakref.finalize] = None
        self.acquired_at = time.monotonic()
        self.renewals = 0
        self.lease_lost = False
        self.degraded = resp is None
        self.degraded_error = degraded_error
        if resp is None:
            self.lease_id = ""
            self.lease_ttl = 0.0
            self.queue_wait = 0.0
            self.limit = self.in_flight = self.queued = 0
            self.pressure = Pressure.UNSPECIFIED
            return
        self.lease_id = resp.lease_id
        self.lease_ttl = c.from_duration(resp.lease_ttl)
        self.queue_wait = c.from_duration(resp.queue_wait)
        self.limit = resp.limit
        self.in_flight = resp.in_flight
        self.queued = resp.queued
        self.pressure = Pressure.from_wire(resp.pressure)
        self._finalizer = weakref.finalize(
            self, _release_orphan, asyncio.get_running_loop(), client, dependency, self.lease_id, otel_ctx, stream
        )

    @property
    def released(self) -> bool:
        """Whether the permit has been released (or, when degraded, closed)."""
        return self._done

    @property
    def outcome(self) -> Optional[Outcome]:
        """The outcome reported on release (None before release)."""
        return self._reported_outcome

    @property
    def latency(self) -> Optional[float]:
        """The latency (seconds) reported on release (None before release)."""
        return self._reported_latency

    def set_outcome(self, outcome: OutcomeLike, latency: Optional[float] = None) -> None:
        """Override what the end of the ``async with`` block reports."""
        self._outcome_override = c.coerce_outcome(outcome)
        if latency is not None:
            self._latency_override = float(latency)

    async def release(self, outcome: OutcomeLike = Outcome.SUCCESS, latency: Optional[float] = None) -> bool:
        """Give the permit back, reporting ``outcome`` and ``latency`` (seconds).

        Same contract as :meth:`governor_client.Permit.release`: returns the
        sidecar's ``released``, never raises for transport errors.

        Raises:
            PermitLostError: the permit's session ended before this release.
        """
        outcome = c.coerce_outcome(outcome)
        if self._done:
            return False
        self._done = True
        if latency is None:
            latency = time.monotonic() - self.acquired_at
        self._reported_outcome = outcome
        self._reported_latency = latency
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._renew_task is not None and self._renew_task is not asyncio.current_task():
            self._renew_task.cancel()
        self._client._held.discard(self)
        if self.degraded:
            return False
        if self._stream is not None:
            return await self._release_on_session(outcome, latency)
        return await self._client._send_release(self.dependency, self.lease_id, outcome, latency, c.capture_context())

    def _close_with_session(self) -> None:
        self._done = True
        self._reported_outcome = Outcome.UNSPECIFIED
        self._reported_latency = time.monotonic() - self.acquired_at
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._renew_task is not None:
            self._renew_task.cancel()

    def _lost(self, reason: str) -> sess.PermitLostError:
        self.lease_lost = True
        return sess.PermitLostError(self.dependency, reason)

    async def _release_on_session(self, outcome: Outcome, latency: float) -> bool:
        stream = self._stream
        assert stream is not None
        if stream.broken is not None:
            raise self._lost(stream.broken.reason)
        req = sess.release_request(self.lease_id, outcome, latency)
        result = await sess.async_call(
            stream, lambda id_: pb.SessionRequest(id=id_, release=req), self._client._rpc_timeout
        )
        if isinstance(result, (sess._Broken, sess._RetryUnary)):
            raise self._lost(stream.broken.reason if stream.broken else str(result))
        if isinstance(result, BaseException):
            logger.warning("Release of lease for %r failed (%s); it will expire after its TTL", self.dependency, result)
            return False
        if result.WhichOneof("result") == "release":
            return result.release.released
        logger.warning("Release of lease for %r refused by the governor sidecar: %s", self.dependency, result.error.message)
        return False

    async def __aenter__(self) -> "AsyncPermit":
        self._block_start = time.monotonic()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        start = self._block_start if self._block_start is not None else self.acquired_at
        latency = self._latency_override if self._latency_override is not None else time.monotonic() - start
        outcome = self._outcome_override if self._outcome_override is not None else c.outcome_for_exception(exc)
        # Shielded: a second cancellation while releasing must not lose the Release.
        task = self._client._spawn(self.release(outcome, latency))
        try:
            await asyncio.shield(task)
        except sess.PermitLostError as lost:
            if exc is None:
                raise
            # The block's own exception wins; the loss is still on the permit.
            logger.warning("%s", lost)

    def _start_renewing(self) -> None:
        self._renew_task = self._client._spawn(
            _renew_loop(
                weakref.ref(self),
                self._client,
                self.dependency,
                self.lease_id,
                self._otel_ctx,
                self.lease_ttl,
                self._stream,
            )
        )

    def __repr__(self) -> str:
        state = "degraded" if self.degraded else ("released" if self._done else "held")
        # The lease id is a bearer credential: only its handle is shown.
        lease = f" lease={self.lease_handle}" if self.lease_handle else ""
        return f"<AsyncPermit {self.dependency!r} {state}{lease}>"

    @property
    def lease_handle(self) -> str:
        """8 hex digits of the lease id's SHA-256: tells leases apart in logs
        without revealing the id ("" when degraded)."""
        return c.lease_handle(self.lease_id)


async def _renew_loop(
    ref: "weakref.ref[AsyncPermit]",
    client: "AsyncGovernor",
    dependency: str,
    lease_id: str,
    otel_ctx: Any,
    ttl: float,
    stream: Optional[sess.AsyncStream],
) -> None:
    """Renews the lease until the permit is released or garbage-collected.

    Holds the permit only weakly (never across an await) so a dropped permit
    can be collected and released by its finalizer.
    """
    delay = c.renew_delay(ttl)
    while True:
        await asyncio.sleep(delay)
        permit = ref()
        if permit is None or permit._done:
            return
        ttl = permit.lease_ttl
        del permit
        if stream is not None:
            result = await sess.async_call(
                stream,
                lambda id_: pb.SessionRequest(id=id_, renew=pb.RenewRequest(lease_id=lease_id)),
                c.renew_timeout(ttl, client._rpc_timeout),
            )
            if isinstance(result, sess._Broken):  # the session ended: the permit is lost
                permit = ref()
                if permit is not None:
                    permit.lease_lost = True
                return
            if isinstance(result, BaseException) or result.WhichOneof("result") != "renew":
                logger.debug("Renew of lease for %r failed, retrying: %s", dependency, result)
                delay = c.renew_delay(ttl)
                continue
            resp = result.renew
        else:
            md = c.merge_metadata(client._metadata, c.trace_metadata(otel_ctx))
            try:
                resp = await client._get_stub().Renew(
                    pb.RenewRequest(lease_id=lease_id),
                    timeout=c.renew_timeout(ttl, client._rpc_timeout),
                    metadata=md,
                )
            except grpc.RpcError as e:
                logger.debug("Renew of lease for %r failed, retrying: %s", dependency, e)
                delay = c.renew_delay(ttl)
                continue
        permit = ref()
        if permit is None or permit._done:
            return
        if resp.renewed:
            permit.renewals += 1
            if resp.HasField("lease_ttl"):
                permit.lease_ttl = c.from_duration(resp.lease_ttl)
            delay = c.renew_delay(permit.lease_ttl)
            del permit
        else:
            permit.lease_lost = True
            logger.warning(
                "lease for %r was lost before it could be renewed (expired); the call continues without a slot",
                dependency,
            )
            return


def _release_orphan(
    loop: asyncio.AbstractEventLoop,
    client: "AsyncGovernor",
    dependency: str,
    lease_id: str,
    otel_ctx: Any,
    stream: Optional[sess.AsyncStream],
) -> None:
    """Finalizer of a held permit dropped without release (runs in any thread)."""
    logger.warning("permit for %r was garbage-collected while held; releasing it", dependency)
    if loop.is_closed() or client._closed:
        return

    def spawn() -> None:
        if client._closed:
            return
        if stream is not None:  # over its session, no answer wanted (a dead session freed it already)
            req = sess.release_request(lease_id, Outcome.UNSPECIFIED, None)
            stream.send(lambda _id: pb.SessionRequest(id=0, release=req), None)
            return
        client._spawn(client._send_release(dependency, lease_id, Outcome.UNSPECIFIED, None, otel_ctx))

    try:
        loop.call_soon_threadsafe(spawn)
    except RuntimeError:  # loop closed in the meantime: the lease expires on its own
        pass


class _AsyncPermitContext:
    """What :meth:`AsyncGovernor.permit` returns: acquires on ``__aenter__``."""

    def __init__(self, client: "AsyncGovernor", dependency: str, kwargs: dict) -> None:
        self._client = client
        self._dependency = dependency
        self._kwargs = kwargs
        self._permit: Optional[AsyncPermit] = None

    async def __aenter__(self) -> AsyncPermit:
        self._permit = await self._client.acquire(self._dependency, **self._kwargs)
        return await self._permit.__aenter__()

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        assert self._permit is not None
        await self._permit.__aexit__(exc_type, exc, tb)


class AsyncGovernor:
    """asyncio client of the governor sidecar.

    Same arguments and policies as :class:`governor_client.Governor`. The
    channel is created on first use inside the running event loop; use one
    ``AsyncGovernor`` per event loop and ``await gov.close()`` (or
    ``async with AsyncGovernor(...) as gov``) when done.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        fail_open: bool = True,
        max_wait: Optional[float] = None,
        timeout_margin: float = DEFAULT_TIMEOUT_MARGIN,
        acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        auto_renew: bool = True,
        metadata: Optional[Sequence[Tuple[str, str]]] = None,
        channel: Optional[grpc.aio.Channel] = None,
        channel_options: Optional[Sequence[Tuple[str, Any]]] = None,
        use_session: bool = True,
    ) -> None:
        self.target = target
        self.fail_open = fail_open
        self._max_wait = max_wait
        self._timeout_margin = timeout_margin
        self._acquire_timeout = acquire_timeout
        self._rpc_timeout = rpc_timeout
        self._auto_renew = auto_renew
        self._metadata: c.Metadata = tuple(metadata or ())
        self._channel_options = c.channel_options(target, channel_options)
        self._owns_channel = channel is None
        self._channel: Optional[grpc.aio.Channel] = channel
        self._stub: Optional[pb_grpc.GovernorStub] = pb_grpc.GovernorStub(channel) if channel is not None else None
        self._degraded = c.DegradedCounter()
        self._held: "weakref.WeakSet[AsyncPermit]" = weakref.WeakSet()
        self._tasks: Set[asyncio.Task] = set()
        self._session = sess.AsyncSession(self._get_stub, self._metadata) if use_session else None
        self._closed = False

    @property
    def channel(self) -> grpc.aio.Channel:
        """The gRPC channel (created on first use)."""
        self._get_stub()
        assert self._channel is not None
        return self._channel

    @property
    def degraded_total(self) -> int:
        """How many permits were handed out degraded (sidecar unreachable, fail_open)."""
        return self._degraded.count

    def _get_stub(self) -> pb_grpc.GovernorStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=self._channel_options)
            self._stub = pb_grpc.GovernorStub(self._channel)
        return self._stub

    def _spawn(self, coro: Awaitable[T]) -> "asyncio.Task[T]":
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send_release(
        self, dependency: str, lease_id: str, outcome: Outcome, latency: Optional[float], otel_ctx: Any
    ) -> bool:
        req = pb.ReleaseRequest(lease_id=lease_id, outcome=cast(Any, int(outcome)))
        if latency is not None:
            req.latency.CopyFrom(c.to_duration(max(0.0, latency)))
        md = c.merge_metadata(self._metadata, c.trace_metadata(otel_ctx))
        try:
            resp = await self._get_stub().Release(req, timeout=self._rpc_timeout, metadata=md)
        except grpc.RpcError as e:
            logger.warning(
                "Release of lease for %r failed (%s); it will expire after its TTL",
                dependency,
                c.classify_rpc_error(e, "Release"),
            )
            return False
        except Exception as e:  # closed channel and the like
            logger.warning("Release of lease for %r failed (%s); it will expire after its TTL", dependency, e)
            return False
        return resp.released

    async def acquire(
        self,
        dependency: str,
        *,
        priority: PriorityLike = Priority.NORMAL,
        tenant: str = "",
        route: str = "",
        attempt: int = 0,
        max_wait: Optional[float] = None,
        timeout: Optional[float] = None,
        degradable: bool = False,
    ) -> AsyncPermit:
        """Ask for a permit and return it held; the caller must release it.

        Arguments, defaults and exceptions as :meth:`governor_client.Governor.acquire`.
        """
        if self._closed:
            raise GovernorError("the AsyncGovernor client is closed")
        mw = max_wait if max_wait is not None else self._max_wait
        req = c.build_acquire_request(dependency, priority, tenant, attempt, mw, degradable, route)
        deadline = c.acquire_timeout(timeout, mw, self._timeout_margin, self._acquire_timeout)
        otel_ctx = c.capture_context()
        trace_md = c.trace_metadata(otel_ctx)
        # A stream's metadata is sent once: an acquire that carries a trace
        # context goes unary so the sidecar's span is its child.
        stream = self._session.stream() if self._session is not None and not trace_md else None
        if stream is not None:
            try:
                resp = await sess.async_acquire(stream, req, deadline)
            except sess._RetryUnary:
                stream = None
            except sess._Broken as broken:
                return self._unavailable(dependency, sess.broken_error(dependency, broken), otel_ctx)
            except GovernorUnavailable as err:
                return self._unavailable(dependency, err, otel_ctx)
            if stream is not None:
                return self._granted(dependency, resp, otel_ctx, stream)
        md = c.merge_metadata(self._metadata, trace_md)
        try:
            resp = await self._get_stub().Acquire(req, timeout=deadline, metadata=md)
        except grpc.RpcError as e:
            err = c.classify_rpc_error(e, f"Acquire({dependency!r})")
            if isinstance(err, GovernorUnavailable) and self.fail_open:
                self._degraded.record(dependency, err)
                return AsyncPermit(self, dependency, None, otel_ctx, degraded_error=err)
            raise err from e
        return self._granted(dependency, resp, otel_ctx, None)

    def _unavailable(self, dependency: str, err: GovernorUnavailable, otel_ctx: Any) -> AsyncPermit:
        if self.fail_open:
            self._degraded.record(dependency, err)
            return AsyncPermit(self, dependency, None, otel_ctx, degraded_error=err)
        raise err

    def _granted(
        self, dependency: str, resp: pb.AcquireResponse, otel_ctx: Any, stream: Optional[sess.AsyncStream]
    ) -> AsyncPermit:
        if not resp.granted:
            # Every rejection, SHUTTING_DOWN included, is an answer: never failed open.
            raise c.rejection_from_response(dependency, resp)
        permit = AsyncPermit(self, dependency, resp, otel_ctx, stream=stream)
        self._held.add(permit)
        if self._auto_renew:
            permit._start_renewing()
        return permit

    def permit(
        self,
        dependency: str,
        *,
        priority: PriorityLike = Priority.NORMAL,
        tenant: str = "",
        route: str = "",
        attempt: int = 0,
        max_wait: Optional[float] = None,
        timeout: Optional[float] = None,
        degradable: bool = False,
    ) -> _AsyncPermitContext:
        """``async with gov.permit("payments") as permit: ...`` — acquire, run, release.

        Takes the same arguments as :meth:`acquire` (``degradable=True``: the
        ``async with`` raises :class:`Rejected` with reason DEGRADE instead of
        queueing).
        """
        kwargs = dict(
            priority=priority,
            tenant=tenant,
            route=route,
            attempt=attempt,
            max_wait=max_wait,
            timeout=timeout,
            degradable=degradable,
        )
        return _AsyncPermitContext(self, dependency, kwargs)

    async def call_with_retries(
        self,
        dependency: str,
        fn: Callable[[], Awaitable[T]],
        *,
        max_attempts: int = 3,
        backoff: Backoff = DEFAULT_BACKOFF,
        retry_on: RetryOn = (Exception,),
        priority: PriorityLike = Priority.NORMAL,
        tenant: str = "",
        route: str = "",
        max_wait: Optional[float] = None,
        timeout: Optional[float] = None,
        degradable: Optional[bool] = None,
        fallback: Optional[Callable[[Rejected], Union[T, Awaitable[T]]]] = None,
    ) -> T:
        """``await fn()`` under a permit, retrying; see :meth:`governor_client.Governor.call_with_retries`.

        ``fallback(rejection)`` runs instead of ``fn`` on a DEGRADE answer (it
        may return a value or an awaitable, which is awaited).
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if fallback is not None and not callable(fallback):
            raise TypeError("fallback must be callable")
        degradable = c.fallback_degradable(degradable, fallback)
        last_error: Optional[BaseException] = None
        for attempt in range(max_attempts):
            try:
                permit = await self.acquire(
                    dependency,
                    priority=priority,
                    tenant=tenant,
                    route=route,
                    attempt=attempt,
                    max_wait=max_wait,
                    timeout=timeout,
                    degradable=degradable,
                )
            except Rejected as rej:
                if rej.reason == RejectReason.DEGRADE:
                    if fallback is None:
                        raise rej from last_error
                    result = fallback(rej)
                    if inspect.isawaitable(result):
                        return await result
                    return cast(T, result)
                if rej.reason == RejectReason.RETRY_BUDGET_EXHAUSTED or attempt + 1 >= max_attempts:
                    raise rej from last_error
                last_error = rej
                await asyncio.sleep(c.retry_delay(backoff, attempt + 1, rej))
                continue
            try:
                async with permit:
                    return await fn()
            except Exception as e:
                if attempt + 1 >= max_attempts or not c.should_retry(e, retry_on):
                    raise
                last_error = e
            await asyncio.sleep(c.retry_delay(backoff, attempt + 1, None))
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        """Release every permit still held (outcome UNSPECIFIED), stop renewing, close the channel.

        The permits held on the Session stream are freed together by closing
        it (release outcome ``session_closed``); they count as released.
        """
        if self._closed:
            return
        for permit in list(self._held):
            if permit._stream is not None and permit._stream.alive:
                permit._close_with_session()
                self._held.discard(permit)
            else:
                try:
                    await permit.release(Outcome.UNSPECIFIED)
                except sess.PermitLostError:
                    pass
        if self._session is not None:
            await self._session.close()
        self._closed = True
        # Renewal tasks were cancelled by the releases; what is left are releases
        # in flight (e.g. of garbage-collected permits): let them finish.
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=self._rpc_timeout + 1.0)
            for t in still:
                t.cancel()
            if still:
                await asyncio.gather(*still, return_exceptions=True)
        if self._owns_channel and self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncGovernor":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncGovernor target={self.target!r} fail_open={self.fail_open}>"
