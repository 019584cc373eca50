"""Pieces shared by the sync and asyncio clients: enums, errors, conversions."""
from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Type, TypeVar, Union, cast

import grpc
from google.protobuf import duration_pb2

from .v1 import governor_pb2 as pb

logger = logging.getLogger("governor_client")

Metadata = Tuple[Tuple[str, str], ...]

# The numbers below are the table every client of the project follows
# (docs/any-language.md, "What every client does").

#: Added to ``max_wait`` to form the gRPC deadline of an Acquire call: it covers
#: the sidecar's own margin (at most 20 ms) and the answer's trip back, so a
#: queued request is answered QUEUE_TIMEOUT instead of failing with DEADLINE_EXCEEDED.
DEFAULT_TIMEOUT_MARGIN = 1.0
#: The largest ``max_wait`` the sidecar accepts (config and control plane), seconds.
MAX_SIDECAR_WAIT = 3600.0
#: Deadline of an Acquire call without a ``max_wait``: longer than any
#: ``max_wait`` the sidecar accepts, so none is cut short. A frozen sidecar is
#: noticed by the HTTP/2 keepalive (:data:`KEEPALIVE_OPTIONS`) instead.
DEFAULT_ACQUIRE_TIMEOUT = MAX_SIDECAR_WAIT + DEFAULT_TIMEOUT_MARGIN
#: Deadline of Release calls, and the cap of each Renew's (a third of the TTL).
DEFAULT_RPC_TIMEOUT = 2.0
#: HTTP/2 keepalive of the channels this package creates: a ping every 10 s
#: while a call is open, the connection dropped (UNAVAILABLE) when one is not
#: answered within 5 s. C-core times out an unanswered ping after
#: ``grpc.http2.ping_timeout_ms`` (default 1 min), not ``keepalive_timeout_ms``
#: alone, so both are set.
KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
)


class Priority(enum.IntEnum):
    """Queue priority of an Acquire (``governor.v1.Priority``)."""

    UNSPECIFIED = pb.PRIORITY_UNSPECIFIED
    CRITICAL = pb.PRIORITY_CRITICAL
    NORMAL = pb.PRIORITY_NORMAL
    SHEDDABLE = pb.PRIORITY_SHEDDABLE


_E = TypeVar("_E", bound="_WireEnum")


class _WireEnum(enum.IntEnum):
    """A proto enum read from the wire: a value newer than this client reads
    as its UNSPECIFIED member."""

    @classmethod
    def from_wire(cls: Type[_E], value: int) -> _E:
        try:
            return cls(value)
        except ValueError:  # a value newer than this client
            return cls["UNSPECIFIED"]


class RejectReason(_WireEnum):
    """Why the sidecar refused a permit (``governor.v1.RejectReason``)."""

    UNSPECIFIED = pb.REJECT_REASON_UNSPECIFIED
    QUEUE_FULL = pb.REJECT_REASON_QUEUE_FULL
    QUEUE_TIMEOUT = pb.REJECT_REASON_QUEUE_TIMEOUT
    RETRY_BUDGET_EXHAUSTED = pb.REJECT_REASON_RETRY_BUDGET_EXHAUSTED
    SHED = pb.REJECT_REASON_SHED
    SHUTTING_DOWN = pb.REJECT_REASON_SHUTTING_DOWN
    #: The dependency's rate limit had no token for the request within its
    #: wait: ``retry_after`` is the exact time until the next token.
    RATE_LIMITED = pb.REJECT_REASON_RATE_LIMITED
    #: The request was ``degradable`` and would have had to wait (or the
    #: dependency was at its ``degrade_at`` pressure): serve the cheaper answer.
    DEGRADE = pb.REJECT_REASON_DEGRADE


class Pressure(_WireEnum):
    """How loaded the dependency was right after the decision (``governor.v1.Pressure``).

    On every answer, grant or rejection. UNSPECIFIED: a sidecar that predates
    the field (or a permit handed out fail-open, without an answer).
    """

    UNSPECIFIED = pb.PRESSURE_UNSPECIFIED
    #: Below ``elevated_at`` (default 0.7) of the enforced limit, nobody waiting.
    NONE = pb.PRESSURE_NONE
    #: At or above ``elevated_at`` of the enforced limit, nobody waiting.
    ELEVATED = pb.PRESSURE_ELEVATED
    #: Every permit is in use, or someone waits.
    SATURATED = pb.PRESSURE_SATURATED
    #: It turned a request away (queue full, queue timeout, shed) within the last second.
    OVERLOADED = pb.PRESSURE_OVERLOADED


class Outcome(enum.IntEnum):
    """Result of the downstream call, reported on Release (``governor.v1.Outcome``)."""

    UNSPECIFIED = pb.OUTCOME_UNSPECIFIED
    SUCCESS = pb.OUTCOME_SUCCESS
    FAILURE = pb.OUTCOME_FAILURE
    TIMEOUT = pb.OUTCOME_TIMEOUT
    CANCELLED = pb.OUTCOME_CANCELLED


PriorityLike = Union[Priority, int, str]
OutcomeLike = Union[Outcome, int, str]


class GovernorError(Exception):
    """Base class of every error raised by this package."""


class Rejected(GovernorError):
    """The sidecar answered, and refused the permit.

    Attributes:
        dependency: the dependency asked for.
        reason: why (:class:`RejectReason`).
        retry_after: the sidecar's estimate, in seconds, of when a retry could
            succeed (for RATE_LIMITED, the exact time until the next token).
        queue_wait: seconds the request spent queued before the rejection.
        limit, in_flight, queued: the dependency's state right after the decision.
        pressure: the dependency's :class:`Pressure` right after the decision
            (UNSPECIFIED from a sidecar that predates it).
    """

    def __init__(
        self,
        dependency: str,
        reason: RejectReason,
        retry_after: float,
        queue_wait: float,
        limit: int,
        in_flight: int,
        queued: int,
        pressure: "Pressure" = Pressure.UNSPECIFIED,
    ) -> None:
        self.dependency = dependency
        self.reason = reason
        self.retry_after = retry_after
        self.queue_wait = queue_wait
        self.limit = limit
        self.in_flight = in_flight
        self.queued = queued
        self.pressure = pressure
        super().__init__(
            f"permit for {dependency!r} rejected: {reason.name} "
            f"(retry_after={retry_after:.3f}s, limit={limit}, in_flight={in_flight}, queued={queued}, "
            f"pressure={pressure.name})"
        )


class GovernorUnavailable(GovernorError):
    """The sidecar gave no answer: UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED,
    UNKNOWN, INTERNAL or DATA_LOSS (the only codes ``fail_open`` covers).

    Attributes:
        code: the gRPC status code, when there is one.
        details: the gRPC status details.
    """

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None, details: str = "") -> None:
        self.code = code
        self.details = details
        super().__init__(message)


class InvalidRequest(GovernorError):
    """The sidecar answered with an error: a bad argument (INVALID_ARGUMENT), an
    unknown dependency (NOT_FOUND), the dependency cap (RESOURCE_EXHAUSTED), or
    any other code that is not an outage (UNIMPLEMENTED: not a governor, ...).

    This is a bug or misconfiguration, so it is raised even when the client is
    ``fail_open``.

    Attributes:
        code: the gRPC status code (e.g. INVALID_ARGUMENT, NOT_FOUND).
        details: the sidecar's message, naming the offending field.
    """

    def __init__(self, message: str, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(message)


#: Status codes that mean "the sidecar gave no answer" (down, frozen, a broken
#: connection, a crash mid-call). Every other code is an answer.
NO_ANSWER_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DATA_LOSS,
    }
)


def classify_rpc_error(err: grpc.RpcError, what: str) -> GovernorError:
    """Turn a gRPC error into :class:`GovernorUnavailable` (no answer) or :class:`InvalidRequest`."""
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else None) or ""
    name = code.name if code is not None else "UNKNOWN"
    if code is not None and code not in NO_ANSWER_CODES:
        return InvalidRequest(f"{what} refused by the governor sidecar: {name}: {details}", code, details)
    return GovernorUnavailable(f"{what} failed, governor sidecar unavailable: {name}: {details}", code, details)


def to_duration(seconds: float) -> duration_pb2.Duration:
    """Seconds (float) to a protobuf Duration."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def from_duration(d: duration_pb2.Duration) -> float:
    """A protobuf Duration to seconds (float)."""
    return d.seconds + d.nanos / 1e9


def coerce_priority(priority: PriorityLike) -> Priority:
    if isinstance(priority, str):
        try:
            return Priority[priority.upper()]
        except KeyError:
            raise ValueError(f"unknown priority {priority!r}; expected one of {[p.name.lower() for p in Priority]}") from None
    return Priority(int(priority))


def coerce_outcome(outcome: OutcomeLike) -> Outcome:
    if isinstance(outcome, str):
        try:
            return Outcome[outcome.upper()]
        except KeyError:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {[o.name.lower() for o in Outcome]}") from None
    return Outcome(int(outcome))


def build_acquire_request(
    dependency: str,
    priority: PriorityLike,
    tenant: str,
    attempt: int,
    max_wait: Optional[float],
    degradable: bool = False,
    route: str = "",
) -> pb.AcquireRequest:
    if not isinstance(dependency, str) or not dependency:
        raise ValueError("dependency must be a non-empty string")
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    req = pb.AcquireRequest(
        dependency=dependency,
        attempt=int(attempt),
        priority=cast(Any, int(coerce_priority(priority))),
        tenant=tenant or "",
        route=route or "",
        degradable=bool(degradable),
    )
    if max_wait is not None:
        if max_wait < 0:
            raise ValueError("max_wait must be >= 0 (0 means: do not queue)")
        # CopyFrom marks the field present even for a zero duration (try-acquire).
        req.max_wait.CopyFrom(to_duration(max_wait))
    return req


def acquire_timeout(
    timeout: Optional[float], max_wait: Optional[float], margin: float, fallback: float
) -> float:
    """The gRPC deadline (seconds) of one Acquire call."""
    if timeout is not None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        return timeout
    if max_wait is not None:
        return max_wait + margin
    return fallback


def rejection_from_response(dependency: str, resp: pb.AcquireResponse) -> Rejected:
    return Rejected(
        dependency=dependency,
        reason=RejectReason.from_wire(resp.reason),
        retry_after=from_duration(resp.retry_after),
        queue_wait=from_duration(resp.queue_wait),
        limit=resp.limit,
        in_flight=resp.in_flight,
        queued=resp.queued,
        pressure=Pressure.from_wire(resp.pressure),
    )


def is_degrade(exc: BaseException) -> bool:
    """Whether ``exc`` is a :class:`Rejected` with reason DEGRADE."""
    return isinstance(exc, Rejected) and exc.reason == RejectReason.DEGRADE


def fallback_degradable(degradable: Optional[bool], fallback: Optional[Callable[..., Any]]) -> bool:
    """A fallback implies ``degradable=True`` unless the caller chose explicitly."""
    if degradable is not None:
        return bool(degradable)
    return fallback is not None


def outcome_for_exception(exc: Optional[BaseException]) -> Outcome:
    """The outcome reported for a block that ended with ``exc`` (None: no exception)."""
    if exc is None:
        return Outcome.SUCCESS
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        return Outcome.CANCELLED
    if isinstance(exc, TimeoutError):  # also asyncio.TimeoutError and socket.timeout on 3.11+
        return Outcome.TIMEOUT
    if isinstance(exc, asyncio.TimeoutError):  # a distinct class before Python 3.11
        return Outcome.TIMEOUT
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        try:
            code = exc.code()
        except Exception:  # pragma: no cover - defensive: odd RpcError subclasses
            code = None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Outcome.TIMEOUT
        if code == grpc.StatusCode.CANCELLED:
            return Outcome.CANCELLED
    return Outcome.FAILURE


# --- trace propagation ---------------------------------------------------------

try:  # optional dependency: the [otel] extra
    from opentelemetry import context as _otel_context
    from opentelemetry import propagate as _otel_propagate
except ImportError:  # pragma: no cover - exercised only without the extra
    _otel_context = None  # type: ignore[assignment]
    _otel_propagate = None  # type: ignore[assignment]


def otel_available() -> bool:
    """Whether ``opentelemetry-api`` is importable (trace context is then propagated)."""
    return _otel_propagate is not None


def capture_context() -> Any:
    """The current OpenTelemetry context (None without opentelemetry)."""
    if _otel_context is None:
        return None
    return _otel_context.get_current()


def trace_metadata(ctx: Any = None) -> Metadata:
    """gRPC metadata carrying ``ctx`` (default: the current context) via the global propagator.

    Gives ``traceparent``/``tracestate`` (and whatever else the configured
    propagator writes, e.g. ``baggage``); empty when opentelemetry is missing or
    there is no valid span in the context.
    """
    if _otel_propagate is None:
        return ()
    carrier: dict = {}
    try:
        _otel_propagate.inject(carrier, context=ctx)
    except Exception:  # a broken propagator must never break the permit
        logger.debug("trace context injection failed", exc_info=True)
        return ()
    return tuple((str(k).lower(), v) for k, v in carrier.items() if isinstance(v, str) and v)


# --- retries -------------------------------------------------------------------

Backoff = Callable[[int], float]


def lease_handle(lease_id: str) -> str:
    """A short, non-secret name of a lease for reprs and logs.

    A lease id is a bearer credential (whoever has it can release or renew the
    lease), so it is never printed; the first 8 hex digits of its SHA-256 tell
    leases apart without revealing them. Empty for a degraded permit.
    """
    if not lease_id:
        return ""
    return hashlib.sha256(lease_id.encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class ExponentialBackoff:
    """``base * multiplier**(retry-1)`` seconds capped at ``max_delay``, with full jitter.

    Called with the retry number (1 for the first retry) and returns seconds.
    """

    base: float = 0.05
    multiplier: float = 2.0
    max_delay: float = 2.0
    jitter: bool = True

    def __call__(self, retry: int) -> float:
        delay = min(self.max_delay, self.base * (self.multiplier ** max(0, retry - 1)))
        return random.uniform(0, delay) if self.jitter else delay


DEFAULT_BACKOFF: Backoff = ExponentialBackoff()

RetryOn = Union[Tuple[type, ...], Callable[[BaseException], bool]]


def should_retry(exc: BaseException, retry_on: RetryOn) -> bool:
    if isinstance(retry_on, tuple):
        return isinstance(exc, retry_on)
    return bool(retry_on(exc))


def retry_delay(backoff: Backoff, retry: int, rejection: Optional[Rejected]) -> float:
    delay = max(0.0, float(backoff(retry)))
    if rejection is not None:
        delay = max(delay, rejection.retry_after)
    return delay


# --- degraded-mode accounting ----------------------------------------------------


class DegradedCounter:
    """Counts fail-open permits and logs a (rate-limited) warning for them."""

    #: At most one warning per this many seconds; the rest go to DEBUG.
    WARN_INTERVAL = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self._last_warn = float("-inf")
        self._suppressed = 0

    def record(self, dependency: str, error: GovernorError) -> None:
        with self._lock:
            self.count += 1
            now = time.monotonic()
            warn = now - self._last_warn >= self.WARN_INTERVAL
            if warn:
                self._last_warn = now
                suppressed, self._suppressed = self._suppressed, 0
            else:
                self._suppressed += 1
        if warn:
            extra = f" ({suppressed} similar warnings suppressed)" if suppressed else ""
            logger.warning(
                "governor sidecar unavailable; proceeding WITHOUT a permit for %r (fail_open): %s%s",
                dependency,
                error,
                extra,
            )
        else:
            logger.debug("governor sidecar unavailable; degraded permit for %r: %s", dependency, error)


def renew_delay(lease_ttl: float) -> float:
    """When to renew a lease of ``lease_ttl`` seconds: at about a third of it."""
    return max(0.01, lease_ttl / 3.0)


def renew_timeout(lease_ttl: float, rpc_timeout: float) -> float:
    """The deadline of one Renew: min(TTL / 3, ``rpc_timeout``), so it never outlives the next."""
    return max(0.01, min(rpc_timeout, lease_ttl / 3.0))


def channel_options(target: str, options: Optional[Sequence[Tuple[str, Any]]]) -> list:
    """Channel options for ``target``: HTTP/2 keepalive, and a fix-up for Unix sockets.

    For ``unix:`` targets gRPC C-core sends the percent-encoded socket path as
    the HTTP/2 ``:authority``, which the sidecar's HTTP/2 server (hyper) refuses
    with a PROTOCOL_ERROR. Unless the caller chose one, use "localhost" instead.
    """
    opts = list(options or ())
    for key, value in KEEPALIVE_OPTIONS:
        if not any(k == key for k, _ in opts):
            opts.append((key, value))
    if target.startswith("unix:") and not any(k == "grpc.default_authority" for k, _ in opts):
        opts.append(("grpc.default_authority", "localhost"))
    return opts


def merge_metadata(*parts: Optional[Sequence[Tuple[str, str]]]) -> Metadata:
    out: List[Tuple[str, str]] = []
    for part in parts:
        if part:
            out.extend(part)
    return tuple(out)

