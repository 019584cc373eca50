//! Unit tests against an in-process fake sidecar ([`fake::Fake`]); the
//! end-to-end tests against the real binary live in `tests/tests/client.rs`.

mod fake;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use fake::Fake;
use opentelemetry::{
    Context,
    context::FutureExt as _,
    trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rate_governor_proto::v1::AcquireResponse;
use tower::{Layer as _, Service as _, ServiceExt as _};

use crate::{
    AcquireError, FailPolicy, GovernedError, Governor, GovernorLayer, Outcome, Priority,
    RejectReason, RetryError, RetryPolicy, duration::to_proto,
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";

/// A context whose active span is a remote parent with known ids.
fn traced_context() -> Context {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex(TRACE_ID).unwrap(),
        SpanId::from_hex(SPAN_ID).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

fn rejection(reason: RejectReason, retry_after: Duration) -> AcquireResponse {
    AcquireResponse {
        granted: false,
        reason: reason as i32,
        retry_after: Some(to_proto(retry_after)),
        limit: 1,
        in_flight: 1,
        queued: 0,
        ..Default::default()
    }
}

async fn fake_and_client() -> (Fake, Governor) {
    let fake = Fake::new();
    let endpoint = fake.serve_tcp().await;
    let gov = Governor::connect(endpoint).unwrap();
    (fake, gov)
}

/// An address where nothing listens: bound, then closed.
async fn dead_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn acquire_sends_options_and_traceparent_and_release_reports_outcome() {
    let (fake, gov) = fake_and_client().await;
    let cx = traced_context();
    async {
        let permit = gov
            .acquire("payments")
            .priority(Priority::Critical)
            .tenant("checkout")
            .max_wait(Duration::from_millis(40))
            .await
            .unwrap();
        assert!(!permit.is_degraded());
        assert_eq!(permit.lease_id(), Some("lease-1"));
        assert_eq!(permit.lease_ttl(), Some(Duration::from_secs(30)));
        let released = permit
            .release_with_latency(Outcome::Failure, Duration::from_millis(7))
            .await
            .unwrap();
        assert!(released);
    }
    .with_context(cx)
    .await;

    fake.with(|s| {
        let acquire = &s.acquires[0];
        assert_eq!(acquire.message.dependency, "payments");
        assert_eq!(acquire.message.attempt, 0);
        assert_eq!(acquire.message.priority, Priority::Critical as i32);
        assert_eq!(acquire.message.tenant, "checkout");
        assert_eq!(
            acquire.message.max_wait,
            Some(to_proto(Duration::from_millis(40)))
        );
        let expected = format!("00-{TRACE_ID}-{SPAN_ID}-01");
        assert_eq!(acquire.traceparent.as_deref(), Some(expected.as_str()));

        let release = &s.releases[0];
        assert_eq!(release.message.lease_id, "lease-1");
        assert_eq!(release.message.outcome, Outcome::Failure as i32);
        assert_eq!(
            release.message.latency,
            Some(to_proto(Duration::from_millis(7)))
        );
        assert_eq!(release.traceparent.as_deref(), Some(expected.as_str()));
    });
}

#[tokio::test]
async fn builder_defaults_apply_to_every_acquire() {
    let fake = Fake::new();
    let endpoint = fake.serve_tcp().await;
    let gov = Governor::builder()
        .default_priority(Priority::Sheddable)
        .default_tenant("batch")
        .connect(endpoint)
        .unwrap();
    let permit = gov.acquire("search").await.unwrap();
    permit.release(Outcome::Success).await.unwrap();
    fake.with(|s| {
        assert_eq!(s.acquires[0].message.priority, Priority::Sheddable as i32);
        assert_eq!(s.acquires[0].message.tenant, "batch");
    });
}

/// Log lines written while a test runs on this thread (the test runtime is
/// current-thread, so the spawned renewer logs here too).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn the_lease_id_is_never_in_debug_output_or_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let (fake, gov) = fake_and_client().await;
    // A short TTL and a sidecar that forgets the lease: the renewer logs.
    fake.update(|s| {
        s.lease_ttl = Duration::from_millis(60);
        s.renew_ok = false;
    });
    let permit = gov.acquire("payments").await.unwrap();
    let id = permit.lease_id().unwrap().to_owned();
    assert_eq!(id, "lease-1");
    let handle = permit.lease_handle().unwrap().to_string();
    assert_eq!(handle.len(), 8);
    assert!(handle.chars().all(|c| c.is_ascii_hexdigit()), "{handle}");
    fake.wait_for("a renew", |s| !s.renews.is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logs.text().contains("expired") {
        assert!(
            Instant::now() < deadline,
            "no warning logged: {}",
            logs.text()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rendered = [
        format!("{permit:?}"),
        format!("{permit:#?}"),
        format!("{:?}", [&permit]),
        format!("{:?}", permit.lease_handle()),
        logs.text(),
    ];
    for text in &rendered {
        assert!(!text.contains(&id), "lease id in: {text}");
    }
    assert!(rendered[0].contains(&handle), "{}", rendered[0]);
    assert!(logs.text().contains(&handle), "{}", logs.text());
    // The id is still what the release carries.
    permit.release(Outcome::Success).await.unwrap();
    fake.with(|s| assert_eq!(s.releases[0].message.lease_id, id));
}

#[tokio::test]
async fn dropping_a_permit_releases_it_as_unspecified() {
    let (fake, gov) = fake_and_client().await;
    let permit = gov.acquire("payments").await.unwrap();
    drop(permit);
    fake.wait_for("the drop-time release", |s| !s.releases.is_empty())
        .await;
    fake.with(|s| {
        assert_eq!(s.releases.len(), 1);
        assert_eq!(s.releases[0].message.lease_id, "lease-1");
        assert_eq!(s.releases[0].message.outcome, Outcome::Unspecified as i32);
        assert_eq!(s.releases[0].message.latency, None);
    });
}

/// The fail-open row of docs/any-language.md: these codes, and only these.
const NO_ANSWER: [tonic::Code; 6] = [
    tonic::Code::Unavailable,
    tonic::Code::DeadlineExceeded,
    tonic::Code::Cancelled,
    tonic::Code::Unknown,
    tonic::Code::Internal,
    tonic::Code::DataLoss,
];
/// The "always an error" row.
const ANSWERS: [tonic::Code; 10] = [
    tonic::Code::InvalidArgument,
    tonic::Code::NotFound,
    tonic::Code::ResourceExhausted,
    tonic::Code::Unimplemented,
    tonic::Code::PermissionDenied,
    tonic::Code::Unauthenticated,
    tonic::Code::FailedPrecondition,
    tonic::Code::OutOfRange,
    tonic::Code::AlreadyExists,
    tonic::Code::Aborted,
];

#[tokio::test]
async fn every_code_the_sidecar_sends_follows_the_table() {
    let fake = Fake::new();
    let endpoint = fake.serve_tcp().await;
    let open = Governor::connect(&endpoint).unwrap();
    let closed = Governor::builder()
        .fail_policy(FailPolicy::Closed)
        .connect(&endpoint)
        .unwrap();
    for (n, code) in NO_ANSWER.into_iter().enumerate() {
        fake.update(|s| s.script.push_back(Err(tonic::Status::new(code, "forced"))));
        let permit = open.acquire("payments").await.unwrap();
        assert!(permit.is_degraded(), "{code:?}");
        assert_eq!(open.stats().fail_open_permits, n as u64 + 1);
        fake.update(|s| s.script.push_back(Err(tonic::Status::new(code, "forced"))));
        let err = closed.acquire("payments").await.unwrap_err();
        assert!(
            matches!(err, AcquireError::Unavailable(ref s) if s.code() == code),
            "{code:?}: {err:?}"
        );
    }
    for code in ANSWERS {
        for gov in [&open, &closed] {
            fake.update(|s| {
                s.script
                    .push_back(Err(tonic::Status::new(code, "dependency: no")))
            });
            let err = gov.acquire("payments").await.unwrap_err();
            assert!(
                matches!(err, AcquireError::Invalid(ref s) if s.code() == code && s.message() == "dependency: no"),
                "{code:?}: {err:?}"
            );
        }
    }
    assert_eq!(open.stats().fail_open_permits, NO_ANSWER.len() as u64);
    assert_eq!(closed.stats().fail_open_permits, 0);
}

#[tokio::test]
async fn every_rejection_is_an_error_even_failing_open() {
    let (fake, gov) = fake_and_client().await;
    for reason in [
        RejectReason::QueueFull,
        RejectReason::QueueTimeout,
        RejectReason::RetryBudgetExhausted,
        RejectReason::Shed,
        RejectReason::ShuttingDown,
        RejectReason::RateLimited,
    ] {
        fake.update(|s| {
            s.script
                .push_back(Ok(rejection(reason, Duration::from_secs(1))))
        });
        let err = gov.acquire("payments").await.unwrap_err();
        assert_eq!(err.rejection().map(|r| r.reason), Some(reason), "{err:?}");
    }
    assert_eq!(gov.stats().fail_open_permits, 0);
}

#[tokio::test]
async fn deadlines_follow_the_table() {
    let (fake, gov) = fake_and_client().await;
    fake.update(|s| s.lease_ttl = Duration::from_millis(300));
    // With a max_wait: that plus 1 s. Without: 1 h + 1 s.
    let permit = gov
        .acquire("payments")
        .max_wait(Duration::from_millis(250))
        .await
        .unwrap();
    let unbounded = gov.acquire("payments").await.unwrap();
    fake.wait_for("a renewal", |s| !s.renews.is_empty()).await;
    permit.release(Outcome::Success).await.unwrap();
    unbounded.release(Outcome::Success).await.unwrap();
    fake.with(|s| {
        let within = |d: Option<Duration>, low: Duration, high: Duration| {
            let d = d.expect("a grpc-timeout");
            assert!(low < d && d <= high, "{d:?} not in ({low:?}, {high:?}]");
        };
        let ms = Duration::from_millis;
        within(s.acquires[0].timeout, ms(1150), ms(1250));
        within(s.acquires[1].timeout, ms(3_600_900), ms(3_601_000));
        // Renew: min(TTL / 3, 2 s); Release: 2 s.
        within(s.renews[0].timeout, ms(50), ms(100));
        within(s.releases[0].timeout, ms(1900), ms(2000));
    });
}

#[tokio::test]
async fn run_reports_success_failure_and_cancellation() {
    let (fake, gov) = fake_and_client().await;
    let ok: Result<u32, GovernedError<&str>> = gov.run("db", async { Ok(7) }).await;
    assert_eq!(ok.unwrap(), 7);
    let err: Result<u32, _> = gov.run("db", async { Err("boom") }).await;
    assert!(matches!(err, Err(GovernedError::Inner("boom"))));

    // A run dropped while its future is pending releases as CANCELLED.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let pending = gov.run("db", async move {
        let _ = started_tx.send(());
        std::future::pending::<Result<(), ()>>().await
    });
    tokio::select! {
        _ = pending => unreachable!("pending future completed"),
        started = started_rx => started.unwrap(),
    }
    fake.wait_for("three releases", |s| s.releases.len() == 3)
        .await;
    fake.with(|s| {
        let outcomes: Vec<i32> = s.releases.iter().map(|r| r.message.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Success as i32,
                Outcome::Failure as i32,
                Outcome::Cancelled as i32
            ]
        );
        assert!(s.releases[0].message.latency.is_some());
    });
}

#[tokio::test]
async fn rejection_is_typed() {
    let (fake, gov) = fake_and_client().await;
    fake.update(|s| {
        s.script.push_back(Ok(rejection(
            RejectReason::QueueFull,
            Duration::from_millis(25),
        )))
    });
    let err = gov.acquire("payments").await.unwrap_err();
    let AcquireError::Rejected(rejection) = err else {
        panic!("expected a rejection, got {err:?}");
    };
    assert_eq!(rejection.reason, RejectReason::QueueFull);
    assert_eq!(rejection.retry_after, Duration::from_millis(25));
    assert_eq!(
        (rejection.limit, rejection.in_flight, rejection.queued),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn invalid_request_is_an_error_even_when_failing_open() {
    let (fake, gov) = fake_and_client().await;
    fake.update(|s| {
        s.script
            .push_back(Err(tonic::Status::invalid_argument("dependency: empty")))
    });
    let err = gov.acquire("").await.unwrap_err();
    assert!(matches!(err, AcquireError::Invalid(ref s) if s.message() == "dependency: empty"));
    assert_eq!(gov.stats().fail_open_permits, 0);
}

#[tokio::test]
async fn unreachable_sidecar_fails_open_by_default_and_closed_on_request() {
    let endpoint = dead_endpoint().await;
    let open = Governor::connect(&endpoint).unwrap();
    for expected in 1..=2 {
        let permit = open.acquire("payments").await.unwrap();
        assert!(permit.is_degraded());
        assert_eq!(permit.lease_id(), None);
        permit.release(Outcome::Success).await.unwrap();
        assert_eq!(open.stats().fail_open_permits, expected);
    }
    let ran = open.run("payments", async { Ok::<_, ()>("ran") }).await;
    assert_eq!(ran.unwrap(), "ran");
    assert_eq!(open.stats().fail_open_permits, 3);

    let closed = Governor::builder()
        .fail_policy(FailPolicy::Closed)
        .connect(&endpoint)
        .unwrap();
    let err = closed.acquire("payments").await.unwrap_err();
    assert!(matches!(err, AcquireError::Unavailable(_)), "{err:?}");
    assert_eq!(closed.stats().fail_open_permits, 0);
}

#[tokio::test]
async fn a_hung_sidecar_is_cut_off_by_the_acquire_timeout() {
    // Accepts TCP but never speaks HTTP/2.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let gov = Governor::builder()
        .fail_policy(FailPolicy::Closed)
        .acquire_timeout(Duration::from_millis(200))
        .connect(endpoint)
        .unwrap();
    let started = Instant::now();
    let err = gov.acquire("payments").await.unwrap_err();
    assert!(matches!(err, AcquireError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(listener);
}

#[tokio::test]
async fn held_permit_renews_its_lease_until_released() {
    let (fake, gov) = fake_and_client().await;
    fake.update(|s| s.lease_ttl = Duration::from_millis(150));
    let permit = gov.acquire("payments").await.unwrap();
    fake.wait_for("three renewals", |s| s.renews.len() >= 3)
        .await;
    permit.release(Outcome::Success).await.unwrap();
    let renewals = fake.with(|s| {
        assert!(s.renews.iter().all(|r| r.message.lease_id == "lease-1"));
        s.renews.len()
    });
    // Renewal runs every ttl/3 = 50 ms: four periods without one show it stopped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fake.with(|s| s.renews.len()), renewals);
    assert_eq!(gov.stats().leases_lost, 0);
}

#[tokio::test]
async fn a_lease_the_sidecar_no_longer_knows_is_counted_as_lost() {
    let (fake, gov) = fake_and_client().await;
    fake.update(|s| {
        s.lease_ttl = Duration::from_millis(60);
        s.renew_ok = false;
    });
    let _permit = gov.acquire("payments").await.unwrap();
    fake.wait_for("a renewal", |s| !s.renews.is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while gov.stats().leases_lost == 0 {
        assert!(Instant::now() < deadline, "lost lease never counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn retry_numbers_attempts_and_stops_on_success() {
    let (fake, gov) = fake_and_client().await;
    let calls = AtomicU32::new(0);
    let policy = RetryPolicy::default()
        .max_attempts(5)
        .initial_backoff(Duration::from_millis(1));
    let value = gov
        .retry("payments", policy, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err("transient"),
                n => Ok(n),
            }
        })
        .await
        .unwrap();
    assert_eq!(value, 2);
    // Releases go out in the background once each result is in hand.
    fake.wait_for("three releases", |s| s.releases.len() == 3)
        .await;
    fake.with(|s| {
        let attempts: Vec<u32> = s.acquires.iter().map(|a| a.message.attempt).collect();
        assert_eq!(attempts, [0, 1, 2]);
        let outcomes: Vec<i32> = s.releases.iter().map(|r| r.message.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Failure as i32,
                Outcome::Failure as i32,
                Outcome::Success as i32
            ]
        );
    });
}

#[tokio::test]
async fn retry_gives_up_after_max_attempts_or_on_a_permanent_error() {
    let (fake, gov) = fake_and_client().await;
    let policy = RetryPolicy::default()
        .max_attempts(3)
        .initial_backoff(Duration::from_millis(1));
    let err = gov
        .retry("payments", policy, || async { Err::<(), _>("down") })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        RetryError::Failed {
            attempts: 3,
            error: "down"
        }
    ));

    let err = gov
        .retry_if(
            "payments",
            policy,
            || async { Err::<(), _>("bad request") },
            |e| *e != "bad request",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RetryError::Failed { attempts: 1, .. }));
    assert_eq!(fake.with(|s| s.acquires.len()), 4);
}

#[tokio::test]
async fn retry_stops_when_the_budget_is_exhausted() {
    let (fake, gov) = fake_and_client().await;
    fake.update(|s| {
        s.script.push_back(Ok(AcquireResponse {
            granted: true,
            lease_id: "first".into(),
            ..Default::default()
        }));
        s.script.push_back(Ok(rejection(
            RejectReason::RetryBudgetExhausted,
            Duration::from_millis(1),
        )));
    });
    let calls = AtomicU32::new(0);
    let policy = RetryPolicy::default()
        .max_attempts(10)
        .initial_backoff(Duration::from_millis(1));
    let err = gov
        .retry("payments", policy, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("failed")
        })
        .await
        .unwrap_err();
    let RetryError::Acquire {
        attempt,
        ref error,
        last_error,
    } = err
    else {
        panic!("expected a budget rejection, got {err:?}");
    };
    assert_eq!(attempt, 1);
    assert_eq!(
        error.rejection().map(|r| r.reason),
        Some(RejectReason::RetryBudgetExhausted)
    );
    assert_eq!(last_error, Some("failed"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(fake.with(|s| s.acquires.len()), 2);
}

#[tokio::test]
async fn retry_waits_out_retry_after_on_a_full_queue() {
    retry_waits_out_retry_after(RejectReason::QueueFull).await;
}

#[tokio::test]
async fn retry_waits_out_retry_after_when_rate_limited() {
    retry_waits_out_retry_after(RejectReason::RateLimited).await;
}

async fn retry_waits_out_retry_after(reason: RejectReason) {
    let (fake, gov) = fake_and_client().await;
    let retry_after = Duration::from_millis(80);
    fake.update(|s| s.script.push_back(Ok(rejection(reason, retry_after))));
    let policy = RetryPolicy::default()
        .max_attempts(3)
        .initial_backoff(Duration::from_millis(1));
    let started = Instant::now();
    let value = gov
        .retry("payments", policy, || async { Ok::<_, ()>("done") })
        .await
        .unwrap();
    assert_eq!(value, "done");
    assert!(started.elapsed() >= retry_after, "{:?}", started.elapsed());
    fake.with(|s| {
        let attempts: Vec<u32> = s.acquires.iter().map(|a| a.message.attempt).collect();
        assert_eq!(attempts, [0, 1]);
    });
}

#[tokio::test]
async fn layer_governs_each_call() {
    let (fake, gov) = fake_and_client().await;
    let inner_calls = Arc::new(AtomicU32::new(0));
    let inner = {
        let inner_calls = inner_calls.clone();
        tower::service_fn(move |n: u32| {
            inner_calls.fetch_add(1, Ordering::SeqCst);
            async move { if n == 0 { Err("zero") } else { Ok(n * 2) } }
        })
    };
    let mut svc = GovernorLayer::new(gov, "backend")
        .priority(Priority::Critical)
        .tenant("edge")
        .layer(inner);

    assert_eq!(svc.ready().await.unwrap().call(21).await.unwrap(), 42);
    let err = svc.ready().await.unwrap().call(0).await.unwrap_err();
    assert!(matches!(err, GovernedError::Inner("zero")));

    fake.update(|s| {
        s.script.push_back(Ok(rejection(
            RejectReason::QueueTimeout,
            Duration::from_millis(5),
        )))
    });
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.reason),
        Some(RejectReason::QueueTimeout)
    );
    assert_eq!(inner_calls.load(Ordering::SeqCst), 2, "rejected call ran");

    fake.wait_for("two releases", |s| s.releases.len() == 2)
        .await;
    fake.with(|s| {
        assert!(s.acquires.iter().all(|a| a.message.dependency == "backend"
            && a.message.priority == Priority::Critical as i32
            && a.message.tenant == "edge"));
        let outcomes: Vec<i32> = s.releases.iter().map(|r| r.message.outcome).collect();
        assert_eq!(outcomes, [Outcome::Success as i32, Outcome::Failure as i32]);
    });
}

#[tokio::test]
async fn layer_releases_a_dropped_call_as_cancelled() {
    let (fake, gov) = fake_and_client().await;
    let called = Arc::new(tokio::sync::Notify::new());
    let inner = {
        let called = called.clone();
        tower::service_fn(move |()| {
            let called = called.clone();
            async move {
                called.notify_one();
                std::future::pending::<Result<(), Infallible>>().await
            }
        })
    };
    let mut svc = GovernorLayer::new(gov, "backend").layer(inner);
    let call = svc.ready().await.unwrap().call(());
    tokio::select! {
        _ = call => unreachable!("pending service completed"),
        () = called.notified() => {}
    }
    fake.wait_for("the release", |s| !s.releases.is_empty())
        .await;
    assert_eq!(
        fake.with(|s| s.releases[0].message.outcome),
        Outcome::Cancelled as i32
    );
}

#[tokio::test]
async fn connects_over_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("governor-client-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("governor.sock");
    let _ = std::fs::remove_file(&path);
    let fake = Fake::new();
    fake.serve_unix(&path);
    let gov = Governor::builder()
        .fail_policy(FailPolicy::Closed)
        .connect(format!("unix://{}", path.display()))
        .unwrap();
    let permit = gov.acquire("payments").await.unwrap();
    assert_eq!(permit.lease_id(), Some("lease-1"));
    permit.release(Outcome::Success).await.unwrap();
    assert_eq!(fake.with(|s| s.releases.len()), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_sidecar_without_the_session_rpc_is_asked_with_unary_calls() {
    let (fake, gov) = fake_and_client().await;
    assert!(!gov.uses_unary_fallback().await, "nothing asked yet");
    for _ in 0..2 {
        let permit = gov.acquire("payments").await.unwrap();
        assert!(!permit.is_degraded());
        assert!(permit.release(Outcome::Success).await.unwrap());
    }
    assert!(gov.uses_unary_fallback().await);
    fake.with(|s| {
        assert_eq!(s.acquires.len(), 2, "both acquires went unary");
        assert_eq!(s.releases.len(), 2);
    });
}
