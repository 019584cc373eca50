//! The Session stream (issue 11) against the real binary over real gRPC:
//! leases owned by the stream and freed the moment it ends (SIGKILLed
//! holder, half-close, undecodable message, black-holed connection),
//! independent acquires answered out of order, per-message errors,
//! fire-and-forget releases, and session leases released by the unary RPC.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use governor_integration_tests::GovernorProcess;
use rate_governor_proto::v1::{
    self, AcquireRequest, GetDependencyRequest, ReleaseRequest, RenewRequest, SessionRequest,
    SessionResponse, governor_admin_client::GovernorAdminClient, governor_client::GovernorClient,
    session_request::Op, session_response::Result as Answer,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{Bytes, http};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// One open session: what we send and what comes back.
struct Open {
    tx: mpsc::Sender<SessionRequest>,
    rx: Streaming<SessionResponse>,
}

async fn open(client: &mut GovernorClient<Channel>) -> Open {
    let (tx, outbound) = mpsc::channel(64);
    let rx = client
        .session(ReceiverStream::new(outbound))
        .await
        .expect("Session is served")
        .into_inner();
    Open { tx, rx }
}

impl Open {
    async fn send(&self, id: u64, op: Op) {
        self.tx
            .send(SessionRequest { id, op: Some(op) })
            .await
            .expect("the stream is open");
    }

    async fn next(&mut self) -> SessionResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("an answer within 10 s")
            .expect("the stream did not fail")
            .expect("the stream did not end")
    }
}

fn acquire_op(dependency: &str, max_wait: Option<Duration>) -> Op {
    Op::Acquire(AcquireRequest {
        dependency: dependency.into(),
        max_wait: max_wait.map(|d| prost_types::Duration {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }),
        ..Default::default()
    })
}

fn release_op(lease_id: &str) -> Op {
    Op::Release(ReleaseRequest {
        lease_id: lease_id.into(),
        outcome: v1::Outcome::Success as i32,
        latency: None,
    })
}

fn granted(answer: &SessionResponse) -> String {
    match &answer.result {
        Some(Answer::Acquire(a)) if a.granted => a.lease_id.clone(),
        other => panic!("expected a grant, got {other:?}"),
    }
}

async fn load(admin: &mut GovernorAdminClient<Channel>, name: &str) -> (u32, u32) {
    let status = admin
        .get_dependency(GetDependencyRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner();
    (status.in_flight, status.queued)
}

/// Polls GetDependency until `name` has `want` (in flight, queued); returns
/// how long that took after `since`, or panics after `within`.
async fn wait_load(
    admin: &mut GovernorAdminClient<Channel>,
    name: &str,
    want: (u32, u32),
    since: Instant,
    within: Duration,
) -> Duration {
    let polled = async {
        loop {
            if load(admin, name).await == want {
                return since.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    match tokio::time::timeout_at(since + within, polled).await {
        Ok(elapsed) => elapsed,
        Err(_) => panic!(
            "{name} did not reach (in_flight, queued) = {want:?} within {within:?}: {:?}",
            load(admin, name).await
        ),
    }
}

async fn metrics(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: governor\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// `governor_release_total` of `dependency` with `outcome`.
async fn releases(addr: SocketAddr, dependency: &str, outcome: &str) -> f64 {
    let labels = [
        format!("dependency=\"{dependency}\""),
        format!("outcome=\"{outcome}\""),
    ];
    metrics(addr)
        .await
        .lines()
        .filter(|l| l.starts_with("governor_release_total{"))
        .find(|l| labels.iter().all(|label| l.contains(label.as_str())))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

const CHILD_ENV: &str = "GOVERNOR_SESSION_CHILD";

/// Not a test of its own: the child process of
/// `a_sigkilled_holder_gets_its_permits_back_within_100ms`, which runs this
/// test binary again with the sidecar's address in `GOVERNOR_SESSION_CHILD`.
/// It takes two permits and queues two more acquires on one session, says
/// so on stdout, and waits to be killed.
#[tokio::test]
async fn session_child_holding_permits() {
    let Ok(endpoint) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut client = GovernorClient::connect(endpoint).await.unwrap();
    let mut session = open(&mut client).await;
    for id in 1..=2 {
        session.send(id, acquire_op("db", None)).await;
        granted(&session.next().await);
    }
    for id in 3..=4 {
        session
            .send(id, acquire_op("db", Some(Duration::from_secs(60))))
            .await;
    }
    println!("holding");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_holder_gets_its_permits_back_within_100ms() {
    let gov = GovernorProcess::start(
        "[dependencies.db]\nmax_concurrency = 2\nmax_wait = \"1m\"\nlease_ttl = \"1h\"\n",
    )
    .await;
    let mut admin = gov.admin_client().await;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["session_child_holding_permits", "--exact", "--nocapture"])
        .env(CHILD_ENV, gov.endpoint())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("holding") {
                return;
            }
        }
        panic!("the child exited before it held its permits");
    })
    .await
    .expect("the child holds its permits within 30 s");
    // Both queued acquires are in (they were sent before "holding").
    wait_load(
        &mut admin,
        "db",
        (2, 2),
        Instant::now(),
        Duration::from_secs(5),
    )
    .await;

    let killed = Instant::now();
    child.start_kill().unwrap();
    let took = wait_load(&mut admin, "db", (0, 0), killed, Duration::from_millis(100)).await;
    child.wait().await.unwrap();
    eprintln!("permits back {took:?} after SIGKILL");
    assert_eq!(
        releases(gov.admin_addr().unwrap(), "db", "session_closed").await,
        2.0
    );
}

#[tokio::test]
async fn a_clean_half_close_releases_everything() {
    let gov =
        GovernorProcess::start("[dependencies.db]\nmax_concurrency = 2\nmax_wait = \"1m\"\n").await;
    let mut admin = gov.admin_client().await;
    let mut client = gov.governor_client().await;
    let mut session = open(&mut client).await;
    for id in 1..=2 {
        session.send(id, acquire_op("db", None)).await;
        granted(&session.next().await);
    }
    session.send(3, acquire_op("db", None)).await;
    wait_load(
        &mut admin,
        "db",
        (2, 1),
        Instant::now(),
        Duration::from_secs(5),
    )
    .await;

    let Open { tx, mut rx } = session;
    drop(tx);
    // The server ends its side too, with OK.
    let end = tokio::time::timeout(Duration::from_secs(5), rx.message())
        .await
        .expect("the stream ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert_eq!(load(&mut admin, "db").await, (0, 0));
    assert_eq!(
        releases(gov.admin_addr().unwrap(), "db", "session_closed").await,
        2.0
    );
}

#[tokio::test]
async fn a_waiting_acquire_never_delays_a_later_one() {
    let gov =
        GovernorProcess::start("[dependencies.db]\nmax_concurrency = 1\nmax_wait = \"1m\"\n").await;
    let mut client = gov.governor_client().await;
    let held = client
        .acquire(AcquireRequest {
            dependency: "db".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .lease_id;
    let mut session = open(&mut client.clone()).await;
    session.send(7, acquire_op("db", None)).await;
    session.send(8, acquire_op("cache", None)).await;
    session
        .send(9, acquire_op("db", Some(Duration::ZERO)))
        .await;
    // The later ones are decided first; each answer carries its id.
    let first = session.next().await;
    let second = session.next().await;
    let mut early = [first.id, second.id];
    early.sort();
    assert_eq!(early, [8, 9]);
    for answer in [&first, &second] {
        match (&answer.id, &answer.result) {
            (8, Some(Answer::Acquire(a))) => assert!(a.granted),
            (9, Some(Answer::Acquire(a))) => {
                assert!(!a.granted);
                assert_eq!(a.reason(), v1::RejectReason::QueueTimeout);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Freeing the slot grants the one that waited.
    assert!(
        client
            .release(ReleaseRequest {
                lease_id: held,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .released
    );
    let last = session.next().await;
    assert_eq!(last.id, 7);
    granted(&last);
}

#[tokio::test]
async fn bad_input_is_answered_per_message_and_the_stream_stays_open() {
    let gov = GovernorProcess::start(
        "[limits]\nmax_session_pending = 2\n[dependencies.db]\nmax_concurrency = 1\nmax_wait = \"1m\"\n",
    )
    .await;
    let mut client = gov.governor_client().await;
    let mut session = open(&mut client).await;
    let error = |answer: &SessionResponse| match &answer.result {
        Some(Answer::Error(e)) => (e.code, e.message.clone()),
        other => panic!("expected an error, got {other:?}"),
    };

    session.send(1, acquire_op("", None)).await;
    let answer = session.next().await;
    assert_eq!(answer.id, 1);
    let (code, message) = error(&answer);
    assert_eq!(code, Code::InvalidArgument as i32);
    assert!(message.starts_with("dependency: "), "{message}");

    session
        .send(2, acquire_op("db", Some(Duration::from_secs(1_000_000))))
        .await;
    let (code, message) = error(&session.next().await);
    assert_eq!(code, Code::InvalidArgument as i32);
    assert!(message.starts_with("max_wait: "), "{message}");

    session
        .tx
        .send(SessionRequest { id: 3, op: None })
        .await
        .unwrap();
    let answer = session.next().await;
    assert_eq!(answer.id, 3);
    assert!(error(&answer).1.starts_with("op: "));

    session
        .send(
            4,
            Op::Renew(RenewRequest {
                lease_id: String::new(),
            }),
        )
        .await;
    assert!(error(&session.next().await).1.starts_with("lease_id: "));

    session.send(0, acquire_op("db", None)).await;
    assert!(error(&session.next().await).1.starts_with("id: "));

    session.send(5, release_op("")).await;
    assert!(error(&session.next().await).1.starts_with("lease_id: "));

    // Still open: a grant, then the per-session cap of pending acquires.
    session.send(6, acquire_op("db", None)).await;
    granted(&session.next().await);
    session.send(7, acquire_op("db", None)).await;
    session.send(8, acquire_op("db", None)).await;
    session.send(9, acquire_op("db", None)).await;
    let answer = session.next().await;
    assert_eq!(answer.id, 9);
    let (code, message) = error(&answer);
    assert_eq!(code, Code::ResourceExhausted as i32);
    assert!(message.contains("limits.max_session_pending"), "{message}");
}

#[tokio::test]
async fn a_release_with_id_0_is_not_answered() {
    let gov = GovernorProcess::start("[dependencies.db]\nmax_concurrency = 1\n").await;
    let mut admin = gov.admin_client().await;
    let mut client = gov.governor_client().await;
    let mut session = open(&mut client).await;
    session.send(1, acquire_op("db", None)).await;
    let lease = granted(&session.next().await);
    session.send(0, release_op(&lease)).await;
    // The next answer is the renew's: the release had none.
    session
        .send(
            2,
            Op::Renew(RenewRequest {
                lease_id: lease.clone(),
            }),
        )
        .await;
    let answer = session.next().await;
    assert_eq!(answer.id, 2);
    match answer.result {
        Some(Answer::Renew(r)) => assert!(!r.renewed, "released before the renew"),
        other => panic!("{other:?}"),
    }
    assert_eq!(load(&mut admin, "db").await, (0, 0));
    // With an id, a release is answered.
    session.send(3, acquire_op("db", None)).await;
    let lease = granted(&session.next().await);
    session.send(4, release_op(&lease)).await;
    let answer = session.next().await;
    assert_eq!(answer.id, 4);
    assert!(matches!(answer.result, Some(Answer::Release(r)) if r.released));
}

#[tokio::test]
async fn a_session_lease_released_by_the_unary_rpc_is_freed_once() {
    let gov = GovernorProcess::start("[dependencies.db]\nmax_concurrency = 2\n").await;
    let admin_addr = gov.admin_addr().unwrap();
    let mut admin = gov.admin_client().await;
    let mut client = gov.governor_client().await;
    let mut session = open(&mut client.clone()).await;
    session.send(1, acquire_op("db", None)).await;
    let lease = granted(&session.next().await);
    session.send(2, acquire_op("db", None)).await;
    let kept = granted(&session.next().await);
    let released = client
        .release(ReleaseRequest {
            lease_id: lease.clone(),
            outcome: v1::Outcome::Success as i32,
            latency: None,
        })
        .await
        .unwrap()
        .into_inner()
        .released;
    assert!(released);
    let renewed = client
        .renew(RenewRequest { lease_id: kept })
        .await
        .unwrap()
        .into_inner();
    assert!(
        renewed.renewed,
        "a session lease renews by the unary RPC too"
    );
    // Over the stream now: already gone.
    session.send(3, release_op(&lease)).await;
    assert!(matches!(session.next().await.result, Some(Answer::Release(r)) if !r.released));
    assert_eq!(load(&mut admin, "db").await, (1, 0));

    drop(session);
    wait_load(
        &mut admin,
        "db",
        (0, 0),
        Instant::now(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(releases(admin_addr, "db", "success").await, 1.0);
    assert_eq!(releases(admin_addr, "db", "session_closed").await, 1.0);
}

/// A SessionRequest as gRPC frames it.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

#[tokio::test]
async fn an_undecodable_message_ends_the_stream_and_releases() {
    let gov = GovernorProcess::start("[dependencies.db]\nmax_concurrency = 1\n").await;
    let mut admin = gov.admin_client().await;
    let addr = gov.grpc_addr();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{addr}/governor.v1.Governor/Session"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = h2.send_request(request, false).unwrap();
    // id = 1, acquire { dependency: "db" }, by hand.
    let acquire = [0x08, 0x01, 0x12, 0x04, 0x0a, 0x02, b'd', b'b'];
    stream
        .send_data(Bytes::from(frame(&acquire)), false)
        .unwrap();
    let mut body = response.await.unwrap().into_body();
    let data = body.data().await.unwrap().unwrap();
    let _ = body.flow_control().release_capacity(data.len());
    assert_eq!(load(&mut admin, "db").await, (1, 0), "granted");
    // Field 2 (acquire) says 5 bytes follow; 1 does.
    stream
        .send_data(Bytes::from(frame(&[0x12, 0x05, 0x01])), false)
        .unwrap();
    let trailers = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(data) = body.data().await {
            let _ = body.flow_control().release_capacity(data.unwrap().len());
        }
        body.trailers().await.unwrap().expect("trailers")
    })
    .await
    .expect("the stream ends");
    let status = trailers.get("grpc-status").unwrap().to_str().unwrap();
    assert_eq!(status, (Code::Internal as i32).to_string(), "{trailers:?}");
    let message = trailers.get("grpc-message").unwrap().to_str().unwrap();
    assert!(message.contains("decode"), "{message}");
    assert_eq!(load(&mut admin, "db").await, (0, 0));
}

/// A loopback TCP proxy that forwards until told to stop, then holds both
/// connections open and forwards nothing: a black-holed peer.
async fn black_hole_proxy(to: SocketAddr) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(to).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            for (mut from, mut into) in [(client_read, server_write), (server_read, client_write)] {
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0; 16 * 1024];
                    loop {
                        tokio::select! {
                            _ = stopped.changed() => break,
                            read = from.read(&mut buffer) => match read {
                                Ok(0) | Err(_) => return,
                                Ok(n) => if into.write_all(&buffer[..n]).await.is_err() { return },
                            },
                        }
                    }
                    // Black-holed: keep both ends open, read nothing.
                    std::future::pending::<()>().await;
                    drop((from, into));
                });
            }
        }
    });
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_connection_releases_after_keepalive_and_not_before() {
    let interval = Duration::from_secs(1);
    let timeout = Duration::from_secs(1);
    let gov = GovernorProcess::start(
        "[server]\nkeepalive_interval = \"1s\"\nkeepalive_timeout = \"1s\"\n\
         [dependencies.db]\nmax_concurrency = 1\nlease_ttl = \"1h\"\n",
    )
    .await;
    let mut admin = gov.admin_client().await;
    let (proxy, stop) = black_hole_proxy(gov.grpc_addr()).await;
    let channel = Channel::from_shared(format!("http://{proxy}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = GovernorClient::new(channel);
    let mut session = open(&mut client).await;
    session.send(1, acquire_op("db", None)).await;
    granted(&session.next().await);
    stop.send(true).unwrap();
    let stopped = Instant::now();
    let bound = interval + timeout;
    let took = wait_load(&mut admin, "db", (0, 0), stopped, bound * 3).await;
    eprintln!("released {took:?} after the black hole (keepalive {bound:?})");
    // The last bytes the sidecar read came just before the stop, so its
    // ping is due `interval` after them and gives up `timeout` later.
    assert!(
        took + Duration::from_millis(100) >= bound,
        "released after {took:?}, before keepalive could have failed ({bound:?})"
    );
    assert!(took <= bound + Duration::from_millis(1500), "{took:?}");
    drop(session);
}

/// A loopback TCP proxy whose open connections can be cut (both ends
/// closed) while it keeps accepting new ones.
struct CuttableProxy {
    addr: SocketAddr,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CuttableProxy {
    async fn start(to: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = open.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut server = tokio::net::TcpStream::connect(to).await.unwrap();
                let task = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        CuttableProxy { addr, open }
    }

    fn cut(&self) {
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_acquires_on_a_session_and_reports_a_permit_lost_with_it() {
    use rate_governor_client::{Governor, Outcome, ReleaseError};

    let gov =
        GovernorProcess::start("[dependencies.db]\nmax_concurrency = 4\nlease_ttl = \"1h\"\n")
            .await;
    let admin_addr = gov.admin_addr().unwrap();
    let mut admin = gov.admin_client().await;
    let proxy = CuttableProxy::start(gov.grpc_addr()).await;
    let client = Governor::connect(format!("http://{}", proxy.addr)).unwrap();

    let released = client.acquire("db").await.unwrap();
    assert!(released.release(Outcome::Success).await.unwrap());
    let dropped = client.acquire("db").await.unwrap();
    drop(dropped);
    let lost = client.acquire("db").await.unwrap();
    assert!(!client.uses_unary_fallback().await);
    wait_load(
        &mut admin,
        "db",
        (1, 0),
        Instant::now(),
        Duration::from_secs(5),
    )
    .await;

    // The connection goes: the sidecar frees the permit on its own...
    proxy.cut();
    wait_load(
        &mut admin,
        "db",
        (0, 0),
        Instant::now(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(releases(admin_addr, "db", "session_closed").await, 1.0);
    // ...and its holder hears it was lost, not that it released it.
    let error = lost.release(Outcome::Success).await.unwrap_err();
    assert!(matches!(error, ReleaseError::Lost), "{error:?}");
    assert_eq!(client.stats().leases_lost, 1);
    assert_eq!(releases(admin_addr, "db", "success").await, 1.0);
    assert_eq!(releases(admin_addr, "db", "unspecified").await, 1.0);

    // The next acquire opens a new session (after the backoff, the unary
    // RPC serves in between); either way it is granted.
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.acquire("db").await {
                Ok(permit) if !permit.is_degraded() => return permit,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("granted again through the proxy");
    assert_eq!(load(&mut admin, "db").await, (1, 0));
    assert!(again.release(Outcome::Success).await.unwrap());
    // Once the backoff has passed, acquires are back on a session: a cut
    // frees what it holds.
    let on_session = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let permit = client.acquire("db").await.unwrap();
            proxy.cut();
            match permit.release(Outcome::Success).await {
                Err(ReleaseError::Lost) => return,
                Ok(_) => {}
                Err(other) => panic!("{other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(on_session.is_ok(), "the client reopened a session");
    wait_load(
        &mut admin,
        "db",
        (0, 0),
        Instant::now(),
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_sidecar_ends_idle_sessions_and_keeps_busy_ones_until_they_release() {
    let mut gov = GovernorProcess::start(
        "[server]\nshutdown_grace = \"10s\"\n[dependencies.db]\nmax_concurrency = 2\n",
    )
    .await;
    let mut client = gov.governor_client().await;
    let mut idle = open(&mut client).await;
    let mut busy = open(&mut client).await;
    // Both streams are served before the drain starts.
    idle.send(1, acquire_op("db", None)).await;
    let first = granted(&idle.next().await);
    idle.send(2, release_op(&first)).await;
    assert!(matches!(idle.next().await.result, Some(Answer::Release(_))));
    busy.send(1, acquire_op("db", None)).await;
    let held = granted(&busy.next().await);

    gov.signal(nix::sys::signal::Signal::SIGTERM);
    // The idle one ends (OK) without anything sent on it.
    let end = tokio::time::timeout(Duration::from_secs(5), idle.rx.message())
        .await
        .expect("the idle session ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
    // The busy one still works: a new acquire is refused, its release answered.
    busy.send(2, acquire_op("db", None)).await;
    match busy.next().await.result {
        Some(Answer::Acquire(a)) => {
            assert!(!a.granted);
            assert_eq!(a.reason(), v1::RejectReason::ShuttingDown);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    busy.send(3, release_op(&held)).await;
    match busy.next().await.result {
        Some(Answer::Release(r)) => assert!(r.released, "{r:?}"),
        other => panic!("expected the release's answer, got {other:?}"),
    }
    // Holding nothing now, it ends too, and the sidecar exits cleanly.
    let end = tokio::time::timeout(Duration::from_secs(5), busy.rx.message())
        .await
        .expect("the busy session ends once it holds nothing");
    assert!(matches!(end, Ok(None)), "{end:?}");
    let status = gov.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
}
