//! A trigger's timer firing, up to its decision, in one call (see `CustomerStage._fire_timer` in
//! `operators/engine.py`): the timer is taken from the customer's bookkeeping, and it comes back
//! only if it still has a decision to make, that is unless its rule already fired for its cause,
//! the cause went stale (the cart was ordered, the session or the last order changed) or the
//! rule's condition, evaluated natively, does not hold.
//!
//! Python semantics are the spec: the checks and their order are those of `_fire_timer` and
//! `_decide`, the causes those of `CustomerStage._cause` (`customer_step::cause`).

use crate::bookkeeping::{encoded, Book, Id};
use crate::customer_step::{cause, OncePer};
use crate::features::Features;

/// Whether a timer's `cause` no longer stands: the cart, session or last order it fired once for
/// is not the customer's any more (any other `once_per` never goes stale).
pub fn stale(once_per: OncePer, features: &Features, timer_cause: &[u8]) -> bool {
    match once_per {
        OncePer::Cart | OncePer::Session | OncePer::Order => {
            cause(once_per, features, 0, "").map_or(true, |now| encoded(&now) != timer_cause)
        }
        _ => false,
    }
}

/// Whether the rule with this timer has nothing to decide: it fired for the timer's cause already,
/// or the cause went stale.
pub fn settled(
    book: &Book,
    rule: Id,
    once_per: OncePer,
    features: &Features,
    cause: &[u8],
) -> bool {
    book.fired_cause(rule) == Some(cause) || stale(once_per, features, cause)
}

/// The Python class `state._native.TimerFiring`.
#[cfg(feature = "python")]
pub mod python {
    use std::collections::HashMap;

    use pyo3::exceptions::{PyKeyError, PyValueError};
    use pyo3::intern;
    use pyo3::prelude::*;
    use pyo3::types::{PyList, PyString};

    use super::settled;
    use crate::bookkeeping::python::{lock, Bookkeeping};
    use crate::bookkeeping::{text_of, Id};
    use crate::customer_step::OncePer;
    use crate::features::python::Features;
    use crate::rule_program::python::RuleProgram;

    /// A timed trigger: what it fires once for, and its condition's number in the program (``None``:
    /// no condition).
    struct Timed {
        once_per: OncePer,
        condition: Option<usize>,
    }

    /// A timer with a decision to make: ``(due_ms, cause, caused_by, passed)``.
    type Taken<'py> = (i64, String, Bound<'py, PyList>, Option<bool>);

    /// The timed triggers of a rule set, fired up to their decision (see ``state/native/src/fire.rs``).
    #[pyclass(module = "state._native", name = "TimerFiring", frozen)]
    pub struct TimerFiring {
        program: Py<RuleProgram>,
        rules: HashMap<Id, Timed>,
    }

    #[pymethods]
    impl TimerFiring {
        /// ``triggers``: ``(rule_id, once_per, condition)`` of each timed trigger, ``condition`` its
        /// expression's number in ``program`` (``None``: it has none).
        #[new]
        fn new(
            program: Py<RuleProgram>,
            triggers: Vec<(Bound<'_, PyString>, String, Option<usize>)>,
        ) -> PyResult<Self> {
            let mut table = lock();
            let mut rules = HashMap::with_capacity(triggers.len());
            for (rule, once_per, condition) in &triggers {
                let once_per = OncePer::parse(once_per)
                    .ok_or_else(|| PyValueError::new_err(format!("no once_per {once_per:?}")))?;
                rules.insert(
                    table.intern(rule)?,
                    Timed {
                        once_per,
                        condition: *condition,
                    },
                );
            }
            Ok(Self { program, rules })
        }

        /// Take the timer of the timed trigger ``rule_id`` from ``state.book``; return ``(due_ms, cause,
        /// caused_by, passed)`` if it has a decision to make (``passed``: its condition holds, or
        /// ``None``: evaluate it in Python), else ``None``.
        fn fire<'py>(
            &self,
            py: Python<'py>,
            state: &Bound<'py, PyAny>,
            rule_id: &str,
        ) -> PyResult<Option<Taken<'py>>> {
            let rule = lock()
                .names()
                .get(rule_id)
                .filter(|rule| self.rules.contains_key(rule))
                .ok_or_else(|| PyKeyError::new_err(format!("no timed trigger {rule_id:?}")))?;
            let timed = &self.rules[&rule];
            let book = state.getattr(intern!(py, "book"))?;
            let book = book.downcast::<Bookkeeping>()?.get().book();
            let timer = book
                .timer(rule)
                .ok_or_else(|| PyKeyError::new_err(format!("no timer {rule_id:?}")))?;
            let rest = book.without_timer(rule).expect("the timer is there");
            let features = state.getattr(intern!(py, "features"))?;
            let features = features.downcast::<Features>()?.borrow();
            let (due_ms, cause) = (timer.due_ms, timer.cause);
            let done = settled(book, rule, timed.once_per, features.record(), cause);
            let passed = match (done, timed.condition) {
                (true, _) => Some(false),
                (false, None) => Some(true),
                (false, Some(index)) => self.program.get().verdict(&features, due_ms, index),
            };
            let caused_by: Vec<String> = timer.caused_by.iter().map(|id| text_of(id)).collect();
            let cause = text_of(cause);
            drop(features);
            state.setattr(intern!(py, "book"), Bookkeeping::of(rest))?;
            if passed == Some(false) {
                return Ok(None);
            }
            Ok(Some((due_ms, cause, PyList::new(py, caused_by)?, passed)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_cart_session_or_order_cause_goes_stale() {
        let features = Features::new(0);
        for once_per in [OncePer::Cart, OncePer::Session, OncePer::Order] {
            assert!(
                !stale(once_per, &features, &encoded("none")),
                "{once_per:?}"
            );
            assert!(stale(once_per, &features, &encoded("c1")), "{once_per:?}");
        }
        for once_per in [OncePer::Day, OncePer::Event, OncePer::Customer] {
            assert!(!stale(once_per, &features, &encoded("c1")), "{once_per:?}");
        }
    }
}
