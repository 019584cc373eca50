//! Logs of limit changes, rate-limited per dependency: an adaptive limit may
//! move every sampling window, so the first move in each second is logged in
//! full (old and new value, the reason, the signals behind it and the load)
//! and the rest of that second in one summary line, from the first value to
//! the last.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::ledger::Snapshot;
use crate::ledger::limit::{LimitChange, LimitStatus};

const WINDOW: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    /// Moves since the full line, and the span they covered.
    suppressed: u32,
    from: LimitStatus,
    to: LimitStatus,
}

#[derive(Debug, Default)]
pub struct LimitLog {
    windows: DashMap<Arc<str>, Mutex<Window>>,
}

impl LimitLog {
    pub fn record(&self, dependency: &Arc<str>, change: &LimitChange, load: Snapshot) {
        let now = Instant::now();
        let fresh = Window {
            started: now,
            suppressed: 0,
            from: change.after,
            to: change.after,
        };
        let (full, closed) = match self.windows.get(dependency) {
            Some(window) => {
                let mut window = window.lock().unwrap_or_else(|e| e.into_inner());
                if now.duration_since(window.started) < WINDOW {
                    window.suppressed += 1;
                    window.to = change.after;
                    (false, None)
                } else {
                    (true, Some(std::mem::replace(&mut *window, fresh)))
                }
            }
            None => {
                self.windows
                    .entry(dependency.clone())
                    .or_insert_with(|| Mutex::new(fresh));
                (true, None)
            }
        };
        if let Some(closed) = closed {
            summarise(dependency, &closed);
        }
        if full {
            log_in_full(dependency, change, load);
        }
    }

    /// Writes the summaries of seconds that are over; run about once a second.
    pub fn flush(&self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        for entry in self.windows.iter() {
            let mut window = entry.value().lock().unwrap_or_else(|e| e.into_inner());
            if now.duration_since(window.started) >= WINDOW && window.suppressed > 0 {
                closed.push((entry.key().clone(), *window));
                window.suppressed = 0;
                window.from = window.to;
            }
        }
        for (dependency, window) in closed {
            summarise(&dependency, &window);
        }
    }

    /// Forgets a dependency that no longer exists.
    pub fn forget(&self, dependency: &str) {
        self.windows.remove(dependency);
    }
}

fn millis(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1000.0)
}

fn log_in_full(dependency: &str, change: &LimitChange, load: Snapshot) {
    let (before, after) = (change.before, change.after);
    let adaptive = after.adaptive;
    tracing::info!(
        dependency,
        reason = change.reason.as_str(),
        old_limit = before.enforced,
        new_limit = after.enforced,
        old_adaptive_limit = before.adaptive.map(|a| a.limit),
        new_adaptive_limit = adaptive.map(|a| a.limit),
        max_concurrency = after.ceiling,
        algorithm = adaptive.map_or("static", |a| a.algorithm.as_str()),
        shadow = adaptive.is_some_and(|a| a.shadow),
        latency_baseline_ms = millis(adaptive.and_then(|a| a.baseline)),
        latency_recent_ms = millis(adaptive.and_then(|a| a.recent)),
        in_flight = load.in_flight,
        queued = load.queued,
        "limit changed"
    );
}

fn summarise(dependency: &str, window: &Window) {
    if window.suppressed == 0 {
        return;
    }
    tracing::info!(
        dependency,
        changes = window.suppressed,
        from_limit = window.from.enforced,
        to_limit = window.to.enforced,
        from_adaptive_limit = window.from.adaptive.map(|a| a.limit),
        to_adaptive_limit = window.to.adaptive.map(|a| a.limit),
        latency_baseline_ms = millis(window.to.adaptive.and_then(|a| a.baseline)),
        latency_recent_ms = millis(window.to.adaptive.and_then(|a| a.recent)),
        "limit summary: further changes in the last second"
    );
}
