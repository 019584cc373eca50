//! How many permits a dependency may have in flight: the policy seam.
//!
//! The configured `max_concurrency` is a *ceiling*; what admission and
//! hand-over read is the *enforced* limit, which [`Limiter`] derives in one
//! place: `enforced = min(ceiling, adaptive limit, fleet share)` (the
//! adaptive limit counts only when it is on and not in shadow mode; the
//! fleet share only under a fleet-wide limit, set by the fleet task, see
//! `crate::fleet`). Each input is one term of that minimum, not a special
//! case in the ledger.
//!
//! # Adaptive limits
//! Callers report each call's outcome and latency on Release; the ledger
//! turns them into [`Sample`]s (a success is a latency, a failure, timeout or
//! expired lease a drop; cancelled and unspecified say nothing). Samples
//! fill a sampling [`window`] (O(1) each); when the window closes, the
//! [`baseline`] (no-load latency) is updated and one [`LimitAlgorithm`]
//! turns the window into a new limit: [`gradient`], [`vegas`] or [`aimd`].
//!
//! Rules every algorithm shares, learnt from the peers' bug trackers:
//! - A window whose calls never held half the limit holds the limit: the
//!   samples say nothing about it, so it neither grows while under-used nor
//!   collapses at low load.
//! - The no-load latency is the median of recent uncongested windows, never
//!   a single minimum; it only falls, and is re-learnt when cutting the limit
//!   stops bringing latency down (a downstream that became slower for good).
//!   See [`baseline`].
//! - The limit stays in `[min_limit, ceiling]` whatever the samples.
//!
//! All of it runs under the dependency's one lock, on the release that
//! closes a window; no task, no timer, no other lock.

mod aimd;
mod baseline;
mod config;
mod gradient;
mod vegas;
mod window;

#[cfg(test)]
mod sim;

use std::fmt::Debug;
use std::time::Duration;

use tokio::time::Instant;

pub use config::{AdaptiveConfig, AdaptivePatch, Algorithm, AlgorithmChoice};
pub use window::{Sample, SampleKind, WindowSummary};

use baseline::Baseline;
use window::Window;

/// One limit algorithm: a closed window in, the next limit out.
///
/// What every algorithm shares is decided before it is asked: an under-used
/// window holds the limit, drops above `drop_threshold` multiply it by
/// `backoff`, and a window without a latency or without a baseline yet holds
/// it. So an algorithm only turns latency into a limit.
pub(crate) trait LimitAlgorithm: Send + Sync + Debug {
    fn algorithm(&self) -> Algorithm;

    /// The limit after `window`, from `limit`; the caller clamps it to
    /// `[min_limit, ceiling]`.
    fn update(
        &mut self,
        limit: f64,
        window: &WindowSummary,
        congestion: Congestion,
        config: &AdaptiveConfig,
    ) -> Update;
}

/// What a window's latency says against the baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Congestion {
    /// Typical latency over the no-load latency.
    pub inflation: f64,
    /// Calls waiting inside the dependency: the calls in it, by Little's
    /// law `throughput x mean latency`, times the share of their latency
    /// that is excess, `1 - 1 / inflation`.
    ///
    /// Not the permits in flight times that share, which is the same only
    /// when a permit is held exactly as long as the call takes. Callers hold
    /// permits across their own round trips too (the Release, scheduling),
    /// and those permits are not queued anywhere: counting them as queued
    /// makes the limit too small for the arrival rate at moderate load.
    pub queued: f64,
}

impl Congestion {
    fn of(window: &WindowSummary, typical: Duration, baseline: Duration) -> Congestion {
        let inflation = typical.as_secs_f64() / baseline.as_secs_f64().max(1e-9);
        let inside = window.throughput * window.mean.unwrap_or(typical).as_secs_f64();
        Congestion {
            inflation,
            queued: inside * (1.0 - 1.0 / inflation.max(1e-9)).max(0.0),
        }
    }
}

fn algorithm(kind: Algorithm) -> Box<dyn LimitAlgorithm> {
    match kind {
        Algorithm::Gradient => Box::new(gradient::Gradient),
        Algorithm::Vegas => Box::new(vegas::Vegas),
        Algorithm::Aimd => Box::new(aimd::Aimd),
    }
}

/// An algorithm's answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Update {
    pub limit: f64,
    pub reason: ChangeReason,
}

impl Update {
    fn new(limit: f64, reason: ChangeReason) -> Update {
        Update { limit, reason }
    }

    fn hold(limit: f64) -> Update {
        Update::new(limit, ChangeReason::Hold)
    }
}

/// Why a limit moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeReason {
    /// Latency rose above the no-load estimate.
    Latency,
    /// Too many calls failed, timed out or expired.
    Drops,
    /// Latency was fine and the limit in use: probe upwards.
    Growth,
    /// The downstream became slower for good: the no-load latency was
    /// re-learnt and the cuts made against the old one undone.
    Relearn,
    /// Nothing to change (never reported as a change).
    Hold,
    /// The config file or the control plane changed the settings.
    Config,
    /// This sidecar's share of a fleet-wide limit moved.
    Fleet,
}

impl ChangeReason {
    pub const ALL: [ChangeReason; 6] = [
        ChangeReason::Latency,
        ChangeReason::Drops,
        ChangeReason::Growth,
        ChangeReason::Relearn,
        ChangeReason::Config,
        ChangeReason::Fleet,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeReason::Latency => "latency",
            ChangeReason::Drops => "drops",
            ChangeReason::Growth => "growth",
            ChangeReason::Relearn => "relearn",
            ChangeReason::Hold => "hold",
            ChangeReason::Config => "config",
            ChangeReason::Fleet => "fleet",
        }
    }
}

/// A move of the enforced or the computed limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimitChange {
    pub before: LimitStatus,
    pub after: LimitStatus,
    pub reason: ChangeReason,
}

impl LimitChange {
    /// Two moves made one after the other under one lock hold, as one: from
    /// the first's `before` to the second's `after`, for the first's reason.
    pub(crate) fn merge(
        first: Option<LimitChange>,
        second: Option<LimitChange>,
    ) -> Option<LimitChange> {
        match (first, second) {
            (Some(first), Some(second)) => Some(LimitChange {
                after: second.after,
                ..first
            }),
            (first, second) => first.or(second),
        }
    }
}

/// The limits of a dependency at one instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimitStatus {
    /// What admission enforces.
    pub enforced: u32,
    /// `max_concurrency`.
    pub ceiling: u32,
    pub adaptive: Option<AdaptiveStatus>,
    /// This sidecar's part of a fleet-wide limit (see `crate::fleet`), when
    /// there is one: a term of the minimum.
    pub fleet: Option<u32>,
}

/// What an adaptive limit computed and what it based it on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveStatus {
    pub algorithm: Algorithm,
    pub shadow: bool,
    /// The computed limit (enforced unless `shadow`).
    pub limit: u32,
    /// The no-load latency estimate.
    pub baseline: Option<Duration>,
    /// The last window's typical latency (the mean of its fastest 90 %).
    pub recent: Option<Duration>,
}

/// A running adaptive limit: settings, sampling window, baseline, algorithm.
#[derive(Debug)]
struct AdaptiveLimit {
    config: AdaptiveConfig,
    algorithm: Box<dyn LimitAlgorithm>,
    window: Window,
    baseline: Baseline,
    limit: f64,
    recent: Option<Duration>,
}

impl AdaptiveLimit {
    fn new(config: AdaptiveConfig, start: u32, ceiling: u32, now: Instant) -> AdaptiveLimit {
        AdaptiveLimit {
            algorithm: algorithm(config.algorithm()),
            window: Window::new(now),
            baseline: Baseline::new(config.baseline_windows()),
            limit: f64::from(start.clamp(config.min_limit(), ceiling)),
            recent: None,
            config,
        }
    }

    fn limit(&self) -> u32 {
        self.limit.round() as u32
    }

    fn clamp(&mut self, ceiling: u32) {
        self.limit = self
            .limit
            .clamp(f64::from(self.config.min_limit()), f64::from(ceiling));
    }

    /// Records a sample; returns why the limit moved, if the window closed
    /// and it did.
    fn sample(&mut self, sample: &Sample, ceiling: u32) -> Option<ChangeReason> {
        self.window.record(sample);
        // A window shorter than two calls would judge calls still running.
        let length = self
            .config
            .window()
            .max(self.recent.map_or(Duration::ZERO, |r| r * 2));
        let summary = self
            .window
            .close(sample.at, length, self.config.min_samples())?;
        self.baseline.observe(&summary, self.config.tolerance());
        self.recent = summary.typical.or(self.recent);
        if !summary.used(self.limit) {
            return None;
        }
        let before = self.limit();
        let decided_under = self.limit;
        let mut update = if summary.drop_rate() > self.config.drop_threshold() {
            Update::new(self.limit * self.config.backoff(), ChangeReason::Drops)
        } else if let (Some(typical), Some(baseline)) = (summary.typical, self.baseline.value()) {
            let congestion = Congestion::of(&summary, typical, baseline);
            self.algorithm
                .update(self.limit, &summary, congestion, &self.config)
        } else {
            Update::hold(self.limit)
        };
        if update.limit.is_finite() {
            self.limit = update.limit;
        }
        self.clamp(ceiling);
        let cut = update.reason == ChangeReason::Latency;
        if let Some(restored) = self.baseline.decided(&summary, decided_under, cut) {
            self.limit = restored.max(self.limit);
            self.clamp(ceiling);
            update.reason = ChangeReason::Relearn;
        }
        (self.limit() != before).then_some(update.reason)
    }

    /// New settings; the state (limit, window, baseline) carries over, so a
    /// switch of algorithm starts from the current limit.
    fn reconfigure(&mut self, config: AdaptiveConfig, ceiling: u32) {
        if config.algorithm() != self.config.algorithm() {
            self.algorithm = algorithm(config.algorithm());
        }
        self.baseline.resize(config.baseline_windows());
        self.config = config;
        self.clamp(ceiling);
    }

    fn status(&self) -> AdaptiveStatus {
        AdaptiveStatus {
            algorithm: self.algorithm.algorithm(),
            shadow: self.config.shadow(),
            limit: self.limit(),
            baseline: self.baseline.value(),
            recent: self.recent,
        }
    }
}

/// The enforced limit of one dependency and everything that moves it.
#[derive(Debug)]
pub(crate) struct Limiter {
    ceiling: u32,
    adaptive: Option<AdaptiveLimit>,
    /// The fleet term; `None` without a fleet-wide limit.
    fleet: Option<u32>,
    enforced: u32,
}

impl Limiter {
    /// A new dependency's limiter: an adaptive limit starts at its
    /// `initial_limit`.
    pub(crate) fn new(ceiling: u32, adaptive: Option<&AdaptiveConfig>, now: Instant) -> Limiter {
        let adaptive = adaptive
            .map(|config| AdaptiveLimit::new(*config, config.initial_limit(), ceiling, now));
        let mut limiter = Limiter {
            ceiling,
            adaptive,
            fleet: None,
            enforced: ceiling,
        };
        limiter.enforced = limiter.derive();
        limiter
    }

    /// What admission and hand-over may fill.
    pub(crate) fn enforced(&self) -> u32 {
        self.enforced
    }

    pub(crate) fn status(&self) -> LimitStatus {
        LimitStatus {
            enforced: self.enforced,
            ceiling: self.ceiling,
            adaptive: self.adaptive.as_ref().map(AdaptiveLimit::status),
            fleet: self.fleet,
        }
    }

    /// The local limit: the ceiling and the adaptive limit, without the
    /// fleet term (what this sidecar could use if the fleet let it).
    pub(crate) fn local(&self) -> u32 {
        match &self.adaptive {
            Some(adaptive) if !adaptive.config.shadow() => adaptive.limit().min(self.ceiling),
            _ => self.ceiling,
        }
    }

    fn derive(&self) -> u32 {
        self.fleet
            .map_or(self.local(), |fleet| fleet.min(self.local()))
    }

    /// A new fleet term (`None`: no fleet-wide limit any more). Lowering it
    /// never revokes a permit; it only stops grants until in-flight fits.
    pub(crate) fn set_fleet(&mut self, fleet: Option<u32>) -> Option<LimitChange> {
        if fleet == self.fleet {
            return None;
        }
        let before = self.status();
        self.fleet = fleet;
        self.enforced = self.derive();
        Some(LimitChange {
            before,
            after: self.status(),
            reason: ChangeReason::Fleet,
        })
    }

    /// A finished call. O(1), plus a constant amount of work when it closes
    /// a window.
    pub(crate) fn sample(&mut self, sample: &Sample) -> Option<LimitChange> {
        let before = self.status();
        let reason = self.adaptive.as_mut()?.sample(sample, self.ceiling)?;
        self.enforced = self.derive();
        Some(LimitChange {
            before,
            after: self.status(),
            reason,
        })
    }

    /// New settings from the config file or the control plane. Turning an
    /// adaptive limit on or switching its algorithm starts from the limit in
    /// force now; a lower ceiling clamps it at once.
    pub(crate) fn reconfigure(
        &mut self,
        ceiling: u32,
        adaptive: Option<&AdaptiveConfig>,
        now: Instant,
    ) -> Option<LimitChange> {
        let before = self.status();
        match (self.adaptive.as_mut(), adaptive) {
            (Some(running), Some(config)) => running.reconfigure(*config, ceiling),
            (None, Some(config)) => {
                // From the local limit in force (not a fleet share's cap).
                self.adaptive = Some(AdaptiveLimit::new(*config, self.local(), ceiling, now));
            }
            (_, None) => self.adaptive = None,
        }
        self.ceiling = ceiling;
        self.enforced = self.derive();
        let after = self.status();
        (after != before).then_some(LimitChange {
            before,
            after,
            reason: ChangeReason::Config,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A window of 100 calls at `in_flight` (10 ms each: the algorithms see
    /// latency only as the inflation they are given).
    pub(crate) fn summary(in_flight: u32) -> WindowSummary {
        WindowSummary {
            samples: 100,
            drops: 0,
            typical: Some(Duration::from_millis(10)),
            mean_in_flight: f64::from(in_flight),
            throughput: f64::from(in_flight) * 100.0,
            mean: Some(Duration::from_millis(10)),
        }
    }

    /// What `window` says at `inflation` over a 10 ms baseline.
    pub(crate) fn at(window: &WindowSummary, inflation: f64) -> Congestion {
        let baseline = Duration::from_millis(10);
        Congestion::of(window, baseline.mul_f64(inflation), baseline)
    }

    fn config(patch: AdaptivePatch) -> AdaptiveConfig {
        AdaptiveConfig::patched(None, &patch).unwrap().unwrap()
    }

    #[test]
    fn enforced_is_the_ceiling_in_shadow_mode_and_the_minimum_otherwise() {
        let now = Instant::now();
        let shadow = config(AdaptivePatch {
            shadow: Some(true),
            ..Default::default()
        });
        let mut limiter = Limiter::new(100, Some(&shadow), now);
        let status = limiter.status();
        assert_eq!(status.enforced, 100);
        assert_eq!(status.adaptive.unwrap().limit, 16);

        let enforcing = config(AdaptivePatch::default());
        let change = limiter.reconfigure(100, Some(&enforcing), now).unwrap();
        assert_eq!(change.reason, ChangeReason::Config);
        assert_eq!(
            limiter.enforced(),
            16,
            "leaving shadow mode keeps the computed limit"
        );

        // A ceiling below the computed limit wins at once.
        limiter.reconfigure(10, Some(&enforcing), now).unwrap();
        assert_eq!(limiter.enforced(), 10);
        assert_eq!(limiter.status().adaptive.unwrap().limit, 10);

        // Off: the ceiling again; on again: starts from the limit in force.
        limiter.reconfigure(50, None, now).unwrap();
        assert_eq!((limiter.enforced(), limiter.status().adaptive), (50, None));
        limiter.reconfigure(50, Some(&enforcing), now);
        assert_eq!(limiter.enforced(), 50);
        assert_eq!(
            limiter.reconfigure(50, Some(&enforcing), now),
            None,
            "no change, no report"
        );
    }

    #[test]
    fn switching_algorithms_keeps_the_limit() {
        let now = Instant::now();
        let mut limiter = Limiter::new(64, Some(&config(AdaptivePatch::default())), now);
        let vegas = config(AdaptivePatch {
            algorithm: Some(AlgorithmChoice::Adaptive(Algorithm::Vegas)),
            ..Default::default()
        });
        let change = limiter.reconfigure(64, Some(&vegas), now).unwrap();
        assert_eq!(change.after.adaptive.unwrap().algorithm, Algorithm::Vegas);
        assert_eq!((change.before.enforced, change.after.enforced), (16, 16));
    }

    #[test]
    fn under_used_windows_hold_the_limit() {
        let start = Instant::now();
        let mut limiter = Limiter::new(64, Some(&config(AdaptivePatch::default())), start);
        // Calls at 4 in flight of 16, first fast, then ten times slower:
        // neither growth nor a cut.
        for (i, latency) in (0..2000u64).map(|i| (i, if i < 1000 { 1 } else { 10 })) {
            let change = limiter.sample(&Sample {
                kind: SampleKind::Latency(Duration::from_millis(latency)),
                in_flight: 4,
                at: start + Duration::from_millis(i),
            });
            assert_eq!(change, None, "sample {i}");
        }
        assert_eq!(limiter.enforced(), 16);
    }

    #[test]
    fn one_lucky_fast_call_does_not_pin_the_limit() {
        let start = Instant::now();
        let mut limiter = Limiter::new(64, Some(&config(AdaptivePatch::default())), start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        let sample = |latency: Duration, ms: u64| Sample {
            kind: SampleKind::Latency(latency),
            in_flight: 16,
            at: at(ms),
        };
        // Steady 10 ms calls at 16 in flight for 2 s, one 1 µs call among them.
        for ms in 0..2000u64 {
            let latency = if ms == 1000 {
                Duration::from_micros(1)
            } else {
                Duration::from_millis(10)
            };
            limiter.sample(&sample(latency, ms));
        }
        let status = limiter.status().adaptive.unwrap();
        let baseline = status.baseline.unwrap();
        assert!(baseline >= Duration::from_millis(9), "{status:?}");
        // And the limit grew (latency at the baseline, the limit in use),
        // instead of being cut as if every 10 ms call were congested.
        assert!(limiter.enforced() > 16, "{status:?}");
    }

    fn arbitrary_algorithm() -> impl Strategy<Value = AlgorithmChoice> {
        prop::sample::select(vec![
            AlgorithmChoice::Static,
            AlgorithmChoice::Adaptive(Algorithm::Gradient),
            AlgorithmChoice::Adaptive(Algorithm::Vegas),
            AlgorithmChoice::Adaptive(Algorithm::Aimd),
        ])
    }

    #[derive(Clone, Debug)]
    enum Step {
        Sample {
            micros: u64,
            drop: bool,
            in_flight: u32,
            gap_ms: u64,
        },
        Reconfigure {
            ceiling: u32,
            min_limit: u32,
            algorithm: AlgorithmChoice,
            shadow: bool,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            20 => (0u64..10_000_000, any::<bool>(), 0u32..2000, 0u64..50).prop_map(
                |(micros, drop, in_flight, gap_ms)| Step::Sample { micros, drop, in_flight, gap_ms }
            ),
            1 => (1u32..300, 1u32..50, arbitrary_algorithm(), any::<bool>()).prop_map(
                |(ceiling, min_limit, algorithm, shadow)| Step::Reconfigure {
                    ceiling,
                    min_limit,
                    algorithm,
                    shadow,
                }
            ),
        ]
    }

    proptest! {
        /// Whatever the samples and reconfigurations, the computed limit
        /// stays in [min_limit, ceiling] and the enforced one in [1, ceiling].
        #[test]
        fn the_limit_stays_within_its_bounds(
            algorithm in arbitrary_algorithm(),
            steps in prop::collection::vec(step(), 1..1500),
        ) {
            let start = Instant::now();
            let mut now = start;
            let patch = AdaptivePatch {
                algorithm: Some(algorithm),
                window: Some(Duration::from_millis(10)),
                min_samples: Some(3),
                ..Default::default()
            };
            let mut adaptive = AdaptiveConfig::patched(None, &patch).unwrap();
            let mut ceiling = 64;
            let mut limiter = Limiter::new(ceiling, adaptive.as_ref(), start);
            for step in steps {
                match step {
                    Step::Sample { micros, drop, in_flight, gap_ms } => {
                        now += Duration::from_millis(gap_ms);
                        let kind = if drop {
                            SampleKind::Drop
                        } else {
                            SampleKind::Latency(Duration::from_micros(micros))
                        };
                        limiter.sample(&Sample { kind, in_flight, at: now });
                    }
                    Step::Reconfigure { ceiling: c, min_limit, algorithm, shadow } => {
                        let patch = AdaptivePatch {
                            algorithm: Some(algorithm),
                            min_limit: Some(min_limit.min(c)),
                            shadow: Some(shadow),
                            ..patch
                        };
                        adaptive = AdaptiveConfig::patched(adaptive.as_ref(), &patch).unwrap();
                        ceiling = c;
                        limiter.reconfigure(ceiling, adaptive.as_ref(), now);
                    }
                }
                let status = limiter.status();
                prop_assert!((1..=ceiling).contains(&status.enforced), "{status:?}");
                prop_assert_eq!(status.ceiling, ceiling);
                if let (Some(computed), Some(config)) = (status.adaptive, adaptive.as_ref()) {
                    prop_assert!(
                        (config.min_limit()..=ceiling).contains(&computed.limit),
                        "{status:?}"
                    );
                    if !config.shadow() {
                        prop_assert_eq!(status.enforced, computed.limit);
                    }
                }
            }
        }
    }

    #[test]
    fn drops_back_off_whatever_the_algorithm() {
        for algorithm in Algorithm::ALL {
            let start = Instant::now();
            let patch = AdaptivePatch {
                algorithm: Some(AlgorithmChoice::Adaptive(algorithm)),
                initial_limit: Some(20),
                window: Some(Duration::from_millis(10)),
                min_samples: Some(10),
                ..Default::default()
            };
            let mut limiter = Limiter::new(64, Some(&config(patch)), start);
            // One call in ten fails, at full use: above the 5 % threshold.
            for ms in 0..=10u64 {
                let kind = if ms % 10 == 3 {
                    SampleKind::Drop
                } else {
                    SampleKind::Latency(Duration::from_millis(5))
                };
                let change = limiter.sample(&Sample {
                    kind,
                    in_flight: 20,
                    at: start + Duration::from_millis(ms),
                });
                if ms == 10 {
                    let change = change.unwrap();
                    assert_eq!(change.reason, ChangeReason::Drops, "{algorithm:?}");
                    assert_eq!(change.after.enforced, 18, "{algorithm:?}: 20 x 0.9");
                }
            }
        }
    }
}
