//! Channels to the sidecar over TCP (`http://...`) or a Unix socket
//! (`unix:...`).

use std::{path::PathBuf, time::Duration};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The endpoint given to [`Governor::connect`](crate::Governor::connect)
/// could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Not a valid `http://` URI.
    #[error("invalid governor endpoint {endpoint:?}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What was wrong with it.
        #[source]
        source: tonic::transport::Error,
    },
    /// A `unix:` endpoint without a path, or `unix://` with a relative one.
    #[error("invalid unix socket endpoint {0:?}: expected unix:///absolute/path or unix:path")]
    InvalidUnixPath(String),
}

/// The socket path of a `unix:` endpoint, `None` for other schemes.
pub(crate) fn unix_path(endpoint: &str) -> Option<Result<PathBuf, ConnectError>> {
    let invalid = || ConnectError::InvalidUnixPath(endpoint.to_owned());
    let path = match endpoint.strip_prefix("unix://") {
        // `unix://` must be followed by an absolute path (an empty authority).
        Some(rest) if rest.starts_with('/') => rest,
        Some(_) => return Some(Err(invalid())),
        None => endpoint.strip_prefix("unix:")?,
    };
    Some(if path.is_empty() {
        Err(invalid())
    } else {
        Ok(PathBuf::from(path))
    })
}

/// A lazily connecting channel to `endpoint`.
pub(crate) fn lazy_channel(
    endpoint: &str,
    connect_timeout: Duration,
    (keepalive_interval, keepalive_timeout): (Duration, Duration),
) -> Result<Channel, ConnectError> {
    if let Some(path) = unix_path(endpoint) {
        let path = path?;
        // The URI only fills the :authority header; the connector ignores it.
        let channel =
            Endpoint::from_static("http://governor.sock")
                .connect_timeout(connect_timeout)
                .http2_keep_alive_interval(keepalive_interval)
                .keep_alive_timeout(keepalive_timeout)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }));
        return Ok(channel);
    }
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|source| ConnectError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            source,
        })?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(keepalive_interval)
        .keep_alive_timeout(keepalive_timeout)
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(5));

    #[test]
    fn parses_unix_endpoints() {
        let ok = |e: &str| unix_path(e).unwrap().unwrap();
        assert_eq!(
            ok("unix:///run/governor/governor.sock"),
            PathBuf::from("/run/governor/governor.sock")
        );
        assert_eq!(ok("unix:/tmp/g.sock"), PathBuf::from("/tmp/g.sock"));
        assert_eq!(ok("unix:g.sock"), PathBuf::from("g.sock"));
        assert!(unix_path("unix:").unwrap().is_err());
        assert!(unix_path("http://127.0.0.1:50051").is_none());
    }

    #[tokio::test]
    async fn rejects_bad_endpoints() {
        assert!(matches!(
            lazy_channel("unix://relative.sock", Duration::from_secs(1), KEEPALIVE),
            Err(ConnectError::InvalidUnixPath(_))
        ));
        assert!(matches!(
            lazy_channel("not a uri", Duration::from_secs(1), KEEPALIVE),
            Err(ConnectError::InvalidEndpoint { .. })
        ));
    }
}
