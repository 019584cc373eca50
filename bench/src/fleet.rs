//! A7, fleet-wide limits (issue 12): what a limit shared through Redis costs
//! a sidecar, and whether a binding one is exact and fair.
//!
//! - *Baseline / fleet*: two sidecars, same config but for `[fleet]` (the
//!   bench's redis-server, share_ttl 3 s) and a fleet-wide limit on the
//!   dependency of 10x the load's concurrency (so it never binds), under the
//!   same open loop of Acquire + Release pairs as A1, in rotating order. The
//!   local fast path should cost the same: fleet / baseline p50, p99 and
//!   server CPU per pair, per repeat. For the fleet sidecar, the store calls a
//!   second from its `governor_fleet_store_calls_total` (expected
//!   dependencies x 3 / share_ttl: a renewal every share_ttl / 3) and their
//!   round trip from `governor_fleet_store_seconds`.
//! - *Trio*: three sidecars sharing one Redis with a binding fleet-wide
//!   limit, each under a closed loop of a different number of callers that
//!   hold a permit for a fixed time. The client-side count of permits held
//!   across the three (counted from a grant's arrival to its release's send,
//!   so never more than the sidecars hold) must never exceed the limit; the
//!   shares should settle at the fair rule's; a sidecar stopped with SIGTERM
//!   should give its share back at once, not let it lapse.
//!
//! A fresh key in the store is a store that "came back empty": each sidecar
//! learns for one share_ttl (fallback share only) before its first share,
//! so the trio runs while the fleet sidecar learns, and every measurement
//! starts once the sidecars report FLEET_MODE_SHARE.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use rate_governor_proto::v1::governor_admin_client::GovernorAdminClient;
use rate_governor_proto::v1::governor_client::GovernorClient;
use rate_governor_proto::v1::{
    self as pb, DependencyStatus, FleetMode, GetDependencyRequest, Outcome,
};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::env::Pinning;
use crate::happy::OpenRepeat;
use crate::load::{Percentiles, Schedule, Spread, histogram, open_loop, record};
use crate::overload::reason_name;
use crate::process::{Governor, Redis};

pub const ARM_ID: &str = "A7";
pub const ARM_NAME: &str = "fleet-wide limits";
pub const DEPENDENCY: &str = "bench-fleet";
/// The store namespaces of the two parts: one key each, so the trio's
/// binding limit is not the fleet sidecar's (the lowest would apply).
pub const SINGLE_NAMESPACE: &str = "bench-a7-single";
pub const TRIO_NAMESPACE: &str = "bench-a7-trio";

/// No uncontended call may take this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the trio's sidecars are asked for their fleet status.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// The baseline / fleet comparison and the trio.
#[derive(Clone, Debug, Serialize)]
pub struct FleetPlan {
    /// Open-loop Acquire + Release pairs a second (the happy path's rate).
    pub rate: f64,
    pub warmup: Duration,
    pub measure: Duration,
    pub repeats: usize,
    /// Both sidecars' local max_concurrency (never binding).
    pub local_limit: u32,
    /// The load's concurrency the fleet limit is sized against: the happy
    /// path's closed-loop callers.
    pub load_concurrency: usize,
    /// The fleet sidecar's fleet-wide max_concurrency (and fallback_share,
    /// so that a store hiccup does not stop the load: it shows in the
    /// store errors instead).
    pub fleet_limit: u32,
    pub share_ttl: Duration,
    pub trio: Option<TrioPlan>,
}

/// Three sidecars, one binding fleet-wide limit.
#[derive(Clone, Debug, Serialize)]
pub struct TrioPlan {
    pub fleet_limit: u32,
    /// Closed-loop callers per sidecar.
    pub callers: Vec<usize>,
    /// Each sidecar's local max_concurrency (above the fleet limit).
    pub local_limit: u32,
    pub max_queue: u32,
    pub max_wait_ms: u64,
    /// How long a caller holds a granted permit.
    pub hold_ms: f64,
    /// 0: the sum of the usable shares is all that is granted.
    pub fallback_share: u32,
    pub share_ttl: Duration,
    pub warmup: Duration,
    pub measure: Duration,
}

impl FleetPlan {
    /// The fleet sidecar's store calls a second: one renewal per fleet
    /// dependency every share_ttl / 3.
    pub fn expected_calls_per_s(&self) -> f64 {
        3.0 / self.share_ttl.as_secs_f64()
    }

    /// The default (share_ttl / 5), written out: the store window's
    /// renewal period is read back from `valid_for` with it.
    pub fn safety_margin(&self) -> Duration {
        self.share_ttl / 5
    }

    fn dependency_config(&self) -> String {
        format!(
            "[dependencies.{DEPENDENCY}]\nmax_concurrency = {}\n",
            self.local_limit
        )
    }

    /// The baseline's config: the dependency without a fleet-wide limit.
    pub fn baseline_config(&self) -> String {
        format!(
            "[server]\nshutdown_grace = \"1s\"\n\n{}",
            self.dependency_config()
        )
    }

    /// The same with `[fleet]` on `redis_url` and a fleet-wide limit that
    /// does not bind.
    pub fn fleet_config(&self, redis_url: &str) -> String {
        format!(
            r#"[server]
shutdown_grace = "1s"

[fleet]
redis = "{redis_url}"
share_ttl = "{ttl}ms"
safety_margin = "{margin}ms"
instance = "bench-a7-fleet"
namespace = "{SINGLE_NAMESPACE}"

{dependency}
[dependencies.{DEPENDENCY}.fleet]
max_concurrency = {limit}
fallback_share = {limit}
"#,
            ttl = self.share_ttl.as_millis(),
            margin = self.safety_margin().as_millis(),
            dependency = self.dependency_config(),
            limit = self.fleet_limit,
        )
    }
}

impl TrioPlan {
    pub fn expected_calls_per_s(&self) -> f64 {
        3.0 / self.share_ttl.as_secs_f64()
    }

    pub fn renew_interval(&self) -> Duration {
        self.share_ttl / 3
    }

    fn hold(&self) -> Duration {
        Duration::from_secs_f64(self.hold_ms / 1000.0)
    }

    fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }

    pub fn instance(i: usize) -> String {
        format!("bench-a7-trio-{}", i + 1)
    }

    pub fn config(&self, redis_url: &str, i: usize) -> String {
        format!(
            r#"[server]
shutdown_grace = "1s"

[fleet]
redis = "{redis_url}"
share_ttl = "{ttl}ms"
instance = "{instance}"
namespace = "{TRIO_NAMESPACE}"

[dependencies.{DEPENDENCY}]
max_concurrency = {local}
max_queue = {max_queue}
max_wait = "{max_wait}ms"

[dependencies.{DEPENDENCY}.fleet]
max_concurrency = {limit}
fallback_share = {fallback}
"#,
            ttl = self.share_ttl.as_millis(),
            instance = TrioPlan::instance(i),
            local = self.local_limit,
            max_queue = self.max_queue,
            max_wait = self.max_wait_ms,
            limit = self.fleet_limit,
            fallback = self.fallback_share,
        )
    }

    /// Each sidecar's demand: all its callers (each holds a permit or waits
    /// for one), at most its local limit.
    pub fn demands(&self) -> Vec<u32> {
        self.callers
            .iter()
            .map(|&c| u32::try_from(c).unwrap_or(u32::MAX).min(self.local_limit))
            .collect()
    }

    /// What the fair rule gives each sidecar at these demands.
    pub fn expected_shares(&self) -> Vec<u32> {
        fair_shares(self.fleet_limit, &self.demands())
    }

    /// The same once the last sidecar is idle (demand 0).
    pub fn idle_shares(&self) -> Vec<u32> {
        let mut demands = self.demands();
        if let Some(last) = demands.last_mut() {
            *last = 0;
        }
        fair_shares(self.fleet_limit, &demands)
    }

    /// How long the others keep their load after the last went idle: six
    /// renewals (the spec: an idle share moves within about two).
    pub fn idle_phase(&self) -> Duration {
        self.renew_interval() * 6 + Duration::from_millis(200)
    }
}

/// The spec's FairShare, in whole permits: in order of demand, each gets
/// min(demand, an equal part of what is left); what nobody wants is split
/// equally among all (the remainder to the first ones). The core rounds in
/// its own way; this is what the report compares with.
pub fn fair_shares(limit: u32, demands: &[u32]) -> Vec<u32> {
    let n = demands.len();
    let mut shares = vec![0u32; n];
    if n == 0 {
        return shares;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| demands[i]);
    let mut left = limit;
    for (k, &i) in order.iter().enumerate() {
        let part = left / (n - k) as u32;
        shares[i] = demands[i].min(part);
        left -= shares[i];
    }
    // What is left: at most an equal part each on top, then one by one.
    let extra = left / n as u32;
    for s in &mut shares {
        *s += extra;
    }
    left -= extra * n as u32;
    for &i in order.iter().rev() {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    shares
}

/// One sidecar's `DependencyStatus.fleet` (and the enforced limit).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetSnapshot {
    pub mode: String,
    pub max_concurrency: u32,
    pub share: u32,
    pub target: u32,
    pub enforced: u32,
    pub demand: u32,
    pub instances: u32,
    /// `DependencyStatus.limit`: min of the local limit and the fleet term.
    pub limit: u32,
    pub in_flight: u32,
    pub queued: u32,
    pub store_calls_total: u64,
    pub store_errors_total: u64,
    pub store_latency_us: Option<f64>,
    pub valid_for_ms: Option<f64>,
    pub last_error: String,
}

fn mode_name(mode: i32) -> String {
    FleetMode::try_from(mode)
        .map(|m| {
            m.as_str_name()
                .trim_start_matches("FLEET_MODE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("mode {mode}"))
}

fn micros(d: &prost_types::Duration) -> f64 {
    d.seconds as f64 * 1e6 + f64::from(d.nanos) / 1e3
}

impl FleetSnapshot {
    fn of(status: &DependencyStatus) -> Option<FleetSnapshot> {
        let fleet = status.fleet.as_ref()?;
        Some(FleetSnapshot {
            mode: mode_name(fleet.mode),
            max_concurrency: fleet.max_concurrency,
            share: fleet.share,
            target: fleet.target,
            enforced: fleet.enforced,
            demand: fleet.demand,
            instances: fleet.instances,
            limit: status.limit,
            in_flight: status.in_flight,
            queued: status.queued,
            store_calls_total: fleet.store_calls_total,
            store_errors_total: fleet.store_errors_total,
            store_latency_us: fleet.store_latency.as_ref().map(micros),
            valid_for_ms: fleet.valid_for.as_ref().map(|d| micros(d) / 1000.0),
            last_error: fleet.last_error.clone(),
        })
    }

    fn in_share(&self) -> bool {
        self.mode == "share"
    }
}

/// The store's calls and round trips over a window, from two scrapes of
/// the sidecar's /metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreWindow {
    pub seconds: f64,
    pub calls: u64,
    pub errors: u64,
    pub calls_per_s: f64,
    pub expected_per_s: f64,
    /// Round trips in the window (the histogram's count), their mean, and
    /// the upper bounds of the buckets that hold the median and the p99.
    pub latency_count: u64,
    pub latency_mean_us: f64,
    pub latency_p50_le_us: f64,
    pub latency_p99_le_us: f64,
    /// The same calls without the counting window's rounding: the renewals
    /// between two status readings, over the time between the sends of the
    /// last renewal before each (read back from `valid_for`: a share is
    /// valid until its call's send + share_ttl - safety_margin).
    pub renewals: Option<u64>,
    pub renewal_period_s: Option<f64>,
}

/// One side of the baseline / fleet comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    pub fleet: bool,
    pub repeats: Vec<OpenRepeat>,
    pub server_rss_kib: u64,
    pub server_hwm_kib: u64,
    /// The fleet sidecar's status after its last run.
    pub status: Option<FleetSnapshot>,
}

impl Side {
    fn new(fleet: bool) -> Side {
        Side {
            fleet,
            repeats: Vec::new(),
            server_rss_kib: 0,
            server_hwm_kib: 0,
            status: None,
        }
    }

    pub fn label(&self) -> &'static str {
        if self.fleet {
            "fleet: [fleet] on the bench's Redis, fleet limit not binding"
        } else {
            "baseline: no fleet limit"
        }
    }

    pub fn samples(&self) -> u64 {
        self.repeats.iter().map(|r| r.latency.count).sum()
    }

    pub fn errors(&self) -> u64 {
        self.repeats.iter().map(|r| r.errors).sum()
    }

    pub fn first_error(&self) -> Option<&str> {
        self.repeats.iter().find_map(|r| r.first_error.as_deref())
    }

    pub fn p50(&self) -> Spread {
        Spread::over(&self.repeats, |r| r.latency.p50_us)
    }

    pub fn p99(&self) -> Spread {
        Spread::over(&self.repeats, |r| r.latency.p99_us)
    }

    /// Server CPU microseconds per pair, over all repeats.
    pub fn cpu_us_per_pair(&self) -> f64 {
        let cpu: f64 = self.repeats.iter().map(|r| r.server_cpu_seconds).sum();
        let sent: u64 = self.repeats.iter().map(|r| r.sent).sum();
        if sent == 0 {
            f64::NAN
        } else {
            cpu * 1e6 / sent as f64
        }
    }
}

/// Fleet / baseline, per repeat (both ran in the same repeat, one after
/// the other, in alternating order).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ratios {
    pub p50: Spread,
    pub p99: Spread,
    pub cpu_per_pair: Spread,
}

/// What one of the trio's sidecars saw in the measured window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TrioSidecar {
    pub instance: String,
    pub callers: usize,
    pub expected_share: u32,
    pub attempts: u64,
    pub granted: u64,
    pub grants_per_s: f64,
    /// Permits held on average (hold time of the window's grants / window).
    pub mean_held: f64,
    pub rejected: BTreeMap<String, u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the send to a grant.
    pub granted_wait: Percentiles,
    /// The sidecar's fleet status at the end of the window.
    pub end: Option<FleetSnapshot>,
    pub store: Option<StoreWindow>,
    /// The fair share once the last sidecar went idle (demand 0).
    pub idle_expected: u32,
    /// The status at the end of the idle phase.
    pub idle_end: Option<FleetSnapshot>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TrioResults {
    pub sidecars: Vec<TrioSidecar>,
    /// The most permits held at once across the three, counted by the
    /// clients from a grant's arrival to its release's send (warm-up
    /// included): a lower bound of what the sidecars held, so a value above
    /// the fleet limit is a real excess.
    pub peak_held: u64,
    /// Over the status samples (every 50 ms, the three asked one after the
    /// other, so not one instant): the largest sum of the enforced fleet
    /// terms and of in_flight.
    pub peak_enforced_sum: u32,
    pub peak_in_flight_sum: u32,
    pub samples: usize,
    /// Seconds from the load's start to the last change of any sidecar's
    /// enforced term (None: no sample).
    pub settled_after_s: Option<f64>,
    /// Whether that last change came before the measured window.
    pub settled_before_window: bool,
    /// After the window the last sidecar's callers stop and the others'
    /// carry on for this long.
    pub idle_phase_s: f64,
    /// Seconds from the last sidecar going idle to the last change of the
    /// enforced terms in the idle phase (None: none changed).
    pub idle_settled_after_s: Option<f64>,
    /// After the load: the last sidecar stopped with SIGTERM, how long until
    /// the first saw one instance less (None: not within a share_ttl plus a
    /// renewal, i.e. the share lapsed rather than being given back).
    pub give_back_ms: Option<f64>,
    /// How long the sidecars took from their start to their first share
    /// (the fresh key's learning period included).
    pub first_share_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FleetResults {
    pub plan: FleetPlan,
    /// Why the arm did not run.
    pub skipped: Option<String>,
    pub redis_url: String,
    pub baseline: Side,
    pub fleet: Side,
    pub ratios: Ratios,
    /// The fleet sidecar's store calls from its first share to the end of
    /// its last run.
    pub store: Option<StoreWindow>,
    /// From the fleet sidecar's start to its first share.
    pub first_share_s: Option<f64>,
    pub trio: Option<TrioResults>,
    /// What failed the arm.
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
}

impl FleetResults {
    fn new(plan: &FleetPlan) -> FleetResults {
        FleetResults {
            plan: plan.clone(),
            skipped: None,
            redis_url: String::new(),
            baseline: Side::new(false),
            fleet: Side::new(true),
            ratios: Ratios::default(),
            store: None,
            first_share_s: None,
            trio: None,
            failures: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The arm, not run: no redis-server.
    pub fn skipped(plan: &FleetPlan, why: &str) -> FleetResults {
        FleetResults {
            skipped: Some(why.to_owned()),
            ..FleetResults::new(plan)
        }
    }

    /// Fleet calls a second as a multiple of the expected.
    pub fn calls_ratio(&self) -> f64 {
        self.store
            .as_ref()
            .map_or(f64::NAN, |s| s.calls_per_s / s.expected_per_s)
    }
}

// ---------------------------------------------------------------------------
// /metrics

/// One series of Prometheus text: name, labels, value.
#[derive(Debug, PartialEq)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Series {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_series(text: &str) -> Vec<Series> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let Some((labels, rest)) = parse_labels(&line[open + 1..]) else {
                    continue;
                };
                (&line[..open], labels, rest)
            }
            None => match line.split_once(' ') {
                Some((name, rest)) => (name, Vec::new(), rest),
                None => continue,
            },
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.push(Series {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

/// `k="v",k2="v2"} rest` -> the labels and `rest`.
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                value.push(match c {
                    'n' => '\n',
                    c => c,
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(eq + 1 + i + 1);
                break;
            } else {
                value.push(c);
            }
        }
        labels.push((key, value));
        rest = &rest[end?..];
    }
}

/// The fleet store series of one dependency at one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
struct StoreMetrics {
    calls: f64,
    errors: f64,
    /// (le, cumulative count), ascending.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl StoreMetrics {
    fn parse(text: &str, dependency: &str) -> StoreMetrics {
        let mut m = StoreMetrics::default();
        for s in parse_series(text) {
            if s.label("dependency") != Some(dependency) {
                continue;
            }
            match s.name.as_str() {
                "governor_fleet_store_calls_total" => m.calls = s.value,
                "governor_fleet_store_errors_total" => m.errors = s.value,
                "governor_fleet_store_seconds_sum" => m.sum = s.value,
                "governor_fleet_store_seconds_count" => m.count = s.value,
                "governor_fleet_store_seconds_bucket" => {
                    let le = match s.label("le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(v) => v.parse().unwrap_or(f64::NAN),
                        None => f64::NAN,
                    };
                    if !le.is_nan() {
                        m.buckets.push((le, s.value));
                    }
                }
                _ => {}
            }
        }
        m.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        m
    }

    /// `later - self` over `seconds`.
    fn window(&self, later: &StoreMetrics, seconds: f64, expected_per_s: f64) -> StoreWindow {
        let calls = (later.calls - self.calls).max(0.0);
        let count = (later.count - self.count).max(0.0);
        let delta: Vec<(f64, f64)> = later
            .buckets
            .iter()
            .map(|&(le, n)| {
                let before = self
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0.0, |(_, n)| *n);
                (le, (n - before).max(0.0))
            })
            .collect();
        let quantile = |q: f64| {
            if count == 0.0 {
                return f64::NAN;
            }
            let want = (q * count).ceil().max(1.0);
            delta
                .iter()
                .find(|(_, n)| *n >= want)
                .map_or(f64::NAN, |(le, _)| le * 1e6)
        };
        StoreWindow {
            seconds,
            calls: calls as u64,
            errors: (later.errors - self.errors).max(0.0) as u64,
            calls_per_s: if seconds > 0.0 {
                calls / seconds
            } else {
                f64::NAN
            },
            expected_per_s,
            latency_count: count as u64,
            latency_mean_us: if count > 0.0 {
                (later.sum - self.sum) / count * 1e6
            } else {
                f64::NAN
            },
            latency_p50_le_us: quantile(0.5),
            latency_p99_le_us: quantile(0.99),
            renewals: None,
            renewal_period_s: None,
        }
    }
}

async fn scrape_store(admin: Option<SocketAddr>) -> Result<StoreMetrics, String> {
    let admin = admin.ok_or("the sidecar has no admin listener")?;
    let text = crate::soak::sample::scrape(admin).await?;
    Ok(StoreMetrics::parse(&text, DEPENDENCY))
}

// ---------------------------------------------------------------------------
// Calls

async fn status(admin: &mut GovernorAdminClient<Channel>) -> Result<DependencyStatus, String> {
    let mut request = tonic::Request::new(GetDependencyRequest {
        name: DEPENDENCY.into(),
    });
    request.set_timeout(CALL_TIMEOUT);
    admin
        .get_dependency(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("GetDependency {DEPENDENCY}: {s}"))
}

/// Polls until the sidecar reports FLEET_MODE_SHARE; the time it took.
async fn wait_for_share(
    admin: &mut GovernorAdminClient<Channel>,
    since: Instant,
    within: Duration,
) -> Result<Duration, String> {
    let deadline = since + within;
    loop {
        let s = status(admin).await?;
        let fleet = FleetSnapshot::of(&s)
            .ok_or_else(|| format!("{DEPENDENCY} has no fleet status (no fleet limit?)"))?;
        if fleet.in_share() {
            return Ok(since.elapsed());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no fleet share within {within:?} of the start; last status {fleet:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Where the fleet sidecar's store window opens: at its first share.
struct WindowStart {
    first_share: Duration,
    metrics: StoreMetrics,
    status: Option<FleetSnapshot>,
    at: Instant,
}

/// Waits (in the background, while the trio runs) for the fleet sidecar's
/// first share and opens its store window there.
async fn open_window(
    mut admin: GovernorAdminClient<Channel>,
    metrics: Option<SocketAddr>,
    started: Instant,
    within: Duration,
) -> Result<WindowStart, String> {
    let first_share = wait_for_share(&mut admin, started, within).await?;
    let metrics = scrape_store(metrics).await?;
    let status = FleetSnapshot::of(&status(&mut admin).await?);
    Ok(WindowStart {
        first_share,
        metrics,
        status,
        at: Instant::now(),
    })
}

/// When the call that leased the share in `status` (read at `at`) was sent.
fn last_send(
    status: &FleetSnapshot,
    at: Instant,
    ttl: Duration,
    margin: Duration,
) -> Option<Instant> {
    let valid_for = Duration::from_secs_f64(status.valid_for_ms? / 1000.0);
    (at + valid_for).checked_sub(ttl.checked_sub(margin)?)
}

/// After a run: nothing of the dependency may still be held or queued.
async fn leak_check(admin: &mut GovernorAdminClient<Channel>) -> Result<(), String> {
    let s = status(admin).await?;
    if s.in_flight == 0 && s.queued == 0 {
        Ok(())
    } else {
        Err(format!(
            "leak check: {DEPENDENCY} has in_flight {} and queued {} after the run (both must be 0)",
            s.in_flight, s.queued
        ))
    }
}

/// One Acquire + Release, as A1 sends it.
async fn pair(mut client: GovernorClient<Channel>) -> Result<(), String> {
    let mut acquire = tonic::Request::new(pb::AcquireRequest {
        dependency: DEPENDENCY.into(),
        ..Default::default()
    });
    acquire.set_timeout(CALL_TIMEOUT);
    let response = client
        .acquire(acquire)
        .await
        .map_err(|s| format!("Acquire: {s}"))?
        .into_inner();
    if !response.granted {
        return Err(format!(
            "Acquire not granted: {}",
            reason_name(response.reason)
        ));
    }
    let released = client
        .release(pb::ReleaseRequest {
            lease_id: response.lease_id,
            outcome: Outcome::Success as i32,
            latency: None,
        })
        .await
        .map_err(|s| format!("Release: {s}"))?;
    if released.get_ref().released {
        Ok(())
    } else {
        Err("Release answered released=false for a live lease".into())
    }
}

// ---------------------------------------------------------------------------
// The arm

/// Where the arm's sidecars come from.
pub struct Sidecars<'a> {
    pub bin: &'a Path,
    pub work: &'a Path,
    pub pinning: &'a Pinning,
    pub ticks: f64,
}

/// Both parts: the trio while the fleet sidecar learns its fresh key, then
/// the baseline / fleet comparison.
pub async fn run(
    plan: &FleetPlan,
    sidecars: &Sidecars<'_>,
    redis: &Redis,
    log: &(dyn Fn(&str) + Sync),
) -> FleetResults {
    let mut results = FleetResults::new(plan);
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    results.redis_url = url.clone();
    let start = |name: &'static str, config: String| async move {
        Governor::start_with_admin(
            sidecars.bin,
            name,
            &config,
            &[],
            sidecars.work,
            sidecars.pinning,
        )
        .await
    };
    let started = Instant::now();
    let baseline = match start("fleet-baseline", plan.baseline_config()).await {
        Ok(g) => g,
        Err(e) => {
            results.failures.push(format!("baseline sidecar: {e}"));
            return results;
        }
    };
    let fleet_started = Instant::now();
    let fleet = match start("fleet-single", plan.fleet_config(&url)).await {
        Ok(g) => g,
        Err(e) => {
            results.failures.push(format!("fleet sidecar: {e}"));
            let _ = baseline.process.stop(Duration::from_secs(5)).await;
            return results;
        }
    };
    // A fresh key: the store learns for a share_ttl before the first share.
    let window = match fleet.tcp_channel().await {
        Ok(channel) => tokio::spawn(open_window(
            GovernorAdminClient::new(channel),
            fleet.admin,
            fleet_started,
            plan.share_ttl * 3 + Duration::from_secs(10),
        )),
        Err(e) => tokio::spawn(async move { Err(e) }),
    };

    if let Some(trio) = &plan.trio {
        log(&format!(
            "  {ARM_ID} {ARM_NAME}: three sidecars, fleet limit {}, callers {:?}",
            trio.fleet_limit, trio.callers
        ));
        match run_trio(trio, sidecars, &url).await {
            Ok((t, warnings)) => {
                if t.peak_held > u64::from(trio.fleet_limit) {
                    results.failures.push(format!(
                        "{ARM_ID} trio: {} permits held at once across the three sidecars (counted by the clients, a lower bound) for a fleet limit of {}",
                        t.peak_held, trio.fleet_limit
                    ));
                }
                for s in &t.sidecars {
                    if s.errors > 0 {
                        results.failures.push(format!(
                            "{ARM_ID} trio {}: {} errors, first: {}",
                            s.instance,
                            s.errors,
                            s.first_error.as_deref().unwrap_or("?")
                        ));
                    }
                    if s.granted == 0 {
                        results.failures.push(format!(
                            "{ARM_ID} trio {}: no grants in the measured window",
                            s.instance
                        ));
                    }
                }
                let enforced = |f: fn(&TrioSidecar) -> Option<&FleetSnapshot>| {
                    t.sidecars
                        .iter()
                        .map(|s| f(s).map_or(0, |e| e.enforced))
                        .collect::<Vec<_>>()
                };
                let (at_end, at_idle) = (
                    enforced(|s| s.end.as_ref()),
                    enforced(|s| s.idle_end.as_ref()),
                );
                let (fair, fair_idle) = (trio.expected_shares(), trio.idle_shares());
                if at_end != fair {
                    results.warnings.push(format!(
                        "{ARM_ID} trio: enforced {at_end:?} at the end of the window, the fair rule's {fair:?}"
                    ));
                }
                if at_idle != fair_idle {
                    results.warnings.push(format!(
                        "{ARM_ID} trio: enforced {at_idle:?} at the end of the idle phase, the fair rule's {fair_idle:?}"
                    ));
                }
                if !t.settled_before_window {
                    results.warnings.push(format!(
                        "{ARM_ID} trio: the shares still moved in the measured window ({:.2} s after the load started)",
                        t.settled_after_s.unwrap_or(f64::NAN)
                    ));
                }
                if t.give_back_ms.is_none() {
                    results.warnings.push(format!(
                        "{ARM_ID} trio: the stopped sidecar's share was not seen given back within share_ttl + a renewal"
                    ));
                }
                results.warnings.extend(warnings);
                results.trio = Some(t);
            }
            Err(e) => results.failures.push(format!("{ARM_ID} trio: {e}")),
        }
    }

    log(&format!(
        "  {ARM_ID} {ARM_NAME}: baseline and fleet sidecars, {} repeats",
        plan.repeats
    ));
    if let Err(e) = compare(plan, sidecars, &baseline, &fleet, window, &mut results).await {
        results.failures.push(format!("{ARM_ID}: {e}"));
    }
    for side in [&results.baseline, &results.fleet] {
        let name = format!("{ARM_ID} {}", side.label());
        if side.samples() == 0 {
            results.failures.push(format!(
                "{name}: no samples ({})",
                side.first_error().unwrap_or("no error")
            ));
        } else if side.errors() > 0 {
            results.failures.push(format!(
                "{name}: {} errors, first: {}",
                side.errors(),
                side.first_error().unwrap_or("?")
            ));
        }
    }
    if let Some(store) = &results.store {
        if store.calls == 0 {
            results.failures.push(format!(
                "{ARM_ID}: the fleet sidecar made no store call in {:.1} s",
                store.seconds
            ));
        }
        if store.errors > 0 {
            results.warnings.push(format!(
                "{ARM_ID}: {} of the fleet sidecar's {} store calls failed",
                store.errors, store.calls
            ));
        }
    }
    log(&format!(
        "  {ARM_ID} {ARM_NAME}: fleet / baseline p50 {:.2}, p99 {:.2}, CPU per pair {:.2}; store calls {:.2}/s (expected {:.2}); {:.1} s in all",
        results.ratios.p50.median,
        results.ratios.p99.median,
        results.ratios.cpu_per_pair.median,
        results.store.as_ref().map_or(f64::NAN, |s| s.calls_per_s),
        plan.expected_calls_per_s(),
        started.elapsed().as_secs_f64()
    ));
    for governor in [baseline, fleet] {
        let name = governor.process.name.clone();
        if let Err(e) = governor.process.stop(Duration::from_secs(5)).await {
            results.warnings.push(format!(
                "governor {name} did not shut down cleanly on SIGTERM: {e}"
            ));
        }
    }
    results
}

/// The baseline / fleet comparison, in alternating order.
async fn compare(
    plan: &FleetPlan,
    sidecars: &Sidecars<'_>,
    baseline: &Governor,
    fleet: &Governor,
    window: tokio::task::JoinHandle<Result<WindowStart, String>>,
    results: &mut FleetResults,
) -> Result<(), String> {
    let channels = [baseline.tcp_channel().await?, fleet.tcp_channel().await?];
    let mut admins = channels.clone().map(GovernorAdminClient::new);
    if FleetSnapshot::of(&status(&mut admins[0]).await?).is_some() {
        return Err("the baseline reports a fleet status".into());
    }
    let from = window
        .await
        .map_err(|e| format!("waiting for the first share: {e}"))??;
    results.first_share_s = Some(from.first_share.as_secs_f64());

    let schedule = Schedule {
        rate: plan.rate,
        warmup: plan.warmup,
        measure: plan.measure,
    };
    let sent = (plan.rate * (plan.warmup + plan.measure).as_secs_f64()).round() as u64;
    let governors = [baseline, fleet];
    for repeat in 0..plan.repeats {
        for k in 0..2 {
            let i = (k + repeat) % 2;
            let process = &governors[i].process;
            let client = GovernorClient::new(channels[i].clone());
            let cpu_before = process.cpu_seconds(sidecars.ticks);
            let run = open_loop(schedule, move || {
                let client = client.clone();
                async move {
                    tokio::time::timeout(CALL_TIMEOUT, pair(client))
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")))
                }
            })
            .await;
            let cpu = process.cpu_seconds(sidecars.ticks) - cpu_before;
            let leak = leak_check(&mut admins[i]).await.err();
            let side = if i == 0 {
                &mut results.baseline
            } else {
                &mut results.fleet
            };
            side.repeats.push(OpenRepeat {
                latency: Percentiles::of(&run.hist),
                errors: run.errors + u64::from(leak.is_some()),
                first_error: run.first_error.clone().or(leak),
                sent,
                server_cpu_seconds: cpu,
            });
        }
    }
    // At least two and a half renewals, so that the window holds two.
    tokio::time::sleep_until(from.at + plan.share_ttl.mul_f64(2.5 / 3.0)).await;
    let seconds = from.at.elapsed().as_secs_f64();
    let metrics_to = scrape_store(fleet.admin).await?;
    let end = FleetSnapshot::of(&status(&mut admins[1]).await?);
    let end_at = Instant::now();
    let mut store = from
        .metrics
        .window(&metrics_to, seconds, plan.expected_calls_per_s());
    if let (Some(a), Some(b)) = (&from.status, &end) {
        let (ttl, margin) = (plan.share_ttl, plan.safety_margin());
        let renewals = b.store_calls_total.saturating_sub(a.store_calls_total);
        if let (Some(sa), Some(sb)) = (
            last_send(a, from.at, ttl, margin),
            last_send(b, end_at, ttl, margin),
        ) && renewals > 0
        {
            store.renewals = Some(renewals);
            store.renewal_period_s = Some((sb - sa).as_secs_f64() / renewals as f64);
        }
    }
    results.store = Some(store);
    if let Some(end) = end.as_ref().filter(|s| !s.in_share()) {
        results.warnings.push(format!(
            "{ARM_ID}: the fleet sidecar ended in mode {} (last error {:?})",
            end.mode, end.last_error
        ));
    }
    results.fleet.status = end;
    for (side, governor) in [
        (&mut results.baseline, baseline),
        (&mut results.fleet, fleet),
    ] {
        let (rss, hwm) = governor.process.memory_kib();
        side.server_rss_kib = rss;
        side.server_hwm_kib = hwm;
    }
    let per = |f: fn(&OpenRepeat) -> f64| {
        Spread::of(
            &results
                .fleet
                .repeats
                .iter()
                .zip(&results.baseline.repeats)
                .map(|(f_, b)| f(f_) / f(b))
                .collect::<Vec<_>>(),
        )
    };
    results.ratios = Ratios {
        p50: per(|r| r.latency.p50_us),
        p99: per(|r| r.latency.p99_us),
        cpu_per_pair: per(|r| r.server_cpu_seconds / r.sent as f64),
    };
    Ok(())
}

/// One trio sidecar's tally of the measured window.
#[derive(Debug)]
struct Tally {
    attempts: u64,
    granted: u64,
    held_ns: u128,
    rejected: BTreeMap<String, u64>,
    errors: u64,
    first_error: Option<String>,
    wait: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            attempts: 0,
            granted: 0,
            held_ns: 0,
            rejected: BTreeMap::new(),
            errors: 0,
            first_error: None,
            wait: histogram(),
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

/// Permits held across the three, as the clients count them.
#[derive(Debug, Default)]
struct Held {
    now: AtomicU64,
    peak: AtomicU64,
}

impl Held {
    fn take(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn put(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One closed-loop caller of one trio sidecar, until `end`.
async fn caller(
    mut client: GovernorClient<Channel>,
    plan: TrioPlan,
    held: Arc<Held>,
    tally: Arc<Mutex<Tally>>,
    measure_from: Instant,
    end: Instant,
    until: Instant,
) {
    let timeout = plan.max_wait() + Duration::from_secs(2);
    loop {
        let sent = Instant::now();
        if sent >= until {
            break;
        }
        let measured = sent >= measure_from && sent < end;
        let mut request = tonic::Request::new(pb::AcquireRequest {
            dependency: DEPENDENCY.into(),
            ..Default::default()
        });
        request.set_timeout(timeout);
        let answer = client.acquire(request).await;
        let lock = || tally.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Ok(r) if r.get_ref().granted => {
                held.take();
                let granted_at = Instant::now();
                tokio::time::sleep(plan.hold()).await;
                let held_for = granted_at.elapsed();
                held.put();
                let lease_id = r.into_inner().lease_id;
                let release = client
                    .release(pb::ReleaseRequest {
                        lease_id,
                        outcome: Outcome::Success as i32,
                        latency: None,
                    })
                    .await;
                let mut t = lock();
                if measured {
                    t.attempts += 1;
                    t.granted += 1;
                    t.held_ns += held_for.as_nanos();
                    record(&mut t.wait, granted_at - sent);
                }
                match release {
                    Ok(r) if r.get_ref().released => {}
                    Ok(_) => t.error("Release answered released=false for a live lease".into()),
                    Err(s) => t.error(format!("Release: {s}")),
                }
            }
            Ok(r) => {
                let r = r.into_inner();
                if measured {
                    let mut t = lock();
                    t.attempts += 1;
                    *t.rejected.entry(reason_name(r.reason)).or_insert(0) += 1;
                }
                // A queue timeout already waited; anything else pauses a little.
                if r.reason != pb::RejectReason::QueueTimeout as i32 {
                    let pause = r
                        .retry_after
                        .and_then(|d| Duration::try_from(d).ok())
                        .unwrap_or(Duration::from_millis(2))
                        .clamp(Duration::from_millis(1), Duration::from_millis(50));
                    tokio::time::sleep_until((Instant::now() + pause).min(until)).await;
                }
            }
            Err(s) => {
                lock().error(format!("Acquire: {s}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Three sidecars, one binding fleet-wide limit.
async fn run_trio(
    plan: &TrioPlan,
    sidecars: &Sidecars<'_>,
    url: &str,
) -> Result<(TrioResults, Vec<String>), String> {
    let started = Instant::now();
    let mut governors = Vec::new();
    for i in 0..plan.callers.len() {
        let name = format!("fleet-trio-{}", i + 1);
        let g = Governor::start_with_admin(
            sidecars.bin,
            &name,
            &plan.config(url, i),
            &[],
            sidecars.work,
            sidecars.pinning,
        )
        .await?;
        governors.push(g);
    }
    let outcome = trio_load(plan, &governors, started).await;
    let mut warnings = Vec::new();
    // Stopped in reverse, so the first one still runs to see the others go.
    for g in governors.into_iter().rev() {
        let name = g.process.name.clone();
        if let Err(e) = g.process.stop(Duration::from_secs(5)).await {
            warnings.push(format!(
                "governor {name} did not shut down cleanly on SIGTERM: {e}"
            ));
        }
    }
    outcome.map(|t| (t, warnings))
}

async fn trio_load(
    plan: &TrioPlan,
    governors: &[Governor],
    started: Instant,
) -> Result<TrioResults, String> {
    let mut channels = Vec::new();
    for g in governors {
        channels.push(g.tcp_channel().await?);
    }
    let mut admins: Vec<_> = channels
        .iter()
        .cloned()
        .map(GovernorAdminClient::new)
        .collect();
    let within = plan.share_ttl * 3 + Duration::from_secs(10);
    let mut first_share = Duration::ZERO;
    for admin in &mut admins {
        first_share = first_share.max(wait_for_share(admin, started, within).await?);
    }
    let mut results = TrioResults {
        first_share_s: Some(first_share.as_secs_f64()),
        ..TrioResults::default()
    };

    let load_start = Instant::now() + Duration::from_millis(5);
    let measure_from = load_start + plan.warmup;
    let end = measure_from + plan.measure;
    // Then the last sidecar's callers stop (it goes idle) and the others'
    // carry on for the idle phase: its share should move to them.
    let idle_end = end + plan.idle_phase();
    let idle = plan.callers.len() - 1;
    let held = Arc::new(Held::default());
    let tallies: Vec<_> = (0..governors.len())
        .map(|_| Arc::new(Mutex::new(Tally::new())))
        .collect();
    let mut callers = JoinSet::new();
    for (i, &n) in plan.callers.iter().enumerate() {
        for _ in 0..n {
            let client = GovernorClient::new(channels[i].clone());
            let (plan, held, tally) = (plan.clone(), held.clone(), tallies[i].clone());
            let until = if i == idle { end } else { idle_end };
            callers.spawn(async move {
                tokio::time::sleep_until(load_start).await;
                caller(client, plan, held, tally, measure_from, end, until).await;
            });
        }
    }
    // The store windows: a scrape of each sidecar when the window opens
    // and when it closes.
    let admin_addrs: Vec<_> = governors.iter().map(|g| g.admin).collect();
    let scrapes = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from).await;
        let mut from = Vec::new();
        for &a in &admin_addrs {
            from.push(scrape_store(a).await);
        }
        let opened = Instant::now();
        tokio::time::sleep_until(end).await;
        let seconds = opened.elapsed().as_secs_f64();
        let mut windows = Vec::new();
        for (&a, f) in admin_addrs.iter().zip(from) {
            windows.push(match (f, scrape_store(a).await) {
                (Ok(f), Ok(t)) => Ok((f, t, seconds)),
                (Err(e), _) | (_, Err(e)) => Err(e),
            });
        }
        windows
    });

    // Status samples until the idle phase ends.
    let mut last_enforced: Option<Vec<u32>> = None;
    let mut last_change = None;
    let mut idle_change = None;
    let mut ends: Vec<Option<FleetSnapshot>> = vec![None; governors.len()];
    let mut idle_ends = ends.clone();
    while Instant::now() < idle_end {
        let at = Instant::now();
        let t = at.saturating_duration_since(load_start).as_secs_f64();
        let in_idle = at >= end;
        let mut snaps = Vec::new();
        for admin in &mut admins {
            snaps.push(FleetSnapshot::of(&status(admin).await?));
        }
        results.samples += 1;
        let enforced: Vec<u32> = snaps
            .iter()
            .map(|s| s.as_ref().map_or(0, |s| s.enforced))
            .collect();
        results.peak_enforced_sum = results.peak_enforced_sum.max(enforced.iter().sum());
        let in_flight = snaps
            .iter()
            .map(|s| s.as_ref().map_or(0, |s| s.in_flight))
            .sum();
        results.peak_in_flight_sum = results.peak_in_flight_sum.max(in_flight);
        if last_enforced.as_ref().is_some_and(|l| *l != enforced) {
            if in_idle {
                idle_change = Some(at.saturating_duration_since(end).as_secs_f64());
            } else {
                last_change = Some(t);
            }
        }
        last_enforced = Some(enforced);
        if in_idle {
            idle_ends = snaps;
        } else {
            ends = snaps;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    results.idle_phase_s = plan.idle_phase().as_secs_f64();
    results.idle_settled_after_s = idle_change;
    results.settled_after_s = last_change.or(Some(0.0));
    results.settled_before_window = last_change.is_none_or(|t| t < plan.warmup.as_secs_f64());

    let drain = plan.max_wait() + plan.hold() + Duration::from_secs(5);
    if tokio::time::timeout(drain, async {
        while callers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        callers.shutdown().await;
        if let Some(t) = tallies.first() {
            t.lock()
                .unwrap_or_else(|e| e.into_inner())
                .error(format!("callers still running {drain:?} after the end"));
        }
    }
    results.peak_held = held.peak.load(Ordering::SeqCst);
    let windows = scrapes.await.map_err(|e| format!("scrapes: {e}"))?;
    let expected = plan.expected_shares();
    let idle_expected = plan.idle_shares();
    let window = plan.measure.as_secs_f64();
    for (i, admin) in admins.iter_mut().enumerate() {
        let mut side = {
            let t = tallies[i].lock().unwrap_or_else(|e| e.into_inner());
            TrioSidecar {
                instance: TrioPlan::instance(i),
                callers: plan.callers[i],
                expected_share: expected[i],
                attempts: t.attempts,
                granted: t.granted,
                grants_per_s: t.granted as f64 / window,
                mean_held: t.held_ns as f64 / 1e9 / window,
                rejected: t.rejected.clone(),
                errors: t.errors,
                first_error: t.first_error.clone(),
                granted_wait: Percentiles::of(&t.wait),
                end: ends[i].clone(),
                store: None,
                idle_expected: idle_expected[i],
                idle_end: idle_ends[i].clone(),
            }
        };
        match &windows[i] {
            Ok((from, to, seconds)) => {
                side.store = Some(from.window(to, *seconds, plan.expected_calls_per_s()));
            }
            Err(e) => {
                side.errors += 1;
                side.first_error.get_or_insert(e.clone());
            }
        }
        if let Err(e) = leak_check(admin).await {
            side.errors += 1;
            side.first_error.get_or_insert(e);
        }
        results.sidecars.push(side);
    }

    // The last sidecar leaves (SIGTERM): the first should see one instance
    // less on its next renewal, not a share_ttl later.
    results.give_back_ms = give_back(plan, governors, &mut admins[0]).await?;
    Ok(results)
}

/// Stops the last of `governors` and waits for the first to see it gone;
/// the milliseconds it took, or None.
async fn give_back(
    plan: &TrioPlan,
    governors: &[Governor],
    first: &mut GovernorAdminClient<Channel>,
) -> Result<Option<f64>, String> {
    let Some(last) = governors.last().filter(|_| governors.len() > 1) else {
        return Ok(None);
    };
    let before = FleetSnapshot::of(&status(first).await?).map_or(0, |s| s.instances);
    let stopped = Instant::now();
    // SIGTERM now, and keep the process for the caller to reap.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(last.process.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let within = plan.share_ttl + plan.renew_interval() + Duration::from_millis(500);
    while stopped.elapsed() < within {
        let s = FleetSnapshot::of(&status(first).await?);
        if s.is_some_and(|s| s.instances < before) {
            let ms = stopped.elapsed().as_secs_f64() * 1000.0;
            // Seen only after the share lapsed: not given back.
            return Ok((ms < plan.share_ttl.as_secs_f64() * 1000.0).then_some(ms));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> FleetPlan {
        FleetPlan {
            rate: 2000.0,
            warmup: Duration::from_millis(200),
            measure: Duration::from_millis(600),
            repeats: 3,
            local_limit: 1000,
            load_concurrency: 16,
            fleet_limit: 160,
            share_ttl: Duration::from_secs(3),
            trio: Some(TrioPlan {
                fleet_limit: 12,
                callers: vec![12, 6, 2],
                local_limit: 64,
                max_queue: 64,
                max_wait_ms: 50,
                hold_ms: 10.0,
                fallback_share: 0,
                share_ttl: Duration::from_secs(1),
                warmup: Duration::from_millis(1500),
                measure: Duration::from_secs(2),
            }),
        }
    }

    #[test]
    fn configs_differ_only_in_the_fleet() {
        let p = plan();
        let base: toml::Value = toml::from_str(&p.baseline_config()).unwrap();
        let fleet: toml::Value = toml::from_str(&p.fleet_config("redis://127.0.0.1:1/0")).unwrap();
        assert!(base.get("fleet").is_none());
        assert_eq!(fleet["fleet"]["share_ttl"].as_str(), Some("3000ms"));
        assert_eq!(fleet["fleet"]["namespace"].as_str(), Some(SINGLE_NAMESPACE));
        let dep = |v: &toml::Value| v["dependencies"][DEPENDENCY].clone();
        assert_eq!(dep(&base)["max_concurrency"].as_integer(), Some(1000));
        assert_eq!(dep(&fleet)["max_concurrency"].as_integer(), Some(1000));
        assert!(dep(&base).get("fleet").is_none());
        assert_eq!(
            dep(&fleet)["fleet"]["max_concurrency"].as_integer(),
            Some(160)
        );
        let trio = p.trio.unwrap();
        let one: toml::Value = toml::from_str(&trio.config("redis://127.0.0.1:1/0", 0)).unwrap();
        let two: toml::Value = toml::from_str(&trio.config("redis://127.0.0.1:1/0", 1)).unwrap();
        assert_ne!(one["fleet"]["instance"], two["fleet"]["instance"]);
        assert_eq!(one["fleet"]["namespace"], two["fleet"]["namespace"]);
        assert_eq!(dep(&one)["fleet"]["max_concurrency"].as_integer(), Some(12));
        assert_eq!(dep(&one)["fleet"]["fallback_share"].as_integer(), Some(0));
    }

    #[test]
    fn the_sidecar_takes_the_configs() {
        use rate_governor::config::Config;
        let p = plan();
        let url = "redis://127.0.0.1:6379/0";
        let base = Config::parse_file(&p.baseline_config()).unwrap();
        let fleet = Config::parse_file(&p.fleet_config(url)).unwrap();
        assert!(base.fleet.is_none());
        let f = fleet.fleet.as_ref().expect("a [fleet] section");
        assert_eq!(f.share_ttl, Duration::from_secs(3));
        assert_eq!(f.renew_interval(), Duration::from_secs(1));
        assert_ne!(base, fleet);
        let trio = p.trio.unwrap();
        for i in 0..3 {
            let c = Config::parse_file(&trio.config(url, i)).unwrap();
            assert_eq!(c.fleet.unwrap().share_ttl, Duration::from_secs(1));
        }
    }

    #[test]
    fn fair_shares_follow_the_rule() {
        // Equal split 4: the smallest demand takes 2, the rest split 10.
        assert_eq!(fair_shares(12, &[12, 6, 2]), vec![5, 5, 2]);
        assert_eq!(fair_shares(12, &[12, 6, 0]), vec![6, 6, 0]);
        // Nobody wants it all: the rest is split equally.
        assert_eq!(fair_shares(12, &[1, 1, 1]), vec![4, 4, 4]);
        assert_eq!(fair_shares(10, &[1, 2, 3]), vec![2, 3, 5]);
        assert_eq!(fair_shares(160, &[16]), vec![160]);
        assert_eq!(fair_shares(5, &[]), Vec::<u32>::new());
        let s = fair_shares(7, &[9, 9, 9]);
        assert_eq!(s.iter().sum::<u32>(), 7);
    }

    #[test]
    fn store_series_and_their_window() {
        let before = "# TYPE governor_fleet_store_calls counter\n\
            governor_fleet_store_calls_total{dependency=\"bench-fleet\"} 4\n\
            governor_fleet_store_calls_total{dependency=\"other\"} 99\n\
            governor_fleet_store_errors_total{dependency=\"bench-fleet\"} 0\n\
            governor_fleet_store_seconds_sum{dependency=\"bench-fleet\"} 0.001\n\
            governor_fleet_store_seconds_count{dependency=\"bench-fleet\"} 4\n\
            governor_fleet_store_seconds_bucket{le=\"0.0001\",dependency=\"bench-fleet\"} 0\n\
            governor_fleet_store_seconds_bucket{le=\"0.00025\",dependency=\"bench-fleet\"} 3\n\
            governor_fleet_store_seconds_bucket{le=\"0.0005\",dependency=\"bench-fleet\"} 4\n\
            governor_fleet_store_seconds_bucket{le=\"+Inf\",dependency=\"bench-fleet\"} 4\n\
            # EOF\n";
        let after = "governor_fleet_store_calls_total{dependency=\"bench-fleet\"} 14\n\
            governor_fleet_store_errors_total{dependency=\"bench-fleet\"} 1\n\
            governor_fleet_store_seconds_sum{dependency=\"bench-fleet\"} 0.004\n\
            governor_fleet_store_seconds_count{dependency=\"bench-fleet\"} 14\n\
            governor_fleet_store_seconds_bucket{dependency=\"bench-fleet\",le=\"0.0001\"} 0\n\
            governor_fleet_store_seconds_bucket{dependency=\"bench-fleet\",le=\"0.00025\"} 9\n\
            governor_fleet_store_seconds_bucket{dependency=\"bench-fleet\",le=\"0.0005\"} 13\n\
            governor_fleet_store_seconds_bucket{dependency=\"bench-fleet\",le=\"+Inf\"} 14\n";
        let a = StoreMetrics::parse(before, DEPENDENCY);
        let b = StoreMetrics::parse(after, DEPENDENCY);
        assert_eq!(a.calls, 4.0);
        assert_eq!(a.buckets.len(), 4);
        let w = a.window(&b, 10.0, 1.0);
        assert_eq!((w.calls, w.errors, w.latency_count), (10, 1, 10));
        assert!((w.calls_per_s - 1.0).abs() < 1e-9);
        assert!(
            (w.latency_mean_us - 300.0).abs() < 1e-6,
            "{}",
            w.latency_mean_us
        );
        // 6 of 10 in the 250 µs bucket: the median there; the p99 past 500 µs.
        assert_eq!(w.latency_p50_le_us, 250.0);
        assert_eq!(w.latency_p99_le_us, f64::INFINITY);
    }

    #[test]
    fn labels_with_escapes_parse() {
        let s = parse_series("x{a=\"q\\\"uote\",b=\"c,d\"} 2.5\ny 3\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].label("a"), Some("q\"uote"));
        assert_eq!(s[0].label("b"), Some("c,d"));
        assert_eq!(s[0].value, 2.5);
        assert_eq!(s[1].name, "y");
    }
}
