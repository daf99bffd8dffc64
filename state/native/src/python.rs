//! The Python module `state._native`: thin wrappers over the Rust components.

use pyo3::exceptions::{PyValueError, PyZeroDivisionError};
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::order_lines::python::OrderLines;
use crate::recommend::{self, Layout, WINDOW};
use crate::{dedupe, event_scan, links, recommend_bytes, sample, timestamps};

/// Dedupe memory: the last ``capacity`` message ids (as 128-bit hashes), forgetting the oldest first.
#[pyclass(module = "state._native", name = "Dedupe")]
pub(crate) struct Dedupe {
    pub(crate) inner: dedupe::Dedupe,
}

fn memory(capacity: usize, data: &[u8]) -> PyResult<dedupe::Dedupe> {
    dedupe::Dedupe::from_bytes(capacity, data).map_err(|err| PyValueError::new_err(err.to_string()))
}

#[pymethods]
impl Dedupe {
    #[new]
    fn new(capacity: usize) -> PyResult<Self> {
        if capacity == 0 {
            return Err(PyValueError::new_err(
                "a dedupe memory holds at least one id (capacity 0)",
            ));
        }
        Ok(Self {
            inner: dedupe::Dedupe::new(capacity),
        })
    }

    /// Whether ``message_id`` is remembered; remembers it if not.
    fn seen_or_add(&mut self, message_id: &str) -> bool {
        self.inner.seen_or_add(message_id)
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The memory as bytes (a format byte, then the hashes oldest first), for snapshots.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    /// A memory of ``capacity`` holding what :meth:`to_bytes` wrote (the newest ``capacity`` ids);
    /// ``ValueError`` for bytes it cannot read.
    #[staticmethod]
    fn from_bytes(capacity: usize, data: &[u8]) -> PyResult<Self> {
        let mut out = Self::new(capacity)?;
        out.inner = memory(capacity, data)?;
        Ok(out)
    }

    fn __getnewargs__(&self) -> (usize,) {
        (self.inner.capacity(),)
    }

    fn __getstate__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.to_bytes(py)
    }

    fn __setstate__(&mut self, data: &[u8]) -> PyResult<()> {
        self.inner = memory(self.inner.capacity(), data)?;
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "Dedupe(capacity={}, len={})",
            self.inner.capacity(),
            self.inner.len()
        )
    }
}

/// Identity links: anonymous id -> user id (anonymous ids kept as 128-bit hashes), the least
/// recently used forgotten first beyond ``capacity``.
#[pyclass(module = "state._native", name = "Links")]
pub(crate) struct Links {
    pub(crate) inner: links::Links<Py<PyString>>,
}

#[pymethods]
impl Links {
    #[new]
    fn new(capacity: usize) -> PyResult<Self> {
        if capacity == 0 {
            return Err(PyValueError::new_err(
                "identity links hold at least one entry (capacity 0)",
            ));
        }
        Ok(Self {
            inner: links::Links::new(capacity),
        })
    }

    /// The user id ``anonymous_id`` is linked to (``None``: none), made the most recently used.
    fn get(&mut self, py: Python<'_>, anonymous_id: &str) -> Option<Py<PyString>> {
        let key = links::anonymous_key(anonymous_id);
        self.inner.get(key).map(|user_id| user_id.clone_ref(py))
    }

    /// Link ``anonymous_id`` to ``user_id``, the most recently used link; return the user id it was
    /// linked to before (``None``: none).
    fn link(&mut self, anonymous_id: &str, user_id: Py<PyString>) -> Option<Py<PyString>> {
        self.inner
            .insert(links::anonymous_key(anonymous_id), user_id)
    }

    /// Forget the link of ``anonymous_id``; whether there was one.
    fn unlink(&mut self, anonymous_id: &str) -> bool {
        self.inner.remove(links::anonymous_key(anonymous_id))
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The links as ``(hash of the anonymous id, user id)``, least recently used first, for snapshots.
    fn entries(&self, py: Python<'_>) -> Vec<(u128, Py<PyString>)> {
        self.inner
            .entries()
            .map(|([low, high], user_id)| {
                (
                    (u128::from(high) << 64) | u128::from(low),
                    user_id.clone_ref(py),
                )
            })
            .collect()
    }

    /// Links of ``capacity`` holding what :meth:`entries` gave (the most recently used ``capacity``).
    #[staticmethod]
    fn from_entries(capacity: usize, entries: Vec<(u128, Py<PyString>)>) -> PyResult<Self> {
        let mut out = Self::new(capacity)?;
        for (hash, user_id) in entries {
            out.inner
                .insert([hash as u64, (hash >> 64) as u64], user_id);
        }
        Ok(out)
    }

    fn __repr__(&self) -> String {
        format!(
            "Links(capacity={}, len={})",
            self.inner.capacity(),
            self.inner.len()
        )
    }
}

/// Whether a view is in the sample of one in ``every`` checked for progressive quality: the first
/// byte of the BLAKE2b digest (2 bytes) of its UTF-8 id, as ``hashlib.blake2b`` computes it.
#[pyfunction]
fn sampled(message_id: &str, every: u8) -> bool {
    sample::sampled(message_id, every)
}

/// The last ``last`` strings of a sequence (a list or tuple without copying it).
fn tail<'py>(items: &Bound<'py, PyAny>, last: usize) -> PyResult<Vec<Bound<'py, PyString>>> {
    let string = |item: Bound<'py, PyAny>| item.downcast_into::<PyString>().map_err(PyErr::from);
    if let Ok(list) = items.downcast::<PyList>() {
        let n = list.len();
        return (n.saturating_sub(last)..n)
            .map(|i| string(list.get_item(i)?))
            .collect();
    }
    if let Ok(tuple) = items.downcast::<PyTuple>() {
        let n = tuple.len();
        return (n.saturating_sub(last)..n)
            .map(|i| string(tuple.get_item(i)?))
            .collect();
    }
    let all: Vec<Bound<'py, PyString>> = items
        .try_iter()?
        .map(|item| string(item?))
        .collect::<PyResult<_>>()?;
    let skip = all.len().saturating_sub(last);
    Ok(all.into_iter().skip(skip).collect())
}

fn strs<'a>(strings: &'a [Bound<'_, PyString>]) -> PyResult<Vec<&'a str>> {
    strings.iter().map(|s| s.to_str()).collect()
}

/// [`tail`] of an optional sequence (none: no items).
fn optional_tail<'py>(
    items: Option<&Bound<'py, PyAny>>,
    last: usize,
) -> PyResult<Vec<Bound<'py, PyString>>> {
    items.map_or_else(|| Ok(Vec::new()), |items| tail(items, last))
}

/// [`affinities`] as borrowed ``(category, score)`` pairs.
fn scores<'a>(affinities: &'a [(Bound<'_, PyString>, f64)]) -> PyResult<Vec<(&'a str, f64)>> {
    affinities
        .iter()
        .map(|(c, s)| Ok((c.to_str()?, *s)))
        .collect()
}

/// A mapping's ``(key, value)`` pairs in its order.
fn pairs<'py>(
    mapping: &Bound<'py, PyAny>,
) -> PyResult<Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
    if let Ok(dict) = mapping.downcast::<PyDict>() {
        return Ok(dict.iter().collect());
    }
    mapping
        .call_method0("items")?
        .try_iter()?
        .map(|item| item?.extract())
        .collect()
}

/// The category affinities: ``(name, score)`` in the mapping's order.
fn affinities<'py>(
    categories: Option<&Bound<'py, PyAny>>,
) -> PyResult<Vec<(Bound<'py, PyString>, f64)>> {
    let Some(categories) = categories.filter(|c| !c.is_none()) else {
        return Ok(Vec::new());
    };
    pairs(categories)?
        .into_iter()
        .map(|(k, v)| Ok((k.downcast_into::<PyString>()?, v.extract::<f64>()?)))
        .collect()
}

pub(crate) fn zero_division(_: recommend::ZeroDivision) -> PyErr {
    PyZeroDivisionError::new_err("float division by zero")
}

type Named<T> = Vec<(String, T)>;

fn named<'py, T>(
    mapping: &Bound<'py, PyAny>,
    value: impl Fn(&Bound<'py, PyAny>) -> PyResult<T>,
) -> PyResult<Named<T>> {
    pairs(mapping)?
        .into_iter()
        .map(|(k, v)| Ok((k.extract::<String>()?, value(&v)?)))
        .collect()
}

fn item<'py>(mapping: &Bound<'py, PyAny>, key: &str) -> PyResult<Bound<'py, PyAny>> {
    mapping.get_item(key)
}

/// An export as Python dicts: ``links`` (product -> neighbour -> weight), ``counts``, ``categories``.
fn export_dict<'py>(
    py: Python<'py>,
    export: recommend::Export<'_>,
) -> PyResult<Bound<'py, PyDict>> {
    let links = PyDict::new(py);
    for (product, neighbours) in export.links {
        links.set_item(product, neighbours.into_py_dict(py)?)?;
    }
    let out = PyDict::new(py);
    out.set_item("links", links)?;
    out.set_item("counts", export.counts.into_py_dict(py)?)?;
    out.set_item("categories", export.categories.into_py_dict(py)?)?;
    Ok(out)
}

/// One replica of the recommender (see ``operators/models/recommend.py``); products and
/// categories are interned to ids inside it.
#[pyclass(module = "state._native", name = "CoOccurrence", subclass)]
pub(crate) struct CoOccurrence {
    pub(crate) inner: recommend::CoOccurrence,
}

#[pymethods]
impl CoOccurrence {
    #[classattr]
    const WINDOW: usize = recommend::WINDOW;
    #[classattr]
    const NEIGHBOURS: usize = recommend::NEIGHBOURS;
    #[classattr]
    const POPULAR: usize = recommend::POPULAR;
    #[classattr]
    const K: usize = recommend::K;
    #[classattr]
    const BASKET_WEIGHT: f64 = recommend::BASKET_WEIGHT;
    #[classattr]
    const BASKET_WINDOW: usize = recommend::BASKET_WINDOW;
    #[classattr]
    const BASKET_LINKS: usize = recommend::BASKET_LINKS;

    #[new]
    #[pyo3(signature = (frozen = false))]
    fn new(frozen: bool) -> Self {
        Self {
            inner: recommend::CoOccurrence::new(frozen),
        }
    }

    #[getter]
    fn frozen(&self) -> bool {
        self.inner.frozen
    }

    #[setter]
    fn set_frozen(&mut self, frozen: bool) {
        self.inner.frozen = frozen;
    }

    /// Views checked (progressive validation), and how many of them were among the predictions.
    #[getter]
    fn checked(&self) -> u64 {
        self.inner.checked
    }

    #[getter]
    fn hits(&self) -> u64 {
        self.inner.hits
    }

    /// ``product`` (of ``category``) was touched after ``history`` (the session's earlier products).
    #[pyo3(signature = (history, product, category = None))]
    fn learn(
        &mut self,
        history: &Bound<'_, PyAny>,
        product: &str,
        category: Option<&str>,
    ) -> PyResult<()> {
        if self.inner.frozen {
            return Ok(());
        }
        let history = tail(history, WINDOW)?;
        self.inner.learn(&strs(&history)?, product, category);
        Ok(())
    }

    /// The products of one order were bought together: ``basket`` holds its lines bought as
    /// ``(product, category)`` pairs (category ``None`` when not sent), in the order's order.
    fn learn_basket(&mut self, basket: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.inner.frozen {
            return Ok(());
        }
        let mut lines: Vec<(Bound<'_, PyString>, Option<Bound<'_, PyString>>)> = Vec::new();
        for line in basket.try_iter()? {
            let (product, category) = line?.extract()?;
            lines.push((product, category));
        }
        let read = crate::features::python::borrowed(lines.iter().map(|(p, c)| (p, c.as_ref())))?;
        self.inner.learn_basket(read);
        Ok(())
    }

    /// Top ``k`` products after ``history`` (most recent last), none of ``history`` or ``exclude``;
    /// ``interests`` (the customer's favourite products) count as older history but may be shown;
    /// ``categories`` (the customer's category affinities) weigh the categories' popular products.
    #[pyo3(signature = (history, k = recommend::K, exclude = None, interests = None, categories = None))]
    fn recommend<'py>(
        &mut self,
        py: Python<'py>,
        history: &Bound<'py, PyAny>,
        k: usize,
        exclude: Option<&Bound<'py, PyAny>>,
        interests: Option<&Bound<'py, PyAny>>,
        categories: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let history = tail(history, usize::MAX)?;
        let exclude = optional_tail(exclude, usize::MAX)?;
        let interests = optional_tail(interests, WINDOW)?;
        let categories = affinities(categories)?;
        let scores = scores(&categories)?;
        let ranked = self
            .inner
            .recommend(
                &strs(&history)?,
                k,
                &strs(&exclude)?,
                &strs(&interests)?,
                &scores,
            )
            .map_err(zero_division)?;
        PyList::new(py, ranked.into_iter().map(|p| self.inner.name(p)))
    }

    /// The baseline: the most popular products the customer has not just touched.
    #[pyo3(signature = (history, k = recommend::K))]
    fn most_popular<'py>(
        &self,
        py: Python<'py>,
        history: &Bound<'py, PyAny>,
        k: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let history = tail(history, usize::MAX)?;
        let ranked = self.inner.most_popular(&strs(&history)?, k);
        PyList::new(py, ranked.into_iter().map(|p| self.inner.name(p)))
    }

    /// Progressive validation (on a sample of views): was ``product`` predicted from ``history``?
    #[pyo3(signature = (history, product, interests = None, categories = None))]
    fn check(
        &mut self,
        history: &Bound<'_, PyAny>,
        product: &str,
        interests: Option<&Bound<'_, PyAny>>,
        categories: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let history = tail(history, usize::MAX)?;
        let interests = optional_tail(interests, WINDOW)?;
        let categories = affinities(categories)?;
        let scores = scores(&categories)?;
        self.inner
            .check(&strs(&history)?, product, &strs(&interests)?, &scores)
            .map_err(zero_division)
    }

    /// The parameters: links, counts and categories, every level sorted by name.
    fn export<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        export_dict(py, self.inner.export())
    }

    /// One set of parameters from the replicas' exports (given in a fixed order): links and
    /// counts added up (each replica saw other sessions).
    #[staticmethod]
    fn merge<'py>(py: Python<'py>, exports: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let mut merged = recommend::Merge::default();
        for replica in exports.try_iter()? {
            let replica = replica?;
            for (product, neighbours) in pairs(&item(&replica, "links")?)? {
                let weights: Vec<(Bound<'py, PyString>, f64)> = pairs(&neighbours)?
                    .into_iter()
                    .map(|(q, w)| Ok((q.downcast_into::<PyString>()?, w.extract::<f64>()?)))
                    .collect::<PyResult<_>>()?;
                let weights: Vec<(&str, f64)> = weights
                    .iter()
                    .map(|(q, w)| Ok((q.to_str()?, *w)))
                    .collect::<PyResult<_>>()?;
                merged.add_links(product.downcast::<PyString>()?.to_str()?, weights);
            }
            for (product, count) in pairs(&item(&replica, "counts")?)? {
                merged.add_count(product.downcast::<PyString>()?.to_str()?, count.extract()?);
            }
            for (product, category) in pairs(&item(&replica, "categories")?)? {
                let category = category.downcast_into::<PyString>()?;
                merged.set_category(
                    product.downcast::<PyString>()?.to_str()?,
                    category.to_str()?,
                );
            }
        }
        export_dict(py, merged.export())
    }

    /// Start from parameters written by :meth:`export` (or merged); the progressive counters stay.
    fn load(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let links = named(&item(data, "links")?, |n| named(n, |w| w.extract::<f64>()))?;
        let counts = named(&item(data, "counts")?, |c| c.extract::<i64>())?;
        let categories = named(&item(data, "categories")?, |c| c.extract::<String>())?;
        self.inner.load(
            links
                .iter()
                .map(|(p, n)| {
                    (
                        p.as_str(),
                        n.iter().map(|(q, w)| (q.as_str(), *w)).collect(),
                    )
                })
                .collect(),
            counts.iter().map(|(p, c)| (p.as_str(), *c)).collect(),
            categories
                .iter()
                .map(|(p, c)| (p.as_str(), c.as_str()))
                .collect(),
        );
        Ok(())
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = &self.inner;
        let stats = PyDict::new(py);
        stats.set_item("products", m.products())?;
        stats.set_item("checked", m.checked)?;
        stats.set_item("hits", m.hits)?;
        stats.set_item("reciprocal_rank_micro", m.reciprocal_rank_micro)?;
        stats.set_item("most_popular_hits", m.baseline_hits)?;
        Ok(stats)
    }

    /// The whole state as compact bytes (``recommend_bytes.rs``), for snapshots.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &recommend_bytes::to_bytes(&self.inner))
    }

    /// Restore the state :meth:`to_bytes` wrote; ``ValueError`` for bytes it cannot read.
    fn restore_bytes(&mut self, data: &[u8]) -> PyResult<()> {
        recommend_bytes::from_bytes(&mut self.inner, data)
            .map_err(|err| PyValueError::new_err(err.to_string()))
    }

    /// The whole state, in the model's own orders, as the plain-Python model's attributes were
    /// (so that snapshots of either restore, and a restored model continues identically).
    fn __getstate__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = &self.inner;
        let layout = m.layout();
        let state = PyDict::new(py);
        state.set_item("frozen", m.frozen)?;
        let links = PyDict::new(py);
        for (product, neighbours) in layout.links {
            links.set_item(product, neighbours.into_py_dict(py)?)?;
        }
        state.set_item("links", links)?;
        state.set_item("counts", layout.counts.into_py_dict(py)?)?;
        state.set_item("popular", layout.popular)?;
        state.set_item("category_of", layout.category_of.into_py_dict(py)?)?;
        let popular_in = PyDict::new(py);
        for (category, ranked) in layout.popular_in {
            popular_in.set_item(category, ranked)?;
        }
        state.set_item("popular_in", popular_in)?;
        state.set_item("checked", m.checked)?;
        state.set_item("hits", m.hits)?;
        state.set_item("reciprocal_rank_micro", m.reciprocal_rank_micro)?;
        state.set_item("baseline_hits", m.baseline_hits)?;
        Ok(state)
    }

    fn __setstate__(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let strings = |list: Bound<'_, PyAny>| list.extract::<Vec<String>>();
        let layout = Layout {
            links: named(&item(state, "links")?, |n| named(n, |w| w.extract::<f64>()))?,
            counts: named(&item(state, "counts")?, |c| c.extract::<i64>())?,
            popular: strings(item(state, "popular")?)?,
            category_of: named(&item(state, "category_of")?, |c| c.extract::<String>())?,
            popular_in: named(&item(state, "popular_in")?, |r| r.extract::<Vec<String>>())?,
        };
        let m = &mut self.inner;
        m.restore(&layout);
        m.frozen = item(state, "frozen")?.extract()?;
        m.checked = item(state, "checked")?.extract()?;
        m.hits = item(state, "hits")?.extract()?;
        m.reciprocal_rank_micro = item(state, "reciprocal_rank_micro")?.extract()?;
        m.baseline_hits = item(state, "baseline_hits")?.extract()?;
        Ok(())
    }
}

/// A quick pass over an input event's JSON bytes: which model it is for, if it is plain enough to
/// be decoded straight into it (see ``state/native/src/event_scan.rs``).
#[pyclass(module = "state._native", name = "EventScan", frozen)]
pub(crate) struct EventScan {
    pub(crate) inner: event_scan::EventScan,
    /// Decodes one order line's JSON into its model (see :class:`OrderLines`).
    pub(crate) decode_line: Py<PyAny>,
}

/// A closed container: its path (``None`` for any element of an array) and the keys allowed there.
type Container = (Vec<Option<String>>, Vec<String>);

#[pymethods]
impl EventScan {
    #[new]
    fn new(
        calls: Vec<(String, usize)>,
        tracks: Vec<(String, usize)>,
        unknown_track: usize,
        closed: Vec<Vec<Container>>,
        key_chars: usize,
        decode_line: Py<PyAny>,
    ) -> PyResult<Self> {
        let models = closed.len();
        if calls
            .iter()
            .chain(&tracks)
            .any(|(_, model)| *model >= models)
            || unknown_track >= models
        {
            return Err(PyValueError::new_err(
                "a model index beyond the closed containers given",
            ));
        }
        let step =
            |step: Option<String>| step.map_or(event_scan::Step::Element, event_scan::Step::Key);
        let closed = closed
            .into_iter()
            .map(|containers| {
                containers
                    .into_iter()
                    .map(|(path, keys)| (path.into_iter().map(step).collect(), keys))
                    .collect()
            })
            .collect();
        Ok(Self {
            inner: event_scan::EventScan::new(calls, tracks, unknown_track, closed, key_chars),
            decode_line,
        })
    }

    /// The index of the model ``json`` is for if it is plain, else -1.
    fn model_of(&self, json: &[u8]) -> i64 {
        self.inner.model_of(json)
    }

    /// ``(model, timestamp_ms, received_ms, unknown, lines)``: :meth:`model_of`, the ``timestamp``
    /// and ``receivedAt`` of a plain event in epoch milliseconds where they are in the common form
    /// (else None), the paths of the keys of its closed containers its model does not allow, each
    /// with how many times it came (None if none), and the lines of an order or checkout when the
    /// scan took them over, as ``(OrderLines, the event's bytes with `products` empty)`` (else None).
    #[allow(clippy::type_complexity)]
    fn scan<'py>(
        &self,
        py: Python<'py>,
        json: &Bound<'py, PyBytes>,
    ) -> PyResult<(
        i64,
        Option<i64>,
        Option<i64>,
        Option<Vec<(String, usize)>>,
        Option<(OrderLines, Bound<'py, PyBytes>)>,
    )> {
        let bytes = json.as_bytes();
        let Some(plain) = self.inner.scan(bytes) else {
            return Ok((event_scan::NOT_PLAIN, None, None, None, None));
        };
        let lines = match plain.lines {
            Some(lines) => {
                let rest = PyBytes::new_with(py, lines.without_lines_len(bytes), |out| {
                    lines.without_lines(bytes, out);
                    Ok(())
                })?;
                let decode = self.decode_line.clone_ref(py);
                Some((OrderLines::new(json.clone().unbind(), lines, decode), rest))
            }
            None => None,
        };
        Ok((
            plain.model as i64,
            plain.timestamp_ms,
            plain.received_ms,
            (!plain.unknown.is_empty()).then_some(plain.unknown),
            lines,
        ))
    }
}

/// ``general(text)``, computed natively for date-times in the common form (``2026-01-05T10:00:00.123Z``,
/// ``...+01:00``): epoch milliseconds of ISO 8601 text, as ``schemas.timestamps.epoch_ms`` reads them.
#[pyclass(module = "state._native", name = "EpochMs", frozen)]
struct EpochMs {
    general: Py<PyAny>,
}

#[pymethods]
impl EpochMs {
    #[new]
    fn new(general: Py<PyAny>) -> Self {
        Self { general }
    }

    fn __call__(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        if let Some(ms) = text
            .downcast::<PyString>()
            .ok()
            .and_then(|text| timestamps::epoch_ms(text.to_str().ok()?.as_bytes()))
        {
            return Ok(ms.into_pyobject(py)?.into_any().unbind());
        }
        self.general.call1(py, (text,))
    }
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Dedupe>()?;
    module.add_class::<Links>()?;
    module.add_class::<CoOccurrence>()?;
    module.add_function(wrap_pyfunction!(sampled, module)?)?;
    module.add_class::<EventScan>()?;
    module.add_class::<EpochMs>()?;
    module.add_class::<crate::envelopes::python::EnvelopeMaker>()?;
    module.add_class::<crate::crossing::python::CrossingPacker>()?;
    module.add_class::<crate::identity_pass::python::IdentityPass>()?;
    module.add_function(wrap_pyfunction!(
        crate::erasure::python::unlink_customer,
        module
    )?)?;
    module.add_function(wrap_pyfunction!(
        crate::erasure::python::anonymous_hash,
        module
    )?)?;
    module.add_function(wrap_pyfunction!(crate::shards::python::shard_of, module)?)?;
    module.add_class::<OrderLines>()?;
    module.add_class::<crate::features::python::Features>()?;
    module.add_function(wrap_pyfunction!(crate::btyd::python::hyp2f1, module)?)?;
    module.add_function(wrap_pyfunction!(crate::btyd::python::btyd_scores, module)?)?;
    module.add_function(wrap_pyfunction!(
        crate::model_inputs::python::decision_features,
        module
    )?)?;
    module.add_function(wrap_pyfunction!(
        crate::model_inputs::python::learn_touch,
        module
    )?)?;
    module.add_function(wrap_pyfunction!(
        crate::model_inputs::python::learn_order,
        module
    )?)?;
    module.add_class::<crate::rule_program::python::RuleProgram>()?;
    module.add_class::<crate::bookkeeping::python::Bookkeeping>()?;
    module.add_class::<crate::customer_step::python::CustomerStep>()?;
    module.add_function(wrap_pyfunction!(
        crate::decision::python::recommend_for,
        module
    )?)?;
    module.add_function(wrap_pyfunction!(
        crate::decision::python::logistic_score,
        module
    )?)?;
    module.add_class::<crate::decision::python::ReasonValues>()?;
    module.add_class::<crate::fire::python::TimerFiring>()?;
    module.add_function(wrap_pyfunction!(
        crate::touch::python::touch_product,
        module
    )?)?;
    module.add_class::<crate::timer_heap::python::TimerHeap>()?;
    Ok(())
}
