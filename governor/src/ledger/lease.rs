//! Lease identifiers: unguessable, and never valid in another process.
//!
//! An id is the process epoch (64 random bits drawn at start) followed by a
//! 128-bit key, as 48 lowercase hex digits. The key's top 32 bits name the
//! dependency's slot in the ledger (see [`Slots`](super::slots)), so a
//! release goes straight to its dependency; its other 96 bits come from a
//! CSPRNG. The epoch makes an id from before a restart fail to parse as one
//! of ours, so a stale id can never free a slot that a new process handed to
//! someone else, and the 96 random bits make a stale id of a slot that a new
//! dependency took over find nothing there.
//!
//! An id is a bearer credential: whoever has it can release or renew the
//! lease. Logs, spans, metrics and `Debug` output carry only its
//! [`LeaseHandle`], a 32-bit keyed hash (SipHash-1-3 with a per-process random
//! key): enough to tell leases apart in one process's telemetry, useless for
//! finding the id, and not even comparable across processes.

use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::OnceLock;

use rand::Rng;

/// The part of a lease id after the epoch: the dependency's slot in its top
/// 32 bits, 96 random ones below. The key of a dependency's lease map.
pub(crate) type LeaseKey = u128;

/// Bits of a key below its slot.
const SLOT_SHIFT: u32 = 96;

/// Hashes lease keys by folding their 128 bits into 64. The random bits come
/// from a CSPRNG, so they are already uniform, and callers cannot choose keys
/// that enter a map (only ones that are looked up, which costs them a probe,
/// never a collision chain): SipHash here would spend a fifth of an acquire +
/// release on hashing for nothing.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LeaseKeyHasher(u64);

impl std::hash::Hasher for LeaseKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u128(&mut self, key: u128) {
        self.0 = (key as u64) ^ ((key >> 64) as u64);
    }

    /// Only `u128` keys are hashed with it; anything else still hashes
    /// (FNV-1a), so a future key type cannot silently collapse to one bucket.
    fn write(&mut self, bytes: &[u8]) {
        let mut hash = self.0 ^ 0xcbf2_9ce4_8422_2325;
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

pub(crate) type LeaseKeyHash = std::hash::BuildHasherDefault<LeaseKeyHasher>;

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
    /// A fresh id of a lease of the dependency in `slot`.
    pub(crate) fn random(epoch: u64, slot: u32) -> LeaseId {
        let random: u128 = rand::rng().random();
        LeaseId {
            epoch,
            key: (u128::from(slot) << SLOT_SHIFT) | (random >> (128 - SLOT_SHIFT)),
        }
    }

    /// The slot of the dependency it was granted by (an id from a caller may
    /// name any slot: whatever is there must still find the key).
    pub(crate) fn slot(&self) -> u32 {
        (self.key >> SLOT_SHIFT) as u32
    }

    /// Parses an id; `None` for anything that is not 48 hex digits (either
    /// case). By hand, without a branch per digit: every release and renewal
    /// parses one, and it was among the Session path's costliest functions
    /// of ours (`from_str_radix` first, then a digit-by-digit `match`).
    pub fn parse(text: &str) -> Option<LeaseId> {
        let bytes: &[u8; LEASE_ID_LEN] = text.as_bytes().try_into().ok()?;
        let (epoch, hi, lo) = (
            hex_u64(&bytes[..EPOCH_HEX])?,
            hex_u64(&bytes[EPOCH_HEX..EPOCH_HEX + 16])?,
            hex_u64(&bytes[EPOCH_HEX + 16..])?,
        );
        Some(LeaseId {
            epoch,
            key: u128::from(hi) << 64 | u128::from(lo),
        })
    }

    /// The id as its 48 lowercase hex digits.
    fn hex(&self) -> [u8; LEASE_ID_LEN] {
        let mut out = [0u8; LEASE_ID_LEN];
        let words = [self.epoch, (self.key >> 64) as u64, self.key as u64];
        for (chunk, word) in out.chunks_exact_mut(16).zip(words) {
            for (i, digit) in chunk.iter_mut().enumerate() {
                *digit = DIGITS[(word >> (60 - 4 * i)) as usize & 0xf];
            }
        }
        out
    }
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The value of each byte as a hex digit; 0x80 for a byte that is not one.
const NIBBLES: [u8; 256] = {
    let mut table = [0x80u8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Sixteen hex digits as a number, or `None` if any is not a hex digit.
fn hex_u64(digits: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    let mut bad = 0u8;
    for &byte in digits {
        let nibble = NIBBLES[usize::from(byte)];
        bad |= nibble;
        value = value << 4 | u64::from(nibble & 0xf);
    }
    (bad & 0x80 == 0).then_some(value)
}

impl fmt::Display for LeaseId {
    /// By hand: the formatting machinery (padding, two integers, a string
    /// grown as it goes) was a few percent of a Session pair.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for LeaseId {
    /// Only the handle: a full id (or any part of it) in a log line would
    /// be a bearer credential, or a piece of one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({})", self.handle())
    }
}

impl LeaseId {
    /// The lease's non-secret name in telemetry.
    pub fn handle(&self) -> LeaseHandle {
        LeaseHandle::of_key(self.epoch, self.key)
    }
}

/// A short non-secret name of a lease for telemetry: the first 32 bits of a
/// keyed hash of its id, shown as 8 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseHandle(u32);

impl LeaseHandle {
    pub(crate) fn of_key(epoch: u64, key: LeaseKey) -> LeaseHandle {
        // RandomState draws its SipHash key from the OS; one per process.
        static KEY: OnceLock<RandomState> = OnceLock::new();
        let mut hasher = KEY.get_or_init(RandomState::new).build_hasher();
        hasher.write_u64(epoch);
        hasher.write_u128(key);
        LeaseHandle((hasher.finish() >> 32) as u32)
    }
}

impl fmt::Display for LeaseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseHandle({self})")
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
    fn displays_as_48_lowercase_hex_digits() {
        for id in [
            LeaseId::random(new_epoch(), 7),
            LeaseId { epoch: 1, key: 0 },
            LeaseId {
                epoch: u64::MAX,
                key: u128::MAX,
            },
            LeaseId {
                epoch: 0x0123_4567_89ab_cdef,
                key: 0xfedc_ba98_7654_3210_0f1e_2d3c_4b5a_6978,
            },
        ] {
            assert_eq!(id.to_string(), format!("{:016x}{:032x}", id.epoch, id.key));
        }
    }

    #[test]
    fn round_trips_and_rejects_malformed_ids() {
        let id = LeaseId::random(new_epoch(), 7);
        let text = id.to_string();
        assert_eq!(text.len(), LEASE_ID_LEN);
        assert_eq!(id.slot(), 7);
        assert_eq!(LeaseId::random(id.epoch, u32::MAX).slot(), u32::MAX);
        assert_eq!(LeaseId::parse(&text), Some(id));
        assert_eq!(LeaseId::parse(""), None);
        assert_eq!(LeaseId::parse(&text[1..]), None);
        assert_eq!(LeaseId::parse(&format!("{}g", &text[1..])), None);
        assert_eq!(LeaseId::parse(&format!("+{}", &text[1..])), None);
        assert_ne!(LeaseId::random(id.epoch, 7), id);
        assert_eq!(LeaseId::parse(&text.to_uppercase()), Some(id));
        assert_eq!(LeaseId::parse(&format!("{}é", &text[2..])), None);
    }

    proptest::proptest! {
        /// The hand-written parser agrees with the standard library's on any
        /// 48 characters.
        #[test]
        fn parse_agrees_with_from_str_radix(
            text in proptest::prop_oneof!["[0-9a-fA-F]{48}", "[0-9a-fA-F+g-]{48}"],
        ) {
            let expected = text.bytes().all(|b| b.is_ascii_hexdigit()).then(|| LeaseId {
                epoch: u64::from_str_radix(&text[..EPOCH_HEX], 16).unwrap(),
                key: u128::from_str_radix(&text[EPOCH_HEX..], 16).unwrap(),
            });
            proptest::prop_assert_eq!(LeaseId::parse(&text), expected);
        }
    }

    #[test]
    fn debug_and_handle_show_no_part_of_the_id() {
        let id = LeaseId::random(new_epoch(), 0);
        let text = id.to_string();
        let handle = id.handle().to_string();
        assert_eq!(handle.len(), 8);
        assert!(handle.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(id.handle(), LeaseId::parse(&text).unwrap().handle());
        assert_ne!(id.handle(), LeaseId::random(id.epoch, 0).handle());
        let debug = format!("{id:?}");
        assert_eq!(debug, format!("LeaseId({handle})"));
        // No 8-digit window of the id appears in what is shown.
        for start in 0..=text.len() - 8 {
            assert!(
                !debug.contains(&text[start..start + 8]),
                "{debug} vs {text}"
            );
        }
    }
}
