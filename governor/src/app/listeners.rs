//! Opening the TCP and Unix listeners and serving the gRPC routes on them.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;

use crate::config::ServerConfig;

#[derive(Debug)]
pub struct Bound {
    tcp: TcpListener,
    tcp_addr: SocketAddr,
    uds: Option<(UnixListener, PathBuf)>,
}

/// Binds every configured listener, or says which one failed and why.
pub async fn bind(config: &ServerConfig) -> Result<Bound, String> {
    let tcp = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("server.listen: cannot listen on {}: {e}", config.listen))?;
    let tcp_addr = tcp
        .local_addr()
        .map_err(|e| format!("server.listen: {e}"))?;
    let uds = match &config.uds {
        Some(path) => Some((
            bind_unix(path).map_err(|e| format!("server.uds: {}: {e}", path.display()))?,
            path.clone(),
        )),
        None => None,
    };
    Ok(Bound { tcp, tcp_addr, uds })
}

/// Binds a Unix socket with mode 0660, replacing a stale socket file left by
/// a previous run (but never any other kind of file).
fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ));
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

impl Bound {
    pub fn ready_line(&self) -> String {
        let mut line = format!("governor ready grpc={}", self.tcp_addr);
        if let Some((_, path)) = &self.uds {
            line.push_str(&format!(" uds={}", path.display()));
        }
        line
    }

    /// Serves until `stop` is cancelled, then lets open calls finish; the
    /// future ends when every listener has.
    pub fn serve(
        self,
        routes: Routes,
        config: &ServerConfig,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + use<> {
        let builder = || {
            Server::builder()
                .max_concurrent_streams(config.max_concurrent_streams)
                .http2_keepalive_interval(Some(config.keepalive_interval))
                .http2_keepalive_timeout(Some(config.keepalive_timeout))
                .http2_max_header_list_size(16 * 1024)
                .tcp_nodelay(true)
        };
        let tcp = builder()
            .add_routes(routes.clone())
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(self.tcp),
                stop.clone().cancelled_owned(),
            );
        let tcp = tokio::spawn(async move {
            if let Err(error) = tcp.await {
                tracing::error!(%error, "gRPC listener failed");
            }
        });
        let uds = self.uds.map(|(listener, path)| {
            let server = builder().add_routes(routes).serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                stop.cancelled_owned(),
            );
            tokio::spawn(async move {
                if let Err(error) = server.await {
                    tracing::error!(%error, "Unix socket listener failed");
                }
                let _ = std::fs::remove_file(&path);
            })
        });
        async move {
            let _ = tcp.await;
            if let Some(uds) = uds {
                let _ = uds.await;
            }
        }
    }
}
