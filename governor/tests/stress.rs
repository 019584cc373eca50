//! Many concurrent callers acquiring, releasing, timing out and cancelling at
//! random on a real multi-threaded runtime: the slot count never exceeds the
//! limit, and when everyone is done nothing is left held or queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rand::Rng;
use rate_governor::ledger::limit::{AdaptivePatch, Algorithm, AlgorithmChoice};
use rate_governor::ledger::{
    AcquireRequest, Decision, FairBy, FairnessPatch, Ledger, LedgerConfig, Limits, LimitsPatch,
    Outcome, Priority, RatePatch, RejectReason, Report,
};

const LIMIT: u32 = 4;

fn ledger() -> Arc<Ledger> {
    let limits = Limits::default()
        .patched(&LimitsPatch {
            max_concurrency: Some(LIMIT),
            max_queue: Some(8),
            max_wait: Some(Duration::from_millis(20)),
            ..Default::default()
        })
        .unwrap();
    Arc::new(Ledger::new(LedgerConfig {
        dependencies: vec![("db".into(), limits)],
        ..LedgerConfig::default()
    }))
}

/// Returns how many of its requests were answered DEGRADE.
async fn caller(ledger: Arc<Ledger>, holders: Arc<AtomicU32>, rounds: usize) -> u32 {
    let mut degraded = 0;
    for _ in 0..rounds {
        let (priority, attempt, cancel_after, hold, degradable) = {
            let mut rng = rand::rng();
            let priority =
                [Priority::Critical, Priority::Normal, Priority::Sheddable][rng.random_range(0..3)];
            (
                priority,
                rng.random_range(0..2),
                rng.random_range(0..3000u64),
                rng.random_range(0..500u64),
                // A quarter of the callers have a fallback.
                rng.random_range(0..4) == 0,
            )
        };
        let request = AcquireRequest {
            dependency: "db",
            tenant: None,
            route: None,
            attempt,
            priority,
            max_wait: None,
            degradable,
        };
        let acquire = ledger.acquire(&request);
        // A third of the callers give up early: cancellation at any point.
        let decision = if cancel_after < 1000 {
            match tokio::time::timeout(Duration::from_micros(cancel_after), acquire).await {
                Ok(decision) => decision.unwrap(),
                Err(_) => continue,
            }
        } else {
            acquire.await.unwrap()
        };
        if degradable {
            // Decided on arrival: a degradable request never waits.
            assert_eq!(decision.queue_wait, Duration::ZERO, "{decision:?}");
        }
        if decision.rejected().map(|r| r.reason) == Some(RejectReason::Degrade) {
            assert!(degradable, "DEGRADE for a caller without a fallback");
            degraded += 1;
        }
        if let Some(grant) = decision.granted() {
            assert!(
                decision.snapshot.in_flight <= LIMIT,
                "{:?}",
                decision.snapshot
            );
            let held = holders.fetch_add(1, Ordering::SeqCst) + 1;
            assert!(held <= LIMIT, "{held} callers hold a permit of {LIMIT}");
            tokio::time::sleep(Duration::from_micros(hold)).await;
            holders.fetch_sub(1, Ordering::SeqCst);
            assert!(ledger.release(&grant.lease, Report::default()).is_some());
        }
    }
    degraded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invariants_hold_under_random_concurrent_load() {
    let ledger = ledger();
    let holders = Arc::new(AtomicU32::new(0));
    let callers: Vec<_> = (0..64)
        .map(|_| tokio::spawn(caller(ledger.clone(), holders.clone(), 200)))
        .collect();
    let mut degraded = 0;
    for caller in callers {
        degraded += caller.await.expect("no caller panicked");
    }
    let status = ledger.status("db").unwrap();
    assert_eq!((status.in_flight, status.queued), (0, 0), "{status:?}");
    assert_eq!(ledger.leases(), 0);
    assert_eq!(ledger.waiters(), 0);
    assert!(
        status.granted_total > 0 && status.rejected_total > 0,
        "{status:?}"
    );
    assert!(degraded > 0, "no degradable caller met a busy dependency");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limit_changes_under_load_leak_nothing() {
    let ledger = ledger();
    let holders = Arc::new(AtomicU32::new(u32::MAX / 2)); // not checked here
    let callers: Vec<_> = (0..32)
        .map(|_| tokio::spawn(caller_unchecked(ledger.clone(), holders.clone())))
        .collect();
    for round in 0..50u32 {
        let patch = LimitsPatch {
            max_concurrency: Some(1 + round % 6),
            max_queue: Some(round % 10),
            ..Default::default()
        };
        ledger.update("db", &patch).unwrap();
        tokio::time::sleep(Duration::from_micros(300)).await;
    }
    for caller in callers {
        caller.await.expect("no caller panicked");
    }
    let status = ledger.status("db").unwrap();
    assert_eq!((status.in_flight, status.queued), (0, 0), "{status:?}");
    assert_eq!(ledger.leases(), 0);
    assert_eq!(ledger.waiters(), 0);
}

/// A normal first attempt on "db"; with `give_up`, the caller cancels after
/// that long (`None` then, unless it was decided before).
async fn acquire_normal(ledger: &Ledger, give_up: Option<Duration>) -> Option<Decision> {
    let request = AcquireRequest {
        dependency: "db",
        tenant: None,
        route: None,
        attempt: 0,
        priority: Priority::Normal,
        max_wait: None,
        degradable: false,
    };
    match give_up {
        Some(after) => tokio::time::timeout(after, ledger.acquire(&request))
            .await
            .ok()
            .map(Result::unwrap),
        None => Some(ledger.acquire(&request).await.unwrap()),
    }
}

async fn caller_unchecked(ledger: Arc<Ledger>, _holders: Arc<AtomicU32>) {
    for _ in 0..200 {
        let cancel = rand::rng().random_bool(0.3);
        let give_up = cancel.then_some(Duration::from_micros(200));
        let Some(decision) = acquire_normal(&ledger, give_up).await else {
            continue;
        };
        if let Some(grant) = decision.granted() {
            tokio::task::yield_now().await;
            assert!(ledger.release(&grant.lease, Report::default()).is_some());
        }
    }
}

const CEILING: u32 = 8;

/// Callers that report random outcomes and latencies, so an adaptive limit
/// with short windows moves all the time; every grant is checked against the
/// enforced limit in force at that grant.
async fn adaptive_caller(ledger: Arc<Ledger>, holders: Arc<AtomicU32>) {
    for _ in 0..300 {
        let (cancel, hold, outcome, latency) = {
            let mut rng = rand::rng();
            let outcome = [
                Outcome::Success,
                Outcome::Success,
                Outcome::Success,
                Outcome::Failure,
                Outcome::Timeout,
                Outcome::Cancelled,
            ][rng.random_range(0..6)];
            (
                rng.random_bool(0.2),
                rng.random_range(0..300u64),
                outcome,
                Duration::from_micros(rng.random_range(1..5000)),
            )
        };
        let give_up = cancel.then_some(Duration::from_micros(150));
        let Some(decision) = acquire_normal(&ledger, give_up).await else {
            continue;
        };
        if let Some(grant) = decision.granted() {
            let snapshot = decision.snapshot;
            assert!(snapshot.in_flight <= snapshot.limit, "{snapshot:?}");
            assert!(snapshot.limit <= CEILING, "{snapshot:?}");
            let held = holders.fetch_add(1, Ordering::SeqCst) + 1;
            assert!(held <= CEILING, "{held} callers hold a permit of {CEILING}");
            tokio::time::sleep(Duration::from_micros(hold)).await;
            holders.fetch_sub(1, Ordering::SeqCst);
            let report = Report::new(outcome, Some(latency));
            assert!(ledger.release(&grant.lease, report).is_some());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adaptive_limit_moving_under_load_is_never_exceeded() {
    let adaptive = AdaptivePatch {
        algorithm: Some(AlgorithmChoice::Adaptive(Algorithm::Aimd)),
        min_limit: Some(1),
        initial_limit: Some(4),
        window: Some(Duration::from_millis(10)),
        min_samples: Some(2),
        ..Default::default()
    };
    let limits = Limits::default()
        .patched(&LimitsPatch {
            max_concurrency: Some(CEILING),
            max_queue: Some(16),
            max_wait: Some(Duration::from_millis(20)),
            adaptive: Some(adaptive),
            ..Default::default()
        })
        .unwrap();
    let ledger = Arc::new(Ledger::new(LedgerConfig {
        dependencies: vec![("db".into(), limits)],
        ..LedgerConfig::default()
    }));
    let holders = Arc::new(AtomicU32::new(0));
    let callers: Vec<_> = (0..48)
        .map(|_| tokio::spawn(adaptive_caller(ledger.clone(), holders.clone())))
        .collect();
    // Meanwhile the control plane switches algorithms, shadow mode and the
    // adaptive limit itself on and off.
    let choices = [
        AlgorithmChoice::Adaptive(Algorithm::Gradient),
        AlgorithmChoice::Adaptive(Algorithm::Vegas),
        AlgorithmChoice::Static,
        AlgorithmChoice::Adaptive(Algorithm::Aimd),
    ];
    for round in 0..40usize {
        let patch = LimitsPatch {
            adaptive: Some(AdaptivePatch {
                algorithm: Some(choices[round % choices.len()]),
                shadow: Some(round % 5 == 0),
                ..adaptive
            }),
            ..Default::default()
        };
        ledger.update("db", &patch).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for caller in callers {
        caller.await.expect("no caller panicked");
    }
    let status = ledger.status("db").unwrap();
    assert_eq!((status.in_flight, status.queued), (0, 0), "{status:?}");
    assert_eq!(ledger.leases(), 0);
    assert_eq!(ledger.waiters(), 0);
    assert!(
        status.limit_changes_total > 0,
        "the limit never moved: {status:?}"
    );
}

/// Counts the leases freed by closing sessions.
#[derive(Debug, Default)]
struct SessionCounter(std::sync::atomic::AtomicUsize);

impl rate_governor::ledger::LedgerObserver for SessionCounter {
    fn session_lease_released(&self, lease: &rate_governor::ledger::EndedLease) {
        assert_eq!(
            lease.end,
            rate_governor::ledger::LeaseEnd::Released(Outcome::SessionClosed)
        );
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// One acquire on `session`: when granted, the lease is held, released by
/// the caller (the unary path), renewed, or left for the session's close.
async fn session_acquire(
    ledger: Arc<Ledger>,
    session: Arc<rate_governor::ledger::Session>,
    max_wait: Duration,
) {
    let (priority, fate, hold) = {
        let mut rng = rand::rng();
        let priority =
            [Priority::Critical, Priority::Normal, Priority::Sheddable][rng.random_range(0..3)];
        (
            priority,
            rng.random_range(0..3u8),
            rng.random_range(0..400u64),
        )
    };
    let request = AcquireRequest {
        dependency: "db",
        tenant: None,
        route: None,
        attempt: 0,
        priority,
        max_wait: Some(max_wait),
        degradable: false,
    };
    let Ok(decision) = ledger.acquire_in(&session, &request).await else {
        // Closed under it, or the session's pending cap: nothing held.
        return;
    };
    let Some(grant) = decision.granted() else {
        return;
    };
    assert!(
        decision.snapshot.in_flight <= LIMIT,
        "{:?}",
        decision.snapshot
    );
    tokio::time::sleep(Duration::from_micros(hold)).await;
    match fate {
        0 => {
            // Released by its holder, unless the session closed first.
            let released = ledger.release(&grant.lease, Report::default()).is_some();
            assert!(released || session.is_closed());
        }
        1 => {
            let _ = ledger.renew(&grant.lease);
        }
        // Left to the session.
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_closing_at_random_leak_nothing_and_never_exceed_the_limit() {
    let limits = Limits::default()
        .patched(&LimitsPatch {
            max_concurrency: Some(LIMIT),
            max_queue: Some(16),
            max_wait: Some(Duration::from_millis(50)),
            ..Default::default()
        })
        .unwrap();
    let counter = Arc::new(SessionCounter::default());
    let ledger = Arc::new(Ledger::with_observer(
        LedgerConfig {
            dependencies: vec![("db".into(), limits)],
            max_session_pending: 6,
            ..LedgerConfig::default()
        },
        counter.clone(),
    ));
    let closed_total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            for _ in 0..2000 {
                let status = ledger.status("db").unwrap();
                assert!(status.in_flight <= LIMIT, "{status:?}");
                tokio::task::yield_now().await;
            }
        })
    };
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let ledger = ledger.clone();
            let closed_total = closed_total.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    let session = Arc::new(ledger.open_session(None));
                    let (acquires, close_after) = {
                        let mut rng = rand::rng();
                        (rng.random_range(1..10usize), rng.random_range(0..1500u64))
                    };
                    let tasks: Vec<_> = (0..acquires)
                        .map(|_| {
                            let wait = Duration::from_millis(rand::rng().random_range(0..60));
                            tokio::spawn(session_acquire(ledger.clone(), session.clone(), wait))
                        })
                        .collect();
                    // Closed while acquires wait and leases are held.
                    tokio::time::sleep(Duration::from_micros(close_after)).await;
                    let closed = session.close();
                    closed_total.fetch_add(closed.released, Ordering::SeqCst);
                    assert_eq!(session.leases(), 0);
                    assert!(
                        session.close().released == 0,
                        "a second close frees nothing"
                    );
                    for task in tasks {
                        task.await.expect("no acquire panicked");
                    }
                    // Nothing a closed session got after the close stays.
                    assert_eq!(session.leases(), 0);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("no worker panicked");
    }
    watcher.await.expect("the limit held");
    let status = ledger.status("db").unwrap();
    assert_eq!((status.in_flight, status.queued), (0, 0), "{status:?}");
    assert_eq!(ledger.leases(), 0);
    assert_eq!(ledger.waiters(), 0);
    assert!(status.granted_total > 0, "{status:?}");
    let by_close = closed_total.load(Ordering::SeqCst);
    // Every lease freed by a close was told to the observer, once; grants
    // that found their session closed were released so too.
    assert!(counter.0.load(Ordering::SeqCst) >= by_close);
    assert!(by_close > 0, "some sessions closed with leases held");
}

const TENANTS: [&str; 4] = ["a", "b", "c", "d"];

/// Fair shares with `a` weighing 3 and a table small enough to overflow.
fn fair_shares(by: FairBy) -> Option<Option<FairnessPatch>> {
    Some(Some(FairnessPatch {
        by: Some(by),
        weights: [("a".to_owned(), 3)].into(),
        default_weight: None,
        max_tenants: Some(4),
    }))
}
const RATE: (f64, u32) = (4000.0, 20);
const TENANT_RATE: (f64, u32) = (800.0, 4);

/// Callers of four tenants (and some of none) and three routes, at random
/// priorities, under a dependency rate, a per-tenant rate and fair shares,
/// with random waits, cancellations and fallbacks. Returns
/// the grants per tenant (the last slot: no tenant).
async fn rated_caller(ledger: Arc<Ledger>, holders: Arc<AtomicU32>, rounds: usize) -> [u64; 5] {
    let mut grants = [0u64; 5];
    for _ in 0..rounds {
        let (tenant, route, priority, max_wait, cancel_after, hold, degradable) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..5usize),
                [None, Some("x"), Some("y")][rng.random_range(0..3usize)],
                Priority::ALL[rng.random_range(0..3usize)],
                rng.random_range(0..4000u64),
                rng.random_range(0..4000u64),
                rng.random_range(0..300u64),
                rng.random_range(0..4) == 0,
            )
        };
        let request = AcquireRequest {
            dependency: "db",
            tenant: TENANTS.get(tenant).copied(),
            route,
            attempt: 0,
            priority,
            max_wait: Some(Duration::from_micros(max_wait)),
            degradable,
        };
        let acquire = ledger.acquire(&request);
        let decision = if cancel_after < 1500 {
            match tokio::time::timeout(Duration::from_micros(cancel_after), acquire).await {
                Ok(decision) => decision.unwrap(),
                Err(_) => continue,
            }
        } else {
            acquire.await.unwrap()
        };
        if let Some(rejection) = decision.rejected() {
            if rejection.reason == RejectReason::RateLimited {
                assert!(rejection.retry_after > Duration::ZERO, "{rejection:?}");
            }
        }
        if let Some(grant) = decision.granted() {
            grants[tenant] += 1;
            let held = holders.fetch_add(1, Ordering::SeqCst) + 1;
            assert!(held <= LIMIT, "{held} callers hold a permit of {LIMIT}");
            tokio::time::sleep(Duration::from_micros(hold)).await;
            holders.fetch_sub(1, Ordering::SeqCst);
            assert!(ledger.release(&grant.lease, Report::default()).is_some());
        }
    }
    grants
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rates_and_tenants_under_load_leak_nothing_and_exceed_nothing() {
    let rate = |(per_second, burst): (f64, u32)| Some(Some(RatePatch { per_second, burst }));
    let limits = Limits::default()
        .patched(&LimitsPatch {
            max_concurrency: Some(LIMIT),
            max_queue: Some(8),
            max_wait: Some(Duration::from_millis(5)),
            rate: rate(RATE),
            tenant_rate: rate(TENANT_RATE),
            fairness: fair_shares(FairBy::TenantRoute),
            ..Default::default()
        })
        .unwrap();
    let ledger = Arc::new(Ledger::new(LedgerConfig {
        dependencies: vec![("db".into(), limits)],
        ..LedgerConfig::default()
    }));
    let started = std::time::Instant::now();
    let holders = Arc::new(AtomicU32::new(0));
    let callers: Vec<_> = (0..48)
        .map(|_| tokio::spawn(rated_caller(ledger.clone(), holders.clone(), 150)))
        .collect();
    // Fair shares change under the callers: new weights, another `by`, off
    // and on again (each a new table, with the waiters moved over).
    let reconfigure = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let changes = [
                fair_shares(FairBy::Tenant),
                Some(None),
                fair_shares(FairBy::TenantRoute),
            ];
            for round in 0.. {
                tokio::time::sleep(Duration::from_millis(3)).await;
                let patch = LimitsPatch {
                    fairness: changes[round % changes.len()].clone(),
                    ..Default::default()
                };
                if ledger.update("db", &patch).is_err() {
                    break;
                }
            }
        })
    };
    let mut grants = [0u64; 5];
    for caller in callers {
        let theirs = caller.await.expect("no caller panicked");
        for (total, n) in grants.iter_mut().zip(theirs) {
            *total += n;
        }
    }
    // Every grant happened within this span, so no bucket gave more than
    // its rate over it plus its burst.
    let span = started.elapsed().as_secs_f64();
    let total: u64 = grants.iter().sum();
    let bound =
        |(per_second, burst): (f64, u32)| (per_second * span).ceil() as u64 + u64::from(burst);
    assert!(total <= bound(RATE), "{total} grants in {span:.3} s");
    for (tenant, n) in TENANTS.iter().zip(grants) {
        assert!(
            n <= bound(TENANT_RATE),
            "{tenant}: {n} grants in {span:.3} s"
        );
    }
    reconfigure.abort();
    let status = ledger.status("db").unwrap();
    assert_eq!(
        (status.in_flight, status.queued, status.delayed),
        (0, 0, 0),
        "{status:?}"
    );
    // The fair-share table's counts came back with the permits and waiters.
    for tenant in &status.fair.tenants {
        assert_eq!((tenant.in_flight, tenant.queued), (0, 0), "{tenant:?}");
    }
    assert_eq!(ledger.leases(), 0);
    assert_eq!(ledger.waiters(), 0);
    // A grant that raced its caller's cancellation counts there too (and
    // went straight back).
    assert!(status.granted_total >= total, "{status:?}");
    assert!(
        status.rejected_total > 0 && grants[4] > 0,
        "{status:?} {grants:?}"
    );
}
