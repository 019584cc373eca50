//! A cap on the calls open at once over every gRPC listener
//! (`server.max_calls`), the bound that keeps the sidecar's memory inside
//! its pod: every open call holds an HTTP/2 stream, a task and its
//! request, waiting or not, so `max_connections × max_concurrent_streams`
//! alone would allow millions of them.
//!
//! A call over the cap is answered at once with RESOURCE_EXHAUSTED, before
//! its body is read, so that it costs its stream only for that moment; it
//! is counted in `governor_calls_refused_total`. The permit is held until
//! the response body ends or is dropped (the stream is over).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::http;
use tower::{Layer, Service};

/// Shares one pool of call permits among the listeners' services.
#[derive(Clone, Debug)]
pub struct CallsLayer {
    permits: Arc<Semaphore>,
    max_calls: usize,
    refused: Counter,
}

impl CallsLayer {
    pub fn new(max_calls: usize, refused: Counter) -> CallsLayer {
        CallsLayer {
            permits: Arc::new(Semaphore::new(max_calls)),
            max_calls,
            refused,
        }
    }
}

impl<S> Layer<S> for CallsLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Calls<S> {
        Calls {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Calls<S> {
    inner: S,
    layer: CallsLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, Req> Service<Req> for Calls<S>
where
    S: Service<Req, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            self.layer.refused.inc();
            let status = tonic::Status::resource_exhausted(format!(
                "the sidecar has {} calls open, its limit (server.max_calls)",
                self.layer.max_calls
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| {
                tonic::body::Body::new(Permitted {
                    inner,
                    _permit: permit,
                })
            }))
        })
    }
}

/// A response body holding its call's permit.
#[derive(Debug)]
struct Permitted {
    inner: tonic::body::Body,
    _permit: OwnedSemaphorePermit,
}

impl Body for Permitted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// A service whose responses end when `release` fires.
    fn held() -> impl Service<
        (),
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future = std::future::Ready<
            Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
        >,
    > + Clone {
        tower::service_fn(|()| {
            std::future::ready(Ok(http::Response::new(tonic::body::Body::new(
                http_body_util::Full::new(Bytes::from_static(b"ok"))
                    .map_err(|never: std::convert::Infallible| match never {}),
            ))))
        })
    }

    fn status(response: &http::Response<tonic::body::Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn calls_over_the_cap_are_refused_until_one_ends() {
        let layer = CallsLayer::new(2, Counter::default());
        let mut service = layer.layer(held());
        let first = service.ready().await.unwrap().call(()).await.unwrap();
        let second = service.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(status(&first), None);
        let third = service.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(status(&third), Some("8"), "RESOURCE_EXHAUSTED");
        assert_eq!(layer.refused.get(), 1);

        // A body read to its end, or dropped, gives its permit back.
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        drop(second);
        let mut open = Vec::new();
        for _ in 0..2 {
            let again = service.ready().await.unwrap().call(()).await.unwrap();
            assert_eq!(status(&again), None);
            open.push(again);
        }
        let over = service.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(status(&over), Some("8"));
    }
}
