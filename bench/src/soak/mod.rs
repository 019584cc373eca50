//! `governor-bench --soak`: the release sidecar under a steady mixed load for
//! a long time (30 minutes by default), sampled every 10 s, failing if its
//! memory, file descriptors or tasks grow, or if its leases, waiters and
//! tasks do not come back when the load stops.
//!
//! # Why these checks
//! A leak in a long-running sidecar shows as a resource that keeps rising
//! while the load stays the same. [`rule`] says when a series rises: the
//! median of the last third of the run against the median of the second
//! (the first is warm-up). That catches slow leaks only over a long run,
//! which is why the soak is long; the short CI run (`--soak-duration 60s`)
//! checks that the harness works and catches fast leaks. What the growth
//! rule cannot see, a slot or a task that stays behind after its request,
//! the end of the run checks exactly: once the load stops and the short
//! lease TTL and `idle_ttl` have passed, live leases and waiters must be 0,
//! the junk dependencies gone, tasks and fds back to their number before the
//! load, and every lease left to expire or held by a killed child counted as
//! expired.
//!
//! The load ([`load`]) is every way a caller uses or misuses the sidecar:
//! acquire/release pairs, waiters that time out, acquires cancelled while
//! queued, leases left to expire, renews, child processes SIGKILLed while
//! holding permits, junk dependency names (evicted by `idle_ttl`), new
//! connections, and control-plane changes.

pub mod load;
pub mod report;
pub mod rule;
pub mod sample;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rate_governor_proto::v1::GetDependencyRequest;
use rate_governor_proto::v1::governor_admin_client::GovernorAdminClient;
use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};

use self::load::{Counts, Mix};
use self::rule::{Allowance, Verdict};
use self::sample::Sample;
use crate::env::{Machine, Pinning};
use crate::process::{Governor, uds_channel};

/// How long and how often.
#[derive(Clone, Debug, Serialize)]
pub struct SoakPlan {
    pub duration: Duration,
    pub interval: Duration,
    /// Junk dependencies are dropped this long after their last release.
    pub idle_ttl: Duration,
    /// The longest the end of the run may take to come back to rest.
    pub settle_timeout: Duration,
    pub mix: Mix,
    pub rss: Allowance,
    pub fds: Allowance,
    pub tasks: Allowance,
    /// After the load, tasks and fds may exceed their number before it by this
    /// much (a scrape connection being closed, a timer about to fire).
    pub rest_slack: u64,
    /// Whether growth fails the run. Runs shorter than [`GROWTH_FAILS_FROM`]
    /// (the CI one, two samples a third on a debug build) report it only:
    /// their thirds are too short for a median to stand for a trend.
    pub growth_fails: bool,
}

/// The shortest run whose growth verdicts fail it.
pub const GROWTH_FAILS_FROM: Duration = Duration::from_secs(600);

impl SoakPlan {
    pub fn new(duration: Duration, interval: Duration) -> SoakPlan {
        SoakPlan {
            duration,
            interval,
            idle_ttl: Duration::from_secs(5),
            settle_timeout: Duration::from_secs(30),
            mix: Mix::default(),
            rss: Allowance {
                relative: 0.05,
                absolute: 1024.0,
            },
            fds: Allowance {
                relative: 0.10,
                absolute: 4.0,
            },
            tasks: Allowance {
                relative: 0.10,
                absolute: 8.0,
            },
            rest_slack: 2,
            growth_fails: duration >= GROWTH_FAILS_FROM,
        }
    }

    /// Samples the growth rule will see: one per interval over the run.
    pub fn samples(&self) -> usize {
        (self.duration.as_secs_f64() / self.interval.as_secs_f64()).floor() as usize
    }
}

/// Everything the run measured.
#[derive(Debug, Serialize)]
pub struct SoakResults {
    pub command: String,
    pub date: String,
    pub machine: Machine,
    pub pinning: Pinning,
    pub governor_bin: String,
    pub governor_version: String,
    pub plan: SoakPlan,
    /// Before the load.
    pub baseline: Option<Sample>,
    /// One per interval while the load ran.
    pub samples: Vec<Sample>,
    /// When the sidecar came back to rest after the load, which ends half an
    /// interval after the last sample (or when the settle timeout ran out).
    pub rest: Option<Sample>,
    pub verdicts: Vec<Verdict>,
    pub counts: Counts,
    /// `expired_total` of the dependencies whose leases were left to expire.
    pub expired: Vec<(String, u64)>,
    pub failures: Vec<String>,
    /// Growth in a run too short to fail on it.
    pub warnings: Vec<String>,
}

impl SoakResults {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs the soak against `bin`; failures are in the results, errors that
/// stop it (the sidecar would not start) are `Err`.
pub async fn run(
    plan: SoakPlan,
    bin: &Path,
    work: &Path,
    pinning: &Pinning,
    machine: Machine,
    command: String,
    log: &(dyn Fn(&str) + Sync),
) -> Result<SoakResults, String> {
    if plan.samples() < rule::MIN_SAMPLES {
        return Err(format!(
            "--soak-duration {:?} gives {} samples at one per {:?}; the growth rule needs at least {}",
            plan.duration,
            plan.samples(),
            plan.interval,
            rule::MIN_SAMPLES
        ));
    }
    let holder_bin = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let governor = Governor::start_with_admin(
        bin,
        "soak",
        &load::config(plan.idle_ttl),
        &[],
        work,
        pinning,
    )
    .await?;
    let admin_addr = governor
        .admin
        .ok_or("the sidecar's ready line has no admin= address")?;
    let pid = governor.process.pid;
    let target = load::Target {
        grpc: governor.grpc,
        data: governor.tcp_channel().await?,
        admin: uds_channel(&governor.uds).await?,
        holder_bin,
        junk_prefix: format!("soak-junk-{}-", std::process::id()),
    };
    let mut results = SoakResults {
        command,
        date: crate::env::utc_now(),
        machine,
        pinning: pinning.clone(),
        governor_bin: bin.display().to_string(),
        governor_version: crate::env::version_of(bin),
        plan: plan.clone(),
        baseline: None,
        samples: Vec::new(),
        rest: None,
        verdicts: Vec::new(),
        counts: Counts::default(),
        expired: Vec::new(),
        failures: Vec::new(),
        warnings: Vec::new(),
    };
    // Connections are open, no load yet: what the sidecar costs at rest.
    let baseline = sample::take(pid, admin_addr, 0.0).await?;
    log(&format!(
        "soak: {:?} of mixed load, a sample every {:?}; at rest: {}",
        plan.duration,
        plan.interval,
        describe(&baseline)
    ));
    results.baseline = Some(baseline);
    let start = Instant::now();
    // Half an interval past the last sample, so that it is taken under load.
    let end = start + plan.duration + plan.interval / 2;
    let load = tokio::spawn({
        let mix = plan.mix.clone();
        let target = target.clone();
        async move { load::run(&mix, &target, load::tally(), end).await }
    });
    let mut tick = tokio::time::interval_at(start + plan.interval, plan.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while results.samples.len() < plan.samples() {
        tick.tick().await;
        match sample::take(pid, admin_addr, start.elapsed().as_secs_f64()).await {
            Ok(s) => {
                log(&format!("soak: t={:>5.0}s {}", s.t, describe(&s)));
                results.samples.push(s);
            }
            Err(e) => {
                results.failures.push(format!("sample: {e}"));
                break;
            }
        }
    }
    if let Err(e) = load.await {
        results.failures.push(format!("the load panicked: {e}"));
    }
    log("soak: load stopped; waiting for the sidecar to come back to rest");
    match settle(&plan, pid, admin_addr, &baseline, start).await {
        Ok((rest, pending)) => {
            results.rest = Some(rest);
            results.failures.extend(pending);
        }
        Err(e) => results.failures.push(format!("rest sample: {e}")),
    }
    results.counts = load::tally().counts();
    check_counts(&mut results);
    check_expired(&mut results, target.admin.clone()).await;
    for (name, series, allow) in [
        (
            "RSS (KiB)",
            series(&results.samples, |s| s.rss_kib),
            plan.rss,
        ),
        ("open fds", series(&results.samples, |s| s.fds), plan.fds),
        // Each dependency has one reaper task, and the junk names come and
        // go with idle_ttl (bounded by max_dependencies): judged apart from
        // them, a task that leaks still shows.
        (
            "tokio tasks beyond one per dependency",
            series(&results.samples, |s| s.tasks.saturating_sub(s.dependencies)),
            plan.tasks,
        ),
    ] {
        match rule::judge(name, &series, allow) {
            Ok(v) => {
                if v.grew {
                    let line = format!(
                        "{name} grew: median {:.0} in the last third against {:.0} in the second (allowed up to {:.0})",
                        v.last_third_median, v.second_third_median, v.ceiling
                    );
                    if plan.growth_fails {
                        results.failures.push(line);
                    } else {
                        results.warnings.push(format!(
                            "{line}; informational in a run under {} s",
                            GROWTH_FAILS_FROM.as_secs()
                        ));
                    }
                }
                results.verdicts.push(v);
            }
            Err(e) => results.failures.push(e),
        }
    }
    drop(target);
    if let Err(e) = governor.process.stop(Duration::from_secs(10)).await {
        results
            .failures
            .push(format!("the sidecar did not stop cleanly on SIGTERM: {e}"));
    }
    Ok(results)
}

fn series(samples: &[Sample], f: impl Fn(&Sample) -> u64) -> Vec<f64> {
    samples.iter().map(|s| f(s) as f64).collect()
}

fn describe(s: &Sample) -> String {
    format!(
        "rss {:.1} MiB, {} fds, {} tasks, {} leases, {} waiters, {} dependencies",
        s.rss_kib as f64 / 1024.0,
        s.fds,
        s.tasks,
        s.in_flight,
        s.queued,
        s.dependencies
    )
}

/// Samples every half second until the sidecar is at rest (no leases, no
/// waiters, only the configured dependencies, tasks and fds back to the
/// baseline) or the settle timeout runs out; returns the last sample and
/// what was still not at rest.
async fn settle(
    plan: &SoakPlan,
    pid: u32,
    admin: SocketAddr,
    baseline: &Sample,
    start: Instant,
) -> Result<(Sample, Vec<String>), String> {
    let deadline = Instant::now() + plan.settle_timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let s = sample::take(pid, admin, start.elapsed().as_secs_f64()).await?;
        let pending = not_at_rest(&s, baseline, plan.rest_slack);
        if pending.is_empty() || Instant::now() >= deadline {
            let pending = pending
                .into_iter()
                .map(|p| format!("{:?} after the load: {p}", plan.settle_timeout))
                .collect();
            return Ok((s, pending));
        }
    }
}

/// What keeps `s` from being at rest, compared with `baseline`.
pub fn not_at_rest(s: &Sample, baseline: &Sample, slack: u64) -> Vec<String> {
    let mut pending = Vec::new();
    if s.in_flight != 0 {
        pending.push(format!("{} leases still live", s.in_flight));
    }
    if s.queued != 0 {
        pending.push(format!("{} waiters still queued", s.queued));
    }
    let configured = load::CONFIGURED.len() as u64;
    if s.dependencies != configured {
        pending.push(format!(
            "{} dependencies, the {configured} configured ones expected (junk not evicted)",
            s.dependencies
        ));
    }
    if s.tasks > baseline.tasks + slack {
        pending.push(format!(
            "{} tasks, {} before the load",
            s.tasks, baseline.tasks
        ));
    }
    if s.fds > baseline.fds + slack {
        pending.push(format!("{} fds, {} before the load", s.fds, baseline.fds));
    }
    pending
}

/// Every kind of load must have happened, and nothing unexpected.
fn check_counts(results: &mut SoakResults) {
    let c = &results.counts;
    let kinds = [
        ("acquire/release pairs", c.pairs),
        ("waiters that timed out", c.waiters_timed_out),
        ("acquires cancelled while queued", c.acquires_cancelled),
        ("leases left to expire", c.left_to_expire),
        ("renews", c.renews),
        ("holders killed", c.children_killed),
        ("junk names", c.junk_names),
        ("control-plane changes", c.control_changes),
    ];
    for (kind, n) in kinds {
        if n == 0 {
            results.failures.push(format!(
                "the load made no {kind}: the soak did not test them"
            ));
        }
    }
    if c.errors > 0 {
        results.failures.push(format!(
            "{} unexpected answers, first: {}",
            c.errors,
            c.first_errors.join("; ")
        ));
    }
}

/// Every lease left to expire and every permit a killed child held must have
/// expired: none lost, none released by someone else.
async fn check_expired(results: &mut SoakResults, admin: tonic::transport::Channel) {
    let mut admin = GovernorAdminClient::new(admin);
    let expected = [
        (load::EXPIRE, results.counts.left_to_expire),
        (load::KILLED, results.counts.killed_holding),
    ];
    for (name, want) in expected {
        let got = admin
            .get_dependency(GetDependencyRequest { name: name.into() })
            .await;
        match got {
            Ok(status) => {
                let expired = status.get_ref().expired_total;
                results.expired.push((name.to_owned(), expired));
                if expired != want {
                    results.failures.push(format!(
                        "{name}: {expired} leases expired, {want} were left to expire"
                    ));
                }
            }
            Err(e) => results.failures.push(format!("GetDependency {name}: {e}")),
        }
    }
}

/// Where the soak's outputs go.
#[derive(Debug)]
pub struct SoakOutputs {
    pub csv: PathBuf,
    pub svg: PathBuf,
    pub doc: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(in_flight: u64, queued: u64, dependencies: u64, tasks: u64, fds: u64) -> Sample {
        Sample {
            in_flight,
            queued,
            dependencies,
            tasks,
            fds,
            ..Sample::default()
        }
    }

    #[test]
    fn rest_needs_every_count_back() {
        let n = load::CONFIGURED.len() as u64;
        let baseline = at(0, 0, n, 20, 12);
        assert!(not_at_rest(&at(0, 0, n, 22, 14), &baseline, 2).is_empty());
        let pending = not_at_rest(&at(3, 1, n + 5, 23, 15), &baseline, 2);
        assert_eq!(pending.len(), 5, "{pending:?}");
        assert!(pending[0].contains("3 leases"));
        assert!(pending[2].contains("junk not evicted"));
    }

    #[test]
    fn the_plan_counts_its_samples() {
        let plan = SoakPlan::new(Duration::from_secs(1800), Duration::from_secs(10));
        assert_eq!(plan.samples(), 180);
        let short = SoakPlan::new(Duration::from_secs(60), Duration::from_secs(10));
        assert_eq!(short.samples(), rule::MIN_SAMPLES);
    }
}
