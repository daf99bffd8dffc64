//! Names interned to dense ids, in the order they were first seen: the recommender's products and
//! categories, the bookkeeping's rules, offers and segments.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub type Id = u32;

/// A map keyed by names, hashed by [`NameHasher`].
pub type NameMap<K, V> = HashMap<K, V, BuildHasherDefault<NameHasher>>;

/// A fast hash of short names (product ids, rule names), eight bytes at a step: a name is looked
/// up for every line of every order, where SipHash cost more than the lookup's own memory reads.
/// Nothing iterates a [`NameMap`], so the hash changes no output.
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

#[derive(Debug, Clone, Default)]
pub struct Names {
    names: Vec<Box<str>>,
    ids: NameMap<Box<str>, Id>,
}

impl Names {
    /// The id of `name` if it was interned.
    pub fn get(&self, name: &str) -> Option<Id> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: Id) -> &str {
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
        if let Some(&id) = self.ids.get(name) {
            return (id, false);
        }
        let id = Id::try_from(self.names.len()).expect("fewer than 2^32 names");
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        (id, true)
    }

    /// Ids ordered by name (code point order: Rust compares UTF-8 bytes, which agrees).
    pub fn by_name(&self, mut ids: Vec<Id>) -> Vec<Id> {
        ids.sort_unstable_by(|a, b| self.name(*a).cmp(self.name(*b)));
        ids
    }
}
