//! Structured logs of backpressure events, rate-limited per dependency.
//!
//! The first event of a dependency in each one-second window is logged in
//! full: the reason, the threshold that was hit and the load at that moment.
//! Further events in the window are only counted, and a summary line per
//! dependency closes the window, so a storm of 10k rejections a second writes
//! two lines a second per dependency, not 10k.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::ledger::{Ledger, RejectReason, Snapshot, TenantDetail};

const WINDOW: Duration = Duration::from_secs(1);

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Rejected(RejectReason),
    LeaseExpired,
}

impl Event {
    fn index(self) -> usize {
        match self {
            Event::Rejected(reason) => RejectReason::ALL
                .iter()
                .position(|r| *r == reason)
                .unwrap_or(0),
            Event::LeaseExpired => RejectReason::ALL.len(),
        }
    }

    fn name(index: usize) -> &'static str {
        RejectReason::ALL
            .get(index)
            .map_or("lease_expired", |r| r.as_str())
    }
}

const KINDS: usize = RejectReason::ALL.len() + 1;

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    suppressed: [u64; KINDS],
    last: Snapshot,
}

#[derive(Debug, Default)]
pub struct BackpressureLog {
    windows: DashMap<Arc<str>, Mutex<Window>>,
}

impl BackpressureLog {
    /// Records an event; logs it in full if it opens its dependency's window.
    /// Lines are written after the window's lock is released.
    /// `who`: the tenant and route of the request, empty when unknown.
    pub fn record(
        &self,
        ledger: &Ledger,
        dependency: &str,
        event: Event,
        load: Snapshot,
        who: Who<'_>,
    ) {
        let now = Instant::now();
        let fresh = || Window {
            started: now,
            suppressed: [0; KINDS],
            last: load,
        };
        let (opens, closed) = match self.windows.get(dependency) {
            Some(window) => {
                let mut window = window.lock().unwrap_or_else(|e| e.into_inner());
                if now.duration_since(window.started) < WINDOW {
                    window.suppressed[event.index()] += 1;
                    window.last = load;
                    (false, None)
                } else {
                    (true, Some(std::mem::replace(&mut *window, fresh())))
                }
            }
            None => {
                self.windows
                    .entry(Arc::from(dependency))
                    .or_insert_with(|| Mutex::new(fresh()));
                (true, None)
            }
        };
        if let Some(closed) = closed {
            summarise(dependency, &closed);
        }
        if opens {
            log_in_full(ledger, dependency, event, load, who);
        }
    }

    /// Forgets a dependency that no longer exists.
    pub fn forget(&self, dependency: &str) {
        self.windows.remove(dependency);
    }

    /// Closes windows that are over, so a storm's last summary is not held
    /// back until the next event. Run about once a second.
    pub fn flush(&self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        for entry in self.windows.iter() {
            let mut window = entry.value().lock().unwrap_or_else(|e| e.into_inner());
            if now.duration_since(window.started) >= WINDOW
                && window.suppressed.iter().any(|n| *n > 0)
            {
                closed.push((entry.key().clone(), *window));
                window.suppressed = [0; KINDS];
            }
        }
        for (dependency, window) in closed {
            summarise(&dependency, &window);
        }
    }
}

fn summarise(dependency: &str, window: &Window) {
    let total: u64 = window.suppressed.iter().sum();
    if total == 0 {
        return;
    }
    let by_reason = window
        .suppressed
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| format!("{}={n}", Event::name(i)))
        .collect::<Vec<_>>()
        .join(",");
    tracing::warn!(
        dependency,
        events = total,
        by_reason = %by_reason,
        limit = window.last.limit,
        in_flight = window.last.in_flight,
        queued = window.last.queued,
        "backpressure summary: further events in the last second"
    );
}

/// The tenant and route of the request an event is about (empty: none or
/// not known, like a lease's expiry).
#[derive(Clone, Copy, Debug, Default)]
pub struct Who<'a> {
    pub tenant: &'a str,
    pub route: &'a str,
}

fn log_in_full(ledger: &Ledger, dependency: &str, event: Event, load: Snapshot, who: Who<'_>) {
    let Who { tenant, route } = who;
    let Some(status) = ledger.status_with(dependency, TenantDetail::None) else {
        return;
    };
    let limits = &status.limits;
    let (limit, in_flight, queued) = (load.limit, load.in_flight, load.queued);
    match event {
        Event::Rejected(RejectReason::QueueFull) => tracing::warn!(
            dependency,
            tenant,
            route,
            reason = "queue_full",
            max_queue = limits.max_queue(),
            limit,
            in_flight,
            queued,
            "backpressure: queue full, request rejected"
        ),
        Event::Rejected(RejectReason::QueueTimeout) => tracing::warn!(
            dependency,
            tenant,
            route,
            reason = "queue_timeout",
            max_wait_ms = limits.max_wait().as_millis() as u64,
            limit,
            in_flight,
            queued,
            "backpressure: no permit within the wait, request rejected"
        ),
        Event::Rejected(RejectReason::Shed) => tracing::warn!(
            dependency,
            tenant,
            route,
            reason = "shed",
            max_queue = limits.max_queue(),
            limit,
            in_flight,
            queued,
            "backpressure: waiter displaced by a higher-priority request or by a tenant within its fair share"
        ),
        Event::Rejected(RejectReason::RetryBudgetExhausted) => tracing::warn!(
            dependency,
            tenant,
            route,
            reason = "retry_budget_exhausted",
            budget_ratio = limits.retry_budget().ratio,
            budget_min_per_second = limits.retry_budget().min_per_second,
            budget_available = status.retry_budget_available,
            limit,
            in_flight,
            queued,
            "backpressure: retry budget exhausted, retry rejected"
        ),
        Event::Rejected(RejectReason::RateLimited) => tracing::warn!(
            dependency,
            tenant,
            route,
            reason = "rate_limited",
            rate_per_second = limits.rate().map(|r| r.per_second()),
            rate_burst = limits.rate().map(|r| r.burst()),
            tenant_rate_per_second = limits.tenant_rate().map(|r| r.per_second()),
            tenant_rate_burst = limits.tenant_rate().map(|r| r.burst()),
            limit,
            in_flight,
            queued,
            "backpressure: no rate token within the wait, request rejected"
        ),
        // Not a backpressure event (the caller's fallback working); never
        // recorded here, see `Telemetry::acquire_finished`, but named all the same.
        Event::Rejected(RejectReason::Degrade) => tracing::debug!(
            dependency,
            tenant,
            route,
            reason = "degrade",
            degrade_at = limits.degrade_at().as_str(),
            limit,
            in_flight,
            queued,
            "degradable request answered DEGRADE"
        ),
        Event::Rejected(RejectReason::ShuttingDown) => tracing::info!(
            dependency,
            tenant,
            route,
            reason = "shutting_down",
            limit,
            in_flight,
            queued,
            "request rejected: the governor is draining"
        ),
        Event::LeaseExpired => tracing::warn!(
            dependency,
            tenant,
            route,
            reason = "lease_expired",
            lease_ttl_ms = limits.lease_ttl().as_millis() as u64,
            limit,
            in_flight,
            queued,
            "lease expired unreleased: its slot was freed (a caller crashed or forgot to release)"
        ),
    }
}
