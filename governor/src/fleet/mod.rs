//! Fleet-wide limits: "payments allows 200 in flight across all 50 pods".
//!
//! Each sidecar leases a *share* of a dependency's fleet-wide limit from a
//! store the fleet shares (Redis or Redis Cluster) and enforces
//! `min(local limit, share)`: an Acquire is still decided locally, under the
//! dependency's lock, and never waits on the store. One task per fleet
//! dependency renews the share in the background, every `share_ttl / 3`.
//!
//! # The store
//! One hash per dependency, `<namespace>:{<dependency>}` (one key, so one
//! Redis Cluster slot), and one Lua script per call (`share.lua`) that
//! Redis runs atomically: it drops lapsed entries, computes this sidecar's
//! fair target and grants it what is free. Every expiry is in Redis's clock
//! (`TIME` inside the script); a sidecar's own clock only measures
//! durations from its own send times.
//!
//! # The fair rule
//! Doorman's FairShare, with what nobody wants spread: in order of demand,
//! each live sidecar gets min(demand, an equal part of what is left); what
//! is left after every demand is met is split equally, so an idle fleet
//! keeps headroom everywhere and a busy pod need not wait for a renewal to
//! grow within it. A sidecar's demand is the most it had in flight + queued
//! (+ the arrival) since its last call, at most its local limit.
//!
//! # Why it is exact
//! Invariant: the sum over sidecars of the share each may still use is at
//! most the fleet limit (the lowest any live sidecar is configured with).
//! - The script never records more than is free: a sidecar's share grows
//!   only by `limit - Σ others' recorded shares`.
//! - A share shrinks only by the holder's own word. Before each call a
//!   sidecar promises `keep` = max(its term, in flight) (it grants nothing
//!   above its term before the answer comes); the script records no less
//!   than that until the next call. A shrinking target is applied by the
//!   sidecar first (it stops granting above it; held permits are never
//!   revoked) and given back on the next call, once in flight fits.
//! - A recorded share stays counted until Redis's expiry, `share_ttl` after
//!   the script ran; the sidecar stops using it `share_ttl - safety_margin`
//!   after it *sent* the call, which is earlier, with the margin left for
//!   clock-rate differences.
//! - A late duplicate call (a retry on a new connection overtaking an old
//!   one) is ignored by its sequence number; a second live sidecar under the
//!   same instance name is refused (a per-process nonce) and falls back.
//! - Redis restarted empty, failed over to a replica without the last
//!   writes, or evicted the key: the script finds no `born`, or a caller
//!   that saw more writes of this `born` than there are, and starts over in
//!   *learning*: for one share_ttl it grants no new shares, only re-records
//!   shares their holders still use (each at most what it held, so the sum
//!   still fits). After a share_ttl every share granted before is gone.
//!
//! What the invariant does not cover, by design: `fallback_share` (what a
//! sidecar uses alone once its share lapsed with the store unreachable, and
//! while the store learns) is outside it; size it so that
//! pods x fallback_share fits the downstream, or 0. And held permits: a
//! lapse or a shrink stops new grants, it does not revoke what is held.

mod share;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::FleetConfig;
use crate::ledger::{Dependency, Ledger};
use share::{Event, ShareState, Timing};
use store::{Call, RedisStore, Store};

pub use store::StoreError;

/// Hears about every store call (metrics).
pub trait FleetObserver: Send + Sync + std::fmt::Debug + 'static {
    fn store_called(&self, dependency: &str, latency: Duration, ok: bool);
}

/// The running fleet tasks; [`Fleet::stop`] gives every share back.
#[derive(Debug)]
pub struct Fleet {
    stop: CancellationToken,
    supervisor: JoinHandle<()>,
    /// Read by each task as it stops.
    give_back: Arc<std::sync::atomic::AtomicBool>,
}

/// What every dependency task of one sidecar shares.
#[derive(Debug)]
struct Context {
    store: Arc<dyn Store>,
    observer: Arc<dyn FleetObserver>,
    instance: Arc<str>,
    namespace: Arc<str>,
    nonce: Arc<str>,
    /// Every call's sequence number, across the tasks of this process (a
    /// task started again for the same dependency must not go back to 1:
    /// the store would take its calls for late duplicates).
    seq: std::sync::atomic::AtomicU64,
    timing: Timing,
    renew: Duration,
    call_timeout: Duration,
    /// Whether a task that stops gives its share back.
    give_back: Arc<std::sync::atomic::AtomicBool>,
}

impl Fleet {
    /// Starts serving the fleet-wide limits of `ledger` through the store of
    /// `config`. Connects lazily: an unreachable store is a fallback, not a
    /// failure to start.
    pub fn start(
        config: &FleetConfig,
        ledger: Arc<Ledger>,
        observer: Arc<dyn FleetObserver>,
    ) -> Result<Fleet, StoreError> {
        let call_timeout = call_timeout(config.renew_interval());
        let store = Arc::new(RedisStore::new(config, call_timeout)?);
        tracing::info!(
            store = ?config.store,
            instance = %config.instance,
            share_ttl_ms = config.share_ttl.as_millis() as u64,
            safety_margin_ms = config.safety_margin.as_millis() as u64,
            "fleet store configured"
        );
        Ok(Fleet::with_store(config, store, ledger, observer))
    }

    fn with_store(
        config: &FleetConfig,
        store: Arc<dyn Store>,
        ledger: Arc<Ledger>,
        observer: Arc<dyn FleetObserver>,
    ) -> Fleet {
        let nonce: u64 = rand::rng().random();
        let context = Arc::new(Context {
            store,
            observer,
            instance: config.instance.clone(),
            namespace: config.namespace.clone(),
            nonce: Arc::from(format!("{nonce:016x}")),
            seq: Default::default(),
            timing: Timing {
                ttl: config.share_ttl,
                margin: config.safety_margin,
            },
            renew: config.renew_interval(),
            call_timeout: call_timeout(config.renew_interval()),
            give_back: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        });
        let give_back = context.give_back.clone();
        ledger.set_fleet_store(true);
        let stop = CancellationToken::new();
        let supervisor = tokio::spawn(supervise(context, ledger, stop.clone()));
        Fleet {
            stop,
            supervisor,
            give_back,
        }
    }

    /// Stops, giving every share back (each task's last call, within
    /// `grace`) if `give_back`: when the permits are back. With permits
    /// still out (the grace ran out) the shares are left to lapse, so that
    /// they stay counted while those calls may still run.
    pub async fn stop(self, grace: Duration, give_back: bool) {
        self.give_back
            .store(give_back, std::sync::atomic::Ordering::Release);
        self.stop.cancel();
        if timeout(grace, self.supervisor).await.is_err() {
            tracing::warn!(
                "fleet: shares not all given back within the grace period; they lapse in the store"
            );
        }
    }
}

impl Context {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// A call about `key` from this sidecar in `state`, with the next
    /// sequence number, claiming nothing (the renewal fills in its demand,
    /// keep and acked; the give-back leaves it so).
    fn call(&self, key: &Arc<str>, state: &ShareState) -> Call {
        Call {
            key: key.clone(),
            instance: self.instance.clone(),
            nonce: self.nonce.clone(),
            seq: self.next_seq(),
            demand: 0,
            keep: None,
            ttl: self.timing.ttl,
            max_concurrency: state.limit().max_concurrency(),
            seen: state.seen(),
            leaving: false,
            acked: 0,
        }
    }
}

/// A store call gets half a renewal period: a slow store delays no more
/// than that, and the next renewal still comes in time.
fn call_timeout(renew: Duration) -> Duration {
    renew / 2
}

/// Keeps one task per dependency with a fleet-wide limit: starts one for a
/// dependency that gains a limit (woken by the ledger), stops one whose
/// dependency lost it (the task gives the share back).
async fn supervise(context: Arc<Context>, ledger: Arc<Ledger>, stop: CancellationToken) {
    let wake = ledger.fleet_wake();
    let mut tasks: HashMap<Arc<str>, (Arc<Dependency>, CancellationToken, JoinHandle<()>)> =
        HashMap::new();
    loop {
        let current = ledger.fleet_dependencies();
        tasks.retain(|name, (dependency, cancel, task)| {
            let kept = !task.is_finished()
                && current
                    .iter()
                    .any(|d| d.name() == name && Arc::ptr_eq(d, dependency));
            if !kept {
                cancel.cancel();
            }
            kept
        });
        for dependency in current {
            if !tasks.contains_key(dependency.name()) {
                let cancel = stop.child_token();
                let task = tokio::spawn(run_dependency(
                    context.clone(),
                    dependency.clone(),
                    cancel.clone(),
                ));
                tasks.insert(dependency.name().clone(), (dependency, cancel, task));
            }
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(context.renew) => {}
            () = stop.cancelled() => break,
        }
    }
    for (_, (_, _, task)) in tasks {
        let _ = task.await;
    }
    ledger.set_fleet_store(false);
}

/// One dependency's share: renews it every `renew` (with jitter, so a
/// fleet restarted at once does not call in lockstep), applies every answer
/// and lapse to the ledger, and gives the share back when cancelled.
async fn run_dependency(
    context: Arc<Context>,
    dependency: Arc<Dependency>,
    cancel: CancellationToken,
) {
    let Some(limit) = dependency.fleet_limit() else {
        return;
    };
    let name = dependency.name().clone();
    let key: Arc<str> = Arc::from(format!("{}:{{{}}}", context.namespace, name));
    let mut state = ShareState::new(limit);
    let mut next_call = Instant::now();
    loop {
        let wake = state
            .lapses_at()
            .map_or(next_call, |lapse| lapse.min(next_call));
        tokio::select! {
            () = sleep_until(wake) => {}
            () = cancel.cancelled() => break,
        }
        match dependency.fleet_limit() {
            Some(limit) => state.set_limit(limit),
            None => break,
        }
        let now = Instant::now();
        let events = state.tick(now);
        apply(&dependency, &state, events, now);
        if now < next_call {
            continue;
        }
        let Some(reading) = dependency.fleet_reading() else {
            break;
        };
        let sent = Instant::now();
        let call = Call {
            acked: state.acked(sent),
            demand: reading.demand,
            keep: state.keep(sent, reading.in_flight),
            ..context.call(&key, &state)
        };
        let seq = call.seq;
        let answer = timeout(context.call_timeout, context.store.call(call));
        tokio::pin!(answer);
        // A share that lapses while the store is slow lapses on time.
        let answer = loop {
            let lapse = state.lapses_at();
            tokio::select! {
                answer = &mut answer => break answer,
                () = sleep_until(lapse.unwrap_or(sent)), if lapse.is_some() => {
                    let now = Instant::now();
                    let events = state.tick(now);
                    apply(&dependency, &state, events, now);
                }
            }
        };
        let now = Instant::now();
        let answer = answer.unwrap_or(Err(StoreError::Timeout(context.call_timeout)));
        // An instance name in use by another sidecar is a failed call too.
        let ok = matches!(&answer, Ok(reply) if reply.status != store::ReplyStatus::Conflict);
        context.observer.store_called(&name, now - sent, ok);
        let events = match answer {
            Ok(reply) => state.answered((seq, sent), now, reading.demand, reply, context.timing),
            Err(error) => state.failed(now, &error),
        };
        apply(&dependency, &state, events, now);
        next_call = sent + jitter(context.renew);
        // A store that learns grants again once it is over: ask then.
        if let Some(until) = state.status(now).learning_until {
            next_call = next_call.min(until + Duration::from_millis(10));
        }
    }
    if context.give_back.load(std::sync::atomic::Ordering::Acquire) {
        give_back(&context, &dependency, &key, &state).await;
    }
}

/// `renew` +-10 %.
fn jitter(renew: Duration) -> Duration {
    renew.mul_f64(rand::rng().random_range(0.9..1.1))
}

/// The last call: the share goes back to the fleet at once (else it would
/// lapse after share_ttl).
async fn give_back(context: &Context, dependency: &Dependency, key: &Arc<str>, state: &ShareState) {
    let call = Call {
        leaving: true,
        ..context.call(key, state)
    };
    // Not counted in the metrics: a removed fleet limit took its series
    // with it, and this call would bring them back for good.
    let answer = timeout(context.call_timeout, context.store.call(call)).await;
    let ok = matches!(answer, Ok(Ok(_)));
    if ok {
        tracing::info!(dependency = %dependency.name(), "fleet share given back");
    } else {
        tracing::warn!(
            dependency = %dependency.name(),
            share_ttl_ms = context.timing.ttl.as_millis() as u64,
            "fleet share not given back (store unreachable); it lapses after share_ttl"
        );
    }
}

/// Pushes the state to the ledger and logs what operators need to hear.
fn apply(dependency: &Arc<Dependency>, state: &ShareState, events: Vec<Event>, now: Instant) {
    let status = state.status(now);
    let name = dependency.name();
    for event in &events {
        match event {
            Event::Changed { from, to } => tracing::info!(
                dependency = %name,
                share = status.share,
                enforced = to,
                previous = from,
                target = status.target,
                demand = status.demand,
                instances = status.instances,
                fleet_limit = status.max_concurrency,
                mode = status.mode.as_str(),
                "fleet share changed"
            ),
            Event::FallingBack { error } => tracing::warn!(
                dependency = %name,
                fallback_share = status.fallback_share,
                %error,
                "fleet store unreachable, falling back"
            ),
            Event::Restored => tracing::info!(
                dependency = %name,
                share = status.share,
                instances = status.instances,
                "fleet share restored"
            ),
            Event::Learning { left } => tracing::info!(
                dependency = %name,
                learning_left_ms = left.as_millis() as u64,
                kept_share = status.share,
                "fleet store is learning (new, or it came back empty): no new shares until every share granted before may have lapsed"
            ),
            Event::CallFailed { error } => tracing::warn!(
                dependency = %name,
                %error,
                valid_for_ms = status
                    .valid_until
                    .map_or(0, |until| until.saturating_duration_since(now).as_millis() as u64),
                "fleet store call failed; keeping the share until it lapses"
            ),
            Event::Conflict => tracing::error!(
                dependency = %name,
                "fleet instance name is in use by another live sidecar: set [fleet] instance uniquely; falling back"
            ),
        }
    }
    dependency.set_fleet(status, now);
}

#[cfg(test)]
mod tests;
