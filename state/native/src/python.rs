//! The Python module `state._native`: thin wrappers over the Rust components.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::dedupe;

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

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Dedupe>()?;
    Ok(())
}
