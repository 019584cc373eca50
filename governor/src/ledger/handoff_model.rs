//! A loom model of the waiter hand-off: a grant racing a cancellation, a
//! timeout, a displacement and a second way of freeing the same slot,
//! explored over every interleaving loom finds (within a preemption bound),
//! checking that no slot leaks and nothing is granted twice.
//!
//! # What is real and what is modelled
//! The queue is the real [`WaiterQueue`]. The protocol functions below are
//! line-for-line copies of `Dependency::{admit, grant, grant_waiters,
//! free_slot, abandon, time_out, finish, reap}` and `Ledger::release`,
//! reduced to what the hand-off touches, over loom's `Mutex` and atomics:
//! - the dependency's `Mutex<State>` is a loom `Mutex` (same critical
//!   sections);
//! - the lease index (a `DashMap` in the ledger, whose shard lock is a
//!   mutex) is a loom `Mutex<HashSet>`, taken where the ledger takes a shard:
//!   inserted under the state lock by a grant, removed outside it by a
//!   release and inside it by expiry and by an abandoned grant;
//! - `Shared::{reserve_waiter, release_waiter}` are the same atomic
//!   operations on a loom `AtomicUsize`;
//! - tokio's `oneshot` is a loom-mutex slot with the same contract: `send`
//!   fails once the receiver is gone, `try_recv` takes what was sent;
//! - a waiter's `timeout_at(deadline, receiver)` is one `try_recv` followed
//!   by `time_out` (the deadline passing between them is what loom varies),
//!   and dropping `Queued` is `abandon`.
//!
//! Left out, because the hand-off does not depend on them: lease records
//! (deadlines, the expiry order), the limiter (the limit is fixed), the
//! retry budget, idleness and eviction, snapshots and counters other than
//! `in_flight`, and the observer.
//!
//! The model is only as good as the copy: a change to the hand-off in
//! `dependency.rs` or `queued.rs` must be made here too.

use std::collections::HashSet;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

use super::waiters::{Priority, WaiterKey, WaiterQueue};

type Lease = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    Granted(Lease),
    Shed,
    TimedOut,
}

/// tokio's oneshot, as the hand-off uses it.
struct Channel {
    slot: Mutex<Slot>,
}

struct Slot {
    value: Option<Wake>,
    receiver_alive: bool,
    /// Values ever sent: more than one is a double answer.
    sent: u32,
}

struct Sender(Arc<Channel>);
struct Receiver(Arc<Channel>);

fn channel() -> (Sender, Receiver) {
    let channel = Arc::new(Channel {
        slot: Mutex::new(Slot {
            value: None,
            receiver_alive: true,
            sent: 0,
        }),
    });
    (Sender(channel.clone()), Receiver(channel))
}

impl Sender {
    fn send(self, wake: Wake) -> Result<(), Wake> {
        let mut slot = self.0.slot.lock().unwrap();
        if !slot.receiver_alive {
            return Err(wake);
        }
        slot.sent += 1;
        assert_eq!(slot.sent, 1, "a waiter was answered twice");
        slot.value = Some(wake);
        Ok(())
    }
}

impl Receiver {
    fn try_recv(&mut self) -> Option<Wake> {
        self.0.slot.lock().unwrap().value.take()
    }

    /// Waits for the answer (a patient caller).
    fn recv(&mut self) -> Wake {
        loop {
            if let Some(wake) = self.try_recv() {
                return wake;
            }
            thread::yield_now();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.0.slot.lock().unwrap().receiver_alive = false;
    }
}

struct State {
    limit: u32,
    max_queue: u32,
    in_flight: u32,
    waiters: WaiterQueue<Sender>,
}

struct Leases {
    live: HashSet<Lease>,
    next: Lease,
}

/// One dependency and the ledger around it, as far as the hand-off goes.
struct Dependency {
    state: Mutex<State>,
    leases: Mutex<Leases>,
    waiters: AtomicUsize,
    max_waiters: usize,
}

enum Admission {
    Granted(Lease),
    Rejected,
    Queued(WaiterKey, Receiver),
}

impl Dependency {
    fn new(limit: u32, max_queue: u32, max_waiters: usize) -> Arc<Dependency> {
        Arc::new(Dependency {
            state: Mutex::new(State {
                limit,
                max_queue,
                in_flight: 0,
                waiters: WaiterQueue::default(),
            }),
            leases: Mutex::new(Leases {
                live: HashSet::new(),
                next: 0,
            }),
            waiters: AtomicUsize::new(0),
            max_waiters,
        })
    }

    fn reserve_waiter(&self) -> bool {
        let max = self.max_waiters;
        self.waiters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release_waiter(&self) {
        self.waiters.fetch_sub(1, Ordering::AcqRel);
    }

    /// `Dependency::admit`, without budget and wait checks.
    fn admit(&self, priority: Priority) -> Admission {
        let mut state = self.state.lock().unwrap();
        if state.in_flight < state.limit && state.waiters.is_empty() {
            return Admission::Granted(self.grant(&mut state));
        }
        let has_room = state.waiters.len() < state.max_queue as usize && self.reserve_waiter();
        if !has_room {
            let victim = state.waiters.victim_for(priority, false);
            match victim.and_then(|key| state.waiters.remove(key)) {
                // The displaced waiter's place passes to the arrival.
                Some(victim) => {
                    let _ = victim.send(Wake::Shed);
                }
                None => return Admission::Rejected,
            }
        }
        let (tx, rx) = channel();
        let key = state.waiters.push(priority, false, None, tx);
        Admission::Queued(key, rx)
    }

    /// `Dependency::grant`: a new lease in the index, one more in flight.
    fn grant(&self, state: &mut State) -> Lease {
        let lease = {
            let mut leases = self.leases.lock().unwrap();
            leases.next += 1;
            let lease = leases.next;
            leases.live.insert(lease);
            lease
        };
        state.in_flight += 1;
        assert!(
            state.in_flight <= state.limit,
            "granted over the limit: {} > {}",
            state.in_flight,
            state.limit
        );
        lease
    }

    /// `Dependency::grant_waiters`.
    fn grant_waiters(&self, state: &mut State) {
        while state.in_flight < state.limit {
            let Some(waiter) = state.waiters.pop() else {
                break;
            };
            self.release_waiter();
            let lease = self.grant(state);
            if waiter.send(Wake::Granted(lease)).is_err() {
                self.leases.lock().unwrap().live.remove(&lease);
                state.in_flight -= 1;
            }
        }
    }

    /// `Dependency::free_slot`.
    fn free_slot(&self, state: &mut State) {
        state.in_flight -= 1;
        self.grant_waiters(state);
    }

    /// `Ledger::release` then `Dependency::finish`: whoever takes the lease
    /// out of the index frees its slot.
    fn release(&self, lease: Lease) -> bool {
        if !self.leases.lock().unwrap().live.remove(&lease) {
            return false;
        }
        let mut state = self.state.lock().unwrap();
        state.in_flight -= 1;
        self.grant_waiters(&mut state);
        true
    }

    /// `Dependency::reap` for one lease past its deadline.
    fn expire(&self, lease: Lease) -> bool {
        let mut state = self.state.lock().unwrap();
        if !self.leases.lock().unwrap().live.remove(&lease) {
            return false;
        }
        state.in_flight -= 1;
        self.grant_waiters(&mut state);
        true
    }

    /// `Dependency::abandon`: the caller went away.
    fn abandon(&self, key: WaiterKey, mut wake: Receiver) {
        let mut state = self.state.lock().unwrap();
        if state.waiters.remove(key).is_some() {
            self.release_waiter();
            return;
        }
        if let Some(Wake::Granted(lease)) = wake.try_recv() {
            if self.leases.lock().unwrap().live.remove(&lease) {
                self.free_slot(&mut state);
            }
        }
        // The receiver goes after the lock, as the parameter does in
        // `abandon`.
        drop(state);
    }

    /// `Queued::wait` whose deadline passes: `timeout_at` polls the receiver
    /// first, then `Dependency::time_out` settles it under the lock.
    fn wait_with_deadline(&self, key: WaiterKey, mut wake: Receiver) -> Wake {
        if let Some(answer) = wake.try_recv() {
            return answer;
        }
        let mut state = self.state.lock().unwrap();
        if state.waiters.remove(key).is_some() {
            self.release_waiter();
            return Wake::TimedOut;
        }
        wake.try_recv().unwrap_or(Wake::TimedOut)
    }

    fn holds(&self, lease: Lease) -> bool {
        self.leases.lock().unwrap().live.contains(&lease)
    }

    /// Nothing held, nothing queued, every count back to zero.
    fn assert_empty(&self) {
        let state = self.state.lock().unwrap();
        assert_eq!(state.in_flight, 0, "a slot leaked");
        assert!(state.waiters.is_empty(), "a waiter was left behind");
        assert!(
            self.leases.lock().unwrap().live.is_empty(),
            "a lease leaked"
        );
        assert_eq!(
            self.waiters.load(Ordering::Acquire),
            0,
            "the waiter count leaked"
        );
    }

    fn in_flight(&self) -> u32 {
        self.state.lock().unwrap().in_flight
    }
}

fn granted(admission: Admission) -> Lease {
    match admission {
        Admission::Granted(lease) => lease,
        _ => panic!("expected a grant"),
    }
}

fn queued(admission: Admission) -> (WaiterKey, Receiver) {
    match admission {
        Admission::Queued(key, rx) => (key, rx),
        _ => panic!("expected a place in the queue"),
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    // Bounded so the suite stays fast; every race below needs at most two
    // preemptions.
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// A release hands the slot to a waiter whose caller is going away: the
/// grant goes back and on to the next waiter, whichever comes first.
#[test]
fn grant_racing_a_cancellation_neither_leaks_nor_strands_the_next_waiter() {
    model(|| {
        let dep = Dependency::new(1, 4, 8);
        let held = granted(dep.admit(Priority::Normal));
        let (first, first_rx) = queued(dep.admit(Priority::Normal));
        let (_, mut second_rx) = queued(dep.admit(Priority::Normal));

        let releaser = {
            let dep = dep.clone();
            thread::spawn(move || assert!(dep.release(held)))
        };
        let canceller = {
            let dep = dep.clone();
            thread::spawn(move || dep.abandon(first, first_rx))
        };
        releaser.join().unwrap();
        canceller.join().unwrap();

        // The slot ends with the second waiter in every interleaving.
        let Wake::Granted(lease) = second_rx.try_recv().expect("the second waiter is answered")
        else {
            panic!("the second waiter is granted");
        };
        assert_eq!(dep.in_flight(), 1);
        assert!(dep.release(lease));
        dep.assert_empty();
    });
}

/// A waiter times out while a release grants it: it either leaves with
/// QUEUE_TIMEOUT and holds nothing, or takes the grant; never both.
#[test]
fn grant_racing_a_timeout_is_one_answer() {
    model(|| {
        let dep = Dependency::new(1, 4, 8);
        let held = granted(dep.admit(Priority::Normal));
        let (key, rx) = queued(dep.admit(Priority::Normal));

        let releaser = {
            let dep = dep.clone();
            thread::spawn(move || assert!(dep.release(held)))
        };
        let waiter = {
            let dep = dep.clone();
            thread::spawn(move || dep.wait_with_deadline(key, rx))
        };
        releaser.join().unwrap();
        match waiter.join().unwrap() {
            Wake::Granted(lease) => {
                assert!(dep.holds(lease));
                assert_eq!(dep.in_flight(), 1);
                assert!(dep.release(lease));
            }
            Wake::TimedOut => assert_eq!(dep.in_flight(), 0),
            Wake::Shed => panic!("nobody displaced it"),
        }
        dep.assert_empty();
    });
}

/// A full queue: a critical arrival displaces a sheddable waiter while a
/// release grants it and its caller goes away. The sheddable waiter gets at
/// most one answer, the arrival ends with the slot, nothing leaks.
#[test]
fn displacement_racing_a_grant_and_a_cancellation() {
    model(|| {
        let dep = Dependency::new(1, 1, 8);
        let held = granted(dep.admit(Priority::Normal));
        let (low, low_rx) = queued(dep.admit(Priority::Sheddable));

        let arrival = {
            let dep = dep.clone();
            thread::spawn(move || dep.admit(Priority::Critical))
        };
        let releaser = {
            let dep = dep.clone();
            thread::spawn(move || assert!(dep.release(held)))
        };
        let canceller = {
            let dep = dep.clone();
            thread::spawn(move || dep.abandon(low, low_rx))
        };
        let admission = arrival.join().unwrap();
        releaser.join().unwrap();
        canceller.join().unwrap();

        let lease = match admission {
            Admission::Granted(lease) => lease,
            Admission::Queued(_, mut rx) => match rx.recv() {
                Wake::Granted(lease) => lease,
                other => panic!("the critical arrival got {other:?}"),
            },
            Admission::Rejected => panic!("a critical arrival finds room by displacement"),
        };
        assert_eq!(dep.in_flight(), 1);
        assert!(dep.release(lease));
        dep.assert_empty();
    });
}

/// Release and expiry of the same lease race: exactly one frees the slot,
/// and the waiter is granted exactly once.
#[test]
fn release_racing_expiry_frees_the_slot_once() {
    model(|| {
        let dep = Dependency::new(1, 4, 8);
        let held = granted(dep.admit(Priority::Normal));
        let (_, mut rx) = queued(dep.admit(Priority::Normal));

        let releaser = {
            let dep = dep.clone();
            thread::spawn(move || dep.release(held))
        };
        let reaper = {
            let dep = dep.clone();
            thread::spawn(move || dep.expire(held))
        };
        let released = releaser.join().unwrap();
        let expired = reaper.join().unwrap();
        assert!(
            released ^ expired,
            "the slot was freed {} times",
            u8::from(released) + u8::from(expired)
        );

        let Wake::Granted(lease) = rx.recv() else {
            panic!("the waiter is granted");
        };
        assert_eq!(dep.in_flight(), 1);
        assert!(dep.release(lease));
        dep.assert_empty();
    });
}

/// Two slots free at once for two waiters, one of which times out: no slot
/// is granted twice or lost, and the global waiter count returns to zero.
#[test]
fn concurrent_releases_and_a_timeout_keep_the_counts() {
    model(|| {
        let dep = Dependency::new(2, 4, 8);
        let a = granted(dep.admit(Priority::Normal));
        let b = granted(dep.admit(Priority::Normal));
        let (key, rx) = queued(dep.admit(Priority::Critical));
        let (_, mut patient) = queued(dep.admit(Priority::Normal));

        let first = {
            let dep = dep.clone();
            thread::spawn(move || assert!(dep.release(a)))
        };
        let second = {
            let dep = dep.clone();
            thread::spawn(move || assert!(dep.release(b)))
        };
        let impatient = {
            let dep = dep.clone();
            thread::spawn(move || dep.wait_with_deadline(key, rx))
        };
        first.join().unwrap();
        second.join().unwrap();
        let answer = impatient.join().unwrap();

        let Wake::Granted(patient_lease) = patient.recv() else {
            panic!("the patient waiter is granted");
        };
        let mut held = vec![patient_lease];
        match answer {
            Wake::Granted(lease) => held.push(lease),
            Wake::TimedOut => {}
            Wake::Shed => panic!("nobody displaced it"),
        }
        assert_eq!(dep.in_flight(), held.len() as u32);
        for lease in held {
            assert!(dep.release(lease));
        }
        dep.assert_empty();
    });
}
