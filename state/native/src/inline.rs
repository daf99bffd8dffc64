//! Values held inside the record that holds them, with no allocation of their own: a short text
//! ([`Text`]: most message, session, cart and order ids) and a list of at most `N` items
//! ([`Few`]: affinities, a session's products, traits). A customer's features are then a few
//! allocations rather than a dozen, and copying them (every event takes a checkpoint) copies
//! bytes rather than allocating.

use std::fmt;
use std::ops::{Deref, DerefMut};

/// The longest text held inline (the record's other form, a pointer and a length, is as big).
const INLINE_TEXT: usize = 22;

/// A text: up to [`INLINE_TEXT`] bytes inline, longer ones on the heap (24 bytes either way).
#[derive(Clone, PartialEq, Eq)]
pub enum Text {
    Inline { len: u8, bytes: [u8; INLINE_TEXT] },
    Heap(Box<str>),
}

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            // only whole UTF-8 texts are put inline (see `From<&str>`)
            Text::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Text::Heap(text) => text,
        }
    }

    /// Bytes held on the heap (none for an inline text).
    pub fn heap_size(&self) -> usize {
        match self {
            Text::Inline { .. } => 0,
            Text::Heap(text) => text.len(),
        }
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::Inline {
            len: 0,
            bytes: [0; INLINE_TEXT],
        }
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        if text.len() > INLINE_TEXT {
            return Text::Heap(text.into());
        }
        let mut bytes = [0; INLINE_TEXT];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Text::Inline {
            len: text.len() as u8,
            bytes,
        }
    }
}

impl From<Box<str>> for Text {
    fn from(text: Box<str>) -> Self {
        if text.len() > INLINE_TEXT {
            return Text::Heap(text);
        }
        Text::from(&*text)
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// At most `N` items, in order, held inline.
#[derive(Clone, Copy)]
pub struct Few<T: Copy + Default, const N: usize> {
    len: u8,
    items: [T; N],
}

impl<T: Copy + Default, const N: usize> Few<T, N> {
    /// `items`, if there are at most `N` of them.
    pub fn from_slice(items: &[T]) -> Option<Self> {
        let mut few = Self::default();
        for item in items {
            if !few.push(*item) {
                return None;
            }
        }
        Some(few)
    }

    /// Add `item` at the end; `false` (and nothing added) when all `N` are taken.
    pub fn push(&mut self, item: T) -> bool {
        let len = usize::from(self.len);
        if len == N {
            return false;
        }
        self.items[len] = item;
        self.len += 1;
        true
    }

    /// Take the item at `index` out, the later ones moving up.
    pub fn remove(&mut self, index: usize) {
        let len = usize::from(self.len);
        self.items.copy_within(index + 1..len, index);
        self.len -= 1;
    }
}

impl<T: Copy + Default, const N: usize> Default for Few<T, N> {
    fn default() -> Self {
        Self {
            len: 0,
            items: [T::default(); N],
        }
    }
}

impl<T: Copy + Default, const N: usize> Deref for Few<T, N> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items[..usize::from(self.len)]
    }
}

impl<T: Copy + Default, const N: usize> DerefMut for Few<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.items[..usize::from(self.len)]
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq for Few<T, N> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Copy + Default + fmt::Debug, const N: usize> fmt::Debug for Few<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_reads_back_as_written_inline_or_not() {
        for text in [
            "",
            "m-1-40938-0-0-0",
            "0123456789012345678901",
            "a longer text, as a UUID is",
        ] {
            let held = Text::from(text);
            assert_eq!(&*held, text);
            assert_eq!(held.heap_size() > 0, text.len() > INLINE_TEXT);
            assert_eq!(Text::from(Box::<str>::from(text)), held);
        }
        assert_eq!(std::mem::size_of::<Text>(), 24);
        assert_eq!(&*Text::from("é".repeat(11).as_str()), "é".repeat(11));
    }

    #[test]
    fn few_keeps_order_and_refuses_past_its_room() {
        let mut few: Few<u32, 3> = Few::default();
        assert!(few.push(1) && few.push(2) && few.push(3));
        assert!(!few.push(4));
        assert_eq!(&*few, &[1, 2, 3]);
        few.remove(0);
        assert_eq!(&*few, &[2, 3]);
        assert_eq!(Few::<u32, 3>::from_slice(&[2, 3]), Some(few));
        assert_eq!(Few::<u32, 1>::from_slice(&[2, 3]), None);
    }
}
