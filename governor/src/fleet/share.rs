//! One dependency's fleet share as a state machine, without I/O: what the
//! fleet task feeds it (store answers, failures, the clock) and what it
//! answers (the fleet term the ledger enforces, what to promise the store).
//!
//! ```text
//!   Starting ──answer──▶ Share ◀──answer── Fallback
//!      │                  │  ▲                ▲
//!      │ call fails       │  └─answer─┐       │ share lapsed
//!      ▼                  ▼           │       │ (no renewal)
//!   Fallback        store learning ─▶ Learning ┘
//! ```
//! - Starting: nothing granted until the first answer (a sidecar's first
//!   call takes a round trip); a failed first call falls back.
//! - Share: `min(share, target)` until the share's local expiry, which is
//!   the *send* time of the call that leased it + share_ttl - safety_margin:
//!   the store's expiry counts from when the script ran, later.
//! - Fallback: the store failed and the share lapsed: `fallback_share`.
//! - Learning: the store came back empty: a share still held is kept (the
//!   store re-recorded it), else the fallback share; no new shares.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::store::{Reply, ReplyStatus, Seen, StoreError};
use crate::ledger::{FleetLimit, FleetMode, FleetStatus};

/// share_ttl and the safety margin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timing {
    pub ttl: Duration,
    pub margin: Duration,
}

/// What happened that operators hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// The fleet term moved.
    Changed { from: u32, to: u32 },
    /// The share lapsed with the store unreachable (or a first call failed).
    FallingBack { error: Arc<str> },
    /// An answer after fallback (or learning).
    Restored,
    /// The store came back empty and learns.
    Learning { left: Duration },
    /// A call failed while the share is still valid.
    CallFailed { error: Arc<str> },
    /// Another live sidecar uses this instance name.
    Conflict,
}

#[derive(Clone, Debug)]
pub(crate) struct ShareState {
    limit: FleetLimit,
    mode: FleetMode,
    share: u32,
    target: u32,
    valid_until: Option<Instant>,
    learning_until: Option<Instant>,
    fleet_max: u32,
    instances: u32,
    demand: u32,
    calls: u64,
    errors: u64,
    latency: Option<Duration>,
    last_error: Option<Arc<str>>,
    seen: Seen,
    /// The term last reported (what the ledger enforces).
    reported: u32,
    /// The sequence number of the last call answered.
    acked: u64,
}

impl ShareState {
    pub(crate) fn new(limit: FleetLimit) -> ShareState {
        ShareState {
            limit,
            mode: FleetMode::Starting,
            share: 0,
            target: 0,
            valid_until: None,
            learning_until: None,
            fleet_max: limit.max_concurrency(),
            instances: 0,
            demand: 0,
            calls: 0,
            errors: 0,
            latency: None,
            last_error: None,
            seen: Seen::default(),
            reported: 0,
            acked: 0,
        }
    }

    pub(crate) fn limit(&self) -> FleetLimit {
        self.limit
    }

    /// A new fleet limit from the config or the control plane (read before
    /// each call): the store and the fallback share take it from then.
    pub(crate) fn set_limit(&mut self, limit: FleetLimit) {
        self.limit = limit;
    }

    pub(crate) fn seen(&self) -> Seen {
        self.seen
    }

    /// Whether the last answer (and the share it leased, if any) still
    /// holds at `now`.
    fn holds(&self, now: Instant) -> bool {
        matches!(self.mode, FleetMode::Share | FleetMode::Learning)
            && self.valid_until.is_some_and(|until| now < until)
    }

    /// The fleet term of the enforced limit at `now`.
    pub(crate) fn term(&self, now: Instant) -> u32 {
        match self.mode {
            FleetMode::Starting => 0,
            FleetMode::Share if self.holds(now) => self.share.min(self.target),
            FleetMode::Learning if self.holds(now) && self.share > 0 => self.share,
            FleetMode::Share | FleetMode::Learning | FleetMode::Fallback => {
                self.limit.fallback_share()
            }
        }
    }

    /// What this sidecar tells the store it may still use from the call
    /// on: its term (it grants no more before the answer), or what is in
    /// flight if more (permits of a fallback share too, so that the store
    /// counts them as far as they are free). `None`: nothing.
    pub(crate) fn keep(&self, now: Instant, in_flight: u32) -> Option<u32> {
        if self.holds(now) && self.share > 0 {
            Some(in_flight.max(self.term(now)))
        } else {
            (in_flight > 0).then_some(in_flight)
        }
    }

    /// The sequence number of the call whose answer gave the share still
    /// held, 0 without one: a store that no longer has that call's write
    /// lost writes.
    pub(crate) fn acked(&self, now: Instant) -> u64 {
        if self.holds(now) && self.share > 0 {
            self.acked
        } else {
            0
        }
    }

    /// When the share lapses, if it is held.
    pub(crate) fn lapses_at(&self) -> Option<Instant> {
        self.valid_until
            .filter(|_| matches!(self.mode, FleetMode::Share | FleetMode::Learning))
    }

    /// The store's answer to call `seq`, sent at `sent` with `demand`.
    pub(crate) fn answered(
        &mut self,
        (seq, sent): (u64, Instant),
        now: Instant,
        demand: u32,
        reply: Reply,
        timing: Timing,
    ) -> Vec<Event> {
        let was = self.mode;
        self.calls += 1;
        self.latency = Some(now.saturating_duration_since(sent));
        let mut events = Vec::new();
        match reply.status {
            ReplyStatus::Stale => return events,
            ReplyStatus::Conflict => {
                self.errors += 1;
                self.last_error = Some(Arc::from(
                    "this instance name is in use by another live sidecar",
                ));
                events.push(Event::Conflict);
                // The store holds no share of ours: stop using any at once.
                self.valid_until = None;
                events.extend(self.lapse_if_due(now, true));
                return self.changed(now, events);
            }
            ReplyStatus::Ok | ReplyStatus::Learning => {}
        }
        self.last_error = None;
        self.acked = seq;
        self.seen = reply.seen;
        self.share = reply.share;
        self.target = reply.target;
        self.demand = demand;
        self.instances = reply.instances;
        self.fleet_max = reply.max_concurrency;
        self.valid_until = Some(sent + timing.ttl - timing.margin);
        if reply.status == ReplyStatus::Learning {
            self.mode = FleetMode::Learning;
            self.learning_until = Some(now + reply.learning_left);
            if was != FleetMode::Learning {
                events.push(Event::Learning {
                    left: reply.learning_left,
                });
            }
        } else {
            self.mode = FleetMode::Share;
            self.learning_until = None;
            if matches!(was, FleetMode::Fallback | FleetMode::Learning) {
                events.push(Event::Restored);
            }
        }
        self.changed(now, events)
    }

    /// A call that failed (or timed out) at `now`.
    pub(crate) fn failed(&mut self, now: Instant, error: &StoreError) -> Vec<Event> {
        self.calls += 1;
        self.errors += 1;
        let error: Arc<str> = Arc::from(error.to_string());
        self.last_error = Some(error.clone());
        let mut events = vec![];
        if self.holds(now) {
            events.push(Event::CallFailed { error });
        } else {
            events.extend(self.lapse_if_due(now, true));
        }
        self.changed(now, events)
    }

    /// The clock reached `now`: a share past its local expiry lapses.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<Event> {
        let events = self.lapse_if_due(now, false).into_iter().collect();
        self.changed(now, events)
    }

    /// Falls back if the share may not be used any more (or, `failed`, a
    /// call failed before any share).
    fn lapse_if_due(&mut self, now: Instant, failed: bool) -> Option<Event> {
        let due = match self.mode {
            FleetMode::Starting => failed,
            FleetMode::Share | FleetMode::Learning => !self.holds(now),
            FleetMode::Fallback => false,
        };
        if !due {
            return None;
        }
        self.mode = FleetMode::Fallback;
        self.share = 0;
        self.target = 0;
        self.valid_until = None;
        self.learning_until = None;
        Some(Event::FallingBack {
            error: self
                .last_error
                .clone()
                .unwrap_or_else(|| Arc::from("no successful call within the share's lifetime")),
        })
    }

    /// `events`, and a change of the term since it was last reported.
    fn changed(&mut self, now: Instant, mut events: Vec<Event>) -> Vec<Event> {
        let after = self.term(now);
        if after != self.reported {
            events.push(Event::Changed {
                from: self.reported,
                to: after,
            });
            self.reported = after;
        }
        events
    }

    /// What the ledger keeps and shows.
    pub(crate) fn status(&self, now: Instant) -> FleetStatus {
        FleetStatus {
            mode: self.mode,
            max_concurrency: self.fleet_max,
            share: self.share,
            target: self.target,
            enforced: self.term(now),
            demand: self.demand,
            fallback_share: self.limit.fallback_share(),
            instances: self.instances,
            valid_until: self
                .valid_until
                .filter(|_| self.holds(now) && self.share > 0),
            learning_until: self.learning_until.filter(|&until| until > now),
            store_calls_total: self.calls,
            store_errors_total: self.errors,
            store_latency: self.latency,
            last_error: self.last_error.clone(),
        }
    }
}
