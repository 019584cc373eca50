//! The bounded wait queue: strict priority, FIFO within a priority, and O(1)
//! push, pop, cancel and displacement.
//!
//! Waiters live in a slab, threaded on one intrusive doubly linked list per
//! class (priority × first attempt or retry). Six classes is a constant, so
//! finding the next waiter or the displacement victim looks at a fixed number
//! of list ends, never at the waiters themselves. Keeping retries on lists of
//! their own is what lets a retry displace only retries; a sequence number
//! restores FIFO order across the two lists of a priority.
//!
//! Under fair shares a waiter is threaded on a second set of class lists too,
//! its flow's (a tenant, or a tenant's route): [`super::fair`] picks the flow
//! a free permit goes to, and the flow's lists give its oldest waiter of the
//! priority served, or its newest one to displace, in O(1) as well.

use std::num::NonZeroU32;

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

/// A flow's place in the queue (see [`WaiterQueue::open_flow`]).
pub(crate) type FlowId = usize;

/// Identifies a queued waiter; stale keys (the waiter already left) are
/// recognised by their sequence number, so a reused slab slot is never mistaken
/// for the waiter that held it before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WaiterKey {
    index: usize,
    seq: u64,
}

/// The two lists a node is on: its class's in the whole queue, and its
/// class's in its flow (unused without one).
const GLOBAL: usize = 0;
const FLOW: usize = 1;

/// A slab index or none, in four bytes (a waiter's links are most of its
/// entry; the ledger bounds the waiters far below `u32::MAX`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Idx(Option<NonZeroU32>);

impl Idx {
    const NONE: Idx = Idx(None);

    fn of(index: usize) -> Idx {
        let index = u32::try_from(index + 1).expect("fewer than u32::MAX waiters");
        Idx(NonZeroU32::new(index))
    }

    fn get(self) -> Option<usize> {
        self.0.map(|i| i.get() as usize - 1)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Link {
    prev: Idx,
    next: Idx,
}

#[derive(Debug)]
struct Node<T> {
    value: T,
    seq: u64,
    links: [Link; 2],
    flow: Idx,
    class: u8,
}

#[derive(Clone, Copy, Debug, Default)]
struct List {
    head: Idx,
    tail: Idx,
    len: u32,
}

type Lists = [List; CLASSES];

#[derive(Debug)]
pub(crate) struct WaiterQueue<T> {
    nodes: Slab<Node<T>>,
    lists: Lists,
    /// Each open flow's own class lists.
    flows: Slab<Lists>,
    next_seq: u64,
}

impl<T> Default for WaiterQueue<T> {
    fn default() -> Self {
        WaiterQueue {
            nodes: Slab::new(),
            lists: [List::default(); CLASSES],
            flows: Slab::new(),
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

    /// A new flow, with no waiter; its id is valid until [`Self::close_flow`].
    pub(crate) fn open_flow(&mut self) -> FlowId {
        self.flows.insert([List::default(); CLASSES])
    }

    /// Forgets a flow that has no waiter left.
    pub(crate) fn close_flow(&mut self, flow: FlowId) {
        debug_assert!(self.flows[flow].iter().all(|list| list.len == 0));
        self.flows.remove(flow);
    }

    /// Queues `value` at the back of its class (and of its flow's class).
    pub(crate) fn push(
        &mut self,
        priority: Priority,
        retry: bool,
        flow: Option<FlowId>,
        value: T,
    ) -> WaiterKey {
        let seq = self.next_seq;
        self.next_seq += 1;
        let class = class(priority, retry);
        let index = self.nodes.insert(Node {
            value,
            seq,
            class: class as u8,
            flow: flow.map_or(Idx::NONE, Idx::of),
            links: [Link::default(); 2],
        });
        self.link_back(GLOBAL, index);
        if flow.is_some() {
            self.link_back(FLOW, index);
        }
        WaiterKey { index, seq }
    }

    /// Takes every waiter off its flow and closes every flow; the waiters
    /// keep their places in the queue. Returns their keys, oldest first, for
    /// [`WaiterQueue::set_flow`].
    pub(crate) fn reset_flows(&mut self) -> Vec<WaiterKey> {
        self.flows.clear();
        let mut keys: Vec<WaiterKey> = self
            .nodes
            .iter_mut()
            .map(|(index, node)| {
                node.flow = Idx::NONE;
                node.links[FLOW] = Link::default();
                WaiterKey {
                    index,
                    seq: node.seq,
                }
            })
            .collect();
        keys.sort_by_key(|key| key.seq);
        keys
    }

    /// Puts a waiter without a flow at the back of `flow`'s lists.
    pub(crate) fn set_flow(&mut self, key: WaiterKey, flow: FlowId) {
        if self.get_mut(key).is_some() && self.nodes[key.index].flow == Idx::NONE {
            self.nodes[key.index].flow = Idx::of(flow);
            self.link_back(FLOW, key.index);
        }
    }

    /// The waiter, if it is still queued.
    pub(crate) fn get_mut(&mut self, key: WaiterKey) -> Option<&mut T> {
        match self.nodes.get_mut(key.index) {
            Some(node) if node.seq == key.seq => Some(&mut node.value),
            _ => None,
        }
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
            .map(|&p| (self.lists[class(p, false)].len + self.lists[class(p, true)].len) as usize)
            .sum()
    }

    /// The highest priority that has a waiter.
    pub(crate) fn top_priority(&self) -> Option<Priority> {
        Priority::ALL
            .iter()
            .copied()
            .find(|&p| self.lists[class(p, false)].len + self.lists[class(p, true)].len > 0)
    }

    /// The next waiter to serve: highest priority, then oldest.
    #[cfg(test)]
    pub(crate) fn pop(&mut self) -> Option<T> {
        let key = self.oldest_key()?;
        self.remove(key)
    }

    /// The key of the waiter [`WaiterQueue::pop`] would take.
    pub(crate) fn oldest_key(&self) -> Option<WaiterKey> {
        let index = oldest(&self.nodes, &self.lists, self.top_priority()?)?;
        Some(WaiterKey {
            index,
            seq: self.nodes[index].seq,
        })
    }

    /// The oldest waiter of `priority` in `flow`.
    pub(crate) fn oldest_in_flow(&self, flow: FlowId, priority: Priority) -> Option<WaiterKey> {
        let index = oldest(&self.nodes, self.flows.get(flow)?, priority)?;
        Some(WaiterKey {
            index,
            seq: self.nodes[index].seq,
        })
    }

    /// A queued waiter's priority and whether it is a retry (its class).
    pub(crate) fn place(&self, key: WaiterKey) -> Option<(Priority, bool)> {
        match self.nodes.get(key.index) {
            Some(node) if node.seq == key.seq => Some((
                Priority::ALL[usize::from(node.class / 2)],
                node.class % 2 == 1,
            )),
            _ => None,
        }
    }

    /// Whether `flow` has a waiter of `priority`.
    #[cfg(test)]
    pub(crate) fn flow_has(&self, flow: FlowId, priority: Priority) -> bool {
        self.flows.get(flow).is_some_and(|lists| {
            lists[class(priority, false)].len + lists[class(priority, true)].len > 0
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
        self.newest_below(priority, retry)
    }

    /// The newest waiter of `priority` in `flow` (only among its retries,
    /// with `retry`).
    pub(crate) fn flow_newest(
        &self,
        flow: FlowId,
        priority: Priority,
        retry: bool,
    ) -> Option<WaiterKey> {
        let lists = self.flows.get(flow)?;
        if retry {
            self.tail_key(lists, class(priority, true))
        } else {
            self.newest_of(lists, priority)
        }
    }

    /// The newest waiter of the lowest priority present.
    pub(crate) fn newest_lowest(&self) -> Option<WaiterKey> {
        self.newest_of(&self.lists, self.lowest_priority()?)
    }

    fn lowest_priority(&self) -> Option<Priority> {
        Priority::ALL
            .iter()
            .rev()
            .copied()
            .find(|&p| self.lists[class(p, false)].len + self.lists[class(p, true)].len > 0)
    }

    /// The newest waiter of the lowest priority below `priority`; only
    /// among retries for a retry.
    fn newest_below(&self, priority: Priority, retry: bool) -> Option<WaiterKey> {
        let mut candidates = Priority::ALL.iter().rev().take_while(|&&p| p > priority);
        if retry {
            candidates.find_map(|&p| self.tail_key(&self.lists, class(p, true)))
        } else {
            candidates.find_map(|&p| self.newest_of(&self.lists, p))
        }
    }

    fn newest_of(&self, lists: &Lists, priority: Priority) -> Option<WaiterKey> {
        let first = self.tail_key(lists, class(priority, false));
        let retry = self.tail_key(lists, class(priority, true));
        match (first, retry) {
            (Some(a), Some(b)) => Some(if a.seq > b.seq { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    fn tail_key(&self, lists: &Lists, class: usize) -> Option<WaiterKey> {
        lists[class].tail.get().map(|index| WaiterKey {
            index,
            seq: self.nodes[index].seq,
        })
    }

    /// The list of `level` that node `index` belongs on.
    fn list_of(&mut self, level: usize, index: usize) -> &mut List {
        let (class, flow) = (self.nodes[index].class as usize, self.nodes[index].flow);
        if level == GLOBAL {
            &mut self.lists[class]
        } else {
            let flow = flow
                .get()
                .expect("only a node with a flow is on a flow list");
            &mut self.flows[flow][class]
        }
    }

    fn link_back(&mut self, level: usize, index: usize) {
        let list = self.list_of(level, index);
        let tail = std::mem::replace(&mut list.tail, Idx::of(index));
        if tail == Idx::NONE {
            list.head = Idx::of(index);
        }
        list.len += 1;
        if let Some(tail) = tail.get() {
            self.nodes[tail].links[level].next = Idx::of(index);
        }
        self.nodes[index].links[level] = Link {
            prev: tail,
            next: Idx::NONE,
        };
    }

    fn unlink_level(&mut self, level: usize, index: usize) {
        let Link { prev, next } = self.nodes[index].links[level];
        let list = self.list_of(level, index);
        list.len -= 1;
        if prev == Idx::NONE {
            list.head = next;
        }
        if next == Idx::NONE {
            list.tail = prev;
        }
        if let Some(prev) = prev.get() {
            self.nodes[prev].links[level].next = next;
        }
        if let Some(next) = next.get() {
            self.nodes[next].links[level].prev = prev;
        }
    }

    fn unlink(&mut self, index: usize) -> T {
        self.unlink_level(GLOBAL, index);
        if self.nodes[index].flow != Idx::NONE {
            self.unlink_level(FLOW, index);
        }
        self.nodes.remove(index).value
    }
}

/// In `lists`: the oldest waiter of `priority`, first tries and retries
/// together.
fn oldest<T>(nodes: &Slab<Node<T>>, lists: &Lists, priority: Priority) -> Option<usize> {
    let head = |class: usize| lists[class].head.get().map(|i| (i, nodes[i].seq));
    match (head(class(priority, false)), head(class(priority, true))) {
        (Some((a, sa)), Some((b, sb))) => Some(if sa < sb { a } else { b }),
        (a, b) => a.or(b).map(|(index, _)| index),
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
        q.push(Normal, false, None, "n1");
        let retry = q.push(Normal, true, None, "n2");
        q.push(Critical, false, None, "c1");
        q.push(Sheddable, false, None, "s1");
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
        q.push(Normal, false, None, "n1");
        q.push(Sheddable, false, None, "s1");
        q.push(Normal, true, None, "n2-retry");
        q.push(Critical, false, None, "c1");
        q.push(Normal, false, None, "n3");
        assert_eq!(order(&mut q), ["c1", "n1", "n2-retry", "n3", "s1"]);
        assert!(q.is_empty());
    }

    #[test]
    fn remove_is_exact_and_stale_keys_do_nothing() {
        let mut q = WaiterQueue::default();
        let a = q.push(Normal, false, None, "a");
        let b = q.push(Normal, false, None, "b");
        let c = q.push(Normal, false, None, "c");
        assert_eq!(q.remove(b), Some("b"));
        assert_eq!(q.remove(b), None);
        // Slot of `b` is reused by `d`; the stale key must not remove `d`.
        let d = q.push(Normal, false, None, "d");
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
        q.push(Normal, false, None, "n1");
        let s1 = q.push(Sheddable, false, None, "s1");
        let s2 = q.push(Sheddable, false, None, "s2");
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
        q.push(Sheddable, false, None, "s-first");
        assert_eq!(q.victim_for(Critical, true), None);
        let r = q.push(Sheddable, true, None, "s-retry");
        assert_eq!(q.victim_for(Critical, true), Some(r));
        q.remove(r);
        // Lower-priority retries above the lowest first attempts still go.
        let normal_retry = q.push(Normal, true, None, "n-retry");
        assert_eq!(q.victim_for(Critical, true), Some(normal_retry));
        assert_eq!(q.victim_for(Normal, true), None);
        q.remove(normal_retry);
        q.push(Sheddable, true, None, "s-retry-2");
        // A first attempt takes the newest of either kind.
        let f = q.push(Sheddable, false, None, "s-first-2");
        assert_eq!(q.victim_for(Critical, false), Some(f));
    }

    #[test]
    fn flows_keep_their_own_order_and_leave_the_global_one_whole() {
        let mut q = WaiterQueue::default();
        let a = q.open_flow();
        let b = q.open_flow();
        q.push(Normal, false, Some(a), "a1");
        q.push(Normal, false, Some(b), "b1");
        let a2 = q.push(Normal, true, Some(a), "a2-retry");
        q.push(Critical, false, Some(b), "b-critical");
        q.push(Normal, false, Some(a), "a3");
        assert_eq!(q.top_priority(), Some(Critical));
        assert!(q.flow_has(b, Critical) && !q.flow_has(a, Critical));
        assert_eq!(
            q.oldest_in_flow(a, Critical).and_then(|k| q.remove(k)),
            None
        );
        assert_eq!(
            q.oldest_in_flow(a, Normal).and_then(|k| q.remove(k)),
            Some("a1")
        );
        // Removal unlinks it from both of its lists.
        assert_eq!(q.remove(a2), Some("a2-retry"));
        assert_eq!(
            q.oldest_in_flow(a, Normal).and_then(|k| q.remove(k)),
            Some("a3")
        );
        assert!(!q.flow_has(a, Normal));
        q.close_flow(a);
        assert_eq!(order(&mut q), ["b-critical", "b1"]);
        assert!(!q.flow_has(b, Normal) && !q.flow_has(b, Critical));
        // A stale flow id answers nothing.
        assert_eq!(q.oldest_in_flow(a, Normal).and_then(|k| q.remove(k)), None);
        assert!(!q.flow_has(a, Normal));
    }

    #[test]
    fn a_flows_newest_waiter_of_a_priority() {
        let mut q = WaiterQueue::default();
        let f = q.open_flow();
        let other = q.open_flow();
        q.push(Critical, false, Some(f), "f-critical");
        let n1 = q.push(Normal, false, Some(f), "f-n1");
        let r = q.push(Normal, true, Some(f), "f-retry");
        let n2 = q.push(Normal, false, Some(f), "f-n2");
        q.push(Normal, false, Some(other), "other-n");
        assert_eq!(q.flow_newest(f, Normal, false), Some(n2));
        assert_eq!(q.flow_newest(f, Normal, true), Some(r));
        assert_eq!(q.flow_newest(f, Sheddable, false), None);
        q.remove(n2);
        q.remove(r);
        assert_eq!(q.flow_newest(f, Normal, false), Some(n1));
        assert_eq!(q.flow_newest(f, Normal, true), None);
        assert!(q.flow_newest(f, Critical, false).is_some());
        assert_eq!(q.len(), 3);
    }
}
