//! `governor.v1.Governor/Session`: Acquire, Release and Renew as messages
//! on one stream, with the leases owned by the stream.
//!
//! The response stream is the session: tonic's response body polls it, and
//! each poll reads the requests that arrived, runs the acquires side by side
//! (a waiting one never holds up a later message) and hands back the next
//! answer, in the order they are decided, matched by the caller's `id`. No
//! task or channel of its own sits between the requests and the answers: a
//! message costs no extra wake-up or hand-over, and an acquire decided at
//! once is answered in the poll that read it. A caller that reads slowly is
//! held back by HTTP/2 flow control: the body is polled, and so requests
//! are read, only as the answers can be sent.
//!
//! The session ends when the stream does, for whatever reason: the caller
//! half-closes (the requests end) or resets, its connection drops or fails
//! keepalive (hyper then drops the response body, and with it the session),
//! or a message cannot be decoded (answered with that status). Then the
//! acquires still in progress are dropped, which withdraws them from their
//! queues, and the ledger session is closed, which releases its leases with
//! the outcome `session_closed`.
//!
//! While the sidecar drains, a session that holds nothing and waits for
//! nothing ends its stream (OK), so the graceful shutdown is not held up by
//! idle streams.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use rate_governor_proto::v1::{self, session_request, session_response};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status, Streaming};

use super::governor::{
    GovernorService, TraceGuard, acquire_fields, acquire_params, acquire_response,
};
use crate::ledger::{AcquireRequest, Session};

/// Requests handled in one poll without an answer to hand back (releases
/// with id 0) before the poll yields, so one stream of fire-and-forget
/// releases cannot hold its task for long.
const SILENT_PER_POLL: usize = 32;

/// Opens the ledger session for the stream and hands back its answers.
pub(super) fn start(
    service: GovernorService,
    request: Request<Streaming<v1::SessionRequest>>,
) -> ResponseStream {
    let (metadata, extensions, inbound) = request.into_parts();
    let peer = super::peer_of(&extensions);
    let ledger = service.ledger();
    let session = ledger.open_session(peer);
    let drain = (!ledger.is_draining()).then(|| Box::pin(ledger.drain_signal()));
    ResponseStream {
        live: Some(Live {
            common: Arc::new(Common {
                service,
                session,
                metadata,
            }),
            inbound,
            acquires: FuturesUnordered::new(),
            drain,
        }),
    }
}

/// What the caller reads: the session itself (see the module docs).
pub struct ResponseStream {
    /// `None` once the session has ended.
    live: Option<Live>,
}

struct Live {
    common: Arc<Common>,
    inbound: Streaming<v1::SessionRequest>,
    acquires: FuturesUnordered<Answer>,
    /// Fires when the sidecar starts to drain; `None` once it has.
    drain: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

/// What the acquires in progress share with the stream.
struct Common {
    service: GovernorService,
    session: Session,
    metadata: MetadataMap,
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

type Answer = Pin<Box<dyn Future<Output = v1::SessionResponse> + Send>>;

impl Stream for ResponseStream {
    type Item = Result<v1::SessionResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(live) = self.live.as_mut() else {
            return Poll::Ready(None);
        };
        let mut silent = 0;
        loop {
            if let Poll::Ready(Some(answer)) = live.acquires.poll_next_unpin(cx) {
                return Poll::Ready(Some(Ok(answer)));
            }
            // The flag, not the signal, on every turn: the signal is one
            // for all sessions, and polling it takes its lock.
            if live.drain.is_some() && live.common.service.ledger().is_draining() {
                live.drain = None;
            }
            if live.drain.is_none() && live.acquires.is_empty() && live.common.session.leases() == 0
            {
                self.end(End::Drained);
                return Poll::Ready(None);
            }
            let request = match live.inbound.poll_next_unpin(cx) {
                Poll::Pending => {
                    // Going to sleep: the drain must wake it.
                    if let Some(drain) = live.drain.as_mut() {
                        if drain.as_mut().poll(cx).is_ready() {
                            live.drain = None;
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    self.end(End::HalfClosed);
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(status))) => {
                    // Read by the caller if it is still there (a message it
                    // sent could not be decoded); lost otherwise.
                    self.end(End::Failed(status.code()));
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Ok(request))) => request,
            };
            match handle(&live.common, request) {
                Handled::Answer(answer) => return Poll::Ready(Some(Ok(answer))),
                Handled::Silent => {
                    silent += 1;
                    if silent == SILENT_PER_POLL {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                // Polled here first: an acquire decided at once is answered
                // now, without a place in the set (a waiting one takes its
                // place there, and the set's waker from the next turn).
                Handled::Pending(mut answer) => match answer.as_mut().poll(cx) {
                    Poll::Ready(answer) => return Poll::Ready(Some(Ok(answer))),
                    Poll::Pending => live.acquires.push(answer),
                },
            }
        }
    }
}

impl std::fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("ResponseStream");
        if let Some(live) = &self.live {
            out.field("pending", &live.acquires.len())
                .field("leases", &live.common.session.leases())
                .field("draining", &live.drain.is_none());
        }
        out.finish()
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        self.end(End::Gone);
    }
}

impl ResponseStream {
    /// Withdraws the waiting acquires from their queues (a grant that raced
    /// the drop goes straight back), then frees the leases. Once.
    fn end(&mut self, end: End) {
        let Some(live) = self.live.take() else {
            return;
        };
        let Live {
            common, acquires, ..
        } = live;
        let withdrawn = acquires.len();
        drop(acquires);
        let closed = common.session.close();
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
}

enum Handled {
    Answer(v1::SessionResponse),
    /// A release with id 0.
    Silent,
    Pending(Answer),
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

fn handle(common: &Arc<Common>, request: v1::SessionRequest) -> Handled {
    let service = &common.service;
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
                    common.clone(),
                    id,
                    message,
                    priority,
                    max_wait,
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
    common: Arc<Common>,
    id: u64,
    message: v1::AcquireRequest,
    priority: crate::ledger::Priority,
    max_wait: Option<std::time::Duration>,
) -> v1::SessionResponse {
    let Common {
        service,
        session,
        metadata,
    } = &*common;
    let telemetry = service.telemetry();
    let ledger = service.ledger();
    let request = AcquireRequest {
        dependency: &message.dependency,
        tenant: (!message.tenant.is_empty()).then_some(message.tenant.as_str()),
        route: (!message.route.is_empty()).then_some(message.route.as_str()),
        attempt: message.attempt,
        priority,
        max_wait,
        degradable: message.degradable,
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
            let status = Status::from(failure);
            field_error(id, &status)
        }
    }
}
