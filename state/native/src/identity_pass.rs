//! The identity stage's pass-through, a released run of events at a time: most events are identified
//! ones with no anonymous state to hand over, checked, deduplicated, linked and passed on as they
//! are (see `operators.engine.IdentityStage`). One call takes such events until one needs the
//! stage's Python way: a future-dated or too old event, an anonymous customer's, an erasure, one
//! with anonymous state to hand over, or one that moves the clock past a timer or into a new day.

/// What the pass does with one event, from what it reads of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Left to the Python way, the event and all after it.
    Python,
    /// Checked and passed on; the clock moves to the given time, if any.
    Pass(Option<i64>),
}

/// The stage's bounds and where its clock is.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub lateness_ms: i64,
    pub max_skew_ms: i64,
    pub max_age_ms: i64,
    pub day_ms: i64,
}

/// The clock's state: its time, the first timer due (if any), the day last swept.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: Option<i64>,
    pub next_due: Option<i64>,
    pub swept_day: Option<i64>,
}

impl Bounds {
    /// What the pass does with an event of these times, if its routing is plain (``plain``: it is
    /// identified, or has no user id, with no anonymous state here, and is no erasure).
    pub fn step(
        &self,
        clock: &Clock,
        ts_ms: i64,
        mark_ms: i64,
        received_ms: Option<i64>,
        plain: bool,
    ) -> Step {
        if !plain || received_ms.map_or(false, |received| ts_ms - received > self.max_skew_ms) {
            return Step::Python;
        }
        if mark_ms - ts_ms > self.max_age_ms {
            return Step::Python;
        }
        let candidate = mark_ms - self.lateness_ms;
        if clock.now.map_or(false, |now| candidate <= now) {
            return Step::Pass(None);
        }
        let timer_due = clock.next_due.map_or(false, |due| due <= candidate);
        if timer_due || Some(candidate.div_euclid(self.day_ms)) != clock.swept_day {
            return Step::Python;
        }
        Step::Pass(Some(candidate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        lateness_ms: 100,
        max_skew_ms: 1_000,
        max_age_ms: 10_000,
        day_ms: 86_400_000,
    };
    const CLOCK: Clock = Clock {
        now: Some(5_000),
        next_due: Some(9_000),
        swept_day: Some(0),
    };

    #[test]
    fn an_event_that_moves_the_clock_short_of_a_timer_and_the_day_passes_and_moves_it() {
        assert_eq!(
            BOUNDS.step(&CLOCK, 6_000, 6_000, Some(6_000), true),
            Step::Pass(Some(5_900))
        );
        assert_eq!(
            BOUNDS.step(&CLOCK, 5_000, 5_050, None, true),
            Step::Pass(None)
        );
    }

    #[test]
    fn the_python_way_takes_what_the_pass_does_not_decide() {
        assert_eq!(
            BOUNDS.step(&CLOCK, 6_000, 6_000, None, false),
            Step::Python,
            "routing"
        );
        assert_eq!(
            BOUNDS.step(&CLOCK, 6_000, 6_000, Some(4_999), true),
            Step::Python,
            "future-dated"
        );
        assert_eq!(
            BOUNDS.step(&CLOCK, 6_000, 6_000, Some(5_000), true),
            Step::Pass(Some(5_900))
        );
        assert_eq!(
            BOUNDS.step(&CLOCK, 1_000, 11_001, None, true),
            Step::Python,
            "too old"
        );
        assert_eq!(
            BOUNDS.step(&CLOCK, 9_100, 9_100, None, true),
            Step::Python,
            "a timer comes due"
        );
        let day = BOUNDS.day_ms + 100;
        assert_eq!(
            BOUNDS.step(&CLOCK, day, day, None, true),
            Step::Python,
            "a new day"
        );
        let fresh = Clock {
            now: None,
            next_due: None,
            swept_day: None,
        };
        assert_eq!(
            BOUNDS.step(&fresh, 6_000, 6_000, None, true),
            Step::Python,
            "the first clock"
        );
    }
}

#[cfg(feature = "python")]
pub mod python {
    use pyo3::intern;
    use pyo3::prelude::*;
    use pyo3::types::{PyAny, PyDict, PyList, PyString};

    use super::{Bounds, Clock, Step};
    use crate::links::anonymous_key;
    use crate::python::{Dedupe, Links};

    /// The identity stage's pass-through (see ``state/native/src/identity_pass.rs``).
    #[pyclass(module = "state._native", name = "IdentityPass", frozen)]
    pub struct IdentityPass {
        bounds: Bounds,
        erasure: Py<PyString>,
    }

    #[pymethods]
    impl IdentityPass {
        #[new]
        fn new(
            lateness_ms: i64,
            max_skew_ms: i64,
            max_age_ms: i64,
            day_ms: i64,
            erasure: Py<PyString>,
        ) -> Self {
            Self {
                bounds: Bounds {
                    lateness_ms,
                    max_skew_ms,
                    max_age_ms,
                    day_ms: day_ms.max(1),
                },
                erasure,
            }
        }

        /// Pass the events of ``released`` from ``start`` on to ``out`` until one needs the Python way;
        /// return ``(its position (the length if none), the clock, duplicates dropped, links made or
        /// changed)``. Each passed event's message id is remembered in ``seen`` (and appended to
        /// ``added`` if given), its anonymous id linked to its user id in ``links``. An event of a
        /// user id in ``ledger`` or ``erased`` (erased customers) needs the Python way too.
        #[allow(clippy::too_many_arguments)]
        #[pyo3(signature = (released, start, seen, links, customers, added, clock, next_due, swept_day, out,
                            ledger=None, erased=None))]
        fn run(
            &self,
            py: Python<'_>,
            released: &Bound<'_, PyList>,
            start: usize,
            seen: &Bound<'_, Dedupe>,
            links: &Bound<'_, Links>,
            customers: &Bound<'_, PyDict>,
            added: Option<&Bound<'_, PyList>>,
            clock: Option<i64>,
            next_due: Option<i64>,
            swept_day: Option<i64>,
            out: &Bound<'_, PyList>,
            ledger: Option<&Bound<'_, PyDict>>,
            erased: Option<&Bound<'_, PyDict>>,
        ) -> PyResult<(usize, Option<i64>, usize, usize)> {
            let mut clock = Clock {
                now: clock,
                next_due,
                swept_day,
            };
            let (mut seen, mut links) = (seen.borrow_mut(), links.borrow_mut());
            let erasure = self.erasure.bind(py);
            let (mut duplicates, mut linked) = (0, 0);
            let mut at = start;
            while at < released.len() {
                let env = released.get_item(at)?;
                let ts_ms: i64 = env.getattr(intern!(py, "ts_ms"))?.extract()?;
                let mark_ms: i64 = env.getattr(intern!(py, "mark_ms"))?.extract()?;
                let received_ms: Option<i64> =
                    env.getattr(intern!(py, "received_ms"))?.extract()?;
                let anonymous_id = env.getattr(intern!(py, "anonymous_id"))?;
                let user_id = env.getattr(intern!(py, "user_id"))?;
                let plain = (anonymous_id.is_none()
                    || (!user_id.is_none() && !customers.contains(&anonymous_id)?))
                    && !env.getattr(intern!(py, "name"))?.eq(erasure)?
                    && !erased_customer(&user_id, ledger, erased)?;
                let moved = match self.bounds.step(&clock, ts_ms, mark_ms, received_ms, plain) {
                    Step::Python => break,
                    Step::Pass(moved) => moved,
                };
                at += 1;
                let message_id = env.getattr(intern!(py, "message_id"))?;
                if seen
                    .inner
                    .seen_or_add(message_id.downcast::<PyString>()?.to_str()?)
                {
                    duplicates += 1;
                    continue;
                }
                if let Some(added) = added {
                    added.append(&message_id)?;
                }
                if moved.is_some() {
                    clock.now = moved;
                }
                if !anonymous_id.is_none() {
                    let user_id = user_id.downcast_into::<PyString>()?;
                    let key = anonymous_key(anonymous_id.downcast::<PyString>()?.to_str()?);
                    let changed = match links.inner.insert(key, user_id.clone().unbind()) {
                        Some(before) => !before.bind(py).as_any().eq(&user_id)?,
                        None => true,
                    };
                    if changed {
                        linked += 1;
                    }
                }
                out.append(env)?;
            }
            Ok((at, clock.now, duplicates, linked))
        }
    }

    /// Whether ``user_id`` (``None`` for an anonymous event) is a key of either map of erased customers.
    fn erased_customer(
        user_id: &Bound<'_, PyAny>,
        ledger: Option<&Bound<'_, PyDict>>,
        erased: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<bool> {
        if user_id.is_none() {
            return Ok(false);
        }
        for customers in [ledger, erased].into_iter().flatten() {
            if customers.contains(user_id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
