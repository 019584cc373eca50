//! The process around the ledger: listeners, signals, config reloads and a
//! graceful drain.
//!
//! Shutdown order on SIGTERM or SIGINT: health goes NOT_SERVING (so probes
//! and load balancers stop sending), the ledger starts draining (new Acquires
//! are answered SHUTTING_DOWN, waiters at once), held permits get until the
//! grace period to come back (Release and Renew keep working), then the
//! listeners close, letting calls under way finish within what is left of
//! the grace period.

mod admin;
mod calls;
pub mod cli;
mod connections;
mod listeners;
mod probe;
mod reload;
mod roles;
mod status_command;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use cli::{Cli, Command, LogFormat};
pub use probe::probe;
pub use status_command::{Target, status};

use crate::config::{Config, ConfigError, ControlPlane, TracingConfig};
use crate::ledger::Ledger;
use crate::server;
use crate::telemetry::Telemetry;

/// Exit status for a bad command line or config (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit status when a listener cannot be opened (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// The config this invocation runs on, with command-line overrides applied.
pub fn resolve_config(cli: &Cli) -> Result<Config, ConfigError> {
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::embedded(),
    };
    apply_overrides(config, cli)
}

/// `config` with the command line's overrides (`--listen`, `--uds`,
/// `--admin-listen`) applied and checked against it.
pub fn apply_overrides(mut config: Config, cli: &Cli) -> Result<Config, ConfigError> {
    if let Some(listen) = cli.listen {
        config.server.listen = listen;
    }
    if let Some(uds) = &cli.uds {
        config.server.uds = Some(uds.clone());
    }
    if let Some(admin) = &cli.admin_listen {
        config.server.admin_listen = match admin.as_str() {
            "off" => None,
            text => Some(text.parse().map_err(|_| {
                ConfigError(format!(
                    "--admin-listen: invalid address {text:?}: write an IP and a port, or \"off\""
                ))
            })?),
        };
    }
    if let Some(health) = &cli.health_listen {
        config.server.health_listen = match health.as_str() {
            "off" => None,
            text => Some(text.parse().map_err(|_| {
                ConfigError(format!(
                    "--health-listen: invalid address {text:?}: write an IP and a port, or \"off\""
                ))
            })?),
        };
    }
    if config.server.control_plane == ControlPlane::UnixSocket && config.server.uds.is_none() {
        return Err(ConfigError(
            "server.control_plane: \"uds\" needs a Unix socket (server.uds or --uds)".into(),
        ));
    }
    for (key, ids) in [
        ("server.uds_allowed_uids", &config.server.uds_peers.uids),
        ("server.uds_allowed_gids", &config.server.uds_peers.gids),
    ] {
        if !ids.is_empty() && config.server.uds.is_none() {
            return Err(ConfigError(format!(
                "{key}: restricts the Unix socket, but there is none (server.uds or --uds)"
            )));
        }
    }
    Ok(config)
}

/// Runs the sidecar until it is told to stop.
pub async fn run(cli: Cli, config: Config, tracing: Option<TracingConfig>) -> ExitCode {
    let telemetry = match Telemetry::start(tracing.as_ref()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("governor: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let ledger = Arc::new(Ledger::with_observer(
        config.ledger.clone(),
        telemetry.clone(),
    ));
    telemetry.attach(&ledger);
    ledger.spawn_idle_sweeper();
    let fleet = match config
        .fleet
        .as_ref()
        .map(|fleet| crate::fleet::Fleet::start(fleet, ledger.clone(), telemetry.clone()))
    {
        Some(Err(error)) => {
            eprintln!("governor: fleet: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
        fleet => fleet.and_then(Result::ok),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    let routes = |control_plane| {
        server::routes(
            ledger.clone(),
            telemetry.clone(),
            health_service.clone(),
            &config.server,
            control_plane,
        )
    };
    let admin_token = server::TokenSlot::new(config.server.admin_token.clone());

    let stop_serving = CancellationToken::new();
    let unavailable = |error: String| {
        tracing::error!(%error, "cannot listen");
        eprintln!("governor: {error}");
        ExitCode::from(EXIT_UNAVAILABLE)
    };
    let bound = match listeners::bind(&config.server).await {
        Ok(bound) => bound,
        Err(error) => return unavailable(error),
    };
    let role_routes = listeners::RoleRoutes {
        tcp: routes(roles::tcp_admin(
            &config.server,
            bound.tcp_addr(),
            &admin_token,
            &telemetry,
        )),
        uds: routes(roles::uds_admin(&config.server)),
        health: server::health_routes(health_service.clone()),
    };
    if !roles::is_loopback(bound.tcp_addr()) && config.server.control_plane == ControlPlane::All {
        tracing::info!(
            listen = %bound.tcp_addr(),
            token = config.server.admin_token.is_some(),
            "gRPC listener is not on loopback: the control plane there needs the bearer token of server.admin_token_file"
        );
    }
    let admin = match config.server.admin_listen {
        Some(addr) => match admin::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(error) => return unavailable(error),
        },
        None => None,
    };
    // Handlers go in before the ready line: a SIGTERM right after it must
    // drain, not kill.
    let signals = Signals::install();
    let reloader = Arc::new(reload::Reloader::new(
        cli.config.clone(),
        ledger.clone(),
        telemetry.clone(),
        admin_token.clone(),
    ));
    let mut ready_line = bound.ready_line();
    if let Some(listener) = admin {
        if let Ok(addr) = listener.local_addr() {
            ready_line.push_str(&format!(" admin={addr}"));
        }
        admin::spawn(
            listener,
            ledger.clone(),
            telemetry.clone(),
            stop_serving.clone(),
        );
    }
    telemetry.spawn_log_flusher(stop_serving.clone());
    let gates = connections::Gates::new(
        connections::ConnectionLimits {
            max_connections: config.server.max_connections,
            handshake_timeout: config.server.handshake_timeout,
            idle_timeout: config.server.idle_connection_timeout,
        },
        telemetry.metrics.connections.clone(),
    );
    let servers = bound.serve(
        role_routes,
        &config.server,
        telemetry.clone(),
        &gates,
        &calls::CallsLayer::new(
            config.server.max_calls,
            telemetry.metrics.connections.calls_refused.clone(),
        ),
        stop_serving.clone(),
    );
    server::set_serving(&health, true).await;

    tracing::info!(
        ready = %ready_line,
        dependencies = config.ledger.dependencies.len(),
        tracing = telemetry.tracing_enabled(),
        "governor serving"
    );
    // The one line on stdout: harnesses and humans wait for it.
    println!("{ready_line}");

    if cli.watch_config {
        reloader.clone().spawn_watch(stop_serving.clone());
    }
    let mut signals = signals.wait_for_stop(&reloader).await;

    let deadline = Instant::now() + config.server.shutdown_grace;
    tracing::info!(grace = ?config.server.shutdown_grace, leases = ledger.leases(), "draining");
    let drain = async {
        server::set_serving(&health, false).await;
        ledger.drain();
        wait_for_leases(&ledger, deadline).await;
        stop_serving.cancel();
        if tokio::time::timeout_at(deadline, servers).await.is_err() {
            tracing::warn!("grace period over with calls still open; exiting anyway");
        }
    };
    // A second SIGTERM or SIGINT cuts the grace period short.
    let cut_short = tokio::select! {
        () = drain => false,
        () = signals.next_stop() => true,
    };
    if cut_short {
        tracing::warn!(
            leases_left = ledger.leases(),
            "second stop signal: exiting without waiting"
        );
    }
    // The permits are back (or the grace is over): the fleet gets this
    // sidecar's shares back now rather than when they lapse.
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    if let Some(fleet) = fleet {
        fleet.stop(left, ledger.leases() == 0).await;
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    // Telemetry last, so that the drain itself is traced.
    telemetry.shutdown(left).await;
    tracing::info!(leases_left = ledger.leases(), "stopped");
    if cut_short {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Signals {
        let install = |kind| signal(kind).expect("installing a signal handler");
        Signals {
            term: install(SignalKind::terminate()),
            int: install(SignalKind::interrupt()),
            hup: install(SignalKind::hangup()),
        }
    }

    /// Returns on SIGTERM or SIGINT; reloads the config on SIGHUP meanwhile.
    async fn wait_for_stop(mut self, reloader: &reload::Reloader) -> Self {
        loop {
            tokio::select! {
                _ = self.term.recv() => return self,
                _ = self.int.recv() => return self,
                _ = self.hup.recv() => reloader.reload("SIGHUP"),
            }
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn next_stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Gives held permits until `deadline` to be released (or to expire).
async fn wait_for_leases(ledger: &Ledger, deadline: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while ledger.leases() > 0 && Instant::now() < deadline {
        tick.tick().await;
    }
}
