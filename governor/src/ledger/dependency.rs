//! One dependency's permits: the in-flight count, the wait queue, the leases'
//! expiry order and the retry budget, all behind one short-held mutex.
//!
//! Every operation here is O(1) in the number of waiters and dependencies; the
//! only loops hand out permits (one iteration a grant) or expire leases (one
//! iteration an expiry).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::budget::RetryBudget;
use super::decision::{
    AcquireRequest, Decision, EndedLease, Grant, LeaseEnd, RejectReason, Rejection, Snapshot,
};
use super::lease::{LeaseId, LeaseKey};
use super::limits::{InvalidLimit, Limits, LimitsPatch};
use super::shared::{LeaseRecord, Shared};
use super::waiters::{WaiterKey, WaiterQueue};

/// Upper bound of any retry-after hint.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Hint when the sidecar drains: by then another instance should be up.
const SHUTDOWN_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Dependency {
    name: Arc<str>,
    shared: Arc<Shared>,
    state: Mutex<State>,
    /// Wakes the reaper when the expiry order gains a new front.
    reaper: Arc<Notify>,
}

#[derive(Debug)]
struct State {
    limits: Limits,
    in_flight: u32,
    waiters: WaiterQueue<Waiter>,
    budget: RetryBudget,
    /// (deadline, lease), earliest first: a heap, because a lowered lease TTL
    /// gives new leases earlier deadlines than old ones. Renewals and releases
    /// leave stale entries behind, skipped when reached and compacted when
    /// they outnumber the live ones.
    expiry: BinaryHeap<Reverse<(Instant, LeaseKey)>>,
    /// Moving average of how long permits are held, for retry-after hints.
    mean_hold: Option<Duration>,
    granted_total: u64,
    rejected_total: u64,
    expired_total: u64,
}

#[derive(Debug)]
struct Waiter {
    wake: oneshot::Sender<Wake>,
}

/// What a queued request is woken with.
#[derive(Debug)]
pub(crate) struct Wake {
    pub outcome: Result<Grant, Rejection>,
    pub snapshot: Snapshot,
}

/// The first answer to a request: final, or a place in the queue.
#[derive(Debug)]
pub(crate) enum Admission {
    Decided(Decision),
    Queued {
        key: WaiterKey,
        wake: oneshot::Receiver<Wake>,
        deadline: Instant,
        queue_depth: u32,
    },
}

/// A point-in-time view of a dependency, for the control plane.
#[derive(Clone, Debug, PartialEq)]
pub struct DependencyStatus {
    pub name: Arc<str>,
    pub limits: Limits,
    pub in_flight: u32,
    pub queued: u32,
    pub retry_budget_available: f64,
    pub granted_total: u64,
    pub rejected_total: u64,
    pub expired_total: u64,
}

impl State {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            limit: self.limits.max_concurrency(),
            in_flight: self.in_flight,
            queued: self.waiters.len() as u32,
        }
    }

    /// Estimated time until a slot frees up for one more caller: permits free
    /// up at about `limit / mean_hold` a second, and `queued` callers are ahead.
    /// Before any permit was returned, the max wait stands in for the hold time.
    fn queue_retry_after(&self) -> Duration {
        let hold = self.mean_hold.unwrap_or(self.limits.max_wait());
        let ahead = self.waiters.len() as u32 + 1;
        let estimate = hold.mul_f64(f64::from(ahead) / f64::from(self.limits.max_concurrency()));
        estimate.clamp(Duration::from_millis(1), MAX_RETRY_AFTER)
    }

    fn reject(&mut self, reason: RejectReason, retry_after: Duration) -> Rejection {
        self.rejected_total += 1;
        Rejection {
            reason,
            retry_after,
        }
    }

    fn record_hold(&mut self, held: Duration) {
        // An EWMA with weight 1/8: smooth enough to ignore one slow call,
        // quick enough to follow a dependency that slows down.
        self.mean_hold = Some(match self.mean_hold {
            Some(mean) => mean.mul_f64(0.875) + held.mul_f64(0.125),
            None => held,
        });
    }
}

impl Dependency {
    pub(crate) fn new(name: Arc<str>, limits: Limits, shared: Arc<Shared>) -> Arc<Dependency> {
        let now = Instant::now();
        let dependency = Arc::new(Dependency {
            name,
            shared,
            state: Mutex::new(State {
                budget: RetryBudget::new(limits.retry_budget(), now),
                limits,
                in_flight: 0,
                waiters: WaiterQueue::default(),
                expiry: BinaryHeap::new(),
                mean_hold: None,
                granted_total: 0,
                rejected_total: 0,
                expired_total: 0,
            }),
            reaper: Arc::new(Notify::new()),
        });
        spawn_reaper(Arc::downgrade(&dependency), dependency.reaper.clone());
        dependency
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counts half-updated
        // in a way that matters more than stopping service would.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Decides on arrival, or queues the request.
    pub(crate) fn admit(self: &Arc<Self>, request: &AcquireRequest<'_>, now: Instant) -> Admission {
        let mut state = self.lock();
        let queue_depth = state.waiters.len() as u32;
        let decided = |state: &mut State, outcome| {
            Admission::Decided(Decision {
                outcome,
                queue_wait: Duration::ZERO,
                queue_depth,
                snapshot: state.snapshot(),
            })
        };

        if self.shared.draining.load(Ordering::Acquire) {
            let rejection = state.reject(RejectReason::ShuttingDown, SHUTDOWN_RETRY_AFTER);
            return decided(&mut state, Err(rejection));
        }
        if request.is_retry() {
            if let Err(retry_after) = state.budget.try_withdraw(now) {
                let rejection = state.reject(RejectReason::RetryBudgetExhausted, retry_after);
                return decided(&mut state, Err(rejection));
            }
        } else {
            state.budget.deposit(now);
        }

        // No barging: a free slot goes to a waiter before a newcomer.
        if state.in_flight < state.limits.max_concurrency() && state.waiters.is_empty() {
            let grant = self.grant(&mut state, now);
            return decided(&mut state, Ok(grant));
        }

        let wait = request.max_wait.map_or(state.limits.max_wait(), |cap| {
            cap.min(state.limits.max_wait())
        });
        if wait.is_zero() {
            let retry_after = state.queue_retry_after();
            let rejection = state.reject(RejectReason::QueueTimeout, retry_after);
            return decided(&mut state, Err(rejection));
        }

        let has_room =
            state.waiters.len() < state.limits.max_queue() as usize && self.shared.reserve_waiter();
        if !has_room {
            // Full: take the place of a lower-priority waiter, or go away.
            let victim = state
                .waiters
                .victim_for(request.priority, request.is_retry());
            match victim.and_then(|key| state.waiters.remove(key)) {
                Some(victim) => {
                    let retry_after = state.queue_retry_after();
                    let rejection = state.reject(RejectReason::Shed, retry_after);
                    let snapshot = state.snapshot();
                    // Its receiver is alive: a waiter leaves the queue only
                    // under this lock. The displaced waiter's place in the
                    // global waiter count passes to the arrival.
                    let _ = victim.wake.send(Wake {
                        outcome: Err(rejection),
                        snapshot,
                    });
                }
                None => {
                    let retry_after = state.queue_retry_after();
                    let rejection = state.reject(RejectReason::QueueFull, retry_after);
                    return decided(&mut state, Err(rejection));
                }
            }
        }

        let (tx, rx) = oneshot::channel();
        let key = state
            .waiters
            .push(request.priority, request.is_retry(), Waiter { wake: tx });
        Admission::Queued {
            key,
            wake: rx,
            deadline: now + wait,
            queue_depth,
        }
    }

    /// A waiter whose wait ran out: it leaves with QUEUE_TIMEOUT, unless it was
    /// answered (granted or shed) just before, in which case that answer wins.
    pub(crate) fn time_out(&self, key: WaiterKey, wake: &mut oneshot::Receiver<Wake>) -> Wake {
        let mut state = self.lock();
        if state.waiters.remove(key).is_some() {
            self.shared.release_waiter();
            let retry_after = state.queue_retry_after();
            let rejection = state.reject(RejectReason::QueueTimeout, retry_after);
            return Wake {
                outcome: Err(rejection),
                snapshot: state.snapshot(),
            };
        }
        match wake.try_recv() {
            Ok(wake) => wake,
            // Unreachable while waiters only leave under the lock with an
            // answer sent; answering timeout keeps the caller correct anyway.
            Err(_) => {
                let retry_after = state.queue_retry_after();
                let rejection = state.reject(RejectReason::QueueTimeout, retry_after);
                Wake {
                    outcome: Err(rejection),
                    snapshot: state.snapshot(),
                }
            }
        }
    }

    /// A waiter whose caller went away: it leaves the queue, and a grant that
    /// raced with the cancellation goes back at once.
    pub(crate) fn abandon(self: &Arc<Self>, key: WaiterKey, mut wake: oneshot::Receiver<Wake>) {
        let mut state = self.lock();
        if state.waiters.remove(key).is_some() {
            self.shared.release_waiter();
            return;
        }
        if let Ok(Wake {
            outcome: Ok(grant), ..
        }) = wake.try_recv()
        {
            if self.shared.leases.remove(&grant.lease.key).is_some() {
                self.free_slot(&mut state, Instant::now());
            }
        }
    }

    /// Ends a lease that was taken out of the lease index by release.
    pub(crate) fn finish(
        self: &Arc<Self>,
        lease: LeaseId,
        record: LeaseRecord,
        now: Instant,
    ) -> EndedLease {
        let mut state = self.lock();
        let held = now.saturating_duration_since(record.granted_at);
        state.record_hold(held);
        self.free_slot(&mut state, now);
        self.compact_expiry(&mut state);
        EndedLease {
            dependency: self.name.clone(),
            lease,
            held,
            end: LeaseEnd::Released,
            snapshot: state.snapshot(),
        }
    }

    /// Pushes a live lease's deadline back by the lease TTL. `None` if the
    /// lease is gone or already past its deadline.
    pub(crate) fn renew(&self, key: LeaseKey, now: Instant) -> Option<Duration> {
        let mut state = self.lock();
        let ttl = state.limits.lease_ttl();
        let deadline = now + ttl;
        {
            let mut record = self.shared.leases.get_mut(&key)?;
            if record.deadline <= now {
                return None;
            }
            if record.deadline == deadline {
                // Renewed twice in the same instant: already in the heap.
                return Some(ttl);
            }
            record.deadline = deadline;
        }
        self.push_expiry(&mut state, deadline, key);
        self.compact_expiry(&mut state);
        Some(ttl)
    }

    /// Expires every lease whose deadline has passed; returns them and the
    /// next deadline to wake up for.
    fn reap(self: &Arc<Self>, now: Instant) -> (Vec<EndedLease>, Option<Instant>) {
        let mut state = self.lock();
        let mut ended = Vec::new();
        while let Some(&Reverse((deadline, key))) = state.expiry.peek() {
            if deadline > now {
                break;
            }
            state.expiry.pop();
            // Renewed leases have a later deadline in the index and stay.
            let expired = self
                .shared
                .leases
                .remove_if(&key, |_, record| record.deadline <= now);
            if let Some((_, record)) = expired {
                state.expired_total += 1;
                state.in_flight -= 1;
                ended.push(EndedLease {
                    dependency: self.name.clone(),
                    lease: LeaseId {
                        epoch: self.shared.epoch,
                        key,
                    },
                    held: now.saturating_duration_since(record.granted_at),
                    end: LeaseEnd::Expired,
                    snapshot: Snapshot::default(),
                });
            }
        }
        if !ended.is_empty() {
            self.grant_waiters(&mut state, now);
            let snapshot = state.snapshot();
            for lease in &mut ended {
                lease.snapshot = snapshot;
            }
        }
        (
            ended,
            state.expiry.peek().map(|&Reverse((deadline, _))| deadline),
        )
    }

    /// Applies new limits. Raising the concurrency grants waiters at once;
    /// lowering it never revokes a held lease; a smaller queue sheds its
    /// newest lowest-priority waiters.
    pub(crate) fn set_limits(self: &Arc<Self>, limits: Limits, now: Instant, source: &str) {
        let mut state = self.lock();
        self.apply_limits(&mut state, limits, now, source);
    }

    /// Applies `patch` to the current limits under one lock hold, so that
    /// concurrent updates of different fields never undo each other.
    pub(crate) fn patch_limits(
        self: &Arc<Self>,
        patch: &LimitsPatch,
        now: Instant,
        source: &str,
    ) -> Result<(), InvalidLimit> {
        let mut state = self.lock();
        let limits = state.limits.patched(patch)?;
        self.apply_limits(&mut state, limits, now, source);
        Ok(())
    }

    fn apply_limits(
        self: &Arc<Self>,
        state: &mut State,
        limits: Limits,
        now: Instant,
        source: &str,
    ) {
        if limits != state.limits {
            let budget = limits.retry_budget();
            tracing::info!(
                dependency = %self.name,
                source,
                max_concurrency = limits.max_concurrency(),
                max_queue = limits.max_queue(),
                max_wait_ms = limits.max_wait().as_millis() as u64,
                lease_ttl_ms = limits.lease_ttl().as_millis() as u64,
                budget_ratio = budget.ratio,
                budget_min_per_second = budget.min_per_second,
                in_flight = state.in_flight,
                queued = state.waiters.len(),
                "limits changed"
            );
        }
        state.budget.reconfigure(limits.retry_budget(), now);
        state.limits = limits;
        while state.waiters.len() > state.limits.max_queue() as usize {
            let Some(victim) = state
                .waiters
                .newest_lowest()
                .and_then(|k| state.waiters.remove(k))
            else {
                break;
            };
            self.shared.release_waiter();
            let retry_after = state.queue_retry_after();
            let rejection = state.reject(RejectReason::Shed, retry_after);
            let snapshot = state.snapshot();
            let _ = victim.wake.send(Wake {
                outcome: Err(rejection),
                snapshot,
            });
        }
        self.grant_waiters(state, now);
    }

    /// Answers every waiter SHUTTING_DOWN.
    pub(crate) fn drain_waiters(&self) {
        let mut state = self.lock();
        while let Some(waiter) = state.waiters.pop() {
            self.shared.release_waiter();
            let rejection = state.reject(RejectReason::ShuttingDown, SHUTDOWN_RETRY_AFTER);
            let snapshot = state.snapshot();
            let _ = waiter.wake.send(Wake {
                outcome: Err(rejection),
                snapshot,
            });
        }
    }

    pub fn status(&self) -> DependencyStatus {
        let mut state = self.lock();
        let now = Instant::now();
        DependencyStatus {
            name: self.name.clone(),
            limits: state.limits.clone(),
            in_flight: state.in_flight,
            queued: state.waiters.len() as u32,
            retry_budget_available: state.budget.available(now),
            granted_total: state.granted_total,
            rejected_total: state.rejected_total,
            expired_total: state.expired_total,
        }
    }

    #[cfg(test)]
    pub(crate) fn expiry_len(&self) -> usize {
        self.lock().expiry.len()
    }

    fn grant(self: &Arc<Self>, state: &mut State, now: Instant) -> Grant {
        let ttl = state.limits.lease_ttl();
        let lease = LeaseId::random(self.shared.epoch);
        let deadline = now + ttl;
        self.shared.leases.insert(
            lease.key,
            LeaseRecord {
                dependency: self.clone(),
                deadline,
                granted_at: now,
            },
        );
        state.in_flight += 1;
        state.granted_total += 1;
        self.push_expiry(state, deadline, lease.key);
        Grant { lease, ttl }
    }

    fn free_slot(self: &Arc<Self>, state: &mut State, now: Instant) {
        state.in_flight -= 1;
        self.grant_waiters(state, now);
    }

    /// Hands free slots to waiters, best first.
    fn grant_waiters(self: &Arc<Self>, state: &mut State, now: Instant) {
        while state.in_flight < state.limits.max_concurrency() {
            let Some(waiter) = state.waiters.pop() else {
                break;
            };
            self.shared.release_waiter();
            let grant = self.grant(state, now);
            let snapshot = state.snapshot();
            if waiter
                .wake
                .send(Wake {
                    outcome: Ok(grant),
                    snapshot,
                })
                .is_err()
            {
                // The waiter is gone (it cannot be while queued, see `abandon`):
                // take the slot straight back.
                self.shared.leases.remove(&grant.lease.key);
                state.in_flight -= 1;
            }
        }
    }

    /// O(log leases); wakes the reaper when the new deadline is the earliest.
    fn push_expiry(&self, state: &mut State, deadline: Instant, key: LeaseKey) {
        let earliest = state
            .expiry
            .peek()
            .is_none_or(|Reverse((first, _))| deadline < *first);
        state.expiry.push(Reverse((deadline, key)));
        if earliest {
            self.reaper.notify_one();
        }
    }

    /// Drops stale expiry entries once they outnumber the live ones, so the
    /// expiry heap stays within twice the leases held plus a constant
    /// (amortised O(1) per release or renewal).
    fn compact_expiry(&self, state: &mut State) {
        if state.expiry.len() <= 2 * state.in_flight as usize + 64 {
            return;
        }
        let leases = &self.shared.leases;
        state.expiry.retain(|Reverse((deadline, key))| {
            leases.get(key).is_some_and(|r| r.deadline == *deadline)
        });
    }
}

impl Drop for Dependency {
    fn drop(&mut self) {
        // Lets the reaper notice that its dependency is gone.
        self.reaper.notify_one();
    }
}

/// One task per dependency expires its leases, sleeping until the earliest
/// deadline; it holds only a weak reference, so it ends with the dependency.
fn spawn_reaper(dependency: Weak<Dependency>, wake: Arc<Notify>) {
    tokio::spawn(async move {
        loop {
            let next = {
                let Some(dependency) = dependency.upgrade() else {
                    return;
                };
                let (ended, next) = dependency.reap(Instant::now());
                for lease in &ended {
                    dependency.shared.observer.lease_expired(lease);
                }
                next
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = wake.notified() => {}
                    }
                }
                None => wake.notified().await,
            }
        }
    });
}
