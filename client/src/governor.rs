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
use rate_governor_proto::v1::{
    AcquireRequest, AcquireResponse, Outcome, Priority, ReleaseRequest, RenewRequest,
    RenewResponse, governor_client::GovernorClient,
};
use tonic::{Request, Response, Status, transport::Channel};

use crate::{
    acquire::Acquire,
    duration::{from_proto, to_proto},
    propagation::inject,
    transport::{self, ConnectError},
};

/// What to do when the sidecar cannot be asked (unreachable, timed out,
/// failing). Rejections and invalid requests are never affected.
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

/// Default for [`GovernorBuilder::call_timeout`].
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`GovernorBuilder::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// At most one fail-open warning per this interval.
const FAIL_OPEN_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Configures and connects a [`Governor`].
#[derive(Debug, Clone)]
pub struct GovernorBuilder {
    fail_policy: FailPolicy,
    call_timeout: Duration,
    connect_timeout: Duration,
    priority: Priority,
    tenant: Option<String>,
}

impl Default for GovernorBuilder {
    fn default() -> Self {
        Self {
            fail_policy: FailPolicy::Open,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
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

    /// Deadline of each RPC to the sidecar (default 5 s). An `Acquire` that
    /// sets a `max_wait` gets that on top, so that queueing is not cut short.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
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
        let channel = transport::lazy_channel(endpoint.as_ref(), self.connect_timeout)?;
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
                priority: self.priority,
                tenant: self.tenant,
                counters: Counters::default(),
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
    pub(crate) priority: Priority,
    pub(crate) tenant: Option<String>,
    pub(crate) counters: Counters,
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

    pub(crate) async fn acquire_rpc(
        &self,
        message: AcquireRequest,
        cx: &Context,
    ) -> Result<AcquireResponse, Status> {
        let timeout = self.inner.call_timeout + from_proto(message.max_wait);
        let request = self.request(message, timeout, cx);
        let mut client = self.inner.client.clone();
        with_deadline(timeout, client.acquire(request)).await
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
