//! One arm's run: open-loop load through the sidecar (or straight to the
//! downstream), the capacity switched at every phase boundary, and the
//! enforced limit polled from the control plane.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use rate_governor_proto::v1::governor_admin_client::GovernorAdminClient;
use rate_governor_proto::v1::governor_client::GovernorClient;
use rate_governor_proto::v1::{
    AcquireRequest, DependencyLimits, DependencyStatus, GetDependencyRequest, LimitAlgorithm,
    Outcome, ReleaseRequest, UpdateDependencyRequest,
};
use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};
use tonic::transport::Channel;

use super::backend::{Answer, Backend, ServiceTime, answer};
use super::{AdaptivePlan, Algorithm, DEPENDENCY, Guard, Phase, PhaseResult};
use crate::load::{Percentiles, Schedule, histogram, record};
use crate::process::Governor;

/// One poll of the dependency's state, and the downstream's at that moment.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LimitSample {
    /// Seconds since the start of the run.
    pub t: f64,
    /// The enforced limit.
    pub limit: u32,
    /// What the adaptive limit computed; None when static.
    pub adaptive_limit: Option<u32>,
    /// The algorithm's no-load latency estimate and its last window's median.
    pub baseline_ms: Option<f64>,
    pub recent_ms: Option<f64>,
    pub in_flight: u32,
    pub queued: u32,
    /// The downstream's worker count (`c`) at the poll.
    pub workers: usize,
}

impl LimitSample {
    fn of(status: &DependencyStatus, t: f64, workers: usize) -> LimitSample {
        let ms = |d: Option<prost_types::Duration>| {
            d.and_then(|d| Duration::try_from(d).ok())
                .map(|d| d.as_secs_f64() * 1000.0)
        };
        let adaptive = status.limit_algorithm != LimitAlgorithm::Static as i32;
        LimitSample {
            t,
            limit: status.limit,
            adaptive_limit: adaptive.then_some(status.adaptive_limit),
            baseline_ms: ms(status.latency_baseline),
            recent_ms: ms(status.latency_recent),
            in_flight: status.in_flight,
            queued: status.queued,
            workers,
        }
    }
}

/// The algorithm the sidecar must report for `guard`.
fn expected_algorithm(guard: Guard) -> LimitAlgorithm {
    match guard {
        Guard::Adaptive(Algorithm::Gradient) => LimitAlgorithm::Gradient,
        Guard::Adaptive(Algorithm::Vegas) => LimitAlgorithm::Vegas,
        Guard::Adaptive(Algorithm::Aimd) => LimitAlgorithm::Aimd,
        _ => LimitAlgorithm::Static,
    }
}

#[derive(Debug)]
struct Tally {
    sent: u64,
    ok: u64,
    within_slo: u64,
    rejected: BTreeMap<String, u64>,
    timeouts: u64,
    refused: u64,
    errors: u64,
    admitted: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            sent: 0,
            ok: 0,
            within_slo: 0,
            rejected: BTreeMap::new(),
            timeouts: 0,
            refused: 0,
            errors: 0,
            admitted: histogram(),
        }
    }
}

/// The least time left for which a caller still sends an Acquire, or calls
/// the downstream once granted.
const MIN_ATTEMPT: Duration = Duration::from_millis(5);

/// The gRPC timeout of Acquire and Release: only a stall hits it.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// How one call ended, as the caller saw it.
enum End {
    Rejected(String),
    TimedOut,
    Refused,
    Served,
    Error(String),
}

/// Where each phase starts, in seconds from the start of the run.
fn offsets(phases: &[Phase]) -> Vec<f64> {
    phases
        .iter()
        .scan(0.0, |at, p| {
            let start = *at;
            *at += p.duration.as_secs_f64();
            Some(start)
        })
        .collect()
}

/// The phase a time (seconds from the start) falls in.
fn phase_at(offsets: &[f64], t: f64) -> usize {
    offsets.iter().rposition(|&o| o <= t).unwrap_or(0)
}

fn proto_duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

/// One call: Acquire (unless unguarded), the downstream within the caller's
/// deadline, Release with the outcome and the downstream latency.
///
/// The Acquire carries a generous gRPC timeout rather than the caller's
/// deadline: the sidecar bounds its queue wait by `max_wait` anyway, and a
/// client-side deadline firing on streams the server has not accepted yet
/// (a stall of either process) trips h2's rapid-reset guard, which closes the
/// whole connection and strands the leases granted on it until their TTL.
/// A caller whose deadline has passed by the time it is granted gives the
/// permit back as CANCELLED (which the limit ignores).
async fn call(
    backend: Arc<Backend>,
    client: Option<GovernorClient<Channel>>,
    intended: Instant,
    deadline: Duration,
) -> (End, Duration) {
    let mut lease = None;
    let mut client = client;
    if let Some(client) = client.as_mut() {
        if deadline.saturating_sub(intended.elapsed()) < MIN_ATTEMPT {
            return (End::TimedOut, intended.elapsed());
        }
        let mut request = tonic::Request::new(AcquireRequest {
            dependency: DEPENDENCY.into(),
            ..Default::default()
        });
        request.set_timeout(ACQUIRE_TIMEOUT);
        match client.acquire(request).await {
            Ok(r) => {
                let r = r.into_inner();
                if !r.granted {
                    return (
                        End::Rejected(crate::overload::reason_name(r.reason)),
                        intended.elapsed(),
                    );
                }
                if deadline.saturating_sub(intended.elapsed()) < MIN_ATTEMPT {
                    let end = match release(client, r.lease_id, Outcome::Cancelled, None).await {
                        Ok(()) => End::TimedOut,
                        Err(e) => End::Error(e),
                    };
                    return (end, intended.elapsed());
                }
                lease = Some(r.lease_id);
            }
            Err(s) => return (End::Error(format!("Acquire: {s}")), intended.elapsed()),
        }
    }
    let started = Instant::now();
    let remaining = deadline.saturating_sub(intended.elapsed());
    let (end, outcome) = match tokio::time::timeout(remaining, answer(backend.call())).await {
        Ok(Answer::Served) => (End::Served, Outcome::Success),
        Ok(Answer::Refused) => (End::Refused, Outcome::Failure),
        Err(_) => (End::TimedOut, Outcome::Timeout),
    };
    let downstream_latency = started.elapsed();
    let latency = intended.elapsed();
    if let (Some(client), Some(lease_id)) = (client.as_mut(), lease) {
        if let Err(e) = release(client, lease_id, outcome, Some(downstream_latency)).await {
            return (End::Error(e), latency);
        }
    }
    (end, latency)
}

async fn release(
    client: &mut GovernorClient<Channel>,
    lease_id: String,
    outcome: Outcome,
    latency: Option<Duration>,
) -> Result<(), String> {
    let mut request = tonic::Request::new(ReleaseRequest {
        lease_id,
        outcome: outcome as i32,
        latency: latency.and_then(proto_duration),
    });
    request.set_timeout(ACQUIRE_TIMEOUT);
    match client.release(request).await {
        Ok(r) if r.get_ref().released => Ok(()),
        Ok(_) => Err("Release answered released=false for a live lease".into()),
        Err(s) => Err(format!("Release: {s}")),
    }
}

/// What [`run`] measured: the scored phases, the limit polls, the first error.
#[derive(Debug)]
pub struct Run {
    pub phases: Vec<PhaseResult>,
    pub trace: Vec<LimitSample>,
    pub first_error: Option<String>,
}

/// Offers `load` x the full capacity through `phases`, switching the
/// downstream's workers (and, for the oracle, the sidecar's limit) at every
/// phase boundary.
pub async fn run(
    plan: &AdaptivePlan,
    phases: &[Phase],
    load: f64,
    guard: Guard,
    governor: Option<&Governor>,
) -> Run {
    let mut first_error: Option<String> = None;
    let channel = match governor {
        Some(g) => match g.tcp_channel().await {
            Ok(c) => Some(c),
            Err(e) => {
                return Run {
                    phases: Vec::new(),
                    trace: Vec::new(),
                    first_error: Some(e),
                };
            }
        },
        None => None,
    };
    let client = channel.clone().map(GovernorClient::new);
    let admin = channel.map(GovernorAdminClient::new);
    let first_workers = phases.first().map_or(plan.workers, |p| p.workers);
    let backend = Backend::new(
        first_workers,
        ServiceTime::Exponential(plan.service()),
        plan.backlog,
    );
    let offsets = Arc::new(offsets(phases));
    let total: Duration = phases.iter().map(|p| p.duration).sum();
    let rate = plan.full_capacity() * load;
    let tallies = Arc::new(Mutex::new(
        phases.iter().map(|_| Tally::new()).collect::<Vec<_>>(),
    ));
    let errors = Arc::new(Mutex::new(None::<String>));
    let deadline = Duration::from_secs_f64(plan.deadline_ms / 1000.0);
    let slo = Duration::from_secs_f64(plan.slo_ms / 1000.0);
    let start = Instant::now() + Duration::from_millis(20);

    // Capacity changes, and the oracle's limit with them.
    let switcher = {
        let backend = backend.clone();
        let offsets = offsets.clone();
        let workers: Vec<usize> = phases.iter().map(|p| p.workers).collect();
        let mut admin = admin.clone().filter(|_| guard == Guard::RightStatic);
        tokio::spawn(async move {
            let mut error = None;
            for (i, &w) in workers.iter().enumerate().skip(1) {
                tokio::time::sleep_until(start + Duration::from_secs_f64(offsets[i])).await;
                backend.set_workers(w);
                if let Some(admin) = admin.as_mut() {
                    let request = UpdateDependencyRequest {
                        name: DEPENDENCY.into(),
                        limits: Some(DependencyLimits {
                            max_concurrency: Some(w as u32),
                            ..Default::default()
                        }),
                    };
                    if let Err(s) = admin.update_dependency(request).await {
                        error.get_or_insert(format!("UpdateDependency: {s}"));
                    }
                }
            }
            error
        })
    };

    // The enforced limit, every poll interval, until the end of the run.
    let poller = admin.clone().map(|mut admin| {
        let backend = backend.clone();
        let interval = plan.poll_interval;
        let expected = expected_algorithm(guard);
        tokio::spawn(async move {
            let mut trace = Vec::new();
            let mut error = None;
            let mut tick = tokio::time::interval_at(start, interval);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                let at = tick.tick().await;
                if at >= start + total {
                    break;
                }
                let request = GetDependencyRequest {
                    name: DEPENDENCY.into(),
                };
                match admin.get_dependency(request).await {
                    Ok(status) => {
                        let status = status.into_inner();
                        if status.limit_algorithm != expected as i32 {
                            error.get_or_insert(format!(
                                "GetDependency reports algorithm {:?}, the config says {}",
                                status.limit_algorithm(),
                                expected.as_str_name()
                            ));
                        }
                        let t = (Instant::now() - start).as_secs_f64();
                        trace.push(LimitSample::of(&status, t, backend.occupancy().workers));
                    }
                    // Before the first Acquire the dependency may not exist yet.
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => {
                        error.get_or_insert(format!("GetDependency: {s}"));
                    }
                }
            }
            (trace, error)
        })
    });

    let schedule = Schedule {
        rate,
        warmup: Duration::ZERO,
        measure: total,
    };
    schedule
        .drive_from(start, deadline + Duration::from_secs(2), |intended, _| {
            let backend = backend.clone();
            let client = client.clone();
            let tallies = tallies.clone();
            let errors = errors.clone();
            let offsets = offsets.clone();
            async move {
                let (end, latency) = call(backend, client, intended, deadline).await;
                let phase = phase_at(&offsets, (intended - start).as_secs_f64());
                let mut tallies = tallies.lock().unwrap_or_else(|e| e.into_inner());
                let t = &mut tallies[phase];
                t.sent += 1;
                match end {
                    End::Rejected(reason) => *t.rejected.entry(reason).or_insert(0) += 1,
                    End::TimedOut => {
                        t.timeouts += 1;
                        record(&mut t.admitted, latency);
                    }
                    End::Refused => {
                        t.refused += 1;
                        record(&mut t.admitted, latency);
                    }
                    End::Served => {
                        t.ok += 1;
                        if latency <= slo {
                            t.within_slo += 1;
                        }
                        record(&mut t.admitted, latency);
                    }
                    End::Error(e) => {
                        t.errors += 1;
                        errors
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                    }
                }
            }
        })
        .await;

    // The calls' own errors first: they say what went wrong for callers.
    if let Some(e) = errors.lock().unwrap_or_else(|e| e.into_inner()).take() {
        first_error = Some(e);
    }
    match switcher.await {
        Ok(Some(e)) => {
            first_error.get_or_insert(e);
        }
        Ok(None) => {}
        Err(e) => {
            first_error.get_or_insert(format!("the capacity switcher failed: {e}"));
        }
    }
    let mut trace = Vec::new();
    if let Some(poller) = poller {
        match poller.await {
            Ok((t, e)) => {
                trace = t;
                if let Some(e) = e {
                    first_error.get_or_insert(e);
                }
            }
            Err(e) => {
                first_error.get_or_insert(format!("the limit poller failed: {e}"));
            }
        }
    }
    let mean_service = backend.mean_service().unwrap_or(plan.service());
    backend.shutdown().await;
    let tallies = tallies.lock().unwrap_or_else(|e| e.into_inner());
    let mut results = Vec::new();
    for (i, (phase, t)) in phases.iter().zip(tallies.iter()).enumerate() {
        if !phase.scored {
            continue;
        }
        let seconds = phase.duration.as_secs_f64();
        let capacity = phase.workers as f64 / mean_service.as_secs_f64();
        let rejected: u64 = t.rejected.values().sum();
        let share = |n: u64| {
            if t.sent == 0 {
                f64::NAN
            } else {
                n as f64 / t.sent as f64
            }
        };
        let (from, to) = (offsets[i], offsets[i] + seconds);
        let limits = limits_between(&trace, from, to);
        let goodput_rate = t.within_slo as f64 / seconds;
        results.push(PhaseResult {
            name: phase.name.clone(),
            workers: phase.workers,
            start_s: from,
            duration_s: seconds,
            offered_rate: rate,
            capacity,
            sent: t.sent,
            ok: t.ok,
            within_slo: t.within_slo,
            goodput_rate,
            goodput_share: goodput_rate / capacity,
            rejected,
            rejected_share: share(rejected),
            rejected_by_reason: t.rejected.clone(),
            timeouts: t.timeouts,
            refused: t.refused,
            errors: t.errors,
            admitted: Percentiles::of(&t.admitted),
            limit_median: median(&limits),
            limit_min: limits.iter().copied().min(),
            limit_max: limits.iter().copied().max(),
            converged_after_s: None,
        });
    }
    Run {
        phases: results,
        trace,
        first_error,
    }
}

fn limits_between(trace: &[LimitSample], from: f64, to: f64) -> Vec<u32> {
    trace
        .iter()
        .filter(|s| s.t >= from && s.t < to)
        .map(|s| s.limit)
        .collect()
}

fn median(values: &[u32]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(f64::from(v[n / 2])),
        _ => Some((f64::from(v[n / 2 - 1]) + f64::from(v[n / 2])) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &str, workers: usize, ms: u64) -> Phase {
        Phase {
            name: name.into(),
            workers,
            duration: Duration::from_millis(ms),
            scored: true,
        }
    }

    #[test]
    fn phases_are_found_by_time() {
        let phases = [
            phase("a", 16, 1000),
            phase("b", 8, 4000),
            phase("c", 16, 4000),
        ];
        let o = offsets(&phases);
        assert_eq!(o, vec![0.0, 1.0, 5.0]);
        assert_eq!(phase_at(&o, 0.0), 0);
        assert_eq!(phase_at(&o, 0.999), 0);
        assert_eq!(phase_at(&o, 1.0), 1);
        assert_eq!(phase_at(&o, 4.99), 1);
        assert_eq!(phase_at(&o, 5.0), 2);
        assert_eq!(phase_at(&o, 100.0), 2);
    }

    #[test]
    fn median_of_limits() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[7, 3, 5]), Some(5.0));
        assert_eq!(median(&[8, 4, 16, 2]), Some(6.0));
    }

    /// The unguarded arm end to end, against the real downstream model:
    /// every phase is scored and the halved phase serves about half as much.
    #[tokio::test(flavor = "current_thread")]
    async fn an_unguarded_run_measures_every_phase() {
        let plan = super::super::tests::plan();
        let phases = [phase("full", 4, 400), phase("half", 2, 400)];
        let run = run(&plan, &phases, 0.8, Guard::NoGovernor, None).await;
        assert!(run.first_error.is_none(), "{:?}", run.first_error);
        assert!(run.trace.is_empty());
        assert_eq!(run.phases.len(), 2);
        let (full, half) = (&run.phases[0], &run.phases[1]);
        // 0.8 x 4 workers / 10 ms = 320/s for 0.4 s: about 128 sent each.
        for p in [full, half] {
            assert!((110..=140).contains(&p.sent), "{p:?}");
            assert_eq!(p.errors, 0);
            assert_eq!(p.rejected, 0);
        }
        // At 0.8x of the full capacity, the halved downstream (0.5x) falls
        // behind: its backlog fills and it refuses or runs late.
        assert!(full.within_slo > half.within_slo, "{full:?} {half:?}");
        assert!(
            half.refused + half.timeouts > 0 || half.admitted.p99_us > full.admitted.p99_us,
            "{half:?}"
        );
    }
}
