//! Lease identifiers: unguessable, and never valid in another process.
//!
//! An id is the process epoch (64 random bits drawn at start) followed by 128
//! random bits from a CSPRNG, as 48 lowercase hex digits. The epoch makes an id
//! from before a restart fail to parse as one of ours, so a stale id can never
//! free a slot that a new process handed to someone else.

use std::fmt;

use rand::Rng;

/// The random part of a lease id; the key of the lease index.
pub(crate) type LeaseKey = u128;

const EPOCH_HEX: usize = 16;
const KEY_HEX: usize = 32;
pub const LEASE_ID_LEN: usize = EPOCH_HEX + KEY_HEX;

/// A lease id as handed to callers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId {
    pub(crate) epoch: u64,
    pub(crate) key: LeaseKey,
}

impl LeaseId {
    pub(crate) fn random(epoch: u64) -> LeaseId {
        LeaseId {
            epoch,
            key: rand::rng().random(),
        }
    }

    /// Parses an id; `None` for anything that is not 48 hex digits.
    pub fn parse(text: &str) -> Option<LeaseId> {
        if text.len() != LEASE_ID_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let epoch = u64::from_str_radix(&text[..EPOCH_HEX], 16).ok()?;
        let key = u128::from_str_radix(&text[EPOCH_HEX..], 16).ok()?;
        Some(LeaseId { epoch, key })
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:032x}", self.epoch, self.key)
    }
}

impl fmt::Debug for LeaseId {
    /// Only a prefix: a full id in a log line is a bearer credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({:08x}…)", (self.key >> 96) as u32)
    }
}

/// A process epoch: random, and never zero so that a zeroed id is never ours.
pub(crate) fn new_epoch() -> u64 {
    rand::rng().random_range(1..=u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed_ids() {
        let id = LeaseId::random(new_epoch());
        let text = id.to_string();
        assert_eq!(text.len(), LEASE_ID_LEN);
        assert_eq!(LeaseId::parse(&text), Some(id));
        assert_eq!(LeaseId::parse(""), None);
        assert_eq!(LeaseId::parse(&text[1..]), None);
        assert_eq!(LeaseId::parse(&format!("{}g", &text[1..])), None);
        assert_eq!(LeaseId::parse(&format!("+{}", &text[1..])), None);
        assert_ne!(LeaseId::random(id.epoch), id);
    }
}
