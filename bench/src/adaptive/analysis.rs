//! Convergence times and the targets, from the measured phases and polls.

use super::{AdaptivePlan, Algorithm, Guard, LimitSample, PhaseResult, SteadyArm, StepArm};
use crate::report::Target;

/// Seconds from `from` until the limit first entered `[lo, hi]` and stayed
/// there for `hold` seconds, looking only at polls in `[from, to)`; None if
/// that never happened (a run in the band cut short by `to` does not count).
pub fn converge_time(
    trace: &[LimitSample],
    from: f64,
    to: f64,
    (lo, hi): (f64, f64),
    hold: f64,
) -> Option<f64> {
    let mut entered = None;
    for s in trace.iter().filter(|s| s.t >= from && s.t < to) {
        let inside = (lo..=hi).contains(&f64::from(s.limit));
        match (inside, entered) {
            (false, _) => entered = None,
            (true, None) => entered = Some(s.t),
            (true, Some(_)) => {}
        }
        if let Some(at) = entered {
            if s.t - at >= hold {
                return Some(at - from);
            }
        }
    }
    None
}

const FAILED: &str = "not measured: the arm failed (see the failures)";

/// The band for `workers`.
pub fn band(plan: &AdaptivePlan, workers: usize) -> (f64, f64) {
    let c = workers as f64;
    (plan.band.0 * c, plan.band.1 * c)
}

/// Fills in every scored phase's convergence time.
pub fn annotate(plan: &AdaptivePlan, arms: &mut [StepArm]) {
    let hold = plan.hold.as_secs_f64();
    for arm in arms.iter_mut().filter(|a| a.guard != Guard::NoGovernor) {
        for phase in arm.phases.iter_mut() {
            phase.converged_after_s = converge_time(
                &arm.trace,
                phase.start_s,
                phase.start_s + phase.duration_s,
                band(plan, phase.workers),
                hold,
            );
        }
    }
}

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}%", v * 100.0)
    } else {
        "n/a".into()
    }
}

/// The index (among the scored phases) of the first scored phase with fewer
/// workers than the phase before it.
fn halved_phase(plan: &AdaptivePlan) -> Option<usize> {
    let mut scored = 0;
    let mut before = None;
    for p in &plan.phases {
        if p.scored {
            if before.is_some_and(|w| p.workers < w) {
                return Some(scored);
            }
            scored += 1;
        }
        before = Some(p.workers);
    }
    None
}

/// Goodput of `arm` in each phase as a share of the oracle's, with the phase.
pub fn goodput_ratios(arm: &StepArm, oracle: &StepArm) -> Vec<(String, f64)> {
    arm.phases
        .iter()
        .zip(&oracle.phases)
        .map(|(a, o)| {
            let ratio = if o.goodput_rate > 0.0 {
                a.goodput_rate / o.goodput_rate
            } else {
                f64::NAN
            };
            (a.name.clone(), ratio)
        })
        .collect()
}

fn convergence_target(plan: &AdaptivePlan, algorithm: Algorithm, arm: &StepArm) -> Target {
    let goal = format!(
        "<= {:.1} s into [{}c, {}c]",
        plan.converge_target.as_secs_f64(),
        plan.band.0,
        plan.band.1
    );
    let name = format!("{}: limit after the capacity halves", algorithm.as_str());
    let phase: Option<&PhaseResult> = halved_phase(plan).and_then(|i| arm.phases.get(i));
    let (measured, pass) = match phase {
        _ if !arm.available => ("not run".to_owned(), None),
        _ if arm.failed() => (FAILED.to_owned(), None),
        None => ("no halved phase measured".to_owned(), None),
        Some(p) => {
            let (lo, hi) = band(plan, p.workers);
            let in_band = format!("[{lo:.1}, {hi:.1}] (c = {})", p.workers);
            match p.converged_after_s {
                Some(s) => (
                    format!("{s:.2} s into {in_band}"),
                    Some(s <= plan.converge_target.as_secs_f64()),
                ),
                None => (
                    format!(
                        "never held {in_band} for {:.1} s within the {:.1} s phase (limit {}..{})",
                        plan.hold.as_secs_f64(),
                        p.duration_s,
                        p.limit_min.map_or("?".into(), |v| v.to_string()),
                        p.limit_max.map_or("?".into(), |v| v.to_string())
                    ),
                    Some(false),
                ),
            }
        }
    };
    Target {
        name,
        goal,
        measured,
        pass,
    }
}

fn goodput_target(algorithm: Algorithm, arm: &StepArm, oracle: Option<&StepArm>) -> Target {
    let name = format!(
        "{}: goodput vs the right static limit, every phase",
        algorithm.as_str()
    );
    let goal = ">= 90%".to_owned();
    let Some(oracle) = oracle.filter(|o| o.available && arm.available) else {
        return Target {
            name,
            goal,
            measured: "not run".into(),
            pass: None,
        };
    };
    if arm.failed() || oracle.failed() {
        return Target {
            name,
            goal,
            measured: FAILED.into(),
            pass: None,
        };
    }
    let ratios = goodput_ratios(arm, oracle);
    let worst = ratios
        .iter()
        .filter(|(_, r)| r.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1));
    match worst {
        Some((phase, ratio)) => Target {
            name,
            goal,
            measured: format!(
                "lowest {} ({phase}); {}",
                pct(*ratio),
                ratios
                    .iter()
                    .map(|(p, r)| format!("{p} {}", pct(*r)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            pass: Some(ratios.iter().all(|(_, r)| r.is_finite() && *r >= 0.9)),
        },
        None => Target {
            name,
            goal,
            measured: "the right static limit had no goodput".into(),
            pass: None,
        },
    }
}

fn steady_target(plan: &AdaptivePlan, arm: &SteadyArm) -> Target {
    let name = format!(
        "{}: rejections at {}x load",
        arm.algorithm.as_str(),
        plan.steady_load
    );
    let goal = "< 0.5%".to_owned();
    if !arm.available || arm.phase.sent == 0 {
        return Target {
            name,
            goal,
            measured: "not run".into(),
            pass: None,
        };
    }
    if arm.phase.errors > 0 || arm.first_error.is_some() {
        return Target {
            name,
            goal,
            measured: FAILED.into(),
            pass: None,
        };
    }
    let p = &arm.phase;
    Target {
        name,
        goal,
        measured: format!(
            "{:.2}% ({} of {}; limit {}..{})",
            p.rejected_share * 100.0,
            p.rejected,
            p.sent,
            p.limit_min.map_or("?".into(), |v| v.to_string()),
            p.limit_max.map_or("?".into(), |v| v.to_string())
        ),
        pass: Some(p.rejected_share < 0.005),
    }
}

/// Three targets per algorithm: convergence after the halving, goodput
/// against the oracle in every phase, rejections at steady low load.
pub fn targets(plan: &AdaptivePlan, steps: &[StepArm], steady: &[SteadyArm]) -> Vec<Target> {
    let oracle = steps.iter().find(|a| a.guard == Guard::RightStatic);
    let mut out = Vec::new();
    for algorithm in Algorithm::ALL {
        if let Some(arm) = steps.iter().find(|a| a.guard == Guard::Adaptive(algorithm)) {
            out.push(convergence_target(plan, algorithm, arm));
            out.push(goodput_target(algorithm, arm, oracle));
        }
        if let Some(arm) = steady.iter().find(|a| a.algorithm == algorithm) {
            out.push(steady_target(plan, arm));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(points: &[(f64, u32)]) -> Vec<LimitSample> {
        points
            .iter()
            .map(|&(t, limit)| LimitSample {
                t,
                limit,
                adaptive_limit: Some(limit),
                baseline_ms: None,
                recent_ms: None,
                in_flight: 0,
                queued: 0,
                workers: 8,
            })
            .collect()
    }

    /// Polls every 0.1 s from `from` to `to` with `f(t)` as the limit.
    fn polls(from: f64, to: f64, f: impl Fn(f64) -> u32) -> Vec<(f64, u32)> {
        let n = ((to - from) * 10.0).round() as usize;
        (0..n)
            .map(|i| {
                let t = from + i as f64 / 10.0;
                (t, f(t))
            })
            .collect()
    }

    #[test]
    fn converges_when_it_enters_the_band_and_stays() {
        // Phase 4..8 s, c = 8, band [6.4, 12.8]: 16 until 5.5 s, then 10.
        let t = trace(&polls(4.0, 8.0, |t| if t < 5.5 { 16 } else { 10 }));
        let at = converge_time(&t, 4.0, 8.0, (6.4, 12.8), 1.0).unwrap();
        assert!((at - 1.5).abs() < 1e-9, "{at}");
    }

    #[test]
    fn a_dip_through_the_band_is_not_convergence() {
        // In the band 4.5-5.0 only, then below it, back in from 6.0.
        let t = trace(&polls(4.0, 8.0, |t| match t {
            t if t < 4.45 => 16,
            t if t < 5.05 => 8,
            t if t < 5.95 => 3,
            _ => 7,
        }));
        let at = converge_time(&t, 4.0, 8.0, (6.4, 12.8), 1.0).unwrap();
        assert!((at - 2.0).abs() < 1e-9, "{at}");
    }

    #[test]
    fn never_converging_or_converging_too_late_is_none() {
        let t = trace(&polls(4.0, 8.0, |_| 32));
        assert_eq!(converge_time(&t, 4.0, 8.0, (6.4, 12.8), 1.0), None);
        // Enters at 7.5 s: only 0.4 s of polls left in the phase.
        let t = trace(&polls(4.0, 8.0, |t| if t < 7.45 { 32 } else { 8 }));
        assert_eq!(converge_time(&t, 4.0, 8.0, (6.4, 12.8), 1.0), None);
        // Polls of the next phase do not count.
        let t = trace(&polls(4.0, 12.0, |t| if t < 7.45 { 32 } else { 8 }));
        assert_eq!(converge_time(&t, 4.0, 8.0, (6.4, 12.8), 1.0), None);
        assert!(converge_time(&t, 4.0, 12.0, (6.4, 12.8), 1.0).is_some());
    }

    #[test]
    fn the_band_edges_are_inside() {
        let t = trace(&polls(0.0, 2.0, |t| if t < 1.0 { 16 } else { 8 }));
        // c = 10: band [8, 16], both values inside from the start.
        assert_eq!(converge_time(&t, 0.0, 2.0, (8.0, 16.0), 1.0), Some(0.0));
    }

    fn arm(guard: Guard, goodput: [f64; 3], converged: [Option<f64>; 3]) -> StepArm {
        let names = ["full", "half", "full again"];
        StepArm {
            guard,
            label: String::new(),
            available: true,
            note: None,
            phases: (0..3)
                .map(|i| PhaseResult {
                    name: names[i].into(),
                    workers: if i == 1 { 2 } else { 4 },
                    goodput_rate: goodput[i],
                    converged_after_s: converged[i],
                    duration_s: 2.0,
                    ..Default::default()
                })
                .collect(),
            trace: Vec::new(),
            first_error: None,
        }
    }

    #[test]
    fn targets_compare_with_the_oracle_and_read_the_halved_phase() {
        let plan = super::super::tests::plan();
        let gradient = Guard::Adaptive(Algorithm::Gradient);
        let vegas = Guard::Adaptive(Algorithm::Vegas);
        let steps = vec![
            // 95%, 91%, 100% of the oracle; converged 1.5 s after halving.
            arm(
                gradient,
                [380.0, 182.0, 400.0],
                [Some(0.0), Some(1.5), None],
            ),
            // 89% in the half phase; converged too late.
            arm(
                vegas,
                [400.0, 178.0, 400.0],
                [Some(0.0), Some(2.5), Some(0.1)],
            ),
            arm(Guard::RightStatic, [400.0, 200.0, 400.0], [Some(0.0); 3]),
        ];
        let steady = vec![SteadyArm {
            algorithm: Algorithm::Gradient,
            available: true,
            note: None,
            phase: PhaseResult {
                sent: 1000,
                rejected: 5,
                rejected_share: 0.005,
                ..Default::default()
            },
            trace: Vec::new(),
            first_error: None,
        }];
        let t = targets(&plan, &steps, &steady);
        let verdicts: Vec<(&str, Option<bool>)> =
            t.iter().map(|t| (t.name.as_str(), t.pass)).collect();
        assert_eq!(
            verdicts,
            vec![
                ("gradient: limit after the capacity halves", Some(true)),
                (
                    "gradient: goodput vs the right static limit, every phase",
                    Some(true)
                ),
                ("gradient: rejections at 0.8x load", Some(false)),
                ("vegas: limit after the capacity halves", Some(false)),
                (
                    "vegas: goodput vs the right static limit, every phase",
                    Some(false)
                ),
            ]
        );
        assert!(
            t[1].measured.starts_with("lowest 91.0% (half)"),
            "{}",
            t[1].measured
        );
        assert!(
            t[3].measured.starts_with("2.50 s into [1.6, 3.2]"),
            "{}",
            t[3].measured
        );
    }

    #[test]
    fn the_halved_phase_is_found_after_the_warm_up() {
        let plan = super::super::tests::plan();
        assert_eq!(
            plan.phases.iter().map(|p| p.workers).collect::<Vec<_>>(),
            vec![4, 4, 2, 4]
        );
        assert_eq!(halved_phase(&plan), Some(1));
    }
}
