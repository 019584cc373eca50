//! State shared by all dependencies of one ledger.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use dashmap::DashMap;
use tokio::time::Instant;

use super::decision::{EndedLease, Snapshot};
use super::dependency::Dependency;
use super::idle::IdleInbox;
use super::lease::LeaseKey;
use super::limit::LimitChange;

/// Hears about what the ledger does on its own, off any caller's path.
pub trait LedgerObserver: Send + Sync + std::fmt::Debug + 'static {
    /// A lease expired: nobody released or renewed it in time, and its slot
    /// is free again. (Releases are reported by whoever called release.)
    fn lease_expired(&self, lease: &EndedLease) {
        let _ = lease;
    }

    /// A dependency's enforced or computed limit moved, leaving `load`.
    /// Called outside the dependency's lock, on whatever path moved it
    /// (often a Release).
    fn limit_changed(&self, dependency: &Arc<str>, change: &LimitChange, load: Snapshot) {
        let _ = (dependency, change, load);
    }

    /// A dependency created by a caller was evicted (idle past `idle_ttl`,
    /// or to make room): whatever is kept per dependency can go. Called
    /// after it left the ledger, outside every lock.
    fn dependency_evicted(&self, dependency: &Arc<str>) {
        let _ = dependency;
    }
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoopObserver;

impl LedgerObserver for NoopObserver {}

#[derive(Debug)]
pub(crate) struct LeaseRecord {
    pub dependency: Arc<Dependency>,
    pub deadline: Instant,
    pub granted_at: Instant,
    /// Permits held right after this grant, itself included: the load the
    /// call's latency was measured under.
    pub in_flight: u32,
}

pub(crate) struct Shared {
    /// Every live lease, by its random key. Sharded, so that releases of
    /// different dependencies do not contend.
    pub leases: DashMap<LeaseKey, LeaseRecord>,
    pub epoch: u64,
    pub draining: AtomicBool,
    pub observer: Arc<dyn LedgerObserver>,
    /// Dependencies that went idle, for the evictor.
    pub idle: IdleInbox,
    waiters: AtomicUsize,
    max_waiters: AtomicUsize,
}

impl std::fmt::Debug for Shared {
    /// By hand: the lease index is keyed by lease key, a part of each lease
    /// id, which must never be shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("leases", &self.leases.len())
            .field("draining", &self.draining)
            .field("waiters", &self.waiters)
            .field("max_waiters", &self.max_waiters)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(epoch: u64, max_waiters: usize, observer: Arc<dyn LedgerObserver>) -> Self {
        Shared {
            leases: DashMap::new(),
            epoch,
            draining: AtomicBool::new(false),
            observer,
            idle: IdleInbox::default(),
            waiters: AtomicUsize::new(0),
            max_waiters: AtomicUsize::new(max_waiters),
        }
    }

    /// Takes one place in the global waiter cap, if any is left.
    pub(crate) fn reserve_waiter(&self) -> bool {
        let max = self.max_waiters.load(Ordering::Relaxed);
        self.waiters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn release_waiter(&self) {
        self.waiters.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn waiters(&self) -> usize {
        self.waiters.load(Ordering::Acquire)
    }

    pub(crate) fn set_max_waiters(&self, max: usize) {
        self.max_waiters.store(max, Ordering::Relaxed);
    }
}
