//! The one Session stream per [`Governor`](crate::Governor): acquire,
//! release and renew as messages on it, so a permit costs one message each
//! way and is freed by the sidecar the moment this process dies.
//!
//! Opened lazily on the first acquire. A sidecar that answers
//! `UNIMPLEMENTED` (one from before the Session RPC) is asked with the unary
//! RPCs from then on. When the stream ends (sidecar restart, connection
//! lost), every permit granted on it is *lost*: the sidecar released it
//! with the outcome `session_closed`, and its holder's release says so
//! ([`ReleaseError::Lost`](crate::ReleaseError::Lost)) instead of freeing
//! anything a second time. A new stream is opened on the next acquire, at
//! most once per backoff period (doubling from 50 ms to 5 s while opening
//! fails); acquires in between use the unary RPCs.
//!
//! Answers are matched by id. An acquire whose caller gave up (deadline,
//! dropped future) may still be granted later: the reader releases such a
//! grant at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rate_governor_proto::v1::{
    AcquireRequest, AcquireResponse, Outcome, ReleaseRequest, RenewRequest, RenewResponse,
    SessionRequest, SessionResponse, governor_client::GovernorClient, session_request::Op,
    session_response::Result as Answer,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// Requests buffered toward the sidecar.
const OUTBOUND_BUFFER: usize = 256;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One open stream.
pub(crate) struct Stream {
    tx: mpsc::Sender<SessionRequest>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Result<SessionResponse, Status>>>>,
    next_id: AtomicU64,
    ended: AtomicBool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("ended", &self.is_ended())
            .finish_non_exhaustive()
    }
}

/// Takes a waiting id back out when its caller stops waiting.
struct Waiting<'a> {
    stream: &'a Stream,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.stream.lock().remove(&self.id);
    }
}

impl Stream {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<SessionResponse, Status>>>>
    {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the stream is over: its permits are gone.
    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Sends `op` and waits up to `timeout` for its answer.
    async fn call(&self, op: Op, timeout: Duration) -> Result<Answer, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer_rx) = oneshot::channel();
        self.lock().insert(id, answer_tx);
        let _waiting = Waiting { stream: self, id };
        if self.is_ended() {
            return Err(ended());
        }
        let request = SessionRequest { id, op: Some(op) };
        let answered = async {
            self.tx.send(request).await.map_err(|_| ended())?;
            answer_rx.await.map_err(|_| ended())?
        };
        let response = tokio::time::timeout(timeout, answered)
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "governor sidecar did not answer within {timeout:?}"
                ))
            })??;
        match response.result {
            Some(Answer::Error(error)) => Err(Status::new(Code::from(error.code), error.message)),
            Some(answer) => Ok(answer),
            None => Err(Status::internal("session answer without a result")),
        }
    }

    pub(crate) async fn acquire(
        &self,
        message: AcquireRequest,
        timeout: Duration,
    ) -> Result<AcquireResponse, Status> {
        match self.call(Op::Acquire(message), timeout).await? {
            Answer::Acquire(response) => Ok(response),
            other => Err(mismatch(&other)),
        }
    }

    pub(crate) async fn release(
        &self,
        lease_id: String,
        outcome: Outcome,
        latency: Option<prost_types::Duration>,
        timeout: Duration,
    ) -> Result<bool, Status> {
        let op = Op::Release(ReleaseRequest {
            lease_id,
            outcome: outcome as i32,
            latency,
        });
        match self.call(op, timeout).await? {
            Answer::Release(response) => Ok(response.released),
            other => Err(mismatch(&other)),
        }
    }

    /// A release nobody waits for (id 0: the sidecar sends no answer).
    /// Never blocks; `false` if it could not even be queued.
    pub(crate) fn release_and_forget(&self, lease_id: String, outcome: Outcome) -> bool {
        let request = SessionRequest {
            id: 0,
            op: Some(Op::Release(ReleaseRequest {
                lease_id,
                outcome: outcome as i32,
                latency: None,
            })),
        };
        match self.tx.try_send(request) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(request)) => {
                let tx = self.tx.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(async move { tx.send(request).await });
                        true
                    }
                    Err(_) => false,
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub(crate) async fn renew(
        &self,
        lease_id: String,
        timeout: Duration,
    ) -> Result<RenewResponse, Status> {
        match self
            .call(Op::Renew(RenewRequest { lease_id }), timeout)
            .await?
        {
            Answer::Renew(response) => Ok(response),
            other => Err(mismatch(&other)),
        }
    }

    /// Routes answers to their callers until the stream ends; then marks it
    /// ended and fails everyone still waiting. Holds the stream only weakly:
    /// once the client and its permits are gone, the stream's sender goes
    /// with them, the sidecar sees the half-close and ends the stream, and
    /// this returns.
    async fn read(stream: std::sync::Weak<Self>, mut inbound: Streaming<SessionResponse>) {
        let end = loop {
            let message = inbound.message().await;
            let Some(this) = stream.upgrade() else {
                return;
            };
            match message {
                Ok(Some(response)) => {
                    let waiter = this.lock().remove(&response.id);
                    match waiter {
                        Some(waiter) => {
                            if let Err(Ok(orphan)) = waiter.send(Ok(response)) {
                                this.give_back(orphan);
                            }
                        }
                        None => this.give_back(response),
                    }
                }
                Ok(None) => {
                    break (
                        this,
                        Status::unavailable("governor session ended by the sidecar"),
                    );
                }
                Err(status) => break (this, status),
            }
        };
        let (this, end) = end;
        this.ended.store(true, Ordering::Release);
        tracing::debug!(code = ?end.code(), error = end.message(), "governor session ended");
        let waiting: Vec<_> = this.lock().drain().collect();
        for (_, waiter) in waiting {
            let _ = waiter.send(Err(Status::unavailable(format!(
                "governor session ended: {}",
                end.message()
            ))));
        }
    }

    /// A grant whose caller stopped waiting goes straight back.
    fn give_back(&self, response: SessionResponse) {
        if let Some(Answer::Acquire(grant)) = response.result {
            if grant.granted {
                self.release_and_forget(grant.lease_id, Outcome::Cancelled);
            }
        }
    }
}

fn ended() -> Status {
    Status::unavailable("governor session ended")
}

fn mismatch(answer: &Answer) -> Status {
    let kind = match answer {
        Answer::Acquire(_) => "acquire",
        Answer::Release(_) => "release",
        Answer::Renew(_) => "renew",
        Answer::Error(_) => "error",
    };
    Status::internal(format!("session answer of the wrong kind ({kind})"))
}

#[derive(Debug)]
enum State {
    /// No stream; open one when `retry_at` has passed.
    Closed {
        retry_at: Option<Instant>,
        backoff: Duration,
    },
    Open(Arc<Stream>),
    /// The sidecar has no Session RPC: unary for good.
    Unary,
}

/// The client's session: its one stream, and what to do without one.
#[derive(Debug)]
pub(crate) struct Sessions {
    state: tokio::sync::Mutex<State>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            state: tokio::sync::Mutex::new(State::Closed {
                retry_at: None,
                backoff: MIN_BACKOFF,
            }),
        }
    }
}

impl Sessions {
    /// The open stream, opening one if there is none and backoff allows;
    /// `None` means: use the unary RPCs for this call.
    pub(crate) async fn stream(
        &self,
        client: &GovernorClient<Channel>,
        open_timeout: Duration,
    ) -> Option<Arc<Stream>> {
        let mut state = self.state.lock().await;
        let backoff = match &*state {
            State::Open(stream) if !stream.is_ended() => return Some(stream.clone()),
            State::Unary => return None,
            State::Open(_) => MIN_BACKOFF,
            State::Closed { retry_at, backoff } => {
                if retry_at.is_some_and(|at| Instant::now() < at) {
                    return None;
                }
                *backoff
            }
        };
        match open(client.clone(), open_timeout).await {
            Ok(stream) => {
                *state = State::Open(stream.clone());
                Some(stream)
            }
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::info!("the governor sidecar has no Session RPC; using unary calls");
                *state = State::Unary;
                None
            }
            Err(status) => {
                tracing::debug!(%status, ?backoff, "cannot open a governor session; retrying later");
                *state = State::Closed {
                    retry_at: Some(Instant::now() + backoff),
                    backoff: (backoff * 2).min(MAX_BACKOFF),
                };
                None
            }
        }
    }

    /// Whether calls go over the unary RPCs for good.
    pub(crate) async fn is_unary(&self) -> bool {
        matches!(*self.state.lock().await, State::Unary)
    }
}

async fn open(
    mut client: GovernorClient<Channel>,
    timeout: Duration,
) -> Result<Arc<Stream>, Status> {
    let (tx, outbound) = mpsc::channel(OUTBOUND_BUFFER);
    let inbound = tokio::time::timeout(timeout, client.session(ReceiverStream::new(outbound)))
        .await
        .map_err(|_| Status::deadline_exceeded("opening the governor session timed out"))??
        .into_inner();
    let stream = Arc::new(Stream {
        tx,
        waiting: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        ended: AtomicBool::new(false),
    });
    tokio::spawn(Stream::read(Arc::downgrade(&stream), inbound));
    Ok(stream)
}
