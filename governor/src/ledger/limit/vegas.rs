//! Vegas: estimate how many calls queue inside the dependency and keep that
//! between `alpha` and `beta` times `log10(limit)`, like TCP Vegas.
//!
//! queued = throughput x mean latency x (1 - baseline / typical): the calls
//! inside the dependency by Little's law, times the excess share of their
//! latency (see [`Congestion`]). Below alpha the limit
//! grows by `log10(limit)`; above beta it shrinks by half the excess over beta
//! (at least `log10(limit)`, so a halved capacity is found in a few windows,
//! not the dozens that steps of `log10` would take). No RTT probing (see
//! `baseline.rs`): the limit is never pinned low to measure the baseline.

use super::{
    AdaptiveConfig, Algorithm, ChangeReason, Congestion, LimitAlgorithm, Update, WindowSummary,
};

#[derive(Debug, Default)]
pub(crate) struct Vegas;

impl LimitAlgorithm for Vegas {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Vegas
    }

    fn update(
        &mut self,
        limit: f64,
        _window: &WindowSummary,
        congestion: Congestion,
        config: &AdaptiveConfig,
    ) -> Update {
        let step = limit.log10().max(1.0);
        let queued = congestion.queued;
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
    use super::super::tests::{at, summary};
    use super::*;

    #[test]
    fn keeps_the_queue_between_alpha_and_beta() {
        let config = AdaptiveConfig::DEFAULT;
        let mut vegas = Vegas;
        // 10 in flight, no queueing: grow by log10(10) = 1.
        let update = vegas.update(10.0, &summary(10), at(&summary(10), 1.0), &config);
        assert_eq!((update.limit, update.reason), (11.0, ChangeReason::Growth));
        // 100 calls inside (10,000 a second of 10 ms) at 2x: half of them
        // queue; beta = 4 x 2: cut by (50 - 8) / 2.
        let update = vegas.update(100.0, &summary(100), at(&summary(100), 2.0), &config);
        assert_eq!((update.limit, update.reason), (79.0, ChangeReason::Latency));
        // 6.4 queued: between alpha (4) and beta (8): hold.
        let update = vegas.update(100.0, &summary(100), at(&summary(100), 1.064), &config);
        assert_eq!((update.limit, update.reason), (100.0, ChangeReason::Hold));
    }
}
