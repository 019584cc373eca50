//! The fleet task and its state machine against a scripted store, in
//! paused time. The script itself runs against a real Redis in
//! `tests/tests/fleet_script.rs`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::share::{Event, ShareState, Timing};
use super::store::{Call, Reply, ReplyStatus, Seen, Store, StoreError};
use super::{Fleet, FleetObserver};
use crate::config::{FleetConfig, FleetStore};
use crate::ledger::{
    AcquireRequest, FleetLimit, FleetMode, Ledger, LedgerConfig, Limits, LimitsPatch, Outcome,
    Priority, Report,
};

const TTL: Duration = Duration::from_secs(3);
const MARGIN: Duration = Duration::from_millis(600);
const TIMING: Timing = Timing {
    ttl: TTL,
    margin: MARGIN,
};

fn limit() -> FleetLimit {
    FleetLimit::new(10, 2).unwrap()
}

fn reply(status: ReplyStatus, share: u32, target: u32) -> Reply {
    Reply {
        status,
        share,
        target,
        seen: Seen { born: 1, writes: 1 },
        learning_left: if status == ReplyStatus::Learning {
            TTL
        } else {
            Duration::ZERO
        },
        instances: 2,
        max_concurrency: 10,
    }
}

fn ok(share: u32, target: u32) -> Result<Reply, StoreError> {
    Ok(reply(ReplyStatus::Ok, share, target))
}

fn down() -> Result<Reply, StoreError> {
    Err(StoreError::Redis(
        "Connection refused (os error 111)".into(),
    ))
}

#[test]
fn starting_grants_nothing_then_the_share_until_it_lapses() {
    let start = Instant::now();
    let mut state = ShareState::new(limit());
    assert_eq!(state.term(start), 0, "nothing before the first answer");
    assert_eq!(state.keep(start, 0), None);

    let sent = start;
    let events = state.answered(
        (1, sent),
        sent + Duration::from_millis(5),
        0,
        ok(6, 8).unwrap(),
        TIMING,
    );
    assert_eq!(events, vec![Event::Changed { from: 0, to: 6 }]);
    assert_eq!(state.term(start), 6, "min(share, target)");
    // It lapses share_ttl - margin after the call was *sent*.
    let lapse = sent + TTL - MARGIN;
    assert_eq!(state.lapses_at(), Some(lapse));
    assert_eq!(state.tick(lapse - Duration::from_millis(1)), vec![]);
    let events = state.tick(lapse);
    assert!(matches!(events[0], Event::FallingBack { .. }), "{events:?}");
    assert_eq!(events[1], Event::Changed { from: 6, to: 2 });
    assert_eq!(state.status(lapse).mode, FleetMode::Fallback);
    assert_eq!(state.keep(lapse, 0), None, "a lapsed share is not claimed");
    assert_eq!(state.acked(lapse), 0);

    let events = state.answered((7, lapse), lapse, 3, ok(5, 5).unwrap(), TIMING);
    assert_eq!(
        events,
        vec![Event::Restored, Event::Changed { from: 2, to: 5 }]
    );
    assert_eq!(state.status(lapse).demand, 3);
}

#[test]
fn a_failed_call_keeps_a_valid_share_and_a_failed_first_call_falls_back() {
    let start = Instant::now();
    let mut state = ShareState::new(limit());
    let events = state.failed(start, &StoreError::Timeout(Duration::from_millis(500)));
    assert!(matches!(events[0], Event::FallingBack { .. }));
    assert_eq!(state.term(start), 2);

    state.answered((7, start), start, 0, ok(6, 6).unwrap(), TIMING);
    let later = start + Duration::from_secs(1);
    let events = state.failed(later, &down().unwrap_err());
    assert!(
        matches!(events[..], [Event::CallFailed { .. }]),
        "{events:?}"
    );
    assert_eq!(state.term(later), 6, "still valid");
    let status = state.status(later);
    assert_eq!(
        (status.store_calls_total, status.store_errors_total),
        (3, 2)
    );
    assert!(status.last_error.unwrap().contains("refused"));
}

#[test]
fn keep_is_the_term_or_every_permit_in_flight() {
    let now = Instant::now();
    let mut state = ShareState::new(limit());
    assert_eq!(state.keep(now, 2), Some(2), "before a share: what is held");
    assert_eq!(state.acked(now), 0);
    state.answered((7, now), now, 0, ok(6, 3).unwrap(), TIMING);
    assert_eq!(state.acked(now), 7, "the call that gave the share");
    assert_eq!(state.term(now), 3, "a shrinking target stops grants first");
    assert_eq!(state.keep(now, 0), Some(3));
    assert_eq!(state.keep(now, 5), Some(5), "held permits stay counted");
    assert_eq!(
        state.keep(now, 9),
        Some(9),
        "beyond the share too (the store caps it)"
    );
    // A share of 0 (the fleet is full) is kept as 0, not the fallback.
    state.answered((8, now), now, 0, ok(0, 1).unwrap(), TIMING);
    assert_eq!(state.term(now), 0);
    assert_eq!(state.keep(now, 0), None);
    assert_eq!(state.acked(now), 0, "no share held");
    // Lapsed: permits of the fallback share are reported, nothing acked.
    let later = now + TTL;
    state.tick(later);
    assert_eq!((state.keep(later, 2), state.acked(later)), (Some(2), 0));
}

#[test]
fn learning_keeps_a_reclaimed_share_else_the_fallback() {
    let now = Instant::now();
    let mut state = ShareState::new(limit());
    let events = state.answered((7, now), now, 0, reply(ReplyStatus::Learning, 0, 5), TIMING);
    assert!(matches!(events[0], Event::Learning { .. }));
    assert_eq!(state.term(now), 2, "nothing re-claimed: the fallback share");
    assert_eq!(state.status(now).learning_until, Some(now + TTL));
    state.answered((7, now), now, 0, reply(ReplyStatus::Learning, 4, 5), TIMING);
    assert_eq!(state.term(now), 4, "a re-claimed share is used");
    let events = state.answered((7, now), now, 0, ok(5, 5).unwrap(), TIMING);
    assert_eq!(
        events,
        vec![Event::Restored, Event::Changed { from: 4, to: 5 }]
    );
}

#[test]
fn a_conflict_stops_using_any_share_at_once_and_stale_answers_change_nothing() {
    let now = Instant::now();
    let mut state = ShareState::new(limit());
    state.answered((7, now), now, 0, ok(6, 6).unwrap(), TIMING);
    let before = state.status(now);
    let events = state.answered((7, now), now, 0, reply(ReplyStatus::Stale, 9, 9), TIMING);
    assert_eq!(events, vec![]);
    assert_eq!(state.status(now).share, before.share);
    let events = state.answered((7, now), now, 0, reply(ReplyStatus::Conflict, 0, 0), TIMING);
    assert_eq!(events[0], Event::Conflict);
    assert_eq!(state.term(now), 2);
    assert_eq!(state.status(now).mode, FleetMode::Fallback);
}

/// A store that answers from a script of replies (the last one repeats),
/// after `delay`, and records every call.
#[derive(Debug)]
struct Scripted {
    replies: Mutex<VecDeque<Result<Reply, StoreError>>>,
    calls: Mutex<Vec<(Instant, Call)>>,
    delay: Duration,
}

impl Scripted {
    fn new(delay: Duration, replies: Vec<Result<Reply, StoreError>>) -> Arc<Scripted> {
        Arc::new(Scripted {
            replies: Mutex::new(replies.into()),
            calls: Mutex::default(),
            delay,
        })
    }

    fn then(&self, replies: Vec<Result<Reply, StoreError>>) {
        *self.replies.lock().unwrap() = replies.into();
    }

    fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }
}

impl Store for Scripted {
    fn call(&self, call: Call) -> BoxFuture<'static, Result<Reply, StoreError>> {
        self.calls.lock().unwrap().push((Instant::now(), call));
        let mut replies = self.replies.lock().unwrap();
        let reply = if replies.len() > 1 {
            replies.pop_front().unwrap()
        } else {
            replies.front().cloned().unwrap_or_else(down)
        };
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            reply
        })
    }
}

#[derive(Debug, Default)]
struct Calls(Mutex<Vec<bool>>);

impl FleetObserver for Calls {
    fn store_called(&self, _: &str, _: Duration, ok: bool) {
        self.0.lock().unwrap().push(ok);
    }
}

fn config() -> FleetConfig {
    FleetConfig {
        store: FleetStore::Redis("redis://127.0.0.1:1".into()),
        share_ttl: TTL,
        safety_margin: MARGIN,
        instance: Arc::from("pod-a"),
        namespace: Arc::from("governor"),
        password: None,
    }
}

fn fleet_ledger() -> Arc<Ledger> {
    let limits = Limits::default()
        .patched(&LimitsPatch {
            max_concurrency: Some(64),
            fleet: Some(Some(limit())),
            ..Default::default()
        })
        .unwrap();
    Arc::new(Ledger::new(LedgerConfig {
        dependencies: vec![("payments".to_owned(), limits)],
        ..LedgerConfig::default()
    }))
}

fn request() -> AcquireRequest<'static> {
    AcquireRequest {
        dependency: "payments",
        tenant: None,
        route: None,
        attempt: 0,
        priority: Priority::Normal,
        max_wait: Some(Duration::from_secs(1)),
        degradable: false,
    }
}

fn enforced(ledger: &Ledger) -> u32 {
    ledger.status("payments").unwrap().limit.enforced
}

fn start(store: &Arc<Scripted>, ledger: &Arc<Ledger>) -> (Fleet, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let fleet = Fleet::with_store(&config(), store.clone(), ledger.clone(), calls.clone());
    (fleet, calls)
}

#[tokio::test(start_paused = true)]
async fn an_acquire_waits_for_the_first_answer_and_gets_the_share() {
    let ledger = fleet_ledger();
    assert_eq!(
        enforced(&ledger),
        0,
        "a fleet limit grants nothing before an answer"
    );
    let store = Scripted::new(Duration::from_millis(20), vec![ok(4, 4)]);
    let (fleet, _) = start(&store, &ledger);
    let started = Instant::now();
    let decision = ledger.acquire(&request()).await.unwrap();
    assert!(decision.granted().is_some(), "{decision:?}");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(20),
        "granted at the answer"
    );
    assert_eq!(enforced(&ledger), 4);
    let status = ledger.status("payments").unwrap().fleet.unwrap();
    assert_eq!(
        (status.mode, status.share, status.instances),
        (FleetMode::Share, 4, 2)
    );
    fleet.stop(Duration::from_secs(1), true).await;
}

#[tokio::test(start_paused = true)]
async fn renews_every_third_of_the_ttl_reports_demand_and_gives_back_on_stop() {
    let ledger = fleet_ledger();
    let store = Scripted::new(Duration::from_millis(1), vec![ok(6, 6)]);
    let (fleet, observed) = start(&store, &ledger);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            ledger
                .acquire(&request())
                .await
                .unwrap()
                .granted()
                .unwrap()
                .lease,
        );
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = store.calls();
    // 10 s / 1 s renewals, +-10 % jitter, plus the first call.
    assert!((10..=13).contains(&calls.len()), "{} calls", calls.len());
    let last = calls.last().unwrap();
    assert_eq!(last.demand, 3, "the three held");
    assert_eq!(last.keep, Some(6), "the term, more than in flight");
    assert!(
        calls.windows(2).all(|w| w[0].seq < w[1].seq),
        "sequence grows"
    );
    for lease in &held {
        ledger
            .release(lease, Report::new(Outcome::Success, None))
            .unwrap();
    }
    fleet.stop(Duration::from_secs(1), true).await;
    let calls = store.calls();
    let last = calls.last().unwrap();
    assert!(last.leaving, "the share is given back");
    assert_eq!(last.keep, None);
    assert_eq!(
        observed.0.lock().unwrap().len(),
        calls.len() - 1,
        "every renewal is counted in the metrics, the give-back is not"
    );
}

#[tokio::test(start_paused = true)]
async fn store_down_keeps_the_share_until_it_lapses_then_the_fallback() {
    let ledger = fleet_ledger();
    let store = Scripted::new(Duration::from_millis(1), vec![ok(6, 6)]);
    let (fleet, _) = start(&store, &ledger);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let first = Instant::now() - Duration::from_millis(10);
    assert_eq!(enforced(&ledger), 6);
    store.then(vec![down()]);
    tokio::time::sleep_until(first + Duration::from_millis(1500)).await;
    assert_eq!(enforced(&ledger), 6, "still valid while the store is down");
    // Renewals from ~1 s on fail: the first call's share lapses at
    // share_ttl - margin.
    tokio::time::sleep_until(first + TTL - MARGIN + Duration::from_millis(1)).await;
    assert_eq!(enforced(&ledger), 2, "fallback share");
    let status = ledger.status("payments").unwrap().fleet.unwrap();
    assert_eq!(status.mode, FleetMode::Fallback);
    assert!(status.store_errors_total >= 2);
    assert!(status.last_error.unwrap().contains("refused"));
    // Back: a share again at the next renewal.
    store.then(vec![ok(5, 5)]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(enforced(&ledger), 5);
    fleet.stop(Duration::from_secs(1), true).await;
}

#[tokio::test(start_paused = true)]
async fn a_share_lapses_on_time_while_a_call_hangs() {
    let ledger = fleet_ledger();
    let store = Scripted::new(Duration::from_millis(1), vec![ok(6, 6)]);
    let (fleet, _) = start(&store, &ledger);
    tokio::time::sleep(Duration::from_millis(10)).await;
    // From now on every call hangs up to the call timeout (renew / 2).
    store.then(vec![Err(StoreError::Redis("slow".into()))]);
    let lapse = store.calls.lock().unwrap()[0].0 + TTL - MARGIN;
    tokio::time::sleep_until(lapse - Duration::from_millis(1)).await;
    assert_eq!(enforced(&ledger), 6);
    tokio::time::sleep_until(lapse + Duration::from_millis(1)).await;
    assert_eq!(enforced(&ledger), 2, "lapsed at its local expiry");
    fleet.stop(Duration::from_secs(1), true).await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_fleet_limit_gives_the_share_back_and_leaves_the_local_limit() {
    let ledger = fleet_ledger();
    let store = Scripted::new(Duration::from_millis(1), vec![ok(6, 6)]);
    let (fleet, _) = start(&store, &ledger);
    tokio::time::sleep(Duration::from_millis(10)).await;
    ledger.set_fleet_store(true);
    ledger
        .update(
            "payments",
            &LimitsPatch {
                fleet: Some(None),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(enforced(&ledger), 64, "the local limit at once");
    assert_eq!(ledger.status("payments").unwrap().fleet, None);
    // The supervisor notices within a renewal period; the task gives back.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(store.calls().last().unwrap().leaving);
    // Set again: a new task, whose calls go on from the last sequence
    // number (the store would take a 1 again for a late duplicate).
    ledger
        .update(
            "payments",
            &LimitsPatch {
                fleet: Some(Some(limit())),
                ..Default::default()
            },
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(enforced(&ledger), 6);
    let calls = store.calls();
    assert!(calls.windows(2).all(|w| w[0].seq < w[1].seq), "{calls:?}");
    fleet.stop(Duration::from_secs(1), true).await;
}

#[tokio::test(start_paused = true)]
async fn the_control_plane_sets_a_fleet_limit_only_with_a_store() {
    let ledger = Arc::new(Ledger::new(LedgerConfig::default()));
    let patch = LimitsPatch {
        fleet: Some(Some(limit())),
        ..Default::default()
    };
    let error = ledger.update("queue", &patch).unwrap_err();
    assert!(error.to_string().contains("no [fleet] store"), "{error}");
    assert!(!ledger.contains("queue"), "a refused update leaves nothing");

    let store = Scripted::new(Duration::from_millis(1), vec![ok(3, 3)]);
    let (fleet, _) = start(&store, &ledger);
    let status = ledger.update("queue", &patch).unwrap();
    assert_eq!(
        status.limit.enforced, 0,
        "starting: nothing before an answer"
    );
    // The ledger wakes the supervisor: the first call comes at once.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(enforced_of(&ledger, "queue"), 3);
    fleet.stop(Duration::from_secs(1), true).await;
}

fn enforced_of(ledger: &Ledger, name: &str) -> u32 {
    ledger.status(name).unwrap().limit.enforced
}

#[tokio::test(start_paused = true)]
async fn a_drain_with_permits_still_out_leaves_the_share_to_lapse() {
    let ledger = fleet_ledger();
    let store = Scripted::new(Duration::from_millis(1), vec![ok(6, 6)]);
    let (fleet, _) = start(&store, &ledger);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let held = ledger.acquire(&request()).await.unwrap();
    assert!(held.granted().is_some());
    let calls = store.calls().len();
    fleet.stop(Duration::from_secs(1), false).await;
    let after = store.calls();
    assert_eq!(after.len(), calls, "no give-back call: {after:?}");
    assert!(after.iter().all(|c| !c.leaving));
}

#[tokio::test(start_paused = true)]
async fn a_learning_store_is_asked_again_as_soon_as_it_is_over() {
    let ledger = fleet_ledger();
    let learning = Reply {
        learning_left: Duration::from_millis(300),
        ..reply(ReplyStatus::Learning, 0, 5)
    };
    let store = Scripted::new(Duration::ZERO, vec![Ok(learning), ok(5, 5)]);
    let (fleet, _) = start(&store, &ledger);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(enforced(&ledger), 2, "learning: the fallback share");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        enforced(&ledger),
        5,
        "asked at the end of learning, not a renewal later"
    );
    let times: Vec<Instant> = store
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(times[1] - times[0], Duration::from_millis(310));
    fleet.stop(Duration::from_secs(1), true).await;
}
