//! Erasure at the identity stage: every anonymous id an identity shard links to an erased customer,
//! forgotten at once (see `operators.engine.IdentityStage`).
//!
//! The links are kept by the hash of the anonymous id ([`crate::links`]), so the shard cannot list a
//! customer's anonymous ids by name: it scans its links for the customer (erasures are rare; a shard
//! holds at most its capacity of links) and hands back the hashes it removed, which the stage keeps
//! with the erasure time so that late events of those ids are recognised.

use crate::links::Links;

/// Remove every link whose value `is_customer` accepts; return the removed keys, least recently used first.
pub fn unlink_all<V>(links: &mut Links<V>, is_customer: impl Fn(&V) -> bool) -> Vec<[u64; 2]> {
    let keys: Vec<[u64; 2]> = links
        .entries()
        .filter(|(_, value)| is_customer(value))
        .map(|(key, _)| key)
        .collect();
    for key in &keys {
        links.remove(*key);
    }
    keys
}

/// A 128-bit key as one number (as [`crate::python::Links`] gives its entries).
pub fn as_u128([low, high]: [u64; 2]) -> u128 {
    (u128::from(high) << 64) | u128::from(low)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::anonymous_key;

    #[test]
    fn every_link_of_the_customer_goes_and_no_other() {
        let mut links = Links::new(10);
        for (anonymous, user) in [("a1", "u1"), ("a2", "u2"), ("a3", "u1"), ("a4", "u3")] {
            links.insert(anonymous_key(anonymous), user);
        }
        let removed = unlink_all(&mut links, |user| *user == "u1");
        assert_eq!(removed, vec![anonymous_key("a1"), anonymous_key("a3")]);
        assert_eq!(links.len(), 2);
        assert_eq!(links.peek(anonymous_key("a1")), None);
        assert_eq!(links.peek(anonymous_key("a2")), Some(&"u2"));
        assert!(unlink_all(&mut links, |user| *user == "u1").is_empty(), "nothing left to remove");
    }

    #[test]
    fn a_key_reads_as_the_number_the_entries_give() {
        let key = anonymous_key("a1");
        assert_eq!(as_u128(key) as u64, key[0]);
        assert_eq!((as_u128(key) >> 64) as u64, key[1]);
    }
}

#[cfg(feature = "python")]
pub mod python {
    use pyo3::prelude::*;

    use super::{as_u128, unlink_all};
    use crate::links::anonymous_key;
    use crate::python::Links;

    /// Forget every anonymous id ``links`` links to ``user_id``; return their hashes (as
    /// :meth:`Links.entries` gives them).
    #[pyfunction]
    pub fn unlink_customer(links: &Bound<'_, Links>, user_id: &str) -> Vec<u128> {
        let mut links = links.borrow_mut();
        let py = links.py();
        let removed = unlink_all(&mut links.inner, |linked| {
            linked.bind(py).to_str().is_ok_and(|linked| linked == user_id)
        });
        removed.into_iter().map(as_u128).collect()
    }

    /// The hash an anonymous id is kept by in :class:`Links` (as :meth:`Links.entries` gives it).
    #[pyfunction]
    pub fn anonymous_hash(anonymous_id: &str) -> u128 {
        as_u128(anonymous_key(anonymous_id))
    }
}
