//! The client handle: connection, policies, counters, and the three RPCs with
//! deadlines and trace propagation applied in one place.

use std::{
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt as _;
use rate_governor_proto::v1::{
    AcquireRequest, AcquireResponse, Outcome, Priority, ReleaseRequest, RenewRequest,
    RenewResponse, governor_client::GovernorClient,
};
use tonic::{Request, Response, Status, transport::Channel};

use crate::{
    acquire::Acquire,
    duration::{from_proto, to_proto},
    propagation::inject,
    session::{Sessions, Stream},
    transport::{self, ConnectError},
};

/// What to do when the sidecar gives no answer (`UNAVAILABLE`,
/// `DEADLINE_EXCEEDED`, `CANCELLED`, `UNKNOWN`, `INTERNAL`, `DATA_LOSS`).
/// Rejections (every reason, `SHUTTING_DOWN` included) and every other code
/// are never affected: they are answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailPolicy {
    /// Proceed without a permit (a *degraded* permit whose release does
    /// nothing), count it in [`Stats::fail_open_permits`] and log a
    /// rate-limited warning. The default: a broken sidecar should not take
    /// the application down with it.
    #[default]
    Open,
    /// Return [`AcquireError::Unavailable`](crate::AcquireError::Unavailable).
    Closed,
}

/// Counters since the [`Governor`] was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Permits handed out without the sidecar under [`FailPolicy::Open`].
    pub fail_open_permits: u64,
    /// Held permits whose lease the sidecar no longer knew when renewing.
    pub leases_lost: u64,
    /// `Release` RPCs that failed (the lease then expires after its TTL).
    pub release_errors: u64,
}

/// Default for [`GovernorBuilder::call_timeout`]: the deadline of Release
/// and the cap of each Renew's.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Added to a request's `max_wait` to form the Acquire deadline: it covers
/// the sidecar's own margin (at most 20 ms) and the answer's trip back, so a
/// queued request is answered `QUEUE_TIMEOUT`, never cut off.
pub const ACQUIRE_DEADLINE_MARGIN: Duration = Duration::from_secs(1);
/// The largest `max_wait` the sidecar accepts (config and control plane).
pub const MAX_SIDECAR_WAIT: Duration = Duration::from_secs(3600);
/// Default for [`GovernorBuilder::acquire_timeout`]: the deadline of an
/// Acquire without a `max_wait`, [`MAX_SIDECAR_WAIT`] plus
/// [`ACQUIRE_DEADLINE_MARGIN`], so no configured `max_wait` is cut short.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration =
    MAX_SIDECAR_WAIT.saturating_add(ACQUIRE_DEADLINE_MARGIN);
/// Default HTTP/2 keepalive: a ping this often while a call is open...
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and the connection dropped (`UNAVAILABLE`) when one is not answered
/// within this.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`GovernorBuilder::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// At most one fail-open warning per this interval.
const FAIL_OPEN_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Configures and connects a [`Governor`].
#[derive(Debug, Clone)]
pub struct GovernorBuilder {
    fail_policy: FailPolicy,
    call_timeout: Duration,
    acquire_timeout: Duration,
    connect_timeout: Duration,
    keepalive: (Duration, Duration),
    priority: Priority,
    tenant: Option<String>,
}

impl Default for GovernorBuilder {
    fn default() -> Self {
        Self {
            fail_policy: FailPolicy::Open,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            keepalive: (DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT),
            priority: Priority::Normal,
            tenant: None,
        }
    }
}

impl GovernorBuilder {
    /// What to do when the sidecar cannot be asked. Default [`FailPolicy::Open`].
    pub fn fail_policy(mut self, policy: FailPolicy) -> Self {
        self.fail_policy = policy;
        self
    }

    /// Deadline of each Release, and the cap of each Renew's (whose own is
    /// a third of the lease TTL); default 2 s.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Deadline of an Acquire that sets no `max_wait` (default
    /// [`DEFAULT_ACQUIRE_TIMEOUT`], 1 h + 1 s, longer than any `max_wait` the
    /// sidecar accepts). An Acquire with a `max_wait` gets that plus
    /// [`ACQUIRE_DEADLINE_MARGIN`]. Its expiry counts as no answer (fail
    /// open or [`AcquireError::Unavailable`](crate::AcquireError::Unavailable)).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// HTTP/2 keepalive while a call is open: a ping every `interval`, the
    /// connection dropped when one is not answered within `timeout` (default
    /// 10 s and 5 s). This is what notices a frozen sidecar during a long
    /// queued Acquire.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive = (interval, timeout);
        self
    }

    /// How long establishing the connection may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Priority of acquires that do not set one (default `Normal`).
    pub fn default_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Tenant of acquires that do not set one (default none).
    pub fn default_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Builds a [`Governor`] for `endpoint`: `http://HOST:PORT` or
    /// `unix:///absolute/path.sock` (also `unix:relative/path.sock`).
    ///
    /// No I/O happens here: the channel connects on first use and reconnects
    /// after the sidecar restarts, so the application may start before its
    /// sidecar. Connection failures surface per call, under the fail policy.
    ///
    /// # Errors
    ///
    /// If the endpoint cannot be parsed.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the channel spawns its worker task).
    pub fn connect(self, endpoint: impl AsRef<str>) -> Result<Governor, ConnectError> {
        let channel =
            transport::lazy_channel(endpoint.as_ref(), self.connect_timeout, self.keepalive)?;
        Ok(self.with_channel(channel))
    }

    /// Builds a [`Governor`] over a channel the caller configured (TLS,
    /// custom connector, ...).
    pub fn with_channel(self, channel: Channel) -> Governor {
        Governor {
            inner: Arc::new(Inner {
                client: GovernorClient::new(channel),
                fail_policy: self.fail_policy,
                call_timeout: self.call_timeout,
                acquire_timeout: self.acquire_timeout,
                priority: self.priority,
                tenant: self.tenant,
                counters: Counters::default(),
                sessions: Sessions::default(),
                connect_timeout: self.connect_timeout,
                warn_epoch: Instant::now(),
                next_warn_ms: AtomicU64::new(0),
                suppressed_warnings: AtomicU64::new(0),
            }),
        }
    }
}

/// A handle to the local governor sidecar. Cheap to clone; clones share the
/// connection and the [`Stats`].
#[derive(Clone)]
pub struct Governor {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    client: GovernorClient<Channel>,
    pub(crate) fail_policy: FailPolicy,
    call_timeout: Duration,
    acquire_timeout: Duration,
    pub(crate) priority: Priority,
    pub(crate) tenant: Option<String>,
    pub(crate) counters: Counters,
    /// The Session stream acquires go over (see [`crate::session`]).
    sessions: Sessions,
    connect_timeout: Duration,
    warn_epoch: Instant,
    next_warn_ms: AtomicU64,
    suppressed_warnings: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) fail_open_permits: AtomicU64,
    pub(crate) leases_lost: AtomicU64,
    pub(crate) release_errors: AtomicU64,
}

impl fmt::Debug for Governor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Governor")
            .field("fail_policy", &self.inner.fail_policy)
            .field("call_timeout", &self.inner.call_timeout)
            .field("acquire_timeout", &self.inner.acquire_timeout)
            .field("priority", &self.inner.priority)
            .field("tenant", &self.inner.tenant)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Governor {
    /// A [`Governor`] for `endpoint` with default settings; see
    /// [`GovernorBuilder::connect`].
    ///
    /// # Errors
    ///
    /// If the endpoint cannot be parsed.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn connect(endpoint: impl AsRef<str>) -> Result<Self, ConnectError> {
        Self::builder().connect(endpoint)
    }

    /// A builder for non-default settings.
    pub fn builder() -> GovernorBuilder {
        GovernorBuilder::default()
    }

    /// Starts asking for a permit for `dependency`; set options on the
    /// returned [`Acquire`], then `.await` it.
    pub fn acquire(&self, dependency: impl Into<String>) -> Acquire {
        Acquire::new(self.clone(), dependency.into())
    }

    /// Runs `fut` under a permit for `dependency` and releases it with
    /// `SUCCESS` or `FAILURE` and the measured latency; shorthand for
    /// `self.acquire(dependency).run(fut)`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future releases a held permit as `CANCELLED`
    /// (in the background) and never runs `fut` if no permit was granted yet.
    ///
    /// # Errors
    ///
    /// [`GovernedError::Acquire`](crate::GovernedError::Acquire) without a
    /// permit (`fut` is not run), [`GovernedError::Inner`](crate::GovernedError::Inner)
    /// with `fut`'s error.
    pub async fn run<F, T, E>(
        &self,
        dependency: impl Into<String>,
        fut: F,
    ) -> Result<T, crate::GovernedError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.acquire(dependency).run(fut).await
    }

    /// Runs `fut` under a permit for `dependency`, or `fallback` at once if
    /// the sidecar answers `DEGRADE`; shorthand for
    /// `self.acquire(dependency).run_or_degrade(fut, fallback)`.
    ///
    /// # Cancel safety
    ///
    /// As [`Acquire::run_or_degrade`].
    ///
    /// # Errors
    ///
    /// As [`Acquire::run_or_degrade`].
    pub async fn run_or_degrade<F, T, E, D, G>(
        &self,
        dependency: impl Into<String>,
        fut: F,
        fallback: D,
    ) -> Result<T, crate::GovernedError<E>>
    where
        F: Future<Output = Result<T, E>>,
        D: FnOnce(crate::Rejection) -> G,
        G: Future<Output = Result<T, E>>,
    {
        self.acquire(dependency).run_or_degrade(fut, fallback).await
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            fail_open_permits: c.fail_open_permits.load(Ordering::Relaxed),
            leases_lost: c.leases_lost.load(Ordering::Relaxed),
            release_errors: c.release_errors.load(Ordering::Relaxed),
        }
    }

    /// Logs a fail-open permit at most once per [`FAIL_OPEN_WARN_INTERVAL`],
    /// with the number of occurrences that were not logged.
    pub(crate) fn warn_fail_open(&self, dependency: &str, status: &Status) {
        let inner = &self.inner;
        let now = u64::try_from(inner.warn_epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = inner.next_warn_ms.load(Ordering::Relaxed);
        let interval = FAIL_OPEN_WARN_INTERVAL.as_millis() as u64;
        if now >= next
            && inner
                .next_warn_ms
                .compare_exchange(next, now + interval, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = inner.suppressed_warnings.swap(0, Ordering::Relaxed);
            tracing::warn!(
                dependency,
                code = ?status.code(),
                error = status.message(),
                suppressed,
                "governor sidecar unavailable; proceeding without a permit (fail-open)"
            );
        } else {
            inner.suppressed_warnings.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn request<T>(&self, message: T, timeout: Duration, cx: &Context) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        inject(cx, request.metadata_mut());
        request
    }

    /// An Acquire over the session (whose stream then owns the lease), or
    /// the unary RPC when there is none, or when the caller's trace context
    /// is sampled: a session message carries no metadata, and only the
    /// unary call can make the sidecar's spans children of the caller's.
    pub(crate) async fn acquire_rpc(
        &self,
        message: AcquireRequest,
        cx: &Context,
    ) -> Result<(AcquireResponse, Option<Arc<Stream>>), Status> {
        let timeout = match message.max_wait {
            Some(max_wait) => from_proto(Some(max_wait)).saturating_add(ACQUIRE_DEADLINE_MARGIN),
            None => self.inner.acquire_timeout,
        };
        // Opening waits for the stream's headers; never longer than the call.
        let open_timeout = self
            .inner
            .connect_timeout
            .max(self.inner.call_timeout)
            .min(timeout);
        let traced = cx.span().span_context().is_sampled();
        let stream = match traced {
            true => None,
            false => {
                self.inner
                    .sessions
                    .stream(&self.inner.client, open_timeout)
                    .await
            }
        };
        if let Some(stream) = stream {
            let response = stream.acquire(message, timeout).await?;
            return Ok((response, Some(stream)));
        }
        let request = self.request(message, timeout, cx);
        let mut client = self.inner.client.clone();
        with_deadline(timeout, client.acquire(request))
            .await
            .map(|response| (response, None))
    }

    /// Whether acquires go over the unary RPCs for good (the sidecar
    /// answered the Session RPC `UNIMPLEMENTED`).
    pub async fn uses_unary_fallback(&self) -> bool {
        self.inner.sessions.is_unary().await
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    pub(crate) async fn release_rpc(
        &self,
        lease_id: String,
        outcome: Outcome,
        latency: Option<Duration>,
        cx: &Context,
    ) -> Result<bool, Status> {
        let message = ReleaseRequest {
            lease_id,
            outcome: outcome as i32,
            latency: latency.map(to_proto),
        };
        let timeout = self.inner.call_timeout;
        let request = self.request(message, timeout, cx);
        let mut client = self.inner.client.clone();
        let result = with_deadline(timeout, client.release(request)).await;
        if result.is_err() {
            self.inner
                .counters
                .release_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        result.map(|r| r.released)
    }

    pub(crate) async fn renew_rpc(
        &self,
        lease_id: String,
        timeout: Duration,
        cx: &Context,
    ) -> Result<RenewResponse, Status> {
        let timeout = timeout.min(self.inner.call_timeout);
        let request = self.request(RenewRequest { lease_id }, timeout, cx);
        let mut client = self.inner.client.clone();
        with_deadline(timeout, client.renew(request)).await
    }
}

/// Enforces `timeout` locally as well as through `grpc-timeout`, so a hung
/// connection cannot hold the caller longer than promised.
async fn with_deadline<T>(
    timeout: Duration,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map(Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "governor sidecar did not answer within {timeout:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_table() {
        let b = GovernorBuilder::default();
        assert_eq!(b.fail_policy, FailPolicy::Open);
        assert_eq!(b.call_timeout, Duration::from_secs(2));
        assert_eq!(b.acquire_timeout, Duration::from_secs(3601));
        assert_eq!(
            b.keepalive,
            (Duration::from_secs(10), Duration::from_secs(5))
        );
    }
}
