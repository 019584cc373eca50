//! The fleet store: one Lua script call per share renewal (`share.lua`),
//! on Redis or Redis Cluster through the `redis` crate (its connection
//! manager reconnects with backoff; the cluster client follows the slots).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo, Script};

use crate::config::{FleetConfig, FleetStore};

/// The script every sidecar runs against a dependency's hash.
const SCRIPT: &str = include_str!("share.lua");

/// One call about one dependency's share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Call {
    /// `<namespace>:{<dependency>}`: one hash, one slot.
    pub key: Arc<str>,
    pub instance: Arc<str>,
    /// This process's random nonce: tells a restarted sidecar (or a second
    /// one under the same name) from the one that holds the entry.
    pub nonce: Arc<str>,
    /// Grows with every call of this process: a late duplicate is ignored.
    pub seq: u64,
    pub demand: u32,
    /// What the caller may still use of its share, or `None` when it holds
    /// none (lapsed, never had one).
    pub keep: Option<u32>,
    pub ttl: Duration,
    pub max_concurrency: u32,
    /// The store copy (its `born`) and the writes of it this sidecar saw.
    pub seen: Seen,
    /// Gives the share back and leaves.
    pub leaving: bool,
    /// The seq of the call whose answer gave the share still held (0:
    /// none): the store lost writes if it no longer has that one.
    pub acked: u64,
}

/// Which copy of the store state a sidecar last saw, and how far into it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    pub born: u64,
    pub writes: u64,
}

/// The script's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub status: ReplyStatus,
    /// What the store now records as this sidecar's share.
    pub share: u32,
    /// What the fair rule gives it.
    pub target: u32,
    pub seen: Seen,
    /// How long the store still learns (no new shares).
    pub learning_left: Duration,
    /// Sidecars with a live share, the caller included.
    pub instances: u32,
    /// The fleet-wide limit in force (the lowest configured).
    pub max_concurrency: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplyStatus {
    Ok,
    Learning,
    /// Another live sidecar holds an entry under this instance name.
    Conflict,
    /// A call older than one the store already has from this sidecar.
    Stale,
}

/// Why a store call failed. Never carries the URL (it may hold a password).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Redis(String),
    #[error("unexpected answer from the share script: {0}")]
    Answer(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(error: redis::RedisError) -> StoreError {
        StoreError::Redis(error.to_string())
    }
}

/// Where the fleet task leases shares: Redis, or a fake in tests.
pub(crate) trait Store: Send + Sync + std::fmt::Debug + 'static {
    fn call(&self, call: Call) -> BoxFuture<'static, Result<Reply, StoreError>>;
}

/// Redis or Redis Cluster.
pub(crate) struct RedisStore {
    connection: Connection,
    script: Arc<Script>,
}

enum Connection {
    Standalone(ConnectionManager),
    /// Connected on first use (and again after an error), so a cluster that
    /// is down at start does not stop the sidecar.
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        connection: Arc<tokio::sync::Mutex<Option<ClusterConnection>>>,
    },
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.connection {
            Connection::Standalone(_) => "redis",
            Connection::Cluster { .. } => "redis_cluster",
        };
        f.debug_struct("RedisStore").field("kind", &kind).finish()
    }
}

impl RedisStore {
    /// A store client; connects lazily, so an unreachable store does not
    /// stop the sidecar from starting (it falls back instead).
    pub(crate) fn new(config: &FleetConfig, timeout: Duration) -> Result<RedisStore, StoreError> {
        let with_password = |url: &str| -> Result<redis::ConnectionInfo, StoreError> {
            let info = url.into_connection_info()?;
            Ok(match &config.password {
                Some(password) => {
                    let settings = info.redis_settings().clone().set_password(&**password);
                    info.set_redis_settings(settings)
                }
                None => info,
            })
        };
        let connection = match &config.store {
            FleetStore::Redis(url) => {
                let client = redis::Client::open(with_password(url)?)?;
                let manager = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                Connection::Standalone(ConnectionManager::new_lazy_with_config(client, manager)?)
            }
            FleetStore::Cluster(urls) => {
                let nodes = urls
                    .iter()
                    .map(|url| with_password(url))
                    .collect::<Result<Vec<_>, _>>()?;
                let client = redis::cluster::ClusterClient::builder(nodes)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .build()?;
                Connection::Cluster {
                    client: Box::new(client),
                    connection: Arc::default(),
                }
            }
        };
        Ok(RedisStore {
            connection,
            script: Arc::new(Script::new(SCRIPT)),
        })
    }
}

impl Store for RedisStore {
    fn call(&self, call: Call) -> BoxFuture<'static, Result<Reply, StoreError>> {
        let script = self.script.clone();
        match &self.connection {
            Connection::Standalone(manager) => {
                let mut manager = manager.clone();
                Box::pin(async move {
                    let answer: Vec<i64> = invocation(&script, &call)
                        .invoke_async(&mut manager)
                        .await?;
                    parse(&answer)
                })
            }
            Connection::Cluster { client, connection } => {
                let (client, slot) = (client.as_ref().clone(), connection.clone());
                Box::pin(async move {
                    let mut guard = slot.lock().await;
                    let mut connection = match guard.as_ref() {
                        Some(connection) => connection.clone(),
                        None => {
                            let connection = client.get_async_connection().await?;
                            *guard = Some(connection.clone());
                            connection
                        }
                    };
                    drop(guard);
                    let answer: Result<Vec<i64>, _> = invocation(&script, &call)
                        .invoke_async(&mut connection)
                        .await;
                    match answer {
                        Ok(answer) => parse(&answer),
                        Err(error) => {
                            if error.is_io_error() || error.is_connection_dropped() {
                                *slot.lock().await = None;
                            }
                            Err(error.into())
                        }
                    }
                })
            }
        }
    }
}

fn invocation<'a>(script: &'a Script, call: &Call) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(&*call.key)
        .arg(&*call.instance)
        .arg(&*call.nonce)
        .arg(call.seq)
        .arg(call.demand)
        .arg(call.keep.map_or(-1, i64::from))
        .arg(u64::try_from(call.ttl.as_millis()).unwrap_or(u64::MAX))
        .arg(call.max_concurrency)
        .arg(call.seen.born)
        .arg(call.seen.writes)
        .arg(if call.leaving { "1" } else { "0" })
        .arg(call.acked);
    invocation
}

fn parse(answer: &[i64]) -> Result<Reply, StoreError> {
    let bad = || StoreError::Answer(format!("{answer:?}"));
    let &[
        status,
        share,
        target,
        born,
        writes,
        learning_left,
        instances,
        max,
    ] = answer
    else {
        return Err(bad());
    };
    let status = match status {
        0 => ReplyStatus::Ok,
        1 => ReplyStatus::Learning,
        2 => ReplyStatus::Conflict,
        3 => ReplyStatus::Stale,
        _ => return Err(bad()),
    };
    let count = |v: i64| u32::try_from(v).map_err(|_| bad());
    let wide = |v: i64| u64::try_from(v).map_err(|_| bad());
    Ok(Reply {
        status,
        share: count(share)?,
        target: count(target)?,
        seen: Seen {
            born: wide(born)?,
            writes: wide(writes)?,
        },
        learning_left: Duration::from_millis(wide(learning_left)?),
        instances: count(instances)?,
        max_concurrency: count(max)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked() {
        let reply = parse(&[1, 3, 5, 1700, 9, 250, 2, 12]).unwrap();
        assert_eq!(reply.status, ReplyStatus::Learning);
        assert_eq!((reply.share, reply.target, reply.instances), (3, 5, 2));
        assert_eq!(
            reply.seen,
            Seen {
                born: 1700,
                writes: 9
            }
        );
        assert_eq!(reply.learning_left, Duration::from_millis(250));
        assert!(matches!(parse(&[0, 1]), Err(StoreError::Answer(_))));
        assert!(matches!(
            parse(&[7, 0, 0, 0, 0, 0, 0, 1]),
            Err(StoreError::Answer(_))
        ));
        assert!(matches!(
            parse(&[0, -1, 0, 0, 0, 0, 0, 1]),
            Err(StoreError::Answer(_))
        ));
    }
}
