//! What the models read of a customer's features, in one call: the propensity model's inputs at a
//! decision point, and the session a product touch is learnt after.
//!
//! [`decision_features`] gives exactly the floats of `decision_features` in
//! `operators/models/propensity.py` (kept in `tests/` as the reference) without a Python object
//! per feature read.

use crate::features::{py_round, Features, DAY_MS};

/// The propensity model's inputs, in `operators.models.propensity.FEATURES` order.
pub const DECISION_FEATURES: usize = 14;
/// Stands for "never ordered" in recency and order-gap features.
pub const NO_ORDER_DAYS: f64 = 365.0;
const PRODUCT_VIEWED: usize = 0;
const PRODUCT_ADDED: usize = 1;
const ORDER_COMPLETED: usize = 4;
const DAY_MIN: i64 = 24 * 60;

/// `round(ms / DAY_MS, 3)`: days, to the thousandth.
fn days(ms: f64) -> f64 {
    py_round(ms / DAY_MS as f64, 3)
}

/// Days from `at_ms` to `now_ms` (none before it), as the features `recency_days`, `tenure_days`...
fn since(now_ms: i64, at_ms: i64) -> f64 {
    days((now_ms - at_ms).max(0) as f64)
}

/// Python's `min(a, b)` and `max(a, b)`: `a` unless `b` is smaller (greater).
fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// CPython's `math.log1p`: zero (of either sign) as is.
fn log1p(x: f64) -> f64 {
    if x == 0.0 {
        x
    } else {
        x.ln_1p()
    }
}

/// The propensity model's inputs at `now_ms` (a session idle for longer than
/// `session_timeout_ms` counts as none).
pub fn decision_features(
    features: &Features,
    now_ms: i64,
    session_timeout_ms: i64,
) -> [f64; DECISION_FEATURES] {
    let purchases = features.purchases();
    let recency = purchases
        .last_order_ms
        .map_or(NO_ORDER_DAYS, |at| py_min(since(now_ms, at), NO_ORDER_DAYS));
    let gap = if purchases.orders >= 2 {
        py_min(days(purchases.order_gap_ms), NO_ORDER_DAYS)
    } else {
        NO_ORDER_DAYS
    };
    let monetary = if purchases.orders != 0 {
        py_round(purchases.lifetime_spend / purchases.orders as f64, 2)
    } else {
        0.0
    };
    let (cart_value, cart_items) = features
        .cart
        .as_ref()
        .map_or((0.0, 0), |cart| (cart.value, cart.items()));
    let session_products = match &features.session {
        Some(session) if now_ms - session.last_ms <= session_timeout_ms => session.products.len(),
        _ => 0,
    };
    let day = features.counts.counts(DAY_MIN, now_ms);
    let week = features.counts.counts(7 * DAY_MIN, now_ms);
    let month = features.counts.counts(30 * DAY_MIN, now_ms);
    [
        recency,
        since(now_ms, features.last_seen_ms),
        since(now_ms, features.first_seen_ms),
        log1p(purchases.orders as f64),
        log1p(py_max(0.0, monetary)),
        gap,
        log1p(cart_value),
        cart_items as f64,
        session_products as f64,
        log1p(day[PRODUCT_VIEWED] as f64),
        log1p(day[PRODUCT_ADDED] as f64),
        log1p(week[PRODUCT_VIEWED] as f64),
        log1p(week[PRODUCT_ADDED] as f64),
        log1p(month[ORDER_COMPLETED] as f64),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_customer_has_no_orders_no_cart_no_counts() {
        let features = Features::new(0);
        let x = decision_features(&features, DAY_MS / 2, 30 * 60_000);
        assert_eq!(x[0], NO_ORDER_DAYS);
        assert_eq!(x[1], 0.5);
        assert_eq!(x[2], 0.5);
        assert_eq!(x[5], NO_ORDER_DAYS);
        assert!(x[6..].iter().all(|v| *v == 0.0));
    }

    #[test]
    fn days_are_rounded_to_the_thousandth_and_never_negative() {
        assert_eq!(since(1_000, 2_000), 0.0);
        assert_eq!(since(DAY_MS + DAY_MS / 3, 0), 1.333);
    }
}

#[cfg(feature = "python")]
pub mod python {
    use pyo3::prelude::*;
    use pyo3::types::PyTuple;

    use crate::features::python::{borrowed, bought, names, Features};
    use crate::order_lines::python::OrderLines;
    use crate::order_lines::MAX_LINES;
    use crate::python::CoOccurrence;

    /// The propensity model's inputs from a customer's features at ``now_ms``, as
    /// ``operators.models.propensity.decision_features`` reads them from a feature view.
    #[pyfunction]
    pub(crate) fn decision_features<'py>(
        py: Python<'py>,
        features: PyRef<'py, Features>,
        now_ms: i64,
        session_timeout_ms: i64,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let x = super::decision_features(features.record(), now_ms, session_timeout_ms);
        PyTuple::new(py, x)
    }

    /// The recommender learns that ``product`` (of ``category``) was touched after the products of
    /// the customer's session still going at ``at_ms``: ``learn(session, product, category)``
    /// with the session read from the features, not handed over as Python strings.
    #[pyfunction]
    #[pyo3(signature = (recommender, features, at_ms, session_timeout_ms, product, category = None))]
    pub(crate) fn learn_touch(
        mut recommender: PyRefMut<'_, CoOccurrence>,
        features: PyRef<'_, Features>,
        at_ms: i64,
        session_timeout_ms: i64,
        product: &str,
        category: Option<&str>,
    ) {
        let products = match &features.record().session {
            Some(session) if at_ms - session.last_ms <= session_timeout_ms => &session.products[..],
            _ => &[][..],
        };
        recommender.inner.learn(&names(products), product, category);
    }

    /// The recommender learns an order's basket (``CoOccurrence.learn_basket``) from its lines
    /// (:class:`OrderLines` as the event scan read them, read without a Python object per line, or
    /// objects with ``product_id``, ``category`` and ``quantity``): the lines bought (a quantity of
    /// 0 or more; a negative one is a returned item). With ``keep``, the basket learnt is returned as
    /// ``(product, category)`` pairs (for the recommender's journal), else ``None``.
    #[pyfunction]
    pub(crate) fn learn_order<'py>(
        py: Python<'py>,
        mut recommender: PyRefMut<'py, CoOccurrence>,
        lines: &Bound<'py, PyAny>,
        keep: bool,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if recommender.inner.frozen && !keep {
            return Ok(None);
        }
        if let Ok(native) = lines.downcast::<OrderLines>() {
            let (json, native) = native.get().read(py);
            let basket: Vec<(&str, Option<&str>)> = native
                .bought(json, MAX_LINES)
                .map(|(product, category, _)| (product, category))
                .collect();
            recommender.inner.learn_basket(basket.iter().copied());
            return keep.then(|| PyTuple::new(py, basket)).transpose();
        }
        let read = bought(py, lines, MAX_LINES)?;
        let basket = borrowed(
            read.iter()
                .map(|(product, category, _)| (product, category.as_ref())),
        )?;
        recommender.inner.learn_basket(basket.iter().copied());
        keep.then(|| PyTuple::new(py, basket)).transpose()
    }
}
