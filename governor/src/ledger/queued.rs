//! A request waiting in a dependency's queue, and the guard that takes it out
//! again whatever happens to the caller.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::dependency::{Dependency, Wake};
use super::waiters::WaiterKey;

#[derive(Debug)]
pub(crate) struct Queued {
    dependency: Arc<Dependency>,
    key: WaiterKey,
    /// `None` once answered; while `Some`, dropping the guard abandons the wait.
    wake: Option<oneshot::Receiver<Wake>>,
}

impl Queued {
    pub(crate) fn new(
        dependency: Arc<Dependency>,
        key: WaiterKey,
        wake: oneshot::Receiver<Wake>,
    ) -> Self {
        Queued {
            dependency,
            key,
            wake: Some(wake),
        }
    }

    /// Waits for a grant, a displacement or the deadline, whichever is first.
    ///
    /// # Cancel safety
    /// Dropping the future drops the guard, which leaves the queue and returns
    /// a grant that arrived in the meantime.
    pub(crate) async fn wait(mut self, deadline: Instant) -> Wake {
        let receiver = self.wake.as_mut().expect("a queued request has a receiver");
        let wake = match tokio::time::timeout_at(deadline, &mut *receiver).await {
            Ok(Ok(wake)) => wake,
            // Timed out, or (never, see `Dependency::abandon`) the sender went
            // away: leave the queue under the lock, where a racing answer shows.
            Ok(Err(_)) | Err(_) => self.dependency.time_out(self.key, receiver),
        };
        self.wake = None;
        wake
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(wake) = self.wake.take() {
            self.dependency.abandon(self.key, wake);
        }
    }
}
