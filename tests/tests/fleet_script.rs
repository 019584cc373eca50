//! The fleet share script (`governor/src/fleet/share.lua`) against a real
//! redis-server: its fair rule, and the exactness invariant under random
//! schedules of sidecars that keep the protocol (calls, grants, releases,
//! deaths, the store losing its state).
//!
//! Needs `redis-server` on the PATH (scripts/test.sh installs it).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;
use tokio::process::{Child, Command};

const SCRIPT: &str = include_str!("../../governor/src/fleet/share.lua");

struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server on the PATH (scripts/test.sh installs it)");
        let redis = Redis {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut connection) = redis.try_connect().await {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut connection).await;
                if pong.is_ok() {
                    return redis;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn try_connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?
            .get_multiplexed_async_connection()
            .await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

const KEY: &str = "test:{payments}";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reply {
    status: i64,
    share: u32,
    target: u32,
    born: u64,
    writes: u64,
    learning_left: u64,
    instances: u32,
    max: u32,
}

#[allow(clippy::too_many_arguments)]
async fn call(
    connection: &mut MultiplexedConnection,
    instance: &str,
    nonce: &str,
    seq: u64,
    demand: u32,
    keep: i64,
    ttl_ms: u64,
    max: u32,
    seen: (u64, u64),
    leaving: bool,
) -> Reply {
    call_acked(
        connection, instance, nonce, seq, demand, keep, ttl_ms, max, seen, leaving, 0,
    )
    .await
}

/// [`call`] by a sidecar that holds the share call `acked` gave it.
#[allow(clippy::too_many_arguments)]
async fn call_acked(
    connection: &mut MultiplexedConnection,
    instance: &str,
    nonce: &str,
    seq: u64,
    demand: u32,
    keep: i64,
    ttl_ms: u64,
    max: u32,
    seen: (u64, u64),
    leaving: bool,
    acked: u64,
) -> Reply {
    let answer: Vec<i64> = redis::Script::new(SCRIPT)
        .key(KEY)
        .arg(instance)
        .arg(nonce)
        .arg(seq)
        .arg(demand)
        .arg(keep)
        .arg(ttl_ms)
        .arg(max)
        .arg(seen.0)
        .arg(seen.1)
        .arg(if leaving { "1" } else { "0" })
        .arg(acked)
        .invoke_async(connection)
        .await
        .expect("the script runs");
    let [
        status,
        share,
        target,
        born,
        writes,
        learning_left,
        instances,
        max,
    ] = answer[..]
    else {
        panic!("answer {answer:?}");
    };
    Reply {
        status,
        share: share as u32,
        target: target as u32,
        born: born as u64,
        writes: writes as u64,
        learning_left: learning_left as u64,
        instances: instances as u32,
        max: max as u32,
    }
}

/// The fair rule, written again: in order of demand (then name) each gets
/// min(demand, an equal part of what is left); rounding leftovers one each
/// to the unsatisfied by name; what nobody wants split equally, the
/// remainder one each by name.
fn fair(capacity: u32, demands: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
    let mut order: Vec<_> = demands.iter().collect();
    order.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)));
    let mut alloc = BTreeMap::new();
    let mut left = capacity;
    let n = order.len() as u32;
    for (i, (name, &demand)) in order.into_iter().enumerate() {
        let part = left / (n - i as u32);
        let give = demand.min(part);
        alloc.insert(name.clone(), give);
        left -= give;
    }
    for (name, &demand) in demands {
        if left == 0 {
            break;
        }
        let a = alloc.get_mut(name).unwrap();
        if *a < demand {
            *a += 1;
            left -= 1;
        }
    }
    if left > 0 {
        let each = left / n;
        let extra = left - each * n;
        for (i, name) in demands.keys().enumerate() {
            *alloc.get_mut(name).unwrap() += each + u32::from((i as u32) < extra);
        }
    }
    alloc
}

/// Waits out the learning period of a fresh store.
async fn past_learning(connection: &mut MultiplexedConnection, ttl_ms: u64) -> (u64, u64) {
    let reply = call(
        connection,
        "probe",
        "n",
        1,
        0,
        -1,
        ttl_ms,
        1000,
        (0, 0),
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(reply.learning_left + 5)).await;
    let reply = call(
        connection,
        "probe",
        "n",
        2,
        0,
        -1,
        ttl_ms,
        1000,
        (0, 0),
        true,
    )
    .await;
    (reply.born, reply.writes)
}

#[tokio::test]
async fn targets_follow_the_fair_rule() {
    let redis = Redis::start().await;
    let mut connection = redis.try_connect().await.unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let ttl = 60_000;
    for round in 0..60u64 {
        // A fresh store each round (it learns, and computes targets all
        // the same).
        let _: () = redis::cmd("DEL")
            .arg(KEY)
            .query_async(&mut connection)
            .await
            .unwrap();
        let capacity = rng.random_range(1..=40u32);
        let n = rng.random_range(1..=6usize);
        let demands: BTreeMap<String, u32> = (0..n)
            .map(|i| (format!("pod-{i}"), rng.random_range(0..=20u32)))
            .collect();
        // Everyone reports its demand once (claiming nothing), then once
        // more: the second answers carry every demand.
        let mut targets = BTreeMap::new();
        for pass in 0..2u64 {
            for (name, &demand) in &demands {
                let reply = call(
                    &mut connection,
                    name,
                    "n",
                    1 + pass,
                    demand,
                    -1,
                    ttl,
                    capacity,
                    (0, 0),
                    false,
                )
                .await;
                assert!(reply.status <= 1, "round {round}: {reply:?}");
                targets.insert(name.clone(), reply.target);
            }
        }
        assert_eq!(
            targets,
            fair(capacity, &demands),
            "round {round}: {capacity} {demands:?}"
        );
        let total: u32 = targets.values().sum();
        assert_eq!(total, capacity, "every unit is someone's target");
    }
}

/// One simulated sidecar that keeps the protocol.
#[derive(Debug)]
struct Sidecar {
    name: String,
    nonce: String,
    seq: u64,
    share: u32,
    target: u32,
    learning: bool,
    valid_until: Option<Instant>,
    in_flight: u32,
    seen: (u64, u64),
    alive: bool,
    acked: u64,
}

impl Sidecar {
    fn holds(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|until| now < until)
    }

    /// What it may grant up to (the fallback share is 0 here).
    fn term(&self, now: Instant) -> u32 {
        if !self.holds(now) {
            0
        } else if self.learning {
            self.share
        } else {
            self.share.min(self.target)
        }
    }

    fn keep(&self, now: Instant) -> i64 {
        if self.holds(now) && self.share > 0 {
            i64::from(self.in_flight.max(self.term(now)).min(self.share))
        } else {
            -1
        }
    }

    /// What it may still be using: permits held, and up to its term.
    fn usage(&self, now: Instant) -> u32 {
        self.in_flight.max(self.term(now))
    }
}

#[tokio::test]
async fn random_schedules_never_lease_more_than_the_limit() {
    const MAX: u32 = 12;
    const TTL: Duration = Duration::from_millis(300);
    const MARGIN: Duration = Duration::from_millis(60);
    let redis = Redis::start().await;
    let mut connection = redis.try_connect().await.unwrap();
    for seed in 0..4u64 {
        let _: () = redis::cmd("DEL")
            .arg(KEY)
            .query_async(&mut connection)
            .await
            .unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sidecars: Vec<Sidecar> = (0..5)
            .map(|i| Sidecar {
                name: format!("pod-{i}"),
                nonce: format!("{seed}-{i}"),
                seq: 0,
                share: 0,
                target: 0,
                learning: false,
                valid_until: None,
                in_flight: 0,
                seen: (0, 0),
                alive: true,
                acked: 0,
            })
            .collect();
        let mut demands = vec![0u32; sidecars.len()];
        let (mut calls, mut learnings, mut conflicts, mut peak) = (0, 0, 0, 0u32);
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1500) {
            let i = rng.random_range(0..sidecars.len());
            let now = Instant::now();
            // A share that lapses takes its permits with it (their holds
            // are shorter than the margin).
            for s in &mut sidecars {
                if !s.holds(now) {
                    s.in_flight = 0;
                }
            }
            match rng.random_range(0..1000) {
                0..=399 => {
                    let s = &mut sidecars[i];
                    if !s.alive {
                        continue;
                    }
                    if rng.random_range(0..4) == 0 {
                        demands[i] = rng.random_range(0..=15);
                    }
                    s.seq += 1;
                    let sent = Instant::now();
                    let keep = s.keep(sent);
                    let acked = if keep > 0 { s.acked } else { 0 };
                    let reply = call_acked(
                        &mut connection,
                        &s.name,
                        &s.nonce,
                        s.seq,
                        demands[i].max(s.in_flight),
                        keep,
                        TTL.as_millis() as u64,
                        MAX,
                        s.seen,
                        false,
                        acked,
                    )
                    .await;
                    calls += 1;
                    if reply.status == 2 {
                        // Came back before its old entry lapsed in the
                        // store: refused until then, it holds nothing.
                        conflicts += 1;
                        s.share = 0;
                        s.valid_until = None;
                        continue;
                    }
                    assert!(reply.status == 0 || reply.status == 1, "{reply:?}");
                    if reply.status == 1 {
                        learnings += 1;
                    }
                    assert!(reply.share <= MAX && reply.max == MAX);
                    if keep >= 0 && reply.status == 0 {
                        assert!(
                            i64::from(reply.share) >= keep,
                            "a promise is never taken away: kept {keep}, got {reply:?}"
                        );
                    }
                    s.share = reply.share;
                    s.target = reply.target;
                    s.learning = reply.status == 1;
                    s.seen = (reply.born, reply.writes);
                    s.valid_until = Some(sent + TTL - MARGIN);
                    s.acked = s.seq;
                }
                400..=799 => {
                    // Grants up to the term, releases at random.
                    let s = &mut sidecars[i];
                    let term = s.term(now);
                    if s.in_flight < term && rng.random_bool(0.6) {
                        s.in_flight += rng.random_range(1..=term - s.in_flight);
                    } else if s.in_flight > 0 {
                        s.in_flight -= rng.random_range(1..=s.in_flight);
                    }
                }
                800..=959 => {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(1..20))).await
                }
                960..=994 => {
                    // Dies (or comes back as a new process with a new nonce).
                    let s = &mut sidecars[i];
                    if s.alive {
                        s.alive = false;
                    } else if !s.holds(now) {
                        s.alive = true;
                        s.nonce = format!("{}-again", s.nonce);
                        s.seq = 0;
                        s.share = 0;
                        s.valid_until = None;
                    }
                }
                _ => {
                    // The store loses everything (a restart without persistence).
                    let _: () = redis::cmd("DEL")
                        .arg(KEY)
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                }
            }
            let now = Instant::now();
            let used: u32 = sidecars.iter().map(|s| s.usage(now)).sum();
            peak = peak.max(used);
            assert!(
                used <= MAX,
                "seed {seed}: {used} > {MAX} may be in use: {sidecars:#?}"
            );
        }
        assert!(
            calls > 100 && learnings > 0,
            "seed {seed}: {calls} calls, {learnings} learning, {conflicts} conflicts"
        );
        // Settle: everyone alive and hungry; after a few rounds of calls
        // past the learning period, the whole limit is leased and used.
        tokio::time::sleep(TTL * 2).await;
        for s in &mut sidecars {
            s.alive = true;
        }
        for round in 0..5 {
            if round == 1 {
                // The store may have lost its state just before: let it learn.
                tokio::time::sleep(TTL).await;
            }
            for s in &mut sidecars {
                s.seq += 1;
                let sent = Instant::now();
                let keep = s.keep(sent);
                let reply = call(
                    &mut connection,
                    &s.name,
                    &s.nonce,
                    s.seq,
                    10,
                    keep,
                    TTL.as_millis() as u64,
                    MAX,
                    s.seen,
                    false,
                )
                .await;
                s.share = reply.share;
                s.target = reply.target;
                s.learning = reply.status == 1;
                s.seen = (reply.born, reply.writes);
                s.valid_until = Some(sent + TTL - MARGIN);
                s.in_flight = s.term(Instant::now());
            }
        }
        let now = Instant::now();
        let leased: u32 = sidecars.iter().map(|s| s.term(now)).sum();
        assert_eq!(
            leased, MAX,
            "seed {seed}: the limit is leased whole: {sidecars:#?}"
        );
        assert!(peak >= MAX / 2, "seed {seed}: peak {peak}");
    }
}

#[tokio::test]
async fn a_copy_that_lost_writes_learns_and_duplicates_and_name_clashes_are_refused() {
    let redis = Redis::start().await;
    let mut c = redis.try_connect().await.unwrap();
    let seen = past_learning(&mut c, 300).await;
    let a = call(&mut c, "a", "na", 1, 8, -1, 300, 10, seen, false).await;
    assert_eq!((a.status, a.share), (0, 10), "alone: what nobody wants too");
    // A second process under the same name: refused while a's entry lives.
    let clash = call(&mut c, "a", "other", 1, 8, -1, 300, 10, seen, false).await;
    assert_eq!(clash.status, 2);
    // A late duplicate of a's own call: ignored.
    let stale = call(&mut c, "a", "na", 1, 0, 0, 300, 10, seen, false).await;
    assert_eq!((stale.status, stale.share), (3, 10));
    // Lower limits win: b is configured with 6.
    let b = call(
        &mut c,
        "b",
        "nb",
        1,
        8,
        -1,
        300,
        6,
        (a.born, a.writes),
        false,
    )
    .await;
    assert_eq!((b.max, b.share), (6, 0), "a holds 10 >= 6: nothing free");
    // The store goes back to an older copy (fewer writes than a saw):
    // a's next call finds it out and the store learns.
    let _: () = redis::cmd("HSET")
        .arg(KEY)
        .arg("gen")
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    let a2 = call(
        &mut c,
        "a",
        "na",
        2,
        8,
        6,
        300,
        10,
        (b.born, b.writes),
        false,
    )
    .await;
    assert_eq!(a2.status, 1, "learning: {a2:?}");
    assert_eq!(a2.share, 6, "a re-claims what it still uses, no more");
    let b2 = call(
        &mut c,
        "b",
        "nb",
        2,
        8,
        -1,
        300,
        6,
        (a2.born, a2.writes),
        false,
    )
    .await;
    assert_eq!(
        (b2.status, b2.share),
        (1, 0),
        "no new shares while learning"
    );
    // A drained sidecar gives its share back at once.
    let gone = call(
        &mut c,
        "a",
        "na",
        3,
        0,
        -1,
        300,
        10,
        (b2.born, b2.writes),
        true,
    )
    .await;
    assert_eq!((gone.status, gone.instances), (0, 1));
    tokio::time::sleep(Duration::from_millis(310)).await;
    // b's entry lapsed too (300 ms): after the learning period b gets it all.
    let b3 = call(
        &mut c,
        "b",
        "nb",
        3,
        8,
        -1,
        300,
        6,
        (gone.born, gone.writes),
        false,
    )
    .await;
    assert_eq!((b3.status, b3.share, b3.instances), (0, 6, 1), "{b3:?}");
    // The store loses b's entry (a failover to a replica that missed it):
    // b, holding the share of call 3, finds out on its next call.
    let seen = (b3.born, b3.writes);
    let same = call_acked(&mut c, "b", "nb", 4, 8, 6, 300, 6, seen, false, 3).await;
    assert_eq!(same.status, 0, "nothing lost: no learning");
    let _: () = redis::cmd("HDEL")
        .arg(KEY)
        .arg("i:b")
        .query_async(&mut c)
        .await
        .unwrap();
    let seen = (same.born, same.writes);
    let lost = call_acked(&mut c, "b", "nb", 5, 8, 6, 300, 6, seen, false, 4).await;
    assert_eq!(
        (lost.status, lost.share),
        (1, 6),
        "learning, b re-claims: {lost:?}"
    );
    // An entry older than the call the share came from: lost too.
    let _: () = redis::cmd("HSET")
        .arg(KEY)
        .arg("i:b")
        .arg("nb 2 6 99999999999999 8 6 300")
        .query_async(&mut c)
        .await
        .unwrap();
    // While it learns, another holder whose entry is gone too re-claims
    // without starting over again (which would wipe b's re-claim).
    let z = call_acked(&mut c, "z", "nz", 9, 2, 2, 300, 6, (0, 0), false, 8).await;
    assert_eq!(
        (z.status, z.born, z.share),
        (1, lost.born, 0),
        "6 of 6 re-claimed by b: {z:?}"
    );
    tokio::time::sleep(Duration::from_millis(lost.learning_left + 10)).await;
    let seen = (lost.born, z.writes);
    let older = call_acked(&mut c, "b", "nb", 6, 8, 6, 300, 6, seen, false, 5).await;
    assert_eq!(older.status, 1, "{older:?}");
    assert_eq!(older.writes, 1, "started over: {older:?}");
}
