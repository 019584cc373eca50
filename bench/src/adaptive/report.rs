//! The adaptive-limit report: Markdown, and the limit-over-time plot (SVG).

use std::fmt::Write as _;

use super::analysis::{band, goodput_ratios};
use super::{AdaptiveResults, Guard, LimitSample, PhaseResult, StepArm};
use crate::report::Target;

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}%", v * 100.0)
    } else {
        "—".into()
    }
}

fn ms(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.0} ms", us / 1000.0)
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

fn seconds(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

fn limits(p: &PhaseResult) -> String {
    match (p.limit_median, p.limit_min, p.limit_max) {
        (Some(m), Some(lo), Some(hi)) => format!("{m:.0} ({lo}–{hi})"),
        _ => "—".into(),
    }
}

fn target_rows(m: &mut String, targets: &[Target]) {
    let _ = writeln!(
        m,
        "| Target | Goal | Measured | Verdict |\n|---|---|---|---|"
    );
    for t in targets {
        let _ = writeln!(
            m,
            "| {} | {} | {} | **{}** |",
            t.name,
            t.goal,
            t.measured,
            t.verdict()
        );
    }
}

pub fn markdown(
    r: &AdaptiveResults,
    svg_name: &str,
    json_name: &str,
    analysis: Option<&str>,
) -> String {
    let p = &r.plan;
    let mut m = String::new();
    let _ = writeln!(
        m,
        "# Adaptive concurrency limits: a downstream whose capacity halves\n"
    );
    let run = crate::report::RunInfo {
        mode: &r.mode,
        command: &r.command,
        date: &r.date,
        machine: &r.machine,
        pinning: &r.pinning,
    };
    crate::report::run_header(
        &mut m,
        &run,
        json_name,
        " The other benchmarks are in [benchmarks.md](benchmarks.md).",
    );
    let _ = writeln!(
        m,
        "| Governor | `{}` ({}) |",
        r.governor_bin, r.governor_version
    );
    let _ = writeln!(
        m,
        "\nTo rerun only these arms: `cargo build --release -p rate-governor --bin governor && \
         cargo run --release -p governor-bench -- --quick --only adaptive` (drop `--quick` for the longer phases). \
         Each arm is one run on a shared machine: read the numbers with that in mind.\n"
    );
    let _ = writeln!(m, "## Targets\n");
    target_rows(&mut m, &r.targets);
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

    let phases: Vec<String> = p
        .phases
        .iter()
        .map(|ph| {
            format!(
                "{} {} (c = {}{})",
                ph.name,
                seconds(ph.duration),
                ph.workers,
                if ph.scored { "" } else { ", not counted" }
            )
        })
        .collect();
    let mean_service = r
        .steps
        .iter()
        .flat_map(|a| a.phases.first())
        .map(|ph| ph.workers as f64 / ph.capacity * 1000.0)
        .next();
    let _ = writeln!(m, "\n## Setup\n");
    let _ = writeln!(
        m,
        "A simulated downstream in the harness has c = {} workers at full capacity, exponential service times \
         (mean {} ms nominal{}) and a backlog of {} calls; a call that finds the backlog full is refused at once \
         (a 503), and calls whose caller gave up are still served. Its capacity steps: {}. Halving takes away \
         workers as their calls finish; restoring them starts work on the backlog at once. \
         Callers arrive open-loop at {}x the full capacity ({:.0}/s) and latency is measured from the intended send \
         time. Each caller has a {:.0} ms deadline from its intended send time: the downstream call is cut off \
         there (TIMEOUT), and a caller granted after it gives the permit back as CANCELLED (Acquire itself carries \
         only a 2 s gRPC timeout against stalls; the sidecar's queue wait is bounded by `max_wait`). Goodput counts \
         successes within the {:.0} ms SLO (5x the mean service time), per second and as a share of the phase's \
         capacity (c / measured mean service time).\n",
        p.workers,
        p.service_ms,
        mean_service.map_or(String::new(), |s| format!(", {s:.2} ms measured")),
        p.backlog,
        phases.join(" → "),
        p.step_load,
        p.full_capacity() * p.step_load,
        p.deadline_ms,
        p.slo_ms
    );
    let _ = writeln!(
        m,
        "Every guarded arm calls its own governor sidecar (the real binary, over gRPC on TCP): Acquire, then the \
         downstream, then Release with the outcome — SUCCESS with the downstream latency the caller measured, \
         FAILURE when the downstream refused, TIMEOUT when the deadline ran out first. All sidecars have \
         `max_queue = {}` and `max_wait = \"{}ms\"`: under overload a FIFO queue makes every granted call wait \
         close to `max_wait`, so it must leave room for the service time within the SLO. The adaptive arms set \
         `max_concurrency = {}` (the ceiling) and `[dependencies.{}.adaptive]` with `min_limit = {}`, \
         `initial_limit = {}`, `shadow = false` and the algorithm's defaults. The right static limit is an oracle: \
         the harness sets `max_concurrency` to the new c through `UpdateDependency` at the instant the capacity \
         changes. The limit is polled with `GetDependency` every {} ms. A limit has converged when it is within \
         [{}c, {}c] and stays there for {}; the time to converge is counted from the capacity change.\n",
        p.max_queue,
        p.max_wait_ms,
        p.ceiling,
        super::DEPENDENCY,
        p.min_limit,
        p.initial_limit,
        p.poll_interval.as_millis(),
        p.band.0,
        p.band.1,
        seconds(p.hold)
    );
    let _ = writeln!(m, "![The enforced limit over time, per arm]({svg_name})\n");

    let _ = writeln!(m, "## Per arm and phase\n");
    let _ = writeln!(
        m,
        "| Arm | Phase | Goodput/s (share of capacity) | vs right static | Rejected | Timeouts | Refused by the downstream | Latency p50 / p99 | Limit median (min–max) | Converged after |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let oracle = r.steps.iter().find(|a| a.guard == Guard::RightStatic);
    for arm in &r.steps {
        if !arm.available {
            let _ = writeln!(
                m,
                "| {} | {} | | | | | | | | |",
                arm.label,
                arm.note.as_deref().unwrap_or("not run")
            );
            continue;
        }
        let ratios = oracle
            .filter(|o| o.available)
            .map(|o| goodput_ratios(arm, o))
            .unwrap_or_default();
        for (i, ph) in arm.phases.iter().enumerate() {
            let ratio = ratios.get(i).map_or(f64::NAN, |r| r.1);
            let latency = if ph.admitted.count > 0 {
                format!("{} / {}", ms(ph.admitted.p50_us), ms(ph.admitted.p99_us))
            } else {
                "—".into()
            };
            let converged = match (arm.guard, ph.converged_after_s) {
                (Guard::NoGovernor, _) => "—".into(),
                (_, Some(s)) => format!("{s:.2} s"),
                (_, None) => "never".into(),
            };
            let _ = writeln!(
                m,
                "| {} | {} (c = {}) | {:.0} ({}) | {} | {} ({}) | {} | {} | {} | {} | {} |",
                arm.label,
                ph.name,
                ph.workers,
                ph.goodput_rate,
                pct(ph.goodput_share),
                if arm.guard == Guard::RightStatic {
                    "—".into()
                } else {
                    pct(ratio)
                },
                ph.rejected,
                pct(ph.rejected_share),
                ph.timeouts,
                ph.refused,
                latency,
                limits(ph),
                converged
            );
        }
    }
    let _ = writeln!(
        m,
        "\nRejected, timeouts and refusals are counts out of the calls sent in the phase (by intended send time); \
         latency is from the intended send time, over every call that reached the downstream.\n"
    );

    let _ = writeln!(
        m,
        "## Steady load at {}x: rejections caused by the algorithm\n",
        p.steady_load
    );
    let _ = writeln!(
        m,
        "Full capacity throughout, {:.0} calls/s offered ({}x), {} warm-up then {} measured, a fresh \
         sidecar per algorithm. The ceiling ({}) is far above what this load needs, so the governor would never \
         reject without the algorithm: every rejection here is caused by the enforced limit.\n",
        p.full_capacity() * p.steady_load,
        p.steady_load,
        seconds(p.steady_warmup),
        seconds(p.steady_measure),
        p.ceiling
    );
    let _ = writeln!(
        m,
        "| Algorithm | Sent | Rejected | Rejected share | Goodput (share of capacity) | Latency p50 / p99 | Limit median (min–max) |\n|---|---|---|---|---|---|---|"
    );
    for arm in &r.steady {
        let ph = &arm.phase;
        if !arm.available {
            let _ = writeln!(
                m,
                "| {} | {} | | | | | |",
                arm.algorithm.as_str(),
                arm.note.as_deref().unwrap_or("not run")
            );
            continue;
        }
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} |",
            arm.algorithm.as_str(),
            ph.sent,
            ph.rejected,
            pct(ph.rejected_share),
            pct(ph.goodput_share),
            if ph.admitted.count > 0 {
                format!("{} / {}", ms(ph.admitted.p50_us), ms(ph.admitted.p99_us))
            } else {
                "—".into()
            },
            limits(ph)
        );
    }

    crate::report::analysis_block(&mut m, analysis);
    m
}

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const PLOT_W: f64 = 760.0;
const PANEL_H: f64 = 110.0;
const GAP: f64 = 42.0;
const TOP: f64 = 56.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A step line through the phases' worker counts, scaled by `k`.
fn phase_steps(phases: &[(f64, f64, usize)], k: f64) -> Vec<(f64, f64)> {
    phases
        .iter()
        .flat_map(|&(from, to, w)| [(from, w as f64 * k), (to, w as f64 * k)])
        .collect()
}

/// The enforced limit of every guarded step arm over time, one panel each,
/// with the capacity c (dashed) and the convergence band (shaded).
pub fn svg(r: &AdaptiveResults) -> String {
    let p = &r.plan;
    let arms: Vec<&StepArm> = r
        .steps
        .iter()
        .filter(|a| a.guard != Guard::NoGovernor)
        .collect();
    let mut spans = Vec::new();
    let mut at = 0.0;
    for ph in &p.phases {
        let d = ph.duration.as_secs_f64();
        spans.push((at, at + d, ph.workers));
        at += d;
    }
    let total = at.max(1e-9);
    let height = TOP + arms.len() as f64 * (PANEL_H + GAP) + 40.0;
    let x = |t: f64| LEFT + PLOT_W * (t / total).clamp(0.0, 1.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Enforced limit over time: c = {} workers halved and restored, {}x load, {} mode</text>"#,
        WIDTH / 2.0,
        p.workers,
        p.step_load,
        escape(&r.mode)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="40" text-anchor="middle" fill="#555">limit (blue), in flight (grey), capacity c (dashed), band [{}c, {}c] (green); seconds from the start</text>"##,
        WIDTH / 2.0,
        p.band.0,
        p.band.1
    );
    for (i, arm) in arms.iter().enumerate() {
        let top = TOP + 14.0 + i as f64 * (PANEL_H + GAP);
        let ymax = arm
            .trace
            .iter()
            .map(|t| t.limit.max(t.in_flight) as f64)
            .fold(p.band.1 * p.workers as f64, f64::max)
            * 1.1;
        let y = |v: f64| top + PANEL_H - PANEL_H * (v / ymax).clamp(0.0, 1.0);
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{:.1}" font-size="13">{}</text>"#,
            top - 5.0,
            escape(&arm.label)
        );
        // The band, the phase boundaries and the capacity line.
        for &(from, to, w) in &spans {
            let (lo, hi) = band(p, w);
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#2a2" fill-opacity="0.15"/>"##,
                x(from),
                y(hi),
                x(to) - x(from),
                y(lo) - y(hi)
            );
            if from > 0.0 {
                let _ = writeln!(
                    s,
                    r##"<line x1="{0:.1}" y1="{top:.1}" x2="{0:.1}" y2="{1:.1}" stroke="#999" stroke-dasharray="2 3"/>"##,
                    x(from),
                    top + PANEL_H
                );
            }
        }
        let c: Vec<String> = phase_steps(&spans, 1.0)
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#333" stroke-dasharray="5 4"/>"##,
            c.join(" ")
        );
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{top:.1}" width="{PLOT_W}" height="{PANEL_H}" fill="none" stroke="#888"/>"##
        );
        for tick in y_ticks(ymax) {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{tick}</text>"#,
                LEFT - 6.0,
                y(tick as f64) + 4.0
            );
        }
        if !arm.available || arm.trace.is_empty() {
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="22" fill="white" stroke="#a33"/>"##,
                LEFT + 20.0,
                top + PANEL_H / 2.0 - 15.0,
                PLOT_W - 40.0
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#a33">{}</text>"##,
                LEFT + PLOT_W / 2.0,
                top + PANEL_H / 2.0,
                escape(arm.note.as_deref().unwrap_or("no limit samples"))
            );
            continue;
        }
        series(&mut s, &arm.trace, |t| t.in_flight, &x, &y, "#aaa", 1.0);
        series(&mut s, &arm.trace, |t| t.limit, &x, &y, "#25c", 2.0);
    }
    // The time axis under the last panel.
    let axis_y = TOP + 14.0 + arms.len() as f64 * (PANEL_H + GAP) - GAP + 16.0;
    let step = if total > 30.0 { 5.0 } else { 1.0 };
    let mut t = 0.0;
    while t <= total + 1e-9 {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{axis_y:.1}" text-anchor="middle">{t:.0}</text>"#,
            x(t)
        );
        t += step;
    }
    for (&(from, to, w), phase) in spans.iter().zip(&p.phases) {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{} (c = {w})</text>"##,
            (x(from) + x(to)) / 2.0,
            axis_y + 18.0,
            escape(&phase.name)
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn y_ticks(ymax: f64) -> Vec<u32> {
    let raw = ymax / 4.0;
    let step = [
        1u32, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 250, 500,
    ]
    .into_iter()
    .find(|&s| f64::from(s) >= raw)
    .unwrap_or(1000);
    (0..)
        .map(|i| i * step)
        .take_while(|&v| f64::from(v) <= ymax)
        .collect()
}

fn series(
    s: &mut String,
    trace: &[LimitSample],
    value: fn(&LimitSample) -> u32,
    x: &dyn Fn(f64) -> f64,
    y: &dyn Fn(f64) -> f64,
    color: &str,
    width: f64,
) {
    let points: Vec<String> = trace
        .iter()
        .map(|t| format!("{:.1},{:.1}", x(t.t), y(f64::from(value(t)))))
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="{width}"/>"#,
        points.join(" ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adaptive::{Algorithm, SteadyArm, StepArm};
    use crate::env::{Machine, Pinning};
    use crate::report::{ANALYSIS_BEGIN, ANALYSIS_END};

    fn results() -> AdaptiveResults {
        let plan = crate::adaptive::tests::plan();
        let trace: Vec<LimitSample> = (0..130)
            .map(|i| LimitSample {
                t: i as f64 * 0.05,
                limit: if i < 60 { 16 } else { 3 },
                adaptive_limit: None,
                baseline_ms: None,
                recent_ms: None,
                in_flight: 4,
                queued: 0,
                workers: 4,
            })
            .collect();
        let arm = |guard: Guard, available: bool| StepArm {
            guard,
            label: guard.label(&plan),
            available,
            note: (!available).then(|| "not available: old binary".into()),
            phases: Vec::new(),
            trace: if available { trace.clone() } else { Vec::new() },
            first_error: None,
        };
        AdaptiveResults {
            mode: "test".into(),
            command: "governor-bench --test".into(),
            date: "2026-01-01 00:00 UTC".into(),
            machine: Machine::describe(),
            pinning: Pinning::apply(true),
            governor_bin: "governor".into(),
            governor_version: "governor 0.1.0".into(),
            steps: vec![
                arm(Guard::Adaptive(Algorithm::Gradient), false),
                arm(Guard::RightStatic, true),
                arm(Guard::NoGovernor, true),
            ],
            steady: vec![SteadyArm {
                algorithm: Algorithm::Gradient,
                available: false,
                note: Some("not available: old binary".into()),
                phase: PhaseResult::default(),
                trace: Vec::new(),
                first_error: None,
            }],
            targets: Vec::new(),
            failures: Vec::new(),
            warnings: Vec::new(),
            plan,
        }
    }

    #[test]
    fn the_plot_has_a_panel_per_guarded_arm_and_the_trace() {
        let r = results();
        let svg = svg(&r);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // Two guarded arms: gradient (not run) and the oracle; not the unguarded one.
        assert!(svg.contains(">adaptive gradient<"));
        assert!(svg.contains(">right static (oracle)<"));
        assert!(!svg.contains(">no governor<"));
        assert!(svg.contains("not available: old binary"));
        // The oracle's limit and in-flight lines, with one point per poll.
        let limit_line = svg
            .lines()
            .find(|l| l.contains(r##"stroke="#25c""##))
            .expect("a limit line");
        assert_eq!(limit_line.matches(',').count(), 130);
        // A band per phase in each of the two panels.
        assert_eq!(svg.matches(r#"fill-opacity="0.15""#).count(), 8);
    }

    #[test]
    fn the_document_keeps_the_analysis_and_says_what_did_not_run() {
        let r = results();
        let doc = markdown(
            &r,
            "bench/adaptive.svg",
            "adaptive.json",
            Some("Kept text."),
        );
        assert!(doc.contains("| adaptive gradient | not available: old binary |"));
        assert!(doc.contains("| gradient | not available: old binary |"));
        assert!(doc.contains(&format!("{ANALYSIS_BEGIN}\nKept text.\n{ANALYSIS_END}")));
        assert!(doc.contains("![The enforced limit over time, per arm](bench/adaptive.svg)"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(y_ticks(28.16), vec![0, 8, 16, 24]);
        assert_eq!(y_ticks(220.0), vec![0, 64, 128, 192]);
        assert_eq!(y_ticks(4.0), vec![0, 1, 2, 3, 4]);
    }
}
