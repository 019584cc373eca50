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

use std::time::Duration;

use super::{AdaptiveConfig, Algorithm, ChangeReason, LimitAlgorithm, Update, WindowSummary};

#[derive(Debug, Default)]
pub(crate) struct Aimd;

impl LimitAlgorithm for Aimd {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Aimd
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
        let inflation = match (window.typical, baseline) {
            (Some(typical), Some(baseline)) => {
                typical.as_secs_f64() / baseline.as_secs_f64().max(1e-9)
            }
            _ => 1.0,
        };
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
    use super::super::tests::summary;
    use super::*;

    #[test]
    fn adds_one_and_backs_off_on_drops_or_latency() {
        let config = AdaptiveConfig::DEFAULT;
        let ms = Duration::from_millis;
        let mut aimd = Aimd;
        let update = aimd.update(10.0, &summary(10, ms(10)), Some(ms(10)), &config);
        assert_eq!((update.limit, update.reason), (11.0, ChangeReason::Growth));
        let update = aimd.update(10.0, &summary(10, ms(20)), Some(ms(10)), &config);
        assert_eq!((update.limit, update.reason), (9.0, ChangeReason::Latency));
        // Between the middle of the band and its edge: hold.
        let update = aimd.update(10.0, &summary(10, ms(13)), Some(ms(10)), &config);
        assert_eq!((update.limit, update.reason), (10.0, ChangeReason::Hold));
        let mut dropping = summary(10, ms(10));
        dropping.drops = 1;
        dropping.samples = 9;
        let update = aimd.update(10.0, &dropping, Some(ms(10)), &config);
        assert_eq!((update.limit, update.reason), (9.0, ChangeReason::Drops));
    }
}
