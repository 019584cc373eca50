//! The admin HTTP listener: `/metrics` for Prometheus, `/healthz` (the
//! process is up), `/readyz` (it takes new work; 503 while draining), and the
//! live status page at `/` with its data at `/status.json`.
//!
//! - `routes`: what each path answers.
//! - `page.html`: the status page, embedded in the binary (no external
//!   assets, so it works offline).

mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::ledger::{Ledger, TenantDetail};
use crate::telemetry::Telemetry;
use crate::telemetry::status::StatusBoard;

/// Binds the admin listener, or says why it cannot.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("server.admin_listen: cannot listen on {addr}: {e}"))
}

/// What the handlers read.
#[derive(Debug)]
struct Shared {
    ledger: Arc<Ledger>,
    telemetry: Arc<Telemetry>,
    board: StatusBoard,
}

/// Serves until `stop` is cancelled, and samples the status page's history
/// once a second meanwhile.
pub fn spawn(
    listener: TcpListener,
    ledger: Arc<Ledger>,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) {
    let shared = Arc::new(Shared {
        ledger,
        telemetry,
        board: StatusBoard::new(),
    });
    spawn_sampler(shared.clone(), stop.clone());
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
            let shared = shared.clone();
            let service = hyper::service::service_fn(move |request| {
                let response = routes::respond(&request, &shared);
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

/// Samples every dependency into the board once a second, from the start (so
/// that the first interval's rates count from zero).
fn spawn_sampler(shared: Arc<Shared>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::telemetry::status::SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let statuses = shared.ledger.statuses_with(TenantDetail::None);
            shared.board.sample(
                &statuses,
                &shared.telemetry.metrics,
                Instant::now(),
                SystemTime::now(),
            );
        }
    });
}
