//! The task that expires a dependency's leases: it sleeps until the earliest
//! deadline (with none, for one lease TTL: no lease granted meanwhile can
//! expire sooner), and is woken early when a lease with an earlier one is
//! granted.

use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::dependency::Dependency;

/// One task per dependency; it holds only a weak reference, so it ends with
/// the dependency.
pub(crate) fn spawn(dependency: Weak<Dependency>, wake: Arc<Notify>) {
    tokio::spawn(async move {
        loop {
            let next = {
                let Some(dependency) = dependency.upgrade() else {
                    return;
                };
                dependency.reap(Instant::now())
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = wake.notified() => {}
                    }
                }
                None => wake.notified().await,
            }
        }
    });
}
