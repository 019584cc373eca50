//! The RAII permit: released explicitly with an outcome, or as `UNSPECIFIED`
//! when dropped (the client cannot know how the call went); renewed in the background while held so that a long call is
//! never expired under its caller.

use std::{fmt, sync::atomic::Ordering, time::Duration};

use opentelemetry::Context;
use rate_governor_proto::v1::{AcquireResponse, Outcome, Pressure};
use tokio::task::AbortHandle;

use std::sync::Arc;

use crate::{
    Governor, ReleaseError,
    duration::{from_proto, to_proto},
    session::Stream,
};

/// Renewal never runs more often than this, whatever the TTL.
const MIN_RENEW_PERIOD: Duration = Duration::from_millis(10);

/// A concurrency permit for one dependency. Give it back with
/// [`release`](Self::release) and the call's outcome; dropping it releases it
/// as `UNSPECIFIED` in the background (when a tokio runtime is present; else
/// the lease expires after its TTL). Dropping is a normal way to give a
/// permit back (`let _permit = gov.acquire("db").await?;`), only without an
/// outcome; [`Acquire::run`](crate::Acquire::run) reports one, and
/// `CANCELLED` when its future is dropped.
///
/// A *degraded* permit (granted without the sidecar under
/// [`FailPolicy::Open`](crate::FailPolicy::Open)) does nothing on release.
#[must_use = "dropping a Permit releases it at once"]
pub struct Permit {
    dependency: String,
    queue_wait: Duration,
    pressure: Pressure,
    lease: Option<Lease>,
}

/// A lease held at the sidecar.
struct Lease {
    gov: Governor,
    /// A bearer credential: never in Debug output or logs; `handle` is.
    id: String,
    handle: LeaseHandle,
    ttl: Duration,
    renewer: Option<AbortHandle>,
    /// The Session stream that owns it; `None` when granted by the unary RPC.
    session: Option<Arc<Stream>>,
}

impl Lease {
    fn stop_renewing(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

impl Permit {
    pub(crate) fn granted(
        gov: Governor,
        dependency: String,
        response: AcquireResponse,
        session: Option<Arc<Stream>>,
        cx: Context,
    ) -> Self {
        let ttl = from_proto(response.lease_ttl);
        let id = response.lease_id;
        let handle = LeaseHandle::of(&id);
        let renewer = (!ttl.is_zero()).then(|| {
            let renew = renew_loop(gov.clone(), id.clone(), handle, ttl, session.clone(), cx);
            tokio::spawn(renew).abort_handle()
        });
        Self {
            dependency,
            queue_wait: from_proto(response.queue_wait),
            pressure: Pressure::try_from(response.pressure).unwrap_or(Pressure::Unspecified),
            lease: Some(Lease {
                gov,
                id,
                handle,
                ttl,
                renewer,
                session,
            }),
        }
    }

    pub(crate) fn degraded(dependency: String) -> Self {
        Self {
            dependency,
            queue_wait: Duration::ZERO,
            pressure: Pressure::Unspecified,
            lease: None,
        }
    }

    /// The dependency this permit is for.
    pub fn dependency(&self) -> &str {
        &self.dependency
    }

    /// True when granted without the sidecar (fail-open).
    pub fn is_degraded(&self) -> bool {
        self.lease.is_none()
    }

    /// The sidecar's lease id, `None` for a degraded permit. A bearer
    /// credential (whoever has it can release the lease): log
    /// [`Permit::lease_handle`] instead, as `Debug` does.
    pub fn lease_id(&self) -> Option<&str> {
        self.lease.as_ref().map(|l| l.id.as_str())
    }

    /// A short non-secret name of the lease for logs, `None` for a degraded
    /// permit.
    pub fn lease_handle(&self) -> Option<LeaseHandle> {
        self.lease.as_ref().map(|l| l.handle)
    }

    /// The lease TTL granted at acquire time (renewal keeps extending it).
    pub fn lease_ttl(&self) -> Option<Duration> {
        self.lease.as_ref().map(|l| l.ttl)
    }

    /// How long the request waited in the sidecar's queue.
    pub fn queue_wait(&self) -> Duration {
        self.queue_wait
    }

    /// How loaded the dependency was right after the grant: `None` under
    /// `elevated_at` of its limit, `Elevated` above, `Saturated` with every
    /// permit in use or someone waiting, `Overloaded` when it turned a
    /// request away within the last second. A caller may shed optional work
    /// from `Elevated` on. `Unspecified` for a degraded (fail-open) permit,
    /// or from a sidecar too old to say.
    pub fn pressure(&self) -> Pressure {
        self.pressure
    }

    /// Gives the permit back with the call's `outcome`. Returns whether the
    /// sidecar still knew the lease (`false` if it had expired, and always
    /// `false` for a degraded permit).
    ///
    /// A permit granted on the client's Session stream is released over it;
    /// if that stream ended first, the sidecar has already released the
    /// permit, and this says so with [`ReleaseError::Lost`].
    ///
    /// # Cancel safety
    ///
    /// If this future is dropped before the sidecar answers, the permit is
    /// released again in the background as `UNSPECIFIED` (release is
    /// idempotent, so the first release's outcome stands if it arrived).
    ///
    /// # Errors
    ///
    /// [`ReleaseError::Rpc`] if the `Release` fails (the lease then expires
    /// after its TTL); [`ReleaseError::Lost`] if its session ended.
    pub async fn release(self, outcome: Outcome) -> Result<bool, ReleaseError> {
        self.release_inner(outcome, None).await
    }

    /// Like [`release`](Self::release), also reporting the downstream
    /// `latency` the caller measured.
    ///
    /// # Cancel safety
    ///
    /// As [`release`](Self::release).
    ///
    /// # Errors
    ///
    /// As [`release`](Self::release).
    pub async fn release_with_latency(
        self,
        outcome: Outcome,
        latency: Duration,
    ) -> Result<bool, ReleaseError> {
        self.release_inner(outcome, Some(latency)).await
    }

    async fn release_inner(
        mut self,
        outcome: Outcome,
        latency: Option<Duration>,
    ) -> Result<bool, ReleaseError> {
        let Some(lease) = self.lease.as_mut() else {
            return Ok(false);
        };
        lease.stop_renewing();
        let result = match &lease.session {
            Some(stream) if stream.is_ended() => Err(ReleaseError::Lost),
            Some(stream) => {
                let timeout = lease.gov.call_timeout();
                let released = stream
                    .release(lease.id.clone(), outcome, latency.map(to_proto), timeout)
                    .await;
                match released {
                    Ok(released) => Ok(released),
                    Err(_) if stream.is_ended() => Err(ReleaseError::Lost),
                    Err(status) => Err(ReleaseError::Rpc(status)),
                }
            }
            None => lease
                .gov
                .release_rpc(lease.id.clone(), outcome, latency, &Context::current())
                .await
                .map_err(ReleaseError::Rpc),
        };
        if matches!(result, Err(ReleaseError::Lost)) {
            lease
                .gov
                .inner
                .counters
                .leases_lost
                .fetch_add(1, Ordering::Relaxed);
        }
        // Only now is the drop-time release disarmed: if this future is
        // dropped mid-RPC, `Drop` still gives the lease back.
        self.lease = None;
        result
    }
}

impl Permit {
    /// Releases in a background task and returns at once, so a result that is
    /// already in hand never waits on the sidecar.
    pub(crate) fn release_in_background(mut self, outcome: Outcome, latency: Option<Duration>) {
        if let Some(lease) = self.lease.take() {
            spawn_release(lease, outcome, latency);
        }
    }
}

/// Sends the release from a spawned task (or, outside a runtime, leaves the
/// lease to expire).
fn spawn_release(mut lease: Lease, outcome: Outcome, latency: Option<Duration>) {
    lease.stop_renewing();
    if let Some(stream) = &lease.session {
        // Over the stream, with no answer wanted; an ended stream's
        // permits are already back.
        if latency.is_none() || stream.is_ended() {
            if !stream.is_ended() {
                stream.release_and_forget(lease.id.clone(), outcome);
            }
            return;
        }
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let cx = Context::current();
            let handle = lease.handle;
            runtime.spawn(async move {
                let result = match &lease.session {
                    Some(stream) => {
                        let timeout = lease.gov.call_timeout();
                        stream
                            .release(lease.id.clone(), outcome, latency.map(to_proto), timeout)
                            .await
                    }
                    None => lease.gov.release_rpc(lease.id, outcome, latency, &cx).await,
                };
                if let Err(status) = result {
                    tracing::debug!(lease = %handle, %status, "background release failed");
                }
            });
        }
        // The lease id is a bearer credential: never logged.
        Err(_) => tracing::debug!(
            lease = %lease.handle,
            "permit dropped outside a tokio runtime; its lease expires after the TTL"
        ),
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            spawn_release(lease, Outcome::Unspecified, None);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("dependency", &self.dependency)
            .field("lease", &self.lease_handle())
            .field("lease_ttl", &self.lease_ttl())
            .field("queue_wait", &self.queue_wait)
            .field("pressure", &self.pressure)
            .finish()
    }
}

/// Renews the lease at a third of its TTL, so that two renewals can fail
/// before it expires. Stops when the sidecar no longer knows the lease;
/// aborted by release and drop.
async fn renew_loop(
    gov: Governor,
    lease_id: String,
    lease: LeaseHandle,
    mut ttl: Duration,
    session: Option<Arc<Stream>>,
    cx: Context,
) {
    loop {
        let period = (ttl / 3).max(MIN_RENEW_PERIOD);
        tokio::time::sleep(period).await;
        let renewed = match &session {
            // Its stream ended: the sidecar released it; the holder's
            // release reports it lost.
            Some(stream) if stream.is_ended() => return,
            Some(stream) => {
                let timeout = period.min(gov.call_timeout());
                stream.renew(lease_id.clone(), timeout).await
            }
            None => gov.renew_rpc(lease_id.clone(), period, &cx).await,
        };
        match renewed {
            Ok(response) if response.renewed => {
                let renewed = from_proto(response.lease_ttl);
                if !renewed.is_zero() {
                    ttl = renewed;
                }
            }
            Ok(_) => {
                gov.inner
                    .counters
                    .leases_lost
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    %lease,
                    "governor lease expired while the permit was held; the call is no longer counted"
                );
                return;
            }
            Err(status) => {
                tracing::debug!(%lease, %status, "governor lease renewal failed; retrying");
            }
        }
    }
}

/// A short non-secret name of a lease for logs and `Debug`: 32 bits of a
/// keyed hash of its id (SipHash-1-3 with a per-process random key, as the
/// sidecar's `governor.lease`), shown as 8 hex digits. Enough to tell leases
/// apart in one process's logs; useless for finding the id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseHandle(u32);

impl LeaseHandle {
    fn of(id: &str) -> LeaseHandle {
        use std::hash::{BuildHasher, Hasher, RandomState};
        use std::sync::OnceLock;
        static KEY: OnceLock<RandomState> = OnceLock::new();
        let mut hasher = KEY.get_or_init(RandomState::new).build_hasher();
        hasher.write(id.as_bytes());
        LeaseHandle((hasher.finish() >> 32) as u32)
    }
}

impl fmt::Display for LeaseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
