//! Gradient: compare the window's typical latency with the no-load estimate.
//!
//! - Latency above `tolerance` x baseline: the excess is queueing caused by
//!   the calls in flight, so the limit goes towards the permits that leave
//!   no queue, `mean in-flight - queued`, where `queued` is the calls inside
//!   the dependency (`throughput x mean latency`, Little's law) times the
//!   excess share of their latency, by at most a quarter per window:
//!   a window right after a
//!   cut still holds calls granted before it, and cutting all the way on
//!   that evidence cuts twice.
//! - Latency within the tolerance: grow by `sqrt(limit) / 2`. Growth only
//!   happens here, never while latency is inflated: Netflix's gradient2 adds
//!   its queue allowance on every window, which under modest overload
//!   ratchets the limit up for ever (concurrency-limits #134).
//!
//! At overload the limit saws between about the capacity and `tolerance` x
//! the capacity, so the downstream stays busy while its queue stays short.

use super::{
    AdaptiveConfig, Algorithm, ChangeReason, Congestion, LimitAlgorithm, Update, WindowSummary,
};

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
        congestion: Congestion,
        config: &AdaptiveConfig,
    ) -> Update {
        if congestion.inflation > config.tolerance() {
            let target = window.mean_in_flight - congestion.queued;
            return Update::new(target.clamp(limit * 0.75, limit), ChangeReason::Latency);
        }
        Update::new(limit + (limit.sqrt() / 2.0).max(1.0), ChangeReason::Growth)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{at, summary};
    use super::*;

    #[test]
    fn decreases_to_the_concurrency_that_sees_the_baseline() {
        let config = AdaptiveConfig::DEFAULT;
        let mut gradient = Gradient;
        // 40 in flight at 4x the no-load latency: about 10 would see none,
        // but one window cuts by a quarter at most.
        let update = gradient.update(40.0, &summary(40), at(&summary(40), 4.0), &config);
        assert_eq!(update.reason, ChangeReason::Latency);
        assert!((update.limit - 30.0).abs() < 1e-9, "{update:?}");
        // 40 in flight at 1.6x: 15 of them queue, so 25 would see none.
        let update = gradient.update(40.0, &summary(40), at(&summary(40), 1.6), &config);
        assert!((update.limit - 30.0).abs() < 1e-9, "{update:?}");
        let update = gradient.update(40.0, &summary(36), at(&summary(36), 1.6), &config);
        assert!((update.limit - 30.0).abs() < 1e-9, "{update:?}");
        let update = gradient.update(20.0, &summary(20), at(&summary(20), 1.6), &config);
        assert!((update.limit - 15.0).abs() < 1e-9, "{update:?}");
        // Within the tolerance: grow by sqrt(limit) / 2.
        let update = gradient.update(16.0, &summary(16), at(&summary(16), 1.3), &config);
        assert_eq!((update.limit, update.reason), (18.0, ChangeReason::Growth));
    }
}
