//! The configuration file: TOML, read over the embedded defaults, validated
//! once into types the rest of the sidecar cannot get wrong.
//!
//! Every error names the key it is about (`dependencies.payments.max_wait:
//! ...`), and the binary exits with status 64 on it. A reload (SIGHUP or the
//! file watch) goes through the same parser, so an invalid file is refused
//! whole and the running config stays.

mod access;
mod duration;
mod fleet;
mod telemetry;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use access::{AdminToken, ControlPlane, PeerAllowList};
pub use duration::{HumanDuration, parse as parse_duration};
pub use fleet::{FleetConfig, FleetStore, redact as redact_url};
pub use telemetry::{OtlpProtocol, TelemetryConfig, TracingConfig};

use crate::ledger::limit::{AdaptivePatch, AlgorithmChoice};
use crate::ledger::{
    self, BudgetConfig, DegradeAt, FairBy, FairnessPatch, LedgerConfig, Limits, LimitsPatch,
    RatePatch,
};

/// The configuration the binary runs on when given none.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// A complete, valid configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub ledger: LedgerConfig,
    pub telemetry: TelemetryConfig,
    /// The fleet store; `None` without a `[fleet]` section.
    pub fleet: Option<FleetConfig>,
}

/// The `[server]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub uds: Option<PathBuf>,
    pub admin_listen: Option<SocketAddr>,
    pub shutdown_grace: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Where `governor.v1.GovernorAdmin` is served.
    pub control_plane: ControlPlane,
    /// A listener that serves gRPC health and nothing else, for probes.
    pub health_listen: Option<SocketAddr>,
    /// The control plane's bearer token on non-loopback listeners, and the
    /// file it was read from.
    pub admin_token_file: Option<PathBuf>,
    pub admin_token: Option<AdminToken>,
    /// Who may connect to the Unix socket.
    pub uds_peers: PeerAllowList,
    /// Open connections over every gRPC listener (TCP and Unix socket
    /// together); more are closed at accept.
    pub max_connections: usize,
    /// Calls open at once over every gRPC listener; more are answered
    /// RESOURCE_EXHAUSTED at once.
    pub max_calls: usize,
    /// A connection with no open stream for this long gets a GOAWAY and is
    /// closed.
    pub idle_connection_timeout: Duration,
    /// A connection that has not sent the HTTP/2 preface by then is closed.
    pub handshake_timeout: Duration,
}

/// A configuration problem, naming the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn at(key: impl std::fmt::Display, problem: impl std::fmt::Display) -> Self {
        ConfigError(format!("{key}: {problem}"))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    defaults: LimitsSection,
    #[serde(default)]
    limits: CapsSection,
    #[serde(default)]
    dependencies: BTreeMap<String, LimitsSection>,
    #[serde(default)]
    telemetry: telemetry::TelemetrySection,
    fleet: Option<fleet::FleetSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    listen: Option<String>,
    uds: Option<PathBuf>,
    admin_listen: Option<String>,
    shutdown_grace: Option<HumanDuration>,
    max_concurrent_streams: Option<u32>,
    max_message_bytes: Option<usize>,
    keepalive_interval: Option<HumanDuration>,
    keepalive_timeout: Option<HumanDuration>,
    control_plane: Option<String>,
    health_listen: Option<String>,
    admin_token_file: Option<PathBuf>,
    uds_allowed_uids: Option<Vec<u32>>,
    uds_allowed_gids: Option<Vec<u32>>,
    max_connections: Option<usize>,
    max_calls: Option<usize>,
    idle_connection_timeout: Option<HumanDuration>,
    handshake_timeout: Option<HumanDuration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_concurrency: Option<u32>,
    max_queue: Option<u32>,
    max_wait: Option<HumanDuration>,
    lease_ttl: Option<HumanDuration>,
    retry_budget: Option<BudgetSection>,
    adaptive: Option<AdaptiveSection>,
    elevated_at: Option<f64>,
    degrade_at: Option<DegradeAtSection>,
    rate: Option<RateSection>,
    tenant_rate: Option<RateSection>,
    fairness: Option<FairnessSection>,
    fleet: Option<fleet::FleetLimitSection>,
}

/// `[*.fairness]`: weighted fair shares between tenants (`by` defaults to
/// `"tenant"` in a table); `by = "none"` turns off what `[defaults]` sets. A
/// dependency's table replaces the defaults' whole.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FairnessSection {
    by: Option<FairBySection>,
    #[serde(default)]
    weights: BTreeMap<String, u32>,
    default_weight: Option<u32>,
    max_tenants: Option<u32>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FairBySection {
    None,
    Tenant,
    TenantRoute,
}

impl FairnessSection {
    fn patch(&self) -> Option<FairnessPatch> {
        let by = match self.by.unwrap_or(FairBySection::Tenant) {
            FairBySection::None => return None,
            FairBySection::Tenant => FairBy::Tenant,
            FairBySection::TenantRoute => FairBy::TenantRoute,
        };
        Some(FairnessPatch {
            by: Some(by),
            weights: self.weights.clone(),
            default_weight: self.default_weight,
            max_tenants: self.max_tenants,
        })
    }
}

/// `rate = { per_second = 50, burst = 10 }`: a token bucket; `burst`
/// defaults to 1 (strictly paced), `per_second = 0` means no rate limit
/// (to turn off one that `[defaults]` sets).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateSection {
    per_second: f64,
    burst: Option<u32>,
}

impl RateSection {
    fn patch(self) -> Option<RatePatch> {
        (self.per_second != 0.0).then(|| RatePatch {
            per_second: self.per_second,
            burst: self.burst.unwrap_or(1),
        })
    }
}

/// `degrade_at`: from which pressure on a degradable request is answered
/// DEGRADE.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DegradeAtSection {
    Saturated,
    Elevated,
}

impl From<DegradeAtSection> for DegradeAt {
    fn from(section: DegradeAtSection) -> DegradeAt {
        match section {
            DegradeAtSection::Saturated => DegradeAt::Saturated,
            DegradeAtSection::Elevated => DegradeAt::Elevated,
        }
    }
}

/// `[*.adaptive]`: every key optional, defaults in `AdaptiveConfig::DEFAULT`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdaptiveSection {
    algorithm: Option<String>,
    min_limit: Option<u32>,
    initial_limit: Option<u32>,
    shadow: Option<bool>,
    window: Option<HumanDuration>,
    min_samples: Option<u32>,
    baseline_windows: Option<u32>,
    drop_threshold: Option<f64>,
    backoff: Option<f64>,
    tolerance: Option<f64>,
    alpha: Option<f64>,
    beta: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetSection {
    ratio: Option<f64>,
    min_per_second: Option<u32>,
    ttl: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapsSection {
    allow_unknown_dependencies: Option<bool>,
    max_dependencies: Option<usize>,
    max_waiters: Option<usize>,
    max_session_pending: Option<usize>,
    idle_ttl: Option<HumanDuration>,
    max_dependencies_per_peer: Option<usize>,
}

const MAX_DEPENDENCIES: usize = 1_000_000;
/// Bound of `server.max_connections` (each one costs a file descriptor).
const MAX_CONNECTIONS: usize = 1_000_000;
/// Bound of `server.max_calls`.
const MAX_CALLS: usize = 10_000_000;
const MAX_WAITERS: usize = 10_000_000;
const MAX_SESSION_PENDING: usize = 1_000_000;
/// Bounds of `limits.idle_ttl`.
const IDLE_TTL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));

impl Config {
    /// The embedded defaults.
    pub fn embedded() -> Config {
        Config::parse(EMBEDDED_DEFAULT).expect("the embedded config is valid")
    }

    /// Reads and validates a config file. A file that is empty, or has only
    /// comments, is refused: it is more likely truncated (a ConfigMap being
    /// rewritten, a full disk) than meant to reset every limit to the
    /// defaults; run without `--config` for those.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let at = |error: String| ConfigError(format!("{}: {error}", path.display()));
        let text =
            std::fs::read_to_string(path).map_err(|error| at(format!("cannot read: {error}")))?;
        Config::parse_file(&text).map_err(|error| at(error.0))
    }

    /// A config file's text as [`Config::load`] takes it: like
    /// [`Config::parse`], but an empty file, or one with only comments, is
    /// refused.
    pub fn parse_file(text: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Err(ConfigError(
                "the file is empty (a truncated file?); to run on the defaults, give no --config"
                    .into(),
            ));
        }
        let table: toml::Table =
            toml::from_str(text).map_err(|error| ConfigError(error.to_string()))?;
        if table.is_empty() {
            return Err(ConfigError(
                "the file has no section ([server], [defaults], [limits], [dependencies.*] or [telemetry]), only comments"
                    .into(),
            ));
        }
        Config::parse(text)
    }

    /// Parses a config file's text. Keys it leaves out take the embedded
    /// defaults' values.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|error| ConfigError(error.to_string()))?;
        let base: File = toml::from_str(EMBEDDED_DEFAULT).expect("the embedded config parses");
        Config::from_file(file, base)
    }

    fn from_file(file: File, base: File) -> Result<Config, ConfigError> {
        let server = server_config(file.server, base.server)?;
        if file.defaults.fleet.is_some() {
            return Err(ConfigError::at(
                "defaults.fleet",
                "a fleet-wide limit is set per dependency, in [dependencies.NAME.fleet]",
            ));
        }
        let fleet = file
            .fleet
            .map(|section| section.config(base.fleet.unwrap_or_default()))
            .transpose()?;

        let builtin = Limits::default()
            .patched(&patch(
                &base.defaults,
                &BudgetConfig::default(),
                "defaults",
            )?)
            .expect("the embedded defaults are valid");
        let defaults = builtin
            .patched(&patch(&file.defaults, &builtin.retry_budget(), "defaults")?)
            .map_err(|e| ConfigError::at(format!("defaults.{}", e.field), e.problem))?;

        let caps = file.limits;
        let max_dependencies = caps
            .max_dependencies
            .or(base.limits.max_dependencies)
            .unwrap_or(1024);
        if !(1..=MAX_DEPENDENCIES).contains(&max_dependencies) {
            return Err(ConfigError::at(
                "limits.max_dependencies",
                format!("must be between 1 and {MAX_DEPENDENCIES}, got {max_dependencies}"),
            ));
        }
        let max_waiters = caps
            .max_waiters
            .or(base.limits.max_waiters)
            .unwrap_or(100_000);
        if max_waiters > MAX_WAITERS {
            return Err(ConfigError::at(
                "limits.max_waiters",
                format!("must be at most {MAX_WAITERS}, got {max_waiters}"),
            ));
        }
        let max_session_pending = caps
            .max_session_pending
            .or(base.limits.max_session_pending)
            .unwrap_or(1024);
        if !(1..=MAX_SESSION_PENDING).contains(&max_session_pending) {
            return Err(ConfigError::at(
                "limits.max_session_pending",
                format!("must be between 1 and {MAX_SESSION_PENDING}, got {max_session_pending}"),
            ));
        }
        let idle_ttl = caps
            .idle_ttl
            .or(base.limits.idle_ttl)
            .map_or(Duration::from_secs(300), |d| d.0);
        if !(IDLE_TTL_RANGE.0..=IDLE_TTL_RANGE.1).contains(&idle_ttl) {
            return Err(ConfigError::at(
                "limits.idle_ttl",
                format!(
                    "must be between 1s and 24h, got {}",
                    humantime::format_duration(idle_ttl)
                ),
            ));
        }
        let max_dependencies_per_peer = caps
            .max_dependencies_per_peer
            .or(base.limits.max_dependencies_per_peer)
            .expect("the embedded config sets limits.max_dependencies_per_peer");
        if !(1..=MAX_DEPENDENCIES).contains(&max_dependencies_per_peer) {
            return Err(ConfigError::at(
                "limits.max_dependencies_per_peer",
                format!(
                    "must be between 1 and {MAX_DEPENDENCIES}, got {max_dependencies_per_peer}"
                ),
            ));
        }
        if file.dependencies.len() > max_dependencies {
            return Err(ConfigError::at(
                "dependencies",
                format!(
                    "{} dependencies configured, more than limits.max_dependencies = {max_dependencies}",
                    file.dependencies.len()
                ),
            ));
        }

        let mut dependencies = Vec::with_capacity(file.dependencies.len());
        for (name, section) in &file.dependencies {
            ledger::check_dependency_name(name)
                .map_err(|problem| ConfigError::at(format!("dependencies.{name:?}"), problem))?;
            let key = format!("dependencies.{name}");
            if section.fleet.is_some() && fleet.is_none() {
                return Err(ConfigError::at(
                    format!("{key}.fleet"),
                    "needs a [fleet] section with redis or redis_cluster (the store the fleet shares the limit through)",
                ));
            }
            let limits = defaults
                .patched(&patch(section, &defaults.retry_budget(), &key)?)
                .map_err(|e| ConfigError::at(format!("{key}.{}", e.field), e.problem))?;
            dependencies.push((name.clone(), limits));
        }

        Ok(Config {
            telemetry: TelemetryConfig::from_section(file.telemetry)?,
            fleet,
            server,
            ledger: LedgerConfig {
                defaults,
                allow_unknown_dependencies: caps
                    .allow_unknown_dependencies
                    .or(base.limits.allow_unknown_dependencies)
                    .unwrap_or(true),
                max_dependencies,
                max_waiters,
                max_session_pending,
                dependencies,
                idle_ttl,
                max_dependencies_per_peer,
            },
        })
    }
}

/// A section's keys as a patch; a partial `retry_budget` fills its gaps from
/// the budget it inherits, and a partial `adaptive` table from the adaptive
/// settings it inherits. `key` is the section's, for errors.
fn patch(
    section: &LimitsSection,
    inherited: &BudgetConfig,
    key: &str,
) -> Result<LimitsPatch, ConfigError> {
    let adaptive = section
        .adaptive
        .as_ref()
        .map(|adaptive| adaptive_patch(adaptive, key))
        .transpose()?;
    Ok(LimitsPatch {
        adaptive,
        max_concurrency: section.max_concurrency,
        max_queue: section.max_queue,
        max_wait: section.max_wait.map(|d| d.0),
        lease_ttl: section.lease_ttl.map(|d| d.0),
        retry_budget: section.retry_budget.as_ref().map(|budget| BudgetConfig {
            ratio: budget.ratio.unwrap_or(inherited.ratio),
            min_per_second: budget.min_per_second.unwrap_or(inherited.min_per_second),
            ttl: budget.ttl.map_or(inherited.ttl, |d| d.0),
        }),
        elevated_at: section.elevated_at,
        degrade_at: section.degrade_at.map(DegradeAt::from),
        rate: section.rate.map(RateSection::patch),
        tenant_rate: section.tenant_rate.map(RateSection::patch),
        fairness: section.fairness.as_ref().map(FairnessSection::patch),
        fleet: section
            .fleet
            .map(|fleet| fleet.limit(key))
            .transpose()?
            .map(Some),
    })
}

fn adaptive_patch(section: &AdaptiveSection, key: &str) -> Result<AdaptivePatch, ConfigError> {
    let algorithm = section
        .algorithm
        .as_deref()
        .map(str::parse::<AlgorithmChoice>)
        .transpose()
        .map_err(|problem| ConfigError::at(format!("{key}.adaptive.algorithm"), problem))?;
    Ok(AdaptivePatch {
        algorithm,
        min_limit: section.min_limit,
        initial_limit: section.initial_limit,
        shadow: section.shadow,
        window: section.window.map(|d| d.0),
        min_samples: section.min_samples,
        baseline_windows: section.baseline_windows,
        drop_threshold: section.drop_threshold,
        backoff: section.backoff,
        tolerance: section.tolerance,
        alpha: section.alpha,
        beta: section.beta,
    })
}

fn server_config(file: ServerSection, base: ServerSection) -> Result<ServerConfig, ConfigError> {
    let address = |key: &str, value: &str| {
        value.parse::<SocketAddr>().map_err(|_| {
            ConfigError::at(
                format!("server.{key}"),
                format!(
                    "invalid address {value:?}: write an IP and a port, like \"127.0.0.1:50051\""
                ),
            )
        })
    };
    let listen = file
        .listen
        .or(base.listen)
        .unwrap_or_else(|| "127.0.0.1:50051".into());
    let admin_listen = match file.admin_listen.or(base.admin_listen) {
        Some(text) if text != "off" => Some(address("admin_listen", &text)?),
        _ => None,
    };
    let admin_token_file = file.admin_token_file.or(base.admin_token_file);
    if admin_token_file
        .as_ref()
        .is_some_and(|path| path.as_os_str().is_empty())
    {
        return Err(ConfigError::at(
            "server.admin_token_file",
            "must not be empty (leave the key out for no token)",
        ));
    }
    let pick = |value: Option<HumanDuration>, base: Option<HumanDuration>, default: u64| {
        value.or(base).map_or(Duration::from_secs(default), |d| d.0)
    };
    let config = ServerConfig {
        listen: address("listen", &listen)?,
        uds: file.uds.or(base.uds),
        admin_listen,
        shutdown_grace: pick(file.shutdown_grace, base.shutdown_grace, 10),
        max_concurrent_streams: file
            .max_concurrent_streams
            .or(base.max_concurrent_streams)
            .unwrap_or(4096),
        max_message_bytes: file
            .max_message_bytes
            .or(base.max_message_bytes)
            .unwrap_or(16 * 1024),
        keepalive_interval: pick(file.keepalive_interval, base.keepalive_interval, 30),
        keepalive_timeout: pick(file.keepalive_timeout, base.keepalive_timeout, 10),
        control_plane: file
            .control_plane
            .or(base.control_plane)
            .expect("the embedded config sets server.control_plane")
            .parse()
            .map_err(|problem| ConfigError::at("server.control_plane", problem))?,
        health_listen: match file.health_listen.or(base.health_listen).as_deref() {
            None | Some("off") => None,
            Some(text) => Some(address("health_listen", text)?),
        },
        admin_token: match &admin_token_file {
            Some(path) => Some(AdminToken::read(path, "server.admin_token_file")?),
            None => None,
        },
        admin_token_file,
        uds_peers: PeerAllowList {
            uids: file
                .uds_allowed_uids
                .or(base.uds_allowed_uids)
                .unwrap_or_default(),
            gids: file
                .uds_allowed_gids
                .or(base.uds_allowed_gids)
                .unwrap_or_default(),
        },
        max_connections: file.max_connections.or(base.max_connections).unwrap_or(256),
        max_calls: file.max_calls.or(base.max_calls).unwrap_or(8192),
        idle_connection_timeout: pick(
            file.idle_connection_timeout,
            base.idle_connection_timeout,
            300,
        ),
        handshake_timeout: pick(file.handshake_timeout, base.handshake_timeout, 10),
    };
    if let Some(health) = config.health_listen {
        // Port 0 picks a free port for each, so only fixed ports can clash.
        let clash = |other: SocketAddr| other.port() != 0 && other == health;
        if clash(config.listen) || config.admin_listen.is_some_and(clash) {
            return Err(ConfigError::at(
                "server.health_listen",
                format!(
                    "{health} is also server.listen or server.admin_listen; give it a port of its own"
                ),
            ));
        }
    }
    if !(1..=MAX_CONNECTIONS).contains(&config.max_connections) {
        return Err(ConfigError::at(
            "server.max_connections",
            format!(
                "must be between 1 and {MAX_CONNECTIONS}, got {}",
                config.max_connections
            ),
        ));
    }
    if !(1..=MAX_CALLS).contains(&config.max_calls) {
        return Err(ConfigError::at(
            "server.max_calls",
            format!(
                "must be between 1 and {MAX_CALLS}, got {}",
                config.max_calls
            ),
        ));
    }
    let between = |key: &str, value: Duration, (low, high): (Duration, Duration), bounds: &str| {
        if (low..=high).contains(&value) {
            Ok(())
        } else {
            Err(ConfigError::at(
                format!("server.{key}"),
                format!(
                    "must be between {bounds}, got {}",
                    humantime::format_duration(value)
                ),
            ))
        }
    };
    between(
        "idle_connection_timeout",
        config.idle_connection_timeout,
        (Duration::from_millis(100), Duration::from_secs(24 * 3600)),
        "100ms and 24h",
    )?;
    between(
        "handshake_timeout",
        config.handshake_timeout,
        (Duration::from_millis(100), Duration::from_secs(300)),
        "100ms and 5m",
    )?;
    if config.shutdown_grace > Duration::from_secs(3600) {
        return Err(ConfigError::at(
            "server.shutdown_grace",
            "must be at most 1h",
        ));
    }
    if !(1..=1_000_000).contains(&config.max_concurrent_streams) {
        return Err(ConfigError::at(
            "server.max_concurrent_streams",
            "must be between 1 and 1000000",
        ));
    }
    if !(1024..=4 * 1024 * 1024).contains(&config.max_message_bytes) {
        return Err(ConfigError::at(
            "server.max_message_bytes",
            "must be between 1024 and 4194304",
        ));
    }
    if config.keepalive_interval < Duration::from_secs(1) {
        return Err(ConfigError::at(
            "server.keepalive_interval",
            "must be at least 1s",
        ));
    }
    if config.keepalive_timeout < Duration::from_millis(100) {
        return Err(ConfigError::at(
            "server.keepalive_timeout",
            "must be at least 100ms",
        ));
    }
    if let Some(path) = &config.uds {
        if path.as_os_str().is_empty() {
            return Err(ConfigError::at("server.uds", "must not be empty"));
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests;
