//! A simulated downstream of known capacity: `concurrency` calls in service at
//! once, exponential service times, and an unbounded FIFO queue in front, like
//! a real server that accepts every connection and falls behind.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Downstream {
    slots: std::sync::Arc<Semaphore>,
    pub concurrency: usize,
    mean: Duration,
    fail_probability: f64,
    /// Calls that reached the downstream (queued or served).
    pub calls: AtomicU64,
    served: AtomicU64,
    busy_nanos: AtomicU64,
    /// Calls keep running when their caller gives up; all stop with `shutdown`.
    work: Mutex<JoinSet<()>>,
}

impl Downstream {
    pub fn new(concurrency: usize, mean: Duration, fail_probability: f64) -> Downstream {
        Downstream {
            slots: std::sync::Arc::new(Semaphore::new(concurrency)),
            concurrency,
            mean,
            fail_probability,
            calls: AtomicU64::new(0),
            served: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            work: Mutex::new(JoinSet::new()),
        }
    }

    /// Nominal capacity in calls per second.
    pub fn capacity(&self) -> f64 {
        self.concurrency as f64 / self.mean.as_secs_f64()
    }

    /// Capacity from the service times actually observed (timer granularity
    /// makes them a little longer than the nominal mean).
    pub fn effective_capacity(&self) -> f64 {
        let served = self.served.load(Ordering::Relaxed);
        if served == 0 {
            return self.capacity();
        }
        let mean = self.busy_nanos.load(Ordering::Relaxed) as f64 / served as f64 / 1e9;
        self.concurrency as f64 / mean
    }

    /// Starts a call; the receiver yields `true` on success. The call is served
    /// even if the receiver is dropped (the caller gave up).
    pub fn call(self: &std::sync::Arc<Self>) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        self.calls.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        let service = self.mean.mul_f64(-(1.0 - rand::random::<f64>()).ln());
        let fails = rand::random::<f64>() < self.fail_probability;
        let mut work = self.work.lock().unwrap_or_else(|e| e.into_inner());
        while work.try_join_next().is_some() {}
        work.spawn(async move {
            let Ok(_slot) = this.slots.acquire().await else {
                return;
            };
            let started = Instant::now();
            tokio::time::sleep_until(started + service).await;
            this.busy_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            this.served.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(!fails);
        });
        rx
    }

    /// Stops all calls still queued or in service.
    pub async fn shutdown(&self) {
        let mut work = std::mem::take(&mut *self.work.lock().unwrap_or_else(|e| e.into_inner()));
        work.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "current_thread")]
    async fn serves_at_its_capacity_and_queues_the_rest() {
        let d = Arc::new(Downstream::new(2, Duration::from_millis(2), 0.0));
        let started = Instant::now();
        let calls: Vec<_> = (0..100).map(|_| d.call()).collect();
        for c in calls {
            assert!(c.await.unwrap());
        }
        // 100 calls, 2 at a time, ~2-3 ms each: at least ~100 ms in all.
        assert!(
            started.elapsed() >= Duration::from_millis(80),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(d.calls.load(Ordering::Relaxed), 100);
        let effective = d.effective_capacity();
        assert!(effective > 300.0 && effective <= 1000.0, "{effective}");
        d.shutdown().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failing_downstream_fails() {
        let d = Arc::new(Downstream::new(1, Duration::from_micros(100), 1.0));
        assert!(!d.call().await.unwrap());
    }
}
