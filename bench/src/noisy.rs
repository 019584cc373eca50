//! A6, the noisy neighbour: two tenants share one dependency of a small
//! limit. "noisy" offers ~10x the capacity (a closed loop of many callers,
//! each retrying a rejected acquire after its `retry_after`); "victim" stays
//! well within its share (an open loop at a fixed rate). Run twice against
//! the real sidecar, each side with a sidecar of its own: without fair
//! shares (one FIFO queue) and with `fairness.by = "tenant"`, equal weights.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use rate_governor_proto::v1::governor_admin_client::GovernorAdminClient;
use rate_governor_proto::v1::governor_client::GovernorClient;
use rate_governor_proto::v1::{AcquireRequest, GetDependencyRequest, Outcome};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::downstream::Downstream;
use crate::env::Pinning;
use crate::load::{Percentiles, Schedule, histogram, record};
use crate::overload::{reason_name, release};
use crate::process::Governor;

pub const ARM_ID: &str = "A6";
pub const ARM_NAME: &str = "noisy neighbour";
pub const DEPENDENCY: &str = "bench-noisy";
pub const NOISY: &str = "noisy";
pub const VICTIM: &str = "victim";

/// The dependency, the two tenants' loads and the windows.
#[derive(Clone, Debug, Serialize)]
pub struct NoisyPlan {
    /// The dependency's max_concurrency, and the downstream's workers.
    pub limit: u32,
    pub max_queue: u32,
    pub max_wait_ms: u64,
    /// Mean time a permit is held: the simulated downstream's exponential
    /// service time.
    pub hold_ms: f64,
    /// Closed-loop callers of the noisy tenant: each would hold a permit all
    /// the time, so `noisy_callers / limit` is its offer as a multiple of the
    /// capacity.
    pub noisy_callers: usize,
    /// A noisy caller's pause after a rejection without a retry_after.
    pub retry_pause_ms: f64,
    /// The longest retry_after a noisy caller honours.
    pub max_retry_pause_ms: f64,
    /// The victim's open-loop rate, as a share of the capacity.
    pub victim_share: f64,
    pub warmup: Duration,
    pub measure: Duration,
}

impl NoisyPlan {
    /// Permits a second: limit / mean hold time.
    pub fn capacity(&self) -> f64 {
        f64::from(self.limit) * 1000.0 / self.hold_ms
    }

    pub fn victim_rate(&self) -> f64 {
        self.capacity() * self.victim_share
    }

    /// The noisy tenant's offer as a multiple of the capacity.
    pub fn noisy_multiple(&self) -> f64 {
        self.noisy_callers as f64 / f64::from(self.limit)
    }

    fn hold(&self) -> Duration {
        Duration::from_secs_f64(self.hold_ms / 1000.0)
    }

    fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }

    /// The victim's client deadline on an Acquire: well past the max wait,
    /// so the sidecar's answer, not the deadline, ends a wait.
    fn client_timeout(&self) -> Duration {
        self.max_wait() + Duration::from_secs(1)
    }

    /// The sidecar's config for one side.
    pub fn governor_config(&self, fairness: bool) -> String {
        let mut config = format!(
            r#"[server]
shutdown_grace = "1s"

[dependencies.{DEPENDENCY}]
max_concurrency = {limit}
max_queue = {max_queue}
max_wait = "{max_wait}ms"
lease_ttl = "10s"
"#,
            limit = self.limit,
            max_queue = self.max_queue,
            max_wait = self.max_wait_ms,
        );
        if fairness {
            config.push_str(&format!(
                r#"
[dependencies.{DEPENDENCY}.fairness]
by = "tenant"
weights = {{ {NOISY} = 1, {VICTIM} = 1 }}
default_weight = 1
"#
            ));
        }
        config
    }
}

/// What one tenant saw on one side, over the measured window (attempts
/// sent in it, answered whenever).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TenantResult {
    pub tenant: String,
    /// Acquires sent (the noisy tenant's retries included).
    pub attempts: u64,
    pub granted: u64,
    pub grants_per_s: f64,
    /// granted / attempts.
    pub granted_share: f64,
    pub rejected: BTreeMap<String, u64>,
    /// Acquires whose client deadline ran out first.
    pub timeouts: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// How long every answered Acquire took, from its send (the victim's:
    /// from its intended send time), whatever the answer.
    pub wait: Percentiles,
    /// The same for the granted ones only.
    pub granted_wait: Percentiles,
    /// The sidecar's `queue_wait`, on every answer.
    pub queue_wait: Percentiles,
}

#[derive(Clone, Debug, Serialize)]
pub struct NoisySide {
    pub fairness: bool,
    pub victim: TenantResult,
    pub noisy: TenantResult,
    /// Capacity from the hold times the downstream actually produced.
    pub capacity: f64,
    pub downstream_calls: u64,
    /// What went wrong outside the tenants' calls (the sidecar did not
    /// start, the leak check, fairness not in force).
    pub error: Option<String>,
}

impl NoisySide {
    pub fn label(&self) -> &'static str {
        if self.fairness {
            "fairness on (by tenant, equal weights)"
        } else {
            "fairness off (one FIFO queue)"
        }
    }

    pub fn errors(&self) -> u64 {
        self.victim.errors + self.noisy.errors + u64::from(self.error.is_some())
    }

    pub fn first_error(&self) -> Option<&str> {
        self.error
            .as_deref()
            .or(self.victim.first_error.as_deref())
            .or(self.noisy.first_error.as_deref())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct NoisyResults {
    pub plan: NoisyPlan,
    pub sides: Vec<NoisySide>,
    /// The victim's acquire-wait p99 with fairness on / off.
    pub victim_p99_ratio: f64,
}

impl NoisyResults {
    pub fn side(&self, fairness: bool) -> Option<&NoisySide> {
        self.sides.iter().find(|s| s.fairness == fairness)
    }
}

fn victim_p99_ratio(sides: &[NoisySide]) -> f64 {
    let p99 = |fairness: bool| {
        sides
            .iter()
            .find(|s| s.fairness == fairness && s.victim.wait.count > 0)
            .map_or(f64::NAN, |s| s.victim.wait.p99_us)
    };
    p99(true) / p99(false)
}

#[derive(Debug)]
struct Tally {
    attempts: u64,
    granted: u64,
    rejected: BTreeMap<String, u64>,
    timeouts: u64,
    errors: u64,
    first_error: Option<String>,
    wait: Histogram<u64>,
    granted_wait: Histogram<u64>,
    queue_wait: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            attempts: 0,
            granted: 0,
            rejected: BTreeMap::new(),
            timeouts: 0,
            errors: 0,
            first_error: None,
            wait: histogram(),
            granted_wait: histogram(),
            queue_wait: histogram(),
        }
    }

    fn add(&mut self, attempt: &Attempt) {
        self.attempts += 1;
        match &attempt.answer {
            Answer::Granted { .. } => {
                self.granted += 1;
                record(&mut self.wait, attempt.waited);
                record(&mut self.granted_wait, attempt.waited);
            }
            Answer::Rejected { reason, .. } => {
                *self.rejected.entry(reason.clone()).or_insert(0) += 1;
                record(&mut self.wait, attempt.waited);
            }
            Answer::GaveUp => self.timeouts += 1,
            Answer::Error(e) => self.error(e.clone()),
        }
        if let Some(q) = attempt.queue_wait {
            record(&mut self.queue_wait, q);
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    fn result(&self, tenant: &str, window: Duration) -> TenantResult {
        TenantResult {
            tenant: tenant.to_owned(),
            attempts: self.attempts,
            granted: self.granted,
            grants_per_s: self.granted as f64 / window.as_secs_f64(),
            granted_share: if self.attempts == 0 {
                f64::NAN
            } else {
                self.granted as f64 / self.attempts as f64
            },
            rejected: self.rejected.clone(),
            timeouts: self.timeouts,
            errors: self.errors,
            first_error: self.first_error.clone(),
            wait: Percentiles::of(&self.wait),
            granted_wait: Percentiles::of(&self.granted_wait),
            queue_wait: Percentiles::of(&self.queue_wait),
        }
    }
}

enum Answer {
    Granted {
        lease: String,
    },
    Rejected {
        reason: String,
        retry_after: Option<Duration>,
    },
    GaveUp,
    Error(String),
}

struct Attempt {
    answer: Answer,
    waited: Duration,
    queue_wait: Option<Duration>,
}

/// One Acquire of `tenant`; `waited` is counted from `since`.
async fn acquire(
    client: &mut GovernorClient<Channel>,
    tenant: &str,
    attempt: u32,
    timeout: Duration,
    since: Instant,
) -> Attempt {
    let mut request = tonic::Request::new(AcquireRequest {
        dependency: DEPENDENCY.into(),
        tenant: tenant.into(),
        attempt,
        ..Default::default()
    });
    request.set_timeout(timeout);
    let (answer, queue_wait) = match client.acquire(request).await {
        Ok(response) => {
            let r = response.into_inner();
            let queue_wait = r.queue_wait.and_then(|d| Duration::try_from(d).ok());
            let answer = if r.granted {
                Answer::Granted { lease: r.lease_id }
            } else {
                Answer::Rejected {
                    reason: reason_name(r.reason),
                    retry_after: r.retry_after.and_then(|d| Duration::try_from(d).ok()),
                }
            };
            (answer, queue_wait)
        }
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
            ) =>
        {
            (Answer::GaveUp, None)
        }
        Err(status) => (Answer::Error(format!("Acquire ({tenant}): {status}")), None),
    };
    Attempt {
        answer,
        waited: since.elapsed(),
        queue_wait,
    }
}

/// Holds a granted permit for one downstream call, then releases it.
async fn hold(
    downstream: &Arc<Downstream>,
    client: &mut GovernorClient<Channel>,
    lease: String,
) -> Result<(), String> {
    let outcome = match tokio::time::timeout(Duration::from_secs(5), downstream.call()).await {
        Ok(Ok(true)) => Outcome::Success,
        Ok(_) => Outcome::Failure,
        Err(_) => Outcome::Timeout,
    };
    release(client, lease, outcome).await
}

/// After a side: nothing may still be held or queued, and the fair shares
/// must (or must not) be in force.
async fn check_after(channel: Channel, fairness: bool) -> Result<(), String> {
    let mut admin = GovernorAdminClient::new(channel);
    let status = admin
        .get_dependency(GetDependencyRequest {
            name: DEPENDENCY.into(),
        })
        .await
        .map_err(|s| format!("GetDependency {DEPENDENCY}: {s}"))?
        .into_inner();
    if status.in_flight != 0 || status.queued != 0 {
        return Err(format!(
            "leak check: {DEPENDENCY} has in_flight {} and queued {} after the run (both must be 0)",
            status.in_flight, status.queued
        ));
    }
    if status.fairness.is_some() != fairness {
        return Err(format!(
            "{DEPENDENCY}: GetDependency reports fairness {:?}, but this side configured it {}",
            status.fairness,
            if fairness { "on" } else { "off" }
        ));
    }
    Ok(())
}

/// One side against a sidecar of its own.
async fn run_side(
    plan: &NoisyPlan,
    fairness: bool,
    bin: &Path,
    work: &Path,
    pinning: &Pinning,
) -> NoisySide {
    let mut side = NoisySide {
        fairness,
        victim: TenantResult {
            tenant: VICTIM.into(),
            ..Default::default()
        },
        noisy: TenantResult {
            tenant: NOISY.into(),
            ..Default::default()
        },
        capacity: plan.capacity(),
        downstream_calls: 0,
        error: None,
    };
    let name = if fairness { "noisy-fair" } else { "noisy-fifo" };
    let governor = match Governor::start(
        bin,
        name,
        &plan.governor_config(fairness),
        &[],
        work,
        pinning,
    )
    .await
    {
        Ok(g) => g,
        Err(e) => {
            side.error = Some(e);
            return side;
        }
    };
    // One connection per tenant, as two services would have.
    let channels = match (governor.tcp_channel().await, governor.tcp_channel().await) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            side.error = Some(e);
            let _ = governor.process.stop(Duration::from_secs(5)).await;
            return side;
        }
    };
    let (noisy_channel, victim_channel) = channels;
    let downstream = Arc::new(Downstream::new(plan.limit as usize, plan.hold(), 0.0));
    let noisy = Arc::new(Mutex::new(Tally::new()));
    let victim = Arc::new(Mutex::new(Tally::new()));
    let start = Instant::now() + Duration::from_millis(5);
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.measure;
    let max_wait = plan.max_wait();
    let noisy_timeout = plan.client_timeout();
    let pause = Duration::from_secs_f64(plan.retry_pause_ms / 1000.0);
    let max_pause = Duration::from_secs_f64(plan.max_retry_pause_ms / 1000.0);

    // The noisy tenant: a closed loop; a rejected call is retried (attempt
    // counting up) after its retry_after, a granted one holds its permit for
    // a downstream call and the caller starts the next call.
    let mut callers = JoinSet::new();
    for _ in 0..plan.noisy_callers {
        let mut client = GovernorClient::new(noisy_channel.clone());
        let downstream = downstream.clone();
        let tally = noisy.clone();
        callers.spawn(async move {
            tokio::time::sleep_until(start).await;
            let mut attempt: u32 = 0;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let a = acquire(&mut client, NOISY, attempt, noisy_timeout, sent).await;
                let measured = sent >= measure_from;
                if measured {
                    tally.lock().unwrap_or_else(|e| e.into_inner()).add(&a);
                }
                let pause = match a.answer {
                    Answer::Granted { lease } => {
                        attempt = 0;
                        if let Err(e) = hold(&downstream, &mut client, lease).await {
                            tally.lock().unwrap_or_else(|e| e.into_inner()).error(e);
                        }
                        continue;
                    }
                    Answer::Rejected { retry_after, .. } => {
                        attempt = attempt.saturating_add(1);
                        retry_after.map_or(pause, |r| r.clamp(Duration::from_millis(1), max_pause))
                    }
                    Answer::GaveUp => {
                        attempt = attempt.saturating_add(1);
                        pause
                    }
                    // Not a hot loop on a broken server.
                    Answer::Error(_) => pause.max(Duration::from_millis(10)),
                };
                tokio::time::sleep_until((Instant::now() + pause).min(end)).await;
            }
        });
    }

    // The victim: an open loop at a fixed rate, one attempt per call, its
    // wait from the intended send time.
    let victim_timeout = plan.client_timeout();
    let schedule = Schedule {
        rate: plan.victim_rate(),
        warmup: plan.warmup,
        measure: plan.measure,
    };
    schedule
        .drive_from(
            start,
            victim_timeout + Duration::from_secs(6),
            |intended, measured| {
                let mut client = GovernorClient::new(victim_channel.clone());
                let downstream = downstream.clone();
                let tally = victim.clone();
                async move {
                    let a = acquire(&mut client, VICTIM, 0, victim_timeout, intended).await;
                    if measured {
                        tally.lock().unwrap_or_else(|e| e.into_inner()).add(&a);
                    }
                    if let Answer::Granted { lease } = a.answer
                        && let Err(e) = hold(&downstream, &mut client, lease).await
                    {
                        tally.lock().unwrap_or_else(|e| e.into_inner()).error(e);
                    }
                }
            },
        )
        .await;
    // The noisy callers stop at `end`; one still waiting is answered within
    // the max wait, then holds for one call.
    let drain = max_wait + Duration::from_secs(6);
    if tokio::time::timeout(drain, async {
        while callers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        callers.shutdown().await;
        noisy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error(format!(
                "noisy callers still running {drain:?} after the end"
            ));
    }
    side.capacity = downstream.effective_capacity();
    side.downstream_calls = downstream.calls.load(std::sync::atomic::Ordering::Relaxed);
    downstream.shutdown().await;
    if let Err(e) = check_after(victim_channel, fairness).await {
        side.error = Some(e);
    }
    let window = plan.measure;
    side.victim = victim
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .result(VICTIM, window);
    side.noisy = noisy
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .result(NOISY, window);
    if let Err(e) = governor.process.stop(Duration::from_secs(5)).await {
        side.error
            .get_or_insert(format!("governor {name} did not shut down cleanly: {e}"));
    }
    side
}

/// Both sides, fairness off first.
pub async fn run(
    plan: &NoisyPlan,
    bin: &Path,
    work: &Path,
    pinning: &Pinning,
    log: &(dyn Fn(&str) + Sync),
) -> NoisyResults {
    let mut sides = Vec::new();
    for fairness in [false, true] {
        log(&format!(
            "  {ARM_ID} {ARM_NAME}: fairness {}",
            if fairness { "on" } else { "off" }
        ));
        sides.push(run_side(plan, fairness, bin, work, pinning).await);
    }
    NoisyResults {
        plan: plan.clone(),
        victim_p99_ratio: victim_p99_ratio(&sides),
        sides,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> NoisyPlan {
        NoisyPlan {
            limit: 8,
            max_queue: 64,
            max_wait_ms: 100,
            hold_ms: 20.0,
            noisy_callers: 80,
            retry_pause_ms: 5.0,
            max_retry_pause_ms: 1000.0,
            victim_share: 0.2,
            warmup: Duration::from_millis(500),
            measure: Duration::from_secs(3),
        }
    }

    #[test]
    fn configs_parse_and_differ_only_in_fairness() {
        let p = plan();
        let off: toml::Value = toml::from_str(&p.governor_config(false)).unwrap();
        let on: toml::Value = toml::from_str(&p.governor_config(true)).unwrap();
        let dep = |v: &toml::Value| v["dependencies"][DEPENDENCY].clone();
        assert!(dep(&off).get("fairness").is_none());
        let fair = &dep(&on)["fairness"];
        assert_eq!(fair["by"].as_str(), Some("tenant"));
        assert_eq!(fair["weights"][NOISY].as_integer(), Some(1));
        assert_eq!(fair["weights"][VICTIM].as_integer(), Some(1));
        assert_eq!(dep(&on)["max_concurrency"].as_integer(), Some(8));
        assert_eq!(dep(&off)["max_wait"].as_str(), Some("100ms"));
    }

    #[test]
    fn the_sidecar_takes_both_configs() {
        use rate_governor::config::Config;
        let p = plan();
        let off = Config::parse_file(&p.governor_config(false)).unwrap();
        let on = Config::parse_file(&p.governor_config(true)).unwrap();
        // The fairness table is the only difference, and it is not ignored.
        assert_ne!(off, on);
        let names = |c: &Config| {
            c.ledger
                .dependencies
                .iter()
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&off), vec![DEPENDENCY.to_owned()]);
        assert_eq!(names(&on), names(&off));
    }

    #[test]
    fn the_loads_are_what_the_plan_says() {
        let p = plan();
        assert!((p.capacity() - 400.0).abs() < 1e-9);
        assert!((p.victim_rate() - 80.0).abs() < 1e-9);
        assert!((p.noisy_multiple() - 10.0).abs() < 1e-9);
    }
}
