//! State shared by all dependencies of one ledger.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::time::Instant;

use super::decision::{EndedLease, Report, Snapshot};
use super::dependency::Dependency;
use super::fair::FlowRef;
use super::idle::IdleInbox;
use super::lease::LeaseId;
use super::limit::LimitChange;
use super::session::Owner;
use super::slots::Slots;

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

    /// A lease was released because the session that held it closed
    /// (outcome [`Outcome::SessionClosed`](super::Outcome::SessionClosed)).
    /// Called outside every lock, on the path that closed the session.
    fn session_lease_released(&self, lease: &EndedLease) {
        let _ = lease;
    }
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoopObserver;

impl LedgerObserver for NoopObserver {}

/// A live lease, in its dependency's lease map (keyed by its lease key).
#[derive(Debug)]
pub(crate) struct LeaseRecord {
    pub deadline: Instant,
    pub granted_at: Instant,
    /// Permits held right after this grant, itself included: the load the
    /// call's latency was measured under.
    pub in_flight: u32,
    /// The session that owns it, if it was granted on one.
    pub owner: Option<Arc<Owner>>,
    /// Its tenant's (and route's) entry under fair shares.
    pub flow: Option<FlowRef>,
}

pub(crate) struct Shared {
    /// The dependency of each slot, which lease ids name.
    pub slots: Slots,
    pub epoch: u64,
    pub draining: AtomicBool,
    /// Cancelled when draining starts, for whoever waits on it (sessions).
    pub drain_started: tokio_util::sync::CancellationToken,
    pub observer: Arc<dyn LedgerObserver>,
    /// Dependencies that went idle, for the evictor.
    pub idle: IdleInbox,
    /// Wakes the fleet task when a dependency gains a fleet-wide limit (it
    /// grants nothing until the task has asked the store).
    pub fleet_wake: Arc<tokio::sync::Notify>,
    waiters: AtomicUsize,
    max_waiters: AtomicUsize,
    max_session_pending: AtomicUsize,
}

impl std::fmt::Debug for Shared {
    /// By hand: the epoch is a part of every lease id, which must never be
    /// shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("draining", &self.draining)
            .field("waiters", &self.waiters)
            .field("max_waiters", &self.max_waiters)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        epoch: u64,
        max_waiters: usize,
        max_session_pending: usize,
        observer: Arc<dyn LedgerObserver>,
    ) -> Self {
        Shared {
            slots: Slots::default(),
            epoch,
            draining: AtomicBool::new(false),
            drain_started: tokio_util::sync::CancellationToken::new(),
            observer,
            idle: IdleInbox::default(),
            fleet_wake: Arc::default(),
            waiters: AtomicUsize::new(0),
            max_waiters: AtomicUsize::new(max_waiters),
            max_session_pending: AtomicUsize::new(max_session_pending),
        }
    }

    /// The dependency that granted `lease`, if it is of this process and
    /// its dependency still exists (the lease itself may be gone).
    pub(crate) fn dependency_of(&self, lease: &LeaseId) -> Option<Arc<Dependency>> {
        if lease.epoch != self.epoch {
            return None;
        }
        self.slots.get(lease.slot())
    }

    /// Ends a live lease on a caller's (or a closing session's) behalf; the
    /// lease leaves its dependency's map under that dependency's lock, so a
    /// lease is freed once whoever asks. `None` if it is unknown, gone or
    /// from another process.
    pub(crate) fn release(&self, lease: &LeaseId, report: Report) -> Option<EndedLease> {
        let dependency = self.dependency_of(lease)?;
        dependency.release(*lease, report, super::clock::now())
    }

    pub(crate) fn max_session_pending(&self) -> usize {
        self.max_session_pending.load(Ordering::Relaxed)
    }

    pub(crate) fn set_max_session_pending(&self, max: usize) {
        self.max_session_pending.store(max, Ordering::Relaxed);
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
