//! The happy path's open loop, alone, against a sidecar that is already
//! running: acquire + release pairs at a fixed rate over unary calls or one
//! Session stream, and the sidecar's CPU per pair over the run.
//!
//! `governor-bench` measures the open loop and the saturation run of every
//! arm back to back, and `bench/profile.sh` profiles both together, where
//! the saturation run's samples dominate. This probe runs only the regime
//! the CPU-per-pair targets are judged in, for as long as a profiler or
//! `strace -c` needs, so that syscalls, TCP segments (`ss -ti`, `nstat`)
//! and samples can be counted per pair:
//!
//! ```text
//! taskset -c 0 target/release/governor --listen 127.0.0.1:50111 --uds /tmp/g.sock &
//! taskset -c 1 target/release/examples/open_loop_probe --pid $! --mode session \
//!     --target unix:/tmp/g.sock --rate 2000 --seconds 5
//! ```
//!
//! `--schedule spaced` (the default) sends every pair at its own intended
//! time, waiting the last millisecond out with `yield_now` as the harness
//! does; `--schedule ticked` sleeps on tokio's timer, whose 1 ms
//! granularity sends the pairs of each millisecond together, as a client
//! whose event loop wakes per tick would. The sidecar's CPU is the sum of
//! its threads' run time (`/proc/PID/task/*/schedstat`, nanoseconds).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rate_governor_proto::v1::governor_client::GovernorClient;
use rate_governor_proto::v1::{self as pb, session_request, session_response};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
struct Args {
    /// `http://HOST:PORT`, or `unix:PATH` for the sidecar's Unix socket.
    #[arg(long)]
    target: String,
    /// The sidecar's process id, for its CPU time.
    #[arg(long)]
    pid: u32,
    #[arg(long, value_enum, default_value = "session")]
    mode: Mode,
    #[arg(long, value_enum, default_value = "spaced")]
    schedule: Schedule,
    /// Pairs per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Length of the measured run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long, default_value = "bench-happy")]
    dependency: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Acquire and Release, two unary calls (A1).
    Unary,
    /// Both on one Session stream, the release with id 0 (A5).
    Session,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Schedule {
    Spaced,
    Ticked,
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<pb::SessionResponse>>>>;

#[derive(Clone)]
struct Client {
    unary: GovernorClient<Channel>,
    session: Option<(mpsc::Sender<pb::SessionRequest>, Waiters)>,
    next_id: Arc<AtomicU64>,
    dependency: String,
}

impl Client {
    async fn open(channel: Channel, mode: Mode, dependency: String) -> Result<Client, String> {
        let unary = GovernorClient::new(channel);
        let session = match mode {
            Mode::Unary => None,
            Mode::Session => {
                let (requests, outbound) = mpsc::channel(4096);
                let mut answers = unary
                    .clone()
                    .session(ReceiverStream::new(outbound))
                    .await
                    .map_err(|s| format!("open the Session stream: {s}"))?
                    .into_inner();
                let waiters: Waiters = Arc::default();
                let routed = waiters.clone();
                tokio::spawn(async move {
                    while let Ok(Some(answer)) = answers.message().await {
                        let mut waiting = routed.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(waiter) = waiting.remove(&answer.id) {
                            let _ = waiter.send(answer);
                        }
                    }
                    // The stream ended: the waiters' senders drop with the
                    // map, and every pair still waiting fails.
                    routed.lock().unwrap_or_else(|e| e.into_inner()).clear();
                });
                Some((requests, waiters))
            }
        };
        Ok(Client {
            unary,
            session,
            next_id: Arc::new(AtomicU64::new(1)),
            dependency,
        })
    }

    async fn pair(mut self) -> Result<(), String> {
        let acquire = pb::AcquireRequest {
            dependency: self.dependency.clone(),
            ..Default::default()
        };
        let Some((requests, waiters)) = &self.session else {
            let answer = self
                .unary
                .acquire(acquire)
                .await
                .map_err(|s| format!("Acquire: {s}"))?
                .into_inner();
            if !answer.granted {
                return Err(format!("Acquire not granted: {:?}", answer.reason()));
            }
            self.unary
                .release(release(answer.lease_id))
                .await
                .map_err(|s| format!("Release: {s}"))?;
            return Ok(());
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (waiter, answer) = oneshot::channel();
        waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, waiter);
        let send = |request| async {
            requests
                .send(request)
                .await
                .map_err(|_| "the Session stream is closed".to_owned())
        };
        send(pb::SessionRequest {
            id,
            op: Some(session_request::Op::Acquire(acquire)),
        })
        .await?;
        let answer = answer
            .await
            .map_err(|_| "the Session stream ended".to_owned())?;
        let lease_id = match answer.result {
            Some(session_response::Result::Acquire(a)) if a.granted => a.lease_id,
            other => return Err(format!("Session acquire answered {other:?}")),
        };
        send(pb::SessionRequest {
            id: 0,
            op: Some(session_request::Op::Release(release(lease_id))),
        })
        .await
    }
}

fn release(lease_id: String) -> pb::ReleaseRequest {
    pb::ReleaseRequest {
        lease_id,
        outcome: pb::Outcome::Success as i32,
        latency: None,
    }
}

/// The run time of all of `pid`'s threads, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("read /proc/{pid}/task: {e}"))?;
    let mut nanos = 0u64;
    for task in tasks.flatten() {
        // A thread that exited meanwhile has no file: it counts 0 here.
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        nanos += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(nanos as f64 * 1e-9)
}

/// tonic's endpoint takes `unix:PATH` as well as `http://HOST:PORT`.
async fn connect(target: &str) -> Result<Channel, String> {
    Endpoint::from_shared(target.to_owned())
        .map_err(|e| format!("--target {target}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connect {target}: {e}"))
}

async fn wait_until(at: Instant, schedule: Schedule) {
    match schedule {
        Schedule::Ticked => tokio::time::sleep_until(at.into()).await,
        Schedule::Spaced => loop {
            let now = Instant::now();
            if now >= at {
                return;
            }
            if at - now > Duration::from_micros(1500) {
                tokio::time::sleep_until((at - Duration::from_millis(1)).into()).await;
            } else {
                tokio::task::yield_now().await;
            }
        },
    }
}

async fn run(args: Args) -> Result<(), String> {
    if !(args.rate > 0.0 && args.seconds > 0.0) {
        return Err("--rate and --seconds must be positive".into());
    }
    let channel = connect(&args.target).await?;
    let client = Client::open(channel, args.mode, args.dependency.clone()).await?;
    // Warm up the connection, the stream and the dependency.
    for _ in 0..200 {
        client.clone().pair().await?;
    }
    let pairs = (args.rate * args.seconds).round() as u32;
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let cpu_before = cpu_seconds(args.pid)?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..pairs {
        wait_until(start + period * i, args.schedule).await;
        tasks.spawn(client.clone().pair());
    }
    let mut errors = 0u32;
    let mut first_error = None;
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result.map_err(|e| e.to_string()).and_then(|r| r) {
            errors += 1;
            first_error.get_or_insert(e);
        }
    }
    let cpu = cpu_seconds(args.pid)? - cpu_before;
    println!(
        "{:?} {:?} {}: {pairs} pairs in {:.2} s, {errors} errors; sidecar CPU {:.3} s = {:.1} us per pair",
        args.mode,
        args.schedule,
        args.target,
        start.elapsed().as_secs_f64(),
        cpu,
        cpu / f64::from(pairs) * 1e6
    );
    match first_error {
        Some(e) => Err(format!("{errors} pairs failed, the first: {e}")),
        None => Ok(()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("open_loop_probe: {e}");
            ExitCode::FAILURE
        }
    }
}
