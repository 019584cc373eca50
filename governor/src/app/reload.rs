//! Config reloads, on SIGHUP or when the watched file changes. A file that
//! does not validate is refused whole; the running config stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ServerConfig};
use crate::ledger::Ledger;
use crate::server::TokenSlot;
use crate::telemetry::Telemetry;

/// How often the watched config file is read for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Reloader {
    path: Option<PathBuf>,
    ledger: Arc<Ledger>,
    telemetry: Arc<Telemetry>,
    /// The control plane's token, re-read with the file.
    admin_token: Arc<TokenSlot>,
    /// The file's last content, and the config it gave (before any
    /// command-line overrides, which a reload keeps).
    last: Mutex<(Option<Vec<u8>>, Option<Config>)>,
}

impl Reloader {
    /// Remembers the file as it is now; create it before the sidecar reports
    /// ready, so that a change made right after is seen.
    pub fn new(
        path: Option<PathBuf>,
        ledger: Arc<Ledger>,
        telemetry: Arc<Telemetry>,
        admin_token: Arc<TokenSlot>,
    ) -> Self {
        let config = path.as_deref().and_then(|path| Config::load(path).ok());
        let text = path
            .as_deref()
            .and_then(|path| content(path, config.as_ref()));
        Reloader {
            path,
            ledger,
            telemetry,
            admin_token,
            last: Mutex::new((text, config)),
        }
    }

    /// Re-reads the config file and applies its limits.
    pub fn reload(&self, trigger: &str) {
        let Some(path) = &self.path else {
            tracing::info!(
                trigger,
                "no config file to reload: running on the embedded defaults"
            );
            return;
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.0 = content(path, last.1.as_ref());
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(error) => {
                self.telemetry.metrics.config_reloaded(false);
                tracing::error!(trigger, %error, "config reload refused; keeping the running config");
                return;
            }
        };
        if let Some(previous) = &last.1 {
            // The store and this sidecar's name in it are the fleet task's
            // from the start; a fleet-wide limit without it would grant
            // nothing, so such a file is refused whole.
            let store = |config: &Config| config.fleet.as_ref().map(|f| f.without_password());
            if store(&config) == store(previous) && config.fleet != previous.fleet {
                tracing::warn!(
                    trigger,
                    "fleet.password_file: a new password takes effect only after a restart"
                );
            }
            if store(&config) != store(previous) {
                self.telemetry.metrics.config_reloaded(false);
                tracing::error!(
                    trigger,
                    "config reload refused: [fleet] changes take effect only after a restart; keeping the running config"
                );
                return;
            }
            // The token is the one [server] key a reload applies.
            let restart_only = |server: &ServerConfig| ServerConfig {
                admin_token: None,
                admin_token_file: None,
                ..server.clone()
            };
            if restart_only(&config.server) != restart_only(&previous.server)
                || config.telemetry != previous.telemetry
            {
                tracing::warn!(
                    trigger,
                    "[server] and [telemetry] changes take effect only after a restart"
                );
            }
        }
        self.ledger.reconfigure(config.ledger.clone());
        self.admin_token.set(config.server.admin_token.clone());
        tracing::info!(
            trigger,
            path = %path.display(),
            dependencies = config.ledger.dependencies.len(),
            "config reloaded"
        );
        self.telemetry.metrics.config_reloaded(true);
        last.0 = content(path, Some(&config));
        last.1 = Some(config);
    }

    /// Reloads whenever the file's content changes, or that of the token
    /// file it names (a rotated Secret). Reading the content (not
    /// the mtime) follows a Kubernetes ConfigMap's symlink swap.
    pub fn spawn_watch(self: Arc<Self>, stop: CancellationToken) {
        let Some(path) = self.path.clone() else {
            return;
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let changed = {
                    let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
                    let current = content(&path, last.1.as_ref());
                    current.is_some() && current != last.0
                };
                if changed {
                    self.reload("file change");
                }
            }
        });
    }
}

/// What the watch compares: the config file's bytes, then those of the token
/// file `config` names (empty when unreadable; the reload says why).
fn content(path: &Path, config: Option<&Config>) -> Option<Vec<u8>> {
    let mut bytes = std::fs::read(path).ok()?;
    if let Some(token) = config.and_then(|c| c.server.admin_token_file.as_deref()) {
        bytes.push(0);
        bytes.extend(std::fs::read(token).unwrap_or_default());
    }
    Some(bytes)
}
