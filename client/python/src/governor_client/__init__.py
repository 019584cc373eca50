"""Python client for the governor sidecar.

A permit that cannot leak, the outcome and latency reported on release, the
trace context passed on, and an explicit policy for when the sidecar is down::

    import governor_client

    gov = governor_client.Governor("127.0.0.1:50051")
    with gov.permit("payments", tenant="checkout") as permit:
        call_payments()

See README.md for the full tour.
"""
from ._aio import AsyncGovernor, AsyncPermit
from ._common import (
    Backoff,
    ExponentialBackoff,
    GovernorError,
    GovernorUnavailable,
    InvalidRequest,
    Outcome,
    Pressure,
    Priority,
    RejectReason,
    Rejected,
    otel_available,
    outcome_for_exception,
)
from ._session import PermitLostError
from ._sync import Governor, Permit
from .v1 import governor_pb2, governor_pb2_grpc

__version__ = "0.1.0"

__all__ = [
    "AsyncGovernor",
    "AsyncPermit",
    "Backoff",
    "ExponentialBackoff",
    "Governor",
    "GovernorError",
    "GovernorUnavailable",
    "InvalidRequest",
    "Outcome",
    "Permit",
    "PermitLostError",
    "Pressure",
    "Priority",
    "RejectReason",
    "Rejected",
    "governor_pb2",
    "governor_pb2_grpc",
    "otel_available",
    "outcome_for_exception",
]
