//! What the sidecar tells the outside world: OpenTelemetry traces that
//! separate queue wait from processing, Prometheus metrics, and rate-limited
//! structured logs of backpressure events.
//!
//! The gRPC shell calls [`Telemetry`] at the edges of each request; the ledger
//! reports expiries through [`LedgerObserver`]. With no trace endpoint
//! configured, tracing is off and the request path only touches a few atomic
//! counters.

mod events;
mod export;
mod format;
pub mod heap;
mod limit_log;
mod metrics;
mod process;
pub mod status;
mod trace;

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use opentelemetry::trace::{Span as _, SpanContext, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;

pub use events::{BackpressureLog, Event, Who};
pub use export::QueueConfig;
pub use format::Format;
pub use limit_log::LimitLog;
pub use metrics::{BUCKETS, ConnectionMetrics, Metrics, ReasonLabels, TraceLabels, WAIT_BOUNDS};
pub use opentelemetry_sdk::trace::Sampler;
pub use trace::{Tracing, sampler};

use crate::config::TracingConfig;
use crate::ledger::limit::LimitChange;
use crate::ledger::{
    Decision, EndedLease, LeaseEnd, LeaseId, Ledger, LedgerObserver, Outcome, Priority,
    RejectReason, Snapshot,
};

/// The request fields telemetry reports.
#[derive(Clone, Copy, Debug)]
pub struct AcquireFields<'a> {
    pub dependency: &'a str,
    pub tenant: &'a str,
    pub route: &'a str,
    pub priority: Priority,
    pub attempt: u32,
}

/// A traced Acquire in progress.
#[derive(Debug)]
pub struct AcquireTrace {
    caller: Context,
    acquire: Context,
    arrival: SystemTime,
}

pub struct Telemetry {
    pub metrics: Metrics,
    tracing: Option<Tracing>,
    events: BackpressureLog,
    limits: LimitLog,
    /// Open `governor.permit` spans by lease key; bounded by the leases held.
    permits: DashMap<u128, opentelemetry_sdk::trace::Span>,
    ledger: OnceLock<Weak<Ledger>>,
}

impl std::fmt::Debug for Telemetry {
    /// By hand: the open permit spans are keyed by lease key, a part of the
    /// lease id, which must never be shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("metrics", &self.metrics)
            .field("tracing", &self.tracing)
            .field("events", &self.events)
            .field("limits", &self.limits)
            .field("open_permit_spans", &self.permits.len())
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts telemetry; with `tracing`, the trace pipeline too (which needs
    /// the multi-threaded runtime).
    pub fn start(tracing: Option<&TracingConfig>) -> Result<Arc<Telemetry>, String> {
        let metrics = Metrics::new();
        let tracing = tracing
            .map(|config| {
                Tracing::start(
                    config,
                    metrics.spans_dropped.clone(),
                    metrics.span_exports_failed.clone(),
                )
            })
            .transpose()?;
        Ok(Arc::new(Telemetry {
            metrics,
            tracing,
            events: BackpressureLog::default(),
            limits: LimitLog::default(),
            permits: DashMap::new(),
            ledger: OnceLock::new(),
        }))
    }

    /// Connects the ledger, whose expiries this observes.
    pub fn attach(&self, ledger: &Arc<Ledger>) {
        let _ = self.ledger.set(Arc::downgrade(ledger));
    }

    pub fn tracing_enabled(&self) -> bool {
        self.tracing.is_some()
    }

    /// An Acquire arrived: opens its span when tracing is on.
    pub fn acquire_started(
        &self,
        metadata: &MetadataMap,
        fields: &AcquireFields<'_>,
    ) -> Option<AcquireTrace> {
        let tracing = self.tracing.as_ref()?;
        let caller = tracing.caller_context(metadata);
        let arrival = SystemTime::now();
        let mut attributes = vec![
            KeyValue::new("governor.dependency", fields.dependency.to_owned()),
            KeyValue::new("governor.priority", fields.priority.as_str()),
            KeyValue::new("governor.attempt", i64::from(fields.attempt)),
        ];
        if !fields.tenant.is_empty() {
            attributes.push(KeyValue::new("governor.tenant", fields.tenant.to_owned()));
        }
        if !fields.route.is_empty() {
            attributes.push(KeyValue::new("governor.route", fields.route.to_owned()));
        }
        let acquire = tracing.start_acquire(&caller, arrival, attributes);
        Some(AcquireTrace {
            caller,
            acquire,
            arrival,
        })
    }

    /// An Acquire was decided.
    pub fn acquire_finished(
        &self,
        ledger: &Ledger,
        trace: Option<AcquireTrace>,
        fields: &AcquireFields<'_>,
        decision: &Decision,
    ) {
        let dependency = self.dependency_metrics(ledger, fields.dependency);
        let exemplar = trace
            .as_ref()
            .and_then(|trace| exemplar(trace.acquire.span().span_context()));
        dependency.decided(
            decision.outcome.map(|_| ()).map_err(|r| r.reason),
            decision.queue_wait,
            exemplar,
        );
        if let Err(rejection) = decision.outcome
            && rejection.reason == RejectReason::Degrade
        {
            // The fallback working, not overload: at debug level, each one
            // (a backpressure event would warn once a second per dependency
            // for as long as degradable traffic meets a busy dependency).
            tracing::debug!(
                dependency = fields.dependency,
                reason = "degrade",
                pressure = decision.snapshot.pressure.as_str(),
                limit = decision.snapshot.limit,
                in_flight = decision.snapshot.in_flight,
                queued = decision.snapshot.queued,
                "degradable request answered DEGRADE"
            );
        } else if let Err(rejection) = decision.outcome {
            let name: Arc<str> = Arc::from(fields.dependency);
            self.events.record(
                ledger,
                &name,
                Event::Rejected(rejection.reason),
                decision.snapshot,
                Who {
                    tenant: fields.tenant,
                    route: fields.route,
                },
            );
            self.forget_if_gone(ledger, &name);
        }
        let (Some(trace), Some(tracing)) = (trace, &self.tracing) else {
            return;
        };

        let snapshot = decision.snapshot;
        let mut attributes = vec![
            KeyValue::new(
                "governor.decision",
                if decision.granted().is_some() {
                    "granted"
                } else {
                    "rejected"
                },
            ),
            KeyValue::new("governor.queue.depth", i64::from(decision.queue_depth)),
            KeyValue::new("governor.limit", i64::from(snapshot.limit)),
            KeyValue::new("governor.in_flight", i64::from(snapshot.in_flight)),
            KeyValue::new("governor.queued", i64::from(snapshot.queued)),
            KeyValue::new("governor.pressure", snapshot.pressure.as_str()),
        ];
        match &decision.outcome {
            Ok(grant) => attributes.push(KeyValue::new(
                "governor.lease",
                grant.lease.handle().to_string(),
            )),
            Err(rejection) => {
                attributes.push(KeyValue::new(
                    "governor.reject_reason",
                    rejection.reason.as_str(),
                ));
                attributes.push(KeyValue::new(
                    "governor.retry_after_ms",
                    rejection.retry_after.as_millis() as i64,
                ));
            }
        }
        if !decision.queue_wait.is_zero() {
            tracing.queue_wait(
                &trace.acquire,
                trace.arrival,
                decision.queue_wait,
                vec![
                    KeyValue::new("governor.dependency", fields.dependency.to_owned()),
                    KeyValue::new("governor.queue.depth", i64::from(decision.queue_depth)),
                ],
            );
        }
        let span = trace.acquire.span();
        span.set_attributes(attributes);
        span.end();

        if let Ok(grant) = &decision.outcome {
            let mut attributes = vec![
                KeyValue::new("governor.dependency", fields.dependency.to_owned()),
                KeyValue::new("governor.lease", grant.lease.handle().to_string()),
                KeyValue::new("governor.attempt", i64::from(fields.attempt)),
            ];
            if !fields.tenant.is_empty() {
                attributes.push(KeyValue::new("governor.tenant", fields.tenant.to_owned()));
            }
            if !fields.route.is_empty() {
                attributes.push(KeyValue::new("governor.route", fields.route.to_owned()));
            }
            let permit = tracing.start_permit(
                &trace.caller,
                trace.arrival + decision.queue_wait,
                attributes,
            );
            self.permits.insert(grant.lease.key, permit);
            // A lease cannot end before its TTL, but if this one already did,
            // its span must not wait in the map forever.
            if !ledger.holds(&grant.lease) {
                self.end_permit(grant.lease.key, None, Duration::ZERO);
            }
        }
    }

    /// The caller went away while its Acquire waited in the queue.
    pub fn acquire_cancelled(&self, trace: AcquireTrace) {
        let Some(tracing) = &self.tracing else { return };
        let waited = trace.arrival.elapsed().unwrap_or_default();
        tracing.queue_wait(&trace.acquire, trace.arrival, waited, Vec::new());
        let span = trace.acquire.span();
        span.set_attribute(KeyValue::new("governor.decision", "cancelled"));
        span.end();
    }

    /// A live lease was released.
    pub fn released(&self, ended: &EndedLease, caller_latency: Option<Duration>) {
        let outcome = match ended.end {
            LeaseEnd::Released(outcome) => Some(outcome),
            LeaseEnd::Expired => None,
        };
        let ledger = self.ledger();
        let metrics = match &ledger {
            Some(ledger) => self.dependency_metrics(ledger, ended.dependency()),
            None => self.metrics.dependency(ended.dependency()),
        };
        metrics.lease_ended(outcome, ended.held, self.permit_exemplar(ended.lease.key));
        if self.tracing.is_some() {
            self.end_permit(ended.lease.key, outcome, caller_latency.unwrap_or_default());
        }
    }

    /// A lease was renewed: noted on its permit span.
    pub fn renewed(&self, lease: &LeaseId) {
        if self.tracing.is_none() {
            return;
        }
        if let Some(mut span) = self.permits.get_mut(&lease.key) {
            span.add_event("governor.lease.renewed", Vec::new());
        }
    }

    /// The trace of the permit span of lease `key`, if that one is sampled.
    fn permit_exemplar(&self, key: u128) -> Option<TraceLabels> {
        self.tracing.as_ref()?;
        let span = self.permits.get(&key)?;
        exemplar(span.span_context())
    }

    fn end_permit(&self, key: u128, outcome: Option<Outcome>, caller_latency: Duration) {
        let Some((_, mut span)) = self.permits.remove(&key) else {
            return;
        };
        match outcome {
            Some(outcome) => {
                let name = outcome.as_str();
                span.set_attribute(KeyValue::new("governor.outcome", name));
                if !caller_latency.is_zero() {
                    span.set_attribute(KeyValue::new(
                        "governor.caller_latency_ms",
                        caller_latency.as_secs_f64() * 1000.0,
                    ));
                }
                if outcome.is_drop() {
                    span.set_status(Status::error(format!(
                        "the call to the dependency ended with {name}"
                    )));
                }
            }
            None => {
                span.set_attribute(KeyValue::new("governor.lease.expired", true));
                span.set_status(Status::error(
                    "lease expired: neither released nor renewed within its TTL",
                ));
            }
        }
        span.end();
    }

    /// Logs summaries of rate-limited backpressure events once a second.
    pub fn spawn_log_flusher(self: &Arc<Self>, stop: CancellationToken) {
        let telemetry = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(telemetry) = telemetry.upgrade() else {
                    return;
                };
                telemetry.events.flush();
                telemetry.limits.flush();
            }
        });
    }

    /// Exports the spans still queued, within `timeout`. Open permit spans
    /// end here, marked as cut short by the shutdown.
    pub async fn shutdown(&self, timeout: Duration) {
        let Some(tracing) = &self.tracing else { return };
        let open: Vec<u128> = self.permits.iter().map(|entry| *entry.key()).collect();
        for key in open {
            if let Some((_, mut span)) = self.permits.remove(&key) {
                span.set_attribute(KeyValue::new("governor.shutdown", true));
                span.end();
            }
        }
        tracing.shutdown(timeout).await;
    }

    fn ledger(&self) -> Option<Arc<Ledger>> {
        self.ledger.get().and_then(Weak::upgrade)
    }

    /// The metric handles of a dependency. If this creates them for one
    /// that was evicted just before, they go again at once: the eviction's
    /// forgetting came too early for them.
    fn dependency_metrics(&self, ledger: &Ledger, name: &str) -> Arc<metrics::DependencyMetrics> {
        let (handles, created) = self.metrics.dependency_created(name);
        if created {
            self.forget_if_gone(ledger, name);
        }
        handles
    }

    /// Forgets what is kept for `name` if the ledger no longer has it. Run
    /// after anything that may have created per-dependency state: together
    /// with [`LedgerObserver::dependency_evicted`] (which runs after the
    /// dependency left the ledger), no state outlives its dependency.
    fn forget_if_gone(&self, ledger: &Ledger, name: &str) {
        if !ledger.contains(name) {
            self.forget(name);
        }
    }

    fn forget(&self, name: &str) {
        self.metrics.forget(name);
        self.events.forget(name);
        self.limits.forget(name);
    }
}

impl crate::fleet::FleetObserver for Telemetry {
    fn store_called(&self, dependency: &str, latency: Duration, ok: bool) {
        self.metrics.fleet_store_called(dependency, latency, ok);
    }
}

impl LedgerObserver for Telemetry {
    fn lease_expired(&self, lease: &EndedLease) {
        self.metrics.dependency(lease.dependency()).lease_ended(
            None,
            lease.held,
            self.permit_exemplar(lease.lease.key),
        );
        if let Some(ledger) = self.ledger() {
            self.events.record(
                &ledger,
                lease.dependency(),
                Event::LeaseExpired,
                lease.snapshot,
                Who::default(),
            );
            self.forget_if_gone(&ledger, lease.dependency());
        }
        if self.tracing.is_some() {
            self.end_permit(lease.lease.key, None, Duration::ZERO);
        }
    }

    fn limit_changed(&self, dependency: &Arc<str>, change: &LimitChange, load: Snapshot) {
        self.metrics.limit_changed(dependency, change);
        self.limits.record(dependency, change, load);
        if let Some(ledger) = self.ledger() {
            self.forget_if_gone(&ledger, dependency);
        }
    }

    fn dependency_evicted(&self, dependency: &Arc<str>) {
        self.forget(dependency);
    }

    fn session_lease_released(&self, lease: &EndedLease) {
        self.released(lease, None);
    }
}

/// An exemplar for a span that is sampled (and so can be found in the
/// tracing backend); none for the others.
fn exemplar(context: &SpanContext) -> Option<TraceLabels> {
    (context.is_valid() && context.is_sampled()).then(|| TraceLabels {
        trace_id: context.trace_id().to_string(),
    })
}
