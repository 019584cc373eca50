//! Typed errors. A rejection is the sidecar doing its job and carries the
//! information needed to back off; it is kept apart from "the sidecar could
//! not be asked" and from "the request was malformed", which call for
//! different reactions (fail-open, and fixing the caller, respectively).

use std::{fmt, time::Duration};

use rate_governor_proto::v1::{AcquireResponse, Pressure, RejectReason};
use tonic::{Code, Status};

use crate::duration::from_proto;

/// Why [`Governor::acquire`](crate::Governor::acquire) returned no permit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireError {
    /// The sidecar answered and said no: back off for `retry_after`.
    #[error("permit rejected: {0}")]
    Rejected(Rejection),
    /// The sidecar gave no answer: `UNAVAILABLE`, `DEADLINE_EXCEEDED`,
    /// `CANCELLED`, `UNKNOWN`, `INTERNAL` or `DATA_LOSS` (only with
    /// [`FailPolicy::Closed`](crate::FailPolicy::Closed); `Open` proceeds
    /// without a permit instead).
    #[error("governor sidecar unavailable: {}", .0.message())]
    Unavailable(#[source] Status),
    /// The sidecar answered with an error: a bad dependency name
    /// (`INVALID_ARGUMENT`), an unknown dependency (`NOT_FOUND`), the
    /// dependency cap (`RESOURCE_EXHAUSTED`), or any other code that is not
    /// an outage (`UNIMPLEMENTED`: the address is not a governor, ...).
    /// Never turned into a fail-open permit.
    #[error("invalid acquire request: {}", .0.message())]
    Invalid(#[source] Status),
}

impl AcquireError {
    /// The rejection, if the sidecar refused the permit.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Self::Rejected(r) => Some(r),
            _ => None,
        }
    }

    /// Sorts a failed RPC into `Unavailable` (no answer) or `Invalid`.
    pub(crate) fn from_status(status: Status) -> Self {
        if is_unavailable(&status) {
            Self::Unavailable(status)
        } else {
            Self::Invalid(status)
        }
    }
}

/// Codes that mean "the sidecar gave no answer" (down, frozen, a broken
/// connection, a crash mid-call): the only ones the fail-open policy covers
/// (docs/any-language.md, "What every client does"). Every other code is an
/// answer, and failing open on it would hide a bug for ever.
pub(crate) fn is_unavailable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::DataLoss
    )
}

/// A refused permit: why, when to try again, and the dependency's state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// Why the permit was refused.
    pub reason: RejectReason,
    /// The sidecar's estimate of when a retry could succeed (for
    /// `RateLimited`, the exact time until the next token).
    pub retry_after: Duration,
    /// The dependency's concurrency limit at the time of the decision.
    pub limit: u32,
    /// Permits held at the time of the decision.
    pub in_flight: u32,
    /// Requests queued at the time of the decision.
    pub queued: u32,
    /// The dependency's pressure right after the decision.
    pub pressure: Pressure,
}

impl Rejection {
    /// Whether this is a `DEGRADE`: the request was
    /// [`degradable`](crate::Acquire::degradable) and would have had to
    /// wait (or met the dependency's `degrade_at` pressure), so the caller
    /// should serve its cheaper answer now.
    pub fn is_degrade(&self) -> bool {
        self.reason == RejectReason::Degrade
    }
}

impl From<AcquireResponse> for Rejection {
    fn from(r: AcquireResponse) -> Self {
        Self {
            reason: RejectReason::try_from(r.reason).unwrap_or(RejectReason::Unspecified),
            retry_after: from_proto(r.retry_after),
            limit: r.limit,
            in_flight: r.in_flight,
            queued: r.queued,
            pressure: Pressure::try_from(r.pressure).unwrap_or(Pressure::Unspecified),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = match self.reason {
            RejectReason::Unspecified => "unspecified reason",
            RejectReason::QueueFull => "queue full",
            RejectReason::QueueTimeout => "queue timeout",
            RejectReason::RetryBudgetExhausted => "retry budget exhausted",
            RejectReason::Shed => "shed by a higher-priority request",
            RejectReason::ShuttingDown => "sidecar shutting down",
            RejectReason::RateLimited => "rate limited",
            RejectReason::Degrade => "degrade: serve the fallback",
        };
        write!(
            f,
            "{reason}, retry after {:?} (limit {}, in flight {}, queued {})",
            self.retry_after, self.limit, self.in_flight, self.queued
        )
    }
}

impl std::error::Error for Rejection {}

/// A release that did not go through: the RPC failed (the lease then
/// expires after its TTL: worth logging, rarely worth acting on), or the
/// permit was already lost with its session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The `Release` failed; the lease expires after its TTL.
    #[error("release failed: {}", .0.message())]
    Rpc(#[source] Status),
    /// The permit was granted on the client's Session stream, which ended
    /// before this release (the sidecar restarted, or the connection was
    /// lost): the sidecar already released it (outcome `session_closed`),
    /// so the call made under it was not counted to the end. Nothing is
    /// freed a second time.
    #[error("permit lost: the session it was granted on ended, and the sidecar released it")]
    Lost,
}

/// The error of a call made under a permit ([`Acquire::run`](crate::Acquire::run),
/// [`GovernorService`](crate::GovernorService)): either no permit, or the
/// call itself failed.
#[derive(Debug, thiserror::Error)]
pub enum GovernedError<E> {
    /// No permit: rejected, sidecar unavailable (fail-closed) or invalid.
    #[error(transparent)]
    Acquire(AcquireError),
    /// The governed call ran and failed.
    #[error("governed call failed")]
    Inner(#[source] E),
}

impl<E> GovernedError<E> {
    /// The rejection, if no permit was granted because the sidecar refused.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Self::Acquire(e) => e.rejection(),
            Self::Inner(_) => None,
        }
    }

    /// The governed call's own error, if it ran and failed.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Acquire(_) => None,
        }
    }
}

/// Why [`Governor::retry`](crate::Governor::retry) gave up.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// The operation failed on its last allowed attempt, or with an error
    /// the predicate called permanent.
    #[error("operation failed after {attempts} attempt(s)")]
    Failed {
        /// Attempts made, the first try included.
        attempts: u32,
        /// The operation's last error.
        #[source]
        error: E,
    },
    /// No permit for the next attempt, and retrying would not help: the retry
    /// budget is exhausted, the sidecar is shutting down or unavailable
    /// (fail-closed), the request is invalid, or attempts ran out while
    /// rejected.
    #[error("no permit for attempt {attempt}")]
    Acquire {
        /// The attempt number (0 = first try) that got no permit.
        attempt: u32,
        /// Why there was no permit.
        #[source]
        error: AcquireError,
        /// The operation's error from the previous attempt, if it ran.
        last_error: Option<E>,
    },
}

impl<E> RetryError<E> {
    /// The rejection that ended the retries, if the sidecar refused a permit.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Self::Acquire { error, .. } => error.rejection(),
            Self::Failed { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_lowercase_and_informative() {
        let r = Rejection {
            reason: RejectReason::QueueFull,
            retry_after: Duration::from_millis(25),
            limit: 1,
            in_flight: 1,
            queued: 0,
            pressure: Pressure::Saturated,
        };
        let e = AcquireError::Rejected(r);
        assert_eq!(
            e.to_string(),
            "permit rejected: queue full, retry after 25ms (limit 1, in flight 1, queued 0)"
        );
        let u = AcquireError::from_status(Status::unavailable("connection refused"));
        assert!(matches!(u, AcquireError::Unavailable(_)));
        assert_eq!(
            u.to_string(),
            "governor sidecar unavailable: connection refused"
        );
        assert!(matches!(
            AcquireError::from_status(Status::invalid_argument("dependency")),
            AcquireError::Invalid(_)
        ));
    }

    #[test]
    fn a_degrade_answer_reads_as_a_degrade_with_its_pressure() {
        let response = AcquireResponse {
            granted: false,
            reason: RejectReason::Degrade as i32,
            retry_after: Some(prost_types::Duration {
                seconds: 0,
                nanos: 40_000_000,
            }),
            limit: 4,
            in_flight: 4,
            queued: 2,
            pressure: Pressure::Saturated as i32,
            ..Default::default()
        };
        let rejection = Rejection::from(response);
        assert!(rejection.is_degrade());
        assert_eq!(rejection.pressure, Pressure::Saturated);
        assert_eq!(rejection.retry_after, Duration::from_millis(40));
        assert_eq!(
            rejection.to_string(),
            "degrade: serve the fallback, retry after 40ms (limit 4, in flight 4, queued 2)"
        );
        let full = Rejection::from(AcquireResponse {
            reason: RejectReason::QueueFull as i32,
            pressure: 99,
            ..Default::default()
        });
        assert!(!full.is_degrade());
        assert_eq!(full.pressure, Pressure::Unspecified, "an unknown level");
    }

    #[test]
    fn a_rate_limited_answer_is_named_and_not_a_degrade() {
        let rejection = Rejection::from(AcquireResponse {
            reason: RejectReason::RateLimited as i32,
            retry_after: Some(prost_types::Duration {
                seconds: 0,
                nanos: 5_000_000,
            }),
            limit: 4,
            in_flight: 1,
            ..Default::default()
        });
        assert_eq!(rejection.reason, RejectReason::RateLimited);
        assert!(!rejection.is_degrade());
        assert_eq!(
            rejection.to_string(),
            "rate limited, retry after 5ms (limit 4, in flight 1, queued 0)"
        );
    }

    #[test]
    fn only_codes_without_an_answer_are_unavailable() {
        let unavailable = [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Unknown,
            Code::Internal,
            Code::DataLoss,
        ];
        let answers = [
            Code::InvalidArgument,
            Code::NotFound,
            Code::ResourceExhausted,
            Code::Unimplemented,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::AlreadyExists,
            Code::Aborted,
        ];
        for code in unavailable {
            let e = AcquireError::from_status(Status::new(code, "x"));
            assert!(matches!(e, AcquireError::Unavailable(_)), "{code:?}: {e:?}");
        }
        for code in answers {
            let e = AcquireError::from_status(Status::new(code, "x"));
            assert!(matches!(e, AcquireError::Invalid(_)), "{code:?}: {e:?}");
        }
    }
}
