//! Fleet-wide limits (issue 12) against the real binary, real gRPC and a
//! real redis-server (or a three-node Redis Cluster): several sidecars share
//! one dependency's fleet limit through the store.
//!
//! An oracle outside the sidecars counts the permits every caller of every
//! sidecar holds (from the grant's answer to just before its Release, so
//! never more than the sidecars count): its maximum must never exceed the
//! fleet limit. How much of the limit the fleet uses is what the sidecars
//! count in flight (sampled), not what the callers see: the callers' count
//! also misses each permit's two trips between caller and sidecar, which
//! grow with the machine's load and are not the fleet's doing. Callers hold
//! each permit for [`HOLD`] (the downstream call) and ask again at once.
//!
//! Timings: share_ttl 1500 ms (a renewal every 500 ms, a safety margin of
//! 300 ms), a local limit of 64 so that the fleet limit is what binds.
//!
//! Needs `redis-server` and `redis-cli` on the PATH (scripts/test.sh
//! installs them) and the governor binary (`cargo build --workspace --bins`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor_integration_tests::redis::{RedisCluster, RedisServer};
use governor_integration_tests::{GovernorProcess, Signal, admin_get, check_config, series};
use rate_governor_proto::v1::{
    AcquireRequest, DependencyStatus, FleetLimits, FleetMode, FleetStatus, GetDependencyRequest,
    Outcome, ReleaseRequest, governor_admin_client::GovernorAdminClient,
    governor_client::GovernorClient,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

const DEP: &str = "payments";
const FLEET_LIMIT: u32 = 12;
const FALLBACK: u32 = 2;
const SHARE_TTL: Duration = Duration::from_millis(1500);
const RENEW: Duration = Duration::from_millis(500);
const HOLD: Duration = Duration::from_millis(50);
const INSTANCES: [&str; 3] = ["pod-a", "pod-b", "pod-c"];

/// The load tests take turns: on a small machine two of them at once would
/// measure each other's CPU use more than the fleet's shares.
static LOAD_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- configs

/// A fleet-limited dependency: `(name, fleet max_concurrency, fallback_share)`.
type FleetDep<'a> = (&'a str, u32, u32);

/// A sidecar's config: the `[fleet]` section with `store` (a `redis = ...`
/// or `redis_cluster = [...]` line) and each dependency with a local limit
/// of 64 and its fleet limit.
fn config(store: &str, instance: &str, deps: &[FleetDep<'_>]) -> String {
    let mut toml = format!(
        "[fleet]\n{store}\nshare_ttl = \"{}ms\"\ninstance = \"{instance}\"\n",
        SHARE_TTL.as_millis()
    );
    for (name, limit, fallback) in deps {
        toml.push_str(&format!(
            "\n[dependencies.{name}]\nmax_concurrency = 64\nmax_queue = 64\nmax_wait = \"2s\"\n\
             [dependencies.{name}.fleet]\nmax_concurrency = {limit}\nfallback_share = {fallback}\n"
        ));
    }
    toml
}

fn redis_line(redis: &RedisServer) -> String {
    format!("redis = \"{}\"", redis.url())
}

/// Three sidecars (pod-a, pod-b, pod-c) on `store`, logging JSON.
async fn start_fleet(store: &str, deps: &[FleetDep<'_>]) -> Vec<Sidecar> {
    let mut sidecars = Vec::new();
    for instance in INSTANCES {
        let gov = GovernorProcess::start_with_args(
            &config(store, instance, deps),
            &["--log-format", "json"],
        )
        .await;
        let admin = gov.admin_client().await;
        sidecars.push(Sidecar { gov, admin });
    }
    sidecars
}

struct Sidecar {
    gov: GovernorProcess,
    admin: GovernorAdminClient<Channel>,
}

impl Sidecar {
    async fn status(&mut self, dep: &str) -> DependencyStatus {
        self.admin
            .get_dependency(GetDependencyRequest { name: dep.into() })
            .await
            .expect("GetDependency answers")
            .into_inner()
    }

    async fn fleet(&mut self, dep: &str) -> FleetStatus {
        let status = self.status(dep).await;
        match status.fleet {
            Some(fleet) => fleet,
            None => panic!("no fleet status for {dep}: {status:#?}"),
        }
    }

    /// This sidecar's JSON log events with `message` starting with `prefix`.
    fn events(&self, prefix: &str) -> Vec<serde_json::Value> {
        self.gov
            .stderr_so_far()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
            .collect()
    }
}

fn mode(fleet: &FleetStatus) -> FleetMode {
    FleetMode::try_from(fleet.mode).unwrap_or(FleetMode::Unspecified)
}

fn duration(d: &Option<prost_types::Duration>) -> Option<Duration> {
    d.map(|d| Duration::try_from(d).unwrap())
}

/// A compact view of the fleet statuses, for failure messages and logs.
fn brief(fleets: &[FleetStatus]) -> String {
    fleets
        .iter()
        .map(|f| {
            format!(
                "[{:?} share {} target {} enforced {} demand {} instances {} max {} errors {} \
                 calls {} learning_left {:?} valid_for {:?} last_error {:?}]",
                mode(f),
                f.share,
                f.target,
                f.enforced,
                f.demand,
                f.instances,
                f.max_concurrency,
                f.store_errors_total,
                f.store_calls_total,
                duration(&f.learning_left),
                duration(&f.valid_for),
                f.last_error
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The fleet status of `dep` on each of `sidecars`.
async fn fleets(sidecars: &mut [&mut Sidecar], dep: &str) -> Vec<FleetStatus> {
    let mut all = Vec::new();
    for sidecar in sidecars.iter_mut() {
        all.push(sidecar.fleet(dep).await);
    }
    all
}

/// Polls the fleet status of `dep` on `sidecars` until `done` holds, at
/// most `within`; returns the statuses and when it held.
async fn until_fleet(
    sidecars: &mut [&mut Sidecar],
    dep: &str,
    what: &str,
    within: Duration,
    done: impl Fn(&[FleetStatus]) -> bool,
) -> (Vec<FleetStatus>, Instant) {
    let start = Instant::now();
    let deadline = start + within;
    loop {
        let now = fleets(sidecars, dep).await;
        if done(&now) {
            return (now, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "{dep}: never {what} within {within:?}: {}",
            brief(&now)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn all_share(fleets: &[FleetStatus]) -> bool {
    fleets.iter().all(|f| mode(f) == FleetMode::Share)
}

fn sum_enforced(fleets: &[FleetStatus]) -> u32 {
    fleets.iter().map(|f| f.enforced).sum()
}

fn sum_share(fleets: &[FleetStatus]) -> u32 {
    fleets.iter().map(|f| f.share).sum()
}

/// Every sidecar in share mode, seeing `instances` sidecars, and the fleet's
/// enforced terms using the whole `limit`.
fn settled(instances: u32, limit: u32) -> impl Fn(&[FleetStatus]) -> bool {
    move |fleets| {
        all_share(fleets)
            && fleets.iter().all(|f| f.instances == instances)
            && sum_enforced(fleets) == limit
    }
}

/// How long the fleet gets to settle once its load runs: a first answer,
/// then idle shares moving to the busy (about two renewals each way), with
/// room for a slow machine.
const SETTLE: Duration = Duration::from_secs(10);

// ----------------------------------------------------------------- oracle

/// Counts the permits the callers hold (all sidecars together): the most
/// ever held at once, and the time-weighted average over a window.
#[derive(Debug)]
struct Oracle {
    state: Mutex<OracleState>,
}

#[derive(Debug)]
struct OracleState {
    held: u32,
    most: u32,
    /// Permit-seconds since `window`.
    area: f64,
    last: Instant,
    window: Instant,
}

impl Oracle {
    fn new() -> Arc<Oracle> {
        let now = Instant::now();
        Arc::new(Oracle {
            state: Mutex::new(OracleState {
                held: 0,
                most: 0,
                area: 0.0,
                last: now,
                window: now,
            }),
        })
    }

    fn change(&self, up: bool) {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
        s.area += f64::from(s.held) * (now - s.last).as_secs_f64();
        s.last = now;
        if up {
            s.held += 1;
            s.most = s.most.max(s.held);
        } else {
            s.held -= 1;
        }
    }

    fn take(&self) {
        self.change(true);
    }

    fn give(&self) {
        self.change(false);
    }

    fn most(&self) -> u32 {
        self.state.lock().unwrap().most
    }

    /// Starts a new averaging window now.
    fn window(&self) {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
        s.area = 0.0;
        s.last = now;
        s.window = now;
    }

    /// The time-weighted average held since [`window`](Self::window).
    fn average(&self) -> f64 {
        let now = Instant::now();
        let s = self.state.lock().unwrap();
        let area = s.area + f64::from(s.held) * (now - s.last).as_secs_f64();
        area / (now - s.window).as_secs_f64()
    }
}

/// How much of a fleet limit was used over a window.
#[derive(Debug)]
struct Use {
    /// In flight as the sidecars count them, summed over the sidecars.
    in_flight: f64,
    /// Held as the dependency's callers count them (its oracle).
    callers: f64,
}

/// The use of each `(dependency, oracle)` over `window`: in flight from
/// one `GetDependency` per sidecar and dependency every 10 ms, held from the
/// oracle's time-weighted average over the same window.
async fn use_over(
    sidecars: &mut [&mut Sidecar],
    deps: &[(&str, &Oracle)],
    window: Duration,
) -> Vec<Use> {
    for (_, oracle) in deps {
        oracle.window();
    }
    let end = Instant::now() + window;
    let mut sums = vec![0u64; deps.len()];
    let mut rounds = 0u32;
    while Instant::now() < end {
        for ((dep, _), sum) in deps.iter().zip(sums.iter_mut()) {
            for sidecar in sidecars.iter_mut() {
                *sum += u64::from(sidecar.status(dep).await.in_flight);
            }
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rounds > 0, "no sample of in_flight in {window:?}");
    deps.iter()
        .zip(sums)
        .map(|((_, oracle), sum)| Use {
            in_flight: sum as f64 / f64::from(rounds),
            callers: oracle.average(),
        })
        .collect()
}

/// Measures the oracle's time-weighted average over `window` of load.
async fn average_over(oracle: &Oracle, window: Duration) -> f64 {
    oracle.window();
    tokio::time::sleep(window).await;
    oracle.average()
}

// ------------------------------------------------------------------ load

/// How callers ask.
#[derive(Clone, Copy, Debug)]
enum Ask {
    /// With the dependency's max wait (they queue).
    Queue,
    /// Try-acquire (max_wait 0), and after a refusal wait a little.
    Try,
}

/// What a caller saw.
#[derive(Debug, Default)]
struct Tally {
    granted: u64,
    rejected: BTreeMap<&'static str, u64>,
    errors: u64,
    /// When each grant was asked, and how long its answer took.
    grants: Vec<(Instant, Duration)>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.granted += other.granted;
        for (reason, n) in other.rejected {
            *self.rejected.entry(reason).or_default() += n;
        }
        self.errors += other.errors;
        self.grants.extend(other.grants);
    }

    /// The 99th percentile of the answer times of grants asked from `since`.
    fn p99_since(&self, since: Instant) -> (Duration, usize) {
        let mut sorted: Vec<Duration> = self
            .grants
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, d)| *d)
            .collect();
        sorted.sort();
        if sorted.is_empty() {
            return (Duration::ZERO, 0);
        }
        (sorted[(sorted.len() * 99).div_ceil(100) - 1], sorted.len())
    }
}

/// Closed-loop callers; stop them with [`Load::finish`].
struct Load {
    stop: Arc<AtomicBool>,
    callers: Vec<JoinHandle<Tally>>,
    releases_refused: Arc<AtomicU64>,
}

impl Load {
    fn new() -> Load {
        Load {
            stop: Arc::new(AtomicBool::new(false)),
            callers: Vec::new(),
            releases_refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `n` callers of `dep` on the sidecar `gov` (over two connections),
    /// counted by `oracle`.
    async fn spawn(
        &mut self,
        gov: &GovernorProcess,
        dep: &str,
        n: usize,
        ask: Ask,
        oracle: &Arc<Oracle>,
    ) {
        let clients = [gov.governor_client().await, gov.governor_client().await];
        for i in 0..n {
            let mut client = clients[i % clients.len()].clone();
            let stop = self.stop.clone();
            let oracle = oracle.clone();
            let refused = self.releases_refused.clone();
            let request = AcquireRequest {
                dependency: dep.into(),
                max_wait: match ask {
                    Ask::Queue => None,
                    Ask::Try => Some(Duration::ZERO.try_into().unwrap()),
                },
                ..Default::default()
            };
            self.callers.push(tokio::spawn(async move {
                caller(&mut client, request, ask, &stop, &oracle, &refused).await
            }));
        }
    }

    /// Stops the callers (each finishes what it asked) and merges what they
    /// saw.
    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut tally = Tally::default();
        for task in self.callers {
            let one = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("a caller stops within 10 s")
                .expect("a caller does not panic");
            tally.merge(one);
        }
        let refused = self.releases_refused.load(Ordering::SeqCst);
        tally.errors += refused;
        tally
    }
}

async fn caller(
    client: &mut GovernorClient<Channel>,
    request: AcquireRequest,
    ask: Ask,
    stop: &AtomicBool,
    oracle: &Oracle,
    releases_refused: &AtomicU64,
) -> Tally {
    let mut tally = Tally::default();
    while !stop.load(Ordering::SeqCst) {
        let asked = Instant::now();
        match client.acquire(request.clone()).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                if answer.granted {
                    oracle.take();
                    tally.grants.push((asked, asked.elapsed()));
                    tally.granted += 1;
                    tokio::time::sleep(HOLD).await;
                    oracle.give();
                    let released = client
                        .release(ReleaseRequest {
                            lease_id: answer.lease_id,
                            outcome: Outcome::Success as i32,
                            latency: None,
                        })
                        .await;
                    if !released.is_ok_and(|r| r.into_inner().released) {
                        releases_refused.fetch_add(1, Ordering::SeqCst);
                    }
                } else {
                    *tally
                        .rejected
                        .entry(answer.reason().as_str_name())
                        .or_default() += 1;
                    let pause = match ask {
                        Ask::Queue => Duration::from_millis(2),
                        Ask::Try => Duration::from_millis(5),
                    };
                    tokio::time::sleep(pause).await;
                }
            }
            // A killed sidecar: its callers keep trying, slowly.
            Err(_) => {
                tally.errors += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tally
}

// ----------------------------------------------------------------- tests

/// The harness itself: a server answers, loses its data on
/// `restart_empty` (same port), is gone after `kill`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_harness_starts_restarts_empty_and_kills() {
    let mut redis = RedisServer::start().await;
    let port = redis.port();
    assert_eq!(redis.cli(&["set", "k", "v"]).await.as_deref(), Some("OK\n"));
    assert_eq!(redis.cli(&["get", "k"]).await.as_deref(), Some("v\n"));
    redis.restart_empty().await;
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cli(&["exists", "k"]).await.as_deref(), Some("0\n"));
    redis.kill().await;
    assert!(!redis.is_running());
    assert!(
        redis.cli(&["ping"]).await.is_none(),
        "a killed server answers"
    );
}

/// 3 sidecars with 8 callers each (demand 24) share a fleet limit of 12:
/// never more than 12 held at once, and at least 90 % of it in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_never_exceed_the_fleet_limit_and_use_it() {
    let _turn = LOAD_TURN.lock().await;
    let redis = RedisServer::start().await;
    let deps = [(DEP, FLEET_LIMIT, FALLBACK)];
    let mut fleet = start_fleet(&redis_line(&redis), &deps).await;
    let oracle = Oracle::new();
    let mut load = Load::new();
    for sidecar in &fleet {
        load.spawn(&sidecar.gov, DEP, 8, Ask::Queue, &oracle).await;
    }
    let mut all: Vec<&mut Sidecar> = fleet.iter_mut().collect();
    let (settled_at, _) = until_fleet(
        &mut all,
        DEP,
        "settled on the whole limit",
        SETTLE,
        settled(3, FLEET_LIMIT),
    )
    .await;
    let [Use { in_flight, callers }] =
        use_over(&mut all, &[(DEP, &oracle)], Duration::from_secs(4))
            .await
            .try_into()
            .unwrap();
    let after = fleets(&mut all, DEP).await;
    let tally = load.finish().await;
    let most = oracle.most();
    eprintln!(
        "fleet: most held {most}; over 4 s, in flight {in_flight:.2} on average (the callers \
         held {callers:.2}); granted {} rejected {:?} errors {}; settled {}; after {}",
        tally.granted,
        tally.rejected,
        tally.errors,
        brief(&settled_at),
        brief(&after)
    );
    assert!(most <= FLEET_LIMIT, "{most} held at once > {FLEET_LIMIT}");
    assert!(
        in_flight >= 0.9 * f64::from(FLEET_LIMIT),
        "{in_flight:.2} in flight on average < 90 % of {FLEET_LIMIT}; {}",
        brief(&after)
    );
    assert_eq!(tally.errors, 0, "{tally:?}");
}

/// An idle pod's share moves to the busy one, and back to an equal split
/// when a second pod gets busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pods_share_moves_to_the_busy_ones() {
    let _turn = LOAD_TURN.lock().await;
    let redis = RedisServer::start().await;
    let deps = [(DEP, FLEET_LIMIT, FALLBACK)];
    let mut fleet = start_fleet(&redis_line(&redis), &deps).await;
    let mut all: Vec<&mut Sidecar> = fleet.iter_mut().collect();
    // Idle, the limit nobody wants is split equally.
    until_fleet(
        &mut all,
        DEP,
        "idle, in share mode",
        SETTLE,
        settled(3, FLEET_LIMIT),
    )
    .await;
    drop(all);

    let oracle = Oracle::new();
    let mut load = Load::new();
    // 12 callers: A's demand is the whole limit.
    load.spawn(&fleet[0].gov, DEP, 12, Ask::Queue, &oracle)
        .await;
    let within = RENEW * 6;
    let (only_a, _) = until_fleet(
        &mut [&mut fleet[0]],
        DEP,
        "A's share and enforced >= 10 with only A busy",
        within,
        |f| f[0].share >= 10 && f[0].enforced >= 10,
    )
    .await;
    eprintln!("fleet: only A busy: {}", brief(&only_a));

    load.spawn(&fleet[1].gov, DEP, 12, Ask::Queue, &oracle)
        .await;
    let (a, b) = fleet.split_at_mut(1);
    let (halves, _) = until_fleet(
        &mut [&mut a[0], &mut b[0]],
        DEP,
        "A and B each enforcing >= 4 with both busy",
        within,
        |f| f.iter().all(|f| f.share >= 4 && f.enforced >= 4),
    )
    .await;
    let c = fleet[2].fleet(DEP).await;
    let tally = load.finish().await;
    let most = oracle.most();
    eprintln!(
        "fleet: A and B busy: {} C {}; most held {most}; granted {}",
        brief(&halves),
        brief(&[c]),
        tally.granted
    );
    assert!(most <= FLEET_LIMIT, "{most} held at once > {FLEET_LIMIT}");
    assert_eq!(tally.errors, 0, "{tally:?}");
}

/// Redis SIGKILLed under load: Acquire never waits on it, the shares are
/// used until they lapse, then every sidecar falls back to its
/// fallback_share and says so in a WARN line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_falls_back_without_waiting_on_it() {
    let _turn = LOAD_TURN.lock().await;
    let mut redis = RedisServer::start().await;
    let deps = [(DEP, FLEET_LIMIT, FALLBACK)];
    let mut fleet = start_fleet(&redis_line(&redis), &deps).await;
    let oracle = Oracle::new();
    let mut load = Load::new();
    for sidecar in &fleet {
        load.spawn(&sidecar.gov, DEP, 8, Ask::Try, &oracle).await;
    }
    let mut all: Vec<&mut Sidecar> = fleet.iter_mut().collect();
    until_fleet(&mut all, DEP, "settled", SETTLE, settled(3, FLEET_LIMIT)).await;

    redis.kill().await;
    let killed = Instant::now();
    let (fallen, at) = until_fleet(
        &mut all,
        DEP,
        "FALLBACK with enforced == fallback_share on every sidecar",
        SHARE_TTL,
        |f| {
            f.iter()
                .all(|f| mode(f) == FleetMode::Fallback && f.enforced == FALLBACK)
        },
    )
    .await;
    let fell_after = at - killed;
    // The load goes on in fallback for a while.
    let in_fallback = average_over(&oracle, Duration::from_secs(1)).await;
    let still = fleets(&mut all, DEP).await;
    let tally = load.finish().await;
    let most = oracle.most();
    let (p99, grants) = tally.p99_since(killed);
    eprintln!(
        "fleet: redis killed: all FALLBACK after {fell_after:?}: {}; p99 grant answer since \
         the kill {p99:?} ({grants} grants); average in fallback {in_fallback:.2}; most held \
         {most}; rejected {:?}",
        brief(&fallen),
        tally.rejected
    );
    assert!(most <= FLEET_LIMIT, "{most} held at once > {FLEET_LIMIT}");
    assert!(grants > 0, "no grants after the kill");
    assert!(
        p99 < Duration::from_millis(200),
        "p99 of granted Acquires since the kill {p99:?} >= 200 ms"
    );
    assert!(
        in_fallback <= f64::from(3 * FALLBACK) + 0.01,
        "{in_fallback:.2} held on average in fallback > 3 x {FALLBACK}"
    );
    for f in &still {
        assert_eq!(mode(f), FleetMode::Fallback, "{}", brief(&still));
        assert!(f.store_errors_total > 0, "{}", brief(&still));
        assert!(!f.last_error.is_empty(), "{}", brief(&still));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for sidecar in &fleet {
        let line = loop {
            let lines = sidecar.events("fleet store unreachable, falling back");
            if let Some(line) = lines.into_iter().next() {
                break line;
            }
            assert!(
                Instant::now() < deadline,
                "no \"fleet store unreachable, falling back\" line:\n{}",
                sidecar.gov.stderr_so_far()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["dependency"], DEP, "{line}");
        assert_eq!(line["fallback_share"], FALLBACK, "{line}");
        assert!(
            line["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{line}"
        );
    }
}

/// Redis restarted empty under load: the sidecars learn (no new shares for
/// a share_ttl), never exceed the limit, and come back to sharing all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_learns_then_shares_again() {
    let _turn = LOAD_TURN.lock().await;
    let mut redis = RedisServer::start().await;
    let deps = [(DEP, FLEET_LIMIT, FALLBACK)];
    let mut fleet = start_fleet(&redis_line(&redis), &deps).await;
    let oracle = Oracle::new();
    let mut load = Load::new();
    for sidecar in &fleet {
        load.spawn(&sidecar.gov, DEP, 8, Ask::Queue, &oracle).await;
    }
    let mut all: Vec<&mut Sidecar> = fleet.iter_mut().collect();
    until_fleet(&mut all, DEP, "settled", SETTLE, settled(3, FLEET_LIMIT)).await;

    redis.restart_empty().await;
    let restarted = Instant::now();
    // Each sidecar must be seen learning (or falling back), then all back
    // in share mode on the whole limit.
    let mut seen: Vec<Option<(FleetMode, Duration)>> = vec![None; all.len()];
    let within = SHARE_TTL + RENEW * 4;
    let deadline = restarted + within;
    let (recovered, recovered_at) = loop {
        let now = fleets(&mut all, DEP).await;
        for (seen, f) in seen.iter_mut().zip(&now) {
            if seen.is_none() && matches!(mode(f), FleetMode::Learning | FleetMode::Fallback) {
                *seen = Some((mode(f), restarted.elapsed()));
            }
        }
        if seen.iter().all(Option::is_some) && settled(3, FLEET_LIMIT)(&now) {
            break (now, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "not learning then sharing again within {within:?} of the restart: seen {seen:?}, \
             now {}",
            brief(&now)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let [Use { in_flight, callers }] =
        use_over(&mut all, &[(DEP, &oracle)], Duration::from_secs(2))
            .await
            .try_into()
            .unwrap();
    let tally = load.finish().await;
    let most = oracle.most();
    let learning_logged = fleet
        .iter()
        .filter(|s| !s.events("fleet store is learning").is_empty())
        .count();
    eprintln!(
        "fleet: restarted empty: seen {seen:?}; all sharing again after {:?}: {}; over 2 s \
         after, in flight {in_flight:.2} on average (the callers held {callers:.2}); most held \
         {most}; {learning_logged} sidecars logged learning",
        recovered_at - restarted,
        brief(&recovered)
    );
    assert!(most <= FLEET_LIMIT, "{most} held at once > {FLEET_LIMIT}");
    assert!(
        in_flight >= 0.9 * f64::from(FLEET_LIMIT),
        "{in_flight:.2} in flight on average after recovery < 90 % of {FLEET_LIMIT}"
    );
    assert_eq!(tally.errors, 0, "{tally:?}");
}

/// A sidecar SIGKILLed while holding most of the limit: its share lapses in
/// the store and the survivors take all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecars_share_goes_to_the_survivors() {
    let _turn = LOAD_TURN.lock().await;
    let redis = RedisServer::start().await;
    let deps = [(DEP, FLEET_LIMIT, FALLBACK)];
    let mut fleet = start_fleet(&redis_line(&redis), &deps).await;
    let oracle = Oracle::new();
    let mut load = Load::new();
    load.spawn(&fleet[0].gov, DEP, 12, Ask::Queue, &oracle)
        .await;
    load.spawn(&fleet[1].gov, DEP, 1, Ask::Queue, &oracle).await;
    load.spawn(&fleet[2].gov, DEP, 1, Ask::Queue, &oracle).await;
    let mut all: Vec<&mut Sidecar> = fleet.iter_mut().collect();
    let (big, _) = until_fleet(&mut all, DEP, "A holding a big share", SETTLE, |f| {
        settled(3, FLEET_LIMIT)(f) && f[0].share >= 8
    })
    .await;

    fleet[0].gov.signal(Signal::SIGKILL);
    let killed = Instant::now();
    let within = SHARE_TTL + Duration::from_secs(1);
    let (survivors, at) = until_fleet(
        &mut fleet.iter_mut().skip(1).collect::<Vec<_>>(),
        DEP,
        "the survivors' shares summing to the limit, 2 instances",
        within,
        |f| sum_share(f) == FLEET_LIMIT && f.iter().all(|f| f.instances == 2),
    )
    .await;
    let tally = load.finish().await;
    let most = oracle.most();
    eprintln!(
        "fleet: A killed holding {}; survivors after {:?}: {}; most held {most}",
        big[0].share,
        at - killed,
        brief(&survivors)
    );
    assert!(most <= FLEET_LIMIT, "{most} held at once > {FLEET_LIMIT}");
    assert!(all_share(&survivors), "{}", brief(&survivors));
    // Only the killed sidecar's callers saw errors.
    assert!(tally.errors > 0, "{tally:?}");
}

/// Redis Cluster: two fleet dependencies whose keys live on different
/// nodes, each held to its own fleet limit and used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_holds_two_dependencies_on_different_nodes() {
    let _turn = LOAD_TURN.lock().await;
    let cluster = RedisCluster::start().await;
    let first = DEP;
    let first_node = cluster.node_of(&format!("governor:{{{first}}}")).await;
    let mut second = None;
    for name in [
        "ledger", "search", "orders", "users", "mail", "geo", "auth", "cart",
    ] {
        let node = cluster.node_of(&format!("governor:{{{name}}}")).await;
        if node != first_node {
            second = Some((name, node));
            break;
        }
    }
    let (second, second_node) = second.expect("a name whose key is on another node");
    let limits = [(first, FLEET_LIMIT, FALLBACK), (second, 8, FALLBACK)];
    let urls = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut fleet = start_fleet(&format!("redis_cluster = [{urls}]"), &limits).await;

    let oracles = [Oracle::new(), Oracle::new()];
    let mut load = Load::new();
    for sidecar in &fleet {
        for ((name, _, _), oracle) in limits.iter().zip(&oracles) {
            load.spawn(&sidecar.gov, name, 8, Ask::Queue, oracle).await;
        }
    }
    let mut all: Vec<&mut Sidecar> = fleet.iter_mut().collect();
    for (name, limit, _) in limits {
        until_fleet(&mut all, name, "settled", SETTLE, settled(3, limit)).await;
    }
    let used = use_over(
        &mut all,
        &[(first, &oracles[0]), (second, &oracles[1])],
        Duration::from_secs(4),
    )
    .await;
    let tally = load.finish().await;
    for ((name, _, _), node) in limits.iter().zip([first_node, second_node]) {
        let key = format!("governor:{{{name}}}");
        let exists = governor_integration_tests::redis::cli(node, &["exists", &key]).await;
        assert_eq!(exists.as_deref(), Some("1\n"), "{key} not on node {node}");
    }
    eprintln!(
        "fleet: cluster: {first} on {first_node}, {second} on {second_node}; {used:?}, most \
         {:?}; granted {}",
        [oracles[0].most(), oracles[1].most()],
        tally.granted
    );
    for (((name, limit, _), oracle), used) in limits.iter().zip(&oracles).zip(&used) {
        let average = used.in_flight;
        assert!(
            oracle.most() <= *limit,
            "{name}: {} held at once > {limit}",
            oracle.most()
        );
        assert!(
            average >= 0.9 * f64::from(*limit),
            "{name}: {average:.2} in flight on average < 90 % of {limit}"
        );
    }
    assert_eq!(tally.errors, 0, "{tally:?}");
}

/// Config errors exit 64 naming the key; the valid base config passes.
#[tokio::test]
async fn fleet_config_errors_exit_64_naming_the_key() {
    const STORE: &str = "[fleet]\nredis = \"redis://127.0.0.1:6379\"\nshare_ttl = \"2s\"\n";
    const DEPENDENCY: &str = "[dependencies.payments]\nmax_concurrency = 64\n\
                              [dependencies.payments.fleet]\nmax_concurrency = 12\nfallback_share = 2\n";
    let (code, stderr) = check_config(&format!("{STORE}{DEPENDENCY}")).await;
    assert_eq!(code, Some(0), "the base config is valid: {stderr}");

    let cases = [
        (
            "a fleet limit without [fleet]",
            DEPENDENCY.to_owned(),
            "dependencies.payments.fleet",
        ),
        (
            "both redis and redis_cluster",
            format!("{STORE}redis_cluster = [\"redis://127.0.0.1:7000\"]\n{DEPENDENCY}"),
            "fleet",
        ),
        (
            "fallback_share > max_concurrency",
            DEPENDENCY.replace("fallback_share = 2", "fallback_share = 13") + STORE,
            "dependencies.payments.fleet.fallback_share",
        ),
        (
            "fleet under [defaults]",
            format!("{STORE}[defaults.fleet]\nmax_concurrency = 12\nfallback_share = 2\n"),
            "defaults.fleet",
        ),
        (
            "safety_margin >= share_ttl / 2",
            format!("{STORE}safety_margin = \"1s\"\n{DEPENDENCY}"),
            "fleet.safety_margin",
        ),
    ];
    for (what, toml, key) in cases {
        let (code, stderr) = check_config(&toml).await;
        assert_eq!(code, Some(64), "{what}: {stderr}\n{toml}");
        assert!(
            stderr.contains(&format!(": {key}: ")),
            "{what}: the error does not name {key}: {stderr}"
        );
    }
}

/// GetDependency's fleet fields and the /metrics series of a settled fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_status_and_metrics_are_visible() {
    let _turn = LOAD_TURN.lock().await;
    let redis = RedisServer::start().await;
    let deps = [(DEP, FLEET_LIMIT, FALLBACK)];
    let mut fleet = start_fleet(&redis_line(&redis), &deps).await;
    let mut all: Vec<&mut Sidecar> = fleet.iter_mut().collect();
    // Idle: what nobody wants is split equally, 4 each.
    until_fleet(&mut all, DEP, "settled, idle", SETTLE, |f| {
        settled(3, FLEET_LIMIT)(f) && f.iter().all(|f| f.share == 4)
    })
    .await;
    drop(all);

    let sidecar = &mut fleet[0];
    let status = sidecar.status(DEP).await;
    let f = status.fleet.clone().expect("fleet status");
    eprintln!("fleet: status {}", brief(std::slice::from_ref(&f)));
    assert_eq!(mode(&f), FleetMode::Share, "{f:#?}");
    assert_eq!(f.max_concurrency, FLEET_LIMIT, "{f:#?}");
    assert_eq!((f.share, f.target, f.enforced), (4, 4, 4), "{f:#?}");
    assert_eq!(f.fallback_share, FALLBACK, "{f:#?}");
    assert_eq!(f.instances, 3, "{f:#?}");
    assert!(f.store_calls_total > 0, "{f:#?}");
    assert_eq!(f.store_errors_total, 0, "{f:#?}");
    assert!(f.last_error.is_empty(), "{f:#?}");
    let valid_for = duration(&f.valid_for).expect("valid_for while sharing");
    assert!(
        valid_for > Duration::ZERO && valid_for <= SHARE_TTL,
        "{valid_for:?}"
    );
    assert!(duration(&f.store_latency).is_some(), "{f:#?}");
    assert!(
        duration(&f.learning_left).is_none_or(|d| d.is_zero()),
        "{f:#?}"
    );
    assert_eq!(status.limit, 4, "the enforced limit is min(64, 4)");
    assert_eq!(
        status.fleet_limits,
        Some(FleetLimits {
            max_concurrency: FLEET_LIMIT,
            fallback_share: FALLBACK,
        })
    );

    let metrics = admin_get(
        sidecar.gov.admin_addr().expect("admin listener"),
        "/metrics",
    )
    .await;
    let dep = format!("dependency=\"{DEP}\"");
    let one = |name: &str| {
        series(&metrics, &format!("{name}{{{dep}}}"))
            .unwrap_or_else(|| panic!("no {name}{{{dep}}} in\n{metrics}"))
    };
    let of_mode = |m: &str| {
        series(
            &metrics,
            &format!("governor_fleet_mode{{{dep},mode=\"{m}\"}}"),
        )
        .unwrap_or_else(|| panic!("no governor_fleet_mode {m} in\n{metrics}"))
    };
    assert_eq!(one("governor_fleet_share"), 4.0);
    assert_eq!(one("governor_fleet_limit"), f64::from(FLEET_LIMIT));
    assert_eq!(one("governor_fleet_enforced"), 4.0);
    assert_eq!(one("governor_fleet_instances"), 3.0);
    assert!(one("governor_fleet_store_calls_total") > 0.0);
    assert_eq!(of_mode("share"), 1.0);
    for other in ["starting", "learning", "fallback"] {
        assert_eq!(of_mode(other), 0.0, "mode {other}");
    }
    assert!(
        metrics.contains("governor_fleet_store_seconds_bucket{"),
        "no store latency histogram:\n{metrics}"
    );
}
