import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_CRITICAL: _ClassVar[Priority]
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_SHEDDABLE: _ClassVar[Priority]

class RejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_REASON_UNSPECIFIED: _ClassVar[RejectReason]
    REJECT_REASON_QUEUE_FULL: _ClassVar[RejectReason]
    REJECT_REASON_QUEUE_TIMEOUT: _ClassVar[RejectReason]
    REJECT_REASON_RETRY_BUDGET_EXHAUSTED: _ClassVar[RejectReason]
    REJECT_REASON_SHED: _ClassVar[RejectReason]
    REJECT_REASON_SHUTTING_DOWN: _ClassVar[RejectReason]
    REJECT_REASON_RATE_LIMITED: _ClassVar[RejectReason]
    REJECT_REASON_DEGRADE: _ClassVar[RejectReason]

class Pressure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESSURE_UNSPECIFIED: _ClassVar[Pressure]
    PRESSURE_NONE: _ClassVar[Pressure]
    PRESSURE_ELEVATED: _ClassVar[Pressure]
    PRESSURE_SATURATED: _ClassVar[Pressure]
    PRESSURE_OVERLOADED: _ClassVar[Pressure]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCESS: _ClassVar[Outcome]
    OUTCOME_FAILURE: _ClassVar[Outcome]
    OUTCOME_TIMEOUT: _ClassVar[Outcome]
    OUTCOME_CANCELLED: _ClassVar[Outcome]

class FleetMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLEET_MODE_UNSPECIFIED: _ClassVar[FleetMode]
    FLEET_MODE_STARTING: _ClassVar[FleetMode]
    FLEET_MODE_SHARE: _ClassVar[FleetMode]
    FLEET_MODE_LEARNING: _ClassVar[FleetMode]
    FLEET_MODE_FALLBACK: _ClassVar[FleetMode]

class FairBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAIR_BY_UNSPECIFIED: _ClassVar[FairBy]
    FAIR_BY_NONE: _ClassVar[FairBy]
    FAIR_BY_TENANT: _ClassVar[FairBy]
    FAIR_BY_TENANT_ROUTE: _ClassVar[FairBy]

class DegradeAt(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEGRADE_AT_UNSPECIFIED: _ClassVar[DegradeAt]
    DEGRADE_AT_SATURATED: _ClassVar[DegradeAt]
    DEGRADE_AT_ELEVATED: _ClassVar[DegradeAt]

class LimitAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIMIT_ALGORITHM_UNSPECIFIED: _ClassVar[LimitAlgorithm]
    LIMIT_ALGORITHM_STATIC: _ClassVar[LimitAlgorithm]
    LIMIT_ALGORITHM_GRADIENT: _ClassVar[LimitAlgorithm]
    LIMIT_ALGORITHM_VEGAS: _ClassVar[LimitAlgorithm]
    LIMIT_ALGORITHM_AIMD: _ClassVar[LimitAlgorithm]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_CRITICAL: Priority
PRIORITY_NORMAL: Priority
PRIORITY_SHEDDABLE: Priority
REJECT_REASON_UNSPECIFIED: RejectReason
REJECT_REASON_QUEUE_FULL: RejectReason
REJECT_REASON_QUEUE_TIMEOUT: RejectReason
REJECT_REASON_RETRY_BUDGET_EXHAUSTED: RejectReason
REJECT_REASON_SHED: RejectReason
REJECT_REASON_SHUTTING_DOWN: RejectReason
REJECT_REASON_RATE_LIMITED: RejectReason
REJECT_REASON_DEGRADE: RejectReason
PRESSURE_UNSPECIFIED: Pressure
PRESSURE_NONE: Pressure
PRESSURE_ELEVATED: Pressure
PRESSURE_SATURATED: Pressure
PRESSURE_OVERLOADED: Pressure
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCESS: Outcome
OUTCOME_FAILURE: Outcome
OUTCOME_TIMEOUT: Outcome
OUTCOME_CANCELLED: Outcome
FLEET_MODE_UNSPECIFIED: FleetMode
FLEET_MODE_STARTING: FleetMode
FLEET_MODE_SHARE: FleetMode
FLEET_MODE_LEARNING: FleetMode
FLEET_MODE_FALLBACK: FleetMode
FAIR_BY_UNSPECIFIED: FairBy
FAIR_BY_NONE: FairBy
FAIR_BY_TENANT: FairBy
FAIR_BY_TENANT_ROUTE: FairBy
DEGRADE_AT_UNSPECIFIED: DegradeAt
DEGRADE_AT_SATURATED: DegradeAt
DEGRADE_AT_ELEVATED: DegradeAt
LIMIT_ALGORITHM_UNSPECIFIED: LimitAlgorithm
LIMIT_ALGORITHM_STATIC: LimitAlgorithm
LIMIT_ALGORITHM_GRADIENT: LimitAlgorithm
LIMIT_ALGORITHM_VEGAS: LimitAlgorithm
LIMIT_ALGORITHM_AIMD: LimitAlgorithm

class SessionRequest(_message.Message):
    __slots__ = ("id", "acquire", "release", "renew")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACQUIRE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    id: int
    acquire: AcquireRequest
    release: ReleaseRequest
    renew: RenewRequest
    def __init__(self, id: _Optional[int] = ..., acquire: _Optional[_Union[AcquireRequest, _Mapping]] = ..., release: _Optional[_Union[ReleaseRequest, _Mapping]] = ..., renew: _Optional[_Union[RenewRequest, _Mapping]] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("id", "acquire", "release", "renew", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACQUIRE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    acquire: AcquireResponse
    release: ReleaseResponse
    renew: RenewResponse
    error: SessionError
    def __init__(self, id: _Optional[int] = ..., acquire: _Optional[_Union[AcquireResponse, _Mapping]] = ..., release: _Optional[_Union[ReleaseResponse, _Mapping]] = ..., renew: _Optional[_Union[RenewResponse, _Mapping]] = ..., error: _Optional[_Union[SessionError, _Mapping]] = ...) -> None: ...

class SessionError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class AcquireRequest(_message.Message):
    __slots__ = ("dependency", "attempt", "priority", "tenant", "max_wait", "degradable", "route")
    DEPENDENCY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_FIELD_NUMBER: _ClassVar[int]
    DEGRADABLE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    dependency: str
    attempt: int
    priority: Priority
    tenant: str
    max_wait: _duration_pb2.Duration
    degradable: bool
    route: str
    def __init__(self, dependency: _Optional[str] = ..., attempt: _Optional[int] = ..., priority: _Optional[_Union[Priority, str]] = ..., tenant: _Optional[str] = ..., max_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., degradable: _Optional[bool] = ..., route: _Optional[str] = ...) -> None: ...

class AcquireResponse(_message.Message):
    __slots__ = ("granted", "lease_id", "lease_ttl", "reason", "queue_wait", "retry_after", "limit", "in_flight", "queued", "pressure")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    PRESSURE_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    lease_id: str
    lease_ttl: _duration_pb2.Duration
    reason: RejectReason
    queue_wait: _duration_pb2.Duration
    retry_after: _duration_pb2.Duration
    limit: int
    in_flight: int
    queued: int
    pressure: Pressure
    def __init__(self, granted: _Optional[bool] = ..., lease_id: _Optional[str] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reason: _Optional[_Union[RejectReason, str]] = ..., queue_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., limit: _Optional[int] = ..., in_flight: _Optional[int] = ..., queued: _Optional[int] = ..., pressure: _Optional[_Union[Pressure, str]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("lease_id", "outcome", "latency")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    outcome: Outcome
    latency: _duration_pb2.Duration
    def __init__(self, lease_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("renewed", "lease_ttl")
    RENEWED_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    renewed: bool
    lease_ttl: _duration_pb2.Duration
    def __init__(self, renewed: _Optional[bool] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ListDependenciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDependenciesResponse(_message.Message):
    __slots__ = ("dependencies",)
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    dependencies: _containers.RepeatedCompositeFieldContainer[DependencyStatus]
    def __init__(self, dependencies: _Optional[_Iterable[_Union[DependencyStatus, _Mapping]]] = ...) -> None: ...

class GetDependencyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UpdateDependencyRequest(_message.Message):
    __slots__ = ("name", "limits")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    limits: DependencyLimits
    def __init__(self, name: _Optional[str] = ..., limits: _Optional[_Union[DependencyLimits, _Mapping]] = ...) -> None: ...

class DependencyLimits(_message.Message):
    __slots__ = ("max_concurrency", "max_queue", "max_wait", "lease_ttl", "retry_budget", "adaptive", "elevated_at", "degrade_at", "rate", "tenant_rate", "fairness", "fleet")
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    RETRY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_FIELD_NUMBER: _ClassVar[int]
    ELEVATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEGRADE_AT_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    TENANT_RATE_FIELD_NUMBER: _ClassVar[int]
    FAIRNESS_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    max_concurrency: int
    max_queue: int
    max_wait: _duration_pb2.Duration
    lease_ttl: _duration_pb2.Duration
    retry_budget: RetryBudget
    adaptive: AdaptiveLimit
    elevated_at: float
    degrade_at: DegradeAt
    rate: RateLimit
    tenant_rate: RateLimit
    fairness: Fairness
    fleet: FleetLimits
    def __init__(self, max_concurrency: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_budget: _Optional[_Union[RetryBudget, _Mapping]] = ..., adaptive: _Optional[_Union[AdaptiveLimit, _Mapping]] = ..., elevated_at: _Optional[float] = ..., degrade_at: _Optional[_Union[DegradeAt, str]] = ..., rate: _Optional[_Union[RateLimit, _Mapping]] = ..., tenant_rate: _Optional[_Union[RateLimit, _Mapping]] = ..., fairness: _Optional[_Union[Fairness, _Mapping]] = ..., fleet: _Optional[_Union[FleetLimits, _Mapping]] = ...) -> None: ...

class FleetLimits(_message.Message):
    __slots__ = ("max_concurrency", "fallback_share")
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_SHARE_FIELD_NUMBER: _ClassVar[int]
    max_concurrency: int
    fallback_share: int
    def __init__(self, max_concurrency: _Optional[int] = ..., fallback_share: _Optional[int] = ...) -> None: ...

class FleetStatus(_message.Message):
    __slots__ = ("mode", "max_concurrency", "share", "target", "enforced", "demand", "fallback_share", "instances", "valid_for", "learning_left", "store_calls_total", "store_errors_total", "store_latency", "last_error")
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ENFORCED_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_SHARE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    VALID_FOR_FIELD_NUMBER: _ClassVar[int]
    LEARNING_LEFT_FIELD_NUMBER: _ClassVar[int]
    STORE_CALLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STORE_ERRORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STORE_LATENCY_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    mode: FleetMode
    max_concurrency: int
    share: int
    target: int
    enforced: int
    demand: int
    fallback_share: int
    instances: int
    valid_for: _duration_pb2.Duration
    learning_left: _duration_pb2.Duration
    store_calls_total: int
    store_errors_total: int
    store_latency: _duration_pb2.Duration
    last_error: str
    def __init__(self, mode: _Optional[_Union[FleetMode, str]] = ..., max_concurrency: _Optional[int] = ..., share: _Optional[int] = ..., target: _Optional[int] = ..., enforced: _Optional[int] = ..., demand: _Optional[int] = ..., fallback_share: _Optional[int] = ..., instances: _Optional[int] = ..., valid_for: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., learning_left: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., store_calls_total: _Optional[int] = ..., store_errors_total: _Optional[int] = ..., store_latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., last_error: _Optional[str] = ...) -> None: ...

class Fairness(_message.Message):
    __slots__ = ("by", "weights", "default_weight", "max_tenants")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BY_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_TENANTS_FIELD_NUMBER: _ClassVar[int]
    by: FairBy
    weights: _containers.ScalarMap[str, int]
    default_weight: int
    max_tenants: int
    def __init__(self, by: _Optional[_Union[FairBy, str]] = ..., weights: _Optional[_Mapping[str, int]] = ..., default_weight: _Optional[int] = ..., max_tenants: _Optional[int] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("per_second", "burst")
    PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    per_second: float
    burst: int
    def __init__(self, per_second: _Optional[float] = ..., burst: _Optional[int] = ...) -> None: ...

class AdaptiveLimit(_message.Message):
    __slots__ = ("algorithm", "min_limit", "initial_limit", "shadow", "window", "min_samples", "baseline_windows", "drop_threshold", "backoff", "tolerance", "alpha", "beta")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    MIN_LIMIT_FIELD_NUMBER: _ClassVar[int]
    INITIAL_LIMIT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    DROP_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    algorithm: LimitAlgorithm
    min_limit: int
    initial_limit: int
    shadow: bool
    window: _duration_pb2.Duration
    min_samples: int
    baseline_windows: int
    drop_threshold: float
    backoff: float
    tolerance: float
    alpha: float
    beta: float
    def __init__(self, algorithm: _Optional[_Union[LimitAlgorithm, str]] = ..., min_limit: _Optional[int] = ..., initial_limit: _Optional[int] = ..., shadow: _Optional[bool] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_samples: _Optional[int] = ..., baseline_windows: _Optional[int] = ..., drop_threshold: _Optional[float] = ..., backoff: _Optional[float] = ..., tolerance: _Optional[float] = ..., alpha: _Optional[float] = ..., beta: _Optional[float] = ...) -> None: ...

class RetryBudget(_message.Message):
    __slots__ = ("ratio", "min_per_second", "ttl")
    RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    ratio: float
    min_per_second: int
    ttl: _duration_pb2.Duration
    def __init__(self, ratio: _Optional[float] = ..., min_per_second: _Optional[int] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DependencyStatus(_message.Message):
    __slots__ = ("name", "max_concurrency", "in_flight", "queued", "max_queue", "max_wait", "lease_ttl", "retry_budget_available", "granted_total", "rejected_total", "expired_total", "retry_budget", "limit", "adaptive_limit", "limit_algorithm", "adaptive", "latency_baseline", "latency_recent", "limit_changes_total", "pressure", "elevated_at", "degrade_at", "rate", "tenant_rate", "rated_tenants", "delayed", "fairness", "tenants", "tenants_tracked", "fleet_limits", "fleet")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    RETRY_BUDGET_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REJECTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RETRY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BASELINE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_RECENT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_CHANGES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PRESSURE_FIELD_NUMBER: _ClassVar[int]
    ELEVATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEGRADE_AT_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    TENANT_RATE_FIELD_NUMBER: _ClassVar[int]
    RATED_TENANTS_FIELD_NUMBER: _ClassVar[int]
    DELAYED_FIELD_NUMBER: _ClassVar[int]
    FAIRNESS_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    TENANTS_TRACKED_FIELD_NUMBER: _ClassVar[int]
    FLEET_LIMITS_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_concurrency: int
    in_flight: int
    queued: int
    max_queue: int
    max_wait: _duration_pb2.Duration
    lease_ttl: _duration_pb2.Duration
    retry_budget_available: float
    granted_total: int
    rejected_total: int
    expired_total: int
    retry_budget: RetryBudget
    limit: int
    adaptive_limit: int
    limit_algorithm: LimitAlgorithm
    adaptive: AdaptiveLimit
    latency_baseline: _duration_pb2.Duration
    latency_recent: _duration_pb2.Duration
    limit_changes_total: int
    pressure: Pressure
    elevated_at: float
    degrade_at: DegradeAt
    rate: RateLimit
    tenant_rate: RateLimit
    rated_tenants: int
    delayed: int
    fairness: Fairness
    tenants: _containers.RepeatedCompositeFieldContainer[TenantStatus]
    tenants_tracked: int
    fleet_limits: FleetLimits
    fleet: FleetStatus
    def __init__(self, name: _Optional[str] = ..., max_concurrency: _Optional[int] = ..., in_flight: _Optional[int] = ..., queued: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_budget_available: _Optional[float] = ..., granted_total: _Optional[int] = ..., rejected_total: _Optional[int] = ..., expired_total: _Optional[int] = ..., retry_budget: _Optional[_Union[RetryBudget, _Mapping]] = ..., limit: _Optional[int] = ..., adaptive_limit: _Optional[int] = ..., limit_algorithm: _Optional[_Union[LimitAlgorithm, str]] = ..., adaptive: _Optional[_Union[AdaptiveLimit, _Mapping]] = ..., latency_baseline: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., latency_recent: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., limit_changes_total: _Optional[int] = ..., pressure: _Optional[_Union[Pressure, str]] = ..., elevated_at: _Optional[float] = ..., degrade_at: _Optional[_Union[DegradeAt, str]] = ..., rate: _Optional[_Union[RateLimit, _Mapping]] = ..., tenant_rate: _Optional[_Union[RateLimit, _Mapping]] = ..., rated_tenants: _Optional[int] = ..., delayed: _Optional[int] = ..., fairness: _Optional[_Union[Fairness, _Mapping]] = ..., tenants: _Optional[_Iterable[_Union[TenantStatus, _Mapping]]] = ..., tenants_tracked: _Optional[int] = ..., fleet_limits: _Optional[_Union[FleetLimits, _Mapping]] = ..., fleet: _Optional[_Union[FleetStatus, _Mapping]] = ...) -> None: ...

class TenantStatus(_message.Message):
    __slots__ = ("tenant", "overflow", "named", "weight", "in_flight", "queued", "share", "granted_total", "rejected_total", "routes")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    NAMED_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REJECTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    overflow: bool
    named: bool
    weight: int
    in_flight: int
    queued: int
    share: float
    granted_total: int
    rejected_total: int
    routes: _containers.RepeatedCompositeFieldContainer[RouteStatus]
    def __init__(self, tenant: _Optional[str] = ..., overflow: _Optional[bool] = ..., named: _Optional[bool] = ..., weight: _Optional[int] = ..., in_flight: _Optional[int] = ..., queued: _Optional[int] = ..., share: _Optional[float] = ..., granted_total: _Optional[int] = ..., rejected_total: _Optional[int] = ..., routes: _Optional[_Iterable[_Union[RouteStatus, _Mapping]]] = ...) -> None: ...

class RouteStatus(_message.Message):
    __slots__ = ("route", "in_flight", "queued", "share", "granted_total", "rejected_total")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REJECTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    route: str
    in_flight: int
    queued: int
    share: float
    granted_total: int
    rejected_total: int
    def __init__(self, route: _Optional[str] = ..., in_flight: _Optional[int] = ..., queued: _Optional[int] = ..., share: _Optional[float] = ..., granted_total: _Optional[int] = ..., rejected_total: _Optional[int] = ...) -> None: ...
