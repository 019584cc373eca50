//! A5's client side: acquire + release over one long-lived
//! `governor.v1.Governor/Session` stream, driven through the raw generated
//! tonic client the way a real client would.
//!
//! One bidi stream per load connection carries every pair sent on it, many
//! in flight at once. Each acquire gets a fresh id and a oneshot in a map; a
//! demultiplexer task reads the answers and hands each to its waiter by id.
//! The release goes out with `id = 0` (fire-and-forget: no answer wanted,
//! which the contract allows) or, for the comparison arm, with an id whose
//! answer is awaited. A pair is complete when the acquire's answer arrived
//! and the release was handed to the stream (or, answered, when the release
//! answer arrived).
//!
//! Nothing is lost silently: an answer nobody waits for any more (its pair
//! timed out) that carries a grant is released at once, and every answer
//! the pairs could not be charged with (an error on a fire-and-forget
//! release, an unknown id) is counted as a stray error that the harness adds
//! to the arm's errors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rate_governor_proto::v1::governor_client::GovernorClient;
use rate_governor_proto::v1::{self as pb, Outcome, session_request, session_response};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Requests queued toward the stream before a sender waits: far more than
/// the pairs in flight, so the queue never throttles the load by itself.
const OUTBOUND: usize = 4096;

type Waiter = oneshot::Sender<Result<pb::SessionResponse, String>>;

#[derive(Debug, Default)]
struct State {
    waiting: HashMap<u64, Waiter>,
    /// Why the stream ended, once it has.
    ended: Option<String>,
    stray: u64,
    first_stray: Option<String>,
}

impl State {
    fn stray(&mut self, what: String) {
        self.stray += 1;
        self.first_stray.get_or_insert(what);
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    next_id: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One open Session stream and its demultiplexer. Cheap to clone: clones
/// share the stream.
#[derive(Clone, Debug)]
pub struct SessionStream {
    requests: mpsc::Sender<pb::SessionRequest>,
    shared: Arc<Shared>,
    dependency: &'static str,
}

/// Takes the waiter's entry out of the map when the pair is dropped before
/// its answer came (a timeout), so the map does not grow.
struct Pending<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.shared.lock().waiting.remove(&self.id);
    }
}

impl SessionStream {
    /// Opens the stream on `channel` and starts its demultiplexer.
    pub async fn open(channel: Channel, dependency: &'static str) -> Result<Self, tonic::Status> {
        let (requests, outbound) = mpsc::channel(OUTBOUND);
        let mut client = GovernorClient::new(channel);
        let mut inbound = client
            .session(ReceiverStream::new(outbound))
            .await?
            .into_inner();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
        });
        let stream = SessionStream {
            requests,
            shared: shared.clone(),
            dependency,
        };
        // The demultiplexer holds only a weak sender: dropping every
        // SessionStream half-closes the stream, and the server then ends it.
        let releases = stream.requests.downgrade();
        tokio::spawn(async move {
            let ended = loop {
                match inbound.message().await {
                    Ok(Some(answer)) => route(&shared, &releases, answer),
                    Ok(None) => break "the server ended the Session stream".to_owned(),
                    Err(status) => break format!("Session stream failed: {status}"),
                }
            };
            let waiting = {
                let mut state = shared.lock();
                state.ended = Some(ended.clone());
                std::mem::take(&mut state.waiting)
            };
            for (_, waiter) in waiting {
                let _ = waiter.send(Err(ended.clone()));
            }
        });
        Ok(stream)
    }

    /// Errors not charged to any pair since the last call, and the first.
    pub fn take_stray(&self) -> (u64, Option<String>) {
        let mut state = self.shared.lock();
        (std::mem::take(&mut state.stray), state.first_stray.take())
    }

    async fn send(&self, request: pb::SessionRequest) -> Result<(), String> {
        self.requests
            .send(request)
            .await
            .map_err(|_| self.ended("the Session stream is closed"))
    }

    fn ended(&self, otherwise: &str) -> String {
        self.shared
            .lock()
            .ended
            .clone()
            .unwrap_or_else(|| otherwise.to_owned())
    }

    /// Sends `op` with a fresh id and waits for its answer.
    async fn ask(&self, op: session_request::Op) -> Result<pb::SessionResponse, String> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if let Some(ended) = &state.ended {
                return Err(ended.clone());
            }
            state.waiting.insert(id, tx);
        }
        let _pending = Pending {
            shared: &self.shared,
            id,
        };
        self.send(pb::SessionRequest { id, op: Some(op) }).await?;
        let answer = rx
            .await
            .map_err(|_| self.ended("the demultiplexer dropped the answer"))??;
        if answer.id != id {
            return Err(format!("answer for id {} routed to id {id}", answer.id));
        }
        Ok(answer)
    }

    /// One acquire + release pair; the release answered or fire-and-forget.
    pub async fn pair(&self, answered_release: bool) -> Result<(), String> {
        let acquire = session_request::Op::Acquire(pb::AcquireRequest {
            dependency: self.dependency.into(),
            ..Default::default()
        });
        let lease_id = match self.ask(acquire).await?.result {
            Some(session_response::Result::Acquire(a)) if a.granted && !a.lease_id.is_empty() => {
                a.lease_id
            }
            Some(session_response::Result::Acquire(a)) if a.granted => {
                return Err("Session acquire granted without a lease id".into());
            }
            Some(session_response::Result::Acquire(a)) => {
                return Err(format!(
                    "Session acquire not granted: {}",
                    a.reason().as_str_name()
                ));
            }
            other => return Err(format!("Session acquire answered {}", kind(&other))),
        };
        let release = session_request::Op::Release(pb::ReleaseRequest {
            lease_id,
            outcome: Outcome::Success as i32,
            latency: None,
        });
        if !answered_release {
            return self
                .send(pb::SessionRequest {
                    id: 0,
                    op: Some(release),
                })
                .await;
        }
        match self.ask(release).await?.result {
            Some(session_response::Result::Release(r)) if r.released => Ok(()),
            Some(session_response::Result::Release(_)) => {
                Err("Session release answered released=false for a live lease".into())
            }
            other => Err(format!("Session release answered {}", kind(&other))),
        }
    }
}

/// Hands one answer to its waiter. An answer whose waiter is gone and that
/// carries a grant is released at once (fire-and-forget), so a pair that
/// timed out does not leave a lease behind.
fn route(
    shared: &Shared,
    releases: &mpsc::WeakSender<pb::SessionRequest>,
    answer: pb::SessionResponse,
) {
    let waiter = shared.lock().waiting.remove(&answer.id);
    let answer = match waiter {
        Some(waiter) => match waiter.send(Ok(answer)) {
            Ok(()) => return,
            Err(answer) => answer.unwrap_or_default(),
        },
        None => answer,
    };
    let id = answer.id;
    match answer.result {
        Some(session_response::Result::Acquire(a)) if a.granted => {
            shared.lock().stray(format!(
                "Session acquire answer for id {id} came after its pair gave up (released)"
            ));
            if let Some(releases) = releases.upgrade() {
                let _ = releases.try_send(pb::SessionRequest {
                    id: 0,
                    op: Some(session_request::Op::Release(pb::ReleaseRequest {
                        lease_id: a.lease_id,
                        outcome: Outcome::Cancelled as i32,
                        latency: None,
                    })),
                });
            }
        }
        Some(session_response::Result::Error(e)) if id == 0 => shared.lock().stray(format!(
            "Session error on a fire-and-forget release: code {} {}",
            e.code, e.message
        )),
        other => shared.lock().stray(format!(
            "Session answer for id {id} nobody waits for: {}",
            kind(&other)
        )),
    }
}

/// What an answer is, for an error message: never its fields, since an
/// acquire answer carries a lease id (a bearer credential).
fn kind(result: &Option<session_response::Result>) -> String {
    match result {
        None => "nothing (no result)".into(),
        Some(session_response::Result::Acquire(_)) => "an acquire answer".into(),
        Some(session_response::Result::Release(_)) => "a release answer".into(),
        Some(session_response::Result::Renew(_)) => "a renew answer".into(),
        Some(session_response::Result::Error(e)) => {
            format!("an error: code {} {}", e.code, e.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rate_governor_proto::v1::governor_server::{Governor, GovernorServer};
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    /// What the fake server saw.
    #[derive(Debug)]
    enum Seen {
        Acquire(u64),
        Release { id: u64, lease_id: String },
    }

    /// A Session server that holds every acquire until the test says
    /// `answer`, then grants the held ones in reverse order (lease
    /// `lease-ID`), and answers releases only when they carry an id.
    struct Fake {
        seen: mpsc::UnboundedSender<Seen>,
        answer: Mutex<Option<mpsc::UnboundedReceiver<()>>>,
    }

    #[tonic::async_trait]
    impl Governor for Fake {
        async fn acquire(
            &self,
            _: Request<pb::AcquireRequest>,
        ) -> Result<Response<pb::AcquireResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn release(
            &self,
            _: Request<pb::ReleaseRequest>,
        ) -> Result<Response<pb::ReleaseResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn renew(
            &self,
            _: Request<pb::RenewRequest>,
        ) -> Result<Response<pb::RenewResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        type SessionStream = ReceiverStream<Result<pb::SessionResponse, Status>>;

        async fn session(
            &self,
            request: Request<Streaming<pb::SessionRequest>>,
        ) -> Result<Response<Self::SessionStream>, Status> {
            let mut inbound = request.into_inner();
            let mut answer = self
                .answer
                .lock()
                .unwrap()
                .take()
                .ok_or_else(|| Status::resource_exhausted("one session only"))?;
            let seen = self.seen.clone();
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    tokio::select! {
                        Some(()) = answer.recv() => {
                            while let Some(id) = held.pop() {
                                let grant = pb::AcquireResponse {
                                    granted: true,
                                    lease_id: format!("lease-{id}"),
                                    ..Default::default()
                                };
                                let result = Some(session_response::Result::Acquire(grant));
                                let _ = tx.send(Ok(pb::SessionResponse { id, result })).await;
                            }
                        }
                        message = inbound.message() => match message {
                            Ok(Some(request)) => match request.op {
                                Some(session_request::Op::Acquire(_)) => {
                                    held.push(request.id);
                                    let _ = seen.send(Seen::Acquire(request.id));
                                }
                                Some(session_request::Op::Release(r)) => {
                                    let _ = seen.send(Seen::Release {
                                        id: request.id,
                                        lease_id: r.lease_id,
                                    });
                                    if request.id != 0 {
                                        let result = Some(session_response::Result::Release(
                                            pb::ReleaseResponse { released: true },
                                        ));
                                        let id = request.id;
                                        let _ = tx.send(Ok(pb::SessionResponse { id, result })).await;
                                    }
                                }
                                _ => {}
                            },
                            _ => break,
                        },
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }

    async fn start() -> (
        SessionStream,
        mpsc::UnboundedReceiver<Seen>,
        mpsc::UnboundedSender<()>,
    ) {
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (answer, answer_rx) = mpsc::unbounded_channel();
        let fake = Fake {
            seen: seen_tx,
            answer: Mutex::new(Some(answer_rx)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GovernorServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let channel = crate::process::tcp_channel(addr).await.unwrap();
        let stream = SessionStream::open(channel, "dep").await.unwrap();
        (stream, seen, answer)
    }

    async fn acquires(seen: &mut mpsc::UnboundedReceiver<Seen>, n: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        while ids.len() < n {
            match seen.recv().await.unwrap() {
                Seen::Acquire(id) => ids.push(id),
                other => panic!("expected an acquire, saw {other:?}"),
            }
        }
        ids
    }

    async fn releases(seen: &mut mpsc::UnboundedReceiver<Seen>, n: usize) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        while out.len() < n {
            match seen.recv().await.unwrap() {
                Seen::Release { id, lease_id } => out.push((id, lease_id)),
                other => panic!("expected a release, saw {other:?}"),
            }
        }
        out
    }

    #[tokio::test]
    async fn answers_out_of_order_reach_their_pairs_and_each_lease_is_released() {
        let (stream, mut seen, answer) = start().await;
        for answered in [false, true] {
            let a = tokio::spawn({
                let s = stream.clone();
                async move { s.pair(answered).await }
            });
            let b = tokio::spawn({
                let s = stream.clone();
                async move { s.pair(answered).await }
            });
            let ids = acquires(&mut seen, 2).await;
            // Both held; the server answers the later one first.
            answer.send(()).unwrap();
            a.await.unwrap().unwrap();
            b.await.unwrap().unwrap();
            let released = releases(&mut seen, 2).await;
            let leases: HashSet<String> = released.iter().map(|(_, l)| l.clone()).collect();
            let granted: HashSet<String> = ids.iter().map(|id| format!("lease-{id}")).collect();
            assert_eq!(leases, granted);
            for (id, _) in &released {
                if answered {
                    assert!(*id != 0 && !ids.contains(id), "release id {id}");
                } else {
                    assert_eq!(*id, 0, "a fire-and-forget release carries id 0");
                }
            }
        }
        assert_eq!(stream.take_stray(), (0, None));
        assert!(stream.shared.lock().waiting.is_empty());
    }

    #[tokio::test]
    async fn a_server_without_the_session_rpc_answers_unimplemented() {
        // What an older sidecar does: the harness marks A5 not available on
        // exactly this code and fails the run on any other.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let channel = crate::process::tcp_channel(addr).await.unwrap();
        let error = SessionStream::open(channel, "dep").await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unimplemented, "{error}");
    }

    #[tokio::test]
    async fn a_grant_that_arrives_after_its_pair_gave_up_is_released() {
        let (stream, mut seen, answer) = start().await;
        let pair = tokio::spawn({
            let s = stream.clone();
            async move { s.pair(false).await }
        });
        let ids = acquires(&mut seen, 1).await;
        pair.abort();
        let _ = pair.await;
        assert!(
            stream.shared.lock().waiting.is_empty(),
            "the abandoned pair's waiter is gone"
        );
        answer.send(()).unwrap();
        let released = releases(&mut seen, 1).await;
        assert_eq!(released, vec![(0, format!("lease-{}", ids[0]))]);
        let (stray, first) = stream.take_stray();
        assert_eq!(stray, 1);
        assert!(first.unwrap().contains("after its pair gave up"));
    }
}
