//! Adaptive limits in the real binary: callers over real gRPC in front of a
//! simulated downstream whose capacity halves; the enforced limit follows,
//! visible in AcquireResponse, GetDependency and /metrics. Shadow mode
//! enforces the ceiling while it reports what it computed; the control plane
//! and a reload switch algorithms; bad settings are refused naming the field.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use governor_integration_tests::{GovernorProcess, Signal, check_config};
use rate_governor_proto::v1::{
    self, AcquireRequest, AdaptiveLimit, DependencyLimits, GetDependencyRequest, LimitAlgorithm,
    ReleaseRequest, UpdateDependencyRequest, governor_admin_client::GovernorAdminClient,
    governor_client::GovernorClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

/// Long enough that the downstream, not the gRPC round trips of a debug
/// build on a small machine, is what saturates.
const SERVICE: Duration = Duration::from_millis(40);
/// Callers of the light load, which lets the no-load latency be learnt, and
/// of the heavy one, far more than the downstream serves at once.
const LIGHT: usize = 3;
const HEAVY: usize = 32;

fn config(shadow: bool) -> String {
    format!(
        r#"
[dependencies.sim]
max_concurrency = 64
max_queue = 1000
max_wait = "2s"
[dependencies.sim.adaptive]
algorithm = "gradient"
min_limit = 1
initial_limit = 16
shadow = {shadow}
window = "100ms"
min_samples = 10
"#
    )
}

/// A downstream of `workers` servers, each call taking [`SERVICE`].
struct Downstream {
    workers: Semaphore,
}

impl Downstream {
    async fn call(&self) {
        let _worker = self.workers.acquire().await.expect("never closed");
        tokio::time::sleep(SERVICE).await;
    }
}

/// Closed-loop callers (more than the downstream can serve at once): each
/// acquires, calls, releases SUCCESS with the latency it measured, and
/// records the enforced limit every answer carries.
struct Load {
    stop: Arc<AtomicBool>,
    limits: Arc<Mutex<Vec<(Instant, u32)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(
        client: &GovernorClient<Channel>,
        downstream: &Arc<Downstream>,
        callers: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let limits = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..callers)
            .map(|_| {
                let (mut client, downstream) = (client.clone(), downstream.clone());
                let (stop, limits) = (stop.clone(), limits.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let request = AcquireRequest {
                            dependency: "sim".into(),
                            ..Default::default()
                        };
                        let answer = client.acquire(request).await.unwrap().into_inner();
                        limits.lock().await.push((Instant::now(), answer.limit));
                        if !answer.granted {
                            continue;
                        }
                        let started = Instant::now();
                        downstream.call().await;
                        let latency = started.elapsed();
                        let release = ReleaseRequest {
                            lease_id: answer.lease_id,
                            outcome: v1::Outcome::Success.into(),
                            latency: Some(prost_types::Duration {
                                seconds: 0,
                                nanos: latency.subsec_nanos() as i32,
                            }),
                        };
                        assert!(client.release(release).await.unwrap().into_inner().released);
                    }
                })
            })
            .collect();
        Load {
            stop,
            limits,
            tasks,
        }
    }

    /// The mean enforced limit the answers of `[from, to)` carried.
    async fn mean_limit(&self, from: Instant, to: Instant) -> f64 {
        let limits = self.limits.lock().await;
        let seen: Vec<f64> = limits
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, limit)| f64::from(*limit))
            .collect();
        assert!(!seen.is_empty(), "no answers between the instants");
        seen.iter().sum::<f64>() / seen.len() as f64
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("no caller panicked");
        }
    }
}

async fn status(admin: &mut GovernorAdminClient<Channel>) -> v1::DependencyStatus {
    admin
        .get_dependency(GetDependencyRequest { name: "sim".into() })
        .await
        .unwrap()
        .into_inner()
}

/// GETs /metrics and returns the value of `name{dependency="sim"}`.
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: governor\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let series = format!("{name}{{dependency=\"sim\"}} ");
    let line = response
        .lines()
        .find(|line| line.starts_with(&series))
        .unwrap_or_else(|| panic!("no {series} in {response}"));
    line[series.len()..].trim().parse().unwrap()
}

/// Waits `during`, the load running.
async fn run_for(during: Duration) -> (Instant, Instant) {
    let from = Instant::now();
    tokio::time::sleep(during).await;
    (from, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_enforced_limit_follows_a_halved_capacity() {
    let gov =
        GovernorProcess::start_with_args(&config(false), &["--admin-listen", "127.0.0.1:0"]).await;
    let admin_addr = gov.admin_addr().expect("admin= in the ready line");
    let client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let downstream = Arc::new(Downstream {
        workers: Semaphore::new(8),
    });
    // A light load first: its latency is the no-load latency.
    let light = Load::start(&client, &downstream, LIGHT);
    run_for(Duration::from_millis(1500)).await;
    light.stop().await;
    let load = Load::start(&client, &downstream, HEAVY);

    // Eight workers: the limit settles near eight, far below the 32 callers.
    run_for(Duration::from_secs(2)).await;
    let (from, to) = run_for(Duration::from_secs(1)).await;
    let full = load.mean_limit(from, to).await;
    // Four workers: the limit comes down.
    // (Taken out of service as they come free: forget_permits only forgets
    // idle ones.)
    downstream.workers.acquire_many(4).await.unwrap().forget();
    run_for(Duration::from_secs(2)).await;
    let (from, to) = run_for(Duration::from_secs(1)).await;
    let half = load.mean_limit(from, to).await;
    load.stop().await;

    eprintln!("mean enforced limit: {full:.1} on 8 workers, {half:.1} on 4");
    assert!(full < 24.0, "32 callers, 8 workers: limit {full}");
    assert!(half < 0.8 * full, "capacity halved: {full} -> {half}");
    assert!(half >= 1.0);

    // With the load gone the limit holds still: every view agrees.
    let status = status(&mut admin).await;
    assert_eq!(status.max_concurrency, 64);
    assert_eq!(status.adaptive_limit, status.limit, "{status:?}");
    assert_eq!(status.limit_algorithm(), LimitAlgorithm::Gradient);
    assert!(status.limit < 24, "{status:?}");
    assert!(status.latency_baseline.is_some() && status.latency_recent.is_some());
    assert!(status.limit_changes_total > 0);
    let adaptive = status.adaptive.as_ref().expect("the settings in force");
    assert_eq!(
        (adaptive.min_limit, adaptive.shadow),
        (Some(1), Some(false))
    );
    let limit = f64::from(status.limit);
    assert_eq!(metric(admin_addr, "governor_dependency_limit").await, limit);
    assert_eq!(
        metric(admin_addr, "governor_dependency_adaptive_limit").await,
        limit
    );
    assert_eq!(
        metric(admin_addr, "governor_dependency_max_concurrency").await,
        64.0
    );
    let baseline = metric(admin_addr, "governor_dependency_latency_baseline_seconds").await;
    assert!(
        (0.035..0.1).contains(&baseline),
        "no-load latency estimate {baseline} s"
    );
    assert!(
        gov.stderr_so_far().contains("limit changed"),
        "limit changes are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_mode_enforces_the_ceiling_and_reports_the_computed_limit() {
    let gov =
        GovernorProcess::start_with_args(&config(true), &["--admin-listen", "127.0.0.1:0"]).await;
    let client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let downstream = Arc::new(Downstream {
        workers: Semaphore::new(4),
    });
    let light = Load::start(&client, &downstream, LIGHT);
    run_for(Duration::from_millis(1500)).await;
    light.stop().await;
    let load = Load::start(&client, &downstream, HEAVY);
    let (from, to) = run_for(Duration::from_secs(3)).await;
    let enforced = load.mean_limit(from, to).await;
    load.stop().await;

    assert_eq!(enforced, 64.0, "shadow mode enforces max_concurrency");
    let status = status(&mut admin).await;
    assert_eq!(status.limit, 64);
    assert!(
        status.adaptive_limit < 32,
        "32 callers on 4 workers: computed {}",
        status.adaptive_limit
    );
    assert_eq!(status.adaptive.and_then(|a| a.shadow), Some(true));
}

fn update(adaptive: AdaptiveLimit) -> UpdateDependencyRequest {
    UpdateDependencyRequest {
        name: "sim".into(),
        limits: Some(DependencyLimits {
            adaptive: Some(adaptive),
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_control_plane_and_reloads_switch_algorithms() {
    let gov = GovernorProcess::start(&config(false)).await;
    let mut admin = gov.admin_client().await;
    assert_eq!(
        status(&mut admin).await.limit,
        16,
        "starts at initial_limit"
    );

    // Switching keeps the limit in force.
    let vegas = admin
        .update_dependency(update(AdaptiveLimit {
            algorithm: LimitAlgorithm::Vegas.into(),
            min_limit: Some(2),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vegas.limit_algorithm(), LimitAlgorithm::Vegas);
    assert_eq!(vegas.limit, 16);
    assert_eq!(vegas.adaptive.and_then(|a| a.min_limit), Some(2));

    // Bad settings are refused naming the field, and change nothing.
    for (adaptive, field) in [
        (
            AdaptiveLimit {
                min_limit: Some(0),
                ..Default::default()
            },
            "limits.adaptive.min_limit",
        ),
        (
            AdaptiveLimit {
                min_limit: Some(65),
                ..Default::default()
            },
            "limits.adaptive.min_limit",
        ),
        (
            AdaptiveLimit {
                algorithm: 99,
                ..Default::default()
            },
            "limits.adaptive.algorithm",
        ),
        (
            AdaptiveLimit {
                tolerance: Some(f64::NAN),
                ..Default::default()
            },
            "limits.adaptive.tolerance",
        ),
    ] {
        let error = admin.update_dependency(update(adaptive)).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
        assert!(error.message().starts_with(field), "{}", error.message());
    }
    assert_eq!(
        status(&mut admin).await.limit_algorithm(),
        LimitAlgorithm::Vegas
    );

    // Off: max_concurrency is the limit again.
    let off = admin
        .update_dependency(update(AdaptiveLimit {
            algorithm: LimitAlgorithm::Static.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.limit_algorithm(), LimitAlgorithm::Static);
    assert_eq!((off.limit, off.adaptive_limit, off.adaptive), (64, 0, None));

    // A reload with another algorithm takes over from the limit in force.
    let reloaded = config(false).replace("\"gradient\"", "\"aimd\"");
    std::fs::write(gov.config_path(), reloaded).unwrap();
    gov.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = status(&mut admin).await;
        if status.limit_algorithm() == LimitAlgorithm::Aimd {
            assert_eq!(status.limit, 64, "starts from the limit in force");
            break;
        }
        assert!(Instant::now() < deadline, "reload not applied: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bad_adaptive_config_exits_64_naming_the_key() {
    for (toml, key) in [
        (
            "[dependencies.sim.adaptive]\nalgorithm = \"bbr\"",
            "dependencies.sim.adaptive.algorithm",
        ),
        (
            "[defaults.adaptive]\nwindow = \"1ms\"",
            "defaults.adaptive.window",
        ),
        ("[dependencies.sim.adaptive]\nspeed = 3", "speed"),
    ] {
        let (code, stderr) = check_config(toml).await;
        assert_eq!(code, Some(64), "{stderr}");
        assert!(stderr.contains(key), "{key} not named in {stderr}");
    }
}
