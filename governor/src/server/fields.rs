//! Reading request fields: every check names the field it is about, so a bad
//! request gets INVALID_ARGUMENT that says exactly what to fix.

use std::time::Duration;

use rate_governor_proto::v1;
use tonic::Status;

use crate::ledger::{self, BudgetConfig, LimitsPatch, Priority};

/// Longest tenant, in bytes.
pub const MAX_TENANT_LEN: usize = 128;
/// Longest lease id accepted before it is even looked at.
const MAX_LEASE_ID_LEN: usize = 128;

pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

pub fn dependency(field: &str, name: &str) -> Result<(), Status> {
    ledger::check_dependency_name(name).map_err(|problem| invalid(field, problem))
}

pub fn tenant(tenant: &str) -> Result<(), Status> {
    if tenant.len() > MAX_TENANT_LEN {
        return Err(invalid(
            "tenant",
            format!(
                "must be at most {MAX_TENANT_LEN} bytes, got {}",
                tenant.len()
            ),
        ));
    }
    if tenant.chars().any(char::is_control) {
        return Err(invalid("tenant", "must not contain control characters"));
    }
    Ok(())
}

pub fn priority(value: i32) -> Result<Priority, Status> {
    match v1::Priority::try_from(value) {
        Ok(v1::Priority::Critical) => Ok(Priority::Critical),
        Ok(v1::Priority::Normal | v1::Priority::Unspecified) => Ok(Priority::Normal),
        Ok(v1::Priority::Sheddable) => Ok(Priority::Sheddable),
        Err(_) => Err(invalid("priority", format!("unknown value {value}"))),
    }
}

pub fn outcome(value: i32) -> Result<v1::Outcome, Status> {
    v1::Outcome::try_from(value).map_err(|_| invalid("outcome", format!("unknown value {value}")))
}

pub fn lease_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(invalid("lease_id", "must not be empty"));
    }
    if id.len() > MAX_LEASE_ID_LEN {
        return Err(invalid(
            "lease_id",
            format!("must be at most {MAX_LEASE_ID_LEN} bytes, got {}", id.len()),
        ));
    }
    Ok(())
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
    Ok(LimitsPatch {
        max_concurrency: limits.max_concurrency,
        max_queue: limits.max_queue,
        max_wait: optional("limits.max_wait", limits.max_wait.as_ref())?,
        lease_ttl: optional("limits.lease_ttl", limits.lease_ttl.as_ref())?,
        retry_budget,
    })
}
