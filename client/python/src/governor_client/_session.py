"""The Session stream (``governor.v1.Governor/Session``) for both clients.

One stream per client, opened on the first acquire. Acquire, Release and Renew
go over it as messages matched by ``id``; every acquire waits on its own, so a
queued one never holds up a later one. Leases granted on a stream belong to it:
when the stream ends, the sidecar frees them at once, so a crashed process
gives its permits back without waiting for the lease TTL.

Policies (the same in the Rust, Go and Node clients):

* **Fallback.** A sidecar that answers the stream with UNIMPLEMENTED (an older
  sidecar, a proxy that does not pass streams) is remembered; the client uses
  the unary RPCs and tries the stream again after :data:`UNARY_RETRY` seconds.
  Acquires that were waiting on that stream are sent again as unary calls
  (they were never answered).
* **A stream the sidecar ends cleanly** (status OK: it is draining) can only
  have left acquires unread (it ends only sessions that hold and wait for
  nothing); they are sent again as unary calls, which answer SHUTTING_DOWN.
* **A broken stream.** Acquires waiting on it fail with
  :class:`~governor_client.GovernorUnavailable` (the sidecar withdrew them;
  ``fail_open`` applies). Permits granted on it are *lost*: the sidecar has
  already freed them, and their release raises :class:`PermitLostError`. The
  next acquire opens a new stream, but not before a jittered, capped backoff
  (:data:`RECONNECT_BACKOFF`) after consecutive breaks; acquires made during
  the backoff use the unary RPCs.
* **A caller that stops waiting** (timeout, cancellation): its acquire stays
  queued in the sidecar (the stream has no cancel message); if it is granted
  later, the client releases it at once (outcome CANCELLED, no answer wanted).
"""
from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from typing import Any, Callable, Dict, Iterator, Optional, Union, cast

import grpc
import grpc.aio

from . import _common as c
from ._common import ExponentialBackoff, GovernorError, GovernorUnavailable, InvalidRequest, Outcome, logger
from .v1 import governor_pb2 as pb
from .v1 import governor_pb2_grpc as pb_grpc

#: Seconds after an UNIMPLEMENTED answer before the stream is tried again.
UNARY_RETRY = 60.0
#: Delay before reopening a stream after the n-th consecutive break (full jitter).
RECONNECT_BACKOFF = ExponentialBackoff(base=0.05, multiplier=2.0, max_delay=5.0, jitter=True)


class PermitLostError(GovernorError):
    """The permit's session ended before the permit was released.

    The sidecar freed the lease when the stream broke (its release outcome is
    ``session_closed``), so the downstream call ran (or is running) without a
    slot. Raised by ``release()`` (and by the ``with`` / ``async with`` helpers
    when their block did not raise) instead of a second, silent release.

    Attributes:
        dependency: the permit's dependency.
        reason: why the session ended (the stream's status).
    """

    def __init__(self, dependency: str, reason: str) -> None:
        self.dependency = dependency
        self.reason = reason
        super().__init__(f"permit for {dependency!r} was lost: its session to the governor sidecar ended ({reason})")


class _Broken(Exception):
    """Internal: the stream ended; carries why."""

    def __init__(self, reason: str, code: Optional[grpc.StatusCode]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class _RetryUnary(Exception):
    """Internal: the acquire was never read by the sidecar; send it unary."""


class _Unimplemented(_RetryUnary):
    """Internal: the sidecar has no Session RPC; use the unary ones."""


class _EndedOk(_RetryUnary):
    """Internal: the sidecar ended the stream cleanly (it drains) before reading the acquire."""


class _NotAccepted(_RetryUnary):
    """Internal: the stream failed INTERNAL before it answered anything.

    grpc.aio now and then reports a stream refused with a trailers-only
    UNIMPLEMENTED as INTERNAL ("Internal error from Core"). Sending its
    acquires again unary is safe whatever happened: anything the sidecar
    granted on the stream was freed when it ended.
    """


def _ended_reason(why: BaseException) -> _Broken:
    if isinstance(why, _Unimplemented):
        return _Broken("the sidecar has no Session RPC", grpc.StatusCode.UNIMPLEMENTED)
    if isinstance(why, _NotAccepted):
        return _Broken("the stream failed INTERNAL before any answer", grpc.StatusCode.INTERNAL)
    return _Broken("the sidecar ended the stream", grpc.StatusCode.OK)


def _status_code(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def session_error(dependency: str, op: str, err: pb.SessionError) -> GovernorError:
    """A per-message SessionError as the error the unary call would have raised.

    The sidecar names the field from the message (``acquire.dependency: ...``);
    the ``details`` keep the unary call's form (``dependency: ...``).
    """
    code = _status_code(err.code)
    prefix = op.lower() + "."
    message = err.message[len(prefix):] if err.message.startswith(prefix) else err.message
    err = pb.SessionError(code=err.code, message=message)
    if code in c.NO_ANSWER_CODES or code == grpc.StatusCode.ABORTED:
        return GovernorUnavailable(
            f"{op}({dependency!r}) failed on the governor session: {code.name}: {err.message}", code, err.message
        )
    return InvalidRequest(f"{op}({dependency!r}) refused by the governor sidecar: {code.name}: {err.message}", code, err.message)


def broken_error(dependency: str, broken: _Broken) -> GovernorUnavailable:
    return GovernorUnavailable(
        f"Acquire({dependency!r}) failed: the session to the governor sidecar ended ({broken.reason}); "
        "the sidecar withdrew the acquire",
        broken.code,
        broken.reason,
    )


def _describe(err: BaseException) -> "tuple[str, Optional[grpc.StatusCode]]":
    if isinstance(err, grpc.RpcError) and hasattr(err, "code"):
        code = err.code()
        details = err.details() if hasattr(err, "details") else ""
        return f"{code.name if code else 'UNKNOWN'}: {details or ''}".rstrip(": "), code
    return repr(err), None


class _Reconnect:
    """When the next stream may be opened, and whether to use unary for now."""

    def __init__(self) -> None:
        self.breaks = 0
        self.not_before = 0.0
        self.unary_until = 0.0

    def use_unary(self, now: float) -> bool:
        return now < self.unary_until or now < self.not_before

    def broke(self, now: float) -> None:
        self.breaks += 1
        self.not_before = now + RECONNECT_BACKOFF(self.breaks)

    def unimplemented(self, now: float) -> None:
        self.unary_until = now + UNARY_RETRY


Result = Union[pb.SessionResponse, BaseException]


# --- threads -----------------------------------------------------------------


class SyncStream:
    """One open Session stream of a :class:`governor_client.Governor`."""

    def __init__(self, owner: "SyncSession", stub: pb_grpc.GovernorStub, metadata: c.Metadata) -> None:
        self._owner = owner
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: Dict[int, Callable[[Result], None]] = {}
        self._requests: "queue.Queue[Optional[pb.SessionRequest]]" = queue.Queue()
        self.broken: Optional[_Broken] = None
        #: What ended the stream: a _Broken, or _Unimplemented.
        self._why: Optional[BaseException] = None
        self._answered = False
        self._call = stub.Session(self._request_iter(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, name="governor-session", daemon=True)
        self._reader.start()

    def _request_iter(self) -> Iterator[pb.SessionRequest]:
        while True:
            req = self._requests.get()
            if req is None:
                return
            yield req

    @property
    def alive(self) -> bool:
        return self.broken is None

    def send(self, build: Callable[[int], pb.SessionRequest], on_answer: Optional[Callable[[Result], None]]) -> None:
        """Sends one message; ``on_answer`` gets the response or the stream's end (a :class:`_Broken`)."""
        with self._lock:
            broken = self._why
            if broken is None:
                if on_answer is None:
                    self._requests.put(build(0))
                    return
                id_ = next(self._ids)
                self._pending[id_] = on_answer
                self._requests.put(build(id_))
                return
        if on_answer is not None:
            on_answer(broken)

    def forget(self, id_: int) -> None:
        with self._lock:
            self._pending.pop(id_, None)

    def _read(self) -> None:
        try:
            for resp in self._call:
                self._answered = True
                self._owner._reconnect.breaks = 0
                with self._lock:
                    callback = self._pending.pop(resp.id, None)
                if callback is not None:
                    callback(resp)
            self._end(_EndedOk())
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                self._end(_Unimplemented())
            elif code == grpc.StatusCode.INTERNAL and not self._answered:
                self._end(_NotAccepted())
            else:
                reason, code = _describe(e)
                self._end(_Broken(reason, code))
        except Exception as e:  # pragma: no cover - defensive
            self._end(_Broken(repr(e), None))

    def _end(self, why: BaseException) -> None:
        broken = why if isinstance(why, _Broken) else _ended_reason(why)
        # The session learns first (unary for a while, or a back-off), then the
        # stream reads as dead: a caller that finds it dead finds the session's
        # choice made, and does not open a second stream in between.
        self._owner._ended(self, why)
        with self._lock:
            if self.broken is None:
                self.broken = broken
                self._why = why
            pending, self._pending = self._pending, {}
        for callback in pending.values():
            callback(why)

    def close(self) -> None:
        """Half-closes the stream: the sidecar frees what it holds; waits a little for the end."""
        self._requests.put(None)
        self._reader.join(timeout=2.0)
        if self._reader.is_alive():
            self._call.cancel()


class SyncSession:
    """The session of a sync client: opens, remembers and reopens its stream."""

    def __init__(self, stub: pb_grpc.GovernorStub, metadata: c.Metadata) -> None:
        self._stub = stub
        self._metadata = metadata
        self._lock = threading.Lock()
        self._stream: Optional[SyncStream] = None
        self._reconnect = _Reconnect()
        self._closed = False

    def stream(self) -> Optional[SyncStream]:
        """The open stream (opened now if need be), or None: use the unary RPCs."""
        with self._lock:
            if self._closed:
                return None
            if self._stream is not None and self._stream.alive:
                return self._stream
            if self._reconnect.use_unary(time.monotonic()):
                return None
            self._stream = SyncStream(self, self._stub, self._metadata)
            return self._stream

    def _ended(self, stream: SyncStream, why: BaseException) -> None:
        with self._lock:
            now = time.monotonic()
            if isinstance(why, _Unimplemented):
                logger.info("the governor sidecar has no Session RPC; using unary calls for %.0fs", UNARY_RETRY)
                self._reconnect.unimplemented(now)
            elif not self._closed:
                logger.warning("the session to the governor sidecar ended: %s", why)
                self._reconnect.broke(now)
            if self._stream is stream:
                self._stream = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()


class _SyncWaiter:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: Optional[Result] = None
        self.abandoned = False
        self.lock = threading.Lock()


def sync_acquire(
    stream: SyncStream, req: pb.AcquireRequest, timeout: float
) -> pb.AcquireResponse:
    """One acquire over ``stream``. Raises :class:`_Unimplemented` (retry unary),
    :class:`_Broken`, :class:`GovernorUnavailable` (no answer in ``timeout``) or
    :class:`GovernorError` (a SessionError)."""
    waiter = _SyncWaiter()

    def on_answer(result: Result) -> None:
        with waiter.lock:
            waiter.result = result
            late = waiter.abandoned
        waiter.event.set()
        if late:
            _release_late(stream, result)

    stream.send(lambda id_: pb.SessionRequest(id=id_, acquire=req), on_answer)
    answered = False
    try:
        answered = waiter.event.wait(timeout)
    finally:
        if not answered:
            with waiter.lock:
                waiter.abandoned = True
                result = waiter.result
            if result is not None:  # answered while we gave up
                _release_late(stream, result)
    if not answered:
        raise GovernorUnavailable(
            f"Acquire({req.dependency!r}) got no answer on the governor session within {timeout:.3f}s",
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "no answer within the timeout",
        )
    return _acquire_result(req.dependency, waiter.result)


def _acquire_result(dependency: str, result: Optional[Result]) -> pb.AcquireResponse:
    # A fresh exception each time: the stream's own is shared by its waiters,
    # and a traceback on it would keep their frames (and permits) alive.
    if isinstance(result, _Broken):
        raise _Broken(result.reason, result.code)
    if isinstance(result, _RetryUnary):
        raise type(result)()
    if isinstance(result, BaseException):
        raise result
    assert result is not None
    which = result.WhichOneof("result")
    if which == "acquire":
        return result.acquire
    if which == "error":
        raise session_error(dependency, "Acquire", result.error)
    raise GovernorUnavailable(f"Acquire({dependency!r}): the sidecar answered with {which!r} on the session")


def _release_late(stream: Any, result: Result) -> None:
    """A grant nobody waits for any more goes straight back."""
    if isinstance(result, pb.SessionResponse) and result.WhichOneof("result") == "acquire" and result.acquire.granted:
        lease_id = result.acquire.lease_id
        logger.debug("releasing a permit granted after its caller stopped waiting")
        stream.send(
            lambda id_: pb.SessionRequest(
                id=id_, release=pb.ReleaseRequest(lease_id=lease_id, outcome=cast(Any, int(Outcome.CANCELLED)))
            ),
            None,
        )


def release_request(lease_id: str, outcome: Outcome, latency: Optional[float]) -> pb.ReleaseRequest:
    req = pb.ReleaseRequest(lease_id=lease_id, outcome=cast(Any, int(outcome)))
    if latency is not None:
        req.latency.CopyFrom(c.to_duration(max(0.0, latency)))
    return req


def sync_call(stream: SyncStream, build: Callable[[int], pb.SessionRequest], timeout: float) -> Result:
    """A release or renew with an answer; the response, or the stream's end / a timeout as an exception."""
    waiter = _SyncWaiter()

    def on_answer(result: Result) -> None:
        waiter.result = result
        waiter.event.set()

    stream.send(build, on_answer)
    if not waiter.event.wait(timeout):
        return GovernorUnavailable("no answer on the governor session", grpc.StatusCode.DEADLINE_EXCEEDED)
    assert waiter.result is not None
    return waiter.result


# --- asyncio -----------------------------------------------------------------


class AsyncStream:
    """One open Session stream of an :class:`governor_client.AsyncGovernor`."""

    def __init__(self, owner: "AsyncSession", stub: pb_grpc.GovernorStub, metadata: c.Metadata) -> None:
        self._owner = owner
        self._ids = itertools.count(1)
        self._pending: Dict[int, Callable[[Result], None]] = {}
        self._requests: "asyncio.Queue[Optional[pb.SessionRequest]]" = asyncio.Queue()
        self._answered = False
        self.cancelled = False
        self.broken: Optional[_Broken] = None
        #: What ended the stream: a _Broken, or _Unimplemented.
        self._why: Optional[BaseException] = None
        # Written by one task (not a request iterator): a write that fails
        # because the call ended must not hide the call's own status.
        self._call = stub.Session(metadata=metadata)
        # The read is pending before the first write: grpc.aio reports a
        # stream refused with a trailers-only status (UNIMPLEMENTED) as
        # INTERNAL now and then when the write comes first.
        self._reading = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())
        self._writer = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        try:
            await self._reading.wait()
            while True:
                req = await self._requests.get()
                if req is None:
                    await self._call.done_writing()
                    return
                await self._call.write(req)
        except (grpc.RpcError, asyncio.InvalidStateError):
            return  # the call ended: the reader reports how
        except Exception:  # pragma: no cover - defensive
            logger.debug("writing to the governor session failed", exc_info=True)

    @property
    def alive(self) -> bool:
        return self.broken is None

    def send(self, build: Callable[[int], pb.SessionRequest], on_answer: Optional[Callable[[Result], None]]) -> None:
        broken = self._why
        if broken is None:
            if on_answer is None:
                self._requests.put_nowait(build(0))
                return
            id_ = next(self._ids)
            self._pending[id_] = on_answer
            self._requests.put_nowait(build(id_))
            return
        if on_answer is not None:
            on_answer(broken)

    async def _read(self) -> None:
        try:
            while True:
                read = asyncio.ensure_future(self._call.read())
                self._reading.set()
                resp = await read
                if resp is grpc.aio.EOF:
                    break
                self._answered = True
                self._owner._reconnect.breaks = 0
                callback = self._pending.pop(resp.id, None)
                if callback is not None:
                    callback(resp)
            self._end(_EndedOk())
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                self._end(_Unimplemented())
            elif code == grpc.StatusCode.INTERNAL and not self._answered:
                self._end(_NotAccepted())
            else:
                reason, code = _describe(e)
                self._end(_Broken(reason, code))
        except asyncio.CancelledError:
            self.cancelled = True
            self._end(_Broken("the client closed the session", grpc.StatusCode.CANCELLED))
        except Exception as e:  # pragma: no cover - defensive
            self._end(_Broken(repr(e), None))

    def _end(self, why: BaseException) -> None:
        broken = why if isinstance(why, _Broken) else _ended_reason(why)
        if self.broken is None:
            self.broken = broken
            self._why = why
        pending, self._pending = self._pending, {}
        self._owner._ended(self, why)
        for callback in pending.values():
            callback(why)

    async def close(self) -> None:
        self._requests.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout=2.0)
        except asyncio.TimeoutError:
            self._call.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)


class AsyncSession:
    """The session of an asyncio client."""

    def __init__(self, get_stub: Callable[[], pb_grpc.GovernorStub], metadata: c.Metadata) -> None:
        self._get_stub = get_stub
        self._metadata = metadata
        self._stream: Optional[AsyncStream] = None
        self._reconnect = _Reconnect()
        self._closed = False

    def stream(self) -> Optional[AsyncStream]:
        if self._closed:
            return None
        if self._stream is not None and self._stream.alive:
            return self._stream
        if self._reconnect.use_unary(time.monotonic()):
            return None
        self._stream = AsyncStream(self, self._get_stub(), self._metadata)
        return self._stream

    def _ended(self, stream: AsyncStream, why: BaseException) -> None:
        now = time.monotonic()
        if isinstance(why, _Unimplemented):
            logger.info("the governor sidecar has no Session RPC; using unary calls for %.0fs", UNARY_RETRY)
            self._reconnect.unimplemented(now)
        elif not self._closed:
            if stream.cancelled:  # its task was cancelled: the event loop is ending
                logger.debug("the session to the governor sidecar ended: %s", why)
            else:
                logger.warning("the session to the governor sidecar ended: %s", why)
            self._reconnect.broke(now)
        if self._stream is stream:
            self._stream = None

    async def close(self) -> None:
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()


async def async_acquire(stream: AsyncStream, req: pb.AcquireRequest, timeout: float) -> pb.AcquireResponse:
    """The asyncio twin of :func:`sync_acquire`; a cancelled caller's late grant is released."""
    loop = asyncio.get_running_loop()
    fut: "asyncio.Future[Result]" = loop.create_future()

    def on_answer(result: Result) -> None:
        if fut.done():  # the caller stopped waiting
            _release_late(stream, result)
        else:
            fut.set_result(result)

    stream.send(lambda id_: pb.SessionRequest(id=id_, acquire=req), on_answer)
    try:
        result = await asyncio.wait_for(asyncio.shield(fut), timeout)
    except asyncio.TimeoutError:
        if fut.done():
            _release_late(stream, fut.result())
        else:
            fut.cancel()
        raise GovernorUnavailable(
            f"Acquire({req.dependency!r}) got no answer on the governor session within {timeout:.3f}s",
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "no answer within the timeout",
        ) from None
    except asyncio.CancelledError:
        if fut.done() and not fut.cancelled():
            _release_late(stream, fut.result())
        else:
            fut.cancel()
        raise
    return _acquire_result(req.dependency, result)


async def async_call(stream: AsyncStream, build: Callable[[int], pb.SessionRequest], timeout: float) -> Result:
    loop = asyncio.get_running_loop()
    fut: "asyncio.Future[Result]" = loop.create_future()

    def on_answer(result: Result) -> None:
        if not fut.done():
            fut.set_result(result)

    stream.send(build, on_answer)
    try:
        return await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        return GovernorUnavailable("no answer on the governor session", grpc.StatusCode.DEADLINE_EXCEEDED)
