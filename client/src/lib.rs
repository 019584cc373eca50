//! Rust client for the governor sidecar, which hands out concurrency permits
//! for downstream dependencies with bounded queues and retry budgets.
//!
//! Ask the local sidecar for a permit before calling a dependency, and give
//! it back with the outcome afterwards. Permits are RAII guards: dropped
//! without release, they are released as `UNSPECIFIED` (a cancelled
//! [`Acquire::run`] as `CANCELLED`); held for long, their lease is renewed in
//! the background. The behaviour follows the table every client of the
//! project shares (docs/any-language.md, "What every client does").
//!
//! ```no_run
//! use rate_governor_client::{Governor, Outcome};
//!
//! # async fn call_payments() -> Result<(), std::io::Error> { Ok(()) }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let gov = Governor::connect("http://127.0.0.1:50051")?;
//!
//! // Scoped: the permit is released with SUCCESS/FAILURE and the latency.
//! gov.run("payments", call_payments()).await?;
//!
//! // Explicit: a rejection is a typed error with a retry-after hint.
//! let permit = gov.acquire("payments").max_wait(std::time::Duration::from_millis(50)).await?;
//! let outcome = match call_payments().await {
//!     Ok(()) => Outcome::Success,
//!     Err(_) => Outcome::Failure,
//! };
//! permit.release(outcome).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Also: [`GovernorLayer`] governs any tower service (a tonic or HTTP
//! client); [`Governor::retry`] retries under the sidecar's retry budget.
//!
//! # Pressure and degrade
//!
//! Every answer says how loaded the dependency is ([`Pressure`]:
//! `None`, `Elevated` from the dependency's `elevated_at` share of its
//! limit, `Saturated` with every permit in use or someone waiting,
//! `Overloaded` for a second after it turned a request away): on a permit
//! as [`Permit::pressure`], on a rejection as [`Rejection::pressure`]. A
//! caller with a cheaper answer (a partial result, a cached value) marks
//! its request [`degradable`](Acquire::degradable): rather than wait in the
//! queue it is answered `DEGRADE` at once ([`Rejection::is_degrade`]), and
//! with the dependency's `degrade_at = "elevated"` already from elevated
//! pressure, leaving the headroom to callers without a fallback.
//! [`Acquire::run_or_degrade`] does both: the call under a permit, or the
//! fallback at once.
//!
//! ```no_run
//! use rate_governor_client::{Governor, Pressure};
//!
//! # async fn search(q: &str) -> Result<Vec<String>, std::io::Error> { Ok(vec![q.into()]) }
//! # async fn cached(q: &str) -> Result<Vec<String>, std::io::Error> { Ok(vec![q.into()]) }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let gov = Governor::connect("http://127.0.0.1:50051")?;
//! let hits = gov
//!     .run_or_degrade("search", search("rust"), |rejection| async move {
//!         // DEGRADE: served now from the cache; rejection.retry_after says
//!         // when the dependency may have room again.
//!         let _ = rejection.retry_after;
//!         cached("rust").await
//!     })
//!     .await?;
//!
//! // Or explicitly: a permit tells the pressure it was granted at.
//! let permit = gov.acquire("search").degradable(true).await?;
//! if permit.pressure() >= Pressure::Elevated {
//!     // skip the optional extras of this request
//! }
//! # let _ = hits; Ok(())
//! # }
//! ```
//!
//! # Failure handling
//!
//! When the sidecar gives no answer (`UNAVAILABLE`, `DEADLINE_EXCEEDED`,
//! `CANCELLED`, `UNKNOWN`, `INTERNAL`, `DATA_LOSS`), [`FailPolicy::Open`]
//! (the default) proceeds without a permit and counts it in [`Stats`];
//! [`FailPolicy::Closed`] returns [`AcquireError::Unavailable`]. A rejection
//! ([`AcquireError::Rejected`], every reason including `SHUTTING_DOWN`) and
//! every other code ([`AcquireError::Invalid`]: `INVALID_ARGUMENT`,
//! `NOT_FOUND`, `RESOURCE_EXHAUSTED`, ...) are errors under either policy.
//!
//! An Acquire's deadline is its `max_wait` plus [`ACQUIRE_DEADLINE_MARGIN`]
//! (1 s), or [`DEFAULT_ACQUIRE_TIMEOUT`] (1 h + 1 s: longer than any
//! `max_wait` the sidecar accepts) without one; HTTP/2 keepalive (a ping
//! every 10 s, 5 s to answer) notices a frozen sidecar sooner. Release has
//! 2 s, Renew min(TTL / 3, 2 s).
//!
//! # Tracing
//!
//! Every unary RPC carries the current OpenTelemetry context as W3C
//! `traceparent`/`tracestate` metadata, through the propagator installed with
//! `opentelemetry::global::set_text_map_propagator`. With `tracing` and
//! `tracing-opentelemetry` (0.32 or later, whose context activation is on by
//! default), the entered `tracing` span is that current context. Renewals
//! carry the context of the acquire; a drop-time release that of the drop.
//!
//! # Session
//!
//! Acquires go over one Session stream per [`Governor`], opened on the
//! first acquire: one message each way per permit, and the sidecar frees
//! the permits of a session the moment it ends (this process dies, the
//! connection drops), instead of after their lease TTL. A permit whose
//! session ended is reported by its release as [`ReleaseError::Lost`]; the
//! next acquire opens a new session (at most once per backoff, 50 ms
//! doubling to 5 s; the unary calls serve in between). A sidecar without
//! the Session RPC (`UNIMPLEMENTED`) is asked with the unary calls for
//! good ([`Governor::uses_unary_fallback`]). A session message carries no
//! metadata, so an acquire whose current trace context is *sampled* uses
//! the unary call, whose `traceparent` makes the sidecar's spans children
//! of the caller's; its permit is then not tied to the session (its TTL
//! bounds it, as before).
//!
//! # Runtime
//!
//! Requires a tokio runtime: the channel, lease renewal and drop-time
//! release run on it.

mod acquire;
mod duration;
mod error;
mod governor;
mod layer;
mod permit;
mod propagation;
mod retry;
mod session;
mod transport;

#[cfg(test)]
mod tests;

pub use acquire::Acquire;
pub use error::{AcquireError, GovernedError, Rejection, ReleaseError, RetryError};
pub use governor::{
    ACQUIRE_DEADLINE_MARGIN, DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_CALL_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT, FailPolicy,
    Governor, GovernorBuilder, MAX_SIDECAR_WAIT, Stats,
};
pub use layer::{GovernorLayer, GovernorService, ResponseFuture};
pub use permit::{LeaseHandle, Permit};
pub use rate_governor_proto::v1::{Outcome, Pressure, Priority, RejectReason};
pub use retry::RetryPolicy;
pub use transport::ConnectError;
