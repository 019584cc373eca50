//! Per-tenant rate limits (`tenant_rate`): one GCRA bucket for each tenant
//! that has spent a token recently, in a bounded table.
//!
//! A bucket that is full again says nothing a fresh one would not, so it is
//! forgotten: the table holds only tenants whose tokens are still refilling,
//! ordered by the instant each is full again (its TAT), and every admission
//! first drops the ones whose instant has passed (amortised O(1)). Beyond
//! [`MAX_RATED_TENANTS`] the bucket closest to full is forgotten early: that
//! tenant gets back at most what it would have regained soonest, a bounded
//! leniency rather than a refusal of tenants the table has no room for.
//!
//! Tenants are keyed by a 64-bit hash of the name under a seed drawn at
//! start (foldhash's `RandomState`), so the table's memory does not depend
//! on the names' length and a caller cannot aim collisions at another
//! tenant; a chance collision merges two buckets, which is stricter for
//! both, never looser.
//!
//! Unlike the dependency's bucket, a tenant's token is reserved when the
//! request is admitted (at the instant it comes, if later), and given back
//! if the request ends without a grant: a token is spent only by a grant,
//! and a tenant waiting for its own token holds up no other tenant's
//! requests in the queue.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;

use tokio::time::Instant;

use super::rate::{Gcra, Rate};

/// Tenants with a refilling bucket, per dependency: at ~80 bytes each, 80
/// KiB per rate-limited dependency at most.
pub const MAX_RATED_TENANTS: usize = 1024;

/// A tenant's key in the table.
pub(crate) type TenantKey = u64;

#[derive(Debug)]
pub(crate) struct TenantBuckets {
    rate: Rate,
    seed: foldhash::fast::RandomState,
    buckets: HashMap<TenantKey, Gcra, foldhash::fast::RandomState>,
    /// (TAT, tenant): when each bucket is full again, earliest first.
    full_at: BTreeSet<(Instant, TenantKey)>,
}

impl TenantBuckets {
    pub(crate) fn new(rate: Rate) -> TenantBuckets {
        TenantBuckets {
            rate,
            seed: foldhash::fast::RandomState::default(),
            buckets: HashMap::default(),
            full_at: BTreeSet::new(),
        }
    }

    pub(crate) fn rate(&self) -> Rate {
        self.rate
    }

    pub(crate) fn key(&self, tenant: &str) -> TenantKey {
        self.seed.hash_one(tenant)
    }

    /// Tenants whose tokens are still refilling.
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Forgets the buckets that are full again by `now`.
    fn forget_full(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.full_at.first() {
            if at > now {
                break;
            }
            self.full_at.pop_first();
            self.buckets.remove(&key);
        }
    }

    /// When the tenant's next token comes: `now` if it is there.
    pub(crate) fn ready_at(&mut self, key: TenantKey, now: Instant) -> Instant {
        self.forget_full(now);
        self.buckets
            .get(&key)
            .map_or(now, |bucket| bucket.ready_at(now, 0))
    }

    /// Spends the tenant's next token at `at` (its [`TenantBuckets::ready_at`]).
    pub(crate) fn reserve(&mut self, key: TenantKey, at: Instant) {
        let rate = self.rate;
        let bucket = self.buckets.entry(key).or_insert_with(|| Gcra::new(rate));
        let before = bucket.tat();
        bucket.spend(at);
        let after = bucket.tat();
        self.reorder(key, before, after);
        while self.buckets.len() > MAX_RATED_TENANTS {
            let Some((_, oldest)) = self.full_at.pop_first() else {
                break;
            };
            self.buckets.remove(&oldest);
        }
    }

    /// Gives back a reserved token whose request ended without a grant.
    pub(crate) fn refund(&mut self, key: TenantKey, now: Instant) {
        let Some(bucket) = self.buckets.get_mut(&key) else {
            // Forgotten: full already, nothing to give back.
            return;
        };
        let before = bucket.tat();
        bucket.refund(now);
        let after = bucket.tat();
        match after {
            Some(_) => self.reorder(key, before, after),
            None => {
                if let Some(before) = before {
                    self.full_at.remove(&(before, key));
                }
                self.buckets.remove(&key);
            }
        }
    }

    /// A new rate for every tenant; the tokens spent stay spent (rescaled).
    pub(crate) fn set_rate(&mut self, rate: Rate, now: Instant) {
        self.rate = rate;
        self.full_at.clear();
        for (&key, bucket) in &mut self.buckets {
            bucket.set_rate(rate, now);
            if let Some(tat) = bucket.tat() {
                self.full_at.insert((tat, key));
            }
        }
        self.forget_full(now);
    }

    fn reorder(&mut self, key: TenantKey, before: Option<Instant>, after: Option<Instant>) {
        if let Some(before) = before {
            self.full_at.remove(&(before, key));
        }
        if let Some(after) = after {
            self.full_at.insert((after, key));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn buckets(per_second: f64, burst: u32) -> TenantBuckets {
        TenantBuckets::new(Rate::new(per_second, burst).unwrap())
    }

    #[test]
    fn each_tenant_has_its_own_burst_and_full_buckets_are_forgotten() {
        let now = Instant::now();
        let mut table = buckets(10.0, 2);
        let (a, b) = (table.key("a"), table.key("b"));
        assert_ne!(a, b);
        for _ in 0..2 {
            assert_eq!(table.ready_at(a, now), now);
            table.reserve(a, now);
        }
        assert_eq!(table.ready_at(a, now), now + Duration::from_millis(100));
        assert_eq!(table.ready_at(b, now), now, "b is untouched");
        table.reserve(b, now);
        assert_eq!(table.len(), 2);
        // b is full again after 100 ms, a after 200 ms.
        let later = now + Duration::from_millis(150);
        assert_eq!(table.ready_at(a, later), later);
        assert_eq!(table.len(), 1, "b forgotten");
        table.ready_at(a, now + Duration::from_millis(200));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_reservation_in_the_future_and_its_refund() {
        let now = Instant::now();
        let mut table = buckets(10.0, 1);
        let a = table.key("a");
        table.reserve(a, now);
        let next = table.ready_at(a, now);
        assert_eq!(next, now + Duration::from_millis(100));
        table.reserve(a, next);
        assert_eq!(table.ready_at(a, now), now + Duration::from_millis(200));
        table.refund(a, now);
        assert_eq!(table.ready_at(a, now), next);
        table.refund(a, now);
        assert_eq!(table.ready_at(a, now), now);
        assert_eq!(table.len(), 0, "a full bucket is not kept");
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_bucket_closest_to_full() {
        let now = Instant::now();
        let mut table = buckets(1.0, 1);
        let first = table.key("tenant-0");
        table.reserve(first, now);
        for i in 1..=MAX_RATED_TENANTS {
            let key = table.key(&format!("tenant-{i}"));
            table.reserve(key, now + Duration::from_millis(i as u64));
        }
        assert_eq!(table.len(), MAX_RATED_TENANTS);
        // The first one was full soonest: forgotten, its token back early.
        assert_eq!(table.ready_at(first, now), now);
        let last = table.key(&format!("tenant-{MAX_RATED_TENANTS}"));
        assert!(table.ready_at(last, now) > now);
    }

    #[test]
    fn a_new_rate_keeps_the_spent_tokens() {
        let now = Instant::now();
        let mut table = buckets(1.0, 1);
        let a = table.key("a");
        table.reserve(a, now);
        table.set_rate(Rate::new(100.0, 1).unwrap(), now);
        assert_eq!(table.ready_at(a, now), now + Duration::from_millis(10));
        assert_eq!(table.rate().per_second(), 100.0);
    }
}
