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
//!   dependency's lease map decides who frees it: whoever removes the lease,
//!   under the dependency's lock. A lease id names its dependency's slot
//!   (see [`slots`]), so nothing indexes every lease.
//! - `in_flight <= enforced limit` at every grant (a lowered limit may leave
//!   more leases held; none is granted until they drop below it). The
//!   enforced limit is `max_concurrency`, or less when an adaptive limit is
//!   on (see [`limit`]).
//! - Every queue and map is bounded: waiters by `max_queue` and `max_waiters`,
//!   dependencies by `max_dependencies`, leases by the limits, and the expiry
//!   heap by twice the leases held plus a constant.
//! - A dependency created by a caller goes once it has been idle (no lease,
//!   no waiter) for `idle_ttl`, or earlier to make room for a new one (see
//!   [`idle`]); configured ones (config file or control plane) stay. An
//!   evicted dependency never grants again: a caller that looked it up just
//!   before looks it up anew, so no permit is taken on a copy the ledger no
//!   longer counts.
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
//!     tenant: Some("checkout"),
//!     route: None,
//!     attempt: 0,
//!     priority: Priority::Normal,
//!     max_wait: None,
//!     degradable: false,
//! };
//! let decision = ledger.acquire(&request).await.unwrap();
//! let grant = decision.granted().expect("an idle dependency grants at once");
//! let report = Report::new(Outcome::Success, Some(Duration::from_millis(3)));
//! assert!(ledger.release(&grant.lease, report).is_some());
//! # }
//! ```

mod budget;
mod clock;
mod decision;
mod dependency;
mod expiry;
mod fair;
mod fleet;
mod idle;
mod lease;
pub mod limit;
mod limits;
mod peers;
mod queued;
mod rate;
mod reaper;
mod session;
mod shared;
mod slots;
mod tenants;
mod waiters;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use decision::{
    AcquireRequest, Decision, EndedLease, Grant, LeaseEnd, OVERLOAD_WINDOW, Outcome, Pressure,
    RejectReason, Rejection, Report, Snapshot,
};
pub use dependency::{Dependency, DependencyStatus};
pub use fair::{FairStatus, RouteStatus, STATUS_TENANTS, TenantDetail, TenantStatus, max_min};
pub use fleet::{FleetMode, FleetReading, FleetStatus};
pub use lease::{LEASE_ID_LEN, LeaseHandle, LeaseId};
pub use limits::{
    BudgetConfig, DEFAULT_MAX_TENANTS, DegradeAt, ELEVATED_AT, FairBy, Fairness, FairnessPatch,
    FleetLimit, InvalidLimit, Limits, LimitsPatch, MAX_TENANT_LEN, MAX_TENANTS, MAX_WAIT,
    MAX_WEIGHT, RatePatch, name_problem,
};
pub use peers::Peer;
pub use rate::Rate;
pub use session::{Session, SessionAcquireError, SessionClosed};
pub use shared::{LedgerObserver, NoopObserver};
pub use tenants::MAX_RATED_TENANTS;
pub use waiters::Priority;

use dependency::{Admission, IdleCheck};
use idle::IdleQueue;
use peers::PeerBook;
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
    /// Acquires one session may have pending at once (on top of
    /// `max_waiters`, which counts every waiter).
    pub max_session_pending: usize,
    /// Dependencies with limits of their own, created up front.
    pub dependencies: Vec<(String, Limits)>,
    /// How long a dependency created by a caller stays once idle.
    pub idle_ttl: Duration,
    /// How many of the dependencies that exist one peer may have created.
    pub max_dependencies_per_peer: usize,
}

/// How often an Acquire looks a dependency up again when it was evicted
/// under its feet (once is the rule; more needs a burst of evictions).
const MAX_LOOKUPS: usize = 4;

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            defaults: Limits::default(),
            allow_unknown_dependencies: true,
            max_dependencies: 1024,
            max_waiters: 100_000,
            max_session_pending: 1024,
            dependencies: Vec::new(),
            idle_ttl: Duration::from_secs(300),
            max_dependencies_per_peer: 128,
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
    #[error(
        "this client already created {0} dependencies that still exist, the limit \
         (limits.max_dependencies_per_peer = {0}); configure the names, or use fewer"
    )]
    TooManyForPeer(usize),
}

#[derive(Debug)]
struct Settings {
    defaults: Limits,
    allow_unknown_dependencies: bool,
    max_dependencies: usize,
    idle_ttl: Duration,
    max_dependencies_per_peer: usize,
    configured: HashMap<String, Limits>,
}

/// All dependencies of one sidecar.
#[derive(Debug)]
pub struct Ledger {
    shared: Arc<Shared>,
    /// Names are the callers' choice: hashed with a per-process random seed
    /// (foldhash; SipHash cost a fifth of an uncontended acquire + release).
    dependencies: DashMap<Arc<str>, Arc<Dependency>, foldhash::fast::RandomState>,
    settings: RwLock<Settings>,
    /// Serialises creating and evicting dependencies, so the cap holds
    /// exactly; holds the eviction order. Taken before a dependency's lock
    /// and before `settings`, never after.
    creating: Mutex<IdleQueue>,
    /// Which peer created which name; taken only under `creating`.
    peers: Mutex<PeerBook>,
    /// Wakes the idle sweeper when `idle_ttl` changes or the ledger goes.
    sweeper: Arc<Notify>,
    /// Whether a fleet task serves fleet-wide limits (the control plane may
    /// set them only then).
    fleet_store: std::sync::atomic::AtomicBool,
}

impl Ledger {
    /// A ledger with no observer. Must be called within a tokio runtime: each
    /// dependency gets a task that expires its leases.
    pub fn new(config: LedgerConfig) -> Ledger {
        Ledger::with_observer(config, Arc::new(NoopObserver))
    }

    pub fn with_observer(config: LedgerConfig, observer: Arc<dyn LedgerObserver>) -> Ledger {
        clock::init();
        let ledger = Ledger {
            shared: Arc::new(Shared::new(
                lease::new_epoch(),
                config.max_waiters,
                config.max_session_pending,
                observer,
            )),
            dependencies: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            settings: RwLock::new(Settings {
                defaults: config.defaults.clone(),
                allow_unknown_dependencies: config.allow_unknown_dependencies,
                max_dependencies: config.max_dependencies,
                idle_ttl: config.idle_ttl,
                max_dependencies_per_peer: config.max_dependencies_per_peer,
                configured: HashMap::new(),
            }),
            creating: Mutex::new(IdleQueue::default()),
            peers: Mutex::new(PeerBook::default()),
            sweeper: Arc::new(Notify::new()),
            fleet_store: Default::default(),
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
        self.acquire_as(request, None).await
    }

    /// [`Ledger::acquire`] on behalf of `peer`: a name it creates counts
    /// against its `max_dependencies_per_peer` (without a peer, none does).
    ///
    /// # Cancel safety
    /// As [`Ledger::acquire`].
    pub async fn acquire_as(
        &self,
        request: &AcquireRequest<'_>,
        peer: Option<Peer>,
    ) -> Result<Decision, LedgerError> {
        let arrived = clock::now();
        for _ in 0..MAX_LOOKUPS {
            // A clone, not the map's guard held through `admit`: a shard
            // read-locked for the length of a dependency's critical section
            // (waiting on its mutex included) would starve the writers that
            // create and evict names in that shard.
            let dependency = self.dependency_as(request.dependency, peer)?;
            let mut admission = dependency.admit(request, arrived);
            // Set once it has waited for its tenant's token.
            let mut delayed = false;
            loop {
                match admission {
                    Admission::Evicted => break,
                    Admission::Decided(decision) if !delayed => return Ok(decision),
                    Admission::Decided(decision) => {
                        return Ok(Decision {
                            queue_wait: arrived.elapsed(),
                            ..decision
                        });
                    }
                    Admission::Delayed(wait) => {
                        // A drain cuts the wait short: resumed, it is
                        // answered SHUTTING_DOWN, so it holds up no shutdown.
                        tokio::select! {
                            () = tokio::time::sleep_until(wait.until) => {}
                            () = self.shared.drain_started.cancelled() => {}
                        }
                        delayed = true;
                        admission = wait.resume(request, clock::now());
                    }
                    Admission::Queued {
                        queued,
                        deadline,
                        queue_depth,
                    } => {
                        let wake = queued.wait(deadline).await;
                        return Ok(Decision {
                            outcome: wake.outcome,
                            queue_wait: arrived.elapsed(),
                            queue_depth,
                            snapshot: wake.snapshot,
                        });
                    }
                }
            }
        }
        Err(LedgerError::TooManyDependencies(self.max_dependencies()))
    }

    /// Gives a permit back with what the caller reports of the call, which
    /// an adaptive limit learns from. `None` if the lease is unknown, expired,
    /// already released or from another process.
    ///
    /// A lease granted on a [`Session`] may be released here too; it then
    /// leaves its session, so it is freed exactly once.
    pub fn release(&self, lease: &LeaseId, report: Report) -> Option<EndedLease> {
        self.shared.release(lease, report)
    }

    /// Extends a live lease by its dependency's lease TTL; returns the TTL.
    pub fn renew(&self, lease: &LeaseId) -> Option<(Arc<str>, Duration)> {
        let dependency = self.shared.dependency_of(lease)?;
        let ttl = dependency.renew(lease.key, Instant::now())?;
        Some((dependency.name().clone(), ttl))
    }

    /// The dependency's status, if it exists, with the tenants its
    /// fair-share table lists.
    pub fn status(&self, name: &str) -> Option<DependencyStatus> {
        self.status_with(name, TenantDetail::Top)
    }

    /// The dependency's status with as much of its tenants as `detail` says.
    pub fn status_with(&self, name: &str, detail: TenantDetail) -> Option<DependencyStatus> {
        self.dependencies.get(name).map(|d| d.status(detail))
    }

    /// Every dependency's status, sorted by name, with the tenants their
    /// fair-share tables list.
    pub fn statuses(&self) -> Vec<DependencyStatus> {
        self.statuses_with(TenantDetail::Top)
    }

    /// Every dependency's status with as much of its tenants as `detail` says.
    pub fn statuses_with(&self, detail: TenantDetail) -> Vec<DependencyStatus> {
        let mut all: Vec<_> = self.dependencies.iter().map(|d| d.status(detail)).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Changes some limits of a dependency, creating it from the defaults if it
    /// does not exist (even when unknown dependencies are not allowed: the
    /// control plane is trusted). Fails on the first invalid field.
    /// A dependency the control plane touched is never evicted.
    pub fn update(&self, name: &str, patch: &LimitsPatch) -> Result<DependencyStatus, UpdateError> {
        check_dependency_name(name).map_err(UpdateError::InvalidName)?;
        if matches!(patch.fleet, Some(Some(_))) && !self.fleet_store.load(Ordering::Acquire) {
            return Err(UpdateError::NoFleetStore);
        }
        let mut evicted = Vec::new();
        let result = {
            // Under the creation lock, so it cannot be evicted between the
            // lookup and the pin.
            let mut queue = self.lock_creating();
            let existing = self.dependencies.get(name).map(|d| d.clone());
            match existing {
                Some(dependency) => Ok(dependency),
                None => {
                    // Validate before creating: a refused update leaves nothing behind.
                    self.creation_limits(name)
                        .patched(patch)
                        .map_err(UpdateError::from)
                        .and_then(|_| {
                            self.create(&mut queue, name, true, None, &mut evicted)
                                .map_err(UpdateError::from)
                        })
                }
            }
            .and_then(|dependency| {
                dependency.patch_limits(patch, Instant::now(), "control plane")?;
                dependency.pin();
                // The control plane's now: no longer counted to its creator.
                self.lock_peers().forget(name);
                Ok(dependency)
            })
        };
        self.report_evicted(evicted);
        Ok(result?.status(TenantDetail::Top))
    }

    /// Says that a fleet task serves fleet-wide limits (or no longer does).
    pub fn set_fleet_store(&self, serving: bool) {
        self.fleet_store.store(serving, Ordering::Release);
    }

    /// The dependencies that have a fleet-wide limit now.
    pub(crate) fn fleet_dependencies(&self) -> Vec<Arc<Dependency>> {
        self.dependencies
            .iter()
            .filter(|d| d.fleet_limit().is_some())
            .map(|d| d.clone())
            .collect()
    }

    /// Notified when a dependency gains a fleet-wide limit.
    pub(crate) fn fleet_wake(&self) -> Arc<Notify> {
        self.shared.fleet_wake.clone()
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
                idle_ttl: config.idle_ttl,
                max_dependencies_per_peer: config.max_dependencies_per_peer,
                configured: config.dependencies.iter().cloned().collect(),
            };
        }
        self.shared.set_max_waiters(config.max_waiters);
        self.shared
            .set_max_session_pending(config.max_session_pending);
        self.sweeper.notify_one();
        let now = Instant::now();
        let mut evicted = Vec::new();
        {
            let mut queue = self.lock_creating();
            for (name, limits) in &config.dependencies {
                // Never refused for want of room (see `create`).
                match self.create(&mut queue, name, true, None, &mut evicted) {
                    Ok(dependency) => {
                        dependency.set_configured(true);
                        self.lock_peers().forget(name);
                        dependency.set_limits(limits.clone(), now, "config");
                    }
                    Err(error) => {
                        tracing::warn!(dependency = %name, %error, "dependency not created")
                    }
                }
            }
        }
        self.report_evicted(evicted);
        let configured: HashSet<&str> = config
            .dependencies
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        for dependency in self.dependencies.iter() {
            if !configured.contains(&**dependency.name()) {
                // No longer in the file: evictable once idle, unless the
                // control plane touched it.
                dependency.set_configured(false);
                dependency.set_limits(config.defaults.clone(), now, "config defaults");
            }
        }
    }

    /// Evicts every dependency created by a caller that has been idle for
    /// `idle_ttl` at `now`; returns when the next one may be due. The task of
    /// [`Ledger::spawn_idle_sweeper`] calls it.
    pub fn evict_idle(&self, now: Instant) -> Option<Instant> {
        let ttl = self.idle_ttl();
        let mut evicted = Vec::new();
        let next = {
            let mut queue = self.lock_creating();
            if let Some(cutoff) = now.checked_sub(ttl) {
                while let Some(name) = self.evict_oldest(&mut queue, Some(cutoff)) {
                    evicted.push(name);
                }
            }
            queue.absorb(&self.shared.idle);
            queue.oldest().map(|since| since + ttl)
        };
        self.report_evicted(evicted);
        next
    }

    /// Starts the task that evicts idle dependencies after `idle_ttl`; it
    /// ends with the ledger. (Without it, idle ones still make room when
    /// `max_dependencies` is reached.)
    pub fn spawn_idle_sweeper(self: &Arc<Self>) {
        let ledger = Arc::downgrade(self);
        let wake = self.sweeper.clone();
        tokio::spawn(async move {
            loop {
                let next = {
                    let Some(ledger) = ledger.upgrade() else {
                        return;
                    };
                    let now = Instant::now();
                    ledger
                        .evict_idle(now)
                        .unwrap_or_else(|| now + ledger.idle_ttl())
                };
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    () = wake.notified() => {}
                }
            }
        });
    }

    /// Starts draining: new acquires are rejected SHUTTING_DOWN and every
    /// waiter is answered so at once. Releases and renewals still work.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
        for dependency in self.dependencies.iter() {
            dependency.drain_waiters();
        }
        self.shared.drain_started.cancel();
    }

    /// Completes once draining has started; owns what it waits on.
    pub fn drain_signal(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.shared.drain_started.clone().cancelled_owned()
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Whether `lease` is live in this ledger.
    pub fn holds(&self, lease: &LeaseId) -> bool {
        self.shared
            .dependency_of(lease)
            .is_some_and(|dependency| dependency.holds(lease.key))
    }

    /// Leases held, across all dependencies (each counted under its own
    /// lock: exact when nothing is granted or released meanwhile).
    pub fn leases(&self) -> usize {
        let all = self.shared.slots.all();
        all.iter().map(|dependency| dependency.lease_count()).sum()
    }

    /// Requests waiting, across all dependencies.
    pub fn waiters(&self) -> usize {
        self.shared.waiters()
    }

    pub fn dependency_count(&self) -> usize {
        self.dependencies.len()
    }

    /// Whether a dependency of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.dependencies.contains_key(name)
    }

    #[cfg(test)]
    fn dependency(&self, name: &str) -> Result<Arc<Dependency>, LedgerError> {
        self.dependency_as(name, None)
    }

    fn dependency_as(
        &self,
        name: &str,
        peer: Option<Peer>,
    ) -> Result<Arc<Dependency>, LedgerError> {
        if let Some(dependency) = self.dependencies.get(name) {
            return Ok(dependency.clone());
        }
        let mut evicted = Vec::new();
        let created = {
            let mut queue = self.lock_creating();
            self.create(&mut queue, name, false, peer, &mut evicted)
        };
        self.report_evicted(evicted);
        created
    }

    fn lock_creating(&self) -> MutexGuard<'_, IdleQueue> {
        self.creating.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A leaf lock, taken under `creating`.
    fn lock_peers(&self) -> MutexGuard<'_, PeerBook> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settings(&self) -> std::sync::RwLockReadGuard<'_, Settings> {
        self.settings.read().unwrap_or_else(|e| e.into_inner())
    }

    fn max_dependencies(&self) -> usize {
        self.settings().max_dependencies
    }

    fn idle_ttl(&self) -> Duration {
        self.settings().idle_ttl
    }

    fn creation_limits(&self, name: &str) -> Limits {
        self.settings().limits_for(name)
    }

    /// Looks `name` up or creates it, under the creation lock (`queue`). At
    /// the cap, the dependency idle the longest makes room; if none is idle,
    /// a caller's new name is refused, while a name in the config file is
    /// created anyway (so a reload that adds a name always makes it usable:
    /// the count may then exceed the cap by at most the configured names,
    /// and callers' new names wait until it is back under). A caller's new
    /// name counts against `peer`'s share, refused once it is used up.
    fn create(
        &self,
        queue: &mut IdleQueue,
        name: &str,
        trusted: bool,
        peer: Option<Peer>,
        evicted: &mut Vec<Arc<str>>,
    ) -> Result<Arc<Dependency>, LedgerError> {
        if let Some(dependency) = self.dependencies.get(name) {
            return Ok(dependency.clone());
        }
        let settings = self.settings();
        let configured = settings.configured.contains_key(name);
        if !trusted && !configured && !settings.allow_unknown_dependencies {
            return Err(LedgerError::UnknownDependency(name.to_owned()));
        }
        // Checked before anything is evicted for it.
        let creator = peer.filter(|_| !trusted && !configured);
        if let Some(peer) = &creator {
            let per_peer = settings.max_dependencies_per_peer;
            if self.lock_peers().count(peer) >= per_peer {
                return Err(LedgerError::TooManyForPeer(per_peer));
            }
        }
        let max = settings.max_dependencies;
        if self.dependencies.len() >= max {
            match self.evict_oldest(queue, None) {
                Some(gone) => evicted.push(gone),
                None if configured => tracing::warn!(
                    dependency = %name,
                    max_dependencies = max,
                    "configured dependency created over limits.max_dependencies: \
                     no dependency created by a caller is idle"
                ),
                None => return Err(LedgerError::TooManyDependencies(max)),
            }
        }
        let limits = settings.limits_for(name);
        let name: Arc<str> = Arc::from(name);
        let dependency = Dependency::new(name.clone(), limits, configured, self.shared.clone());
        if let Some(peer) = creator {
            self.lock_peers().record(name.clone(), peer);
        }
        let fleet = dependency.fleet_limit().is_some();
        self.dependencies.insert(name, dependency.clone());
        if fleet {
            // Now that the fleet task can find it (it grants nothing until then).
            self.shared.fleet_wake.notify_one();
        }
        Ok(dependency)
    }

    /// Evicts the dependency idle the longest (if idle since `idle_before`
    /// at the latest, when given) and returns its name. Amortised O(log n):
    /// see [`idle`].
    fn evict_oldest(
        &self,
        queue: &mut IdleQueue,
        idle_before: Option<Instant>,
    ) -> Option<Arc<str>> {
        queue.absorb(&self.shared.idle);
        while let Some(since) = queue.oldest() {
            if idle_before.is_some_and(|cutoff| since > cutoff) {
                return None;
            }
            let entry = queue.pop()?;
            let Some(dependency) = entry.dependency.upgrade() else {
                continue;
            };
            match dependency.idle_check(entry.since) {
                IdleCheck::Keep => continue,
                IdleCheck::Since(at) => {
                    queue.requeue(&self.shared.idle, at, entry.dependency);
                    continue;
                }
                IdleCheck::Idle => {}
            }
            let name = dependency.name().clone();
            // Out of the map first, then marked under its own lock: lookups
            // lock a dependency while holding a map shard, so the other
            // order could deadlock. A caller that got it from the map just
            // before is caught by the mark, or keeps it busy (then it goes
            // back).
            let removed = self
                .dependencies
                .remove_if(&name, |_, d| Arc::ptr_eq(d, &dependency));
            if removed.is_none() {
                continue;
            }
            if dependency.evict_if_idle(entry.since) {
                self.lock_peers().forget(&name);
                return Some(name);
            }
            self.dependencies.insert(name, dependency);
        }
        None
    }

    /// Tells the observer about evictions, outside every lock.
    fn report_evicted(&self, evicted: Vec<Arc<str>>) {
        for name in evicted {
            tracing::debug!(dependency = %name, "idle dependency evicted");
            self.shared.observer.dependency_evicted(&name);
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // Lets the idle sweeper notice that its ledger is gone.
        self.sweeper.notify_one();
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
    /// A fleet-wide limit, on a sidecar without a fleet store.
    #[error("fleet: this sidecar has no [fleet] store to share a fleet-wide limit through")]
    NoFleetStore,
}

#[cfg(test)]
mod handoff_model;
#[cfg(test)]
mod tests;
