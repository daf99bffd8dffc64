//! What a decision reads of a customer's features, in one call: the recommendations of a trigger
//! (`ShardModels.recommend` in `operators/models/__init__.py`), read from the features record
//! rather than handed over as Python strings, lists and dictionaries.

#[cfg(feature = "python")]
pub mod python {
    use pyo3::prelude::*;
    use pyo3::types::PyList;

    use crate::features::python::{kept, names, ranked, Features};
    use crate::python::{zero_division, CoOccurrence};
    use crate::recommend::WINDOW;

    /// The favourite products a recommendation counts as older history (strongest last).
    const INTERESTS: usize = 5;

    /// Top ``k`` products for a customer at ``at_ms``, as ``recommender.recommend`` gives them for
    /// the products of the session still going (``session_timeout_ms``), leaving out the last
    /// order's and the cart's, with the five favourite products (strongest last) and the category
    /// affinities as kept.
    #[pyfunction]
    pub(crate) fn recommend_for<'py>(
        py: Python<'py>,
        mut recommender: PyRefMut<'py, CoOccurrence>,
        features: PyRef<'py, Features>,
        k: usize,
        at_ms: i64,
        session_timeout_ms: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let record = features.record();
        let session = match &record.session {
            Some(session) if at_ms - session.last_ms <= session_timeout_ms => names(&session.products),
            _ => Vec::new(),
        };
        let mut exclude = names(&record.purchases().bought);
        if let Some(cart) = &record.cart {
            let products: Vec<_> = cart.lines.iter().map(|line| line.product).collect();
            exclude.extend(names(&products));
        }
        let mut interests = ranked(&record.products, Some(INTERESTS));
        interests.reverse();
        let interests = &interests[interests.len().saturating_sub(WINDOW)..];
        let categories = kept(&record.categories);
        let inner = &mut recommender.inner;
        let products = inner
            .recommend(&session, k, &exclude, interests, &categories)
            .map_err(zero_division)?;
        PyList::new(py, products.into_iter().map(|product| inner.name(product)))
    }
}
