//! One dependency's permits: the in-flight count, the wait queue, the leases'
//! expiry order, the retry budget and the limiter, all behind one short-held
//! mutex.
//!
//! Every operation here is O(1) in the number of waiters and dependencies; the
//! only loops hand out permits (one iteration a grant) or expire leases (one
//! iteration an expiry). Whatever moves the enforced limit (a sample that
//! closes a window, new limits) goes through [`Dependency::limit_moved`],
//! which re-runs the hand-over: a raised limit grants waiters at once, a
//! lowered one never revokes a lease. Changes are reported to the observer
//! after the lock is released.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::budget::RetryBudget;
use super::decision::{
    AcquireRequest, Decision, EndedLease, Grant, LeaseEnd, OVERLOAD_WINDOW, Outcome, Pressure,
    RejectReason, Rejection, Report, Snapshot,
};
use super::expiry::Expiry;
use super::fair::{Arrival, Fair, FairStatus, FlowRef, Left, TenantDetail};
use super::fleet::{FleetReading, FleetStatus};
use super::lease::{LeaseId, LeaseKey, LeaseKeyHash};
use super::limit::{LimitChange, LimitStatus, Limiter, Sample, SampleKind};
use super::limits::{DegradeAt, InvalidLimit, Limits, LimitsPatch};
use super::queued::Queued;
use super::rate::{Gcra, rebucket};
use super::reaper;
use super::session::Owner;
use super::shared::{LeaseRecord, Shared};
use super::tenants::{Reservation, TenantBuckets};
use super::waiters::{WaiterKey, WaiterQueue};

/// Upper bound of any retry-after hint.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Hint when the sidecar drains: by then another instance should be up.
const SHUTDOWN_RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct Dependency {
    name: Arc<str>,
    shared: Arc<Shared>,
    state: Mutex<State>,
    /// Wakes the reaper when the expiry order gains a new front.
    reaper: Arc<Notify>,
    /// Itself, for the idle inbox.
    me: Weak<Dependency>,
    /// Its slot in the ledger, named by its lease ids.
    slot: u32,
}

struct State {
    limits: Limits,
    /// The enforced limit and what moves it.
    limiter: Limiter,
    in_flight: u32,
    /// Its live leases, by key: one for each permit in flight. Whoever
    /// removes a lease from here (release, expiry, a grant that found its
    /// waiter gone) frees its slot, so it is freed once.
    leases: HashMap<LeaseKey, LeaseRecord, LeaseKeyHash>,
    waiters: WaiterQueue<Waiter>,
    budget: RetryBudget,
    /// The rate limit's bucket; `None` without one. A grant spends a token,
    /// so a grant needs both a token and a slot.
    rate: Option<Gcra>,
    /// Each tenant's bucket under `tenant_rate`; `None` without one.
    tenants: Option<TenantBuckets>,
    /// The fair-share table; `None` without fair shares.
    fair: Option<Fair>,
    /// The fleet task's last word on a fleet-wide limit; `None` without one.
    /// Its `enforced` is the limiter's fleet term.
    fleet: Option<FleetStatus>,
    /// The most in flight + queued + one arrival since the fleet task last
    /// read it: the demand it reports to the fleet store.
    peak_demand: u32,
    /// The epoch of the latest fair-share table (a new table, a new epoch:
    /// the permits of an older one are not counted in it).
    fair_epoch: u32,
    /// Requests waiting outside the queue for their tenant's token (each
    /// holding a place in the ledger's `max_waiters`): it is busy (not
    /// evictable) while there are any.
    delayed: u32,
    /// (deadline, lease), earliest first. Renewals and releases leave stale
    /// entries behind, skipped when reached and compacted when they outnumber
    /// the live ones.
    expiry: Expiry,
    /// Moving average of how long permits are held, in nanoseconds, for
    /// retry-after hints.
    mean_hold_ns: Option<u64>,
    granted_total: u64,
    rejected_total: u64,
    expired_total: u64,
    limit_changes_total: u64,
    /// [`OVERLOAD_WINDOW`] after it last turned a request away (queue full,
    /// queue timeout, shed): overloaded until then. The end, not the start,
    /// so that judging the pressure on every answer is one comparison.
    overloaded_until: Option<Instant>,
    /// Named in the config file.
    configured: bool,
    /// Touched by the control plane; sticky.
    control_plane: bool,
    /// Taken out of the ledger: it must never grant again.
    evicted: bool,
    /// Since when it has held no lease and had no waiter; `None` while busy
    /// and before its first use.
    idle_since: Option<Instant>,
    /// Whether the idle queue (or its inbox) has an entry for it.
    in_idle_queue: bool,
    /// When the reaper will wake up next (`None`: only when woken). A grant
    /// wakes it only if its lease expires before that; a waiter that has a
    /// slot but no token, only if the token comes before that.
    reaper_alarm: Option<Instant>,
}

impl std::fmt::Debug for Dependency {
    /// By hand: its slot is a part of every id of its leases.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependency")
            .field("name", &self.name)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for State {
    /// By hand: the expiry order holds lease keys, parts of lease ids, which
    /// must never be shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("limits", &self.limits)
            .field("limiter", &self.limiter)
            .field("in_flight", &self.in_flight)
            .field("leases", &self.leases.len())
            .field("queued", &self.waiters.len())
            .field("expiry_entries", &self.expiry.len())
            .field("configured", &self.configured)
            .field("control_plane", &self.control_plane)
            .field("evicted", &self.evicted)
            .field("idle_since", &self.idle_since)
            .finish_non_exhaustive()
    }
}

/// The state's lock; when it is let go, the dependency's idleness is brought
/// up to date, so that no path that changes it can forget to.
struct Locked<'a> {
    dependency: &'a Dependency,
    state: MutexGuard<'a, State>,
    /// The caller's clock reading, if it has one: the idle stamp then costs
    /// no second reading.
    now: Option<Instant>,
}

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let state = &mut *self.state;
        if state.evicted {
            return;
        }
        if state.in_flight > 0 || !state.waiters.is_empty() || state.delayed > 0 {
            state.idle_since = None;
            return;
        }
        let now = self.now;
        let since = *state
            .idle_since
            .get_or_insert_with(|| now.unwrap_or_else(Instant::now));
        if !state.in_idle_queue && state.evictable() {
            state.in_idle_queue = true;
            self.dependency
                .shared
                .idle
                .push(since, self.dependency.me.clone());
        }
    }
}

/// What the evictor found when it looked at a dependency from the idle queue.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IdleCheck {
    /// Idle since the entry's stamp: may go.
    Idle,
    /// Idle, but since later: requeue with this stamp.
    Since(Instant),
    /// Busy, configured or gone: the entry is dropped (it comes back through
    /// the inbox when it goes idle again).
    Keep,
}

#[derive(Debug)]
struct Waiter {
    wake: oneshot::Sender<Wake>,
    /// The tenant token it holds, given back if it leaves without a grant.
    tenant: Option<Reservation>,
    /// Its entry under fair shares.
    fair: Option<FlowRef>,
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
    /// The dependency was evicted after the caller looked it up: look again.
    Evicted,
    Queued {
        /// Takes the request out of the queue if the caller goes first.
        queued: Queued,
        deadline: Instant,
        queue_depth: u32,
    },
    /// Its tenant's token comes at `until`, within its wait: the caller
    /// sleeps until then and resumes it.
    Delayed(Delayed),
}

/// A request waiting outside the queue for its tenant's token (reserved for
/// it). Dropped before it is resumed, it gives the token back.
#[derive(Debug)]
pub(crate) struct Delayed {
    /// `None` once resumed.
    dependency: Option<Arc<Dependency>>,
    tenant: Reservation,
    pub(crate) until: Instant,
    deadline: Instant,
    queue_depth: u32,
}

impl Delayed {
    /// Its token has come: on to the slot and the queue.
    pub(crate) fn resume(mut self, request: &AcquireRequest<'_>, now: Instant) -> Admission {
        match self.dependency.take() {
            Some(dependency) => dependency.admit_delayed(request, &self, now),
            None => Admission::Evicted,
        }
    }
}

impl Drop for Delayed {
    fn drop(&mut self) {
        if let Some(dependency) = self.dependency.take() {
            let now = Instant::now();
            let mut state = dependency.lock_at(now);
            state.delayed -= 1;
            dependency.shared.release_waiter();
            state.unreserve(Some(self.tenant), now);
        }
    }
}

/// A point-in-time view of a dependency, for the control plane.
#[derive(Clone, Debug, PartialEq)]
pub struct DependencyStatus {
    pub name: Arc<str>,
    pub limits: Limits,
    /// The enforced limit (`limit.enforced`), the ceiling and what an
    /// adaptive limit computed.
    pub limit: LimitStatus,
    pub in_flight: u32,
    pub queued: u32,
    pub retry_budget_available: f64,
    /// Tenants whose `tenant_rate` bucket is still refilling.
    pub rated_tenants: u32,
    /// Requests waiting (outside the queue) for their tenant's token.
    pub delayed: u32,
    pub granted_total: u64,
    pub rejected_total: u64,
    pub expired_total: u64,
    /// Moves of the enforced or computed limit.
    pub limit_changes_total: u64,
    /// The pressure at the instant of the status.
    pub pressure: Pressure,
    /// The fair-share table's tenants; empty without fair shares.
    pub fair: FairStatus,
    /// This sidecar's share of a fleet-wide limit; `None` without one.
    pub fleet: Option<FleetStatus>,
}

impl State {
    /// Created by a caller and never configured: may be evicted when idle.
    fn evictable(&self) -> bool {
        !self.configured && !self.control_plane
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        Snapshot {
            limit: self.limiter.enforced(),
            in_flight: self.in_flight,
            queued: self.waiters.len() as u32,
            pressure: self.pressure(now),
        }
    }

    /// The one function that decides the pressure: overloaded for a second
    /// after a turn-away, else saturated when every permit is in use or
    /// someone waits, else elevated from `elevated_at` of the enforced limit.
    /// A compare and a multiply: no allocation, no clock reading.
    fn pressure(&self, now: Instant) -> Pressure {
        let limit = self.limiter.enforced();
        if self.overloaded_until.is_some_and(|until| now < until) {
            Pressure::Overloaded
        } else if self.must_wait(now) {
            Pressure::Saturated
        } else if f64::from(self.in_flight) >= self.limits.elevated_at() * f64::from(limit) {
            Pressure::Elevated
        } else {
            Pressure::None
        }
    }

    /// Whether an arrival would have to wait: no free slot, no token, or
    /// waiters ahead of it (no barging). Saturated pressure is the same test.
    fn must_wait(&self, now: Instant) -> bool {
        self.in_flight >= self.limiter.enforced()
            || !self.waiters.is_empty()
            || !self.has_token(now)
    }

    /// Whether the rate limit (if any) has a token now.
    fn has_token(&self, now: Instant) -> bool {
        self.rate.as_ref().is_none_or(|bucket| bucket.conforms(now))
    }

    /// When the head waiter's token comes, if that is all it waits for (a
    /// slot is free): the instant to run the hand-over again.
    fn token_alarm(&self, now: Instant) -> Option<Instant> {
        let bucket = self.rate.as_ref()?;
        let waiting = !self.waiters.is_empty() && self.in_flight < self.limiter.enforced();
        (waiting && !bucket.conforms(now)).then(|| bucket.ready_at(now, 0))
    }

    /// Whether a degradable request is answered DEGRADE: when it would have
    /// to wait (no free slot, or waiters ahead), or, with `degrade_at =
    /// elevated`, when the pressure before the decision is elevated or worse.
    fn degrades(&self, now: Instant) -> bool {
        self.must_wait(now)
            || match self.limits.degrade_at() {
                DegradeAt::Saturated => false,
                DegradeAt::Elevated => self.pressure(now) >= Pressure::Elevated,
            }
    }

    /// Estimated time until a slot frees up for one more caller: permits free
    /// up at about `limit / mean_hold` a second, and `queued` callers are ahead.
    /// Before any permit was returned, the max wait stands in for the hold time.
    fn queue_retry_after(&self) -> Duration {
        let hold = self
            .mean_hold_ns
            .map_or(self.limits.max_wait(), Duration::from_nanos);
        let ahead = self.waiters.len() as u32 + 1;
        // (A fleet share can be 0: then the hold time itself.)
        let limit = self.limiter.enforced().max(1);
        let estimate = hold.mul_f64(f64::from(ahead) / f64::from(limit));
        estimate.clamp(Duration::from_millis(1), MAX_RETRY_AFTER)
    }

    /// The answer to a request decided without waiting.
    fn decided(
        &self,
        outcome: Result<Grant, Rejection>,
        queue_depth: u32,
        now: Instant,
    ) -> Admission {
        Admission::Decided(Decision {
            outcome,
            queue_wait: Duration::ZERO,
            queue_depth,
            snapshot: self.snapshot(now),
        })
    }

    /// The retry budget's say: a retry takes a token (or learns how long
    /// until one is back), a first try deposits.
    fn charge_budget(&mut self, retry: bool, now: Instant) -> Result<(), Duration> {
        if retry {
            self.budget.try_withdraw(now)
        } else {
            self.budget.deposit(now);
            Ok(())
        }
    }

    /// Gives back the tenant token of a request that ends without a grant.
    fn unreserve(&mut self, tenant: Option<Reservation>, now: Instant) {
        if let (Some(buckets), Some(reservation)) = (self.tenants.as_mut(), tenant) {
            buckets.refund(reservation, now);
        }
    }

    /// The fair-share entry of an arrival, if there are fair shares; each
    /// one is then decided by [`State::arrived`].
    fn flow_of(&mut self, request: &AcquireRequest<'_>) -> Option<FlowRef> {
        let State { fair, waiters, .. } = self;
        fair.as_mut()
            .map(|fair| fair.flow(request.tenant, request.route, waiters))
    }

    /// The answer to a request turned away before the slot (draining, its
    /// tenant's rate, the retry budget), counted in its fair-share entry.
    fn turned_away(
        &mut self,
        request: &AcquireRequest<'_>,
        rejection: Rejection,
        queue_depth: u32,
        now: Instant,
    ) -> Admission {
        let flow = self.flow_of(request);
        self.arrived(flow, Arrival::Rejected);
        self.decided(Err(rejection), queue_depth, now)
    }

    /// What became of an arrival with a fair-share entry.
    fn arrived(&mut self, flow: Option<FlowRef>, arrival: Arrival) {
        if let (Some(fair), Some(flow)) = (self.fair.as_mut(), flow) {
            fair.arrived(flow, arrival, &mut self.waiters);
        }
    }

    /// A permit of a fair-share entry came back.
    fn flow_released(&mut self, flow: Option<FlowRef>) {
        if let (Some(fair), Some(flow)) = (self.fair.as_mut(), flow) {
            fair.released(flow, &mut self.waiters);
        }
    }

    /// Takes a waiter out of the queue, if it is still there: the one way
    /// out of it, which keeps the fair-share table's counts.
    fn take_waiter(&mut self, key: WaiterKey, left: Left) -> Option<Waiter> {
        let (priority, retry) = self.waiters.place(key)?;
        let waiter = self.waiters.remove(key)?;
        if let (Some(fair), Some(flow)) = (self.fair.as_mut(), waiter.fair) {
            fair.dequeued(flow, priority, retry, left, &mut self.waiters);
        }
        Some(waiter)
    }

    /// The next waiter to serve: the highest priority first; then, under
    /// fair shares, the tenant (and route) furthest below its share, else the
    /// oldest.
    fn next_waiter(&mut self, left: Left) -> Option<Waiter> {
        let priority = self.waiters.top_priority()?;
        let key = self
            .fair
            .as_ref()
            .and_then(|fair| fair.next(priority))
            .and_then(|flow| {
                let queue_flow = self.fair.as_ref()?.queue_flow(flow);
                self.waiters.oldest_in_flow(queue_flow, priority)
            })
            .or_else(|| self.waiters.oldest_key())?;
        self.take_waiter(key, left)
    }

    /// Keeps the fleet term in step with the limits: a new fleet-wide limit
    /// grants nothing until the fleet task has asked the store (which it is
    /// woken to do); a removed one leaves the local limit.
    fn refleet(&mut self, shared: &Shared) -> Option<LimitChange> {
        match (self.limits.fleet(), self.fleet.as_mut()) {
            (None, _) => {
                self.fleet = None;
                self.limiter.set_fleet(None)
            }
            (Some(limit), Some(status)) => {
                // The task applies a new fleet limit on its next call.
                status.fallback_share = limit.fallback_share();
                None
            }
            (Some(limit), None) => {
                let status = FleetStatus::starting(limit.max_concurrency(), limit.fallback_share());
                let change = self.limiter.set_fleet(Some(status.enforced));
                self.fleet = Some(status);
                shared.fleet_wake.notify_one();
                change
            }
        }
    }

    /// New fair-share settings: new weights or bound in place; a new `by`
    /// (or fair shares turned on or off) builds a new table, into which the
    /// waiters move in their order and the permits in flight, under their
    /// tenants (their routes' under the tenant's default route).
    fn refair(&mut self, limits: &Limits) {
        let config = limits.fairness();
        if let (Some(fair), Some(config)) = (self.fair.as_mut(), config) {
            if fair.config().by() == config.by() {
                if fair.config() != config {
                    fair.reweigh(config.clone());
                }
                return;
            }
        }
        if self.fair.is_none() && config.is_none() {
            return;
        }
        self.fair_epoch = self.fair_epoch.wrapping_add(1);
        let old = self.fair.take();
        self.fair = config.map(|config| Fair::new(config.clone(), self.fair_epoch));
        let keys = self.waiters.reset_flows();
        let State {
            fair,
            waiters,
            leases,
            ..
        } = self;
        for key in keys {
            let Some(waiter) = waiters.get_mut(key) else {
                continue;
            };
            let entry = waiter.fair.take();
            let Some(fair) = fair.as_mut() else {
                continue;
            };
            // Its tenant, as the old table knew it.
            let tenant = entry.and_then(|flow| old.as_ref()?.tenant_of(flow));
            let Some((priority, retry)) = waiters.place(key) else {
                continue;
            };
            let flow = fair.flow(tenant.as_deref(), None, waiters);
            let queue_flow = fair.queue_flow(flow);
            if let Some(waiter) = waiters.get_mut(key) {
                waiter.fair = Some(flow);
            }
            waiters.set_flow(key, queue_flow);
            fair.arrived(flow, Arrival::Queued(priority, retry), waiters);
        }
        // The permits in flight count in the new table too, under their
        // tenants (the ones granted without a table under the tenant of no
        // tenant, like their waiters). O(leases), once a change.
        for record in leases.values_mut() {
            let tenant = record
                .flow
                .take()
                .and_then(|flow| old.as_ref()?.tenant_of(flow));
            if let Some(fair) = fair.as_mut() {
                let flow = fair.flow(tenant.as_deref(), None, waiters);
                fair.arrived(flow, Arrival::Held, waiters);
                record.flow = Some(flow);
            }
        }
    }

    fn reject(&mut self, reason: RejectReason, retry_after: Duration, now: Instant) -> Rejection {
        if reason.is_overload() {
            self.overloaded_until = Some(now + OVERLOAD_WINDOW);
        }
        self.reject_quietly(reason, retry_after)
    }

    /// A rejection that says nothing of the dependency's load (one tenant
    /// over its own rate): counted, but the pressure others see is left.
    fn reject_quietly(&mut self, reason: RejectReason, retry_after: Duration) -> Rejection {
        self.rejected_total += 1;
        Rejection {
            reason,
            retry_after,
        }
    }

    /// Answers a waiter that leaves the queue without a permit. Its receiver
    /// is alive: a waiter leaves the queue only under this lock.
    fn turn_away(
        &mut self,
        waiter: Waiter,
        reason: RejectReason,
        retry_after: Duration,
        now: Instant,
    ) {
        self.unreserve(waiter.tenant, now);
        let rejection = self.reject(reason, retry_after, now);
        let _ = waiter.wake.send(Wake {
            outcome: Err(rejection),
            snapshot: self.snapshot(now),
        });
    }

    /// `QUEUE_TIMEOUT` with the current estimate, for a waiter that ran out.
    fn timed_out(&mut self, now: Instant) -> Wake {
        let retry_after = self.queue_retry_after();
        let rejection = self.reject(RejectReason::QueueTimeout, retry_after, now);
        Wake {
            outcome: Err(rejection),
            snapshot: self.snapshot(now),
        }
    }

    fn record_hold(&mut self, held: Duration) {
        // An EWMA with weight 1/8: smooth enough to ignore one slow call,
        // quick enough to follow a dependency that slows down.
        // In integer nanoseconds: no float conversions or Duration
        // normalisation on the release path. (u64 nanoseconds overflow after
        // 584 years; saturating all the same.)
        let held = u64::try_from(held.as_nanos()).unwrap_or(u64::MAX);
        self.mean_hold_ns = Some(match self.mean_hold_ns {
            Some(mean) => mean.saturating_mul(7).saturating_add(held) / 8,
            None => held,
        });
    }
}

impl Dependency {
    pub(crate) fn new(
        name: Arc<str>,
        limits: Limits,
        configured: bool,
        shared: Arc<Shared>,
    ) -> Arc<Dependency> {
        let now = Instant::now();
        let dependency = Arc::new_cyclic(|me| Dependency {
            me: me.clone(),
            slot: shared.slots.take(me.clone()),
            name,
            shared,
            state: Mutex::new(State {
                budget: RetryBudget::new(limits.retry_budget(), now),
                rate: limits.rate().map(Gcra::new),
                tenants: limits.tenant_rate().map(TenantBuckets::new),
                fair: limits.fairness().map(|config| Fair::new(config.clone(), 0)),
                fair_epoch: 0,
                fleet: None,
                peak_demand: 0,
                delayed: 0,
                limiter: Limiter::new(limits.max_concurrency(), limits.adaptive(), now),
                limits,
                in_flight: 0,
                leases: HashMap::default(),
                waiters: WaiterQueue::default(),
                expiry: Expiry::default(),
                mean_hold_ns: None,
                granted_total: 0,
                rejected_total: 0,
                expired_total: 0,
                limit_changes_total: 0,
                overloaded_until: None,
                configured,
                control_plane: false,
                evicted: false,
                idle_since: None,
                in_idle_queue: false,
                reaper_alarm: None,
            }),
            reaper: Arc::new(Notify::new()),
        });
        {
            let mut state = dependency.lock();
            state.refleet(&dependency.shared);
        }
        reaper::spawn(Arc::downgrade(&dependency), dependency.reaper.clone());
        dependency
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn lock(&self) -> Locked<'_> {
        self.lock_with(None)
    }

    /// [`Dependency::lock`] by a caller that has read the clock already.
    fn lock_at(&self, now: Instant) -> Locked<'_> {
        self.lock_with(Some(now))
    }

    fn lock_with(&self, now: Option<Instant>) -> Locked<'_> {
        // A panic while holding the lock cannot leave the counts half-updated
        // in a way that matters more than stopping service would.
        Locked {
            dependency: self,
            state: self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            now,
        }
    }

    /// Marks it as named in the config file (or not any more).
    pub(crate) fn set_configured(&self, configured: bool) {
        self.lock().configured = configured;
    }

    /// Marks it as touched by the control plane, which keeps it for good.
    pub(crate) fn pin(&self) {
        self.lock().control_plane = true;
    }

    /// Whether it is idle since `since` and may be evicted.
    pub(crate) fn idle_check(&self, since: Instant) -> IdleCheck {
        let mut locked = self.lock();
        let state = &mut *locked;
        let idle = state.in_flight == 0 && state.waiters.is_empty() && state.delayed == 0;
        match state.idle_since {
            Some(at) if idle && state.evictable() && !state.evicted => {
                if at == since {
                    IdleCheck::Idle
                } else {
                    IdleCheck::Since(at)
                }
            }
            _ => {
                state.in_idle_queue = false;
                IdleCheck::Keep
            }
        }
    }

    /// Evicts it if it is still idle since `since`: from now on it grants
    /// nothing, and a caller that still holds it looks it up again.
    pub(crate) fn evict_if_idle(&self, since: Instant) -> bool {
        let mut state = self.lock();
        let idle = state.in_flight == 0 && state.waiters.is_empty() && state.delayed == 0;
        if idle && state.evictable() && !state.evicted && state.idle_since == Some(since) {
            state.evicted = true;
            true
        } else {
            // Used in the meantime: when idle again, it enters the queue
            // anew (at once, if it already is).
            state.in_idle_queue = false;
            false
        }
    }

    /// Decides on arrival, queues the request, or (its tenant's token still
    /// to come) has it come back then.
    pub(crate) fn admit(self: &Arc<Self>, request: &AcquireRequest<'_>, now: Instant) -> Admission {
        let mut state = self.lock_at(now);
        if state.evicted {
            return Admission::Evicted;
        }
        // In use: it leaves the idle state (and goes back to it, stamped
        // now, if this request leaves it without a lease or a waiter).
        state.idle_since = None;
        let queue_depth = state.waiters.len() as u32;
        if state.fleet.is_some() {
            state.peak_demand = state.peak_demand.max(state.in_flight + queue_depth + 1);
        }

        if self.shared.draining.load(Ordering::Acquire) {
            let rejection = state.reject(RejectReason::ShuttingDown, SHUTDOWN_RETRY_AFTER, now);
            return state.turned_away(request, rejection, queue_depth, now);
        }
        let wait = request.max_wait.map_or(state.limits.max_wait(), |cap| {
            cap.min(state.limits.max_wait())
        });

        // The tenant's own token first (before the retry budget, which one
        // tenant's refused retries must not drain for the others): reserved
        // now, or at the instant it comes if that is within the wait (the
        // request then comes back then, holding up nobody in the queue), or
        // refused at once.
        let mut tenant = None;
        if let (Some(buckets), Some(name)) = (state.tenants.as_mut(), request.tenant) {
            let (key, at) = buckets.ready_at(buckets.key(name), now);
            if at > now {
                let retry_after = (at - now).min(MAX_RETRY_AFTER);
                let reason = if request.degradable {
                    RejectReason::Degrade
                } else if at > now + wait {
                    RejectReason::RateLimited
                } else if !self.shared.reserve_waiter() {
                    let retry_after = state.queue_retry_after();
                    let rejection = state.reject(RejectReason::QueueFull, retry_after, now);
                    return state.turned_away(request, rejection, queue_depth, now);
                } else {
                    let reservation = buckets.reserve(key, at);
                    state.delayed += 1;
                    return Admission::Delayed(Delayed {
                        dependency: Some(self.clone()),
                        tenant: reservation,
                        until: at,
                        deadline: now + wait,
                        queue_depth,
                    });
                };
                // One tenant over its own rate: not the dependency's load.
                let rejection = state.reject_quietly(reason, retry_after);
                return state.turned_away(request, rejection, queue_depth, now);
            }
            tenant = Some(buckets.reserve(key, now));
        }
        if let Err(retry_after) = state.charge_budget(request.is_retry(), now) {
            state.unreserve(tenant, now);
            let rejection = state.reject(RejectReason::RetryBudgetExhausted, retry_after, now);
            return state.turned_away(request, rejection, queue_depth, now);
        }
        self.admit_slot(state, request, now, now + wait, tenant, queue_depth)
    }

    /// A delayed request whose tenant token has come: on to the slot, the
    /// dependency's token and the queue, for what is left of its wait.
    fn admit_delayed(
        self: &Arc<Self>,
        request: &AcquireRequest<'_>,
        delayed: &Delayed,
        now: Instant,
    ) -> Admission {
        let mut state = self.lock_at(now);
        state.delayed -= 1;
        self.shared.release_waiter();
        if state.evicted {
            // Never while it counted as busy; the caller looks it up again.
            return Admission::Evicted;
        }
        let refused = if self.shared.draining.load(Ordering::Acquire) {
            Some((RejectReason::ShuttingDown, SHUTDOWN_RETRY_AFTER))
        } else {
            state
                .charge_budget(request.is_retry(), now)
                .err()
                .map(|retry_after| (RejectReason::RetryBudgetExhausted, retry_after))
        };
        if let Some((reason, retry_after)) = refused {
            state.unreserve(Some(delayed.tenant), now);
            let rejection = state.reject(reason, retry_after, now);
            return state.turned_away(request, rejection, delayed.queue_depth, now);
        }
        self.admit_slot(
            state,
            request,
            now,
            delayed.deadline,
            Some(delayed.tenant),
            delayed.queue_depth,
        )
    }

    /// Grants, queues or refuses a request that has its tenant's token (if
    /// it needs one: `tenant`, given back on a refusal).
    fn admit_slot(
        self: &Arc<Self>,
        mut state: Locked<'_>,
        request: &AcquireRequest<'_>,
        now: Instant,
        deadline: Instant,
        tenant: Option<Reservation>,
        queue_depth: u32,
    ) -> Admission {
        let flow = state.flow_of(request);
        let refuse = |mut state: Locked<'_>, reason, retry_after| {
            state.unreserve(tenant, now);
            state.arrived(flow, Arrival::Rejected);
            let rejection = state.reject(reason, retry_after, now);
            state.decided(Err(rejection), queue_depth, now)
        };
        // Never queued: it serves its fallback now, and leaves the queue (and,
        // with degrade_at = elevated, the headroom) to callers without one.
        if request.degradable && state.degrades(now) {
            let retry_after = state.queue_retry_after();
            return refuse(state, RejectReason::Degrade, retry_after);
        }

        // No barging: a free slot (and token) goes to a waiter before a
        // newcomer.
        if !state.must_wait(now) {
            let grant = self.grant(&mut state, now, flow);
            state.arrived(flow, Arrival::Granted);
            return state.decided(Ok(grant), queue_depth, now);
        }

        let wait = deadline.saturating_duration_since(now);
        // Deadline-predictive: each waiter served before it takes a token
        // first, so its own comes no sooner than this. Beyond its wait it
        // is refused now, not after waiting for nothing.
        let ahead = state.waiters.ahead_of(request.priority) as u32;
        if let Some(token) = state.rate.as_ref().map(|b| b.ready_at(now, ahead)) {
            // (A token that is there now is no reason to refuse, even past
            // the deadline: a resumed request may arrive after it.)
            if token > now && token > deadline {
                let retry_after = (token - now).min(MAX_RETRY_AFTER);
                return refuse(state, RejectReason::RateLimited, retry_after);
            }
        }
        if wait.is_zero() {
            let retry_after = state.queue_retry_after();
            return refuse(state, RejectReason::QueueTimeout, retry_after);
        }

        let has_room =
            state.waiters.len() < state.limits.max_queue() as usize && self.shared.reserve_waiter();
        if !has_room {
            // Full: take the place of a lower-priority waiter, or (fair
            // shares) of a waiter of the tenant most over its share, or go
            // away.
            let retry = request.is_retry();
            let victim = state
                .waiters
                .victim_for(request.priority, retry)
                .or_else(|| {
                    let (fair, flow) = (state.fair.as_ref()?, flow?);
                    fair.victim(flow, request.priority, retry, &state.waiters)
                });
            match victim.and_then(|key| state.take_waiter(key, Left::Rejected)) {
                Some(victim) => {
                    // The displaced waiter's place in the global waiter count
                    // passes to the arrival.
                    let retry_after = state.queue_retry_after();
                    state.turn_away(victim, RejectReason::Shed, retry_after, now);
                }
                None => {
                    let retry_after = state.queue_retry_after();
                    return refuse(state, RejectReason::QueueFull, retry_after);
                }
            }
        }

        let (tx, rx) = oneshot::channel();
        let queue_flow = flow
            .zip(state.fair.as_ref())
            .map(|(flow, fair)| fair.queue_flow(flow));
        let waiter = Waiter {
            wake: tx,
            tenant,
            fair: flow,
        };
        let key = state
            .waiters
            .push(request.priority, request.is_retry(), queue_flow, waiter);
        state.arrived(flow, Arrival::Queued(request.priority, request.is_retry()));
        // With a slot free, it waits only for its token.
        self.arm_token_alarm(&mut state, now);
        Admission::Queued {
            queued: Queued::new(self.clone(), key, rx),
            deadline,
            queue_depth,
        }
    }

    /// A waiter whose wait ran out: it leaves with QUEUE_TIMEOUT, unless it was
    /// answered (granted or shed) just before, in which case that answer wins.
    pub(crate) fn time_out(&self, key: WaiterKey, wake: &mut oneshot::Receiver<Wake>) -> Wake {
        let now = Instant::now();
        let mut state = self.lock_at(now);
        if let Some(waiter) = state.take_waiter(key, Left::Rejected) {
            self.shared.release_waiter();
            state.unreserve(waiter.tenant, now);
            return state.timed_out(now);
        }
        // An error is unreachable while waiters only leave under the lock
        // with an answer sent; answering timeout keeps the caller correct.
        wake.try_recv().unwrap_or_else(|_| state.timed_out(now))
    }

    /// A waiter whose caller went away: it leaves the queue, and a grant that
    /// raced with the cancellation goes back at once.
    pub(crate) fn abandon(self: &Arc<Self>, key: WaiterKey, mut wake: oneshot::Receiver<Wake>) {
        let mut state = self.lock();
        if let Some(waiter) = state.take_waiter(key, Left::Gone) {
            self.shared.release_waiter();
            state.unreserve(waiter.tenant, Instant::now());
            return;
        }
        if let Ok(Wake {
            outcome: Ok(grant), ..
        }) = wake.try_recv()
        {
            if let Some(record) = state.leases.remove(&grant.lease.key) {
                let now = Instant::now();
                if let Some(bucket) = &mut state.rate {
                    bucket.refund(now);
                }
                state.flow_released(record.flow);
                self.free_slot(&mut state, now);
            }
        }
    }

    /// Ends a live lease (on a caller's or a closing session's behalf):
    /// what the caller reports feeds the limiter before the slot is handed
    /// on. `None` if the lease is not one of its live ones.
    ///
    /// Takes the caller's reference to the dependency, which moves into the
    /// ended lease: a release counts no reference up or down.
    pub(crate) fn release(
        self: Arc<Self>,
        lease: LeaseId,
        report: Report,
        now: Instant,
    ) -> Option<EndedLease> {
        let (snapshot, held, change) = {
            let mut state = self.lock_at(now);
            let LeaseRecord {
                deadline,
                granted_at,
                in_flight,
                owner,
                flow,
            } = state.leases.remove(&lease.key)?;
            state.flow_released(flow);
            if let Some(owner) = owner {
                owner.forget(lease.key);
            }
            let held = now.saturating_duration_since(granted_at);
            state.record_hold(held);
            let kind = match report.outcome {
                Outcome::Success => Some(SampleKind::Latency(report.latency.unwrap_or(held))),
                outcome if outcome.is_drop() => Some(SampleKind::Drop),
                _ => None,
            };
            let change = kind.and_then(|kind| {
                state.limiter.sample(&Sample {
                    kind,
                    in_flight,
                    at: now,
                })
            });
            state.in_flight -= 1;
            state.expiry.forget(deadline, lease.key);
            self.limit_moved(&mut state, change.as_ref(), now);
            self.compact_expiry(&mut state);
            let snapshot = state.snapshot(now);
            (snapshot, held, change.map(|change| (change, snapshot)))
        };
        self.report(change);
        Some(EndedLease {
            dependency: self,
            lease,
            held,
            end: LeaseEnd::Released(report.outcome),
            snapshot,
        })
    }

    /// Makes `owner` the owner of the live lease `key`; false if the owner
    /// closed first (the caller then releases the lease). A lease already
    /// gone (released or expired on its way here) has nothing to adopt.
    pub(crate) fn adopt(&self, key: LeaseKey, owner: &Arc<Owner>) -> bool {
        let mut state = self.lock();
        let record = state.leases.get_mut(&key);
        // Lock order: the dependency's lock, then the session's.
        if !owner.take(key, record.is_some()) {
            return false;
        }
        if let Some(record) = record {
            record.owner = Some(owner.clone());
        }
        true
    }

    /// Whether `key` is one of its live leases.
    pub(crate) fn holds(&self, key: LeaseKey) -> bool {
        self.lock().leases.contains_key(&key)
    }

    /// Leases it holds.
    pub(crate) fn lease_count(&self) -> usize {
        self.lock().leases.len()
    }

    /// Pushes a live lease's deadline back by the lease TTL. `None` if the
    /// lease is gone or already past its deadline.
    pub(crate) fn renew(&self, key: LeaseKey, now: Instant) -> Option<Duration> {
        let mut state = self.lock();
        let ttl = state.limits.lease_ttl();
        let deadline = now + ttl;
        {
            let record = state.leases.get_mut(&key)?;
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

    /// Expires every lease whose deadline has passed (each a drop for the
    /// limiter), tells the observer, and returns the next deadline to wake
    /// up for.
    pub(crate) fn reap(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        let mut state = self.lock_at(now);
        let mut ended = Vec::new();
        let mut changes = Vec::new();
        while let Some((deadline, key)) = state.expiry.peek() {
            if deadline > now {
                break;
            }
            state.expiry.pop();
            // Renewed leases have a later deadline in their record and stay.
            let expired = match state.leases.get(&key) {
                Some(record) if record.deadline <= now => state.leases.remove(&key),
                _ => None,
            };
            if let Some(record) = expired {
                if let Some(owner) = &record.owner {
                    owner.forget(key);
                }
                state.expired_total += 1;
                state.in_flight -= 1;
                state.flow_released(record.flow);
                let sample = Sample {
                    kind: SampleKind::Drop,
                    in_flight: record.in_flight,
                    at: now,
                };
                changes.extend(state.limiter.sample(&sample));
                ended.push(EndedLease {
                    dependency: self.clone(),
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
            self.limit_moved(&mut state, changes.last(), now);
            let snapshot = state.snapshot(now);
            for lease in &mut ended {
                lease.snapshot = snapshot;
            }
        } else {
            // A token a waiter waited for may have come.
            self.grant_waiters(&mut state, now);
        }
        // With nothing to expire, no lease granted from now on can expire
        // before now + TTL (unless the TTL is lowered, which wakes it): the
        // reaper sleeps until then, so grants in the meantime need not wake
        // it (an idle dependency's reaper wakes once a TTL).
        let next = state
            .expiry
            .peek()
            .map(|(deadline, _)| deadline)
            .or_else(|| now.checked_add(state.limits.lease_ttl()));
        let next = match (next, state.token_alarm(now)) {
            (Some(next), Some(token)) => Some(next.min(token)),
            (next, token) => next.or(token),
        };
        state.reaper_alarm = next;
        let load = state.snapshot(now);
        drop(state);
        for lease in &ended {
            self.shared.observer.lease_expired(lease);
        }
        for change in changes {
            self.report(Some((change, load)));
        }
        next
    }

    /// Applies new limits. Raising the concurrency grants waiters at once;
    /// lowering it never revokes a held lease; a smaller queue sheds its
    /// newest lowest-priority waiters.
    pub(crate) fn set_limits(self: &Arc<Self>, limits: Limits, now: Instant, source: &str) {
        let change = {
            let mut state = self.lock();
            let change = self.apply_limits(&mut state, limits, now, source);
            change.map(|change| (change, state.snapshot(now)))
        };
        self.report(change);
    }

    /// Applies `patch` to the current limits under one lock hold, so that
    /// concurrent updates of different fields never undo each other.
    pub(crate) fn patch_limits(
        self: &Arc<Self>,
        patch: &LimitsPatch,
        now: Instant,
        source: &str,
    ) -> Result<(), InvalidLimit> {
        let change = {
            let mut state = self.lock();
            let limits = state.limits.patched(patch)?;
            let change = self.apply_limits(&mut state, limits, now, source);
            change.map(|change| (change, state.snapshot(now)))
        };
        self.report(change);
        Ok(())
    }

    fn apply_limits(
        self: &Arc<Self>,
        state: &mut State,
        limits: Limits,
        now: Instant,
        source: &str,
    ) -> Option<LimitChange> {
        if limits != state.limits {
            let adaptive = limits.adaptive();
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
                elevated_at = limits.elevated_at(),
                degrade_at = limits.degrade_at().as_str(),
                adaptive = adaptive.map_or("off", |a| a.algorithm().as_str()),
                adaptive_shadow = adaptive.is_some_and(|a| a.shadow()),
                adaptive_min_limit = adaptive.map(|a| a.min_limit()),
                rate_per_second = limits.rate().map(|r| r.per_second()),
                rate_burst = limits.rate().map(|r| r.burst()),
                tenant_rate_per_second = limits.tenant_rate().map(|r| r.per_second()),
                tenant_rate_burst = limits.tenant_rate().map(|r| r.burst()),
                in_flight = state.in_flight,
                queued = state.waiters.len(),
                "limits changed"
            );
        }
        state.budget.reconfigure(limits.retry_budget(), now);
        state.rate = rebucket(state.rate.take(), limits.rate(), now);
        state.tenants = rebucket(state.tenants.take(), limits.tenant_rate(), now);
        state.refair(&limits);
        let change = state
            .limiter
            .reconfigure(limits.max_concurrency(), limits.adaptive(), now);
        state.limits = limits;
        let change = LimitChange::merge(change, state.refleet(&self.shared));
        while state.waiters.len() > state.limits.max_queue() as usize {
            let Some(victim) = state
                .waiters
                .newest_lowest()
                .and_then(|k| state.take_waiter(k, Left::Rejected))
            else {
                break;
            };
            self.shared.release_waiter();
            let retry_after = state.queue_retry_after();
            state.turn_away(victim, RejectReason::Shed, retry_after, now);
        }
        self.limit_moved(state, change.as_ref(), now);
        change
    }

    /// Answers every waiter SHUTTING_DOWN.
    pub(crate) fn drain_waiters(&self) {
        let now = Instant::now();
        let mut state = self.lock_at(now);
        while let Some(waiter) = state.next_waiter(Left::Rejected) {
            self.shared.release_waiter();
            state.turn_away(
                waiter,
                RejectReason::ShuttingDown,
                SHUTDOWN_RETRY_AFTER,
                now,
            );
        }
    }

    /// The one place a limit move takes effect: counts it and re-runs the
    /// hand-over (which also runs when a slot frees, so it is always called).
    fn limit_moved(
        self: &Arc<Self>,
        state: &mut State,
        change: Option<&LimitChange>,
        now: Instant,
    ) {
        if change.is_some() {
            state.limit_changes_total += 1;
        }
        self.grant_waiters(state, now);
    }

    /// Tells the observer about a limit move and the load it left, outside
    /// the lock.
    fn report(&self, change: Option<(LimitChange, Snapshot)>) {
        if let Some((change, load)) = change {
            self.shared
                .observer
                .limit_changed(&self.name, &change, load);
        }
    }

    /// Its fleet-wide limit, if it has one.
    pub(crate) fn fleet_limit(&self) -> Option<super::limits::FleetLimit> {
        self.lock().limits.fleet()
    }

    /// What the fleet task reports to the store: the demand since its last
    /// reading (which starts a new one) and what is in flight now. `None`
    /// without a fleet-wide limit.
    pub(crate) fn fleet_reading(&self) -> Option<FleetReading> {
        let mut state = self.lock();
        state.fleet.as_ref()?;
        let local_limit = state.limiter.local();
        let now_demand = state.in_flight + state.waiters.len() as u32;
        let peak = std::mem::replace(&mut state.peak_demand, 0).max(now_demand);
        Some(FleetReading {
            in_flight: state.in_flight,
            local_limit,
            demand: peak.min(local_limit),
        })
    }

    /// The fleet task's new word: its `enforced` becomes the fleet term of
    /// the enforced limit (raising it grants waiters at once; lowering it
    /// revokes nothing). Ignored when the dependency has no fleet-wide limit
    /// (any more).
    pub(crate) fn set_fleet(self: &Arc<Self>, status: FleetStatus, now: Instant) {
        let change = {
            let mut state = self.lock_at(now);
            if state.fleet.is_none() {
                return;
            }
            let change = state.limiter.set_fleet(Some(status.enforced));
            state.fleet = Some(status);
            self.limit_moved(&mut state, change.as_ref(), now);
            change.map(|change| (change, state.snapshot(now)))
        };
        self.report(change);
    }

    /// Its status, with the tenants of its fair-share table as `detail`
    /// says (their shares computed after the lock is let go).
    pub fn status(&self, detail: TenantDetail) -> DependencyStatus {
        let mut state = self.lock();
        let now = Instant::now();
        let mut status = DependencyStatus {
            name: self.name.clone(),
            limits: state.limits.clone(),
            limit: state.limiter.status(),
            in_flight: state.in_flight,
            queued: state.waiters.len() as u32,
            retry_budget_available: state.budget.available(now),
            rated_tenants: state.tenants.as_mut().map_or(0, |t| {
                t.forget_full(now);
                t.len() as u32
            }),
            delayed: state.delayed,
            granted_total: state.granted_total,
            rejected_total: state.rejected_total,
            expired_total: state.expired_total,
            limit_changes_total: state.limit_changes_total,
            pressure: state.pressure(now),
            fair: FairStatus::default(),
            fleet: state.fleet.clone(),
        };
        let reading = state
            .fair
            .as_ref()
            .map(|fair| fair.read(state.limiter.enforced(), detail));
        drop(state);
        if let Some(reading) = reading {
            status.fair = reading.finish();
        }
        status
    }

    /// Checks the fair-share table against the queue (tests).
    #[cfg(test)]
    pub(crate) fn check_fair(&self) {
        let state = self.lock();
        if let Some(fair) = &state.fair {
            fair.check(&state.waiters);
        }
    }

    #[cfg(test)]
    pub(crate) fn expiry_len(&self) -> usize {
        self.lock().expiry.len()
    }

    /// A new lease (of the fair-share entry `flow`, whose count the caller
    /// keeps).
    fn grant(self: &Arc<Self>, state: &mut State, now: Instant, flow: Option<FlowRef>) -> Grant {
        let ttl = state.limits.lease_ttl();
        let lease = LeaseId::random(self.shared.epoch, self.slot);
        let deadline = now + ttl;
        state.leases.insert(
            lease.key,
            LeaseRecord {
                deadline,
                granted_at: now,
                in_flight: state.in_flight + 1,
                owner: None,
                flow,
            },
        );
        state.in_flight += 1;
        state.granted_total += 1;
        if let Some(bucket) = &mut state.rate {
            bucket.spend(now);
        }
        self.push_expiry(state, deadline, lease.key);
        Grant { lease, ttl }
    }

    fn free_slot(self: &Arc<Self>, state: &mut State, now: Instant) {
        state.in_flight -= 1;
        self.grant_waiters(state, now);
    }

    /// Hands free slots (each with a token, under a rate limit) to waiters,
    /// best first; when only a token is missing, the reaper runs it again
    /// when the token comes.
    fn grant_waiters(self: &Arc<Self>, state: &mut State, now: Instant) {
        while state.in_flight < state.limiter.enforced() && !state.waiters.is_empty() {
            if !state.has_token(now) {
                self.arm_token_alarm(state, now);
                break;
            }
            let Some(waiter) = state.next_waiter(Left::Granted) else {
                break;
            };
            self.shared.release_waiter();
            let flow = waiter.fair;
            let grant = self.grant(state, now, flow);
            let snapshot = state.snapshot(now);
            let Waiter { wake, tenant, .. } = waiter;
            if wake
                .send(Wake {
                    outcome: Ok(grant),
                    snapshot,
                })
                .is_err()
            {
                // The waiter is gone (it cannot be while queued, see `abandon`):
                // take the slot (and the token) straight back.
                state.leases.remove(&grant.lease.key);
                state.in_flight -= 1;
                if let Some(bucket) = &mut state.rate {
                    bucket.refund(now);
                }
                state.unreserve(tenant, now);
                state.flow_released(flow);
            }
        }
    }

    /// Wakes the reaper for the head waiter's token, if that is what it
    /// waits for and the reaper would sleep past it.
    fn arm_token_alarm(&self, state: &mut State, now: Instant) {
        if let Some(at) = state.token_alarm(now) {
            if state.reaper_alarm.is_none_or(|alarm| at < alarm) {
                state.reaper_alarm = Some(at);
                self.reaper.notify_one();
            }
        }
    }

    /// O(1) while the TTL is unchanged; wakes the reaper when the new
    /// deadline comes before the one it sleeps until.
    fn push_expiry(&self, state: &mut State, deadline: Instant, key: LeaseKey) {
        state.expiry.push(deadline, key);
        if state.reaper_alarm.is_none_or(|alarm| deadline < alarm) {
            state.reaper_alarm = Some(deadline);
            self.reaper.notify_one();
        }
    }

    /// Drops stale expiry entries once they outnumber the live ones, so the
    /// expiry order stays within twice the leases held plus a constant
    /// (amortised O(1) per release or renewal).
    fn compact_expiry(&self, state: &mut State) {
        if state.expiry.len() <= 2 * state.in_flight as usize + 64 {
            return;
        }
        let State { expiry, leases, .. } = state;
        expiry.retain(|(deadline, key)| leases.get(key).is_some_and(|r| r.deadline == *deadline));
    }
}

impl Drop for Dependency {
    fn drop(&mut self) {
        // Lets the reaper notice that its dependency is gone.
        self.reaper.notify_one();
        self.shared.slots.give_back(self.slot);
    }
}
