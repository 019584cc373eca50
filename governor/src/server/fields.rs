//! Reading request fields: every check names the field it is about, so a bad
//! request gets INVALID_ARGUMENT that says exactly what to fix.

use std::time::Duration;

use rate_governor_proto::v1;
use tonic::Status;

use crate::ledger::limit::{AdaptivePatch, Algorithm, AlgorithmChoice};
use crate::ledger::{
    self, BudgetConfig, DegradeAt, FairBy, FairnessPatch, FleetLimit, LeaseId, LimitsPatch,
    Outcome, Pressure, Priority, Rate, RatePatch,
};

/// Longest lease id accepted before it is even looked at.
const MAX_LEASE_ID_LEN: usize = 128;

pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

pub fn dependency(field: &str, name: &str) -> Result<(), Status> {
    ledger::check_dependency_name(name).map_err(|problem| invalid(field, problem))
}

/// A tenant or a route (`field`): at most 128 bytes, no control characters.
pub fn tenant(field: &str, name: &str) -> Result<(), Status> {
    match ledger::name_problem(name) {
        Some(problem) => Err(invalid(field, problem)),
        None => Ok(()),
    }
}

pub fn priority(value: i32) -> Result<Priority, Status> {
    match v1::Priority::try_from(value) {
        Ok(v1::Priority::Critical) => Ok(Priority::Critical),
        Ok(v1::Priority::Normal | v1::Priority::Unspecified) => Ok(Priority::Normal),
        Ok(v1::Priority::Sheddable) => Ok(Priority::Sheddable),
        Err(_) => Err(invalid("priority", format!("unknown value {value}"))),
    }
}

pub fn outcome(value: i32) -> Result<Outcome, Status> {
    match v1::Outcome::try_from(value) {
        Ok(v1::Outcome::Unspecified) => Ok(Outcome::Unspecified),
        Ok(v1::Outcome::Success) => Ok(Outcome::Success),
        Ok(v1::Outcome::Failure) => Ok(Outcome::Failure),
        Ok(v1::Outcome::Timeout) => Ok(Outcome::Timeout),
        Ok(v1::Outcome::Cancelled) => Ok(Outcome::Cancelled),
        Err(_) => Err(invalid("outcome", format!("unknown value {value}"))),
    }
}

/// A lease id as the ledger's type: `Some` if it has the form of one of
/// ours (an id of another form cannot be live, which is an answer, not an
/// error).
pub fn lease_id(id: &str) -> Result<Option<LeaseId>, Status> {
    if id.is_empty() {
        return Err(invalid("lease_id", "must not be empty"));
    }
    if id.len() > MAX_LEASE_ID_LEN {
        return Err(invalid(
            "lease_id",
            format!("must be at most {MAX_LEASE_ID_LEN} bytes, got {}", id.len()),
        ));
    }
    Ok(LeaseId::parse(id))
}

/// A protobuf duration as a `Duration`, refusing negative, malformed or
/// larger-than-`max` values.
pub fn duration(
    field: &str,
    value: &prost_types::Duration,
    max: Duration,
) -> Result<Duration, Status> {
    if value.seconds < 0 || value.nanos < 0 {
        return Err(invalid(field, "must not be negative"));
    }
    if value.nanos >= 1_000_000_000 {
        return Err(invalid(field, "nanos must be below 1000000000"));
    }
    let duration = Duration::new(value.seconds as u64, value.nanos as u32);
    if duration > max {
        return Err(invalid(
            field,
            format!("must be at most {}", humantime::format_duration(max)),
        ));
    }
    Ok(duration)
}

pub fn to_proto(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: duration.as_secs().min(i64::MAX as u64) as i64,
        nanos: duration.subsec_nanos() as i32,
    }
}

/// The control plane's limits message as a patch of the ledger's limits.
pub fn limits_patch(limits: Option<&v1::DependencyLimits>) -> Result<LimitsPatch, Status> {
    let Some(limits) = limits else {
        return Ok(LimitsPatch::default());
    };
    // Wide bounds here; the ledger checks the real ranges and names the field.
    let any = Duration::from_secs(u32::MAX as u64);
    let optional = |field, value: Option<&prost_types::Duration>| {
        value.map(|value| duration(field, value, any)).transpose()
    };
    let retry_budget = match &limits.retry_budget {
        None => None,
        Some(budget) => {
            let ttl = budget.ttl.as_ref().ok_or_else(|| {
                invalid("limits.retry_budget.ttl", "is required with a retry_budget")
            })?;
            Some(BudgetConfig {
                ratio: budget.ratio,
                min_per_second: budget.min_per_second,
                ttl: duration("limits.retry_budget.ttl", ttl, any)?,
            })
        }
    };
    let adaptive = limits
        .adaptive
        .as_ref()
        .map(|adaptive| adaptive_patch(adaptive, any))
        .transpose()?;
    Ok(LimitsPatch {
        adaptive,
        max_concurrency: limits.max_concurrency,
        max_queue: limits.max_queue,
        max_wait: optional("limits.max_wait", limits.max_wait.as_ref())?,
        lease_ttl: optional("limits.lease_ttl", limits.lease_ttl.as_ref())?,
        retry_budget,
        elevated_at: limits.elevated_at,
        degrade_at: degrade_at(limits.degrade_at)?,
        rate: limits.rate.as_ref().map(rate_patch),
        tenant_rate: limits.tenant_rate.as_ref().map(rate_patch),
        fairness: limits.fairness.as_ref().map(fairness_patch).transpose()?,
        fleet: limits.fleet.as_ref().map(fleet_patch).transpose()?,
    })
}

/// `by = NONE` turns fair shares off; zeros take the defaults. The ranges
/// are checked with the other limits (`limits.fairness.weights`).
fn fairness_patch(fairness: &v1::Fairness) -> Result<Option<FairnessPatch>, Status> {
    let by = match v1::FairBy::try_from(fairness.by) {
        Ok(v1::FairBy::None) => return Ok(None),
        Ok(v1::FairBy::Unspecified | v1::FairBy::Tenant) => FairBy::Tenant,
        Ok(v1::FairBy::TenantRoute) => FairBy::TenantRoute,
        Err(_) => {
            return Err(invalid(
                "limits.fairness.by",
                format!("unknown value {}", fairness.by),
            ));
        }
    };
    let nonzero = |value: u32| (value != 0).then_some(value);
    Ok(Some(FairnessPatch {
        by: Some(by),
        weights: fairness
            .weights
            .iter()
            .map(|(tenant, &weight)| (tenant.clone(), weight))
            .collect(),
        default_weight: nonzero(fairness.default_weight),
        max_tenants: nonzero(fairness.max_tenants),
    }))
}

pub fn fairness_to_proto(fairness: &ledger::Fairness) -> v1::Fairness {
    v1::Fairness {
        by: match fairness.by() {
            FairBy::Tenant => v1::FairBy::Tenant,
            FairBy::TenantRoute => v1::FairBy::TenantRoute,
        } as i32,
        weights: fairness
            .weights()
            .iter()
            .map(|(tenant, &weight)| (tenant.to_string(), weight))
            .collect(),
        default_weight: fairness.default_weight(),
        max_tenants: fairness.max_tenants(),
    }
}

/// `per_second = 0` removes the rate limit; `burst = 0` means 1. The
/// ranges are checked with the other limits (`limits.rate.per_second`).
/// `max_concurrency = 0` removes the fleet-wide limit.
fn fleet_patch(fleet: &v1::FleetLimits) -> Result<Option<FleetLimit>, Status> {
    if fleet.max_concurrency == 0 {
        return Ok(None);
    }
    FleetLimit::new(fleet.max_concurrency, fleet.fallback_share)
        .map(Some)
        .map_err(|e| invalid(&format!("limits.{}", e.field), e.problem))
}

pub fn fleet_limits_to_proto(fleet: FleetLimit) -> v1::FleetLimits {
    v1::FleetLimits {
        max_concurrency: fleet.max_concurrency(),
        fallback_share: fleet.fallback_share(),
    }
}

pub fn fleet_to_proto(fleet: &ledger::FleetStatus, now: tokio::time::Instant) -> v1::FleetStatus {
    let left = |until: Option<tokio::time::Instant>| {
        until
            .filter(|&until| until > now)
            .map(|until| to_proto(until - now))
    };
    v1::FleetStatus {
        mode: match fleet.mode {
            ledger::FleetMode::Starting => v1::FleetMode::Starting,
            ledger::FleetMode::Share => v1::FleetMode::Share,
            ledger::FleetMode::Learning => v1::FleetMode::Learning,
            ledger::FleetMode::Fallback => v1::FleetMode::Fallback,
        }
        .into(),
        max_concurrency: fleet.max_concurrency,
        share: fleet.share,
        target: fleet.target,
        enforced: fleet.enforced,
        demand: fleet.demand,
        fallback_share: fleet.fallback_share,
        instances: fleet.instances,
        valid_for: left(fleet.valid_until),
        learning_left: left(fleet.learning_until),
        store_calls_total: fleet.store_calls_total,
        store_errors_total: fleet.store_errors_total,
        store_latency: fleet.store_latency.map(to_proto),
        last_error: fleet.last_error.as_deref().unwrap_or_default().to_owned(),
    }
}

fn rate_patch(rate: &v1::RateLimit) -> Option<RatePatch> {
    (rate.per_second != 0.0).then(|| RatePatch {
        per_second: rate.per_second,
        burst: rate.burst.max(1),
    })
}

pub fn rate_to_proto(rate: Rate) -> v1::RateLimit {
    v1::RateLimit {
        per_second: rate.per_second(),
        burst: rate.burst(),
    }
}

fn degrade_at(value: i32) -> Result<Option<DegradeAt>, Status> {
    match v1::DegradeAt::try_from(value) {
        Ok(v1::DegradeAt::Unspecified) => Ok(None),
        Ok(v1::DegradeAt::Saturated) => Ok(Some(DegradeAt::Saturated)),
        Ok(v1::DegradeAt::Elevated) => Ok(Some(DegradeAt::Elevated)),
        Err(_) => Err(invalid(
            "limits.degrade_at",
            format!("unknown value {value}"),
        )),
    }
}

pub fn degrade_at_to_proto(value: DegradeAt) -> v1::DegradeAt {
    match value {
        DegradeAt::Saturated => v1::DegradeAt::Saturated,
        DegradeAt::Elevated => v1::DegradeAt::Elevated,
    }
}

pub fn pressure_to_proto(value: Pressure) -> v1::Pressure {
    match value {
        Pressure::None => v1::Pressure::None,
        Pressure::Elevated => v1::Pressure::Elevated,
        Pressure::Saturated => v1::Pressure::Saturated,
        Pressure::Overloaded => v1::Pressure::Overloaded,
    }
}

fn adaptive_patch(adaptive: &v1::AdaptiveLimit, any: Duration) -> Result<AdaptivePatch, Status> {
    let algorithm = match v1::LimitAlgorithm::try_from(adaptive.algorithm) {
        Ok(v1::LimitAlgorithm::Unspecified) => None,
        Ok(v1::LimitAlgorithm::Static) => Some(AlgorithmChoice::Static),
        Ok(v1::LimitAlgorithm::Gradient) => Some(AlgorithmChoice::Adaptive(Algorithm::Gradient)),
        Ok(v1::LimitAlgorithm::Vegas) => Some(AlgorithmChoice::Adaptive(Algorithm::Vegas)),
        Ok(v1::LimitAlgorithm::Aimd) => Some(AlgorithmChoice::Adaptive(Algorithm::Aimd)),
        Err(_) => {
            return Err(invalid(
                "limits.adaptive.algorithm",
                format!("unknown value {}", adaptive.algorithm),
            ));
        }
    };
    let window = adaptive
        .window
        .as_ref()
        .map(|window| duration("limits.adaptive.window", window, any))
        .transpose()?;
    Ok(AdaptivePatch {
        algorithm,
        min_limit: adaptive.min_limit,
        initial_limit: adaptive.initial_limit,
        shadow: adaptive.shadow,
        window,
        min_samples: adaptive.min_samples,
        baseline_windows: adaptive.baseline_windows,
        drop_threshold: adaptive.drop_threshold,
        backoff: adaptive.backoff,
        tolerance: adaptive.tolerance,
        alpha: adaptive.alpha,
        beta: adaptive.beta,
    })
}

pub fn algorithm_to_proto(algorithm: Option<Algorithm>) -> v1::LimitAlgorithm {
    match algorithm {
        None => v1::LimitAlgorithm::Static,
        Some(Algorithm::Gradient) => v1::LimitAlgorithm::Gradient,
        Some(Algorithm::Vegas) => v1::LimitAlgorithm::Vegas,
        Some(Algorithm::Aimd) => v1::LimitAlgorithm::Aimd,
    }
}
