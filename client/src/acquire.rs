//! The `Acquire` request builder and the permit-scoped `run`.

use std::{
    future::{Future, IntoFuture},
    pin::Pin,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use opentelemetry::Context;
use rate_governor_proto::v1::{AcquireRequest, Outcome, Priority};

use crate::{
    AcquireError, FailPolicy, GovernedError, Governor, Permit, Rejection, duration::to_proto,
    error::is_unavailable,
};

/// A pending request for a permit, from [`Governor::acquire`]. Set options,
/// then `.await` it for a [`Permit`].
///
/// # Cancel safety
///
/// Dropping the future while it waits makes the sidecar drop the queued
/// request. If the permit was granted in the instant before, the lease is
/// unknown to the client and its slot comes back when the lease TTL expires.
#[derive(Debug, Clone)]
#[must_use = "an Acquire does nothing until awaited"]
pub struct Acquire {
    gov: Governor,
    request: AcquireRequest,
}

impl Acquire {
    pub(crate) fn new(gov: Governor, dependency: String) -> Self {
        let request = AcquireRequest {
            dependency,
            attempt: 0,
            priority: gov.inner.priority as i32,
            tenant: gov.inner.tenant.clone().unwrap_or_default(),
            route: String::new(),
            max_wait: None,
            degradable: false,
        };
        Self { gov, request }
    }

    /// Queueing priority (default: the builder's, `Normal` unless changed).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.request.priority = priority as i32;
        self
    }

    /// Tenant for attribution (default: the builder's).
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.request.tenant = tenant.into();
        self
    }

    /// The call's route within its tenant (an endpoint, a query class): on
    /// the sidecar's spans and logs, and under fairness by `tenant_route`
    /// the tenant's routes share its part equally.
    pub fn route(mut self, route: impl Into<String>) -> Self {
        self.request.route = route.into();
        self
    }

    /// 0 for a first try, n for the n-th retry, which draws on the
    /// dependency's retry budget.
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.request.attempt = attempt;
        self
    }

    /// Waits in the queue at most this long (it can only shorten the
    /// configured max wait); zero means never queue. The Acquire's deadline
    /// is then this plus [`ACQUIRE_DEADLINE_MARGIN`](crate::ACQUIRE_DEADLINE_MARGIN).
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.request.max_wait = Some(to_proto(max_wait));
        self
    }

    /// Marks the request degradable: the caller can serve a cheaper answer
    /// without this call (a partial result, a cached value). Rather than
    /// wait in the queue it is then rejected at once with
    /// [`RejectReason::Degrade`](crate::RejectReason::Degrade) (see
    /// [`Rejection::is_degrade`]); with the dependency's `degrade_at =
    /// "elevated"`, already from elevated pressure. [`run_or_degrade`](Self::run_or_degrade)
    /// sets it and runs the fallback on DEGRADE.
    pub fn degradable(mut self, degradable: bool) -> Self {
        self.request.degradable = degradable;
        self
    }

    /// The dependency the permit is for.
    pub fn dependency(&self) -> &str {
        &self.request.dependency
    }

    /// Runs `fut` under the permit and releases it with `SUCCESS` (`Ok`) or
    /// `FAILURE` (`Err`) and the latency of `fut`. A release error is logged,
    /// not returned: the lease then expires on its own.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future releases a held permit as `CANCELLED` (in
    /// the background). `fut` is only polled once a permit is held.
    ///
    /// # Errors
    ///
    /// [`GovernedError::Acquire`] without a permit (then `fut` never runs),
    /// [`GovernedError::Inner`] with `fut`'s error.
    pub async fn run<F, T, E>(self, fut: F) -> Result<T, GovernedError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let permit = self.await.map_err(GovernedError::Acquire)?;
        // Dropped with this future while `fut` runs: the call was cancelled.
        let guard = CancelOnDrop(Some(permit));
        let started = Instant::now();
        let result = fut.await;
        let outcome = if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        // The result is in hand: give the permit back without making the
        // caller wait for the sidecar's answer.
        guard.release(outcome, Some(started.elapsed()));
        result.map_err(GovernedError::Inner)
    }

    /// [`run`](Self::run) for a caller with a cheaper answer: the request is
    /// made [`degradable`](Self::degradable), and when the sidecar answers
    /// `DEGRADE` (the dependency is saturated, or past its `degrade_at`),
    /// `fallback` runs instead of `fut`, at once, with the rejection (its
    /// pressure and retry-after hint). Every other outcome is `run`'s: `fut`
    /// under a permit, or [`GovernedError::Acquire`] for any other
    /// rejection (a degradable retry still meets the retry budget first).
    ///
    /// ```no_run
    /// # use rate_governor_client::Governor;
    /// # async fn fetch_recommendations() -> Result<Vec<String>, std::io::Error> { Ok(vec![]) }
    /// # async fn demo(gov: Governor) -> Result<(), Box<dyn std::error::Error>> {
    /// let cached: Vec<String> = vec!["bestsellers".into()];
    /// let shown = gov
    ///     .acquire("recommendations")
    ///     .run_or_degrade(fetch_recommendations(), |_rejection| async move {
    ///         Ok(cached) // the cheaper answer, served now instead of queueing
    ///     })
    ///     .await?;
    /// # let _ = shown; Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run); `fallback` is only called once the DEGRADE is in.
    ///
    /// # Errors
    ///
    /// [`GovernedError::Acquire`] without a permit for any reason but
    /// `DEGRADE` (then neither future runs), [`GovernedError::Inner`] with
    /// the error of `fut` or of `fallback`.
    pub async fn run_or_degrade<F, T, E, D, G>(
        self,
        fut: F,
        fallback: D,
    ) -> Result<T, GovernedError<E>>
    where
        F: Future<Output = Result<T, E>>,
        D: FnOnce(Rejection) -> G,
        G: Future<Output = Result<T, E>>,
    {
        match self.degradable(true).run(fut).await {
            Err(GovernedError::Acquire(AcquireError::Rejected(rejection)))
                if rejection.is_degrade() =>
            {
                fallback(rejection).await.map_err(GovernedError::Inner)
            }
            other => other,
        }
    }

    async fn send(self) -> Result<Permit, AcquireError> {
        let Self { gov, request } = self;
        let cx = Context::current();
        let dependency = request.dependency.clone();
        match gov.acquire_rpc(request, &cx).await {
            Ok((response, session)) if response.granted => {
                Ok(Permit::granted(gov, dependency, response, session, cx))
            }
            Ok((response, _)) => Err(AcquireError::Rejected(Rejection::from(response))),
            Err(status)
                if !is_unavailable(&status) || gov.inner.fail_policy == FailPolicy::Closed =>
            {
                Err(AcquireError::from_status(status))
            }
            Err(status) => {
                gov.inner
                    .counters
                    .fail_open_permits
                    .fetch_add(1, Ordering::Relaxed);
                gov.warn_fail_open(&dependency, &status);
                Ok(Permit::degraded(dependency))
            }
        }
    }
}

/// Holds the permit of a [`Acquire::run`] while its future runs; dropped
/// before [`release`](Self::release) (the run was cancelled), it releases the
/// permit as `CANCELLED`, where a bare dropped [`Permit`] reports
/// `UNSPECIFIED`.
struct CancelOnDrop(Option<Permit>);

impl CancelOnDrop {
    fn release(mut self, outcome: Outcome, latency: Option<Duration>) {
        if let Some(permit) = self.0.take() {
            permit.release_in_background(outcome, latency);
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(permit) = self.0.take() {
            permit.release_in_background(Outcome::Cancelled, None);
        }
    }
}

impl IntoFuture for Acquire {
    type Output = Result<Permit, AcquireError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}
