//! Rate limits: the generic cell rate algorithm (GCRA), an exact token bucket
//! in one timestamp.
//!
//! A bucket holds up to `burst` tokens and gains one every emission interval
//! `T = 1 s / per_second`. GCRA keeps only the *theoretical arrival time*
//! (TAT): the instant the bucket would be full again. A grant conforms when
//! `now >= TAT - (burst - 1) * T`, and moves TAT to `max(TAT, now) + T`.
//! Arithmetic is in integer nanoseconds, with `T` rounded up, so rounding
//! can only make the limit stricter, never looser.
//!
//! The guarantee, checked by the property test below: in any half-open
//! window of one second, at most `per_second + burst - 1` grants conform,
//! which is within the documented `per_second + burst`.
//!
//! A token is spent only by [`Gcra::spend`], which the ledger calls in the
//! same critical section as it takes a concurrency slot: a request that waits
//! and times out spends nothing.

use std::time::Duration;

use tokio::time::Instant;

/// A rate, as configured: `per_second` tokens a second, at most `burst` at
/// once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    per_second: f64,
    burst: u32,
}

/// Why a rate cannot be used.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InvalidRate {
    #[error("must be a number in [{MIN_PER_SECOND}, {MAX_PER_SECOND}], got {0}")]
    PerSecond(f64),
    #[error("must be between 1 and {MAX_BURST}, got {0}")]
    Burst(u32),
}

impl InvalidRate {
    /// The config key at fault, under the dependency's: `rate.*`, or
    /// `tenant_rate.*` for the per-tenant one.
    pub fn field(&self, tenant: bool) -> &'static str {
        match (self, tenant) {
            (InvalidRate::PerSecond(_), false) => "rate.per_second",
            (InvalidRate::Burst(_), false) => "rate.burst",
            (InvalidRate::PerSecond(_), true) => "tenant_rate.per_second",
            (InvalidRate::Burst(_), true) => "tenant_rate.burst",
        }
    }
}

/// Faster than this, a concurrency limit is the better tool: one token a
/// microsecond.
pub const MAX_PER_SECOND: f64 = 1_000_000.0;
/// One token in about 17 minutes: with [`MAX_BURST`], the tolerance
/// (interval x burst, 1e12 x 1e6 ns) still fits in a u64.
pub const MIN_PER_SECOND: f64 = 0.001;
/// Bounds the tolerance so that `burst * T` cannot overflow.
pub const MAX_BURST: u32 = 1_000_000;

impl Rate {
    pub fn new(per_second: f64, burst: u32) -> Result<Rate, InvalidRate> {
        if !(MIN_PER_SECOND..=MAX_PER_SECOND).contains(&per_second) {
            return Err(InvalidRate::PerSecond(per_second));
        }
        if !(1..=MAX_BURST).contains(&burst) {
            return Err(InvalidRate::Burst(burst));
        }
        Ok(Rate { per_second, burst })
    }

    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The emission interval in nanoseconds, rounded up.
    fn interval_nanos(&self) -> u64 {
        (1e9 / self.per_second).ceil() as u64
    }

    /// How far ahead of now the TAT may be for a grant to conform.
    fn tolerance_nanos(&self) -> u64 {
        self.interval_nanos() * u64::from(self.burst - 1)
    }
}

/// What a limits change does to a bucket: the dependency's [`Gcra`] and
/// the tenants' table alike.
pub(crate) trait Bucket: Sized {
    fn new(rate: Rate) -> Self;
    fn rate(&self) -> Rate;
    /// The tokens already spent stay spent, rescaled to `rate`.
    fn set_rate(&mut self, rate: Rate, now: Instant);
}

/// The bucket after a limits change: none without a rate, the same one
/// (rescaled) for a new rate, a fresh one for a first.
pub(crate) fn rebucket<B: Bucket>(
    bucket: Option<B>,
    rate: Option<Rate>,
    now: Instant,
) -> Option<B> {
    let rate = rate?;
    Some(match bucket {
        Some(mut bucket) => {
            if bucket.rate() != rate {
                bucket.set_rate(rate, now);
            }
            bucket
        }
        None => B::new(rate),
    })
}

/// One bucket's state.
#[derive(Clone, Debug)]
pub(crate) struct Gcra {
    rate: Rate,
    /// When the bucket is full again; `None` (or a past instant): full now.
    tat: Option<Instant>,
}

impl Gcra {
    pub(crate) fn new(rate: Rate) -> Gcra {
        Gcra { rate, tat: None }
    }

    pub(crate) fn rate(&self) -> Rate {
        self.rate
    }

    /// A new rate keeps the count of tokens spent and not yet refilled
    /// (the TAT's lead over now, in intervals), so that changing the rate
    /// never hands out a fresh burst, nor takes back one already refilled.
    pub(crate) fn set_rate(&mut self, rate: Rate, now: Instant) {
        if let Some(tat) = self.tat.filter(|&tat| tat > now) {
            let lead = (tat - now).as_nanos();
            let scaled =
                lead * u128::from(rate.interval_nanos()) / u128::from(self.rate.interval_nanos());
            let scaled = u64::try_from(scaled).unwrap_or(u64::MAX);
            self.tat = Some(now + Duration::from_nanos(scaled));
        }
        self.rate = rate;
    }

    /// When the bucket is full again; `None` if never spent.
    pub(crate) fn tat(&self) -> Option<Instant> {
        self.tat
    }

    /// The TAT as it counts now: never in the past.
    fn tat_at(&self, now: Instant) -> Instant {
        self.tat.map_or(now, |tat| tat.max(now))
    }

    /// When the `n`-th next token (0 = the next) can be spent, if the ones
    /// before it are spent as soon as they can be: `now` if it is there.
    pub(crate) fn ready_at(&self, now: Instant, n: u32) -> Instant {
        let tat = self.tat_at(now);
        let ahead = Duration::from_nanos(self.rate.interval_nanos().saturating_mul(u64::from(n)));
        let tolerance = Duration::from_nanos(self.rate.tolerance_nanos());
        (tat + ahead)
            .checked_sub(tolerance)
            .map_or(now, |at| at.max(now))
    }

    /// Whether a token can be spent now.
    pub(crate) fn conforms(&self, now: Instant) -> bool {
        self.ready_at(now, 0) <= now
    }

    /// Spends a token; the caller checked [`Gcra::conforms`] under the same
    /// lock.
    pub(crate) fn spend(&mut self, now: Instant) {
        debug_assert!(self.conforms(now));
        let interval = Duration::from_nanos(self.rate.interval_nanos());
        self.tat = Some(self.tat_at(now) + interval);
    }

    /// Gives back the token of a grant that was taken straight back (its
    /// waiter had gone): the bucket is as if it had never been spent.
    pub(crate) fn refund(&mut self, now: Instant) {
        let interval = Duration::from_nanos(self.rate.interval_nanos());
        if let Some(tat) = self.tat {
            self.tat = tat.checked_sub(interval).filter(|&tat| tat > now);
        }
    }
}

impl Bucket for Gcra {
    fn new(rate: Rate) -> Self {
        Gcra::new(rate)
    }
    fn rate(&self) -> Rate {
        Gcra::rate(self)
    }
    fn set_rate(&mut self, rate: Rate, now: Instant) {
        Gcra::set_rate(self, rate, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate::new(per_second, burst).unwrap()
    }

    #[test]
    fn refuses_rates_it_cannot_keep() {
        assert_eq!(Rate::new(0.0, 1), Err(InvalidRate::PerSecond(0.0)));
        assert_eq!(Rate::new(-1.0, 1), Err(InvalidRate::PerSecond(-1.0)));
        assert!(matches!(
            Rate::new(f64::NAN, 1),
            Err(InvalidRate::PerSecond(_))
        ));
        assert!(matches!(
            Rate::new(f64::INFINITY, 1),
            Err(InvalidRate::PerSecond(_))
        ));
        assert_eq!(Rate::new(10.0, 0), Err(InvalidRate::Burst(0)));
        assert_eq!(
            Rate::new(10.0, MAX_BURST + 1),
            Err(InvalidRate::Burst(MAX_BURST + 1))
        );
        assert!(Rate::new(MIN_PER_SECOND, MAX_BURST).is_ok());
        assert!(matches!(
            Rate::new(0.0009, 1),
            Err(InvalidRate::PerSecond(_))
        ));
        let slowest = Rate::new(MIN_PER_SECOND, MAX_BURST).unwrap();
        assert!(slowest.tolerance_nanos() > 0, "no overflow");
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_one_per_interval() {
        let start = Instant::now();
        let mut bucket = Gcra::new(rate(10.0, 3));
        for _ in 0..3 {
            assert!(bucket.conforms(start));
            bucket.spend(start);
        }
        assert!(!bucket.conforms(start));
        let next = bucket.ready_at(start, 0);
        assert_eq!(next - start, Duration::from_millis(100));
        assert_eq!(
            bucket.ready_at(start, 2) - start,
            Duration::from_millis(300)
        );
        assert!(!bucket.conforms(next - Duration::from_nanos(1)));
        assert!(bucket.conforms(next));
        bucket.spend(next);
        assert!(!bucket.conforms(next));
        // After a quiet spell the bucket is full again, and only burst-full.
        let later = next + Duration::from_secs(10);
        for _ in 0..3 {
            assert!(bucket.conforms(later));
            bucket.spend(later);
        }
        assert!(!bucket.conforms(later));
    }

    #[test]
    fn a_refunded_token_can_be_spent_again() {
        let start = Instant::now();
        let mut bucket = Gcra::new(rate(10.0, 1));
        bucket.spend(start);
        assert!(!bucket.conforms(start));
        bucket.refund(start);
        assert!(bucket.conforms(start));
        bucket.spend(start);
        let next = bucket.ready_at(start, 0);
        assert_eq!(next - start, Duration::from_millis(100));
    }

    #[test]
    fn lowering_the_rate_hands_out_no_new_burst() {
        let start = Instant::now();
        let mut bucket = Gcra::new(rate(100.0, 5));
        for _ in 0..5 {
            bucket.spend(start);
        }
        bucket.set_rate(rate(1.0, 5), start);
        assert!(!bucket.conforms(start));
        assert_eq!(bucket.rate().per_second(), 1.0);
        // Five tokens spent at one a second: the next is due in a second.
        assert_eq!(bucket.ready_at(start, 0) - start, Duration::from_secs(1));
        // Raised again: the same five tokens, refilled a hundred times faster.
        bucket.set_rate(rate(100.0, 5), start);
        assert_eq!(bucket.ready_at(start, 0) - start, Duration::from_millis(10));
    }

    /// Grants, at the instants given, of every request that conforms.
    fn granted(rate: Rate, offsets_us: &[u64]) -> Vec<Instant> {
        let start = Instant::now();
        let mut bucket = Gcra::new(rate);
        let mut at = start;
        let mut grants = Vec::new();
        for &offset in offsets_us {
            at += Duration::from_micros(offset);
            if bucket.conforms(at) {
                bucket.spend(at);
                grants.push(at);
            }
        }
        grants
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// In any one-second window, grants <= per_second + burst, whatever
        /// the arrivals; and a bucket offered a request at every instant it
        /// conforms hands out no fewer than the rate allows.
        #[test]
        fn no_window_of_one_second_sees_more_than_rate_plus_burst(
            per_second in 1u32..200,
            burst in 1u32..20,
            offsets in proptest::collection::vec(0u64..30_000, 1..600),
        ) {
            let rate = rate(f64::from(per_second), burst);
            let grants = granted(rate, &offsets);
            // Tight: a full bucket's burst, then one token per interval;
            // the token at exactly one second lies outside the window.
            let bound = (per_second + burst - 1) as usize;
            let second = Duration::from_secs(1);
            let mut first = 0;
            for (last, &at) in grants.iter().enumerate() {
                while at - grants[first] >= second {
                    first += 1;
                }
                prop_assert!(last - first < bound, "{} grants in one second", last - first + 1);
            }
            // Work-conserving: a caller that comes back at each instant the
            // bucket names gets the burst and then one per interval.
            let span = Duration::from_micros(offsets.iter().sum());
            let start = Instant::now();
            let mut bucket = Gcra::new(rate);
            let mut count = 0u64;
            loop {
                let at = bucket.ready_at(start, 0);
                if at > start + span {
                    break;
                }
                bucket.spend(at);
                count += 1;
            }
            let interval = rate.interval_nanos() as u128;
            let expected = u64::from(burst) + (span.as_nanos() / interval) as u64;
            prop_assert_eq!(count, expected);
        }

        #[test]
        fn ready_at_predicts_the_grants(
            per_second in 1u32..1000,
            burst in 1u32..10,
            spent in 0u32..30,
            n in 0u32..30,
        ) {
            let start = Instant::now();
            let mut bucket = Gcra::new(rate(f64::from(per_second), burst));
            let mut at = start;
            for _ in 0..spent {
                at = bucket.ready_at(at, 0);
                bucket.spend(at);
            }
            let predicted = bucket.ready_at(start, n);
            let mut now = start;
            for _ in 0..n {
                now = bucket.ready_at(now, 0);
                bucket.spend(now);
            }
            prop_assert_eq!(bucket.ready_at(now, 0), predicted);
        }
    }
}
