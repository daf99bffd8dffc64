//! The recommender: a session-based item-to-item co-occurrence model (see
//! `operators/models/recommend.py` for what it does and why).
//!
//! Products and categories are interned to dense `u32` ids. Every answer is the same as the
//! model's first (Python) implementation gave, to the bit: neighbours keep their insertion
//! order (floats are summed in the same order), ties go by score then name (names compare by
//! code point, as Python compares `str`), and pruning and popularity ranks follow the same steps.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Earlier products in the session that a new one is linked to.
pub const WINDOW: usize = 4;
/// Neighbours kept per product (pruned from twice as many).
pub const NEIGHBOURS: usize = 30;
/// Most popular products kept, overall and per category.
pub const POPULAR: usize = 50;
/// Products recommended by a progressive check.
pub const K: usize = 10;
/// Links a product's list grows by at most when full.
const GROWTH: usize = 8;
/// The weight of a link between two products bought in one order (a view's link to the product
/// viewed just before it weighs 1): a basket is a stronger signal than a browsing session.
pub const BASKET_WEIGHT: f64 = 2.0;
/// Products of an order each one is linked to at most, on each side (see [`basket_pairs`]).
pub const BASKET_WINDOW: usize = 8;
/// Links an order makes at most (unless it has more distinct products: then one per product).
pub const BASKET_LINKS: usize = 80;
/// Distinct products of an order found again by a scan of those before them (beyond: by marks).
const FEW_LINES: usize = 64;

use crate::names::prefetch;
pub use crate::names::{Id, Names};

/// A division by zero where the Python model raised `ZeroDivisionError` (category affinities
/// that sum to zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroDivision;

/// The parameters as [`CoOccurrence::export`] gives them, every level sorted by name.
pub struct Export<'a> {
    pub links: Vec<(&'a str, Vec<(&'a str, f64)>)>,
    pub counts: Vec<(&'a str, i64)>,
    pub categories: Vec<(&'a str, &'a str)>,
}

/// The whole state, in the model's own orders (for snapshots that continue identically).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Layout {
    pub links: Vec<(String, Vec<(String, f64)>)>,
    pub counts: Vec<(String, i64)>,
    pub popular: Vec<String>,
    pub category_of: Vec<(String, String)>,
    pub popular_in: Vec<(String, Vec<String>)>,
}

/// Sums by product that remember the order products were first added in (a dict's order).
#[derive(Debug, Clone, Default)]
struct Tally {
    value: Vec<f64>,
    present: Vec<bool>,
    order: Vec<Id>,
}

impl Tally {
    fn add(&mut self, id: Id, amount: f64) {
        let index = id as usize;
        if index >= self.value.len() {
            self.value.resize(index + 1, 0.0);
            self.present.resize(index + 1, false);
        }
        if !self.present[index] {
            self.present[index] = true;
            self.order.push(id);
        }
        self.value[index] += amount;
    }

    fn get(&self, id: Id) -> Option<f64> {
        let index = id as usize;
        (index < self.present.len() && self.present[index]).then(|| self.value[index])
    }

    /// The sum of the values in insertion order (as Python's `sum` of a dict's values).
    fn total(&self) -> f64 {
        self.order
            .iter()
            .fold(0.0, |sum, id| sum + self.value[*id as usize])
    }

    fn clear(&mut self) {
        for id in self.order.drain(..) {
            self.value[id as usize] = 0.0;
            self.present[id as usize] = false;
        }
    }
}

/// A link to a neighbour and its weight, packed to 12 bytes (a product keeps up to twice
/// [`NEIGHBOURS`] of them in every replica).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, packed(4))]
struct Link {
    to: Id,
    weight: f64,
}

impl From<(Id, f64)> for Link {
    fn from((to, weight): (Id, f64)) -> Self {
        Self { to, weight }
    }
}

/// One replica of the recommender.
#[derive(Debug, Clone, Default)]
pub struct CoOccurrence {
    pub frozen: bool,
    products: Names,
    categories: Names,
    /// By product id: its neighbours and link weights in insertion order (none: never linked).
    links: Vec<Option<Vec<Link>>>,
    /// By product id: how often it was learnt (none: never).
    counts: Vec<Option<i64>>,
    counted: usize,
    /// By product id: its category (which may be empty, from a model file).
    category_of: Vec<Option<Id>>,
    popular: Vec<Id>,
    /// By category id: its most popular products (empty: none).
    popular_in: Vec<Vec<Id>>,
    pub checked: u64,
    pub hits: u64,
    pub reciprocal_rank_micro: u64,
    pub baseline_hits: u64,
    neighbours: Tally,
    in_categories: Tally,
    skip: Tally,
}

impl CoOccurrence {
    pub fn new(frozen: bool) -> Self {
        Self {
            frozen,
            ..Self::default()
        }
    }

    fn product(&mut self, name: &str) -> Id {
        let (id, new) = self.products.interned(name);
        if new {
            self.links.push(None);
            self.counts.push(None);
            self.category_of.push(None);
        }
        id
    }

    fn category(&mut self, name: &str) -> Id {
        let (id, new) = self.categories.interned(name);
        if new {
            self.popular_in.push(Vec::new());
        }
        id
    }

    /// A non-empty category of `product`, if it has one (an empty one counts as none).
    fn category_of(&self, product: Id) -> Option<Id> {
        self.category_of[product as usize].filter(|c| !self.categories.name(*c).is_empty())
    }

    fn count(&self, product: Id) -> i64 {
        self.counts[product as usize].unwrap_or(0)
    }

    /// `product` (of `category`) was touched after `history` (the session's earlier products).
    pub fn learn(&mut self, history: &[&str], product: &str, category: Option<&str>) {
        if self.frozen {
            return;
        }
        let name = product;
        let product = self.product(product);
        let mut distance = 0;
        for earlier in history[history.len().saturating_sub(WINDOW)..].iter().rev() {
            let earlier = self.product(earlier);
            if earlier == product {
                continue;
            }
            distance += 1;
            let weight = 1.0 / f64::from(distance);
            self.link(earlier, product, weight);
            self.link(product, earlier, weight);
        }
        self.count_once(product, name, category);
    }

    /// The products of one order were bought together (`lines`: product and category, in the
    /// order's order; a product on several lines counts once, with its first line's category):
    /// each pair of [`basket_pairs`] is linked both ways with [`BASKET_WEIGHT`], then each product
    /// is counted once for its popularity, in the order's order.
    pub fn learn_basket<'a, Lines>(&mut self, lines: Lines)
    where
        Lines: IntoIterator<Item = (&'a str, Option<&'a str>)>,
        Lines::IntoIter: Clone,
    {
        if self.frozen {
            return;
        }
        let lines = lines.into_iter();
        // an order's products are spread over the whole model: their reads start together
        self.products
            .prefetch(lines.clone().map(|(product, _)| product));
        let mut basket: Vec<(Id, &str, Option<&str>)> = Vec::new();
        let mut many: HashSet<Id, BuildHasherDefault<IdHasher>> = HashSet::default();
        for (name, category) in lines {
            let product = self.product(name);
            // a few products: a scan of those before, in the cache (a set of its own beyond)
            let new = if basket.len() < FEW_LINES {
                basket.iter().all(|(p, _, _)| *p != product)
            } else {
                if many.is_empty() {
                    many.extend(basket.iter().map(|(p, _, _)| *p));
                }
                many.insert(product)
            };
            if new {
                basket.push((product, name, category));
            }
        }
        for &(product, _, _) in &basket {
            prefetch(&self.links[product as usize]);
            prefetch(&self.counts[product as usize]);
            prefetch(&self.category_of[product as usize]);
        }
        for &(product, _, _) in &basket {
            if let Some(links) = &self.links[product as usize] {
                prefetch(links.as_ptr());
            }
        }
        for (a, b) in basket_pairs(basket.len()) {
            let (a, b) = (basket[a].0, basket[b].0);
            self.link(a, b, BASKET_WEIGHT);
            self.link(b, a, BASKET_WEIGHT);
        }
        for (product, name, category) in basket {
            self.count_once(product, name, category);
        }
    }

    /// One more touch of `product` (of `category`): its count and popularity ranks.
    fn count_once(&mut self, product: Id, name: &str, category: Option<&str>) {
        let slot = &mut self.counts[product as usize];
        if slot.is_none() {
            self.counted += 1;
        }
        let count = slot.unwrap_or(0) + 1;
        *slot = Some(count);
        let mut popular = std::mem::take(&mut self.popular);
        self.rank(&mut popular, product, name, count);
        self.popular = popular;
        if let Some(category) = category.filter(|c| !c.is_empty()) {
            let category = self.category(category);
            self.category_of[product as usize] = Some(category);
            let mut ranked = std::mem::take(&mut self.popular_in[category as usize]);
            self.rank(&mut ranked, product, name, count);
            self.popular_in[category as usize] = ranked;
        }
    }

    fn link(&mut self, from: Id, to: Id, weight: f64) {
        let neighbours = self.links[from as usize].get_or_insert_with(Vec::new);
        match neighbours.iter_mut().find(|link| link.to == to) {
            Some(link) => link.weight += weight,
            None => {
                if neighbours.len() == neighbours.capacity() {
                    // grow by a few links at a time, to no more than the list ever holds: a
                    // replica's lists are most of its bytes, and a doubled list is a third empty
                    let most = (2 * NEIGHBOURS + 1).saturating_sub(neighbours.len()).max(1);
                    neighbours.reserve_exact(neighbours.len().clamp(4, GROWTH).min(most));
                }
                neighbours.push(Link { to, weight });
            }
        }
        if neighbours.len() > 2 * NEIGHBOURS {
            strongest(neighbours, &self.products);
            neighbours.shrink_to_fit(); // it grows again a few links at a time
        }
    }

    /// Keep `popular` the most popular products, by count then name, at most [`POPULAR`]: the
    /// product (named `product_name`: the name at hand, not read again) moves up a few places at
    /// most (a count grows by one), by insertion.
    fn rank(&self, popular: &mut Vec<Id>, product: Id, product_name: &str, count: i64) {
        let name = |id: Id| self.products.name(id);
        if let Some(&last) = popular.last().filter(|_| popular.len() >= POPULAR) {
            let last_count = self.count(last);
            if count < last_count || (count == last_count && product_name > name(last)) {
                return; // the long tail stays out cheaply
            }
        }
        let mut index = match popular.iter().position(|&p| p == product) {
            None => popular.len(),
            Some(index) => {
                if index == 0 || self.count(popular[index - 1]) > count {
                    return; // still in its place
                }
                popular.remove(index);
                index
            }
        };
        while index > 0 {
            let before = popular[index - 1];
            let before_count = self.count(before);
            if before_count > count || (before_count == count && name(before) < product_name) {
                break;
            }
            index -= 1;
        }
        popular.insert(index, product);
        popular.truncate(POPULAR);
    }

    /// Top `k` products after `history` (most recent last), none of `history` or `exclude`;
    /// `interests` count as older history but may be shown; `categories` (affinities, in their
    /// order) weigh the categories' popular products.
    pub fn recommend(
        &mut self,
        history: &[&str],
        k: usize,
        exclude: &[&str],
        interests: &[&str],
        categories: &[(&str, f64)],
    ) -> Result<Vec<Id>, ZeroDivision> {
        for name in history.iter().chain(exclude) {
            if let Some(id) = self.products.get(name) {
                self.skip.add(id, 0.0);
            }
        }
        let ranked = self.rank_for(history, k, interests, categories);
        self.skip.clear();
        self.neighbours.clear();
        self.in_categories.clear();
        ranked
    }

    fn skipped(&self, id: Id) -> bool {
        self.skip.get(id).is_some()
    }

    fn rank_for(
        &mut self,
        history: &[&str],
        k: usize,
        interests: &[&str],
        categories: &[(&str, f64)],
    ) -> Result<Vec<Id>, ZeroDivision> {
        let recent: Vec<Option<Id>> = if history.len() < WINDOW {
            let all: Vec<&str> = interests.iter().chain(history).copied().collect();
            all[all.len().saturating_sub(WINDOW)..]
                .iter()
                .rev()
                .map(|p| self.products.get(p))
                .collect()
        } else {
            history[history.len() - WINDOW..]
                .iter()
                .rev()
                .map(|p| self.products.get(p))
                .collect()
        };
        // co-occurrence: the neighbours of the recent products, by 1 / distance
        let mut neighbours = std::mem::take(&mut self.neighbours);
        for (distance, product) in (1..).zip(&recent) {
            let Some(linked) = product.and_then(|p| self.links[p as usize].as_ref()) else {
                continue;
            };
            for &Link { to, weight } in linked {
                if !self.skipped(to) {
                    neighbours.add(to, weight / f64::from(distance));
                }
            }
        }
        // the categories of the recent products, by 1 / distance, then the customer's affinities
        let mut weights: Vec<(Id, f64)> = Vec::new();
        for (distance, product) in (1..).zip(&recent) {
            if let Some(category) = product.and_then(|p| self.category_of(p)) {
                add_weight(&mut weights, category, 1.0 / f64::from(distance));
            }
        }
        let total = weights.iter().fold(0.0, |sum, (_, w)| sum + w);
        let total = if total == 0.0 { 1.0 } else { total };
        for (_, weight) in weights.iter_mut() {
            *weight /= total;
        }
        let affinity = categories.iter().fold(0.0, |sum, (_, score)| sum + score);
        for (name, score) in categories {
            if affinity == 0.0 {
                return Err(ZeroDivision);
            }
            if let Some(category) = self.categories.get(name) {
                add_weight(&mut weights, category, score / affinity);
            }
        }
        let mut in_categories = std::mem::take(&mut self.in_categories);
        for (category, weight) in weights {
            let popular = &self.popular_in[category as usize];
            for &other in &popular[..popular.len().min(2 * k)] {
                if !self.skipped(other) {
                    in_categories.add(other, self.count(other) as f64 * weight);
                }
            }
        }
        let ranked = self.top(&mut neighbours, &in_categories, k);
        self.neighbours = neighbours;
        self.in_categories = in_categories;
        let mut ranked = ranked?;
        for &product in &self.popular {
            if ranked.len() >= k {
                break;
            }
            if !self.skipped(product) && !ranked.contains(&product) {
                ranked.push(product);
            }
        }
        Ok(ranked)
    }

    /// The `k` best products of both evidences, each normalised to sum 1 and added (into `scores`,
    /// which holds the neighbours' evidence).
    fn top(
        &self,
        scores: &mut Tally,
        in_categories: &Tally,
        k: usize,
    ) -> Result<Vec<Id>, ZeroDivision> {
        let total = scores.total();
        if total == 0.0 && !scores.order.is_empty() {
            return Err(ZeroDivision);
        }
        for &p in &scores.order {
            scores.value[p as usize] /= total;
        }
        if !in_categories.order.is_empty() {
            let total = in_categories.total();
            if total == 0.0 {
                return Err(ZeroDivision);
            }
            for &p in &in_categories.order {
                scores.add(p, in_categories.value[p as usize] / total);
            }
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let mut best: Vec<(f64, Id)> = scores
            .order
            .iter()
            .map(|&p| (scores.value[p as usize], p))
            .collect();
        let order =
            |a: &(f64, Id), b: &(f64, Id)| by_score_then_name(a.0, a.1, b.0, b.1, &self.products);
        if best.len() > k {
            best.select_nth_unstable_by(k - 1, order);
            best.truncate(k);
        }
        best.sort_unstable_by(order);
        Ok(best.into_iter().map(|(_, p)| p).collect())
    }

    /// The baseline: the most popular products not in `history`.
    pub fn most_popular(&self, history: &[&str], k: usize) -> Vec<Id> {
        let skip: Vec<Id> = history
            .iter()
            .filter_map(|p| self.products.get(p))
            .collect();
        self.popular
            .iter()
            .copied()
            .filter(|p| !skip.contains(p))
            .take(k)
            .collect()
    }

    /// Progressive validation: was `product` predicted from `history` (and by "most popular")?
    pub fn check(
        &mut self,
        history: &[&str],
        product: &str,
        interests: &[&str],
        categories: &[(&str, f64)],
    ) -> Result<(), ZeroDivision> {
        if history.is_empty() && interests.is_empty() {
            return Ok(());
        }
        self.checked += 1;
        let predicted = self.recommend(history, K, &[], interests, categories)?;
        let Some(product) = self.products.get(product) else {
            return Ok(());
        };
        if let Some(index) = predicted.iter().position(|&p| p == product) {
            self.hits += 1;
            self.reciprocal_rank_micro += 1_000_000 / (index as u64 + 1);
        }
        if self.most_popular(history, K).contains(&product) {
            self.baseline_hits += 1;
        }
        Ok(())
    }

    pub fn name(&self, product: Id) -> &str {
        self.products.name(product)
    }

    /// Products learnt at least once (or given a count by a model file).
    pub fn products(&self) -> usize {
        self.counted
    }

    pub fn export(&self) -> Export<'_> {
        let names = &self.products;
        let all = |present: &dyn Fn(usize) -> bool| -> Vec<Id> {
            names.by_name(
                (0..names.len())
                    .filter(|&i| present(i))
                    .map(|i| i as Id)
                    .collect(),
            )
        };
        let links = all(&|i| self.links[i].is_some())
            .into_iter()
            .map(|p| {
                let mut neighbours: Vec<(&str, f64)> = self.links[p as usize]
                    .iter()
                    .flatten()
                    .map(|&Link { to, weight }| (names.name(to), weight))
                    .collect();
                neighbours.sort_unstable_by(|a, b| a.0.cmp(b.0));
                (names.name(p), neighbours)
            })
            .collect();
        let counts = all(&|i| self.counts[i].is_some())
            .into_iter()
            .map(|p| (names.name(p), self.count(p)))
            .collect();
        let categories = all(&|i| self.category_of[i].is_some())
            .into_iter()
            .map(|p| {
                (
                    names.name(p),
                    self.categories
                        .name(self.category_of[p as usize].unwrap_or(0)),
                )
            })
            .collect();
        Export {
            links,
            counts,
            categories,
        }
    }

    /// Start from exported parameters: each product's strongest [`NEIGHBOURS`] links, strongest
    /// first; popularity ranked afresh from the counts. The progressive counters stay.
    pub fn load(
        &mut self,
        links: Vec<(&str, Vec<(&str, f64)>)>,
        counts: Vec<(&str, i64)>,
        categories: Vec<(&str, &str)>,
    ) {
        self.reset();
        for (product, neighbours) in links {
            let product = self.product(product);
            let mut kept: Vec<(Id, f64)> = neighbours
                .into_iter()
                .map(|(q, w)| (self.product(q), w))
                .collect();
            kept.sort_by(|a, b| by_score_then_name(a.1, a.0, b.1, b.0, &self.products));
            kept.truncate(NEIGHBOURS);
            self.links[product as usize] = Some(kept.into_iter().map(Link::from).collect());
        }
        for (product, count) in counts {
            let product = self.product(product);
            if self.counts[product as usize].replace(count).is_none() {
                self.counted += 1;
            }
        }
        for (product, category) in categories {
            let product = self.product(product);
            self.category_of[product as usize] = Some(self.category(category));
        }
        let counted: Vec<Id> = (0..self.products.len() as Id)
            .filter(|&p| self.counts[p as usize].is_some())
            .collect();
        let mut by_count = counted;
        by_count.sort_by(|&a, &b| {
            self.count(b)
                .cmp(&self.count(a))
                .then_with(|| self.name(a).cmp(self.name(b)))
        });
        for product in by_count {
            if self.popular.len() < POPULAR {
                self.popular.push(product);
            }
            if let Some(category) = self.category_of(product) {
                let ranked = &mut self.popular_in[category as usize];
                if ranked.len() < POPULAR {
                    ranked.push(product);
                }
            }
        }
    }

    fn reset(&mut self) {
        *self = Self {
            frozen: self.frozen,
            checked: self.checked,
            hits: self.hits,
            reciprocal_rank_micro: self.reciprocal_rank_micro,
            baseline_hits: self.baseline_hits,
            ..Self::default()
        };
    }

    /// The state in the model's own orders (see [`CoOccurrence::restore`]).
    pub fn layout(&self) -> Layout {
        let names = &self.products;
        let name = |id: &Id| names.name(*id).to_owned();
        let ids = 0..names.len() as Id;
        Layout {
            links: ids
                .clone()
                .filter_map(|p| {
                    let linked = self.links[p as usize].as_ref()?;
                    Some((
                        name(&p),
                        linked
                            .iter()
                            .map(|&Link { to, weight }| (name(&to), weight))
                            .collect(),
                    ))
                })
                .collect(),
            counts: ids
                .clone()
                .filter_map(|p| Some((name(&p), self.counts[p as usize]?)))
                .collect(),
            popular: self.popular.iter().map(name).collect(),
            category_of: ids
                .filter_map(|p| {
                    Some((
                        name(&p),
                        self.categories
                            .name(self.category_of[p as usize]?)
                            .to_owned(),
                    ))
                })
                .collect(),
            popular_in: (0..self.categories.len() as Id)
                .filter(|c| !self.popular_in[*c as usize].is_empty())
                .map(|c| {
                    (
                        self.categories.name(c).to_owned(),
                        self.popular_in[c as usize].iter().map(name).collect(),
                    )
                })
                .collect(),
        }
    }

    /// Exactly the state [`CoOccurrence::layout`] gave (the progressive counters and `frozen` stay).
    pub fn restore(&mut self, layout: &Layout) {
        self.reset();
        for (product, neighbours) in &layout.links {
            let product = self.product(product);
            let linked = neighbours
                .iter()
                .map(|(q, w)| Link::from((self.product(q), *w)))
                .collect();
            self.links[product as usize] = Some(linked);
        }
        for (product, count) in &layout.counts {
            let product = self.product(product);
            if self.counts[product as usize].replace(*count).is_none() {
                self.counted += 1;
            }
        }
        self.popular = layout.popular.iter().map(|p| self.product(p)).collect();
        for (product, category) in &layout.category_of {
            let product = self.product(product);
            self.category_of[product as usize] = Some(self.category(category));
        }
        for (category, ranked) in &layout.popular_in {
            let category = self.category(category);
            self.popular_in[category as usize] = ranked.iter().map(|p| self.product(p)).collect();
        }
    }
}

/// A hasher for interned ids (dense integers the model chose, so no input can flood it).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type ById<V> = HashMap<Id, V, BuildHasherDefault<IdHasher>>;

/// The parameters of several replicas in one: link weights and counts added up in the replicas'
/// order, a product's category from the last replica that names one.
#[derive(Debug, Default)]
pub struct Merge {
    products: Names,
    links: Vec<Option<ById<f64>>>,
    counts: Vec<Option<i64>>,
    categories: Vec<Option<String>>,
}

impl Merge {
    fn product(&mut self, name: &str) -> Id {
        let (id, new) = self.products.interned(name);
        if new {
            self.links.push(None);
            self.counts.push(None);
            self.categories.push(None);
        }
        id
    }

    pub fn add_links<'a>(
        &mut self,
        product: &str,
        neighbours: impl IntoIterator<Item = (&'a str, f64)>,
    ) {
        let product = self.product(product);
        let ids: Vec<(Id, f64)> = neighbours
            .into_iter()
            .map(|(q, w)| (self.product(q), w))
            .collect();
        let merged = self.links[product as usize].get_or_insert_with(ById::default);
        for (other, weight) in ids {
            *merged.entry(other).or_insert(0.0) += weight;
        }
    }

    pub fn add_count(&mut self, product: &str, count: i64) {
        let product = self.product(product);
        let sum = self.counts[product as usize].get_or_insert(0);
        *sum += count;
    }

    pub fn set_category(&mut self, product: &str, category: &str) {
        let product = self.product(product);
        self.categories[product as usize] = Some(category.to_owned());
    }

    /// The merged parameters, every level sorted by name.
    pub fn export(&self) -> Export<'_> {
        let names = &self.products;
        let sorted = |present: &dyn Fn(usize) -> bool| -> Vec<Id> {
            names.by_name(
                (0..names.len())
                    .filter(|&i| present(i))
                    .map(|i| i as Id)
                    .collect(),
            )
        };
        let links = sorted(&|i| self.links[i].is_some())
            .into_iter()
            .map(|p| {
                let mut neighbours: Vec<(&str, f64)> = self.links[p as usize]
                    .iter()
                    .flatten()
                    .map(|(&q, &w)| (names.name(q), w))
                    .collect();
                neighbours.sort_unstable_by(|a, b| a.0.cmp(b.0));
                (names.name(p), neighbours)
            })
            .collect();
        let counts = sorted(&|i| self.counts[i].is_some())
            .into_iter()
            .map(|p| (names.name(p), self.counts[p as usize].unwrap_or(0)))
            .collect();
        let categories = sorted(&|i| self.categories[i].is_some())
            .into_iter()
            .map(|p| {
                (
                    names.name(p),
                    self.categories[p as usize].as_deref().unwrap_or(""),
                )
            })
            .collect();
        Export {
            links,
            counts,
            categories,
        }
    }
}

/// The pairs of an order's `n` distinct products (positions) that [`CoOccurrence::learn_basket`]
/// links, at most [`BASKET_LINKS`] (or `n`): every pair when each product can be linked to all the
/// others within [`BASKET_WINDOW`] on each side, else each product to the next `window` ones, going
/// round the order (so that the first and the last have as many as the others), with `window` as
/// large as the bound allows (at least 1).
pub fn basket_pairs(n: usize) -> impl Iterator<Item = (usize, usize)> {
    let window = (BASKET_LINKS / n.max(1)).clamp(1, BASKET_WINDOW);
    let every = n <= 2 * window + 1;
    (0..n).flat_map(move |i| {
        let ahead = if every { n - 1 - i } else { window };
        (1..=ahead).map(move |d| if every { (i, i + d) } else { (i, (i + d) % n) })
    })
}

fn add_weight(weights: &mut Vec<(Id, f64)>, category: Id, weight: f64) {
    match weights.iter_mut().find(|(c, _)| *c == category) {
        Some((_, sum)) => *sum += weight,
        None => weights.push((category, 0.0 + weight)),
    }
}

/// Higher score first, then name (scores are never NaN).
fn by_score_then_name(a_score: f64, a: Id, b_score: f64, b: Id, names: &Names) -> Ordering {
    b_score
        .partial_cmp(&a_score)
        .unwrap_or(Ordering::Equal)
        .then_with(|| names.name(a).cmp(names.name(b)))
}

/// The [`NEIGHBOURS`] strongest links, strongest first (by weight, then name).
fn strongest(neighbours: &mut Vec<Link>, names: &Names) {
    let order = |a: &Link, b: &Link| by_score_then_name(a.weight, a.to, b.weight, b.to, names);
    neighbours.select_nth_unstable_by(NEIGHBOURS - 1, order);
    neighbours.truncate(NEIGHBOURS);
    neighbours.sort_unstable_by(order);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(model: &CoOccurrence, ids: &[Id]) -> Vec<String> {
        ids.iter().map(|&p| model.name(p).to_owned()).collect()
    }

    fn learnt(sessions: &[&[&str]]) -> CoOccurrence {
        let mut model = CoOccurrence::new(false);
        for session in sessions {
            for i in 0..session.len() {
                model.learn(&session[..i], session[i], Some("c"));
            }
        }
        model
    }

    #[test]
    fn products_seen_together_are_recommended_together() {
        let mut model = learnt(&[&["a", "b", "c"], &["a", "b"], &["x", "y"]]);
        let ranked = model.recommend(&["a"], 2, &[], &[], &[]).unwrap();
        assert_eq!(names(&model, &ranked), ["b", "c"]);
        let ranked = model.recommend(&["x"], 1, &["q"], &[], &[]).unwrap();
        assert_eq!(names(&model, &ranked), ["y"]);
    }

    #[test]
    fn a_product_s_links_leave_few_places_empty_as_they_grow_and_after_pruning() {
        let mut model = CoOccurrence::new(false);
        let room = |model: &CoOccurrence| {
            let links = model.links[model.products.get("hub").unwrap() as usize].as_ref();
            links.map(|links| (links.len(), links.capacity())).unwrap()
        };
        for n in 0..2 * NEIGHBOURS + 1 {
            model.learn(&["hub"], &format!("p{n:02}"), None);
            let (len, capacity) = room(&model);
            assert!(
                capacity - len < GROWTH,
                "{len} links in room for {capacity}"
            );
        }
        assert_eq!(room(&model), (NEIGHBOURS, NEIGHBOURS), "pruned");
    }

    #[test]
    fn links_are_pruned_to_the_strongest_ties_by_name() {
        let mut model = CoOccurrence::new(false);
        for n in 0..2 * NEIGHBOURS + 1 {
            model.learn(&["hub"], &format!("p{n:02}"), None);
        }
        let layout = model.layout();
        let (_, hub) = layout.links.iter().find(|(p, _)| p == "hub").unwrap();
        let kept: Vec<&str> = hub.iter().map(|(q, _)| q.as_str()).collect();
        let expected: Vec<String> = (0..NEIGHBOURS).map(|n| format!("p{n:02}")).collect();
        assert_eq!(
            kept, expected,
            "all weights tie: the first names in code point order"
        );
    }

    #[test]
    fn affinities_that_sum_to_zero_are_a_division_by_zero() {
        let mut model = learnt(&[&["a", "b"]]);
        assert_eq!(
            model.recommend(&["a"], 3, &[], &[], &[("c", 0.0)]),
            Err(ZeroDivision)
        );
        assert!(model.recommend(&["a"], 3, &[], &[], &[("c", 1.0)]).is_ok());
    }

    #[test]
    fn a_restored_layout_is_the_same_model() {
        let model = learnt(&[&["a", "b", "c", "d", "e"], &["e", "a"], &["b", "é"]]);
        let mut restored = CoOccurrence::new(false);
        restored.restore(&model.layout());
        assert_eq!(restored.layout(), model.layout());
        assert_eq!(restored.products(), model.products());
    }

    #[test]
    fn an_order_links_its_products_with_the_basket_weight_and_counts_each_once() {
        let mut model = CoOccurrence::new(false);
        model.learn_basket([
            ("a", Some("x")),
            ("b", None),
            ("a", Some("y")),
            ("c", Some("x")),
        ]);
        let layout = model.layout();
        let links: Vec<(&str, Vec<(&str, f64)>)> = layout
            .links
            .iter()
            .map(|(p, n)| {
                (
                    p.as_str(),
                    n.iter().map(|(q, w)| (q.as_str(), *w)).collect(),
                )
            })
            .collect();
        assert_eq!(
            links,
            [
                ("a", vec![("b", BASKET_WEIGHT), ("c", BASKET_WEIGHT)]),
                ("b", vec![("a", BASKET_WEIGHT), ("c", BASKET_WEIGHT)]),
                ("c", vec![("a", BASKET_WEIGHT), ("b", BASKET_WEIGHT)]),
            ]
        );
        assert_eq!(
            layout.counts,
            [("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]
        );
        assert_eq!(
            layout.category_of,
            [("a".into(), "x".into()), ("c".into(), "x".into())]
        );
    }

    #[test]
    fn an_order_makes_a_bounded_number_of_links_each_pair_once() {
        for n in [0, 1, 2, 9, 13, 14, 17, 18, 20, 21, 50, 161, 500] {
            let pairs: Vec<(usize, usize)> = basket_pairs(n).collect();
            assert!(
                pairs.len() <= BASKET_LINKS.max(n),
                "{n} products: {} links",
                pairs.len()
            );
            let mut distinct: Vec<(usize, usize)> =
                pairs.iter().map(|&(a, b)| (a.min(b), a.max(b))).collect();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), pairs.len(), "{n} products: a pair twice");
            assert!(pairs.iter().all(|&(a, b)| a != b && a < n && b < n));
            let mut linked = vec![0; n];
            for (a, b) in pairs {
                linked[a] += 1;
                linked[b] += 1;
            }
            assert!(
                linked.iter().all(|&l| l >= n.saturating_sub(1).min(2)),
                "{n} products: one left out"
            );
        }
        assert_eq!(
            basket_pairs(13).count(),
            13 * 12 / 2,
            "all pairs of a small order"
        );
        assert_eq!(basket_pairs(14).count(), 14 * 5, "five each way beyond");
    }

    #[test]
    fn a_frozen_model_learns_no_order() {
        let mut model = CoOccurrence::new(true);
        model.learn_basket([("a", None), ("b", None)]);
        assert_eq!(model.products(), 0);
    }

    #[test]
    fn merged_links_and_counts_add_up() {
        let mut merge = Merge::default();
        merge.add_links("a", [("b", 1.0), ("c", 0.5)]);
        merge.add_links("a", [("b", 0.25)]);
        merge.add_count("a", 2);
        merge.add_count("a", 3);
        merge.set_category("a", "x");
        merge.set_category("a", "y");
        let export = merge.export();
        assert_eq!(export.links, [("a", vec![("b", 1.25), ("c", 0.5)])]);
        assert_eq!(export.counts, [("a", 5)]);
        assert_eq!(export.categories, [("a", "y")]);
    }
}
