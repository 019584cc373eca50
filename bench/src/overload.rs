//! Overload and retry storms: a simulated downstream of known capacity,
//! offered more than it can take, with and without the governor in front.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use rate_governor_proto::v1::governor_client::GovernorClient;
use rate_governor_proto::v1::{AcquireRequest, Outcome, RejectReason, ReleaseRequest};
use serde::Serialize;
use tonic::transport::Channel;

use crate::downstream::Downstream;
use crate::load::{Percentiles, Schedule, Spread, histogram, record};

pub const OVERLOAD_DEPENDENCY: &str = "bench-downstream";
pub const STORM_BUDGET: &str = "bench-storm-budget";
pub const STORM_UNLIMITED: &str = "bench-storm-unlimited";

/// The downstream, the offered loads and how the governor is set up.
#[derive(Clone, Debug, Serialize)]
pub struct OverloadPlan {
    pub concurrency: usize,
    pub service_ms: f64,
    pub slo_ms: f64,
    pub client_timeout_ms: f64,
    pub multiples: Vec<f64>,
    pub max_queue: u32,
    pub max_wait_ms: u64,
    pub warmup: Duration,
    pub measure: Duration,
    pub repeats: usize,
}

impl OverloadPlan {
    pub fn capacity(&self) -> f64 {
        self.concurrency as f64 * 1000.0 / self.service_ms
    }
    fn service(&self) -> Duration {
        Duration::from_secs_f64(self.service_ms / 1000.0)
    }
    fn slo(&self) -> Duration {
        Duration::from_secs_f64(self.slo_ms / 1000.0)
    }
    fn client_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.client_timeout_ms / 1000.0)
    }

    /// The governor's config for the overload and retry-storm dependencies.
    pub fn governor_config(&self, storm: &StormPlan) -> String {
        format!(
            r#"[server]
shutdown_grace = "1s"

[limits]
allow_unknown_dependencies = true

[dependencies.{OVERLOAD_DEPENDENCY}]
max_concurrency = {concurrency}
max_queue = {max_queue}
max_wait = "{max_wait}ms"
lease_ttl = "10s"

[dependencies.{STORM_BUDGET}]
max_concurrency = 256
max_queue = 256
max_wait = "100ms"
lease_ttl = "10s"
retry_budget = {{ ratio = {ratio}, min_per_second = {min_per_second}, ttl = "{ttl}s" }}

[dependencies.{STORM_UNLIMITED}]
max_concurrency = 256
max_queue = 256
max_wait = "100ms"
lease_ttl = "10s"
retry_budget = {{ ratio = 1000.0, min_per_second = 1000000, ttl = "{ttl}s" }}
"#,
            concurrency = self.concurrency,
            max_queue = self.max_queue,
            max_wait = self.max_wait_ms,
            ratio = storm.budget_ratio,
            min_per_second = storm.budget_min_per_second,
            ttl = storm.budget_ttl_s,
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Guard {
    /// Straight to the downstream.
    None,
    /// Acquire from the governor first (real binary, real gRPC).
    Governor,
}

impl Guard {
    pub fn as_str(self) -> &'static str {
        match self {
            Guard::None => "no governor",
            Guard::Governor => "governor",
        }
    }
}

#[derive(Debug)]
struct Tally {
    admitted: Histogram<u64>,
    rejections: Histogram<u64>,
    queue_wait: Histogram<u64>,
    sent: u64,
    ok: u64,
    within_slo: u64,
    timeouts: u64,
    failures: u64,
    errors: u64,
    first_error: Option<String>,
    reasons: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            admitted: histogram(),
            rejections: histogram(),
            queue_wait: histogram(),
            sent: 0,
            ok: 0,
            within_slo: 0,
            timeouts: 0,
            failures: 0,
            errors: 0,
            first_error: None,
            reasons: BTreeMap::new(),
        }
    }
}

/// One run of one offered load.
#[derive(Clone, Debug, Serialize)]
pub struct OverloadRepeat {
    pub offered_rate: f64,
    /// Capacity from the service times the downstream actually produced.
    pub capacity: f64,
    pub sent: u64,
    pub ok: u64,
    pub within_slo: u64,
    pub goodput_rate: f64,
    /// Goodput as a share of the (effective) capacity.
    pub goodput_share: f64,
    pub timeouts: u64,
    pub failures: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub rejected: BTreeMap<String, u64>,
    /// Client-side latency of admitted calls (timeouts count at the timeout).
    pub admitted: Percentiles,
    /// Client-side latency of rejections.
    pub rejections: Percentiles,
    /// The governor's reported queue wait, for every answered Acquire.
    pub queue_wait: Percentiles,
    pub downstream_calls: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OverloadPoint {
    pub multiple: f64,
    pub guard: Guard,
    pub repeats: Vec<OverloadRepeat>,
}

impl OverloadPoint {
    fn spread(&self, f: impl Fn(&OverloadRepeat) -> f64) -> Spread {
        Spread::of(&self.repeats.iter().map(f).collect::<Vec<_>>())
    }
    pub fn goodput_share(&self) -> Spread {
        self.spread(|r| r.goodput_share)
    }
    pub fn admitted_p99_ms(&self) -> Spread {
        self.spread(|r| {
            if r.admitted.count > 0 {
                r.admitted.p99_us / 1000.0
            } else {
                f64::NAN
            }
        })
    }
    pub fn admitted_p50_ms(&self) -> Spread {
        self.spread(|r| {
            if r.admitted.count > 0 {
                r.admitted.p50_us / 1000.0
            } else {
                f64::NAN
            }
        })
    }
    pub fn rejection_p99_ms(&self) -> Spread {
        self.spread(|r| {
            if r.rejections.count > 0 {
                r.rejections.p99_us / 1000.0
            } else {
                f64::NAN
            }
        })
    }
    pub fn rejected_share(&self) -> Spread {
        self.spread(|r| {
            let rejected: u64 = r.rejected.values().sum();
            if r.sent == 0 {
                f64::NAN
            } else {
                rejected as f64 / r.sent as f64
            }
        })
    }
    pub fn samples(&self) -> u64 {
        self.repeats.iter().map(|r| r.sent).sum()
    }
}

/// A reject reason's name without its prefix, for reports.
pub(crate) fn reason_name(reason: i32) -> String {
    RejectReason::try_from(reason)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("REJECT_REASON_")
                .to_owned()
        })
        .unwrap_or_else(|_| format!("reason {reason}"))
}

pub(crate) async fn release(
    client: &mut GovernorClient<Channel>,
    lease_id: String,
    outcome: Outcome,
) -> Result<(), String> {
    let mut request = tonic::Request::new(ReleaseRequest {
        lease_id,
        outcome: outcome as i32,
        latency: None,
    });
    request.set_timeout(Duration::from_secs(5));
    let released = client
        .release(request)
        .await
        .map_err(|s| format!("Release: {s}"))?;
    if released.get_ref().released {
        Ok(())
    } else {
        Err("Release answered released=false for a live lease".into())
    }
}

/// One offered load through one guard.
pub async fn run_point(
    plan: &OverloadPlan,
    multiple: f64,
    guard: Guard,
    client: &GovernorClient<Channel>,
) -> OverloadRepeat {
    let downstream = Arc::new(Downstream::new(plan.concurrency, plan.service(), 0.0));
    let rate = plan.capacity() * multiple;
    let tally = Arc::new(Mutex::new(Tally::new()));
    let (slo, timeout) = (plan.slo(), plan.client_timeout());
    let schedule = Schedule {
        rate,
        warmup: plan.warmup,
        measure: plan.measure,
    };
    schedule
        .drive(timeout + Duration::from_secs(2), |intended, measured| {
            let downstream = downstream.clone();
            let tally = tally.clone();
            let mut client = client.clone();
            async move {
                let mut lease = None;
                let mut rejected_reason = None;
                let mut queue_wait = None;
                let mut error = None;
                let mut gave_up = false;
                if guard == Guard::Governor {
                    let mut request = tonic::Request::new(AcquireRequest {
                        dependency: OVERLOAD_DEPENDENCY.into(),
                        ..Default::default()
                    });
                    request.set_timeout(timeout);
                    match client.acquire(request).await {
                        Ok(response) => {
                            let r = response.into_inner();
                            queue_wait = r.queue_wait.and_then(|d| Duration::try_from(d).ok());
                            if r.granted {
                                lease = Some(r.lease_id);
                            } else {
                                rejected_reason = Some(reason_name(r.reason));
                            }
                        }
                        // The caller's own deadline ran out first: a timeout
                        // under overload, not a harness failure.
                        Err(status)
                            if matches!(
                                status.code(),
                                tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                            ) =>
                        {
                            gave_up = true;
                        }
                        Err(status) => error = Some(format!("Acquire: {status}")),
                    }
                }
                let mut outcome = None;
                if error.is_none() && rejected_reason.is_none() && !gave_up {
                    let remaining = timeout.saturating_sub(intended.elapsed());
                    let answer = tokio::time::timeout(remaining, downstream.call()).await;
                    outcome = Some(match answer {
                        Ok(Ok(true)) => Outcome::Success,
                        Ok(_) => Outcome::Failure,
                        Err(_) => Outcome::Timeout,
                    });
                }
                let latency = intended.elapsed();
                if let (Some(lease), Some(outcome)) = (lease, outcome) {
                    if let Err(e) = release(&mut client, lease, outcome).await {
                        error.get_or_insert(e);
                    }
                }
                if !measured {
                    return;
                }
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                t.sent += 1;
                if let Some(wait) = queue_wait {
                    record(&mut t.queue_wait, wait);
                }
                if let Some(e) = error {
                    t.errors += 1;
                    t.first_error.get_or_insert(e);
                } else if gave_up {
                    t.timeouts += 1;
                } else if let Some(reason) = rejected_reason {
                    record(&mut t.rejections, latency);
                    *t.reasons.entry(reason).or_insert(0) += 1;
                } else if let Some(outcome) = outcome {
                    record(&mut t.admitted, latency);
                    match outcome {
                        Outcome::Success => {
                            t.ok += 1;
                            if latency <= slo {
                                t.within_slo += 1;
                            }
                        }
                        Outcome::Timeout => t.timeouts += 1,
                        _ => t.failures += 1,
                    }
                }
            }
        })
        .await;
    let capacity = downstream.effective_capacity();
    let downstream_calls = downstream.calls.load(std::sync::atomic::Ordering::Relaxed);
    downstream.shutdown().await;
    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
    let goodput_rate = t.within_slo as f64 / plan.measure.as_secs_f64();
    OverloadRepeat {
        offered_rate: rate,
        capacity,
        sent: t.sent,
        ok: t.ok,
        within_slo: t.within_slo,
        goodput_rate,
        goodput_share: goodput_rate / capacity,
        timeouts: t.timeouts,
        failures: t.failures,
        errors: t.errors,
        first_error: t.first_error.clone(),
        rejected: t.reasons.clone(),
        admitted: Percentiles::of(&t.admitted),
        rejections: Percentiles::of(&t.rejections),
        queue_wait: Percentiles::of(&t.queue_wait),
        downstream_calls,
    }
}

pub async fn run(
    plan: &OverloadPlan,
    client: &GovernorClient<Channel>,
    log: &(dyn Fn(&str) + Sync),
) -> Vec<OverloadPoint> {
    let mut points: Vec<OverloadPoint> = Vec::new();
    for &multiple in &plan.multiples {
        for guard in [Guard::None, Guard::Governor] {
            points.push(OverloadPoint {
                multiple,
                guard,
                repeats: Vec::new(),
            });
        }
    }
    for repeat in 0..plan.repeats {
        for point in points.iter_mut() {
            log(&format!(
                "  overload: {}x offered, {}, repeat {}/{}",
                point.multiple,
                point.guard.as_str(),
                repeat + 1,
                plan.repeats
            ));
            let r = run_point(plan, point.multiple, point.guard, client).await;
            point.repeats.push(r);
        }
    }
    points
}

/// The retry storm: a downstream in an outage (every call fails, fast), and
/// clients that retry each failure up to `retries` times.
#[derive(Clone, Debug, Serialize)]
pub struct StormPlan {
    /// First attempts a second.
    pub rate: f64,
    pub retries: u32,
    pub fail_probability: f64,
    pub service_ms: f64,
    pub concurrency: usize,
    pub budget_ratio: f64,
    pub budget_min_per_second: u32,
    pub budget_ttl_s: u64,
    pub warmup: Duration,
    pub measure: Duration,
    pub repeats: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StormRepeat {
    pub first_attempts: u64,
    pub retries_asked: u64,
    pub downstream_calls: u64,
    pub budget_rejections: u64,
    pub other_rejections: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Downstream calls attempted / first attempts.
    pub amplification: f64,
    /// Acquires (first attempts and retries) / first attempts.
    pub attempt_amplification: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StormArm {
    pub budget: bool,
    pub dependency: &'static str,
    pub repeats: Vec<StormRepeat>,
}

impl StormArm {
    pub fn amplification(&self) -> Spread {
        Spread::over(&self.repeats, |r| r.amplification)
    }
    pub fn attempt_amplification(&self) -> Spread {
        Spread::over(&self.repeats, |r| r.attempt_amplification)
    }
    pub fn samples(&self) -> u64 {
        self.repeats.iter().map(|r| r.first_attempts).sum()
    }
}

async fn storm_once(
    plan: &StormPlan,
    dependency: &'static str,
    client: &GovernorClient<Channel>,
) -> StormRepeat {
    let downstream = Arc::new(Downstream::new(
        plan.concurrency,
        Duration::from_secs_f64(plan.service_ms / 1000.0),
        plan.fail_probability,
    ));
    let tally = Arc::new(Mutex::new(StormRepeat::default()));
    let retries = plan.retries;
    let schedule = Schedule {
        rate: plan.rate,
        warmup: plan.warmup,
        measure: plan.measure,
    };
    schedule
        .drive(Duration::from_secs(5), |_, measured| {
            let downstream = downstream.clone();
            let tally = tally.clone();
            let mut client = client.clone();
            async move {
                let mut s = StormRepeat {
                    first_attempts: 1,
                    ..Default::default()
                };
                for attempt in 0..=retries {
                    if attempt > 0 {
                        s.retries_asked += 1;
                    }
                    let mut request = tonic::Request::new(AcquireRequest {
                        dependency: dependency.into(),
                        attempt,
                        ..Default::default()
                    });
                    request.set_timeout(Duration::from_secs(2));
                    let r = match client.acquire(request).await {
                        Ok(r) => r.into_inner(),
                        Err(status) => {
                            s.errors += 1;
                            s.first_error.get_or_insert(format!("Acquire: {status}"));
                            break;
                        }
                    };
                    if !r.granted {
                        if r.reason == RejectReason::RetryBudgetExhausted as i32 {
                            // The budget says stop: no more retries for this call.
                            s.budget_rejections += 1;
                            break;
                        }
                        s.other_rejections += 1;
                        continue;
                    }
                    s.downstream_calls += 1;
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_secs(1), downstream.call()).await,
                        Ok(Ok(true))
                    );
                    let outcome = if ok {
                        Outcome::Success
                    } else {
                        Outcome::Failure
                    };
                    if let Err(e) = release(&mut client, r.lease_id, outcome).await {
                        s.errors += 1;
                        s.first_error.get_or_insert(e);
                    }
                    if ok {
                        break;
                    }
                }
                if measured {
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    t.first_attempts += s.first_attempts;
                    t.retries_asked += s.retries_asked;
                    t.downstream_calls += s.downstream_calls;
                    t.budget_rejections += s.budget_rejections;
                    t.other_rejections += s.other_rejections;
                    t.errors += s.errors;
                    if t.first_error.is_none() {
                        t.first_error = s.first_error;
                    }
                }
            }
        })
        .await;
    downstream.shutdown().await;
    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let first = t.first_attempts.max(1) as f64;
    t.amplification = t.downstream_calls as f64 / first;
    t.attempt_amplification = (t.first_attempts + t.retries_asked) as f64 / first;
    t
}

pub async fn storm(
    plan: &StormPlan,
    client: &GovernorClient<Channel>,
    log: &(dyn Fn(&str) + Sync),
) -> Vec<StormArm> {
    let mut arms = vec![
        StormArm {
            budget: false,
            dependency: STORM_UNLIMITED,
            repeats: Vec::new(),
        },
        StormArm {
            budget: true,
            dependency: STORM_BUDGET,
            repeats: Vec::new(),
        },
    ];
    for repeat in 0..plan.repeats {
        for arm in arms.iter_mut() {
            log(&format!(
                "  retry storm: budget {}, repeat {}/{}",
                if arm.budget { "on" } else { "off" },
                repeat + 1,
                plan.repeats
            ));
            let r = storm_once(plan, arm.dependency, client).await;
            arm.repeats.push(r);
        }
    }
    arms
}
