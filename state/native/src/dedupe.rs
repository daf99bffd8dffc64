//! Dedupe memory: the last `capacity` message ids, as 128-bit hashes, evicted oldest first.
//!
//! An id is remembered as its SipHash-1-3 (128-bit output) under a fixed key, so the same id
//! gives the same hash on every run and machine: snapshots restore anywhere and replays are
//! deterministic. Two different ids share a hash with a probability of about n² / 2¹²⁹.

use std::collections::HashSet;
use std::fmt;

use siphasher::sip128::SipHasher13;

/// The fixed SipHash key: changing it forgets every remembered id (and needs a new snapshot format).
const KEY: &[u8; 16] = b"nudgeflow-dedupe";
/// First byte of [`Dedupe::to_bytes`]; the 16-byte little-endian hashes follow, oldest first.
pub const FORMAT: u8 = 1;
const HASH_BYTES: usize = 16;

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
    /// The same hashes, for lookups (std's randomly keyed hasher: crafted ids cannot flood it).
    members: HashSet<u128>,
    /// What `members` holds once the ring is full: more means its table grew to make room for
    /// the markers removals leave, so it is rebuilt at this size instead.
    full_members: usize,
}

impl Dedupe {
    /// An empty memory of `capacity` hashes (at least 1); it allocates as it fills.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a dedupe memory holds at least one id");
        Self {
            capacity,
            ring: Vec::new(),
            oldest: 0,
            members: HashSet::new(),
            full_members: 0,
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
        if self.members.contains(&hash) {
            return true;
        }
        if self.ring.len() < self.capacity {
            if self.ring.len() == self.ring.capacity() {
                // double, but never past capacity: a full memory holds no spare slots
                let more = self.ring.len().max(16).min(self.capacity - self.ring.len());
                self.ring.reserve_exact(more);
            }
            self.ring.push(hash);
            self.members.insert(hash);
            if self.ring.len() == self.capacity {
                self.full_members = self.members.capacity();
            }
        } else {
            let forgotten = std::mem::replace(&mut self.ring[self.oldest], hash);
            self.members.remove(&forgotten);
            self.oldest = (self.oldest + 1) % self.capacity;
            self.members.insert(hash);
            if self.members.capacity() > self.full_members {
                self.members.shrink_to(self.capacity);
            }
        }
        false
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
        assert_eq!(memory.members.len(), 1000);
    }

    #[test]
    fn the_lookup_set_does_not_grow_under_churn() {
        let mut memory = Dedupe::new(1000);
        for id in ids(0..1000) {
            memory.seen_or_add(&id);
        }
        let full = memory.members.capacity();
        for id in ids(1000..400_000) {
            memory.seen_or_add(&id);
        }
        assert!(
            memory.members.capacity() <= full,
            "{} > {full}",
            memory.members.capacity()
        );
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
