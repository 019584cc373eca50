//! Random sequences of ledger operations (acquire, release, renew, cancel,
//! time steps, limit patches with adaptive limits on and off) on the real
//! ledger under tokio's paused clock, checked after every step against a
//! reference model of the semantics.
//!
//! The model predicts, per dependency, which request is granted, queued,
//! shed or refused, which waiter a freed slot goes to (strict priority,
//! FIFO within a priority), when leases expire and waiters time out, and the
//! counters. After every step it checks: every task's answer, `in_flight`
//! and `queued` per dependency, `in_flight <= enforced` after any grant,
//! no waiter while a slot is free, `queued <= max_queue`, the global waiter
//! cap, no leak (`in_flight` and `leases()` equal the live leases),
//! release/renew of an unknown, released, expired or foreign lease is
//! refused, a cancelled waiter never holds a lease, and granted, rejected
//! and expired totals.
//!
//! What the model does not predict, it reads and bounds: an adaptive
//! limit's value (read from the ledger after each step, then checked to lie
//! within 1..=max_concurrency, and to equal it when static), and the retry
//! budget (a retry refused RETRY_BUDGET_EXHAUSTED on arrival is accepted).
//!
//! Time: operations happen at even milliseconds and lease TTLs are even, while
//! every queue wait is odd, so a lease never expires in the same instant as a
//! waiter times out (that tie is a true race, either answer is right). Time
//! steps advance from event to event, so the order of events is the model's.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use futures::FutureExt;
use libfuzzer_sys::fuzz_target;
use rate_governor::ledger::limit::{AdaptivePatch, Algorithm, AlgorithmChoice};
use rate_governor::ledger::{
    AcquireRequest, Decision, LeaseEnd, LeaseId, Ledger, LedgerConfig, LedgerError, Limits,
    LimitsPatch, Outcome, Priority, RejectReason, Report,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
const MAX_WAITERS: usize = 6;
const MAX_OPS: usize = 64;
/// Yields after each step so the tasks it woke run before the check. One is
/// enough in every run so far (150k inputs); none fails within seconds (the
/// check sees a granted task still running), so the harness can tell. Four
/// for margin: each yield polls the time driver, and 16 made the target 2.5x
/// slower. `LEDGER_OPS_SETTLE=N` overrides it, to repeat that experiment.
const SETTLE_YIELDS: usize = 4;

#[derive(Arbitrary, Debug)]
enum Op {
    Acquire {
        dep: u8,
        priority: u8,
        retry: bool,
        wait: Option<u16>,
    },
    Release {
        pick: u8,
        outcome: u8,
        latency_ms: Option<u16>,
    },
    /// Release a lease that is not live: released, expired, foreign, forged.
    ReleaseStale {
        pick: u8,
        kind: u8,
    },
    Renew {
        pick: u8,
    },
    Cancel {
        pick: u8,
    },
    /// Release a lease and cancel a waiter before it runs: the grant the
    /// release hands it races with the cancellation.
    ReleaseThenCancel {
        pick: u8,
        victim: Option<u8>,
    },
    Advance {
        ms: u16,
    },
    Patch {
        dep: u8,
        max_concurrency: Option<u8>,
        max_queue: Option<u8>,
        max_wait: Option<u16>,
        lease_ttl: Option<u16>,
        adaptive: Option<AdaptiveOp>,
    },
}

#[derive(Arbitrary, Debug)]
enum AdaptiveOp {
    Off,
    On {
        algorithm: u8,
        shadow: bool,
        min_limit: u8,
        initial_limit: u8,
        window_ms: u16,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting { seq: u64, deadline: Instant },
    Granted,
    Rejected(RejectReason),
    Cancelled,
}

/// What a task's future came back with.
#[derive(Clone, Debug, PartialEq)]
enum Real {
    Running,
    Granted(LeaseId, Duration),
    Rejected(RejectReason),
    Cancelled,
}

struct Task {
    dep: usize,
    priority: Priority,
    retry: bool,
    handle: Option<JoinHandle<Result<Decision, LedgerError>>>,
    real: Real,
    model: State,
}

struct Holder {
    task: usize,
    dep: usize,
    /// Known once the task's answer has been read.
    lease: Option<LeaseId>,
    deadline: Instant,
}

#[derive(Clone)]
struct Dep {
    exists: bool,
    max_concurrency: u32,
    max_queue: u32,
    max_wait: Duration,
    lease_ttl: Duration,
    /// `Some(min_limit)` while an adaptive limit is on.
    adaptive: Option<u32>,
    in_flight: u32,
    granted: u64,
    rejected: u64,
    expired: u64,
}

struct World {
    ledger: Arc<Ledger>,
    now: Instant,
    tasks: Vec<Task>,
    holders: Vec<Holder>,
    deps: [Dep; 3],
    seq: u64,
    /// Leases no longer live, with why: released or expired.
    dead: Vec<LeaseId>,
    foreign: Option<LeaseId>,
    /// Dependencies that granted during the current step.
    granted_now: [bool; 3],
}

fn defaults() -> Limits {
    Limits::default()
        .patched(&LimitsPatch {
            max_concurrency: Some(2),
            max_queue: Some(3),
            max_wait: Some(Duration::from_millis(999)),
            lease_ttl: Some(Duration::from_millis(600)),
            ..Default::default()
        })
        .expect("valid defaults")
}

fn priority(value: u8) -> Priority {
    Priority::ALL[value as usize % 3]
}

async fn settle() {
    static YIELDS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let yields = *YIELDS.get_or_init(|| {
        std::env::var("LEDGER_OPS_SETTLE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(SETTLE_YIELDS)
    });
    for _ in 0..yields {
        tokio::task::yield_now().await;
    }
}

impl World {
    fn new(ledger: Arc<Ledger>) -> World {
        let limits = defaults();
        let dep = Dep {
            exists: false,
            max_concurrency: limits.max_concurrency(),
            max_queue: limits.max_queue(),
            max_wait: limits.max_wait(),
            lease_ttl: limits.lease_ttl(),
            adaptive: None,
            in_flight: 0,
            granted: 0,
            rejected: 0,
            expired: 0,
        };
        World {
            ledger,
            now: Instant::now(),
            tasks: Vec::new(),
            holders: Vec::new(),
            deps: [dep.clone(), dep.clone(), dep],
            seq: 0,
            dead: Vec::new(),
            foreign: None,
            granted_now: [false; 3],
        }
    }

    fn enforced(&self, dep: usize) -> u32 {
        match self.ledger.status(NAMES[dep]) {
            Some(status) => status.limit.enforced,
            None => self.deps[dep].max_concurrency,
        }
    }

    fn waiting(&self, dep: usize) -> Vec<usize> {
        let mut waiting: Vec<(u64, usize)> = self
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.dep == dep)
            .filter_map(|(i, t)| match t.model {
                State::Waiting { seq, .. } => Some((seq, i)),
                _ => None,
            })
            .collect();
        waiting.sort();
        waiting.into_iter().map(|(_, i)| i).collect()
    }

    fn all_waiting(&self) -> Vec<usize> {
        (0..3).flat_map(|d| self.waiting(d)).collect()
    }

    fn seq_of(&self, task: usize) -> u64 {
        match self.tasks[task].model {
            State::Waiting { seq, .. } => seq,
            _ => unreachable!("only waiting tasks have a place"),
        }
    }

    /// The next waiter to serve: highest priority, then oldest.
    fn next_waiter(&self, dep: usize) -> Option<usize> {
        self.waiting(dep)
            .into_iter()
            .min_by_key(|&i| (self.tasks[i].priority, self.seq_of(i)))
    }

    /// The newest waiter of the lowest priority present.
    fn newest_lowest(&self, dep: usize) -> Option<usize> {
        self.waiting(dep)
            .into_iter()
            .max_by_key(|&i| (self.tasks[i].priority, self.seq_of(i)))
    }

    /// Whom an arrival displaces from a full queue: the newest waiter of the
    /// lowest priority present, if lower than the arrival's; a retry only
    /// displaces a retry (the newest of the lowest priority below its own
    /// that has retries waiting).
    fn victim_for(&self, dep: usize, priority: Priority, retry: bool) -> Option<usize> {
        let waiting = self.waiting(dep);
        let lowest = waiting.iter().map(|&i| self.tasks[i].priority).max()?;
        if lowest <= priority {
            return None;
        }
        if retry {
            Priority::ALL
                .iter()
                .rev()
                .take_while(|&&p| p > priority)
                .find_map(|&p| {
                    waiting
                        .iter()
                        .copied()
                        .filter(|&i| self.tasks[i].priority == p && self.tasks[i].retry)
                        .max_by_key(|&i| self.seq_of(i))
                })
        } else {
            self.newest_lowest(dep)
        }
    }

    fn grant(&mut self, task: usize) {
        let dep = self.tasks[task].dep;
        self.tasks[task].model = State::Granted;
        self.deps[dep].in_flight += 1;
        self.deps[dep].granted += 1;
        self.granted_now[dep] = true;
        self.holders.push(Holder {
            task,
            dep,
            lease: None,
            deadline: self.now + self.deps[dep].lease_ttl,
        });
    }

    fn reject(&mut self, task: usize, reason: RejectReason) {
        let dep = self.tasks[task].dep;
        self.tasks[task].model = State::Rejected(reason);
        self.deps[dep].rejected += 1;
    }

    /// Free slots go to waiters, best first, under the enforced limit.
    fn grant_waiters(&mut self, dep: usize) {
        let enforced = self.enforced(dep);
        while self.deps[dep].in_flight < enforced {
            let Some(task) = self.next_waiter(dep) else {
                break;
            };
            self.grant(task);
        }
    }

    /// Reads what finished tasks came back with.
    fn collect(&mut self) {
        for task in &mut self.tasks {
            let Some(handle) = task.handle.as_mut() else {
                continue;
            };
            if !handle.is_finished() {
                continue;
            }
            let result = handle.now_or_never().expect("a finished task is ready");
            task.handle = None;
            task.real = match result {
                Err(error) if error.is_cancelled() => Real::Cancelled,
                Err(error) => panic!("an acquire task panicked: {error}"),
                Ok(Err(error)) => panic!("the ledger refused a known dependency: {error}"),
                Ok(Ok(decision)) => match decision.outcome {
                    Ok(grant) => Real::Granted(grant.lease, grant.ttl),
                    Err(rejection) => {
                        assert!(rejection.retry_after > Duration::ZERO);
                        Real::Rejected(rejection.reason)
                    }
                },
            };
        }
        for holder in &mut self.holders {
            if holder.lease.is_none() {
                if let Real::Granted(lease, ttl) = self.tasks[holder.task].real {
                    assert_eq!(ttl, self.deps[holder.dep].lease_ttl, "the grant's TTL");
                    holder.lease = Some(lease);
                }
            }
        }
    }

    /// The model against the ledger, after a step.
    fn check(&mut self, step: usize, op: &Op) {
        self.collect();
        let at = format!("step {step} ({op:?})");
        assert_eq!(Instant::now(), self.now, "{at}: the clock moved on its own");
        for (i, task) in self.tasks.iter().enumerate() {
            let ok = match (&task.model, &task.real) {
                (State::Waiting { .. }, Real::Running) => true,
                (State::Granted, Real::Granted(..)) => true,
                (State::Rejected(a), Real::Rejected(b)) => a == b,
                (State::Cancelled, Real::Cancelled) => true,
                _ => false,
            };
            assert!(
                ok,
                "{at}: task {i} ({:?}, retry {}, dependency {}): model {:?}, ledger {:?}",
                task.priority, task.retry, NAMES[task.dep], task.model, task.real
            );
        }
        for (d, name) in NAMES.iter().enumerate() {
            let model = &self.deps[d];
            let Some(status) = self.ledger.status(name) else {
                assert!(!model.exists, "{at}: {name} vanished");
                continue;
            };
            assert!(model.exists, "{at}: {name} exists unasked");
            let queued = self.waiting(d).len() as u32;
            let enforced = status.limit.enforced;
            assert_eq!(status.in_flight, model.in_flight, "{at}: {name} in_flight");
            assert_eq!(status.queued, queued, "{at}: {name} queued");
            assert!(queued <= model.max_queue, "{at}: {name} queued > max_queue");
            assert_eq!(status.limits.max_concurrency(), model.max_concurrency);
            assert_eq!(status.limits.max_queue(), model.max_queue);
            assert_eq!(status.limits.lease_ttl(), model.lease_ttl);
            assert!(
                (1..=model.max_concurrency).contains(&enforced),
                "{at}: {name} enforces {enforced}, max_concurrency {}",
                model.max_concurrency
            );
            if model.adaptive.is_none() {
                assert_eq!(enforced, model.max_concurrency, "{at}: {name} static limit");
            }
            if self.granted_now[d] {
                assert!(
                    model.in_flight <= enforced,
                    "{at}: {name} granted over the limit: {} > {enforced}",
                    model.in_flight
                );
            }
            if queued > 0 {
                assert!(
                    model.in_flight >= enforced,
                    "{at}: {name} has waiters and a free slot"
                );
            }
            assert_eq!(
                status.granted_total, model.granted,
                "{at}: {name} granted_total"
            );
            assert_eq!(
                status.rejected_total, model.rejected,
                "{at}: {name} rejected_total"
            );
            assert_eq!(
                status.expired_total, model.expired,
                "{at}: {name} expired_total"
            );
            let held = self.holders.iter().filter(|h| h.dep == d).count() as u32;
            assert_eq!(held, model.in_flight, "{at}: {name} model leak");
        }
        assert_eq!(self.ledger.leases(), self.holders.len(), "{at}: leases");
        let waiting = self.all_waiting().len();
        assert_eq!(self.ledger.waiters(), waiting, "{at}: waiters");
        assert!(waiting <= MAX_WAITERS);
        for holder in &self.holders {
            let lease = holder.lease.expect("every grant was read");
            assert!(self.ledger.holds(&lease), "{at}: a live lease is not held");
        }
        for lease in &self.dead {
            assert!(!self.ledger.holds(lease), "{at}: a dead lease is held");
        }
        self.granted_now = [false; 3];
    }

    fn acquire(&mut self, dep: usize, priority: Priority, retry: bool, wait: Option<Duration>) {
        let ledger = self.ledger.clone();
        let handle = tokio::spawn(async move {
            let request = AcquireRequest {
                dependency: NAMES[dep],
                tenant: None,
                attempt: u32::from(retry),
                priority,
                max_wait: wait,
                degradable: false,
            };
            ledger.acquire(&request).await
        });
        self.tasks.push(Task {
            dep,
            priority,
            retry,
            handle: Some(handle),
            real: Real::Running,
            model: State::Cancelled,
        });
    }

    /// The model's answer to the arrival `task` asking to wait at most
    /// `wait`, `enforced` read before it arrived.
    fn admit(&mut self, task: usize, enforced: u32, wait: Option<Duration>) {
        let (dep, priority, retry) = {
            let t = &self.tasks[task];
            (t.dep, t.priority, t.retry)
        };
        self.deps[dep].exists = true;
        if retry && self.tasks[task].real == Real::Rejected(RejectReason::RetryBudgetExhausted) {
            self.reject(task, RejectReason::RetryBudgetExhausted);
            return;
        }
        let queue = self.waiting(dep);
        if self.deps[dep].in_flight < enforced && queue.is_empty() {
            self.grant(task);
            return;
        }
        let wait = wait.map_or(self.deps[dep].max_wait, |w| w.min(self.deps[dep].max_wait));
        if wait.is_zero() {
            self.reject(task, RejectReason::QueueTimeout);
            return;
        }
        let room = queue.len() < self.deps[dep].max_queue as usize
            && self.all_waiting().len() < MAX_WAITERS;
        if !room {
            match self.victim_for(dep, priority, retry) {
                Some(victim) => self.reject(victim, RejectReason::Shed),
                None => {
                    self.reject(task, RejectReason::QueueFull);
                    return;
                }
            }
        }
        self.seq += 1;
        self.tasks[task].model = State::Waiting {
            seq: self.seq,
            deadline: self.now + wait,
        };
    }

    /// Ends a holder's lease in the model (released or expired).
    fn end(&mut self, holder: usize) -> Holder {
        let holder = self.holders.remove(holder);
        self.deps[holder.dep].in_flight -= 1;
        self.dead.push(holder.lease.expect("read"));
        holder
    }

    fn release(&mut self, pick: u8, outcome: u8, latency_ms: Option<u16>) -> Option<usize> {
        if self.holders.is_empty() {
            return None;
        }
        let index = pick as usize % self.holders.len();
        let lease = self.holders[index].lease.expect("read");
        let outcome = Outcome::ALL[outcome as usize % Outcome::ALL.len()];
        let latency = latency_ms.map(|ms| Duration::from_millis(u64::from(ms)));
        let ended = self
            .ledger
            .release(&lease, Report::new(outcome, latency))
            .expect("a live lease is released");
        let holder = self.end(index);
        assert_eq!(&**ended.dependency(), NAMES[holder.dep]);
        assert_eq!(ended.end, LeaseEnd::Released(outcome));
        assert!(
            self.ledger.release(&lease, Report::default()).is_none(),
            "a lease is released twice"
        );
        Some(holder.dep)
    }

    /// Moves the clock to `target`, event by event: leases expire (and their
    /// slots go to waiters), waiters time out.
    async fn advance_to(&mut self, target: Instant) {
        loop {
            let next = self
                .holders
                .iter()
                .map(|h| h.deadline)
                .chain(self.tasks.iter().filter_map(|t| match t.model {
                    State::Waiting { deadline, .. } => Some(deadline),
                    _ => None,
                }))
                .filter(|&at| at <= target)
                .min();
            let at = next.unwrap_or(target);
            tokio::time::advance(at - self.now).await;
            self.now = at;
            settle().await;
            if next.is_none() {
                return;
            }
            let mut freed = [false; 3];
            while let Some(h) = self.holders.iter().position(|h| h.deadline == at) {
                let holder = self.end(h);
                self.deps[holder.dep].expired += 1;
                freed[holder.dep] = true;
            }
            for task in 0..self.tasks.len() {
                if matches!(self.tasks[task].model, State::Waiting { deadline, .. } if deadline == at)
                {
                    self.reject(task, RejectReason::QueueTimeout);
                }
            }
            for (dep, freed) in freed.iter().enumerate() {
                if *freed {
                    self.grant_waiters(dep);
                }
            }
            self.collect();
        }
    }
}

async fn run(ops: Vec<Op>) {
    let ledger = Arc::new(Ledger::new(LedgerConfig {
        defaults: defaults(),
        max_waiters: MAX_WAITERS,
        ..LedgerConfig::default()
    }));
    let mut world = World::new(ledger.clone());
    // A lease of another process (another ledger, another epoch).
    let other = Ledger::new(LedgerConfig::default());
    let foreign = other
        .acquire(&AcquireRequest {
            dependency: "alpha",
            tenant: None,
            attempt: 0,
            priority: Priority::Normal,
            max_wait: None,
            degradable: false,
        })
        .await
        .expect("known")
        .granted()
        .map(|g| g.lease);
    world.foreign = foreign;

    for (step, op) in ops.iter().take(MAX_OPS).enumerate() {
        match *op {
            Op::Acquire {
                dep,
                priority: p,
                retry,
                wait,
            } => {
                let dep = dep as usize % 3;
                // Odd milliseconds (see the module doc), or zero.
                let wait = wait.map(|w| match w % 8 {
                    0 => Duration::ZERO,
                    _ => Duration::from_millis(u64::from(w % 1500) * 2 + 1),
                });
                let enforced = world.enforced(dep);
                world.acquire(dep, priority(p), retry, wait);
                settle().await;
                world.collect();
                let task = world.tasks.len() - 1;
                world.admit(task, enforced, wait);
            }
            Op::Release {
                pick,
                outcome,
                latency_ms,
            } => {
                if let Some(dep) = world.release(pick, outcome, latency_ms) {
                    settle().await;
                    world.grant_waiters(dep);
                }
            }
            Op::ReleaseStale { pick, kind } => {
                let lease = match kind % 4 {
                    0 if !world.dead.is_empty() => {
                        Some(world.dead[pick as usize % world.dead.len()])
                    }
                    1 => world.foreign,
                    2 => {
                        // A live id's random part under the slot (hex digits
                        // 16..24) of another live lease, maybe of another
                        // dependency: only the one that granted it holds it.
                        let live: Vec<LeaseId> =
                            world.holders.iter().filter_map(|h| h.lease).collect();
                        (live.len() >= 2).then(|| {
                            let (a, b) = (
                                live[0].to_string(),
                                live[pick as usize % live.len()].to_string(),
                            );
                            let text = format!("{}{}{}", &a[..16], &b[16..24], &a[24..]);
                            LeaseId::parse(&text).expect("48 hex digits")
                        })
                    }
                    _ => world
                        .holders
                        .first()
                        .and_then(|h| h.lease)
                        .and_then(|live| {
                            // The live id with one hex digit of its key (its
                            // slot included) changed.
                            let text = live.to_string();
                            let at = text.len() - 1 - (pick as usize % 32);
                            let mut bytes = text.into_bytes();
                            bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
                            LeaseId::parse(std::str::from_utf8(&bytes).ok()?)
                        }),
                };
                if let Some(lease) = lease {
                    if world.holders.iter().all(|h| h.lease != Some(lease)) {
                        assert!(!ledger.holds(&lease));
                        assert!(ledger.renew(&lease).is_none(), "a dead lease renews");
                        assert!(
                            ledger.release(&lease, Report::default()).is_none(),
                            "a dead lease is released"
                        );
                    }
                }
            }
            Op::Renew { pick } => {
                if !world.holders.is_empty() {
                    let index = pick as usize % world.holders.len();
                    let holder = &world.holders[index];
                    let lease = holder.lease.expect("read");
                    let (name, ttl) = ledger.renew(&lease).expect("a live lease renews");
                    assert_eq!(&*name, NAMES[holder.dep]);
                    assert_eq!(ttl, world.deps[holder.dep].lease_ttl);
                    let deadline = world.now + ttl;
                    world.holders[index].deadline = deadline;
                }
            }
            Op::Cancel { pick } => {
                let waiting = world.all_waiting();
                if !waiting.is_empty() {
                    let task = waiting[pick as usize % waiting.len()];
                    world.tasks[task].handle.as_ref().expect("running").abort();
                    world.tasks[task].model = State::Cancelled;
                    settle().await;
                }
            }
            Op::ReleaseThenCancel { pick, victim } => {
                let waiting = world.all_waiting();
                let Some(dep) = world.release(pick, 0, None) else {
                    continue;
                };
                world.grant_waiters(dep);
                // Who the release just granted, or any waiter from before it.
                let target = match victim {
                    None => world
                        .holders
                        .iter()
                        .rev()
                        .find(|h| h.lease.is_none())
                        .map(|h| h.task),
                    Some(v) if !waiting.is_empty() => Some(waiting[v as usize % waiting.len()]),
                    Some(_) => None,
                };
                if let Some(task) = target {
                    world.tasks[task]
                        .handle
                        .as_ref()
                        .expect("not yet read")
                        .abort();
                    match world.tasks[task].model {
                        State::Granted => {
                            // The grant races the cancellation: it goes back,
                            // and the slot on to the next waiter.
                            let h = world
                                .holders
                                .iter()
                                .position(|h| h.task == task)
                                .expect("granted");
                            world.holders.remove(h);
                            world.deps[dep].in_flight -= 1;
                            world.grant_waiters(dep);
                        }
                        State::Waiting { .. } => {}
                        ref other => unreachable!("picked a task that is {other:?}"),
                    }
                    world.tasks[task].model = State::Cancelled;
                }
                settle().await;
            }
            Op::Advance { ms } => {
                let step = Duration::from_millis((u64::from(ms % 2000) + 1) * 2);
                let target = world.now + step;
                world.advance_to(target).await;
            }
            Op::Patch {
                dep,
                max_concurrency,
                max_queue,
                max_wait,
                lease_ttl,
                ref adaptive,
            } => {
                let dep = dep as usize % 3;
                let patch = LimitsPatch {
                    max_concurrency: max_concurrency.map(|m| u32::from(m % 7)),
                    max_queue: max_queue.map(|m| u32::from(m % 6)),
                    max_wait: max_wait.map(|w| Duration::from_millis(u64::from(w % 1500) * 2 + 1)),
                    lease_ttl: lease_ttl.map(|t| Duration::from_millis(u64::from(t % 1000) * 2)),
                    retry_budget: None,
                    adaptive: adaptive.as_ref().map(|a| match *a {
                        AdaptiveOp::Off => AdaptivePatch {
                            algorithm: Some(AlgorithmChoice::Static),
                            ..Default::default()
                        },
                        AdaptiveOp::On {
                            algorithm,
                            shadow,
                            min_limit,
                            initial_limit,
                            window_ms,
                        } => AdaptivePatch {
                            algorithm: Some(AlgorithmChoice::Adaptive(
                                [Algorithm::Gradient, Algorithm::Vegas, Algorithm::Aimd]
                                    [algorithm as usize % 3],
                            )),
                            shadow: Some(shadow),
                            min_limit: Some(u32::from(min_limit % 4) + 1),
                            initial_limit: Some(u32::from(initial_limit % 6) + 1),
                            window: Some(Duration::from_millis(
                                u64::from(window_ms % 500) * 2 + 10,
                            )),
                            ..Default::default()
                        },
                    }),
                    elevated_at: None,
                    degrade_at: None,
                };
                let current = world.deps[dep].clone();
                let mut bad = Vec::new();
                if patch.max_concurrency == Some(0) {
                    bad.push("max_concurrency");
                }
                if patch
                    .lease_ttl
                    .is_some_and(|t| t < Duration::from_millis(100))
                {
                    bad.push("lease_ttl");
                }
                let adaptive_on = matches!(adaptive, Some(AdaptiveOp::On { .. }));
                // An adaptive limit's floor may not exceed the ceiling,
                // whichever of the two the patch moves.
                let min_limit = match patch.adaptive.as_ref() {
                    Some(a) if a.algorithm == Some(AlgorithmChoice::Static) => None,
                    Some(a) => a.min_limit,
                    None => current.adaptive,
                };
                let ceiling = patch.max_concurrency.unwrap_or(current.max_concurrency);
                if ceiling > 0 && min_limit.is_some_and(|m| m > ceiling) {
                    bad.push("adaptive.min_limit");
                }
                let result = ledger.update(NAMES[dep], &patch);
                world.deps[dep].exists = true;
                match result {
                    Err(error) => {
                        let text = error.to_string();
                        let field = text.split(": ").next().unwrap_or("");
                        assert!(
                            bad.contains(&field) || (adaptive_on && field.starts_with("adaptive.")),
                            "step {step}: update refused {text:?}; the model found {bad:?} bad"
                        );
                        // Refused whole: a dependency that did not exist still
                        // does not.
                        world.deps[dep].exists = current.exists;
                    }
                    Ok(status) => {
                        assert!(bad.is_empty(), "step {step}: update took bad {bad:?}");
                        let model = &mut world.deps[dep];
                        model.max_concurrency =
                            patch.max_concurrency.unwrap_or(model.max_concurrency);
                        model.max_queue = patch.max_queue.unwrap_or(model.max_queue);
                        model.max_wait = patch.max_wait.unwrap_or(model.max_wait);
                        model.lease_ttl = patch.lease_ttl.unwrap_or(model.lease_ttl);
                        model.adaptive = min_limit;
                        assert_eq!(status.limits.max_wait(), model.max_wait);
                        // A smaller queue sheds its newest lowest-priority waiters.
                        while world.waiting(dep).len() > world.deps[dep].max_queue as usize {
                            let victim = world.newest_lowest(dep).expect("non-empty");
                            world.reject(victim, RejectReason::Shed);
                        }
                        world.grant_waiters(dep);
                        settle().await;
                    }
                }
            }
        }
        world.check(step, op);
    }

    // Everything ends: cancel the waiters, release the leases; nothing is left.
    for task in world.all_waiting() {
        world.tasks[task].handle.as_ref().expect("running").abort();
    }
    settle().await;
    for holder in std::mem::take(&mut world.holders) {
        let lease = holder.lease.expect("read");
        assert!(ledger.release(&lease, Report::default()).is_some());
    }
    assert_eq!(ledger.leases(), 0, "a lease leaked");
    assert_eq!(ledger.waiters(), 0, "a waiter leaked");
    for name in NAMES {
        if let Some(status) = ledger.status(name) {
            assert_eq!((status.in_flight, status.queued), (0, 0), "{name} leaked");
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|ops: Vec<Op>| {
    runtime().block_on(async move {
        run(ops).await;
        // Let the dropped dependencies' reapers see them go.
        settle().await;
    });
});
