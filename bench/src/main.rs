//! `governor-bench`: the benchmark and overload-evaluation harness.
//!
//! It starts what it needs itself (governor sidecars from `--governor-bin`, a
//! redis-server, an OTLP span sink, a simulated downstream), runs every arm in
//! the same run, and writes JSON, a Markdown report and an SVG plot.
//!
//! ```text
//! cargo build --release -p rate-governor --bin governor
//! cargo run --release -p governor-bench -- --quick     # about three minutes
//! cargo run --release -p governor-bench                # the full run
//! cargo run -p governor-bench -- --smoke --governor-bin target/debug/governor   # CI, < 30 s
//! cargo run --release -p governor-bench -- --quick --only adaptive   # the adaptive-limit arms only
//! cargo run --release -p governor-bench -- --soak      # 30 minutes: does it leak? (docs/soak.md)
//! ```

mod adaptive;
mod downstream;
mod env;
mod fleet;
mod happy;
mod load;
mod noisy;
mod otlp;
mod overload;
mod probe;
mod process;
mod redis_sem;
mod report;
mod scale;
mod session;
mod soak;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use rate_governor_proto::v1::governor_client::GovernorClient;

use crate::adaptive::{AdaptivePlan, AdaptiveResults, Phase};
use crate::env::{Machine, Pinning};
use crate::happy::{HappyPlan, Servers};
use crate::noisy::NoisyPlan;
use crate::otlp::SpanSink;
use crate::overload::{OverloadPlan, StormPlan};
use crate::process::{Governor, Redis};
use crate::report::{Results, Target};
use crate::scale::ScalePlan;

/// Benchmarks the governor sidecar against the alternatives and under overload.
#[derive(Debug, Parser)]
#[command(name = "governor-bench", version, about)]
struct Args {
    /// A shorter run: about a minute and a half per group (--only).
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// Every arm very briefly (< 30 s), for CI: exits non-zero if any arm
    /// failed or produced no samples. Writes to target/bench-smoke unless
    /// --out-dir is given.
    #[arg(long)]
    smoke: bool,
    /// The governor binary [default: <repo>/target/release/governor].
    #[arg(long, env = "GOVERNOR_BIN")]
    governor_bin: Option<PathBuf>,
    /// The redis-server program (a path or a name on PATH). A4 and A7 (the
    /// fleet-wide limits' store) are skipped, with a note, when it is missing.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Where the JSON and the SVG go [default: <repo>/docs/bench].
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// The Markdown report [default: <repo>/docs/benchmarks.md; with --smoke, OUT_DIR/benchmarks.md].
    #[arg(long)]
    doc: Option<PathBuf>,
    /// The adaptive-limit report [default: <repo>/docs/benchmarks-adaptive.md;
    /// with --smoke, OUT_DIR/benchmarks-adaptive.md].
    #[arg(long)]
    adaptive_doc: Option<PathBuf>,
    /// Workers of the adaptive arms' downstream at full capacity (c); the
    /// offered load scales with it [default: 16; 8 with --smoke].
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=256))]
    adaptive_workers: Option<u32>,
    /// Run only one group of arms (and write only its report).
    #[arg(long, value_enum)]
    only: Option<Group>,
    /// Repeats of the happy-path and overload arms (overrides the mode's).
    #[arg(long)]
    repeats: Option<usize>,
    /// A note on the machine for the report's run table, e.g. what else ran
    /// on it (the load averages are recorded either way).
    #[arg(long, value_name = "TEXT")]
    env_note: Option<String>,
    /// Run only these happy-path arms (comma-separated ids, e.g. `A5` or
    /// `A0,A1,A5`), for profiling one of them; the other groups still run.
    #[arg(long, value_delimiter = ',', value_parser = parse_arm)]
    arms: Vec<String>,
    /// Do not pin the sidecar and the load generator to different cores.
    #[arg(long)]
    no_pin: bool,
    /// Instead of the arms, the soak: the sidecar under a steady mixed load
    /// for --soak-duration, sampled every --soak-interval; fails if its RSS,
    /// fds or tasks grow or do not come back after the load. Writes
    /// OUT_DIR/soak.csv, OUT_DIR/soak.svg and --doc [default: <repo>/docs/soak.md,
    /// or OUT_DIR/soak.md when --out-dir is given].
    #[arg(long, conflicts_with_all = ["quick", "smoke", "only", "repeats"])]
    soak: bool,
    /// How long the soak's load runs (e.g. 30m, 60s).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    soak_duration: Duration,
    /// How often the soak samples the sidecar.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    soak_interval: Duration,
}

fn parse_arm(s: &str) -> Result<String, String> {
    const ARMS: [&str; 5] = ["A0", "A1", "A2", "A4", "A5"];
    ARMS.iter()
        .find(|a| a.eq_ignore_ascii_case(s.trim()))
        .map(|a| (*a).to_owned())
        .ok_or_else(|| {
            format!(
                "unknown happy-path arm {s:?}: expected one of {}",
                ARMS.join(", ")
            )
        })
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err(format!("must be at least 100ms, got {s}"));
    }
    Ok(d)
}

/// The groups of arms, each with a report of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Group {
    /// Happy path, overload, retry storm and scale: docs/benchmarks.md.
    Main,
    /// The adaptive-limit arms: docs/benchmarks-adaptive.md.
    Adaptive,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

struct Plans {
    mode: &'static str,
    happy: HappyPlan,
    overload: OverloadPlan,
    storm: StormPlan,
    noisy: NoisyPlan,
    scale: ScalePlan,
    adaptive: AdaptivePlan,
    fleet: fleet::FleetPlan,
}

/// The adaptive arms' plan. Smoke runs debug builds for well under a second
/// per phase: a smaller, slower downstream keeps the load affordable.
fn adaptive_plan(mode: &str, given_workers: Option<usize>) -> AdaptivePlan {
    // (workers, service ms, warm-up, phase, steady warm-up, steady measure)
    let (workers, service_ms, warmup, phase_s, sw, sm) = match mode {
        "smoke" => (8, 20.0, 0.1, 0.15, 0.1, 0.2),
        "quick" => (16, 10.0, 1.0, 4.0, 2.0, 4.0),
        _ => (16, 10.0, 2.0, 10.0, 3.0, 10.0),
    };
    let workers = given_workers.unwrap_or(workers);
    let phase = |name: &str, workers: usize, seconds: f64, scored: bool| Phase {
        name: name.to_owned(),
        workers,
        duration: secs(seconds),
        scored,
    };
    AdaptivePlan {
        workers,
        service_ms,
        // 10 mean service times of work at full capacity.
        backlog: workers * 10,
        slo_ms: 5.0 * service_ms,
        deadline_ms: 25.0 * service_ms,
        step_load: 1.5,
        phases: vec![
            phase("warm-up", workers, warmup, false),
            phase("full", workers, phase_s, true),
            phase("half", workers / 2, phase_s, true),
            phase("full again", workers, phase_s, true),
        ],
        steady_load: 0.8,
        steady_warmup: secs(sw),
        steady_measure: secs(sm),
        ceiling: 200,
        min_limit: 2,
        initial_limit: 16,
        max_queue: 1000,
        max_wait_ms: (2.0 * service_ms) as u64,
        high_factor: 4,
        poll_interval: Duration::from_millis(50),
        band: (0.8, 1.6),
        hold: secs(1.0),
        converge_target: secs(2.0),
    }
}

/// A6, the noisy neighbour. The queue's backlog (max_queue x hold / limit =
/// 8 hold times) outlasts the max wait (5 hold times), so a FIFO queue the
/// noisy tenant keeps full makes the victim wait out its max wait. Smoke
/// runs debug builds: half the limit and queue, the same proportions.
fn noisy_plan(mode: &str) -> NoisyPlan {
    // (limit, max_queue, warm-up, measure) per side
    let (limit, max_queue, warmup, measure) = match mode {
        "smoke" => (4, 32, 0.2, 0.6),
        "quick" => (8, 64, 0.5, 3.0),
        _ => (8, 64, 1.0, 5.0),
    };
    NoisyPlan {
        limit,
        max_queue,
        max_wait_ms: 100,
        hold_ms: 20.0,
        noisy_callers: 10 * limit as usize,
        retry_pause_ms: 5.0,
        max_retry_pause_ms: 1000.0,
        victim_share: 0.2,
        warmup: secs(warmup),
        measure: secs(measure),
    }
}

/// A7, fleet-wide limits: the happy path's open loop against a sidecar
/// with and without a fleet limit that does not bind (10x the happy path's
/// closed-loop callers), and three sidecars sharing a binding one. The
/// trio's share_ttl is 1 s in smoke and quick runs, so that its shares
/// settle within a second (they move every share_ttl / 3); the fleet
/// sidecar's is 3 s but in smoke runs, whose sub-second windows would see
/// hardly a renewal (and the fresh key's learning would take longer).
fn fleet_plan(mode: &str, happy: &HappyPlan) -> fleet::FleetPlan {
    // (fleet share_ttl, trio share_ttl, warm-up, measure)
    let (single_ttl, ttl, warmup, measure) = match mode {
        "smoke" => (1.0, 1.0, 1.5, 0.8),
        "quick" => (3.0, 1.0, 1.5, 2.0),
        _ => (3.0, 3.0, 4.0, 8.0),
    };
    let concurrency = happy.concurrency;
    fleet::FleetPlan {
        rate: happy.rate,
        warmup: happy.warmup,
        measure: happy.measure,
        repeats: happy.repeats,
        local_limit: 1000,
        load_concurrency: concurrency,
        fleet_limit: 10 * concurrency as u32,
        share_ttl: secs(single_ttl),
        trio: Some(fleet::TrioPlan {
            fleet_limit: 12,
            callers: vec![12, 6, 2],
            local_limit: 64,
            max_queue: 64,
            max_wait_ms: 50,
            hold_ms: 10.0,
            fallback_share: 0,
            share_ttl: secs(ttl),
            warmup: secs(warmup),
            measure: secs(measure),
        }),
    }
}

fn plans(args: &Args) -> Plans {
    // (mode, happy warm-up, happy measure, saturation, repeats, ledger pairs,
    //  overload warm-up, overload measure, overload repeats, storm warm-up,
    //  storm measure, scale pairs)
    let (mode, hw, hm, hs, reps, lp, ow, om, oreps, sw, sm, sp) = if args.smoke {
        (
            "smoke", 0.1, 0.3, 0.3, 1, 20_000, 0.1, 0.4, 1, 0.3, 0.5, 20_000,
        )
    } else if args.quick {
        (
            "quick", 0.2, 0.6, 0.5, 3, 100_000, 0.3, 1.5, 1, 1.2, 2.0, 200_000,
        )
    } else {
        (
            "full", 0.5, 3.0, 2.0, 5, 500_000, 1.0, 8.0, 3, 2.0, 8.0, 1_000_000,
        )
    };
    let reps = args.repeats.unwrap_or(reps).max(1);
    let oreps = args.repeats.map_or(oreps, |r| r.clamp(1, 5));
    let happy = HappyPlan {
        rate: if args.smoke { 500.0 } else { 2000.0 },
        warmup: secs(hw),
        measure: secs(hm),
        concurrency: 16,
        saturation_measure: secs(hs),
        repeats: reps,
        span_settle: secs(if args.smoke { 2.0 } else { 3.0 }),
        ledger_pairs: lp,
    };
    Plans {
        mode,
        fleet: fleet_plan(mode, &happy),
        happy,
        // Smoke runs debug builds: a smaller downstream keeps 10x affordable.
        overload: OverloadPlan {
            concurrency: if args.smoke { 4 } else { 8 },
            service_ms: if args.smoke { 20.0 } else { 10.0 },
            slo_ms: 50.0,
            client_timeout_ms: 1000.0,
            multiples: vec![0.5, 1.0, 2.0, 10.0],
            max_queue: 8,
            max_wait_ms: 30,
            warmup: secs(ow),
            measure: secs(om),
            repeats: oreps,
        },
        storm: StormPlan {
            rate: 400.0,
            retries: 3,
            fail_probability: 1.0,
            service_ms: 1.0,
            concurrency: 8,
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            budget_ttl_s: 1,
            warmup: secs(sw),
            measure: secs(sm),
            repeats: oreps,
        },
        noisy: noisy_plan(mode),
        scale: ScalePlan {
            dependency_counts: vec![1, 1_000, 100_000],
            pairs: sp,
            waiter_counts: vec![100, 1_000, 10_000],
            repeats: if args.smoke { 1 } else { 3 },
        },
        adaptive: adaptive_plan(mode, args.adaptive_workers.map(|w| w as usize)),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some(soak::load::HOLDER_COMMAND) => {
            return on_one_thread(soak::load::HOLDER_COMMAND, soak::load::holder(&argv[2..]));
        }
        Some(probe::COMMAND) => {
            let args = probe::ProbeArgs::parse_from(&argv[1..]);
            return on_one_thread(probe::COMMAND, probe::run(args));
        }
        _ => {}
    }
    let args = Args::parse();
    // Describe the machine before pinning narrows what this process sees.
    let machine = Machine::describe();
    // Pin before the runtime starts, so that every thread inherits it.
    let pinning = Pinning::apply(args.no_pin);
    // On one load core, a single-threaded runtime: no second thread competing
    // for the core with the one that sends. Otherwise everything runs on the
    // workers (not on this thread) for the same reason.
    let runtime = if pinning.load_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(pinning.load_threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("governor-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        tokio::spawn(run(args, pinning, machine))
            .await
            .unwrap_or_else(|e| Err(format!("the harness panicked: {e}")))
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("governor-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn log(line: &str) {
    eprintln!("{line}");
}

/// Runs a command other than the arms (the soak's permit holder, the
/// probe) on a single-threaded runtime; its error goes to stderr.
fn on_one_thread(command: &str, work: impl Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let outcome = match runtime {
        Ok(rt) => rt.block_on(work),
        Err(e) => Err(format!("cannot start the runtime: {e}")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("governor-bench {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_soak(args: &Args, pinning: Pinning, machine: Machine) -> Result<bool, String> {
    let root = repo_root();
    let governor_bin = args
        .governor_bin
        .clone()
        .unwrap_or_else(|| root.join("target/release/governor"));
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| root.join("docs/bench"));
    let out = soak::SoakOutputs {
        csv: out_dir.join("soak.csv"),
        svg: out_dir.join("soak.svg"),
        doc: args.doc.clone().unwrap_or_else(|| match &args.out_dir {
            Some(dir) => dir.join("soak.md"),
            None => root.join("docs/soak.md"),
        }),
    };
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("create {}: {e}", out_dir.display()))?;
    let work = std::env::temp_dir().join(format!("governor-bench-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
    log(&format!(
        "governor-bench soak; machine: {} CPUs ({}), {} RAM; {}",
        machine.nproc, machine.cpu_model, machine.memory, pinning.note
    ));
    log(&format!("governor: {}", governor_bin.display()));
    let plan = soak::SoakPlan::new(args.soak_duration, args.soak_interval);
    let results = soak::run(
        plan,
        &governor_bin,
        &work,
        &pinning,
        machine,
        command_line(),
        &log,
    )
    .await;
    let _ = std::fs::remove_dir_all(&work);
    let results = results?;
    let csv_name = out
        .csv
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rel = |path: &Path| {
        out.doc
            .parent()
            .and_then(|d| path.strip_prefix(d).ok())
            .map_or_else(|| path.display().to_string(), |r| r.display().to_string())
    };
    let analysis = report::existing_analysis(&out.doc);
    let doc = soak::report::markdown(&results, &csv_name, &rel(&out.svg), analysis.as_deref());
    for (path, text) in [
        (&out.csv, soak::report::csv(&results)),
        (&out.svg, soak::report::svg(&results)),
        (&out.doc, doc),
    ] {
        std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    println!(
        "wrote {}, {} and {}",
        out.doc.display(),
        out.csv.display(),
        out.svg.display()
    );
    for v in &results.verdicts {
        println!(
            "{:<8} {}: median {:.0} in the 2nd third, {:.0} in the last (allowed up to {:.0})",
            if v.grew { "GREW" } else { "FLAT" },
            v.name,
            v.second_third_median,
            v.last_third_median,
            v.ceiling
        );
    }
    for w in &results.warnings {
        println!("WARNING  {w}");
    }
    for f in &results.failures {
        println!("FAILED   {f}");
    }
    println!(
        "governor-bench soak: {}",
        if results.ok() { "ok" } else { "FAILED" }
    );
    Ok(results.ok())
}

/// Where a report goes: its JSON, its SVG and its Markdown document.
struct Outputs {
    json: PathBuf,
    svg: PathBuf,
    doc: PathBuf,
}

impl Outputs {
    /// `path` relative to the document's folder, for links in it.
    fn rel(&self, path: &Path) -> String {
        self.doc
            .parent()
            .and_then(|d| path.strip_prefix(d).ok())
            .map_or_else(|| path.display().to_string(), |r| r.display().to_string())
    }

    fn json_name(&self) -> String {
        self.json
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn write(&self, json: &str, svg: &str, doc: &str) -> Result<(), String> {
        for (path, text) in [(&self.json, json), (&self.svg, svg), (&self.doc, doc)] {
            std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        }
        println!(
            "wrote {}, {} and {}",
            self.doc.display(),
            self.json.display(),
            self.svg.display()
        );
        Ok(())
    }
}

fn print_outcome(targets: &[Target], warnings: &[String], failures: &[String]) {
    for t in targets {
        println!(
            "{:<12} {} — goal {}, measured {}",
            t.verdict(),
            t.name,
            t.goal,
            t.measured
        );
    }
    for w in warnings {
        println!("WARNING      {w}");
    }
    for f in failures {
        println!("FAILED       {f}");
    }
}

async fn run(args: Args, pinning: Pinning, machine: Machine) -> Result<bool, String> {
    if args.soak {
        return run_soak(&args, pinning, machine).await;
    }
    let root = repo_root();
    let plans = plans(&args);
    let governor_bin = args
        .governor_bin
        .clone()
        .unwrap_or_else(|| root.join("target/release/governor"));
    let out_dir = args.out_dir.clone().unwrap_or_else(|| {
        if args.smoke {
            root.join("target/bench-smoke")
        } else {
            root.join("docs/bench")
        }
    });
    let doc_path = |given: &Option<PathBuf>, name: &str| {
        given.clone().unwrap_or_else(|| {
            if args.smoke {
                out_dir.join(name)
            } else {
                root.join("docs").join(name)
            }
        })
    };
    let main_out = Outputs {
        json: out_dir.join("results.json"),
        svg: out_dir.join("overload.svg"),
        doc: doc_path(&args.doc, "benchmarks.md"),
    };
    let adaptive_out = Outputs {
        json: out_dir.join("adaptive.json"),
        svg: out_dir.join("adaptive.svg"),
        doc: doc_path(&args.adaptive_doc, "benchmarks-adaptive.md"),
    };
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("create {}: {e}", out_dir.display()))?;
    let work = std::env::temp_dir().join(format!("governor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
    log(&format!("governor-bench {} mode", plans.mode));
    log(&format!(
        "machine: {} CPUs ({}), {} RAM; {}",
        machine.nproc, machine.cpu_model, machine.memory, pinning.note
    ));
    log(&format!("governor: {}", governor_bin.display()));
    let groups = match args.only {
        Some(group) => vec![group],
        None => vec![Group::Main, Group::Adaptive],
    };
    let (mut passed, mut missed, mut failed) = (0, 0, 0);
    let mut count = |targets: &[Target], failures: usize| {
        passed += targets.iter().filter(|t| t.pass == Some(true)).count();
        missed += targets.iter().filter(|t| t.pass == Some(false)).count();
        failed += failures;
    };
    let mut outcome = Ok(());
    for group in groups {
        let step = match group {
            Group::Main => {
                match measure(
                    &args,
                    &plans,
                    &pinning,
                    &governor_bin,
                    &work,
                    machine.clone(),
                )
                .await
                {
                    Ok(results) => {
                        print_outcome(&results.targets, &results.warnings, &results.failures);
                        count(&results.targets, results.failures.len());
                        write_main(&results, &main_out)
                    }
                    Err(e) => Err(e),
                }
            }
            Group::Adaptive => {
                let sidecars = adaptive::Sidecars {
                    bin: &governor_bin,
                    work: &work,
                    pinning: &pinning,
                };
                let results =
                    measure_adaptive(&plans, &sidecars, &governor_bin, &pinning, machine.clone())
                        .await;
                print_outcome(&results.targets, &results.warnings, &results.failures);
                count(&results.targets, results.failures.len());
                write_adaptive(&results, &adaptive_out)
            }
        };
        if let Err(e) = step {
            outcome = Err(e);
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    outcome?;
    let ok = failed == 0;
    if args.smoke {
        println!(
            "smoke mode: PASS/MISS above are informational (debug builds, sub-second runs); only failed arms fail the run"
        );
    }
    println!(
        "governor-bench {}: {} — {passed} targets passed, {missed} missed, {failed} arms failed",
        plans.mode,
        if ok { "ok" } else { "FAILED" },
    );
    Ok(ok)
}

fn write_main(results: &Results, out: &Outputs) -> Result<(), String> {
    let json = serde_json::to_string_pretty(results).map_err(|e| e.to_string())? + "\n";
    let svg = report::svg(&results.overload, &results.overload_plan);
    let analysis = report::existing_analysis(&out.doc);
    let doc = report::markdown(
        results,
        &out.rel(&out.svg),
        &out.json_name(),
        analysis.as_deref(),
    );
    out.write(&json, &svg, &doc)
}

fn write_adaptive(results: &AdaptiveResults, out: &Outputs) -> Result<(), String> {
    let json = serde_json::to_string_pretty(results).map_err(|e| e.to_string())? + "\n";
    let svg = adaptive::report::svg(results);
    let analysis = report::existing_analysis(&out.doc);
    let doc = adaptive::report::markdown(
        results,
        &out.rel(&out.svg),
        &out.json_name(),
        analysis.as_deref(),
    );
    out.write(&json, &svg, &doc)
}

async fn measure_adaptive(
    plans: &Plans,
    sidecars: &adaptive::Sidecars<'_>,
    bin: &Path,
    pinning: &Pinning,
    machine: Machine,
) -> AdaptiveResults {
    log("adaptive limits");
    let plan = &plans.adaptive;
    let (steps, steady, failures, warnings) = adaptive::run(plan, sidecars, &log).await;
    let targets = adaptive::targets(plan, &steps, &steady);
    AdaptiveResults {
        mode: plans.mode.to_owned(),
        command: command_line(),
        date: env::utc_now(),
        machine,
        pinning: pinning.clone(),
        governor_bin: bin.display().to_string(),
        governor_version: env::version_of(bin),
        plan: plan.clone(),
        steps,
        steady,
        targets,
        failures,
        warnings,
    }
}

fn command_line() -> String {
    std::iter::once("governor-bench".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn measure(
    args: &Args,
    plans: &Plans,
    pinning: &Pinning,
    bin: &Path,
    work: &Path,
    machine: Machine,
) -> Result<Results, String> {
    let ticks = env::clock_ticks();
    let load_start = env::loadavg();
    let mut failures = Vec::new();
    let mut warnings = Vec::new();

    let happy_config = "[server]\nshutdown_grace = \"1s\"\n";
    let sink_1pct = SpanSink::start().await?;
    let sink_all = SpanSink::start().await?;
    let otel = |sink: &SpanSink, share: &str| {
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", sink.addr),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            ("OTEL_TRACES_EXPORTER", "otlp".to_owned()),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
            ("OTEL_TRACES_SAMPLER_ARG", share.to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
            ("OTEL_SERVICE_NAME", "governor-bench".to_owned()),
        ]
    };
    log("starting governor sidecars");
    let plain = Governor::start(bin, "plain", happy_config, &[], work, pinning).await?;
    let traced_1pct = Governor::start(
        bin,
        "traced-1pct",
        happy_config,
        &otel(&sink_1pct, "0.01"),
        work,
        pinning,
    )
    .await?;
    let traced_all = Governor::start(
        bin,
        "traced-all",
        happy_config,
        &otel(&sink_all, "1.0"),
        work,
        pinning,
    )
    .await?;
    let overload_gov = Governor::start(
        bin,
        "overload",
        &plans.overload.governor_config(&plans.storm),
        &[],
        work,
        pinning,
    )
    .await?;
    let redis = match Redis::start(&args.redis_server, work, pinning).await {
        Ok(r) => {
            log(&format!("redis-server {} on port {}", r.version, r.port));
            Some(r)
        }
        Err(e) => {
            let note = format!("A4 (Redis semaphore) skipped: {e}");
            log(&note);
            warnings.push(note);
            None
        }
    };

    log("happy path");
    let servers = Servers {
        plain: &plain,
        traced_1pct: (&traced_1pct, &sink_1pct),
        traced_all: (&traced_all, &sink_all),
        redis: redis.as_ref(),
        ticks,
    };
    let happy = happy::run(&servers, &plans.happy, &args.arms, &log).await?;
    for arm in &happy.arms {
        let name = format!("{} {} over {}", arm.id, arm.label, arm.transport.as_str());
        if !arm.available && arm.open.is_empty() {
            // Never run: this sidecar cannot do what the arm measures.
            warnings.push(format!(
                "{name}: {}",
                arm.note.as_deref().unwrap_or("not available")
            ));
            continue;
        }
        if arm.samples() == 0 {
            failures.push(format!(
                "{name}: no samples ({})",
                arm.first_error().unwrap_or("no error")
            ));
        } else if arm.errors() > 0 {
            failures.push(format!(
                "{name}: {} errors, first: {}",
                arm.errors(),
                arm.first_error().unwrap_or("?")
            ));
        } else if !arm.available {
            warnings.push(format!(
                "{name}: {}",
                arm.note.as_deref().unwrap_or("not available")
            ));
        }
        if !matches!(arm.id, "A0" | "A1" | "A4" | "A5") {
            continue;
        }
        if arm.saturation.iter().all(|r| r.latency.count == 0) {
            failures.push(format!("{name}: saturation run produced no samples"));
        }
    }
    if happy
        .ledger
        .repeats
        .iter()
        .any(|r| r.errors > 0 || r.latency.count == 0)
    {
        failures.push("A3 in-process ledger: errors or no samples".into());
    }

    log("overload");
    let client = GovernorClient::new(overload_gov.tcp_channel().await?);
    let overload = overload::run(&plans.overload, &client, &log).await;
    for p in &overload {
        let name = format!("overload {}x, {}", p.multiple, p.guard.as_str());
        let errors: u64 = p.repeats.iter().map(|r| r.errors).sum();
        if p.samples() == 0 {
            failures.push(format!("{name}: no samples"));
        } else if errors > 0 {
            let first = p
                .repeats
                .iter()
                .find_map(|r| r.first_error.clone())
                .unwrap_or_default();
            failures.push(format!("{name}: {errors} errors, first: {first}"));
        }
    }
    log("retry storm");
    let storm = overload::storm(&plans.storm, &client, &log).await;
    for arm in &storm {
        let name = format!(
            "retry storm, budget {}",
            if arm.budget { "on" } else { "off" }
        );
        let errors: u64 = arm.repeats.iter().map(|r| r.errors).sum();
        if arm.samples() == 0 {
            failures.push(format!("{name}: no samples"));
        } else if errors > 0 {
            let first = arm
                .repeats
                .iter()
                .find_map(|r| r.first_error.clone())
                .unwrap_or_default();
            failures.push(format!("{name}: {errors} errors, first: {first}"));
        }
    }
    drop(client);

    log(&format!("{} {}", noisy::ARM_ID, noisy::ARM_NAME));
    let noisy = noisy::run(&plans.noisy, bin, work, pinning, &log).await;
    for side in &noisy.sides {
        let name = format!("{} {}, {}", noisy::ARM_ID, noisy::ARM_NAME, side.label());
        let first = side.first_error().unwrap_or("no error");
        if side.victim.attempts == 0 || side.noisy.attempts == 0 {
            failures.push(format!(
                "{name}: no samples (victim {} attempts, noisy {}; {first})",
                side.victim.attempts, side.noisy.attempts
            ));
        } else if side.errors() > 0 {
            failures.push(format!("{name}: {} errors, first: {first}", side.errors()));
        }
    }

    log(&format!("{} {}", fleet::ARM_ID, fleet::ARM_NAME));
    let fleet = match redis.as_ref() {
        Some(redis) => {
            let sidecars = fleet::Sidecars {
                bin,
                work,
                pinning,
                ticks,
            };
            fleet::run(&plans.fleet, &sidecars, redis, &log).await
        }
        None => {
            let note = format!(
                "{} ({}) skipped: no redis-server",
                fleet::ARM_ID,
                fleet::ARM_NAME
            );
            log(&note);
            warnings.push(note.clone());
            fleet::FleetResults::skipped(&plans.fleet, &note)
        }
    };
    failures.extend(fleet.failures.iter().cloned());
    warnings.extend(fleet.warnings.iter().cloned());

    log("scale");
    let scale = scale::run(&plans.scale, &log).await;
    let scale = match scale {
        Ok(s) => s,
        Err(e) => {
            failures.push(format!("scale: {e}"));
            scale::ScaleResults {
                plan: plans.scale.clone(),
                dependencies: Vec::new(),
                waiters: Vec::new(),
            }
        }
    };

    for governor in [plain, traced_1pct, traced_all, overload_gov] {
        let name = governor.process.name.clone();
        if let Err(e) = governor.process.stop(Duration::from_secs(5)).await {
            warnings.push(format!(
                "governor {name} did not shut down cleanly on SIGTERM: {e}"
            ));
        }
    }
    if let Some(redis) = redis {
        let _ = redis.process.stop(Duration::from_secs(5)).await;
    }

    let targets = report::targets(&happy, &overload, &storm);
    let command = command_line();
    Ok(Results {
        mode: plans.mode.to_owned(),
        command,
        date: env::utc_now(),
        machine,
        pinning: pinning.clone(),
        governor_bin: bin.display().to_string(),
        governor_version: env::version_of(bin),
        load_start,
        load_end: env::loadavg(),
        env_note: args.env_note.clone(),
        happy,
        overload_plan: plans.overload.clone(),
        overload,
        storm_plan: plans.storm.clone(),
        storm,
        noisy,
        fleet,
        scale,
        targets,
        failures,
        warnings,
    })
}
