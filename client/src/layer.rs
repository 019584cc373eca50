//! A tower middleware that runs every call of the wrapped service under a
//! permit for one dependency.
//!
//! The permit is acquired in the response future rather than in
//! `poll_ready`: a rejection then fails only that call (as
//! [`GovernedError::Acquire`]) and never marks the whole service as broken,
//! which tower would otherwise take it for. The inner service is cloned per
//! call, as `tower::buffer` and tonic channels allow cheaply, and is polled
//! ready only once the permit is held, so a call waiting in the sidecar's
//! queue never holds a slot of the inner service (a buffer slot, a
//! concurrency-limit permit) that calls of other dependencies need.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use rate_governor_proto::v1::Priority;
use tower::{Layer, Service, ServiceExt};

use crate::{GovernedError, Governor};

/// Wraps services in [`GovernorService`] for the dependency `dependency`.
#[derive(Debug, Clone)]
pub struct GovernorLayer {
    gov: Governor,
    dependency: String,
    priority: Option<Priority>,
    tenant: Option<String>,
    degradable: bool,
}

impl GovernorLayer {
    /// Governs calls through the wrapped service as `dependency`.
    pub fn new(gov: Governor, dependency: impl Into<String>) -> Self {
        Self {
            gov,
            dependency: dependency.into(),
            priority: None,
            tenant: None,
            degradable: false,
        }
    }

    /// The priority of every call (default: the [`Governor`]'s).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// The tenant of every call (default: the [`Governor`]'s).
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Makes every call [`degradable`](crate::Acquire::degradable): one that
    /// would have to wait fails at once with [`GovernedError::Acquire`]
    /// holding a `DEGRADE` rejection ([`GovernedError::rejection`] and
    /// [`Rejection::is_degrade`](crate::Rejection::is_degrade)), for the
    /// caller to serve its fallback.
    pub fn degradable(mut self, degradable: bool) -> Self {
        self.degradable = degradable;
        self
    }
}

impl<S> Layer<S> for GovernorLayer {
    type Service = GovernorService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GovernorService {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service whose calls each hold a permit: released as `SUCCESS` when the
/// response future yields `Ok`, `FAILURE` on `Err`, `CANCELLED` if the
/// future is dropped. For HTTP, the permit covers the wait for the response
/// head, not the streaming of its body.
#[derive(Debug, Clone)]
pub struct GovernorService<S> {
    inner: S,
    layer: GovernorLayer,
}

impl<S> GovernorService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Request> Service<Request> for GovernorService<S>
where
    S: Service<Request> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Request: Send + 'static,
{
    type Response = S::Response;
    type Error = GovernedError<S::Error>;
    type Future = ResponseFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness of the inner service is awaited per call, after the permit.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let inner = self.inner.clone();
        let layer = &self.layer;
        let mut acquire = layer.gov.acquire(layer.dependency.clone());
        if let Some(priority) = layer.priority {
            acquire = acquire.priority(priority);
        }
        if let Some(tenant) = &layer.tenant {
            acquire = acquire.tenant(tenant.clone());
        }
        acquire = acquire.degradable(layer.degradable);
        ResponseFuture {
            inner: Box::pin(acquire.run(async move { inner.oneshot(request).await })),
        }
    }
}

/// The response future of [`GovernorService`].
///
/// # Cancel safety
///
/// Dropping it releases a held permit as `CANCELLED`.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<T, E> {
    inner: Pin<Box<dyn Future<Output = Result<T, GovernedError<E>>> + Send>>,
}

impl<T, E> Future for ResponseFuture<T, E> {
    type Output = Result<T, GovernedError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T, E> fmt::Debug for ResponseFuture<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
