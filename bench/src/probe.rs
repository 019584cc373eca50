//! `governor-bench probe`: the happy path's open loop alone, against a
//! sidecar that is already running: A1's or A5's pairs at a fixed rate, and
//! the sidecar's CPU per pair over the run.
//!
//! The harness measures the open loop and the saturation run of every arm
//! back to back, and `bench/profile.sh` profiles both together, where the
//! saturation run's samples dominate. The probe runs only the regime the
//! CPU-per-pair targets are judged in, for as long as a profiler or
//! `strace -c` needs, so that syscalls, TCP segments (`ss -ti`, `nstat`)
//! and samples can be counted per pair:
//!
//! ```text
//! taskset -c 0 target/release/governor --listen 127.0.0.1:50111 --uds /tmp/g.sock &
//! taskset -c 1 target/release/governor-bench probe --pid $! --mode session \
//!     --target unix:/tmp/g.sock --rate 2000 --seconds 5
//! ```
//!
//! The pairs are the arms' own ([`Op::Pair`] for A1, [`Op::Session`] with
//! the release fire-and-forget for A5, on `bench-happy`), sent by the arms'
//! open loop, and the CPU is read as the arms read it; `--schedule ticked`
//! paces the sends on tokio's timer instead ([`Pacing::Ticked`]).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use rate_governor_proto::v1::governor_client::GovernorClient;
use tonic::transport::Channel;

use crate::env::{clock_ticks, cpu_seconds};
use crate::happy::{DEPENDENCY, Op};
use crate::load::{Pacing, Schedule, open_loop_paced};
use crate::process::{tcp_channel, uds_channel};
use crate::session::SessionStream;

/// The word after `governor-bench` that runs the probe.
pub const COMMAND: &str = "probe";

#[derive(Debug, Parser)]
#[command(name = "governor-bench probe")]
pub struct ProbeArgs {
    /// `HOST:PORT` (or `http://HOST:PORT`), or `unix:PATH` for the
    /// sidecar's Unix socket.
    #[arg(long)]
    target: String,
    /// The sidecar's process id, for its CPU time.
    #[arg(long)]
    pid: u32,
    #[arg(long, value_enum, default_value = "session")]
    mode: Mode,
    #[arg(long, value_enum, default_value = "spaced")]
    schedule: ScheduleArg,
    /// Pairs per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Length of the measured run, after a warm-up of a tenth of it.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Acquire and Release, two unary calls (A1).
    Unary,
    /// Both on one Session stream, the release with id 0 (A5).
    Session,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ScheduleArg {
    /// Every pair at its own intended time, as the arms send.
    Spaced,
    /// On tokio's timer: the pairs of each millisecond together.
    Ticked,
}

async fn connect(target: &str) -> Result<Channel, String> {
    if let Some(path) = target.strip_prefix("unix:") {
        return uds_channel(Path::new(path)).await;
    }
    let addr = target.strip_prefix("http://").unwrap_or(target);
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("--target {target}: not HOST:PORT or unix:PATH ({e})"))?;
    tcp_channel(addr).await
}

/// Runs the probe and prints what it measured; an error if a pair failed.
pub async fn run(args: ProbeArgs) -> Result<(), String> {
    if !(args.rate > 0.0 && args.seconds > 0.0) {
        return Err("--rate and --seconds must be positive".into());
    }
    let channel = connect(&args.target).await?;
    let op = match args.mode {
        Mode::Unary => Op::Pair {
            client: GovernorClient::new(channel),
            traceparent: None,
        },
        Mode::Session => Op::Session {
            stream: SessionStream::open(channel, DEPENDENCY)
                .await
                .map_err(|s| format!("open the Session stream: {s}"))?,
            answered_release: false,
        },
    };
    let measure = Duration::from_secs_f64(args.seconds);
    let schedule = Schedule {
        rate: args.rate,
        warmup: measure / 10,
        measure,
    };
    let pacing = match args.schedule {
        ScheduleArg::Spaced => Pacing::Spaced,
        ScheduleArg::Ticked => Pacing::Ticked,
    };
    let ticks = clock_ticks();
    let cpu = || cpu_seconds(args.pid, ticks).ok_or(format!("no CPU time for pid {}", args.pid));
    let before = cpu()?;
    let run = open_loop_paced(schedule, pacing, || op.call()).await;
    let cpu = cpu()? - before;
    // As the arms count: every pair sent, warm-up included, over the CPU
    // of the whole run.
    let sent = (args.rate * (schedule.warmup + measure).as_secs_f64()).round();
    println!(
        "{:?} {:?} {}: {sent} pairs over {:.2} s ({} measured, {} errors); sidecar CPU {cpu:.3} s = {:.1} us per pair",
        args.mode,
        args.schedule,
        args.target,
        (schedule.warmup + measure).as_secs_f64(),
        run.ok,
        run.errors,
        cpu / sent * 1e6
    );
    match run.first_error {
        Some(e) => Err(format!("{} pairs failed, the first: {e}", run.errors)),
        None => Ok(()),
    }
}
