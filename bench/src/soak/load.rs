//! The soak's mixed load: every way a caller can use (and misuse) the
//! sidecar, at a steady rate, so that whatever grows over the run grows
//! because something leaks and not because the load changed.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rate_governor_proto::v1::governor_admin_client::GovernorAdminClient;
use rate_governor_proto::v1::governor_client::GovernorClient;
use rate_governor_proto::v1::{
    AcquireRequest, AcquireResponse, DependencyLimits, ListDependenciesRequest, Outcome,
    RejectReason, ReleaseRequest, RenewRequest, UpdateDependencyRequest,
};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tonic::transport::Channel;

use crate::process::tcp_channel;

/// Acquire/release pairs, a few holders at a time.
pub const PAIRS: &str = "soak.pairs";
/// Two permits, kept busy by hogs: its waiters time out or are cancelled.
pub const TIGHT: &str = "soak.tight";
/// Leases taken and never released nor renewed.
pub const EXPIRE: &str = "soak.expire";
/// Leases renewed a few times, then released.
pub const RENEW: &str = "soak.renew";
/// Leases held by child processes that are SIGKILLed.
pub const KILLED: &str = "soak.killed";
/// Limits changed over the control plane while it is in use.
pub const ADMIN: &str = "soak.admin";

/// The configured dependencies (junk ones come and go).
pub const CONFIGURED: [&str; 6] = [PAIRS, TIGHT, EXPIRE, RENEW, KILLED, ADMIN];

/// Leases the expiring dependencies hand out, and how long the tight one's
/// waiters wait: short, so that the end of the run is reached soon.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
pub const TIGHT_MAX_WAIT: Duration = Duration::from_millis(50);
/// Permits each killed child holds.
pub const HOLDER_PERMITS: u32 = 3;

/// The sidecar's config for the soak.
pub fn config(idle_ttl: Duration) -> String {
    let ttl = format!("{}ms", LEASE_TTL.as_millis());
    format!(
        "[server]\nshutdown_grace = \"2s\"\n\n\
         [defaults]\nmax_concurrency = 64\nmax_queue = 256\nmax_wait = \"1s\"\nlease_ttl = \"30s\"\n\n\
         [limits]\nallow_unknown_dependencies = true\nmax_dependencies = 1024\nidle_ttl = \"{}s\"\n\n\
         [dependencies.\"{PAIRS}\"]\nmax_concurrency = 32\n\n\
         [dependencies.\"{TIGHT}\"]\nmax_concurrency = 2\nmax_queue = 64\nmax_wait = \"{}ms\"\nlease_ttl = \"{ttl}\"\n\n\
         [dependencies.\"{EXPIRE}\"]\nmax_concurrency = 256\nlease_ttl = \"{ttl}\"\n\n\
         [dependencies.\"{RENEW}\"]\nlease_ttl = \"{ttl}\"\n\n\
         [dependencies.\"{KILLED}\"]\nlease_ttl = \"{ttl}\"\n\n\
         [dependencies.\"{ADMIN}\"]\nmax_concurrency = 8\nmax_queue = 32\n",
        idle_ttl.as_secs(),
        TIGHT_MAX_WAIT.as_millis(),
    )
}

/// What the load did, by kind. Every count is of calls that went as
/// expected, except `errors`.
#[derive(Debug, Default)]
pub struct Tally {
    pub pairs: AtomicU64,
    pub hog_holds: AtomicU64,
    pub waiters_timed_out: AtomicU64,
    pub waiters_granted: AtomicU64,
    pub acquires_cancelled: AtomicU64,
    pub cancels_too_late: AtomicU64,
    pub left_to_expire: AtomicU64,
    pub renews: AtomicU64,
    pub renews_late: AtomicU64,
    pub refused: AtomicU64,
    pub children_killed: AtomicU64,
    pub killed_holding: AtomicU64,
    pub junk_names: AtomicU64,
    pub junk_connections: AtomicU64,
    pub control_changes: AtomicU64,
    pub errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

/// A copy of the [`Tally`], for the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub pairs: u64,
    pub hog_holds: u64,
    pub waiters_timed_out: u64,
    pub waiters_granted: u64,
    pub acquires_cancelled: u64,
    pub cancels_too_late: u64,
    pub left_to_expire: u64,
    pub renews: u64,
    /// Renews that came after the lease's TTL (the sidecar was too slow to
    /// answer the previous call): refused, rightly.
    pub renews_late: u64,
    /// Acquires refused with QUEUE_FULL, QUEUE_TIMEOUT or SHED where no
    /// refusal was sought: the sidecar shedding load it cannot serve in time.
    pub refused: u64,
    pub children_killed: u64,
    pub killed_holding: u64,
    pub junk_names: u64,
    pub junk_connections: u64,
    pub control_changes: u64,
    pub errors: u64,
    /// The first few unexpected answers, distinct.
    pub first_errors: Vec<String>,
}

impl Tally {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) {
        Tally::add(&self.errors, 1);
        let line = format!("{what}: {e}");
        let mut first = self.first_errors.lock().unwrap_or_else(|e| e.into_inner());
        if first.len() < 5 && !first.contains(&line) {
            first.push(line);
        }
    }

    /// A refusal where a grant was sought: counted if it is a load-shedding
    /// answer, an error otherwise (SHUTTING_DOWN, a reason this version does
    /// not know).
    fn refusal(&self, what: &str, r: &AcquireResponse) {
        let shed = [
            RejectReason::QueueFull,
            RejectReason::QueueTimeout,
            RejectReason::Shed,
        ];
        if shed.iter().any(|reason| *reason as i32 == r.reason) {
            Tally::add(&self.refused, 1);
        } else {
            self.error(what, reason(r));
        }
    }

    pub fn counts(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            pairs: get(&self.pairs),
            hog_holds: get(&self.hog_holds),
            waiters_timed_out: get(&self.waiters_timed_out),
            waiters_granted: get(&self.waiters_granted),
            acquires_cancelled: get(&self.acquires_cancelled),
            cancels_too_late: get(&self.cancels_too_late),
            left_to_expire: get(&self.left_to_expire),
            renews: get(&self.renews),
            renews_late: get(&self.renews_late),
            refused: get(&self.refused),
            children_killed: get(&self.children_killed),
            killed_holding: get(&self.killed_holding),
            junk_names: get(&self.junk_names),
            junk_connections: get(&self.junk_connections),
            control_changes: get(&self.control_changes),
            errors: get(&self.errors),
            first_errors: self
                .first_errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// Rates of the mix, per second unless named otherwise.
#[derive(Clone, Debug, Serialize)]
pub struct Mix {
    pub pair_workers: u32,
    pub pairs_per_worker: f64,
    pub pair_hold_ms: u64,
    pub hog_hold_ms: u64,
    pub timing_out_waiters: f64,
    pub cancelled_acquires: f64,
    pub cancel_after_ms: u64,
    pub expiring_leases: f64,
    pub renew_workers: u32,
    pub renews_per_lease: u32,
    pub junk_names: f64,
    pub junk_names_per_connection: u64,
    pub kill_every_s: f64,
    pub control_change_every_s: f64,
    pub admin_pairs: f64,
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            pair_workers: 4,
            pairs_per_worker: 25.0,
            pair_hold_ms: 2,
            hog_hold_ms: 300,
            timing_out_waiters: 10.0,
            cancelled_acquires: 10.0,
            cancel_after_ms: 20,
            expiring_leases: 5.0,
            renew_workers: 2,
            renews_per_lease: 3,
            junk_names: 20.0,
            junk_names_per_connection: 100,
            kill_every_s: 5.0,
            control_change_every_s: 2.0,
            admin_pairs: 20.0,
        }
    }
}

/// Where the load goes.
#[derive(Clone, Debug)]
pub struct Target {
    pub grpc: SocketAddr,
    /// Data plane.
    pub data: Channel,
    /// Control plane (over the Unix socket).
    pub admin: Channel,
    /// This harness's binary, run as the killed holders.
    pub holder_bin: std::path::PathBuf,
    /// Prefix of the junk names, unique to the run.
    pub junk_prefix: String,
}

/// Runs the mix until `end`, then waits for every worker.
pub async fn run(mix: &Mix, target: &Target, tally: &'static Tally, end: Instant) {
    let mut set = JoinSet::new();
    let every = |per_second: f64| Duration::from_secs_f64(1.0 / per_second);
    for _ in 0..mix.pair_workers {
        let client = GovernorClient::new(target.data.clone());
        let (period, hold) = (every(mix.pairs_per_worker), ms(mix.pair_hold_ms));
        set.spawn(ticking(period, end, move || {
            let mut client = client.clone();
            async move {
                match acquire(&mut client, PAIRS, None).await {
                    Ok(r) if r.granted => {
                        tokio::time::sleep(hold).await;
                        if release(&mut client, &r.lease_id, "pair").await {
                            Tally::add(&tally.pairs, 1);
                        }
                    }
                    Ok(r) => tally.refusal("pair refused", &r),
                    Err(e) => tally.error("pair acquire", e),
                }
            }
        }));
    }
    // Two hogs keep the tight dependency's two permits held.
    for _ in 0..2 {
        let client = GovernorClient::new(target.data.clone());
        let hold = ms(mix.hog_hold_ms);
        set.spawn(ticking(Duration::ZERO, end, move || {
            let mut client = client.clone();
            async move {
                match acquire(&mut client, TIGHT, Some(Duration::from_secs(1))).await {
                    Ok(r) if r.granted => {
                        tokio::time::sleep(hold).await;
                        if release(&mut client, &r.lease_id, "hog").await {
                            Tally::add(&tally.hog_holds, 1);
                        }
                    }
                    // The other hog and the waiters compete for two permits:
                    // a second without one is not an error.
                    Ok(r) if r.reason == RejectReason::QueueTimeout as i32 => {}
                    Ok(r) => tally.refusal("hog refused", &r),
                    Err(e) => tally.error("hog acquire", e),
                }
            }
        }));
    }
    let client = GovernorClient::new(target.data.clone());
    set.spawn(ticking(every(mix.timing_out_waiters), end, move || {
        let mut client = client.clone();
        async move {
            match acquire(&mut client, TIGHT, None).await {
                Ok(r) if r.granted => {
                    if release(&mut client, &r.lease_id, "waiter").await {
                        Tally::add(&tally.waiters_granted, 1);
                    }
                }
                Ok(r) if r.reason == RejectReason::QueueTimeout as i32 => {
                    Tally::add(&tally.waiters_timed_out, 1);
                }
                Ok(r) => tally.refusal("waiter refused", &r),
                Err(e) => tally.error("waiter acquire", e),
            }
        }
    }));
    let client = GovernorClient::new(target.data.clone());
    let cancel_after = ms(mix.cancel_after_ms);
    set.spawn(ticking(every(mix.cancelled_acquires), end, move || {
        let mut client = client.clone();
        async move {
            // Dropping the call resets its stream while it waits.
            let mut waiting = client.clone();
            let call = acquire(&mut waiting, TIGHT, Some(Duration::from_secs(1)));
            match tokio::time::timeout(cancel_after, call).await {
                Err(_) => Tally::add(&tally.acquires_cancelled, 1),
                Ok(Ok(r)) if r.granted => {
                    if release(&mut client, &r.lease_id, "cancel").await {
                        Tally::add(&tally.cancels_too_late, 1);
                    }
                }
                Ok(Ok(r)) if r.reason == RejectReason::QueueTimeout as i32 => {
                    Tally::add(&tally.cancels_too_late, 1);
                }
                Ok(Ok(r)) => tally.refusal("cancelled acquire refused", &r),
                Ok(Err(e)) => tally.error("cancelled acquire", e),
            }
        }
    }));
    let client = GovernorClient::new(target.data.clone());
    set.spawn(ticking(every(mix.expiring_leases), end, move || {
        let mut client = client.clone();
        async move {
            match acquire(&mut client, EXPIRE, None).await {
                Ok(r) if r.granted => Tally::add(&tally.left_to_expire, 1),
                Ok(r) => tally.refusal("expiring lease refused", &r),
                Err(e) => tally.error("expiring acquire", e),
            }
        }
    }));
    for _ in 0..mix.renew_workers {
        let client = GovernorClient::new(target.data.clone());
        let renews = mix.renews_per_lease;
        set.spawn(ticking(Duration::ZERO, end, move || {
            let mut client = client.clone();
            async move { renew_cycle(&mut client, renews, tally).await }
        }));
    }
    let data = target.data.clone();
    let grpc = target.grpc;
    let prefix = target.junk_prefix.clone();
    let per_connection = mix.junk_names_per_connection.max(1);
    let counter = std::sync::Arc::new(AtomicU64::new(0));
    set.spawn(ticking(every(mix.junk_names), end, move || {
        let counter = counter.clone();
        let prefix = prefix.clone();
        let data = data.clone();
        async move {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            // Every `per_connection` names, one on a connection of its own
            // that is closed after it: connection churn.
            let channel = if n % per_connection == 0 {
                match tcp_channel(grpc).await {
                    Ok(c) => {
                        Tally::add(&tally.junk_connections, 1);
                        c
                    }
                    Err(e) => return tally.error("junk connection", e),
                }
            } else {
                data
            };
            let mut client = GovernorClient::new(channel);
            let name = format!("{prefix}{n}");
            match acquire(&mut client, &name, None).await {
                Ok(r) if r.granted => {
                    if release(&mut client, &r.lease_id, "junk").await {
                        Tally::add(&tally.junk_names, 1);
                    }
                }
                Ok(r) => tally.refusal("junk name refused", &r),
                Err(e) => tally.error("junk acquire", e),
            }
        }
    }));
    let bin = target.holder_bin.clone();
    set.spawn(ticking(
        Duration::from_secs_f64(mix.kill_every_s),
        end,
        move || {
            let bin = bin.clone();
            async move {
                match kill_a_holder(&bin, grpc).await {
                    Ok(held) => {
                        Tally::add(&tally.children_killed, 1);
                        Tally::add(&tally.killed_holding, u64::from(held));
                    }
                    Err(e) => tally.error("killed holder", e),
                }
            }
        },
    ));
    let admin = GovernorAdminClient::new(target.admin.clone());
    let flips = std::sync::Arc::new(AtomicU64::new(0));
    set.spawn(ticking(
        Duration::from_secs_f64(mix.control_change_every_s),
        end,
        move || {
            let mut admin = admin.clone();
            let flip = flips.fetch_add(1, Ordering::Relaxed) % 2 == 1;
            async move {
                let limits = DependencyLimits {
                    max_concurrency: Some(if flip { 8 } else { 3 }),
                    max_queue: Some(if flip { 32 } else { 4 }),
                    ..Default::default()
                };
                let update = admin.update_dependency(UpdateDependencyRequest {
                    name: ADMIN.into(),
                    limits: Some(limits),
                });
                match update.await {
                    Ok(_) => Tally::add(&tally.control_changes, 1),
                    Err(e) => return tally.error("UpdateDependency", e),
                }
                if let Err(e) = admin.list_dependencies(ListDependenciesRequest {}).await {
                    tally.error("ListDependencies", e);
                }
            }
        },
    ));
    let client = GovernorClient::new(target.data.clone());
    set.spawn(ticking(every(mix.admin_pairs), end, move || {
        let mut client = client.clone();
        async move {
            match acquire(&mut client, ADMIN, None).await {
                Ok(r) if r.granted => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if release(&mut client, &r.lease_id, "admin pair").await {
                        Tally::add(&tally.pairs, 1);
                    }
                }
                Ok(r) => tally.refusal("admin pair refused", &r),
                Err(e) => tally.error("admin pair acquire", e),
            }
        }
    }));
    while set.join_next().await.is_some() {}
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Starts `op` every `period` (each in its own task, so a slow call does not
/// hold the next one back) until `end`, then waits for the calls started;
/// with a zero period, runs `op` back to back.
async fn ticking<F, Fut>(period: Duration, end: Instant, op: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    if period.is_zero() {
        while Instant::now() < end {
            op().await;
        }
        return;
    }
    let mut calls = JoinSet::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        calls.spawn(op());
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
}

async fn acquire(
    client: &mut GovernorClient<Channel>,
    dependency: &str,
    max_wait: Option<Duration>,
) -> Result<AcquireResponse, tonic::Status> {
    let mut request = tonic::Request::new(AcquireRequest {
        dependency: dependency.into(),
        max_wait: max_wait.and_then(|d| prost_types::Duration::try_from(d).ok()),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(10));
    client.acquire(request).await.map(|r| r.into_inner())
}

/// Releases `lease`; false (and an error counted) unless it was released.
async fn release(client: &mut GovernorClient<Channel>, lease: &str, what: &str) -> bool {
    let tally = tally();
    let request = ReleaseRequest {
        lease_id: lease.to_owned(),
        outcome: Outcome::Success as i32,
        latency: None,
    };
    match client.release(request).await {
        Ok(r) if r.get_ref().released => true,
        Ok(_) => {
            tally.error(&format!("{what} release"), "released = false");
            false
        }
        Err(e) => {
            tally.error(&format!("{what} release"), e);
            false
        }
    }
}

async fn renew_cycle(client: &mut GovernorClient<Channel>, renews: u32, tally: &Tally) {
    // The lease was last extended no earlier than this: the send time of the
    // call that granted or renewed it.
    let mut extended_from = Instant::now();
    let r = match acquire(client, RENEW, None).await {
        Ok(r) if r.granted => r,
        Ok(r) => return tally.refusal("renew acquire refused", &r),
        Err(e) => return tally.error("renew acquire", e),
    };
    for _ in 0..renews {
        // A quarter of the TTL: renewed well before it could expire.
        tokio::time::sleep(LEASE_TTL / 4).await;
        let sent = Instant::now();
        let renewed = client
            .renew(RenewRequest {
                lease_id: r.lease_id.clone(),
            })
            .await;
        match renewed {
            Ok(a) if a.get_ref().renewed => {
                Tally::add(&tally.renews, 1);
                extended_from = sent;
            }
            // Answered within the TTL of the last extension: the lease was
            // certainly live when the renew arrived.
            Ok(_) if extended_from.elapsed() < LEASE_TTL => {
                return tally.error("renew", "renewed = false on a live lease");
            }
            // The sidecar answered too slowly for the lease to be sure to
            // live: it may rightly have expired.
            Ok(_) => return Tally::add(&tally.renews_late, 1),
            Err(e) => return tally.error("renew", e),
        }
    }
    release(client, &r.lease_id, "renewed").await;
}

/// Starts a child holding [`HOLDER_PERMITS`] permits of [`KILLED`], SIGKILLs
/// it once it says it holds them, and reaps it. Returns the permits it held.
async fn kill_a_holder(bin: &std::path::Path, grpc: SocketAddr) -> Result<u32, String> {
    let mut child = tokio::process::Command::new(bin)
        .args([
            HOLDER_COMMAND,
            &grpc.to_string(),
            KILLED,
            &HOLDER_PERMITS.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
    let held = match line {
        Ok(Ok(Some(line))) => line
            .strip_prefix("holding ")
            .and_then(|n| n.trim().parse::<u32>().ok())
            .ok_or_else(|| format!("holder said {line:?}")),
        Ok(Ok(None)) => {
            let mut err = String::new();
            if let Some(stderr) = child.stderr.take() {
                let _ =
                    tokio::io::AsyncReadExt::read_to_string(&mut BufReader::new(stderr), &mut err)
                        .await;
            }
            Err(format!("holder exited first: {}", err.trim()))
        }
        Ok(Err(e)) => Err(format!("reading the holder: {e}")),
        Err(_) => Err("the holder did not say it held its permits within 20 s".into()),
    };
    // SIGKILL: no Release, no clean connection close from its side.
    let _ = child.start_kill();
    child
        .wait()
        .await
        .map_err(|e| format!("reaping the holder: {e}"))?;
    held
}

/// The first argument that turns `governor-bench` into a killed holder.
pub const HOLDER_COMMAND: &str = "soak-holder";

/// The holder child: `governor-bench soak-holder ADDR DEPENDENCY COUNT`.
/// Acquires COUNT permits, prints `holding COUNT` and waits to be killed.
pub async fn holder(args: &[String]) -> Result<(), String> {
    let [addr, dependency, count] = args else {
        return Err(format!(
            "usage: governor-bench {HOLDER_COMMAND} ADDR DEPENDENCY COUNT"
        ));
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("ADDR {addr:?}: {e}"))?;
    let count: u32 = count.parse().map_err(|e| format!("COUNT {count:?}: {e}"))?;
    let mut client = GovernorClient::new(tcp_channel(addr).await?);
    let mut leases = Vec::new();
    for _ in 0..count {
        let r = acquire(&mut client, dependency, None)
            .await
            .map_err(|e| format!("acquire {dependency}: {e}"))?;
        if !r.granted {
            return Err(format!("acquire {dependency}: {}", reason(&r)));
        }
        leases.push(r.lease_id);
    }
    println!("holding {}", leases.len());
    std::future::pending::<()>().await;
    Ok(())
}

fn reason(r: &AcquireResponse) -> String {
    RejectReason::try_from(r.reason).map_or_else(
        |_| format!("reject reason {}", r.reason),
        |r| r.as_str_name().to_owned(),
    )
}

/// The run's tally: one per process, for the workers' `'static` closures.
pub fn tally() -> &'static Tally {
    static TALLY: std::sync::OnceLock<Tally> = std::sync::OnceLock::new();
    TALLY.get_or_init(Tally::default)
}
