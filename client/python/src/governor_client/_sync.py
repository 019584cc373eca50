"""The synchronous (thread-based) client."""
from __future__ import annotations

import heapq
import itertools
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Callable, Optional, Sequence, Tuple, Type, TypeVar, cast

import grpc

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


class Permit:
    """A concurrency permit for one downstream call.

    Obtained from :meth:`Governor.acquire` (already held) or as the target of
    ``with gov.permit(...) as permit``. Use it as a context manager (or call
    :meth:`release` exactly once): on exit of the block it is released with the
    outcome derived from the exception, if any, and the measured latency of the
    block. While held, the lease is renewed in the background at about a third
    of its TTL. A permit that is garbage-collected while still held is released
    (outcome UNSPECIFIED) so it can never leak past the lease TTL.

    Attributes:
        dependency: the dependency the permit is for.
        lease_id: the sidecar's lease id ("" when degraded). A bearer
            credential: never log it; :attr:`lease_handle` and ``repr`` show a
            short hash instead.
        lease_ttl: the lease's current time to live, in seconds.
        queue_wait: seconds spent queued before the grant.
        limit, in_flight, queued: the dependency's state right after the grant.
        pressure: the dependency's :class:`~governor_client.Pressure` right
            after the grant (UNSPECIFIED from a sidecar that predates it, and
            for a degraded permit).
        degraded: True when the sidecar was unreachable and the client is
            ``fail_open``: the call proceeds without a permit.
        degraded_error: the :class:`GovernorUnavailable` behind a degraded permit.
        renewals: how many times the lease was renewed.
        lease_lost: True if a renewal found the lease already expired, or the
            permit's session ended (its release then raises
            :class:`~governor_client.PermitLostError`).
        on_session: True when the permit was granted on the client's Session
            stream (False: by the unary Acquire, or degraded).
    """

    def __init__(
        self,
        client: "Governor",
        dependency: str,
        resp: Optional[pb.AcquireResponse],
        otel_ctx: Any,
        degraded_error: Optional[GovernorUnavailable] = None,
        stream: Optional[sess.SyncStream] = None,
    ) -> None:
        self._client = client
        self.dependency = dependency
        self._otel_ctx = otel_ctx
        self._stream = stream
        self.on_session = stream is not None
        self._lock = threading.Lock()
        self._done = False
        self._outcome_override: Optional[Outcome] = None
        self._latency_override: Optional[float] = None
        self._reported_outcome: Optional[Outcome] = None
        self._reported_latency: Optional[float] = None
        self._block_start: Optional[float] = None
        self.acquired_at = time.monotonic()
        self.renewals = 0
        self.lease_lost = False
        self.degraded = resp is None
        self.degraded_error = degraded_error
        self._finalizer: Optional[weakref.finalize] = None
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
            self,
            _release_orphan,
            client._stub,
            client._metadata,
            client._rpc_timeout,
            dependency,
            self.lease_id,
            otel_ctx,
            stream,
        )

    # -- state --------------------------------------------------------------

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
        """Override what the end of the ``with`` block reports.

        Use it when the downstream call failed without raising (an HTTP 503, say),
        or to report a latency measured more precisely than the whole block.
        """
        self._outcome_override = c.coerce_outcome(outcome)
        if latency is not None:
            self._latency_override = float(latency)

    # -- release ------------------------------------------------------------

    def release(self, outcome: OutcomeLike = Outcome.SUCCESS, latency: Optional[float] = None) -> bool:
        """Give the permit back, reporting ``outcome`` and ``latency`` (seconds).

        ``latency`` defaults to the time since the grant. Returns the sidecar's
        ``released`` (False if the lease had expired, or on a second call). Never
        raises for transport errors: they are logged and the lease expires on
        its own. A degraded permit returns False without any RPC.

        A permit granted on the Session stream is released over it (with an id:
        the answer is waited for, at most ``rpc_timeout``).

        Raises:
            PermitLostError: the permit's session ended before this release;
                the sidecar had already freed the lease.
        """
        outcome = c.coerce_outcome(outcome)
        with self._lock:
            if self._done:
                return False
            self._done = True
        if latency is None:
            latency = time.monotonic() - self.acquired_at
        self._reported_outcome = outcome
        self._reported_latency = latency
        if self._finalizer is not None:
            self._finalizer.detach()
        self._client._forget(self)
        if self.degraded:
            return False
        if self._stream is not None:
            return self._release_on_session(outcome, latency)
        req = pb.ReleaseRequest(lease_id=self.lease_id, outcome=cast(Any, int(outcome)))
        req.latency.CopyFrom(c.to_duration(max(0.0, latency)))
        md = c.merge_metadata(self._client._metadata, c.trace_metadata())
        try:
            resp = self._client._stub.Release(req, timeout=self._client._rpc_timeout, metadata=md)
        except grpc.RpcError as e:
            logger.warning(
                "Release of lease for %r failed (%s); it will expire after its TTL",
                self.dependency,
                c.classify_rpc_error(e, "Release"),
            )
            return False
        except ValueError as e:  # the channel was closed
            logger.warning("Release of lease for %r failed (%s); it will expire after its TTL", self.dependency, e)
            return False
        return resp.released

    def _close_with_session(self) -> None:
        with self._lock:
            self._done = True
        self._reported_outcome = Outcome.UNSPECIFIED
        self._reported_latency = time.monotonic() - self.acquired_at
        if self._finalizer is not None:
            self._finalizer.detach()

    def _lost(self, reason: str) -> sess.PermitLostError:
        self.lease_lost = True
        return sess.PermitLostError(self.dependency, reason)

    def _release_on_session(self, outcome: Outcome, latency: float) -> bool:
        stream = self._stream
        assert stream is not None
        if stream.broken is not None:
            raise self._lost(stream.broken.reason)
        req = sess.release_request(self.lease_id, outcome, latency)
        result = sess.sync_call(stream, lambda id_: pb.SessionRequest(id=id_, release=req), self._client._rpc_timeout)
        if isinstance(result, (sess._Broken, sess._RetryUnary)):
            raise self._lost(stream.broken.reason if stream.broken else str(result))
        if isinstance(result, BaseException):
            logger.warning("Release of lease for %r failed (%s); it will expire after its TTL", self.dependency, result)
            return False
        if result.WhichOneof("result") == "release":
            return result.release.released
        logger.warning("Release of lease for %r refused by the governor sidecar: %s", self.dependency, result.error.message)
        return False

    def __enter__(self) -> "Permit":
        self._block_start = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        start = self._block_start if self._block_start is not None else self.acquired_at
        latency = self._latency_override if self._latency_override is not None else time.monotonic() - start
        outcome = self._outcome_override if self._outcome_override is not None else c.outcome_for_exception(exc)
        try:
            self.release(outcome, latency)
        except sess.PermitLostError as lost:
            if exc is None:
                raise
            # The block's own exception wins; the loss is still on the permit.
            logger.warning("%s", lost)

    # -- renewal (driven by the client's renewer thread) --------------------

    def _renew_now(self) -> None:
        if self._done:
            return
        client = self._client
        if self._stream is not None:
            lease_id = self.lease_id
            self._stream.send(
                lambda id_: pb.SessionRequest(id=id_, renew=pb.RenewRequest(lease_id=lease_id)), self._on_session_renewed
            )
            return
        md = c.merge_metadata(client._metadata, c.trace_metadata(self._otel_ctx))
        try:
            fut = client._stub.Renew.future(
                pb.RenewRequest(lease_id=self.lease_id),
                timeout=c.renew_timeout(self.lease_ttl, client._rpc_timeout),
                metadata=md,
            )
        except ValueError:  # channel closed
            return
        fut.add_done_callback(self._on_renewed)

    def _on_session_renewed(self, result: Any) -> None:
        if self._done:
            return
        if isinstance(result, BaseException):  # the session ended: the permit is lost
            self.lease_lost = True
            return
        if result.WhichOneof("result") != "renew":
            logger.debug("Renew of lease for %r refused: %s", self.dependency, result.error.message)
            self._client._renewer.schedule(self, c.renew_delay(self.lease_ttl))
            return
        self._renewed(result.renew)

    def _on_renewed(self, fut: "grpc.Future") -> None:
        if self._done:
            return
        try:
            resp = fut.result()
        except grpc.RpcError as e:
            logger.debug("Renew of lease for %r failed, retrying: %s", self.dependency, e)
            self._client._renewer.schedule(self, c.renew_delay(self.lease_ttl))
            return
        except Exception:  # cancelled future (channel closing)
            return
        self._renewed(resp)

    def _renewed(self, resp: pb.RenewResponse) -> None:
        if resp.renewed:
            self.renewals += 1
            if resp.HasField("lease_ttl"):
                self.lease_ttl = c.from_duration(resp.lease_ttl)
            self._client._renewer.schedule(self, c.renew_delay(self.lease_ttl))
        else:
            self.lease_lost = True
            logger.warning(
                "lease for %r was lost before it could be renewed (expired); the call continues without a slot",
                self.dependency,
            )

    def __repr__(self) -> str:
        state = "degraded" if self.degraded else ("released" if self._done else "held")
        # The lease id is a bearer credential: only its handle is shown.
        lease = f" lease={self.lease_handle}" if self.lease_handle else ""
        return f"<Permit {self.dependency!r} {state}{lease}>"

    @property
    def lease_handle(self) -> str:
        """8 hex digits of the lease id's SHA-256: tells leases apart in logs
        without revealing the id ("" when degraded)."""
        return c.lease_handle(self.lease_id)


#: Releases of collected permits still in flight (see :func:`_release_orphan`).
_ORPHAN_RELEASES: "set[grpc.Future]" = set()


def _release_orphan(
    stub: pb_grpc.GovernorStub,
    metadata: c.Metadata,
    rpc_timeout: float,
    dependency: str,
    lease_id: str,
    otel_ctx: Any,
    stream: Optional[sess.SyncStream],
) -> None:
    """Finalizer of a held permit that was dropped without release."""
    logger.warning("permit for %r was garbage-collected while held; releasing it", dependency)
    if stream is not None:  # over its session, no answer wanted (a dead session freed it already)
        req = sess.release_request(lease_id, Outcome.UNSPECIFIED, None)
        stream.send(lambda _id: pb.SessionRequest(id=0, release=req), None)
        return
    try:
        req = pb.ReleaseRequest(lease_id=lease_id, outcome=cast(Any, int(Outcome.UNSPECIFIED)))
        md = c.merge_metadata(metadata, c.trace_metadata(otel_ctx))
        # Kept until done: grpc cancels the call of a future that is collected.
        fut = stub.Release.future(req, timeout=rpc_timeout, metadata=md)
        _ORPHAN_RELEASES.add(fut)
        fut.add_done_callback(_ORPHAN_RELEASES.discard)
    except Exception:  # interpreter shutdown, closed channel: the lease expires anyway
        logger.debug("release of orphaned permit failed", exc_info=True)


class _Renewer:
    """One daemon thread per client that renews every held lease on time.

    Holds only weak references to permits; the RPCs are issued asynchronously
    (``.future()``) so one slow renewal does not delay the others.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list = []
        self._seq = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def schedule(self, permit: Permit, delay: float) -> None:
        with self._cv:
            if self._closed:
                return
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), weakref.ref(permit)))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="governor-renewer", daemon=True)
                self._thread.start()
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._closed:
                        return
                    if not self._heap:
                        self._cv.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        ref = heapq.heappop(self._heap)[2]
                        break
                    self._cv.wait(wait)
            permit = ref()
            if permit is not None:
                try:
                    permit._renew_now()
                except Exception:
                    logger.exception("unexpected error renewing a lease")
            del permit

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._heap.clear()
            self._cv.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


class _PermitContext:
    """What :meth:`Governor.permit` returns: acquires on ``__enter__``."""

    def __init__(self, client: "Governor", dependency: str, kwargs: dict) -> None:
        self._client = client
        self._dependency = dependency
        self._kwargs = kwargs
        self._permit: Optional[Permit] = None

    def __enter__(self) -> Permit:
        self._permit = self._client.acquire(self._dependency, **self._kwargs)
        return self._permit.__enter__()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        assert self._permit is not None
        self._permit.__exit__(exc_type, exc, tb)


class Governor:
    """Synchronous client of the governor sidecar.

    Args:
        target: the sidecar's address: ``"host:port"`` or ``"unix:///path.sock"``.
        fail_open: what to do when the sidecar gives no answer (UNAVAILABLE,
            DEADLINE_EXCEEDED, CANCELLED, UNKNOWN, INTERNAL, DATA_LOSS). True
            (the default): proceed without a permit; the permit says
            ``degraded=True``, :attr:`degraded_total` goes up and a warning is
            logged. False: raise :class:`GovernorUnavailable`. Rejections
            (:class:`Rejected`, every reason including SHUTTING_DOWN) and every
            other code (:class:`InvalidRequest`) are raised under both.
        max_wait: default queueing bound (seconds) sent with every Acquire;
            None leaves it to the sidecar's configuration.
        timeout_margin: added to ``max_wait`` to form the Acquire deadline (1 s).
        acquire_timeout: the Acquire deadline when no ``max_wait`` is known
            (1 h + 1 s: longer than any ``max_wait`` the sidecar accepts).
        rpc_timeout: the deadline of Release calls and the cap of Renew's (2 s).
        auto_renew: renew held leases in the background (at ~1/3 of the TTL).
        metadata: extra gRPC metadata sent with every call.
        channel: use this channel instead of creating one (not closed by :meth:`close`).
        channel_options: options for the channel this client creates.
        use_session: send acquire, release and renew over one Session stream
            (opened on the first acquire; see the package README). False: the
            unary RPCs only.
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
        channel: Optional[grpc.Channel] = None,
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
        self._owns_channel = channel is None
        self.channel: grpc.Channel = channel or grpc.insecure_channel(
            target, options=c.channel_options(target, channel_options)
        )
        self._stub = pb_grpc.GovernorStub(self.channel)
        self._renewer = _Renewer()
        self._degraded = c.DegradedCounter()
        self._held: "weakref.WeakSet[Permit]" = weakref.WeakSet()
        self._held_lock = threading.Lock()
        self._session = sess.SyncSession(self._stub, self._metadata) if use_session else None
        self._closed = False

    @property
    def degraded_total(self) -> int:
        """How many permits were handed out degraded (sidecar unreachable, fail_open)."""
        return self._degraded.count

    def acquire(
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
    ) -> Permit:
        """Ask for a permit and return it held; the caller must release it.

        Prefer ``with gov.permit(...)``. Args:
            dependency: the downstream dependency's name.
            priority: queue priority (:class:`Priority`, its value, or its name).
            tenant: optional caller tenant (at most 128 bytes): for
                attribution, the dependency's ``tenant_rate`` and its fair shares.
            route: optional route within the tenant (an endpoint, a query
                class; at most 128 bytes): for attribution, and under fairness
                by ``tenant_route`` the tenant's routes share its part equally.
            attempt: 0 for a first try, n >= 1 for the n-th retry (draws on the retry budget).
            max_wait: queue at most this many seconds (0: never queue); defaults
                to the client's ``max_wait``, else the sidecar's configuration.
            timeout: the gRPC deadline of the Acquire call; defaults to
                ``max_wait + timeout_margin``, else ``acquire_timeout``.
            degradable: the caller can serve a cheaper answer without this
                call (a cached value, a partial result): rather than queue, the
                sidecar answers at once with a :class:`Rejected` of reason
                DEGRADE (see :meth:`call_with_retries`'s ``fallback``).

        Raises:
            Rejected: the sidecar refused the permit (reason DEGRADE: a
                ``degradable`` request that would have had to wait).
            GovernorUnavailable: the sidecar is unreachable and ``fail_open`` is False.
            InvalidRequest: the sidecar refused the request as malformed.
        """
        if self._closed:
            raise GovernorError("the Governor client is closed")
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
                resp = sess.sync_acquire(stream, req, deadline)
            except sess._RetryUnary:
                stream = None
            except sess._Broken as broken:
                err = sess.broken_error(dependency, broken)
                return self._unavailable(dependency, err, otel_ctx)
            except GovernorUnavailable as err:
                return self._unavailable(dependency, err, otel_ctx)
            if stream is not None:
                return self._granted(dependency, resp, otel_ctx, stream)
        md = c.merge_metadata(self._metadata, trace_md)
        try:
            resp = self._stub.Acquire(req, timeout=deadline, metadata=md)
        except grpc.RpcError as e:
            err = c.classify_rpc_error(e, f"Acquire({dependency!r})")
            if isinstance(err, GovernorUnavailable) and self.fail_open:
                self._degraded.record(dependency, err)
                return Permit(self, dependency, None, otel_ctx, degraded_error=err)
            raise err from e
        return self._granted(dependency, resp, otel_ctx, None)

    def _unavailable(self, dependency: str, err: GovernorUnavailable, otel_ctx: Any) -> Permit:
        if self.fail_open:
            self._degraded.record(dependency, err)
            return Permit(self, dependency, None, otel_ctx, degraded_error=err)
        raise err

    def _granted(
        self, dependency: str, resp: pb.AcquireResponse, otel_ctx: Any, stream: Optional[sess.SyncStream]
    ) -> Permit:
        if not resp.granted:
            # Every rejection, SHUTTING_DOWN included, is an answer: never failed open.
            raise c.rejection_from_response(dependency, resp)
        permit = Permit(self, dependency, resp, otel_ctx, stream=stream)
        with self._held_lock:
            self._held.add(permit)
        if self._auto_renew:
            self._renewer.schedule(permit, c.renew_delay(permit.lease_ttl))
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
    ) -> _PermitContext:
        """``with gov.permit("payments") as permit: ...`` — acquire, run the block, release.

        Takes the same arguments as :meth:`acquire`. The block's outcome
        (SUCCESS; FAILURE if it raised; TIMEOUT for ``TimeoutError``; CANCELLED
        for ``KeyboardInterrupt``) and duration are reported on release. With
        ``degradable=True`` the ``with`` statement raises :class:`Rejected`
        (reason DEGRADE) instead of queueing; :meth:`call_with_retries` with a
        ``fallback`` runs the fallback instead.
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
        return _PermitContext(self, dependency, kwargs)

    def call_with_retries(
        self,
        dependency: str,
        fn: Callable[[], T],
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
        fallback: Optional[Callable[[Rejected], T]] = None,
    ) -> T:
        """Call ``fn()`` under a permit, retrying up to ``max_attempts`` times in all.

        Each try acquires a permit with ``attempt`` = 0, 1, 2, ... so retries
        draw on the dependency's retry budget. Between tries it sleeps
        ``backoff(retry_number)`` seconds, and at least the sidecar's
        ``retry_after`` after a rejection (RATE_LIMITED included: its
        ``retry_after`` is the time until the next token). An exception from
        ``fn`` is retried if ``retry_on`` (a tuple of exception types or a
        predicate) says so.

        ``degradable`` is sent with every Acquire (see :meth:`acquire`); it
        defaults to True when a ``fallback`` is given, else False. A DEGRADE
        answer is never retried: ``fallback(rejection)`` runs instead of ``fn``
        and its result is returned, or, without a fallback, the
        :class:`Rejected` is raised at once. Every other rejection behaves as
        without a fallback, and a sidecar that gives no answer still fails
        open (``fn`` runs without a permit) or raises, as the client says.

        Raises:
            Rejected: with RETRY_BUDGET_EXHAUSTED as soon as the budget says
                stop (chained from ``fn``'s last error), or the last rejection
                when the attempts ran out.
            the last exception of ``fn`` when it is not retryable or attempts ran out.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if fallback is not None and not callable(fallback):
            raise TypeError("fallback must be callable")
        degradable = c.fallback_degradable(degradable, fallback)
        last_error: Optional[BaseException] = None
        for attempt in range(max_attempts):
            try:
                permit = self.acquire(
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
                    return fallback(rej)
                if rej.reason == RejectReason.RETRY_BUDGET_EXHAUSTED or attempt + 1 >= max_attempts:
                    raise rej from last_error
                last_error = rej
                time.sleep(c.retry_delay(backoff, attempt + 1, rej))
                continue
            try:
                with permit:
                    return fn()
            except Exception as e:
                if attempt + 1 >= max_attempts or not c.should_retry(e, retry_on):
                    raise
                last_error = e
            time.sleep(c.retry_delay(backoff, attempt + 1, None))
        raise AssertionError("unreachable")  # pragma: no cover

    def _forget(self, permit: Permit) -> None:
        with self._held_lock:
            self._held.discard(permit)

    def close(self) -> None:
        """Release every permit still held (outcome UNSPECIFIED), stop renewing, close the channel.

        The permits held on the Session stream are freed together by closing
        it (the sidecar's release outcome ``session_closed``); they then count
        as released, and their ``release()`` returns False.
        """
        if self._closed:
            return
        self._closed = True
        with self._held_lock:
            held = list(self._held)
        for permit in held:
            if permit._stream is not None and permit._stream.alive:
                permit._close_with_session()
            else:
                try:
                    permit.release(Outcome.UNSPECIFIED)
                except sess.PermitLostError:
                    pass
        if self._session is not None:
            self._session.close()
        self._renewer.close()
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> "Governor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Governor target={self.target!r} fail_open={self.fail_open}>"
