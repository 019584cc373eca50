//! Opening the TCP, Unix and health listeners and serving the gRPC routes on
//! them (which routes where: [`super::roles`]).

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use super::calls::CallsLayer;
use super::connections::Gates;
use super::roles::PeerCheckedIncoming;
use crate::config::ServerConfig;
use crate::server::FramingLayer;
use crate::telemetry::Telemetry;

/// HTTP/2 flow-control windows of the gRPC listeners, in bytes: what a
/// client may send ahead on one stream, and on one connection in all.
///
/// The connection window stays at hyper's 1 MiB: h2 sizes its budget for
/// small unread DATA frames from it (half the window), and with 64 KiB a
/// burst of small requests (the retry-storm benchmark) on one connection
/// tripped it, and h2 ended the connection with ENHANCE_YOUR_CALM
/// "too_many_data_frames".
pub const STREAM_WINDOW: u32 = 64 * 1024;
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;

#[derive(Debug)]
pub struct Bound {
    tcp: TcpListener,
    tcp_addr: SocketAddr,
    uds: Option<UnixSocket>,
    /// The health-only listener.
    health: Option<(TcpListener, SocketAddr)>,
}

/// The routes of each listener.
#[derive(Debug)]
pub struct RoleRoutes {
    pub tcp: Routes,
    pub uds: Routes,
    pub health: Routes,
}

/// A bound Unix socket, and the identity of the file it created, so that
/// only that file is removed at exit (never a successor's).
#[derive(Debug)]
struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
    inode: (u64, u64),
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
        Some(path) => {
            Some(bind_unix(path).map_err(|e| format!("server.uds: {}: {e}", path.display()))?)
        }
        None => None,
    };
    let health = match config.health_listen {
        Some(addr) => {
            let cannot = |e| format!("server.health_listen: cannot listen on {addr}: {e}");
            let listener = TcpListener::bind(addr).await.map_err(cannot)?;
            let bound = listener.local_addr().map_err(cannot)?;
            Some((listener, bound))
        }
        None => None,
    };
    Ok(Bound {
        tcp,
        tcp_addr,
        uds,
        health,
    })
}

/// Binds a Unix socket with mode 0660. A socket file left by a previous run
/// is replaced; one that a live process still accepts on, or any other kind
/// of file, is an error.
fn bind_unix(path: &Path) -> std::io::Result<UnixSocket> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let error = |message| Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, message));
        if !meta.file_type().is_socket() {
            return error("exists and is not a socket");
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return error("in use by a running process");
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    let meta = std::fs::metadata(path)?;
    Ok(UnixSocket {
        listener,
        path: path.to_owned(),
        inode: (meta.dev(), meta.ino()),
    })
}

impl Bound {
    pub fn ready_line(&self) -> String {
        let mut line = format!("governor ready grpc={}", self.tcp_addr);
        if let Some(uds) = &self.uds {
            line.push_str(&format!(" uds={}", uds.path.display()));
        }
        if let Some((_, addr)) = &self.health {
            line.push_str(&format!(" health={addr}"));
        }
        line
    }

    /// The address the gRPC TCP listener is bound to.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// Serves each listener's routes until `stop` is cancelled, then lets
    /// open calls finish; the future ends when every listener has. The Unix
    /// socket admits only the peers `config.uds_peers` allows.
    pub fn serve(
        self,
        routes: RoleRoutes,
        config: &ServerConfig,
        telemetry: Arc<Telemetry>,
        gates: &Gates,
        calls: &CallsLayer,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + use<> {
        // The HTTP/2 settings every gRPC listener shares; requests are small,
        // so a small stream window bounds what a client can make us buffer
        // (see the README's memory budget).
        let http2 = || {
            Server::builder()
                .max_concurrent_streams(config.max_concurrent_streams)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .http2_keepalive_interval(Some(config.keepalive_interval))
                .http2_keepalive_timeout(Some(config.keepalive_timeout))
                .http2_max_header_list_size(16 * 1024)
        };
        let health_builder = || http2().layer(FramingLayer::new(config.max_message_bytes));
        let builder = || {
            http2()
                .layer(calls.clone())
                .layer(FramingLayer::new(config.max_message_bytes))
        };
        // Nagle off on accepted sockets: Acquire and Release are small frames.
        let incoming = gates
            .serving
            .incoming(TcpIncoming::from(self.tcp).with_nodelay(Some(true)));
        // The health listener neither shares the connection cap nor counts
        // toward max_calls: probes must answer while the data plane is full.
        let health = self.health.map(|(listener, _)| {
            let incoming = gates
                .health
                .incoming(TcpIncoming::from(listener).with_nodelay(Some(true)));
            let server = health_builder()
                .add_routes(routes.health)
                .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
            tokio::spawn(async move {
                if let Err(error) = server.await {
                    tracing::error!(%error, "health listener failed");
                }
            })
        });
        let tcp = builder()
            .add_routes(routes.tcp)
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        let tcp = tokio::spawn(async move {
            if let Err(error) = tcp.await {
                tracing::error!(%error, "gRPC listener failed");
            }
        });
        let uds = self.uds.map(|socket| {
            let incoming =
                PeerCheckedIncoming::new(socket.listener, config.uds_peers.clone(), telemetry);
            let server = builder()
                .add_routes(routes.uds)
                .serve_with_incoming_shutdown(
                    gates.serving.incoming(incoming),
                    stop.cancelled_owned(),
                );
            let (path, inode) = (socket.path, socket.inode);
            tokio::spawn(async move {
                if let Err(error) = server.await {
                    tracing::error!(%error, "Unix socket listener failed");
                }
                UnixSocket::remove_path(&path, inode);
            })
        });
        async move {
            let _ = tcp.await;
            if let Some(uds) = uds {
                let _ = uds.await;
            }
            if let Some(health) = health {
                let _ = health.await;
            }
        }
    }
}

impl UnixSocket {
    fn remove_path(path: &Path, inode: (u64, u64)) {
        let ours =
            std::fs::symlink_metadata(path).is_ok_and(|meta| (meta.dev(), meta.ino()) == inode);
        if ours {
            let _ = std::fs::remove_file(path);
        }
    }
}
