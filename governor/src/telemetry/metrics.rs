//! Prometheus metrics. Counters and histograms are updated on the request
//! path through handles cached per dependency (one map lookup, then atomics);
//! gauges are read from the ledger when scraped, so they cost nothing between
//! scrapes. Label values are the dependency names, whose number the
//! dependency cap bounds; tenants are labels only when named in a
//! dependency's fairness weights, which the config bounds.
//!
//! A scrape gets the Prometheus text format 0.0.4 unless its `Accept` asks
//! for OpenMetrics ([`Format::negotiate`], as the official client libraries
//! do); only OpenMetrics carries exemplars, the trace ids of sampled requests
//! on the queue-wait and hold histograms.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::format::Format;
use super::process::ProcessCollector;
use super::status::Load;
use crate::ledger::limit::{ChangeReason, LimitChange};
use crate::ledger::{Ledger, Outcome, RejectReason, TenantDetail};

/// Bucket bounds in seconds: sub-millisecond to multi-second waits and holds.
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    dependency: String,
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    dependency: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    dependency: String,
    reason: &'static str,
}

/// A tenant named in a dependency's fairness weights: the config bounds
/// their number.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    dependency: String,
    tenant: String,
}

/// The named tenants' series, read from the ledger when scraped.
#[derive(Debug, Default)]
struct TenantMetrics {
    in_flight: Family<TenantLabels, Gauge>,
    queued: Family<TenantLabels, Gauge>,
    share: Family<TenantLabels, Gauge<f64, AtomicU64>>,
    granted: Family<TenantLabels, Counter>,
    rejected: Family<TenantLabels, Counter>,
    /// The series of the last scrape, to drop those of tenants no longer
    /// named (or dependencies gone).
    series: std::sync::Mutex<std::collections::HashSet<TenantLabels>>,
}

impl TenantMetrics {
    fn set(&self, statuses: &[crate::ledger::DependencyStatus]) {
        let mut now = std::collections::HashSet::new();
        for status in statuses {
            for tenant in status.fair.tenants.iter().filter(|t| t.named) {
                let labels = TenantLabels {
                    dependency: status.name.to_string(),
                    tenant: tenant.tenant.to_string(),
                };
                self.in_flight
                    .get_or_create(&labels)
                    .set(i64::from(tenant.in_flight));
                self.queued
                    .get_or_create(&labels)
                    .set(i64::from(tenant.queued));
                self.share.get_or_create(&labels).set(tenant.share);
                // Counted by the ledger; a new table (a new `by`) starts
                // them again, which Prometheus reads as a counter reset.
                self.granted
                    .get_or_create(&labels)
                    .inner()
                    .store(tenant.granted_total, Ordering::Relaxed);
                self.rejected
                    .get_or_create(&labels)
                    .inner()
                    .store(tenant.rejected_total, Ordering::Relaxed);
                now.insert(labels);
            }
        }
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for gone in series.difference(&now) {
            self.in_flight.remove(gone);
            self.queued.remove(gone);
            self.share.remove(gone);
            self.granted.remove(gone);
            self.rejected.remove(gone);
        }
        *series = now;
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetModeLabels {
    dependency: String,
    mode: &'static str,
}

/// Fleet-wide limits: the gauges read from the ledger when scraped, the
/// store calls counted as they happen (by the fleet tasks).
#[derive(Debug)]
struct FleetMetrics {
    limit: Family<DependencyLabels, Gauge>,
    share: Family<DependencyLabels, Gauge>,
    target: Family<DependencyLabels, Gauge>,
    enforced: Family<DependencyLabels, Gauge>,
    demand: Family<DependencyLabels, Gauge>,
    instances: Family<DependencyLabels, Gauge>,
    fallback_share: Family<DependencyLabels, Gauge>,
    mode: Family<FleetModeLabels, Gauge>,
    calls: Family<DependencyLabels, Counter>,
    errors: Family<DependencyLabels, Counter>,
    seconds: Family<DependencyLabels, prometheus_client::metrics::histogram::Histogram>,
    /// The dependencies of the last scrape that had a fleet limit.
    series: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Default for FleetMetrics {
    fn default() -> Self {
        FleetMetrics {
            limit: Family::default(),
            share: Family::default(),
            target: Family::default(),
            enforced: Family::default(),
            demand: Family::default(),
            instances: Family::default(),
            fallback_share: Family::default(),
            mode: Family::default(),
            calls: Family::default(),
            errors: Family::default(),
            seconds: Family::new_with_constructor(|| {
                prometheus_client::metrics::histogram::Histogram::new(BUCKETS)
            }),
            series: Default::default(),
        }
    }
}

impl FleetMetrics {
    fn set(&self, statuses: &[crate::ledger::DependencyStatus]) {
        let mut now = std::collections::HashSet::new();
        for status in statuses {
            let Some(fleet) = &status.fleet else {
                continue;
            };
            let labels = DependencyLabels {
                dependency: status.name.to_string(),
            };
            let gauge = |family: &Family<DependencyLabels, Gauge>, value: u32| {
                family.get_or_create(&labels).set(i64::from(value));
            };
            gauge(&self.limit, fleet.max_concurrency);
            gauge(&self.share, fleet.share);
            gauge(&self.target, fleet.target);
            gauge(&self.enforced, fleet.enforced);
            gauge(&self.demand, fleet.demand);
            gauge(&self.instances, fleet.instances);
            gauge(&self.fallback_share, fleet.fallback_share);
            for mode in crate::ledger::FleetMode::ALL {
                self.mode
                    .get_or_create(&FleetModeLabels {
                        dependency: labels.dependency.clone(),
                        mode: mode.as_str(),
                    })
                    .set(i64::from(fleet.mode == mode));
            }
            now.insert(labels.dependency);
        }
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for gone in series.difference(&now) {
            self.remove(gone);
        }
        *series = now;
    }

    fn remove(&self, dependency: &str) {
        let labels = DependencyLabels {
            dependency: dependency.to_owned(),
        };
        for family in [
            &self.limit,
            &self.share,
            &self.target,
            &self.enforced,
            &self.demand,
            &self.instances,
            &self.fallback_share,
        ] {
            family.remove(&labels);
        }
        for mode in crate::ledger::FleetMode::ALL {
            self.mode.remove(&FleetModeLabels {
                dependency: labels.dependency.clone(),
                mode: mode.as_str(),
            });
        }
        self.calls.remove(&labels);
        self.errors.remove(&labels);
        self.seconds.remove(&labels);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// An exemplar's labels: the trace of a sampled request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabels {
    pub trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// The counters of the gRPC listeners' connection gate.
#[derive(Clone, Debug, Default)]
pub struct ConnectionMetrics {
    pub open: Gauge,
    pub refused: Counter,
    pub closed: Family<ReasonLabels, Counter>,
    /// Calls refused over `server.max_calls`.
    pub calls_refused: Counter,
}

type Histogram = HistogramWithExemplars<TraceLabels>;

fn histogram() -> Histogram {
    HistogramWithExemplars::new(BUCKETS.into_iter())
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the sidecar exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    acquires: Family<DecisionLabels, Counter>,
    releases: Family<OutcomeLabels, Counter>,
    expired: Family<DependencyLabels, Counter>,
    queue_wait: HistogramFamily<DependencyLabels>,
    hold: HistogramFamily<DependencyLabels>,
    limit: Family<DependencyLabels, Gauge>,
    max_concurrency: Family<DependencyLabels, Gauge>,
    adaptive_limit: Family<DependencyLabels, Gauge>,
    latency_baseline: Family<DependencyLabels, Gauge<f64, AtomicU64>>,
    latency_recent: Family<DependencyLabels, Gauge<f64, AtomicU64>>,
    limit_changes: Family<ChangeLabels, Counter>,
    in_flight: Family<DependencyLabels, Gauge>,
    utilization: Family<DependencyLabels, Gauge<f64, AtomicU64>>,
    pressure: Family<DependencyLabels, Gauge>,
    queued: Family<DependencyLabels, Gauge>,
    max_queue: Family<DependencyLabels, Gauge>,
    budget: Family<DependencyLabels, Gauge<f64, AtomicU64>>,
    dependencies: Gauge,
    draining: Gauge,
    reloads: Family<ResultLabels, Counter>,
    pub(crate) spans_dropped: Counter,
    pub(crate) span_exports_failed: Counter,
    admin_denied: Family<ReasonLabels, Counter>,
    pub(crate) uds_peers_refused: Counter,
    /// The gRPC listeners' connections (`app::connections`).
    pub connections: ConnectionMetrics,
    tenants: TenantMetrics,
    fleet: FleetMetrics,
    /// By dependency name, looked up on every acquire and release: foldhash
    /// with a per-process random seed, as the ledger's name map (SipHash was
    /// a visible share of a Session pair).
    handles: DashMap<Arc<str>, Arc<DependencyMetrics>, foldhash::fast::RandomState>,
}

/// One dependency's request-path metrics, resolved once.
#[derive(Debug)]
pub struct DependencyMetrics {
    granted: Counter,
    rejected: [Counter; RejectReason::ALL.len()],
    released: [Counter; Outcome::ALL.len()],
    expired: Counter,
    queue_wait: Histogram,
    hold: Histogram,
    /// Queue waits per bucket of [`WAIT_BOUNDS`] (not cumulative), then
    /// those above the last bound: what the status page's wait p99 is
    /// computed from.
    wait_buckets: [AtomicU64; WAIT_BOUNDS.len() + 1],
}

/// The bounds of [`DependencyMetrics::queue_wait_buckets`]: [`BUCKETS`] after
/// a bucket of its own for waits of zero (decided on arrival, most of them
/// when all is well), so that a p99 of zero comes out as zero rather than
/// interpolated into the first bucket.
pub const WAIT_BOUNDS: [f64; BUCKETS.len() + 1] = {
    let mut bounds = [0.0; BUCKETS.len() + 1];
    let mut i = 0;
    while i < BUCKETS.len() {
        bounds[i + 1] = BUCKETS[i];
        i += 1;
    }
    bounds
};

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::default(),
            acquires: Family::default(),
            releases: Family::default(),
            expired: Family::default(),
            queue_wait: Family::new_with_constructor(histogram),
            hold: Family::new_with_constructor(histogram),
            limit: Family::default(),
            max_concurrency: Family::default(),
            adaptive_limit: Family::default(),
            latency_baseline: Family::default(),
            latency_recent: Family::default(),
            limit_changes: Family::default(),
            in_flight: Family::default(),
            utilization: Family::default(),
            pressure: Family::default(),
            queued: Family::default(),
            max_queue: Family::default(),
            budget: Family::default(),
            dependencies: Gauge::default(),
            draining: Gauge::default(),
            reloads: Family::default(),
            spans_dropped: Counter::default(),
            span_exports_failed: Counter::default(),
            admin_denied: Family::default(),
            uds_peers_refused: Counter::default(),
            connections: ConnectionMetrics::default(),
            tenants: TenantMetrics::default(),
            fleet: FleetMetrics::default(),
            handles: DashMap::with_hasher(foldhash::fast::RandomState::default()),
        };
        metrics
            .registry
            .register_collector(Box::new(ProcessCollector));
        metrics
            .registry
            .register_collector(Box::new(super::heap::HeapCollector));
        let r = metrics.registry.sub_registry_with_prefix("governor");
        r.register(
            "acquire",
            "Acquire decisions, by result (granted, rejected) and reject reason",
            metrics.acquires.clone(),
        );
        r.register(
            "release",
            "Releases of live leases, by the outcome the caller reported (session_closed: freed when their Session stream ended)",
            metrics.releases.clone(),
        );
        r.register(
            "lease_expired",
            "Leases that expired unreleased and unrenewed",
            metrics.expired.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Time Acquire requests spent in the queue (zero when decided on arrival)",
            metrics.queue_wait.clone(),
        );
        r.register(
            "permit_hold_seconds",
            "Time from grant to release or expiry",
            metrics.hold.clone(),
        );
        r.register(
            "dependency_limit",
            "Enforced concurrency limit: max_concurrency, or less while an adaptive limit holds it lower",
            metrics.limit.clone(),
        );
        r.register(
            "dependency_max_concurrency",
            "Configured concurrency ceiling (max_concurrency)",
            metrics.max_concurrency.clone(),
        );
        r.register(
            "dependency_adaptive_limit",
            "Limit the adaptive algorithm computed (enforced unless in shadow mode); only for adaptive dependencies",
            metrics.adaptive_limit.clone(),
        );
        r.register(
            "dependency_latency_baseline_seconds",
            "Adaptive limit's no-load latency estimate (median of recent uncongested windows, only falls unless re-learnt)",
            metrics.latency_baseline.clone(),
        );
        r.register(
            "dependency_latency_recent_seconds",
            "Typical latency (mean of the fastest 90%) of the adaptive limit's last sampling window",
            metrics.latency_recent.clone(),
        );
        r.register(
            "limit_changes",
            "Moves of the enforced or computed limit, by reason (latency, drops, growth, relearn, config, fleet)",
            metrics.limit_changes.clone(),
        );
        r.register(
            "dependency_utilization",
            "Permits held over the enforced limit (in_flight / limit)",
            metrics.utilization.clone(),
        );
        r.register(
            "dependency_pressure",
            "Pressure the ledger decides on every Acquire answer: 1 none (under elevated_at of the limit in use), 2 elevated, 3 saturated (every permit in use or someone waits), 4 overloaded (queue full, queue timeout or shed within the last second)",
            metrics.pressure.clone(),
        );
        r.register(
            "dependency_in_flight",
            "Permits held",
            metrics.in_flight.clone(),
        );
        r.register(
            "dependency_queued",
            "Requests waiting in the queue",
            metrics.queued.clone(),
        );
        r.register(
            "dependency_max_queue",
            "Queue capacity (max_queue)",
            metrics.max_queue.clone(),
        );
        r.register(
            "retry_budget_tokens",
            "Retries the budget allows right now",
            metrics.budget.clone(),
        );
        r.register(
            "dependencies",
            "Dependencies known",
            metrics.dependencies.clone(),
        );
        r.register(
            "draining",
            "1 while shutting down",
            metrics.draining.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads, by result (ok, error)",
            metrics.reloads.clone(),
        );
        r.register(
            "connections",
            "Open connections on the gRPC listeners",
            metrics.connections.open.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed at accept because server.max_connections were open",
            metrics.connections.refused.clone(),
        );
        r.register(
            "connections_closed",
            "Connections the server closed, by reason (idle: no stream for server.idle_connection_timeout; handshake: no HTTP/2 preface within server.handshake_timeout)",
            metrics.connections.closed.clone(),
        );
        r.register(
            "calls_refused",
            "Calls answered RESOURCE_EXHAUSTED because server.max_calls were open",
            metrics.connections.calls_refused.clone(),
        );
        r.register(
            "trace_spans_dropped",
            "Spans dropped because the export queue was full",
            metrics.spans_dropped.clone(),
        );
        r.register(
            "trace_exports_failed",
            "Span batches the exporter failed to deliver",
            metrics.span_exports_failed.clone(),
        );
        r.register(
            "admin_denied",
            "Control-plane calls refused on a non-loopback listener, by reason (missing_token, wrong_token, no_token_file)",
            metrics.admin_denied.clone(),
        );
        r.register(
            "uds_peers_refused",
            "Unix-socket connections closed at accept: the peer's uid and gid are not in server.uds_allowed_uids/gids",
            metrics.uds_peers_refused.clone(),
        );
        r.register(
            "tenant_in_flight",
            "Permits a tenant named in the dependency's fairness weights holds",
            metrics.tenants.in_flight.clone(),
        );
        r.register(
            "tenant_queued",
            "Requests of a named tenant waiting in the queue",
            metrics.tenants.queued.clone(),
        );
        r.register(
            "tenant_share",
            "A named tenant's weighted max-min share of the enforced limit, given every tenant's demand (in flight + queued)",
            metrics.tenants.share.clone(),
        );
        r.register(
            "tenant_granted",
            "Permits granted to a named tenant",
            metrics.tenants.granted.clone(),
        );
        r.register(
            "tenant_rejected",
            "Acquires of a named tenant not granted (any reason)",
            metrics.tenants.rejected.clone(),
        );
        let fleet = &metrics.fleet;
        for (name, help, family) in [
            (
                "fleet_limit",
                "The fleet-wide limit in force: the lowest max_concurrency any live sidecar sharing the store is configured with",
                &fleet.limit,
            ),
            (
                "fleet_share",
                "This sidecar's share of the fleet-wide limit, as the store records it",
                &fleet.share,
            ),
            (
                "fleet_target",
                "What the fair rule gives this sidecar now (the share moves towards it)",
                &fleet.target,
            ),
            (
                "fleet_enforced",
                "The fleet term of the enforced limit: min(share, target), the fallback share, or 0 before the first answer",
                &fleet.enforced,
            ),
            (
                "fleet_demand",
                "The demand last reported to the store: the most in flight + queued since the call before, at most the local limit",
                &fleet.demand,
            ),
            (
                "fleet_instances",
                "Sidecars with a live share in the store, this one included",
                &fleet.instances,
            ),
            (
                "fleet_fallback_share",
                "What this sidecar uses alone once its share lapsed with the store unreachable",
                &fleet.fallback_share,
            ),
        ] {
            r.register(name, help, family.clone());
        }
        r.register(
            "fleet_mode",
            "1 for the current fleet mode: starting (no answer yet), share, learning (the store came back empty), fallback (store unreachable, share lapsed)",
            fleet.mode.clone(),
        );
        r.register(
            "fleet_store_calls",
            "Calls to the fleet store (renewals and give-backs), answered or not",
            fleet.calls.clone(),
        );
        r.register(
            "fleet_store_errors",
            "Fleet store calls that failed or timed out",
            fleet.errors.clone(),
        );
        r.register(
            "fleet_store_seconds",
            "Round trip of the fleet store calls",
            fleet.seconds.clone(),
        );
        metrics
    }

    /// A fleet store call of `dependency`'s task.
    pub fn fleet_store_called(&self, dependency: &str, latency: Duration, ok: bool) {
        let labels = DependencyLabels {
            dependency: dependency.to_owned(),
        };
        self.fleet.calls.get_or_create(&labels).inc();
        if !ok {
            self.fleet.errors.get_or_create(&labels).inc();
        }
        self.fleet
            .seconds
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
    }

    /// The request-path handles of one dependency.
    pub fn dependency(&self, name: &str) -> Arc<DependencyMetrics> {
        self.dependency_created(name).0
    }

    /// The request-path handles of one dependency, and whether this call
    /// created them.
    pub fn dependency_created(&self, name: &str) -> (Arc<DependencyMetrics>, bool) {
        if let Some(handles) = self.handles.get(name) {
            return (handles.clone(), false);
        }
        // Each handle is cloned out in a statement (or closure) of its own:
        // a family's read guard lives to the end of its statement, and creating
        // the next label of the same family needs the write lock.
        let labels = DependencyLabels {
            dependency: name.to_owned(),
        };
        let counter = |result, reason| {
            let labels = DecisionLabels {
                dependency: name.to_owned(),
                result,
                reason,
            };
            self.acquires.get_or_create(&labels).clone()
        };
        let granted = counter("granted", "none");
        let rejected = RejectReason::ALL.map(|reason| counter("rejected", reason.as_str()));
        let released = Outcome::ALL.map(|outcome| {
            let labels = OutcomeLabels {
                dependency: name.to_owned(),
                outcome: outcome.as_str(),
            };
            self.releases.get_or_create(&labels).clone()
        });
        let expired = self.expired.get_or_create(&labels).clone();
        let queue_wait = self.queue_wait.get_or_create(&labels).clone();
        let hold = self.hold.get_or_create(&labels).clone();
        let handles = Arc::new(DependencyMetrics {
            granted,
            rejected,
            released,
            expired,
            queue_wait,
            hold,
            wait_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        });
        let handles = self
            .handles
            .entry(Arc::from(name))
            .or_insert(handles)
            .clone();
        (handles, true)
    }

    /// A limit moved; counted by reason.
    pub fn limit_changed(&self, dependency: &str, change: &LimitChange) {
        let labels = ChangeLabels {
            dependency: dependency.to_owned(),
            reason: change.reason.as_str(),
        };
        self.limit_changes.get_or_create(&labels).inc();
    }

    /// Drops every series and handle of a dependency that no longer exists.
    pub fn forget(&self, name: &str) {
        self.handles.remove(name);
        let labels = DependencyLabels {
            dependency: name.to_owned(),
        };
        let decision = |result, reason| DecisionLabels {
            dependency: name.to_owned(),
            result,
            reason,
        };
        self.acquires.remove(&decision("granted", "none"));
        for reason in RejectReason::ALL {
            self.acquires.remove(&decision("rejected", reason.as_str()));
        }
        for outcome in Outcome::ALL {
            self.releases.remove(&OutcomeLabels {
                dependency: name.to_owned(),
                outcome: outcome.as_str(),
            });
        }
        for reason in ChangeReason::ALL {
            self.limit_changes.remove(&ChangeLabels {
                dependency: name.to_owned(),
                reason: reason.as_str(),
            });
        }
        self.expired.remove(&labels);
        self.queue_wait.remove(&labels);
        self.hold.remove(&labels);
        for gauge in [
            &self.limit,
            &self.max_concurrency,
            &self.adaptive_limit,
            &self.in_flight,
            &self.queued,
            &self.max_queue,
            &self.pressure,
        ] {
            gauge.remove(&labels);
        }
        for gauge in [
            &self.latency_baseline,
            &self.latency_recent,
            &self.utilization,
            &self.budget,
        ] {
            gauge.remove(&labels);
        }
    }

    /// The request-path handles of `name`, if it has any yet.
    pub fn existing(&self, name: &str) -> Option<Arc<DependencyMetrics>> {
        self.handles.get(name).map(|handles| handles.clone())
    }

    pub fn admin_denied(&self, reason: &'static str) {
        self.admin_denied
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn config_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// The metrics in `format`.
    pub fn render(&self, ledger: &Ledger, format: Format) -> String {
        let statuses = ledger.statuses_with(TenantDetail::Named);
        for status in &statuses {
            let labels = DependencyLabels {
                dependency: status.name.to_string(),
            };
            self.limit
                .get_or_create(&labels)
                .set(i64::from(status.limit.enforced));
            self.max_concurrency
                .get_or_create(&labels)
                .set(i64::from(status.limit.ceiling));
            match status.limit.adaptive {
                Some(adaptive) => {
                    self.adaptive_limit
                        .get_or_create(&labels)
                        .set(i64::from(adaptive.limit));
                    let seconds = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
                    self.latency_baseline
                        .get_or_create(&labels)
                        .set(seconds(adaptive.baseline));
                    self.latency_recent
                        .get_or_create(&labels)
                        .set(seconds(adaptive.recent));
                }
                None => {
                    // Turned off at runtime: its series go with it.
                    self.adaptive_limit.remove(&labels);
                    self.latency_baseline.remove(&labels);
                    self.latency_recent.remove(&labels);
                }
            }
            self.utilization
                .get_or_create(&labels)
                .set(Load::of(status).utilization());
            self.in_flight
                .get_or_create(&labels)
                .set(i64::from(status.in_flight));
            self.pressure
                .get_or_create(&labels)
                .set(status.pressure.level());
            self.queued
                .get_or_create(&labels)
                .set(i64::from(status.queued));
            self.max_queue
                .get_or_create(&labels)
                .set(i64::from(status.limits.max_queue()));
            self.budget
                .get_or_create(&labels)
                .set(status.retry_budget_available);
        }
        // A dependency evicted while its gauges were being set would leave
        // them behind (eviction forgets before they were created).
        for status in &statuses {
            if !ledger.contains(&status.name) {
                self.forget(&status.name);
            }
        }
        self.tenants.set(&statuses);
        self.fleet.set(&statuses);
        self.dependencies.set(ledger.dependency_count() as i64);
        self.draining.set(i64::from(ledger.is_draining()));
        let mut text = String::new();
        match format {
            Format::Text => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut text, &self.registry)
            }
        }
        .expect("writing to a String cannot fail");
        text
    }
}

impl DependencyMetrics {
    /// `exemplar`: the trace of a sampled request, shown in OpenMetrics.
    pub fn decided(
        &self,
        outcome: Result<(), RejectReason>,
        queue_wait: Duration,
        exemplar: Option<TraceLabels>,
    ) {
        match outcome {
            Ok(()) => self.granted.inc(),
            Err(reason) => {
                let index = RejectReason::ALL
                    .iter()
                    .position(|r| *r == reason)
                    .unwrap_or(0);
                self.rejected[index].inc()
            }
        };
        let seconds = queue_wait.as_secs_f64();
        let bucket = WAIT_BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(WAIT_BOUNDS.len());
        self.wait_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.queue_wait.observe(seconds, exemplar, None);
    }

    /// Queue waits counted so far in each bucket of [`WAIT_BOUNDS`] (not
    /// cumulative), then above the last bound.
    pub fn queue_wait_buckets(&self) -> [u64; WAIT_BOUNDS.len() + 1] {
        std::array::from_fn(|i| self.wait_buckets[i].load(Ordering::Relaxed))
    }

    /// A lease ended: released with `outcome`, or expired (`None`).
    /// `exemplar`: the trace of a sampled request, shown in OpenMetrics.
    pub fn lease_ended(
        &self,
        outcome: Option<Outcome>,
        held: Duration,
        exemplar: Option<TraceLabels>,
    ) {
        match outcome {
            Some(outcome) => {
                let index = Outcome::ALL.iter().position(|o| *o == outcome);
                self.released[index.unwrap_or(0)].inc()
            }
            None => self.expired.inc(),
        };
        self.hold.observe(held.as_secs_f64(), exemplar, None);
    }
}
