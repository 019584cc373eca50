//! Config reloads, on SIGHUP or when the watched file changes. A file that
//! does not validate is refused whole; the running config stays.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ledger::Ledger;

/// How often the watched config file is read for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Reloader {
    path: Option<PathBuf>,
    ledger: Arc<Ledger>,
    running: Mutex<Config>,
}

impl Reloader {
    pub fn new(path: Option<PathBuf>, running: Config, ledger: Arc<Ledger>) -> Self {
        Reloader { path, ledger, running: Mutex::new(running) }
    }

    /// Re-reads the config file and applies its limits.
    pub fn reload(&self, trigger: &str) {
        let Some(path) = &self.path else {
            tracing::info!(trigger, "no config file to reload: running on the embedded defaults");
            return;
        };
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(trigger, %error, "config reload refused; keeping the running config");
                return;
            }
        };
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if config.server != running.server {
            tracing::warn!(trigger, "[server] changes take effect only after a restart");
        }
        self.ledger.reconfigure(config.ledger.clone());
        tracing::info!(
            trigger,
            path = %path.display(),
            dependencies = config.ledger.dependencies.len(),
            "config reloaded"
        );
        running.ledger = config.ledger;
    }

    /// Reloads whenever the file's content changes. Reading the content (not
    /// the mtime) follows a Kubernetes ConfigMap's symlink swap.
    pub fn spawn_watch(self: Arc<Self>, stop: CancellationToken) {
        let Some(path) = self.path.clone() else { return };
        tokio::spawn(async move {
            let mut last = std::fs::read(&path).ok();
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let current = std::fs::read(&path).ok();
                if current.is_some() && current != last {
                    last = current;
                    self.reload("file change");
                }
            }
        });
    }
}
