//! Adaptive limit settings, validated once so an algorithm never sees an
//! impossible value. The config file and the control plane both build them
//! through [`AdaptiveConfig::patched`], so `[defaults.adaptive]`, a
//! dependency's own table and an `UpdateDependency` merge the same way.

use std::time::Duration;

use crate::ledger::limits::InvalidLimit;

/// Which algorithm moves a dependency's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// What a patch asks for: an algorithm, or the static limit (adaptive off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlgorithmChoice {
    Static,
    Adaptive(Algorithm),
}

impl std::str::FromStr for AlgorithmChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "static" | "off" => Ok(AlgorithmChoice::Static),
            "gradient" => Ok(AlgorithmChoice::Adaptive(Algorithm::Gradient)),
            "vegas" => Ok(AlgorithmChoice::Adaptive(Algorithm::Vegas)),
            "aimd" => Ok(AlgorithmChoice::Adaptive(Algorithm::Aimd)),
            other => Err(format!(
                "unknown algorithm {other:?}: use \"gradient\", \"vegas\", \"aimd\" or \"static\""
            )),
        }
    }
}

/// A valid adaptive limit configuration. Every field has a documented
/// default ([`AdaptiveConfig::DEFAULT`]); each algorithm reads the fields it
/// needs and ignores the others.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveConfig {
    algorithm: Algorithm,
    min_limit: u32,
    initial_limit: u32,
    shadow: bool,
    window: Duration,
    min_samples: u32,
    baseline_windows: u32,
    drop_threshold: f64,
    backoff: f64,
    tolerance: f64,
    alpha: f64,
    beta: f64,
}

/// A change to some adaptive settings; `None` keeps the current value (or
/// the default, when the limit was static).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AdaptivePatch {
    pub algorithm: Option<AlgorithmChoice>,
    pub min_limit: Option<u32>,
    pub initial_limit: Option<u32>,
    pub shadow: Option<bool>,
    pub window: Option<Duration>,
    pub min_samples: Option<u32>,
    pub baseline_windows: Option<u32>,
    pub drop_threshold: Option<f64>,
    pub backoff: Option<f64>,
    pub tolerance: Option<f64>,
    pub alpha: Option<f64>,
    pub beta: Option<f64>,
}

pub const MIN_WINDOW: Duration = Duration::from_millis(10);
pub const MAX_WINDOW: Duration = Duration::from_secs(60);
pub const MAX_MIN_SAMPLES: u32 = 100_000;
pub const MAX_BASELINE_WINDOWS: u32 = 1000;

impl AdaptiveConfig {
    /// The built-in defaults: the only place they are written down.
    pub const DEFAULT: AdaptiveConfig = AdaptiveConfig {
        algorithm: Algorithm::Gradient,
        min_limit: 2,
        initial_limit: 16,
        shadow: false,
        window: Duration::from_millis(100),
        min_samples: 50,
        baseline_windows: 50,
        drop_threshold: 0.05,
        backoff: 0.9,
        tolerance: 1.4,
        alpha: 2.0,
        beta: 4.0,
    };

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    /// The lowest the limit goes (at least 1).
    pub fn min_limit(&self) -> u32 {
        self.min_limit
    }
    /// Where a new dependency starts (clamped to `[min_limit, ceiling]`).
    pub fn initial_limit(&self) -> u32 {
        self.initial_limit
    }
    /// Compute and report the limit, but enforce the ceiling.
    pub fn shadow(&self) -> bool {
        self.shadow
    }
    /// Shortest sampling window.
    pub fn window(&self) -> Duration {
        self.window
    }
    /// Fewest samples a window needs before it counts.
    pub fn min_samples(&self) -> u32 {
        self.min_samples
    }
    /// Windows the no-load latency estimate looks back over.
    pub fn baseline_windows(&self) -> u32 {
        self.baseline_windows
    }
    /// Share of dropped calls (failure, timeout, expiry) above which a window
    /// counts as congested.
    pub fn drop_threshold(&self) -> f64 {
        self.drop_threshold
    }
    /// Multiplicative decrease on a congested window (aimd; all on drops).
    pub fn backoff(&self) -> f64 {
        self.backoff
    }
    /// Latency inflation over the no-load estimate taken as congestion
    /// (gradient and aimd cut the limit; every algorithm's baseline uses it
    /// to tell a congested run of windows).
    pub fn tolerance(&self) -> f64 {
        self.tolerance
    }
    /// Vegas: grow while fewer than `alpha * log10(limit)` calls queue.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
    /// Vegas: shrink while more than `beta * log10(limit)` calls queue.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// The settings `patch` makes of `current` (`None`: the limit is static
    /// now). `Ok(None)` turns the adaptive limit off.
    pub fn patched(
        current: Option<&AdaptiveConfig>,
        patch: &AdaptivePatch,
    ) -> Result<Option<AdaptiveConfig>, InvalidLimit> {
        let algorithm = match (patch.algorithm, current) {
            (Some(AlgorithmChoice::Static), _) => return Ok(None),
            (Some(AlgorithmChoice::Adaptive(algorithm)), _) => algorithm,
            (None, Some(current)) => current.algorithm,
            (None, None) => AdaptiveConfig::DEFAULT.algorithm,
        };
        let base = current.unwrap_or(&AdaptiveConfig::DEFAULT);
        let config = AdaptiveConfig {
            algorithm,
            min_limit: patch.min_limit.unwrap_or(base.min_limit),
            initial_limit: patch.initial_limit.unwrap_or(base.initial_limit),
            shadow: patch.shadow.unwrap_or(base.shadow),
            window: patch.window.unwrap_or(base.window),
            min_samples: patch.min_samples.unwrap_or(base.min_samples),
            baseline_windows: patch.baseline_windows.unwrap_or(base.baseline_windows),
            drop_threshold: patch.drop_threshold.unwrap_or(base.drop_threshold),
            backoff: patch.backoff.unwrap_or(base.backoff),
            tolerance: patch.tolerance.unwrap_or(base.tolerance),
            alpha: patch.alpha.unwrap_or(base.alpha),
            beta: patch.beta.unwrap_or(base.beta),
        };
        config.validate()?;
        Ok(Some(config))
    }

    /// Checks what can be checked without the ceiling; [`Self::check_ceiling`]
    /// does the rest.
    fn validate(&self) -> Result<(), InvalidLimit> {
        let bad = |field: &'static str, problem: String| {
            Err(InvalidLimit {
                field,
                problem: problem.to_string(),
            })
        };
        if self.min_limit == 0 {
            return bad("adaptive.min_limit", "must be at least 1, got 0".into());
        }
        if self.initial_limit == 0 {
            return bad("adaptive.initial_limit", "must be at least 1, got 0".into());
        }
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&self.window) {
            return bad(
                "adaptive.window",
                format!(
                    "must be between {} and {}, got {:?}",
                    humantime::format_duration(MIN_WINDOW),
                    humantime::format_duration(MAX_WINDOW),
                    self.window
                ),
            );
        }
        if !(1..=MAX_MIN_SAMPLES).contains(&self.min_samples) {
            return bad(
                "adaptive.min_samples",
                format!(
                    "must be between 1 and {MAX_MIN_SAMPLES}, got {}",
                    self.min_samples
                ),
            );
        }
        if !(1..=MAX_BASELINE_WINDOWS).contains(&self.baseline_windows) {
            return bad(
                "adaptive.baseline_windows",
                format!(
                    "must be between 1 and {MAX_BASELINE_WINDOWS}, got {}",
                    self.baseline_windows
                ),
            );
        }
        let in_range = |v: f64, lo: f64, hi: f64| v.is_finite() && v >= lo && v <= hi;
        if !in_range(self.drop_threshold, 0.0, 1.0) {
            return bad(
                "adaptive.drop_threshold",
                format!("must be between 0 and 1, got {}", self.drop_threshold),
            );
        }
        if !in_range(self.backoff, 0.5, 0.99) {
            return bad(
                "adaptive.backoff",
                format!("must be between 0.5 and 0.99, got {}", self.backoff),
            );
        }
        if !in_range(self.tolerance, 1.05, 10.0) {
            return bad(
                "adaptive.tolerance",
                format!("must be between 1.05 and 10, got {}", self.tolerance),
            );
        }
        if !in_range(self.alpha, 0.1, 100.0) {
            return bad(
                "adaptive.alpha",
                format!("must be between 0.1 and 100, got {}", self.alpha),
            );
        }
        if !in_range(self.beta, 0.1, 100.0) || self.beta <= self.alpha {
            return bad(
                "adaptive.beta",
                format!(
                    "must be between 0.1 and 100 and above alpha ({}), got {}",
                    self.alpha, self.beta
                ),
            );
        }
        Ok(())
    }

    /// The limit may not be pinned above the dependency's ceiling.
    pub(crate) fn check_ceiling(&self, ceiling: u32) -> Result<(), InvalidLimit> {
        if self.min_limit > ceiling {
            return Err(InvalidLimit {
                field: "adaptive.min_limit",
                problem: format!(
                    "must be at most max_concurrency ({ceiling}), got {}",
                    self.min_limit
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_merge_over_the_current_settings_and_name_the_bad_field() {
        let aimd = AdaptiveConfig::patched(
            None,
            &AdaptivePatch {
                algorithm: Some(AlgorithmChoice::Adaptive(Algorithm::Aimd)),
                backoff: Some(0.8),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(aimd.algorithm(), Algorithm::Aimd);
        assert_eq!(aimd.backoff(), 0.8);
        assert_eq!(aimd.window(), AdaptiveConfig::DEFAULT.window());

        // Switching keeps the other settings.
        let vegas = AdaptiveConfig::patched(
            Some(&aimd),
            &AdaptivePatch {
                algorithm: Some(AlgorithmChoice::Adaptive(Algorithm::Vegas)),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (vegas.algorithm(), vegas.backoff()),
            (Algorithm::Vegas, 0.8)
        );

        let off = AdaptivePatch {
            algorithm: Some(AlgorithmChoice::Static),
            ..Default::default()
        };
        assert_eq!(AdaptiveConfig::patched(Some(&vegas), &off).unwrap(), None);

        for (patch, field) in [
            (
                AdaptivePatch {
                    min_limit: Some(0),
                    ..Default::default()
                },
                "adaptive.min_limit",
            ),
            (
                AdaptivePatch {
                    tolerance: Some(f64::NAN),
                    ..Default::default()
                },
                "adaptive.tolerance",
            ),
            (
                AdaptivePatch {
                    alpha: Some(5.0),
                    beta: Some(4.0),
                    ..Default::default()
                },
                "adaptive.beta",
            ),
            (
                AdaptivePatch {
                    window: Some(Duration::from_millis(1)),
                    ..Default::default()
                },
                "adaptive.window",
            ),
        ] {
            let error = AdaptiveConfig::patched(None, &patch).unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
        assert_eq!(
            AdaptiveConfig::DEFAULT.check_ceiling(1).unwrap_err().field,
            "adaptive.min_limit"
        );
        assert!("gradient".parse::<AlgorithmChoice>().is_ok());
        assert!(
            "bbr"
                .parse::<AlgorithmChoice>()
                .unwrap_err()
                .contains("bbr")
        );
    }
}
