//! The order in which one dependency's leases expire.
//!
//! A lease's deadline is its grant (or renewal) time plus the dependency's
//! lease TTL, so while the TTL stays the same, deadlines arrive in order and a
//! FIFO holds them sorted: O(1) to add, O(1) to find the earliest. Only a
//! lowered TTL gives a new lease an earlier deadline than one already queued;
//! those go to a heap beside the FIFO, and the earliest is the smaller of the
//! two fronts. (A heap for everything cost an uncontended acquire + release
//! about 80 instructions to sift each new entry up.)
//!
//! Releases and renewals leave stale entries behind (the lease is gone, or
//! has a later deadline): the reaper skips them when it reaches them, and the
//! owner compacts them with [`Expiry::retain`] once they outnumber the live
//! ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use tokio::time::Instant;

use super::lease::LeaseKey;

pub(crate) type Entry = (Instant, LeaseKey);

/// No `Debug`: it holds lease keys, parts of lease ids (bearer credentials).
#[derive(Default)]
pub(crate) struct Expiry {
    /// Deadlines in the order they were added, which is sorted.
    ordered: VecDeque<Entry>,
    /// Entries earlier than the FIFO's last one when they were added.
    early: BinaryHeap<Reverse<Entry>>,
}

impl Expiry {
    /// Adds an entry.
    pub(crate) fn push(&mut self, deadline: Instant, key: LeaseKey) {
        match self.ordered.back() {
            Some(&(last, _)) if deadline < last => self.early.push(Reverse((deadline, key))),
            _ => self.ordered.push_back((deadline, key)),
        }
    }

    /// The earliest entry.
    pub(crate) fn peek(&self) -> Option<Entry> {
        match (self.ordered.front(), self.early.peek()) {
            (Some(&fifo), Some(&Reverse(heap))) => Some(fifo.min(heap)),
            (Some(&fifo), None) => Some(fifo),
            (None, Some(&Reverse(heap))) => Some(heap),
            (None, None) => None,
        }
    }

    /// Removes the earliest entry.
    pub(crate) fn pop(&mut self) -> Option<Entry> {
        match (self.ordered.front(), self.early.peek()) {
            (Some(fifo), Some(Reverse(heap))) if heap < fifo => self.early.pop().map(|e| e.0),
            (Some(_), _) => self.ordered.pop_front(),
            (None, _) => self.early.pop().map(|e| e.0),
        }
    }

    /// Drops the entry of a lease that ended, if it is at either end of the
    /// FIFO (the newest grant released first, or the oldest): then it
    /// leaves no stale entry to compact. O(1); anywhere else it stays until
    /// it is reached or compacted.
    pub(crate) fn forget(&mut self, deadline: Instant, key: LeaseKey) {
        if self.ordered.back() == Some(&(deadline, key)) {
            self.ordered.pop_back();
        } else if self.ordered.front() == Some(&(deadline, key)) {
            self.ordered.pop_front();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ordered.len() + self.early.len()
    }

    /// Keeps only the entries `keep` says yes to (the FIFO stays sorted).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        self.ordered.retain(&mut keep);
        self.early.retain(|Reverse(entry)| keep(entry));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the order of deadlines, entries come out sorted, and
        /// `retain` keeps exactly what it is told to, in order.
        #[test]
        fn pops_in_deadline_order(
            ops in prop::collection::vec((0u64..50, any::<bool>(), 0u8..4), 1..200),
        ) {
            let origin = Instant::now();
            let mut expiry = Expiry::default();
            let mut model: Vec<Entry> = Vec::new();
            for (i, (offset, pop, drop_class)) in ops.into_iter().enumerate() {
                if pop {
                    model.sort();
                    let expected = (!model.is_empty()).then(|| model.remove(0));
                    prop_assert_eq!(expiry.pop(), expected);
                } else if drop_class == 0 {
                    // Compact: drop every entry whose key is odd.
                    expiry.retain(|(_, key)| key % 2 == 0);
                    model.retain(|(_, key)| key % 2 == 0);
                } else {
                    let deadline = origin + Duration::from_millis(offset);
                    expiry.push(deadline, i as LeaseKey);
                    model.push((deadline, i as LeaseKey));
                }
                prop_assert_eq!(expiry.len(), model.len());
                prop_assert_eq!(expiry.peek(), model.iter().min().copied());
            }
        }
    }

    #[test]
    fn forget_drops_an_end_entry_and_nothing_else() {
        let origin = Instant::now();
        let at = |ms| origin + Duration::from_millis(ms);
        let mut expiry = Expiry::default();
        for key in 1..=4u64 {
            expiry.push(at(key), LeaseKey::from(key));
        }
        expiry.forget(at(4), 4);
        expiry.forget(at(1), 1);
        // In the middle, or not matching its deadline: stays.
        expiry.forget(at(2), 3);
        expiry.forget(at(9), 2);
        assert_eq!(expiry.len(), 2);
        assert_eq!(expiry.pop(), Some((at(2), 2)));
        expiry.forget(at(3), 3);
        assert_eq!(expiry.pop(), None);
    }

    #[test]
    fn a_constant_ttl_never_touches_the_heap() {
        let origin = Instant::now();
        let mut expiry = Expiry::default();
        for i in 0..100u64 {
            expiry.push(origin + Duration::from_millis(i / 3), LeaseKey::from(i));
        }
        assert_eq!(expiry.early.len(), 0);
        assert_eq!(expiry.ordered.len(), 100);
    }
}
