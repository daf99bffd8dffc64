//! One quick pass over an input event's JSON bytes, before it is decoded: which model it is for,
//! whether it is plain enough to be decoded straight into that model, and its `timestamp` and
//! `receivedAt` in epoch milliseconds.
//!
//! An event is plain when its bytes are UTF-8 and one JSON object, no object repeats a key, no
//! key is escaped, no string holds a surrogate escape or a control character, no integer has more
//! than 18 digits, no number has an exponent and nesting is at most [`MAX_DEPTH`] deep. Anything
//! else is [`NOT_PLAIN`]: the caller then takes its general, slower way, which says exactly what is
//! wrong. A key of a closed container (the top level, `context`, an order line...) that its model
//! does not allow keeps an event plain: the scan names it (see [`Plain::unknown`]). The lines of
//! an order or checkout are read on the way (see [`crate::order_lines`]).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::order_lines::{self, Draft, Line, Lines, Span, Value, MAX_LINES};
use crate::timestamps;

/// What [`EventScan::model_of`] answers for an event that is not plain.
pub const NOT_PLAIN: i64 = -1;
/// Containers nested deeper than this make an event not plain.
pub const MAX_DEPTH: usize = 64;
/// Integers with more digits than this make an event not plain (JSON decoders disagree on them).
const MAX_INT_DIGITS: usize = 18;

/// A fast hash of short keys from our own tables: their [`fingerprint`], mixed (as rustc's FxHash).
#[derive(Default)]
struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = (self.0.rotate_left(5) ^ fingerprint(bytes)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// A key's first and last eight bytes (a shorter key's bytes) and its length, folded into one word:
/// keys with different fingerprints differ, so fingerprints are compared first, bytes only if equal.
fn fingerprint(key: &[u8]) -> u64 {
    let length = key.len() as u64;
    if key.len() >= 8 {
        let word = |at: usize| u64::from_le_bytes(key[at..at + 8].try_into().unwrap_or_default());
        word(0) ^ word(key.len() - 8).rotate_left(29) ^ length << 59
    } else {
        key.iter()
            .fold(length << 59, |word, byte| word << 8 | u64::from(*byte))
    }
}

type Names = HashMap<Vec<u8>, usize, BuildHasherDefault<KeyHash>>;

/// A step of a container's path: an object's key, or any element of an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Element,
}

/// A model's closed containers: each path with the keys allowed there.
pub type Closed = Vec<(Vec<Step>, Vec<String>)>;

/// A closed container of a model: where it comes in the model's list, and the keys allowed there.
#[derive(Clone)]
struct Container {
    rank: usize,
    /// The numbers of the allowed keys (see `EventScan::known`), as a bit set.
    bits: Vec<u64>,
}

impl Container {
    fn allows(&self, number: usize) -> bool {
        self.bits
            .get(number / 64)
            .map_or(false, |word| word >> (number % 64) & 1 == 1)
    }
}

/// The models an event can be for, and their closed containers.
pub struct EventScan {
    /// `type` value -> model, for every type but `track`.
    calls: Names,
    /// `event` value of a track call -> model.
    tracks: Names,
    /// The model of a track event whose name is not in `tracks`.
    unknown_track: usize,
    /// The paths of all closed containers as a tree: node 0 is the top level; each node lists its
    /// children by key (an array's elements under `None`).
    children: Vec<Vec<(Option<Vec<u8>>, usize)>>,
    /// Every key allowed in some closed container -> its number.
    known: Names,
    /// Per model, per node: the closed container there, or `None` where the container is open.
    allowed: Vec<Vec<Option<Container>>>,
    /// Per node, its path as an unknown key's path starts (`context.`, `properties.products[].`).
    prefixes: Vec<String>,
    /// Characters of an unknown key kept in its path.
    key_chars: usize,
    /// The nodes of `properties.products` and of its elements, the order lines, if some model
    /// closes them: the models that do are the ones with lines.
    products_node: Option<usize>,
    line_node: Option<usize>,
    /// Whether every model that closes the lines allows the line's own fields there: then the scan
    /// does not note those keys for [`Self::unknown`] (most keys of an order are theirs).
    line_fields_known: bool,
}

impl EventScan {
    /// `calls` and `tracks` name the models by index into `closed`, `unknown_track` too; an unknown
    /// key is named by its first `key_chars` characters.
    pub fn new(
        calls: Vec<(String, usize)>,
        tracks: Vec<(String, usize)>,
        unknown_track: usize,
        closed: Vec<Closed>,
        key_chars: usize,
    ) -> Self {
        let mut children: Vec<Vec<(Option<Vec<u8>>, usize)>> = vec![Vec::new()];
        let mut prefixes = vec![String::new()];
        let mut known = Names::default();
        let mut allowed: Vec<Vec<Option<Container>>> = vec![Vec::new(); closed.len()];
        for (model, containers) in closed.into_iter().enumerate() {
            for (rank, (path, keys)) in containers.into_iter().enumerate() {
                let mut node = 0;
                for step in path {
                    let prefix = match &step {
                        Step::Key(key) => format!("{}{key}.", prefixes[node]),
                        Step::Element => format!("{}[].", prefixes[node].trim_end_matches('.')),
                    };
                    let step = match step {
                        Step::Key(key) => Some(key.into_bytes()),
                        Step::Element => None,
                    };
                    node = match children[node].iter().find(|(found, _)| *found == step) {
                        Some((_, child)) => *child,
                        None => {
                            children.push(Vec::new());
                            prefixes.push(prefix);
                            let child = children.len() - 1;
                            children[node].push((step, child));
                            child
                        }
                    };
                }
                let per_node = &mut allowed[model];
                if per_node.len() <= node {
                    per_node.resize(node + 1, None);
                }
                let mut bits = Vec::new();
                for key in keys {
                    let count = known.len();
                    let number = *known.entry(key.into_bytes()).or_insert(count);
                    if bits.len() <= number / 64 {
                        bits.resize(number / 64 + 1, 0);
                    }
                    bits[number / 64] |= 1 << (number % 64);
                }
                per_node[node] = Some(Container { rank, bits });
            }
        }
        let child = |node: Option<usize>, step: Option<&[u8]>| {
            children[node?]
                .iter()
                .find(|(found, _)| found.as_deref() == step)
                .map(|(_, child)| *child)
        };
        let products_node = child(child(Some(0), Some(b"properties")), Some(b"products"));
        let line_node = child(products_node, None);
        let line_fields_known = line_node.map_or(false, |node| {
            allowed.iter().all(|per_node| match per_node.get(node) {
                Some(Some(container)) => order_lines::FIELDS.iter().all(|field| {
                    known
                        .get(field.as_bytes())
                        .map_or(false, |n| container.allows(*n))
                }),
                _ => true,
            })
        });
        let names = |pairs: Vec<(String, usize)>| {
            pairs
                .into_iter()
                .map(|(name, model)| (name.into_bytes(), model))
                .collect()
        };
        Self {
            calls: names(calls),
            tracks: names(tracks),
            unknown_track,
            children,
            known,
            allowed,
            prefixes,
            key_chars,
            products_node,
            line_node,
            line_fields_known,
        }
    }

    /// The index of the model `json` is for if it is plain, else [`NOT_PLAIN`].
    pub fn model_of(&self, json: &[u8]) -> i64 {
        self.scan(json)
            .map_or(NOT_PLAIN, |plain| plain.model as i64)
    }

    /// What a plain event is (see [`Plain`]), or `None` for any other.
    pub fn scan(&self, json: &[u8]) -> Option<Plain> {
        std::str::from_utf8(json).ok()?;
        let mut scan = Scan {
            json,
            at: 0,
            tree: &self.children,
            seen: Vec::with_capacity(32),
            top: [None; 4],
            products_node: self.products_node,
            line_node: self.line_node,
            line_fields_known: self.line_fields_known,
            products: None,
            lines: Vec::new(),
            lines_taken: true,
        };
        scan.blank();
        if scan.peek() != Some(b'{') {
            return None;
        }
        scan.value(Some(0), 0)?;
        scan.blank();
        if scan.at != json.len() {
            return None;
        }
        let [kind, event, timestamp, received_at] = scan.top.map(|value| match value {
            Some(Value::Text((start, end))) => Some(&json[start..end]),
            _ => None,
        });
        let model = match (kind, event) {
            (Some(b"track"), Some(name)) => *self.tracks.get(name).unwrap_or(&self.unknown_track),
            (Some(b"track"), _) => return None,
            (Some(kind), _) => *self.calls.get(kind)?,
            _ => return None,
        };
        let has_lines = self.line_node.map_or(false, |node| {
            matches!(self.allowed[model].get(node), Some(Some(_)))
        });
        let lines = match scan.products {
            Some(array) if has_lines && scan.lines_taken && scan.lines.len() <= MAX_LINES => {
                Some(Lines {
                    array,
                    lines: std::mem::take(&mut scan.lines),
                })
            }
            _ => None,
        };
        Some(Plain {
            model,
            timestamp_ms: timestamp.and_then(timestamps::epoch_ms),
            received_ms: received_at.and_then(timestamps::epoch_ms),
            unknown: self.unknown(model, &scan.seen),
            lines,
        })
    }

    /// The keys in `seen` that `model`'s closed containers do not allow: by container in the
    /// model's order, then in the order they first came.
    fn unknown(&self, model: usize, seen: &[(usize, &[u8])]) -> Vec<(String, usize)> {
        let allowed = &self.allowed[model];
        let mut found: Vec<(usize, usize, &[u8])> = seen
            .iter()
            .filter_map(|&(node, key)| {
                let container = allowed.get(node)?.as_ref()?;
                let allowed = self.known.get(key).map_or(false, |n| container.allows(*n));
                (!allowed).then_some((container.rank, node, key))
            })
            .collect();
        found.sort_by_key(|(rank, _, _)| *rank); // stable: keys of one container keep their order
        let mut unknown: Vec<(String, usize)> = Vec::new();
        let mut numbers: HashMap<(usize, &[u8]), usize, BuildHasherDefault<KeyHash>> =
            HashMap::default();
        for (_, node, key) in found {
            let number = *numbers.entry((node, key)).or_insert_with(|| {
                unknown.push((self.path(node, key), 0));
                unknown.len() - 1
            });
            unknown[number].1 += 1;
        }
        unknown
    }

    /// The path of `key` at `node`, the key cut to `key_chars` characters.
    fn path(&self, node: usize, key: &[u8]) -> String {
        let key = std::str::from_utf8(key).unwrap_or_default();
        let cut = key
            .char_indices()
            .nth(self.key_chars)
            .map_or(key.len(), |(at, _)| at);
        format!("{}{}", self.prefixes[node], &key[..cut])
    }
}

/// A plain event: its model, its `timestamp` and `receivedAt` in epoch milliseconds where they
/// are in the common form (see [`timestamps`]; `None` otherwise, or where not sent), and the keys
/// its closed containers hold that its model does not allow.
#[derive(Debug, PartialEq, Eq)]
pub struct Plain {
    pub model: usize,
    pub timestamp_ms: Option<i64>,
    pub received_ms: Option<i64>,
    /// Each such key's path (`context.store_id`, `properties.products[].qty`), cut to `key_chars`
    /// characters, and how many times it came (`qty` on each line that has it): by container in
    /// the model's order, then in the order they first came.
    pub unknown: Vec<(String, usize)>,
    /// The lines of an order or checkout, when every line is one the contract takes as it is (see
    /// [`crate::order_lines`]); `None` for other events, or lines left to the decoder.
    pub lines: Option<Lines>,
}

/// The top-level keys whose values [`EventScan::scan`] reads, in the order of `Scan::top`.
const TOP_KEYS: [&[u8]; 4] = [b"type", b"event", b"timestamp", b"receivedAt"];

struct Scan<'a> {
    json: &'a [u8],
    at: usize,
    tree: &'a [Vec<(Option<Vec<u8>>, usize)>],
    /// Keys met in the containers of the tree, by node.
    seen: Vec<(usize, &'a [u8])>,
    /// The values of [`TOP_KEYS`] at the top level.
    top: [Option<Value>; 4],
    /// See [`EventScan::products_node`].
    products_node: Option<usize>,
    line_node: Option<usize>,
    line_fields_known: bool,
    /// The span of the `properties.products` array, once met.
    products: Option<Span>,
    /// Its lines so far, while all are taken over (`lines_taken`).
    lines: Vec<Line>,
    lines_taken: bool,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.json.get(self.at).copied()
    }

    fn blank(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.blank();
        if self.peek() == Some(byte) {
            self.at += 1;
            Some(())
        } else {
            None
        }
    }

    fn child(&self, node: Option<usize>, step: Option<&[u8]>) -> Option<usize> {
        let children = &self.tree[node?];
        children
            .iter()
            .find(|(found, _)| found.as_deref() == step)
            .map(|(_, child)| *child)
    }

    /// Reads one value at `node` of the tree (`None` outside it); `None` if it is not plain.
    fn value(&mut self, node: Option<usize>, depth: usize) -> Option<Value> {
        self.blank();
        match self.peek()? {
            b'{' => self.object(node, depth + 1).map(|_| Value::Other),
            b'[' => self.array(node, depth + 1).map(|_| Value::Other),
            b'"' => self.string(),
            b't' => self.literal(b"true").map(|_| Value::Other),
            b'f' => self.literal(b"false").map(|_| Value::Other),
            b'n' => self.literal(b"null").map(|_| Value::Null),
            _ => self.number(),
        }
    }

    fn object(&mut self, node: Option<usize>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let mut line = (node.is_some() && node == self.line_node).then(|| Draft::new(self.at));
        self.at += 1;
        let mut keys = KeySet::default();
        self.blank();
        if self.peek() == Some(b'}') {
            self.at += 1;
            self.end_line(line);
            return Some(());
        }
        loop {
            self.blank();
            if self.peek() != Some(b'"') {
                return None;
            }
            let key = match self.string()? {
                Value::Text((start, end)) => &self.json[start..end],
                _ => return None,
            };
            if !keys.insert(key) {
                return None;
            }
            let known_field =
                line.is_some() && self.line_fields_known && order_lines::is_field(key);
            if let (Some(node), false) = (node, known_field) {
                self.seen.push((node, key));
            }
            self.expect(b':')?;
            let value = self.value(self.child(node, Some(key)), depth)?;
            if node == Some(0) {
                if let Some(at) = TOP_KEYS.iter().position(|name| *name == key) {
                    self.top[at] = Some(value);
                }
            }
            if let Some(line) = &mut line {
                line.read(self.json, key, value);
            }
            self.blank();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    self.end_line(line);
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Keeps an order line read (its object ends at `at`), while every line is taken over.
    fn end_line(&mut self, line: Option<Draft>) {
        if let Some(line) = line.filter(|_| self.lines_taken) {
            match line.finish(self.at) {
                Some(line) => self.lines.push(line),
                None => self.lines_taken = false,
            }
        }
    }

    fn array(&mut self, node: Option<usize>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let start = self.at;
        let products = node.is_some() && node == self.products_node;
        self.at += 1;
        let element = self.child(node, None);
        self.blank();
        if self.peek() != Some(b']') {
            loop {
                if products && self.after_blanks() != Some(b'{') {
                    self.lines_taken = false; // not an object: the decoder drops it
                }
                self.value(element, depth)?;
                self.blank();
                match self.peek()? {
                    b',' => self.at += 1,
                    b']' => break,
                    _ => return None,
                }
            }
        }
        self.at += 1;
        if products {
            self.products = Some((start, self.at));
        }
        Some(())
    }

    /// The next byte that is not a blank.
    fn after_blanks(&mut self) -> Option<u8> {
        self.blank();
        self.peek()
    }

    /// A string, its opening quote at `at`: the span of its text if it has no escape.
    fn string(&mut self) -> Option<Value> {
        self.at += 1;
        let start = self.at;
        let mut escaped = false;
        loop {
            self.skip_ordinary_bytes();
            match *self.json.get(self.at)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match *self.json.get(self.at + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 2,
                        b'u' => {
                            let hex = self.json.get(self.at + 2..self.at + 6)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) || surrogate(hex) {
                                return None;
                            }
                            self.at += 6;
                        }
                        _ => return None,
                    }
                }
                _ => return None, // a control character
            }
        }
        let end = self.at;
        self.at += 1;
        Some(if escaped {
            Value::Escaped
        } else {
            Value::Text((start, end))
        })
    }

    /// Moves `at` to the next quote, backslash or control character of a string, eight bytes at a time.
    fn skip_ordinary_bytes(&mut self) {
        while let Some(chunk) = self.json.get(self.at..self.at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            let special = special_bytes(word);
            if special != 0 {
                self.at += special.trailing_zeros() as usize / 8;
                return;
            }
            self.at += 8;
        }
        while matches!(self.peek(), Some(byte) if byte >= 0x20 && byte != b'"' && byte != b'\\') {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.json.get(self.at..self.at + word.len())? != word {
            return None;
        }
        self.at += word.len();
        Some(())
    }

    /// A number as JSON writes it, without an exponent; an integer of at most 18 digits.
    fn number(&mut self) -> Option<Value> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let digits = self.digits();
        if digits == 0 || (digits > 1 && self.json[self.at - digits] == b'0') {
            return None;
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return None;
            }
        } else if digits > MAX_INT_DIGITS {
            return None;
        }
        match self.peek() {
            Some(b'e' | b'E') => None,
            _ => Some(Value::Number((start, self.at))),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }
}

/// An object's keys: the first few in place (with their fingerprints), all in a hash set once there are many.
#[derive(Default)]
struct KeySet<'a> {
    few: [(u64, &'a [u8]); FEW_KEYS],
    count: usize,
    many: HashSet<&'a [u8]>,
}

const FEW_KEYS: usize = 16;

impl<'a> KeySet<'a> {
    /// Adds `key`; false if it was there.
    fn insert(&mut self, key: &'a [u8]) -> bool {
        if self.count < FEW_KEYS {
            let print = fingerprint(key);
            if self.few[..self.count]
                .iter()
                .any(|(other, known)| *other == print && *known == key)
            {
                return false;
            }
            self.few[self.count] = (print, key);
        } else {
            if self.count == FEW_KEYS {
                self.many.extend(self.few.iter().map(|(_, key)| *key));
            }
            if !self.many.insert(key) {
                return false;
            }
        }
        self.count += 1;
        true
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` that ends a run of ordinary string bytes (a quote, a
/// backslash or a control character); exact up to the first such byte, which is all that is read.
fn special_bytes(word: u64) -> u64 {
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH_BITS;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH_BITS;
    zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\'))) | below_space
}

/// Whether `\uXXXX` is half of a surrogate pair (decoders disagree on lone ones).
fn surrogate(hex: &[u8]) -> bool {
    matches!(hex[0], b'd' | b'D') && matches!(hex[1], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Step {
        Step::Key(name.to_string())
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    /// Model 0: page (top level and `context` closed), model 1: orders (lines closed too),
    /// model 2: unknown track events.
    fn scan() -> EventScan {
        let top = names(&[
            "type",
            "event",
            "messageId",
            "timestamp",
            "receivedAt",
            "context",
            "properties",
        ]);
        let context = (vec![key("context")], names(&["channel"]));
        let lines = (
            vec![key("properties"), key("products"), Step::Element],
            names(&["product_id"]),
        );
        EventScan::new(
            vec![("page".to_string(), 0)],
            vec![("Order Completed".to_string(), 1)],
            2,
            vec![
                vec![(vec![], top.clone()), context.clone()],
                vec![(vec![], top.clone()), context.clone(), lines],
                vec![(vec![], top), context],
            ],
            8,
        )
    }

    fn model(json: &str) -> i64 {
        scan().model_of(json.as_bytes())
    }

    #[test]
    fn the_model_comes_from_type_and_the_track_event_name() {
        assert_eq!(model(r#"{"messageId": "m", "type": "page"}"#), 0);
        assert_eq!(model(r#"{"type":"track","event":"Order Completed"}"#), 1);
        assert_eq!(model(r#"{"event":"Wished","type":"track"}"#), 2);
        assert_eq!(model(r#"{"type":"alias"}"#), NOT_PLAIN);
        assert_eq!(model(r#"{"type":"track"}"#), NOT_PLAIN);
        assert_eq!(model(r#"{"type":"track","event":7}"#), NOT_PLAIN);
        assert_eq!(model(r#"{"type":"p\u0061ge"}"#), NOT_PLAIN);
        assert_eq!(model(r#"{"properties":{"type":"page"}}"#), NOT_PLAIN);
    }

    #[test]
    fn the_timestamp_and_received_at_in_the_common_form_are_read() {
        let json = r#"{"type":"page","timestamp":"2026-01-05T10:00:00.123Z","receivedAt":"2026-01-05T11:00:00+01:00"}"#;
        let plain = Plain {
            model: 0,
            timestamp_ms: Some(1_767_607_200_123),
            received_ms: Some(1_767_607_200_000),
            unknown: vec![],
            lines: None,
        };
        assert_eq!(scan().scan(json.as_bytes()), Some(plain));
        let other = r#"{"type":"page","timestamp":"2026-01-05 10:00:00Z","properties":{"receivedAt":"2026-01-05T10:00:00Z"}}"#;
        let plain = Plain {
            model: 0,
            timestamp_ms: None,
            received_ms: None,
            unknown: vec![],
            lines: None,
        };
        assert_eq!(scan().scan(other.as_bytes()), Some(plain));
    }

    fn unknown(json: &str) -> Vec<(String, usize)> {
        scan().scan(json.as_bytes()).expect("plain").unknown
    }

    fn once(paths: &[&str]) -> Vec<(String, usize)> {
        paths.iter().map(|path| (path.to_string(), 1)).collect()
    }

    #[test]
    fn unknown_keys_of_closed_containers_are_named_by_container_then_in_order() {
        assert_eq!(
            unknown(r#"{"type":"page","userID":"u"}"#),
            once(&["userID"])
        );
        let json =
            r#"{"context":{"store_id":"s","channel":"web","till":1},"userID":"u","type":"page"}"#;
        assert_eq!(
            unknown(json),
            once(&["userID", "context.store_id", "context.till"])
        );
        let lines = r#"{"type":"track","event":"Order Completed","properties":{"products":[{"product_id":"p","sku":"s"},{"qty":1,"sku":"t"}]}}"#;
        let counted = [
            ("properties.products[].sku".to_string(), 2),
            ("properties.products[].qty".to_string(), 1),
        ];
        assert_eq!(unknown(lines), counted);
        let open = r#"{"type":"track","event":"Wished","properties":{"products":[{"qty":1}],"any":{"thing":1}}}"#;
        assert_eq!(model(open), 2);
        assert_eq!(unknown(open), []);
    }

    fn lines(json: &str) -> Option<Lines> {
        scan().scan(json.as_bytes()).expect("plain").lines
    }

    #[test]
    fn the_lines_of_an_order_are_read_on_the_way() {
        let json = r#"{"type":"track","event":"Order Completed","properties":{"products":[{"product_id":"p-1","category":"tops","quantity":-2},{"name":"a \"b\"","product_id":"p-2","price":9.5}]}}"#;
        let read = lines(json).expect("lines");
        let (start, end) = read.array;
        assert_eq!(
            &json[start..end],
            &json[json.find('[').unwrap()..json.rfind(']').unwrap() + 1]
        );
        let bought: Vec<_> = read.bought(json.as_bytes(), 20).collect();
        assert_eq!(bought, [("p-2", None, 1)]);
        let (first, second) = (&read.lines[0], &read.lines[1]);
        assert_eq!(
            (first.quantity, first.category.map(|(a, b)| &json[a..b])),
            (-2, Some("tops"))
        );
        assert!(json[second.object.0..second.object.1].starts_with(r#"{"name""#));
        let mut out = vec![0; read.without_lines_len(json.as_bytes())];
        read.without_lines(json.as_bytes(), &mut out);
        assert_eq!(
            out,
            br#"{"type":"track","event":"Order Completed","properties":{"products":[]}}"#
        );
    }

    #[test]
    fn lines_are_left_to_the_decoder_when_one_is_not_taken_as_it_is() {
        let order = |products: &str| {
            format!(
                r#"{{"type":"track","event":"Order Completed","properties":{{"products":{products}}}}}"#
            )
        };
        assert!(lines(&order("[]")).is_some());
        assert!(lines(&order(r#"[{"product_id":"p"}]"#)).is_some());
        for products in [
            r#"[{"product_id":"p"},7]"#,
            r#"[{"product_id":"p"},{"sku":"s"}]"#,
            r#"[{"product_id":"p","quantity":2.0}]"#,
            r#"[{"product_id":"p\u0041"}]"#,
            r#"[[{"product_id":"p"}]]"#,
        ] {
            assert!(lines(&order(products)).is_none(), "{products}");
        }
        let many = vec![r#"{"product_id":"p"}"#; MAX_LINES + 1].join(",");
        assert!(lines(&order(&format!("[{many}]"))).is_none());
        let page = r#"{"type":"page","properties":{"products":[{"product_id":"p"}]}}"#;
        assert!(lines(page).is_none());
        let none = r#"{"type":"track","event":"Order Completed","properties":{}}"#;
        assert!(lines(none).is_none());
    }

    #[test]
    fn an_unknown_key_is_cut_to_its_first_characters() {
        assert_eq!(
            unknown(r#"{"type":"page","abcdefghij":1,"éééééééééé":2,"ab":3}"#),
            once(&["abcdefgh", "éééééééé", "ab"])
        );
    }

    #[test]
    fn a_repeated_key_anywhere_is_not_plain() {
        assert_eq!(model(r#"{"type":"page","type":"page"}"#), NOT_PLAIN);
        assert_eq!(
            model(r#"{"type":"page","properties":{"a":[{"b":1,"c":2,"b":3}]}}"#),
            NOT_PLAIN
        );
        let keys = |count: usize| {
            (0..40)
                .map(|n| format!(r#""k{}":{n}"#, n % count))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            model(&format!(
                r#"{{"type":"page","properties":{{{}}}}}"#,
                keys(40)
            )),
            0
        );
        assert_eq!(
            model(&format!(
                r#"{{"type":"page","properties":{{{}}}}}"#,
                keys(39)
            )),
            NOT_PLAIN
        );
    }

    #[test]
    fn odd_json_is_not_plain() {
        for json in [
            "[]",
            r#"{"type":"page"} x"#,
            r#"{"type":"page""#,
            r#"{"type":"page","properties":{"n":1e3}}"#,
            r#"{"type":"page","properties":{"n":1234567890123456789}}"#,
            r#"{"type":"page","properties":{"n":01}}"#,
            r#"{"type":"page","properties":{"n":NaN}}"#,
            r#"{"type":"page","properties":{"s":"\ud83d\ude00"}}"#,
            "{\"type\":\"page\",\"properties\":{\"s\":\"a\tb\"}}",
            r#"{"type":"page","properties":{"s":"\x"}}"#,
        ] {
            assert_eq!(model(json), NOT_PLAIN, "{json}");
        }
        assert_eq!(
            scan().model_of(b"{\"type\":\"page\",\"properties\":{\"s\":\"\xff\"}}"),
            NOT_PLAIN
        );
        let deep = format!(
            r#"{{"type":"page","properties":{}1{}}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert_eq!(model(&deep), NOT_PLAIN);
    }

    #[test]
    fn plain_json_in_any_layout_is_plain() {
        let json = " {\n\"type\" : \"page\" , \"properties\" : {\"s\":\"caf\\u00e9 \\\"x\\\"\", \"n\": -0.5, \"i\": 123456789012345678,\
                    \"l\": [true, false, null, [], {}], \"deep\": [[[[1]]]]}, \"context\": {}}\r\n";
        assert_eq!(model(json), 0);
        assert_eq!(model(r#"{"type":"page","properties":{"s":"é"}}"#), 0);
    }
}
