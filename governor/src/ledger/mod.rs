//! The permit ledger: concurrency limits, bounded priority queues, leases and
//! retry budgets per dependency.
//!
//! This module is the sidecar's core and knows nothing of gRPC: it imports
//! neither tonic nor prost, so it can be unit-, property- and stress-tested and
//! benchmarked on its own. The gRPC service in `crate::server` only translates.
//!
//! # Invariants
//! - A slot is taken only by a grant and freed exactly once: by release, by
//!   expiry, or by a cancelled waiter whose grant raced the cancellation. The
//!   lease index decides who frees it: whoever removes the lease.
//! - `in_flight <= enforced limit` at every grant (a lowered limit may leave
//!   more leases held; none is granted until they drop below it). The
//!   enforced limit is `max_concurrency`, or less when an adaptive limit is
//!   on (see [`limit`]).
//! - Every queue and map is bounded: waiters by `max_queue` and `max_waiters`,
//!   dependencies by `max_dependencies`, leases by the limits, and the expiry
//!   heap by twice the leases held plus a constant.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use rate_governor::ledger::{AcquireRequest, Ledger, LedgerConfig, Outcome, Priority, Report};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let ledger = Ledger::new(LedgerConfig::default());
//! let request = AcquireRequest {
//!     dependency: "payments",
//!     attempt: 0,
//!     priority: Priority::Normal,
//!     max_wait: None,
//! };
//! let decision = ledger.acquire(&request).await.unwrap();
//! let grant = decision.granted().expect("an idle dependency grants at once");
//! let report = Report::new(Outcome::Success, Some(Duration::from_millis(3)));
//! assert!(ledger.release(&grant.lease, report).is_some());
//! # }
//! ```

mod budget;
mod decision;
mod dependency;
mod lease;
pub mod limit;
mod limits;
mod queued;
mod reaper;
mod shared;
mod waiters;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

pub use decision::{
    AcquireRequest, Decision, EndedLease, Grant, LeaseEnd, Outcome, RejectReason, Rejection,
    Report, Snapshot,
};
pub use dependency::{Dependency, DependencyStatus};
pub use lease::{LEASE_ID_LEN, LeaseId};
pub use limits::{BudgetConfig, InvalidLimit, Limits, LimitsPatch, MAX_WAIT};
pub use shared::{LedgerObserver, NoopObserver};
pub use waiters::Priority;

use dependency::Admission;
use shared::Shared;

/// Longest dependency name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a dependency name: 1..=128 bytes of `[A-Za-z0-9._:/-]`.
pub fn check_dependency_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} bytes, got {}",
            name.len()
        ));
    }
    match name
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b"._:/-".contains(&b)))
    {
        Some(at) => {
            let found = match name.as_bytes()[at] {
                b if b.is_ascii() => format!("{:?}", char::from(b)),
                _ => "a non-ASCII byte".to_owned(),
            };
            Err(format!(
                "may only contain [A-Za-z0-9._:/-], found {found} at byte {at}"
            ))
        }
        None => Ok(()),
    }
}

/// How the ledger is set up; the config file's `[defaults]`, `[limits]` and
/// `[dependencies.*]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerConfig {
    pub defaults: Limits,
    pub allow_unknown_dependencies: bool,
    pub max_dependencies: usize,
    pub max_waiters: usize,
    /// Dependencies with limits of their own, created up front.
    pub dependencies: Vec<(String, Limits)>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            defaults: Limits::default(),
            allow_unknown_dependencies: true,
            max_dependencies: 1024,
            max_waiters: 100_000,
            dependencies: Vec::new(),
        }
    }
}

/// Why the ledger could not serve a request at all (as opposed to rejecting it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("unknown dependency {0:?}")]
    UnknownDependency(String),
    #[error("too many dependencies: the limit is {0}")]
    TooManyDependencies(usize),
}

#[derive(Debug)]
struct Settings {
    defaults: Limits,
    allow_unknown_dependencies: bool,
    max_dependencies: usize,
    configured: HashMap<String, Limits>,
}

/// All dependencies of one sidecar.
#[derive(Debug)]
pub struct Ledger {
    shared: Arc<Shared>,
    dependencies: DashMap<Arc<str>, Arc<Dependency>>,
    settings: RwLock<Settings>,
    /// Serialises the creation of dependencies, so the cap holds exactly.
    creating: Mutex<()>,
}

impl Ledger {
    /// A ledger with no observer. Must be called within a tokio runtime: each
    /// dependency gets a task that expires its leases.
    pub fn new(config: LedgerConfig) -> Ledger {
        Ledger::with_observer(config, Arc::new(NoopObserver))
    }

    pub fn with_observer(config: LedgerConfig, observer: Arc<dyn LedgerObserver>) -> Ledger {
        let ledger = Ledger {
            shared: Arc::new(Shared::new(
                lease::new_epoch(),
                config.max_waiters,
                observer,
            )),
            dependencies: DashMap::new(),
            settings: RwLock::new(Settings {
                defaults: config.defaults.clone(),
                allow_unknown_dependencies: config.allow_unknown_dependencies,
                max_dependencies: config.max_dependencies,
                configured: HashMap::new(),
            }),
            creating: Mutex::new(()),
        };
        ledger.reconfigure(config);
        ledger
    }

    /// Asks for a permit: granted at once, queued until granted or timed out,
    /// or rejected.
    ///
    /// # Cancel safety
    /// Dropping the future removes the request from the queue; a grant that
    /// raced with the drop is returned at once, so no slot leaks.
    pub async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Decision, LedgerError> {
        let dependency = self.dependency(request.dependency)?;
        let arrived = Instant::now();
        match dependency.admit(request, arrived) {
            Admission::Decided(decision) => Ok(decision),
            Admission::Queued {
                key,
                wake,
                deadline,
                queue_depth,
            } => {
                let wake = queued::Queued::new(dependency, key, wake)
                    .wait(deadline)
                    .await;
                Ok(Decision {
                    outcome: wake.outcome,
                    queue_wait: arrived.elapsed(),
                    queue_depth,
                    snapshot: wake.snapshot,
                })
            }
        }
    }

    /// Gives a permit back with what the caller reports of the call, which
    /// an adaptive limit learns from. `None` if the lease is unknown, expired,
    /// already released or from another process.
    pub fn release(&self, lease: &LeaseId, report: Report) -> Option<EndedLease> {
        if lease.epoch != self.shared.epoch {
            return None;
        }
        let (_, record) = self.shared.leases.remove(&lease.key)?;
        let dependency = record.dependency.clone();
        Some(dependency.finish(*lease, record, report, Instant::now()))
    }

    /// Extends a live lease by its dependency's lease TTL; returns the TTL.
    pub fn renew(&self, lease: &LeaseId) -> Option<(Arc<str>, Duration)> {
        if lease.epoch != self.shared.epoch {
            return None;
        }
        let dependency = self.shared.leases.get(&lease.key)?.dependency.clone();
        let ttl = dependency.renew(lease.key, Instant::now())?;
        Some((dependency.name().clone(), ttl))
    }

    /// The dependency's status, if it exists.
    pub fn status(&self, name: &str) -> Option<DependencyStatus> {
        self.dependencies.get(name).map(|d| d.status())
    }

    /// Every dependency's status, sorted by name.
    pub fn statuses(&self) -> Vec<DependencyStatus> {
        let mut all: Vec<_> = self.dependencies.iter().map(|d| d.status()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Changes some limits of a dependency, creating it from the defaults if it
    /// does not exist (even when unknown dependencies are not allowed: the
    /// control plane is trusted). Fails on the first invalid field.
    pub fn update(&self, name: &str, patch: &LimitsPatch) -> Result<DependencyStatus, UpdateError> {
        check_dependency_name(name).map_err(UpdateError::InvalidName)?;
        let existing = self.dependencies.get(name).map(|d| d.clone());
        let dependency = match existing {
            Some(dependency) => dependency,
            None => {
                // Validate before creating: a refused update leaves nothing behind.
                self.creation_limits(name).patched(patch)?;
                self.get_or_create(name, true)?
            }
        };
        dependency.patch_limits(patch, Instant::now(), "control plane")?;
        Ok(dependency.status())
    }

    /// Applies a whole new configuration (a config reload). Dependencies it
    /// names get its limits, every other one the new defaults; held leases are
    /// never revoked.
    pub fn reconfigure(&self, config: LedgerConfig) {
        {
            let mut settings = self.settings.write().unwrap_or_else(|e| e.into_inner());
            *settings = Settings {
                defaults: config.defaults.clone(),
                allow_unknown_dependencies: config.allow_unknown_dependencies,
                max_dependencies: config.max_dependencies,
                configured: config.dependencies.iter().cloned().collect(),
            };
        }
        self.shared.set_max_waiters(config.max_waiters);
        let now = Instant::now();
        for (name, limits) in &config.dependencies {
            match self.get_or_create(name, true) {
                Ok(dependency) => dependency.set_limits(limits.clone(), now, "config"),
                Err(error) => tracing::warn!(dependency = %name, %error, "dependency not created"),
            }
        }
        let configured: HashSet<&str> = config
            .dependencies
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        for dependency in self.dependencies.iter() {
            if !configured.contains(&**dependency.name()) {
                dependency.set_limits(config.defaults.clone(), now, "config defaults");
            }
        }
    }

    /// Starts draining: new acquires are rejected SHUTTING_DOWN and every
    /// waiter is answered so at once. Releases and renewals still work.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
        for dependency in self.dependencies.iter() {
            dependency.drain_waiters();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Whether `lease` is live in this ledger.
    pub fn holds(&self, lease: &LeaseId) -> bool {
        lease.epoch == self.shared.epoch && self.shared.leases.contains_key(&lease.key)
    }

    /// Leases held, across all dependencies.
    pub fn leases(&self) -> usize {
        self.shared.leases.len()
    }

    /// Requests waiting, across all dependencies.
    pub fn waiters(&self) -> usize {
        self.shared.waiters()
    }

    pub fn dependency_count(&self) -> usize {
        self.dependencies.len()
    }

    fn dependency(&self, name: &str) -> Result<Arc<Dependency>, LedgerError> {
        if let Some(dependency) = self.dependencies.get(name) {
            return Ok(dependency.clone());
        }
        self.get_or_create(name, false)
    }

    fn creation_limits(&self, name: &str) -> Limits {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .limits_for(name)
    }

    fn get_or_create(&self, name: &str, trusted: bool) -> Result<Arc<Dependency>, LedgerError> {
        let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dependency) = self.dependencies.get(name) {
            return Ok(dependency.clone());
        }
        let settings = self.settings.read().unwrap_or_else(|e| e.into_inner());
        if !trusted && !settings.allow_unknown_dependencies {
            return Err(LedgerError::UnknownDependency(name.to_owned()));
        }
        if self.dependencies.len() >= settings.max_dependencies {
            return Err(LedgerError::TooManyDependencies(settings.max_dependencies));
        }
        let limits = settings.limits_for(name);
        let name: Arc<str> = Arc::from(name);
        let dependency = Dependency::new(name.clone(), limits, self.shared.clone());
        self.dependencies.insert(name, dependency.clone());
        Ok(dependency)
    }
}

impl Settings {
    /// What a new dependency of this name starts with.
    fn limits_for(&self, name: &str) -> Limits {
        self.configured.get(name).unwrap_or(&self.defaults).clone()
    }
}

/// Why a control-plane update failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum UpdateError {
    #[error("name: {0}")]
    InvalidName(String),
    #[error(transparent)]
    Limit(#[from] InvalidLimit),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

#[cfg(test)]
mod tests;
