//! Which dependency a lease id belongs to: a slot number in the id, and a
//! table from slots to dependencies.
//!
//! Each dependency takes a slot when it is created and gives it back when it
//! is dropped; the slot goes into the top bits of every lease id it grants
//! (see [`lease`](super::lease)). A release or renewal reads the table once
//! and then works under that dependency's lock alone, where its leases are:
//! no index of every lease, and no second lock, on the path of every permit.
//!
//! A slot may be reused by a later dependency. An old id that names it then
//! looks for its random key in the new dependency's leases and finds nothing,
//! as it would have anyway. A forged id that names a live slot costs that
//! dependency one short hold of its lock, as a real release does: no more
//! than a caller that acquires and releases in a loop, which the connection
//! and call caps bound. A slot is not secret (it counts dependencies, it
//! guesses nothing), but as a part of every id it is not shown either.
//!
//! The table's lock is a leaf: nothing else is locked while it is held, and
//! no `Arc<Dependency>` is dropped under it (dropping the last one frees the
//! slot, which takes the lock).

use std::sync::{Arc, RwLock, Weak};

use super::dependency::Dependency;

#[derive(Debug, Default)]
pub(crate) struct Slots {
    table: RwLock<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// By slot; a dead `Weak` for a free one.
    entries: Vec<Weak<Dependency>>,
    /// Free slots, reused before the table grows: it stays as long as the
    /// most dependencies that ever lived at once (bounded by
    /// `max_dependencies` plus the configured ones).
    free: Vec<u32>,
}

impl Slots {
    /// Takes a slot for `dependency`.
    pub(crate) fn take(&self, dependency: Weak<Dependency>) -> u32 {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        match table.free.pop() {
            Some(slot) => {
                table.entries[slot as usize] = dependency;
                slot
            }
            None => {
                let slot = u32::try_from(table.entries.len())
                    .expect("fewer than 2^32 dependencies live at once");
                table.entries.push(dependency);
                slot
            }
        }
    }

    /// Gives `slot` back; called when its dependency is dropped.
    pub(crate) fn give_back(&self, slot: u32) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = table.entries.get_mut(slot as usize) {
            *entry = Weak::new();
            table.free.push(slot);
        }
    }

    /// The live dependency in `slot`, if any.
    pub(crate) fn get(&self, slot: u32) -> Option<Arc<Dependency>> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.entries.get(slot as usize)?.upgrade()
    }

    /// Every live dependency (evicted ones that are still referenced too).
    pub(crate) fn all(&self) -> Vec<Arc<Dependency>> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.entries.iter().filter_map(Weak::upgrade).collect()
    }
}
