//! What each listener serves, and who may connect to the Unix socket.
//!
//! | listener | data plane | control plane (`control_plane = "all"`) | health |
//! |---|---|---|---|
//! | `listen` on loopback | yes | without credentials | yes |
//! | `listen` elsewhere (`0.0.0.0`, a pod IP) | yes | bearer token of `admin_token_file`, else PERMISSION_DENIED | yes |
//! | `uds` | yes | without credentials (file mode, peer allow-list) | yes |
//! | `health_listen` | no | no | yes |
//!
//! `control_plane = "uds"` keeps the control plane on the Unix socket only,
//! `"off"` nowhere; neither ever opens it wider than the table.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::Stream;

use crate::config::{ControlPlane, PeerAllowList, ServerConfig};
use crate::server::{AdminAccess, AdminGate, RateLimitedLog, TokenSlot};
use crate::telemetry::Telemetry;

/// Whether a TCP listener on `addr` is reachable only from this host.
pub fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// How the control plane is offered on the TCP listener bound at `addr`.
pub fn tcp_admin(
    config: &ServerConfig,
    addr: SocketAddr,
    token: &Arc<TokenSlot>,
    telemetry: &Arc<Telemetry>,
) -> AdminAccess {
    match config.control_plane {
        ControlPlane::All if is_loopback(addr) => AdminAccess::Open,
        ControlPlane::All => {
            AdminAccess::Token(AdminGate::new(addr, token.clone(), telemetry.clone()))
        }
        ControlPlane::UnixSocket | ControlPlane::Off => AdminAccess::Absent,
    }
}

/// How the control plane is offered on the Unix socket.
pub fn uds_admin(config: &ServerConfig) -> AdminAccess {
    match config.control_plane {
        ControlPlane::All | ControlPlane::UnixSocket => AdminAccess::Open,
        ControlPlane::Off => AdminAccess::Absent,
    }
}

/// The Unix socket's accepted connections, less those whose peer
/// credentials (SO_PEERCRED, read once at accept) the allow-list refuses:
/// those are closed at once, logged with their uid, gid and pid, and
/// counted in `governor_uds_peers_refused_total`.
pub struct PeerCheckedIncoming {
    listener: UnixListener,
    allowed: PeerAllowList,
    telemetry: Arc<Telemetry>,
    log: RateLimitedLog,
}

impl std::fmt::Debug for PeerCheckedIncoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCheckedIncoming")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl PeerCheckedIncoming {
    pub fn new(
        listener: UnixListener,
        allowed: PeerAllowList,
        telemetry: Arc<Telemetry>,
    ) -> PeerCheckedIncoming {
        PeerCheckedIncoming {
            listener,
            allowed,
            telemetry,
            log: RateLimitedLog::default(),
        }
    }

    /// Whether to serve `stream`; logs and counts a refusal.
    fn admit(&self, stream: &UnixStream) -> bool {
        if self.allowed.is_open() {
            return true;
        }
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(error) => {
                self.refused();
                if let Some(suppressed) = self.log.admit() {
                    tracing::warn!(%error, suppressed, "Unix socket peer refused: no peer credentials");
                }
                return false;
            }
        };
        if self.allowed.admits(cred.uid(), cred.gid()) {
            return true;
        }
        self.refused();
        if let Some(suppressed) = self.log.admit() {
            tracing::warn!(
                uid = cred.uid(),
                gid = cred.gid(),
                pid = cred.pid(),
                suppressed,
                "Unix socket peer refused: uid and gid not in server.uds_allowed_uids/gids"
            );
        }
        false
    }

    fn refused(&self) {
        self.telemetry.metrics.uds_peers_refused.inc();
    }
}

impl Stream for PeerCheckedIncoming {
    type Item = std::io::Result<UnixStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match ready!(self.listener.poll_accept(cx)) {
                // A refused stream is dropped here, which closes it.
                Ok((stream, _)) if self.admit(&stream) => return Poll::Ready(Some(Ok(stream))),
                Ok(_) => continue,
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
        }
    }
}
