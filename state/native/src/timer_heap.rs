//! A shard's timer heap: entries `(due time, customer id)`, the earliest first, ties by customer
//! id (see `operators/timers.py` for how the engine keeps one entry per customer). An entry is
//! 16 bytes (the time and a reference to the id the customer already holds), where a Python
//! tuple in a list took 64.

/// A binary min-heap of `(due, key)`: by due time, then by `less` on the keys (only called when
/// two due times are equal). Entries equal in both pop in any order: they are the same entry.
#[derive(Debug, Clone)]
pub struct DueHeap<K> {
    entries: Vec<(i64, K)>,
}

impl<K> Default for DueHeap<K> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<K> DueHeap<K> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries the heap has room for without growing.
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// The due time of the first entry (`None`: no entry).
    pub fn first(&self) -> Option<i64> {
        self.entries.first().map(|entry| entry.0)
    }

    pub fn entries(&self) -> &[(i64, K)] {
        &self.entries
    }

    pub fn push(&mut self, due: i64, key: K, less: impl Fn(&K, &K) -> bool) {
        self.entries.push((due, key));
        self.sift_up(self.entries.len() - 1, &less);
    }

    /// Take the first entry out, if it is due by `upto`.
    pub fn pop_due(&mut self, upto: i64, less: impl Fn(&K, &K) -> bool) -> Option<(i64, K)> {
        if self.first()? > upto {
            return None;
        }
        let first = self.entries.swap_remove(0);
        if !self.entries.is_empty() {
            self.sift_down(0, &less);
        }
        Some(first)
    }

    /// These entries instead of the heap's.
    pub fn replace(&mut self, entries: Vec<(i64, K)>, less: impl Fn(&K, &K) -> bool) {
        self.entries = entries;
        for at in (0..self.entries.len() / 2).rev() {
            self.sift_down(at, &less);
        }
    }

    fn before(a: &(i64, K), b: &(i64, K), less: &impl Fn(&K, &K) -> bool) -> bool {
        a.0 < b.0 || (a.0 == b.0 && less(&a.1, &b.1))
    }

    fn sift_up(&mut self, mut at: usize, less: &impl Fn(&K, &K) -> bool) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if !Self::before(&self.entries[at], &self.entries[parent], less) {
                break;
            }
            self.entries.swap(at, parent);
            at = parent;
        }
    }

    fn sift_down(&mut self, mut at: usize, less: &impl Fn(&K, &K) -> bool) {
        let len = self.entries.len();
        loop {
            let left = 2 * at + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child =
                if right < len && Self::before(&self.entries[right], &self.entries[left], less) {
                    right
                } else {
                    left
                };
            if !Self::before(&self.entries[child], &self.entries[at], less) {
                break;
            }
            self.entries.swap(at, child);
            at = child;
        }
    }
}

/// The Python class `state._native.TimerHeap` over [`DueHeap`], keyed by customer id strings.
#[cfg(feature = "python")]
pub mod python {
    use pyo3::prelude::*;
    use pyo3::types::PyString;

    use super::DueHeap;

    /// Python's `a < b` of two strings: code point order, which is the order of their UTF-8 bytes.
    fn id_less(py: Python<'_>, a: &Py<PyString>, b: &Py<PyString>) -> bool {
        let (a, b) = (a.bind(py), b.bind(py));
        match (a.to_str(), b.to_str()) {
            (Ok(a), Ok(b)) => a < b,
            _ => a.lt(b).unwrap_or(false), // a lone surrogate: as Python compares
        }
    }

    /// A shard's timer heap (``state/native/src/timer_heap.rs``): entries ``(due_ms, customer_id)``,
    /// the earliest first, ties by customer id, 16 bytes each.
    #[pyclass(module = "state._native", name = "TimerHeap")]
    #[derive(Default)]
    pub struct TimerHeap {
        heap: DueHeap<Py<PyString>>,
    }

    #[pymethods]
    impl TimerHeap {
        #[new]
        fn new() -> Self {
            Self::default()
        }

        fn __len__(&self) -> usize {
            self.heap.len()
        }

        /// The due time of the first entry (``None``: no entry).
        fn first(&self) -> Option<i64> {
            self.heap.first()
        }

        fn push(&mut self, py: Python<'_>, due_ms: i64, customer_id: Py<PyString>) {
            self.heap
                .push(due_ms, customer_id, |a, b| id_less(py, a, b));
        }

        /// Take the first entry out if it is due by ``upto_ms`` (``None``: none is).
        fn pop_due(&mut self, py: Python<'_>, upto_ms: i64) -> Option<(i64, Py<PyString>)> {
            self.heap.pop_due(upto_ms, |a, b| id_less(py, a, b))
        }

        /// These entries instead of the heap's.
        fn replace(&mut self, py: Python<'_>, entries: Vec<(i64, Py<PyString>)>) {
            self.heap.replace(entries, |a, b| id_less(py, a, b));
        }

        /// The entries, in heap order.
        fn entries(&self, py: Python<'_>) -> Vec<(i64, Py<PyString>)> {
            let entries = self.heap.entries().iter();
            entries.map(|(due, id)| (*due, id.clone_ref(py))).collect()
        }

        /// Bytes held: the object and its entries' room (the ids are the customers').
        fn __sizeof__(&self) -> usize {
            std::mem::size_of::<Self>() + 16 + self.heap.capacity() * 16
        }

        fn __repr__(&self) -> String {
            format!("TimerHeap(len={})", self.heap.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn less(a: &&str, b: &&str) -> bool {
        a < b
    }

    #[test]
    fn entries_pop_by_due_time_then_key_and_only_when_due() {
        let mut heap = DueHeap::default();
        for (due, key) in [
            (50, "b"),
            (10, "z"),
            (50, "a"),
            (30, "c"),
            (10, "y"),
            (70, "d"),
        ] {
            heap.push(due, key, less);
        }
        assert_eq!(heap.first(), Some(10));
        assert_eq!(heap.pop_due(5, less), None);
        let mut popped = Vec::new();
        while let Some(entry) = heap.pop_due(50, less) {
            popped.push(entry);
        }
        assert_eq!(
            popped,
            [(10, "y"), (10, "z"), (30, "c"), (50, "a"), (50, "b")]
        );
        assert_eq!((heap.len(), heap.first()), (1, Some(70)));
    }

    #[test]
    fn replaced_entries_are_a_heap_again() {
        let mut heap = DueHeap::default();
        heap.push(1, "old", less);
        heap.replace(vec![(9, "a"), (3, "b"), (3, "a"), (7, "c"), (1, "d")], less);
        let popped: Vec<_> = std::iter::from_fn(|| heap.pop_due(i64::MAX, less)).collect();
        assert_eq!(popped, [(1, "d"), (3, "a"), (3, "b"), (7, "c"), (9, "a")]);
        assert!(heap.is_empty());
    }
}
