//! What a decision computes besides its condition, in one call each: the values its reason shows
//! (`operators/reasons.py`, read as the rule program reads features), the propensity model's score
//! of its inputs (`PropensityModel.score` in `operators/models/propensity.py`), and the
//! recommendations of a trigger (`ShardModels.recommend` in `operators/models/__init__.py`), read
//! from the features record rather than handed over as Python strings, lists and dictionaries.

/// A logistic regression's answer: River's `sigmoid` gives the integers 0 and 1 past +-30.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Probability {
    Zero,
    One,
    Between(f64),
}

/// P(true) of a standard scaler and a logistic regression, computed as River computes it: each
/// input centred and divided by its scale (`var ** 0.5`, worked out by the caller; a scale of 0
/// scales the input to 0), the products with the weights summed in input order from 0, the
/// intercept added, and River's `sigmoid`.
pub fn logistic(
    x: &[f64],
    centers: &[f64],
    scales: &[f64],
    weights: &[f64],
    intercept: f64,
) -> Probability {
    let mut dot = 0.0;
    for (((xi, center), scale), weight) in x.iter().zip(centers).zip(scales).zip(weights) {
        let scaled = if *scale != 0.0 {
            (xi - center) / scale
        } else {
            0.0
        };
        dot += weight * scaled;
    }
    let raw = dot + intercept;
    if raw < -30.0 {
        Probability::Zero
    } else if raw > 30.0 {
        Probability::One
    } else {
        Probability::Between(1.0 / (1.0 + (-raw).exp()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_thirty_the_answer_is_a_whole_number() {
        assert_eq!(
            logistic(&[1.0], &[0.0], &[1.0], &[31.0], 0.0),
            Probability::One
        );
        assert_eq!(
            logistic(&[1.0], &[0.0], &[1.0], &[-31.0], 0.0),
            Probability::Zero
        );
        assert_eq!(
            logistic(&[5.0], &[2.0], &[0.0], &[1.0], 0.0),
            Probability::Between(0.5)
        );
    }
}

#[cfg(feature = "python")]
pub mod python {
    use pyo3::exceptions::{PyIndexError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::{PyList, PyTuple};
    use pyo3::IntoPyObjectExt;

    use super::{logistic, Probability};
    use crate::btyd::PopulationArgs;
    use crate::features::python::name;
    use crate::features::Lifecycle;
    use crate::rule_program::python::read;
    use crate::rule_program::{Context, Node, Slot, Value};

    /// One value a reason shows: a feature read as the rule program reads it, or (``presence``)
    /// only whether it is there: ``None`` if not, else an empty tuple (a view, which no reason shows).
    type Read = (Slot, bool);

    /// The values the reasons of a rule set show, per reason (by index): each a list of reads.
    #[pyclass(module = "state._native", name = "ReasonValues", frozen)]
    pub struct ReasonValues {
        reasons: Box<[Box<[Read]>]>,
        lifecycle: Lifecycle,
        session_timeout_ms: i64,
    }

    fn value(py: Python<'_>, value: Value<'_>) -> PyResult<PyObject> {
        match value {
            Value::Null => Ok(py.None()),
            Value::Bool(flag) => flag.into_py_any(py),
            Value::Int(number) => number.into_py_any(py),
            Value::Float(number) => number.into_py_any(py),
            Value::Str(text) => text.into_py_any(py),
            Value::Tuple(_) => Err(PyValueError::new_err("a reason shows no tuple")),
        }
    }

    #[pymethods]
    impl ReasonValues {
        /// ``reasons``: per reason, ``(feature, key, presence)`` reads (``key``: a field, or ``""``).
        #[new]
        fn new(
            reasons: Vec<Vec<(String, String, bool)>>,
            new_days: i64,
            lapse_days: i64,
            at_risk_gap_factor: f64,
            session_timeout_ms: i64,
            population: PopulationArgs,
            py: Python<'_>,
        ) -> PyResult<Self> {
            let part = py.None().into_bound(py);
            let slot = |(feature, key, presence): &(String, String, bool)| match read(
                feature, key, &part,
            )? {
                Node::Read(slot) => Ok((slot, *presence)),
                _ => Err(PyValueError::new_err(format!(
                    "not a feature a reason reads: {feature}.{key}"
                ))),
            };
            let reasons = reasons
                .iter()
                .map(|reads| reads.iter().map(slot).collect::<PyResult<_>>())
                .collect::<PyResult<_>>()?;
            Ok(Self {
                reasons,
                lifecycle: Lifecycle {
                    new_days,
                    lapse_days,
                    at_risk_gap_factor,
                    population: population.into(),
                },
                session_timeout_ms,
            })
        }

        /// The values reason ``index`` shows at ``now_ms``, in its order.
        fn values<'py>(
            &self,
            py: Python<'py>,
            features: PyRef<'py, Features>,
            now_ms: i64,
            index: usize,
        ) -> PyResult<Bound<'py, PyTuple>> {
            let reads = self
                .reasons
                .get(index)
                .ok_or_else(|| PyIndexError::new_err(format!("no reason {index}")))?;
            let context = Context {
                features: features.record(),
                now_ms,
                lifecycle: &self.lifecycle,
                session_timeout_ms: self.session_timeout_ms,
                name: &name,
            };
            let values =
                reads
                    .iter()
                    .map(|(slot, presence)| match (context.read(*slot), presence) {
                        (Value::Null, _) => Ok(py.None()),
                        (_, true) => Ok(PyTuple::empty(py).into_any().unbind()),
                        (found, false) => value(py, found),
                    });
            PyTuple::new(py, values.collect::<PyResult<Vec<_>>>()?)
        }
    }

    use crate::features::python::{kept, names, ranked, Features};
    use crate::python::{zero_division, CoOccurrence};
    use crate::recommend::WINDOW;

    /// The propensity model's P(order) for inputs ``x``, from its parameters as
    /// ``PropensityModel`` reads them off its River pipeline (see :func:`super::logistic`): a float,
    /// or the integer 0 or 1 as River's ``sigmoid`` gives past +-30.
    #[pyfunction]
    pub(crate) fn logistic_score(
        py: Python<'_>,
        x: Vec<f64>,
        centers: Vec<f64>,
        scales: Vec<f64>,
        weights: Vec<f64>,
        intercept: f64,
    ) -> PyResult<PyObject> {
        if [centers.len(), scales.len(), weights.len()] != [x.len(); 3] {
            return Err(PyValueError::new_err(
                "one center, scale and weight per input",
            ));
        }
        match logistic(&x, &centers, &scales, &weights, intercept) {
            Probability::Zero => 0_i64.into_py_any(py),
            Probability::One => 1_i64.into_py_any(py),
            Probability::Between(p) => p.into_py_any(py),
        }
    }

    /// The favourite products a recommendation counts as older history (strongest last).
    const INTERESTS: usize = 5;

    /// Top ``k`` products for a customer at ``at_ms``, as ``recommender.recommend`` gives them for
    /// the products of the session still going (``session_timeout_ms``), leaving out the last
    /// order's and the cart's, with the five favourite products (strongest last) and the category
    /// affinities as kept. With ``include_bought``, the customer's own products come first (the
    /// favourites, strongest first, then the last order's; none twice, none in the cart, as
    /// ``operators.models.own_products``), then the recommender's, leaving out the cart and those.
    #[pyfunction]
    #[pyo3(signature = (recommender, features, k, at_ms, session_timeout_ms, include_bought = false))]
    pub(crate) fn recommend_for<'py>(
        py: Python<'py>,
        mut recommender: PyRefMut<'py, CoOccurrence>,
        features: PyRef<'py, Features>,
        k: usize,
        at_ms: i64,
        session_timeout_ms: i64,
        include_bought: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let record = features.record();
        let session = match &record.session {
            Some(session) if at_ms - session.last_ms <= session_timeout_ms => {
                names(&session.products)
            }
            _ => Vec::new(),
        };
        let cart: Vec<&str> = record.cart.as_ref().map_or_else(Vec::new, |cart| {
            names(
                &cart
                    .lines
                    .iter()
                    .map(|line| line.product)
                    .collect::<Vec<_>>(),
            )
        });
        let bought = names(&record.purchases().bought);
        let mut interests = ranked(&record.products, Some(INTERESTS));
        let mut own: Vec<&str> = Vec::new();
        if include_bought {
            for product in interests.iter().chain(&bought) {
                if !cart.contains(product) && !own.contains(product) {
                    own.push(product);
                }
            }
            own.truncate(k);
        }
        let exclude: Vec<&str> = if include_bought {
            cart.iter().chain(&own).copied().collect()
        } else {
            bought.iter().chain(&cart).copied().collect()
        };
        interests.reverse();
        let interests = &interests[interests.len().saturating_sub(WINDOW)..];
        let categories = kept(&record.categories);
        let inner = &mut recommender.inner;
        let products = inner
            .recommend(&session, k - own.len(), &exclude, interests, &categories)
            .map_err(zero_division)?;
        own.extend(products.into_iter().map(|product| inner.name(product)));
        PyList::new(py, own)
    }
}
