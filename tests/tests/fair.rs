//! Weighted fair shares between tenants (and a tenant's routes) against the
//! real binary over real gRPC: a noisy neighbour that cannot starve a
//! tenant within its share (and what the same load does without fair
//! shares), weighted shares under a backlog, routes sharing their tenant's
//! part, a full queue displacing the most loaded tenant's newest waiter,
//! the control plane, the named tenants' series on /metrics, the route's
//! validation, config errors that exit 64 naming the key, and the tenant
//! and route on backpressure logs.
//!
//! The load tests loop callers that hold each permit for a fixed time (the
//! test's own sleep stands in for the downstream call) and retry at once
//! after a rejection; a client-side oracle counts the permits the callers
//! hold (from the grant's answer to the release's request, so never more
//! than the sidecar counts) and must never see more than the limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use governor_integration_tests::{
    GovernorProcess, admin_get as get, check_config, release, series,
};
use rate_governor_proto::v1::{
    AcquireRequest, AcquireResponse, DependencyLimits, DependencyStatus, FairBy, Fairness,
    GetDependencyRequest, RejectReason, RouteStatus, SessionRequest, TenantStatus,
    UpdateDependencyRequest, governor_admin_client::GovernorAdminClient,
    governor_client::GovernorClient, session_request::Op, session_response::Result as Answer,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const DEP: &str = "payments";

fn ask(tenant: &str, route: &str, max_wait: Option<Duration>) -> AcquireRequest {
    AcquireRequest {
        dependency: DEP.into(),
        tenant: tenant.into(),
        route: route.into(),
        max_wait: max_wait.map(|w| w.try_into().unwrap()),
        ..Default::default()
    }
}

async fn acquire(
    client: &mut GovernorClient<Channel>,
    tenant: &str,
    route: &str,
    max_wait: Option<Duration>,
) -> AcquireResponse {
    client
        .acquire(ask(tenant, route, max_wait))
        .await
        .expect("Acquire answers")
        .into_inner()
}

fn duration(d: &Option<prost_types::Duration>) -> Duration {
    d.map(|d| Duration::try_from(d).unwrap())
        .unwrap_or_default()
}

async fn status(admin: &mut GovernorAdminClient<Channel>) -> DependencyStatus {
    admin
        .get_dependency(GetDependencyRequest { name: DEP.into() })
        .await
        .expect("GetDependency answers")
        .into_inner()
}

/// Polls the control plane until `done` holds (the event the test waits
/// for), at most 10 s.
async fn until(
    admin: &mut GovernorAdminClient<Channel>,
    what: &str,
    done: impl Fn(&DependencyStatus) -> bool,
) -> DependencyStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = status(admin).await;
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "never {what}: {now:#?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A tenant in a status (not the overflow entry).
fn tenant<'a>(status: &'a DependencyStatus, name: &str) -> Option<&'a TenantStatus> {
    status
        .tenants
        .iter()
        .find(|t| t.tenant == name && !t.overflow)
}

fn route<'a>(tenant: &'a TenantStatus, name: &str) -> Option<&'a RouteStatus> {
    tenant.routes.iter().find(|r| r.route == name)
}

fn queued_of(status: &DependencyStatus, name: &str) -> u32 {
    tenant(status, name).map_or(0, |t| t.queued)
}

fn update(fairness: Fairness) -> UpdateDependencyRequest {
    UpdateDependencyRequest {
        name: DEP.into(),
        limits: Some(DependencyLimits {
            fairness: Some(fairness),
            ..Default::default()
        }),
    }
}

fn fairness(by: FairBy, weights: &[(&str, u32)]) -> Fairness {
    Fairness {
        by: by.into(),
        weights: weights.iter().map(|&(t, w)| (t.to_owned(), w)).collect(),
        ..Default::default()
    }
}

/// Counts the permits the callers hold, and the most ever held at once.
#[derive(Debug, Default)]
struct Oracle {
    held: AtomicU32,
    most: AtomicU32,
}

impl Oracle {
    fn take(&self) {
        let now = self.held.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }

    fn give(&self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
    }

    fn most(&self) -> u32 {
        self.most.load(Ordering::SeqCst)
    }
}

/// What a group of callers saw.
#[derive(Debug, Default)]
struct Tally {
    granted: u64,
    /// Rejections by reason.
    rejected: BTreeMap<&'static str, u64>,
    /// The sidecar's queue_wait of each grant.
    waits: Vec<Duration>,
    /// From the ask to the grant's answer, as the caller saw it.
    latencies: Vec<Duration>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.granted += other.granted;
        for (reason, n) in other.rejected {
            *self.rejected.entry(reason).or_default() += n;
        }
        self.waits.extend(other.waits);
        self.latencies.extend(other.latencies);
    }

    fn rejections(&self) -> u64 {
        self.rejected.values().sum()
    }

    fn p99_wait(&self) -> Duration {
        p99(&self.waits)
    }

    fn p99_latency(&self) -> Duration {
        p99(&self.latencies)
    }
}

fn p99(samples: &[Duration]) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

/// Callers looping on Acquire (the dependency's own max wait), each holding
/// a granted permit for `hold` and retrying at once after a rejection.
struct Load {
    stop: Arc<AtomicBool>,
    oracle: Arc<Oracle>,
    callers: Vec<((String, String), JoinHandle<Tally>)>,
}

impl Load {
    fn new() -> Load {
        Load {
            stop: Arc::new(AtomicBool::new(false)),
            oracle: Arc::new(Oracle::default()),
            callers: Vec::new(),
        }
    }

    /// `n` callers of `tenant` on `route`, spread over `channels`.
    fn spawn(
        &mut self,
        channels: &[GovernorClient<Channel>],
        tenant: &str,
        route: &str,
        n: usize,
        hold: Duration,
    ) {
        for i in 0..n {
            let mut client = channels[i % channels.len()].clone();
            let (stop, oracle) = (self.stop.clone(), self.oracle.clone());
            let (tenant, route) = (tenant.to_owned(), route.to_owned());
            let task = tokio::spawn({
                let (tenant, route) = (tenant.clone(), route.clone());
                async move {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::SeqCst) {
                        let asked = Instant::now();
                        let answer = acquire(&mut client, &tenant, &route, None).await;
                        if answer.granted {
                            oracle.take();
                            tally.latencies.push(asked.elapsed());
                            tally.waits.push(duration(&answer.queue_wait));
                            tally.granted += 1;
                            tokio::time::sleep(hold).await;
                            oracle.give();
                            release(&mut client, &answer.lease_id).await;
                        } else {
                            *tally
                                .rejected
                                .entry(answer.reason().as_str_name())
                                .or_default() += 1;
                        }
                    }
                    tally
                }
            });
            self.callers.push(((tenant, route), task));
        }
    }

    /// Stops the callers (each finishes the acquire it has asked) and
    /// returns what each tenant and route saw, and the most permits held
    /// at once.
    async fn finish(self) -> (HashMap<(String, String), Tally>, u32) {
        self.stop.store(true, Ordering::SeqCst);
        let mut tallies: HashMap<(String, String), Tally> = HashMap::new();
        for (who, task) in self.callers {
            let tally = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("a caller stops within 10 s")
                .expect("a caller does not panic");
            tallies.entry(who).or_default().merge(tally);
        }
        (tallies, self.oracle.most())
    }
}

/// The load tests take turns: on a small machine, two of them at once
/// would measure each other's CPU use more than the sidecar's shares.
static LOAD_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn channels(gov: &GovernorProcess, n: usize) -> Vec<GovernorClient<Channel>> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(gov.governor_client().await);
    }
    clients
}

/// A queue nearly as long as the noisy callers: the few it leaves out spin
/// on QUEUE_FULL (and the displaced ones on SHED), enough to overflow it
/// all the time without the spinning taking a small machine's CPU.
const NEIGHBOURS: &str = r#"
[dependencies.payments]
max_concurrency = 4
max_queue = 94
max_wait = "2s"
[dependencies.payments.fairness]
by = "tenant"
"#;

const HOLD: Duration = Duration::from_millis(20);

/// 100 noisy callers (about 50 times their share of 2 permits) and 2
/// victim callers (within their share of 2) for `run`.
async fn neighbours(gov: &GovernorProcess, run: Duration) -> (Tally, Tally, u32) {
    let noisy_channels = channels(gov, 4).await;
    let victim_channel = channels(gov, 1).await;
    let mut load = Load::new();
    load.spawn(&noisy_channels, "noisy", "", 100, HOLD);
    // The noisy tenant fills the queue first.
    let mut admin = gov.admin_client().await;
    until(&mut admin, "a full queue", |s| s.queued == s.max_queue).await;
    load.spawn(&victim_channel, "victim", "", 2, HOLD);
    tokio::time::sleep(run).await;
    let (mut tallies, most) = load.finish().await;
    let victim = tallies
        .remove(&("victim".to_owned(), String::new()))
        .unwrap();
    let noisy = tallies
        .remove(&("noisy".to_owned(), String::new()))
        .unwrap();
    let idle = status(&mut admin).await;
    assert_eq!((idle.in_flight, idle.queued), (0, 0), "{idle:#?}");
    (victim, noisy, most)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_neighbour_cannot_starve_a_tenant_within_its_share() {
    let _turn = LOAD_TURN.lock().await;
    let gov = GovernorProcess::start(NEIGHBOURS).await;
    let mut admin = gov.admin_client().await;
    let run = Duration::from_secs(3);

    let (victim, noisy, most) = neighbours(&gov, run).await;
    eprintln!(
        "fair: victim granted {} rejected {:?} wait p99 {:?} (caller-side {:?}); \
         noisy granted {} rejected {:?}; most held {most}",
        victim.granted,
        victim.rejected,
        victim.p99_wait(),
        victim.p99_latency(),
        noisy.granted,
        noisy.rejected,
    );
    assert!(most <= 4, "{most} permits held at once, limit 4");
    // The noisy tenant did overload the dependency: it was turned away.
    assert!(noisy.rejections() > 0, "{:?}", noisy.rejected);
    assert_eq!(victim.rejections(), 0, "{:?}", victim.rejected);
    // Two callers, each cycle a hold and a short wait: well over a hundred
    // grants in three seconds.
    assert!(victim.granted >= 100, "{} grants", victim.granted);
    // The wait the sidecar measured (the caller-side time, printed above,
    // adds the RPCs on a CPU the spinning callers keep busy).
    assert!(
        victim.p99_wait() <= 5 * HOLD,
        "the victim's wait p99 is {:?}",
        victim.p99_wait()
    );
    // The sidecar's own counts agree with the callers'.
    let after = status(&mut admin).await;
    let shown = tenant(&after, "victim").expect("the victim is listed");
    assert_eq!(
        (shown.granted_total, shown.rejected_total),
        (victim.granted, 0),
        "{shown:?}"
    );
    let shown = tenant(&after, "noisy").expect("the noisy tenant is listed");
    assert_eq!(
        (shown.granted_total, shown.rejected_total),
        (noisy.granted, noisy.rejections()),
        "{shown:?}"
    );

    // The same load without fair shares: one queue, first come first
    // served, and the noisy tenant fills it.
    let off = admin
        .update_dependency(update(fairness(FairBy::None, &[])))
        .await
        .expect("UpdateDependency answers")
        .into_inner();
    assert_eq!(off.fairness, None);
    let (unfair, _, most) = neighbours(&gov, run).await;
    eprintln!(
        "unfair: victim granted {} rejected {:?} wait p99 {:?} (caller-side {:?}); most held {most}",
        unfair.granted,
        unfair.rejected,
        unfair.p99_wait(),
        unfair.p99_latency(),
    );
    assert!(most <= 4, "{most} permits held at once, limit 4");
    assert!(
        unfair.rejections() > 0 || unfair.p99_wait() > victim.p99_wait(),
        "without fair shares the victim fared no worse: {:?} rejected, wait p99 {:?} \
         (with them: {:?})",
        unfair.rejected,
        unfair.p99_wait(),
        victim.p99_wait()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogged_tenants_hold_permits_in_proportion_to_their_weights() {
    let _turn = LOAD_TURN.lock().await;
    let gov = GovernorProcess::start(
        r#"
[dependencies.payments]
max_concurrency = 8
max_queue = 64
max_wait = "2s"
[dependencies.payments.fairness]
by = "tenant"
weights = { gold = 3, bronze = 1 }
"#,
    )
    .await;
    let mut admin = gov.admin_client().await;
    let hold = Duration::from_millis(10);
    let clients = channels(&gov, 2).await;
    let mut load = Load::new();
    load.spawn(&clients, "gold", "", 20, hold);
    load.spawn(&clients, "bronze", "", 20, hold);
    until(&mut admin, "both tenants backlogged", |s| {
        queued_of(s, "gold") > 0 && queued_of(s, "bronze") > 0
    })
    .await;

    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        tick.tick().await;
        let now = status(&mut admin).await;
        let gold = tenant(&now, "gold").expect("named: always listed").clone();
        let bronze = tenant(&now, "bronze")
            .expect("named: always listed")
            .clone();
        // Both ask for more than their share: the shares are 6 and 2.
        if gold.in_flight + gold.queued >= 6 && bronze.in_flight + bronze.queued >= 2 {
            assert!(
                (gold.share - 6.0).abs() < 1e-9 && (bronze.share - 2.0).abs() < 1e-9,
                "shares {} and {}: {now:#?}",
                gold.share,
                bronze.share
            );
        }
        samples.push((gold.in_flight, bronze.in_flight));
    }
    let (tallies, most) = load.finish().await;

    let n = samples.len() as f64;
    let gold = samples.iter().map(|s| f64::from(s.0)).sum::<f64>() / n;
    let bronze = samples.iter().map(|s| f64::from(s.1)).sum::<f64>() / n;
    eprintln!(
        "{} samples: gold {gold:.3} bronze {bronze:.3} in flight on average; most held {most}",
        samples.len()
    );
    assert!(samples.len() >= 100, "{} samples", samples.len());
    assert!(most <= 8, "{most} permits held at once, limit 8");
    assert!((gold - 6.0).abs() <= 0.3, "gold holds {gold:.3} on average");
    assert!(
        (bronze - 2.0).abs() <= 0.1,
        "bronze holds {bronze:.3} on average"
    );
    for ((tenant, _), tally) in &tallies {
        assert_eq!(tally.rejections(), 0, "{tenant}: {:?}", tally.rejected);
    }
    // Equal holds: grants in the same proportion.
    let gold = tallies[&("gold".to_owned(), String::new())].granted as f64;
    let bronze = tallies[&("bronze".to_owned(), String::new())].granted as f64;
    let ratio = gold / bronze;
    eprintln!("grants: gold {gold} bronze {bronze} ratio {ratio:.3}");
    assert!((ratio - 3.0).abs() <= 0.3, "gold/bronze grants {ratio:.3}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_routes_share_its_part_equally() {
    let _turn = LOAD_TURN.lock().await;
    let gov = GovernorProcess::start(
        r#"
[dependencies.payments]
max_concurrency = 4
max_queue = 64
max_wait = "2s"
[dependencies.payments.fairness]
by = "tenant_route"
"#,
    )
    .await;
    let mut admin = gov.admin_client().await;
    let hold = Duration::from_millis(10);
    let flood_channels = channels(&gov, 2).await;
    let light_channel = channels(&gov, 1).await;
    let mut load = Load::new();
    // One tenant: a route flooding with 30 callers, the light one asking
    // for four permits at most. Their tenant has the whole limit, 2 each.
    load.spawn(&flood_channels, "acme", "flood", 30, hold);
    load.spawn(&light_channel, "acme", "light", 4, hold);
    until(&mut admin, "both routes backlogged", |s| {
        tenant(s, "acme").is_some_and(|t| {
            route(t, "flood").is_some_and(|r| r.queued > 0)
                && route(t, "light").is_some_and(|r| r.queued > 0)
        })
    })
    .await;

    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        tick.tick().await;
        let now = status(&mut admin).await;
        let acme = tenant(&now, "acme").expect("a busy tenant is listed");
        assert!(
            acme.routes
                .iter()
                .all(|r| r.route == "flood" || r.route == "light"),
            "{acme:#?}"
        );
        let flood = route(acme, "flood").expect("the flood has waiters").clone();
        let light = route(acme, "light").cloned().unwrap_or_default();
        let light_load = f64::from(light.in_flight + light.queued);
        assert!(
            (light.share - light_load.min(2.0)).abs() < 1e-9
                && (flood.share + light.share - acme.share).abs() < 1e-9
                && (acme.share - 4.0).abs() < 1e-9,
            "{acme:#?}"
        );
        samples.push((flood.in_flight, light.in_flight));
    }
    let (mut tallies, most) = load.finish().await;
    let light = tallies
        .remove(&("acme".to_owned(), "light".to_owned()))
        .unwrap();
    let flood = tallies
        .remove(&("acme".to_owned(), "flood".to_owned()))
        .unwrap();

    let n = samples.len() as f64;
    let flood_held = samples.iter().map(|s| f64::from(s.0)).sum::<f64>() / n;
    let light_held = samples.iter().map(|s| f64::from(s.1)).sum::<f64>() / n;
    eprintln!(
        "{} samples: flood {flood_held:.3} light {light_held:.3} in flight on average; \
         grants flood {} light {}; light wait p99 {:?} (caller-side {:?}); most held {most}",
        samples.len(),
        flood.granted,
        light.granted,
        light.p99_wait(),
        light.p99_latency(),
    );
    assert!(most <= 4, "{most} permits held at once, limit 4");
    assert!(
        (light_held - 2.0).abs() <= 0.1,
        "the light route holds {light_held:.3} on average"
    );
    assert!(
        (flood_held - 2.0).abs() <= 0.1,
        "the flood holds {flood_held:.3} on average"
    );
    assert_eq!(light.rejections(), 0, "{:?}", light.rejected);
    assert_eq!(flood.rejections(), 0, "{:?}", flood.rejected);
    // Half the grants went to four callers of thirty-four.
    let ratio = light.granted as f64 / flood.granted as f64;
    assert!((ratio - 1.0).abs() <= 0.2, "light/flood grants {ratio:.3}");
    // A light caller waits for one of its route's two permits: about a
    // hold, never many.
    assert!(
        light.p99_wait() <= 5 * hold,
        "the light route's wait p99 is {:?}",
        light.p99_wait()
    );
    // The routes' counts agree with the callers' (routes stay while they
    // have a permit or a waiter: read them before the last ones go).
    let idle = status(&mut admin).await;
    assert_eq!((idle.in_flight, idle.queued), (0, 0), "{idle:#?}");
    let acme = tenant(&idle, "acme").expect("listed");
    assert_eq!(acme.granted_total, light.granted + flood.granted);
}

#[tokio::test]
async fn a_full_queue_displaces_the_newest_waiter_of_the_tenant_most_over_its_share() {
    let gov = GovernorProcess::start(
        r#"
[dependencies.payments]
max_concurrency = 1
max_queue = 3
max_wait = "30s"
[dependencies.payments.fairness]
by = "tenant"
"#,
    )
    .await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let waiting = |client: &GovernorClient<Channel>, tenant: &'static str| {
        let mut client = client.clone();
        tokio::spawn(async move { acquire(&mut client, tenant, "", None).await })
    };

    let holder = acquire(&mut client, "noisy", "", None).await;
    assert!(holder.granted, "{holder:?}");
    // Three noisy waiters, in this order.
    let mut noisy = Vec::new();
    for n in 1..=3 {
        noisy.push(waiting(&client, "noisy"));
        until(&mut admin, "the noisy waiter queued", |s| s.queued == n).await;
    }

    // The queue is full; quiet's arrival displaces the newest noisy waiter
    // (noisy: 4 in flight and queued; quiet would have 1).
    let quiet = waiting(&client, "quiet");
    let shed = tokio::time::timeout(Duration::from_secs(10), noisy.pop().unwrap())
        .await
        .expect("the newest noisy waiter is answered")
        .unwrap();
    assert!(!shed.granted, "{shed:?}");
    assert_eq!(shed.reason(), RejectReason::Shed, "{shed:?}");
    let now = until(&mut admin, "quiet queued", |s| queued_of(s, "quiet") == 1).await;
    assert_eq!(
        (now.queued, queued_of(&now, "noisy"), now.in_flight),
        (3, 2, 1),
        "{now:#?}"
    );
    assert!(noisy.iter().all(|w| !w.is_finished()));

    // Noisy again: it would displace only itself, so the queue is full.
    let full = acquire(&mut client, "noisy", "", None).await;
    assert!(!full.granted, "{full:?}");
    assert_eq!(full.reason(), RejectReason::QueueFull, "{full:?}");

    // The permit goes to quiet (none in flight, and served longest ago),
    // then to the noisy waiters in their order.
    release(&mut client, &holder.lease_id).await;
    let quiet = tokio::time::timeout(Duration::from_secs(10), quiet)
        .await
        .expect("quiet is granted")
        .unwrap();
    assert!(quiet.granted, "{quiet:?}");
    assert!(duration(&quiet.queue_wait) > Duration::ZERO, "{quiet:?}");
    let now = status(&mut admin).await;
    assert_eq!((now.queued, now.in_flight), (2, 1), "{now:#?}");
    assert!(noisy.iter().all(|w| !w.is_finished()));
    let mut lease = quiet.lease_id;
    let mut noisy = noisy.into_iter();
    let (first, second) = (noisy.next().unwrap(), noisy.next().unwrap());
    release(&mut client, &lease).await;
    let granted = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the first noisy waiter is granted")
        .unwrap();
    assert!(granted.granted, "{granted:?}");
    assert!(!second.is_finished());
    lease = granted.lease_id;
    release(&mut client, &lease).await;
    let granted = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second noisy waiter is granted")
        .unwrap();
    assert!(granted.granted, "{granted:?}");
    release(&mut client, &granted.lease_id).await;

    let after = status(&mut admin).await;
    let noisy = tenant(&after, "noisy").expect("listed");
    assert_eq!(
        (noisy.granted_total, noisy.rejected_total),
        (3, 2),
        "{noisy:?}"
    );
    let quiet = tenant(&after, "quiet").expect("listed");
    assert_eq!(
        (quiet.granted_total, quiet.rejected_total),
        (1, 0),
        "{quiet:?}"
    );
    assert_eq!((after.in_flight, after.queued), (0, 0), "{after:#?}");
}

#[tokio::test]
async fn the_control_plane_sets_shows_and_removes_fair_shares() {
    let gov = GovernorProcess::start(
        "[dependencies.payments]\nmax_concurrency = 8\nmax_queue = 8\nmax_wait = \"2s\"\n",
    )
    .await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let metrics_addr = gov.admin_addr().expect("an admin listener");
    let plain = status(&mut admin).await;
    assert_eq!(plain.fairness, None);
    assert!(plain.tenants.is_empty(), "{plain:#?}");
    assert_eq!(plain.tenants_tracked, 0);

    // Set, read back from the answer and from GetDependency.
    let wanted = Fairness {
        by: FairBy::Tenant.into(),
        weights: [("gold".to_owned(), 3), ("bronze".to_owned(), 1)].into(),
        default_weight: 2,
        max_tenants: 50,
    };
    let set = admin
        .update_dependency(update(wanted.clone()))
        .await
        .expect("UpdateDependency answers")
        .into_inner();
    assert_eq!(set.fairness.as_ref(), Some(&wanted));
    let shown = status(&mut admin).await;
    assert_eq!(shown.fairness.as_ref(), Some(&wanted));
    // The named tenants are tracked and listed before anyone asks.
    for (name, weight) in [("gold", 3), ("bronze", 1)] {
        let t = tenant(&shown, name).unwrap_or_else(|| panic!("{name} listed: {shown:#?}"));
        assert!(t.named && !t.overflow, "{t:?}");
        assert_eq!((t.weight, t.in_flight, t.queued), (weight, 0, 0), "{t:?}");
    }
    assert_eq!(shown.tenants_tracked, 2);
    // Another field leaves it as it is.
    let kept = admin
        .update_dependency(UpdateDependencyRequest {
            name: DEP.into(),
            limits: Some(DependencyLimits {
                max_queue: Some(16),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.fairness.as_ref(), Some(&wanted));

    // A named tenant's permit, and an unnamed one's.
    let gold = acquire(&mut client, "gold", "", None).await;
    assert!(gold.granted, "{gold:?}");
    let stranger = acquire(&mut client, "stranger", "", None).await;
    assert!(stranger.granted, "{stranger:?}");
    let busy = status(&mut admin).await;
    let t = tenant(&busy, "stranger").expect("a busy unnamed tenant is listed");
    assert!(!t.named, "{t:?}");
    assert_eq!((t.weight, t.in_flight, t.share), (2, 1, 1.0), "{t:?}");
    assert_eq!(busy.tenants_tracked, 3);
    let metrics = get(metrics_addr, "/metrics").await;
    let labels = |tenant: &str| format!("{{dependency=\"{DEP}\",tenant=\"{tenant}\"}}");
    for (name, value) in [
        ("governor_tenant_in_flight", 1.0),
        ("governor_tenant_queued", 0.0),
        ("governor_tenant_share", 1.0),
        ("governor_tenant_granted_total", 1.0),
        ("governor_tenant_rejected_total", 0.0),
    ] {
        let got = series(&metrics, &format!("{name}{}", labels("gold")));
        assert_eq!(got, Some(value), "{name} of gold in\n{metrics}");
    }
    assert_eq!(
        series(
            &metrics,
            &format!("governor_tenant_in_flight{}", labels("bronze"))
        ),
        Some(0.0),
        "a named tenant has its series while idle:\n{metrics}"
    );
    assert!(
        !metrics.contains("tenant=\"stranger\""),
        "an unnamed tenant has no series:\n{metrics}"
    );

    // Bad values name their field and change nothing.
    let long = "t".repeat(129);
    for (bad, field) in [
        (
            fairness(FairBy::Tenant, &[("x", 0)]),
            "limits.fairness.weights",
        ),
        (
            fairness(FairBy::Tenant, &[("x", 1001)]),
            "limits.fairness.weights",
        ),
        (
            fairness(FairBy::Tenant, &[(long.as_str(), 1)]),
            "limits.fairness.weights",
        ),
        (
            Fairness {
                max_tenants: 1,
                ..fairness(FairBy::Tenant, &[("a", 1), ("b", 1)])
            },
            "limits.fairness.weights",
        ),
        (
            Fairness {
                max_tenants: 100_001,
                ..fairness(FairBy::Tenant, &[])
            },
            "limits.fairness.max_tenants",
        ),
        (
            Fairness {
                default_weight: 1001,
                ..fairness(FairBy::Tenant, &[])
            },
            "limits.fairness.default_weight",
        ),
        (
            Fairness {
                by: 9,
                ..Default::default()
            },
            "limits.fairness.by",
        ),
    ] {
        let refused = admin.update_dependency(update(bad)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().starts_with(field), "{field}: {refused:?}");
    }
    assert_eq!(status(&mut admin).await.fairness.as_ref(), Some(&wanted));

    // Replaced whole, zeros taking the defaults and UNSPECIFIED meaning
    // TENANT: bronze is no longer named and loses its series; gold keeps
    // its permit.
    let replaced = admin
        .update_dependency(update(fairness(FairBy::Unspecified, &[("gold", 2)])))
        .await
        .unwrap()
        .into_inner();
    let expected = Fairness {
        by: FairBy::Tenant.into(),
        weights: [("gold".to_owned(), 2)].into(),
        default_weight: 1,
        max_tenants: 1024,
    };
    assert_eq!(replaced.fairness.as_ref(), Some(&expected));
    let t = tenant(&replaced, "gold").expect("listed");
    assert_eq!((t.weight, t.in_flight), (2, 1), "{t:?}");
    let metrics = get(metrics_addr, "/metrics").await;
    assert_eq!(
        series(
            &metrics,
            &format!("governor_tenant_in_flight{}", labels("gold"))
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        !metrics.contains("tenant=\"bronze\""),
        "bronze is no longer named:\n{metrics}"
    );

    // NONE removes them, and the tenants' series with them.
    let removed = admin
        .update_dependency(update(fairness(FairBy::None, &[])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.fairness, None);
    assert!(removed.tenants.is_empty(), "{removed:#?}");
    assert_eq!(removed.tenants_tracked, 0);
    let metrics = get(metrics_addr, "/metrics").await;
    assert!(
        !metrics.contains("governor_tenant_in_flight{"),
        "no fair shares, no tenant series:\n{metrics}"
    );
    // The permits taken under them are given back as usual.
    release(&mut client, &gold.lease_id).await;
    release(&mut client, &stranger.lease_id).await;
    let idle = status(&mut admin).await;
    assert_eq!((idle.in_flight, idle.queued), (0, 0), "{idle:#?}");
}

#[tokio::test]
async fn a_route_is_checked_like_a_tenant_on_both_paths() {
    let gov = GovernorProcess::start(
        "[dependencies.payments]\nmax_concurrency = 8\n\
         [dependencies.payments.fairness]\nby = \"tenant_route\"\n",
    )
    .await;
    let mut client = gov.governor_client().await;
    let longest = "r".repeat(128);
    let granted = acquire(&mut client, "acme", &longest, None).await;
    assert!(granted.granted, "a 128-byte route is fine: {granted:?}");
    let mut admin = gov.admin_client().await;
    let now = status(&mut admin).await;
    let acme = tenant(&now, "acme").expect("listed");
    assert_eq!(
        acme.routes
            .iter()
            .map(|r| r.route.as_str())
            .collect::<Vec<_>>(),
        [longest.as_str()]
    );
    release(&mut client, &granted.lease_id).await;

    let too_long = "r".repeat(129);
    for bad in [too_long.as_str(), "check\nout"] {
        let refused = client.acquire(ask("acme", bad, None)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().starts_with("route:"), "{refused:?}");
    }

    // The same over a Session: a SessionError, and the stream stays open.
    let (tx, outbound) = mpsc::channel(4);
    let mut answers = client
        .session(ReceiverStream::new(outbound))
        .await
        .expect("Session is served")
        .into_inner();
    let send = |id: u64, route: &str| SessionRequest {
        id,
        op: Some(Op::Acquire(ask("acme", route, None))),
    };
    tx.send(send(1, &too_long)).await.unwrap();
    let answer = answers.message().await.unwrap().expect("an answer");
    match answer.result {
        Some(Answer::Error(error)) => {
            assert_eq!(error.code, tonic::Code::InvalidArgument as i32, "{error:?}");
            assert!(error.message.starts_with("route:"), "{error:?}");
        }
        other => panic!("expected a SessionError, got {other:?}"),
    }
    tx.send(send(2, "checkout")).await.unwrap();
    let answer = answers.message().await.unwrap().expect("an answer");
    match answer.result {
        Some(Answer::Acquire(granted)) => assert!(granted.granted, "{granted:?}"),
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_fairness_settings_exit_64_naming_the_key() {
    let section = |body: &str| {
        format!(
            "[dependencies.payments]\nmax_concurrency = 8\n[dependencies.payments.fairness]\n{body}\n"
        )
    };
    for (toml, message) in [
        (
            section("by = \"tenant\"\nweights = { x = 0 }"),
            "dependencies.payments.fairness.weights: tenant \"x\": must be between 1 and 1000, got 0",
        ),
        (
            section("by = \"tenant\"\nweights = { x = 1001 }"),
            "dependencies.payments.fairness.weights: tenant \"x\": must be between 1 and 1000, got 1001",
        ),
        (
            section("by = \"tenant\"\nmax_tenants = 1\nweights = { a = 1, b = 2 }"),
            "dependencies.payments.fairness.weights: names 2 tenants, more than max_tenants (1)",
        ),
        (
            section("by = \"tenant\"\nmax_tenants = 0"),
            "dependencies.payments.fairness.max_tenants: must be between 1 and 100000, got 0",
        ),
        (
            section("by = \"tenant\"\ndefault_weight = 0"),
            "dependencies.payments.fairness.default_weight: must be between 1 and 1000, got 0",
        ),
        (
            "[defaults.fairness]\nby = \"tenant_route\"\nweights = { a = 0 }\n[dependencies.payments]\n"
                .to_owned(),
            "defaults.fairness.weights: tenant \"a\": must be between 1 and 1000, got 0",
        ),
        (
            section("by = \"everyone\""),
            "unknown variant `everyone`, expected one of `none`, `tenant`, `tenant_route`",
        ),
        (
            section("by = \"tenant\"\nweight = { x = 1 }"),
            "unknown field `weight`",
        ),
    ] {
        let (code, stderr) = check_config(&toml).await;
        assert_eq!(code, Some(64), "{toml}: {stderr}");
        assert!(stderr.contains(message), "{message:?} not in {stderr}");
        if toml.contains("everyone") {
            // serde's message, with the line it is about.
            assert!(stderr.contains("by = \"everyone\""), "{stderr}");
        }
    }
    // And a good one passes.
    let (code, stderr) = check_config(&section(
        "by = \"tenant\"\nweights = { checkout = 4, batch = 1 }\ndefault_weight = 1\nmax_tenants = 1024",
    ))
    .await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn backpressure_logs_name_the_tenant_and_route_of_the_request_turned_away() {
    // Two dependencies: one full line a second each.
    let gov = GovernorProcess::start_with_args(
        r#"
[dependencies.payments]
max_concurrency = 1
max_queue = 0
[dependencies.payments.fairness]
by = "tenant_route"

[dependencies.ledger]
max_concurrency = 1
max_queue = 1
max_wait = "30s"
[dependencies.ledger.fairness]
by = "tenant_route"
"#,
        &["--log-format", "json"],
    )
    .await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let on = |dependency: &str, tenant: &str, route: &str| AcquireRequest {
        dependency: dependency.into(),
        tenant: tenant.into(),
        route: route.into(),
        ..Default::default()
    };

    // payments: the queue is full for acme's checkout.
    let held = client
        .acquire(on(DEP, "someone", "else"))
        .await
        .unwrap()
        .into_inner();
    assert!(held.granted, "{held:?}");
    let full = client
        .acquire(on(DEP, "acme", "checkout"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(full.reason(), RejectReason::QueueFull, "{full:?}");

    // ledger: noisy's bulk waiter is displaced by quiet's arrival; the line
    // is about the request turned away.
    let held_ledger = client
        .acquire(on("ledger", "noisy", "bulk"))
        .await
        .unwrap()
        .into_inner();
    assert!(held_ledger.granted, "{held_ledger:?}");
    let waiter = {
        let mut client = client.clone();
        let request = on("ledger", "noisy", "bulk");
        tokio::spawn(async move { client.acquire(request).await.unwrap().into_inner() })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ledger = admin
            .get_dependency(GetDependencyRequest {
                name: "ledger".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if ledger.queued == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never queued: {ledger:#?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let quiet = {
        let mut client = client.clone();
        let request = on("ledger", "quiet", "ui");
        tokio::spawn(async move { client.acquire(request).await.unwrap().into_inner() })
    };
    let shed = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the noisy waiter is answered")
        .unwrap();
    assert_eq!(shed.reason(), RejectReason::Shed, "{shed:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let line = |dependency: &str, reason: &str| {
        gov.stderr_so_far()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|e| e["dependency"] == dependency && e["reason"] == reason)
    };
    let (full_line, shed_line) = loop {
        if let (Some(full), Some(shed)) = (line(DEP, "queue_full"), line("ledger", "shed")) {
            break (full, shed);
        }
        assert!(
            Instant::now() < deadline,
            "no backpressure lines:\n{}",
            gov.stderr_so_far()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(full_line["level"], "WARN", "{full_line}");
    assert_eq!(
        (&full_line["tenant"], &full_line["route"]),
        (&"acme".into(), &"checkout".into()),
        "{full_line}"
    );
    assert_eq!(shed_line["level"], "WARN", "{shed_line}");
    assert_eq!(
        (&shed_line["tenant"], &shed_line["route"]),
        (&"noisy".into(), &"bulk".into()),
        "{shed_line}"
    );

    release(&mut client, &held_ledger.lease_id).await;
    let quiet = tokio::time::timeout(Duration::from_secs(10), quiet)
        .await
        .expect("quiet is granted")
        .unwrap();
    assert!(quiet.granted, "{quiet:?}");
    release(&mut client, &quiet.lease_id).await;
    release(&mut client, &held.lease_id).await;
}
