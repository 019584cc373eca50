//! Vegas: estimate how many calls queue inside the dependency and keep that
//! between `alpha` and `beta` times `log10(limit)`, like TCP Vegas.
//!
//! queued = mean in-flight x (1 - baseline / typical). Below alpha the limit
//! grows by `log10(limit)`; above beta it shrinks by half the excess over beta
//! (at least `log10(limit)`, so a halved capacity is found in a few windows,
//! not the dozens that steps of `log10` would take); drops multiply it by
//! `backoff`. No RTT probing: the baseline ages out instead
//! (see `baseline.rs`), so the limit is never pinned low to measure it.

use std::time::Duration;

use super::{AdaptiveConfig, Algorithm, ChangeReason, LimitAlgorithm, Update, WindowSummary};

#[derive(Debug, Default)]
pub(crate) struct Vegas;

impl LimitAlgorithm for Vegas {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Vegas
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
        let step = limit.log10().max(1.0);
        let inflation = 1.0 - baseline.as_secs_f64() / median.as_secs_f64().max(1e-9);
        let queued = window.mean_in_flight * inflation.max(0.0);
        let (alpha, beta) = (config.alpha() * step, config.beta() * step);
        if queued < alpha {
            Update::new(limit + step, ChangeReason::Growth)
        } else if queued > beta {
            let cut = ((queued - beta) / 2.0).max(step);
            Update::new(limit - cut, ChangeReason::Latency)
        } else {
            Update::hold(limit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::summary;
    use super::*;

    #[test]
    fn keeps_the_queue_between_alpha_and_beta() {
        let config = AdaptiveConfig::DEFAULT;
        let ms = Duration::from_millis;
        let mut vegas = Vegas;
        // 10 in flight, no queueing: grow by log10(10) = 1.
        let update = vegas.update(10.0, &summary(10, ms(10)), Some(ms(10)), &config);
        assert_eq!((update.limit, update.reason), (11.0, ChangeReason::Growth));
        // 100 in flight at 2x: 50 queued, beta = 4 x 2: cut by (50 - 8) / 2.
        let update = vegas.update(100.0, &summary(100, ms(20)), Some(ms(10)), &config);
        assert_eq!((update.limit, update.reason), (79.0, ChangeReason::Latency));
        // 100 in flight, 6 queued: between alpha (4) and beta (8): hold.
        let typical = Duration::from_micros(10_640);
        let update = vegas.update(100.0, &summary(100, typical), Some(ms(10)), &config);
        assert_eq!((update.limit, update.reason), (100.0, ChangeReason::Hold));
    }
}
