//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// A sidecar that governs concurrency, queueing and retries towards
/// downstream dependencies.
#[derive(Debug, Parser)]
#[command(name = "governor", version, about)]
pub struct Cli {
    /// Config file (TOML). Without one, the embedded defaults apply.
    #[arg(long, env = "GOVERNOR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// gRPC address to listen on, overriding `server.listen` (port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Also serve gRPC on this Unix socket, overriding `server.uds`.
    #[arg(long, value_name = "PATH")]
    pub uds: Option<PathBuf>,

    /// HTTP address for /metrics, /healthz and /readyz, overriding
    /// `server.admin_listen`; "off" turns it off.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,

    /// gRPC health-only address (for probes), overriding
    /// `server.health_listen`; "off" turns it off.
    #[arg(long, value_name = "ADDR")]
    pub health_listen: Option<String>,

    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, env = "GOVERNOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Re-read the config file whenever its content changes (for mounted
    /// ConfigMaps, which change without a signal). SIGHUP always re-reads it.
    #[arg(long)]
    pub watch_config: bool,

    /// Only validate this config file, then exit 0 (valid) or 64 (invalid).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,

    /// Print the embedded default config and exit.
    #[arg(long)]
    pub print_default_config: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask a running governor's gRPC health service; exit 0 if SERVING, 1 if
    /// not. For container health checks.
    Probe {
        /// The governor's gRPC address.
        #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
        addr: SocketAddr,
        /// The service to ask about ("" for the whole server).
        #[arg(long, default_value = crate::server::GOVERNOR_SERVICE_NAME)]
        service: String,
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print the dependencies of a running governor (limit, load, counters)
    /// from its control plane, like `kubectl top`.
    Status {
        /// The governor's gRPC address.
        #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
        addr: SocketAddr,
        /// Ask over this Unix socket instead of TCP (needed when
        /// `server.control_plane = "uds"`).
        #[arg(long, value_name = "PATH", conflicts_with = "addr")]
        uds: Option<PathBuf>,
        /// Send the bearer token in this file (trailing newline trimmed):
        /// needed on a non-loopback listener (`server.admin_token_file`).
        #[arg(long, value_name = "FILE")]
        admin_token_file: Option<PathBuf>,
        /// Refresh every second until interrupted, adding rejections per
        /// second and pressure.
        #[arg(long, short)]
        watch: bool,
        /// Give up on one request after this long.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text)
}
