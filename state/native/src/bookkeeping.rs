//! A customer's bookkeeping as one compact, immutable record: its pending timers, the cause each
//! rule last fired for, its decisions awaiting their outcome and its offer choices awaiting a
//! reward (see `state/customer.py`). It replaced a tuple per timer with a Python string per
//! message id, a tuple of fired causes, packed outcome bytes and a tuple of open offers: about a
//! third of their bytes.
//!
//! A record is a byte string, empty when it holds nothing. Layout: the number of timers, fired
//! rules and open offers (varints); each timer (due time, rule, cause, the number of ids that
//! caused it, those ids), in firing order (due time, then rule name); each fired rule (rule, cause)
//! in the order first fired; each offer (decided at, offer, segment); then the outcomes' bytes as
//! the models packed them, their all-zero 8-byte words left out and whole numbers held short
//! ([`pack_words`]). Times are
//! little-endian `i64`. Rules, offers and segments (bounded vocabularies) are ids into a table of
//! [`Names`] the process shares; a text (cause, message id) is a varint `h` then its bytes: `h = 1`
//! a canonical UUID (lowercase, 36 characters) as its 16 bytes, else `h = 2 * length` and its UTF-8
//! bytes. Records made of equal values are equal bytes. [`Book::to_bytes`] writes the same layout
//! with names spelt out instead of ids, for snapshots.

use std::fmt;

pub use crate::names::{Id, Names};

/// The first byte of [`Book::to_bytes`]; bump it when the layout changes.
pub const FORMAT: u8 = 2;
const UUID: u64 = 1;

/// Bytes that [`Book::from_bytes`] cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable(pub String);

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "customer bookkeeping unreadable: {}", self.0)
    }
}

// --- texts ---------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The 16 bytes of a UUID in canonical text form (lowercase hex, dashes at 8, 13, 18, 23).
fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let text = text.as_bytes();
    if text.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibble = 0;
    for (at, &c) in text.iter().enumerate() {
        if matches!(at, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let value = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        out[nibble / 2] |= if nibble % 2 == 0 { value << 4 } else { value };
        nibble += 1;
    }
    Some(out)
}

fn uuid_text(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (at, byte) in bytes.iter().enumerate() {
        if matches!(at, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 15)] as char);
    }
    out
}

/// `text` encoded as a record keeps it (see the module's documentation).
pub fn put_text(out: &mut Vec<u8>, text: &str) {
    match uuid_bytes(text) {
        Some(uuid) => {
            put_varint(out, UUID);
            out.extend_from_slice(&uuid);
        }
        None => {
            put_varint(out, (text.len() as u64) << 1);
            out.extend_from_slice(text.as_bytes());
        }
    }
}

/// `text` encoded (equal texts, equal encodings: they are compared as bytes).
pub fn encoded(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    put_text(&mut out, text);
    out
}

/// The text of an encoding made by [`put_text`].
pub fn text_of(encoding: &[u8]) -> String {
    let mut cursor = Cursor::new(encoding);
    let header = cursor.varint().expect("a text this module wrote");
    let body = &encoding[cursor.at..];
    if header == UUID {
        uuid_text(body)
    } else {
        String::from_utf8(body.to_vec()).expect("a text this module wrote")
    }
}

/// `raw` with its all-zero 8-byte words left out and whole numbers held short: its length (a
/// varint), then per group of up to 8 words a byte marking the words that are not zero, a byte
/// marking those of them that are a whole number from 1 to 2³² as a float64 (kept as that number, a
/// varint: the outcomes' features are mostly counts), and those words, then the bytes after the
/// last whole word. Exact (a word is left out only if every bit is 0: `-0.0` stays; held short only
/// if the number gives back the same bits).
pub fn pack_words(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32 + 2);
    if raw.is_empty() {
        return out;
    }
    put_varint(&mut out, raw.len() as u64);
    let words = raw.len() / 8;
    for group in raw[..words * 8].chunks(64) {
        let mark = out.len();
        out.extend_from_slice(&[0, 0]);
        for (at, word) in group.chunks(8).enumerate() {
            let word: [u8; 8] = word.try_into().expect("8 bytes");
            if word == [0; 8] {
                continue;
            }
            out[mark] |= 1 << at;
            match whole_number(word) {
                Some(number) => {
                    out[mark + 1] |= 1 << at;
                    put_varint(&mut out, number);
                }
                None => out.extend_from_slice(&word),
            }
        }
    }
    out.extend_from_slice(&raw[words * 8..]);
    out
}

/// The largest whole number [`pack_words`] holds short.
const MOST_WHOLE: u64 = 1 << 32;

/// The number a float64 word is, if a whole one from 1 to [`MOST_WHOLE`].
fn whole_number(word: [u8; 8]) -> Option<u64> {
    let value = f64::from_le_bytes(word);
    let whole = (1.0..=MOST_WHOLE as f64).contains(&value) && value.fract() == 0.0;
    whole.then_some(value as u64)
}

/// The bytes [`pack_words`] packed.
fn unpack_words(packed: &[u8]) -> Result<Vec<u8>, Unreadable> {
    if packed.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Cursor::new(packed);
    let n = r.varint()?;
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n <= packed.len() * 64)
        .ok_or_else(|| Unreadable(format!("outcomes of {n} bytes")))?;
    let mut out = Vec::with_capacity(n);
    while out.len() + 8 <= n {
        let words = ((n - out.len()) / 8).min(8);
        let (marks, whole) = match r.take(2)? {
            [marks, whole] => (*marks, *whole),
            _ => unreachable!("two bytes taken"),
        };
        if u32::from(marks) >> words != 0 || whole & !marks != 0 {
            return Err(Unreadable(format!(
                "outcome words marked beyond their end or not kept (byte {})",
                r.at
            )));
        }
        for at in 0..words {
            if marks & (1 << at) == 0 {
                out.extend_from_slice(&[0; 8]);
            } else if whole & (1 << at) == 0 {
                out.extend_from_slice(r.take(8)?);
            } else {
                let number = r.varint()?;
                if !(1..=MOST_WHOLE).contains(&number) {
                    return Err(Unreadable(format!("outcome number {number} out of range")));
                }
                out.extend_from_slice(&(number as f64).to_le_bytes());
            }
        }
    }
    out.extend_from_slice(r.take(n - out.len())?);
    if r.at != packed.len() {
        return Err(Unreadable(format!(
            "outcomes go on after their end (byte {})",
            r.at
        )));
    }
    Ok(out)
}

struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
    checked: bool, // texts checked (bytes from a snapshot), or trusted (a record this module wrote)
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            at: 0,
            checked: true,
        }
    }

    fn trusted(data: &'a [u8]) -> Self {
        Self {
            data,
            at: 0,
            checked: false,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Unreadable> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.data.len());
        let end = end.ok_or_else(|| Unreadable(format!("it ends too early (byte {})", self.at)))?;
        let taken = &self.data[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn varint(&mut self) -> Result<u64, Unreadable> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7F) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(Unreadable(format!("a number too long at byte {}", self.at)))
    }

    fn count(&mut self) -> Result<usize, Unreadable> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len())
            .ok_or_else(|| Unreadable(format!("a count of {n}")))
    }

    fn i64(&mut self) -> Result<i64, Unreadable> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn id(&mut self) -> Result<Id, Unreadable> {
        let id = self.varint()?;
        Id::try_from(id).map_err(|_| Unreadable(format!("an id of {id}")))
    }

    /// A text's encoding (checked: UTF-8, and a UUID only where the canonical form was).
    fn text(&mut self) -> Result<&'a [u8], Unreadable> {
        let start = self.at;
        let header = self.varint()?;
        if header == UUID {
            self.take(16)?;
        } else if !self.checked {
            self.take(usize::try_from(header >> 1).unwrap_or(usize::MAX))?;
        } else if header % 2 == 1 {
            return Err(Unreadable(format!("a text of kind {header}")));
        } else {
            let n = usize::try_from(header >> 1).unwrap_or(usize::MAX);
            let body = self.take(n)?;
            let text = std::str::from_utf8(body)
                .map_err(|_| Unreadable("a text that is not UTF-8".into()))?;
            if uuid_bytes(text).is_some() {
                return Err(Unreadable("a UUID spelt out".into()));
            }
        }
        Ok(&self.data[start..self.at])
    }

    /// A name spelt out (snapshots): its length and UTF-8 bytes.
    fn name(&mut self) -> Result<&'a str, Unreadable> {
        let n = self.count()?;
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| Unreadable("a name that is not UTF-8".into()))
    }
}

// --- the record ----------------------------------------------------------------------------

/// A pending timer: when it is due, what it fires once for (`cause`) and the ids of the events
/// that armed it (texts encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer<'a> {
    pub due_ms: i64,
    pub rule: Id,
    pub cause: &'a [u8],
    pub caused_by: Vec<&'a [u8]>,
}

/// An offer choice awaiting its reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub decided_ms: i64,
    pub offer: Id,
    pub segment: Id,
}

/// A record read into its parts (texts borrowed from it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parts<'a> {
    pub timers: Vec<Timer<'a>>,
    pub fired: Vec<(Id, &'a [u8])>,
    pub offers: Vec<Offer>,
    pub outcomes: &'a [u8],
}

impl<'a> Parts<'a> {
    /// Read a record, its ids read by `id` (ids in memory, names in snapshots).
    fn read(
        mut r: Cursor<'a>,
        id: &mut impl FnMut(&mut Cursor<'a>) -> Result<Id, Unreadable>,
    ) -> Result<Self, Unreadable> {
        let mut parts = Parts::default();
        let data = r.data;
        if data.is_empty() {
            return Ok(parts);
        }
        let (timers, fired, offers) = (r.count()?, r.count()?, r.count()?);
        for _ in 0..timers {
            let (due_ms, rule, cause) = (r.i64()?, id(&mut r)?, r.text()?);
            let n = r.count()?;
            let caused_by = (0..n).map(|_| r.text()).collect::<Result<_, _>>()?;
            parts.timers.push(Timer {
                due_ms,
                rule,
                cause,
                caused_by,
            });
        }
        for _ in 0..fired {
            parts.fired.push((id(&mut r)?, r.text()?));
        }
        for _ in 0..offers {
            let (decided_ms, offer, segment) = (r.i64()?, id(&mut r)?, id(&mut r)?);
            parts.offers.push(Offer {
                decided_ms,
                offer,
                segment,
            });
        }
        parts.outcomes = &data[r.at..];
        Ok(parts)
    }

    /// Write a record, its ids written by `id`; nothing at all when it holds nothing.
    fn write(&self, out: &mut Vec<u8>, id: &mut impl FnMut(&mut Vec<u8>, Id)) {
        if self.timers.is_empty()
            && self.fired.is_empty()
            && self.offers.is_empty()
            && self.outcomes.is_empty()
        {
            return;
        }
        for n in [self.timers.len(), self.fired.len(), self.offers.len()] {
            put_varint(out, n as u64);
        }
        for timer in &self.timers {
            out.extend_from_slice(&timer.due_ms.to_le_bytes());
            id(out, timer.rule);
            out.extend_from_slice(timer.cause);
            put_varint(out, timer.caused_by.len() as u64);
            for text in &timer.caused_by {
                out.extend_from_slice(text);
            }
        }
        for (rule, cause) in &self.fired {
            id(out, *rule);
            out.extend_from_slice(cause);
        }
        for offer in &self.offers {
            out.extend_from_slice(&offer.decided_ms.to_le_bytes());
            id(out, offer.offer);
            id(out, offer.segment);
        }
        out.extend_from_slice(self.outcomes);
    }

    pub(crate) fn book(&self) -> Book {
        let mut out = Vec::new();
        self.write(&mut out, &mut |out, id| put_varint(out, u64::from(id)));
        Book(out.into_boxed_slice())
    }

    /// Put `timer` in firing order, replacing its rule's pending timer.
    pub(crate) fn put_timer(&mut self, timer: Timer<'a>, names: &Names) {
        self.timers.retain(|t| t.rule != timer.rule);
        let key = (timer.due_ms, names.name(timer.rule));
        let at = self
            .timers
            .partition_point(|t| (t.due_ms, names.name(t.rule)) <= key);
        self.timers.insert(at, timer);
    }

    /// Arm the timer of `rule` for `cause` at `due_ms`, caused by `message_id` (see [`Book::rearmed`]).
    pub(crate) fn rearm(
        &mut self,
        due_ms: i64,
        rule: Id,
        cause: &'a [u8],
        message_id: &'a [u8],
        most: usize,
        names: &Names,
    ) {
        let mut timer = Timer {
            due_ms,
            rule,
            cause,
            caused_by: vec![message_id],
        };
        if let Some(pending) = self
            .timers
            .iter()
            .find(|t| t.rule == rule && t.cause == cause)
        {
            let kept = pending.caused_by.len().min(most.saturating_sub(1));
            timer.due_ms = due_ms.max(pending.due_ms);
            timer.caused_by = pending.caused_by[pending.caused_by.len() - kept..].to_vec();
            timer.caused_by.push(message_id);
        }
        self.put_timer(timer, names);
    }
}

const WROTE: &str = "a record this module wrote";

/// A walk through a record written by this module: its timers' heads, then its fired rules.
struct Walk<'a> {
    r: Cursor<'a>,
    timers: usize,
    fired: usize,
}

impl<'a> Walk<'a> {
    /// The next timer's due time and rule, and where it starts (`None` after the last).
    fn next_timer(&mut self) -> Option<(i64, Id, usize)> {
        if self.timers == 0 {
            return None;
        }
        self.timers -= 1;
        let r = &mut self.r;
        let start = r.at;
        let (due_ms, rule) = (r.i64().expect(WROTE), r.id().expect(WROTE));
        r.text().expect(WROTE);
        for _ in 0..r.count().expect(WROTE) {
            r.text().expect(WROTE);
        }
        Some((due_ms, rule, start))
    }

    /// The next fired rule and its cause, past the timers (`None` after the last).
    fn next_fired(&mut self) -> Option<(Id, &'a [u8])> {
        while self.next_timer().is_some() {}
        if self.fired == 0 {
            return None;
        }
        self.fired -= 1;
        Some((self.r.id().expect(WROTE), self.r.text().expect(WROTE)))
    }
}

/// A customer's bookkeeping (see the module's documentation). Immutable: every change makes a
/// new record, so keeping a record keeps the state it had.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Book(Box<[u8]>);

impl Book {
    pub fn parts(&self) -> Parts<'_> {
        Parts::read(Cursor::trusted(&self.0), &mut |r| r.id()).expect(WROTE)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The record's own bytes (ids, not names).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The due time and rule of the first timer in firing order, read without the rest.
    pub fn first_timer(&self) -> Option<(i64, Id)> {
        self.walk()
            .next_timer()
            .map(|(due_ms, rule, _)| (due_ms, rule))
    }

    /// When the timer of `rule` is due (read without the rest).
    pub fn due(&self, rule: Id) -> Option<i64> {
        let mut walk = self.walk();
        std::iter::from_fn(|| walk.next_timer())
            .find(|t| t.1 == rule)
            .map(|t| t.0)
    }

    pub fn timer(&self, rule: Id) -> Option<Timer<'_>> {
        let mut walk = self.walk();
        let (_, _, start) = std::iter::from_fn(|| walk.next_timer()).find(|t| t.1 == rule)?;
        let mut r = Cursor::trusted(&self.0);
        r.at = start;
        let (due_ms, rule, cause, n) = (r.i64(), r.id(), r.text(), r.count());
        let (due_ms, rule, cause, n) = (due_ms.ok()?, rule.ok()?, cause.ok()?, n.ok()?);
        let caused_by = (0..n).map(|_| r.text()).collect::<Result<_, _>>().ok()?;
        Some(Timer {
            due_ms,
            rule,
            cause,
            caused_by,
        })
    }

    /// The rules whose timers are due by `upto_ms`, in firing order.
    pub fn due_rules(&self, upto_ms: i64) -> Vec<Id> {
        let mut walk = self.walk();
        std::iter::from_fn(|| walk.next_timer())
            .take_while(|t| t.0 <= upto_ms)
            .map(|t| t.1)
            .collect()
    }

    /// A walk through the record's timers and fired rules, reading no more than asked for.
    fn walk(&self) -> Walk<'_> {
        let mut r = Cursor::trusted(&self.0);
        if self.0.is_empty() {
            return Walk {
                r,
                timers: 0,
                fired: 0,
            };
        }
        let (timers, fired) = (r.count().expect(WROTE), r.count().expect(WROTE));
        r.count().expect(WROTE);
        Walk { r, timers, fired }
    }

    /// With `timer` armed, replacing its rule's pending one.
    pub fn with_timer(&self, timer: Timer<'_>, names: &Names) -> Book {
        let mut parts = self.parts();
        parts.put_timer(timer, names);
        parts.book()
    }

    /// With the timer of `rule` armed for `cause` at `due_ms`, caused by `message_id`: a pending
    /// timer with the same cause stays (at the later time) and keeps its last `most - 1` ids
    /// before this one; any other is replaced.
    pub fn rearmed(
        &self,
        due_ms: i64,
        rule: Id,
        cause: &[u8],
        message_id: &[u8],
        most: usize,
        names: &Names,
    ) -> Book {
        let mut parts = self.parts();
        parts.rearm(due_ms, rule, cause, message_id, most, names);
        parts.book()
    }

    /// Without the timer of `rule` (`None`: there is none).
    pub fn without_timer(&self, rule: Id) -> Option<Book> {
        let mut parts = self.parts();
        let at = parts.timers.iter().position(|t| t.rule == rule)?;
        parts.timers.remove(at);
        Some(parts.book())
    }

    pub fn fired_cause(&self, rule: Id) -> Option<&[u8]> {
        let mut walk = self.walk();
        std::iter::from_fn(|| walk.next_fired())
            .find(|(r, _)| *r == rule)
            .map(|(_, cause)| cause)
    }

    /// With `rule` noted as fired for `cause` (in its place if it fired before, else last).
    pub fn with_fired(&self, rule: Id, cause: &[u8]) -> Book {
        let mut parts = self.parts();
        match parts.fired.iter_mut().find(|(r, _)| *r == rule) {
            Some(fired) => fired.1 = cause,
            None => parts.fired.push((rule, cause)),
        }
        parts.book()
    }

    pub fn with_offers(&self, offers: Vec<Offer>) -> Book {
        let mut parts = self.parts();
        parts.offers = offers;
        parts.book()
    }

    /// The decisions awaiting their outcome, as the models packed them.
    pub fn outcomes(&self) -> Vec<u8> {
        unpack_words(self.parts().outcomes).expect(WROTE)
    }

    pub fn with_outcomes(&self, outcomes: &[u8]) -> Book {
        let packed = pack_words(outcomes);
        let mut parts = self.parts();
        parts.outcomes = &packed;
        parts.book()
    }

    /// With the timers and fired causes of `other` (a just-linked anonymous customer) of rules this
    /// one has none of; its offers and outcomes are the models' to fold.
    pub fn merged(&self, other: &Book, names: &Names) -> Book {
        let mut parts = self.parts();
        let theirs = other.parts();
        for timer in theirs.timers {
            if !parts.timers.iter().any(|t| t.rule == timer.rule) {
                parts.put_timer(timer, names);
            }
        }
        for (rule, cause) in theirs.fired {
            if !parts.fired.iter().any(|(r, _)| *r == rule) {
                parts.fired.push((rule, cause));
            }
        }
        parts.book()
    }

    /// The record as bytes, names spelt out (see [`Book::from_bytes`]).
    pub fn to_bytes(&self, names: &Names) -> Vec<u8> {
        let mut out = vec![FORMAT];
        self.parts().write(&mut out, &mut |out, id| {
            let name = names.name(id);
            put_varint(out, name.len() as u64);
            out.extend_from_slice(name.as_bytes());
        });
        out
    }

    /// A record written by [`Book::to_bytes`] (names interned into `names`).
    pub fn from_bytes(data: &[u8], names: &mut Names) -> Result<Book, Unreadable> {
        match data.first() {
            Some(&FORMAT) => {}
            Some(other) => {
                return Err(Unreadable(format!(
                    "format {other} is not supported (expected {FORMAT})"
                )))
            }
            None => return Err(Unreadable(format!("no bytes (expected format {FORMAT})"))),
        }
        let parts = Parts::read(
            Cursor::new(&data[1..]),
            &mut |r| Ok(names.intern(r.name()?)),
        )?;
        if pack_words(&unpack_words(parts.outcomes)?) != parts.outcomes {
            return Err(Unreadable(
                "outcomes not packed as this version packs them".into(),
            ));
        }
        Ok(parts.book())
    }
}

/// The Python class `state._native.Bookkeeping` over [`Book`], with the process's name table.
#[cfg(feature = "python")]
pub mod python {
    use std::sync::{Mutex, MutexGuard};

    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyInt, PyString, PyTuple};

    use super::{encoded, text_of, Book, Id, Names, Offer, Timer};

    /// The rule, offer and segment names of this process, with the Python string of each.
    #[derive(Default)]
    struct Table {
        names: Names,
        strings: Vec<Py<PyString>>,
    }

    /// Held only while no Python code can run.
    static TABLE: Mutex<Option<Table>> = Mutex::new(None);

    pub(crate) struct Locked(MutexGuard<'static, Option<Table>>);

    impl Locked {
        fn get(&mut self) -> &mut Table {
            self.0.get_or_insert_with(Table::default)
        }
        pub(crate) fn names(&mut self) -> &Names {
            &self.get().names
        }
        fn find(&mut self, name: &str) -> Option<Id> {
            self.get().names.get(name)
        }
        pub(crate) fn intern(&mut self, name: &Bound<'_, PyString>) -> PyResult<Id> {
            let text = name.to_str()?;
            let table = self.get();
            let id = table.names.intern(text);
            if table.strings.len() <= id as usize {
                table.strings.push(name.clone().unbind());
            }
            Ok(id)
        }
        fn string(&mut self, py: Python<'_>, id: Id) -> Py<PyString> {
            self.get().strings[id as usize].clone_ref(py)
        }
    }

    pub(crate) fn lock() -> Locked {
        Locked(
            TABLE
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn unreadable(err: super::Unreadable) -> PyErr {
        PyValueError::new_err(err.to_string())
    }

    /// A customer's bookkeeping (``state/native/src/bookkeeping.rs``): its pending timers, the cause
    /// each rule last fired for, its open decisions and offer choices, in one compact immutable
    /// record. Every change returns a new record.
    #[pyclass(module = "state._native", name = "Bookkeeping", frozen, eq)]
    #[derive(PartialEq)]
    pub struct Bookkeeping {
        inner: Book,
    }

    impl Bookkeeping {
        pub(crate) fn of(inner: Book) -> Self {
            Self { inner }
        }

        /// The record itself, for the other compiled parts that change it.
        pub(crate) fn book(&self) -> &Book {
            &self.inner
        }

        /// ``(due_ms, rule_id, cause, *caused_by)``.
        fn timer_tuple<'py>(
            py: Python<'py>,
            timer: &Timer<'_>,
            rule: Py<PyString>,
        ) -> PyResult<Bound<'py, PyTuple>> {
            let mut items: Vec<PyObject> = Vec::with_capacity(3 + timer.caused_by.len());
            items.push(timer.due_ms.into_pyobject(py)?.into_any().unbind());
            items.push(rule.into_any());
            items.push(PyString::new(py, &text_of(timer.cause)).into_any().unbind());
            for id in &timer.caused_by {
                items.push(PyString::new(py, &text_of(id)).into_any().unbind());
            }
            PyTuple::new(py, items)
        }
    }

    #[pymethods]
    impl Bookkeeping {
        /// An empty record.
        #[new]
        fn new() -> Self {
            Self::of(Book::default())
        }

        // --- timers --------------------------------------------------------------------------

        /// The due time of the first timer in firing order (``None``: no timer).
        #[getter]
        fn first_due(&self) -> Option<i64> {
            self.inner.first_timer().map(|(due_ms, _)| due_ms)
        }

        /// ``(due_ms, rule_id)`` of the first timer in firing order (``None``: no timer).
        fn first_timer(&self, py: Python<'_>) -> Option<(i64, Py<PyString>)> {
            let (due_ms, rule) = self.inner.first_timer()?;
            Some((due_ms, lock().string(py, rule)))
        }

        /// The due time of the timer of ``rule_id`` (``None``: none pending).
        fn due(&self, rule_id: &str) -> Option<i64> {
            let rule = lock().find(rule_id)?;
            self.inner.due(rule)
        }

        /// The rules whose timers are due by ``upto_ms``, in firing order.
        fn due_rules(&self, py: Python<'_>, upto_ms: i64) -> Vec<Py<PyString>> {
            let rules = self.inner.due_rules(upto_ms);
            if rules.is_empty() {
                return Vec::new();
            }
            let mut table = lock();
            rules
                .into_iter()
                .map(|rule| table.string(py, rule))
                .collect()
        }

        /// The pending timer of ``rule_id`` as ``(due_ms, rule_id, cause, *caused_by)`` (``None``: none).
        fn timer<'py>(
            &self,
            py: Python<'py>,
            rule_id: &str,
        ) -> PyResult<Option<Bound<'py, PyTuple>>> {
            let mut table = lock();
            let rule = match table.find(rule_id) {
                Some(rule) => rule,
                None => return Ok(None),
            };
            let timer = match self.inner.timer(rule) {
                Some(timer) => timer,
                None => return Ok(None),
            };
            let rule = table.string(py, rule);
            drop(table);
            Self::timer_tuple(py, &timer, rule).map(Some)
        }

        /// Every pending timer as :meth:`timer` gives it, in firing order.
        fn timers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
            let parts = self.inner.parts();
            let rules: Vec<Py<PyString>> = {
                let mut table = lock();
                parts
                    .timers
                    .iter()
                    .map(|timer| table.string(py, timer.rule))
                    .collect()
            };
            let timers = parts
                .timers
                .iter()
                .zip(rules)
                .map(|(timer, rule)| Self::timer_tuple(py, timer, rule))
                .collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(py, timers)
        }

        /// With the timer of ``rule_id`` armed at ``due_ms`` for ``cause``, caused by the message ids
        /// ``caused_by``, replacing any pending one.
        fn with_timer(
            &self,
            due_ms: i64,
            rule_id: &Bound<'_, PyString>,
            cause: &str,
            caused_by: Vec<Bound<'_, PyString>>,
        ) -> PyResult<Self> {
            let cause = encoded(cause);
            let ids = caused_by
                .iter()
                .map(|id| Ok(encoded(id.to_str()?)))
                .collect::<PyResult<Vec<_>>>()?;
            let mut table = lock();
            let rule = table.intern(rule_id)?;
            let timer = Timer {
                due_ms,
                rule,
                cause: &cause,
                caused_by: ids.iter().map(Vec::as_slice).collect(),
            };
            Ok(Self::of(self.inner.with_timer(timer, table.names())))
        }

        /// With the timer of ``rule_id`` armed at ``due_ms`` for ``cause``, caused by ``message_id``:
        /// a pending timer with the same cause stays (at the later time), its last ``most - 1`` ids
        /// before this one kept; any other is replaced.
        fn rearmed(
            &self,
            due_ms: i64,
            rule_id: &Bound<'_, PyString>,
            cause: &str,
            message_id: &str,
            most: usize,
        ) -> PyResult<Self> {
            let (cause, message_id) = (encoded(cause), encoded(message_id));
            let mut table = lock();
            let rule = table.intern(rule_id)?;
            Ok(Self::of(self.inner.rearmed(
                due_ms,
                rule,
                &cause,
                &message_id,
                most,
                table.names(),
            )))
        }

        /// Without the timer of ``rule_id`` (``None``: there is none).
        fn without_timer(&self, rule_id: &str) -> Option<Self> {
            let rule = lock().find(rule_id)?;
            self.inner.without_timer(rule).map(Self::of)
        }

        // --- rules fired ---------------------------------------------------------------------

        /// The cause ``rule_id`` last fired for (``None``: it never fired).
        fn fired_cause(&self, rule_id: &str) -> Option<String> {
            let rule = lock().find(rule_id)?;
            self.inner.fired_cause(rule).map(text_of)
        }

        /// With ``rule_id`` noted as fired for ``cause``.
        fn with_fired(&self, rule_id: &Bound<'_, PyString>, cause: &str) -> PyResult<Self> {
            let cause = encoded(cause);
            let rule = lock().intern(rule_id)?;
            Ok(Self::of(self.inner.with_fired(rule, &cause)))
        }

        /// ``(rule_id, cause, rule_id, cause, ...)`` in the order the rules first fired.
        fn fired<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
            let fired = self.inner.parts().fired;
            let rules: Vec<Py<PyString>> = {
                let mut table = lock();
                fired
                    .iter()
                    .map(|(rule, _)| table.string(py, *rule))
                    .collect()
            };
            let mut items: Vec<PyObject> = Vec::with_capacity(fired.len() * 2);
            for ((_, cause), rule) in fired.iter().zip(rules) {
                items.push(rule.into_any());
                items.push(PyString::new(py, &text_of(cause)).into_any().unbind());
            }
            PyTuple::new(py, items)
        }

        // --- open decisions and offers -------------------------------------------------------

        /// The decisions awaiting their outcome, as the models packed them.
        #[getter]
        fn outcomes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            PyBytes::new(py, &self.inner.outcomes())
        }

        /// With ``outcomes`` as the decisions awaiting their outcome.
        fn with_outcomes(&self, outcomes: &[u8]) -> Self {
            Self::of(self.inner.with_outcomes(outcomes))
        }

        /// The offer choices awaiting a reward: ``(decided_ms, offer_id, segment, ...)``, oldest first.
        #[getter]
        fn offers_open<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
            let offers = self.inner.parts().offers;
            let mut items: Vec<PyObject> = Vec::with_capacity(offers.len() * 3);
            let mut table = lock();
            for offer in &offers {
                items.push(offer.decided_ms.into_pyobject(py)?.into_any().unbind());
                items.push(table.string(py, offer.offer).into_any());
                items.push(table.string(py, offer.segment).into_any());
            }
            drop(table);
            PyTuple::new(py, items)
        }

        /// With ``offers`` (as :attr:`offers_open` gives them) as the offer choices awaiting a reward.
        fn with_offers(&self, offers: Vec<Bound<'_, PyAny>>) -> PyResult<Self> {
            if offers.len() % 3 != 0 {
                return Err(PyValueError::new_err(format!(
                    "open offers come in threes (decided at, offer, segment), not {} values",
                    offers.len()
                )));
            }
            let mut table = lock();
            let mut read = Vec::with_capacity(offers.len() / 3);
            for offer in offers.chunks(3) {
                read.push(Offer {
                    decided_ms: offer[0].downcast::<PyInt>()?.extract()?,
                    offer: table.intern(offer[1].downcast::<PyString>()?)?,
                    segment: table.intern(offer[2].downcast::<PyString>()?)?,
                });
            }
            Ok(Self::of(self.inner.with_offers(read)))
        }

        // --- linking and snapshots -----------------------------------------------------------

        /// With the timers and fired causes of ``other`` (a just-linked anonymous customer) of rules
        /// this record has none of; open decisions and offers are the models' to fold.
        fn merged(&self, other: &Bookkeeping) -> Self {
            Self::of(self.inner.merged(&other.inner, lock().names()))
        }

        /// The record as bytes, names spelt out, for snapshots.
        fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            let bytes = self.inner.to_bytes(lock().names());
            PyBytes::new(py, &bytes)
        }

        /// A record written by :meth:`to_bytes`; ``ValueError`` for bytes it cannot read.
        #[staticmethod]
        fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
            let mut table = lock();
            let table = table.get();
            let book = Book::from_bytes(data, &mut table.names).map_err(unreadable)?;
            for id in table.strings.len()..table.names.len() {
                table
                    .strings
                    .push(PyString::new(py, table.names.name(id as Id)).unbind());
            }
            Ok(Self::of(book))
        }

        fn __reduce__<'py>(
            &self,
            py: Python<'py>,
        ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyBytes>,))> {
            let from_bytes = py.get_type::<Bookkeeping>().getattr("from_bytes")?;
            Ok((from_bytes, (self.to_bytes(py),)))
        }

        /// Bytes held by this object and its record (names are shared, not counted).
        fn __sizeof__(&self) -> usize {
            16 + std::mem::size_of::<Book>() + self.inner.len()
        }

        fn __repr__(&self) -> String {
            format!("Bookkeeping({} bytes)", self.inner.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer<'a>(due_ms: i64, rule: Id, cause: &'a [u8], caused_by: Vec<&'a [u8]>) -> Timer<'a> {
        Timer {
            due_ms,
            rule,
            cause,
            caused_by,
        }
    }

    #[test]
    fn texts_round_trip_and_uuids_take_16_bytes() {
        for text in [
            "",
            "m-1-2-3",
            "é-ü",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "6BA7B810-9DAD-11D1-80B4-00C04FD430C8",
        ] {
            assert_eq!(text_of(&encoded(text)), text);
        }
        assert_eq!(encoded("6ba7b810-9dad-11d1-80b4-00c04fd430c8").len(), 17);
        assert_eq!(
            encoded("6BA7B810-9DAD-11D1-80B4-00C04FD430C8").len(),
            37,
            "not canonical: kept as text"
        );
    }

    #[test]
    fn timers_stay_in_firing_order_and_one_per_rule() {
        let mut names = Names::default();
        let (b, a) = (names.intern("b"), names.intern("a"));
        let (cause, id) = (encoded("c"), encoded("m1"));
        let book = Book::default()
            .with_timer(timer(20, b, &cause, vec![]), &names)
            .with_timer(timer(20, a, &cause, vec![&id]), &names)
            .with_timer(timer(10, b, &cause, vec![]), &names);
        let rules: Vec<(i64, Id)> = book
            .parts()
            .timers
            .iter()
            .map(|t| (t.due_ms, t.rule))
            .collect();
        assert_eq!(rules, vec![(10, b), (20, a)]);
        assert_eq!(book.first_timer(), Some((10, b)));
        assert_eq!(book.due_rules(15), vec![b]);
        assert_eq!(book.without_timer(b).unwrap().first_timer(), Some((20, a)));
        assert!(Book::default().without_timer(a).is_none());
        assert!(book
            .without_timer(a)
            .unwrap()
            .without_timer(b)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn rearming_with_the_same_cause_keeps_the_later_time_and_the_last_ids() {
        let mut names = Names::default();
        let rule = names.intern("r");
        let (cause, other) = (encoded("cart-1"), encoded("cart-2"));
        let ids: Vec<Vec<u8>> = (0..7).map(|i| encoded(&format!("m{i}"))).collect();
        let mut book = Book::default();
        for (at, id) in ids.iter().enumerate() {
            book = book.rearmed(100 - at as i64, rule, &cause, id, 5, &names);
        }
        let pending = book.timer(rule).unwrap();
        assert_eq!(pending.due_ms, 100);
        assert_eq!(
            pending.caused_by,
            ids[2..].iter().map(Vec::as_slice).collect::<Vec<_>>()
        );
        let replaced = book.rearmed(50, rule, &other, &ids[0], 5, &names);
        assert_eq!(
            replaced.timer(rule).unwrap(),
            timer(50, rule, &other, vec![&ids[0]])
        );
    }

    #[test]
    fn outcome_bytes_round_trip_with_zero_words_left_out() {
        let word = |x: f64| x.to_bits().to_le_bytes();
        let mut raw = Vec::new();
        for x in [1.5, 0.0, -0.0, 0.0, 365.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0] {
            raw.extend_from_slice(&word(x));
        }
        for tail in [0, 3] {
            let raw = [&raw[..], &[7u8, 0, 9][..tail]].concat();
            let packed = pack_words(&raw);
            assert_eq!(
                packed.len(),
                1 + 2 * 2 + 2 * 8 + 2 + 1 + tail,
                "two marks a group, the two fractions and -0.0, 365 and 2 as varints"
            );
            assert_eq!(unpack_words(&packed).unwrap(), raw);
            let book = Book::default().with_outcomes(&raw);
            assert_eq!(book.outcomes(), raw);
        }
        assert!(pack_words(&[]).is_empty() && Book::default().with_outcomes(&[]).is_empty());
        assert!(
            unpack_words(&[16, 0b100, 0, 0, 0]).is_err(),
            "a word marked beyond the end"
        );
        assert!(unpack_words(&[8, 1, 0, 1, 2]).is_err(), "cut");
        assert!(unpack_words(&[8, 0, 1]).is_err(), "a number not kept");
        assert!(
            unpack_words(&[8, 1, 1, 0]).is_err(),
            "a number out of range"
        );
    }

    #[test]
    fn fired_causes_are_replaced_in_place() {
        let mut names = Names::default();
        let (a, b) = (names.intern("a"), names.intern("b"));
        let (one, two) = (encoded("1"), encoded("2"));
        let book = Book::default()
            .with_fired(a, &one)
            .with_fired(b, &one)
            .with_fired(a, &two);
        assert_eq!(
            book.parts().fired,
            vec![(a, two.as_slice()), (b, one.as_slice())]
        );
        assert_eq!(book.fired_cause(a), Some(two.as_slice()));
        assert_eq!(book.fired_cause(names.intern("c")), None);
    }

    #[test]
    fn merging_adds_only_rules_it_lacks_and_no_open_items() {
        let mut names = Names::default();
        let (a, b, offer) = (names.intern("a"), names.intern("b"), names.intern("o"));
        let (mine, theirs) = (encoded("mine"), encoded("theirs"));
        let own = Book::default()
            .with_timer(timer(5, a, &mine, vec![]), &names)
            .with_fired(a, &mine);
        let other = Book::default()
            .with_timer(timer(1, a, &theirs, vec![]), &names)
            .with_timer(timer(3, b, &theirs, vec![]), &names)
            .with_fired(b, &theirs)
            .with_fired(a, &theirs)
            .with_outcomes(b"x")
            .with_offers(vec![Offer {
                decided_ms: 1,
                offer,
                segment: offer,
            }]);
        let merged = own.merged(&other, &names);
        let parts = merged.parts();
        assert_eq!(
            parts.timers,
            vec![timer(3, b, &theirs, vec![]), timer(5, a, &mine, vec![])]
        );
        assert_eq!(
            parts.fired,
            vec![(a, mine.as_slice()), (b, theirs.as_slice())]
        );
        assert!(parts.offers.is_empty() && parts.outcomes.is_empty());
    }

    #[test]
    fn bytes_spell_names_out_and_read_back_in_another_table() {
        let mut names = Names::default();
        let (rule, offer, segment) = (
            names.intern("winback"),
            names.intern("free-shipping"),
            names.intern("new"),
        );
        let (cause, id) = (
            encoded("o-1"),
            encoded("6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
        );
        let book = Book::default()
            .with_timer(timer(7, rule, &cause, vec![&id, &cause]), &names)
            .with_fired(rule, &cause)
            .with_offers(vec![Offer {
                decided_ms: 3,
                offer,
                segment,
            }])
            .with_outcomes(&[1, 2, 3]);
        let bytes = book.to_bytes(&names);
        let mut elsewhere = Names::default();
        elsewhere.intern("something else");
        let back = Book::from_bytes(&bytes, &mut elsewhere).unwrap();
        assert_eq!(back.to_bytes(&elsewhere), bytes);
        assert_eq!(back.outcomes(), vec![1, 2, 3]);
        assert_eq!(
            Book::from_bytes(&Book::default().to_bytes(&names), &mut elsewhere).unwrap(),
            Book::default()
        );
        for cut in 2..bytes.len() - 4 {
            assert!(
                Book::from_bytes(&bytes[..cut], &mut elsewhere).is_err(),
                "cut at {cut}"
            );
        }
        assert!(Book::from_bytes(&[9], &mut elsewhere).is_err());
        assert!(Book::from_bytes(&[], &mut elsewhere).is_err());
    }
}
