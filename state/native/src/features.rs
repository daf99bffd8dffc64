//! A customer's features as one compact record (see `state/customer.py` for what each means).
//!
//! Every update and every derived value is the same as the first (Python) implementation gave,
//! to the bit: floats are summed in the same order, rounded as Python's `round` rounds (half to
//! even on the exact binary value), decayed with libm's `exp2`/`exp`, and ties go by name (code
//! point order). Product, category, store, city and trait names are interned to `u32` ids in a
//! table the whole process shares ([`Strings`]); snapshots ([`Features::to_bytes`]) carry the
//! names, never the ids.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use crate::btyd::{History, Population};
use crate::inline::{Few, Text};

pub type Id = u32;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;
pub const MAX_CART_ITEMS: usize = 50;
pub const MAX_SESSION_PRODUCTS: usize = 10;
pub const MAX_BOUGHT: usize = 20;
pub const AFFINITY_K: usize = 5;
pub const CATEGORY_HALF_LIFE_MS: i64 = 14 * DAY_MS;
pub const PRODUCT_HALF_LIFE_MS: i64 = 3 * DAY_MS;
const MIN_RHYTHM_MS: f64 = DAY_MS as f64;
/// How far ahead the next `p_alive` step is looked for (about 45 years).
const MAX_ALIVE_SEARCH_MS: i64 = (1 << 14) * DAY_MS;
const ORDER_WEIGHT: f64 = 5.0;

/// The kinds of events counted, by code (as `state.windows.COUNTED_KINDS`).
pub const COUNTED_KINDS: [&str; 13] = [
    "product_viewed",
    "product_added",
    "product_removed",
    "checkout_started",
    "order_completed",
    "order_refunded",
    "application_opened",
    "page",
    "screen",
    "promotion_clicked",
    "push_tapped",
    "store_visited",
    "other",
];
const PAGE: u8 = 7;
const SCREEN: u8 = 8;
/// The windows counts are read over, in minutes.
pub const WINDOWS: [(&str, i64); 4] = [
    ("1h", 60),
    ("24h", 24 * 60),
    ("7d", 7 * 24 * 60),
    ("30d", 30 * 24 * 60),
];
const WINDOW_30D_MIN: i64 = 30 * 24 * 60;
const COMPACT_AT: usize = 3 * 24;
const COMPACT_EVERY: usize = 64;
/// The identify traits kept, by code (as `state.customer.TRAIT_KEYS`).
pub const TRAIT_KEYS: [&str; 6] = [
    "age_band",
    "city",
    "country",
    "urban",
    "gender",
    "loyalty_tier",
];
/// The consent channels, by code; "all" sets every one of them in this order.
pub const CHANNELS: [&str; 5] = ["push", "in_app", "email", "sms", "ads"];
const RENORMALIZE_AT: f64 = 3.273390607896142e150; // 2 ** 500
const MAX_EXPONENT: f64 = 500.0;

/// "No time" in a time field (a sentinel, not an `Option`: half the bytes).
const NO_TIME: i64 = i64::MIN;
/// "No name" in an id field.
const NO_ID: Id = Id::MAX;

fn time(ms: i64) -> Option<i64> {
    (ms != NO_TIME).then_some(ms)
}

pub(crate) fn known(id: Id) -> Option<Id> {
    (id != NO_ID).then_some(id)
}

/// `items` with `item` added at the end, held in exactly the bytes it needs.
fn pushed<T: Copy>(items: &[T], item: T) -> Box<[T]> {
    let mut out = Vec::with_capacity(items.len() + 1);
    out.extend_from_slice(items);
    out.push(item);
    out.into_boxed_slice()
}

/// `items` without the one at `index`, held in exactly the bytes it needs.
fn removed<T: Copy>(items: &[T], index: usize) -> Box<[T]> {
    let mut out = Vec::with_capacity(items.len() - 1);
    out.extend_from_slice(&items[..index]);
    out.extend_from_slice(&items[index + 1..]);
    out.into_boxed_slice()
}

/// Names interned to dense ids, in the order they were first seen. A name is kept for the life
/// of the process (the vocabularies are bounded: products, categories, stores, places, traits).
#[derive(Debug, Default)]
pub struct Strings {
    table: crate::names::Table<&'static str>,
}

impl Strings {
    pub fn intern(&mut self, name: &str) -> Id {
        self.table.intern(name)
    }

    /// Start the reads that interning `names` will make (see [`crate::names::Table::prefetch`]).
    pub fn prefetch<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) {
        self.table.prefetch(names);
    }

    pub fn name(&self, id: Id) -> &'static str {
        self.table.stored(id)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// A windowed count's time that does not fit the buckets' 32 bits (Python's `array('i')` raised
/// `OverflowError` there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Python's `round(x, digits)`: half to even on the exact binary value (the shortest decimal
/// text of that many digits, read back).
pub fn py_round(x: f64, digits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    if let Some(rounded) = round_far_from_half(x, digits) {
        return rounded;
    }
    format!("{:.*}", digits, x).parse().unwrap_or(x)
}

/// [`py_round`] without the decimal text, when `x` scaled is far enough from a half that the
/// scaling's rounding cannot change the side it falls on: the integer nearest the scaled value,
/// divided by the power of ten (one correctly rounded division: the double nearest the decimal).
fn round_far_from_half(x: f64, digits: usize) -> Option<f64> {
    const POWERS: [f64; 9] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];
    let power = *POWERS.get(digits)?;
    let scaled = x * power;
    if scaled.abs() >= 4_503_599_627_370_496.0 {
        return None; // 2^52: beyond, not every half is a double
    }
    let distance = (scaled - scaled.trunc()).abs() - 0.5;
    // the product is off the exact one by half an ulp at most: keep well clear of that
    if distance.abs() <= scaled.abs() * f64::EPSILON * 4.0 + f64::MIN_POSITIVE {
        return None;
    }
    Some(scaled.round() / power)
}

/// Python's `max(a, b)`: `a` unless `b` is greater.
fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// Python's `min(a, b)`: `a` unless `b` is smaller.
fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

/// Python's `x / y` of two integers (exact below 2 ** 53, as CPython divides them then).
fn ratio(x: i64, y: i64) -> f64 {
    x as f64 / y as f64
}

/// An item and its score, packed to 12 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C, packed(4))]
pub struct Scored {
    pub item: Id,
    pub score: f64,
}

/// Exponentially decayed scores, the strongest `k` kept (see `state/affinity.py`).
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    /// The landmark time the scores are relative to ([`NO_TIME`] before the first).
    ref_ms: i64,
    /// Items and scores in the order items were first added.
    pub scores: Few<Scored, AFFINITY_K>,
}

impl Default for TopK {
    fn default() -> Self {
        Self {
            ref_ms: NO_TIME,
            scores: Few::default(),
        }
    }
}

impl TopK {
    pub fn ref_ms(&self) -> Option<i64> {
        time(self.ref_ms)
    }

    pub fn add(&mut self, item: Id, weight: f64, at_ms: i64, half_life_ms: i64, names: &Strings) {
        if self.ref_ms == NO_TIME {
            self.ref_ms = at_ms;
        }
        let exponent = ratio(at_ms - self.ref_ms, half_life_ms);
        let mut scaled = weight * py_min(exponent, MAX_EXPONENT).exp2();
        if scaled > RENORMALIZE_AT || exponent > MAX_EXPONENT {
            self.move_landmark(at_ms, half_life_ms);
            scaled = weight;
        }
        match self.scores.iter_mut().find(|scored| scored.item == item) {
            Some(scored) => scored.score += scaled,
            None => self.insert(item, 0.0 + scaled, names),
        }
    }

    /// Add a new item; past [`AFFINITY_K`] items the weakest goes.
    fn insert(&mut self, item: Id, score: f64, names: &Strings) {
        let new = Scored { item, score };
        if self.scores.len() == AFFINITY_K {
            // full, as most are: the weakest of the k + 1 goes, with no allocation
            let mut all = [new; AFFINITY_K + 1];
            all[..AFFINITY_K].copy_from_slice(&self.scores);
            let weakest = weakest(&all, names);
            all.copy_within(weakest + 1.., weakest);
            self.scores.copy_from_slice(&all[..AFFINITY_K]);
            return;
        }
        self.scores.push(new);
    }

    fn move_landmark(&mut self, to_ms: i64, half_life_ms: i64) {
        let from_ms = self.ref_ms().unwrap_or(to_ms);
        let factor = ratio(from_ms - to_ms, half_life_ms).exp2();
        for scored in self.scores.iter_mut() {
            scored.score *= factor;
        }
        self.ref_ms = to_ms;
    }

    /// Items by descending score, ties by name.
    pub fn top(&self, n: usize, names: &Strings) -> Vec<Id> {
        let mut ranked: Vec<(Id, f64)> = self.pairs().collect();
        ranked.sort_by(|(a, x), (b, y)| {
            y.partial_cmp(x)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| names.name(*a).cmp(names.name(*b)))
        });
        ranked.into_iter().take(n).map(|(item, _)| item).collect()
    }

    /// `(item, score)` in the order items were first added.
    pub fn pairs(&self) -> impl Iterator<Item = (Id, f64)> + '_ {
        self.scores.iter().map(|scored| (scored.item, scored.score))
    }

    /// Scores decayed to `now_ms`, rounded to 4 digits, by name.
    pub fn as_of(&self, now_ms: i64, half_life_ms: i64, names: &Strings) -> Vec<(Id, f64)> {
        let Some(ref_ms) = self.ref_ms() else {
            return Vec::new();
        };
        let factor = ratio((ref_ms - now_ms).min(0), half_life_ms).exp2();
        let mut out: Vec<(Id, f64)> = self
            .pairs()
            .map(|(item, score)| (item, py_round(score * factor, 4)))
            .collect();
        out.sort_by(|(a, _), (b, _)| names.name(*a).cmp(names.name(*b)));
        out
    }

    pub fn merge(&mut self, other: &TopK, half_life_ms: i64, names: &Strings) {
        if let Some(ref_ms) = other.ref_ms() {
            for (item, score) in other.pairs() {
                self.add(item, score, ref_ms, half_life_ms, names);
            }
        }
    }
}

/// The index of the item last in [`TopK::top`] order (the lowest score, then the last name).
fn weakest(scores: &[Scored], names: &Strings) -> usize {
    let mut weakest = 0;
    for (index, scored) in scores.iter().enumerate().skip(1) {
        let (score, least_score) = (scored.score, scores[weakest].score);
        if score < least_score
            || (score == least_score && names.name(scored.item) > names.name(scores[weakest].item))
        {
            weakest = index;
        }
    }
    weakest
}

fn bucket_width(age_min: i64) -> i64 {
    if age_min < 60 {
        5
    } else if age_min < 24 * 60 {
        60
    } else {
        24 * 60
    }
}

/// One bucket of windowed counts: events of one kind from a start minute on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub start: i32,
    pub count: i32,
    pub kind: u8,
}

/// Bucketed counts of event kinds (see `state/windows.py`), oldest start first, packed: per
/// bucket, its start's change from the bucket before (a zigzag varint: 1 byte for the buckets of
/// a day), then `count << 4 | kind` (a varint: 1 byte up to 7 events), about 2 bytes a bucket
/// where a plain one takes 9; then the last bucket's start (4 bytes), so that an event finds its
/// bucket reading back from the newest, as few as it must.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    packed: Box<[u8]>,
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The varint at `at` in `data` (written by [`put_varint`]) and the offset after it.
fn varint_at(data: &[u8], mut at: usize) -> (u64, usize) {
    let (mut value, mut shift) = (0u64, 0);
    loop {
        let byte = data[at];
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return (value, at);
        }
        shift += 7;
    }
}

/// Where the varint that ends at `end` (its last byte at `end - 1`) begins.
fn varint_before(data: &[u8], end: usize) -> usize {
    let mut at = end - 1;
    while at > 0 && data[at - 1] >= 0x80 {
        at -= 1;
    }
    at
}

/// A bucket's `count << 4 | kind`, as packed.
fn count_word(count: i32, kind: u8) -> u64 {
    u64::from(count as u32) << 4 | u64::from(kind)
}

/// The packed buckets in order, each with where its count word starts and ends.
struct Unpacked<'a> {
    data: &'a [u8],
    at: usize,
    start: i64,
}

impl Iterator for Unpacked<'_> {
    type Item = (Bucket, usize, usize);

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.data.len() {
            return None;
        }
        let (delta, word_at) = varint_at(self.data, self.at);
        let (word, end) = varint_at(self.data, word_at);
        self.start += (delta >> 1) as i64 ^ -((delta & 1) as i64);
        self.at = end;
        let bucket = Bucket {
            start: self.start as i32,
            count: (word >> 4) as u32 as i32,
            kind: (word & 15) as u8,
        };
        Some((bucket, word_at, end))
    }
}

impl Counts {
    /// The buckets' varints, without the last start after them.
    fn body(&self) -> &[u8] {
        &self.packed[..self.packed.len().saturating_sub(4)]
    }

    /// The last bucket's start (0 when there is none).
    fn last_start(&self) -> i64 {
        match self.packed.len().checked_sub(4) {
            Some(at) => i64::from(i32::from_le_bytes(
                self.packed[at..].try_into().expect("4 bytes"),
            )),
            None => 0,
        }
    }

    fn unpacked(&self) -> Unpacked<'_> {
        Unpacked {
            data: self.body(),
            at: 0,
            start: 0,
        }
    }

    /// The buckets, oldest start first.
    pub fn buckets(&self) -> impl Iterator<Item = Bucket> + '_ {
        self.unpacked().map(|(bucket, _, _)| bucket)
    }

    fn from_buckets(buckets: impl IntoIterator<Item = Bucket>) -> Self {
        let mut out = Vec::new();
        let mut before = 0i64;
        for bucket in buckets {
            let delta = i64::from(bucket.start) - before;
            put_varint(&mut out, ((delta << 1) ^ (delta >> 63)) as u64);
            put_varint(&mut out, count_word(bucket.count, bucket.kind));
            before = i64::from(bucket.start);
        }
        if !out.is_empty() {
            out.extend_from_slice(&(before as i32).to_le_bytes());
        }
        Self {
            packed: out.into_boxed_slice(),
        }
    }

    /// Bytes held on the heap.
    pub fn heap_size(&self) -> usize {
        self.packed.len()
    }

    pub fn add(&mut self, code: u8, at_ms: i64, now_ms: i64) -> Result<(), Overflow> {
        let minute = at_ms.div_euclid(MINUTE_MS);
        let now_min = now_ms.div_euclid(MINUTE_MS);
        if now_min - minute >= WINDOW_30D_MIN {
            return Ok(());
        }
        let width = bucket_width(now_min - minute);
        let start = minute - minute.rem_euclid(width);
        // the last bucket of this start and kind with none of an earlier start after it
        if let Some((count, word_at, end)) = self.find(start, code) {
            self.set_count(word_at, end, count_word(count.wrapping_add(1), code));
            return Ok(());
        }
        let start = i32::try_from(start).map_err(|_| Overflow)?;
        let body = self.body();
        let mut packed = Vec::with_capacity(body.len() + 10);
        packed.extend_from_slice(body);
        let delta = i64::from(start) - self.last_start();
        put_varint(&mut packed, ((delta << 1) ^ (delta >> 63)) as u64);
        put_varint(&mut packed, count_word(1, code));
        packed.extend_from_slice(&start.to_le_bytes());
        let held = packed[..packed.len() - 4]
            .iter()
            .filter(|b| **b < 0x80)
            .count()
            / 2;
        self.packed = packed.into_boxed_slice();
        if held > COMPACT_AT && (held - COMPACT_AT) % COMPACT_EVERY == 1 {
            self.compact(now_ms);
        }
        Ok(())
    }

    /// The count and where the count word lies of the last bucket of `start` and `kind`, read back
    /// from the newest bucket and no further than one of an earlier start.
    fn find(&self, start: i64, kind: u8) -> Option<(i32, usize, usize)> {
        let body = self.body();
        let (mut bucket_start, mut end) = (self.last_start(), body.len());
        while end > 0 {
            let word_at = varint_before(body, end);
            let delta_at = varint_before(body, word_at);
            if bucket_start < start {
                return None;
            }
            let (word, _) = varint_at(body, word_at);
            if bucket_start == start && (word & 15) as u8 == kind {
                return Some(((word >> 4) as u32 as i32, word_at, end));
            }
            let (delta, _) = varint_at(body, delta_at);
            bucket_start -= (delta >> 1) as i64 ^ -((delta & 1) as i64);
            end = delta_at;
        }
        None
    }

    /// The count word at `word_at..end` made `word`: in place when it takes as many bytes.
    fn set_count(&mut self, word_at: usize, end: usize, word: u64) {
        let mut encoded = Vec::with_capacity(10);
        put_varint(&mut encoded, word);
        if encoded.len() == end - word_at {
            self.packed[word_at..end].copy_from_slice(&encoded);
            return;
        }
        let packed = [&self.packed[..word_at], &encoded, &self.packed[end..]].concat();
        self.packed = packed.into_boxed_slice();
    }

    /// Merge buckets into the width their age calls for and drop those past 30 days.
    pub fn compact(&mut self, now_ms: i64) {
        let now_min = now_ms.div_euclid(MINUTE_MS);
        let mut merged: BTreeMap<(i64, u8), i64> = BTreeMap::new();
        for bucket in self.buckets() {
            let start = i64::from(bucket.start);
            let age = now_min - start;
            if age >= WINDOW_30D_MIN {
                continue;
            }
            let width = bucket_width(age);
            *merged
                .entry((start - start.rem_euclid(width), bucket.kind))
                .or_insert(0) += i64::from(bucket.count);
        }
        *self = Self::from_buckets(merged.into_iter().map(|((start, kind), count)| Bucket {
            start: start as i32,
            count: count as i32,
            kind,
        }));
    }

    /// Counts per kind code of the buckets starting within `window_min` minutes before `now_ms`.
    pub fn counts(&self, window_min: i64, now_ms: i64) -> [i64; 13] {
        let since = now_ms.div_euclid(MINUTE_MS) - window_min;
        let mut out = [0; 13];
        for bucket in self.buckets() {
            if i64::from(bucket.start) > since {
                out[usize::from(bucket.kind)] += i64::from(bucket.count);
            }
        }
        out
    }

    /// The `(start minute, kind code, count)` triples, flat.
    pub fn flat(&self) -> Vec<i32> {
        self.buckets()
            .flat_map(|b| [b.start, i32::from(b.kind), b.count])
            .collect()
    }

    /// Counts from flat `(start minute, kind code, count)` triples (see [`Counts::flat`]).
    fn from_flat(flat: &[i32]) -> Option<Self> {
        if flat.len() % 3 != 0 {
            return None;
        }
        let buckets = flat.chunks_exact(3).map(|t| {
            let kind = u8::try_from(t[1])
                .ok()
                .filter(|k| usize::from(*k) < COUNTED_KINDS.len())?;
            Some(Bucket {
                start: t[0],
                count: t[2],
                kind,
            })
        });
        Some(Self::from_buckets(buckets.collect::<Option<Vec<_>>>()?))
    }

    pub fn merge(&mut self, other: &Counts, now_ms: i64) {
        let both: Vec<Bucket> = self.buckets().chain(other.buckets()).collect();
        *self = Self::from_buckets(both);
        self.compact(now_ms);
    }
}

/// The current session.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: Text,
    pub started_ms: i64,
    pub last_ms: i64,
    pub pages: i64,
    pub products: Few<Id, MAX_SESSION_PRODUCTS>,
}

impl Session {
    fn new(id: &str, started_ms: i64) -> Self {
        Self {
            id: id.into(),
            started_ms,
            last_ms: started_ms,
            pages: 0,
            products: Few::default(),
        }
    }

    fn viewed(&mut self, product: Id) {
        if self.products.contains(&product) {
            return;
        }
        if !self.products.push(product) {
            // the oldest goes
            self.products.rotate_left(1);
            let last = self.products.len() - 1;
            self.products[last] = product;
        }
    }
}

/// One cart line: product, quantity, unit price (20 bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, packed(4))]
pub struct Line {
    pub product: Id,
    pub quantity: f64,
    pub price: f64,
}

/// The current cart; lines in the order they were first added.
#[derive(Debug, Clone, PartialEq)]
pub struct Cart {
    pub id: Text,
    pub lines: Box<[Line]>,
    pub value: f64,
    pub started_ms: i64,
    pub last_add_ms: i64,
}

impl Cart {
    fn new(id: &str, started_ms: i64) -> Self {
        Self {
            id: id.into(),
            lines: Box::default(),
            value: 0.0,
            started_ms,
            last_add_ms: started_ms,
        }
    }

    fn add(&mut self, product: Id, quantity: i64, price: f64, at_ms: i64) {
        match self.lines.iter().position(|line| line.product == product) {
            Some(index) => {
                let line = &mut self.lines[index];
                line.quantity += quantity as f64;
                line.price = price;
            }
            None if self.lines.len() >= MAX_CART_ITEMS => return,
            None => {
                let line = Line {
                    product,
                    quantity: quantity as f64,
                    price,
                };
                self.lines = pushed(&self.lines, line);
            }
        }
        self.value = py_round(self.value + quantity as f64 * price, 2);
        self.last_add_ms = self.last_add_ms.max(at_ms);
    }

    fn remove(&mut self, product: Id, quantity: i64) {
        let Some(index) = self.lines.iter().position(|line| line.product == product) else {
            return;
        };
        let line = self.lines[index];
        let taken = py_min(line.quantity, quantity as f64);
        self.value = py_max(0.0, py_round(self.value - taken * line.price, 2));
        if line.quantity - taken <= 0.0 {
            self.lines = removed(&self.lines, index);
        } else {
            self.lines[index].quantity = line.quantity - taken;
        }
        if self.lines.is_empty() {
            self.value = 0.0;
        }
    }

    /// The sum of the lines' quantities, as an integer (`int(sum(...))`).
    pub fn items(&self) -> i64 {
        self.lines.iter().fold(0.0, |sum, line| sum + line.quantity) as i64
    }
}

/// Consent by channel, in the order channels were first set, held inline: each entry is
/// `channel code << 1 | granted`, [`Consent::UNSET`] past the last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Consent([u8; CHANNELS.len()]);

impl Default for Consent {
    fn default() -> Self {
        Self([Self::UNSET; CHANNELS.len()])
    }
}

impl Consent {
    const UNSET: u8 = u8::MAX;

    /// `(channel code, granted)` in the order channels were first set.
    pub fn iter(&self) -> impl Iterator<Item = (u8, bool)> + '_ {
        self.0
            .iter()
            .take_while(|entry| **entry != Self::UNSET)
            .map(|entry| (entry >> 1, entry & 1 == 1))
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0[0] == Self::UNSET
    }

    /// Set one channel (a code below `CHANNELS.len()`); `false` when every slot is taken by
    /// another channel.
    pub fn set(&mut self, channel: u8, granted: bool) -> bool {
        let entry = channel << 1 | u8::from(granted);
        for slot in &mut self.0 {
            if *slot == Self::UNSET || *slot >> 1 == channel {
                *slot = entry;
                return true;
            }
        }
        false
    }

    /// Set one channel unless it is set already.
    fn set_if_unset(&mut self, channel: u8, granted: bool) {
        if !self.iter().any(|(c, _)| c == channel) {
            self.set(channel, granted);
        }
    }
}

/// A trait's value: a (interned) string or a flag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trait {
    Text(Id),
    Flag(bool),
}

/// A trait code and its value in 5 bytes (six of them sit in every record): the name's id, or
/// a flag as one of the two largest ids (never a name's: names are interned densely from 0).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C, packed)]
pub struct HeldTrait {
    key: u8,
    value: Id,
}

impl HeldTrait {
    const FALSE: Id = Id::MAX - 1;
    const TRUE: Id = Id::MAX;

    fn new(key: u8, value: Trait) -> Self {
        let value = match value {
            Trait::Text(id) => {
                assert!(id < Self::FALSE, "fewer than 2^32 - 2 names");
                id
            }
            Trait::Flag(flag) => [Self::FALSE, Self::TRUE][usize::from(flag)],
        };
        Self { key, value }
    }

    fn get(self) -> (u8, Trait) {
        let value = match self.value {
            Self::FALSE => Trait::Flag(false),
            Self::TRUE => Trait::Flag(true),
            id => Trait::Text(id),
        };
        (self.key, value)
    }
}

/// What every event carries for the features: when, its id, its counted kind (`None`: no
/// activity, such as identify or consent), its local hour, and where it happened.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub at_ms: i64,
    pub message_id: &'a str,
    pub kind: Option<u8>,
    pub hour: u8,
    pub session_timeout_ms: i64,
    pub store: Option<Id>,
    pub city: Option<Id>,
    pub country: Option<Id>,
}

/// What a product event does besides counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductAction {
    Viewed,
    Added,
    Removed,
    Other,
}

/// An order line: product, category, quantity.
pub type OrderLine = (Id, Option<Id>, i64);

/// When a customer counts as new, lapsed, at risk.
#[derive(Debug, Clone, Copy)]
pub struct Lifecycle {
    pub new_days: i64,
    pub lapse_days: i64,
    pub at_risk_gap_factor: f64,
    /// The buy-till-you-die parameters behind `lapse_risk`, `p_alive`, `expected_orders`, `clv`.
    pub population: Population,
}

/// A customer's orders and refunds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Purchases {
    pub orders: i64,
    pub refunds: i64,
    pub lifetime_spend: f64,
    pub first_order_ms: Option<i64>,
    pub last_order_ms: Option<i64>,
    pub last_order_id: Option<Text>,
    pub order_gap_ms: f64,
    pub bought: Box<[Id]>,
}

/// The purchases of a customer with none.
static NO_PURCHASES: LazyLock<Purchases> = LazyLock::new(Purchases::default);

impl Purchases {
    fn order(&mut self, order_id: &str, amount: f64, at_ms: i64) {
        self.orders += 1;
        self.lifetime_spend = py_round(self.lifetime_spend + amount, 2);
        if self.first_order_ms.map_or(true, |first| at_ms < first) {
            self.first_order_ms = Some(at_ms);
        }
        if self.last_order_ms.map_or(true, |last| at_ms >= last) {
            self.last_order_ms = Some(at_ms);
            self.last_order_id = Some(order_id.into());
        }
        self.update_order_gap();
    }

    fn update_order_gap(&mut self) {
        if let (true, Some(first), Some(last)) =
            (self.orders >= 2, self.first_order_ms, self.last_order_ms)
        {
            self.order_gap_ms = ratio(last - first, self.orders - 1);
        }
    }

    fn refund(&mut self, amount: f64) {
        self.refunds += 1;
        self.lifetime_spend = py_max(0.0, py_round(self.lifetime_spend - amount, 2));
    }

    fn merge(&mut self, theirs: &Purchases) {
        self.orders += theirs.orders;
        self.refunds += theirs.refunds;
        self.lifetime_spend = py_round(self.lifetime_spend + theirs.lifetime_spend, 2);
        if let Some(first) = theirs.first_order_ms {
            if self.first_order_ms.map_or(true, |mine| first < mine) {
                self.first_order_ms = Some(first);
            }
        }
        if let Some(last) = theirs.last_order_ms {
            if self.last_order_ms.map_or(true, |mine| last > mine) {
                self.last_order_ms = Some(last);
                self.last_order_id = theirs.last_order_id.clone();
            }
        }
        self.update_order_gap();
    }
}

/// The features of one customer.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub last_event_id: Text,
    /// Orders and refunds (`None`: none yet, as for most customers).
    pub purchases: Option<Box<Purchases>>,
    pub counts: Counts,
    pub categories: TopK,
    pub products: TopK,
    pub session: Option<Session>,
    pub cart: Option<Box<Cart>>,
    /// Where the customer last was ([`NO_ID`]: nowhere known).
    pub last_store: Id,
    pub last_city: Id,
    pub last_country: Id,
    pub hours: [u8; 24],
    /// `(trait code, value)` in the order traits were first set.
    traits: Few<HeldTrait, { TRAIT_KEYS.len() }>,
    /// `(channel code, granted)` in the order channels were first set.
    pub consent: Consent,
}

impl Features {
    /// Orders and refunds (all zero and none for a customer with none).
    pub fn purchases(&self) -> &Purchases {
        self.purchases.as_deref().unwrap_or(&NO_PURCHASES)
    }

    pub fn new(first_seen_ms: i64) -> Self {
        Self {
            first_seen_ms,
            last_seen_ms: first_seen_ms,
            last_event_id: Text::default(),
            purchases: None,
            counts: Counts::default(),
            categories: TopK::default(),
            products: TopK::default(),
            session: None,
            cart: None,
            last_store: NO_ID,
            last_city: NO_ID,
            last_country: NO_ID,
            hours: [0; 24],
            traits: Few::default(),
            consent: Consent::default(),
        }
    }

    // --- updates ---------------------------------------------------------------------------

    /// What every event does: recency, session, counts and hours (for activity), then places.
    pub fn apply(&mut self, event: &Event<'_>) -> Result<(), Overflow> {
        if let Some(kind) = event.kind {
            self.touch(event.at_ms, event.message_id, event.session_timeout_ms);
            self.counts.add(kind, event.at_ms, self.last_seen_ms)?;
            self.seen_hour(event.hour);
            if kind == PAGE || kind == SCREEN {
                if let Some(session) = &mut self.session {
                    session.pages += 1;
                }
            }
        }
        if let Some(store) = event.store {
            self.last_store = store;
        }
        if let Some(city) = event.city {
            self.last_city = city;
        }
        if let Some(country) = event.country {
            self.last_country = country;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn apply_product(
        &mut self,
        event: &Event<'_>,
        action: ProductAction,
        product: Id,
        category: Option<Id>,
        cart_id: Option<&str>,
        quantity: i64,
        price: f64,
        names: &Strings,
    ) -> Result<(), Overflow> {
        self.apply(event)?;
        let at = event.at_ms;
        let weight = match action {
            ProductAction::Viewed => Some(1.0),
            ProductAction::Added => Some(3.0),
            _ => None,
        };
        if let Some(weight) = weight {
            self.products
                .add(product, weight, at, PRODUCT_HALF_LIFE_MS, names);
            if let Some(category) = category {
                self.categories
                    .add(category, weight, at, CATEGORY_HALF_LIFE_MS, names);
            }
        }
        match action {
            ProductAction::Viewed => {
                if let Some(session) = &mut self.session {
                    session.viewed(product);
                }
            }
            ProductAction::Added => {
                self.add_to_cart(cart_id, product, quantity, price, at, event.message_id)
            }
            ProductAction::Removed => self.remove_from_cart(product, quantity),
            ProductAction::Other => {}
        }
        Ok(())
    }

    /// An order (`completed`) or a refund or cancellation: its lines with a quantity of 0 or
    /// more were bought; a negative quantity is a returned item.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_order(
        &mut self,
        event: &Event<'_>,
        completed: bool,
        order_id: &str,
        amount: f64,
        lines: &[OrderLine],
        names: &Strings,
    ) -> Result<(), Overflow> {
        self.apply(event)?;
        let at = event.at_ms;
        let purchases = self.purchases.get_or_insert_with(Box::default);
        if !completed {
            purchases.refund(amount.abs());
            return Ok(());
        }
        purchases.order(order_id, py_max(0.0, amount), at);
        let bought = lines
            .iter()
            .filter(|(_, _, quantity)| *quantity >= 0)
            .take(MAX_BOUGHT);
        if purchases.last_order_ms == Some(at) {
            purchases.bought = bought.clone().map(|(product, _, _)| *product).collect();
        }
        for (product, category, _) in bought {
            self.products
                .add(*product, ORDER_WEIGHT, at, PRODUCT_HALF_LIFE_MS, names);
            if let Some(category) = category {
                self.categories
                    .add(*category, ORDER_WEIGHT, at, CATEGORY_HALF_LIFE_MS, names);
            }
        }
        if self
            .cart
            .as_ref()
            .map_or(false, |cart| at >= cart.started_ms)
        {
            self.cart = None;
        }
        Ok(())
    }

    /// Identify traits, as `(trait code, value)`, in [`TRAIT_KEYS`] order.
    pub fn apply_traits(
        &mut self,
        event: &Event<'_>,
        traits: &[(u8, Trait)],
    ) -> Result<(), Overflow> {
        self.apply(event)?;
        for (key, value) in traits {
            self.set_trait(*key, *value);
        }
        Ok(())
    }

    /// Consent for one channel (`Some(code)`) or every channel (`None`).
    pub fn apply_consent(
        &mut self,
        event: &Event<'_>,
        channel: Option<u8>,
        granted: bool,
    ) -> Result<(), Overflow> {
        self.apply(event)?;
        match channel {
            Some(code) => self.set_consent(code, granted),
            None => (0..CHANNELS.len() as u8).for_each(|code| self.set_consent(code, granted)),
        }
        Ok(())
    }

    /// `(trait code, value)` in the order traits were first set.
    pub fn traits(&self) -> impl Iterator<Item = (u8, Trait)> + '_ {
        self.traits.iter().map(|held| held.get())
    }

    fn set_trait(&mut self, key: u8, value: Trait) {
        let at = self.traits().position(|(k, _)| k == key);
        match at {
            Some(at) => self.traits[at] = HeldTrait::new(key, value),
            None => {
                self.traits.push(HeldTrait::new(key, value)); // one entry per key: there is room
            }
        }
    }

    fn set_consent(&mut self, channel: u8, granted: bool) {
        self.consent.set(channel, granted);
    }

    fn touch(&mut self, at_ms: i64, message_id: &str, session_timeout_ms: i64) {
        match &mut self.session {
            Some(session) if at_ms - session.last_ms <= session_timeout_ms => {
                session.last_ms = session.last_ms.max(at_ms);
            }
            Some(session) if at_ms <= session.last_ms => {}
            _ => self.session = Some(Session::new(message_id, at_ms)),
        }
        if at_ms >= self.last_seen_ms {
            self.last_seen_ms = at_ms;
            self.last_event_id = message_id.into();
        }
        self.first_seen_ms = self.first_seen_ms.min(at_ms);
    }

    fn seen_hour(&mut self, hour: u8) {
        let hour = usize::from(hour);
        if self.hours[hour] == 255 {
            self.hours.iter_mut().for_each(|count| *count /= 2);
        }
        self.hours[hour] += 1;
    }

    fn add_to_cart(
        &mut self,
        cart_id: Option<&str>,
        product: Id,
        quantity: i64,
        price: f64,
        at_ms: i64,
        message_id: &str,
    ) {
        let fresh = match (&self.cart, cart_id) {
            (None, _) => true,
            (Some(cart), Some(id)) => id != &*cart.id && cart.lines.is_empty(),
            (Some(_), None) => false,
        };
        if fresh {
            let id = cart_id.filter(|id| !id.is_empty()).unwrap_or(message_id);
            self.cart = Some(Box::new(Cart::new(id, at_ms)));
        }
        if let Some(cart) = &mut self.cart {
            cart.add(product, quantity, price, at_ms);
        }
    }

    fn remove_from_cart(&mut self, product: Id, quantity: i64) {
        if let Some(cart) = &mut self.cart {
            cart.remove(product, quantity);
            if cart.lines.is_empty() {
                self.cart = None;
            }
        }
    }

    /// Fold the features of a just-linked anonymous id into these.
    pub fn merge(&mut self, other: &Features, now_ms: i64, names: &Strings) {
        self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
        if other.last_seen_ms > self.last_seen_ms {
            self.last_seen_ms = other.last_seen_ms;
            self.last_event_id = other.last_event_id.clone();
        }
        if let Some(theirs) = &other.purchases {
            self.purchases
                .get_or_insert_with(Box::default)
                .merge(theirs);
        }
        self.counts.merge(&other.counts, now_ms);
        self.categories
            .merge(&other.categories, CATEGORY_HALF_LIFE_MS, names);
        self.products
            .merge(&other.products, PRODUCT_HALF_LIFE_MS, names);
        if let Some(theirs) = &other.session {
            if self
                .session
                .as_ref()
                .map_or(true, |mine| theirs.last_ms > mine.last_ms)
            {
                self.session = Some(theirs.clone());
            }
        }
        if self.cart.is_none() {
            self.cart = other.cart.clone();
        }
        for (mine, theirs) in self.hours.iter_mut().zip(other.hours) {
            *mine = mine.saturating_add(theirs);
        }
        for (key, value) in other.traits() {
            if !self.traits().any(|(k, _)| k == key) {
                self.traits.push(HeldTrait::new(key, value)); // one entry per key: there is room
            }
        }
        for (channel, granted) in other.consent.iter() {
            self.consent.set_if_unset(channel, granted);
        }
        for (mine, theirs) in [
            (&mut self.last_store, other.last_store),
            (&mut self.last_city, other.last_city),
            (&mut self.last_country, other.last_country),
        ] {
            if *mine == NO_ID {
                *mine = theirs;
            }
        }
    }

    // --- derived features ------------------------------------------------------------------

    /// `new` (first seen recently), `lapsed` (no order, or no activity, for long) or `active`.
    pub fn lifecycle(&self, now_ms: i64, lc: &Lifecycle) -> &'static str {
        if now_ms - self.first_seen_ms < lc.new_days * DAY_MS {
            return "new";
        }
        let last = self.purchases().last_order_ms.unwrap_or(self.last_seen_ms);
        if now_ms - last >= lc.lapse_days * DAY_MS {
            return "lapsed";
        }
        "active"
    }

    fn has_rhythm(&self) -> Option<i64> {
        let p = self.purchases();
        p.last_order_ms
            .filter(|_| p.orders >= 2 && p.order_gap_ms >= MIN_RHYTHM_MS)
    }

    /// A repeat buyer overdue by `at_risk_gap_factor` times their usual gap, not yet lapsed.
    pub fn at_risk(&self, now_ms: i64, lc: &Lifecycle) -> bool {
        let Some(last) = self.has_rhythm() else {
            return false;
        };
        let overdue = now_ms - last;
        lc.at_risk_gap_factor * self.purchases().order_gap_ms <= overdue as f64
            && overdue < lc.lapse_days * DAY_MS
    }

    /// The purchase history the buy-till-you-die models read, in days: repeat orders, first to
    /// last order, first order to now; `None` before the first order.
    fn history(&self, now_ms: i64) -> Option<History> {
        let p = self.purchases();
        let (first, last) = (p.first_order_ms?, p.last_order_ms?);
        let days = |ms: i64| ms.max(0) as f64 / DAY_MS as f64;
        Some(History {
            x: (p.orders - 1).max(0) as f64,
            t_x: days(last - first),
            age: days(now_ms.max(last) - first),
        })
    }

    /// How likely this buyer reaches the lapse point (their last order + `lapse_days`) without
    /// another order: BG/NBD's chance that they have stopped, plus alive and silent until then.
    /// Rises with silence; 1 once lapsed; `None` before the first order.
    pub fn lapse_risk(&self, now_ms: i64, lc: &Lifecycle) -> Option<f64> {
        let history = self.history(now_ms)?;
        let lapse_at = self.purchases().last_order_ms? + lc.lapse_days * DAY_MS;
        if now_ms >= lapse_at {
            return Some(1.0);
        }
        let days_left = (lapse_at - now_ms) as f64 / DAY_MS as f64;
        let risk = lc.population.no_order_within(&history, days_left);
        Some(py_round(risk.clamp(0.0, 1.0), 4))
    }

    /// BG/NBD's P(alive): 1 until a repeat order, then falling with silence against the
    /// customer's own rhythm; `None` before the first order.
    pub fn p_alive(&self, now_ms: i64, lc: &Lifecycle) -> Option<f64> {
        Some(py_round(lc.population.p_alive(&self.history(now_ms)?), 4))
    }

    /// BG/NBD's expected orders over the population's horizon; `None` before the first order.
    pub fn expected_orders(&self, now_ms: i64, lc: &Lifecycle) -> Option<f64> {
        let history = self.history(now_ms)?;
        let expected = lc
            .population
            .expected_orders(&history, lc.population.horizon_days);
        Some(py_round(expected, 4))
    }

    /// Gamma-Gamma's expected value of an order: the customer's mean order value (net of
    /// refunds) shrunk towards the population's by their repeat orders; `None` before the first.
    pub fn expected_order_value(&self, lc: &Lifecycle) -> Option<f64> {
        Some(py_round(self.order_value(lc)?, 2))
    }

    fn order_value(&self, lc: &Lifecycle) -> Option<f64> {
        let p = self.purchases();
        p.first_order_ms?;
        let mean = (p.lifetime_spend / p.orders.max(1) as f64).max(0.0);
        Some(
            lc.population
                .expected_order_value((p.orders - 1).max(0) as f64, mean),
        )
    }

    /// Customer lifetime value over the horizon: expected orders times expected order value
    /// (undiscounted); `None` before the first order.
    pub fn clv(&self, now_ms: i64, lc: &Lifecycle) -> Option<f64> {
        let history = self.history(now_ms)?;
        let orders = lc
            .population
            .expected_orders(&history, lc.population.horizon_days);
        Some(py_round(orders * self.order_value(lc)?, 2))
    }

    /// When `lapse_risk` (rising with silence) next reaches a tenth above its value now.
    fn next_risk_step(&self, now_ms: i64, lc: &Lifecycle) -> Option<i64> {
        let risk = self.lapse_risk(now_ms, lc)?;
        if risk >= 0.9 {
            return None;
        }
        let step = ((risk * 10.0 + 1e-9).floor() + 1.0) / 10.0;
        let (mut low, mut high) = (
            now_ms,
            self.purchases().last_order_ms? + lc.lapse_days * DAY_MS,
        );
        while high - low > MINUTE_MS {
            let middle = (low + high).div_euclid(2);
            if self.lapse_risk(middle, lc)? >= step {
                high = middle;
            } else {
                low = middle;
            }
        }
        Some(high)
    }

    /// When `p_alive` (falling with silence once there is a repeat order) next drops below the
    /// highest tenth at or under its value now, to the minute: the time `p_alive < 0.3`, say,
    /// becomes true. The search doubles a span of days until it gets there, then bisects.
    fn next_alive_step(&self, now_ms: i64, lc: &Lifecycle) -> Option<i64> {
        if self.purchases().orders < 2 {
            return None; // 1 until a repeat order
        }
        let step = (self.p_alive(now_ms, lc)? * 10.0 + 1e-9).floor() / 10.0;
        if step <= 0.0 {
            return None;
        }
        let below = |at: i64| self.p_alive(at, lc).map_or(false, |alive| alive < step);
        let mut span = DAY_MS;
        while !below(now_ms + span) {
            if span > MAX_ALIVE_SEARCH_MS {
                return None;
            }
            span *= 2;
        }
        let (mut low, mut high) = (now_ms, now_ms + span);
        while high - low > MINUTE_MS {
            let middle = (low + high).div_euclid(2);
            if below(middle) {
                high = middle;
            } else {
                low = middle;
            }
        }
        Some(high)
    }

    /// The next event time at which `lifecycle` or `at_risk` (and, with `risk_steps`,
    /// `lapse_risk`, to the next tenth; with `alive_steps`, `p_alive`, below the next tenth) can
    /// change with no new event.
    pub fn next_boundary(
        &self,
        now_ms: i64,
        lc: &Lifecycle,
        risk_steps: bool,
        alive_steps: bool,
    ) -> Option<i64> {
        let last = self.purchases().last_order_ms.unwrap_or(self.last_seen_ms);
        let candidates = [
            Some(self.first_seen_ms + lc.new_days * DAY_MS),
            Some(last + lc.lapse_days * DAY_MS),
            self.has_rhythm().map(|last_order| {
                last_order + (lc.at_risk_gap_factor * self.purchases().order_gap_ms).ceil() as i64
            }),
            if risk_steps {
                self.next_risk_step(now_ms, lc)
            } else {
                None
            },
            if alive_steps {
                self.next_alive_step(now_ms, lc)
            } else {
                None
            },
        ];
        candidates
            .into_iter()
            .flatten()
            .filter(|at| *at > now_ms)
            .min()
    }

    /// The local hour of day with most activity (ties: the earliest), if any.
    pub fn preferred_hour(&self) -> Option<u8> {
        let mut best = 0;
        for hour in 1..24 {
            if self.hours[hour] > self.hours[best] {
                best = hour;
            }
        }
        (self.hours[best] > 0).then_some(best as u8)
    }

    /// Bytes held, this record and what it points to.
    pub fn size(&self) -> usize {
        use std::mem::size_of_val;
        let session = self.session.as_ref().map_or(0, |s| s.id.heap_size());
        let cart = self.cart.as_ref().map_or(0, |c| {
            size_of_val(&**c) + c.id.heap_size() + size_of_val(&*c.lines)
        });
        let purchases = self.purchases.as_ref().map_or(0, |p| {
            size_of_val(&**p)
                + p.last_order_id.as_ref().map_or(0, Text::heap_size)
                + size_of_val(&*p.bought)
        });
        size_of_val(self)
            + self.last_event_id.heap_size()
            + purchases
            + self.counts.heap_size()
            + session
            + cart
    }
}

// --- snapshots ----------------------------------------------------------------------------

/// The first byte of [`Features::to_bytes`]; bump it when the layout changes.
pub const FORMAT: u8 = 1;

/// Bytes that [`Features::from_bytes`] cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable(pub String);

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "customer features unreadable: {}", self.0)
    }
}

struct Writer<'a> {
    out: Vec<u8>,
    names: &'a Strings,
}

impl Writer<'_> {
    fn u8(&mut self, value: u8) {
        self.out.push(value);
    }
    fn u32(&mut self, value: usize) {
        self.out.extend_from_slice(&(value as u32).to_le_bytes());
    }
    fn i64(&mut self, value: i64) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }
    fn f64(&mut self, value: f64) {
        self.out.extend_from_slice(&value.to_bits().to_le_bytes());
    }
    fn text(&mut self, value: &str) {
        self.u32(value.len());
        self.out.extend_from_slice(value.as_bytes());
    }
    fn name(&mut self, id: Id) {
        let names = self.names;
        self.text(names.name(id));
    }
    fn option<T>(&mut self, value: Option<T>, mut write: impl FnMut(&mut Self, T)) {
        self.u8(u8::from(value.is_some()));
        if let Some(value) = value {
            write(self, value);
        }
    }
    fn topk(&mut self, topk: &TopK) {
        self.option(topk.ref_ms(), Self::i64);
        self.u32(topk.scores.len());
        for (item, score) in topk.pairs() {
            self.name(item);
            self.f64(score);
        }
    }
}

/// `items` held inline, if there are no more than `N` (else unreadable: more than a record keeps).
fn few<T: Copy + Default, const N: usize>(
    items: Vec<T>,
    what: &str,
) -> Result<Few<T, N>, Unreadable> {
    Few::from_slice(&items)
        .ok_or_else(|| Unreadable(format!("{} {what}, more than {N}", items.len())))
}

struct Reader<'a> {
    data: &'a [u8],
    names: &'a mut Strings,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Unreadable> {
        if self.data.len() < n {
            return Err(Unreadable("it ends too early".into()));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Unreadable> {
        Ok(self.take(1)?[0])
    }
    fn flag(&mut self) -> Result<bool, Unreadable> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(Unreadable(format!("a flag of {other}"))),
        }
    }
    fn u32(&mut self) -> Result<usize, Unreadable> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    }
    fn u64(&mut self) -> Result<u64, Unreadable> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(bytes))
    }
    fn i64(&mut self) -> Result<i64, Unreadable> {
        Ok(self.u64()? as i64)
    }
    fn f64(&mut self) -> Result<f64, Unreadable> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn text(&mut self) -> Result<Box<str>, Unreadable> {
        let n = self.u32()?;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(Into::into)
            .map_err(|_| Unreadable("a name that is not UTF-8".into()))
    }
    fn name(&mut self) -> Result<Id, Unreadable> {
        let text = self.text()?;
        Ok(self.names.intern(&text))
    }
    fn option<T>(
        &mut self,
        mut read: impl FnMut(&mut Self) -> Result<T, Unreadable>,
    ) -> Result<Option<T>, Unreadable> {
        if self.flag()? {
            Ok(Some(read(self)?))
        } else {
            Ok(None)
        }
    }
    fn many<T>(
        &mut self,
        mut read: impl FnMut(&mut Self) -> Result<T, Unreadable>,
    ) -> Result<Vec<T>, Unreadable> {
        let n = self.u32()?;
        if n > self.data.len() {
            return Err(Unreadable(format!("a count of {n} beyond its bytes")));
        }
        (0..n).map(|_| read(self)).collect()
    }
    fn topk(&mut self) -> Result<TopK, Unreadable> {
        let ref_ms = self.option(Self::i64)?.unwrap_or(NO_TIME);
        let scores = self.many(|r| {
            Ok(Scored {
                item: r.name()?,
                score: r.f64()?,
            })
        })?;
        Ok(TopK {
            ref_ms,
            scores: few(scores, "affinities")?,
        })
    }
    fn code(&mut self, limit: usize, what: &str) -> Result<u8, Unreadable> {
        let code = self.u8()?;
        if usize::from(code) >= limit {
            return Err(Unreadable(format!("{what} code {code}")));
        }
        Ok(code)
    }
}

impl Features {
    /// The features as bytes, names spelt out (see [`Features::from_bytes`]).
    pub fn to_bytes(&self, names: &Strings) -> Vec<u8> {
        let mut w = Writer {
            out: Vec::with_capacity(256),
            names,
        };
        w.u8(FORMAT);
        w.i64(self.first_seen_ms);
        w.i64(self.last_seen_ms);
        w.text(&self.last_event_id);
        let p = self.purchases();
        w.i64(p.orders);
        w.i64(p.refunds);
        w.f64(p.lifetime_spend);
        w.option(p.first_order_ms, Writer::i64);
        w.option(p.last_order_ms, Writer::i64);
        w.option(p.last_order_id.as_deref(), Writer::text);
        w.f64(p.order_gap_ms);
        let buckets = self.counts.flat();
        w.u32(buckets.len());
        for value in buckets {
            w.out.extend_from_slice(&value.to_le_bytes());
        }
        w.topk(&self.categories);
        w.topk(&self.products);
        w.option(self.session.as_ref(), |w, s| {
            w.text(&s.id);
            w.i64(s.started_ms);
            w.i64(s.last_ms);
            w.i64(s.pages);
            w.u32(s.products.len());
            s.products.iter().for_each(|p| w.name(*p));
        });
        w.option(self.cart.as_deref(), |w, c| {
            w.text(&c.id);
            w.f64(c.value);
            w.i64(c.started_ms);
            w.i64(c.last_add_ms);
            w.u32(c.lines.len());
            for line in &c.lines {
                w.name(line.product);
                w.f64(line.quantity);
                w.f64(line.price);
            }
        });
        for place in [self.last_store, self.last_city, self.last_country] {
            w.option(known(place), Writer::name);
        }
        w.out.extend_from_slice(&self.hours);
        w.u32(self.traits.len());
        for (key, value) in self.traits() {
            w.u8(key);
            match value {
                Trait::Text(id) => {
                    w.u8(0);
                    w.name(id);
                }
                Trait::Flag(flag) => {
                    w.u8(1);
                    w.u8(u8::from(flag));
                }
            }
        }
        w.u32(self.consent.len());
        for (channel, granted) in self.consent.iter() {
            w.u8(channel);
            w.u8(u8::from(granted));
        }
        w.u32(p.bought.len());
        p.bought.iter().for_each(|product| w.name(*product));
        w.out
    }

    /// Features written by [`Features::to_bytes`] (names interned into `names`).
    pub fn from_bytes(data: &[u8], names: &mut Strings) -> Result<Self, Unreadable> {
        let mut r = Reader { data, names };
        let format = r.u8()?;
        if format != FORMAT {
            return Err(Unreadable(format!(
                "format {format}, this version reads format {FORMAT}"
            )));
        }
        let mut f = Features::new(r.i64()?);
        f.last_seen_ms = r.i64()?;
        f.last_event_id = r.text()?.into();
        let mut p = Purchases::default();
        p.orders = r.i64()?;
        p.refunds = r.i64()?;
        p.lifetime_spend = r.f64()?;
        p.first_order_ms = r.option(Reader::i64)?;
        p.last_order_ms = r.option(Reader::i64)?;
        p.last_order_id = r.option(Reader::text)?.map(Text::from);
        p.order_gap_ms = r.f64()?;
        let buckets = r.many(|r| Ok(r.u32()? as u32 as i32))?;
        f.categories = r.topk()?;
        f.products = r.topk()?;
        f.session = r.option(|r| {
            Ok(Session {
                id: r.text()?.into(),
                started_ms: r.i64()?,
                last_ms: r.i64()?,
                pages: r.i64()?,
                products: few(r.many(Reader::name)?, "session products")?,
            })
        })?;
        f.cart = r.option(|r| {
            Ok(Box::new(Cart {
                id: r.text()?.into(),
                value: r.f64()?,
                started_ms: r.i64()?,
                last_add_ms: r.i64()?,
                lines: r
                    .many(|r| {
                        Ok(Line {
                            product: r.name()?,
                            quantity: r.f64()?,
                            price: r.f64()?,
                        })
                    })?
                    .into(),
            }))
        })?;
        f.last_store = r.option(Reader::name)?.unwrap_or(NO_ID);
        f.last_city = r.option(Reader::name)?.unwrap_or(NO_ID);
        f.last_country = r.option(Reader::name)?.unwrap_or(NO_ID);
        f.hours.copy_from_slice(r.take(24)?);
        let traits = r.many(|r| {
            let key = r.code(TRAIT_KEYS.len(), "trait")?;
            let value = if r.flag()? {
                Trait::Flag(r.flag()?)
            } else {
                Trait::Text(r.name()?)
            };
            Ok(HeldTrait::new(key, value))
        })?;
        f.traits = few(traits, "traits")?;
        for (channel, granted) in r.many(|r| Ok((r.code(CHANNELS.len(), "channel")?, r.flag()?)))? {
            if !f.consent.set(channel, granted) {
                return Err(Unreadable("more consent than channels".into()));
            }
        }
        p.bought = r.many(Reader::name)?.into();
        if !r.data.is_empty() {
            return Err(Unreadable(format!("{} bytes left over", r.data.len())));
        }
        f.counts = Counts::from_flat(&buckets)
            .ok_or_else(|| Unreadable("windowed counts out of shape".into()))?;
        if p != Purchases::default() {
            f.purchases = Some(Box::new(p));
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buckets as plain ones, as they were kept before they were packed.
    fn plain_add(buckets: &mut Vec<Bucket>, code: u8, at_ms: i64, now_ms: i64) {
        let (minute, now_min) = (at_ms.div_euclid(MINUTE_MS), now_ms.div_euclid(MINUTE_MS));
        if now_min - minute >= WINDOW_30D_MIN {
            return;
        }
        let width = bucket_width(now_min - minute);
        let start = minute - minute.rem_euclid(width);
        for bucket in buckets.iter_mut().rev() {
            if i64::from(bucket.start) == start && bucket.kind == code {
                bucket.count += 1;
                return;
            }
            if i64::from(bucket.start) < start {
                break;
            }
        }
        buckets.push(Bucket {
            start: start as i32,
            count: 1,
            kind: code,
        });
    }

    #[test]
    fn packed_counts_take_the_buckets_plain_ones_took_late_events_and_all() {
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let (mut counts, mut plain, mut now_ms) = (Counts::default(), Vec::new(), 0);
        for _ in 0..60 {
            now_ms += next(40) as i64 * MINUTE_MS;
            let at_ms = now_ms - next(3) as i64 * next(300) as i64 * MINUTE_MS; // some late
            let code = next(4) as u8;
            counts.add(code, at_ms, now_ms).unwrap();
            plain_add(&mut plain, code, at_ms, now_ms);
            assert_eq!(counts.buckets().collect::<Vec<_>>(), plain);
        }
        assert!(
            counts.heap_size() < plain.len() * 3 + 4,
            "about 2 bytes a bucket"
        );
    }

    #[test]
    fn rounds_as_python_does() {
        assert_eq!(py_round(2.675, 2), 2.67); // 2.67499999... in binary
        assert_eq!(py_round(0.125, 2), 0.12); // an exact tie goes to even
        assert_eq!(py_round(0.375, 2), 0.38);
        assert_eq!(py_round(-0.001, 2).to_bits(), (-0.0f64).to_bits());
        assert_eq!(py_round(1e300, 2), 1e300);
    }

    #[test]
    fn rounding_without_the_decimal_text_gives_the_same_bits() {
        let text = |x: f64, digits: usize| -> f64 { format!("{:.*}", digits, x).parse().unwrap() };
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut fast = 0;
        for i in 0..50_000u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = match i % 4 {
                0 => (state % 10_000_000) as f64 / 1000.0 - 5000.0, // prices and sums of them
                1 => (state >> 11) as f64 / (1u64 << 53) as f64,    // probabilities
                2 => (state % 100_000) as f64 * 0.005,              // halves at two digits
                _ => f64::from_bits(state),                         // any double
            };
            if !x.is_finite() {
                continue;
            }
            for digits in [0, 2, 3, 4] {
                if let Some(quick) = round_far_from_half(x, digits) {
                    fast += 1;
                    assert_eq!(
                        quick.to_bits(),
                        text(x, digits).to_bits(),
                        "{x} to {digits}"
                    );
                }
                assert_eq!(py_round(x, digits).to_bits(), text(x, digits).to_bits());
            }
        }
        assert!(fast > 100_000, "most values take the quick way: {fast}");
    }

    #[test]
    fn bytes_read_back_the_same_features() {
        let mut names = Strings::default();
        let mut f = Features::new(1_000);
        let event = Event {
            at_ms: 2_000,
            message_id: "m1",
            kind: Some(1),
            hour: 3,
            session_timeout_ms: 1_800_000,
            store: Some(names.intern("s1")),
            city: None,
            country: None,
        };
        let p = names.intern("p1");
        f.apply_product(
            &event,
            ProductAction::Added,
            p,
            None,
            Some("c1"),
            2,
            1.5,
            &names,
        )
        .unwrap();
        f.apply_traits(&event, &[(3, Trait::Flag(true))]).unwrap();
        let bytes = f.to_bytes(&names);
        assert_eq!(Features::from_bytes(&bytes, &mut names).unwrap(), f);
        assert!(Features::from_bytes(&bytes[..bytes.len() - 1], &mut names).is_err());
    }
}

/// The Python class `state._native.Features` over [`Features`], with the process's name table.
#[cfg(feature = "python")]
pub mod python {
    use std::sync::{Mutex, MutexGuard};

    use pyo3::exceptions::{PyOverflowError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
    use pyo3::{intern, IntoPyObjectExt};

    use crate::btyd::PopulationArgs;
    use crate::order_lines::python::OrderLines;

    use super::{
        known, Event, Features as Record, Id, Lifecycle, Overflow, ProductAction, Strings, TopK,
        Trait, CATEGORY_HALF_LIFE_MS, CHANNELS, COUNTED_KINDS, MAX_BOUGHT, PRODUCT_HALF_LIFE_MS,
        TRAIT_KEYS, WINDOWS,
    };

    /// The names of every customer of this process (held only while no Python code runs).
    static STRINGS: Mutex<Option<Strings>> = Mutex::new(None);

    struct Names(MutexGuard<'static, Option<Strings>>);

    impl Names {
        fn lock() -> Self {
            Self(
                STRINGS
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            )
        }
        fn get(&mut self) -> &mut Strings {
            self.0.get_or_insert_with(Strings::default)
        }
        fn intern(&mut self, name: Option<&str>) -> Option<Id> {
            name.filter(|n| !n.is_empty()).map(|n| self.get().intern(n))
        }
    }

    /// The name of one id (the lock is not held while Python objects are made).
    pub(crate) fn name(id: Id) -> &'static str {
        Names::lock().get().name(id)
    }

    pub(crate) fn names(ids: &[Id]) -> Vec<&'static str> {
        let mut table = Names::lock();
        let table = table.get();
        ids.iter().map(|id| table.name(*id)).collect()
    }

    fn overflow(_: Overflow) -> PyErr {
        PyOverflowError::new_err("signed integer is greater than maximum")
    }

    fn window(name: &str) -> PyResult<i64> {
        WINDOWS
            .iter()
            .find(|(window, _)| *window == name)
            .map(|(_, minutes)| *minutes)
            .ok_or_else(|| PyValueError::new_err(format!("no window {name:?}")))
    }

    fn lifecycle(
        new_days: i64,
        lapse_days: i64,
        at_risk_gap_factor: f64,
        population: PopulationArgs,
    ) -> Lifecycle {
        Lifecycle {
            new_days,
            lapse_days,
            at_risk_gap_factor,
            population: population.into(),
        }
    }

    /// The population of a call that reads no buy-till-you-die score (never read).
    const NO_POPULATION: PopulationArgs = (
        f64::NAN,
        f64::NAN,
        f64::NAN,
        f64::NAN,
        f64::NAN,
        f64::NAN,
        f64::NAN,
        f64::NAN,
    );

    type Bought<'py> = Vec<(Bound<'py, PyString>, Option<Bound<'py, PyString>>, i64)>;

    /// The lines of an order that count as bought (a quantity of 0 or more), the first `limit` of
    /// them, from objects with ``product_id``, ``category`` and ``quantity`` (``Product`` lines):
    /// an order's features read [`MAX_BOUGHT`], the recommender's basket all an order may hold.
    pub(crate) fn bought<'py>(
        py: Python<'py>,
        lines: &Bound<'py, PyAny>,
        limit: usize,
    ) -> PyResult<Bought<'py>> {
        let mut read = Vec::new();
        for line in lines.try_iter()? {
            if read.len() == limit {
                break;
            }
            let line = line?;
            let quantity: i64 = line.getattr(intern!(py, "quantity"))?.extract()?;
            if quantity < 0 {
                continue;
            }
            let product = line
                .getattr(intern!(py, "product_id"))?
                .downcast_into::<PyString>()?;
            let category = line.getattr(intern!(py, "category"))?;
            let category = if category.is_none() {
                None
            } else {
                Some(category.downcast_into::<PyString>()?)
            };
            read.push((product, category, quantity));
        }
        Ok(read)
    }

    /// Products and categories read from Python strings, borrowed for one compiled call.
    pub(crate) fn borrowed<'a>(
        lines: impl IntoIterator<Item = (&'a Bound<'a, PyString>, Option<&'a Bound<'a, PyString>>)>,
    ) -> PyResult<Vec<(&'a str, Option<&'a str>)>> {
        lines
            .into_iter()
            .map(|(product, category)| {
                Ok((product.to_str()?, category.map(|c| c.to_str()).transpose()?))
            })
            .collect()
    }

    /// A customer's features: one compact record, updated by one call per event (see
    /// ``state/customer.py``). Names are interned in a table the process shares.
    #[pyclass(module = "state._native", name = "Features", eq)]
    #[derive(PartialEq)]
    pub struct Features {
        pub(crate) inner: Record,
    }

    impl Features {
        /// The record itself, for the other compiled parts that read it.
        pub(crate) fn record(&self) -> &Record {
            &self.inner
        }
    }

    /// The common part of every update: the event's time, id, counted kind (``None``: no activity)
    /// and local hour, and where it happened.
    #[allow(clippy::too_many_arguments)]
    fn event<'a>(
        table: &mut Names,
        at_ms: i64,
        message_id: &'a str,
        kind: Option<u8>,
        hour: u8,
        session_timeout_ms: i64,
        store: Option<&str>,
        city: Option<&str>,
        country: Option<&str>,
    ) -> PyResult<Event<'a>> {
        if kind.map_or(false, |k| usize::from(k) >= COUNTED_KINDS.len()) || hour >= 24 {
            return Err(PyValueError::new_err(format!(
                "no counted kind {kind:?} or no hour {hour}"
            )));
        }
        Ok(Event {
            at_ms,
            message_id,
            kind,
            hour,
            session_timeout_ms,
            store: store.map(|s| table.get().intern(s)),
            city: table.intern(city),
            country: table.intern(country),
        })
    }

    #[pymethods]
    impl Features {
        #[new]
        fn new(first_seen_ms: i64) -> Self {
            Self {
                inner: Record::new(first_seen_ms),
            }
        }

        // --- updates -----------------------------------------------------------------------

        /// An event with nothing but its activity and places: counted kind (``None`` for identify,
        /// alias, consent), local hour, session timeout, context store, city and country.
        #[allow(clippy::too_many_arguments)]
        #[pyo3(signature = (at_ms, message_id, kind, hour, session_timeout_ms, store, city, country))]
        fn apply(
            &mut self,
            at_ms: i64,
            message_id: &str,
            kind: Option<u8>,
            hour: u8,
            session_timeout_ms: i64,
            store: Option<&str>,
            city: Option<&str>,
            country: Option<&str>,
        ) -> PyResult<()> {
            let mut table = Names::lock();
            let e = event(
                &mut table,
                at_ms,
                message_id,
                kind,
                hour,
                session_timeout_ms,
                store,
                city,
                country,
            )?;
            self.inner.apply(&e).map_err(overflow)
        }

        /// A product event: :meth:`apply`, then ``action`` (0 viewed, 1 added, 2 removed, 3 other).
        #[allow(clippy::too_many_arguments)]
        #[pyo3(signature = (at_ms, message_id, kind, hour, session_timeout_ms, store, city, country,
                            action, product_id, category, cart_id, quantity, price))]
        fn apply_product(
            &mut self,
            at_ms: i64,
            message_id: &str,
            kind: Option<u8>,
            hour: u8,
            session_timeout_ms: i64,
            store: Option<&str>,
            city: Option<&str>,
            country: Option<&str>,
            action: u8,
            product_id: &str,
            category: Option<&str>,
            cart_id: Option<&str>,
            quantity: i64,
            price: Option<f64>,
        ) -> PyResult<()> {
            let action = match action {
                0 => ProductAction::Viewed,
                1 => ProductAction::Added,
                2 => ProductAction::Removed,
                3 => ProductAction::Other,
                _ => return Err(PyValueError::new_err(format!("no product action {action}"))),
            };
            let price = price.filter(|p| *p != 0.0).unwrap_or(0.0); // `price or 0.0`
            let mut table = Names::lock();
            let e = event(
                &mut table,
                at_ms,
                message_id,
                kind,
                hour,
                session_timeout_ms,
                store,
                city,
                country,
            )?;
            let product = table.get().intern(product_id);
            let category = table.intern(category);
            let names = table.get();
            self.inner
                .apply_product(
                    &e, action, product, category, cart_id, quantity, price, names,
                )
                .map_err(overflow)
        }

        /// An order (``completed``) or refund: :meth:`apply`, then the order with its ``lines``
        /// (:class:`OrderLines`, or objects with ``product_id``, ``category`` and ``quantity``) in
        /// one call.
        #[allow(clippy::too_many_arguments)]
        #[pyo3(signature = (at_ms, message_id, kind, hour, session_timeout_ms, store, city, country,
                            completed, order_id, amount, lines))]
        fn apply_order(
            &mut self,
            py: Python<'_>,
            at_ms: i64,
            message_id: &str,
            kind: Option<u8>,
            hour: u8,
            session_timeout_ms: i64,
            store: Option<&str>,
            city: Option<&str>,
            country: Option<&str>,
            completed: bool,
            order_id: &str,
            amount: f64,
            lines: &Bound<'_, PyAny>,
        ) -> PyResult<()> {
            let native = lines.downcast::<OrderLines>().ok().map(|lines| lines.get());
            let read = match native {
                Some(_) => Vec::new(),
                None if completed => bought(py, lines, MAX_BOUGHT)?,
                None => Vec::new(),
            };
            let mut table = Names::lock();
            let e = event(
                &mut table,
                at_ms,
                message_id,
                kind,
                hour,
                session_timeout_ms,
                store,
                city,
                country,
            )?;
            let mut lines: Vec<(Id, Option<Id>, i64)> = Vec::with_capacity(MAX_BOUGHT);
            match native {
                Some(native) if completed => {
                    let (json, native) = native.read(py);
                    let bought: Vec<_> = native.bought(json, MAX_BOUGHT).collect();
                    table
                        .get()
                        .prefetch(bought.iter().map(|(product, _, _)| *product));
                    for (product, category, quantity) in bought {
                        lines.push((
                            table.get().intern(product),
                            table.intern(category),
                            quantity,
                        ));
                    }
                }
                _ => {
                    for (product, category, quantity) in &read {
                        let category = category.as_ref().map(|c| c.to_str()).transpose()?;
                        lines.push((
                            table.get().intern(product.to_str()?),
                            table.intern(category),
                            *quantity,
                        ));
                    }
                }
            }
            let names = table.get();
            self.inner
                .apply_order(&e, completed, order_id, amount, &lines, names)
                .map_err(overflow)
        }

        /// An identify call: :meth:`apply` (no activity), then the traits sent (``None``: not sent),
        /// then ``band_of_age``, the age band of the age sent when no band was sent.
        #[allow(clippy::too_many_arguments)]
        #[pyo3(signature = (at_ms, message_id, store, city, country,
                            age_band, trait_city, trait_country, urban, gender, loyalty_tier, band_of_age))]
        fn apply_identify(
            &mut self,
            at_ms: i64,
            message_id: &str,
            store: Option<&str>,
            city: Option<&str>,
            country: Option<&str>,
            age_band: Option<&str>,
            trait_city: Option<&str>,
            trait_country: Option<&str>,
            urban: Option<bool>,
            gender: Option<&str>,
            loyalty_tier: Option<&str>,
            band_of_age: Option<&str>,
        ) -> PyResult<()> {
            let mut table = Names::lock();
            let e = event(
                &mut table, at_ms, message_id, None, 0, 0, store, city, country,
            )?;
            let strings = table.get();
            let mut text = |code: u8, value: Option<&str>| {
                value.map(|v| (code, Trait::Text(strings.intern(v))))
            };
            let traits: Vec<(u8, Trait)> = [
                text(0, age_band),
                text(1, trait_city),
                text(2, trait_country),
                urban.map(|flag| (3, Trait::Flag(flag))),
                text(4, gender),
                text(5, loyalty_tier),
                text(0, band_of_age),
            ]
            .into_iter()
            .flatten()
            .collect();
            self.inner.apply_traits(&e, &traits).map_err(overflow)
        }

        /// A consent update: :meth:`apply` (no activity), then ``granted`` for ``channel`` ("all": every one).
        #[allow(clippy::too_many_arguments)]
        #[pyo3(signature = (at_ms, message_id, store, city, country, channel, granted))]
        fn apply_consent(
            &mut self,
            at_ms: i64,
            message_id: &str,
            store: Option<&str>,
            city: Option<&str>,
            country: Option<&str>,
            channel: &str,
            granted: bool,
        ) -> PyResult<()> {
            let code = match CHANNELS.iter().position(|c| *c == channel) {
                Some(code) => Some(code as u8),
                None if channel == "all" => None,
                None => {
                    return Err(PyValueError::new_err(format!(
                        "no consent channel {channel:?}"
                    )))
                }
            };
            let mut table = Names::lock();
            let e = event(
                &mut table, at_ms, message_id, None, 0, 0, store, city, country,
            )?;
            self.inner
                .apply_consent(&e, code, granted)
                .map_err(overflow)
        }

        /// Fold the features of a just-linked anonymous id into these.
        fn merge(&mut self, other: &Features, now_ms: i64) {
            let mut table = Names::lock();
            self.inner.merge(&other.inner, now_ms, table.get());
        }

        /// A copy (for a checkpoint: put it back to undo what happened since).
        fn copy(&self) -> Self {
            Self {
                inner: self.inner.clone(),
            }
        }

        fn __copy__(&self) -> Self {
            self.copy()
        }

        fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> Self {
            self.copy()
        }

        /// The features as bytes, names spelt out, for snapshots.
        fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            let bytes = self.inner.to_bytes(Names::lock().get());
            PyBytes::new(py, &bytes)
        }

        /// Features written by :meth:`to_bytes`; ``ValueError`` for bytes it cannot read.
        #[staticmethod]
        fn from_bytes(data: &[u8]) -> PyResult<Self> {
            let inner = Record::from_bytes(data, Names::lock().get())
                .map_err(|err| PyValueError::new_err(err.to_string()))?;
            Ok(Self { inner })
        }

        fn __reduce__<'py>(
            &self,
            py: Python<'py>,
        ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyBytes>,))> {
            let from_bytes = py.get_type::<Features>().getattr("from_bytes")?;
            Ok((from_bytes, (self.to_bytes(py),)))
        }

        /// Bytes held by this record and what it points to (names are shared, not counted).
        fn __sizeof__(&self) -> usize {
            self.inner.size() + 16 + std::mem::size_of::<usize>() * 2
        }

        // --- plain fields --------------------------------------------------------------------

        #[getter]
        fn first_seen_ms(&self) -> i64 {
            self.inner.first_seen_ms
        }
        #[getter]
        fn last_seen_ms(&self) -> i64 {
            self.inner.last_seen_ms
        }
        #[getter]
        fn last_event_id(&self) -> &str {
            &self.inner.last_event_id
        }
        #[getter]
        fn orders(&self) -> i64 {
            self.inner.purchases().orders
        }
        #[getter]
        fn refunds(&self) -> i64 {
            self.inner.purchases().refunds
        }
        #[getter]
        fn lifetime_spend(&self) -> f64 {
            self.inner.purchases().lifetime_spend
        }
        #[getter]
        fn first_order_ms(&self) -> Option<i64> {
            self.inner.purchases().first_order_ms
        }
        #[getter]
        fn last_order_ms(&self) -> Option<i64> {
            self.inner.purchases().last_order_ms
        }
        #[getter]
        fn last_order_id(&self) -> Option<&str> {
            self.inner.purchases().last_order_id.as_deref()
        }
        #[getter]
        fn order_gap_ms(&self) -> f64 {
            self.inner.purchases().order_gap_ms
        }
        #[getter]
        fn last_store(&self) -> Option<&'static str> {
            known(self.inner.last_store).map(name)
        }
        #[getter]
        fn last_city(&self) -> Option<&'static str> {
            known(self.inner.last_city).map(name)
        }
        #[getter]
        fn last_country(&self) -> Option<&'static str> {
            known(self.inner.last_country).map(name)
        }
        /// Activity per local hour of day (24 counts, halved before one passes 255).
        #[getter]
        fn hours<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            PyBytes::new(py, &self.inner.hours)
        }
        /// Products of the last order.
        #[getter]
        fn bought<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
            PyTuple::new(py, names(&self.inner.purchases().bought))
        }
        /// Identify traits, in the order first set.
        #[getter]
        fn traits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            let out = PyDict::new(py);
            for (key, value) in self.inner.traits() {
                out.set_item(TRAIT_KEYS[usize::from(key)], trait_value(py, &value)?)?;
            }
            Ok(out)
        }
        /// One trait's value (``None``: not known).
        fn trait_value<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<PyObject>> {
            let Some(code) = TRAIT_KEYS.iter().position(|k| *k == key) else {
                return Ok(None);
            };
            self.inner
                .traits()
                .find(|(k, _)| usize::from(*k) == code)
                .map(|(_, value)| trait_value(py, &value))
                .transpose()
        }
        /// Consent per channel, in the order first set.
        #[getter]
        fn consent<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            let out = PyDict::new(py);
            for (channel, granted) in self.inner.consent.iter() {
                out.set_item(CHANNELS[usize::from(channel)], granted)?;
            }
            Ok(out)
        }

        // --- session and cart ------------------------------------------------------------------

        /// The session's id, ``None`` when there is none.
        #[getter]
        fn session_id(&self) -> Option<&str> {
            self.inner.session.as_ref().map(|s| &*s.id)
        }
        /// The session's ``(started_ms, last_ms, pages)``, ``None`` when there is none.
        #[getter]
        fn session_times(&self) -> Option<(i64, i64, i64)> {
            self.inner
                .session
                .as_ref()
                .map(|s| (s.started_ms, s.last_ms, s.pages))
        }
        /// Products viewed in the session, oldest first (the last 10).
        #[getter]
        fn session_products<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
            let products = self
                .inner
                .session
                .as_ref()
                .map_or(&[][..], |s| &s.products[..]);
            PyList::new(py, names(products))
        }
        /// Products viewed in the session if it is still going at ``at_ms`` (else none).
        fn live_session_products<'py>(
            &self,
            py: Python<'py>,
            at_ms: i64,
            timeout_ms: i64,
        ) -> PyResult<Bound<'py, PyList>> {
            let products = match &self.inner.session {
                Some(s) if at_ms - s.last_ms <= timeout_ms => &s.products[..],
                _ => &[][..],
            };
            PyList::new(py, names(products))
        }
        /// The cart's id, ``None`` when there is none.
        #[getter]
        fn cart_id(&self) -> Option<&str> {
            self.inner.cart.as_ref().map(|c| &*c.id)
        }
        /// The cart's value (0.0 when there is none).
        #[getter]
        fn cart_value(&self) -> f64 {
            self.inner.cart.as_ref().map_or(0.0, |c| c.value)
        }
        /// The cart's items: its lines' quantities summed (0 when there is none).
        #[getter]
        fn cart_items(&self) -> i64 {
            self.inner.cart.as_ref().map_or(0, |c| c.items())
        }
        /// The cart's ``(started_ms, last_add_ms)``, ``None`` when there is none.
        #[getter]
        fn cart_times(&self) -> Option<(i64, i64)> {
            self.inner
                .cart
                .as_ref()
                .map(|c| (c.started_ms, c.last_add_ms))
        }
        /// The cart's lines: product -> ``(quantity, unit price)``, in the order first added.
        #[getter]
        fn cart_lines<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            let out = PyDict::new(py);
            if let Some(cart) = &self.inner.cart {
                let ids: Vec<Id> = cart.lines.iter().map(|l| l.product).collect();
                for (line, product) in cart.lines.iter().zip(names(&ids)) {
                    out.set_item(product, (line.quantity, line.price))?;
                }
            }
            Ok(out)
        }
        /// The cart's products, in the order first added.
        #[getter]
        fn cart_products<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
            let ids: Vec<Id> = self
                .inner
                .cart
                .as_ref()
                .map_or_else(Vec::new, |c| c.lines.iter().map(|l| l.product).collect());
            PyList::new(py, names(&ids))
        }

        // --- derived features ------------------------------------------------------------------

        /// Events per kind in ``window`` ("1h", "24h", "7d", "30d") before ``now_ms``.
        fn counts<'py>(
            &self,
            py: Python<'py>,
            window_name: &str,
            now_ms: i64,
        ) -> PyResult<Bound<'py, PyDict>> {
            let counts = self.inner.counts.counts(window(window_name)?, now_ms);
            let out = PyDict::new(py);
            for (kind, count) in COUNTED_KINDS.iter().zip(counts) {
                out.set_item(*kind, count)?;
            }
            Ok(out)
        }
        /// The windowed counts' ``(start minute, kind code, count)`` triples, flat.
        #[getter]
        fn buckets(&self) -> Vec<i32> {
            self.inner.counts.flat()
        }
        /// Categories by decayed affinity, strongest first (ties by name), the first ``n``.
        #[pyo3(signature = (n = None))]
        fn top_categories(&self, n: Option<usize>) -> Vec<&'static str> {
            ranked(&self.inner.categories, n)
        }
        /// Products by decayed affinity, strongest first (ties by name), the first ``n``.
        #[pyo3(signature = (n = None))]
        fn top_products(&self, n: Option<usize>) -> Vec<&'static str> {
            ranked(&self.inner.products, n)
        }
        /// Category affinities decayed to ``now_ms``, rounded to 4 digits, by name.
        fn categories_as_of<'py>(
            &self,
            py: Python<'py>,
            now_ms: i64,
        ) -> PyResult<Bound<'py, PyDict>> {
            scores_dict(
                py,
                decayed(&self.inner.categories, now_ms, CATEGORY_HALF_LIFE_MS),
            )
        }
        /// Product affinities decayed to ``now_ms``, rounded to 4 digits, by name.
        fn products_as_of<'py>(
            &self,
            py: Python<'py>,
            now_ms: i64,
        ) -> PyResult<Bound<'py, PyDict>> {
            scores_dict(
                py,
                decayed(&self.inner.products, now_ms, PRODUCT_HALF_LIFE_MS),
            )
        }
        /// The category affinities as kept (against their landmark), in the order first added.
        #[getter]
        fn category_scores<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            scores_dict(py, kept(&self.inner.categories))
        }
        /// The product affinities as kept (against their landmark), in the order first added.
        #[getter]
        fn product_scores<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            scores_dict(py, kept(&self.inner.products))
        }
        /// The affinities' landmarks ``(categories, products)`` (``None``: nothing added yet).
        #[getter]
        fn affinity_landmarks(&self) -> (Option<i64>, Option<i64>) {
            (self.inner.categories.ref_ms(), self.inner.products.ref_ms())
        }
        /// "new", "active" or "lapsed" at ``now_ms``.
        fn lifecycle(&self, now_ms: i64, new_days: i64, lapse_days: i64) -> &'static str {
            self.inner
                .lifecycle(now_ms, &lifecycle(new_days, lapse_days, 0.0, NO_POPULATION))
        }
        /// A repeat buyer overdue against their own rhythm, not yet lapsed.
        fn at_risk(&self, now_ms: i64, lapse_days: i64, at_risk_gap_factor: f64) -> bool {
            self.inner.at_risk(
                now_ms,
                &lifecycle(0, lapse_days, at_risk_gap_factor, NO_POPULATION),
            )
        }
        /// The chance (0-1) this buyer reaches ``lapse_days`` after their last order without
        /// another (BG/NBD; ``population``: ``(r, alpha, a, b, p, q, v, horizon_days)``); ``None``
        /// before an order.
        fn lapse_risk(
            &self,
            now_ms: i64,
            lapse_days: i64,
            population: PopulationArgs,
        ) -> Option<f64> {
            self.inner
                .lapse_risk(now_ms, &lifecycle(0, lapse_days, 0.0, population))
        }
        /// BG/NBD's P(alive) (1 before a repeat order; ``None`` before an order).
        fn p_alive(&self, now_ms: i64, population: PopulationArgs) -> Option<f64> {
            self.inner
                .p_alive(now_ms, &lifecycle(0, 0, 0.0, population))
        }
        /// BG/NBD's expected orders over the horizon (``None`` before an order).
        fn expected_orders(&self, now_ms: i64, population: PopulationArgs) -> Option<f64> {
            self.inner
                .expected_orders(now_ms, &lifecycle(0, 0, 0.0, population))
        }
        /// Gamma-Gamma's expected order value (``None`` before an order).
        fn expected_order_value(&self, population: PopulationArgs) -> Option<f64> {
            self.inner
                .expected_order_value(&lifecycle(0, 0, 0.0, population))
        }
        /// Expected orders over the horizon times expected order value (``None`` before an order).
        fn clv(&self, now_ms: i64, population: PopulationArgs) -> Option<f64> {
            self.inner.clv(now_ms, &lifecycle(0, 0, 0.0, population))
        }
        /// The next time ``lifecycle``, ``at_risk`` (and with ``risk_steps`` ``lapse_risk``, to the
        /// next tenth; with ``alive_steps`` ``p_alive``, below the next tenth) can change with no
        /// new event.
        #[pyo3(signature = (now_ms, new_days, lapse_days, at_risk_gap_factor, risk_steps, population, alive_steps=false))]
        #[allow(clippy::too_many_arguments)]
        fn next_boundary(
            &self,
            now_ms: i64,
            new_days: i64,
            lapse_days: i64,
            at_risk_gap_factor: f64,
            risk_steps: bool,
            population: PopulationArgs,
            alive_steps: bool,
        ) -> Option<i64> {
            self.inner.next_boundary(
                now_ms,
                &lifecycle(new_days, lapse_days, at_risk_gap_factor, population),
                risk_steps,
                alive_steps,
            )
        }
        /// The local hour of day with most activity (``None``: none yet).
        fn preferred_hour(&self) -> Option<u8> {
            self.inner.preferred_hour()
        }

        fn __repr__(&self) -> String {
            format!(
                "Features(first_seen_ms={}, last_seen_ms={}, orders={})",
                self.inner.first_seen_ms,
                self.inner.last_seen_ms,
                self.inner.purchases().orders
            )
        }
    }

    fn trait_value(py: Python<'_>, value: &Trait) -> PyResult<PyObject> {
        match value {
            Trait::Text(id) => name(*id).into_py_any(py),
            Trait::Flag(flag) => flag.into_py_any(py),
        }
    }

    /// An affinity's items by decayed score, strongest first (ties by name), the first ``n``.
    pub(crate) fn ranked(topk: &TopK, n: Option<usize>) -> Vec<&'static str> {
        let mut table = Names::lock();
        let ids = topk.top(n.unwrap_or(usize::MAX), table.get());
        ids.into_iter().map(|id| table.get().name(id)).collect()
    }

    /// An affinity's scores decayed to ``now_ms`` (rounded to 4 digits), by name.
    fn decayed(topk: &TopK, now_ms: i64, half_life_ms: i64) -> Vec<(&'static str, f64)> {
        let mut table = Names::lock();
        let table = table.get();
        topk.as_of(now_ms, half_life_ms, table)
            .into_iter()
            .map(|(id, s)| (table.name(id), s))
            .collect()
    }

    pub(crate) fn kept(topk: &TopK) -> Vec<(&'static str, f64)> {
        let ids: Vec<Id> = topk.pairs().map(|(id, _)| id).collect();
        names(&ids)
            .into_iter()
            .zip(topk.pairs().map(|(_, s)| s))
            .collect()
    }

    fn scores_dict<'py>(
        py: Python<'py>,
        scores: Vec<(&'static str, f64)>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (item, score) in scores {
            out.set_item(item, score)?;
        }
        Ok(out)
    }
}
