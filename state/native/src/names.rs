//! Names interned to dense ids, in the order they were first seen: the recommender's products and
//! categories, the bookkeeping's rules, offers and segments.

use std::collections::HashMap;

pub type Id = u32;

#[derive(Debug, Clone, Default)]
pub struct Names {
    names: Vec<Box<str>>,
    ids: HashMap<Box<str>, Id>,
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
