//! Holds waiting Acquires open against a running governor, for heap
//! profiling (scripts/waiter-heap.sh, the README's memory section):
//!
//! ```sh
//! cargo run -p governor-integration-tests --example hold_waiters -- \
//!     127.0.0.1:50051 unary 2000 4
//! ```
//!
//! Takes the only permit of dependency `held` (which the governor's config
//! must give `max_concurrency = 1` and room to queue), then queues `N`
//! Acquires behind it over `CONNECTIONS` HTTP/2 connections: in `unary`
//! mode each is its own raw HTTP/2 stream with a whole Acquire request
//! (as tests/tests/abuse.rs does), in `session` mode they are messages on
//! one `Session` stream per connection. Once the governor reports `N`
//! queued it prints `held N waiters`, keeps them for `HOLD_SECONDS`
//! (default 2), then closes every connection, waits for the queue to be
//! empty, releases its permit and exits 0. Any failure exits non-zero
//! with a message.

use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use rate_governor_proto::v1::{
    self, AcquireRequest, GetDependencyRequest, ReleaseRequest, SessionRequest,
    governor_admin_client::GovernorAdminClient, governor_client::GovernorClient, session_request,
};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::codegen::{Bytes, http};
use tonic::transport::{Channel, Endpoint};

const DEPENDENCY: &str = "held";
/// How long the governor (slow under valgrind) may take to queue them all.
const PATIENCE: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Unary,
    Session,
}

struct Args {
    addr: SocketAddr,
    mode: Mode,
    waiters: usize,
    connections: usize,
    hold: Duration,
}

fn args() -> Result<Args, String> {
    let usage = "usage: hold_waiters ADDR unary|session N CONNECTIONS [HOLD_SECONDS]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(4..=5).contains(&args.len()) {
        return Err(usage.into());
    }
    let addr = args[0]
        .parse()
        .map_err(|e| format!("ADDR {:?}: {e}", args[0]))?;
    let mode = match args[1].as_str() {
        "unary" => Mode::Unary,
        "session" => Mode::Session,
        other => return Err(format!("mode {other:?}: must be unary or session")),
    };
    let count = |name: &str, text: &str| match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{name} {text:?}: must be a positive integer")),
    };
    let waiters = count("N", &args[2])?;
    let connections = count("CONNECTIONS", &args[3])?;
    let hold = match args.get(4) {
        Some(text) => Duration::from_secs(
            text.parse()
                .map_err(|e| format!("HOLD_SECONDS {text:?}: {e}"))?,
        ),
        None => Duration::from_secs(2),
    };
    Ok(Args {
        addr,
        mode,
        waiters,
        connections,
        hold,
    })
}

fn acquire_request() -> AcquireRequest {
    AcquireRequest {
        dependency: DEPENDENCY.into(),
        ..Default::default()
    }
}

/// A gRPC Acquire as HTTP/2 parts: headers and the length-prefixed body.
fn grpc_acquire(addr: SocketAddr) -> (http::Request<()>, Bytes) {
    let request = http::Request::post(format!("http://{addr}/governor.v1.Governor/Acquire"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request");
    let message = acquire_request().encode_to_vec();
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    (request, Bytes::from(body))
}

/// A channel on a connection of its own; a few tries, as the governor
/// under valgrind is slow to accept.
async fn connect(addr: SocketAddr) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
    let mut tries = 0;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(error) if tries < 5 => {
                tries += 1;
                eprintln!("hold_waiters: connect {addr}: {error:?}; again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(format!("connect {addr}: {error:?}")),
        }
    }
}

async fn queued(admin: &mut GovernorAdminClient<Channel>) -> Result<usize, String> {
    let status = admin
        .get_dependency(GetDependencyRequest {
            name: DEPENDENCY.into(),
        })
        .await
        .map_err(|e| format!("GetDependency {DEPENDENCY}: {e}"))?
        .into_inner();
    Ok(status.queued as usize)
}

async fn wait_queued(admin: &mut GovernorAdminClient<Channel>, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = queued(admin).await?;
        if now == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{now} queued after {PATIENCE:?}, waiting for {n}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What keeps the waiters open; dropped, it closes their connections.
enum Held {
    Unary(
        Vec<tokio::task::JoinHandle<Result<(), h2::Error>>>,
        Vec<h2::client::ResponseFuture>,
    ),
    Session(
        Vec<(
            Channel,
            tokio::sync::mpsc::Sender<SessionRequest>,
            tonic::Streaming<v1::SessionResponse>,
        )>,
    ),
}

async fn hold_unary(args: &Args) -> Result<Held, String> {
    let builder = h2::client::Builder::new();
    let mut connections = Vec::new();
    let mut streams = Vec::with_capacity(args.waiters);
    for c in 0..args.connections {
        let tcp = TcpStream::connect(args.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", args.addr))?;
        let (send, connection) = builder
            .handshake(tcp)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        connections.push(tokio::spawn(connection));
        let mut send = send.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
        for _ in (c..args.waiters).step_by(args.connections) {
            let (request, body) = grpc_acquire(args.addr);
            let (response, mut stream) = send
                .send_request(request, false)
                .map_err(|e| format!("open a stream: {e}"))?;
            stream
                .send_data(body, true)
                .map_err(|e| format!("send an Acquire: {e}"))?;
            streams.push(response);
            send = send.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
        }
    }
    Ok(Held::Unary(connections, streams))
}

async fn hold_session(args: &Args) -> Result<Held, String> {
    let mut sessions = Vec::new();
    let mut id = 0;
    for c in 0..args.connections {
        // One connection per session: a fresh channel each time.
        let channel = connect(args.addr).await?;
        let mine = (c..args.waiters).step_by(args.connections).count();
        let (tx, rx) = tokio::sync::mpsc::channel(mine.max(1));
        for _ in 0..mine {
            id += 1;
            tx.send(SessionRequest {
                id,
                op: Some(session_request::Op::Acquire(acquire_request())),
            })
            .await
            .map_err(|_| "the request stream closed".to_string())?;
        }
        let responses = GovernorClient::new(channel.clone())
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("Session: {e}"))?
            .into_inner();
        sessions.push((channel, tx, responses));
    }
    Ok(Held::Session(sessions))
}

async fn run() -> Result<(), String> {
    let args = args()?;
    let channel = connect(args.addr).await?;
    let mut client = GovernorClient::new(channel.clone());
    let mut admin = GovernorAdminClient::new(channel);
    let holder = client
        .acquire(acquire_request())
        .await
        .map_err(|e| format!("the holder's Acquire: {e}"))?
        .into_inner();
    if !holder.granted {
        return Err(format!(
            "the holder's Acquire on {DEPENDENCY} was not granted: {holder:?}"
        ));
    }
    let held = match args.mode {
        Mode::Unary => hold_unary(&args).await?,
        Mode::Session => hold_session(&args).await?,
    };
    wait_queued(&mut admin, args.waiters).await?;
    println!("held {} waiters", args.waiters);
    tokio::time::sleep(args.hold).await;

    match held {
        Held::Unary(connections, streams) => {
            for connection in connections {
                connection.abort();
            }
            drop(streams);
        }
        Held::Session(sessions) => drop(sessions),
    }
    wait_queued(&mut admin, 0).await?;
    let released = client
        .release(ReleaseRequest {
            lease_id: holder.lease_id,
            outcome: v1::Outcome::Success.into(),
            latency: None,
        })
        .await
        .map_err(|e| format!("the holder's Release: {e}"))?
        .into_inner()
        .released;
    if !released {
        return Err("the holder's lease was not released".into());
    }
    println!("released");
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hold_waiters: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
