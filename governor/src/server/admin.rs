//! `governor.v1.GovernorAdmin`: the control plane, inspect and change limits.

use std::sync::Arc;

use rate_governor_proto::v1::{self, governor_admin_server};
use tonic::{Request, Response, Status};

use super::fields;
use crate::ledger::{DependencyStatus, Ledger, TenantStatus};

#[derive(Clone, Debug)]
pub struct AdminService {
    ledger: Arc<Ledger>,
}

impl AdminService {
    pub fn new(ledger: Arc<Ledger>) -> Self {
        AdminService { ledger }
    }
}

fn to_proto(status: DependencyStatus) -> v1::DependencyStatus {
    let limits = &status.limits;
    let budget = limits.retry_budget();
    let computed = status.limit.adaptive;
    let adaptive = limits.adaptive().map(|config| v1::AdaptiveLimit {
        algorithm: fields::algorithm_to_proto(Some(config.algorithm())).into(),
        min_limit: Some(config.min_limit()),
        initial_limit: Some(config.initial_limit()),
        shadow: Some(config.shadow()),
        window: Some(fields::to_proto(config.window())),
        min_samples: Some(config.min_samples()),
        baseline_windows: Some(config.baseline_windows()),
        drop_threshold: Some(config.drop_threshold()),
        backoff: Some(config.backoff()),
        tolerance: Some(config.tolerance()),
        alpha: Some(config.alpha()),
        beta: Some(config.beta()),
    });
    v1::DependencyStatus {
        limit: status.limit.enforced,
        adaptive_limit: computed.map_or(0, |a| a.limit),
        limit_algorithm: fields::algorithm_to_proto(computed.map(|a| a.algorithm)).into(),
        adaptive,
        latency_baseline: computed.and_then(|a| a.baseline).map(fields::to_proto),
        latency_recent: computed.and_then(|a| a.recent).map(fields::to_proto),
        limit_changes_total: status.limit_changes_total,
        pressure: fields::pressure_to_proto(status.pressure).into(),
        elevated_at: limits.elevated_at(),
        degrade_at: fields::degrade_at_to_proto(limits.degrade_at()).into(),
        rate: limits.rate().map(fields::rate_to_proto),
        tenant_rate: limits.tenant_rate().map(fields::rate_to_proto),
        rated_tenants: status.rated_tenants,
        delayed: status.delayed,
        fairness: limits.fairness().map(fields::fairness_to_proto),
        tenants_tracked: status.fair.tracked,
        fleet_limits: limits.fleet().map(fields::fleet_limits_to_proto),
        fleet: status
            .fleet
            .as_ref()
            .map(|fleet| fields::fleet_to_proto(fleet, tokio::time::Instant::now())),
        tenants: status.fair.tenants.iter().map(tenant_to_proto).collect(),
        name: status.name.to_string(),
        max_concurrency: limits.max_concurrency(),
        in_flight: status.in_flight,
        queued: status.queued,
        max_queue: limits.max_queue(),
        max_wait: Some(fields::to_proto(limits.max_wait())),
        lease_ttl: Some(fields::to_proto(limits.lease_ttl())),
        retry_budget_available: status.retry_budget_available,
        granted_total: status.granted_total,
        rejected_total: status.rejected_total,
        expired_total: status.expired_total,
        retry_budget: Some(v1::RetryBudget {
            ratio: budget.ratio,
            min_per_second: budget.min_per_second,
            ttl: Some(fields::to_proto(budget.ttl)),
        }),
    }
}

fn tenant_to_proto(tenant: &TenantStatus) -> v1::TenantStatus {
    v1::TenantStatus {
        tenant: tenant.tenant.to_string(),
        overflow: tenant.overflow,
        named: tenant.named,
        weight: tenant.weight,
        in_flight: tenant.in_flight,
        queued: tenant.queued,
        share: tenant.share,
        granted_total: tenant.granted_total,
        rejected_total: tenant.rejected_total,
        routes: tenant
            .routes
            .iter()
            .map(|route| v1::RouteStatus {
                route: route.route.to_string(),
                in_flight: route.in_flight,
                queued: route.queued,
                share: route.share,
                granted_total: route.granted_total,
                rejected_total: route.rejected_total,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl governor_admin_server::GovernorAdmin for AdminService {
    async fn list_dependencies(
        &self,
        _request: Request<v1::ListDependenciesRequest>,
    ) -> Result<Response<v1::ListDependenciesResponse>, Status> {
        let dependencies = self.ledger.statuses().into_iter().map(to_proto).collect();
        Ok(Response::new(v1::ListDependenciesResponse { dependencies }))
    }

    async fn get_dependency(
        &self,
        request: Request<v1::GetDependencyRequest>,
    ) -> Result<Response<v1::DependencyStatus>, Status> {
        let name = request.into_inner().name;
        fields::dependency("name", &name)?;
        match self.ledger.status(&name) {
            Some(status) => Ok(Response::new(to_proto(status))),
            None => Err(Status::not_found(format!("name: no dependency {name:?}"))),
        }
    }

    async fn update_dependency(
        &self,
        request: Request<v1::UpdateDependencyRequest>,
    ) -> Result<Response<v1::DependencyStatus>, Status> {
        let message = request.into_inner();
        fields::dependency("name", &message.name)?;
        let patch = fields::limits_patch(message.limits.as_ref())?;
        let status = self.ledger.update(&message.name, &patch)?;
        Ok(Response::new(to_proto(status)))
    }
}
