//! Traces, metrics and logs of the real binary: spans reach a real OTLP/gRPC
//! receiver joined to the caller's trace, `/metrics` parses as Prometheus
//! text with the values the test caused, and backpressure logs are
//! rate-limited.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor_integration_tests::{GovernorProcess, Signal};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
use rate_governor_proto::v1::{
    AcquireRequest, AcquireResponse, Outcome, RejectReason, ReleaseRequest,
    governor_client::GovernorClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// An OTLP/gRPC trace receiver that keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    services: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        for resource_spans in request.into_inner().resource_spans {
            if let Some(resource) = &resource_spans.resource {
                for kv in &resource.attributes {
                    if kv.key == "service.name" {
                        if let Some(Value::StringValue(name)) =
                            kv.value.as_ref().and_then(|v| v.value.clone())
                        {
                            self.services.lock().unwrap().push(name);
                        }
                    }
                }
            }
            for scope in resource_spans.scope_spans {
                self.spans.lock().unwrap().extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (receiver, addr)
    }

    /// Waits (at most ten seconds) until spans named `names` have arrived for
    /// `trace_id` and returns them by name.
    async fn wait_for(&self, trace_id: &str, names: &[&str]) -> HashMap<String, Span> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found: HashMap<String, Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| hex(&s.trace_id) == trace_id)
                .map(|s| (s.name.clone(), s.clone()))
                .collect();
            if names.iter().all(|n| found.contains_key(*n)) {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "spans {names:?} of trace {trace_id} never arrived; got {:?}",
                found.keys().collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

fn string_attribute(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(Value::StringValue(value)) => value,
        other => panic!("{key} of {}: {other:?}", span.name),
    }
}

/// No exported span carries `lease_id`, or any 16-digit piece of it, in an
/// attribute, an event, a link or its status.
fn assert_no_lease_id(spans: &[Span], lease_id: &str) {
    let pieces: Vec<&str> = (0..=lease_id.len() - 16)
        .map(|at| &lease_id[at..at + 16])
        .collect();
    let check = |what: String| {
        for piece in &pieces {
            assert!(!what.contains(piece), "a lease id piece {piece} in {what}");
        }
    };
    assert!(!spans.is_empty());
    for span in spans {
        let attributes = span
            .attributes
            .iter()
            .chain(span.events.iter().flat_map(|e| e.attributes.iter()))
            .chain(span.links.iter().flat_map(|l| l.attributes.iter()));
        for kv in attributes {
            check(format!("{} of {}: {:?}", kv.key, span.name, kv.value));
        }
        for event in &span.events {
            check(format!("event {} of {}", event.name, span.name));
        }
        check(format!("{} status {:?}", span.name, span.status));
    }
}

fn duration(span: &Span) -> Duration {
    Duration::from_nanos(span.end_time_unix_nano - span.start_time_unix_nano)
}

fn traced<T>(message: T, trace_id: &str, parent: &str) -> Request<T> {
    let mut request = Request::new(message);
    let traceparent = format!("00-{trace_id}-{parent}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
        .metadata_mut()
        .insert("tracestate", "vendor=1".parse().unwrap());
    request
}

fn acquire(dependency: &str) -> AcquireRequest {
    AcquireRequest {
        dependency: dependency.into(),
        ..Default::default()
    }
}

async fn release(client: &mut GovernorClient<Channel>, lease_id: &str, outcome: Outcome) -> bool {
    let request = ReleaseRequest {
        lease_id: lease_id.into(),
        outcome: outcome.into(),
        latency: None,
    };
    client.release(request).await.unwrap().into_inner().released
}

fn config(receiver: SocketAddr, extra: &str) -> String {
    format!(
        r#"
        [telemetry]
        otlp_endpoint = "http://{receiver}"
        service_name = "governor-under-test"
        export_delay = "50ms"
        [dependencies.db]
        max_concurrency = 1
        max_wait = "5s"
        {extra}
        "#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_request_shows_its_wait_and_its_permit_in_the_callers_trace() {
    let (receiver, addr) = Receiver::start().await;
    let gov = GovernorProcess::start(&config(addr, "max_queue = 1")).await;
    let mut client = gov.governor_client().await;

    let held = client.acquire(acquire("db")).await.unwrap().into_inner();
    let waiter = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let request = traced(
                AcquireRequest {
                    tenant: "shop".into(),
                    attempt: 0,
                    ..acquire("db")
                },
                TRACE_ID,
                PARENT_ID,
            );
            client.acquire(request).await.unwrap().into_inner()
        })
    };
    let mut admin = gov.admin_client().await;
    while admin
        .get_dependency(rate_governor_proto::v1::GetDependencyRequest { name: "db".into() })
        .await
        .unwrap()
        .into_inner()
        .queued
        == 0
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(release(&mut client, &held.lease_id, Outcome::Success).await);
    let granted: AcquireResponse = waiter.await.unwrap();
    assert!(granted.granted);
    let waited = {
        let d = granted.queue_wait.unwrap();
        Duration::new(d.seconds as u64, d.nanos as u32)
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let release_request = traced(
        ReleaseRequest {
            lease_id: granted.lease_id.clone(),
            outcome: Outcome::Failure.into(),
            latency: None,
        },
        TRACE_ID,
        PARENT_ID,
    );
    assert!(
        client
            .release(release_request)
            .await
            .unwrap()
            .into_inner()
            .released
    );

    let spans = receiver
        .wait_for(
            TRACE_ID,
            &["governor.acquire", "governor.queue_wait", "governor.permit"],
        )
        .await;
    let acquire_span = &spans["governor.acquire"];
    let queue_wait = &spans["governor.queue_wait"];
    let permit = &spans["governor.permit"];

    // Joined to the caller's trace: acquire and permit are children of the
    // caller's span, the queue wait a child of the acquire.
    assert_eq!(hex(&acquire_span.parent_span_id), PARENT_ID);
    assert_eq!(hex(&permit.parent_span_id), PARENT_ID);
    assert_eq!(queue_wait.parent_span_id, acquire_span.span_id);

    // The queue wait is the wait the client was told about.
    let gap = duration(queue_wait).abs_diff(waited);
    assert!(
        gap < Duration::from_millis(2),
        "queue_wait span {:?} vs reported {waited:?}",
        duration(queue_wait)
    );
    assert!(waited >= Duration::from_millis(100));
    // The permit starts at the grant (the end of the wait) and runs to the release.
    assert_eq!(permit.start_time_unix_nano, queue_wait.end_time_unix_nano);
    assert!(duration(permit) >= Duration::from_millis(30));

    assert_eq!(string_attribute(acquire_span, "governor.dependency"), "db");
    assert_eq!(string_attribute(acquire_span, "governor.tenant"), "shop");
    assert_eq!(
        string_attribute(acquire_span, "governor.priority"),
        "normal"
    );
    assert_eq!(
        string_attribute(acquire_span, "governor.decision"),
        "granted"
    );
    // A short handle of the lease, the same on both spans; never the id.
    let handle = string_attribute(acquire_span, "governor.lease");
    assert_eq!(handle.len(), 8, "{handle}");
    assert!(handle.bytes().all(|b| b.is_ascii_hexdigit()), "{handle}");
    assert!(
        !granted.lease_id.contains(&handle),
        "the handle is a piece of the id"
    );
    assert_eq!(attribute(acquire_span, "governor.lease_id"), None);
    assert_eq!(
        attribute(acquire_span, "governor.queue.depth"),
        Some(Value::IntValue(0))
    );
    assert_eq!(
        attribute(acquire_span, "governor.limit"),
        Some(Value::IntValue(1))
    );
    assert_eq!(
        attribute(acquire_span, "governor.in_flight"),
        Some(Value::IntValue(1))
    );
    assert_eq!(
        attribute(acquire_span, "governor.attempt"),
        Some(Value::IntValue(0))
    );
    assert_eq!(string_attribute(permit, "governor.lease"), handle);
    assert_eq!(attribute(permit, "governor.lease_id"), None);
    for lease_id in [&granted.lease_id, &held.lease_id] {
        assert_no_lease_id(&receiver.spans.lock().unwrap(), lease_id);
    }
    assert_eq!(string_attribute(permit, "governor.outcome"), "failure");
    assert_eq!(permit.status.as_ref().unwrap().code(), StatusCode::Error);
    assert!(
        receiver
            .services
            .lock()
            .unwrap()
            .iter()
            .all(|s| s == "governor-under-test")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rejections_carry_their_reason_and_expiries_end_the_permit_as_expired() {
    let (receiver, addr) = Receiver::start().await;
    let gov = GovernorProcess::start(&config(addr, "lease_ttl = \"200ms\"\nmax_queue = 0")).await;
    let mut client = gov.governor_client().await;

    let expired_trace = "11111111111111111111111111111111";
    let held = client
        .acquire(traced(acquire("db"), expired_trace, PARENT_ID))
        .await
        .unwrap()
        .into_inner();
    assert!(held.granted);

    let rejected_trace = "22222222222222222222222222222222";
    let rejected = client
        .acquire(traced(acquire("db"), rejected_trace, PARENT_ID))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.reason(), RejectReason::QueueFull);
    let spans = receiver
        .wait_for(rejected_trace, &["governor.acquire"])
        .await;
    let span = &spans["governor.acquire"];
    assert_eq!(string_attribute(span, "governor.decision"), "rejected");
    assert_eq!(
        string_attribute(span, "governor.reject_reason"),
        "queue_full"
    );
    assert!(!spans.contains_key("governor.queue_wait"), "nothing waited");
    assert!(
        !spans.contains_key("governor.permit"),
        "nothing was granted"
    );

    let spans = receiver.wait_for(expired_trace, &["governor.permit"]).await;
    let permit = &spans["governor.permit"];
    assert_eq!(
        attribute(permit, "governor.lease.expired"),
        Some(Value::BoolValue(true))
    );
    assert_eq!(permit.status.as_ref().unwrap().code(), StatusCode::Error);
    assert!(duration(permit) >= Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_traceparent_the_spans_start_a_new_trace() {
    let (receiver, addr) = Receiver::start().await;
    let gov = GovernorProcess::start(&config(addr, "")).await;
    let mut client = gov.governor_client().await;
    let granted = client.acquire(acquire("db")).await.unwrap().into_inner();
    release(&mut client, &granted.lease_id, Outcome::Success).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let roots: Vec<Span> = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == "governor.acquire")
            .cloned()
            .collect();
        if let Some(root) = roots.first() {
            assert!(root.parent_span_id.is_empty(), "a root span");
            assert_ne!(hex(&root.trace_id), "0".repeat(32));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no span arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs a path from the admin listener: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: governor\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Parses Prometheus text into `name{labels}` -> value, labels sorted.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        samples.insert(key, value);
    }
    samples
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_happened_and_readiness_follows_the_drain() {
    let mut gov = GovernorProcess::start_with_args(
        "[dependencies.db]\nmax_concurrency = 2\nmax_queue = 0\nlease_ttl = \"200ms\"",
        &["--admin-listen", "127.0.0.1:0"],
    )
    .await;
    let admin_addr = gov.admin_addr().expect("admin= in the ready line");
    let mut client = gov.governor_client().await;

    let a = client.acquire(acquire("db")).await.unwrap().into_inner();
    let _expires = client.acquire(acquire("db")).await.unwrap().into_inner();
    for _ in 0..3 {
        let rejected = client.acquire(acquire("db")).await.unwrap().into_inner();
        assert_eq!(rejected.reason(), RejectReason::QueueFull);
    }
    assert!(release(&mut client, &a.lease_id, Outcome::Timeout).await);
    let mut admin = gov.admin_client().await;
    loop {
        let db = admin
            .get_dependency(rate_governor_proto::v1::GetDependencyRequest { name: "db".into() })
            .await
            .unwrap()
            .into_inner();
        if db.expired_total == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, body) = http_get(admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    let m = parse_metrics(&body);
    let get = |key: &str| *m.get(key).unwrap_or_else(|| panic!("no {key} in\n{body}"));
    assert_eq!(
        get("governor_acquire_total{dependency=\"db\",reason=\"none\",result=\"granted\"}"),
        2.0
    );
    assert_eq!(
        get("governor_acquire_total{dependency=\"db\",reason=\"queue_full\",result=\"rejected\"}"),
        3.0
    );
    assert_eq!(
        get("governor_release_total{dependency=\"db\",outcome=\"timeout\"}"),
        1.0
    );
    assert_eq!(get("governor_lease_expired_total{dependency=\"db\"}"), 1.0);
    assert_eq!(
        get("governor_queue_wait_seconds_count{dependency=\"db\"}"),
        5.0
    );
    assert_eq!(
        get("governor_permit_hold_seconds_count{dependency=\"db\"}"),
        2.0
    );
    assert_eq!(get("governor_dependency_limit{dependency=\"db\"}"), 2.0);
    assert_eq!(get("governor_dependency_in_flight{dependency=\"db\"}"), 0.0);
    assert_eq!(get("governor_dependency_max_queue{dependency=\"db\"}"), 0.0);
    assert_eq!(get("governor_draining"), 0.0);
    // Without an Accept for OpenMetrics: the 0.0.4 text format.
    assert!(!body.contains("# EOF"), "{body}");
    assert!(
        body.contains("# TYPE governor_acquire_total counter"),
        "{body}"
    );

    assert_eq!(http_get(admin_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(admin_addr, "/readyz").await.0, 200);
    assert_eq!(http_get(admin_addr, "/nope").await.0, 404);

    // Draining (a permit still held keeps the process up): not ready.
    let held = client.acquire(acquire("db")).await.unwrap().into_inner();
    assert!(held.granted);
    gov.signal(Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while http_get(admin_addr, "/readyz").await.0 != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became unready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(http_get(admin_addr, "/healthz").await.0, 200);
    assert!(release(&mut client, &held.lease_id, Outcome::Success).await);
    assert!(gov.wait_exit(Duration::from_secs(5)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_rejections_logs_a_line_and_a_summary_not_a_line_each() {
    let gov = GovernorProcess::start_with_args(
        "[dependencies.db]\nmax_concurrency = 1\nmax_queue = 0",
        &["--log-format", "json"],
    )
    .await;
    let mut client = gov.governor_client().await;
    client.acquire(acquire("db")).await.unwrap();
    let storm = 500;
    for _ in 0..storm {
        let rejected = client.acquire(acquire("db")).await.unwrap().into_inner();
        assert_eq!(rejected.reason(), RejectReason::QueueFull);
    }
    // Every rejection is accounted for: logged in full, or counted in a
    // summary line, once the window closes (the flusher runs every second).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events: Vec<serde_json::Value> = gov
            .stderr_so_far()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .filter(|e: &serde_json::Value| e["dependency"] == "db")
            .collect();
        let full: Vec<_> = events
            .iter()
            .filter(|e| e["reason"] == "queue_full")
            .collect();
        let summarised: u64 = events
            .iter()
            .filter(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("backpressure summary"))
            })
            .map(|e| e["events"].as_u64().unwrap())
            .sum();
        if full.len() as u64 + summarised == storm {
            assert!(
                full.len() < 20,
                "{} full lines for {storm} rejections",
                full.len()
            );
            let first = full[0];
            assert_eq!(first["max_queue"], 0, "the threshold is logged");
            assert_eq!(first["limit"], 1);
            assert_eq!(first["in_flight"], 1);
            assert_eq!(first["level"], "WARN");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} full + {summarised} summarised != {storm}\n{}",
            full.len(),
            gov.stderr_so_far()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unresponsive_collector_costs_dropped_spans_not_stuck_acquires() {
    // A collector that accepts connections and never answers.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = black_hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = black_hole.accept().await {
            held.push(stream);
        }
    });
    let gov = GovernorProcess::start_with_args(
        &format!(
            "[telemetry]\notlp_endpoint = \"http://{addr}\"\nexport_queue_size = 8\nexport_batch_size = 4\nexport_delay = \"10ms\"\nexport_timeout = \"30s\"\n[dependencies.db]"
        ),
        &["--admin-listen", "127.0.0.1:0"],
    )
    .await;
    let admin_addr = gov.admin_addr().expect("admin= in the ready line");
    let mut client = gov.governor_client().await;
    for i in 0..200 {
        let trace_id = format!("{:032x}", i + 1);
        let granted = client
            .acquire(traced(acquire("db"), &trace_id, PARENT_ID))
            .await
            .unwrap()
            .into_inner();
        assert!(granted.granted);
        assert!(release(&mut client, &granted.lease_id, Outcome::Success).await);
    }
    let (_, body) = http_get(admin_addr, "/metrics").await;
    let dropped = parse_metrics(&body)["governor_trace_spans_dropped_total"];
    assert!(
        dropped > 0.0,
        "the bounded export queue dropped spans: {dropped}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_clients_trace_context_reaches_the_sidecars_spans() {
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let (receiver, addr) = Receiver::start().await;
    let gov = GovernorProcess::start(&config(addr, "")).await;
    let client = rate_governor_client::Governor::connect(gov.endpoint()).unwrap();

    let trace_id = "33333333333333333333333333333333";
    let caller = SpanContext::new(
        TraceId::from_hex(trace_id).unwrap(),
        SpanId::from_hex(PARENT_ID).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(caller);
    let permit = client
        .acquire("db")
        .into_future()
        .with_context(cx.clone())
        .await
        .unwrap();
    permit
        .release(rate_governor_client::Outcome::Success)
        .with_context(cx)
        .await
        .unwrap();

    let spans = receiver
        .wait_for(trace_id, &["governor.acquire", "governor.permit"])
        .await;
    assert_eq!(hex(&spans["governor.acquire"].parent_span_id), PARENT_ID);
    assert_eq!(
        string_attribute(&spans["governor.permit"], "governor.outcome"),
        "success"
    );
}
