//! The results: targets, JSON, the Markdown document and the SVG plot.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::env::{Machine, Pinning};
use crate::fleet::{FleetResults, StoreWindow};
use crate::happy::{Arm, HappyResults, Transport};
use crate::load::Spread;
use crate::noisy::{NoisyResults, TenantResult};
use crate::overload::{Guard, OverloadPlan, OverloadPoint, StormArm, StormPlan};
use crate::scale::ScaleResults;

pub const ANALYSIS_BEGIN: &str =
    "<!-- analysis:begin (hand-written; kept when the harness regenerates this file) -->";
pub const ANALYSIS_END: &str = "<!-- analysis:end -->";

#[derive(Debug, Serialize)]
pub struct Results {
    pub mode: String,
    pub command: String,
    pub date: String,
    pub machine: Machine,
    pub pinning: Pinning,
    pub governor_bin: String,
    pub governor_version: String,
    /// Load averages (1/5/15 min) when the group started and ended.
    pub load_start: String,
    pub load_end: String,
    /// What the operator said about the machine (`--env-note`).
    pub env_note: Option<String>,
    pub happy: HappyResults,
    pub overload_plan: OverloadPlan,
    pub overload: Vec<OverloadPoint>,
    pub storm_plan: StormPlan,
    pub storm: Vec<StormArm>,
    pub noisy: NoisyResults,
    pub fleet: FleetResults,
    pub scale: ScaleResults,
    pub targets: Vec<Target>,
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    /// None when it could not be measured in this run.
    pub pass: Option<bool>,
}

impl Target {
    pub fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "NOT MEASURED",
        }
    }
}

fn check(
    name: String,
    goal: &str,
    value: f64,
    measured: String,
    ok: impl Fn(f64) -> bool,
) -> Target {
    Target {
        name,
        goal: goal.to_owned(),
        measured,
        pass: value.is_finite().then(|| ok(value)),
    }
}

pub fn targets(
    happy: &HappyResults,
    overload: &[OverloadPoint],
    storm: &[StormArm],
) -> Vec<Target> {
    let mut out = Vec::new();
    for ratio in &happy.ratios {
        out.push(check(
            format!("A1/A0 p50 latency ratio ({})", ratio.transport.as_str()),
            "<= 2.2",
            ratio.p50.median,
            format!(
                "{} (min {:.2}, max {:.2})",
                ratio_text(ratio.p50.median),
                ratio.p50.min,
                ratio.p50.max
            ),
            |v| v <= 2.2,
        ));
    }
    for arm in happy.arms.iter().filter(|a| a.id == "A1") {
        let v = arm.cpu_per_1k();
        out.push(check(
            format!(
                "Sidecar CPU per 1k pairs/s (A1, {})",
                arm.transport.as_str()
            ),
            "<= 0.1 core",
            v,
            format!("{v:.3} core"),
            |v| v <= 0.1,
        ));
    }
    for transport in [Transport::Tcp, Transport::Uds] {
        out.extend(session_targets(happy, transport));
    }
    for multiple in [2.0, 10.0] {
        if let Some(p) = overload
            .iter()
            .find(|p| p.guard == Guard::Governor && p.multiple == multiple)
        {
            let g = p.goodput_share();
            out.push(check(
                format!("Goodput at {multiple}x capacity, governor"),
                ">= 90% of capacity",
                g.median,
                format!("{} (min {}, max {})", pct(g.median), pct(g.min), pct(g.max)),
                |v| v >= 0.9,
            ));
            let r = p.rejection_p99_ms();
            out.push(check(
                format!("Rejection p99 at {multiple}x capacity, governor"),
                "< 1 ms",
                r.median,
                format!("{} (min {}, max {})", ms(r.median), ms(r.min), ms(r.max)),
                |v| v < 1.0,
            ));
        }
    }
    if let Some(arm) = storm.iter().find(|a| a.budget) {
        let a = arm.amplification();
        out.push(check(
            "Retry amplification, budget on".into(),
            "<= 1.2x",
            a.median,
            format!("{:.3}x (min {:.3}, max {:.3})", a.median, a.min, a.max),
            |v| v <= 1.2,
        ));
    }
    out
}

/// Per-repeat ratios of one arm's value to another's (repeats run in the
/// same rotation, so repeat i of both shares the machine's state).
fn per_repeat<T>(a: &[T], b: &[T], value: impl Fn(&T) -> f64) -> Spread {
    Spread::of(
        &a.iter()
            .zip(b)
            .map(|(x, y)| value(x) / value(y))
            .collect::<Vec<_>>(),
    )
}

fn ratio_measured(ratio: Spread, detail: String) -> String {
    format!(
        "{} (min {:.2}, max {:.2}): {detail}",
        ratio_text(ratio.median),
        ratio.min,
        ratio.max
    )
}

/// The issue's three targets for A5 (release fire-and-forget) on one
/// transport, each a ratio to a baseline measured in the same run.
fn session_targets(happy: &HappyResults, transport: Transport) -> Vec<Target> {
    let find = |id: &str, label: Option<&str>| {
        happy
            .arms
            .iter()
            .find(|a| a.id == id && a.transport == transport && label.is_none_or(|l| a.label == l))
    };
    let Some(a5) = find("A5", Some(crate::happy::A5_LABEL)) else {
        return Vec::new();
    };
    let t = transport.as_str();
    if !a5.available {
        let why = a5.note.as_deref().unwrap_or("A5 not available");
        return vec![
            not_measured(
                format!("Server CPU per pair, A5 / A1 ({t})"),
                "<= 0.5x",
                why,
            ),
            not_measured(
                format!("Pairs/s per server core, A5 / A4 Redis ({t})"),
                ">= 1.5x",
                why,
            ),
            not_measured(format!("p50 latency, A5 / A0 ({t})"), "<= 1.0x", why),
        ];
    }
    let mut out = Vec::new();
    let cpu_per_pair = |r: &crate::happy::OpenRepeat| r.server_cpu_seconds / r.sent as f64;
    match find("A1", None) {
        Some(a1) => {
            let ratio = per_repeat(&a5.open, &a1.open, cpu_per_pair);
            out.push(check(
                format!("Server CPU per pair, A5 / A1 ({t})"),
                "<= 0.5x",
                ratio.median,
                ratio_measured(
                    ratio,
                    format!(
                        "A5 {:.3} vs A1 {:.3} core per 1k pairs/s",
                        a5.cpu_per_1k(),
                        a1.cpu_per_1k()
                    ),
                ),
                |v| v <= 0.5,
            ));
        }
        None => out.push(not_measured(
            format!("Server CPU per pair, A5 / A1 ({t})"),
            "<= 0.5x",
            "A1 did not run",
        )),
    }
    match find("A4", None) {
        Some(a4) => {
            let ratio = per_repeat(&a5.saturation, &a4.saturation, |r| r.per_server_core);
            out.push(check(
                format!("Pairs/s per server core, A5 / A4 Redis ({t})"),
                ">= 1.5x",
                ratio.median,
                ratio_measured(
                    ratio,
                    format!(
                        "A5 {:.0} vs A4 {:.0} per core",
                        a5.per_server_core().median,
                        a4.per_server_core().median
                    ),
                ),
                |v| v >= 1.5,
            ));
        }
        None => out.push(not_measured(
            format!("Pairs/s per server core, A5 / A4 Redis ({t})"),
            ">= 1.5x",
            "A4 skipped: no redis-server",
        )),
    }
    match find("A0", None) {
        Some(a0) => {
            let ratio = per_repeat(&a5.open, &a0.open, |r| r.latency.p50_us);
            out.push(check(
                format!("p50 latency, A5 / A0 ({t})"),
                "<= 1.0x",
                ratio.median,
                ratio_measured(
                    ratio,
                    format!("A5 {} vs A0 {}", us(a5.p50().median), us(a0.p50().median)),
                ),
                |v| v <= 1.0,
            ));
        }
        None => out.push(not_measured(
            format!("p50 latency, A5 / A0 ({t})"),
            "<= 1.0x",
            "A0 did not run",
        )),
    }
    out
}

fn not_measured(name: String, goal: &str, why: &str) -> Target {
    Target {
        name,
        goal: goal.to_owned(),
        measured: why.to_owned(),
        pass: None,
    }
}

fn ratio_text(v: f64) -> String {
    format!("{v:.2}x")
}

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}%", v * 100.0)
    } else {
        "n/a".into()
    }
}

fn ms(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 1.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.3} ms")
    }
}

fn us(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} µs")
    } else {
        format!("{v:.1} µs")
    }
}

fn spread_us(s: Spread) -> String {
    if s.n <= 1 {
        us(s.median)
    } else {
        format!("{} ({}–{})", us(s.median), us(s.min), us(s.max))
    }
}

fn spread_rate(s: Spread) -> String {
    if !s.median.is_finite() {
        "—".into()
    } else if s.n <= 1 {
        format!("{:.0}", s.median)
    } else {
        format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max)
    }
}

fn spread_plain(s: Spread, digits: usize) -> String {
    if !s.median.is_finite() {
        "—".into()
    } else if s.n <= 1 {
        format!("{:.*}", digits, s.median)
    } else {
        format!(
            "{:.*} ({:.*}–{:.*})",
            digits, s.median, digits, s.min, digits, s.max
        )
    }
}

fn spread_ms(s: Spread) -> String {
    if s.n <= 1 {
        ms(s.median)
    } else {
        format!("{} ({}–{})", ms(s.median), ms(s.min), ms(s.max))
    }
}

fn spread_pct(s: Spread) -> String {
    if s.n <= 1 {
        pct(s.median)
    } else {
        format!("{} ({}–{})", pct(s.median), pct(s.min), pct(s.max))
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The analysis block of an existing document, to carry over.
pub fn existing_analysis(doc: &Path) -> Option<String> {
    let text = std::fs::read_to_string(doc).ok()?;
    let start = text.find(ANALYSIS_BEGIN)? + ANALYSIS_BEGIN.len();
    let end = start + text[start..].find(ANALYSIS_END)?;
    Some(text[start..end].trim().to_owned())
}

/// What both reports say about the run they come from.
pub struct RunInfo<'a> {
    pub mode: &'a str,
    pub command: &'a str,
    pub date: &'a str,
    pub machine: &'a Machine,
    pub pinning: &'a Pinning,
}

/// The banner and the first rows of a report's "Run" table; the caller adds
/// its own rows. `see_also` follows the banner's last sentence.
pub fn run_header(m: &mut String, run: &RunInfo<'_>, json_name: &str, see_also: &str) {
    let _ = writeln!(
        m,
        "> Generated by `governor-bench` ({} mode); every number below comes from the run described here. \
         Do not edit by hand except inside the analysis block, which the harness keeps when it regenerates this file. \
         Raw data: [`bench/{json_name}`](bench/{json_name}).{see_also}\n",
        run.mode
    );
    let _ = writeln!(m, "## Run\n");
    let _ = writeln!(m, "| | |\n|---|---|");
    let _ = writeln!(m, "| Command | `{}` |", run.command);
    let _ = writeln!(m, "| Date | {} |", run.date);
    let _ = writeln!(
        m,
        "| Machine | {} CPUs ({}), {} RAM, Linux {} |",
        run.machine.nproc, run.machine.cpu_model, run.machine.memory, run.machine.kernel
    );
    let _ = writeln!(m, "| Pinning | {} |", run.pinning.note);
}

pub fn markdown(r: &Results, svg_name: &str, json_name: &str, analysis: Option<&str>) -> String {
    let mut m = String::new();
    let h = &r.happy;
    let _ = writeln!(m, "# Benchmarks and overload evaluation\n");
    let run = RunInfo {
        mode: &r.mode,
        command: &r.command,
        date: &r.date,
        machine: &r.machine,
        pinning: &r.pinning,
    };
    run_header(&mut m, &run, json_name, "");
    let _ = writeln!(
        m,
        "| Load generator | tokio, {} worker thread(s), one HTTP/2 connection per server and transport |",
        r.pinning.load_threads
    );
    let _ = writeln!(
        m,
        "| Governor | `{}` ({}) |",
        r.governor_bin, r.governor_version
    );
    let _ = writeln!(
        m,
        "| Load average (1/5/15 min) | {} at the start, {} at the end{} |",
        r.load_start,
        r.load_end,
        r.env_note
            .as_ref()
            .map_or(String::new(), |n| format!("; {n}"))
    );
    let _ = writeln!(
        m,
        "| Redis | {} |",
        h.redis
            .as_ref()
            .map_or("not available: A4 skipped".to_owned(), |v| format!(
                "redis-server {v}, `--save \"\" --appendonly no`"
            ))
    );
    let _ = writeln!(
        m,
        "| Tracing | {} |",
        if h.tracing_available {
            "spans reached the in-process OTLP sink"
        } else {
            "tracing not available in this build (no span reached the OTLP sink at 100% sampling)"
        }
    );
    let _ = writeln!(
        m,
        "\nTo rerun: `cargo build --release -p rate-governor --bin governor && cargo run --release -p governor-bench -- --quick --only main` \
         (about a minute; drop `--quick` for the full run, several minutes). The machine is shared and noisy, so read \
         ratios and medians over repeats; ranges in parentheses are min–max over the repeats. \
         Adaptive concurrency limits have a report of their own: [benchmarks-adaptive.md](benchmarks-adaptive.md).\n"
    );

    let _ = writeln!(m, "## Targets\n");
    let _ = writeln!(
        m,
        "| Target | Goal | Measured | Verdict |\n|---|---|---|---|"
    );
    for t in &r.targets {
        let _ = writeln!(
            m,
            "| {} | {} | {} | **{}** |",
            t.name,
            t.goal,
            t.measured,
            t.verdict()
        );
    }
    if !r.failures.is_empty() {
        let _ = writeln!(m, "\n**Failed arms in this run:**\n");
        for f in &r.failures {
            let _ = writeln!(m, "- {f}");
        }
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(m, "\nWarnings:\n");
        for w in &r.warnings {
            let _ = writeln!(m, "- {w}");
        }
    }

    let _ = writeln!(m, "\n## Happy path: what a permit costs\n");
    let p = &h.plan;
    let _ = writeln!(
        m,
        "Open loop at {:.0} calls (or pairs) per second, latency from the intended send time, {:.1} s warm-up + {:.1} s measured, \
         {} repeats in rotating order. Saturation: closed loop with {} callers for {:.1} s. \
         CPU is the server process's utime+stime from `/proc/PID/stat` over the open-loop runs, per 1000 calls a second \
         (= CPU seconds per 1000 calls); memory is its VmRSS / VmHWM at the end.\n",
        p.rate,
        p.warmup.as_secs_f64(),
        p.measure.as_secs_f64(),
        p.repeats,
        p.concurrency,
        p.saturation_measure.as_secs_f64()
    );
    for transport in [Transport::Tcp, Transport::Uds] {
        let _ = writeln!(m, "### Over {}\n", transport.as_str());
        let _ = writeln!(
            m,
            "| Arm | What | p50 | p99 | p99.9 | Server CPU per 1k/s | Saturation (per s) | Server cores at saturation | Per server core (per s) | Server RSS / HWM |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for arm in h.arms.iter().filter(|a| a.transport == transport) {
            let _ = writeln!(m, "{}", arm_row(arm));
        }
        if let Some(ratio) = h.ratios.iter().find(|r| r.transport == transport) {
            let _ = writeln!(
                m,
                "\nHeadline A1/A0 (Acquire + Release against an empty call to the same server), per-repeat ratio: p50 **{}**, p99 {}.\n",
                spread_plain(ratio.p50, 2),
                spread_plain(ratio.p99, 2)
            );
        }
        let _ = writeln!(m, "{}", session_summary(h, transport));
    }
    if h.tracing_available {
        let counts: Vec<String> = h
            .spans
            .iter()
            .map(|c| {
                format!(
                    "sampled flag on {:.0}% of pairs: {} spans for {} pairs ({:.3} per pair)",
                    c.sampled_share * 100.0,
                    c.spans,
                    c.pairs,
                    c.spans as f64 / c.pairs.max(1) as f64
                )
            })
            .collect();
        let _ = writeln!(
            m,
            "Spans received by the OTLP sinks (both transports): {}.\n",
            counts.join("; ")
        );
    }
    let l = &h.ledger;
    let lat = |f: fn(&crate::load::Percentiles) -> f64| {
        Spread::of(&l.repeats.iter().map(|r| f(&r.latency)).collect::<Vec<_>>())
    };
    let _ = writeln!(m, "### A3: the permit ledger in-process (no gRPC)\n");
    let _ = writeln!(
        m,
        "| p50 | p99 | p99.9 | Pairs per second on one core |\n|---|---|---|---|\n| {} | {} | {} | {} |\n",
        spread_us(lat(|p| p.p50_us)),
        spread_us(lat(|p| p.p99_us)),
        spread_us(lat(|p| p.p999_us)),
        spread_rate(Spread::of(
            &l.repeats.iter().map(|r| r.throughput).collect::<Vec<_>>()
        ))
    );
    let _ = writeln!(
        m,
        "A0 is one unary call; A1, A2 and A4 are an acquire and a release, two round trips. A2 sends a W3C `traceparent` \
         whose sampled flag is set on 1% or 100% of pairs to a sidecar run with `OTEL_TRACES_SAMPLER=parentbased_traceidratio` \
         and `OTEL_TRACES_SAMPLER_ARG` of the same share, exporting over OTLP/gRPC to a span-counting sink in the harness; \
         \"tracing off\" sends the header to a sidecar without `OTEL_EXPORTER_OTLP_ENDPOINT`. A4 is a sorted-set semaphore \
         in redis-server (Lua scripts: ZREMRANGEBYSCORE expired leases, ZCARD < limit then ZADD; release ZREM), pinned like the sidecar. \
         A5 sends the same acquire and release as messages on one `governor.v1.Governor/Session` stream per load connection, \
         opened once per transport and kept open for the whole run (the open-loop and the saturation runs of both A5 rows share it, \
         with many pairs in flight on it); a demultiplexer task hands each answer to its pair by `id`. A pair is complete when its \
         acquire's answer arrived (checked: granted, lease id present) and its release was handed to the stream with `id = 0` \
         (fire-and-forget: no answer wanted); this is the row the A5 targets use. The \"release answered\" row gives the release \
         an id and waits for its answer too. After every run against a governor the harness checks with `GetDependency` that \
         `bench-happy` has nothing in flight or queued (after an A5 run, one answered pair on the same stream first flushes the \
         fire-and-forget releases); a leftover counts as an error of the arm.\n"
    );

    let o = &r.overload_plan;
    let _ = writeln!(m, "## Overload: goodput and tail latency\n");
    let _ = writeln!(
        m,
        "A simulated downstream in the harness serves {} calls at once with exponential service times (mean {} ms); \
         nominal capacity {:.0}/s, and every extra call waits in an unbounded FIFO queue, as in an overloaded server \
         that keeps working on calls whose callers gave up. Clients arrive open-loop at a multiple of the nominal capacity \
         and give up after {:.0} ms. With the governor, each call first Acquires from the real sidecar over gRPC (TCP) with a \
         static limit of {} in flight, a queue of {} and max wait {} ms, and Releases afterwards. Goodput counts successful \
         responses within the {:.0} ms SLO, as a share of the capacity the downstream actually had (its measured mean service \
         time; timer granularity makes it a little longer than nominal). {:.1} s warm-up + {:.1} s measured, {} repeat(s).\n",
        o.concurrency,
        o.service_ms,
        o.capacity(),
        o.client_timeout_ms,
        o.concurrency,
        o.max_queue,
        o.max_wait_ms,
        o.slo_ms,
        o.warmup.as_secs_f64(),
        o.measure.as_secs_f64(),
        o.repeats
    );
    let _ = writeln!(
        m,
        "![Goodput and p99 latency against offered load]({})\n",
        svg_name
    );
    let _ = writeln!(
        m,
        "| Offered | Arm | Goodput (share of capacity) | Admitted p50 | Admitted p99 | Rejected share | Rejection p99 | Queue wait p50 / p99 / max | Timeouts | Rejections by reason |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for point in &r.overload {
        let last = point.repeats.last();
        let reasons = last
            .map(|r| {
                r.rejected
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let qw = match (point.guard, last) {
            (Guard::Governor, Some(r)) if r.queue_wait.count > 0 => format!(
                "{} / {} / {}",
                us(r.queue_wait.p50_us),
                us(r.queue_wait.p99_us),
                us(r.queue_wait.max_us)
            ),
            _ => "—".into(),
        };
        let timeouts: u64 = point.repeats.iter().map(|r| r.timeouts).sum();
        let sent: u64 = point.repeats.iter().map(|r| r.sent).sum();
        let _ = writeln!(
            m,
            "| {}x ({:.0}/s) | {} | {} | {} | {} | {} | {} | {} | {} of {} | {} |",
            point.multiple,
            last.map_or(0.0, |r| r.offered_rate),
            point.guard.as_str(),
            spread_pct(point.goodput_share()),
            spread_ms(point.admitted_p50_ms()),
            spread_ms(point.admitted_p99_ms()),
            if point.guard == Guard::Governor {
                spread_pct(point.rejected_share())
            } else {
                "—".into()
            },
            if point.guard == Guard::Governor {
                spread_ms(point.rejection_p99_ms())
            } else {
                "—".into()
            },
            qw,
            timeouts,
            sent,
            if reasons.is_empty() {
                "—".into()
            } else {
                reasons
            },
        );
    }
    let _ = writeln!(
        m,
        "\nQueue wait and rejection reasons are from the last repeat; the queue wait is what the governor reports in `AcquireResponse.queue_wait`.\n"
    );

    let s = &r.storm_plan;
    let _ = writeln!(m, "## Retry storm\n");
    let _ = writeln!(
        m,
        "The downstream is in an outage: every call fails after ~{} ms (mean, exponential). Clients send {:.0} first attempts a second \
         and retry every failure up to {} times at once, through the governor, with `attempt` set on retries; a retry rejected with \
         RETRY_BUDGET_EXHAUSTED is not retried further. \"Budget off\" is a dependency whose budget cannot run out (ratio 1000, \
         min_per_second 1000000); \"budget on\" has ratio {}, min_per_second {}, ttl {} s. Amplification is downstream calls attempted \
         / first attempts. {:.1} s warm-up (longer than the budget's ttl) + {:.1} s measured, {} repeat(s).\n",
        s.service_ms,
        s.rate,
        s.retries,
        s.budget_ratio,
        s.budget_min_per_second,
        s.budget_ttl_s,
        s.warmup.as_secs_f64(),
        s.measure.as_secs_f64(),
        s.repeats
    );
    let _ = writeln!(
        m,
        "| Retry budget | Downstream amplification | Acquire amplification | First attempts | Budget rejections | Other rejections |\n|---|---|---|---|---|---|"
    );
    for arm in &r.storm {
        let first: u64 = arm.repeats.iter().map(|r| r.first_attempts).sum();
        let budget: u64 = arm.repeats.iter().map(|r| r.budget_rejections).sum();
        let other: u64 = arm.repeats.iter().map(|r| r.other_rejections).sum();
        let _ = writeln!(
            m,
            "| {} | {}x | {}x | {} | {} | {} |",
            if arm.budget { "on" } else { "off" },
            spread_plain(arm.amplification(), 3),
            spread_plain(arm.attempt_amplification(), 3),
            first,
            budget,
            other
        );
    }

    noisy_section(&mut m, &r.noisy);
    fleet_section(&mut m, &r.fleet);

    let sc = &r.scale;
    let _ = writeln!(m, "\n## Scale (ledger in-process)\n");
    let _ = writeln!(
        m,
        "Acquire + release on dependencies visited in a scattered order ({} pairs per repeat, `[limits] max_dependencies` raised to fit), \
         and hand-overs with many waiters queued on one dependency of limit 1: one release grants the head of the queue, whose task \
         wakes and releases in turn. Flat per-operation costs across sizes mean O(1) per operation.\n",
        sc.plan.pairs
    );
    let _ = writeln!(
        m,
        "| Dependencies | Acquire + release | Creating a dependency |\n|---|---|---|"
    );
    for d in &sc.dependencies {
        let _ = writeln!(
            m,
            "| {} | {} ns | {:.0} ns |",
            d.dependencies,
            spread_plain(d.pair(), 0),
            d.create_ns
        );
    }
    let _ = writeln!(
        m,
        "\n| Waiters on one dependency | Enqueue per waiter | Hand-over per waiter |\n|---|---|---|"
    );
    for w in &sc.waiters {
        let _ = writeln!(
            m,
            "| {} | {} ns | {} ns |",
            w.waiters,
            spread_plain(w.enqueue(), 0),
            spread_plain(w.wake(), 0)
        );
    }

    analysis_block(&mut m, analysis);
    m
}

/// A6, the noisy neighbour: both tenants on both sides, and the victim's
/// p99 with fairness on against off.
fn noisy_section(m: &mut String, r: &NoisyResults) {
    let p = &r.plan;
    let _ = writeln!(
        m,
        "\n## {}: {} (fair shares between tenants)\n",
        crate::noisy::ARM_ID,
        crate::noisy::ARM_NAME
    );
    let _ = writeln!(
        m,
        "Two tenants share one dependency (`{}`) of the real sidecar over gRPC (TCP, one connection per tenant): \
         max_concurrency {}, max_queue {}, max_wait {} ms. A granted permit is held for one call to a simulated downstream \
         ({} workers, exponential service times, mean {} ms: capacity {:.0} permits/s), then released. \"{}\" is a closed loop of \
         {} callers ({:.0}x the limit, each of which would hold a permit all the time: ~{:.0}x the capacity); a rejected call is \
         retried (with `attempt` counting up) after its `retry_after` (at most {:.0} ms; {:.0} ms when there is none), a granted \
         one is followed by the caller's next call; the dependency keeps the default retry budget, which refuses some of \
         those retries (RETRY_BUDGET_EXHAUSTED). \"{}\" is an open loop at {:.0} calls/s ({:.0}% of the capacity, one attempt \
         each, its wait counted from the intended send time), well within its equal share. Each side has a sidecar of its own: \
         *fairness off* has no fairness table (one FIFO queue); *fairness on* has `by = \"tenant\"`, both tenants weight 1. \
         Acquire wait is the time from the send to the answer, whatever the answer (the granted column: grants only); \
         the sidecar's queue wait is its `AcquireResponse.queue_wait`. {:.1} s warm-up + {:.1} s measured per side; after each \
         side `GetDependency` must show nothing in flight or queued and the fair shares in force (or not).\n",
        crate::noisy::DEPENDENCY,
        p.limit,
        p.max_queue,
        p.max_wait_ms,
        p.limit,
        p.hold_ms,
        p.capacity(),
        crate::noisy::NOISY,
        p.noisy_callers,
        p.noisy_multiple(),
        p.noisy_multiple(),
        p.max_retry_pause_ms,
        p.retry_pause_ms,
        crate::noisy::VICTIM,
        p.victim_rate(),
        p.victim_share * 100.0,
        p.warmup.as_secs_f64(),
        p.measure.as_secs_f64(),
    );
    let _ = writeln!(
        m,
        "| Fairness | Tenant | Offered | Attempts | Granted (share of attempts) | Grants/s | Acquire wait p50 | Acquire wait p99 | Granted: wait p99 | Sidecar queue wait p99 | Rejections by reason |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for side in &r.sides {
        let fairness = if side.fairness { "on" } else { "off" };
        let rows = [
            (
                &side.victim,
                format!(
                    "{:.0}/s, open loop ({:.0}% of capacity)",
                    p.victim_rate(),
                    p.victim_share * 100.0
                ),
            ),
            (
                &side.noisy,
                format!(
                    "{} callers, closed loop ({:.0}x the limit)",
                    p.noisy_callers,
                    p.noisy_multiple()
                ),
            ),
        ];
        for (t, offered) in rows {
            let _ = writeln!(
                m,
                "| {fairness} | {} | {offered} | {} | {} ({}) | {:.0} | {} | {} | {} | {} | {} |",
                t.tenant,
                t.attempts,
                t.granted,
                pct(t.granted_share),
                t.grants_per_s,
                wait_or_dash(t.wait.count, t.wait.p50_us),
                wait_or_dash(t.wait.count, t.wait.p99_us),
                wait_or_dash(t.granted_wait.count, t.granted_wait.p99_us),
                wait_or_dash(t.queue_wait.count, t.queue_wait.p99_us),
                rejections(t),
            );
        }
    }
    let victim_p99 = |fairness: bool| {
        r.side(fairness)
            .filter(|s| s.victim.wait.count > 0)
            .map_or(f64::NAN, |s| s.victim.wait.p99_us)
    };
    let holds = |v: f64| {
        if v.is_finite() {
            format!("{:.1}", v / 1000.0 / p.hold_ms)
        } else {
            "n/a".into()
        }
    };
    let _ = writeln!(
        m,
        "\nVictim acquire-wait p99, fairness on / off: **{}** ({} / {}; {} / {} mean hold times).",
        if r.victim_p99_ratio.is_finite() {
            format!("{:.3}x", r.victim_p99_ratio)
        } else {
            "n/a".into()
        },
        us(victim_p99(true)),
        us(victim_p99(false)),
        holds(victim_p99(true)),
        holds(victim_p99(false)),
    );
    let granted: Vec<String> = r
        .sides
        .iter()
        .map(|s| {
            format!(
                "{:.0}/s with fairness {}",
                s.victim.grants_per_s + s.noisy.grants_per_s,
                if s.fairness { "on" } else { "off" }
            )
        })
        .collect();
    let _ = writeln!(
        m,
        "Permits granted to both tenants: {} of the nominal {:.0}/s (a permit is also held while its grant travels back and \
         its release travels to the sidecar).",
        granted.join(", "),
        p.capacity()
    );
    for side in r.sides.iter().filter(|s| s.error.is_some()) {
        let _ = writeln!(
            m,
            "\nFairness {}: {}",
            if side.fairness { "on" } else { "off" },
            side.error.as_deref().unwrap_or_default()
        );
    }
}

/// A7, fleet-wide limits: what the fleet limit costs the local fast path,
/// the store calls, and the trio under a binding limit.
fn fleet_section(m: &mut String, r: &FleetResults) {
    let p = &r.plan;
    let _ = writeln!(
        m,
        "\n## {}: {} (issue 12)\n",
        crate::fleet::ARM_ID,
        crate::fleet::ARM_NAME
    );
    if let Some(why) = &r.skipped {
        let _ = writeln!(m, "_Not run: {why}._");
        return;
    }
    let ttl = |d: std::time::Duration| format!("{}", humantime::format_duration(d));
    let _ = writeln!(
        m,
        "Two sidecars with the same dependency (`{}`, local max_concurrency {}): the *baseline* without a fleet-wide \
         limit, the *fleet* one with `[fleet] redis` on the bench's redis-server (TCP, `{}`), share_ttl {} and \
         `[dependencies.{}.fleet] max_concurrency = {}` (10x the load's concurrency of {}, so it never binds; \
         fallback_share the same). Both under the same open loop as A1 ({:.0} Acquire + Release pairs/s over TCP, \
         latency from the intended send time, {:.1} s warm-up + {:.1} s measured), {} repeat(s) in alternating order; \
         server CPU as for the happy path. The store calls are the fleet sidecar's `governor_fleet_store_calls_total` \
         and `governor_fleet_store_seconds` on /metrics, from its first share to the end of its last run \
         (the baseline's runs included: renewals do not depend on the load); expected: dependencies x 3 / share_ttl.\n",
        crate::fleet::DEPENDENCY,
        p.local_limit,
        r.redis_url,
        ttl(p.share_ttl),
        crate::fleet::DEPENDENCY,
        p.fleet_limit,
        p.load_concurrency,
        p.rate,
        p.warmup.as_secs_f64(),
        p.measure.as_secs_f64(),
        p.repeats,
    );
    let _ = writeln!(
        m,
        "| Sidecar | p50 | p99 | p99.9 | Server CPU per pair | Server RSS / HWM |\n|---|---|---|---|---|---|"
    );
    for side in [&r.baseline, &r.fleet] {
        let p999 = Spread::over(&side.repeats, |x| x.latency.p999_us);
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {:.1} µs | {} / {} |",
            side.label(),
            spread_us(side.p50()),
            spread_us(side.p99()),
            spread_us(p999),
            side.cpu_us_per_pair(),
            mib(side.server_rss_kib),
            mib(side.server_hwm_kib),
        );
    }
    let _ = writeln!(
        m,
        "\nFleet / baseline, per repeat: p50 **{}**, p99 {}, server CPU per pair **{}**.",
        spread_plain(r.ratios.p50, 2),
        spread_plain(r.ratios.p99, 2),
        spread_plain(r.ratios.cpu_per_pair, 2),
    );
    if let Some(s) = &r.store {
        let _ = writeln!(
            m,
            "Store calls of the fleet sidecar: {}; {:.2}x the expected.",
            store_text(s),
            r.calls_ratio()
        );
    }
    if let Some(first) = r.first_share_s {
        let _ = writeln!(
            m,
            "Its first share came {first:.2} s after its start (a fresh key: the store learns for a share_ttl first)."
        );
    }
    if let Some(s) = &r.fleet.status {
        let _ = writeln!(
            m,
            "At the end: mode {}, fleet limit {}, share {}, target {}, enforced {}, demand {}, instances {}; \
             the enforced limit (`DependencyStatus.limit`) {}; {} store calls, {} errors{}.",
            s.mode,
            s.max_concurrency,
            s.share,
            s.target,
            s.enforced,
            s.demand,
            s.instances,
            s.limit,
            s.store_calls_total,
            s.store_errors_total,
            if s.last_error.is_empty() {
                String::new()
            } else {
                format!(", last error {:?}", s.last_error)
            }
        );
    }
    let (Some(t), Some(tp)) = (&r.trio, &p.trio) else {
        return;
    };
    let _ = writeln!(
        m,
        "\n### Three sidecars, one binding fleet-wide limit\n\n\
         Three more sidecars on the same Redis (namespace `{}`), share_ttl {} (renewal every {}), \
         `[dependencies.{}.fleet] max_concurrency = {}`, fallback_share {}; locally max_concurrency {}, max_queue {}, \
         max_wait {} ms. Each is driven by a closed loop of its own callers ({}); a caller holds a granted permit for \
         {} ms, then releases it; a refused one asks again at once (after a queue timeout) or after its `retry_after`. \
         The fair share is the spec's rule at demands = callers. {:.1} s warm-up (the shares move there) + {:.1} s \
         measured, after every sidecar reported a share.\n",
        crate::fleet::TRIO_NAMESPACE,
        ttl(tp.share_ttl),
        ms(tp.renew_interval().as_secs_f64() * 1000.0),
        crate::fleet::DEPENDENCY,
        tp.fleet_limit,
        tp.fallback_share,
        tp.local_limit,
        tp.max_queue,
        tp.max_wait_ms,
        tp.callers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        tp.hold_ms,
        tp.warmup.as_secs_f64(),
        tp.measure.as_secs_f64(),
    );
    let _ = writeln!(
        m,
        "| Sidecar | Callers | Fair share | Share / target / enforced at the end | Instances seen | Grants/s | Permits held (mean) | Granted: wait p50 / p99 | Rejections | Store calls/s (expected) | Store round trip mean |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in &t.sidecars {
        let (end, instances) = match &s.end {
            Some(e) => (
                format!(
                    "{} / {} / {} ({}, demand {})",
                    e.share, e.target, e.enforced, e.mode, e.demand
                ),
                e.instances.to_string(),
            ),
            None => ("—".into(), "—".into()),
        };
        let rejected: Vec<String> = s
            .rejected
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {} / {} | {} | {} | {} |",
            s.instance,
            s.callers,
            s.expected_share,
            end,
            instances,
            s.grants_per_s,
            s.mean_held,
            wait_or_dash(s.granted_wait.count, s.granted_wait.p50_us),
            wait_or_dash(s.granted_wait.count, s.granted_wait.p99_us),
            if rejected.is_empty() {
                "—".into()
            } else {
                rejected.join(", ")
            },
            s.store.as_ref().map_or("—".into(), |w| format!(
                "{:.2} ({:.2})",
                w.calls_per_s, w.expected_per_s
            )),
            s.store
                .as_ref()
                .map_or("—".into(), |w| us(w.latency_mean_us)),
        );
    }
    let held: f64 = t.sidecars.iter().map(|s| s.mean_held).sum();
    let _ = writeln!(
        m,
        "\nPermits held at once across the three, counted by the clients (from a grant's arrival to its release's send, \
         so never more than the sidecars held): at most **{}** for a fleet limit of {} ({:.2} on average in the window). \
         Status samples every 50 ms ({} rounds, the three asked one after the other): sum of the enforced terms at most {}, \
         of in_flight at most {} (both over the whole run). The enforced terms last changed {} after the load started{}. \
         The sidecars' first shares came {} after their start. {}",
        t.peak_held,
        tp.fleet_limit,
        held,
        t.samples,
        t.peak_enforced_sum,
        t.peak_in_flight_sum,
        t.settled_after_s
            .map_or("—".into(), |s| format!("{s:.2} s")),
        if t.settled_before_window {
            " (in the warm-up)"
        } else {
            " (in the measured window: not settled before it)"
        },
        t.first_share_s.map_or("—".into(), |s| format!("{s:.2} s")),
        match t.give_back_ms {
            Some(ms) => format!(
                "Last (after the idle phase below), the idle sidecar was stopped with SIGTERM: the first saw one instance less {ms:.0} ms later \
                 (its share given back, not lapsed after {}).",
                ttl(tp.share_ttl)
            ),
            None => format!(
                "Last (after the idle phase below), the idle sidecar was stopped with SIGTERM: the first did not see it leave within {} \
                 (the share lapsed, or was not given back).",
                ttl(tp.share_ttl)
            ),
        }
    );
    let renew_s = tp.renew_interval().as_secs_f64();
    let _ = writeln!(
        m,
        "\nAfter the window, {}'s callers stopped (it went idle) and the others' ran on for {:.2} s: the enforced terms last changed \
         {} after it went idle.\n",
        t.sidecars
            .last()
            .map_or("the last", |s| s.instance.as_str()),
        t.idle_phase_s,
        t.idle_settled_after_s.map_or("never".into(), |s| format!(
            "{s:.2} s ({:.1} renewal periods)",
            s / renew_s
        )),
    );
    let _ = writeln!(
        m,
        "| Sidecar | Fair share, the last one idle | Share / target / enforced at the end of the idle phase | Demand |\n|---|---|---|---|"
    );
    for s in &t.sidecars {
        let (end, demand) = match &s.idle_end {
            Some(e) => (
                format!("{} / {} / {} ({})", e.share, e.target, e.enforced, e.mode),
                e.demand.to_string(),
            ),
            None => ("—".into(), "—".into()),
        };
        let _ = writeln!(
            m,
            "| {} | {} | {end} | {demand} |",
            s.instance, s.idle_expected
        );
    }
}

fn store_text(s: &StoreWindow) -> String {
    let exact = match (s.renewals, s.renewal_period_s) {
        (Some(n), Some(period)) if period > 0.0 => format!(
            "; from the send times of the renewals (read back from `valid_for`): {n} renewals, one every {period:.3} s \
             = **{:.3}/s**",
            1.0 / period
        ),
        _ => String::new(),
    };
    format!(
        "{} in {:.1} s = **{:.2}/s** (expected {:.2}/s), {} failed; round trip mean {}, p50 <= {}, p99 <= {} \
         (histogram bucket bounds, {} calls){exact}",
        s.calls,
        s.seconds,
        s.calls_per_s,
        s.expected_per_s,
        s.errors,
        us(s.latency_mean_us),
        us(s.latency_p50_le_us),
        us(s.latency_p99_le_us),
        s.latency_count
    )
}

fn wait_or_dash(count: u64, v: f64) -> String {
    if count == 0 { "—".into() } else { us(v) }
}

/// Rejections by reason, and client timeouts, of one tenant.
fn rejections(t: &TenantResult) -> String {
    let mut parts: Vec<String> = t
        .rejected
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    if t.timeouts > 0 {
        parts.push(format!("client timeout: {}", t.timeouts));
    }
    if parts.is_empty() {
        "—".into()
    } else {
        parts.join(", ")
    }
}

/// A5 against A0, A1 and A4 on one transport, both A5 rows, as per-repeat
/// ratios (the targets read the fire-and-forget row).
fn session_summary(h: &HappyResults, transport: Transport) -> String {
    let find = |id: &str, label: Option<&str>| {
        h.arms
            .iter()
            .find(|a| a.id == id && a.transport == transport && label.is_none_or(|l| a.label == l))
    };
    let (a0, a1, a4) = (find("A0", None), find("A1", None), find("A4", None));
    let mut parts = Vec::new();
    for (name, label) in [
        ("release fire-and-forget", crate::happy::A5_LABEL),
        ("release answered", crate::happy::A5_ANSWERED_LABEL),
    ] {
        let Some(a5) = find("A5", Some(label)).filter(|a| a.available) else {
            continue;
        };
        let mut ratios = Vec::new();
        if let Some(a1) = a1 {
            let cpu = per_repeat(&a5.open, &a1.open, |r| r.server_cpu_seconds / r.sent as f64);
            ratios.push(format!("CPU per pair / A1 {}", spread_plain(cpu, 2)));
            let p50 = per_repeat(&a5.open, &a1.open, |r| r.latency.p50_us);
            ratios.push(format!("p50 / A1 {}", spread_plain(p50, 2)));
        }
        if let Some(a0) = a0 {
            let p50 = per_repeat(&a5.open, &a0.open, |r| r.latency.p50_us);
            ratios.push(format!("p50 / A0 {}", spread_plain(p50, 2)));
        }
        if let Some(a4) = a4 {
            let core = per_repeat(&a5.saturation, &a4.saturation, |r| r.per_server_core);
            ratios.push(format!(
                "pairs/s per server core / A4 {}",
                spread_plain(core, 2)
            ));
        }
        if let Some(a1) = a1 {
            let core = per_repeat(&a5.saturation, &a1.saturation, |r| r.per_server_core);
            ratios.push(format!(
                "pairs/s per server core / A1 {}",
                spread_plain(core, 2)
            ));
        }
        parts.push(format!("{name}: {}", ratios.join(", ")));
    }
    if parts.is_empty() {
        return String::new();
    }
    format!(
        "A5 (Session) against the same run's baselines, per-repeat ratios: {}.\n",
        parts.join("; ")
    )
}

/// The hand-written analysis between its markers, which regenerating keeps.
pub fn analysis_block(m: &mut String, analysis: Option<&str>) {
    let _ = writeln!(m, "\n## Analysis\n");
    let _ = writeln!(m, "{ANALYSIS_BEGIN}");
    match analysis {
        Some(text) if !text.is_empty() => {
            let _ = writeln!(m, "{text}");
        }
        _ => {
            let _ = writeln!(m, "_No hand-written analysis for this run._");
        }
    }
    let _ = writeln!(m, "{ANALYSIS_END}");
}

fn arm_row(arm: &Arm) -> String {
    let name = format!("{} | {}", arm.id, arm.label);
    if !arm.available {
        return format!(
            "| {name} | {} | | | | | | | {} / {} |",
            arm.note.as_deref().unwrap_or("not available"),
            mib(arm.server_rss_kib),
            mib(arm.server_hwm_kib)
        );
    }
    let sat = !arm.saturation.is_empty();
    format!(
        "| {name} | {} | {} | {} | {:.3} core | {} | {} | {} | {} / {} |",
        spread_us(arm.p50()),
        spread_us(arm.p99()),
        spread_us(arm.p999()),
        arm.cpu_per_1k(),
        if sat {
            spread_rate(arm.throughput())
        } else {
            "—".into()
        },
        if sat {
            spread_plain(arm.server_cores(), 2)
        } else {
            "—".into()
        },
        if sat {
            spread_rate(arm.per_server_core())
        } else {
            "—".into()
        },
        mib(arm.server_rss_kib),
        mib(arm.server_hwm_kib)
    )
}

/// Goodput and p99 latency against offered load, both arms, as SVG.
pub fn svg(points: &[OverloadPoint], plan: &OverloadPlan) -> String {
    let (w, h) = (960.0, 420.0);
    let panel_w = 380.0;
    let panel_h = 280.0;
    let top = 60.0;
    let lefts = [80.0, 560.0];
    let multiples = &plan.multiples;
    let x_at = |left: f64, i: usize| {
        left + 30.0 + (panel_w - 60.0) * i as f64 / (multiples.len().max(2) - 1) as f64
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">Simulated downstream: {} in flight, {} ms mean service, SLO {} ms</text>"#,
        w / 2.0,
        plan.concurrency,
        plan.service_ms,
        plan.slo_ms
    );
    // Left: goodput share, linear 0..110%.
    let left = lefts[0];
    let y_good = |v: f64| top + panel_h - panel_h * (v.clamp(0.0, 1.1) / 1.1);
    panel_frame(
        &mut s,
        left,
        top,
        panel_w,
        panel_h,
        "Goodput within SLO (share of capacity)",
    );
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = y_good(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##,
            left + panel_w
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{:.0}%</text>"#,
            left - 6.0,
            y + 4.0,
            tick * 100.0
        );
    }
    let y90 = y_good(0.9);
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{y90:.1}" x2="{}" y2="{y90:.1}" stroke="#2a2" stroke-dasharray="4 3"/>"##,
        left + panel_w
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{:.1}" fill="#2a2" text-anchor="end">target 90%</text>"##,
        left + panel_w - 4.0,
        y90 - 4.0
    );
    // Right: latency, log scale 0.1 ms .. 2000 ms.
    let right = lefts[1];
    let (lo, hi) = (0.1f64.log10(), 2000f64.log10());
    let y_ms = |v: f64| top + panel_h - panel_h * ((v.clamp(0.1, 2000.0).log10() - lo) / (hi - lo));
    panel_frame(
        &mut s,
        right,
        top,
        panel_w,
        panel_h,
        "p99 latency, ms (log scale)",
    );
    for tick in [0.1, 1.0, 10.0, 100.0, 1000.0] {
        let y = y_ms(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{right}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##,
            right + panel_w
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{tick}</text>"#,
            right - 6.0,
            y + 4.0
        );
    }
    let slo_y = y_ms(plan.slo_ms);
    let _ = writeln!(
        s,
        r##"<line x1="{right}" y1="{slo_y:.1}" x2="{}" y2="{slo_y:.1}" stroke="#2a2" stroke-dasharray="4 3"/>"##,
        right + panel_w
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{:.1}" fill="#2a2" text-anchor="end">SLO</text>"##,
        right + panel_w - 4.0,
        slo_y - 4.0
    );
    for (i, m) in multiples.iter().enumerate() {
        for l in lefts {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{m}x</text>"#,
                x_at(l, i),
                top + panel_h + 18.0
            );
        }
    }
    for l in lefts {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">offered load (multiple of capacity)</text>"#,
            l + panel_w / 2.0,
            top + panel_h + 38.0
        );
    }
    type Metric = fn(&OverloadPoint) -> Spread;
    let series: [(Guard, Metric, &str, &str, f64, &str); 4] = [
        (
            Guard::None,
            |p| p.goodput_share(),
            "#c33",
            "",
            lefts[0],
            "none",
        ),
        (
            Guard::Governor,
            |p| p.goodput_share(),
            "#25c",
            "",
            lefts[0],
            "gov",
        ),
        (
            Guard::None,
            |p| p.admitted_p99_ms(),
            "#c33",
            "",
            lefts[1],
            "none",
        ),
        (
            Guard::Governor,
            |p| p.admitted_p99_ms(),
            "#25c",
            "",
            lefts[1],
            "gov",
        ),
    ];
    for (guard, metric, color, dash, panel, _) in series {
        let y = |v: f64| {
            if panel == lefts[0] {
                y_good(v)
            } else {
                y_ms(v)
            }
        };
        draw_series(
            &mut s,
            points,
            multiples,
            guard,
            metric,
            &|i| x_at(panel, i),
            &y,
            color,
            dash,
        );
    }
    draw_series(
        &mut s,
        points,
        multiples,
        Guard::Governor,
        |p| p.rejection_p99_ms(),
        &|i| x_at(lefts[1], i),
        &|v| y_ms(v),
        "#25c",
        "5 4",
    );
    // Legend.
    let ly = h - 28.0;
    let legend = [
        ("#c33", "", "no governor"),
        ("#25c", "", "governor: admitted"),
        ("#25c", "5 4", "governor: rejections (right)"),
    ];
    for (i, (color, dash, label)) in legend.iter().enumerate() {
        let x = 120.0 + 260.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2.5" stroke-dasharray="{dash}"/>"#,
            x + 30.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{label}</text>"#,
            x + 38.0,
            ly + 4.0
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn panel_frame(s: &mut String, left: f64, top: f64, w: f64, h: f64, title: &str) {
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#888"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{title}</text>"#,
        left + w / 2.0,
        top - 10.0
    );
}

#[allow(clippy::too_many_arguments)]
fn draw_series(
    s: &mut String,
    points: &[OverloadPoint],
    multiples: &[f64],
    guard: Guard,
    metric: fn(&OverloadPoint) -> Spread,
    x: &dyn Fn(usize) -> f64,
    y: &dyn Fn(f64) -> f64,
    color: &str,
    dash: &str,
) {
    let mut path = Vec::new();
    for (i, m) in multiples.iter().enumerate() {
        let Some(p) = points.iter().find(|p| p.guard == guard && p.multiple == *m) else {
            continue;
        };
        let v = metric(p);
        if !v.median.is_finite() {
            continue;
        }
        let (px, py) = (x(i), y(v.median));
        path.push(format!("{px:.1},{py:.1}"));
        if v.n > 1 {
            let _ = writeln!(
                s,
                r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="{color}"/>"#,
                y(v.min),
                y(v.max)
            );
        }
        let _ = writeln!(
            s,
            r#"<circle cx="{px:.1}" cy="{py:.1}" r="3.5" fill="{color}"/>"#
        );
    }
    if path.len() > 1 {
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2.5" stroke-dasharray="{dash}"/>"#,
            path.join(" ")
        );
    }
}
