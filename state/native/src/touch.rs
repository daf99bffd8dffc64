//! A product touch for the recommender in one call (see `ShardModels.product_touched` in
//! `operators/models/__init__.py`): a view in the sample checked for progressive quality is handed
//! back to Python (its prediction is checked before anything is learnt); any other touch is learnt
//! at once, after the products of the customer's session still going.

/// The Python function `state._native.touch_product`.
#[cfg(feature = "python")]
pub mod python {
    use pyo3::prelude::*;

    use crate::features::python::Features;
    use crate::model_inputs::python::learn_touch;
    use crate::python::CoOccurrence;
    use crate::sample::sampled;

    /// Learn ``product`` touched (as ``learn_touch``), unless it is a view (``viewed``) in the sample
    /// of one in ``every`` (by ``message_id``): then nothing is learnt, and ``True`` is returned.
    #[pyfunction]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (recommender, features, at_ms, session_timeout_ms, product, category, message_id, viewed, every))]
    pub(crate) fn touch_product(
        recommender: PyRefMut<'_, CoOccurrence>,
        features: PyRef<'_, Features>,
        at_ms: i64,
        session_timeout_ms: i64,
        product: &str,
        category: Option<&str>,
        message_id: &str,
        viewed: bool,
        every: u8,
    ) -> bool {
        if viewed && sampled(message_id, every) {
            return true;
        }
        learn_touch(
            recommender,
            features,
            at_ms,
            session_timeout_ms,
            product,
            category,
        );
        false
    }
}
