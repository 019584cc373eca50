//! The Rust client (`rate-governor-client`) against the real governor binary.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use governor_integration_tests::{GovernorProcess, Signal};
use rate_governor_client::{
    AcquireError, FailPolicy, GovernedError, Governor, GovernorLayer, Outcome, RejectReason,
    RetryError, RetryPolicy,
};
use rate_governor_proto::v1::{
    AcquireRequest, DependencyStatus, GetDependencyRequest, ListDependenciesRequest,
    governor_admin_client::GovernorAdminClient,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;
use tower::{Layer as _, Service as _, ServiceExt as _};

/// One slot, no queue: a second concurrent acquire is rejected at once.
const ONE_SLOT: &str = r#"
[dependencies.payments]
max_concurrency = 1
max_queue = 0
max_wait = "100ms"
"#;

const POLL_TIMEOUT: Duration = Duration::from_secs(5);

async fn status(admin: &mut GovernorAdminClient<Channel>, name: &str) -> DependencyStatus {
    admin
        .get_dependency(GetDependencyRequest { name: name.into() })
        .await
        .unwrap_or_else(|s| panic!("GetDependency({name}): {s}"))
        .into_inner()
}

/// Polls GetDependency until `in_flight == expected`, failing after 5 s.
async fn wait_in_flight(admin: &mut GovernorAdminClient<Channel>, name: &str, expected: u32) {
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        let in_flight = status(admin, name).await.in_flight;
        if in_flight == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: in_flight stayed {in_flight}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn client(gov: &GovernorProcess) -> Governor {
    Governor::builder()
        .fail_policy(FailPolicy::Closed)
        .connect(gov.endpoint())
        .unwrap()
}

#[tokio::test]
async fn the_slot_returns_after_the_governed_future_errors() {
    let sidecar = GovernorProcess::start(ONE_SLOT).await;
    let mut admin = sidecar.admin_client().await;
    let gov = client(&sidecar);

    let result: Result<(), _> = gov
        .run("payments", async { Err::<(), _>("downstream failed") })
        .await;
    assert!(matches!(
        result,
        Err(GovernedError::Inner("downstream failed"))
    ));
    // The release goes out in the background once the result is in hand.
    wait_in_flight(&mut admin, "payments", 0).await;

    // The single slot is free again: a try-acquire is granted.
    let permit = gov
        .acquire("payments")
        .max_wait(Duration::ZERO)
        .await
        .unwrap();
    assert!(!permit.is_degraded());
    assert_eq!(status(&mut admin, "payments").await.in_flight, 1);
    assert!(permit.release(Outcome::Success).await.unwrap());
    let after = status(&mut admin, "payments").await;
    assert_eq!(after.in_flight, 0);
    assert_eq!(after.granted_total, 2);
}

#[tokio::test]
async fn dropping_a_permit_frees_the_slot() {
    let sidecar = GovernorProcess::start(ONE_SLOT).await;
    let mut admin = sidecar.admin_client().await;
    let gov = client(&sidecar);

    let permit = gov.acquire("payments").await.unwrap();
    assert_eq!(status(&mut admin, "payments").await.in_flight, 1);
    drop(permit);
    wait_in_flight(&mut admin, "payments", 0).await;
}

#[tokio::test]
async fn a_full_dependency_rejects_with_a_typed_queue_full() {
    let sidecar = GovernorProcess::start(ONE_SLOT).await;
    let gov = client(&sidecar);

    let held = gov.acquire("payments").await.unwrap();
    let err = gov.acquire("payments").await.unwrap_err();
    let AcquireError::Rejected(rejection) = &err else {
        panic!("expected a rejection, got {err:?}");
    };
    assert_eq!(rejection.reason, RejectReason::QueueFull);
    assert_eq!((rejection.limit, rejection.in_flight), (1, 1));
    assert!(err.to_string().contains("queue full"), "{err}");
    held.release(Outcome::Success).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_permit_alive_past_a_short_lease_ttl() {
    let sidecar = GovernorProcess::start(
        r#"
[dependencies.payments]
max_concurrency = 4
lease_ttl = "300ms"
"#,
    )
    .await;
    let mut admin = sidecar.admin_client().await;
    let gov = client(&sidecar);

    // Control: a lease nobody renews expires, so the check below can fail.
    let mut raw = sidecar.governor_client().await;
    let unrenewed = raw
        .acquire(AcquireRequest {
            dependency: "payments".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(unrenewed.granted);

    let permit = gov.acquire("payments").await.unwrap();
    assert_eq!(permit.lease_ttl(), Some(Duration::from_millis(300)));
    // In flight: 2, until the unrenewed control lease expires.
    wait_in_flight(&mut admin, "payments", 1).await;
    // The subject here is time passing: hold the permit for 5 TTLs.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let now = status(&mut admin, "payments").await;
    assert_eq!(now.in_flight, 1, "the renewed permit was expired");
    assert_eq!(now.expired_total, 1, "only the unrenewed lease expires");
    assert!(permit.release(Outcome::Success).await.unwrap());
    assert_eq!(gov.stats().leases_lost, 0);
    wait_in_flight(&mut admin, "payments", 0).await;
}

#[tokio::test]
async fn unreachable_sidecar_fails_open_or_closed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);

    let open = Governor::connect(&dead).unwrap();
    let value = open
        .run("payments", async { Ok::<_, ()>("proceeded") })
        .await
        .unwrap();
    assert_eq!(value, "proceeded");
    let permit = open.acquire("payments").await.unwrap();
    assert!(permit.is_degraded());
    assert!(!permit.release(Outcome::Success).await.unwrap());
    assert_eq!(open.stats().fail_open_permits, 2);

    let closed = Governor::builder()
        .fail_policy(FailPolicy::Closed)
        .connect(&dead)
        .unwrap();
    let err = closed.acquire("payments").await.unwrap_err();
    assert!(matches!(err, AcquireError::Unavailable(_)), "{err:?}");
    assert_eq!(closed.stats().fail_open_permits, 0);
}

#[tokio::test]
async fn the_tower_layer_releases_on_success_and_on_error() {
    let sidecar = GovernorProcess::start(ONE_SLOT).await;
    let mut admin = sidecar.admin_client().await;
    let gov = client(&sidecar);

    let in_flight_seen = Arc::new(AtomicU32::new(u32::MAX));
    let inner = {
        let endpoint = sidecar.endpoint();
        let in_flight_seen = in_flight_seen.clone();
        tower::service_fn(move |fail: bool| {
            let endpoint = endpoint.clone();
            let in_flight_seen = in_flight_seen.clone();
            async move {
                // While the call runs it holds the dependency's only slot.
                let mut admin = GovernorAdminClient::connect(endpoint).await.unwrap();
                in_flight_seen.store(
                    status(&mut admin, "payments").await.in_flight,
                    Ordering::SeqCst,
                );
                if fail {
                    Err("downstream error")
                } else {
                    Ok("response")
                }
            }
        })
    };
    let mut svc = GovernorLayer::new(gov, "payments").layer(inner);

    assert_eq!(
        svc.ready().await.unwrap().call(false).await.unwrap(),
        "response"
    );
    assert_eq!(in_flight_seen.load(Ordering::SeqCst), 1);
    wait_in_flight(&mut admin, "payments", 0).await;

    in_flight_seen.store(u32::MAX, Ordering::SeqCst);
    let err = svc.ready().await.unwrap().call(true).await.unwrap_err();
    assert!(matches!(err, GovernedError::Inner("downstream error")));
    assert_eq!(in_flight_seen.load(Ordering::SeqCst), 1);
    wait_in_flight(&mut admin, "payments", 0).await;

    // With the slot taken, the layer rejects without calling the service.
    let held = client(&sidecar).acquire("payments").await.unwrap();
    in_flight_seen.store(u32::MAX, Ordering::SeqCst);
    let err = svc.ready().await.unwrap().call(false).await.unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.reason),
        Some(RejectReason::QueueFull)
    );
    assert_eq!(in_flight_seen.load(Ordering::SeqCst), u32::MAX);
    held.release(Outcome::Success).await.unwrap();
    assert_eq!(status(&mut admin, "payments").await.granted_total, 3);
}

#[tokio::test]
async fn the_tower_layer_governs_a_tonic_client() {
    let sidecar = GovernorProcess::start(ONE_SLOT).await;
    let gov = client(&sidecar);
    let channel = GovernorLayer::new(gov, "admin-api").layer(sidecar.channel().await);
    let mut governed = GovernorAdminClient::new(channel);

    let listed = governed
        .list_dependencies(ListDependenciesRequest {})
        .await
        .unwrap()
        .into_inner();
    // The call itself was counted under "admin-api" while it ran.
    let during = listed
        .dependencies
        .iter()
        .find(|d| d.name == "admin-api")
        .expect("admin-api listed while its call ran");
    assert_eq!(during.in_flight, 1);

    let mut admin = sidecar.admin_client().await;
    // The release goes out in the background once the response is in hand.
    wait_in_flight(&mut admin, "admin-api", 0).await;
    assert_eq!(status(&mut admin, "admin-api").await.granted_total, 1);
}

#[tokio::test]
async fn retry_stops_when_the_retry_budget_is_exhausted() {
    let sidecar = GovernorProcess::start(
        r#"
[dependencies.flaky]
# No deposits and no reserve: every retry finds the budget empty.
retry_budget = { ratio = 0.0, min_per_second = 0, ttl = "1s" }
"#,
    )
    .await;
    let mut admin = sidecar.admin_client().await;
    let gov = client(&sidecar);
    let calls = AtomicU32::new(0);
    let policy = RetryPolicy::default()
        .max_attempts(10)
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(5));

    let err = gov
        .retry("flaky", policy, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("unavailable")
        })
        .await
        .unwrap_err();
    let calls = calls.load(Ordering::SeqCst);
    assert_eq!(
        err.rejection().map(|r| r.reason),
        Some(RejectReason::RetryBudgetExhausted),
        "{err:?}"
    );
    let RetryError::Acquire {
        attempt,
        last_error,
        ..
    } = err
    else {
        unreachable!()
    };
    assert_eq!(last_error, Some("unavailable"));
    // The first try ran; its first retry was refused a permit.
    assert_eq!((calls, attempt), (1, 1));
    wait_in_flight(&mut admin, "flaky", 0).await;
}

#[tokio::test]
async fn connects_over_the_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("governor.sock");
    let sidecar =
        GovernorProcess::start_with_args(ONE_SLOT, &["--uds", path.to_str().unwrap()]).await;
    assert_eq!(sidecar.uds_path().as_deref(), Some(path.as_path()));
    let gov = Governor::builder()
        .fail_policy(FailPolicy::Closed)
        .connect(format!("unix://{}", path.display()))
        .unwrap();
    let permit = gov.acquire("payments").await.unwrap();
    let mut admin = sidecar.admin_client().await;
    assert_eq!(status(&mut admin, "payments").await.in_flight, 1);
    assert!(permit.release(Outcome::Success).await.unwrap());
    assert_eq!(status(&mut admin, "payments").await.in_flight, 0);
}

// The table of docs/any-language.md ("What every client does"), against the
// real binary where the sidecar's behaviour is involved.

#[tokio::test]
async fn the_default_deadline_never_cuts_a_long_max_wait_short() {
    // 6 s is longer than every old client default (1.5 s, 5 s).
    let sidecar = GovernorProcess::start(
        r#"
[dependencies.slow]
max_concurrency = 1
max_queue = 4
max_wait = "6s"
"#,
    )
    .await;
    let gov = client(&sidecar);
    let held = gov.acquire("slow").await.unwrap();
    let started = Instant::now();
    let err = gov.acquire("slow").await.unwrap_err();
    let rejection = err.rejection().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(rejection.reason, RejectReason::QueueTimeout);
    assert!(
        started.elapsed() >= Duration::from_millis(5900),
        "{:?}",
        started.elapsed()
    );
    held.release(Outcome::Success).await.unwrap();
}

#[tokio::test]
async fn the_dependency_cap_is_an_error_even_failing_open() {
    let sidecar = GovernorProcess::start("[limits]\nmax_dependencies = 1\n").await;
    let gov = Governor::connect(sidecar.endpoint()).unwrap();
    // Held, so that it cannot be evicted to make room.
    let first = gov.acquire("first").await.unwrap();
    let err = gov.acquire("second").await.unwrap_err();
    assert!(
        matches!(err, AcquireError::Invalid(ref s) if s.code() == tonic::Code::ResourceExhausted
            && s.message().starts_with("dependency:")),
        "{err:?}"
    );
    assert_eq!(gov.stats().fail_open_permits, 0);
    first.release(Outcome::Success).await.unwrap();
}

#[tokio::test]
async fn a_draining_sidecar_rejects_even_failing_open() {
    let sidecar = GovernorProcess::start("[defaults]\n").await;
    let gov = Governor::connect(sidecar.endpoint()).unwrap();
    // A held permit keeps the sidecar in its drain grace period.
    let held = gov.acquire("drain").await.unwrap();
    sidecar.signal(Signal::SIGTERM);
    let deadline = Instant::now() + POLL_TIMEOUT;
    let rejection = loop {
        match gov.acquire("drain").max_wait(Duration::ZERO).await {
            Err(AcquireError::Rejected(r)) => break r,
            Ok(permit) => {
                assert!(!permit.is_degraded(), "failed open on a draining sidecar");
                permit.release(Outcome::Success).await.unwrap();
            }
            Err(e) => panic!("{e:?}"),
        }
        assert!(Instant::now() < deadline, "no SHUTTING_DOWN rejection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rejection.reason, RejectReason::ShuttingDown);
    assert_eq!(gov.stats().fail_open_permits, 0);
    held.release(Outcome::Success).await.unwrap();
}

/// `governor_release_total` of `dependency` by outcome, from /metrics.
async fn releases_by_outcome(admin: std::net::SocketAddr, dependency: &str) -> Vec<(String, f64)> {
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: governor\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let label = format!("dependency=\"{dependency}\"");
    let mut found: Vec<(String, f64)> = response
        .lines()
        .filter(|l| l.starts_with("governor_release_total{") && l.contains(&label))
        .filter_map(|l| {
            let outcome = l.split("outcome=\"").nth(1)?.split('"').next()?.to_owned();
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some((outcome, value))
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[tokio::test]
async fn a_dropped_permit_is_released_unspecified_and_a_cancelled_run_cancelled() {
    let sidecar =
        GovernorProcess::start_with_args(ONE_SLOT, &["--admin-listen", "127.0.0.1:0"]).await;
    let admin_addr = sidecar.admin_addr().expect("admin listener");
    let mut admin = sidecar.admin_client().await;
    let gov = client(&sidecar);

    drop(gov.acquire("payments").await.unwrap());
    wait_in_flight(&mut admin, "payments", 0).await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let run = gov.run("payments", async move {
        let _ = started_tx.send(());
        std::future::pending::<Result<(), ()>>().await
    });
    tokio::select! {
        _ = run => unreachable!("a pending future completed"),
        started = started_rx => started.unwrap(),
    }
    wait_in_flight(&mut admin, "payments", 0).await;
    assert_eq!(
        releases_by_outcome(admin_addr, "payments").await,
        [
            ("cancelled".to_owned(), 1.0),
            ("unspecified".to_owned(), 1.0)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_notices_a_frozen_sidecar_during_a_long_wait() {
    let sidecar = GovernorProcess::start(
        r#"
[dependencies.frozen]
max_concurrency = 1
max_queue = 4
max_wait = "1h"
"#,
    )
    .await;
    let closed = client(&sidecar);
    let held = closed.acquire("frozen").await.unwrap();
    let gov = Governor::builder()
        .keepalive(Duration::from_millis(200), Duration::from_millis(300))
        .connect(sidecar.endpoint())
        .unwrap();
    let waiting = tokio::spawn(async move {
        let permit = gov.acquire("frozen").await;
        (
            permit.map(|p| p.is_degraded()),
            gov.stats().fail_open_permits,
        )
    });
    // Queued (the only slot is held), then the sidecar stops answering.
    let mut admin = sidecar.admin_client().await;
    let deadline = Instant::now() + POLL_TIMEOUT;
    while status(&mut admin, "frozen").await.queued == 0 {
        assert!(Instant::now() < deadline, "the acquire never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sidecar.signal(Signal::SIGSTOP);
    let outcome = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    sidecar.signal(Signal::SIGCONT);
    let (degraded, fail_open_permits) = outcome
        .expect("keepalive did not notice the frozen sidecar within 10 s")
        .unwrap();
    assert!(degraded.unwrap(), "expected a fail-open permit");
    assert_eq!(fail_open_permits, 1);
    held.release(Outcome::Success).await.unwrap();
}
