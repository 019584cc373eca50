//! Gradient: compare the window's median latency with the no-load estimate.
//!
//! - Latency above `tolerance` x baseline: the excess is queueing caused by
//!   the calls in flight, so the limit goes towards the concurrency that
//!   would see the baseline latency, `mean in-flight x baseline / typical`
//!   (Little's law), by at most a quarter per window: a window right after a
//!   cut still holds calls granted before it, and cutting all the way on
//!   that evidence cuts twice.
//! - Latency within the tolerance: grow by `sqrt(limit) / 2`. Growth only
//!   happens here, never while latency is inflated: Netflix's gradient2 adds
//!   its queue allowance on every window, which under modest overload
//!   ratchets the limit up for ever (concurrency-limits #134).
//! - Drops above `drop_threshold`: multiply by `backoff`.
//!
//! At overload the limit saws between about the capacity and `tolerance` x
//! the capacity, so the downstream stays busy while its queue stays short.

use std::time::Duration;

use super::{AdaptiveConfig, Algorithm, ChangeReason, LimitAlgorithm, Update, WindowSummary};

#[derive(Debug, Default)]
pub(crate) struct Gradient;

impl LimitAlgorithm for Gradient {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Gradient
    }

    fn update(
        &mut self,
        limit: f64,
        window: &WindowSummary,
        baseline: Option<Duration>,
        config: &AdaptiveConfig,
    ) -> Update {
        if window.drop_rate() > config.drop_threshold() {
            return Update::new(limit * config.backoff(), ChangeReason::Drops);
        }
        let (Some(median), Some(baseline)) = (window.typical, baseline) else {
            return Update::hold(limit);
        };
        let ratio = median.as_secs_f64() / baseline.as_secs_f64().max(1e-9);
        if ratio > config.tolerance() {
            let target = window.mean_in_flight / ratio;
            return Update::new(target.clamp(limit * 0.75, limit), ChangeReason::Latency);
        }
        Update::new(limit + (limit.sqrt() / 2.0).max(1.0), ChangeReason::Growth)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::summary;
    use super::*;

    #[test]
    fn decreases_to_the_concurrency_that_sees_the_baseline() {
        let config = AdaptiveConfig::DEFAULT;
        let ms = Duration::from_millis;
        let mut gradient = Gradient;
        // 40 in flight at 4x the no-load latency: about 10 would see none,
        // but one window cuts by a quarter at most.
        let update = gradient.update(40.0, &summary(40, ms(40)), Some(ms(10)), &config);
        assert_eq!(update.reason, ChangeReason::Latency);
        assert!((update.limit - 30.0).abs() < 1e-9, "{update:?}");
        // 40 in flight at 1.6x: 25 would see none.
        let update = gradient.update(40.0, &summary(40, ms(16)), Some(ms(10)), &config);
        assert!((update.limit - 30.0).abs() < 1e-9, "{update:?}");
        let update = gradient.update(40.0, &summary(36, ms(16)), Some(ms(10)), &config);
        assert!((update.limit - 30.0).abs() < 1e-9, "{update:?}");
        let update = gradient.update(20.0, &summary(20, ms(16)), Some(ms(10)), &config);
        assert!((update.limit - 15.0).abs() < 1e-9, "{update:?}");
        // Within the tolerance: grow by sqrt(limit) / 2.
        let update = gradient.update(16.0, &summary(16, ms(13)), Some(ms(10)), &config);
        assert_eq!((update.limit, update.reason), (18.0, ChangeReason::Growth));
        // Drops back off.
        let mut dropping = summary(16, ms(10));
        dropping.drops = 10;
        let update = gradient.update(20.0, &dropping, Some(ms(10)), &config);
        assert_eq!(update.reason, ChangeReason::Drops);
        assert!((update.limit - 18.0).abs() < 1e-9);
    }
}
