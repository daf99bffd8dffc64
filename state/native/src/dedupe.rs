//! Dedupe memory: the last `capacity` message ids, as 128-bit hashes, evicted oldest first.
//!
//! An id is remembered as its SipHash-1-3 (128-bit output) under a fixed key, so the same id
//! gives the same hash on every run and machine: snapshots restore anywhere and replays are
//! deterministic. Two different ids share a hash with a probability of about n² / 2¹²⁹.
//!
//! The hashes sit in a ring (16 bytes each); lookups go through an open-addressing table of
//! 4-byte ring positions (linear probing, at most 3/4 full), about 22 bytes per id in all where a
//! set of the hashes beside the ring took 47.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

use siphasher::sip128::SipHasher13;

/// The fixed SipHash key: changing it forgets every remembered id (and needs a new snapshot format).
const KEY: &[u8; 16] = b"nudgeflow-dedupe";
/// First byte of [`Dedupe::to_bytes`]; the 16-byte little-endian hashes follow, oldest first.
pub const FORMAT: u8 = 1;
const HASH_BYTES: usize = 16;
/// A free slot of the lookup table (ring positions are below `u32::MAX`).
const EMPTY: u32 = u32::MAX;

/// The 128-bit hash a message id is remembered by.
pub fn message_hash(message_id: &str) -> u128 {
    SipHasher13::new_with_key(KEY)
        .hash(message_id.as_bytes())
        .as_u128()
}

/// A snapshot [`Dedupe::from_bytes`] cannot read.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapshotError {
    Format(Option<u8>),
    Length(usize),
    Repeated(usize),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Format(Some(found)) => write!(
                f,
                "dedupe snapshot format {found} is not supported (expected {FORMAT})"
            ),
            Self::Format(None) => write!(f, "dedupe snapshot is empty (expected format {FORMAT})"),
            Self::Length(length) => write!(
                f,
                "dedupe snapshot is cut: {length} bytes of hashes, not a multiple of 16"
            ),
            Self::Repeated(index) => write!(f, "dedupe snapshot holds hash {index} twice"),
        }
    }
}

/// A bounded set of message hashes: adding one to a full memory forgets the oldest.
#[derive(Debug, Clone)]
pub struct Dedupe {
    capacity: usize,
    /// The hashes in a ring: grows to `capacity`, then `oldest` is the next slot overwritten.
    ring: Vec<u128>,
    oldest: usize,
    /// Ring positions by hash, for lookups: a power-of-two table, probed from [`Dedupe::home`].
    table: Vec<u32>,
    /// Random per memory: where a hash starts probing depends on it, so ids crafted against the
    /// fixed SipHash key cannot pile up on one slot.
    mix: u64,
}

impl Dedupe {
    /// An empty memory of `capacity` hashes (at least 1); it allocates as it fills.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a dedupe memory holds at least one id");
        assert!(
            capacity < EMPTY as usize,
            "a dedupe memory holds fewer than 2³² ids"
        );
        Self {
            capacity,
            ring: Vec::new(),
            oldest: 0,
            table: Vec::new(),
            mix: RandomState::new().build_hasher().finish() | 1,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Whether `message_id` is remembered; remembers it if not.
    pub fn seen_or_add(&mut self, message_id: &str) -> bool {
        self.seen_or_add_hash(message_hash(message_id))
    }

    /// Whether `hash` is remembered; remembers it if not, forgetting the oldest when full.
    pub fn seen_or_add_hash(&mut self, hash: u128) -> bool {
        if self.find(hash).is_some() {
            return true;
        }
        if self.ring.len() < self.capacity {
            if self.ring.len() == self.ring.capacity() {
                // double, but never past capacity: a full memory holds no spare slots
                let more = self.ring.len().max(16).min(self.capacity - self.ring.len());
                self.ring.reserve_exact(more);
            }
            self.ring.push(hash);
            if self.ring.len() * 4 > self.table.len() * 3 {
                self.rebuild_table();
            } else {
                self.place(self.ring.len() - 1);
            }
        } else {
            let forgotten = self
                .find(self.ring[self.oldest])
                .expect("a remembered hash is in the table");
            self.vacate(forgotten);
            self.ring[self.oldest] = hash;
            self.place(self.oldest);
            self.oldest = (self.oldest + 1) % self.capacity;
        }
        false
    }

    /// The table slot where probing for `hash` starts (multiply-shift by the random `mix`).
    fn home(&self, hash: u128) -> usize {
        let folded = (hash as u64) ^ ((hash >> 64) as u64);
        let bits = self.table.len().trailing_zeros();
        (folded.wrapping_mul(self.mix) >> (64 - bits)) as usize
    }

    /// The table slot holding `hash`'s ring position, if it is remembered.
    fn find(&self, hash: u128) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let mask = self.table.len() - 1;
        let mut slot = self.home(hash);
        loop {
            match self.table[slot] {
                EMPTY => return None,
                position if self.ring[position as usize] == hash => return Some(slot),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    /// Enter ring position `position` in the table.
    fn place(&mut self, position: usize) {
        let mask = self.table.len() - 1;
        let mut slot = self.home(self.ring[position]);
        while self.table[slot] != EMPTY {
            slot = (slot + 1) & mask;
        }
        self.table[slot] = position as u32;
    }

    /// Empty table slot `slot`, moving later entries of its probe run back so that every entry
    /// stays reachable from its home slot (backward-shift deletion: no markers are left).
    fn vacate(&mut self, mut slot: usize) {
        let mask = self.table.len() - 1;
        let mut next = (slot + 1) & mask;
        loop {
            let position = self.table[next];
            if position == EMPTY {
                break;
            }
            let home = self.home(self.ring[position as usize]);
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(slot) & mask {
                self.table[slot] = position;
                slot = next;
            }
            next = (next + 1) & mask;
        }
        self.table[slot] = EMPTY;
    }

    /// A table twice the size (at least 16 slots, at most 3/4 full once the ring is), every ring
    /// position entered again.
    fn rebuild_table(&mut self) {
        let size = (self.table.len() * 2).max(16);
        let wanted = ((self.capacity * 4 + 2) / 3).next_power_of_two();
        self.table = vec![EMPTY; size.min(wanted.max(16))];
        for position in 0..self.ring.len() {
            self.place(position);
        }
    }

    /// The remembered hashes, oldest first.
    pub fn hashes(&self) -> impl Iterator<Item = u128> + '_ {
        self.ring[self.oldest..]
            .iter()
            .chain(&self.ring[..self.oldest])
            .copied()
    }

    /// [`FORMAT`], then every hash (16 bytes, little-endian), oldest first.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + HASH_BYTES * self.len());
        out.push(FORMAT);
        for hash in self.hashes() {
            out.extend_from_slice(&hash.to_le_bytes());
        }
        out
    }

    /// A memory of `capacity` holding the hashes of `data` (from [`Dedupe::to_bytes`]): the
    /// newest `capacity` of them if it holds more.
    pub fn from_bytes(capacity: usize, data: &[u8]) -> Result<Self, SnapshotError> {
        match data.first() {
            Some(&FORMAT) => {}
            found => return Err(SnapshotError::Format(found.copied())),
        }
        let body = &data[1..];
        if body.len() % HASH_BYTES != 0 {
            return Err(SnapshotError::Length(body.len()));
        }
        let count = body.len() / HASH_BYTES;
        let mut memory = Self::new(capacity);
        for (index, chunk) in body
            .chunks_exact(HASH_BYTES)
            .enumerate()
            .skip(count.saturating_sub(capacity))
        {
            let hash = u128::from_le_bytes(chunk.try_into().expect("16-byte chunk"));
            if memory.seen_or_add_hash(hash) {
                return Err(SnapshotError::Repeated(index));
            }
        }
        Ok(memory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("message-{i}")).collect()
    }

    #[test]
    fn hash_is_siphash13_128_under_the_fixed_key() {
        // Computed by an independent implementation: a change here forgets every id in existing snapshots.
        assert_eq!(message_hash(""), 0xfa80f169398fc44f9f4a85bc7bbe06d6);
        assert_eq!(message_hash("abc"), 0xc0b381e8cbc058c27774630fa24619ee);
        let id = "ajs-6f7a1c0e-5d2b-4f4e-9d5a-0c1b2e3f4a5b"; // longer than a block: the whole id counts
        assert_eq!(message_hash(id), 0x9827ce7075efe0b9b8503def792f496e);
    }

    #[test]
    fn a_new_id_is_added_and_a_repeated_one_is_seen() {
        let mut memory = Dedupe::new(3);
        assert!(!memory.seen_or_add("a"));
        assert!(memory.seen_or_add("a"));
        assert!(!memory.seen_or_add("b"));
        assert_eq!(memory.len(), 2);
    }

    #[test]
    fn a_full_memory_forgets_the_oldest_id_first() {
        let mut memory = Dedupe::new(3);
        for id in ids(0..4) {
            assert!(!memory.seen_or_add(&id));
        }
        assert_eq!(memory.len(), 3);
        assert!(
            !memory.seen_or_add("message-0"),
            "the oldest id was forgotten"
        );
        // "message-0" came back as the newest, pushing out "message-1"
        assert!(!memory.seen_or_add("message-1"));
        assert!(memory.seen_or_add("message-3"));
    }

    #[test]
    fn a_seen_id_keeps_its_place_in_the_eviction_order() {
        let mut memory = Dedupe::new(2);
        memory.seen_or_add("a");
        memory.seen_or_add("b");
        assert!(memory.seen_or_add("a")); // not refreshed: still the oldest
        memory.seen_or_add("c");
        assert!(!memory.seen_or_add("a"));
    }

    #[test]
    fn hashes_come_oldest_first_after_the_ring_wraps() {
        let mut memory = Dedupe::new(3);
        for id in ids(0..5) {
            memory.seen_or_add(&id);
        }
        let expected: Vec<u128> = ids(2..5).iter().map(|id| message_hash(id)).collect();
        assert_eq!(memory.hashes().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn a_full_memory_holds_no_spare_slots() {
        let mut memory = Dedupe::new(1000);
        for id in ids(0..5000) {
            memory.seen_or_add(&id);
        }
        assert_eq!(memory.ring.capacity(), 1000);
        assert_eq!(memory.table.iter().filter(|&&p| p != EMPTY).count(), 1000);
        assert_eq!(
            memory.table.len(),
            2048,
            "the smallest power of two at most 3/4 full"
        );
    }

    #[test]
    fn the_lookup_table_does_not_grow_under_churn_and_finds_every_id() {
        let mut memory = Dedupe::new(1000);
        for id in ids(0..1000) {
            memory.seen_or_add(&id);
        }
        let full = memory.table.len();
        for id in ids(1000..400_000) {
            assert!(!memory.seen_or_add(&id));
        }
        assert_eq!(memory.table.len(), full);
        assert!(
            ids(399_000..400_000)
                .iter()
                .all(|id| memory.seen_or_add(id)),
            "the newest are all found"
        );
        assert!(
            !ids(0..398_999)
                .iter()
                .any(|id| memory.find(message_hash(id)).is_some()),
            "the rest forgotten"
        );
    }

    #[test]
    fn colliding_homes_are_found_and_vacated_in_any_order() {
        let mut memory = Dedupe::new(64);
        memory.mix = 1 << 63; // every hash starts probing at one of two slots
        let hashes: Vec<u128> = (1..=40u128).collect();
        for &hash in &hashes {
            assert!(!memory.seen_or_add_hash(hash));
        }
        for &hash in &hashes {
            assert!(memory.seen_or_add_hash(hash));
        }
        for hash in 41..=200u128 {
            assert!(!memory.seen_or_add_hash(hash), "{hash}");
        }
        assert!((137..=200u128).all(|hash| memory.find(hash).is_some()));
        assert!((1..=136u128).all(|hash| memory.find(hash).is_none()));
    }

    #[test]
    fn bytes_round_trip_keeps_ids_and_their_order() {
        let mut memory = Dedupe::new(4);
        for id in ids(0..6) {
            memory.seen_or_add(&id);
        }
        let data = memory.to_bytes();
        assert_eq!(data.len(), 1 + 16 * 4);
        let mut restored = Dedupe::from_bytes(4, &data).unwrap();
        assert_eq!(
            restored.hashes().collect::<Vec<_>>(),
            memory.hashes().collect::<Vec<_>>()
        );
        assert!(restored.seen_or_add("message-5"));
        assert!(!restored.seen_or_add("message-6"));
        assert!(
            !restored.seen_or_add("message-2"),
            "message-2 was the oldest, forgotten first"
        );
    }

    #[test]
    fn restoring_into_a_smaller_memory_keeps_the_newest() {
        let mut memory = Dedupe::new(5);
        for id in ids(0..5) {
            memory.seen_or_add(&id);
        }
        let mut restored = Dedupe::from_bytes(2, &memory.to_bytes()).unwrap();
        assert_eq!(restored.len(), 2);
        assert!(restored.seen_or_add("message-4"));
        assert!(restored.seen_or_add("message-3"));
        assert!(!restored.seen_or_add("message-2"));
    }

    #[test]
    fn unreadable_snapshots_are_refused() {
        assert_eq!(
            Dedupe::from_bytes(4, b"").unwrap_err(),
            SnapshotError::Format(None)
        );
        assert_eq!(
            Dedupe::from_bytes(4, &[2]).unwrap_err(),
            SnapshotError::Format(Some(2))
        );
        assert_eq!(
            Dedupe::from_bytes(4, &[FORMAT, 0, 0]).unwrap_err(),
            SnapshotError::Length(2)
        );
        let mut twice = vec![FORMAT];
        twice.extend_from_slice(&[7; 32]);
        assert_eq!(
            Dedupe::from_bytes(4, &twice).unwrap_err(),
            SnapshotError::Repeated(1)
        );
    }
}
