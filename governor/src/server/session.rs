//! `governor.v1.Governor/Session`: Acquire, Release and Renew as messages
//! on one stream, with the leases owned by the stream.
//!
//! One task per stream reads requests and runs the acquires side by side
//! (a waiting one never holds up a later message); answers go out in the
//! order they are decided, matched by the caller's `id`. The task ends when
//! the stream does, for whatever reason: the caller half-closes or resets,
//! its connection drops or fails keepalive (hyper then fails the stream and
//! drops the response body), or a message cannot be decoded (answered with
//! that status). Then the acquires still in progress are dropped, which
//! withdraws them from their queues, and the ledger session is closed,
//! which releases its leases with the outcome `session_closed`.
//!
//! While the sidecar drains, a session that holds nothing and waits for
//! nothing ends its stream (OK), so the graceful shutdown is not held up by
//! idle streams.

use std::future::Future;
use std::pin::Pin;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rate_governor_proto::v1::{self, session_request, session_response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status, Streaming};

use super::governor::{
    GovernorService, TraceGuard, acquire_fields, acquire_params, acquire_response,
};
use crate::ledger::{AcquireRequest, Peer, Session, SessionAcquireError};

/// What the caller reads.
pub type ResponseStream = ReceiverStream<Result<v1::SessionResponse, Status>>;

/// Answers buffered toward a caller that reads slowly; beyond it the
/// session stops reading requests (HTTP/2 flow control then holds the
/// caller back).
const OUTBOUND_BUFFER: usize = 64;

/// Starts the stream's task and hands back its answers.
pub(super) fn start(
    service: GovernorService,
    request: Request<Streaming<v1::SessionRequest>>,
) -> ResponseStream {
    let (metadata, extensions, inbound) = request.into_parts();
    let peer = super::peer_of(&extensions);
    let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
    tokio::spawn(async move {
        run(&service, &metadata, peer, inbound, tx).await;
    });
    ReceiverStream::new(rx)
}

/// Why a session ended, for the log.
#[derive(Clone, Copy, Debug)]
enum End {
    HalfClosed,
    /// The caller stopped reading: reset, connection gone.
    Gone,
    /// The request stream failed: reset, connection lost, undecodable message.
    Failed(Code),
    Drained,
}

type Answer<'a> = Pin<Box<dyn Future<Output = v1::SessionResponse> + Send + 'a>>;

async fn run(
    service: &GovernorService,
    metadata: &MetadataMap,
    peer: Option<Peer>,
    mut inbound: Streaming<v1::SessionRequest>,
    tx: mpsc::Sender<Result<v1::SessionResponse, Status>>,
) {
    let ledger = service.ledger();
    let session = ledger.open_session(peer);
    let mut acquires: FuturesUnordered<Answer<'_>> = FuturesUnordered::new();
    let mut draining = ledger.is_draining();
    let end = loop {
        if draining && acquires.is_empty() && session.leases() == 0 {
            break End::Drained;
        }
        tokio::select! {
            biased;
            () = tx.closed() => break End::Gone,
            Some(answer) = acquires.next(), if !acquires.is_empty() => {
                if tx.send(Ok(answer)).await.is_err() {
                    break End::Gone;
                }
            }
            () = ledger.draining(), if !draining => draining = true,
            message = inbound.next() => match message {
                None => break End::HalfClosed,
                Some(Err(status)) => {
                    let code = status.code();
                    // Read by the caller if it is still there (a message it
                    // sent could not be decoded); lost otherwise.
                    let _ = tx.send(Err(status)).await;
                    break End::Failed(code);
                }
                Some(Ok(request)) => match handle(service, &session, metadata, request) {
                    Handled::Answer(answer) => {
                        if tx.send(Ok(answer)).await.is_err() {
                            break End::Gone;
                        }
                    }
                    Handled::Silent => {}
                    Handled::Pending(answer) => acquires.push(answer),
                },
            },
        }
    };
    // Withdraws the waiting acquires from their queues now (a grant that
    // raced the drop goes straight back), then frees the leases.
    let withdrawn = acquires.len();
    drop(acquires);
    let closed = session.close();
    let reason = match end {
        End::HalfClosed => "half_closed",
        End::Gone => "gone",
        End::Failed(_) => "stream_failed",
        End::Drained => "drained",
    };
    let code = match end {
        End::Failed(code) => Some(format!("{code:?}")),
        _ => None,
    };
    if closed.released > 0 || withdrawn > 0 {
        tracing::info!(
            reason,
            code,
            released = closed.released,
            withdrawn,
            outcome = "session_closed",
            "session closed with permits held or waiting"
        );
    } else {
        tracing::debug!(reason, code, "session closed");
    }
}

enum Handled<'a> {
    Answer(v1::SessionResponse),
    /// A release with id 0.
    Silent,
    Pending(Answer<'a>),
}

fn error(id: u64, code: Code, message: impl Into<String>) -> v1::SessionResponse {
    v1::SessionResponse {
        id,
        result: Some(session_response::Result::Error(v1::SessionError {
            code: code as i32,
            message: message.into(),
        })),
    }
}

/// The unary path's status as this message's error: the same code and
/// message, naming the field (`dependency: must not be empty`), so a client
/// reads both paths alike.
fn field_error(id: u64, status: &Status) -> v1::SessionResponse {
    error(id, status.code(), status.message())
}

fn handle<'a>(
    service: &'a GovernorService,
    session: &'a Session,
    metadata: &'a MetadataMap,
    request: v1::SessionRequest,
) -> Handled<'a> {
    let id = request.id;
    let answer = |result| Handled::Answer(v1::SessionResponse { id, result });
    match request.op {
        None => answer(Some(session_response::Result::Error(v1::SessionError {
            code: Code::InvalidArgument as i32,
            message: "op: must be one of acquire, release, renew".into(),
        }))),
        Some(session_request::Op::Acquire(message)) => {
            if id == 0 {
                return Handled::Answer(error(
                    id,
                    Code::InvalidArgument,
                    "id: must not be 0 on an acquire (the answer is matched by it)",
                ));
            }
            match acquire_params(&message, None) {
                Err(status) => Handled::Answer(field_error(id, &status)),
                // The acquire's own future, boxed as it is: an async block
                // around it would hold a second copy of its arguments for
                // the whole wait.
                Ok((priority, max_wait)) => Handled::Pending(Box::pin(acquire(
                    service, session, metadata, id, message, priority, max_wait,
                ))),
            }
        }
        Some(session_request::Op::Release(message)) => match service.release_message(&message) {
            Ok(_) if id == 0 => Handled::Silent,
            Ok(response) => answer(Some(session_response::Result::Release(response))),
            // Even with id 0: a release that could not be read is worth
            // telling, and 0 is what it is matched by.
            Err(status) => Handled::Answer(field_error(id, &status)),
        },
        Some(session_request::Op::Renew(message)) => match service.renew_message(&message) {
            Ok(response) => answer(Some(session_response::Result::Renew(response))),
            Err(status) => Handled::Answer(field_error(id, &status)),
        },
    }
}

async fn acquire(
    service: &GovernorService,
    session: &Session,
    metadata: &MetadataMap,
    id: u64,
    message: v1::AcquireRequest,
    priority: crate::ledger::Priority,
    max_wait: Option<std::time::Duration>,
) -> v1::SessionResponse {
    let telemetry = service.telemetry();
    let ledger = service.ledger();
    let request = AcquireRequest {
        dependency: &message.dependency,
        attempt: message.attempt,
        priority,
        max_wait,
    };
    let trace = telemetry.acquire_started(metadata, &acquire_fields(&message, priority));
    let mut guard = TraceGuard::new(telemetry, trace.map(Box::new));
    // The fields are made again after the wait rather than kept across it:
    // every byte held here is held by every waiting acquire.
    let decision = ledger.acquire_in(session, &request).await;
    let trace = guard.take();
    let fields = acquire_fields(&message, priority);
    match decision {
        Ok(decision) => {
            telemetry.acquire_finished(ledger, trace, &fields, &decision);
            v1::SessionResponse {
                id,
                result: Some(session_response::Result::Acquire(acquire_response(
                    &decision,
                ))),
            }
        }
        Err(failure) => {
            if let Some(trace) = trace {
                telemetry.acquire_cancelled(trace);
            }
            let status = match failure {
                SessionAcquireError::Ledger(error) => Status::from(error),
                SessionAcquireError::TooManyPending(_) => {
                    Status::resource_exhausted(format!("limits.max_session_pending: {failure}"))
                }
                SessionAcquireError::Closed => Status::aborted(format!("session: {failure}")),
            };
            field_error(id, &status)
        }
    }
}
