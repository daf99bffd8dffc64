//! Names interned to dense ids, in the order they were first seen: the recommender's products and
//! categories, the bookkeeping's rules, offers and segments.

use std::hash::Hasher;

pub type Id = u32;

/// A fast hash of short names (product ids, rule names), eight bytes at a step: a name is looked
/// up for every line of every order, where SipHash cost more than the lookup's own memory reads.
/// Nothing iterates a [`Table`] by hash, so the hash changes no output.
#[derive(Debug, Clone, Copy, Default)]
pub struct NameHasher(u64);

const MULTIPLIER: u64 = 0xf135_7aea_2e62_a9c5;

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        // the table takes its buckets from the low bits and its tags from the top ones
        let mixed = self.0.wrapping_mul(MULTIPLIER);
        mixed ^ (mixed >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            self.add(word);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }
}

impl NameHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(MULTIPLIER);
    }
}

/// Names and their ids: an open-addressed table of [`Slot`]s, probed linearly and at most half
/// full. A name of up to [`SHORT`] bytes is compared in its slot, so that a lookup reads one place
/// in memory, and a batch of lookups ([`Table::prefetch`]) can start those reads together: a
/// table of many products is far bigger than the cache.
#[derive(Debug, Clone)]
pub struct Table<S> {
    names: Vec<S>,
    slots: Vec<Slot>,
}

/// Names up to this long are kept in their slot too.
const SHORT: usize = 15;

/// A name's place in a [`Table`]: the high half of its hash and its id + 1 (0: empty), and a
/// short name's bytes followed by its length + 1 (0: a longer name, compared where it is kept).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct Slot {
    key: u64,
    short: [u8; SHORT + 1],
}

impl Slot {
    fn new(name: &str, hash: u64, id: usize) -> Self {
        let mut short = [0u8; SHORT + 1];
        if name.len() <= SHORT {
            short[..name.len()].copy_from_slice(name.as_bytes());
            short[SHORT] = name.len() as u8 + 1;
        }
        Self {
            key: (hash >> 32) << 32 | (id as u64 + 1),
            short,
        }
    }

    fn id(&self) -> usize {
        (self.key as u32 as usize).wrapping_sub(1)
    }

    /// Whether the slot holds `name` (`None`: a long name with the same hash tag, to compare).
    fn holds(&self, name: &str, tag: u64) -> Option<bool> {
        if self.key >> 32 != tag {
            return Some(false);
        }
        match self.short[SHORT] {
            0 => (name.len() <= SHORT).then_some(false),
            length => Some(
                usize::from(length - 1) == name.len()
                    && &self.short[..name.len()] == name.as_bytes(),
            ),
        }
    }
}

/// Names kept as long as their table.
pub type Names = Table<Box<str>>;

impl<S> Default for Table<S> {
    fn default() -> Self {
        Self {
            names: Vec::new(),
            slots: Vec::new(),
        }
    }
}

/// How a [`Table`] keeps a name.
pub trait Stored: std::ops::Deref<Target = str> {
    fn store(name: &str) -> Self;
}

impl Stored for Box<str> {
    fn store(name: &str) -> Self {
        name.into()
    }
}

/// Kept for the life of the process.
impl Stored for &'static str {
    fn store(name: &str) -> Self {
        Box::leak(name.into())
    }
}

/// A key drawn once per process, so that names chosen to collide (product ids come from events)
/// cannot be worked out in advance. Nothing depends on where a name lands: ids follow the order
/// names arrive in, and no table is walked or saved by its slots.
fn process_key() -> u64 {
    static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(0x6e75_6467_6566_6c6fu64) | 1
    })
}

fn hash_of(name: &str) -> u64 {
    let mut hasher = NameHasher(process_key());
    hasher.write(name.as_bytes());
    hasher.finish()
}

/// Ask for the cache line at `address` to be read, without waiting for it.
#[inline(always)]
pub fn prefetch<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads nothing and faults on no address
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

impl<S: Stored> Table<S> {
    /// The slot of `name` (hashed to `hash`): its id, or the empty slot where it would go.
    fn find(&self, name: &str, hash: u64) -> Result<Id, usize> {
        let mask = self.slots.len() - 1;
        let tag = hash >> 32;
        let mut index = hash as usize & mask;
        loop {
            let slot = &self.slots[index];
            if slot.key == 0 {
                return Err(index);
            }
            let holds = slot
                .holds(name, tag)
                .unwrap_or_else(|| *self.names[slot.id()] == *name);
            if holds {
                return Ok(slot.id() as Id);
            }
            index = (index + 1) & mask;
        }
    }

    /// The id of `name` if it was interned.
    pub fn get(&self, name: &str) -> Option<Id> {
        if self.slots.is_empty() {
            return None;
        }
        self.find(name, hash_of(name)).ok()
    }

    /// Start reading what looking `names` up will read (their slots, then the long names there),
    /// so that the lookups that follow find it in the cache instead of waiting for each in turn.
    pub fn prefetch<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) {
        if self.slots.is_empty() {
            return;
        }
        let mask = self.slots.len() - 1;
        for name in names.clone() {
            prefetch(&self.slots[hash_of(name) as usize & mask]);
        }
        for name in names.filter(|name| name.len() > SHORT) {
            let hash = hash_of(name);
            let slot = &self.slots[hash as usize & mask];
            if slot.key != 0 && slot.holds(name, hash >> 32).is_none() {
                prefetch(self.names[slot.id()].as_ptr());
            }
        }
    }

    pub fn name(&self, id: Id) -> &str {
        &self.names[id as usize]
    }

    /// The name of `id` as the table keeps it.
    pub fn stored(&self, id: Id) -> &S {
        &self.names[id as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The id of `name`, interned if new.
    pub fn intern(&mut self, name: &str) -> Id {
        self.interned(name).0
    }

    /// The id of `name`, and whether it is new.
    pub fn interned(&mut self, name: &str) -> (Id, bool) {
        if 2 * (self.names.len() + 1) > self.slots.len() {
            self.grow();
        }
        let hash = hash_of(name);
        match self.find(name, hash) {
            Ok(id) => (id, false),
            Err(index) => {
                let id = Id::try_from(self.names.len())
                    .ok()
                    .filter(|id| *id < Id::MAX)
                    .expect("fewer than 2^32 - 1 names");
                self.names.push(S::store(name));
                self.slots[index] = Slot::new(name, hash, id as usize);
                (id, true)
            }
        }
    }

    /// Twice the slots (at least 16), every name placed again.
    fn grow(&mut self) {
        let size = (2 * self.slots.len()).max(16);
        self.slots = vec![Slot::default(); size];
        for (id, name) in self.names.iter().enumerate() {
            let hash = hash_of(name);
            let Err(index) = self.find(name, hash) else {
                unreachable!("a name is interned once");
            };
            self.slots[index] = Slot::new(name, hash, id);
        }
    }

    /// Ids ordered by name (code point order: Rust compares UTF-8 bytes, which agrees).
    pub fn by_name(&self, mut ids: Vec<Id>) -> Vec<Id> {
        ids.sort_unstable_by(|a, b| self.name(*a).cmp(self.name(*b)));
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_first_ids_as_the_table_grows() {
        let mut names = Names::default();
        assert_eq!(names.get("p-0"), None);
        for n in 0..10_000 {
            assert_eq!(names.interned(&format!("p-{n}")), (n, true));
        }
        names.prefetch(["p-7", "p-99999", ""].into_iter());
        for n in (0..10_000).rev() {
            let name = format!("p-{n}");
            assert_eq!(names.interned(&name), (n, false));
            assert_eq!(names.get(&name), Some(n));
            assert_eq!(names.name(n), name);
        }
        assert_eq!(names.get("p-10000"), None);
        assert_eq!(names.intern(""), 10_000);
        assert_eq!(names.len(), 10_001);
        // names kept in their slot and beyond it, and names that differ only past it
        let long = "a product id longer than a slot holds";
        for (n, name) in ["123456789012345", "1234567890123456", long, &long[..36]]
            .iter()
            .enumerate()
        {
            assert_eq!(names.interned(name), (10_001 + n as Id, true));
        }
        for (n, name) in ["123456789012345", "1234567890123456", long, &long[..36]]
            .iter()
            .enumerate()
        {
            assert_eq!(names.get(name), Some(10_001 + n as Id));
        }
        assert_eq!(names.get("12345678901234"), None);
    }
}
