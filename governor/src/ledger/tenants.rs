//! Per-tenant rate limits (`tenant_rate`): one GCRA bucket for each tenant
//! that has spent a token recently, in a bounded table.
//!
//! A bucket that is full again says nothing a fresh one would not, so it is
//! forgotten: the table holds only tenants whose tokens are still refilling,
//! ordered by the instant each is full again (its TAT), and every admission
//! first drops the ones whose instant has passed (amortised O(1)). While
//! [`MAX_RATED_TENANTS`] tenants are refilling, a tenant not among them
//! shares one overflow bucket (at the same rate) with every other such
//! tenant: stricter for them, never looser, and no bucket is forgotten
//! before it is full.
//!
//! Tenants are keyed by a 64-bit hash of the name under a seed drawn at
//! start (foldhash's `RandomState`), so the table's memory does not depend
//! on the names' length; a collision merges two buckets, which is stricter
//! for both, never looser.
//!
//! Unlike the dependency's bucket, a tenant's token is reserved when the
//! request is admitted (at the instant it comes, if later), so that a tenant
//! waiting for its own token holds up no other tenant's requests in the
//! queue. A request that ends without a grant gives its token back only if
//! it holds the tenant's latest reservation (the bucket's TAT is still the
//! one its reservation made): giving back an earlier one would move the
//! later reservations' instants together. Otherwise the token stays spent,
//! which is stricter, never looser.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;

use tokio::time::Instant;

use super::rate::{Bucket, Gcra, Rate};

/// Tenants with a refilling bucket, per dependency (plus the overflow
/// bucket): at ~120 bytes each, about 128 KiB per dependency with a
/// `tenant_rate` at most.
pub const MAX_RATED_TENANTS: usize = 1024;

/// A tenant's key in the table: odd for a tenant, [`OVERFLOW`] for the
/// bucket the tenants beyond the table share.
pub(crate) type TenantKey = u64;
const OVERFLOW: TenantKey = 0;

/// A reservation: the bucket it was taken from and the TAT it left, which
/// a refund must find unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reservation {
    key: TenantKey,
    tat: Instant,
}

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
        self.seed.hash_one(tenant) | 1
    }

    /// Tenants whose tokens are still refilling.
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Forgets the buckets that are full again by `now`.
    pub(crate) fn forget_full(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.full_at.first() {
            if at > now {
                break;
            }
            self.full_at.pop_first();
            self.buckets.remove(&key);
        }
    }

    /// The bucket the tenant `key` draws on (its own, or the overflow one
    /// when the table is full), and when its next token comes: `now` if it
    /// is there.
    pub(crate) fn ready_at(&mut self, key: TenantKey, now: Instant) -> (TenantKey, Instant) {
        self.forget_full(now);
        let key = if self.buckets.contains_key(&key) || self.buckets.len() < MAX_RATED_TENANTS {
            key
        } else {
            OVERFLOW
        };
        let at = self
            .buckets
            .get(&key)
            .map_or(now, |bucket| bucket.ready_at(now, 0));
        (key, at)
    }

    /// Spends the next token of the bucket `key` (from
    /// [`TenantBuckets::ready_at`]) at `at`, its instant.
    pub(crate) fn reserve(&mut self, key: TenantKey, at: Instant) -> Reservation {
        let rate = self.rate;
        let bucket = self.buckets.entry(key).or_insert_with(|| Gcra::new(rate));
        let before = bucket.tat();
        bucket.spend(at);
        let after = bucket.tat();
        self.reorder(key, before, after);
        Reservation {
            key,
            tat: after.expect("a spent bucket has a TAT"),
        }
    }

    /// Gives back the token of a request that ended without a grant, if it
    /// is still the latest reservation of its bucket.
    pub(crate) fn refund(&mut self, reservation: Reservation, now: Instant) {
        let key = reservation.key;
        let Some(bucket) = self.buckets.get_mut(&key) else {
            // Forgotten: full already, nothing to give back.
            return;
        };
        let before = bucket.tat();
        if before != Some(reservation.tat) {
            // Reserved again since, or rescaled by a new rate: kept spent.
            return;
        }
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

impl Bucket for TenantBuckets {
    fn new(rate: Rate) -> Self {
        TenantBuckets::new(rate)
    }
    fn rate(&self) -> Rate {
        TenantBuckets::rate(self)
    }
    fn set_rate(&mut self, rate: Rate, now: Instant) {
        TenantBuckets::set_rate(self, rate, now);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn buckets(per_second: f64, burst: u32) -> TenantBuckets {
        TenantBuckets::new(Rate::new(per_second, burst).unwrap())
    }

    /// Reserves the tenant's next token; returns when it comes.
    fn take(table: &mut TenantBuckets, tenant: &str, now: Instant) -> (Reservation, Instant) {
        let (key, at) = table.ready_at(table.key(tenant), now);
        (table.reserve(key, at), at)
    }

    #[test]
    fn each_tenant_has_its_own_burst_and_full_buckets_are_forgotten() {
        let now = Instant::now();
        let mut table = buckets(10.0, 2);
        assert_ne!(table.key("a"), table.key("b"));
        for _ in 0..2 {
            assert_eq!(take(&mut table, "a", now).1, now);
        }
        let a = table.key("a");
        assert_eq!(table.ready_at(a, now).1, now + Duration::from_millis(100));
        assert_eq!(take(&mut table, "b", now).1, now, "b is untouched");
        assert_eq!(table.len(), 2);
        // b is full again after 100 ms, a after 200 ms.
        let later = now + Duration::from_millis(150);
        assert_eq!(table.ready_at(a, later).1, later);
        assert_eq!(table.len(), 1, "b forgotten");
        table.ready_at(a, now + Duration::from_millis(200));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn only_the_latest_reservation_is_given_back() {
        let now = Instant::now();
        let mut table = buckets(1.0, 1);
        let (first, at0) = take(&mut table, "a", now);
        let (second, at1) = take(&mut table, "a", now);
        let (third, at2) = take(&mut table, "a", now);
        assert_eq!(
            (at0, at1, at2),
            (
                now,
                now + Duration::from_secs(1),
                now + Duration::from_secs(2)
            )
        );
        // The second gives up: its token stays spent, so the next is not
        // booked onto the third's instant.
        table.refund(second, now);
        let (_, at3) = take(&mut table, "a", now);
        assert_eq!(at3, now + Duration::from_secs(3));
        // The latest gives up: its token comes back, once.
        let (fifth, at4) = take(&mut table, "a", now);
        assert_eq!(at4, now + Duration::from_secs(4));
        table.refund(fifth, now);
        table.refund(fifth, now);
        assert_eq!(table.ready_at(table.key("a"), now).1, at4);
        // The first's refund comes far too late to matter.
        table.refund(first, now);
        table.refund(third, now);
        assert_eq!(table.ready_at(table.key("a"), now).1, at4);
    }

    #[test]
    fn tenants_beyond_the_table_share_the_overflow_bucket() {
        let now = Instant::now();
        let mut table = buckets(1.0, 1);
        for i in 0..MAX_RATED_TENANTS {
            take(&mut table, &format!("tenant-{i}"), now);
        }
        assert_eq!(table.len(), MAX_RATED_TENANTS);
        // Two newcomers: the first takes the overflow bucket's token, the
        // second waits for the next one; nobody already there lost a thing.
        assert_eq!(take(&mut table, "x", now).1, now);
        assert_eq!(take(&mut table, "y", now).1, now + Duration::from_secs(1));
        assert_eq!(table.len(), MAX_RATED_TENANTS + 1);
        let first = table.key("tenant-0");
        assert_eq!(table.ready_at(first, now).1, now + Duration::from_secs(1));
        // Once the table has room again, a newcomer has a bucket of its own.
        let later = now + Duration::from_secs(1);
        assert_eq!(take(&mut table, "z", later).1, later);
    }

    #[test]
    fn a_new_rate_keeps_the_spent_tokens() {
        let now = Instant::now();
        let mut table = buckets(1.0, 1);
        take(&mut table, "a", now);
        table.set_rate(Rate::new(100.0, 1).unwrap(), now);
        let a = table.key("a");
        assert_eq!(table.ready_at(a, now).1, now + Duration::from_millis(10));
        assert_eq!(table.rate().per_second(), 100.0);
    }
}
