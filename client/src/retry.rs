//! Retries that respect the sidecar.
//!
//! Each attempt asks for a permit with its `attempt` number, so retries draw
//! on the dependency's retry budget, shared by every instance behind the same
//! sidecar. That bounds retry load to a fraction of first tries, where a
//! per-caller "max N retries" multiplies load by N exactly when the
//! dependency is already failing. Backoff is exponential with jitter, and
//! never shorter than the sidecar's `retry_after` after a rejection.

use std::{future::Future, time::Duration};

use rand::Rng;
use rate_governor_proto::v1::RejectReason;

use crate::{AcquireError, GovernedError, Governor, RetryError};

/// How [`Governor::retry`] spaces and bounds attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, backoff from 50 ms doubling up to 2 s.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Attempts in all, the first try included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Backoff before the first retry; it doubles for each one after.
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Cap of the exponential backoff (a longer `retry_after` still wins).
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// The wait before attempt `attempt` (>= 1): the exponential backoff
    /// with "equal jitter" (uniform in its upper half), raised to at least
    /// `retry_after` plus up to a quarter of it, so that rejected callers do
    /// not come back in lockstep.
    pub fn backoff(&self, attempt: u32, retry_after: Duration) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        let exp = self
            .initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff);
        let mut rng = rand::rng();
        let backoff = jitter(&mut rng, exp / 2, exp);
        let hinted = jitter(&mut rng, retry_after, retry_after + retry_after / 4);
        backoff.max(hinted)
    }
}

fn jitter(rng: &mut impl Rng, low: Duration, high: Duration) -> Duration {
    let (low, high) = (low.as_micros() as u64, high.as_micros() as u64);
    Duration::from_micros(rng.random_range(low..=high.max(low)))
}

impl Governor {
    /// Runs `op` under a permit for `dependency`, retrying every error up to
    /// `policy`'s attempts; see [`retry_if`](Self::retry_if).
    ///
    /// # Cancel safety
    ///
    /// As [`retry_if`](Self::retry_if).
    ///
    /// # Errors
    ///
    /// As [`retry_if`](Self::retry_if).
    pub async fn retry<F, Fut, T, E>(
        &self,
        dependency: &str,
        policy: RetryPolicy,
        op: F,
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.retry_if(dependency, policy, op, |_| true).await
    }

    /// Runs `op` under a permit for `dependency` (releasing it with the
    /// outcome and latency of each attempt) and retries while `retryable`
    /// says the error is transient and attempts remain. Attempt `n` asks for
    /// its permit with `attempt = n`, drawing on the retry budget; a
    /// rejection for a full queue, a queue timeout, shedding or the
    /// dependency's rate limit is retried after `retry_after` (with jitter)
    /// like a failure.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future releases a held permit as `CANCELLED` and makes
    /// no further attempt.
    ///
    /// # Errors
    ///
    /// [`RetryError::Failed`] with `op`'s last error; [`RetryError::Acquire`]
    /// when no permit was granted and retrying cannot help (retry budget
    /// exhausted, sidecar shutting down, unavailable under fail-closed,
    /// invalid request) or attempts ran out while rejected.
    pub async fn retry_if<F, Fut, T, E, P>(
        &self,
        dependency: &str,
        policy: RetryPolicy,
        mut op: F,
        mut retryable: P,
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        P: FnMut(&E) -> bool,
    {
        let mut last_error = None;
        let mut attempt = 0;
        loop {
            let retry_after = match self.acquire(dependency).attempt(attempt).run(op()).await {
                Ok(value) => return Ok(value),
                Err(GovernedError::Inner(error)) => {
                    if attempt + 1 >= policy.max_attempts || !retryable(&error) {
                        return Err(RetryError::Failed {
                            attempts: attempt + 1,
                            error,
                        });
                    }
                    last_error = Some(error);
                    Duration::ZERO
                }
                Err(GovernedError::Acquire(error)) => {
                    let retry_after = match &error {
                        AcquireError::Rejected(r)
                            if matches!(
                                r.reason,
                                RejectReason::QueueFull
                                    | RejectReason::QueueTimeout
                                    | RejectReason::Shed
                                    | RejectReason::RateLimited
                            ) && attempt + 1 < policy.max_attempts =>
                        {
                            Some(r.retry_after)
                        }
                        _ => None,
                    };
                    let Some(retry_after) = retry_after else {
                        return Err(RetryError::Acquire {
                            attempt,
                            error,
                            last_error,
                        });
                    };
                    retry_after
                }
            };
            attempt += 1;
            tokio::time::sleep(policy.backoff(attempt, retry_after)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let policy = RetryPolicy::default()
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(400));
        for _ in 0..100 {
            let first = policy.backoff(1, Duration::ZERO);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
            let third = policy.backoff(3, Duration::ZERO);
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&third));
            let capped = policy.backoff(30, Duration::ZERO);
            assert!(capped <= Duration::from_millis(400));
            let hinted = policy.backoff(1, Duration::from_secs(1));
            assert!((Duration::from_secs(1)..=Duration::from_millis(1250)).contains(&hinted));
        }
    }
}
