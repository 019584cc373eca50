//! Which dependencies callers created and nobody uses: the eviction order.
//!
//! Callers may name any dependency, so a flood of junk names must neither
//! fill the table for good nor cost the Acquire path a scan. A dependency
//! created by a caller (not in the config file, never touched by the control
//! plane) that holds no lease and has no waiter is *idle*; it is dropped
//! after `idle_ttl`, and the least recently used idle one makes room when
//! `max_dependencies` is reached.
//!
//! # Why a lazy heap
//! Idleness changes on the hot path (every release that frees the last
//! slot), eviction is rare. So the hot path only stamps the dependency's own
//! state (`idle_since`, under the lock it holds anyway) and, the first time
//! it goes idle, drops a weak reference into an inbox. The evictor moves the
//! inbox into a min-heap by `idle_since` and checks each entry it pops
//! against the live state: an entry whose dependency went busy is dropped
//! (the dependency enters again through the inbox when next idle), one whose
//! stamp is stale is pushed back with the current stamp. Every push is paid
//! for by an idle transition, so eviction is amortised O(log n) and the heap
//! holds at most one entry per dependency.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Mutex, Weak};

use tokio::time::Instant;

use super::dependency::Dependency;

/// An idle dependency, as of `since`.
#[derive(Debug)]
pub(crate) struct IdleEntry {
    pub since: Instant,
    /// Ties in `since` are broken by arrival, so the order is total.
    seq: u64,
    pub dependency: Weak<Dependency>,
}

impl PartialEq for IdleEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.since, self.seq) == (other.since, other.seq)
    }
}

impl Eq for IdleEntry {}

impl PartialOrd for IdleEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IdleEntry {
    /// Reversed: the heap's top is the entry idle the longest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.since, other.seq).cmp(&(self.since, self.seq))
    }
}

/// Where dependencies announce that they went idle; a leaf lock, taken
/// under a dependency's lock and never while waiting for another one.
#[derive(Debug, Default)]
pub(crate) struct IdleInbox {
    entries: Mutex<(u64, Vec<IdleEntry>)>,
}

impl IdleInbox {
    pub(crate) fn push(&self, since: Instant, dependency: Weak<Dependency>) {
        let mut inbox = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        inbox.0 += 1;
        let seq = inbox.0;
        inbox.1.push(IdleEntry {
            since,
            seq,
            dependency,
        });
    }

    fn take(&self) -> Vec<IdleEntry> {
        let mut inbox = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut inbox.1)
    }

    fn next_seq(&self) -> u64 {
        let mut inbox = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        inbox.0 += 1;
        inbox.0
    }
}

/// The eviction order; only touched under the ledger's creation lock.
#[derive(Debug, Default)]
pub(crate) struct IdleQueue {
    heap: BinaryHeap<IdleEntry>,
}

impl IdleQueue {
    /// Moves what the inbox collected into the heap.
    pub(crate) fn absorb(&mut self, inbox: &IdleInbox) {
        self.heap.extend(inbox.take());
    }

    /// When the entry idle the longest went idle, if any.
    pub(crate) fn oldest(&self) -> Option<Instant> {
        self.heap.peek().map(|entry| entry.since)
    }

    pub(crate) fn pop(&mut self) -> Option<IdleEntry> {
        self.heap.pop()
    }

    /// Puts a dependency back with its current stamp.
    pub(crate) fn requeue(
        &mut self,
        inbox: &IdleInbox,
        since: Instant,
        dependency: Weak<Dependency>,
    ) {
        let seq = inbox.next_seq();
        self.heap.push(IdleEntry {
            since,
            seq,
            dependency,
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}
