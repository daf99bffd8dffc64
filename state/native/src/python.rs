//! The Python module `state._native`: thin wrappers over the Rust components.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::dedupe;
use crate::event_scan;
use crate::timestamps;

/// Dedupe memory: the last ``capacity`` message ids (as 128-bit hashes), forgetting the oldest first.
#[pyclass(module = "state._native", name = "Dedupe")]
struct Dedupe {
    inner: dedupe::Dedupe,
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

/// A quick pass over an input event's JSON bytes: which model it is for, if it is plain enough to
/// be decoded straight into it (see ``state/native/src/event_scan.rs``).
#[pyclass(module = "state._native", name = "EventScan", frozen)]
struct EventScan {
    inner: event_scan::EventScan,
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
            inner: event_scan::EventScan::new(calls, tracks, unknown_track, closed),
        })
    }

    /// The index of the model ``json`` is for if it is plain, else -1.
    fn model_of(&self, json: &[u8]) -> i64 {
        self.inner.model_of(json)
    }

    /// ``(model, timestamp_ms, received_ms)``: :meth:`model_of`, and the ``timestamp`` and ``receivedAt``
    /// of a plain event in epoch milliseconds where they are in the common form (else None).
    fn scan(&self, json: &[u8]) -> (i64, Option<i64>, Option<i64>) {
        match self.inner.scan(json) {
            Some(plain) => (plain.model as i64, plain.timestamp_ms, plain.received_ms),
            None => (event_scan::NOT_PLAIN, None, None),
        }
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
    module.add_class::<EventScan>()?;
    module.add_class::<EpochMs>()?;
    Ok(())
}
