//! Config reloads, on SIGHUP or when the watched file changes. A file that
//! does not validate is refused whole; the running config stays.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ledger::Ledger;
use crate::telemetry::Telemetry;

/// How often the watched config file is read for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Reloader {
    path: Option<PathBuf>,
    ledger: Arc<Ledger>,
    telemetry: Arc<Telemetry>,
    /// The file's last content, and the config it gave (before any
    /// command-line overrides, which a reload keeps).
    last: Mutex<(Option<Vec<u8>>, Option<Config>)>,
}

impl Reloader {
    /// Remembers the file as it is now; create it before the sidecar reports
    /// ready, so that a change made right after is seen.
    pub fn new(path: Option<PathBuf>, ledger: Arc<Ledger>, telemetry: Arc<Telemetry>) -> Self {
        let text = path.as_deref().and_then(|path| std::fs::read(path).ok());
        let config = path.as_deref().and_then(|path| Config::load(path).ok());
        Reloader {
            path,
            ledger,
            telemetry,
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
        last.0 = std::fs::read(path).ok();
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(error) => {
                self.telemetry.metrics.config_reloaded(false);
                tracing::error!(trigger, %error, "config reload refused; keeping the running config");
                return;
            }
        };
        if let Some(previous) = &last.1 {
            if config.server != previous.server || config.telemetry != previous.telemetry {
                tracing::warn!(
                    trigger,
                    "[server] and [telemetry] changes take effect only after a restart"
                );
            }
        }
        self.ledger.reconfigure(config.ledger.clone());
        tracing::info!(
            trigger,
            path = %path.display(),
            dependencies = config.ledger.dependencies.len(),
            "config reloaded"
        );
        self.telemetry.metrics.config_reloaded(true);
        last.1 = Some(config);
    }

    /// Reloads whenever the file's content changes. Reading the content (not
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
                let current = std::fs::read(&path).ok();
                let changed = {
                    let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
                    current.is_some() && current != last.0
                };
                if changed {
                    self.reload("file change");
                }
            }
        });
    }
}
