//! The happy path: what a permit costs when nothing is contended, against the
//! floor (an empty gRPC call to the same server), the ledger in-process, a
//! Redis semaphore, and the same pair over an open Session stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rate_governor::ledger::{AcquireRequest, Ledger, LedgerConfig, Priority, Report};
use rate_governor_proto::v1::governor_admin_client::GovernorAdminClient;
use rate_governor_proto::v1::governor_client::GovernorClient;
use rate_governor_proto::v1::{self as pb, GetDependencyRequest, Outcome};
use serde::Serialize;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::load::{Percentiles, Run, Schedule, Spread, closed_loop, open_loop};
use crate::otlp::SpanSink;
use crate::process::{Governor, Process, Redis};
use crate::redis_sem::RedisSemaphore;
use crate::session::SessionStream;

/// One call (A0) or one acquire + release pair (the others).
#[derive(Clone, Debug)]
pub enum Op {
    /// `grpc.health.v1.Health/Check`: the floor.
    Health(HealthClient<Channel>),
    /// Acquire + Release over gRPC; with a W3C traceparent whose sampled flag
    /// is set on this share of calls, if any.
    Pair {
        client: GovernorClient<Channel>,
        traceparent: Option<f64>,
    },
    /// The Redis semaphore's acquire + release scripts.
    Redis(RedisSemaphore),
    /// Acquire + release as messages on an open Session stream; the release
    /// fire-and-forget (`id = 0`) or answered.
    Session {
        stream: SessionStream,
        answered_release: bool,
    },
}

pub const DEPENDENCY: &str = "bench-happy";

/// A5 as the targets read it: the release fire-and-forget, as the issue's
/// contract allows and a client that does not need the answer sends it.
pub const A5_LABEL: &str = "Acquire + Release on an open Session, release fire-and-forget (id 0)";
/// A5 with the release answered, for comparison.
pub const A5_ANSWERED_LABEL: &str = "Acquire + Release on an open Session, release answered";

/// No uncontended call may take this long: a hung server fails the arm
/// instead of hanging the harness.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl Op {
    pub fn call(&self) -> impl Future<Output = Result<(), String>> + Send + 'static + use<> {
        let op = self.clone();
        async move {
            tokio::time::timeout(CALL_TIMEOUT, op.run())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")))
        }
    }

    async fn run(self) -> Result<(), String> {
        match self {
            Op::Health(mut client) => {
                let response = client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map_err(|s| format!("Health/Check: {s}"))?;
                if response.get_ref().status == ServingStatus::Serving as i32 {
                    Ok(())
                } else {
                    Err(format!(
                        "Health/Check answered {:?}",
                        response.get_ref().status
                    ))
                }
            }
            Op::Pair {
                mut client,
                traceparent,
            } => {
                let parent = traceparent.map(|share| {
                    let trace_id: u128 = rand::random::<u128>() | 1;
                    let sampled = rand::random::<f64>() < share;
                    (trace_id, sampled)
                });
                let with_parent = |request: &mut tonic::metadata::MetadataMap| {
                    if let Some((trace_id, sampled)) = parent {
                        let span_id = rand::random::<u64>() | 1;
                        let flags = if sampled { "01" } else { "00" };
                        let value = format!("00-{trace_id:032x}-{span_id:016x}-{flags}");
                        if let Ok(value) = MetadataValue::try_from(value) {
                            request.insert("traceparent", value);
                        }
                    }
                };
                let mut acquire = tonic::Request::new(pb::AcquireRequest {
                    dependency: DEPENDENCY.into(),
                    ..Default::default()
                });
                acquire.set_timeout(Duration::from_secs(5));
                with_parent(acquire.metadata_mut());
                let response = client
                    .acquire(acquire)
                    .await
                    .map_err(|s| format!("Acquire: {s}"))?;
                let response = response.into_inner();
                if !response.granted {
                    return Err(format!("Acquire not granted: reason {}", response.reason));
                }
                let mut release = tonic::Request::new(pb::ReleaseRequest {
                    lease_id: response.lease_id,
                    outcome: Outcome::Success as i32,
                    latency: None,
                });
                with_parent(release.metadata_mut());
                let released = client
                    .release(release)
                    .await
                    .map_err(|s| format!("Release: {s}"))?;
                if released.get_ref().released {
                    Ok(())
                } else {
                    Err("Release answered released=false for a live lease".into())
                }
            }
            Op::Redis(semaphore) => semaphore.pair().await,
            Op::Session {
                stream,
                answered_release,
            } => stream.pair(answered_release).await,
        }
    }
}

/// After a run against a governor: nothing of [`DEPENDENCY`] may still be
/// held. A session's fire-and-forget releases are flushed first with one
/// answered pair on the same stream (the server handles a stream's releases
/// in order, so its answer means every earlier release was applied).
async fn leak_check(
    admin: &mut GovernorAdminClient<Channel>,
    session: Option<&SessionStream>,
) -> Result<(), String> {
    if let Some(stream) = session {
        tokio::time::timeout(CALL_TIMEOUT, stream.pair(true))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")))
            .map_err(|e| format!("leak check: flushing pair on the session: {e}"))?;
    }
    let status = match admin
        .get_dependency(GetDependencyRequest {
            name: DEPENDENCY.into(),
        })
        .await
    {
        Ok(status) => status.into_inner(),
        // Not created yet (only A0 ran so far) or evicted idle: nothing held.
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
        Err(s) => return Err(format!("leak check: GetDependency {DEPENDENCY}: {s}")),
    };
    if status.in_flight == 0 && status.queued == 0 {
        Ok(())
    } else {
        Err(format!(
            "leak check: {DEPENDENCY} has in_flight {} and queued {} after the run (both must be 0)",
            status.in_flight, status.queued
        ))
    }
}

async fn ledger_pair(ledger: &Ledger) -> Result<(), String> {
    let request = AcquireRequest {
        dependency: DEPENDENCY,
        tenant: None,
        route: None,
        attempt: 0,
        priority: Priority::Normal,
        max_wait: None,
        degradable: false,
    };
    let decision = ledger.acquire(&request).await.map_err(|e| e.to_string())?;
    let grant = decision
        .granted()
        .ok_or("ledger did not grant an idle dependency")?;
    ledger
        .release(&grant.lease, Report::default())
        .ok_or("ledger lost a live lease")?;
    Ok(())
}

/// How long and how hard each happy-path arm runs.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct HappyPlan {
    /// Open-loop rate, calls (or pairs) per second.
    pub rate: f64,
    pub warmup: Duration,
    pub measure: Duration,
    /// Closed-loop callers for the saturation runs.
    pub concurrency: usize,
    pub saturation_measure: Duration,
    pub repeats: usize,
    /// How long to wait for the last span exports after a traced arm.
    pub span_settle: Duration,
    /// In-process ledger pairs per repeat.
    pub ledger_pairs: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Transport {
    Tcp,
    Uds,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Uds => "Unix socket",
        }
    }
}

/// One open-loop repeat of one arm.
#[derive(Clone, Debug, Serialize)]
pub struct OpenRepeat {
    pub latency: Percentiles,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Calls sent in the whole run (warm-up included), for CPU accounting.
    pub sent: u64,
    pub server_cpu_seconds: f64,
}

/// One closed-loop repeat.
#[derive(Clone, Debug, Serialize)]
pub struct SaturationRepeat {
    pub throughput: f64,
    pub server_cores: f64,
    pub per_server_core: f64,
    pub latency: Percentiles,
    pub errors: u64,
    pub first_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Arm {
    pub id: &'static str,
    pub label: &'static str,
    pub transport: Transport,
    /// False when the arm could not measure what it is about (e.g. no tracing in this build).
    pub available: bool,
    pub note: Option<String>,
    pub server: String,
    pub open: Vec<OpenRepeat>,
    pub saturation: Vec<SaturationRepeat>,
    pub server_rss_kib: u64,
    pub server_hwm_kib: u64,
}

impl Arm {
    pub fn samples(&self) -> u64 {
        self.open.iter().map(|r| r.latency.count).sum()
    }
    pub fn errors(&self) -> u64 {
        self.open.iter().map(|r| r.errors).sum::<u64>()
            + self.saturation.iter().map(|r| r.errors).sum::<u64>()
    }
    pub fn first_error(&self) -> Option<&str> {
        self.open
            .iter()
            .filter_map(|r| r.first_error.as_deref())
            .chain(
                self.saturation
                    .iter()
                    .filter_map(|r| r.first_error.as_deref()),
            )
            .next()
    }
    pub fn p50(&self) -> Spread {
        Spread::over(&self.open, |r| r.latency.p50_us)
    }
    pub fn p99(&self) -> Spread {
        Spread::over(&self.open, |r| r.latency.p99_us)
    }
    pub fn p999(&self) -> Spread {
        Spread::over(&self.open, |r| r.latency.p999_us)
    }
    /// Sidecar CPU cores per 1000 calls a second, from the totals of all
    /// repeats (the same as CPU seconds per 1000 calls).
    pub fn cpu_per_1k(&self) -> f64 {
        let cpu: f64 = self.open.iter().map(|r| r.server_cpu_seconds).sum();
        let sent: u64 = self.open.iter().map(|r| r.sent).sum();
        if sent == 0 {
            f64::NAN
        } else {
            cpu * 1000.0 / sent as f64
        }
    }
    pub fn throughput(&self) -> Spread {
        Spread::over(&self.saturation, |r| r.throughput)
    }
    pub fn server_cores(&self) -> Spread {
        Spread::over(&self.saturation, |r| r.server_cores)
    }
    pub fn per_server_core(&self) -> Spread {
        Spread::over(&self.saturation, |r| r.per_server_core)
    }
}

/// The in-process ledger arm (A3).
#[derive(Clone, Debug, Serialize)]
pub struct LedgerArm {
    pub repeats: Vec<SaturationRepeat>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub transport: Transport,
    /// A1 p50 / A0 p50, per repeat.
    pub p50: Spread,
    pub p99: Spread,
}

/// What the OTLP sink of one traced sidecar received over the whole run.
#[derive(Clone, Debug, Serialize)]
pub struct SpanCount {
    /// The share of pairs sent with the sampled flag.
    pub sampled_share: f64,
    pub pairs: u64,
    pub spans: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct HappyResults {
    pub plan: HappyPlan,
    pub arms: Vec<Arm>,
    pub ledger: LedgerArm,
    pub ratios: Vec<Ratio>,
    pub tracing_available: bool,
    pub spans: Vec<SpanCount>,
    pub redis: Option<String>,
}

/// The servers the happy path runs against.
#[derive(Debug)]
pub struct Servers<'a> {
    pub plain: &'a Governor,
    pub traced_1pct: (&'a Governor, &'a SpanSink),
    pub traced_all: (&'a Governor, &'a SpanSink),
    pub redis: Option<&'a Redis>,
    pub ticks: f64,
}

/// An arm to set up: id, label, operation, server process, span sink,
/// whether it also runs at saturation, the server's name, and the admin
/// client the leak check after each run asks (None: not a governor).
type Entry<'a> = (
    &'static str,
    &'static str,
    Op,
    &'a Process,
    Option<&'a SpanSink>,
    bool,
    String,
    Option<GovernorAdminClient<Channel>>,
);

struct Slot<'a> {
    index: usize,
    op: Op,
    process: &'a Process,
    sink: Option<&'a SpanSink>,
    saturate: bool,
    admin: Option<GovernorAdminClient<Channel>>,
}

impl Slot<'_> {
    fn session(&self) -> Option<&SessionStream> {
        match &self.op {
            Op::Session { stream, .. } => Some(stream),
            _ => None,
        }
    }

    /// Errors of the run that no call was charged with: the session's
    /// strays, then the leak check. Counted into the run's errors.
    async fn after_run(&mut self) -> (u64, Option<String>) {
        let (mut errors, mut first) = self.session().map_or((0, None), SessionStream::take_stray);
        let session = self.session().cloned();
        if let Some(admin) = self.admin.as_mut()
            && let Err(e) = leak_check(admin, session.as_ref()).await
        {
            errors += 1;
            first.get_or_insert(e);
        }
        (errors, first)
    }
}

/// Runs the happy-path arms; with `only` non-empty, just the arms whose id
/// it names (for profiling one arm; targets missing a baseline then read
/// "not measured").
pub async fn run(
    servers: &Servers<'_>,
    plan: &HappyPlan,
    only: &[String],
    log: &(dyn Fn(&str) + Sync),
) -> Result<HappyResults, String> {
    let mut arms: Vec<Arm> = Vec::new();
    let mut slots: Vec<Slot<'_>> = Vec::new();
    let redis_ops = match servers.redis {
        Some(redis) => {
            let tcp = RedisSemaphore::connect(
                &format!("redis://127.0.0.1:{}/", redis.port),
                "bench:happy:tcp",
                64,
                30_000,
            )
            .await?;
            let uds = RedisSemaphore::connect(
                &format!("redis+unix://{}", redis.socket.display()),
                "bench:happy:uds",
                64,
                30_000,
            )
            .await?;
            Some((tcp, uds))
        }
        None => None,
    };
    for transport in [Transport::Tcp, Transport::Uds] {
        let connect = |governor: &Governor| {
            let grpc = governor.grpc;
            let uds = governor.uds.clone();
            async move {
                match transport {
                    Transport::Tcp => crate::process::tcp_channel(grpc).await,
                    Transport::Uds => crate::process::uds_channel(&uds).await,
                }
            }
        };
        let plain = connect(servers.plain).await?;
        let one = connect(servers.traced_1pct.0).await?;
        let all = connect(servers.traced_all.0).await?;
        let admin = |channel: &Channel| Some(GovernorAdminClient::new(channel.clone()));
        // One Session stream on the load connection, open for the whole run;
        // a sidecar without the Session RPC (an older build) gets A5 marked
        // not available, any other failure fails the run.
        let session = match SessionStream::open(plain.clone(), DEPENDENCY).await {
            Ok(stream) => Some(stream),
            Err(status) if status.code() == tonic::Code::Unimplemented => None,
            Err(status) => return Err(format!("Session over {}: {status}", transport.as_str())),
        };
        let entries: Vec<Entry<'_>> = vec![
            (
                "A0",
                "empty gRPC call (Health/Check)",
                Op::Health(HealthClient::new(plain.clone())),
                &servers.plain.process,
                None,
                true,
                "governor".into(),
                admin(&plain),
            ),
            (
                "A1",
                "Acquire + Release",
                Op::Pair {
                    client: GovernorClient::new(plain.clone()),
                    traceparent: None,
                },
                &servers.plain.process,
                None,
                true,
                "governor".into(),
                admin(&plain),
            ),
            (
                "A2",
                "Acquire + Release, tracing off (traceparent sent)",
                Op::Pair {
                    client: GovernorClient::new(plain.clone()),
                    traceparent: Some(1.0),
                },
                &servers.plain.process,
                None,
                false,
                "governor".into(),
                admin(&plain),
            ),
            (
                "A2",
                "Acquire + Release, tracing sampled at 1%",
                Op::Pair {
                    client: GovernorClient::new(one.clone()),
                    traceparent: Some(0.01),
                },
                &servers.traced_1pct.0.process,
                Some(servers.traced_1pct.1),
                false,
                "governor (OTLP, 1%)".into(),
                admin(&one),
            ),
            (
                "A2",
                "Acquire + Release, tracing sampled at 100%",
                Op::Pair {
                    client: GovernorClient::new(all.clone()),
                    traceparent: Some(1.0),
                },
                &servers.traced_all.0.process,
                Some(servers.traced_all.1),
                false,
                "governor (OTLP, 100%)".into(),
                admin(&all),
            ),
        ];
        let mut entries = entries;
        let mut unavailable = Vec::new();
        match session {
            Some(session) => entries.extend([
                (
                    "A5",
                    A5_LABEL,
                    Op::Session {
                        stream: session.clone(),
                        answered_release: false,
                    },
                    &servers.plain.process,
                    None,
                    true,
                    "governor".into(),
                    admin(&plain),
                ),
                (
                    "A5",
                    A5_ANSWERED_LABEL,
                    Op::Session {
                        stream: session,
                        answered_release: true,
                    },
                    &servers.plain.process,
                    None,
                    true,
                    "governor".into(),
                    admin(&plain),
                ),
            ]),
            None => unavailable.extend([A5_LABEL, A5_ANSWERED_LABEL]),
        }
        if let Some((tcp, uds)) = &redis_ops {
            let op = match transport {
                Transport::Tcp => tcp.clone(),
                Transport::Uds => uds.clone(),
            };
            let process = &servers.redis.expect("redis ops imply redis").process;
            entries.push((
                "A4",
                "Redis semaphore (Lua acquire + release)",
                Op::Redis(op),
                process,
                None,
                true,
                "redis-server".into(),
                None,
            ));
        }
        for (id, label, op, process, sink, saturate, server, admin) in entries {
            if !only.is_empty() && !only.iter().any(|o| o.eq_ignore_ascii_case(id)) {
                continue;
            }
            slots.push(Slot {
                index: arms.len(),
                op,
                process,
                sink,
                saturate,
                admin,
            });
            arms.push(Arm {
                id,
                label,
                transport,
                available: true,
                note: None,
                server,
                open: Vec::new(),
                saturation: Vec::new(),
                server_rss_kib: 0,
                server_hwm_kib: 0,
            });
        }
        if !only.is_empty() && !only.iter().any(|o| o.eq_ignore_ascii_case("A5")) {
            unavailable.clear();
        }
        for label in unavailable {
            arms.push(Arm {
                id: "A5",
                label,
                transport,
                available: false,
                note: Some("Session not available: this sidecar answers UNIMPLEMENTED".into()),
                server: "governor".into(),
                open: Vec::new(),
                saturation: Vec::new(),
                server_rss_kib: 0,
                server_hwm_kib: 0,
            });
        }
    }

    let ledger = Arc::new(Ledger::new(LedgerConfig::default()));
    let mut ledger_arm = LedgerArm {
        repeats: Vec::new(),
    };
    let schedule = Schedule {
        rate: plan.rate,
        warmup: plan.warmup,
        measure: plan.measure,
    };
    let sent = (plan.rate * (plan.warmup + plan.measure).as_secs_f64()).round() as u64;

    for repeat in 0..plan.repeats {
        log(&format!(
            "  happy path: repeat {}/{}",
            repeat + 1,
            plan.repeats
        ));
        // Rotate the order every repeat so drift on a shared machine does not
        // always favour the same arm.
        let n = slots.len();
        for k in 0..n {
            let slot = &mut slots[(k + repeat) % n];
            let cpu_before = slot.process.cpu_seconds(servers.ticks);
            let op = slot.op.clone();
            let run = open_loop(schedule, move || op.call()).await;
            let cpu = slot.process.cpu_seconds(servers.ticks) - cpu_before;
            let (errors, first_error) = slot.after_run().await;
            arms[slot.index].open.push(OpenRepeat {
                latency: Percentiles::of(&run.hist),
                errors: run.errors + errors,
                first_error: run.first_error.clone().or(first_error),
                sent,
                server_cpu_seconds: cpu,
            });
        }
        for slot in slots.iter_mut().filter(|s| s.saturate) {
            let cpu_before = slot.process.cpu_seconds(servers.ticks);
            let started = Instant::now();
            let op = slot.op.clone();
            let run = closed_loop(
                plan.concurrency,
                plan.warmup,
                plan.saturation_measure,
                move || op.call(),
            )
            .await;
            let cores = (slot.process.cpu_seconds(servers.ticks) - cpu_before)
                / started.elapsed().as_secs_f64();
            let mut repeat = saturation(&run, cores);
            let (errors, first_error) = slot.after_run().await;
            repeat.errors += errors;
            if repeat.first_error.is_none() {
                repeat.first_error = first_error;
            }
            arms[slot.index].saturation.push(repeat);
        }
        let l = ledger.clone();
        let started = Instant::now();
        let pairs = plan.ledger_pairs;
        let mut hist = crate::load::histogram();
        let mut errors = 0u64;
        let mut first_error = None;
        for _ in 0..pairs {
            let t = Instant::now();
            match ledger_pair(&l).await {
                Ok(()) => crate::load::record(&mut hist, t.elapsed()),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let throughput = hist.len() as f64 / elapsed;
        ledger_arm.repeats.push(SaturationRepeat {
            throughput,
            server_cores: 1.0,
            per_server_core: throughput,
            latency: Percentiles::of(&hist),
            errors,
            first_error,
        });
    }

    for slot in &slots {
        let (rss, hwm) = slot.process.memory_kib();
        let arm = &mut arms[slot.index];
        arm.server_rss_kib = rss;
        arm.server_hwm_kib = hwm;
    }
    // The sidecar exports in batches: wait for the last one, then count.
    let mut spans = Vec::new();
    for (sink, share) in [(servers.traced_1pct.1, 0.01), (servers.traced_all.1, 1.0)] {
        let pairs = slots
            .iter()
            .filter(|s| s.sink.is_some_and(|k| std::ptr::eq(k, sink)))
            .map(|s| arms[s.index].open.iter().map(|r| r.sent).sum::<u64>())
            .sum();
        let count = sink
            .settle(Duration::from_millis(1200), plan.span_settle)
            .await;
        spans.push(SpanCount {
            sampled_share: share,
            pairs,
            spans: count,
        });
    }
    let traced_spans = spans.last().map_or(0, |s| s.spans);
    let tracing_available = traced_spans > 0;
    if !tracing_available {
        for arm in arms.iter_mut().filter(|a| a.label.contains("sampled at")) {
            arm.available = false;
            arm.note = Some(
                "tracing not available in this build: no span reached the OTLP sink at 100% sampling"
                    .into(),
            );
        }
    }

    let mut ratios = Vec::new();
    for transport in [Transport::Tcp, Transport::Uds] {
        let find = |id: &str| arms.iter().find(|a| a.id == id && a.transport == transport);
        if let (Some(a0), Some(a1)) = (find("A0"), find("A1")) {
            let per = |f: fn(&Percentiles) -> f64| {
                let v: Vec<f64> = a0
                    .open
                    .iter()
                    .zip(&a1.open)
                    .map(|(x, y)| f(&y.latency) / f(&x.latency))
                    .collect();
                Spread::of(&v)
            };
            ratios.push(Ratio {
                transport,
                p50: per(|p| p.p50_us),
                p99: per(|p| p.p99_us),
            });
        }
    }
    Ok(HappyResults {
        plan: *plan,
        arms,
        ledger: ledger_arm,
        ratios,
        tracing_available,
        spans,
        redis: servers.redis.map(|r| r.version.clone()),
    })
}

fn saturation(run: &Run, server_cores: f64) -> SaturationRepeat {
    let throughput = run.throughput();
    SaturationRepeat {
        throughput,
        server_cores,
        per_server_core: if server_cores > 0.0 {
            throughput / server_cores
        } else {
            f64::NAN
        },
        latency: Percentiles::of(&run.hist),
        errors: run.errors,
        first_error: run.first_error.clone(),
    }
}
