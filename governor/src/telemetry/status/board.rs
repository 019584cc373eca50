//! The status board: samples every dependency once a second into a bounded
//! history, and renders it with the live figures as `/status.json`.
//!
//! Bounded: at most [`HISTORY_SAMPLES`] samples (of about 48 bytes) per
//! dependency, and only for the dependencies the ledger knows (itself capped
//! by `limits.max_dependencies`): at the default cap of 1024, under 9 MiB in
//! the worst case, a few KiB per dependency in practice.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::Instant;

use super::load::Load;
use super::quantile::{growth, quantile};
use crate::ledger::{DependencyStatus, Pressure};
use crate::telemetry::{Metrics, WAIT_BOUNDS};

/// Samples kept per dependency: three minutes at one a second.
pub const HISTORY_SAMPLES: usize = 180;

/// How often [`StatusBoard::sample`] is meant to run.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct StatusBoard {
    tracks: Mutex<HashMap<Arc<str>, Track>>,
}

/// One dependency's history.
#[derive(Debug, Default)]
struct Track {
    /// Counters at the latest sample and at the one before.
    last: Option<Counters>,
    previous: Option<Counters>,
    samples: VecDeque<Sample>,
}

#[derive(Clone, Copy, Debug)]
struct Counters {
    at: Instant,
    rejected_total: u64,
    wait_buckets: [u64; WAIT_BOUNDS.len() + 1],
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    unix_seconds: f64,
    limit: u32,
    in_flight: u32,
    queued: u32,
    /// Over the interval ending here; `None` when nothing was decided in it.
    wait_p99_seconds: Option<f32>,
    rejections_per_second: f32,
    pressure: Pressure,
}

// The documented bound: 180 samples of at most 48 bytes for each of 1024
// dependencies stay under 9 MiB.
const _: () = assert!(std::mem::size_of::<Sample>() <= 48 && HISTORY_SAMPLES * 48 * 1024 < 9 << 20);

impl StatusBoard {
    pub fn new() -> StatusBoard {
        StatusBoard::default()
    }

    /// Takes one sample of every dependency in `statuses`, at `now`, and
    /// forgets the dependencies that are gone.
    pub fn sample(
        &self,
        statuses: &[DependencyStatus],
        metrics: &Metrics,
        now: Instant,
        wall: SystemTime,
    ) {
        let mut tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
        tracks.retain(|name, _| statuses.iter().any(|s| &s.name == name));
        for status in statuses {
            let track = tracks.entry(status.name.clone()).or_default();
            let counters = Counters {
                at: now,
                rejected_total: status.rejected_total,
                wait_buckets: metrics
                    .existing(&status.name)
                    .map_or([0; WAIT_BOUNDS.len() + 1], |m| m.queue_wait_buckets()),
            };
            // Counters start at zero when the dependency is created, and the
            // board samples from the process's start: no baseline is zero.
            let before = track.last;
            let rejected = counters.rejected_total - before.map_or(0, |b| b.rejected_total);
            let seconds = before.map_or(SAMPLE_INTERVAL, |b| now.duration_since(b.at));
            let waits = growth(
                &before.map_or([0; WAIT_BOUNDS.len() + 1], |b| b.wait_buckets),
                &counters.wait_buckets,
            );
            let sample = Sample {
                unix_seconds: unix_seconds(wall),
                limit: Load::of(status).limit,
                in_flight: status.in_flight,
                queued: status.queued,
                wait_p99_seconds: quantile(0.99, &WAIT_BOUNDS, &waits).map(|p| p as f32),
                rejections_per_second: per_second(rejected, seconds),
                pressure: status.pressure,
            };
            if track.samples.len() == HISTORY_SAMPLES {
                track.samples.pop_front();
            }
            track.samples.push_back(sample);
            track.previous = track.last.replace(counters);
        }
    }

    /// `/status.json`: every dependency's figures now and its history.
    pub fn json(&self, statuses: &[DependencyStatus], draining: bool, wall: SystemTime) -> String {
        let tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
        let dependencies = statuses
            .iter()
            .map(|status| {
                let track = tracks.get(&status.name);
                let load = Load::of(status);
                let latest = track.and_then(|t| t.samples.back());
                let samples = track.map(|t| t.samples.iter()).into_iter().flatten();
                DependencyJson {
                    name: &status.name,
                    limit: load.limit,
                    max_concurrency: status.limit.ceiling,
                    algorithm: status
                        .limit
                        .adaptive
                        .map_or("static", |a| a.algorithm.as_str()),
                    adaptive_limit: status.limit.adaptive.map(|a| a.limit),
                    shadow: status.limit.adaptive.is_some_and(|a| a.shadow),
                    in_flight: status.in_flight,
                    queued: status.queued,
                    max_queue: status.limits.max_queue(),
                    utilization: load.utilization(),
                    pressure: status.pressure.as_str(),
                    wait_p99_seconds: latest.and_then(|s| s.wait_p99_seconds),
                    rejections_per_second: latest.map(|s| s.rejections_per_second),
                    granted_total: status.granted_total,
                    rejected_total: status.rejected_total,
                    expired_total: status.expired_total,
                    retry_budget_available: status.retry_budget_available,
                    history: History::of(samples),
                }
            })
            .collect();
        let body = StatusJson {
            time: unix_seconds(wall),
            interval_seconds: SAMPLE_INTERVAL.as_secs_f64(),
            history_samples: HISTORY_SAMPLES,
            draining,
            dependencies,
        };
        serde_json::to_string(&body).expect("the status serializes")
    }
}

fn unix_seconds(wall: SystemTime) -> f64 {
    wall.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn per_second(count: u64, over: Duration) -> f32 {
    if over.is_zero() {
        return 0.0;
    }
    (count as f64 / over.as_secs_f64()) as f32
}

#[derive(Serialize)]
struct StatusJson<'a> {
    time: f64,
    interval_seconds: f64,
    history_samples: usize,
    draining: bool,
    dependencies: Vec<DependencyJson<'a>>,
}

#[derive(Serialize)]
struct DependencyJson<'a> {
    name: &'a str,
    limit: u32,
    max_concurrency: u32,
    /// "static", or the adaptive limit's algorithm.
    algorithm: &'static str,
    /// What the adaptive limit computed (in shadow mode not enforced).
    adaptive_limit: Option<u32>,
    shadow: bool,
    in_flight: u32,
    queued: u32,
    max_queue: u32,
    utilization: f64,
    pressure: &'static str,
    wait_p99_seconds: Option<f32>,
    rejections_per_second: Option<f32>,
    granted_total: u64,
    rejected_total: u64,
    expired_total: u64,
    retry_budget_available: f64,
    history: History,
}

/// The samples, oldest first, one array per figure.
#[derive(Default, Serialize)]
struct History {
    time: Vec<f64>,
    limit: Vec<u32>,
    in_flight: Vec<u32>,
    queued: Vec<u32>,
    wait_p99_seconds: Vec<Option<f32>>,
    rejections_per_second: Vec<f32>,
    pressure: Vec<&'static str>,
}

impl History {
    fn of<'a>(samples: impl Iterator<Item = &'a Sample>) -> History {
        let mut history = History::default();
        for s in samples {
            history.time.push(s.unix_seconds);
            history.limit.push(s.limit);
            history.in_flight.push(s.in_flight);
            history.queued.push(s.queued);
            history.wait_p99_seconds.push(s.wait_p99_seconds);
            history.rejections_per_second.push(s.rejections_per_second);
            history.pressure.push(s.pressure.as_str());
        }
        history
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Limits;
    use crate::ledger::limit::LimitStatus;

    fn status(
        name: &str,
        in_flight: u32,
        queued: u32,
        rejected_total: u64,
        pressure: Pressure,
    ) -> DependencyStatus {
        let limits = Limits::default();
        DependencyStatus {
            name: Arc::from(name),
            limit: LimitStatus {
                enforced: limits.max_concurrency(),
                ceiling: limits.max_concurrency(),
                adaptive: None,
                fleet: None,
            },
            limits,
            limit_changes_total: 0,
            in_flight,
            queued,
            retry_budget_available: 10.0,
            rated_tenants: 0,
            delayed: 0,
            granted_total: 0,
            rejected_total,
            expired_total: 0,
            pressure,
            fair: Default::default(),
            fleet: None,
        }
    }

    fn parse(json: &str) -> serde_json::Value {
        serde_json::from_str(json).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn samples_rates_wait_p99_and_pressure_per_interval() {
        let board = StatusBoard::new();
        let metrics = Metrics::new();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let start = Instant::now();
        board.sample(
            &[status("db", 0, 0, 0, Pressure::None)],
            &metrics,
            start,
            wall,
        );

        // One second: 98 immediate grants, two waits of 0.4 s, 5 rejections.
        let db = metrics.dependency("db");
        for _ in 0..98 {
            db.decided(Ok(()), Duration::ZERO, None);
        }
        for _ in 0..2 {
            db.decided(Ok(()), Duration::from_millis(400), None);
        }
        let limit = Limits::default().max_concurrency();
        let overloaded = [status("db", limit, 3, 5, Pressure::Overloaded)];
        tokio::time::advance(SAMPLE_INTERVAL).await;
        let t1 = Instant::now();
        board.sample(&overloaded, &metrics, t1, wall + SAMPLE_INTERVAL);

        let json = parse(&board.json(&overloaded, false, wall + SAMPLE_INTERVAL));
        let dep = &json["dependencies"][0];
        assert_eq!(dep["name"], "db");
        assert_eq!(dep["in_flight"], limit);
        assert_eq!(dep["limit"], limit);
        assert_eq!(dep["max_concurrency"], limit);
        assert_eq!(dep["algorithm"], "static");
        assert_eq!(dep["adaptive_limit"], serde_json::Value::Null);
        assert_eq!(dep["rejections_per_second"], 5.0);
        // Rank 99 of 100 lies halfway through the two waits in (0.25, 0.5].
        let p99 = dep["wait_p99_seconds"].as_f64().unwrap();
        assert!((p99 - 0.375).abs() < 1e-6, "{p99}");
        // The ledger's pressure, as it was when sampled.
        assert_eq!(dep["pressure"], "overloaded");
        let history = &dep["history"];
        assert_eq!(
            history["rejections_per_second"],
            serde_json::json!([0.0, 5.0])
        );
        assert_eq!(
            history["pressure"],
            serde_json::json!(["none", "overloaded"])
        );
        assert_eq!(history["in_flight"], serde_json::json!([0, limit]));
        assert_eq!(history["wait_p99_seconds"][0], serde_json::Value::Null);

        // A second later, with no new rejection: saturated, not overloaded,
        // and nothing decided means no p99.
        let busy = [status("db", limit, 3, 5, Pressure::Saturated)];
        tokio::time::advance(SAMPLE_INTERVAL).await;
        let t2 = Instant::now();
        board.sample(&busy, &metrics, t2, wall + 2 * SAMPLE_INTERVAL);
        let dep = &parse(&board.json(&busy, false, wall))["dependencies"][0];
        assert_eq!(dep["pressure"], "saturated");
        assert_eq!(dep["rejections_per_second"], 0.0);
        assert_eq!(dep["wait_p99_seconds"], serde_json::Value::Null);
        // Live figures between samples: the pressure of the status given.
        let rejected = [status("db", limit, 3, 6, Pressure::Overloaded)];
        let dep = &parse(&board.json(&rejected, false, wall))["dependencies"][0];
        assert_eq!(dep["pressure"], "overloaded");
        assert_eq!(
            parse(&board.json(&rejected, false, wall))["dependencies"][0]["history"]["pressure"],
            serde_json::json!(["none", "overloaded", "saturated"])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_dependency_shows_at_once_and_history_is_bounded() {
        let board = StatusBoard::new();
        let metrics = Metrics::new();
        let wall = UNIX_EPOCH;
        // Not sampled yet: listed with its live figures, no rates.
        let fresh = [status("new", 1, 0, 0, Pressure::None)];
        let json = parse(&board.json(&fresh, false, wall));
        let dep = &json["dependencies"][0];
        assert_eq!(dep["name"], "new");
        assert_eq!(dep["in_flight"], 1);
        assert_eq!(dep["rejections_per_second"], serde_json::Value::Null);
        assert_eq!(dep["pressure"], "none");
        assert_eq!(dep["history"]["time"], serde_json::json!([]));

        for second in 0..(HISTORY_SAMPLES as u64 + 20) {
            board.sample(
                &fresh,
                &metrics,
                Instant::now(),
                wall + Duration::from_secs(second),
            );
            tokio::time::advance(SAMPLE_INTERVAL).await;
        }
        let json = parse(&board.json(&fresh, false, wall));
        let times = json["dependencies"][0]["history"]["time"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(times.len(), HISTORY_SAMPLES);
        assert_eq!(times[0], 20.0, "the oldest samples were dropped");

        // A dependency that is gone is forgotten.
        board.sample(
            &[status("other", 0, 0, 0, Pressure::None)],
            &metrics,
            Instant::now(),
            wall,
        );
        assert_eq!(board.tracks.lock().unwrap().len(), 1);
        assert!(board.tracks.lock().unwrap().contains_key("other"));
    }
}
