//! Per-dependency limits, validated once at the edge so that the ledger never
//! sees an impossible value.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::limit::{AdaptiveConfig, AdaptivePatch};
use super::rate::Rate;

/// The limits of one dependency. Built only through [`Limits::patched`], which
/// validates every field, so a `Limits` in hand is always usable.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    max_concurrency: u32,
    max_queue: u32,
    max_wait: Duration,
    lease_ttl: Duration,
    retry_budget: BudgetConfig,
    adaptive: Option<AdaptiveConfig>,
    elevated_at: f64,
    degrade_at: DegradeAt,
    /// `None`: no rate limit.
    rate: Option<Rate>,
    /// `None`: no per-tenant rate limit.
    tenant_rate: Option<Rate>,
    /// `None`: no fair shares, one queue for everyone.
    fairness: Option<Fairness>,
    /// `None`: no fleet-wide limit.
    fleet: Option<FleetLimit>,
}

/// A limit shared by every sidecar of a fleet (through the fleet store):
/// this sidecar enforces its share of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetLimit {
    max_concurrency: u32,
    fallback_share: u32,
}

impl FleetLimit {
    /// `max_concurrency` in [1, [`MAX_CONCURRENCY`]], `fallback_share` at
    /// most `max_concurrency`.
    pub fn new(max_concurrency: u32, fallback_share: u32) -> Result<FleetLimit, InvalidLimit> {
        if !(1..=MAX_CONCURRENCY).contains(&max_concurrency) {
            return Err(InvalidLimit {
                field: "fleet.max_concurrency",
                problem: format!("must be between 1 and {MAX_CONCURRENCY}, got {max_concurrency}"),
            });
        }
        if fallback_share > max_concurrency {
            return Err(InvalidLimit {
                field: "fleet.fallback_share",
                problem: format!(
                    "must be at most fleet.max_concurrency ({max_concurrency}), got {fallback_share}"
                ),
            });
        }
        Ok(FleetLimit {
            max_concurrency,
            fallback_share,
        })
    }

    /// Permits in flight across every sidecar sharing the store.
    pub fn max_concurrency(&self) -> u32 {
        self.max_concurrency
    }

    /// What this sidecar may use alone while the store is unreachable.
    pub fn fallback_share(&self) -> u32 {
        self.fallback_share
    }
}

/// Weighted fair shares of the permits between tenants (and their routes).
#[derive(Clone, Debug, PartialEq)]
pub struct Fairness {
    by: FairBy,
    /// Each named tenant's weight; named tenants are always tracked and have
    /// metrics of their own.
    weights: Arc<BTreeMap<Arc<str>, u32>>,
    default_weight: u32,
    max_tenants: u32,
}

/// What a fair share is taken by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FairBy {
    /// Each tenant (`AcquireRequest.tenant`; none is a tenant of its own).
    Tenant,
    /// Each tenant, and within a tenant's part each of its routes equally.
    TenantRoute,
}

impl FairBy {
    pub fn as_str(self) -> &'static str {
        match self {
            FairBy::Tenant => "tenant",
            FairBy::TenantRoute => "tenant_route",
        }
    }
}

/// Fair shares as they come in, checked by [`Limits::patched`]; the unset
/// fields take the built-in defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FairnessPatch {
    pub by: Option<FairBy>,
    pub weights: BTreeMap<String, u32>,
    pub default_weight: Option<u32>,
    pub max_tenants: Option<u32>,
}

/// Tenants (and routes) a dependency tracks unless `max_tenants` says otherwise.
pub const DEFAULT_MAX_TENANTS: u32 = 1024;
pub const MAX_TENANTS: u32 = 100_000;
pub const MAX_WEIGHT: u32 = 1000;
/// Longest tenant or route name, in bytes (the shell checks requests against it).
pub const MAX_TENANT_LEN: usize = 128;

impl Fairness {
    pub fn by(&self) -> FairBy {
        self.by
    }
    pub fn weights(&self) -> &BTreeMap<Arc<str>, u32> {
        &self.weights
    }
    pub fn default_weight(&self) -> u32 {
        self.default_weight
    }
    pub fn max_tenants(&self) -> u32 {
        self.max_tenants
    }
    /// The weight of `tenant`, and whether it is named.
    pub fn weight_of(&self, tenant: &str) -> (u32, bool) {
        match self.weights.get(tenant) {
            Some(&weight) => (weight, true),
            None => (self.default_weight, false),
        }
    }

    fn new(patch: &FairnessPatch) -> Result<Fairness, InvalidLimit> {
        let bad = |field, problem: String| Err(InvalidLimit { field, problem });
        let default_weight = patch.default_weight.unwrap_or(1);
        if !(1..=MAX_WEIGHT).contains(&default_weight) {
            return bad(
                "fairness.default_weight",
                format!("must be between 1 and {MAX_WEIGHT}, got {default_weight}"),
            );
        }
        let max_tenants = patch.max_tenants.unwrap_or(DEFAULT_MAX_TENANTS);
        if !(1..=MAX_TENANTS).contains(&max_tenants) {
            return bad(
                "fairness.max_tenants",
                format!("must be between 1 and {MAX_TENANTS}, got {max_tenants}"),
            );
        }
        if patch.weights.len() > max_tenants as usize {
            return bad(
                "fairness.weights",
                format!(
                    "names {} tenants, more than max_tenants ({max_tenants})",
                    patch.weights.len()
                ),
            );
        }
        let mut weights = BTreeMap::new();
        for (tenant, &weight) in &patch.weights {
            if let Some(problem) = name_problem(tenant) {
                return bad("fairness.weights", format!("tenant {tenant:?} {problem}"));
            }
            if !(1..=MAX_WEIGHT).contains(&weight) {
                return bad(
                    "fairness.weights",
                    format!("tenant {tenant:?}: must be between 1 and {MAX_WEIGHT}, got {weight}"),
                );
            }
            weights.insert(Arc::from(tenant.as_str()), weight);
        }
        Ok(Fairness {
            by: patch.by.unwrap_or(FairBy::Tenant),
            weights: Arc::new(weights),
            default_weight,
            max_tenants,
        })
    }
}

/// What is wrong with a tenant or route name, if anything: at most
/// [`MAX_TENANT_LEN`] bytes, no control characters.
pub fn name_problem(name: &str) -> Option<String> {
    if name.len() > MAX_TENANT_LEN {
        Some(format!(
            "must be at most {MAX_TENANT_LEN} bytes, got {}",
            name.len()
        ))
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters".to_owned())
    } else {
        None
    }
}

/// From which pressure on a degradable request is answered DEGRADE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DegradeAt {
    /// Only when it would have to wait: no free slot, or waiters ahead.
    #[default]
    Saturated,
    /// Also when a slot is free but the pressure before the decision is
    /// elevated or worse: headroom for the callers without a fallback.
    Elevated,
}

impl DegradeAt {
    pub fn as_str(self) -> &'static str {
        match self {
            DegradeAt::Saturated => "saturated",
            DegradeAt::Elevated => "elevated",
        }
    }
}

/// Finagle-style retry budget settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// Tokens each first attempt deposits; a retry costs one.
    pub ratio: f64,
    /// Retries per second that are always allowed, whatever the ratio says.
    pub min_per_second: u32,
    /// How long a deposit (and a withdrawal) counts.
    pub ttl: Duration,
}

/// A change to some of a dependency's limits; `None` keeps the current value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LimitsPatch {
    pub max_concurrency: Option<u32>,
    pub max_queue: Option<u32>,
    pub max_wait: Option<Duration>,
    pub lease_ttl: Option<Duration>,
    pub retry_budget: Option<BudgetConfig>,
    /// Merged over the current adaptive settings (see [`AdaptiveConfig::patched`]).
    pub adaptive: Option<AdaptivePatch>,
    pub elevated_at: Option<f64>,
    pub degrade_at: Option<DegradeAt>,
    /// `Some(None)` removes the rate limit.
    pub rate: Option<Option<RatePatch>>,
    /// The same for the per-tenant rate limit.
    pub tenant_rate: Option<Option<RatePatch>>,
    /// `Some(None)` turns fair shares off; `Some(Some(_))` replaces them.
    pub fairness: Option<Option<FairnessPatch>>,
    /// `Some(None)` removes the fleet limit; `Some(Some(_))` sets it.
    pub fleet: Option<Option<FleetLimit>>,
}

/// A rate limit as it comes in, checked by [`Limits::patched`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RatePatch {
    pub per_second: f64,
    pub burst: u32,
}

/// A limit outside its allowed range. `field` is the limit's config key.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidLimit {
    pub field: &'static str,
    pub problem: String,
}

pub const MAX_CONCURRENCY: u32 = 1_000_000;
pub const MAX_QUEUE: u32 = 1_000_000;
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(100);
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MIN_BUDGET_TTL: Duration = Duration::from_secs(1);
pub const MAX_BUDGET_TTL: Duration = Duration::from_secs(3600);
pub const MAX_BUDGET_RATIO: f64 = 1000.0;
pub const MAX_MIN_RETRIES_PER_SECOND: u32 = 1_000_000;
/// The built-in share of the enforced limit from which pressure is elevated.
pub const ELEVATED_AT: f64 = 0.7;

impl Default for Limits {
    /// The sidecar's built-in defaults.
    fn default() -> Self {
        Limits {
            max_concurrency: 64,
            max_queue: 256,
            max_wait: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(30),
            retry_budget: BudgetConfig::default(),
            adaptive: None,
            elevated_at: ELEVATED_AT,
            degrade_at: DegradeAt::Saturated,
            rate: None,
            tenant_rate: None,
            fairness: None,
            fleet: None,
        }
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

impl Limits {
    pub fn max_concurrency(&self) -> u32 {
        self.max_concurrency
    }
    pub fn max_queue(&self) -> u32 {
        self.max_queue
    }
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }
    pub fn retry_budget(&self) -> BudgetConfig {
        self.retry_budget
    }
    /// `None`: the limit is `max_concurrency`, static.
    pub fn adaptive(&self) -> Option<&AdaptiveConfig> {
        self.adaptive.as_ref()
    }
    /// In (0, 1]: from this share of the enforced limit in use, pressure is
    /// elevated.
    pub fn elevated_at(&self) -> f64 {
        self.elevated_at
    }
    pub fn degrade_at(&self) -> DegradeAt {
        self.degrade_at
    }
    /// `None`: no rate limit.
    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }
    /// Each tenant's own rate limit; `None`: none.
    pub fn tenant_rate(&self) -> Option<Rate> {
        self.tenant_rate
    }
    /// Fair shares between tenants; `None`: one queue for everyone.
    pub fn fairness(&self) -> Option<&Fairness> {
        self.fairness.as_ref()
    }
    /// The fleet-wide limit this sidecar takes a share of; `None`: none.
    pub fn fleet(&self) -> Option<FleetLimit> {
        self.fleet
    }

    /// These limits with `patch` applied, or the first field that is out of range.
    pub fn patched(&self, patch: &LimitsPatch) -> Result<Limits, InvalidLimit> {
        let limits = Limits {
            max_concurrency: patch.max_concurrency.unwrap_or(self.max_concurrency),
            max_queue: patch.max_queue.unwrap_or(self.max_queue),
            max_wait: patch.max_wait.unwrap_or(self.max_wait),
            lease_ttl: patch.lease_ttl.unwrap_or(self.lease_ttl),
            retry_budget: patch.retry_budget.unwrap_or(self.retry_budget),
            adaptive: match &patch.adaptive {
                Some(adaptive) => AdaptiveConfig::patched(self.adaptive.as_ref(), adaptive)?,
                None => self.adaptive,
            },
            elevated_at: patch.elevated_at.unwrap_or(self.elevated_at),
            degrade_at: patch.degrade_at.unwrap_or(self.degrade_at),
            rate: patched_rate(self.rate, patch.rate, false)?,
            tenant_rate: patched_rate(self.tenant_rate, patch.tenant_rate, true)?,
            fairness: match &patch.fairness {
                None => self.fairness.clone(),
                Some(None) => None,
                Some(Some(fairness)) => Some(Fairness::new(fairness)?),
            },
            fleet: patch.fleet.unwrap_or(self.fleet),
        };
        limits.validate()?;
        Ok(limits)
    }

    fn validate(&self) -> Result<(), InvalidLimit> {
        let bad = |field, problem: String| Err(InvalidLimit { field, problem });
        if !(1..=MAX_CONCURRENCY).contains(&self.max_concurrency) {
            return bad(
                "max_concurrency",
                format!(
                    "must be between 1 and {MAX_CONCURRENCY}, got {}",
                    self.max_concurrency
                ),
            );
        }
        if self.max_queue > MAX_QUEUE {
            return bad(
                "max_queue",
                format!("must be at most {MAX_QUEUE}, got {}", self.max_queue),
            );
        }
        if self.max_wait > MAX_WAIT {
            return bad(
                "max_wait",
                format!(
                    "must be at most {}, got {:?}",
                    humantime::format_duration(MAX_WAIT),
                    self.max_wait
                ),
            );
        }
        if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&self.lease_ttl) {
            return bad(
                "lease_ttl",
                format!(
                    "must be between {} and {}, got {:?}",
                    humantime::format_duration(MIN_LEASE_TTL),
                    humantime::format_duration(MAX_LEASE_TTL),
                    self.lease_ttl
                ),
            );
        }
        let budget = &self.retry_budget;
        if !budget.ratio.is_finite() || !(0.0..=MAX_BUDGET_RATIO).contains(&budget.ratio) {
            return bad(
                "retry_budget.ratio",
                format!(
                    "must be between 0 and {MAX_BUDGET_RATIO}, got {}",
                    budget.ratio
                ),
            );
        }
        if budget.min_per_second > MAX_MIN_RETRIES_PER_SECOND {
            return bad(
                "retry_budget.min_per_second",
                format!(
                    "must be at most {MAX_MIN_RETRIES_PER_SECOND}, got {}",
                    budget.min_per_second
                ),
            );
        }
        if !(MIN_BUDGET_TTL..=MAX_BUDGET_TTL).contains(&budget.ttl) {
            return bad(
                "retry_budget.ttl",
                format!(
                    "must be between {} and {}, got {:?}",
                    humantime::format_duration(MIN_BUDGET_TTL),
                    humantime::format_duration(MAX_BUDGET_TTL),
                    budget.ttl
                ),
            );
        }
        if !(self.elevated_at.is_finite() && self.elevated_at > 0.0 && self.elevated_at <= 1.0) {
            return bad(
                "elevated_at",
                format!("must be in (0, 1], got {}", self.elevated_at),
            );
        }
        if let Some(adaptive) = &self.adaptive {
            adaptive.check_ceiling(self.max_concurrency)?;
        }
        Ok(())
    }
}

fn patched_rate(
    current: Option<Rate>,
    patch: Option<Option<RatePatch>>,
    tenant: bool,
) -> Result<Option<Rate>, InvalidLimit> {
    match patch {
        None => Ok(current),
        Some(None) => Ok(None),
        Some(Some(rate)) => Rate::new(rate.per_second, rate.burst)
            .map(Some)
            .map_err(|error| InvalidLimit {
                field: error.field(tenant),
                problem: error.to_string(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_keeps_unset_fields_and_names_the_bad_one() {
        let base = Limits::default();
        let raised = base
            .patched(&LimitsPatch {
                max_concurrency: Some(3),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(raised.max_concurrency(), 3);
        assert_eq!(raised.max_queue(), base.max_queue());

        let err = base
            .patched(&LimitsPatch {
                max_concurrency: Some(0),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.field, "max_concurrency");

        let err = base
            .patched(&LimitsPatch {
                lease_ttl: Some(Duration::from_millis(5)),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.field, "lease_ttl");

        let budget = BudgetConfig {
            ratio: f64::NAN,
            ..BudgetConfig::default()
        };
        let err = base
            .patched(&LimitsPatch {
                retry_budget: Some(budget),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.field, "retry_budget.ratio");

        for bad in [0.0, -0.5, 1.01, f64::NAN, f64::INFINITY] {
            let err = base
                .patched(&LimitsPatch {
                    elevated_at: Some(bad),
                    ..Default::default()
                })
                .unwrap_err();
            assert_eq!(err.field, "elevated_at", "{bad}");
            assert!(err.problem.starts_with("must be in (0, 1]"), "{err}");
        }
        let dimmed = base
            .patched(&LimitsPatch {
                elevated_at: Some(1.0),
                degrade_at: Some(DegradeAt::Elevated),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(dimmed.elevated_at(), 1.0);
        assert_eq!(dimmed.degrade_at(), DegradeAt::Elevated);
        assert_eq!(dimmed.max_queue(), base.max_queue());

        let rated = base
            .patched(&LimitsPatch {
                rate: Some(Some(RatePatch {
                    per_second: 50.0,
                    burst: 10,
                })),
                ..Default::default()
            })
            .unwrap();
        let rate = rated.rate().unwrap();
        assert_eq!((rate.per_second(), rate.burst()), (50.0, 10));
        assert_eq!(
            rated.patched(&LimitsPatch::default()).unwrap().rate(),
            Some(rate)
        );
        let unrated = rated
            .patched(&LimitsPatch {
                rate: Some(None),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(unrated.rate(), None);
        let per_tenant = base
            .patched(&LimitsPatch {
                tenant_rate: Some(Some(RatePatch {
                    per_second: 5.0,
                    burst: 0,
                })),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(per_tenant.field, "tenant_rate.burst");
        for (per_second, burst, field) in [
            (0.0, 1, "rate.per_second"),
            (f64::NAN, 1, "rate.per_second"),
            (2e6, 1, "rate.per_second"),
            (10.0, 0, "rate.burst"),
        ] {
            let err = base
                .patched(&LimitsPatch {
                    rate: Some(Some(RatePatch { per_second, burst })),
                    ..Default::default()
                })
                .unwrap_err();
            assert_eq!(err.field, field, "{per_second} {burst}");
            assert!(err.problem.starts_with("must be"), "{err}");
        }
    }
}
