//! One event for one customer in one call (see `operators/engine.py`, `CustomerStage._apply`): its
//! features are applied, the timers it cancels are dropped, those it arms are armed (each for the
//! cause it fires at most once for), the next audience recheck is kept, and the audiences it can
//! change are evaluated; only what Python must act on comes back. Should anything fail, the
//! features are put back as they were, and nothing else has changed.
//!
//! Python semantics are the spec: the causes are the strings `CustomerStage._cause` gives, the
//! timers change as `CustomerStage._arm` and `_keep_alive` change them, in the same order.

use crate::bookkeeping::{encoded, Book, Id, Names, Timer};
use crate::features::{Features, Lifecycle, DAY_MS};

/// What a trigger fires at most once for (its rule's `once_per`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OncePer {
    Event,
    Session,
    Cart,
    Order,
    Day,
    Customer,
}

impl OncePer {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "event" => Self::Event,
            "session" => Self::Session,
            "cart" => Self::Cart,
            "order" => Self::Order,
            "day" => Self::Day,
            "customer" => Self::Customer,
            _ => return None,
        })
    }
}

/// A trigger an event arms: its rule, how long after the event it is due, what it fires once for.
#[derive(Debug, Clone)]
pub struct Arm {
    pub rule: Id,
    pub after_ms: i64,
    pub once_per: OncePer,
}

/// What an event of one name does to the timers and which audiences it can change.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub cancel: Vec<Id>,
    pub arm: Vec<Arm>,
    /// The audience group it can change (`None`: none).
    pub group: Option<usize>,
    /// Triggers fire on it at once: left to Python.
    pub immediate: bool,
    /// An order: it can move a lifecycle boundary earlier.
    pub moves_boundaries: bool,
}

/// The next audience recheck: its rule, its cause, the lifecycle and whether `lapse_risk` and
/// `p_alive` steps count.
#[derive(Debug, Clone)]
pub struct Recheck {
    pub rule: Id,
    pub cause: Vec<u8>,
    pub lifecycle: Lifecycle,
    pub risk_steps: bool,
    pub alive_steps: bool,
}

/// The event as the timers read it.
pub struct Event<'a> {
    pub ts_ms: i64,
    pub now_ms: i64,
    pub late: bool,
    pub clock: Option<i64>,
    pub message_id: &'a str,
}

/// `YYYY-MM-DD` of the UTC day `ms` falls in, as Python's `date.isoformat` writes it (`None`
/// outside years 1 to 9999, which Python refuses).
pub fn iso_day(ms: i64) -> Option<String> {
    // days since 1970-01-01 to a civil date (Howard Hinnant's algorithm)
    let z = ms.div_euclid(DAY_MS) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (1..=9999)
        .contains(&year)
        .then(|| format!("{year:04}-{month:02}-{day:02}"))
}

/// What a trigger fires at most once for, as `CustomerStage._cause` gives it for an event
/// (`None`: a day Python cannot write).
pub fn cause(
    once_per: OncePer,
    features: &Features,
    ts_ms: i64,
    message_id: &str,
) -> Option<String> {
    Some(match once_per {
        OncePer::Cart => features
            .cart
            .as_ref()
            .map_or_else(|| "none".into(), |cart| cart.id.to_string()),
        OncePer::Session => features
            .session
            .as_ref()
            .map_or_else(|| "none".into(), |session| session.id.to_string()),
        OncePer::Order => match features.purchases().last_order_id.as_deref() {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => "none".into(),
        },
        OncePer::Customer => "customer".into(),
        OncePer::Day => iso_day(ts_ms)?,
        OncePer::Event => message_id.to_string(),
    })
}

/// The timers after `event` (`None`: unchanged): those `plan` cancels dropped, those it arms armed
/// (`causes`: each one's encoded cause), and the next audience recheck kept (`recheck`, caused by
/// `last_event`). Read from `book` first; the record is rebuilt only when something changes.
#[allow(clippy::too_many_arguments)]
pub fn step_timers(
    book: &Book,
    plan: &Plan,
    causes: &[Vec<u8>],
    event: &Event<'_>,
    features: &Features,
    recheck: Option<&Recheck>,
    most_caused_by: usize,
    names: &Names,
) -> Option<Book> {
    let cancels = plan.cancel.iter().any(|rule| book.due(*rule).is_some());
    let arms: Vec<(&Arm, &[u8], i64)> = plan
        .arm
        .iter()
        .zip(causes)
        .map(|(arm, cause)| {
            (
                arm,
                cause.as_slice(),
                event.ts_ms.saturating_add(arm.after_ms),
            )
        })
        .filter(|(arm, cause, due)| {
            book.fired_cause(arm.rule) != Some(*cause)
                && !(event.late && event.clock.map_or(false, |clock| *due <= clock))
        })
        .collect();
    let boundary = recheck.and_then(|recheck| {
        let pending = book.due(recheck.rule);
        if pending.is_some() && !event.late && !plan.moves_boundaries {
            return None;
        }
        features
            .next_boundary(
                event.now_ms,
                &recheck.lifecycle,
                recheck.risk_steps,
                recheck.alive_steps,
            )
            .filter(|boundary| pending.map_or(true, |pending| *boundary < pending))
    });
    if !cancels && arms.is_empty() && boundary.is_none() {
        return None;
    }
    let message = encoded(event.message_id);
    let last_event = encoded(&features.last_event_id);
    let mut parts = book.parts();
    for rule in &plan.cancel {
        parts.timers.retain(|timer| timer.rule != *rule);
    }
    for (arm, cause, due) in arms {
        parts.rearm(due, arm.rule, cause, &message, most_caused_by, names);
    }
    if let (Some(recheck), Some(boundary)) = (recheck, boundary) {
        let timer = Timer {
            due_ms: boundary,
            rule: recheck.rule,
            cause: &recheck.cause,
            caused_by: vec![&last_event],
        };
        parts.put_timer(timer, names);
    }
    Some(parts.book())
}

/// The Python class `state._native.CustomerStep`.
#[cfg(feature = "python")]
pub mod python {
    use std::collections::HashMap;

    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use pyo3::types::{PyList, PyString, PyTuple};
    use pyo3::{intern, IntoPyObjectExt};

    use super::{cause, step_timers, Arm, Event, OncePer, Plan, Recheck};
    use crate::bookkeeping::encoded;
    use crate::bookkeeping::python::{lock, Bookkeeping};
    use crate::btyd::PopulationArgs;
    use crate::features::python::Features;
    use crate::features::Lifecycle;
    use crate::rule_program::python::RuleProgram;

    /// ``(name, cancels, arms, group, immediate, moves_boundaries)``, ``arms`` as ``(rule, after_ms, once_per)``.
    type PlanSpec<'py> = (
        String,
        Vec<Bound<'py, PyString>>,
        Vec<(Bound<'py, PyString>, i64, String)>,
        Option<usize>,
        bool,
        bool,
    );

    /// One event's rules for one customer in one call (see ``state/native/src/customer_step.rs``).
    #[pyclass(module = "state._native", name = "CustomerStep", frozen)]
    pub struct CustomerStep {
        program: Py<RuleProgram>,
        plans: HashMap<String, Plan>,
        other: Plan,
        every: Option<usize>,
        recheck: Option<Recheck>,
        most_caused_by: usize,
    }

    fn plan(spec: PlanSpec<'_>) -> PyResult<(String, Plan)> {
        let (name, cancels, arms, group, immediate, moves_boundaries) = spec;
        let mut table = lock();
        let cancel = cancels
            .iter()
            .map(|rule| table.intern(rule))
            .collect::<PyResult<_>>()?;
        let mut arm = Vec::with_capacity(arms.len());
        for (rule, after_ms, once_per) in &arms {
            let once_per = OncePer::parse(once_per)
                .ok_or_else(|| PyValueError::new_err(format!("no once_per {once_per:?}")))?;
            arm.push(Arm {
                rule: table.intern(rule)?,
                after_ms: *after_ms,
                once_per,
            });
        }
        let plan = Plan {
            cancel,
            arm,
            group,
            immediate,
            moves_boundaries,
        };
        Ok((name, plan))
    }

    #[pymethods]
    impl CustomerStep {
        #[new]
        #[allow(clippy::too_many_arguments)]
        #[pyo3(signature = (program, plans, other_group, every_group, recheck, risk_steps,
                            new_days, lapse_days, at_risk_gap_factor, most_caused_by, population,
                            alive_steps=false))]
        fn new(
            program: Py<RuleProgram>,
            plans: Vec<PlanSpec<'_>>,
            other_group: Option<usize>,
            every_group: Option<usize>,
            recheck: Option<Bound<'_, PyString>>,
            risk_steps: bool,
            new_days: i64,
            lapse_days: i64,
            at_risk_gap_factor: f64,
            most_caused_by: usize,
            population: PopulationArgs,
            alive_steps: bool,
        ) -> PyResult<Self> {
            let plans = plans.into_iter().map(plan).collect::<PyResult<_>>()?;
            let recheck = match recheck {
                Some(rule) => Some(Recheck {
                    rule: lock().intern(&rule)?,
                    cause: encoded("recheck"),
                    lifecycle: Lifecycle {
                        new_days,
                        lapse_days,
                        at_risk_gap_factor,
                        population: population.into(),
                    },
                    risk_steps,
                    alive_steps,
                }),
                None => None,
            };
            Ok(Self {
                program,
                plans,
                other: Plan {
                    group: other_group,
                    ..Plan::default()
                },
                every: every_group,
                recheck,
                most_caused_by,
            })
        }

        /// Apply ``env`` to ``state``: its features (``update`` called on them with ``args``), then its
        /// rules; see the stub file.
        #[allow(clippy::too_many_arguments)]
        fn run<'py>(
            &self,
            py: Python<'py>,
            state: &Bound<'py, PyAny>,
            env: &Bound<'py, PyAny>,
            late: bool,
            clock: Option<i64>,
            fresh: bool,
            update: &Bound<'py, PyString>,
            args: &Bound<'py, PyTuple>,
        ) -> PyResult<Bound<'py, PyAny>> {
            let name = env.getattr(intern!(py, "name"))?;
            let plan = self
                .plans
                .get(name.downcast::<PyString>()?.to_str()?)
                .unwrap_or(&self.other);
            let features = state.getattr(intern!(py, "features"))?;
            let features = features.downcast::<Features>()?;
            let before = features.borrow().record().clone();
            let outcome = features.call_method1(update, args).and_then(|_| {
                if plan.immediate && !late {
                    return Ok(Outcome::Python);
                }
                self.rules(py, state, env, features, plan, late, clock, fresh)
            });
            let (changes, reschedule) = match outcome {
                Ok(Outcome::Done(changes, reschedule)) => (changes, reschedule),
                Ok(Outcome::Python) => {
                    let before = Features { inner: before };
                    return (false, false, before).into_bound_py_any(py);
                }
                Err(err) => {
                    features.borrow_mut().inner = before;
                    return Err(err);
                }
            };
            if changes.is_empty() {
                if !reschedule {
                    return Ok(py.None().into_bound(py));
                }
                return (py.None(), true, py.None()).into_bound_py_any(py);
            }
            let changes = PyList::new(py, changes)?;
            (changes, reschedule, Features { inner: before }).into_bound_py_any(py)
        }

        /// Put ``before`` (as :meth:`run` gave it) back into ``features``, in place.
        #[staticmethod]
        fn put_back(features: &Bound<'_, Features>, before: &Bound<'_, Features>) {
            let inner = before.borrow().record().clone();
            features.borrow_mut().inner = inner;
        }
    }

    /// What the rules of an event leave to Python.
    enum Outcome {
        /// Done: the audience changes to write, and whether the customer's heap entry must move earlier.
        Done(Vec<(usize, Option<bool>)>, bool),
        /// Nothing done: take the Python path.
        Python,
    }

    impl CustomerStep {
        /// The rules of ``env`` once its features are applied: ``state.book`` gets the new timers,
        /// the last thing done (nothing is changed if this fails).
        #[allow(clippy::too_many_arguments)]
        fn rules(
            &self,
            py: Python<'_>,
            state: &Bound<'_, PyAny>,
            env: &Bound<'_, PyAny>,
            features: &Bound<'_, Features>,
            plan: &Plan,
            late: bool,
            clock: Option<i64>,
            fresh: bool,
        ) -> PyResult<Outcome> {
            let ts_ms: i64 = env.getattr(intern!(py, "ts_ms"))?.extract()?;
            let message_id = env.getattr(intern!(py, "message_id"))?;
            let message_id = message_id.downcast::<PyString>()?.to_str()?;
            let features = features.borrow();
            let record = features.record();
            let mut causes = Vec::with_capacity(plan.arm.len());
            for arm in &plan.arm {
                match cause(arm.once_per, record, ts_ms, message_id) {
                    Some(cause) => causes.push(encoded(&cause)),
                    None => return Ok(Outcome::Python),
                }
            }
            let now_ms = match clock {
                Some(clock) if clock != 0 => ts_ms.max(clock),
                _ => ts_ms,
            };
            let book = state.getattr(intern!(py, "book"))?;
            let book = book.downcast::<Bookkeeping>()?.get().book();
            let scheduled: Option<i64> = state.getattr(intern!(py, "scheduled_ms"))?.extract()?;
            let audiences = state.getattr(intern!(py, "audiences"))?;
            let audiences = audiences.downcast::<PyTuple>()?;
            let group = if fresh { self.every } else { plan.group };
            let changes = match group {
                Some(group) => self
                    .program
                    .get()
                    .changes(&features, now_ms, audiences, group)?,
                None => Vec::new(),
            };
            let event = Event {
                ts_ms,
                now_ms,
                late,
                clock,
                message_id,
            };
            let book = step_timers(
                book,
                plan,
                &causes,
                &event,
                record,
                self.recheck.as_ref(),
                self.most_caused_by,
                lock().names(),
            );
            let mut reschedule = false;
            if let Some(book) = book {
                let first_due = book.first_timer().map(|(due_ms, _)| due_ms);
                reschedule = first_due.map_or(false, |due| scheduled.map_or(true, |s| s > due));
                state.setattr(intern!(py, "book"), Bookkeeping::of(book))?;
            }
            Ok(Outcome::Done(changes, reschedule))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_written_as_python_writes_them_within_its_years() {
        assert_eq!(iso_day(0).as_deref(), Some("1970-01-01"));
        assert_eq!(iso_day(-1).as_deref(), Some("1969-12-31"));
        assert_eq!(iso_day(951_782_400_000).as_deref(), Some("2000-02-29"));
        assert_eq!(iso_day(-62_135_596_800_000).as_deref(), Some("0001-01-01"));
        assert_eq!(iso_day(-62_135_596_800_001), None);
        assert_eq!(iso_day(253_402_300_799_999).as_deref(), Some("9999-12-31"));
        assert_eq!(iso_day(253_402_300_800_000), None);
    }

    #[test]
    fn causes_are_the_strings_python_gives() {
        let features = Features::new(0);
        let cause = |once_per| cause(once_per, &features, 86_400_000, "m1");
        assert_eq!(cause(OncePer::Cart).as_deref(), Some("none"));
        assert_eq!(cause(OncePer::Session).as_deref(), Some("none"));
        assert_eq!(cause(OncePer::Order).as_deref(), Some("none"));
        assert_eq!(cause(OncePer::Customer).as_deref(), Some("customer"));
        assert_eq!(cause(OncePer::Day).as_deref(), Some("1970-01-02"));
        assert_eq!(cause(OncePer::Event).as_deref(), Some("m1"));
    }
}
