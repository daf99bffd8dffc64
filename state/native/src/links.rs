//! Identity links: anonymous id -> user id, the least recently used forgotten first when full.
//!
//! An anonymous id is kept as its 128-bit hash ([`crate::dedupe::message_hash`]: fixed key, the
//! same on every run and machine), not as text. Entries live in a slab of nodes chained from the
//! least to the most recently used, found through a map from hash to slot: an entry costs about
//! 60 bytes here, and its user id. The value type is generic so that the core is tested without
//! Python (the module keeps Python strings).

use std::collections::HashMap;

use crate::dedupe::message_hash;

const NONE: u32 = u32::MAX;

/// The hash an anonymous id is kept by, as two words (a `u128` would pad the map's buckets to 32 bytes).
pub fn anonymous_key(anonymous_id: &str) -> [u64; 2] {
    let hash = message_hash(anonymous_id);
    [hash as u64, (hash >> 64) as u64]
}

#[derive(Debug, Clone)]
struct Node<V> {
    key: [u64; 2],
    value: Option<V>, // taken when the entry is removed: a forgotten link holds nothing
    older: u32,
    newer: u32,
}

/// A bounded map in use order: reading or writing an entry makes it the most recently used.
#[derive(Debug, Clone)]
pub struct Links<V> {
    capacity: usize,
    slots: HashMap<[u64; 2], u32>,
    nodes: Vec<Node<V>>,
    free: Vec<u32>,
    oldest: u32,
    newest: u32,
}

impl<V> Links<V> {
    /// An empty map of at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "identity links hold at least one entry");
        Self {
            capacity,
            slots: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            oldest: NONE,
            newest: NONE,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The value of `key` without changing the use order.
    pub fn peek(&self, key: [u64; 2]) -> Option<&V> {
        let slot = *self.slots.get(&key)?;
        self.nodes[slot as usize].value.as_ref()
    }

    /// The value of `key`, made the most recently used.
    pub fn get(&mut self, key: [u64; 2]) -> Option<&V> {
        let slot = *self.slots.get(&key)?;
        self.unchain(slot);
        self.chain_newest(slot);
        self.nodes[slot as usize].value.as_ref()
    }

    /// Set `key` to `value`, made the most recently used; forget the least recently used entry
    /// when that makes one too many. Returns the value replaced.
    pub fn insert(&mut self, key: [u64; 2], value: V) -> Option<V> {
        if let Some(&slot) = self.slots.get(&key) {
            self.unchain(slot);
            self.chain_newest(slot);
            return self.nodes[slot as usize].value.replace(value);
        }
        let node = Node {
            key,
            value: Some(value),
            older: NONE,
            newer: NONE,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = node;
                slot
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.slots.insert(key, slot);
        self.chain_newest(slot);
        if self.slots.len() > self.capacity {
            let oldest = self.nodes[self.oldest as usize].key;
            self.remove(oldest);
        }
        None
    }

    /// Forget `key`; whether it was there.
    pub fn remove(&mut self, key: [u64; 2]) -> bool {
        match self.slots.remove(&key) {
            Some(slot) => {
                self.unchain(slot);
                self.nodes[slot as usize].value = None;
                self.free.push(slot);
                true
            }
            None => false,
        }
    }

    /// The entries, least recently used first.
    pub fn entries(&self) -> impl Iterator<Item = ([u64; 2], &V)> + '_ {
        let mut slot = self.oldest;
        std::iter::from_fn(move || {
            if slot == NONE {
                return None;
            }
            let node = &self.nodes[slot as usize];
            slot = node.newer;
            node.value.as_ref().map(|value| (node.key, value))
        })
    }

    fn unchain(&mut self, slot: u32) {
        let (older, newer) = {
            let node = &self.nodes[slot as usize];
            (node.older, node.newer)
        };
        match older {
            NONE => self.oldest = newer,
            older => self.nodes[older as usize].newer = newer,
        }
        match newer {
            NONE => self.newest = older,
            newer => self.nodes[newer as usize].older = older,
        }
    }

    fn chain_newest(&mut self, slot: u32) {
        let newest = self.newest;
        {
            let node = &mut self.nodes[slot as usize];
            node.older = newest;
            node.newer = NONE;
        }
        match newest {
            NONE => self.oldest = slot,
            newest => self.nodes[newest as usize].newer = slot,
        }
        self.newest = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> [u64; 2] {
        anonymous_key(id)
    }

    fn order(links: &Links<&'static str>) -> Vec<&'static str> {
        links.entries().map(|(_, value)| *value).collect()
    }

    #[test]
    fn an_entry_is_set_read_replaced_and_removed() {
        let mut links = Links::new(3);
        assert_eq!(links.insert(key("a1"), "u1"), None);
        assert_eq!(links.get(key("a1")), Some(&"u1"));
        assert_eq!(links.insert(key("a1"), "u2"), Some("u1"));
        assert_eq!(links.peek(key("a1")), Some(&"u2"));
        assert!(links.remove(key("a1")));
        assert!(!links.remove(key("a1")));
        assert_eq!(links.get(key("a1")), None);
        assert!(links.is_empty());
    }

    #[test]
    fn reading_or_writing_makes_an_entry_the_most_recent_and_the_oldest_goes_first() {
        let mut links = Links::new(3);
        links.insert(key("a"), "a");
        links.insert(key("b"), "b");
        links.insert(key("c"), "c");
        links.get(key("a"));
        assert_eq!(order(&links), ["b", "c", "a"]);
        links.peek(key("b"));
        links.insert(key("b"), "b");
        assert_eq!(order(&links), ["c", "a", "b"]);
        links.insert(key("d"), "d");
        assert_eq!(
            order(&links),
            ["a", "b", "d"],
            "c, least recently used, is forgotten"
        );
        assert_eq!(links.len(), 3);
    }

    #[test]
    fn slots_of_removed_entries_are_reused() {
        let mut links = Links::new(2);
        for i in 0..1001 {
            let id = format!("a{i}");
            links.insert(key(&id), "u");
            if i % 3 == 0 {
                links.remove(key(&id));
            }
        }
        assert!(links.nodes.len() <= 3, "{} nodes", links.nodes.len());
        assert_eq!(links.len(), 2);
    }

    #[test]
    fn removing_the_oldest_newest_and_middle_keeps_the_chain() {
        let mut links = Links::new(5);
        for id in ["a", "b", "c", "d", "e"] {
            links.insert(key(id), id);
        }
        links.remove(key("a"));
        links.remove(key("e"));
        links.remove(key("c"));
        assert_eq!(order(&links), ["b", "d"]);
        links.insert(key("f"), "f");
        assert_eq!(order(&links), ["b", "d", "f"]);
    }
}
