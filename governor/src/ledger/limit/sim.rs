//! A deterministic simulation of a governed dependency, for the algorithms'
//! tests: open-loop Poisson arrivals, a governor queue with a max wait, and a
//! downstream of `workers` servers with exponential service times and a FIFO
//! backlog. Virtual time, a seeded generator: every run is the same.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::{
    AdaptiveConfig, AdaptivePatch, Algorithm, AlgorithmChoice, Limiter, Sample, SampleKind,
};

/// xorshift64*: small, seeded, good enough for arrival and service times.
struct Rng(u64);

impl Rng {
    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        (bits as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn exponential(&mut self, mean: f64) -> f64 {
        -self.uniform().ln() * mean
    }
}

/// One stretch of the run: the downstream's shape and the offered load.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Phase {
    pub seconds: f64,
    pub workers: u32,
    pub service: Duration,
    /// Arrivals per second.
    pub rate: f64,
}

#[derive(Debug, Default)]
pub(crate) struct Trace {
    /// (seconds since start, enforced limit) after every event that moved it.
    pub limits: Vec<(f64, u32)>,
    pub granted: u64,
    pub rejected: u64,
    pub completed: u64,
    /// Highest in-flight count seen at any grant, and the limit then.
    pub worst_grant: (u32, u32),
}

impl Trace {
    /// The enforced limit at `t` seconds.
    pub(crate) fn limit_at(&self, t: f64) -> u32 {
        self.limits
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(0, |(_, limit)| *limit)
    }

    /// The limit's time average over `[from, to)`.
    pub(crate) fn mean(&self, from: f64, to: f64) -> f64 {
        let steps = 100;
        let sum: f64 = (0..steps)
            .map(|i| f64::from(self.limit_at(from + (to - from) * f64::from(i) / f64::from(steps))))
            .sum();
        sum / f64::from(steps)
    }

    /// Share of the instants in `[from, to)` at which the limit, averaged
    /// over the half second before, was within `[lo, hi]`. (The gradient
    /// saws around its target by design; its average is what a caller gets.)
    pub(crate) fn share_within(&self, from: f64, to: f64, lo: f64, hi: f64) -> f64 {
        let steps = 100;
        let inside = (0..steps)
            .filter(|i| {
                let t = from + (to - from) * f64::from(*i) / f64::from(steps);
                let limit = self.mean(t - 0.5, t);
                limit >= lo && limit <= hi
            })
            .count();
        inside as f64 / f64::from(steps)
    }

    /// The lowest limit in `[from, to)`.
    pub(crate) fn lowest(&self, from: f64, to: f64) -> u32 {
        self.limits
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, limit)| *limit)
            .min()
            .unwrap_or_else(|| self.limit_at(from))
    }
}

pub(crate) fn config(algorithm: Algorithm) -> AdaptiveConfig {
    AdaptiveConfig::patched(
        None,
        &AdaptivePatch {
            algorithm: Some(AlgorithmChoice::Adaptive(algorithm)),
            ..Default::default()
        },
    )
    .unwrap()
    .unwrap()
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Completion {
    at: u64,
    granted_at: u64,
    in_flight: u32,
}

/// Runs `phases` back to back through a governor with `config` and `ceiling`.
pub(crate) fn run(config: &AdaptiveConfig, ceiling: u32, phases: &[Phase], seed: u64) -> Trace {
    let max_wait = 50_000_000u64; // 50 ms
    let origin = Instant::now();
    let at = |nanos: u64| origin + Duration::from_nanos(nanos);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    if std::env::var_os("GOVERNOR_SIM_DEBUG").is_some() {
        eprintln!("RUN {} {seed}", config.algorithm().as_str());
    }
    let mut limiter = Limiter::new(ceiling, Some(config), origin);
    let mut trace = Trace {
        limits: vec![(0.0, limiter.enforced())],
        ..Trace::default()
    };

    let mut queue: VecDeque<u64> = VecDeque::new();
    let mut backlog: VecDeque<(u64, u32)> = VecDeque::new();
    let mut running: BinaryHeap<Reverse<Completion>> = BinaryHeap::new();
    let mut busy = 0u32;
    let mut in_flight = 0u32;
    let mut phase_end = 0u64;
    let mut next_arrival = 0u64;

    for phase in phases {
        phase_end += (phase.seconds * 1e9) as u64;
        let service = phase.service.as_secs_f64() * 1e9;
        let interval = 1e9 / phase.rate;
        loop {
            let completion = running.peek().map(|Reverse(c)| c.at);
            let now = match completion {
                Some(done) if done <= next_arrival => done,
                _ if next_arrival < phase_end => next_arrival,
                Some(done) if done < phase_end => done,
                _ => break,
            };
            if completion == Some(now) {
                let Reverse(done) = running.pop().unwrap();
                busy -= 1;
                in_flight -= 1;
                trace.completed += 1;
                let sample = Sample {
                    kind: SampleKind::Latency(Duration::from_nanos(done.at - done.granted_at)),
                    in_flight: done.in_flight,
                    at: at(now),
                };
                if limiter.sample(&sample).is_some() {
                    trace.limits.push((now as f64 / 1e9, limiter.enforced()));
                }
            } else {
                queue.push_back(now);
                next_arrival = now + rng.exponential(interval).max(1.0) as u64;
            }
            // Hand free slots to the queue, oldest first; the overdue leave.
            while let Some(&arrived) = queue.front() {
                if now - arrived > max_wait {
                    queue.pop_front();
                    trace.rejected += 1;
                    continue;
                }
                if in_flight >= limiter.enforced() {
                    break;
                }
                queue.pop_front();
                in_flight += 1;
                trace.granted += 1;
                if in_flight > trace.worst_grant.0 {
                    trace.worst_grant = (in_flight, limiter.enforced());
                }
                assert!(in_flight <= limiter.enforced().max(1));
                backlog.push_back((now, in_flight));
            }
            // The downstream starts what its workers can take.
            while busy < phase.workers {
                let Some((granted_at, held)) = backlog.pop_front() else {
                    break;
                };
                busy += 1;
                let took = rng.exponential(service).max(1.0) as u64;
                running.push(Reverse(Completion {
                    at: now + took,
                    granted_at,
                    in_flight: held,
                }));
            }
        }
    }
    trace
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS10: Duration = Duration::from_millis(10);

    /// Every algorithm, each with a few seeds: a rule that holds by luck on
    /// one run of the generator does not hold on all.
    fn cases() -> impl Iterator<Item = (Algorithm, u64)> {
        let seeds: Vec<u64> = match std::env::var("GOVERNOR_SIM_SEEDS") {
            Ok(n) => (1..=n.parse().unwrap_or(3)).collect(),
            Err(_) => (1..=10).collect(),
        };
        Algorithm::ALL
            .into_iter()
            .flat_map(move |a| seeds.clone().into_iter().map(move |s| (a, s)))
    }

    fn phase(seconds: f64, workers: u32, service: Duration, rate: f64) -> Phase {
        Phase {
            seconds,
            workers,
            service,
            rate,
        }
    }

    /// Fails with every case that broke a rule, not just the first.
    fn check(failures: Vec<String>) {
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    /// 16 workers at 10 ms serve 1600 calls a second; 1.5x that arrives.
    /// The capacity halves at 5 s and comes back at 10 s.
    #[test]
    fn every_algorithm_finds_a_halved_capacity_within_two_seconds() {
        let mut failures = Vec::new();
        for (algorithm, seed) in cases() {
            let phases = [
                phase(5.0, 16, MS10, 2400.0),
                phase(5.0, 8, MS10, 2400.0),
                phase(5.0, 16, MS10, 2400.0),
            ];
            let trace = run(&config(algorithm), 200, &phases, seed);
            let full = trace.share_within(3.0, 5.0, 12.8, 25.6);
            let half = trace.share_within(7.0, 10.0, 6.4, 12.8);
            let back = trace.share_within(12.0, 15.0, 12.8, 25.6);
            // Converged within 2 s of the step, and the saw never cuts deep.
            let converged = trace.mean(6.5, 7.0);
            let (low_half, low_back) = (trace.lowest(7.0, 10.0), trace.lowest(12.0, 15.0));
            if full < 0.9
                || half < 0.9
                || back < 0.9
                || !(6.4..=12.8).contains(&converged)
                || low_half < 4
                || low_back < 8
            {
                failures.push(format!(
                    "{} seed {seed}: in range full {full} half {half} back {back}; \
                     mean at 6.5-7 s {converged:.1}; lowest {low_half} {low_back}",
                    algorithm.as_str()
                ));
            }
            assert!(trace.worst_grant.0 <= trace.worst_grant.1);
        }
        check(failures);
    }

    /// At 0.8x the capacity the limit must not reject what the downstream
    /// could serve.
    #[test]
    fn steady_load_below_capacity_is_not_rejected() {
        let mut failures = Vec::new();
        for (algorithm, seed) in cases() {
            let trace = run(
                &config(algorithm),
                200,
                &[phase(10.0, 16, MS10, 1280.0)],
                seed,
            );
            let share = trace.rejected as f64 / (trace.granted + trace.rejected) as f64;
            if share >= 0.005 {
                failures.push(format!(
                    "{} seed {seed}: {share:.4} rejected, lowest limit {}",
                    algorithm.as_str(),
                    trace.lowest(0.0, 10.0)
                ));
            }
        }
        check(failures);
    }

    /// Two calls in flight on average: the samples say nothing about a limit
    /// of 16, which neither grows nor shrinks.
    #[test]
    fn low_load_neither_grows_nor_collapses_the_limit() {
        let mut failures = Vec::new();
        for (algorithm, seed) in cases() {
            let trace = run(
                &config(algorithm),
                200,
                &[phase(10.0, 16, MS10, 200.0)],
                seed,
            );
            let limits: Vec<u32> = trace.limits.iter().map(|(_, l)| *l).collect();
            if limits.iter().any(|l| *l != 16) || trace.rejected > 0 {
                failures.push(format!("{} seed {seed}: {limits:?}", algorithm.as_str()));
            }
        }
        check(failures);
    }

    /// The downstream gets twice as slow for good with as many workers: the
    /// right limit is unchanged. The limit dips (cuts look right until the
    /// cuts are seen not to help), then comes back: from 5 s after the step,
    /// its mean is at least 0.8x the workers and its half-second average is
    /// within [0.8x, 2.5x] of them at least 70 % of the time (the gradient
    /// saws below 0.8x now and then).
    #[test]
    fn a_permanently_slower_downstream_is_relearned() {
        let mut failures = Vec::new();
        for (algorithm, seed) in cases() {
            let phases = [
                phase(5.0, 16, MS10, 1200.0),
                phase(10.0, 16, MS10 * 2, 1200.0),
            ];
            let trace = run(&config(algorithm), 200, &phases, seed);
            let back = trace.share_within(10.0, 15.0, 12.8, 40.0);
            if back < 0.7 || trace.mean(10.0, 15.0) < 12.8 {
                failures.push(format!(
                    "{} seed {seed}: in range {back}, mean 10-15 s {:.1}, lowest {}",
                    algorithm.as_str(),
                    trace.mean(10.0, 15.0),
                    trace.lowest(5.0, 15.0)
                ));
            }
        }
        check(failures);
    }
}
