//! What the ledger answers: a grant with its lease, or a rejection with a
//! reason and a hint of when to come back.

use std::time::Duration;

use super::lease::LeaseId;
use super::waiters::Priority;

/// One request for a permit, already validated by the caller of the ledger.
#[derive(Clone, Copy, Debug)]
pub struct AcquireRequest<'a> {
    pub dependency: &'a str,
    /// Who asks, for the dependency's `tenant_rate` (validated by the
    /// shell); `None`: no tenant, no per-tenant limit.
    pub tenant: Option<&'a str>,
    /// The call's route within its tenant (validated by the shell), for
    /// fair shares by tenant and route; `None`: the tenant's default route.
    pub route: Option<&'a str>,
    /// 0 for a first try; n >= 1 for the n-th retry.
    pub attempt: u32,
    pub priority: Priority,
    /// The caller's cap on waiting (its own max wait, or its deadline less a
    /// margin); it can only shorten the dependency's `max_wait`.
    pub max_wait: Option<Duration>,
    /// The caller has a cheaper answer of its own: rather than wait (or, with
    /// `degrade_at = elevated`, rather than take a slot at elevated pressure)
    /// it is answered [`RejectReason::Degrade`] at once.
    pub degradable: bool,
}

impl AcquireRequest<'_> {
    pub fn is_retry(&self) -> bool {
        self.attempt > 0
    }
}

/// Why a request was not granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    QueueFull,
    QueueTimeout,
    RetryBudgetExhausted,
    Shed,
    ShuttingDown,
    /// The rate limit has no token for it within its wait.
    RateLimited,
    /// A degradable request that would have had to wait (or met the
    /// dependency's `degrade_at` pressure): the caller serves its fallback.
    Degrade,
}

impl RejectReason {
    pub const ALL: [RejectReason; 7] = [
        RejectReason::QueueFull,
        RejectReason::QueueTimeout,
        RejectReason::RetryBudgetExhausted,
        RejectReason::Shed,
        RejectReason::ShuttingDown,
        RejectReason::RateLimited,
        RejectReason::Degrade,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::QueueFull => "queue_full",
            RejectReason::QueueTimeout => "queue_timeout",
            RejectReason::RetryBudgetExhausted => "retry_budget_exhausted",
            RejectReason::Shed => "shed",
            RejectReason::ShuttingDown => "shutting_down",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::Degrade => "degrade",
        }
    }

    /// Whether this answer turned away a request the dependency could not
    /// take (the queue was full, the wait ran out, a waiter was displaced,
    /// the rate limit had no token in time):
    /// what makes it [`Pressure::Overloaded`] for a second. A budget or
    /// drain rejection is not the dependency's load, and a DEGRADE is the
    /// fallback working (counting it would pin a dependency with degradable
    /// traffic at overloaded).
    pub fn is_overload(self) -> bool {
        matches!(
            self,
            RejectReason::QueueFull
                | RejectReason::QueueTimeout
                | RejectReason::Shed
                | RejectReason::RateLimited
        )
    }
}

/// How loaded a dependency is, on every answer (`governor.v1.Pressure`).
/// Ordered: each level is worse than the one before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pressure {
    /// Under `elevated_at` of the enforced limit in use, nobody waiting.
    #[default]
    None,
    /// At or above `elevated_at` of the enforced limit, a permit still free.
    Elevated,
    /// Every permit in use, or someone waits.
    Saturated,
    /// It turned a request away (queue full, queue timeout, shed) within the
    /// last [`OVERLOAD_WINDOW`].
    Overloaded,
}

/// How long one turned-away request keeps a dependency [`Pressure::Overloaded`].
pub const OVERLOAD_WINDOW: Duration = Duration::from_secs(1);

impl Pressure {
    pub const ALL: [Pressure; 4] = [
        Pressure::None,
        Pressure::Elevated,
        Pressure::Saturated,
        Pressure::Overloaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Pressure::None => "none",
            Pressure::Elevated => "elevated",
            Pressure::Saturated => "saturated",
            Pressure::Overloaded => "overloaded",
        }
    }

    /// As a gauge value and on the wire: 1 none, 2 elevated, 3 saturated,
    /// 4 overloaded (the numbers of `governor.v1.Pressure`).
    pub fn level(self) -> i64 {
        match self {
            Pressure::None => 1,
            Pressure::Elevated => 2,
            Pressure::Saturated => 3,
            Pressure::Overloaded => 4,
        }
    }
}

/// A granted permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub lease: LeaseId,
    /// The lease expires unless released or renewed within this.
    pub ttl: Duration,
}

/// A refused permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    /// When a retry could succeed; always positive.
    pub retry_after: Duration,
}

/// A dependency's load at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub limit: u32,
    pub in_flight: u32,
    pub queued: u32,
    /// Judged on the figures above and the last turn-away, under the same
    /// lock as the decision.
    pub pressure: Pressure,
}

/// The answer to an Acquire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Result<Grant, Rejection>,
    /// Time spent in the queue; zero when decided on arrival.
    pub queue_wait: Duration,
    /// Waiters ahead at arrival.
    pub queue_depth: u32,
    /// The dependency's load right after the decision.
    pub snapshot: Snapshot,
}

impl Decision {
    pub fn granted(&self) -> Option<&Grant> {
        self.outcome.as_ref().ok()
    }

    pub fn rejected(&self) -> Option<&Rejection> {
        self.outcome.as_ref().err()
    }
}

/// How the call made under a permit went, as its caller reports on Release.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Outcome {
    #[default]
    Unspecified,
    Success,
    Failure,
    Timeout,
    Cancelled,
    /// The lease belonged to a session whose stream ended (the holder
    /// half-closed, reset, died or went silent): freed by the ledger, not
    /// reported by a caller, and not a sample for an adaptive limit.
    SessionClosed,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Unspecified,
        Outcome::Success,
        Outcome::Failure,
        Outcome::Timeout,
        Outcome::Cancelled,
        Outcome::SessionClosed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Unspecified => "unspecified",
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::SessionClosed => "session_closed",
        }
    }

    /// Whether the call failed in a way that says the dependency may be
    /// overloaded.
    pub fn is_drop(self) -> bool {
        matches!(self, Outcome::Failure | Outcome::Timeout)
    }
}

/// What a caller reports when it gives a permit back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub outcome: Outcome,
    /// The downstream latency the caller measured; the hold time stands in
    /// when absent.
    pub latency: Option<Duration>,
}

impl Report {
    pub fn new(outcome: Outcome, latency: Option<Duration>) -> Report {
        Report { outcome, latency }
    }
}

/// How a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEnd {
    Released(Outcome),
    Expired,
}

/// A lease that has ended, for whoever reports on it.
#[derive(Clone, Debug)]
pub struct EndedLease {
    /// Its dependency: the lease record's reference, moved.
    pub(crate) dependency: std::sync::Arc<super::Dependency>,
    pub lease: LeaseId,
    pub held: Duration,
    pub end: LeaseEnd,
    pub snapshot: Snapshot,
}

impl EndedLease {
    /// Its dependency's name.
    pub fn dependency(&self) -> &std::sync::Arc<str> {
        self.dependency.name()
    }
}
