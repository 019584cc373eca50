//! `governor.v1.Governor`: Acquire, Release and Renew over the ledger.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rate_governor_proto::v1::{self, governor_server};
use tonic::{Request, Response, Status};

use super::deadline;
use super::delivery::Undelivered;
use super::fields;
use super::session;
use crate::ledger::{AcquireRequest, Decision, Ledger, MAX_WAIT, Priority, RejectReason, Report};
use crate::telemetry::{AcquireFields, AcquireTrace, Telemetry};

/// The data plane.
#[derive(Clone, Debug)]
pub struct GovernorService {
    ledger: Arc<Ledger>,
    telemetry: Arc<Telemetry>,
}

impl GovernorService {
    pub fn new(ledger: Arc<Ledger>, telemetry: Arc<Telemetry>) -> Self {
        GovernorService { ledger, telemetry }
    }
}

/// Ends the Acquire's spans as cancelled if the caller goes away mid-wait.
///
/// The trace is boxed: a waiting Acquire's future holds the guard (and the
/// trace on its way in) for the whole wait, and without tracing a box
/// costs nothing, where the inline trace took room in every waiter.
pub(super) struct TraceGuard<'a> {
    telemetry: &'a Telemetry,
    trace: Option<Box<AcquireTrace>>,
}

impl<'a> TraceGuard<'a> {
    pub(super) fn new(telemetry: &'a Telemetry, trace: Option<Box<AcquireTrace>>) -> Self {
        TraceGuard { telemetry, trace }
    }

    /// The trace, for the decision's telemetry; the guard is disarmed.
    pub(super) fn take(&mut self) -> Option<AcquireTrace> {
        self.trace.take().map(|trace| *trace)
    }
}

impl Drop for TraceGuard<'_> {
    fn drop(&mut self) {
        if let Some(trace) = self.take() {
            self.telemetry.acquire_cancelled(trace);
        }
    }
}

fn reject_reason(reason: RejectReason) -> v1::RejectReason {
    match reason {
        RejectReason::QueueFull => v1::RejectReason::QueueFull,
        RejectReason::QueueTimeout => v1::RejectReason::QueueTimeout,
        RejectReason::RetryBudgetExhausted => v1::RejectReason::RetryBudgetExhausted,
        RejectReason::Shed => v1::RejectReason::Shed,
        RejectReason::ShuttingDown => v1::RejectReason::ShuttingDown,
        RejectReason::RateLimited => v1::RejectReason::RateLimited,
        RejectReason::Degrade => v1::RejectReason::Degrade,
    }
}

/// An Acquire's fields, checked; `caller_wait` is what the caller's
/// deadline leaves (none on a stream).
pub(super) fn acquire_params(
    message: &v1::AcquireRequest,
    caller_wait: Option<Duration>,
) -> Result<(Priority, Option<Duration>), Status> {
    fields::dependency("dependency", &message.dependency)?;
    fields::tenant("tenant", &message.tenant)?;
    fields::tenant("route", &message.route)?;
    let priority = fields::priority(message.priority)?;
    let requested_wait = message
        .max_wait
        .as_ref()
        .map(|wait| fields::duration("max_wait", wait, MAX_WAIT))
        .transpose()?;
    let max_wait = match (requested_wait, caller_wait) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok((priority, max_wait))
}

/// The telemetry's view of an Acquire.
pub(super) fn acquire_fields(
    message: &v1::AcquireRequest,
    priority: Priority,
) -> AcquireFields<'_> {
    AcquireFields {
        dependency: &message.dependency,
        tenant: &message.tenant,
        route: &message.route,
        priority,
        attempt: message.attempt,
    }
}

pub(super) fn acquire_response(decision: &Decision) -> v1::AcquireResponse {
    let mut response = v1::AcquireResponse {
        queue_wait: Some(fields::to_proto(decision.queue_wait)),
        limit: decision.snapshot.limit,
        in_flight: decision.snapshot.in_flight,
        queued: decision.snapshot.queued,
        ..Default::default()
    };
    response.set_pressure(fields::pressure_to_proto(decision.snapshot.pressure));
    match decision.outcome {
        Ok(grant) => {
            response.granted = true;
            response.lease_id = grant.lease.to_string();
            response.lease_ttl = Some(fields::to_proto(grant.ttl));
        }
        Err(rejection) => {
            response.set_reason(reject_reason(rejection.reason));
            response.retry_after = Some(fields::to_proto(rejection.retry_after));
        }
    }
    response
}

impl GovernorService {
    pub(super) fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    pub(super) fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Release, on either path.
    pub(super) fn release_message(
        &self,
        message: &v1::ReleaseRequest,
    ) -> Result<v1::ReleaseResponse, Status> {
        let lease = fields::lease_id(&message.lease_id)?;
        let outcome = fields::outcome(message.outcome)?;
        let latency = message
            .latency
            .as_ref()
            .map(|latency| fields::duration("latency", latency, Duration::from_secs(24 * 3600)))
            .transpose()?;
        let report = Report::new(outcome, latency);
        let ended = lease.and_then(|lease| self.ledger.release(&lease, report));
        if let Some(ended) = &ended {
            self.telemetry.released(ended, latency);
        }
        Ok(v1::ReleaseResponse {
            released: ended.is_some(),
        })
    }

    /// Renew, on either path.
    pub(super) fn renew_message(
        &self,
        message: &v1::RenewRequest,
    ) -> Result<v1::RenewResponse, Status> {
        let lease = fields::lease_id(&message.lease_id)?;
        Ok(
            match lease.and_then(|lease| self.ledger.renew(&lease).map(|r| (lease, r))) {
                Some((lease, (_, ttl))) => {
                    self.telemetry.renewed(&lease);
                    v1::RenewResponse {
                        renewed: true,
                        lease_ttl: Some(fields::to_proto(ttl)),
                    }
                }
                None => v1::RenewResponse {
                    renewed: false,
                    lease_ttl: None,
                },
            },
        )
    }
}

impl GovernorService {
    /// An Acquire past its checks: asks the ledger (waiting in the queue if
    /// it must), then answers. Holds nothing the answer does not need.
    async fn acquire_queued(
        &self,
        message: v1::AcquireRequest,
        priority: Priority,
        max_wait: Option<Duration>,
        peer: Option<crate::ledger::Peer>,
        mut guard: TraceGuard<'_>,
    ) -> Result<Response<v1::AcquireResponse>, Status> {
        let request = AcquireRequest {
            dependency: &message.dependency,
            tenant: (!message.tenant.is_empty()).then_some(message.tenant.as_str()),
            route: (!message.route.is_empty()).then_some(message.route.as_str()),
            attempt: message.attempt,
            priority,
            max_wait,
            degradable: message.degradable,
        };
        let decision = self.ledger.acquire_as(&request, peer).await;
        let trace = guard.take();
        let decision = decision?;
        let fields = acquire_fields(&message, priority);
        self.telemetry
            .acquire_finished(&self.ledger, trace, &fields, &decision);
        let response = acquire_response(&decision);
        if let Ok(grant) = &decision.outcome {
            // Released if the response never reaches the caller.
            let guard = Undelivered::new(self.ledger.clone(), self.telemetry.clone(), grant.lease);
            let mut response = Response::new(response);
            response.extensions_mut().insert(guard);
            return Ok(response);
        }
        Ok(Response::new(response))
    }
}

/// What an Acquire's future holds, boxed by [`governor_server::Governor::acquire`].
type AcquireFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Response<v1::AcquireResponse>, Status>> + Send + 'a>>;

#[tonic::async_trait]
impl governor_server::Governor for GovernorService {
    /// Written out instead of `async fn` (which `async_trait` boxes with the
    /// whole request in it): the checks, the peer and the trace's start run
    /// here, before the future exists, and the request's headers and
    /// extensions (tonic's connection info, the router's path parameters:
    /// about 0.5 KiB of heap) are dropped, so that a queued call's box holds
    /// only the message, the trace and the ledger's wait (the README's
    /// memory section, "where a waiter's heap goes").
    fn acquire<'life0, 'async_trait>(
        &'life0 self,
        request: Request<v1::AcquireRequest>,
    ) -> AcquireFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let caller_wait = deadline::grpc_timeout(request.metadata()).map(deadline::wait_budget);
        let (metadata, extensions, message) = request.into_parts();
        let (priority, max_wait) = match acquire_params(&message, caller_wait) {
            Ok(params) => params,
            Err(status) => return Box::pin(std::future::ready(Err(status))),
        };
        let peer = super::peer_of(&extensions);
        drop(extensions);
        // Armed from here: a call dropped even before its first poll ends
        // its spans as cancelled.
        let trace = self
            .telemetry
            .acquire_started(&metadata, &acquire_fields(&message, priority));
        let guard = TraceGuard::new(&self.telemetry, trace.map(Box::new));
        drop(metadata);
        Box::pin(self.acquire_queued(message, priority, max_wait, peer, guard))
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        self.release_message(&request.into_inner())
            .map(Response::new)
    }

    async fn renew(
        &self,
        request: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        self.renew_message(&request.into_inner()).map(Response::new)
    }

    type SessionStream = session::ResponseStream;

    async fn session(
        &self,
        request: Request<tonic::Streaming<v1::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Ok(Response::new(session::start(self.clone(), request)))
    }
}
