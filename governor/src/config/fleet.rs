//! `[fleet]`: the store the sidecars of a fleet share their fleet-wide
//! limits through (Redis or Redis Cluster), and how shares are leased.
//! `[dependencies.X.fleet]` sets a dependency's fleet-wide limit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::duration::HumanDuration;
use crate::ledger::FleetLimit;

/// Bounds of `fleet.share_ttl`.
const SHARE_TTL_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
/// Shortest `fleet.safety_margin`: a share must stop being used before it
/// lapses in the store, by more than the clocks can disagree on a duration.
const MIN_SAFETY_MARGIN: Duration = Duration::from_millis(10);
/// Longest `fleet.instance` and `fleet.namespace`, in bytes.
const MAX_NAME_LEN: usize = 128;

/// Where and how this sidecar leases its shares of fleet-wide limits.
#[derive(Clone, PartialEq)]
pub struct FleetConfig {
    pub store: FleetStore,
    /// A share lapses in the store unless renewed within this long; it is
    /// renewed every third of it.
    pub share_ttl: Duration,
    /// The sidecar stops using a share this long before the store lets it
    /// lapse: clock drift and rate between the two, and the permits granted
    /// just before it lapses.
    pub safety_margin: Duration,
    /// This sidecar's name in the store: unique in the fleet.
    pub instance: Arc<str>,
    /// The store keys' prefix: `<namespace>:{<dependency>}`.
    pub namespace: Arc<str>,
    /// The store's password, read from `password_file` (a mounted Secret),
    /// if given: overrides one in the URL.
    pub password: Option<Arc<str>>,
}

/// The fleet store.
#[derive(Clone, PartialEq)]
pub enum FleetStore {
    /// One Redis server (or a Sentinel-managed primary behind one address).
    Redis(String),
    /// A Redis Cluster: some of its nodes, to discover the rest from.
    Cluster(Vec<String>),
}

impl FleetConfig {
    /// These settings without the password: what a reload compares (a
    /// rotated password takes effect at the next start).
    pub fn without_password(&self) -> FleetConfig {
        FleetConfig {
            password: None,
            ..self.clone()
        }
    }

    /// How often a share is renewed.
    pub fn renew_interval(&self) -> Duration {
        self.share_ttl / 3
    }
}

impl std::fmt::Debug for FleetConfig {
    /// By hand: the URLs and the password may carry credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            .field("store", &self.store)
            .field("share_ttl", &self.share_ttl)
            .field("safety_margin", &self.safety_margin)
            .field("instance", &self.instance)
            .field("namespace", &self.namespace)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::fmt::Debug for FleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FleetStore::Redis(url) => f.debug_tuple("Redis").field(&redact(url)).finish(),
            FleetStore::Cluster(urls) => f
                .debug_tuple("Cluster")
                .field(&urls.iter().map(|u| redact(u)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// A store URL fit for logs: without its user, password and query (where
/// `redis+unix:` URLs carry `pass=`); one that does not parse shows only
/// its scheme.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if !parsed.username().is_empty() || parsed.password().is_some() {
                let _ = parsed.set_username("redacted");
                let _ = parsed.set_password(None);
            }
            if parsed.query().is_some() {
                parsed.set_query(Some("redacted"));
            }
            parsed.to_string()
        }
        Err(_) => format!(
            "{}://(unparsable)",
            url.split_once("://").map_or("?", |(scheme, _)| scheme)
        ),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FleetSection {
    redis: Option<String>,
    redis_cluster: Option<Vec<String>>,
    password_file: Option<PathBuf>,
    share_ttl: Option<HumanDuration>,
    safety_margin: Option<HumanDuration>,
    instance: Option<String>,
    namespace: Option<String>,
}

/// `[dependencies.X.fleet]`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FleetLimitSection {
    max_concurrency: u32,
    fallback_share: u32,
}

impl FleetLimitSection {
    pub(super) fn limit(self, key: &str) -> Result<FleetLimit, ConfigError> {
        FleetLimit::new(self.max_concurrency, self.fallback_share)
            .map_err(|e| ConfigError::at(format!("{key}.{}", e.field), e.problem))
    }
}

impl FleetSection {
    /// The `[fleet]` section, checked; `base` is the embedded one's.
    pub(super) fn config(self, base: FleetSection) -> Result<FleetConfig, ConfigError> {
        let store = match (self.redis, self.redis_cluster) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::at(
                    "fleet",
                    "set redis or redis_cluster, not both",
                ));
            }
            (Some(url), None) => {
                check_url(&url, "fleet.redis")?;
                FleetStore::Redis(url)
            }
            (None, Some(urls)) => {
                if urls.is_empty() {
                    return Err(ConfigError::at(
                        "fleet.redis_cluster",
                        "must name at least one node",
                    ));
                }
                for url in &urls {
                    check_url(url, "fleet.redis_cluster")?;
                }
                FleetStore::Cluster(urls)
            }
            (None, None) => {
                return Err(ConfigError::at(
                    "fleet",
                    "needs redis = \"redis://host:6379\" or redis_cluster = [...]",
                ));
            }
        };
        let share_ttl = self
            .share_ttl
            .or(base.share_ttl)
            .map_or(Duration::from_secs(10), |d| d.0);
        if !(SHARE_TTL_RANGE.0..=SHARE_TTL_RANGE.1).contains(&share_ttl) {
            return Err(ConfigError::at(
                "fleet.share_ttl",
                format!(
                    "must be between 1s and 1h, got {}",
                    humantime::format_duration(share_ttl)
                ),
            ));
        }
        let safety_margin = self
            .safety_margin
            .or(base.safety_margin)
            .map_or(share_ttl / 5, |d| d.0);
        if safety_margin < MIN_SAFETY_MARGIN {
            return Err(ConfigError::at(
                "fleet.safety_margin",
                format!(
                    "must be at least {}, got {}",
                    humantime::format_duration(MIN_SAFETY_MARGIN),
                    humantime::format_duration(safety_margin)
                ),
            ));
        }
        if safety_margin >= share_ttl / 2 {
            return Err(ConfigError::at(
                "fleet.safety_margin",
                format!(
                    "must be less than half of fleet.share_ttl ({}), got {}",
                    humantime::format_duration(share_ttl),
                    humantime::format_duration(safety_margin)
                ),
            ));
        }
        let instance = match self.instance.or(base.instance) {
            Some(instance) => instance,
            None => default_instance(),
        };
        check_name(&instance, "fleet.instance")?;
        let namespace = self
            .namespace
            .or(base.namespace)
            .unwrap_or_else(|| "governor".to_owned());
        check_name(&namespace, "fleet.namespace")?;
        let password = match self.password_file {
            Some(path) => {
                let text = read_small(&path).map_err(|error| {
                    ConfigError::at(
                        "fleet.password_file",
                        format!("cannot read {}: {error}", path.display()),
                    )
                })?;
                let password = text.trim_end_matches(['\n', '\r']);
                if password.is_empty() {
                    return Err(ConfigError::at(
                        "fleet.password_file",
                        format!("{} is empty", path.display()),
                    ));
                }
                Some(Arc::from(password))
            }
            None => None,
        };
        Ok(FleetConfig {
            store,
            share_ttl,
            safety_margin,
            instance: Arc::from(instance),
            namespace: Arc::from(namespace),
            password,
        })
    }
}

/// A password file's text: at most 4 KiB (not a device that never ends).
fn read_small(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    const MAX: u64 = 4096;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX {
        return Err(std::io::Error::other(format!("longer than {MAX} bytes")));
    }
    Ok(text)
}

fn check_url(url: &str, key: &str) -> Result<(), ConfigError> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|error| ConfigError::at(key, format!("invalid URL {:?}: {error}", redact(url))))
}

fn check_name(name: &str, key: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ConfigError::at(
            key,
            format!("must be 1 to {MAX_NAME_LEN} bytes, got {}", name.len()),
        ));
    }
    if name
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '{' || c == '}')
    {
        return Err(ConfigError::at(
            key,
            format!("{name:?}: no spaces, control characters or braces"),
        ));
    }
    Ok(())
}

/// `<hostname>-<pid>`: a pod's name is its hostname in Kubernetes, and the
/// pid tells two sidecars on one host apart.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "governor".to_owned());
    let host: String = host
        .chars()
        .filter(|c| !(c.is_control() || c.is_whitespace() || *c == '{' || *c == '}'))
        .take(100)
        .collect();
    format!("{host}-{}", std::process::id())
}
