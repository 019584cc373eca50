//! A downstream whose capacity changes while it runs: `workers` calls in
//! service at once (the count can change at any time, as when a database loses
//! half its replicas), a service time per call, and a bounded backlog in front.
//! A call that finds the backlog full is refused at once, like a server that
//! answers 503 when its accept queue is full. Calls whose caller gave up are
//! still served: the server cannot know.
//!
//! Lowering the worker count never interrupts a call in service; the extra
//! workers stop as their calls finish.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long one call takes in service.
#[derive(Clone, Copy, Debug)]
pub enum ServiceTime {
    /// Exponentially distributed with this mean.
    Exponential(Duration),
    /// Always this long (for deterministic tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Fixed(Duration),
}

impl ServiceTime {
    fn sample(self) -> Duration {
        match self {
            ServiceTime::Exponential(mean) => mean.mul_f64(-(1.0 - rand::random::<f64>()).ln()),
            ServiceTime::Fixed(d) => d,
        }
    }
}

/// What the downstream answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Served,
    /// The backlog was full (or the downstream stopped): a fast failure.
    Refused,
}

#[derive(Debug)]
struct Job {
    service: Duration,
    reply: oneshot::Sender<Answer>,
}

#[derive(Debug)]
struct State {
    workers: usize,
    /// Calls in service; above `workers` for a while after a reduction.
    busy: usize,
    backlog: VecDeque<Job>,
}

#[derive(Debug)]
pub struct Backend {
    service: ServiceTime,
    backlog_capacity: usize,
    state: Mutex<State>,
    served: AtomicU64,
    busy_nanos: AtomicU64,
    tasks: Mutex<JoinSet<()>>,
}

/// Calls in service and waiting in the backlog, and the worker count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub workers: usize,
    pub busy: usize,
    pub backlog: usize,
}

impl Backend {
    pub fn new(workers: usize, service: ServiceTime, backlog_capacity: usize) -> Arc<Backend> {
        Arc::new(Backend {
            service,
            backlog_capacity,
            state: Mutex::new(State {
                workers,
                busy: 0,
                backlog: VecDeque::new(),
            }),
            served: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            tasks: Mutex::new(JoinSet::new()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a call; the receiver yields the answer once it is served or
    /// refused. Dropping the receiver does not withdraw the call.
    pub fn call(self: &Arc<Self>) -> oneshot::Receiver<Answer> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            service: self.service.sample(),
            reply,
        };
        let mut state = self.state();
        if state.busy < state.workers {
            state.busy += 1;
            drop(state);
            self.spawn_worker(job);
        } else if state.backlog.len() < self.backlog_capacity {
            state.backlog.push_back(job);
        } else {
            drop(state);
            let _ = job.reply.send(Answer::Refused);
        }
        rx
    }

    /// Changes the number of workers: more start on the backlog at once,
    /// fewer take effect as calls in service finish.
    pub fn set_workers(self: &Arc<Self>, workers: usize) {
        let mut state = self.state();
        state.workers = workers;
        let mut start = Vec::new();
        while state.busy < state.workers {
            let Some(job) = state.backlog.pop_front() else {
                break;
            };
            state.busy += 1;
            start.push(job);
        }
        drop(state);
        for job in start {
            self.spawn_worker(job);
        }
    }

    pub fn occupancy(&self) -> Occupancy {
        let state = self.state();
        Occupancy {
            workers: state.workers,
            busy: state.busy,
            backlog: state.backlog.len(),
        }
    }

    /// The mean service time actually observed (timer granularity makes it a
    /// little longer than nominal), or None before the first call finished.
    pub fn mean_service(&self) -> Option<Duration> {
        let served = self.served.load(Ordering::Relaxed);
        (served > 0).then(|| Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed) / served))
    }

    /// A worker serves `job`, then the backlog, until the backlog is empty or
    /// the worker count has dropped below the calls in service.
    fn spawn_worker(self: &Arc<Self>, job: Job) {
        let this = self.clone();
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let mut job = job;
            loop {
                let started = Instant::now();
                tokio::time::sleep_until(started + job.service).await;
                this.busy_nanos
                    .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                this.served.fetch_add(1, Ordering::Relaxed);
                let _ = job.reply.send(Answer::Served);
                let mut state = this.state();
                let next = if state.busy <= state.workers {
                    state.backlog.pop_front()
                } else {
                    None
                };
                match next {
                    Some(next) => job = next,
                    None => {
                        state.busy -= 1;
                        return;
                    }
                }
            }
        });
    }

    /// Stops every call in service; calls in the backlog are answered
    /// `Refused` (their senders are dropped).
    pub async fn shutdown(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        tasks.shutdown().await;
        self.state().backlog.clear();
    }
}

/// What a caller sees: the answer, or `Refused` if the downstream went away.
pub async fn answer(rx: oneshot::Receiver<Answer>) -> Answer {
    rx.await.unwrap_or(Answer::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Completion times (since `t0`) of every call, in call order.
    async fn completions(rxs: Vec<oneshot::Receiver<Answer>>, t0: Instant) -> Vec<(u128, Answer)> {
        let mut tasks = JoinSet::new();
        for (i, rx) in rxs.into_iter().enumerate() {
            tasks.spawn(async move { (i, answer(rx).await, t0.elapsed().as_millis()) });
        }
        let mut out = vec![(0, Answer::Refused); tasks.len()];
        while let Some(Ok((i, a, at))) = tasks.join_next().await {
            out[i] = (at, a);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn serves_workers_at_a_time_and_queues_the_rest() {
        let b = Backend::new(2, ServiceTime::Fixed(10 * MS), 10);
        let t0 = Instant::now();
        let rxs: Vec<_> = (0..5).map(|_| b.call()).collect();
        assert_eq!(
            b.occupancy(),
            Occupancy {
                workers: 2,
                busy: 2,
                backlog: 3
            }
        );
        let done = completions(rxs, t0).await;
        let times: Vec<u128> = done.iter().map(|d| d.0).collect();
        assert_eq!(times, vec![10, 10, 20, 20, 30]);
        assert!(done.iter().all(|d| d.1 == Answer::Served));
        assert_eq!(b.occupancy().busy, 0);
        assert_eq!(b.mean_service(), Some(10 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_backlog_refuses_at_once() {
        let b = Backend::new(1, ServiceTime::Fixed(10 * MS), 2);
        let t0 = Instant::now();
        let rxs: Vec<_> = (0..5).map(|_| b.call()).collect();
        let done = completions(rxs, t0).await;
        assert_eq!(
            done,
            vec![
                (10, Answer::Served),
                (20, Answer::Served),
                (30, Answer::Served),
                (0, Answer::Refused),
                (0, Answer::Refused)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fewer_workers_take_effect_as_calls_finish_and_more_start_at_once() {
        let b = Backend::new(4, ServiceTime::Fixed(10 * MS), 100);
        let t0 = Instant::now();
        let rxs: Vec<_> = (0..12).map(|_| b.call()).collect();
        // Halve: the four calls in service finish, then two at a time.
        b.set_workers(2);
        assert_eq!(b.occupancy().busy, 4);
        let waiter = tokio::spawn(completions(rxs, t0));
        tokio::time::sleep(15 * MS).await;
        assert_eq!(
            b.occupancy(),
            Occupancy {
                workers: 2,
                busy: 2,
                backlog: 6
            }
        );
        // Back to four at 25 ms: two more start at once.
        tokio::time::sleep(10 * MS).await;
        b.set_workers(4);
        assert_eq!(b.occupancy().busy, 4);
        let times: Vec<u128> = waiter.await.unwrap().iter().map(|d| d.0).collect();
        // 0-10: four; 10-20 and 20-30: two (from 25, two more, done at 35);
        // 30: the two workers of the 20 ms round take the last two, done at 40.
        assert_eq!(times, vec![10, 10, 10, 10, 20, 20, 30, 30, 35, 35, 40, 40]);
    }

    #[tokio::test(start_paused = true)]
    async fn exponential_service_has_the_mean() {
        let b = Backend::new(64, ServiceTime::Exponential(10 * MS), 10_000);
        let t0 = Instant::now();
        let rxs: Vec<_> = (0..4000).map(|_| b.call()).collect();
        let done = completions(rxs, t0).await;
        assert!(done.iter().all(|d| d.1 == Answer::Served));
        let mean = b.mean_service().unwrap().as_secs_f64() * 1000.0;
        assert!((9.5..11.5).contains(&mean), "{mean} ms");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_answers_the_backlog_refused() {
        let b = Backend::new(1, ServiceTime::Fixed(10 * MS), 5);
        let first = b.call();
        let queued = b.call();
        b.shutdown().await;
        assert_eq!(answer(first).await, Answer::Refused);
        assert_eq!(answer(queued).await, Answer::Refused);
    }
}
