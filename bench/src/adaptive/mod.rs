//! Adaptive concurrency limits under a capacity step.
//!
//! A downstream with `c` workers ([`backend`]) loses half of them and gets
//! them back, while callers arrive open-loop at 1.5x its full capacity. Every
//! guarded arm goes through its own real governor sidecar over gRPC:
//!
//! - each adaptive algorithm (`gradient`, `vegas`, `aimd`) under a ceiling far
//!   above `c`, learning from what the callers report on Release;
//! - the *right static* limit, an oracle that sets `max_concurrency` to the
//!   current `c` through `UpdateDependency` at the instant the capacity
//!   changes: what a perfect operator would do, and the yardstick for goodput;
//! - a static limit 4x too high (`4c` of the full capacity), the usual guess;
//! - no governor at all.
//!
//! Why this design: static limits are tuned once and then the downstream
//! changes; an adaptive limit is worth having only if it tracks such a step
//! about as well as the oracle does, and costs nothing when there is no
//! overload. The steady arms check the second half: at 0.8x load the limit
//! must not reject (with a ceiling far above the load, every rejection there
//! is the algorithm's doing).

mod analysis;
pub mod backend;
mod drive;
pub mod report;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::env::{Machine, Pinning};
use crate::load::Percentiles;
use crate::process::Governor;
use crate::report::Target;

pub use drive::LimitSample;

pub const DEPENDENCY: &str = "bench-adaptive";

/// The adaptive algorithms the sidecar offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    Gradient,
    Vegas,
    Aimd,
}

impl Algorithm {
    pub const ALL: [Algorithm; 3] = [Algorithm::Gradient, Algorithm::Vegas, Algorithm::Aimd];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Gradient => "gradient",
            Algorithm::Vegas => "vegas",
            Algorithm::Aimd => "aimd",
        }
    }
}

/// How an arm guards the downstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    Adaptive(Algorithm),
    /// `max_concurrency` = the current worker count, set at every change.
    RightStatic,
    /// `max_concurrency` = `factor` x the full worker count, never changed.
    StaticHigh,
    NoGovernor,
}

impl Guard {
    pub fn label(self, plan: &AdaptivePlan) -> String {
        match self {
            Guard::Adaptive(a) => format!("adaptive {}", a.as_str()),
            Guard::RightStatic => "right static (oracle)".into(),
            Guard::StaticHigh => format!(
                "static {}x too high ({})",
                plan.high_factor,
                plan.high_limit()
            ),
            Guard::NoGovernor => "no governor".into(),
        }
    }
}

/// One stretch of the run with a fixed worker count.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub workers: usize,
    pub duration: Duration,
    /// False for the warm-up: not counted in the results.
    pub scored: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct AdaptivePlan {
    /// Workers at full capacity (`c`).
    pub workers: usize,
    pub service_ms: f64,
    /// The downstream's backlog: calls beyond it are refused at once.
    pub backlog: usize,
    /// A success counts as goodput when its latency from the intended send
    /// time is within this.
    pub slo_ms: f64,
    /// The caller's deadline for the whole call (Acquire, queue and downstream).
    pub deadline_ms: f64,
    /// Offered load in the step arms, as a multiple of the full capacity.
    pub step_load: f64,
    pub phases: Vec<Phase>,
    /// Offered load in the steady arms.
    pub steady_load: f64,
    pub steady_warmup: Duration,
    pub steady_measure: Duration,
    /// `max_concurrency` of the adaptive arms: the ceiling.
    pub ceiling: u32,
    pub min_limit: u32,
    pub initial_limit: u32,
    pub max_queue: u32,
    pub max_wait_ms: u64,
    pub high_factor: u32,
    pub poll_interval: Duration,
    /// The convergence band, as multiples of the current `c`.
    pub band: (f64, f64),
    /// How long the limit must stay in the band to count as converged.
    pub hold: Duration,
    /// Target: converged this soon after the capacity halves.
    pub converge_target: Duration,
}

impl AdaptivePlan {
    pub fn full_capacity(&self) -> f64 {
        self.workers as f64 * 1000.0 / self.service_ms
    }

    pub fn high_limit(&self) -> u32 {
        self.high_factor * self.workers as u32
    }

    fn service(&self) -> Duration {
        Duration::from_secs_f64(self.service_ms / 1000.0)
    }

    /// The sidecar's config for one arm.
    pub fn governor_config(&self, guard: Guard) -> Option<String> {
        let max_concurrency = match guard {
            Guard::NoGovernor => return None,
            Guard::Adaptive(_) => self.ceiling,
            Guard::RightStatic => self.phases.first().map_or(1, |p| p.workers as u32),
            Guard::StaticHigh => self.high_limit(),
        };
        let mut config = format!(
            "[server]\nshutdown_grace = \"1s\"\n\n[dependencies.{DEPENDENCY}]\n\
             max_concurrency = {max_concurrency}\nmax_queue = {}\nmax_wait = \"{}ms\"\nlease_ttl = \"10s\"\n",
            self.max_queue, self.max_wait_ms
        );
        if let Guard::Adaptive(algorithm) = guard {
            config.push_str(&format!(
                "\n[dependencies.{DEPENDENCY}.adaptive]\nalgorithm = \"{}\"\nmin_limit = {}\n\
                 initial_limit = {}\nshadow = false\n",
                algorithm.as_str(),
                self.min_limit,
                self.initial_limit
            ));
        }
        Some(config)
    }
}

/// What one phase of one arm measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseResult {
    pub name: String,
    pub workers: usize,
    /// Start and length, seconds from the start of the run.
    pub start_s: f64,
    pub duration_s: f64,
    pub offered_rate: f64,
    /// The phase's capacity from the measured mean service time.
    pub capacity: f64,
    pub sent: u64,
    pub ok: u64,
    pub within_slo: u64,
    pub goodput_rate: f64,
    pub goodput_share: f64,
    pub rejected: u64,
    pub rejected_share: f64,
    pub rejected_by_reason: std::collections::BTreeMap<String, u64>,
    /// The caller's deadline ran out (in the queue or at the downstream).
    pub timeouts: u64,
    /// The downstream refused (backlog full).
    pub refused: u64,
    pub errors: u64,
    /// Latency from the intended send time of calls that reached the downstream.
    pub admitted: Percentiles,
    /// The enforced limit over the phase: median, min, max of the polls.
    pub limit_median: Option<f64>,
    pub limit_min: Option<u32>,
    pub limit_max: Option<u32>,
    /// Seconds from the phase's start until the limit entered the band and
    /// stayed there for `hold`; None if it never did within the phase.
    pub converged_after_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepArm {
    pub guard: Guard,
    pub label: String,
    /// False when this sidecar cannot run the arm (see `note`).
    pub available: bool,
    pub note: Option<String>,
    pub phases: Vec<PhaseResult>,
    pub trace: Vec<LimitSample>,
    pub first_error: Option<String>,
}

impl StepArm {
    pub fn errors(&self) -> u64 {
        self.phases.iter().map(|p| p.errors).sum()
    }
    pub fn samples(&self) -> u64 {
        self.phases.iter().map(|p| p.sent).sum()
    }
    /// Errors in the run make its numbers meaningless.
    pub fn failed(&self) -> bool {
        self.errors() > 0 || self.first_error.is_some()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SteadyArm {
    pub algorithm: Algorithm,
    pub available: bool,
    pub note: Option<String>,
    /// The measured stretch (after the warm-up).
    pub phase: PhaseResult,
    pub trace: Vec<LimitSample>,
    pub first_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AdaptiveResults {
    pub mode: String,
    pub command: String,
    pub date: String,
    pub machine: Machine,
    pub pinning: Pinning,
    pub governor_bin: String,
    pub governor_version: String,
    pub plan: AdaptivePlan,
    pub steps: Vec<StepArm>,
    pub steady: Vec<SteadyArm>,
    pub targets: Vec<Target>,
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
}

/// Where the sidecars run and how they are started.
#[derive(Debug)]
pub struct Sidecars<'a> {
    pub bin: &'a Path,
    pub work: &'a Path,
    pub pinning: &'a Pinning,
}

/// Why an adaptive arm cannot run on this binary, if that is why the
/// sidecar refused its config (an older binary without adaptive limits
/// rejects the `adaptive` table as an unknown field and exits 64).
fn unsupported(error: &str) -> Option<String> {
    error.contains("unknown field `adaptive`").then(|| {
        "not available: this governor binary does not support `[dependencies.*.adaptive]` \
         (it exits 64 on the table)"
            .to_owned()
    })
}

enum Started {
    Running(Option<Box<Governor>>),
    Unsupported(String),
}

async fn start(
    sidecars: &Sidecars<'_>,
    plan: &AdaptivePlan,
    guard: Guard,
    name: &str,
) -> Result<Started, String> {
    let Some(config) = plan.governor_config(guard) else {
        return Ok(Started::Running(None));
    };
    match Governor::start(
        sidecars.bin,
        name,
        &config,
        &[],
        sidecars.work,
        sidecars.pinning,
    )
    .await
    {
        Ok(g) => Ok(Started::Running(Some(Box::new(g)))),
        Err(e) => match unsupported(&e) {
            Some(note) if matches!(guard, Guard::Adaptive(_)) => Ok(Started::Unsupported(note)),
            _ => Err(format!("start the sidecar for {}: {e}", guard.label(plan))),
        },
    }
}

async fn stop(governor: Option<Box<Governor>>, warnings: &mut Vec<String>) {
    if let Some(g) = governor {
        let name = g.process.name.clone();
        if let Err(e) = g.process.stop(Duration::from_secs(5)).await {
            warnings.push(format!(
                "governor {name} did not shut down cleanly on SIGTERM: {e}"
            ));
        }
    }
}

/// The sidecar's last log lines, to explain an arm's errors, with what they
/// mean when the sidecar's HTTP/2 server dropped the connection.
fn sidecar_log(governor: Option<&Governor>) -> String {
    let Some(tail) = governor
        .map(|g| g.process.stderr_tail())
        .filter(|t| !t.trim().is_empty())
    else {
        return String::new();
    };
    let mut note = String::new();
    if tail.contains("pending-accept streams reached limit") {
        note.push_str(
            " (the sidecar's HTTP/2 server closed the connection after 20 streams the client \
             cancelled at its deadline before the server accepted them, h2's rapid-reset guard; \
             leases granted on that connection stayed held until their lease_ttl)",
        );
    }
    format!("{note}; sidecar stderr:\n{tail}")
}

/// The guards of the step arms, in the order they run.
pub fn step_guards() -> Vec<Guard> {
    let mut guards: Vec<Guard> = Algorithm::ALL.into_iter().map(Guard::Adaptive).collect();
    guards.extend([Guard::RightStatic, Guard::StaticHigh, Guard::NoGovernor]);
    guards
}

/// Runs every arm, each against a sidecar of its own, one after the other.
pub async fn run(
    plan: &AdaptivePlan,
    sidecars: &Sidecars<'_>,
    log: &(dyn Fn(&str) + Sync),
) -> (Vec<StepArm>, Vec<SteadyArm>, Vec<String>, Vec<String>) {
    let (mut failures, mut warnings) = (Vec::new(), Vec::new());
    let mut steps = Vec::new();
    for guard in step_guards() {
        let label = guard.label(plan);
        log(&format!("  adaptive step: {label}"));
        let name = format!("adaptive-step-{}", steps.len());
        let mut arm = StepArm {
            guard,
            label: label.clone(),
            available: false,
            note: None,
            phases: Vec::new(),
            trace: Vec::new(),
            first_error: None,
        };
        match start(sidecars, plan, guard, &name).await {
            Ok(Started::Running(governor)) => {
                let run = drive::run(
                    plan,
                    &plan.phases,
                    plan.step_load,
                    guard,
                    governor.as_deref(),
                )
                .await;
                let stderr = sidecar_log(governor.as_deref());
                stop(governor, &mut warnings).await;
                arm.available = true;
                arm.phases = run.phases;
                arm.trace = run.trace;
                arm.first_error = run.first_error;
                if arm.samples() == 0 {
                    failures.push(format!("adaptive step, {label}: no samples"));
                } else if arm.failed() {
                    failures.push(format!(
                        "adaptive step, {label}: {} errors, first: {}{stderr}",
                        arm.errors(),
                        arm.first_error.as_deref().unwrap_or("?")
                    ));
                } else if guard != Guard::NoGovernor && arm.trace.is_empty() {
                    failures.push(format!("adaptive step, {label}: no limit samples"));
                }
            }
            Ok(Started::Unsupported(note)) => {
                warnings.push(format!("adaptive step, {label}: {note}"));
                arm.note = Some(note);
            }
            Err(e) => {
                failures.push(format!("adaptive step, {label}: {e}"));
                arm.note = Some(e);
            }
        }
        steps.push(arm);
    }
    analysis::annotate(plan, &mut steps);

    let mut steady = Vec::new();
    let phases = steady_phases(plan);
    for algorithm in Algorithm::ALL {
        let guard = Guard::Adaptive(algorithm);
        let label = format!("{} at {}x load", guard.label(plan), plan.steady_load);
        log(&format!("  adaptive steady: {label}"));
        let name = format!("adaptive-steady-{}", algorithm.as_str());
        let mut arm = SteadyArm {
            algorithm,
            available: false,
            note: None,
            phase: PhaseResult::default(),
            trace: Vec::new(),
            first_error: None,
        };
        match start(sidecars, plan, guard, &name).await {
            Ok(Started::Running(governor)) => {
                let run =
                    drive::run(plan, &phases, plan.steady_load, guard, governor.as_deref()).await;
                let stderr = sidecar_log(governor.as_deref());
                stop(governor, &mut warnings).await;
                arm.available = true;
                arm.trace = run.trace;
                arm.first_error = run.first_error;
                if let Some(measured) = run.phases.into_iter().find(|p| p.sent > 0) {
                    arm.phase = measured;
                }
                if arm.phase.sent == 0 {
                    failures.push(format!("adaptive steady, {label}: no samples"));
                } else if arm.phase.errors > 0 || arm.first_error.is_some() {
                    failures.push(format!(
                        "adaptive steady, {label}: {} errors, first: {}{stderr}",
                        arm.phase.errors,
                        arm.first_error.as_deref().unwrap_or("?")
                    ));
                } else if arm.trace.is_empty() {
                    failures.push(format!("adaptive steady, {label}: no limit samples"));
                }
            }
            Ok(Started::Unsupported(note)) => {
                warnings.push(format!("adaptive steady, {label}: {note}"));
                arm.note = Some(note);
            }
            Err(e) => {
                failures.push(format!("adaptive steady, {label}: {e}"));
                arm.note = Some(e);
            }
        }
        steady.push(arm);
    }
    (steps, steady, failures, warnings)
}

/// The steady arms: full capacity throughout, a warm-up, then the measure.
fn steady_phases(plan: &AdaptivePlan) -> Vec<Phase> {
    vec![
        Phase {
            name: "warm-up".into(),
            workers: plan.workers,
            duration: plan.steady_warmup,
            scored: false,
        },
        Phase {
            name: "steady".into(),
            workers: plan.workers,
            duration: plan.steady_measure,
            scored: true,
        },
    ]
}

pub use analysis::targets;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small plan: 4 workers of 10 ms, a warm-up, then full, half, full.
    pub fn plan() -> AdaptivePlan {
        let phase = |name: &str, workers, ms, scored| Phase {
            name: name.into(),
            workers,
            duration: Duration::from_millis(ms),
            scored,
        };
        AdaptivePlan {
            workers: 4,
            service_ms: 10.0,
            backlog: 16,
            slo_ms: 50.0,
            deadline_ms: 250.0,
            step_load: 1.5,
            phases: vec![
                phase("warm-up", 4, 500, false),
                phase("full", 4, 2000, true),
                phase("half", 2, 2000, true),
                phase("full again", 4, 2000, true),
            ],
            steady_load: 0.8,
            steady_warmup: Duration::from_millis(500),
            steady_measure: Duration::from_secs(2),
            ceiling: 200,
            min_limit: 2,
            initial_limit: 16,
            max_queue: 1000,
            max_wait_ms: 20,
            high_factor: 4,
            poll_interval: Duration::from_millis(50),
            band: (0.8, 1.6),
            hold: Duration::from_secs(1),
            converge_target: Duration::from_secs(2),
        }
    }

    #[test]
    fn each_arm_gets_its_config() {
        let plan = plan();
        assert_eq!(plan.governor_config(Guard::NoGovernor), None);
        let adaptive = plan
            .governor_config(Guard::Adaptive(Algorithm::Vegas))
            .unwrap();
        assert!(adaptive.contains("max_concurrency = 200\n"), "{adaptive}");
        assert!(
            adaptive.contains(
                "[dependencies.bench-adaptive.adaptive]\nalgorithm = \"vegas\"\nmin_limit = 2\n\
                 initial_limit = 16\nshadow = false\n"
            ),
            "{adaptive}"
        );
        let oracle = plan.governor_config(Guard::RightStatic).unwrap();
        assert!(oracle.contains("max_concurrency = 4\n"), "{oracle}");
        assert!(!oracle.contains(".adaptive]"), "{oracle}");
        let high = plan.governor_config(Guard::StaticHigh).unwrap();
        assert!(high.contains("max_concurrency = 16\n"), "{high}");
        for config in [adaptive, oracle, high] {
            assert!(config.contains("max_queue = 1000\nmax_wait = \"20ms\"\n"));
            assert!(config.parse::<toml::Table>().is_ok(), "{config}");
        }
    }

    #[test]
    fn an_old_binary_is_told_apart_from_a_bad_config() {
        let old = "governor adaptive-step-0 exited before it was ready; stderr:\n\
                   governor: invalid config: x.toml: TOML parse error at line 9, column 30\n\
                   unknown field `adaptive`, expected one of `max_concurrency`, `max_queue`";
        assert!(unsupported(old).is_some());
        let bad = "dependencies.bench-adaptive.adaptive.algorithm: unknown algorithm \"vegas\"";
        assert_eq!(unsupported(bad), None);
    }
}
