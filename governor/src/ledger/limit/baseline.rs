//! The no-load latency estimate.
//!
//! It only falls on its own: to the median of the last `baseline_windows`
//! uncongested windows' typical latencies, when that is lower. It rises only
//! when the samples show that the downstream became slower for good
//! ([`Baseline::relearn`]).
//!
//! # Why not the minimum latency ever seen?
//! One lucky call (a cache hit, an error answered at once) would set the
//! baseline forever and make every normal window look congested; this is how
//! peers' limits end up pinned low. Here half of the recent windows must have
//! been that fast. A low percentile would not do either: an estimate that
//! only falls keeps the lowest value its statistic ever took, and a low
//! percentile of noisy windows wanders far below the truth (the 20th
//! percentile of 50 windows ended 20 % low in the simulation), which makes
//! normal latency look congested. The median of 50 windows wanders by ~2 %.
//!
//! # Why not let it age out, or probe for it?
//! An estimate that forgets drifts up under a standing queue (Vegas keeps one
//! by design): every window it remembers is a congested one, so congestion
//! becomes the new normal and the limit ratchets up. Envoy instead measures
//! its minimum RTT by pinning concurrency low every interval, which rejects
//! traffic at steady state. Neither is needed when the one reason for the
//! baseline to rise, a slower downstream, can be told from congestion by its
//! own signature: its latency does not fall when the calls in flight do.

use std::collections::VecDeque;
use std::time::Duration;

use super::window::WindowSummary;

/// Windows needed for a first estimate.
const MIN_WINDOWS: usize = 5;
/// Windows [`Baseline::relearn`] looks back over; every one of them must
/// have been congested.
const RECENT: usize = 8;
/// Consecutive windows whose look back must agree before the baseline is
/// re-learnt.
const AGREE: u8 = 3;

#[derive(Clone, Copy, Debug)]
struct Recent {
    typical: Duration,
    in_flight: f64,
    /// The limit this window was decided under.
    limit: f64,
    /// The algorithm cut the limit for latency after this window, or its
    /// latency was above the tolerance.
    congested: bool,
}

#[derive(Debug)]
pub(crate) struct Baseline {
    typicals: VecDeque<Duration>,
    capacity: usize,
    value: Option<Duration>,
    recent: VecDeque<Recent>,
    tolerance: f64,
    /// Consecutive windows at which [`Baseline::relearn`] held.
    evidence: u8,
}

impl Baseline {
    pub(crate) fn new(capacity: u32) -> Baseline {
        Baseline {
            typicals: VecDeque::with_capacity(capacity as usize),
            capacity: capacity as usize,
            value: None,
            recent: VecDeque::with_capacity(RECENT),
            tolerance: f64::INFINITY,
            evidence: 0,
        }
    }

    pub(crate) fn value(&self) -> Option<Duration> {
        self.value
    }

    pub(crate) fn resize(&mut self, capacity: u32) {
        self.capacity = capacity as usize;
        while self.typicals.len() > self.capacity {
            self.typicals.pop_front();
        }
        self.value = self.estimate();
    }

    /// Takes a closed window in; O(baseline_windows) per window, never per
    /// sample. `tolerance` is how much latency inflation counts as congested.
    pub(crate) fn observe(&mut self, window: &WindowSummary, tolerance: f64) {
        self.tolerance = tolerance;
        let Some(typical) = window.typical else {
            return;
        };
        let congested = self
            .value
            .is_some_and(|base| typical.as_secs_f64() > tolerance * base.as_secs_f64());
        if congested {
            // Only windows without queueing say what no load looks like.
            return;
        }
        if self.typicals.len() == self.capacity {
            self.typicals.pop_front();
        }
        self.typicals.push_back(typical);
        self.value = self.estimate();
    }

    /// The lower of the current value and the median of the recent
    /// uncongested windows.
    fn estimate(&self) -> Option<Duration> {
        // A handful of windows is too few for a median to mean anything: a
        // lucky first window would set a floor the estimate never leaves.
        if self.typicals.len() < MIN_WINDOWS {
            return self.value;
        }
        let mut sorted: Vec<Duration> = self.typicals.iter().copied().collect();
        let median = median(&mut sorted);
        Some(self.value.map_or(median, |value| value.min(median)))
    }

    /// What the algorithm made of a window decided under `limit`: whether it
    /// cut the limit for latency. Re-learns the baseline when the cuts did
    /// not help, and then returns the limit from before them: they were made
    /// against a baseline that no longer held.
    pub(crate) fn decided(&mut self, window: &WindowSummary, limit: f64, cut: bool) -> Option<f64> {
        let typical = window.typical?;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        let inflated = self
            .value
            .is_some_and(|base| typical.as_secs_f64() > self.tolerance * base.as_secs_f64());
        self.recent.push_back(Recent {
            typical,
            in_flight: window.mean_in_flight,
            limit,
            congested: cut || inflated,
        });
        let Some(relearned) = self.relearn() else {
            self.evidence = 0;
            return None;
        };
        self.evidence += 1;
        if self.evidence < AGREE {
            return None;
        }
        self.evidence = 0;
        // The recent latency is the new normal, until windows say better.
        let before = self.recent.front().map(|w| w.limit);
        self.typicals.clear();
        self.recent.clear();
        self.value = Some(relearned);
        before
    }

    /// A new baseline, if the downstream got slower for good.
    ///
    /// Congestion makes the algorithm cut the limit, so the calls in flight
    /// fall, queueing shrinks with them (Little's law: latency in proportion
    /// to the calls in flight) and latency returns to the baseline within a
    /// few windows. The latency of a slower downstream does not fall. So over
    /// the last [`RECENT`] windows: when all were congested (cut, or above
    /// the tolerance) and the latency of the second half stayed nearer
    /// "unchanged" than "in proportion" to the calls in flight (at least the
    /// square root of the load's change when the load fell by a quarter;
    /// within 15 % when it did not: the limit at its minimum, or an
    /// algorithm holding), cutting did not help: the baseline is out of
    /// date, and the second half's median latency replaces it.
    ///
    /// A capacity loss looks the same across the moment it happens (before:
    /// many calls at some latency; after the cuts: fewer at the same), which
    /// is why the windows are few and must all be congested (windows from
    /// before a loss rarely are) and why [`AGREE`] windows in a row must
    /// agree: a look back that straddles the loss stops agreeing as soon as
    /// the cuts after it lower latency.
    fn relearn(&self) -> Option<Duration> {
        if self.recent.len() < RECENT {
            return None;
        }
        let congested = self.recent.iter().filter(|w| w.congested).count();
        let half = RECENT / 2;
        let mean = |it: &mut dyn Iterator<Item = &Recent>| {
            let (n, sum) = it.fold((0.0, 0.0), |(n, sum), w| (n + 1.0, sum + w.in_flight));
            sum / f64::max(n, 1.0)
        };
        let load = mean(&mut self.recent.iter().skip(half))
            / mean(&mut self.recent.iter().take(half)).max(1e-9);
        let mut early: Vec<Duration> = self.recent.iter().take(half).map(|w| w.typical).collect();
        let mut late: Vec<Duration> = self.recent.iter().skip(half).map(|w| w.typical).collect();
        let (early, late) = (median(&mut early), median(&mut late));
        let latency = late.as_secs_f64() / early.as_secs_f64().max(1e-12);
        // Fewer calls in flight but latency nearer "unchanged" than "in
        // proportion"; or, with the load about the same (the limit at its
        // minimum, or an algorithm holding), latency that does not fall.
        let stuck = if load <= 0.75 {
            latency >= load.sqrt()
        } else {
            latency >= 0.85
        };
        (congested == RECENT && stuck).then_some(late)
    }
}

fn median(values: &mut [Duration]) -> Duration {
    let rank = (values.len() - 1) / 2;
    *values.select_nth_unstable(rank).1
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: f64 = 1.5;

    fn window(typical_ms: u64, in_flight: f64) -> WindowSummary {
        WindowSummary {
            samples: 100,
            drops: 0,
            typical: Some(Duration::from_millis(typical_ms)),
            mean_in_flight: in_flight,
            throughput: 1000.0,
            mean: Some(Duration::from_millis(typical_ms)),
        }
    }

    #[test]
    fn the_estimate_is_a_median_that_never_drifts_up() {
        let ms = Duration::from_millis;
        let mut baseline = Baseline::new(9);
        for typical in [15, 16, 17, 19] {
            baseline.observe(&window(typical, 8.0), TOLERANCE);
        }
        assert_eq!(baseline.value(), None, "four windows are too few");
        baseline.observe(&window(18, 8.0), TOLERANCE);
        assert_eq!(baseline.value(), Some(ms(17)));
        for typical in [14, 13, 12, 11, 10] {
            baseline.observe(&window(typical, 8.0), TOLERANCE);
        }
        assert_eq!(baseline.value(), Some(ms(14)));
        // One lucky window moves it by one rank, not to its own value.
        baseline.observe(&window(1, 8.0), TOLERANCE);
        assert_eq!(baseline.value(), Some(ms(13)));
        // A standing queue at the same load is not a new normal.
        for _ in 0..20 {
            baseline.observe(&window(19, 8.0), TOLERANCE);
        }
        assert_eq!(baseline.value(), Some(ms(13)));
    }

    #[test]
    fn latency_that_cutting_does_not_bring_back_is_relearned() {
        let ms = Duration::from_millis;
        let mut baseline = Baseline::new(50);
        let feed = |baseline: &mut Baseline, typical, in_flight, cut| {
            let w = window(typical, in_flight);
            baseline.observe(&w, TOLERANCE);
            baseline.decided(&w, in_flight, cut)
        };
        for _ in 0..MIN_WINDOWS {
            feed(&mut baseline, 10, 16.0, false);
        }
        // Congestion, cut away within a few windows, again and again.
        for _ in 0..10 {
            for (typical, in_flight, cut) in [
                (30, 24.0, true),
                (10, 10.0, false),
                (10, 12.0, false),
                (10, 14.0, false),
            ] {
                feed(&mut baseline, typical, in_flight, cut);
            }
        }
        assert_eq!(baseline.value(), Some(ms(10)));
        // A slower downstream: cut after cut, the calls in flight fall,
        // latency stays. Eight windows fill the look back, and three in a
        // row must agree.
        let mut in_flight = 16.0;
        let mut feed_cut = |baseline: &mut Baseline| {
            in_flight *= 0.9;
            feed(baseline, 20, in_flight, true)
        };
        for _ in 0..RECENT + usize::from(AGREE) - 2 {
            assert_eq!(feed_cut(&mut baseline), None, "not yet: {baseline:?}");
        }
        assert_eq!(baseline.value(), Some(ms(10)));
        let restored = feed_cut(&mut baseline);
        assert_eq!(baseline.value(), Some(ms(20)));
        assert!(
            restored.unwrap() > 8.0,
            "the limit from before the cuts: {restored:?}"
        );
    }
}
