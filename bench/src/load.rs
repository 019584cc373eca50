//! Load generators: open loop (fixed arrival rate, latency from the intended
//! send time, so coordinated omission cannot hide queueing) and closed loop
//! (a fixed number of callers, each sending as soon as the last call returned).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A histogram of nanoseconds, 3 significant digits, up to 10 minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

pub fn record(hist: &mut Histogram<u64>, d: Duration) {
    hist.saturating_record((d.as_nanos() as u64).max(1));
}

/// Percentiles of a histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    pub fn of(hist: &Histogram<u64>) -> Percentiles {
        if hist.is_empty() {
            return Percentiles::default();
        }
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: hist.len(),
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: hist.max() as f64 / 1000.0,
        }
    }
}

/// What one run of a generator measured.
#[derive(Debug)]
pub struct Run {
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// The measured window.
    pub window: Duration,
}

impl Run {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }
}

#[derive(Debug)]
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Arc<Mutex<Tally>> {
        Arc::new(Mutex::new(Tally {
            hist: histogram(),
            ok: 0,
            errors: 0,
            first_error: None,
        }))
    }

    fn add(&mut self, result: Result<(), String>, latency: Duration) {
        match result {
            Ok(()) => {
                self.ok += 1;
                record(&mut self.hist, latency);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn finish(tally: Arc<Mutex<Tally>>, window: Duration) -> Run {
        let tally = match Arc::try_unwrap(tally) {
            Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
            Err(shared) => {
                let t = shared.lock().unwrap_or_else(|e| e.into_inner());
                Tally {
                    hist: t.hist.clone(),
                    ok: t.ok,
                    errors: t.errors,
                    first_error: t.first_error.clone(),
                }
            }
        };
        Run {
            hist: tally.hist,
            ok: tally.ok,
            errors: tally.errors,
            first_error: tally.first_error,
            window,
        }
    }
}

/// Waits until `at`: sleeps while it is more than a millisecond away (the
/// timer's granularity), then yields until it has come, so sends leave close
/// to their intended times.
pub async fn wait_until(at: Instant) {
    let coarse = Duration::from_millis(1);
    loop {
        let now = Instant::now();
        if now >= at {
            return;
        }
        if at - now > coarse + coarse / 2 {
            tokio::time::sleep_until(at - coarse).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// How an open loop waits for a send's intended time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// [`wait_until`]: every send leaves at its own time (the arms).
    Spaced,
    /// tokio's timer alone, whose 1 ms granularity sends the calls of each
    /// millisecond together, as a client whose event loop wakes per tick.
    Ticked,
}

impl Pacing {
    async fn wait(self, at: Instant) {
        match self {
            Pacing::Spaced => wait_until(at).await,
            Pacing::Ticked => tokio::time::sleep_until(at).await,
        }
    }
}

/// The intended send times of an open-loop run, and which ones are measured.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub rate: f64,
    pub warmup: Duration,
    pub measure: Duration,
}

impl Schedule {
    /// Calls `send(intended, measured)` at `rate` per second for warmup +
    /// measure, each in its own task, and waits for all of them (at most
    /// `drain` after the last send).
    pub async fn drive<F, Fut>(&self, drain: Duration, send: F) -> Duration
    where
        F: Fn(Instant, bool) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.drive_from(Instant::now() + Duration::from_millis(2), drain, send)
            .await
    }

    /// [`Schedule::drive`] with the first send at `start`, for callers that
    /// schedule other events (capacity changes, polls) on the same clock.
    pub async fn drive_from<F, Fut>(&self, start: Instant, drain: Duration, send: F) -> Duration
    where
        F: Fn(Instant, bool) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.drive_paced(start, Pacing::Spaced, drain, send).await
    }

    /// [`Schedule::drive_from`], waiting for each send as `pacing` says.
    pub async fn drive_paced<F, Fut>(
        &self,
        start: Instant,
        pacing: Pacing,
        drain: Duration,
        send: F,
    ) -> Duration
    where
        F: Fn(Instant, bool) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let measure_from = start + self.warmup;
        let end = measure_from + self.measure;
        let interval = Duration::from_secs_f64(1.0 / self.rate);
        let mut tasks = JoinSet::new();
        let mut i: u32 = 0;
        loop {
            let intended = start + interval * i;
            if intended >= end {
                break;
            }
            pacing.wait(intended).await;
            tasks.spawn(send(intended, intended >= measure_from));
            i += 1;
            // Reap finished tasks now and then so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        let _ =
            tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
        tasks.shutdown().await;
        self.measure
    }
}

/// Open loop: `op` is started at `rate` per second; latency is measured from
/// each call's intended start time.
pub async fn open_loop<F, Fut>(schedule: Schedule, op: F) -> Run
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    open_loop_paced(schedule, Pacing::Spaced, op).await
}

/// [`open_loop`], waiting for each send as `pacing` says.
pub async fn open_loop_paced<F, Fut>(schedule: Schedule, pacing: Pacing, op: F) -> Run
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let tally = Tally::new();
    let start = Instant::now() + Duration::from_millis(2);
    let window = schedule
        .drive_paced(
            start,
            pacing,
            Duration::from_secs(10),
            |intended, measured| {
                let call = op();
                let tally = tally.clone();
                async move {
                    let result = call.await;
                    if measured {
                        let latency = intended.elapsed();
                        tally
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .add(result, latency);
                    }
                }
            },
        )
        .await;
    Tally::finish(tally, window)
}

/// Closed loop: `concurrency` callers call `op` back to back; calls that
/// start after the warm-up and end within the window are measured.
pub async fn closed_loop<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    op: F,
) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let tally = Tally::new();
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let op = op.clone();
        let tally = tally.clone();
        workers.spawn(async move {
            let mut local = histogram();
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result = op().await;
                let done = Instant::now();
                if sent >= measure_from && done <= end {
                    match result {
                        Ok(()) => {
                            ok += 1;
                            record(&mut local, done - sent);
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            t.hist.add(&local).expect("same histogram bounds");
            t.ok += ok;
            t.errors += errors;
            if t.first_error.is_none() {
                t.first_error = first_error;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    Tally::finish(tally, measure)
}

/// Median and spread of repeated measurements.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// The spread of `value` over `items` (one per repeat).
    pub fn over<T>(items: &[T], value: impl Fn(&T) -> f64) -> Spread {
        Spread::of(&items.iter().map(value).collect::<Vec<_>>())
    }

    pub fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                n: 0,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_median() {
        let s = Spread::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 10.0, 4));
        assert!(Spread::of(&[]).median.is_nan());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn open_loop_counts_queueing_from_the_intended_time() {
        // A server that handles one call at a time and takes 2 ms: at 1000/s
        // the queue grows, and latency from the intended time must show it.
        let server = Arc::new(tokio::sync::Semaphore::new(1));
        let run = open_loop(
            Schedule {
                rate: 1000.0,
                warmup: Duration::ZERO,
                measure: Duration::from_millis(200),
            },
            || {
                let server = server.clone();
                async move {
                    let _permit = server.acquire().await.map_err(|e| e.to_string())?;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    Ok(())
                }
            },
        )
        .await;
        assert_eq!(run.errors, 0);
        assert!(run.ok >= 190, "{}", run.ok);
        let p = Percentiles::of(&run.hist);
        // The last calls queued behind ~100 others: far more than 2 ms.
        assert!(p.max_us > 100_000.0, "{p:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn both_pacings_send_every_call_once_and_never_early() {
        for pacing in [Pacing::Spaced, Pacing::Ticked] {
            let early = Arc::new(Mutex::new(Vec::new()));
            let schedule = Schedule {
                rate: 1000.0,
                warmup: Duration::from_millis(10),
                measure: Duration::from_millis(40),
            };
            let start = Instant::now();
            schedule
                .drive_paced(start, pacing, Duration::from_secs(1), |intended, _| {
                    let early = early.clone();
                    let sent = Instant::now();
                    async move {
                        early.lock().unwrap().push(sent < intended);
                    }
                })
                .await;
            let early = early.lock().unwrap();
            assert_eq!(early.len(), 50, "{pacing:?}");
            assert!(
                early.iter().all(|e| !e),
                "{pacing:?}: a send before its time"
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn closed_loop_measures_throughput() {
        let run = closed_loop(
            2,
            Duration::from_millis(20),
            Duration::from_millis(200),
            || async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(())
            },
        )
        .await;
        assert_eq!(run.errors, 0);
        // Two callers at ~5-6 ms a call: a few hundred a second, not more.
        let t = run.throughput();
        assert!((150.0..=450.0).contains(&t), "{t}");
    }
}
