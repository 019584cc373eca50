//! `governor.v1.Governor`: Acquire, Release and Renew over the ledger.

use std::sync::Arc;
use std::time::Duration;

use rate_governor_proto::v1::{self, governor_server};
use tonic::{Request, Response, Status};

use super::deadline;
use super::fields;
use crate::ledger::{AcquireRequest, Ledger, MAX_WAIT, RejectReason};

/// The data plane.
#[derive(Clone, Debug)]
pub struct GovernorService {
    ledger: Arc<Ledger>,
}

impl GovernorService {
    pub fn new(ledger: Arc<Ledger>) -> Self {
        GovernorService { ledger }
    }
}

fn reject_reason(reason: RejectReason) -> v1::RejectReason {
    match reason {
        RejectReason::QueueFull => v1::RejectReason::QueueFull,
        RejectReason::QueueTimeout => v1::RejectReason::QueueTimeout,
        RejectReason::RetryBudgetExhausted => v1::RejectReason::RetryBudgetExhausted,
        RejectReason::Shed => v1::RejectReason::Shed,
        RejectReason::ShuttingDown => v1::RejectReason::ShuttingDown,
    }
}

#[tonic::async_trait]
impl governor_server::Governor for GovernorService {
    async fn acquire(
        &self,
        request: Request<v1::AcquireRequest>,
    ) -> Result<Response<v1::AcquireResponse>, Status> {
        let caller_wait = deadline::grpc_timeout(request.metadata()).map(deadline::wait_budget);
        let message = request.into_inner();
        fields::dependency("dependency", &message.dependency)?;
        fields::tenant(&message.tenant)?;
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

        let request = AcquireRequest {
            dependency: &message.dependency,
            attempt: message.attempt,
            priority,
            max_wait,
        };
        let decision = self.ledger.acquire(&request).await?;

        let mut response = v1::AcquireResponse {
            queue_wait: Some(fields::to_proto(decision.queue_wait)),
            limit: decision.snapshot.limit,
            in_flight: decision.snapshot.in_flight,
            queued: decision.snapshot.queued,
            ..Default::default()
        };
        match decision.outcome {
            Ok(grant) => {
                response.granted = true;
                response.lease_id = grant.lease.to_string();
                response.lease_ttl = Some(fields::to_proto(grant.ttl));
            }
            Err(rejection) => {
                tracing::debug!(
                    dependency = %message.dependency,
                    reason = rejection.reason.as_str(),
                    limit = decision.snapshot.limit,
                    in_flight = decision.snapshot.in_flight,
                    queued = decision.snapshot.queued,
                    "acquire rejected"
                );
                response.set_reason(reject_reason(rejection.reason));
                response.retry_after = Some(fields::to_proto(rejection.retry_after));
            }
        }
        Ok(Response::new(response))
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let message = request.into_inner();
        fields::lease_id(&message.lease_id)?;
        fields::outcome(message.outcome)?;
        if let Some(latency) = &message.latency {
            fields::duration("latency", latency, Duration::from_secs(24 * 3600))?;
        }
        let released = self.ledger.release(&message.lease_id).is_some();
        Ok(Response::new(v1::ReleaseResponse { released }))
    }

    async fn renew(
        &self,
        request: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        let message = request.into_inner();
        fields::lease_id(&message.lease_id)?;
        let response = match self.ledger.renew(&message.lease_id) {
            Some((_, ttl)) => v1::RenewResponse { renewed: true, lease_ttl: Some(fields::to_proto(ttl)) },
            None => v1::RenewResponse { renewed: false, lease_ttl: None },
        };
        Ok(Response::new(response))
    }
}

