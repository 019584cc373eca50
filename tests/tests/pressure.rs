//! Pressure and degradable requests (issue 10, "Degrade and pressure")
//! against the real binary over real gRPC: the pressure on every answer as
//! permits are taken and a queue overflows, a degradable acquire answered
//! DEGRADE at once on the unary and the Session path, `degrade_at =
//! "elevated"`, a reload of both settings, the gauge and the reason label
//! on /metrics, and config errors that exit 64 naming the key.

use std::time::Duration;

use governor_integration_tests::{
    GovernorProcess, Signal, admin_get as get, check_config, release, series,
};
use rate_governor_proto::v1::{
    AcquireRequest, AcquireResponse, GetDependencyRequest, Pressure, RejectReason, SessionRequest,
    SessionResponse, governor_admin_client::GovernorAdminClient, governor_client::GovernorClient,
    session_request::Op, session_response::Result as Answer,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

const CONFIG: &str = r#"
[dependencies.api]
max_concurrency = 10
max_queue = 1
max_wait = "30s"

[dependencies.dim]
max_concurrency = 4
elevated_at = 0.5
degrade_at = "elevated"
"#;

fn request(dependency: &str, degradable: bool) -> AcquireRequest {
    AcquireRequest {
        dependency: dependency.into(),
        degradable,
        ..Default::default()
    }
}

async fn acquire(
    client: &mut GovernorClient<Channel>,
    dependency: &str,
    degradable: bool,
) -> AcquireResponse {
    client
        .acquire(request(dependency, degradable))
        .await
        .expect("Acquire answers")
        .into_inner()
}

/// Waits until the dependency has `queued` waiters (the control plane's
/// view; a waiter is in the queue once it shows there).
async fn until_queued(admin: &mut GovernorAdminClient<Channel>, name: &str, queued: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = admin
            .get_dependency(GetDependencyRequest { name: name.into() })
            .await
            .expect("GetDependency answers")
            .into_inner();
        if status.queued == queued {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {queued} queued: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One Session stream.
struct Session {
    tx: mpsc::Sender<SessionRequest>,
    rx: Streaming<SessionResponse>,
}

impl Session {
    async fn open(client: &mut GovernorClient<Channel>) -> Session {
        let (tx, outbound) = mpsc::channel(16);
        let rx = client
            .session(ReceiverStream::new(outbound))
            .await
            .expect("Session is served")
            .into_inner();
        Session { tx, rx }
    }

    async fn acquire(&mut self, id: u64, dependency: &str, degradable: bool) -> AcquireResponse {
        let op = Op::Acquire(request(dependency, degradable));
        self.tx
            .send(SessionRequest { id, op: Some(op) })
            .await
            .expect("the stream is open");
        let answer = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("an answer within 10 s")
            .expect("the stream did not fail")
            .expect("the stream did not end");
        assert_eq!(answer.id, id);
        match answer.result {
            Some(Answer::Acquire(response)) => response,
            other => panic!("expected an acquire answer, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn pressure_rises_with_load_and_degradable_requests_never_queue() {
    let gov = GovernorProcess::start(CONFIG).await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let admin_addr = gov.admin_addr().expect("an admin listener");

    // NONE under 7 of 10, ELEVATED from 7, SATURATED at 10.
    let mut leases = Vec::new();
    for n in 1..=10u32 {
        let answer = acquire(&mut client, "api", false).await;
        assert!(answer.granted, "{answer:?}");
        assert_eq!(answer.in_flight, n);
        let expected = match n {
            1..=6 => Pressure::None,
            7..=9 => Pressure::Elevated,
            _ => Pressure::Saturated,
        };
        assert_eq!(answer.pressure(), expected, "after {n} grants: {answer:?}");
        leases.push(answer.lease_id);
    }

    // Saturated: a degradable acquire is answered DEGRADE at once, on both
    // paths, and never joins the queue.
    let degraded = acquire(&mut client, "api", true).await;
    assert!(!degraded.granted);
    assert_eq!(degraded.reason(), RejectReason::Degrade);
    assert!(degraded.lease_id.is_empty());
    assert_eq!(degraded.pressure(), Pressure::Saturated);
    assert_eq!((degraded.in_flight, degraded.queued), (10, 0));
    let retry_after = degraded.retry_after.expect("a retry hint");
    assert!(
        retry_after.seconds > 0 || retry_after.nanos > 0,
        "{retry_after:?}"
    );
    let mut session = Session::open(&mut client).await;
    let over_session = session.acquire(1, "api", true).await;
    assert_eq!(over_session.reason(), RejectReason::Degrade);
    assert_eq!(over_session.pressure(), Pressure::Saturated);
    assert_eq!(over_session.queued, 0);

    // A caller without a fallback waits; the next one finds the queue full,
    // and from then on the answers say OVERLOADED.
    let waiter = {
        let mut client = client.clone();
        tokio::spawn(async move { acquire(&mut client, "api", false).await })
    };
    until_queued(&mut admin, "api", 1).await;
    let full = acquire(&mut client, "api", false).await;
    assert_eq!(full.reason(), RejectReason::QueueFull);
    assert_eq!(full.pressure(), Pressure::Overloaded);
    // Still DEGRADE (not QUEUE_FULL) for a degradable caller, and the
    // waiter keeps its place.
    let degraded = session.acquire(2, "api", true).await;
    assert_eq!(degraded.reason(), RejectReason::Degrade);
    assert_eq!(degraded.queued, 1);

    let metrics = get(admin_addr, "/metrics").await;
    let gauge = series(&metrics, "governor_dependency_pressure{dependency=\"api\"}");
    assert!(
        matches!(gauge, Some(g) if g >= 3.0),
        "pressure gauge {gauge:?} in\n{metrics}"
    );
    assert!(
        metrics.contains("# HELP governor_dependency_pressure") && metrics.contains("4 overloaded"),
        "{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            "governor_acquire_total{dependency=\"api\",result=\"rejected\",reason=\"degrade\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            "governor_acquire_total{dependency=\"api\",result=\"rejected\",reason=\"queue_full\"}"
        ),
        Some(1.0),
        "{metrics}"
    );

    // A permit back: the waiter gets it; nothing a DEGRADE answered holds
    // a slot.
    release(&mut client, &leases.pop().unwrap()).await;
    let woken = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is answered")
        .unwrap();
    assert!(woken.granted, "{woken:?}");
    assert_eq!((woken.in_flight, woken.queued), (10, 0));
    leases.push(woken.lease_id);
    for lease in &leases {
        release(&mut client, lease).await;
    }
    let status = admin
        .get_dependency(GetDependencyRequest { name: "api".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.in_flight, status.queued), (0, 0), "{status:?}");
    assert_eq!(status.granted_total, 11);
}

#[tokio::test]
async fn degrade_at_elevated_keeps_headroom_and_a_reload_moves_it() {
    let gov = GovernorProcess::start(CONFIG).await;
    let mut client = gov.governor_client().await;
    let admin_addr = gov.admin_addr().expect("an admin listener");
    let mut session = Session::open(&mut client).await;

    // elevated_at = 0.5 of 4: 0 and 1 held are NONE, 2 is ELEVATED.
    let first = session.acquire(1, "dim", true).await;
    assert!(first.granted, "{first:?}");
    assert_eq!(first.pressure(), Pressure::None);
    let second = acquire(&mut client, "dim", true).await;
    assert!(second.granted, "{second:?}");
    assert_eq!(second.pressure(), Pressure::Elevated);

    // Elevated: degradable callers are answered DEGRADE with two slots free,
    // on both paths; callers without a fallback still get them.
    let dimmed = acquire(&mut client, "dim", true).await;
    assert_eq!(dimmed.reason(), RejectReason::Degrade, "{dimmed:?}");
    assert_eq!(dimmed.in_flight, 2);
    let dimmed = session.acquire(2, "dim", true).await;
    assert_eq!(dimmed.reason(), RejectReason::Degrade, "{dimmed:?}");
    let plain = acquire(&mut client, "dim", false).await;
    assert!(plain.granted, "{plain:?}");
    assert_eq!(plain.in_flight, 3);
    release(&mut client, &plain.lease_id).await;

    // A reload back to degrade_at = "saturated": the same load grants.
    let reloaded = CONFIG.replace("degrade_at = \"elevated\"", "degrade_at = \"saturated\"");
    std::fs::write(gov.config_path(), reloaded).unwrap();
    gov.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(admin_addr, "/metrics").await;
        if series(&metrics, "governor_config_reloads_total{result=\"ok\"}") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "reload not applied:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let granted = session.acquire(3, "dim", true).await;
    assert!(granted.granted, "{granted:?}");
    assert_eq!(granted.pressure(), Pressure::Elevated);
}

#[tokio::test]
async fn bad_pressure_settings_exit_64_naming_the_key() {
    for (toml, message) in [
        (
            "[dependencies.api]\nelevated_at = 1.5",
            "dependencies.api.elevated_at: must be in (0, 1], got 1.5",
        ),
        (
            "[defaults]\nelevated_at = 0",
            "defaults.elevated_at: must be in (0, 1], got 0",
        ),
        (
            "[dependencies.api]\ndegrade_at = \"never\"",
            "unknown variant `never`, expected `saturated` or `elevated`",
        ),
    ] {
        let (code, stderr) = check_config(toml).await;
        assert_eq!(code, Some(64), "{toml}: {stderr}");
        assert!(stderr.contains(message), "{message:?} not in {stderr}");
        if toml.contains("degrade_at") {
            assert!(stderr.contains("degrade_at = \"never\""), "{stderr}");
        }
    }
}

const ONE_SLOT: &str = r#"
[dependencies.api]
max_concurrency = 1
max_queue = 4
max_wait = "30s"
retry_budget = { ratio = 0.0, min_per_second = 0 }
"#;

/// A sampled trace context: the Rust client then asks with the unary call
/// (a session message carries no `traceparent`).
fn sampled() -> opentelemetry::Context {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    let caller = SpanContext::new(
        TraceId::from_hex("44444444444444444444444444444444").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    opentelemetry::Context::new().with_remote_span_context(caller)
}

#[tokio::test]
async fn the_rust_clients_fallback_runs_on_degrade_over_both_paths() {
    use opentelemetry::context::FutureExt as _;
    use rate_governor_client::{GovernedError, Governor, Pressure as ClientPressure};
    use std::future::IntoFuture as _;
    use std::sync::atomic::{AtomicU32, Ordering};

    let gov = GovernorProcess::start(ONE_SLOT).await;
    let client = Governor::connect(gov.endpoint()).unwrap();
    let mut admin = gov.admin_client().await;

    // Idle: a degradable acquire is granted, and says how loaded it left
    // the dependency (1 of 1: saturated).
    let held = client.acquire("api").degradable(true).await.unwrap();
    assert_eq!(held.pressure(), ClientPressure::Saturated);

    // Saturated: the fallback runs at once, the governed call never.
    let calls = AtomicU32::new(0);
    let fallbacks = AtomicU32::new(0);
    let governed = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>("fresh")
    };
    let fallback = |rejection: rate_governor_client::Rejection| {
        fallbacks.fetch_add(1, Ordering::SeqCst);
        async move {
            assert!(rejection.is_degrade(), "{rejection}");
            assert_eq!(rejection.pressure, ClientPressure::Saturated);
            assert!(!rejection.retry_after.is_zero());
            Ok::<_, std::io::Error>("cached")
        }
    };
    // Over the session, then over the unary call.
    let answer = client
        .run_or_degrade("api", governed(), fallback)
        .await
        .unwrap();
    assert_eq!(answer, "cached");
    let answer = client
        .run_or_degrade("api", governed(), fallback)
        .with_context(sampled())
        .await
        .unwrap();
    assert_eq!(answer, "cached");
    assert_eq!(
        (
            calls.load(Ordering::SeqCst),
            fallbacks.load(Ordering::SeqCst)
        ),
        (0, 2)
    );
    let status = admin
        .get_dependency(GetDependencyRequest { name: "api".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.in_flight, status.queued), (1, 0), "{status:?}");

    // The plain acquire of a degradable request: a typed DEGRADE rejection.
    let error = client
        .acquire("api")
        .degradable(true)
        .into_future()
        .with_context(sampled())
        .await
        .unwrap_err();
    let rejection = error.rejection().expect("a rejection");
    assert!(rejection.is_degrade(), "{error}");
    assert_eq!(rejection.reason, RejectReason::Degrade);

    // Any other rejection is an error, and the fallback does not run: a
    // retry meets the (empty) retry budget before it could degrade.
    let error = client
        .acquire("api")
        .attempt(1)
        .run_or_degrade(governed(), fallback)
        .await
        .unwrap_err();
    match &error {
        GovernedError::Acquire(_) => assert_eq!(
            error.rejection().unwrap().reason,
            RejectReason::RetryBudgetExhausted
        ),
        GovernedError::Inner(e) => panic!("expected a rejection, got {e}"),
    }
    assert_eq!(fallbacks.load(Ordering::SeqCst), 2);

    // A free slot: the governed call runs under a permit, and it is given
    // back.
    held.release(rate_governor_client::Outcome::Success)
        .await
        .unwrap();
    let answer = client
        .run_or_degrade("api", governed(), fallback)
        .await
        .unwrap();
    assert_eq!(answer, "fresh");
    assert_eq!(
        (
            calls.load(Ordering::SeqCst),
            fallbacks.load(Ordering::SeqCst)
        ),
        (1, 2)
    );
    // The fallback's own error is the call's error.
    let held = client.acquire("api").await.unwrap();
    let error = client
        .run_or_degrade("api", governed(), |_| async {
            Err::<&str, _>(std::io::Error::other("cache miss"))
        })
        .await
        .unwrap_err();
    assert_eq!(error.into_inner().unwrap().to_string(), "cache miss");
    drop(held);
}

#[tokio::test]
async fn the_control_plane_shows_the_pressure_and_changes_both_settings() {
    use rate_governor_proto::v1::{DegradeAt, DependencyLimits, UpdateDependencyRequest};
    let gov = GovernorProcess::start(CONFIG).await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let status = |admin: &mut GovernorAdminClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .get_dependency(GetDependencyRequest { name: "dim".into() })
                .await
                .expect("GetDependency answers")
                .into_inner()
        }
    };
    let idle = status(&mut admin).await;
    assert_eq!(idle.pressure(), Pressure::None);
    assert_eq!(
        (idle.elevated_at, idle.degrade_at()),
        (0.5, DegradeAt::Elevated)
    );

    // 2 of 4 in use: elevated at 0.5, so a degradable request degrades.
    let first = acquire(&mut client, "dim", false).await;
    let second = acquire(&mut client, "dim", false).await;
    assert_eq!(status(&mut admin).await.pressure(), Pressure::Elevated);
    assert_eq!(
        acquire(&mut client, "dim", true).await.reason(),
        RejectReason::Degrade
    );

    // Raised to 0.9 and back to "saturated": the same request is granted.
    let update = |limits: DependencyLimits| UpdateDependencyRequest {
        name: "dim".into(),
        limits: Some(limits),
    };
    let changed = admin
        .update_dependency(update(DependencyLimits {
            elevated_at: Some(0.9),
            degrade_at: DegradeAt::Saturated.into(),
            ..Default::default()
        }))
        .await
        .expect("UpdateDependency answers")
        .into_inner();
    assert_eq!(
        (changed.elevated_at, changed.degrade_at()),
        (0.9, DegradeAt::Saturated)
    );
    assert_eq!(changed.pressure(), Pressure::None);
    let third = acquire(&mut client, "dim", true).await;
    assert!(third.granted, "{third:?}");

    // Unset fields keep what is in force; a bad value names its field and
    // changes nothing.
    let kept = admin
        .update_dependency(update(DependencyLimits {
            max_queue: Some(3),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (kept.elevated_at, kept.degrade_at()),
        (0.9, DegradeAt::Saturated)
    );
    for (limits, field) in [
        (
            DependencyLimits {
                elevated_at: Some(1.5),
                ..Default::default()
            },
            "limits.elevated_at:",
        ),
        (
            DependencyLimits {
                degrade_at: 9,
                ..Default::default()
            },
            "limits.degrade_at:",
        ),
    ] {
        let refused = admin.update_dependency(update(limits)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().starts_with(field), "{refused:?}");
    }
    let after = status(&mut admin).await;
    assert_eq!(
        (after.elevated_at, after.degrade_at()),
        (0.9, DegradeAt::Saturated)
    );
    for lease in [first, second, third] {
        release(&mut client, &lease.lease_id).await;
    }
}
