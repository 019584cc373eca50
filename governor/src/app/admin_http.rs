//! The admin HTTP listener: `/metrics` for Prometheus, `/healthz` (the
//! process is up) and `/readyz` (it takes new work; 503 while draining).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;
use crate::telemetry::Telemetry;

const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the admin listener, or says why it cannot.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("server.admin_listen: cannot listen on {addr}: {e}"))
}

/// Serves until `stop` is cancelled.
pub fn spawn(
    listener: TcpListener,
    ledger: Arc<Ledger>,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "admin listener: accept failed");
                        continue;
                    }
                },
            };
            let (ledger, telemetry) = (ledger.clone(), telemetry.clone());
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &ledger, &telemetry);
                async move { Ok::<_, Infallible>(response) }
            });
            let stop = stop.clone();
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    _ = stop.cancelled() => {
                        // Finish the request under way, then close.
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
    });
}

fn respond(
    request: &Request<Incoming>,
    ledger: &Ledger,
    telemetry: &Telemetry,
) -> Response<Full<Bytes>> {
    let text = |status, body: &'static str| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("a static response is valid")
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match request.uri().path() {
        "/metrics" => Response::builder()
            .header(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)
            .body(Full::new(Bytes::from(telemetry.metrics.render(ledger))))
            .expect("a metrics response is valid"),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ledger.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" => text(StatusCode::OK, "ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}
