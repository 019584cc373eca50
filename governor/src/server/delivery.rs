//! A granted lease whose Acquire response never reached the caller is
//! released at once, not left held until its TTL.
//!
//! The handler puts an [`Undelivered`] guard in the response's extensions;
//! [`DeliveryLayer`] moves it into the response body. The body ends with
//! the gRPC trailers, which hyper polls only after it has handed the
//! message to the HTTP/2 stream: if the body is dropped before that (the
//! caller reset the stream, the connection went away, the server shut
//! down), the guard releases the lease with outcome CANCELLED. A caller
//! that got no trailers sees its call fail, so it never uses that lease.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tonic::codegen::http;
use tonic::server::NamedService;
use tower::{Layer, Service};

use crate::ledger::{LeaseId, Ledger, Outcome, Report};
use crate::telemetry::Telemetry;

/// Releases its lease when dropped, unless [`Undelivered::delivered`] was
/// called. Clones share one guard (response extensions must be `Clone`).
#[derive(Clone, Debug)]
pub struct Undelivered(Arc<Guard>);

#[derive(Debug)]
struct Guard {
    ledger: Arc<Ledger>,
    telemetry: Arc<Telemetry>,
    lease: LeaseId,
    delivered: AtomicBool,
}

impl Undelivered {
    pub fn new(ledger: Arc<Ledger>, telemetry: Arc<Telemetry>, lease: LeaseId) -> Self {
        Undelivered(Arc::new(Guard {
            ledger,
            telemetry,
            lease,
            delivered: AtomicBool::new(false),
        }))
    }

    pub fn delivered(&self) {
        self.0.delivered.store(true, Ordering::Release);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.delivered.load(Ordering::Acquire) {
            return;
        }
        let report = Report::new(Outcome::Cancelled, None);
        if let Some(ended) = self.ledger.release(&self.lease, report) {
            tracing::debug!(
                dependency = %ended.dependency(),
                "lease released: its Acquire response was not delivered"
            );
            self.telemetry.released(&ended, None);
        }
    }
}

/// Wraps a gRPC service so that its responses carry their [`Undelivered`]
/// guard in the body.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeliveryLayer;

impl<S> Layer<S> for DeliveryLayer {
    type Service = Delivery<S>;

    fn layer(&self, inner: S) -> Delivery<S> {
        Delivery { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Delivery<S> {
    inner: S,
}

impl<S: NamedService> NamedService for Delivery<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, Req> Service<Req> for Delivery<S>
where
    S: Service<Req, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if let Some(guard) = response.extensions_mut().remove::<Undelivered>() {
                Ok(response.map(|inner| tonic::body::Body::new(Guarded { inner, guard })))
            } else {
                Ok(response)
            }
        })
    }
}

/// A response body that marks its guard delivered when hyper reaches its end.
#[derive(Debug)]
struct Guarded {
    inner: tonic::body::Body,
    guard: Undelivered,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) if frame.is_trailers() => this.guard.delivered(),
            None => this.guard.delivered(),
            _ => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
