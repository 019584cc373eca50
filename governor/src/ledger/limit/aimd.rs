//! AIMD: additive increase, multiplicative decrease, like TCP Reno.
//!
//! A window is congested when its drop rate exceeds `drop_threshold` or its
//! typical latency exceeds `tolerance` x the baseline; then the limit is
//! multiplied by `backoff`. It grows by one only while latency stays below
//! the middle of that band (`(1 + tolerance) / 2`), and holds in between: a
//! dead band, without which additive increase keeps climbing to the very
//! edge of the tolerance and past it one window late. The simplest of the
//! three, and the one to pick for dependencies whose latency says little
//! (batch jobs of varying size) but which fail or time out when overloaded.

use super::{
    AdaptiveConfig, Algorithm, ChangeReason, Congestion, LimitAlgorithm, Update, WindowSummary,
};

#[derive(Debug, Default)]
pub(crate) struct Aimd;

impl LimitAlgorithm for Aimd {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Aimd
    }

    fn update(
        &mut self,
        limit: f64,
        _window: &WindowSummary,
        congestion: Congestion,
        config: &AdaptiveConfig,
    ) -> Update {
        let inflation = congestion.inflation;
        if inflation > config.tolerance() {
            Update::new(limit * config.backoff(), ChangeReason::Latency)
        } else if inflation <= (1.0 + config.tolerance()) / 2.0 {
            Update::new(limit + 1.0, ChangeReason::Growth)
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
    fn adds_one_and_backs_off_on_latency_with_a_dead_band() {
        let config = AdaptiveConfig::DEFAULT;
        let mut aimd = Aimd;
        let update = aimd.update(10.0, &summary(10), at(&summary(10), 1.0), &config);
        assert_eq!((update.limit, update.reason), (11.0, ChangeReason::Growth));
        let update = aimd.update(10.0, &summary(10), at(&summary(10), 2.0), &config);
        assert_eq!((update.limit, update.reason), (9.0, ChangeReason::Latency));
        // Between the middle of the band and its edge: hold.
        let update = aimd.update(10.0, &summary(10), at(&summary(10), 1.3), &config);
        assert_eq!((update.limit, update.reason), (10.0, ChangeReason::Hold));
    }
}
