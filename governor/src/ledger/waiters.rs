//! The bounded wait queue: strict priority, FIFO within a priority, and O(1)
//! push, pop, cancel and displacement.
//!
//! Waiters live in a slab, threaded on one intrusive doubly linked list per
//! class (priority × first attempt or retry). Six classes is a constant, so
//! finding the next waiter or the displacement victim looks at a fixed number
//! of list ends, never at the waiters themselves. Keeping retries on lists of
//! their own is what lets a retry displace only retries; a sequence number
//! restores FIFO order across the two lists of a priority.

use slab::Slab;

/// How urgent a request is. Lower rank is served first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Critical = 0,
    Normal = 1,
    Sheddable = 2,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Normal, Priority::Sheddable];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Sheddable => "sheddable",
        }
    }
}

const CLASSES: usize = 6;

fn class(priority: Priority, retry: bool) -> usize {
    priority as usize * 2 + usize::from(retry)
}

/// Identifies a queued waiter; stale keys (the waiter already left) are
/// recognised by their sequence number, so a reused slab slot is never mistaken
/// for the waiter that held it before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WaiterKey {
    index: usize,
    seq: u64,
}

#[derive(Debug)]
struct Node<T> {
    value: T,
    seq: u64,
    class: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(Clone, Copy, Debug, Default)]
struct List {
    head: Option<usize>,
    tail: Option<usize>,
    len: usize,
}

#[derive(Debug)]
pub(crate) struct WaiterQueue<T> {
    nodes: Slab<Node<T>>,
    lists: [List; CLASSES],
    next_seq: u64,
}

impl<T> Default for WaiterQueue<T> {
    fn default() -> Self {
        WaiterQueue {
            nodes: Slab::new(),
            lists: [List::default(); CLASSES],
            next_seq: 0,
        }
    }
}

impl<T> WaiterQueue<T> {
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Queues `value` at the back of its class.
    pub(crate) fn push(&mut self, priority: Priority, retry: bool, value: T) -> WaiterKey {
        let seq = self.next_seq;
        self.next_seq += 1;
        let class = class(priority, retry);
        let tail = self.lists[class].tail;
        let index = self.nodes.insert(Node {
            value,
            seq,
            class,
            prev: tail,
            next: None,
        });
        match tail {
            Some(tail) => self.nodes[tail].next = Some(index),
            None => self.lists[class].head = Some(index),
        }
        self.lists[class].tail = Some(index);
        self.lists[class].len += 1;
        WaiterKey { index, seq }
    }

    /// Takes the waiter out if it is still queued.
    pub(crate) fn remove(&mut self, key: WaiterKey) -> Option<T> {
        match self.nodes.get(key.index) {
            Some(node) if node.seq == key.seq => Some(self.unlink(key.index)),
            _ => None,
        }
    }

    /// How many waiters are served before an arrival of `priority`: every
    /// one of the same or a higher priority (first tries and retries of one
    /// priority are served oldest first, so both are ahead). O(classes).
    pub(crate) fn ahead_of(&self, priority: Priority) -> usize {
        Priority::ALL
            .iter()
            .take_while(|&&p| p <= priority)
            .map(|&p| self.lists[class(p, false)].len + self.lists[class(p, true)].len)
            .sum()
    }

    /// The next waiter to serve: highest priority, then oldest.
    pub(crate) fn pop(&mut self) -> Option<T> {
        Priority::ALL.iter().find_map(|&priority| {
            let first = self.head_seq(class(priority, false));
            let retry = self.head_seq(class(priority, true));
            let pick = match (first, retry) {
                (Some((a, sa)), Some((b, sb))) => Some(if sa < sb { a } else { b }),
                (Some((a, _)), None) => Some(a),
                (None, Some((b, _))) => Some(b),
                (None, None) => None,
            };
            pick.map(|index| self.unlink(index))
        })
    }

    /// The waiter an arrival may displace from a full queue: the newest waiter
    /// of the lowest priority present, if that priority is lower than the
    /// arrival's. A retry only ever displaces a retry.
    pub(crate) fn victim_for(&self, priority: Priority, retry: bool) -> Option<WaiterKey> {
        let lowest = self.lowest_priority()?;
        if lowest <= priority {
            return None;
        }
        if retry {
            // A retry only displaces a retry: the newest of the lowest
            // priority that has retries waiting, below the arrival's.
            Priority::ALL
                .iter()
                .rev()
                .take_while(|&&p| p > priority)
                .find_map(|&p| self.tail_key(class(p, true)))
        } else {
            self.newest_of(lowest)
        }
    }

    /// The newest waiter of the lowest priority present.
    pub(crate) fn newest_lowest(&self) -> Option<WaiterKey> {
        self.newest_of(self.lowest_priority()?)
    }

    fn lowest_priority(&self) -> Option<Priority> {
        Priority::ALL.iter().rev().copied().find(|&p| {
            self.lists[class(p, false)].head.is_some() || self.lists[class(p, true)].head.is_some()
        })
    }

    fn newest_of(&self, priority: Priority) -> Option<WaiterKey> {
        let first = self.tail_key(class(priority, false));
        let retry = self.tail_key(class(priority, true));
        match (first, retry) {
            (Some(a), Some(b)) => Some(if a.seq > b.seq { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    fn head_seq(&self, class: usize) -> Option<(usize, u64)> {
        self.lists[class].head.map(|i| (i, self.nodes[i].seq))
    }

    fn tail_key(&self, class: usize) -> Option<WaiterKey> {
        self.lists[class].tail.map(|index| WaiterKey {
            index,
            seq: self.nodes[index].seq,
        })
    }

    fn unlink(&mut self, index: usize) -> T {
        let node = self.nodes.remove(index);
        self.lists[node.class].len -= 1;
        match node.prev {
            Some(prev) => self.nodes[prev].next = node.next,
            None => self.lists[node.class].head = node.next,
        }
        match node.next {
            Some(next) => self.nodes[next].prev = node.prev,
            None => self.lists[node.class].tail = node.prev,
        }
        node.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::*;

    fn order(queue: &mut WaiterQueue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| queue.pop()).collect()
    }

    #[test]
    fn counts_the_waiters_ahead_of_each_priority() {
        let mut q = WaiterQueue::default();
        assert_eq!(q.ahead_of(Sheddable), 0);
        q.push(Normal, false, "n1");
        let retry = q.push(Normal, true, "n2");
        q.push(Critical, false, "c1");
        q.push(Sheddable, false, "s1");
        assert_eq!(q.ahead_of(Critical), 1);
        assert_eq!(q.ahead_of(Normal), 3);
        assert_eq!(q.ahead_of(Sheddable), 4);
        q.remove(retry);
        assert_eq!(q.ahead_of(Normal), 2);
        assert_eq!(q.pop(), Some("c1"));
        assert_eq!(q.ahead_of(Critical), 0);
        assert_eq!(q.ahead_of(Sheddable), 2);
    }

    #[test]
    fn serves_priority_then_fifo_across_retries() {
        let mut q = WaiterQueue::default();
        q.push(Normal, false, "n1");
        q.push(Sheddable, false, "s1");
        q.push(Normal, true, "n2-retry");
        q.push(Critical, false, "c1");
        q.push(Normal, false, "n3");
        assert_eq!(order(&mut q), ["c1", "n1", "n2-retry", "n3", "s1"]);
        assert!(q.is_empty());
    }

    #[test]
    fn remove_is_exact_and_stale_keys_do_nothing() {
        let mut q = WaiterQueue::default();
        let a = q.push(Normal, false, "a");
        let b = q.push(Normal, false, "b");
        let c = q.push(Normal, false, "c");
        assert_eq!(q.remove(b), Some("b"));
        assert_eq!(q.remove(b), None);
        // Slot of `b` is reused by `d`; the stale key must not remove `d`.
        let d = q.push(Normal, false, "d");
        assert_eq!(q.remove(b), None);
        assert_eq!(q.len(), 3);
        assert_eq!(q.remove(a), Some("a"));
        assert_eq!(order(&mut q), ["c", "d"]);
        assert_eq!(q.remove(c), None);
        assert_eq!(q.remove(d), None);
    }

    #[test]
    fn victim_is_newest_of_lowest_priority_and_only_below_the_arrival() {
        let mut q = WaiterQueue::default();
        q.push(Normal, false, "n1");
        let s1 = q.push(Sheddable, false, "s1");
        let s2 = q.push(Sheddable, false, "s2");
        assert_eq!(q.victim_for(Normal, false), Some(s2));
        assert_eq!(q.victim_for(Critical, false), Some(s2));
        assert_eq!(q.victim_for(Sheddable, false), None);
        q.remove(s2);
        assert_eq!(q.victim_for(Normal, false), Some(s1));
        q.remove(s1);
        assert_eq!(q.victim_for(Normal, false), None);
        assert!(q.victim_for(Critical, false).is_some());
    }

    #[test]
    fn a_retry_never_displaces_a_first_attempt() {
        let mut q = WaiterQueue::default();
        q.push(Sheddable, false, "s-first");
        assert_eq!(q.victim_for(Critical, true), None);
        let r = q.push(Sheddable, true, "s-retry");
        assert_eq!(q.victim_for(Critical, true), Some(r));
        q.remove(r);
        // Lower-priority retries above the lowest first attempts still go.
        let normal_retry = q.push(Normal, true, "n-retry");
        assert_eq!(q.victim_for(Critical, true), Some(normal_retry));
        assert_eq!(q.victim_for(Normal, true), None);
        q.remove(normal_retry);
        q.push(Sheddable, true, "s-retry-2");
        // A first attempt takes the newest of either kind.
        let f = q.push(Sheddable, false, "s-first-2");
        assert_eq!(q.victim_for(Critical, false), Some(f));
    }
}
