//! Scale: acquire + release with many dependencies, and wake-ups with many
//! waiters queued on one dependency; on the ledger in-process.

use std::sync::Arc;
use std::time::Duration;

use rate_governor::ledger::{
    AcquireRequest, Ledger, LedgerConfig, Limits, LimitsPatch, Priority, Report,
};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::load::Spread;

#[derive(Clone, Debug, Serialize)]
pub struct ScalePlan {
    pub dependency_counts: Vec<usize>,
    pub pairs: usize,
    pub waiter_counts: Vec<usize>,
    pub repeats: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct DependencyScale {
    pub dependencies: usize,
    /// Creating one dependency (its first acquire + release), ns.
    pub create_ns: f64,
    /// One acquire + release on a dependency picked at random-ish, ns, per repeat.
    pub pair_ns: Vec<f64>,
}

impl DependencyScale {
    pub fn pair(&self) -> Spread {
        Spread::of(&self.pair_ns)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct WaiterScale {
    pub waiters: usize,
    /// Queueing one waiter (spawn + acquire until queued), ns, per repeat.
    pub enqueue_ns: Vec<f64>,
    /// One hand-over: a release that grants the next waiter, which wakes and
    /// releases in turn, ns, per repeat.
    pub wake_ns: Vec<f64>,
}

impl WaiterScale {
    pub fn enqueue(&self) -> Spread {
        Spread::of(&self.enqueue_ns)
    }
    pub fn wake(&self) -> Spread {
        Spread::of(&self.wake_ns)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ScaleResults {
    pub plan: ScalePlan,
    pub dependencies: Vec<DependencyScale>,
    pub waiters: Vec<WaiterScale>,
}

fn request(name: &str) -> AcquireRequest<'_> {
    AcquireRequest {
        dependency: name,
        tenant: None,
        route: None,
        attempt: 0,
        priority: Priority::Normal,
        max_wait: None,
        degradable: false,
    }
}

async fn pair(ledger: &Ledger, name: &str) -> Result<(), String> {
    let decision = ledger
        .acquire(&request(name))
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let grant = decision
        .granted()
        .ok_or_else(|| format!("{name}: not granted"))?;
    ledger
        .release(&grant.lease, Report::default())
        .ok_or_else(|| format!("{name}: lease lost"))?;
    Ok(())
}

async fn dependencies(count: usize, plan: &ScalePlan) -> Result<DependencyScale, String> {
    let ledger = Ledger::new(LedgerConfig {
        max_dependencies: count.max(1024),
        ..LedgerConfig::default()
    });
    let names: Vec<String> = (0..count).map(|i| format!("dep-{i:06}")).collect();
    let started = Instant::now();
    for name in &names {
        pair(&ledger, name).await?;
    }
    let create_ns = started.elapsed().as_nanos() as f64 / count as f64;
    if ledger.dependency_count() != count {
        return Err(format!(
            "{} dependencies, expected {count}",
            ledger.dependency_count()
        ));
    }
    let mut pair_ns = Vec::new();
    for _ in 0..plan.repeats {
        // A multiplicative step visits the names in a scattered order, so a
        // large map does not stay in cache by accident.
        let mut at = 0usize;
        let started = Instant::now();
        for _ in 0..plan.pairs {
            at = (at + 2_654_435_761) % count;
            pair(&ledger, &names[at]).await?;
        }
        pair_ns.push(started.elapsed().as_nanos() as f64 / plan.pairs as f64);
    }
    Ok(DependencyScale {
        dependencies: count,
        create_ns,
        pair_ns,
    })
}

const HOT: &str = "bench-hot";

async fn waiters(count: usize, repeats: usize) -> Result<WaiterScale, String> {
    let limits = Limits::default()
        .patched(&LimitsPatch {
            max_concurrency: Some(1),
            max_queue: Some(count as u32 + 16),
            max_wait: Some(Duration::from_secs(600)),
            ..LimitsPatch::default()
        })
        .map_err(|e| e.to_string())?;
    let ledger = Arc::new(Ledger::new(LedgerConfig {
        max_waiters: count + 16,
        dependencies: vec![(HOT.to_owned(), limits)],
        ..LedgerConfig::default()
    }));
    let mut result = WaiterScale {
        waiters: count,
        enqueue_ns: Vec::new(),
        wake_ns: Vec::new(),
    };
    for _ in 0..repeats {
        let holder = ledger
            .acquire(&request(HOT))
            .await
            .map_err(|e| e.to_string())?
            .granted()
            .map(|g| g.lease)
            .ok_or("the idle hot dependency did not grant")?;
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for _ in 0..count {
            let ledger = ledger.clone();
            tasks.spawn(async move { pair(&ledger, HOT).await });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while ledger.waiters() < count {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {count} waiters queued",
                    ledger.waiters()
                ));
            }
            tokio::task::yield_now().await;
        }
        result
            .enqueue_ns
            .push(started.elapsed().as_nanos() as f64 / count as f64);
        let started = Instant::now();
        ledger
            .release(&holder, Report::default())
            .ok_or("holder lease lost")?;
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| e.to_string())??;
        }
        result
            .wake_ns
            .push(started.elapsed().as_nanos() as f64 / count as f64);
        if ledger.waiters() != 0 || ledger.leases() != 0 {
            return Err(format!(
                "after the hand-overs: {} waiters, {} leases left",
                ledger.waiters(),
                ledger.leases()
            ));
        }
    }
    Ok(result)
}

pub async fn run(plan: &ScalePlan, log: &(dyn Fn(&str) + Sync)) -> Result<ScaleResults, String> {
    let mut deps = Vec::new();
    for &count in &plan.dependency_counts {
        log(&format!("  scale: {count} dependencies"));
        deps.push(dependencies(count, plan).await?);
    }
    let mut waits = Vec::new();
    for &count in &plan.waiter_counts {
        log(&format!("  scale: {count} waiters on one dependency"));
        waits.push(waiters(count, plan.repeats).await?);
    }
    Ok(ScaleResults {
        plan: plan.clone(),
        dependencies: deps,
        waiters: waits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn hands_over_to_every_waiter() {
        let w = waiters(50, 2).await.unwrap();
        assert_eq!(w.wake_ns.len(), 2);
        assert!(w.wake_ns.iter().all(|ns| *ns > 0.0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn creates_every_dependency() {
        let plan = ScalePlan {
            dependency_counts: vec![],
            pairs: 100,
            waiter_counts: vec![],
            repeats: 1,
        };
        let d = dependencies(2000, &plan).await.unwrap();
        assert_eq!(d.dependencies, 2000);
        assert!(d.pair().median > 0.0);
    }
}
