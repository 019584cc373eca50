//! A4, what users pick instead of a sidecar: a Redis-backed semaphore with
//! expiring leases. Acquire and release are Lua scripts: a sorted set of lease
//! ids scored by expiry; acquire drops expired leases (ZREMRANGEBYSCORE) and
//! adds its own (ZADD) if ZCARD is under the limit; release is a ZREM.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::Script;
use redis::aio::MultiplexedConnection;

const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  return 1
end
return 0
";

const RELEASE: &str = "return redis.call('ZREM', KEYS[1], ARGV[1])";

#[derive(Clone, Debug)]
pub struct RedisSemaphore {
    conn: MultiplexedConnection,
    acquire: Arc<Script>,
    release: Arc<Script>,
    key: Arc<str>,
    limit: u32,
    ttl_ms: u64,
    next: Arc<AtomicU64>,
}

impl RedisSemaphore {
    /// Connects to `url` (`redis://127.0.0.1:PORT/` or `redis+unix:///PATH`).
    pub async fn connect(url: &str, key: &str, limit: u32, ttl_ms: u64) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        Ok(RedisSemaphore {
            conn,
            acquire: Arc::new(Script::new(ACQUIRE)),
            release: Arc::new(Script::new(RELEASE)),
            key: Arc::from(key),
            limit,
            ttl_ms,
            next: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A lease id if a permit was free, else `None`.
    pub async fn acquire(&self) -> Result<Option<String>, String> {
        let id = format!("lease-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let mut conn = self.conn.clone();
        let granted: i64 = self
            .acquire
            .key(&*self.key)
            .arg(self.limit)
            .arg(self.ttl_ms)
            .arg(&id)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| format!("redis acquire: {e}"))?;
        Ok((granted == 1).then_some(id))
    }

    /// Whether the lease was still held.
    pub async fn release(&self, lease: &str) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        let removed: i64 = self
            .release
            .key(&*self.key)
            .arg(lease)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| format!("redis release: {e}"))?;
        Ok(removed == 1)
    }

    /// One uncontended acquire + release; an error if either did not work.
    pub async fn pair(&self) -> Result<(), String> {
        let lease = self.acquire().await?.ok_or("redis semaphore full")?;
        if self.release(&lease).await? {
            Ok(())
        } else {
            Err("redis lease was gone at release".into())
        }
    }
}
