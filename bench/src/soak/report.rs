//! The soak's CSV, Markdown report and SVG plot.

use std::fmt::Write as _;

use super::SoakResults;
use super::sample::Sample;
use crate::report::{RunInfo, analysis_block, run_header};

/// Reads one figure of a sample.
type Field = fn(&Sample) -> u64;
/// Reads one figure of a sample in the unit it is plotted in.
type Plotted = fn(&Sample) -> f64;

/// One row per sample: before the load (`phase` = baseline), during it
/// (load) and the last one after it (rest).
pub fn csv(r: &SoakResults) -> String {
    let mut s =
        String::from("phase,t_s,rss_kib,open_fds,tokio_tasks,leases,waiters,dependencies\n");
    let rows = r
        .baseline
        .iter()
        .map(|b| ("baseline", b))
        .chain(r.samples.iter().map(|x| ("load", x)))
        .chain(r.rest.iter().map(|x| ("rest", x)));
    for (phase, x) in rows {
        let _ = writeln!(
            s,
            "{phase},{:.1},{},{},{},{},{},{}",
            x.t, x.rss_kib, x.fds, x.tasks, x.in_flight, x.queued, x.dependencies
        );
    }
    s
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

/// The report, keeping the hand-written analysis of the previous one.
pub fn markdown(r: &SoakResults, csv_name: &str, svg_name: &str, analysis: Option<&str>) -> String {
    let mut m = String::new();
    let p = &r.plan;
    let _ = writeln!(m, "# Soak: does the sidecar leak?\n");
    let mode = if p.duration.as_secs() >= 1800 {
        "soak"
    } else {
        "short soak"
    };
    run_header(
        &mut m,
        &RunInfo {
            mode,
            command: &r.command,
            date: &r.date,
            machine: &r.machine,
            pinning: &r.pinning,
        },
        csv_name,
        " The harness: `bench/src/soak/`.",
    );
    let _ = writeln!(
        m,
        "| Governor | `{}` ({}) |",
        r.governor_bin, r.governor_version
    );
    let _ = writeln!(
        m,
        "| Load | {} s, a sample every {} s ({} samples) |",
        p.duration.as_secs(),
        p.interval.as_secs(),
        r.samples.len()
    );
    let _ = writeln!(
        m,
        "| Result | **{}** |\n",
        if r.ok() { "passed" } else { "FAILED" }
    );

    let _ = writeln!(m, "## The load\n");
    let x = &p.mix;
    let c = &r.counts;
    let _ = writeln!(m, "| What | Rate | Done |\n|---|---|---:|");
    let rows = [
        (
            "Acquire/release pairs (`soak.pairs`, `soak.admin`)".to_owned(),
            format!(
                "{} workers x {}/s, held {} ms; {}/s on soak.admin",
                x.pair_workers, x.pairs_per_worker, x.pair_hold_ms, x.admin_pairs
            ),
            c.pairs,
        ),
        (
            "Hogs holding both permits of `soak.tight`".into(),
            format!("2, back to back, held {} ms", x.hog_hold_ms),
            c.hog_holds,
        ),
        (
            "Waiters that time out (max_wait 50 ms)".into(),
            format!("{}/s", x.timing_out_waiters),
            c.waiters_timed_out,
        ),
        (
            "... of which were granted instead".into(),
            String::new(),
            c.waiters_granted,
        ),
        (
            "Acquires cancelled while queued".into(),
            format!(
                "{}/s, dropped after {} ms",
                x.cancelled_acquires, x.cancel_after_ms
            ),
            c.acquires_cancelled,
        ),
        (
            "... answered before the cancel".into(),
            String::new(),
            c.cancels_too_late,
        ),
        (
            "Leases left to expire (`soak.expire`, TTL 2 s)".into(),
            format!("{}/s", x.expiring_leases),
            c.left_to_expire,
        ),
        (
            "Renews (then released)".into(),
            format!(
                "{} workers, {} renews a lease",
                x.renew_workers, x.renews_per_lease
            ),
            c.renews,
        ),
        (
            "Child processes SIGKILLed holding permits".into(),
            format!(
                "one every {} s, {} permits each",
                x.kill_every_s,
                super::load::HOLDER_PERMITS
            ),
            c.children_killed,
        ),
        (
            "... permits they held".into(),
            String::new(),
            c.killed_holding,
        ),
        (
            "Junk dependency names (idle_ttl 5 s)".into(),
            format!("{}/s", x.junk_names),
            c.junk_names,
        ),
        (
            "... on a new connection each".into(),
            format!("every {}th name", x.junk_names_per_connection),
            c.junk_connections,
        ),
        (
            "Control-plane changes (UpdateDependency + ListDependencies)".into(),
            format!("every {} s", x.control_change_every_s),
            c.control_changes,
        ),
        (
            "... renews answered after the TTL (rightly refused)".into(),
            String::new(),
            c.renews_late,
        ),
        (
            "Grants sought but refused (QUEUE_FULL, QUEUE_TIMEOUT, SHED)".into(),
            String::new(),
            c.refused,
        ),
        ("Unexpected answers".into(), String::new(), c.errors),
    ];
    for (what, rate, n) in rows {
        let _ = writeln!(m, "| {what} | {rate} | {n} |");
    }

    let _ = writeln!(m, "\n## Growth\n");
    let _ = writeln!(
        m,
        "The rule: the run's samples are cut into thirds; the first is warm-up. A series fails if the median of the \
         last third is more than the allowance above the median of the second third. Allowances: RSS {:.0} % + {:.0} KiB, \
         fds {:.0} % + {:.0}, tasks {:.0} % + {:.0}.{}\n",
        p.rss.relative * 100.0,
        p.rss.absolute,
        p.fds.relative * 100.0,
        p.fds.absolute,
        p.tasks.relative * 100.0,
        p.tasks.absolute,
        if p.growth_fails {
            ""
        } else {
            " In this run (shorter than 10 minutes) growth is reported, not failed: thirds of two samples are too short to show a trend."
        }
    );
    let _ = writeln!(
        m,
        "| Series | Before the load | Median, 2nd third | Median, last third | Allowed up to | Max | After the load | Verdict |\n|---|---:|---:|---:|---:|---:|---:|---|"
    );
    let base = r.baseline.unwrap_or_default();
    let rest = r.rest.unwrap_or_default();
    let field: [(&str, Field, bool); 3] = [
        ("RSS (KiB)", |s| s.rss_kib, true),
        ("open fds", |s| s.fds, false),
        ("tokio tasks", |s| s.tasks, false),
    ];
    for (name, f, memory) in field {
        let show = |v: f64| {
            if memory { mib(v) } else { format!("{v:.0}") }
        };
        let max = r.samples.iter().map(f).max().unwrap_or(0) as f64;
        match r.verdicts.iter().find(|v| v.name == name) {
            Some(v) => {
                let _ = writeln!(
                    m,
                    "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                    show(f(&base) as f64),
                    show(v.second_third_median),
                    show(v.last_third_median),
                    show(v.ceiling),
                    show(max),
                    show(f(&rest) as f64),
                    match (v.grew, p.growth_fails) {
                        (false, _) => "flat",
                        (true, true) => "**grew**",
                        (true, false) => "grew (informational)",
                    }
                );
            }
            None => {
                let _ = writeln!(m, "| {name} | | | | | | | not judged |");
            }
        }
    }

    let _ = writeln!(m, "\n## At rest after the load\n");
    let _ = writeln!(
        m,
        "After the load stops the harness samples every 0.5 s (for at most {} s) until live leases and waiters are 0, \
         only the {} configured dependencies are left, and tasks and fds are back to within {} of their number before \
         the load.\n",
        p.settle_timeout.as_secs(),
        super::load::CONFIGURED.len(),
        p.rest_slack
    );
    let _ = writeln!(m, "| | Before the load | After the load |\n|---|---:|---:|");
    let rows: [(&str, Field); 6] = [
        ("Live leases", |s| s.in_flight),
        ("Waiters", |s| s.queued),
        ("Dependencies", |s| s.dependencies),
        ("Tokio tasks", |s| s.tasks),
        ("Open fds", |s| s.fds),
        ("RSS (KiB)", |s| s.rss_kib),
    ];
    for (name, f) in rows {
        let _ = writeln!(m, "| {name} | {} | {} |", f(&base), f(&rest));
    }
    if r.rest.is_some() {
        let _ = writeln!(
            m,
            "\nReached {:.1} s after the load stopped.",
            rest.t - (p.duration + p.interval / 2).as_secs_f64()
        );
    }
    let _ = writeln!(
        m,
        "\n| Dependency | Leases expired | Left to expire |\n|---|---:|---:|"
    );
    for (name, expired) in &r.expired {
        let want = if name == super::load::EXPIRE {
            c.left_to_expire
        } else {
            c.killed_holding
        };
        let _ = writeln!(m, "| `{name}` | {expired} | {want} |");
    }

    let _ = writeln!(m, "\n## Plot\n");
    let _ = writeln!(
        m,
        "![RSS, open fds and tokio tasks of the sidecar over the run]({svg_name})\n"
    );
    let _ = writeln!(m, "## Failures\n");
    if r.failures.is_empty() {
        let _ = writeln!(m, "None.");
    } else {
        for f in &r.failures {
            let _ = writeln!(m, "- {f}");
        }
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(m, "\n## Warnings\n");
        for w in &r.warnings {
            let _ = writeln!(m, "- {w}");
        }
    }
    analysis_block(&mut m, analysis);
    m
}

/// Three panels over time: RSS, open fds, tokio tasks; the thirds and their
/// medians marked.
pub fn svg(r: &SoakResults) -> String {
    const W: f64 = 900.0;
    const PANEL_H: f64 = 180.0;
    const GAP: f64 = 50.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 40.0;
    let panels: [(&str, Plotted, f64); 3] = [
        ("RSS (MiB)", |s| s.rss_kib as f64 / 1024.0, 1.0 / 1024.0),
        ("open fds", |s| s.fds as f64, 1.0),
        ("tokio tasks", |s| s.tasks as f64, 1.0),
    ];
    let names = ["RSS (KiB)", "open fds", "tokio tasks"];
    let height = TOP + 3.0 * (PANEL_H + GAP) + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="14" font-weight="bold">governor soak: {} s of mixed load, a sample every {} s ({})</text>"#,
        r.plan.duration.as_secs(),
        r.plan.interval.as_secs(),
        if r.ok() { "passed" } else { "FAILED" }
    );
    let t_max = r.plan.duration.as_secs_f64().max(1.0);
    let plot_w = W - LEFT - RIGHT;
    let all: Vec<&Sample> = r.baseline.iter().chain(r.samples.iter()).collect();
    for (i, ((label, f, scale), name)) in panels.iter().zip(names).enumerate() {
        let y0 = TOP + i as f64 * (PANEL_H + GAP);
        let values: Vec<f64> = all.iter().map(|x| f(x)).collect();
        let hi = values.iter().copied().fold(0.0_f64, f64::max);
        let y_max = nice_ceiling(hi * 1.1);
        let x = |t: f64| LEFT + plot_w * (t / t_max).clamp(0.0, 1.0);
        let y = |v: f64| y0 + PANEL_H - PANEL_H * (v / y_max).clamp(0.0, 1.0);
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{label}</text>"#,
            y0 - 6.0
        );
        for k in 0..=4 {
            let v = y_max * k as f64 / 4.0;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y(v) + 4.0,
                trim(v)
            );
        }
        for k in 0..=6 {
            let t = t_max * k as f64 / 6.0;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{:.0} s</text>"#,
                x(t),
                y0 + PANEL_H + 15.0,
                t
            );
        }
        // The thirds the rule compares.
        for third in [1.0, 2.0] {
            let xt = x(t_max * third / 3.0);
            let _ = writeln!(
                s,
                r##"<line x1="{xt}" y1="{y0}" x2="{xt}" y2="{}" stroke="#bbb" stroke-dasharray="4 3"/>"##,
                y0 + PANEL_H
            );
        }
        let points: Vec<String> = all
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.t), y(f(p))))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/>"##,
            points.join(" ")
        );
        if let Some(v) = r.verdicts.iter().find(|v| v.name == name) {
            for (from, to, value, colour) in [
                (1.0, 2.0, v.second_third_median, "#2ca02c"),
                (2.0, 3.0, v.last_third_median, "#d62728"),
            ] {
                let _ = writeln!(
                    s,
                    r#"<line x1="{}" y1="{yv}" x2="{}" y2="{yv}" stroke="{colour}" stroke-width="2"/>"#,
                    x(t_max * from / 3.0),
                    x(t_max * to / 3.0),
                    yv = y(value * scale)
                );
            }
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{yc}" x2="{}" y2="{yc}" stroke="#d62728" stroke-dasharray="2 2"/>"##,
                x(t_max * 2.0 / 3.0),
                x(t_max),
                yc = y(v.ceiling * scale)
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{}" fill="#555">green: median of the 2nd third; red: median of the last third; dotted red: the most it may be</text>"##,
        height - 4.0
    );
    let _ = writeln!(s, "</svg>");
    s
}

/// 1, 2 or 5 times a power of ten, at least `v` (and at least 1).
fn nice_ceiling(v: f64) -> f64 {
    let v = v.max(1.0);
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

fn trim(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(13.0), 20.0);
        assert_eq!(nice_ceiling(51.0), 100.0);
        assert_eq!(nice_ceiling(200.0), 200.0);
    }
}
