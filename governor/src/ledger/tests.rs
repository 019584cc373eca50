//! Behaviour of the ledger under paused time: every wait below is virtual, so
//! these tests are exact and fast.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::{Instant, advance};

use super::*;

fn limits(concurrency: u32, queue: u32, wait_ms: u64) -> Limits {
    Limits::default()
        .patched(&LimitsPatch {
            max_concurrency: Some(concurrency),
            max_queue: Some(queue),
            max_wait: Some(Duration::from_millis(wait_ms)),
            lease_ttl: Some(Duration::from_secs(10)),
            retry_budget: None,
            adaptive: None,
            elevated_at: None,
            degrade_at: None,
            rate: None,
            tenant_rate: None,
            fairness: None,
            fleet: None,
        })
        .unwrap()
}

/// `limits` with another lease TTL.
fn with_ttl(limits: Limits, ttl: Duration) -> Limits {
    limits
        .patched(&LimitsPatch {
            lease_ttl: Some(ttl),
            ..Default::default()
        })
        .unwrap()
}

/// Roomy limits with the given retry budget (ttl in seconds).
fn with_budget(ratio: f64, min_per_second: u32, ttl_secs: u64) -> Limits {
    let budget = BudgetConfig {
        ratio,
        min_per_second,
        ttl: Duration::from_secs(ttl_secs),
    };
    let patch = LimitsPatch {
        retry_budget: Some(budget),
        ..Default::default()
    };
    limits(100, 10, 1000).patched(&patch).unwrap()
}

fn ledger_with(name: &str, limits: Limits) -> Arc<Ledger> {
    Arc::new(Ledger::new(LedgerConfig {
        dependencies: vec![(name.to_owned(), limits)],
        ..LedgerConfig::default()
    }))
}

fn request(priority: Priority, attempt: u32) -> AcquireRequest<'static> {
    AcquireRequest {
        dependency: "db",
        tenant: None,
        route: None,
        attempt,
        priority,
        max_wait: None,
        degradable: false,
    }
}

async fn grant(ledger: &Ledger) -> LeaseId {
    let decision = ledger.acquire(&request(Priority::Normal, 0)).await.unwrap();
    decision.granted().expect("granted").lease
}

/// Starts an acquire in the background and lets it reach the queue.
async fn enqueue(
    ledger: &Arc<Ledger>,
    priority: Priority,
    attempt: u32,
) -> tokio::task::JoinHandle<Decision> {
    let ledger = ledger.clone();
    let handle =
        tokio::spawn(async move { ledger.acquire(&request(priority, attempt)).await.unwrap() });
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    handle
}

fn status(ledger: &Ledger) -> DependencyStatus {
    ledger.status("db").unwrap()
}

#[tokio::test(start_paused = true)]
async fn grants_up_to_the_limit_then_queues_without_barging() {
    let ledger = ledger_with("db", limits(2, 10, 1000));
    let a = grant(&ledger).await;
    let _b = grant(&ledger).await;
    let waiter = enqueue(&ledger, Priority::Normal, 0).await;
    assert_eq!(status(&ledger).queued, 1);
    assert_eq!(status(&ledger).in_flight, 2);

    advance(Duration::from_millis(30)).await;
    assert!(ledger.release(&a, Report::default()).is_some());
    let decision = waiter.await.unwrap();
    assert!(decision.granted().is_some());
    assert_eq!(decision.queue_wait, Duration::from_millis(30));
    assert_eq!(
        decision.snapshot,
        Snapshot {
            limit: 2,
            in_flight: 2,
            queued: 0,
            pressure: Pressure::Saturated,
        }
    );
    assert_eq!(status(&ledger).in_flight, 2);
}

#[tokio::test(start_paused = true)]
async fn serves_waiters_by_priority_then_arrival() {
    let ledger = ledger_with("db", limits(1, 10, 5000));
    let held = grant(&ledger).await;
    let sheddable = enqueue(&ledger, Priority::Sheddable, 0).await;
    let normal_1 = enqueue(&ledger, Priority::Normal, 0).await;
    let normal_2 = enqueue(&ledger, Priority::Normal, 1).await;
    let critical = enqueue(&ledger, Priority::Critical, 0).await;

    let mut lease = held;
    for (name, waiter) in [
        ("critical", critical),
        ("normal_1", normal_1),
        ("normal_2", normal_2),
        ("sheddable", sheddable),
    ] {
        assert!(
            ledger.release(&lease, Report::default()).is_some(),
            "{name}"
        );
        let decision = waiter.await.unwrap();
        lease = decision
            .granted()
            .unwrap_or_else(|| panic!("{name} granted"))
            .lease;
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_rejects_or_sheds_the_newest_lowest_waiter() {
    let ledger = ledger_with("db", limits(1, 2, 5000));
    let _held = grant(&ledger).await;
    let old_sheddable = enqueue(&ledger, Priority::Sheddable, 0).await;
    let new_sheddable = enqueue(&ledger, Priority::Sheddable, 0).await;

    // Same priority as the lowest waiter: no displacement.
    let full = ledger
        .acquire(&request(Priority::Sheddable, 0))
        .await
        .unwrap();
    assert_eq!(full.rejected().unwrap().reason, RejectReason::QueueFull);
    assert!(full.rejected().unwrap().retry_after > Duration::ZERO);

    // Higher priority displaces the newest sheddable waiter.
    let critical = enqueue(&ledger, Priority::Critical, 0).await;
    let shed = new_sheddable.await.unwrap();
    assert_eq!(shed.rejected().unwrap().reason, RejectReason::Shed);
    assert_eq!(status(&ledger).queued, 2);
    assert!(!old_sheddable.is_finished());
    assert!(!critical.is_finished());

    // A retry may not displace a first attempt.
    let retry = ledger
        .acquire(&request(Priority::Critical, 1))
        .await
        .unwrap();
    assert_eq!(retry.rejected().unwrap().reason, RejectReason::QueueFull);
    assert_eq!(status(&ledger).rejected_total, 3);
}

#[tokio::test(start_paused = true)]
async fn waiters_time_out_at_the_shorter_of_both_waits() {
    let ledger = ledger_with("db", limits(1, 10, 200));
    let _held = grant(&ledger).await;

    let start = Instant::now();
    let decision = ledger.acquire(&request(Priority::Normal, 0)).await.unwrap();
    assert_eq!(
        decision.rejected().unwrap().reason,
        RejectReason::QueueTimeout
    );
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(decision.queue_wait, Duration::from_millis(200));

    let start = Instant::now();
    let short = AcquireRequest {
        max_wait: Some(Duration::from_millis(50)),
        ..request(Priority::Normal, 0)
    };
    let decision = ledger.acquire(&short).await.unwrap();
    assert_eq!(
        decision.rejected().unwrap().reason,
        RejectReason::QueueTimeout
    );
    assert_eq!(start.elapsed(), Duration::from_millis(50));

    // A zero wait never queues.
    let try_acquire = AcquireRequest {
        max_wait: Some(Duration::ZERO),
        ..request(Priority::Normal, 0)
    };
    let decision = ledger
        .acquire(&try_acquire)
        .now_or_never()
        .expect("decided at once")
        .unwrap();
    assert_eq!(
        decision.rejected().unwrap().reason,
        RejectReason::QueueTimeout
    );
    let status = status(&ledger);
    assert_eq!((status.queued, status.in_flight), (0, 1));
    assert_eq!(ledger.waiters(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_leaves_the_queue() {
    let ledger = ledger_with("db", limits(1, 10, 5000));
    let held = grant(&ledger).await;
    let waiter = enqueue(&ledger, Priority::Normal, 0).await;
    assert_eq!(ledger.waiters(), 1);
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(status(&ledger).queued, 0);
    assert_eq!(ledger.waiters(), 0);
    ledger.release(&held, Report::default()).unwrap();
    assert_eq!(status(&ledger).in_flight, 0);
}

/// A grant on dependency "other".
async fn grant_on(ledger: &Ledger) -> LeaseId {
    let request = AcquireRequest {
        dependency: "other",
        ..request(Priority::Normal, 0)
    };
    ledger
        .acquire(&request)
        .await
        .unwrap()
        .granted()
        .unwrap()
        .lease
}

#[tokio::test(start_paused = true)]
async fn a_grant_racing_a_cancellation_returns_its_slot() {
    let ledger = ledger_with("db", limits(1, 10, 5000));
    let held = grant(&ledger).await;
    let mut waiting = Box::pin({
        let ledger = ledger.clone();
        async move { ledger.acquire(&request(Priority::Normal, 0)).await }
    });
    assert!(futures::poll!(waiting.as_mut()).is_pending());
    // The release grants the waiter, but its caller drops before looking.
    ledger.release(&held, Report::default()).unwrap();
    assert_eq!(status(&ledger).in_flight, 1);
    drop(waiting);
    let status = status(&ledger);
    assert_eq!((status.in_flight, status.queued), (0, 0));
    assert_eq!(ledger.leases(), 0);
    // And the slot is usable again.
    grant(&ledger).await;
}

#[tokio::test(start_paused = true)]
async fn leases_expire_after_their_ttl_and_not_before() {
    let ttl = Duration::from_millis(500);
    let limits = with_ttl(limits(1, 10, 5000), ttl);
    let ledger = ledger_with("db", limits);
    let lease = grant(&ledger).await;
    let waiter = enqueue(&ledger, Priority::Normal, 0).await;

    advance(ttl - Duration::from_millis(1)).await;
    assert_eq!(status(&ledger).expired_total, 0);
    assert!(!waiter.is_finished());

    advance(Duration::from_millis(1)).await;
    let decision = waiter.await.unwrap();
    assert!(
        decision.granted().is_some(),
        "the expiry freed the slot for the waiter"
    );
    assert_eq!(status(&ledger).expired_total, 1);
    assert!(
        ledger.release(&lease, Report::default()).is_none(),
        "an expired lease cannot be released"
    );
}

#[tokio::test(start_paused = true)]
async fn renewal_pushes_expiry_back() {
    let ttl = Duration::from_millis(300);
    let limits = with_ttl(limits(1, 10, 5000), ttl);
    let ledger = ledger_with("db", limits);
    let lease = grant(&ledger).await;
    for _ in 0..5 {
        advance(Duration::from_millis(200)).await;
        assert_eq!(ledger.renew(&lease).unwrap().1, ttl);
    }
    assert_eq!(status(&ledger).expired_total, 0);
    advance(ttl).await;
    tokio::task::yield_now().await;
    assert_eq!(status(&ledger).expired_total, 1);
    assert!(ledger.renew(&lease).is_none());
    assert_eq!(status(&ledger).in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn release_is_idempotent_and_rejects_foreign_ids() {
    let ledger = ledger_with("db", limits(2, 10, 1000));
    let lease = grant(&ledger).await;
    // The same key under another process's epoch frees nothing.
    let foreign = LeaseId {
        epoch: lease.epoch ^ 1,
        ..lease
    };
    assert!(ledger.release(&foreign, Report::default()).is_none());
    assert!(ledger.renew(&foreign).is_none());
    assert_eq!(status(&ledger).in_flight, 1);
    assert!(ledger.release(&lease, Report::default()).is_some());
    assert!(ledger.release(&lease, Report::default()).is_none());
    assert_eq!(status(&ledger).in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_lease_id_finds_only_its_own_dependency_even_when_its_slot_is_reused() {
    let (ledger, evictions) = evicting_ledger(4, Duration::from_secs(1));
    let old = grant_of(&ledger, "junk").await;
    ledger.release(&old, Report::default()).unwrap();
    advance(Duration::from_secs(1)).await;
    ledger.evict_idle(Instant::now());
    assert_eq!(evictions.take(), ["junk"]);
    // The next dependency takes the freed slot; the old id names it still.
    let new = grant_of(&ledger, "other").await;
    assert_eq!(new.slot(), old.slot(), "the slot is reused");
    assert!(!ledger.holds(&old));
    assert!(ledger.release(&old, Report::default()).is_none());
    assert!(ledger.renew(&old).is_none());
    assert_eq!(ledger.status("other").unwrap().in_flight, 1);
    // The new lease's key under another slot (a forged id) finds nothing
    // either: only the dependency that granted a key holds it.
    let configured = grant_of(&ledger, "configured").await;
    assert_ne!(configured.slot(), new.slot());
    for slot in [configured.slot(), new.slot() + 1, u32::MAX] {
        let forged = LeaseId {
            key: (u128::from(slot) << 96) | (new.key & ((1u128 << 96) - 1)),
            ..new
        };
        assert_eq!(forged.slot(), slot);
        assert!(!ledger.holds(&forged));
        assert!(ledger.release(&forged, Report::default()).is_none());
    }
    assert_eq!(
        (ledger.status("other").unwrap().in_flight, ledger.leases()),
        (1, 2)
    );
    assert!(ledger.release(&new, Report::default()).is_some());
    assert!(ledger.release(&configured, Report::default()).is_some());
    assert_eq!(ledger.leases(), 0);
}

#[tokio::test(start_paused = true)]
async fn retries_draw_on_the_budget_and_get_a_hint() {
    let limits = with_budget(0.5, 0, 10);
    let ledger = ledger_with("db", limits);
    // No first attempts yet, no reserve: no retry.
    let retry = ledger.acquire(&request(Priority::Normal, 1)).await.unwrap();
    let rejection = retry.rejected().unwrap();
    assert_eq!(rejection.reason, RejectReason::RetryBudgetExhausted);

    for _ in 0..4 {
        grant(&ledger).await;
    }
    assert_eq!(status(&ledger).retry_budget_available, 2.0);
    assert!(
        ledger
            .acquire(&request(Priority::Normal, 1))
            .await
            .unwrap()
            .granted()
            .is_some()
    );
    assert!(
        ledger
            .acquire(&request(Priority::Normal, 2))
            .await
            .unwrap()
            .granted()
            .is_some()
    );
    let denied = ledger.acquire(&request(Priority::Normal, 1)).await.unwrap();
    let rejection = denied.rejected().unwrap();
    assert_eq!(rejection.reason, RejectReason::RetryBudgetExhausted);
    assert!(rejection.retry_after > Duration::ZERO);

    // Deposits expire with the window; the withdrawals a slot later.
    advance(Duration::from_secs(10)).await;
    assert_eq!(status(&ledger).retry_budget_available, 0.0);
    advance(Duration::from_secs(1)).await;
    assert_eq!(status(&ledger).retry_budget_available, 0.0);
}

#[tokio::test(start_paused = true)]
async fn the_reserve_allows_min_per_second_retries() {
    let limits = with_budget(0.0, 2, 1);
    let ledger = ledger_with("db", limits);
    for _ in 0..2 {
        assert!(
            ledger
                .acquire(&request(Priority::Normal, 1))
                .await
                .unwrap()
                .granted()
                .is_some()
        );
    }
    let denied = ledger.acquire(&request(Priority::Normal, 1)).await.unwrap();
    let hint = denied.rejected().unwrap().retry_after;
    assert!(
        hint > Duration::ZERO && hint <= Duration::from_millis(1100),
        "{hint:?}"
    );
    advance(hint).await;
    assert!(
        ledger
            .acquire(&request(Priority::Normal, 1))
            .await
            .unwrap()
            .granted()
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn raising_the_limit_grants_waiters_and_lowering_revokes_nothing() {
    let ledger = ledger_with("db", limits(1, 10, 5000));
    let held = grant(&ledger).await;
    let w1 = enqueue(&ledger, Priority::Normal, 0).await;
    let w2 = enqueue(&ledger, Priority::Normal, 0).await;

    let raised = ledger
        .update(
            "db",
            &LimitsPatch {
                max_concurrency: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(raised.in_flight, 3);
    assert!(w1.await.unwrap().granted().is_some());
    assert!(w2.await.unwrap().granted().is_some());

    let lowered = ledger
        .update(
            "db",
            &LimitsPatch {
                max_concurrency: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (lowered.in_flight, lowered.limits.max_concurrency()),
        (3, 1)
    );
    let waiter = enqueue(&ledger, Priority::Normal, 0).await;
    ledger.release(&held, Report::default()).unwrap();
    assert!(
        !waiter.is_finished(),
        "2 held of 1 allowed: nobody is granted"
    );
    assert_eq!(status(&ledger).in_flight, 2);
}

#[tokio::test(start_paused = true)]
async fn shrinking_the_queue_sheds_the_excess() {
    let ledger = ledger_with("db", limits(1, 10, 5000));
    let _held = grant(&ledger).await;
    let keep = enqueue(&ledger, Priority::Normal, 0).await;
    let drop_me = enqueue(&ledger, Priority::Sheddable, 0).await;
    ledger
        .update(
            "db",
            &LimitsPatch {
                max_queue: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        drop_me.await.unwrap().rejected().unwrap().reason,
        RejectReason::Shed
    );
    assert!(!keep.is_finished());
    assert_eq!(ledger.waiters(), 1);
}

#[tokio::test(start_paused = true)]
async fn draining_answers_waiters_and_newcomers() {
    let ledger = ledger_with("db", limits(1, 10, 5000));
    let held = grant(&ledger).await;
    let waiter = enqueue(&ledger, Priority::Normal, 0).await;
    ledger.drain();
    assert_eq!(
        waiter.await.unwrap().rejected().unwrap().reason,
        RejectReason::ShuttingDown
    );
    let late = ledger
        .acquire(&request(Priority::Critical, 0))
        .await
        .unwrap();
    assert_eq!(late.rejected().unwrap().reason, RejectReason::ShuttingDown);
    assert!(
        ledger.release(&held, Report::default()).is_some(),
        "releases still work while draining"
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_dependencies_and_the_dependency_cap() {
    let closed = Ledger::new(LedgerConfig {
        allow_unknown_dependencies: false,
        ..LedgerConfig::default()
    });
    let error = closed
        .acquire(&request(Priority::Normal, 0))
        .await
        .unwrap_err();
    assert_eq!(error, LedgerError::UnknownDependency("db".into()));

    let capped = Ledger::new(LedgerConfig {
        max_dependencies: 1,
        ..LedgerConfig::default()
    });
    grant_on(&capped).await;
    let error = capped
        .acquire(&request(Priority::Normal, 0))
        .await
        .unwrap_err();
    assert_eq!(error, LedgerError::TooManyDependencies(1));
}

#[tokio::test(start_paused = true)]
async fn the_global_waiter_cap_holds_across_dependencies() {
    let ledger = Arc::new(Ledger::new(LedgerConfig {
        defaults: limits(1, 10, 5000),
        max_waiters: 1,
        ..LedgerConfig::default()
    }));
    grant(&ledger).await;
    let _queued = enqueue(&ledger, Priority::Normal, 0).await;
    grant_on(&ledger).await;
    let other = AcquireRequest {
        dependency: "other",
        ..request(Priority::Normal, 0)
    };
    let full = ledger.acquire(&other).await.unwrap();
    assert_eq!(full.rejected().unwrap().reason, RejectReason::QueueFull);
}

#[test]
fn dependency_names_are_checked() {
    assert!(check_dependency_name("payments-v2.eu:443/api_x").is_ok());
    assert!(check_dependency_name("").is_err());
    assert!(check_dependency_name(&"a".repeat(129)).is_err());
    assert!(
        check_dependency_name("has space")
            .unwrap_err()
            .contains("' '")
    );
    assert!(check_dependency_name("é").is_err());
}

#[tokio::test(start_paused = true)]
async fn lowering_the_lease_ttl_expires_new_leases_on_time() {
    let long = with_ttl(limits(2, 10, 1000), Duration::from_secs(600));
    let ledger = ledger_with("db", long);
    let _old = grant(&ledger).await;
    ledger
        .update(
            "db",
            &LimitsPatch {
                lease_ttl: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        )
        .unwrap();
    let _new = grant(&ledger).await;
    advance(Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    let status = status(&ledger);
    assert_eq!(
        (status.expired_total, status.in_flight),
        (1, 1),
        "the new lease expired, the old one holds"
    );
}

#[tokio::test(start_paused = true)]
async fn renewing_in_a_loop_keeps_the_expiry_order_bounded() {
    let ledger = ledger_with("db", limits(1, 10, 1000));
    let lease = grant(&ledger).await;
    for _ in 0..10_000 {
        advance(Duration::from_micros(10)).await;
        assert!(ledger.renew(&lease).is_some());
    }
    let dependency = ledger.dependencies.get("db").unwrap().clone();
    assert!(
        dependency.expiry_len() <= 2 + 64,
        "{}",
        dependency.expiry_len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_update_creates_nothing() {
    let ledger = Ledger::new(LedgerConfig {
        max_dependencies: 1,
        ..LedgerConfig::default()
    });
    let bad = LimitsPatch {
        max_concurrency: Some(0),
        ..Default::default()
    };
    assert!(matches!(
        ledger.update("a", &bad),
        Err(UpdateError::Limit(_))
    ));
    assert_eq!(ledger.dependency_count(), 0);
    assert!(ledger.update("b", &LimitsPatch::default()).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_different_fields_both_stick() {
    let ledger = Arc::new(ledger_with("db", limits(1, 1, 1000)));
    let queue = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            for i in 0..2000u32 {
                ledger
                    .update(
                        "db",
                        &LimitsPatch {
                            max_queue: Some(i),
                            ..Default::default()
                        },
                    )
                    .unwrap();
            }
        })
    };
    for i in 1..=2000u32 {
        ledger
            .update(
                "db",
                &LimitsPatch {
                    max_concurrency: Some(i),
                    ..Default::default()
                },
            )
            .unwrap();
    }
    queue.await.unwrap();
    let limits = status(&ledger).limits;
    assert_eq!((limits.max_concurrency(), limits.max_queue()), (2000, 1999));
}

/// A dependency with a fast-reacting gradient limit: 10 ms windows of at
/// least 5 calls, ceiling 8, starting at 8.
fn adaptive(shadow: bool) -> Limits {
    use super::limit::{AdaptivePatch, Algorithm, AlgorithmChoice};
    limits(8, 100, 1000)
        .patched(&LimitsPatch {
            adaptive: Some(AdaptivePatch {
                algorithm: Some(AlgorithmChoice::Adaptive(Algorithm::Gradient)),
                min_limit: Some(1),
                initial_limit: Some(8),
                shadow: Some(shadow),
                window: Some(Duration::from_millis(10)),
                min_samples: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap()
}

/// Holds every permit, then releases them all with `latency`, `rounds`
/// times, advancing the clock past a window each round.
async fn full_rounds(ledger: &Ledger, latency: Duration, rounds: usize) {
    for _ in 0..rounds {
        let limit = status(ledger).limit.enforced;
        let mut held = Vec::new();
        for _ in 0..limit {
            held.push(grant(ledger).await);
        }
        advance(Duration::from_millis(11)).await;
        for lease in held {
            let report = Report::new(Outcome::Success, Some(latency));
            ledger.release(&lease, report).unwrap();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn reported_latency_moves_the_enforced_limit_everywhere_it_is_read() {
    let ledger = ledger_with("db", adaptive(false));
    // A baseline at 1 ms, then ten times slower: the limit is cut.
    full_rounds(&ledger, Duration::from_millis(1), 8).await;
    let before = status(&ledger);
    full_rounds(&ledger, Duration::from_millis(10), 3).await;
    let after = status(&ledger);
    assert!(
        after.limit.enforced < before.limit.enforced,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.limit.ceiling, 8);
    assert_eq!(after.limit.adaptive.unwrap().limit, after.limit.enforced);
    assert!(after.limit_changes_total > before.limit_changes_total);

    // Admission and hand-over enforce it: one more than the limit waits.
    let limit = after.limit.enforced;
    let mut held = Vec::new();
    for _ in 0..limit {
        held.push(grant(&ledger).await);
    }
    let waiter = enqueue(&ledger, Priority::Normal, 0).await;
    let queued = status(&ledger);
    assert_eq!((queued.in_flight, queued.queued), (limit, 1));

    // Turning the adaptive limit off raises the limit to the ceiling and
    // grants the waiter at once; no lease is revoked.
    use super::limit::{AdaptivePatch, AlgorithmChoice};
    let off = LimitsPatch {
        adaptive: Some(AdaptivePatch {
            algorithm: Some(AlgorithmChoice::Static),
            ..Default::default()
        }),
        ..Default::default()
    };
    let updated = ledger.update("db", &off).unwrap();
    assert_eq!((updated.limit.enforced, updated.limit.adaptive), (8, None));
    let decision = waiter.await.unwrap();
    assert_eq!(decision.snapshot.limit, 8);
    assert!(decision.granted().is_some());
    assert_eq!(status(&ledger).in_flight, limit + 1);
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_reports_the_limit_and_enforces_the_ceiling() {
    let ledger = ledger_with("db", adaptive(true));
    full_rounds(&ledger, Duration::from_millis(1), 8).await;
    full_rounds(&ledger, Duration::from_millis(10), 3).await;
    let status = status(&ledger);
    let computed = status.limit.adaptive.unwrap();
    assert!(computed.shadow);
    assert!(computed.limit < 8, "{status:?}");
    assert_eq!(status.limit.enforced, 8, "the ceiling is enforced");
    assert!(computed.baseline.is_some() && computed.recent.is_some());
}

#[tokio::test(start_paused = true)]
async fn failures_and_expiries_are_drops_and_cancellations_say_nothing() {
    let ledger = ledger_with("db", with_ttl(adaptive(false), Duration::from_millis(100)));
    full_rounds(&ledger, Duration::from_millis(1), 8).await;
    let start = status(&ledger).limit.enforced;
    // Cancelled calls: no sample, however many.
    for _ in 0..20 {
        let lease = grant(&ledger).await;
        advance(Duration::from_millis(11)).await;
        let report = Report::new(Outcome::Cancelled, None);
        ledger.release(&lease, report).unwrap();
    }
    assert_eq!(status(&ledger).limit.enforced, start);
    // Expired leases are drops: every permit held and left to expire.
    for _ in 0..3 {
        let limit = status(&ledger).limit.enforced;
        for _ in 0..limit {
            let _abandoned = grant(&ledger).await;
        }
        advance(Duration::from_millis(150)).await;
        tokio::task::yield_now().await;
    }
    let after = status(&ledger);
    assert_eq!(after.in_flight, 0, "{after:?}");
    assert!(after.limit.enforced < start, "{start} -> {after:?}");
}

/// Records evictions, as telemetry does.
#[derive(Debug, Default)]
struct Evictions(std::sync::Mutex<Vec<String>>);

impl LedgerObserver for Evictions {
    fn dependency_evicted(&self, dependency: &Arc<str>) {
        self.0.lock().unwrap().push(dependency.to_string());
    }
}

impl Evictions {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn on(dependency: &str) -> AcquireRequest<'_> {
    AcquireRequest {
        dependency,
        ..request(Priority::Normal, 0)
    }
}

async fn grant_of(ledger: &Ledger, dependency: &str) -> LeaseId {
    let decision = ledger.acquire(&on(dependency)).await.unwrap();
    decision.granted().expect("granted").lease
}

fn evicting_ledger(max_dependencies: usize, idle_ttl: Duration) -> (Arc<Ledger>, Arc<Evictions>) {
    let evictions = Arc::new(Evictions::default());
    let ledger = Arc::new(Ledger::with_observer(
        LedgerConfig {
            // Leases that outlive every idle TTL below.
            defaults: with_ttl(limits(2, 10, 5000), Duration::from_secs(36_000)),
            max_dependencies,
            idle_ttl,
            dependencies: vec![("configured".to_owned(), limits(2, 10, 5000))],
            ..LedgerConfig::default()
        },
        evictions.clone(),
    ));
    (ledger, evictions)
}

#[tokio::test(start_paused = true)]
async fn idle_dependencies_created_by_callers_go_after_the_idle_ttl() {
    let ttl = Duration::from_secs(60);
    let (ledger, evictions) = evicting_ledger(16, ttl);
    ledger.spawn_idle_sweeper();
    let lease = grant_of(&ledger, "junk-a").await;
    ledger.release(&lease, Report::default()).unwrap();
    let held = grant_of(&ledger, "busy").await;
    let _waiter = {
        grant_of(&ledger, "busy").await;
        let ledger = ledger.clone();
        tokio::spawn(async move { ledger.acquire(&on("busy")).await.unwrap() })
    };
    tokio::task::yield_now().await;
    assert_eq!(ledger.status("busy").unwrap().queued, 1);
    let touched = grant_of(&ledger, "touched").await;
    ledger.release(&touched, Report::default()).unwrap();
    ledger
        .update("controlled", &LimitsPatch::default())
        .unwrap();

    // Just before the TTL nothing goes; a use of `touched` restarts its clock.
    advance(ttl - Duration::from_secs(1)).await;
    let again = grant_of(&ledger, "touched").await;
    ledger.release(&again, Report::default()).unwrap();
    tokio::task::yield_now().await;
    assert!(evictions.take().is_empty());
    advance(Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    assert_eq!(evictions.take(), ["junk-a"]);
    assert!(ledger.status("junk-a").is_none());
    // Configured (file or control plane) and busy ones stay, however long.
    advance(ttl * 10).await;
    tokio::task::yield_now().await;
    assert_eq!(evictions.take(), ["touched"]);
    let names: Vec<_> = ledger
        .statuses()
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, ["busy", "configured", "controlled"]);

    // Once `busy` is idle, it goes a TTL later, not before.
    ledger.release(&held, Report::default()).unwrap();
    advance(ttl / 2).await;
    tokio::task::yield_now().await;
    assert!(evictions.take().is_empty());
}

#[tokio::test(start_paused = true)]
async fn at_the_cap_the_least_recently_used_idle_one_makes_room() {
    let (ledger, evictions) = evicting_ledger(4, Duration::from_secs(3600));
    // "configured" takes one of the four places.
    for name in ["a", "b", "c"] {
        let lease = grant_of(&ledger, name).await;
        ledger.release(&lease, Report::default()).unwrap();
        advance(Duration::from_millis(10)).await;
    }
    // `a` is used again: `b` is now the least recently used.
    let lease = grant_of(&ledger, "a").await;
    ledger.release(&lease, Report::default()).unwrap();
    let held_c = grant_of(&ledger, "c").await;

    let d = grant_of(&ledger, "d").await;
    assert_eq!(evictions.take(), ["b"]);
    // `c` is busy, `d` too: `a` goes next, then nothing is left to evict.
    grant_of(&ledger, "e").await;
    assert_eq!(evictions.take(), ["a"]);
    assert_eq!(
        ledger.acquire(&on("f")).await.unwrap_err(),
        LedgerError::TooManyDependencies(4)
    );
    assert!(evictions.take().is_empty());
    // The control plane gets no place either while all are busy, but does
    // as soon as one is idle.
    assert!(matches!(
        ledger.update("g", &LimitsPatch::default()),
        Err(UpdateError::Ledger(LedgerError::TooManyDependencies(4)))
    ));
    ledger.release(&d, Report::default()).unwrap();
    ledger.update("g", &LimitsPatch::default()).unwrap();
    assert_eq!(evictions.take(), ["d"]);
    assert_eq!(ledger.dependency_count(), 4);
    // The held lease of `c` still releases: nothing was lost.
    assert!(ledger.release(&held_c, Report::default()).is_some());
    assert_eq!(ledger.status("c").unwrap().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_adds_a_name_always_makes_it_usable() {
    let (ledger, evictions) = evicting_ledger(3, Duration::from_secs(3600));
    let idle = grant_of(&ledger, "junk-idle").await;
    ledger.release(&idle, Report::default()).unwrap();
    let _busy = grant_of(&ledger, "junk-busy").await;
    let config = |names: &[&str]| LedgerConfig {
        defaults: limits(2, 10, 5000),
        max_dependencies: 3,
        idle_ttl: Duration::from_secs(3600),
        dependencies: names
            .iter()
            .map(|n| (n.to_string(), limits(5, 10, 5000)))
            .collect(),
        ..LedgerConfig::default()
    };
    // Full: the idle junk makes room.
    ledger.reconfigure(config(&["configured", "new"]));
    assert_eq!(evictions.take(), ["junk-idle"]);
    assert_eq!(ledger.status("new").unwrap().limits.max_concurrency(), 5);
    // Full of busy and configured ones: created over the cap all the same.
    ledger.reconfigure(config(&["configured", "new", "newer"]));
    assert!(evictions.take().is_empty());
    assert_eq!(ledger.dependency_count(), 4);
    grant_of(&ledger, "newer").await;
    // A caller's new name waits until the count is back under the cap.
    assert_eq!(
        ledger.acquire(&on("junk-new")).await.unwrap_err(),
        LedgerError::TooManyDependencies(3)
    );
    // A name dropped from the file becomes evictable once idle.
    ledger.reconfigure(config(&["configured", "newer"]));
    grant_of(&ledger, "junk-new").await;
    assert_eq!(evictions.take(), ["new"]);
}

#[tokio::test(start_paused = true)]
async fn an_evicted_dependency_never_grants_and_callers_holding_it_look_again() {
    let (ledger, evictions) = evicting_ledger(2, Duration::from_secs(1));
    let lease = grant_of(&ledger, "junk").await;
    ledger.release(&lease, Report::default()).unwrap();
    // A caller looked `junk` up; then it was evicted.
    let stale = ledger.dependency("junk").unwrap();
    advance(Duration::from_secs(1)).await;
    assert_eq!(ledger.evict_idle(Instant::now()), None);
    assert_eq!(evictions.take(), ["junk"]);
    assert!(matches!(
        stale.admit(&on("junk"), Instant::now()),
        Admission::Evicted
    ));
    // Through the ledger, the caller gets a permit on a fresh one, which
    // counts it.
    let lease = grant_of(&ledger, "junk").await;
    assert_eq!(ledger.status("junk").unwrap().in_flight, 1);
    assert!(!Arc::ptr_eq(&stale, &ledger.dependency("junk").unwrap()));
    // A busy one is not evicted however old its last idle stamp.
    advance(Duration::from_secs(10)).await;
    ledger.evict_idle(Instant::now());
    assert!(evictions.take().is_empty());
    ledger.release(&lease, Report::default()).unwrap();
    drop(stale);

    // Nor is one with only a waiter.
    let (_held_a, _held_b) = (
        grant_of(&ledger, "junk").await,
        grant_of(&ledger, "junk").await,
    );
    let waiter = {
        let ledger = ledger.clone();
        tokio::spawn(async move { ledger.acquire(&on("junk")).await.unwrap() })
    };
    tokio::task::yield_now().await;
    assert_eq!(ledger.status("junk").unwrap().queued, 1);
    advance(Duration::from_secs(3)).await;
    ledger.evict_idle(Instant::now());
    assert!(evictions.take().is_empty());
    assert_eq!(ledger.status("junk").unwrap().queued, 1);
    drop(waiter);
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_names_keeps_the_idle_queue_bounded() {
    let (ledger, evictions) = evicting_ledger(64, Duration::from_secs(5));
    let keep = grant_of(&ledger, "configured").await;
    for i in 0..2000 {
        let name = format!("junk-{i}");
        let decision = ledger.acquire(&on(&name)).await.unwrap();
        let lease = decision.granted().unwrap().lease;
        ledger.release(&lease, Report::default()).unwrap();
    }
    assert_eq!(ledger.dependency_count(), 64);
    assert_eq!(evictions.take().len(), 2000 - 63);
    // One entry per idle dependency at most, whatever the churn.
    {
        let mut queue = ledger.lock_creating();
        queue.absorb(&ledger.shared.idle);
        assert!(queue.len() <= 64, "{}", queue.len());
    }
    advance(Duration::from_secs(5)).await;
    ledger.evict_idle(Instant::now());
    assert_eq!(evictions.take().len(), 63);
    let names: Vec<_> = ledger
        .statuses()
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, ["configured"]);
    // The evicted ones' expiry tasks end with them (each is woken once, and
    // the runtime polls a few dozen tasks per yield): one is left.
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..1000 {
        if metrics.num_alive_tasks() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(metrics.num_alive_tasks(), 1, "expiry tasks left behind");
    assert!(ledger.release(&keep, Report::default()).is_some());
}

#[tokio::test(start_paused = true)]
async fn debug_output_of_the_ledger_carries_no_lease_id() {
    let ledger = ledger_with("db", limits(1, 4, 5000));
    let held = grant(&ledger).await;
    let _waiter = enqueue(&ledger, Priority::Normal, 0).await;
    let id = held.to_string();
    let debug = format!("{ledger:?} {held:?}");
    assert!(debug.contains(&held.handle().to_string()), "{debug}");
    // Neither the id nor any piece of it, in hex (8 digits) or in decimal
    // (12 digits, as other numbers may share shorter runs by chance).
    let key = format!("{}", held.key);
    for (text, width) in [(&id, 8), (&key, 12)] {
        for at in 0..=text.len() - width {
            let piece = &text[at..at + width];
            assert!(!debug.contains(piece), "{piece} of the lease in {debug}");
        }
    }
}

/// Acquires on `session` in the background and lets it reach the queue.
async fn enqueue_in(
    ledger: &Arc<Ledger>,
    session: &Arc<Session>,
) -> tokio::task::JoinHandle<Result<Decision, SessionAcquireError>> {
    let (ledger, session) = (ledger.clone(), session.clone());
    let handle = tokio::spawn(async move {
        ledger
            .acquire_in(&session, &request(Priority::Normal, 0))
            .await
    });
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    handle
}

#[tokio::test(start_paused = true)]
async fn closing_a_session_frees_its_leases_and_withdraws_its_waiters() {
    let ledger = ledger_with("db", limits(2, 10, 60_000));
    let session = Arc::new(ledger.open_session(None));
    let other = grant(&ledger).await;
    let mine = ledger
        .acquire_in(&session, &request(Priority::Normal, 0))
        .await
        .unwrap()
        .granted()
        .unwrap()
        .lease;
    assert!(session.owns(&mine) && !session.owns(&other));
    let waiting = enqueue_in(&ledger, &session).await;
    assert_eq!((session.leases(), session.pending()), (1, 1));
    assert_eq!(ledger.status("db").unwrap().queued, 1);

    let closed = session.close();
    assert_eq!(
        closed,
        SessionClosed {
            released: 1,
            withdrawn: 1
        }
    );
    assert_eq!(
        waiting.await.unwrap(),
        Err(SessionAcquireError::Closed),
        "the waiter is answered"
    );
    let status = ledger.status("db").unwrap();
    assert_eq!((status.in_flight, status.queued), (1, 0));
    assert!(!ledger.holds(&mine) && ledger.holds(&other));
    assert_eq!(ledger.waiters(), 0);
    // Never twice: the lease is gone for the caller, a second close frees nothing.
    assert!(ledger.release(&mine, Report::default()).is_none());
    assert_eq!(session.close(), SessionClosed::default());
    assert_eq!(
        ledger
            .acquire_in(&session, &request(Priority::Normal, 0))
            .await,
        Err(SessionAcquireError::Closed)
    );
    assert_eq!(ledger.status("db").unwrap().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn a_session_lease_released_by_its_caller_leaves_the_session() {
    let ledger = ledger_with("db", limits(2, 10, 1000));
    let session = ledger.open_session(None);
    let lease = ledger
        .acquire_in(&session, &request(Priority::Normal, 0))
        .await
        .unwrap()
        .granted()
        .unwrap()
        .lease;
    let ended = ledger.release(&lease, Report::new(Outcome::Success, None));
    assert_eq!(ended.unwrap().end, LeaseEnd::Released(Outcome::Success));
    assert_eq!(session.leases(), 0);
    let other = grant(&ledger).await;
    drop(session);
    // Dropping closes; it frees nothing of anyone else's.
    assert!(ledger.holds(&other));
    assert_eq!(ledger.status("db").unwrap().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn a_session_lease_keeps_its_ttl_and_renews() {
    let ledger = ledger_with("db", with_ttl(limits(2, 10, 1000), Duration::from_secs(10)));
    let session = ledger.open_session(None);
    let renewed = ledger
        .acquire_in(&session, &request(Priority::Normal, 0))
        .await
        .unwrap()
        .granted()
        .unwrap()
        .lease;
    let forgotten = ledger
        .acquire_in(&session, &request(Priority::Normal, 0))
        .await
        .unwrap()
        .granted()
        .unwrap()
        .lease;
    advance(Duration::from_secs(6)).await;
    assert!(ledger.renew(&renewed).is_some());
    advance(Duration::from_secs(6)).await;
    tokio::task::yield_now().await;
    assert!(!ledger.holds(&forgotten), "expired on its TTL");
    assert!(ledger.holds(&renewed));
    assert_eq!(session.leases(), 1, "the expired lease left the session");
    assert_eq!(session.close().released, 1);
    assert_eq!(ledger.leases(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_session_has_at_most_max_session_pending_acquires() {
    let ledger = Arc::new(Ledger::new(LedgerConfig {
        dependencies: vec![("db".to_owned(), limits(1, 10, 60_000))],
        max_session_pending: 2,
        ..LedgerConfig::default()
    }));
    let session = Arc::new(ledger.open_session(None));
    let _held = grant(&ledger).await;
    let first = enqueue_in(&ledger, &session).await;
    let second = enqueue_in(&ledger, &session).await;
    assert_eq!(
        ledger
            .acquire_in(&session, &request(Priority::Normal, 0))
            .await,
        Err(SessionAcquireError::TooManyPending(2))
    );
    // Another session is not held back by this one's cap.
    let other = Arc::new(ledger.open_session(None));
    let third = enqueue_in(&ledger, &other).await;
    assert_eq!(ledger.status("db").unwrap().queued, 3);
    first.abort();
    second.abort();
    third.abort();
    tokio::task::yield_now().await;
    assert_eq!(session.pending(), 0);
    assert_eq!(ledger.waiters(), 0);
}

// Pressure and degradable requests.

/// `limits` with pressure settings of its own.
fn with_pressure(limits: Limits, elevated_at: f64, degrade_at: DegradeAt) -> Limits {
    limits
        .patched(&LimitsPatch {
            elevated_at: Some(elevated_at),
            degrade_at: Some(degrade_at),
            ..Default::default()
        })
        .unwrap()
}

fn degradable(attempt: u32) -> AcquireRequest<'static> {
    AcquireRequest {
        degradable: true,
        ..request(Priority::Normal, attempt)
    }
}

fn pressure(ledger: &Ledger) -> Pressure {
    status(ledger).pressure
}

#[tokio::test(start_paused = true)]
async fn pressure_is_reached_and_left_at_each_threshold() {
    // The default elevated_at, 0.7: elevated from 7 of 10.
    let ledger = ledger_with("db", limits(10, 2, 5000));
    assert_eq!(pressure(&ledger), Pressure::None);
    let mut held = Vec::new();
    for n in 1..=10u32 {
        let decision = ledger.acquire(&request(Priority::Normal, 0)).await.unwrap();
        held.push(decision.granted().expect("granted").lease);
        let expected = match n {
            1..=6 => Pressure::None,
            7..=9 => Pressure::Elevated,
            _ => Pressure::Saturated,
        };
        assert_eq!(decision.snapshot.pressure, expected, "after {n} grants");
        assert_eq!(decision.snapshot.in_flight, n);
    }
    // Someone waits: saturated, the waiter's answer too.
    let first = enqueue(&ledger, Priority::Normal, 0).await;
    let second = enqueue(&ledger, Priority::Normal, 0).await;
    assert_eq!(pressure(&ledger), Pressure::Saturated);

    // The queue overflows: the rejection itself says overloaded, and so
    // does every answer for the next second.
    let full = ledger.acquire(&request(Priority::Normal, 0)).await.unwrap();
    assert_eq!(full.rejected().unwrap().reason, RejectReason::QueueFull);
    assert_eq!(full.snapshot.pressure, Pressure::Overloaded);
    advance(Duration::from_millis(999)).await;
    assert_eq!(pressure(&ledger), Pressure::Overloaded);
    // One second without a turn-away: back to what the load says.
    advance(Duration::from_millis(1)).await;
    assert_eq!(pressure(&ledger), Pressure::Saturated);

    // Waiters served, then permits back, level by level.
    assert!(
        ledger
            .release(&held.pop().unwrap(), Report::default())
            .is_some()
    );
    let woken = first.await.unwrap();
    assert_eq!(
        woken.snapshot.pressure,
        Pressure::Saturated,
        "one still waits"
    );
    held.push(woken.granted().unwrap().lease);
    assert!(
        ledger
            .release(&held.pop().unwrap(), Report::default())
            .is_some()
    );
    let woken = second.await.unwrap();
    assert_eq!(
        woken.snapshot.pressure,
        Pressure::Saturated,
        "10 of 10 held"
    );
    held.push(woken.granted().unwrap().lease);
    let mut levels = Vec::new();
    while let Some(lease) = held.pop() {
        let ended = ledger.release(&lease, Report::default()).unwrap();
        levels.push((ended.snapshot.in_flight, ended.snapshot.pressure));
    }
    assert_eq!(levels[0], (9, Pressure::Elevated));
    assert_eq!(levels[2], (7, Pressure::Elevated));
    assert_eq!(levels[3], (6, Pressure::None));
    assert_eq!(levels[9], (0, Pressure::None));
}

#[tokio::test(start_paused = true)]
async fn timeouts_and_sheds_overload_but_budget_drain_and_degrade_do_not() {
    let ledger = ledger_with("db", with_budget(0.0, 0, 10));
    ledger
        .update(
            "db",
            &LimitsPatch {
                max_concurrency: Some(1),
                max_queue: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    let held = grant(&ledger).await;

    // A degradable request on a saturated dependency: DEGRADE, still only
    // saturated.
    let degraded = ledger.acquire(&degradable(0)).await.unwrap();
    assert_eq!(degraded.rejected().unwrap().reason, RejectReason::Degrade);
    assert_eq!(degraded.snapshot.pressure, Pressure::Saturated);
    // A retry with an empty budget: not the dependency's load.
    let retry = ledger.acquire(&request(Priority::Normal, 1)).await.unwrap();
    assert_eq!(
        retry.rejected().unwrap().reason,
        RejectReason::RetryBudgetExhausted
    );
    assert_eq!(retry.snapshot.pressure, Pressure::Saturated);

    // A queue timeout overloads it for one second.
    let timed_out = ledger
        .acquire(&AcquireRequest {
            max_wait: Some(Duration::from_millis(50)),
            ..request(Priority::Normal, 0)
        })
        .await
        .unwrap();
    assert_eq!(
        timed_out.rejected().unwrap().reason,
        RejectReason::QueueTimeout
    );
    assert_eq!(timed_out.snapshot.pressure, Pressure::Overloaded);
    advance(Duration::from_secs(1)).await;
    assert_eq!(pressure(&ledger), Pressure::Saturated);

    // A displaced waiter overloads it too.
    let sheddable = enqueue(&ledger, Priority::Sheddable, 0).await;
    let critical = enqueue(&ledger, Priority::Critical, 0).await;
    let shed = sheddable.await.unwrap();
    assert_eq!(shed.rejected().unwrap().reason, RejectReason::Shed);
    assert_eq!(shed.snapshot.pressure, Pressure::Overloaded);
    advance(Duration::from_secs(1)).await;
    assert_eq!(pressure(&ledger), Pressure::Saturated, "the critical waits");
    assert!(ledger.release(&held, Report::default()).is_some());
    let lease = critical.await.unwrap().granted().unwrap().lease;
    assert!(ledger.release(&lease, Report::default()).is_some());
    assert_eq!(pressure(&ledger), Pressure::None);

    // Draining answers SHUTTING_DOWN: not overload either.
    ledger.drain();
    let drained = ledger.acquire(&request(Priority::Normal, 0)).await.unwrap();
    assert_eq!(
        drained.rejected().unwrap().reason,
        RejectReason::ShuttingDown
    );
    assert_eq!(drained.snapshot.pressure, Pressure::None);
}

#[tokio::test(start_paused = true)]
async fn a_degradable_request_is_answered_at_once_and_never_queues_or_holds() {
    let ledger = ledger_with("db", limits(2, 10, 5000));
    // A free slot: a degradable request is granted like any other.
    let first = ledger.acquire(&degradable(0)).await.unwrap();
    let first = first.granted().expect("a free slot is granted").lease;
    let second = grant(&ledger).await;

    // Full: answered DEGRADE at once, with a queue-like hint, no waiter.
    let rejected_before = status(&ledger).rejected_total;
    let decision = ledger.acquire(&degradable(0)).await.unwrap();
    let rejection = decision.rejected().expect("not granted");
    assert_eq!(rejection.reason, RejectReason::Degrade);
    assert!(rejection.retry_after > Duration::ZERO);
    assert_eq!(decision.queue_wait, Duration::ZERO);
    assert_eq!(
        decision.snapshot,
        Snapshot {
            limit: 2,
            in_flight: 2,
            queued: 0,
            pressure: Pressure::Saturated,
        }
    );
    assert_eq!(ledger.waiters(), 0);
    assert_eq!(status(&ledger).rejected_total, rejected_before + 1);

    // Waiters ahead: still DEGRADE, and the waiter keeps its place.
    let waiter = enqueue(&ledger, Priority::Normal, 0).await;
    let decision = ledger.acquire(&degradable(0)).await.unwrap();
    assert_eq!(decision.rejected().unwrap().reason, RejectReason::Degrade);
    assert_eq!((status(&ledger).queued, ledger.waiters()), (1, 1));
    // Even with a wait of zero (a try-acquire) it is DEGRADE, not a timeout.
    let decision = ledger
        .acquire(&AcquireRequest {
            max_wait: Some(Duration::ZERO),
            ..degradable(0)
        })
        .await
        .unwrap();
    assert_eq!(decision.rejected().unwrap().reason, RejectReason::Degrade);

    // A slot frees: the waiter gets it, not a degradable newcomer, and no
    // DEGRADE answer left a slot or a lease behind.
    assert!(ledger.release(&first, Report::default()).is_some());
    let waited = waiter.await.unwrap().granted().expect("granted").lease;
    assert_eq!(status(&ledger).in_flight, 2);
    assert_eq!(ledger.leases(), 2);
    for lease in [second, waited] {
        assert!(ledger.release(&lease, Report::default()).is_some());
    }
    assert_eq!((status(&ledger).in_flight, ledger.leases()), (0, 0));
    assert_eq!(pressure(&ledger), Pressure::None);
}

#[tokio::test(start_paused = true)]
async fn degrade_at_elevated_keeps_headroom_for_callers_without_a_fallback() {
    // Elevated from 2 of 4.
    let ledger = ledger_with(
        "db",
        with_pressure(limits(4, 10, 5000), 0.5, DegradeAt::Elevated),
    );
    let first = ledger.acquire(&degradable(0)).await.unwrap();
    assert!(first.granted().is_some(), "pressure none before: granted");
    assert_eq!(first.snapshot.pressure, Pressure::None);
    let second = ledger.acquire(&degradable(0)).await.unwrap();
    assert!(second.granted().is_some(), "1 of 4 before: granted");
    assert_eq!(second.snapshot.pressure, Pressure::Elevated);

    // Elevated before the decision: DEGRADE though two slots are free.
    let dimmed = ledger.acquire(&degradable(0)).await.unwrap();
    assert_eq!(dimmed.rejected().unwrap().reason, RejectReason::Degrade);
    assert_eq!(dimmed.snapshot.in_flight, 2);
    // A caller without a fallback takes the headroom.
    for _ in 0..2 {
        grant(&ledger).await;
    }
    assert_eq!(pressure(&ledger), Pressure::Saturated);

    // The same load with degrade_at = saturated grants the degradable one.
    let ledger = ledger_with(
        "db",
        with_pressure(limits(4, 10, 5000), 0.5, DegradeAt::Saturated),
    );
    for _ in 0..2 {
        grant(&ledger).await;
    }
    assert_eq!(pressure(&ledger), Pressure::Elevated);
    assert!(
        ledger
            .acquire(&degradable(0))
            .await
            .unwrap()
            .granted()
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn a_degradable_retry_meets_the_retry_budget_first() {
    let ledger = ledger_with("db", with_budget(0.0, 0, 10));
    ledger
        .update(
            "db",
            &LimitsPatch {
                max_concurrency: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    let _held = grant(&ledger).await;
    // Saturated, so a first attempt would be DEGRADE; the retry is refused
    // by the budget before that.
    assert_eq!(
        ledger
            .acquire(&degradable(0))
            .await
            .unwrap()
            .rejected()
            .unwrap()
            .reason,
        RejectReason::Degrade
    );
    let retry = ledger.acquire(&degradable(1)).await.unwrap();
    assert_eq!(
        retry.rejected().unwrap().reason,
        RejectReason::RetryBudgetExhausted
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_applies_new_pressure_settings() {
    let ledger = ledger_with("db", limits(10, 10, 5000));
    for _ in 0..5 {
        grant(&ledger).await;
    }
    assert_eq!(pressure(&ledger), Pressure::None);
    ledger.reconfigure(LedgerConfig {
        dependencies: vec![(
            "db".to_owned(),
            with_pressure(limits(10, 10, 5000), 0.5, DegradeAt::Elevated),
        )],
        ..LedgerConfig::default()
    });
    let status = status(&ledger);
    assert_eq!(status.pressure, Pressure::Elevated);
    assert_eq!(status.limits.elevated_at(), 0.5);
    assert_eq!(status.limits.degrade_at(), DegradeAt::Elevated);
    let decision = ledger.acquire(&degradable(0)).await.unwrap();
    assert_eq!(decision.rejected().unwrap().reason, RejectReason::Degrade);
}

// Rate limits.

/// `limits` with a rate limit.
fn with_rate(limits: Limits, per_second: f64, burst: u32) -> Limits {
    limits
        .patched(&LimitsPatch {
            rate: Some(Some(RatePatch { per_second, burst })),
            ..Default::default()
        })
        .unwrap()
}

fn waiting_at_most(priority: Priority, max_wait_ms: u64) -> AcquireRequest<'static> {
    AcquireRequest {
        max_wait: Some(Duration::from_millis(max_wait_ms)),
        ..request(priority, 0)
    }
}

async fn enqueue_request(
    ledger: &Arc<Ledger>,
    request: AcquireRequest<'static>,
) -> tokio::task::JoinHandle<Decision> {
    let ledger = ledger.clone();
    let handle = tokio::spawn(async move { ledger.acquire(&request).await.unwrap() });
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    handle
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_grants_its_burst_then_delays_or_refuses_at_once() {
    let ledger = ledger_with("db", with_rate(limits(100, 10, 1000), 10.0, 2));
    let start = Instant::now();
    grant(&ledger).await;
    grant(&ledger).await;

    // The next token is 100 ms away: beyond a 50 ms wait, refused now, with
    // the exact time until it.
    let refused = ledger
        .acquire(&waiting_at_most(Priority::Normal, 50))
        .await
        .unwrap();
    let rejection = refused.outcome.unwrap_err();
    assert_eq!(rejection.reason, RejectReason::RateLimited);
    assert_eq!(rejection.retry_after, Duration::from_millis(100));
    assert_eq!(Instant::now(), start, "refused without waiting");
    assert_eq!(refused.snapshot.pressure, Pressure::Overloaded);

    // Within the wait: it queues (a slot is free) and is granted when the
    // token comes, not before.
    let delayed = enqueue_request(&ledger, waiting_at_most(Priority::Normal, 500)).await;
    assert_eq!(status(&ledger).queued, 1);
    advance(Duration::from_millis(99)).await;
    tokio::task::yield_now().await;
    assert!(!delayed.is_finished());
    advance(Duration::from_millis(1)).await;
    let decision = delayed.await.unwrap();
    assert!(decision.granted().is_some(), "{decision:?}");
    assert_eq!(decision.queue_wait, Duration::from_millis(100));
    assert_eq!(status(&ledger).in_flight, 3);
    assert_eq!(status(&ledger).queued, 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_times_out_spends_no_token() {
    let ledger = ledger_with("db", with_rate(limits(1, 10, 1000), 1.0, 2));
    let held = grant(&ledger).await;
    // Waits for the slot (a token is there) and runs out.
    let waiter = enqueue_request(&ledger, waiting_at_most(Priority::Normal, 200)).await;
    advance(Duration::from_millis(200)).await;
    let timed_out = waiter.await.unwrap().outcome.unwrap_err();
    assert_eq!(timed_out.reason, RejectReason::QueueTimeout);
    ledger.release(&held, Report::default()).unwrap();
    // The second token of the burst is still there: granted at once.
    let decision = ledger
        .acquire(&waiting_at_most(Priority::Normal, 0))
        .await
        .unwrap();
    assert!(decision.granted().is_some(), "{decision:?}");
}

#[tokio::test(start_paused = true)]
async fn the_refusal_counts_the_tokens_of_the_waiters_served_first() {
    let ledger = ledger_with("db", with_rate(limits(100, 10, 1000), 10.0, 1));
    grant(&ledger).await;
    let first = enqueue_request(&ledger, waiting_at_most(Priority::Normal, 1000)).await;
    let second = enqueue_request(&ledger, waiting_at_most(Priority::Normal, 1000)).await;
    assert_eq!(status(&ledger).queued, 2);
    // Two NORMAL waiters take the tokens at +100 and +200 ms: a NORMAL
    // arrival's is at +300 ms, past its 250 ms.
    let refused = ledger
        .acquire(&waiting_at_most(Priority::Normal, 250))
        .await
        .unwrap()
        .outcome
        .unwrap_err();
    assert_eq!(refused.reason, RejectReason::RateLimited);
    assert_eq!(refused.retry_after, Duration::from_millis(300));
    // A CRITICAL one is served first: its token is the next one.
    let critical = enqueue_request(&ledger, waiting_at_most(Priority::Critical, 250)).await;
    advance(Duration::from_millis(100)).await;
    let decision = critical.await.unwrap();
    assert_eq!(decision.queue_wait, Duration::from_millis(100));
    assert!(decision.granted().is_some());
    assert!(!first.is_finished());
    advance(Duration::from_millis(100)).await;
    assert!(first.await.unwrap().granted().is_some());
    advance(Duration::from_millis(100)).await;
    assert!(second.await.unwrap().granted().is_some());
}

#[tokio::test(start_paused = true)]
async fn changing_the_rate_reruns_the_hand_over() {
    let ledger = ledger_with("db", with_rate(limits(100, 10, 5000), 1.0, 1));
    grant(&ledger).await;
    let waiter = enqueue_request(&ledger, waiting_at_most(Priority::Normal, 5000)).await;
    // Lowered further: still waiting, and for longer.
    let slower = LimitsPatch {
        rate: Some(Some(RatePatch {
            per_second: 0.5,
            burst: 1,
        })),
        ..Default::default()
    };
    ledger.update("db", &slower).unwrap();
    advance(Duration::from_millis(1500)).await;
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "the spent token now refills in 2 s");
    // Removed: granted at once.
    let off = LimitsPatch {
        rate: Some(None),
        ..Default::default()
    };
    let status = ledger.update("db", &off).unwrap();
    assert_eq!(status.limits.rate(), None);
    let decision = waiter.await.unwrap();
    assert_eq!(decision.queue_wait, Duration::from_millis(1500));
    assert!(decision.granted().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_degradable_request_without_a_token_degrades() {
    let ledger = ledger_with("db", with_rate(limits(100, 10, 1000), 10.0, 1));
    grant(&ledger).await;
    assert_eq!(status(&ledger).pressure, Pressure::Saturated);
    let decision = ledger.acquire(&degradable(0)).await.unwrap();
    assert_eq!(decision.outcome.unwrap_err().reason, RejectReason::Degrade);
}

/// Random arrivals (each released at once, so only the rate binds): in no
/// one-second window are more than per_second + burst granted, and the
/// bucket is not stingier than its rate either.
#[tokio::test(start_paused = true)]
async fn no_second_grants_more_than_rate_plus_burst() {
    let (per_second, burst) = (20u32, 5u32);
    let ledger = ledger_with(
        "db",
        with_rate(limits(1000, 100, 1000), f64::from(per_second), burst),
    );
    let start = Instant::now();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut grants = Vec::new();
    for _ in 0..3000 {
        // xorshift: arrivals 0-7 ms apart, about 290 a second offered.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        advance(Duration::from_micros(seed % 7000)).await;
        let decision = ledger
            .acquire(&waiting_at_most(Priority::Normal, 0))
            .await
            .unwrap();
        if let Some(grant) = decision.granted() {
            grants.push(Instant::now());
            ledger.release(&grant.lease, Report::default()).unwrap();
        }
    }
    let elapsed = Instant::now() - start;
    let mut first = 0;
    for (last, &at) in grants.iter().enumerate() {
        while at - grants[first] >= Duration::from_secs(1) {
            first += 1;
        }
        assert!(
            last - first < (per_second + burst) as usize,
            "{} grants within one second",
            last - first + 1
        );
    }
    let floor = (elapsed.as_secs_f64() * f64::from(per_second) * 0.9) as usize;
    assert!(
        grants.len() >= floor,
        "{} grants in {elapsed:?}",
        grants.len()
    );
    assert_eq!(status(&ledger).in_flight, 0);
}

// Per-tenant rate limits.

fn with_tenant_rate(limits: Limits, per_second: f64, burst: u32) -> Limits {
    limits
        .patched(&LimitsPatch {
            tenant_rate: Some(Some(RatePatch { per_second, burst })),
            ..Default::default()
        })
        .unwrap()
}

fn as_tenant(tenant: &'static str, max_wait_ms: u64) -> AcquireRequest<'static> {
    AcquireRequest {
        tenant: Some(tenant),
        route: None,
        ..waiting_at_most(Priority::Normal, max_wait_ms)
    }
}

#[tokio::test(start_paused = true)]
async fn each_tenant_has_its_own_rate_and_waits_for_its_token_outside_the_queue() {
    let ledger = ledger_with("db", with_tenant_rate(limits(100, 10, 1000), 10.0, 2));
    let start = Instant::now();
    for _ in 0..2 {
        let granted = ledger.acquire(&as_tenant("noisy", 0)).await.unwrap();
        assert!(granted.granted().is_some());
    }
    let refused = ledger.acquire(&as_tenant("noisy", 50)).await.unwrap();
    let rejection = refused.outcome.unwrap_err();
    assert_eq!(rejection.reason, RejectReason::RateLimited);
    assert_eq!(rejection.retry_after, Duration::from_millis(100));
    assert_eq!(Instant::now(), start, "refused without waiting");

    // Within its wait it is delayed, and not in the queue: another tenant
    // (and a request without one) goes straight through meanwhile.
    let delayed = enqueue_request(&ledger, as_tenant("noisy", 500)).await;
    let during = status(&ledger);
    assert_eq!((during.queued, during.delayed), (0, 1));
    assert_eq!(during.rated_tenants, 1);
    assert!(
        ledger
            .acquire(&as_tenant("quiet", 0))
            .await
            .unwrap()
            .granted()
            .is_some()
    );
    assert!(
        ledger
            .acquire(&waiting_at_most(Priority::Normal, 0))
            .await
            .unwrap()
            .granted()
            .is_some()
    );
    advance(Duration::from_millis(99)).await;
    tokio::task::yield_now().await;
    assert!(!delayed.is_finished());
    advance(Duration::from_millis(1)).await;
    let decision = delayed.await.unwrap();
    assert!(decision.granted().is_some(), "{decision:?}");
    assert_eq!(decision.queue_wait, Duration::from_millis(100));
    assert_eq!(status(&ledger).delayed, 0);
    assert_eq!(status(&ledger).in_flight, 5);
}

#[tokio::test(start_paused = true)]
async fn a_tenant_token_is_given_back_when_its_request_gets_no_permit() {
    let ledger = ledger_with("db", with_tenant_rate(limits(1, 10, 1000), 1.0, 1));
    let held = ledger.acquire(&as_tenant("other", 0)).await.unwrap();
    let held = held.granted().unwrap().lease;
    // Queued for the slot with its token, then out of time: token back.
    let waiter = enqueue_request(&ledger, as_tenant("a", 200)).await;
    assert_eq!(status(&ledger).queued, 1);
    advance(Duration::from_millis(200)).await;
    assert_eq!(
        waiter.await.unwrap().outcome.unwrap_err().reason,
        RejectReason::QueueTimeout
    );
    ledger.release(&held, Report::default()).unwrap();
    let again = ledger.acquire(&as_tenant("a", 0)).await.unwrap();
    let lease = again.granted().expect("its token was given back").lease;
    ledger.release(&lease, Report::default()).unwrap();

    // Cancelled while delayed for its token: the token goes back too.
    let delayed = enqueue_request(&ledger, as_tenant("a", 5000)).await;
    assert_eq!(status(&ledger).delayed, 1);
    delayed.abort();
    assert!(delayed.await.unwrap_err().is_cancelled());
    assert_eq!(status(&ledger).delayed, 0);
    // So the next one waits one interval, not two.
    let next = enqueue_request(&ledger, as_tenant("a", 5000)).await;
    advance(Duration::from_secs(1)).await;
    let decision = next.await.unwrap();
    assert!(decision.granted().is_some(), "{decision:?}");
    assert_eq!(decision.queue_wait, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_degradable_request_does_not_wait_for_its_tenant_token() {
    let ledger = ledger_with("db", with_tenant_rate(limits(100, 10, 1000), 1.0, 1));
    assert!(
        ledger
            .acquire(&as_tenant("a", 0))
            .await
            .unwrap()
            .granted()
            .is_some()
    );
    let request = AcquireRequest {
        degradable: true,
        ..as_tenant("a", 5000)
    };
    let decision = ledger.acquire(&request).await.unwrap();
    assert_eq!(decision.outcome.unwrap_err().reason, RejectReason::Degrade);
    assert_eq!(status(&ledger).delayed, 0);
}

#[tokio::test(start_paused = true)]
async fn one_tenant_over_its_rate_costs_the_others_nothing() {
    let limits = with_budget(0.0, 0, 10);
    let ledger = ledger_with("db", with_tenant_rate(limits, 1.0, 1));
    assert!(
        ledger
            .acquire(&as_tenant("noisy", 0))
            .await
            .unwrap()
            .granted()
            .is_some()
    );
    // Its refused first tries and retries: the dependency is not
    // overloaded for the others, and the (empty) retry budget is untouched:
    // the rate refuses before the budget is asked.
    for attempt in [0, 1, 1] {
        let request = AcquireRequest {
            attempt,
            ..as_tenant("noisy", 0)
        };
        let refused = ledger.acquire(&request).await.unwrap();
        assert_eq!(
            refused.outcome.unwrap_err().reason,
            RejectReason::RateLimited
        );
        assert_ne!(refused.snapshot.pressure, Pressure::Overloaded);
    }
    let other = ledger.acquire(&as_tenant("quiet", 0)).await.unwrap();
    assert!(other.granted().is_some());
    assert_eq!(other.snapshot.pressure, Pressure::None);
    // Another tenant's retry meets the (empty) budget as it would have
    // anyway, and its token is given back with the refusal.
    let retry = AcquireRequest {
        attempt: 1,
        ..as_tenant("calm", 0)
    };
    let refused = ledger.acquire(&retry).await.unwrap();
    assert_eq!(
        refused.outcome.unwrap_err().reason,
        RejectReason::RetryBudgetExhausted
    );
    let first = ledger.acquire(&as_tenant("calm", 0)).await.unwrap();
    assert!(first.granted().is_some(), "{first:?}");
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_its_tenant_token_holds_a_waiter_place_and_a_drain_ends_it() {
    let ledger = Arc::new(Ledger::new(LedgerConfig {
        dependencies: vec![(
            "db".to_owned(),
            with_tenant_rate(limits(100, 10, 60_000), 0.1, 1),
        )],
        max_waiters: 1,
        ..LedgerConfig::default()
    }));
    assert!(
        ledger
            .acquire(&as_tenant("a", 0))
            .await
            .unwrap()
            .granted()
            .is_some()
    );
    // Its token is 10 s away: it waits outside the queue, in the one place.
    let delayed = enqueue_request(&ledger, as_tenant("a", 60_000)).await;
    assert_eq!((status(&ledger).delayed, ledger.waiters()), (1, 1));
    let full = ledger.acquire(&as_tenant("b", 60_000)).await.unwrap();
    assert!(
        full.granted().is_some(),
        "b has its token and a slot: no wait"
    );
    let c = ledger.acquire(&as_tenant("c", 0)).await.unwrap();
    assert!(c.granted().is_some());
    // Another tenant that would wait for its token finds no place.
    let waits = ledger.acquire(&as_tenant("c", 60_000)).await.unwrap();
    assert_eq!(waits.outcome.unwrap_err().reason, RejectReason::QueueFull);
    // The drain answers the delayed one now, not in 10 s.
    let before = Instant::now();
    ledger.drain();
    let drained = delayed.await.unwrap();
    assert_eq!(
        drained.outcome.unwrap_err().reason,
        RejectReason::ShuttingDown
    );
    assert_eq!(Instant::now(), before);
    assert_eq!((status(&ledger).delayed, ledger.waiters()), (0, 0));
}

// ---- Weighted fair shares ----

fn fairness(by: FairBy, weights: &[(&str, u32)], max_tenants: Option<u32>) -> LimitsPatch {
    LimitsPatch {
        fairness: Some(Some(FairnessPatch {
            by: Some(by),
            weights: weights.iter().map(|&(t, w)| (t.to_owned(), w)).collect(),
            default_weight: None,
            max_tenants,
        })),
        ..Default::default()
    }
}

fn fair_limits(concurrency: u32, queue: u32, patch: &LimitsPatch) -> Limits {
    limits(concurrency, queue, 60_000).patched(patch).unwrap()
}

fn by_tenant(
    tenant: &'static str,
    route: Option<&'static str>,
    priority: Priority,
) -> AcquireRequest<'static> {
    AcquireRequest {
        tenant: Some(tenant),
        route,
        ..request(priority, 0)
    }
}

async fn grant_as(ledger: &Ledger, tenant: &'static str) -> LeaseId {
    let decision = ledger
        .acquire(&by_tenant(tenant, None, Priority::Normal))
        .await
        .unwrap();
    decision.granted().expect("granted").lease
}

fn tenant_status(ledger: &Ledger, tenant: &str) -> TenantStatus {
    status(ledger)
        .fair
        .tenants
        .into_iter()
        .find(|t| &*t.tenant == tenant && !t.overflow)
        .unwrap_or_else(|| panic!("tenant {tenant:?} listed"))
}

fn check_fair(ledger: &Ledger) {
    ledger.dependency("db").unwrap().check_fair();
}

#[tokio::test(start_paused = true)]
async fn a_free_permit_goes_to_the_waiting_tenant_furthest_below_its_share() {
    let ledger = ledger_with(
        "db",
        fair_limits(4, 100, &fairness(FairBy::Tenant, &[], None)),
    );
    let mut noisy = Vec::new();
    for _ in 0..4 {
        noisy.push(grant_as(&ledger, "noisy").await);
    }
    let noisy_waiting: Vec<_> = futures::future::join_all(
        (0..4).map(|_| enqueue_request(&ledger, by_tenant("noisy", None, Priority::Normal))),
    )
    .await;
    let quiet_1 = enqueue_request(&ledger, by_tenant("quiet", None, Priority::Normal)).await;
    let quiet_2 = enqueue_request(&ledger, by_tenant("quiet", None, Priority::Normal)).await;
    check_fair(&ledger);
    assert_eq!(tenant_status(&ledger, "noisy").queued, 4);
    assert_eq!(tenant_status(&ledger, "quiet").queued, 2);

    // quiet arrived last, but holds nothing: the first two permits are its.
    ledger
        .release(&noisy.pop().unwrap(), Report::default())
        .unwrap();
    assert!(quiet_1.await.unwrap().granted().is_some());
    ledger
        .release(&noisy.pop().unwrap(), Report::default())
        .unwrap();
    assert!(quiet_2.await.unwrap().granted().is_some());
    check_fair(&ledger);
    let (noisy_now, quiet_now) = (
        tenant_status(&ledger, "noisy"),
        tenant_status(&ledger, "quiet"),
    );
    assert_eq!((noisy_now.in_flight, noisy_now.queued), (2, 4));
    assert_eq!((quiet_now.in_flight, quiet_now.queued), (2, 0));
    // Max-min: quiet asks 2 of 4, noisy may have the rest.
    assert_eq!((noisy_now.share, quiet_now.share), (2.0, 2.0));
    // Nobody else waits: noisy's waiters take the next permits, oldest first.
    ledger
        .release(&noisy.pop().unwrap(), Report::default())
        .unwrap();
    let mut waiting = noisy_waiting.into_iter();
    assert!(waiting.next().unwrap().await.unwrap().granted().is_some());
    assert_eq!(tenant_status(&ledger, "noisy").queued, 3);
    assert_eq!(status(&ledger).in_flight, 4);
    check_fair(&ledger);
}

#[tokio::test(start_paused = true)]
async fn backlogged_tenants_hold_permits_in_proportion_to_their_weights() {
    let ledger = ledger_with(
        "db",
        fair_limits(
            8,
            1000,
            &fairness(FairBy::Tenant, &[("gold", 3), ("bronze", 1)], None),
        ),
    );
    // Both keep a deep backlog; every permit handed over is released again
    // by the tenant that holds the most per weight (the steady state of
    // equal hold times), 200 times.
    let mut held: Vec<(LeaseId, &str)> = Vec::new();
    let mut waiting = Vec::new();
    for _ in 0..50 {
        for tenant in ["gold", "bronze"] {
            waiting.push((
                tenant,
                enqueue_request(&ledger, by_tenant(tenant, None, Priority::Normal)).await,
            ));
        }
    }
    let mut pending = waiting;
    let collect = async |pending: &mut Vec<(&'static str, tokio::task::JoinHandle<Decision>)>,
                         held: &mut Vec<(LeaseId, &'static str)>| {
        let mut still = Vec::new();
        for (tenant, handle) in pending.drain(..) {
            if handle.is_finished() {
                held.push((handle.await.unwrap().granted().unwrap().lease, tenant));
            } else {
                still.push((tenant, handle));
            }
        }
        *pending = still;
    };
    tokio::task::yield_now().await;
    collect(&mut pending, &mut held).await;
    assert_eq!(held.len(), 8);
    for _ in 0..40 {
        // Releases the oldest permit, whoever holds it.
        let (lease, _) = held.remove(0);
        ledger.release(&lease, Report::default()).unwrap();
        tokio::task::yield_now().await;
        collect(&mut pending, &mut held).await;
        check_fair(&ledger);
    }
    let gold = tenant_status(&ledger, "gold");
    let bronze = tenant_status(&ledger, "bronze");
    assert_eq!((gold.in_flight, bronze.in_flight), (6, 2));
    assert_eq!((gold.share, bronze.share), (6.0, 2.0));
    assert!(gold.named && bronze.named);
    assert_eq!((gold.weight, bronze.weight), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn priority_comes_before_the_fair_share() {
    let ledger = ledger_with(
        "db",
        fair_limits(2, 100, &fairness(FairBy::Tenant, &[], None)),
    );
    let a1 = grant_as(&ledger, "a").await;
    let _a2 = grant_as(&ledger, "a").await;
    let b_normal = enqueue_request(&ledger, by_tenant("b", None, Priority::Normal)).await;
    let a_critical = enqueue_request(&ledger, by_tenant("a", None, Priority::Critical)).await;
    ledger.release(&a1, Report::default()).unwrap();
    // a is over its share, but its waiter is critical.
    assert!(a_critical.await.unwrap().granted().is_some());
    assert!(!b_normal.is_finished());
    check_fair(&ledger);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_displaces_the_tenant_most_over_its_share() {
    let ledger = ledger_with(
        "db",
        fair_limits(1, 3, &fairness(FairBy::Tenant, &[], None)),
    );
    let _held = grant_as(&ledger, "noisy").await;
    let noisy: Vec<_> = futures::future::join_all(
        (0..3).map(|_| enqueue_request(&ledger, by_tenant("noisy", None, Priority::Normal))),
    )
    .await;
    // noisy is the most loaded and it is not the arrival's: its newest
    // waiter makes room.
    let quiet = enqueue_request(&ledger, by_tenant("quiet", None, Priority::Normal)).await;
    let mut noisy = noisy.into_iter();
    let (first, second, newest) = (
        noisy.next().unwrap(),
        noisy.next().unwrap(),
        noisy.next().unwrap(),
    );
    let shed = newest.await.unwrap();
    assert_eq!(shed.rejected().map(|r| r.reason), Some(RejectReason::Shed));
    assert!(!first.is_finished() && !second.is_finished() && !quiet.is_finished());
    // The most loaded tenant arriving again finds no one to displace.
    let refused = ledger
        .acquire(&by_tenant("noisy", None, Priority::Normal))
        .await
        .unwrap();
    assert_eq!(
        refused.rejected().map(|r| r.reason),
        Some(RejectReason::QueueFull)
    );
    // Nor does a second quiet one displace a tenant no more loaded per
    // weight than quiet would be: noisy 1 + 2 = 3, quiet 1 + 1 = 2, so it
    // does; a third would make quiet 3 against noisy's 2.
    let quiet_2 = enqueue_request(&ledger, by_tenant("quiet", None, Priority::Normal)).await;
    assert_eq!(
        second.await.unwrap().rejected().map(|r| r.reason),
        Some(RejectReason::Shed)
    );
    let refused = ledger
        .acquire(&by_tenant("quiet", None, Priority::Normal))
        .await
        .unwrap();
    assert_eq!(
        refused.rejected().map(|r| r.reason),
        Some(RejectReason::QueueFull)
    );
    let noisy_now = tenant_status(&ledger, "noisy");
    assert_eq!((noisy_now.in_flight, noisy_now.queued), (1, 1));
    assert_eq!(noisy_now.rejected_total, 3);
    assert_eq!(tenant_status(&ledger, "quiet").rejected_total, 1);
    assert!(!first.is_finished() && !quiet.is_finished() && !quiet_2.is_finished());
    check_fair(&ledger);
}

#[tokio::test(start_paused = true)]
async fn routes_share_their_tenants_part_equally() {
    let ledger = ledger_with(
        "db",
        fair_limits(4, 100, &fairness(FairBy::TenantRoute, &[], None)),
    );
    // Tenant t floods route "bulk"; its "ui" route waits behind; tenant u
    // waits too.
    let mut held = Vec::new();
    for _ in 0..4 {
        let decision = ledger
            .acquire(&by_tenant("t", Some("bulk"), Priority::Normal))
            .await
            .unwrap();
        held.push(decision.granted().unwrap().lease);
    }
    let bulk: Vec<_> = futures::future::join_all(
        (0..4).map(|_| enqueue_request(&ledger, by_tenant("t", Some("bulk"), Priority::Normal))),
    )
    .await;
    let ui = enqueue_request(&ledger, by_tenant("t", Some("ui"), Priority::Normal)).await;
    let u = enqueue_request(&ledger, by_tenant("u", None, Priority::Normal)).await;
    check_fair(&ledger);
    let t = tenant_status(&ledger, "t");
    assert_eq!(t.routes.len(), 2);
    // First permit: tenant u (none in flight). Second: t again (t 3, u 1:
    // u has no waiter left), and within t the ui route (none in flight).
    ledger
        .release(&held.pop().unwrap(), Report::default())
        .unwrap();
    assert!(u.await.unwrap().granted().is_some());
    ledger
        .release(&held.pop().unwrap(), Report::default())
        .unwrap();
    assert!(ui.await.unwrap().granted().is_some());
    assert!(bulk.iter().all(|h| !h.is_finished()));
    let t = tenant_status(&ledger, "t");
    let route = |name: &str| t.routes.iter().find(|r| &*r.route == name).unwrap().clone();
    assert_eq!((route("bulk").in_flight, route("bulk").queued), (2, 4));
    assert_eq!(route("ui").in_flight, 1);
    // t's share of 4 with u asking 1 is 3: split max-min between its routes.
    assert_eq!(t.share, 3.0);
    assert_eq!(route("ui").share + route("bulk").share, 3.0);
    assert_eq!(route("ui").share, 1.0);
    check_fair(&ledger);
}

#[tokio::test(start_paused = true)]
async fn the_table_is_bounded_and_tenants_beyond_share_an_overflow_entry() {
    let ledger = ledger_with(
        "db",
        fair_limits(10, 100, &fairness(FairBy::Tenant, &[("named", 2)], Some(3))),
    );
    // The named tenant is always in; two more fit.
    let a = grant_as(&ledger, "a").await;
    let _b = grant_as(&ledger, "b").await;
    let c = grant_as(&ledger, "c").await;
    let d = grant_as(&ledger, "d").await;
    let fair = status(&ledger).fair;
    assert_eq!(fair.tracked, 4, "named, a, b and the overflow entry");
    let overflow = fair.tenants.iter().find(|t| t.overflow).unwrap();
    assert_eq!((overflow.in_flight, overflow.weight), (2, 1));
    assert_eq!(tenant_status(&ledger, "named").in_flight, 0);
    check_fair(&ledger);
    // a goes idle: it stays (with its counts) until its room is needed.
    ledger.release(&a, Report::default()).unwrap();
    assert_eq!(tenant_status(&ledger, "a").granted_total, 1);
    let _e = grant_as(&ledger, "e").await;
    let names: Vec<_> = status(&ledger)
        .fair
        .tenants
        .iter()
        .filter(|t| !t.overflow)
        .map(|t| t.tenant.to_string())
        .collect();
    assert!(names.contains(&"e".to_owned()) && !names.contains(&"a".to_owned()));
    ledger.release(&c, Report::default()).unwrap();
    ledger.release(&d, Report::default()).unwrap();
    check_fair(&ledger);
}

#[tokio::test(start_paused = true)]
async fn turning_fair_shares_on_or_off_keeps_every_waiter_and_permit() {
    let ledger = ledger_with("db", limits(1, 10, 60_000));
    let held = grant_as(&ledger, "a").await;
    let a = enqueue_request(&ledger, by_tenant("a", None, Priority::Normal)).await;
    let b = enqueue_request(&ledger, by_tenant("b", None, Priority::Normal)).await;
    ledger
        .update("db", &fairness(FairBy::Tenant, &[], None))
        .unwrap();
    check_fair(&ledger);
    // The waiters and the permit from before fair shares are one tenant's
    // (the tenant of no tenant), the waiters in their order.
    let before = tenant_status(&ledger, "");
    assert_eq!((before.in_flight, before.queued), (1, 2));
    ledger.release(&held, Report::default()).unwrap();
    let next = a.await.unwrap().granted().unwrap().lease;
    let c = enqueue_request(&ledger, by_tenant("c", None, Priority::Normal)).await;
    ledger
        .update("db", &fairness(FairBy::TenantRoute, &[("c", 5)], None))
        .unwrap();
    check_fair(&ledger);
    // A new table: the permit granted under the first (to the waiter from
    // before fair shares, under the tenant of no tenant) and c's waiter move
    // over under their tenants.
    assert_eq!(tenant_status(&ledger, "").in_flight, 1);
    let c_now = tenant_status(&ledger, "c");
    assert_eq!((c_now.queued, c_now.weight), (1, 5));
    ledger
        .update(
            "db",
            &LimitsPatch {
                fairness: Some(None),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(status(&ledger).fair.tenants.is_empty());
    assert_eq!(status(&ledger).queued, 2);
    ledger.release(&next, Report::default()).unwrap();
    let next = b.await.unwrap().granted().unwrap().lease;
    ledger.release(&next, Report::default()).unwrap();
    let last = c.await.unwrap().granted().unwrap().lease;
    ledger.release(&last, Report::default()).unwrap();
    assert_eq!(status(&ledger).in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn new_weights_apply_to_the_tenants_in_the_table() {
    let ledger = ledger_with(
        "db",
        fair_limits(4, 100, &fairness(FairBy::Tenant, &[], None)),
    );
    let held = grant_as(&ledger, "a").await;
    ledger
        .update("db", &fairness(FairBy::Tenant, &[("a", 7)], None))
        .unwrap();
    let a = tenant_status(&ledger, "a");
    assert_eq!((a.weight, a.named, a.in_flight), (7, true, 1));
    ledger.release(&held, Report::default()).unwrap();
    check_fair(&ledger);
    ledger
        .update("db", &fairness(FairBy::Tenant, &[], Some(1)))
        .unwrap();
    // No longer named and idle: kept with its counts until its room is
    // needed, which with a bound of 1 is at the next tenant.
    let a = tenant_status(&ledger, "a");
    assert_eq!((a.weight, a.named, a.granted_total), (1, false, 1));
    check_fair(&ledger);
    let b = grant_as(&ledger, "b").await;
    let listed: Vec<_> = status(&ledger)
        .fair
        .tenants
        .iter()
        .map(|t| t.tenant.to_string())
        .collect();
    assert_eq!(listed, ["b"]);
    ledger.release(&b, Report::default()).unwrap();
    check_fair(&ledger);
}

#[test]
fn max_min_fills_the_small_demands_then_splits_the_rest_by_weight() {
    assert_eq!(
        max_min(10.0, &[(2, 1), (100, 1), (100, 3)]),
        [2.0, 2.0, 6.0]
    );
    assert_eq!(max_min(10.0, &[(0, 1), (4, 1)]), [0.0, 4.0]);
    assert_eq!(max_min(4.0, &[(1, 1), (1, 1)]), [1.0, 1.0]);
    let shares = max_min(9.0, &[(10, 1), (10, 2)]);
    assert_eq!(shares, [3.0, 6.0]);
}

/// Random tenants (weights 1..=4) each keeping a random number of requests
/// outstanding (held or queued) against a random limit, with the oldest
/// permit released at each step (equal hold times): the table stays
/// consistent with the queue at every step, and once settled every
/// tenant holds its weighted max-min share, to the permit.
#[tokio::test(start_paused = true)]
async fn random_demands_settle_on_the_weighted_max_min_allocation() {
    use rand::{Rng, SeedableRng};
    const NAMES: [&str; 5] = ["t0", "t1", "t2", "t3", "t4"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x00fa_1235);
    for case in 0..40 {
        let tenants = rng.random_range(2..=NAMES.len());
        let limit = rng.random_range(1..=10u32);
        let weights: Vec<u32> = (0..tenants).map(|_| rng.random_range(1..=4)).collect();
        let demands: Vec<u32> = (0..tenants).map(|_| rng.random_range(1..=12)).collect();
        let named: Vec<(&str, u32)> = NAMES.iter().copied().zip(weights.clone()).collect();
        let ledger = ledger_with(
            "db",
            fair_limits(limit, 1000, &fairness(FairBy::Tenant, &named, None)),
        );
        let mut held: std::collections::VecDeque<(LeaseId, usize)> = Default::default();
        let mut pending: Vec<(usize, tokio::task::JoinHandle<Decision>)> = Vec::new();
        let max_demand = *demands.iter().max().unwrap();
        for round in 0..max_demand {
            for (t, &demand) in demands.iter().enumerate() {
                if round < demand {
                    let request = by_tenant(NAMES[t], None, Priority::Normal);
                    pending.push((t, enqueue_request(&ledger, request).await));
                }
            }
        }
        let collect =
            async |pending: &mut Vec<(usize, tokio::task::JoinHandle<Decision>)>,
                   held: &mut std::collections::VecDeque<(LeaseId, usize)>| {
                tokio::task::yield_now().await;
                let mut still = Vec::new();
                for (t, handle) in pending.drain(..) {
                    if handle.is_finished() {
                        let decision = handle.await.unwrap();
                        held.push_back((decision.granted().expect("granted").lease, t));
                    } else {
                        still.push((t, handle));
                    }
                }
                *pending = still;
            };
        collect(&mut pending, &mut held).await;
        for _ in 0..(8 * limit + 40) {
            let (lease, t) = held.pop_front().expect("the limit is in use");
            // Its replacement queues first, then the permit frees: the
            // hand-over chooses among everyone who waits.
            let request = by_tenant(NAMES[t], None, Priority::Normal);
            pending.push((t, enqueue_request(&ledger, request).await));
            ledger.release(&lease, Report::default()).unwrap();
            collect(&mut pending, &mut held).await;
            check_fair(&ledger);
            assert!(status(&ledger).in_flight <= limit);
        }
        let demand_weights: Vec<(u32, u32)> =
            demands.iter().copied().zip(weights.clone()).collect();
        let shares = max_min(f64::from(limit), &demand_weights);
        for t in 0..tenants {
            let holds = held.iter().filter(|(_, h)| *h == t).count() as f64;
            assert!(
                (holds - shares[t]).abs() < 1.0,
                "case {case}: limit {limit}, weights {weights:?}, demands {demands:?}: \
                 {} holds {holds}, share {}",
                NAMES[t],
                shares[t]
            );
            assert_eq!(tenant_status(&ledger, NAMES[t]).share, shares[t]);
        }
        for (lease, _) in held {
            ledger.release(&lease, Report::default()).unwrap();
        }
        for (_, handle) in pending {
            handle.await.unwrap();
        }
    }
}

/// The review's cases: the most loaded tenant (or route) may have only
/// waiters the arrival cannot displace; the most loaded one that has a
/// waiter of the arrival's priority gives one up instead.
#[tokio::test(start_paused = true)]
async fn displacement_looks_for_the_most_loaded_tenant_with_a_waiter_to_give() {
    let ledger = ledger_with(
        "db",
        fair_limits(1, 5, &fairness(FairBy::Tenant, &[], None)),
    );
    let _held = grant_as(&ledger, "c").await;
    let c1 = enqueue_request(&ledger, by_tenant("c", None, Priority::Normal)).await;
    let c2 = enqueue_request(&ledger, by_tenant("c", None, Priority::Normal)).await;
    let b: Vec<_> = futures::future::join_all(
        (0..3).map(|_| enqueue_request(&ledger, by_tenant("b", None, Priority::Critical))),
    )
    .await;
    // b (3 critical) and c (1 + 2 normal) are as loaded; only c has a
    // normal waiter to give.
    let a = enqueue_request(&ledger, by_tenant("a", None, Priority::Normal)).await;
    assert_eq!(
        c2.await.unwrap().rejected().map(|r| r.reason),
        Some(RejectReason::Shed)
    );
    assert!(!a.is_finished() && !c1.is_finished() && b.iter().all(|h| !h.is_finished()));
    check_fair(&ledger);

    // By route: b's most loaded route has only critical waiters; its other
    // route gives up a normal one.
    let ledger = ledger_with(
        "db",
        fair_limits(1, 4, &fairness(FairBy::TenantRoute, &[], None)),
    );
    let _held = ledger
        .acquire(&by_tenant("b", Some("r1"), Priority::Normal))
        .await
        .unwrap();
    let r1: Vec<_> = futures::future::join_all(
        (0..2).map(|_| enqueue_request(&ledger, by_tenant("b", Some("r1"), Priority::Critical))),
    )
    .await;
    let _r2_old = enqueue_request(&ledger, by_tenant("b", Some("r2"), Priority::Normal)).await;
    let r2_new = enqueue_request(&ledger, by_tenant("b", Some("r2"), Priority::Normal)).await;
    let a = enqueue_request(&ledger, by_tenant("a", None, Priority::Normal)).await;
    assert_eq!(
        r2_new.await.unwrap().rejected().map(|r| r.reason),
        Some(RejectReason::Shed)
    );
    assert!(!a.is_finished() && r1.iter().all(|h| !h.is_finished()));
    check_fair(&ledger);

    // A retry displaces only a retry: with b's retries gone, none.
    let ledger = ledger_with(
        "db",
        fair_limits(1, 2, &fairness(FairBy::Tenant, &[], None)),
    );
    let _held = grant_as(&ledger, "b").await;
    let _b1 = enqueue_request(&ledger, by_tenant("b", None, Priority::Normal)).await;
    let _b2 = enqueue_request(&ledger, by_tenant("b", None, Priority::Normal)).await;
    let retry = AcquireRequest {
        attempt: 1,
        ..by_tenant("a", None, Priority::Normal)
    };
    let refused = ledger.acquire(&retry).await.unwrap();
    assert_eq!(
        refused.rejected().map(|r| r.reason),
        Some(RejectReason::QueueFull)
    );
    check_fair(&ledger);
}

/// The fleet term moves at random (as the fleet task moves it) under a
/// queue of waiters and random releases: every grant fits the enforced
/// limit in force when it is made, a raised term grants waiters at once, a
/// lowered one revokes nothing, and the demand read back is the peak.
#[tokio::test(start_paused = true)]
async fn a_moving_fleet_term_is_never_exceeded_by_a_grant() {
    use rand::{Rng, SeedableRng};
    let limits = limits(8, 64, 5_000)
        .patched(&LimitsPatch {
            fleet: Some(Some(FleetLimit::new(20, 1).unwrap())),
            ..Default::default()
        })
        .unwrap();
    let ledger = ledger_with("db", limits);
    let dependency = ledger.dependencies.get("db").unwrap().clone();
    assert_eq!(
        status(&ledger).limit.enforced,
        0,
        "nothing before the fleet task's word"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xf1ee7);
    let mut held: Vec<LeaseId> = Vec::new();
    let mut pending: Vec<tokio::task::JoinHandle<Decision>> = Vec::new();
    let mut grants = 0;
    let set = |term: u32| {
        let mut fleet = FleetStatus::starting(20, 1);
        fleet.mode = FleetMode::Share;
        fleet.enforced = term;
        dependency.set_fleet(fleet, Instant::now());
    };
    for step in 0..2000 {
        match rng.random_range(0..10) {
            0 => set(rng.random_range(0..=12)),
            1..=5 => pending.push(enqueue_request(&ledger, request(Priority::Normal, 0)).await),
            _ if !held.is_empty() => {
                let lease = held.swap_remove(rng.random_range(0..held.len()));
                ledger.release(&lease, Report::default()).unwrap();
            }
            _ => {}
        }
        tokio::task::yield_now().await;
        let mut still = Vec::new();
        for handle in pending.drain(..) {
            if handle.is_finished() {
                let decision = handle.await.unwrap();
                // (A full queue refuses; a grant must fit.)
                if let Some(grant) = decision.granted() {
                    assert!(
                        decision.snapshot.in_flight <= decision.snapshot.limit,
                        "step {step}: granted over the limit: {:?}",
                        decision.snapshot
                    );
                    held.push(grant.lease);
                    grants += 1;
                }
            } else {
                still.push(handle);
            }
        }
        pending = still;
        let status = status(&ledger);
        assert_eq!(status.limit.enforced, status.fleet.unwrap().enforced.min(8));
        if status.in_flight < status.limit.enforced {
            assert_eq!(status.queued, 0, "step {step}: a free permit and a waiter");
        }
    }
    assert!(grants > 300, "{grants} grants");
    // The demand is the peak since the last reading, at most the local limit.
    let reading = dependency.fleet_reading().unwrap();
    assert_eq!(reading.local_limit, 8);
    assert_eq!(reading.demand, 8, "held and queued exceed the local limit");
    let again = dependency.fleet_reading().unwrap();
    assert_eq!(again.in_flight, held.len() as u32);
    set(20);
    for lease in held {
        ledger.release(&lease, Report::default()).unwrap();
    }
    for handle in pending {
        if let Some(grant) = handle.await.unwrap().granted() {
            ledger.release(&grant.lease, Report::default()).unwrap();
        }
    }
    let empty = dependency.fleet_reading().unwrap();
    assert_eq!((empty.in_flight, empty.demand), (0, 0), "no arrival since");
    // One arrival held and gone by the next reading still counts.
    let lease = grant(&ledger).await;
    ledger.release(&lease, Report::default()).unwrap();
    assert_eq!(dependency.fleet_reading().unwrap().demand, 1);
    assert_eq!(
        dependency.fleet_reading().unwrap().demand,
        0,
        "a new reading starts at 0"
    );
}
