//! Who may use the control plane on a listener (see the README's threat
//! model).
//!
//! `GovernorAdmin` can change every limit, so it answers without
//! credentials only where the network cannot reach it: loopback TCP
//! listeners and the Unix socket. On any other listener every call must
//! carry `authorization: Bearer <token>` with the token of
//! `server.admin_token_file`, compared in constant time
//! ([`AdminToken::matches`]); without a token file such a listener refuses
//! every call with PERMISSION_DENIED (it stays routed, so that a reload that
//! adds the file takes effect without a restart). A wrong or missing token is
//! UNAUTHENTICATED, logged with the peer's address (never the token) and
//! counted in `governor_admin_denied_total{reason}`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::time::Instant;
use tonic::service::Interceptor;
use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};
use tonic::{Request, Status};

use crate::config::AdminToken;
use crate::ledger::Peer;
use crate::telemetry::Telemetry;

/// How the control plane is offered on one listener.
#[derive(Clone, Debug)]
pub enum AdminAccess {
    /// Not routed: its calls get UNIMPLEMENTED.
    Absent,
    /// Served without credentials (loopback, the Unix socket).
    Open,
    /// Served to callers presenting the token (any other listener).
    Token(AdminGate),
}

/// The token in force, replaced on reload.
#[derive(Debug, Default)]
pub struct TokenSlot {
    token: RwLock<Option<AdminToken>>,
}

impl TokenSlot {
    pub fn new(token: Option<AdminToken>) -> Arc<TokenSlot> {
        Arc::new(TokenSlot {
            token: RwLock::new(token),
        })
    }

    pub fn set(&self, token: Option<AdminToken>) {
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token;
    }

    fn get(&self) -> Option<AdminToken> {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Checks the bearer token of every control-plane call on a non-loopback
/// listener.
#[derive(Clone)]
pub struct AdminGate {
    listener: SocketAddr,
    token: Arc<TokenSlot>,
    telemetry: Arc<Telemetry>,
    log: Arc<RateLimitedLog>,
}

impl std::fmt::Debug for AdminGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminGate")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl AdminGate {
    pub fn new(listener: SocketAddr, token: Arc<TokenSlot>, telemetry: Arc<Telemetry>) -> Self {
        AdminGate {
            listener,
            token,
            telemetry,
            log: Arc::new(RateLimitedLog::default()),
        }
    }

    fn deny(&self, request: &Request<()>, reason: &'static str) {
        self.telemetry.metrics.admin_denied(reason);
        if let Some(suppressed) = self.log.admit() {
            let peer = request
                .remote_addr()
                .map_or_else(|| "unknown".to_owned(), |addr| addr.to_string());
            tracing::warn!(
                %peer,
                listener = %self.listener,
                reason,
                suppressed,
                "control plane call refused"
            );
        }
    }
}

impl Interceptor for AdminGate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = self.token.get() else {
            self.deny(&request, "no_token_file");
            return Err(Status::permission_denied(format!(
                "the control plane is not served on {} (not loopback) without \
                 server.admin_token_file; use a loopback listener or the Unix socket",
                self.listener
            )));
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(bearer);
        match presented {
            Some(presented) if token.matches(presented.as_bytes()) => Ok(request),
            Some(_) => {
                self.deny(&request, "wrong_token");
                Err(Status::unauthenticated(
                    "authorization: the bearer token is not the control plane's",
                ))
            }
            None => {
                self.deny(&request, "missing_token");
                Err(Status::unauthenticated(
                    "authorization: the control plane on this listener needs \
                     \"authorization: Bearer <token>\" (server.admin_token_file)",
                ))
            }
        }
    }
}

/// Who a data-plane call comes from, for `limits.max_dependencies_per_peer`:
/// a remote host by its address (however many connections it opens), a
/// local TCP client by its connection, a Unix-socket client by its process.
pub fn peer_of(extensions: &tonic::Extensions) -> Option<Peer> {
    if let Some(tcp) = extensions.get::<TcpConnectInfo>() {
        let remote = tcp.remote_addr()?;
        let ip = remote.ip().to_canonical();
        return Some(if ip.is_loopback() {
            Peer::Connection(remote)
        } else {
            Peer::Host(ip)
        });
    }
    let cred = extensions.get::<UdsConnectInfo>()?.peer_cred?;
    Some(match cred.pid() {
        Some(pid) => Peer::Process(pid),
        None => Peer::User(cred.uid()),
    })
}

/// The token of an `authorization: Bearer <token>` value (the scheme is
/// case-insensitive, RFC 9110).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// At most one log line a second for a flood of refusals; the lines between
/// are counted into the next one (and every refusal is in the metrics).
#[derive(Debug)]
pub(crate) struct RateLimitedLog {
    start: Instant,
    /// The second (since `start`) of the last line, plus one; 0 before any.
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        RateLimitedLog {
            start: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl RateLimitedLog {
    /// `Some(lines suppressed since the last one)` if this event may be
    /// logged now.
    pub(crate) fn admit(&self) -> Option<u64> {
        let second = self.start.elapsed().as_secs() + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != second
            && self
                .last
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_takes_the_token_of_the_bearer_scheme_only() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_log_admits_one_line_a_second_and_counts_the_rest() {
        let log = RateLimitedLog::default();
        assert_eq!(log.admit(), Some(0));
        assert_eq!(log.admit(), None);
        assert_eq!(log.admit(), None);
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert_eq!(log.admit(), Some(2));
        assert_eq!(log.admit(), None);
    }
}
