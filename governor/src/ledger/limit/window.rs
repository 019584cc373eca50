//! Sampling windows: what the calls that ended in the last window say, in
//! O(1) per sample and a constant amount of work per window.
//!
//! Latencies go into a log-linear histogram (8 buckets an octave, 12.5 %
//! resolution), so the window's typical latency costs two passes over 256
//! counters when the window closes, however many samples it saw.
//!
//! The typical latency is the mean of the fastest 90 % of the window's
//! calls. Not the plain mean: one call stuck for seconds must not look like
//! congestion. Not the median either: for latencies as spread as an
//! exponential distribution, the median of 40 calls wanders by +-23 %, the
//! trimmed mean by +-13 %, and that noise is what makes a limit saw.

use std::time::Duration;

use tokio::time::Instant;

/// What one finished call says about the dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub kind: SampleKind,
    /// Permits held right after this call's grant, itself included.
    pub in_flight: u32,
    pub at: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleKind {
    /// A successful call and how long it took.
    Latency(Duration),
    /// A failed, timed-out or expired call.
    Drop,
}

/// A closed window, as the algorithms see it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowSummary {
    pub samples: u32,
    pub drops: u32,
    /// Typical latency of the successful calls (the mean of the fastest
    /// 90 %); `None` if there were none.
    pub typical: Option<Duration>,
    /// Mean permits held at the grants of the window's calls.
    pub mean_in_flight: f64,
    /// Calls that ended per second over the window.
    pub throughput: f64,
    /// Plain mean latency of the successful calls: with the throughput, the
    /// calls inside the dependency (Little's law).
    pub mean: Option<Duration>,
}

impl WindowSummary {
    /// Share of calls that dropped.
    pub fn drop_rate(&self) -> f64 {
        let total = self.samples + self.drops;
        if total == 0 {
            0.0
        } else {
            f64::from(self.drops) / f64::from(total)
        }
    }

    /// Whether the calls pressed against `limit`: when they held less than
    /// half of it on average, they say nothing about where it should be.
    /// (The mean, not the most: a Poisson burst at low load reaches far
    /// above the average.)
    pub fn used(&self, limit: f64) -> bool {
        self.mean_in_flight * 2.0 >= limit
    }
}

const SUB_BUCKETS: u64 = 8;
const BUCKETS: usize = 256;

/// Bucket of a latency in microseconds: exact below 8 µs, then 8 a doubling.
fn bucket(micros: u64) -> usize {
    if micros < SUB_BUCKETS {
        return micros as usize;
    }
    let octave = 63 - u64::from(micros.leading_zeros());
    let sub = (micros >> (octave - 3)) & (SUB_BUCKETS - 1);
    (((octave - 2) * SUB_BUCKETS + sub) as usize).min(BUCKETS - 1)
}

/// The middle of a bucket, in microseconds.
fn bucket_value(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    let octave = index / SUB_BUCKETS + 2;
    let sub = index % SUB_BUCKETS;
    let width = 1u64 << (octave - 3);
    (SUB_BUCKETS + sub) * width + width / 2
}

#[derive(Debug)]
pub(crate) struct Window {
    started: Instant,
    histogram: Box<[u32; BUCKETS]>,
    samples: u32,
    drops: u32,
    in_flight_sum: u64,
    latency_sum: Duration,
}

impl Window {
    pub(crate) fn new(now: Instant) -> Window {
        Window {
            started: now,
            histogram: Box::new([0; BUCKETS]),
            samples: 0,
            drops: 0,
            in_flight_sum: 0,
            latency_sum: Duration::ZERO,
        }
    }

    pub(crate) fn record(&mut self, sample: &Sample) {
        match sample.kind {
            SampleKind::Latency(latency) => {
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.histogram[bucket(micros)] += 1;
                self.samples += 1;
                self.latency_sum = self.latency_sum.saturating_add(latency);
            }
            SampleKind::Drop => self.drops += 1,
        }
        self.in_flight_sum += u64::from(sample.in_flight);
    }

    fn count(&self) -> u32 {
        self.samples + self.drops
    }

    /// Closes the window if it has lasted `length` and seen `min_samples`;
    /// restarts it empty if it has lasted ten times `length` without enough
    /// samples (a trickle of calls says nothing, and waiting for more would
    /// let a stale one decide).
    pub(crate) fn close(
        &mut self,
        now: Instant,
        length: Duration,
        min_samples: u32,
    ) -> Option<WindowSummary> {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < length {
            return None;
        }
        if self.count() < min_samples {
            if elapsed >= length * 10 {
                self.reset(now);
            }
            return None;
        }
        let summary = WindowSummary {
            samples: self.samples,
            drops: self.drops,
            typical: self.typical(),
            mean_in_flight: self.in_flight_sum as f64 / f64::from(self.count()),
            throughput: f64::from(self.count()) / elapsed.as_secs_f64().max(1e-9),
            mean: (self.samples > 0).then(|| self.latency_sum / self.samples),
        };
        self.reset(now);
        Some(summary)
    }

    fn typical(&self) -> Option<Duration> {
        if self.samples == 0 {
            return None;
        }
        let keep = (u64::from(self.samples) * 9).div_ceil(10);
        let (mut taken, mut sum) = (0u64, 0u64);
        for (index, count) in self.histogram.iter().enumerate() {
            let take = u64::from(*count).min(keep - taken);
            sum += take * bucket_value(index);
            taken += take;
            if taken == keep {
                break;
            }
        }
        Some(Duration::from_micros(sum / keep.max(1)))
    }

    fn reset(&mut self, now: Instant) {
        self.started = now;
        self.histogram.fill(0);
        self.samples = 0;
        self.drops = 0;
        self.in_flight_sum = 0;
        self.latency_sum = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_within_an_eighth() {
        let mut last = 0;
        for micros in (0..100_000u64).chain([1 << 20, 1 << 31, u64::MAX]) {
            let index = bucket(micros);
            assert!(index >= last || micros > 100_000, "{micros}");
            last = index;
            if (8..1 << 31).contains(&micros) {
                let value = bucket_value(index) as f64;
                let error = (value - micros as f64).abs() / micros as f64;
                assert!(error <= 0.125, "{micros} -> {value}");
            }
        }
    }

    #[test]
    fn a_window_closes_on_time_and_samples_and_reports_the_trimmed_mean() {
        let start = Instant::now();
        let mut window = Window::new(start);
        let ms = Duration::from_millis;
        // Nine calls about 10 ms long and one stuck for 5 s.
        let latencies = [10, 5000, 10, 11, 12, 9, 10, 8, 10, 10];
        for (i, latency) in latencies.into_iter().enumerate() {
            window.record(&Sample {
                kind: SampleKind::Latency(ms(latency)),
                in_flight: i as u32 + 1,
                at: start,
            });
        }
        window.record(&Sample {
            kind: SampleKind::Drop,
            in_flight: 5,
            at: start,
        });
        assert_eq!(window.close(start + ms(50), ms(100), 4), None, "too early");
        assert_eq!(window.close(start + ms(100), ms(100), 12), None, "too few");
        let summary = window.close(start + ms(100), ms(100), 11).unwrap();
        let typical = summary.typical.unwrap();
        assert!(
            typical >= ms(9) && typical <= ms(11),
            "the outlier is trimmed: {typical:?}"
        );
        assert_eq!((summary.samples, summary.drops), (10, 1));
        assert!((summary.mean_in_flight - 60.0 / 11.0).abs() < 1e-9);
        assert!(
            (summary.throughput - 110.0).abs() < 1e-9,
            "11 calls in 100 ms"
        );
        assert_eq!(
            summary.mean,
            Some(ms(509)),
            "the plain mean keeps the outlier"
        );
        assert!((summary.drop_rate() - 1.0 / 11.0).abs() < 1e-9);
        assert_eq!(window.count(), 0, "closing starts a new window");
    }

    #[test]
    fn a_trickle_is_discarded_rather_than_kept_forever() {
        let start = Instant::now();
        let mut window = Window::new(start);
        window.record(&Sample {
            kind: SampleKind::Drop,
            in_flight: 1,
            at: start,
        });
        let ms = Duration::from_millis;
        assert_eq!(window.close(start + ms(999), ms(100), 5), None);
        assert_eq!(window.count(), 1);
        assert_eq!(window.close(start + ms(1000), ms(100), 5), None);
        assert_eq!(window.count(), 0);
    }
}
