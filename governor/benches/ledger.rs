//! The permit ledger's acquire + release, without gRPC: uncontended (one
//! caller, always a free slot), contended (callers outnumber slots, so most
//! go through the queue and are woken by a release), and spread over many
//! dependencies; and with fair shares between tenants.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rate_governor::ledger::{
    AcquireRequest, FairBy, FairnessPatch, Ledger, LedgerConfig, Limits, LimitsPatch, Priority,
    Report,
};

fn limits(concurrency: u32) -> Limits {
    Limits::default()
        .patched(&LimitsPatch {
            max_concurrency: Some(concurrency),
            max_queue: Some(100_000),
            max_wait: Some(Duration::from_secs(60)),
            ..Default::default()
        })
        .unwrap()
}

fn ledger(concurrency: u32, max_dependencies: usize) -> Arc<Ledger> {
    Arc::new(Ledger::new(LedgerConfig {
        defaults: limits(concurrency),
        max_dependencies,
        ..LedgerConfig::default()
    }))
}

async fn pair(ledger: &Ledger, dependency: &str) {
    let request = AcquireRequest {
        dependency,
        tenant: None,
        route: None,
        attempt: 0,
        priority: Priority::Normal,
        max_wait: None,
        degradable: false,
    };
    let decision = ledger.acquire(&request).await.unwrap();
    let lease = decision.granted().expect("granted").lease;
    ledger.release(&lease, Report::default()).unwrap();
}

fn uncontended(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("acquire_release/uncontended");
    group.throughput(Throughput::Elements(1));
    for dependencies in [1usize, 1_000, 100_000] {
        let ledger = runtime.block_on(async {
            let ledger = ledger(64, dependencies);
            for i in 0..dependencies {
                pair(&ledger, &format!("dep-{i}")).await;
            }
            ledger
        });
        let names: Vec<String> = (0..dependencies.min(1024))
            .map(|i| format!("dep-{i}"))
            .collect();
        let mut next = 0;
        // Borrowed, not cloned: a String and an Arc cloned per iteration
        // were a tenth of what this measured, and none of it the ledger's.
        let (ledger, names) = (&*ledger, &names);
        group.bench_function(BenchmarkId::new("dependencies", dependencies), |b| {
            b.to_async(&runtime).iter(|| {
                next = (next + 1) % names.len();
                let name = names[next].as_str();
                async move { pair(ledger, name).await }
            })
        });
    }
    group.finish();
}

/// `tasks` callers share `slots` permits on a multi-threaded runtime; one
/// iteration is `tasks x rounds` pairs.
fn contended(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("acquire_release/contended");
    for (tasks, slots) in [(8u32, 4u32), (64, 4)] {
        let rounds = 100u64;
        group.throughput(Throughput::Elements(u64::from(tasks) * rounds));
        let ledger = runtime.block_on(async { ledger(slots, 16) });
        group.bench_function(
            BenchmarkId::new(format!("{tasks}_callers"), format!("{slots}_slots")),
            |b| {
                b.to_async(&runtime).iter_custom(|iterations| {
                    let ledger = ledger.clone();
                    async move {
                        let start = Instant::now();
                        for _ in 0..iterations {
                            let callers: Vec<_> = (0..tasks)
                                .map(|_| {
                                    let ledger = ledger.clone();
                                    tokio::spawn(async move {
                                        for _ in 0..rounds {
                                            pair(&ledger, "db").await;
                                        }
                                    })
                                })
                                .collect();
                            for caller in callers {
                                caller.await.unwrap();
                            }
                        }
                        start.elapsed()
                    }
                })
            },
        );
    }
    group.finish();
}

/// Waking one waiter when 10k are queued costs the same as when one is.
/// Each iteration queues one normal-priority waiter ahead of a standing crowd
/// of sheddable ones, releases the held permit (which wakes it), and keeps
/// its permit as the next one to release.
fn wake_with_deep_queue(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("wake_one");
    for crowd in [0usize, 10_000] {
        let ledger = ledger(1, 16);
        let request = |priority| AcquireRequest {
            dependency: "db",
            tenant: None,
            route: None,
            attempt: 0,
            priority,
            max_wait: None,
            degradable: false,
        };
        let mut held = runtime.block_on(async {
            let held = ledger.acquire(&request(Priority::Normal)).await.unwrap();
            for _ in 0..crowd {
                let ledger = ledger.clone();
                tokio::spawn(async move { ledger.acquire(&request(Priority::Sheddable)).await });
            }
            while ledger.waiters() < crowd {
                tokio::task::yield_now().await;
            }
            held.granted().unwrap().lease
        });
        assert_eq!(ledger.waiters(), crowd);
        group.bench_function(BenchmarkId::new("queued", crowd), |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        let next = {
                            let ledger = ledger.clone();
                            tokio::spawn(async move {
                                let decision =
                                    ledger.acquire(&request(Priority::Normal)).await.unwrap();
                                decision.granted().unwrap().lease
                            })
                        };
                        tokio::task::yield_now().await;
                        ledger.release(&held, Report::default()).unwrap();
                        held = next.await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

/// One dependency with fair shares by tenant (`max_tenants` 100,000): an
/// uncontended acquire + release by one tenant of `tenants` (cycled, so the
/// table holds them all), against `acquire_release/uncontended`'s one
/// dependency without; and waking one waiter when 10k sheddable waiters of
/// 1,000 tenants are queued, against `wake_one`.
fn fair(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fair_limits = |concurrency| {
        limits(concurrency)
            .patched(&LimitsPatch {
                fairness: Some(Some(FairnessPatch {
                    by: Some(FairBy::Tenant),
                    max_tenants: Some(100_000),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .unwrap()
    };
    let fair_ledger = |concurrency| {
        Arc::new(Ledger::new(LedgerConfig {
            dependencies: vec![("db".to_owned(), fair_limits(concurrency))],
            ..LedgerConfig::default()
        }))
    };
    let names: Vec<String> = (0..1_000).map(|i| format!("tenant-{i}")).collect();
    let request = |tenant: &'static str, priority| AcquireRequest {
        dependency: "db",
        tenant: Some(tenant),
        route: None,
        attempt: 0,
        priority,
        max_wait: None,
        degradable: false,
    };
    let names: &'static [String] = Box::leak(names.into_boxed_slice());
    // A dependency's reaper task is spawned with it.
    let _runtime = runtime.enter();
    let mut group = c.benchmark_group("fair");
    group.throughput(Throughput::Elements(1));
    for tenants in [1usize, 1_000] {
        let ledger = fair_ledger(64);
        let mut next = 0;
        let ledger = &*ledger;
        group.bench_function(BenchmarkId::new("uncontended/tenants", tenants), |b| {
            b.to_async(&runtime).iter(|| {
                next = (next + 1) % tenants;
                let tenant = names[next].as_str();
                async move {
                    let decision = ledger
                        .acquire(&request(tenant, Priority::Normal))
                        .await
                        .unwrap();
                    let lease = decision.granted().expect("granted").lease;
                    ledger.release(&lease, Report::default()).unwrap();
                }
            })
        });
    }
    for crowd in [0usize, 10_000] {
        let ledger = fair_ledger(1);
        let mut held = runtime.block_on(async {
            let held = ledger
                .acquire(&request("holder", Priority::Normal))
                .await
                .unwrap();
            for i in 0..crowd {
                let ledger = ledger.clone();
                let tenant = names[i % names.len()].as_str();
                tokio::spawn(
                    async move { ledger.acquire(&request(tenant, Priority::Sheddable)).await },
                );
            }
            while ledger.waiters() < crowd {
                tokio::task::yield_now().await;
            }
            held.granted().unwrap().lease
        });
        group.bench_function(BenchmarkId::new("wake_one/queued", crowd), |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        let next = {
                            let ledger = ledger.clone();
                            tokio::spawn(async move {
                                let decision = ledger
                                    .acquire(&request("holder", Priority::Normal))
                                    .await
                                    .unwrap();
                                decision.granted().unwrap().lease
                            })
                        };
                        tokio::task::yield_now().await;
                        ledger.release(&held, Report::default()).unwrap();
                        held = next.await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, uncontended, contended, wake_with_deep_queue, fair);
criterion_main!(benches);
