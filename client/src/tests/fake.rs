//! A scriptable in-process `governor.v1.Governor` server that records what
//! the client sends, metadata included.

use std::{collections::VecDeque, path::Path, sync::Arc, time::Duration};

use rate_governor_proto::v1::{
    AcquireRequest, AcquireResponse, ReleaseRequest, ReleaseResponse, RenewRequest, RenewResponse,
    SessionRequest, SessionResponse,
    governor_server::{Governor, GovernorServer},
};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::{Request, Response, Status, transport::Server};

use crate::duration::to_proto;

/// One recorded request, its `traceparent` metadata and its deadline.
#[derive(Debug, Clone)]
pub struct Seen<T> {
    pub message: T,
    pub traceparent: Option<String>,
    /// The `grpc-timeout` the client sent, decoded.
    pub timeout: Option<Duration>,
}

impl<T> Seen<T> {
    fn new(request: Request<T>) -> Self {
        Self {
            traceparent: traceparent(&request),
            timeout: grpc_timeout(&request),
            message: request.into_inner(),
        }
    }
}

/// What the fake has seen and how it answers.
#[derive(Debug)]
pub struct State {
    pub acquires: Vec<Seen<AcquireRequest>>,
    pub releases: Vec<Seen<ReleaseRequest>>,
    pub renews: Vec<Seen<RenewRequest>>,
    /// Answers to the next acquires; a grant once empty.
    pub script: VecDeque<Result<AcquireResponse, Status>>,
    /// The TTL of granted and renewed leases.
    pub lease_ttl: Duration,
    /// Whether Renew answers `renewed = true`.
    pub renew_ok: bool,
}

/// The fake sidecar; clones share the state.
#[derive(Debug, Clone)]
pub struct Fake {
    state: Arc<watch::Sender<State>>,
}

const WAIT: Duration = Duration::from_secs(10);

impl Fake {
    pub fn new() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(State {
                acquires: Vec::new(),
                releases: Vec::new(),
                renews: Vec::new(),
                script: VecDeque::new(),
                lease_ttl: Duration::from_secs(30),
                renew_ok: true,
            })),
        }
    }

    /// Serves on a fresh TCP port and returns `http://ADDR`.
    pub async fn serve_tcp(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = GovernorServer::new(self.clone());
        tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    /// Serves on a Unix socket at `path`.
    pub fn serve_unix(&self, path: &Path) {
        let listener = UnixListener::bind(path).unwrap();
        let service = GovernorServer::new(self.clone());
        tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
    }

    pub fn update(&self, f: impl FnOnce(&mut State)) {
        self.state.send_modify(f);
    }

    pub fn with<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.borrow())
    }

    /// Waits (up to 10 s) until `pred` holds.
    pub async fn wait_for(&self, what: &str, pred: impl FnMut(&State) -> bool) {
        let mut rx = self.state.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(pred))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
    }
}

/// Decodes `grpc-timeout` (digits and a unit, as the gRPC spec says).
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn traceparent<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("traceparent")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tonic::async_trait]
impl Governor for Fake {
    async fn acquire(
        &self,
        request: Request<AcquireRequest>,
    ) -> Result<Response<AcquireResponse>, Status> {
        let seen = Seen::new(request);
        let mut answer = None;
        self.state.send_modify(|s| {
            s.acquires.push(seen);
            answer = Some(s.script.pop_front().unwrap_or_else(|| {
                Ok(AcquireResponse {
                    granted: true,
                    lease_id: format!("lease-{}", s.acquires.len()),
                    lease_ttl: Some(to_proto(s.lease_ttl)),
                    limit: 10,
                    in_flight: 1,
                    ..Default::default()
                })
            }));
        });
        answer.unwrap().map(Response::new)
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let seen = Seen::new(request);
        self.state.send_modify(|s| s.releases.push(seen));
        Ok(Response::new(ReleaseResponse { released: true }))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let seen = Seen::new(request);
        let mut response = RenewResponse::default();
        self.state.send_modify(|s| {
            s.renews.push(seen);
            if s.renew_ok {
                response = RenewResponse {
                    renewed: true,
                    lease_ttl: Some(to_proto(s.lease_ttl)),
                };
            }
        });
        Ok(Response::new(response))
    }

    type SessionStream = tokio_stream::Empty<Result<SessionResponse, Status>>;

    /// Like a sidecar from before the Session RPC: the client falls back to
    /// the unary calls this fake records.
    async fn session(
        &self,
        _request: Request<tonic::Streaming<SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Err(Status::unimplemented("the fake serves no Session"))
    }
}
