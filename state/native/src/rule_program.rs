//! Rule expressions evaluated over a customer's features record (see `operators/rule_program.py`,
//! which lowers the expression trees of `operators/expressions.py` into [`Node`]s).
//!
//! Every value and operator is Python's, to the bit: `bool` is an integer, `int` and `float`
//! compare exactly, a comparison that Python refuses (`'a' < 1`) or one with `null` is false,
//! arithmetic with `null` or a Python error (division by zero, text minus a number) is `null`.
//! What this does not model (integers past 64 bits, text or lists built by `+` and `*`, tuples
//! ordered) gives [`Defer`]: the caller evaluates that expression in Python.

use std::cmp::Ordering;

use crate::features::{known, py_round, Features, Id, Lifecycle, Trait, DAY_MS, HOUR_MS};

/// The trait codes of `city` and `country` (see `TRAIT_KEYS`).
const CITY_TRAIT: u8 = 1;
const COUNTRY_TRAIT: u8 = 2;

/// A constant of an expression (parts made only of constants are computed when compiled).
#[derive(Debug, Clone, PartialEq)]
pub enum Const {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Box<str>),
    Tuple(Box<[Const]>),
}

/// A value while an expression is evaluated: a constant's or a feature's.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Tuple(&'a [Const]),
}

impl<'a> From<&'a Const> for Value<'a> {
    fn from(constant: &'a Const) -> Self {
        match constant {
            Const::Null => Value::Null,
            Const::Bool(flag) => Value::Bool(*flag),
            Const::Int(number) => Value::Int(*number),
            Const::Float(number) => Value::Float(*number),
            Const::Str(text) => Value::Str(text),
            Const::Tuple(items) => Value::Tuple(items),
        }
    }
}

/// A feature read natively (each as `state/catalogue.py` computes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Lifecycle,
    AtRisk,
    LapseRisk,
    PAlive,
    ExpectedOrders,
    ExpectedOrderValue,
    Clv,
    Orders,
    Refunds,
    LifetimeSpend,
    Monetary,
    RecencyDays,
    DaysSinceSeen,
    TenureDays,
    MeanOrderGapDays,
    Hour,
    PreferredHour,
    LastStore,
    /// The last known city (the event's location, else the trait).
    City,
    Country,
    /// `traits.<key>`, by trait code.
    Trait(u8),
    /// `consent.<channel>`, by channel code.
    Consent(u8),
    CartValue,
    CartItems,
    SessionPages,
    SessionProductsViewed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
}

/// One part of an expression tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Const(Const),
    Read(Slot),
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    /// `body if test else orelse`: `[test, body, orelse]`.
    If(Box<[Node; 3]>),
    /// `a < b <= c`: the operands and the operators between them.
    Compare(Box<[Node]>, Box<[Cmp]>),
    Arith(Arith, Box<Node>, Box<Node>),
}

/// An expression this module does not evaluate exactly as Python would: evaluate it in Python.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defer;

type Eval<'a> = Result<Value<'a>, Defer>;

/// What an evaluation reads: the record, the time of the decision and the lifecycle settings.
pub struct Context<'a> {
    pub features: &'a Features,
    pub now_ms: i64,
    pub lifecycle: &'a Lifecycle,
    pub session_timeout_ms: i64,
    /// The name of an interned id (a text trait).
    pub name: &'a dyn Fn(Id) -> &'static str,
}

impl Context<'_> {
    pub(crate) fn read(&self, slot: Slot) -> Value<'static> {
        let features = self.features;
        let purchases = features.purchases();
        let live_session = || {
            features
                .session
                .as_ref()
                .filter(|s| self.now_ms - s.last_ms <= self.session_timeout_ms)
        };
        match slot {
            Slot::Lifecycle => Value::Str(features.lifecycle(self.now_ms, self.lifecycle)),
            Slot::AtRisk => Value::Bool(features.at_risk(self.now_ms, self.lifecycle)),
            Slot::LapseRisk => float_or_null(features.lapse_risk(self.now_ms, self.lifecycle)),
            Slot::PAlive => float_or_null(features.p_alive(self.now_ms, self.lifecycle)),
            Slot::ExpectedOrders => {
                float_or_null(features.expected_orders(self.now_ms, self.lifecycle))
            }
            Slot::ExpectedOrderValue => {
                float_or_null(features.expected_order_value(self.lifecycle))
            }
            Slot::Clv => float_or_null(features.clv(self.now_ms, self.lifecycle)),
            Slot::Orders => Value::Int(purchases.orders),
            Slot::Refunds => Value::Int(purchases.refunds),
            Slot::LifetimeSpend => Value::Float(purchases.lifetime_spend),
            Slot::Monetary => Value::Float(if purchases.orders != 0 {
                py_round(purchases.lifetime_spend / purchases.orders as f64, 2)
            } else {
                0.0
            }),
            Slot::RecencyDays => {
                float_or_null(purchases.last_order_ms.map(|at| self.days_since(at)))
            }
            Slot::DaysSinceSeen => Value::Float(self.days_since(features.last_seen_ms)),
            Slot::TenureDays => Value::Float(self.days_since(features.first_seen_ms)),
            Slot::MeanOrderGapDays => float_or_null(
                (purchases.orders >= 2)
                    .then(|| py_round(purchases.order_gap_ms / DAY_MS as f64, 3)),
            ),
            Slot::Hour => Value::Int(self.now_ms.div_euclid(HOUR_MS).rem_euclid(24)),
            Slot::PreferredHour => features
                .preferred_hour()
                .map_or(Value::Null, |hour| Value::Int(i64::from(hour))),
            Slot::LastStore => {
                known(features.last_store).map_or(Value::Null, |id| Value::Str((self.name)(id)))
            }
            Slot::City => self.place(features.last_city, CITY_TRAIT),
            Slot::Country => self.place(features.last_country, COUNTRY_TRAIT),
            Slot::Trait(code) => match features.traits().find(|(key, _)| *key == code) {
                Some((_, Trait::Text(id))) => Value::Str((self.name)(id)),
                Some((_, Trait::Flag(flag))) => Value::Bool(flag),
                None => Value::Null,
            },
            Slot::Consent(code) => features
                .consent
                .iter()
                .find(|(channel, _)| *channel == code)
                .map_or(Value::Null, |(_, granted)| Value::Bool(granted)),
            Slot::CartValue => Value::Float(features.cart.as_ref().map_or(0.0, |c| c.value)),
            Slot::CartItems => Value::Int(features.cart.as_ref().map_or(0, |c| c.items())),
            Slot::SessionPages => live_session().map_or(Value::Null, |s| Value::Int(s.pages)),
            Slot::SessionProductsViewed => {
                live_session().map_or(Value::Null, |s| Value::Int(s.products.len() as i64))
            }
        }
    }

    /// The last place seen (`last_id`), else the trait of that kind: `last_city or traits.city`.
    fn place(&self, last_id: Id, trait_code: u8) -> Value<'static> {
        match known(last_id).map(self.name) {
            Some(place) if !place.is_empty() => Value::Str(place),
            _ => self.read(Slot::Trait(trait_code)),
        }
    }

    /// Days from `at_ms` to now (never negative), to 3 digits: `round(max(0, now - at) / DAY_MS, 3)`.
    fn days_since(&self, at_ms: i64) -> f64 {
        py_round((self.now_ms - at_ms).max(0) as f64 / DAY_MS as f64, 3)
    }

    /// The value of `node`.
    pub fn evaluate<'n>(&self, node: &'n Node) -> Eval<'n> {
        Ok(match node {
            Node::Const(constant) => Value::from(constant),
            Node::Read(slot) => self.read(*slot),
            Node::Not(operand) => Value::Bool(!truthy(self.evaluate(operand)?)),
            Node::Neg(operand) => negate(self.evaluate(operand)?)?,
            Node::And(left, right) => {
                Value::Bool(truthy(self.evaluate(left)?) && truthy(self.evaluate(right)?))
            }
            Node::Or(left, right) => {
                Value::Bool(truthy(self.evaluate(left)?) || truthy(self.evaluate(right)?))
            }
            Node::If(parts) => {
                let [test, body, orelse] = &**parts;
                if truthy(self.evaluate(test)?) {
                    self.evaluate(body)?
                } else {
                    self.evaluate(orelse)?
                }
            }
            Node::Compare(operands, ops) => Value::Bool(self.compare_chain(operands, ops)?),
            Node::Arith(op, left, right) => {
                arithmetic(*op, self.evaluate(left)?, self.evaluate(right)?)?
            }
        })
    }

    /// `a op1 b op2 c ...`: each pair compared in turn, false at the first that fails.
    fn compare_chain(&self, operands: &[Node], ops: &[Cmp]) -> Result<bool, Defer> {
        let mut left = self.evaluate(&operands[0])?;
        for (op, operand) in ops.iter().zip(&operands[1..]) {
            let right = self.evaluate(operand)?;
            if !compare(*op, left, right)? {
                return Ok(false);
            }
            left = right;
        }
        Ok(true)
    }
}

fn float_or_null(value: Option<f64>) -> Value<'static> {
    value.map_or(Value::Null, Value::Float)
}

/// Python's `bool(value)`.
pub fn truthy(value: Value<'_>) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(flag) => flag,
        Value::Int(number) => number != 0,
        Value::Float(number) => number != 0.0,
        Value::Str(text) => !text.is_empty(),
        Value::Tuple(items) => !items.is_empty(),
    }
}

/// A number as Python sees it (`bool` is an `int`).
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

fn number(value: Value<'_>) -> Option<Num> {
    match value {
        Value::Bool(flag) => Some(Num::Int(i64::from(flag))),
        Value::Int(number) => Some(Num::Int(number)),
        Value::Float(number) => Some(Num::Float(number)),
        _ => None,
    }
}

/// An integer against a float, exactly (as Python compares them); `None` for NaN.
fn int_against_float(int: i64, float: f64) -> Option<Ordering> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if float.is_nan() {
        return None;
    }
    if float >= TWO_63 {
        return Some(Ordering::Less);
    }
    if float < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let whole = float.trunc();
    Some(int.cmp(&(whole as i64)).then_with(|| {
        // the same integer part: the fraction decides
        if float > whole {
            Ordering::Less
        } else if float < whole {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    }))
}

fn order_numbers(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y),
        (Num::Int(x), Num::Float(y)) => int_against_float(x, y),
        (Num::Float(x), Num::Int(y)) => int_against_float(y, x).map(Ordering::reverse),
    }
}

/// Python's `a == b`.
pub fn equal(a: Value<'_>, b: Value<'_>) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Tuple(x), Value::Tuple(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| equal(Value::from(p), Value::from(q)))
        }
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => order_numbers(x, y) == Some(Ordering::Equal),
            _ => false,
        },
    }
}

/// `item in container`; `None` where Python raises `TypeError`.
fn contains(container: Value<'_>, item: Value<'_>) -> Option<bool> {
    match (container, item) {
        (Value::Tuple(items), _) => Some(items.iter().any(|i| equal(Value::from(i), item))),
        (Value::Str(text), Value::Str(part)) => Some(text.contains(part)),
        _ => None,
    }
}

/// One comparison as `_safe_compare` makes it: with `null` (but for `==`, `!=`) or a comparison
/// Python refuses, false.
pub fn compare(op: Cmp, a: Value<'_>, b: Value<'_>) -> Result<bool, Defer> {
    match op {
        Cmp::Eq => return Ok(equal(a, b)),
        Cmp::Ne => return Ok(!equal(a, b)),
        _ => {}
    }
    if matches!(a, Value::Null) || matches!(b, Value::Null) {
        return Ok(false);
    }
    let ordering = match (a, b) {
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)), // UTF-8 byte order is code point order
        (Value::Tuple(_), Value::Tuple(_)) if !matches!(op, Cmp::In | Cmp::NotIn) => {
            return Err(Defer)
        }
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => order_numbers(x, y),
            _ => None, // not ordered (a TypeError in Python): false
        },
    };
    Ok(match op {
        Cmp::Lt => ordering == Some(Ordering::Less),
        Cmp::Le => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
        Cmp::Gt => ordering == Some(Ordering::Greater),
        Cmp::Ge => matches!(ordering, Some(Ordering::Greater | Ordering::Equal)),
        Cmp::In => contains(b, a).unwrap_or(false),
        Cmp::NotIn => contains(b, a).map_or(false, |found| !found),
        Cmp::Eq | Cmp::Ne => unreachable!("handled above"),
    })
}

/// Python's unary `-`, `null` for `null` and for what has no negative.
fn negate(value: Value<'_>) -> Eval<'static> {
    Ok(match value {
        Value::Bool(flag) => Value::Int(-i64::from(flag)),
        Value::Int(number) => Value::Int(number.checked_neg().ok_or(Defer)?),
        Value::Float(number) => Value::Float(-number),
        _ => Value::Null,
    })
}

/// `a op b` as the `_null_safe` operators compute it: `null` for `null` and for a Python error.
fn arithmetic<'a>(op: Arith, a: Value<'a>, b: Value<'a>) -> Eval<'a> {
    if matches!(a, Value::Null) || matches!(b, Value::Null) {
        return Ok(Value::Null);
    }
    let (Some(x), Some(y)) = (number(a), number(b)) else {
        let sequences = |v: Value<'_>| matches!(v, Value::Str(_) | Value::Tuple(_));
        if matches!(op, Arith::Add | Arith::Mul) && (sequences(a) || sequences(b)) {
            return Err(Defer); // joins or repeats text and lists (with their size limit)
        }
        return Ok(Value::Null); // a TypeError in Python
    };
    Ok(match (x, y) {
        (Num::Int(x), Num::Int(y)) => integers(op, x, y)?,
        (x, y) => floats(op, as_float(x), as_float(y)),
    })
}

fn as_float(number: Num) -> f64 {
    match number {
        Num::Int(int) => int as f64, // to nearest, ties to even, as Python converts
        Num::Float(float) => float,
    }
}

/// Integers within 2 ** 53 convert to floats exactly (so `/` divides as Python does).
const EXACT_FLOAT_INT: i64 = 1 << 53;

fn integers(op: Arith, x: i64, y: i64) -> Eval<'static> {
    let int = |result: Option<i64>| result.map(Value::Int).ok_or(Defer);
    match op {
        Arith::Add => int(x.checked_add(y)),
        Arith::Sub => int(x.checked_sub(y)),
        Arith::Mul => int(x.checked_mul(y)),
        Arith::Div if y == 0 => Ok(Value::Null),
        Arith::Div if x.abs() <= EXACT_FLOAT_INT && y.abs() <= EXACT_FLOAT_INT => {
            Ok(Value::Float(x as f64 / y as f64))
        }
        Arith::Div => Err(Defer), // Python divides big integers exactly
        Arith::FloorDiv | Arith::Mod if y == 0 => Ok(Value::Null),
        Arith::FloorDiv => {
            let quotient = x.checked_div(y).ok_or(Defer)?;
            let floored = x % y != 0 && ((x < 0) != (y < 0));
            Ok(Value::Int(quotient - i64::from(floored)))
        }
        Arith::Mod => {
            let remainder = x.checked_rem(y).ok_or(Defer)?;
            let shifted = remainder != 0 && ((remainder < 0) != (y < 0));
            Ok(Value::Int(if shifted { remainder + y } else { remainder }))
        }
    }
}

fn floats(op: Arith, x: f64, y: f64) -> Value<'static> {
    match op {
        Arith::Add => Value::Float(x + y),
        Arith::Sub => Value::Float(x - y),
        Arith::Mul => Value::Float(x * y),
        Arith::Div | Arith::FloorDiv | Arith::Mod if y == 0.0 => Value::Null,
        Arith::Div => Value::Float(x / y),
        Arith::FloorDiv => Value::Float(float_div_mod(x, y).0),
        Arith::Mod => Value::Float(float_div_mod(x, y).1),
    }
}

/// CPython's `_float_div_mod`: `(x // y, x % y)` for floats, `y` not zero.
fn float_div_mod(x: f64, y: f64) -> (f64, f64) {
    let mut rem = x % y; // C's fmod
    let mut div = (x - rem) / y;
    if rem != 0.0 {
        if (y < 0.0) != (rem < 0.0) {
            rem += y;
            div -= 1.0;
        }
    } else {
        rem = 0.0_f64.copysign(y);
    }
    let floordiv = if div != 0.0 {
        let floor = div.floor();
        if div - floor > 0.5 {
            floor + 1.0
        } else {
            floor
        }
    } else {
        0.0_f64.copysign(x / y)
    };
    (floordiv, rem)
}

/// The compiled expressions of one rule set, by position; `None` for one evaluated in Python
/// (it reads a feature that is not in the record, such as a model's score or the event).
#[derive(Debug, Default)]
pub struct Program {
    pub expressions: Vec<Option<Node>>,
}

impl Program {
    /// Whether expression `index` holds; `Defer` for one to evaluate in Python.
    pub fn holds(&self, index: usize, context: &Context<'_>) -> Result<bool, Defer> {
        match &self.expressions[index] {
            Some(node) => Ok(truthy(context.evaluate(node)?)),
            None => Err(Defer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::TRAIT_KEYS;

    #[test]
    fn integers_and_floats_compare_exactly() {
        let big = (1_i64 << 53) + 1;
        assert_eq!(int_against_float(big, big as f64), Some(Ordering::Greater));
        assert_eq!(int_against_float(5, 5.5), Some(Ordering::Less));
        assert_eq!(int_against_float(-5, -5.5), Some(Ordering::Greater));
        assert_eq!(int_against_float(3, 3.0), Some(Ordering::Equal));
        assert_eq!(
            int_against_float(i64::MAX, f64::INFINITY),
            Some(Ordering::Less)
        );
        assert_eq!(int_against_float(0, f64::NAN), None);
    }

    #[test]
    fn the_place_traits_are_where_the_codes_say() {
        assert_eq!(TRAIT_KEYS[usize::from(CITY_TRAIT)], "city");
        assert_eq!(TRAIT_KEYS[usize::from(COUNTRY_TRAIT)], "country");
    }

    #[test]
    fn floor_division_and_modulo_follow_the_divisor_sign() {
        let int = |op, x, y| match integers(op, x, y) {
            Ok(Value::Int(n)) => Some(n),
            _ => None,
        };
        assert_eq!(int(Arith::FloorDiv, -7, 2), Some(-4));
        assert_eq!(int(Arith::Mod, -7, 2), Some(1));
        assert_eq!(int(Arith::Mod, 7, -2), Some(-1));
        assert_eq!(int(Arith::FloorDiv, i64::MIN, -1), None);
        assert_eq!(float_div_mod(-7.5, 2.0), (-4.0, 0.5));
        assert_eq!(float_div_mod(7.5, -2.0), (-4.0, -0.5));
    }
}

#[cfg(feature = "python")]
pub mod python {
    use pyo3::exceptions::{PyIndexError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::{PyBool, PyFloat, PyInt, PyList, PyString, PyTuple};

    use super::{Arith, Cmp, Const, Context, Defer, Node, Program, Slot};
    use crate::btyd::PopulationArgs;
    use crate::features::python::{name, Features};
    use crate::features::{Lifecycle, CHANNELS, TRAIT_KEYS};

    fn refused(what: &str, part: &Bound<'_, PyAny>) -> PyErr {
        PyValueError::new_err(format!("not a rule program {what}: {part}"))
    }

    fn constant(value: &Bound<'_, PyAny>) -> PyResult<Const> {
        Ok(if value.is_none() {
            Const::Null
        } else if let Ok(flag) = value.downcast::<PyBool>() {
            Const::Bool(flag.is_true())
        } else if value.is_instance_of::<PyInt>() {
            Const::Int(value.extract()?)
        } else if let Ok(number) = value.downcast::<PyFloat>() {
            Const::Float(number.value())
        } else if let Ok(text) = value.downcast::<PyString>() {
            Const::Str(text.to_str()?.into())
        } else if let Ok(items) = value.downcast::<PyTuple>() {
            Const::Tuple(
                items
                    .iter()
                    .map(|item| constant(&item))
                    .collect::<PyResult<_>>()?,
            )
        } else {
            return Err(refused("constant", value));
        })
    }

    /// A read of ``feature`` (``key``: its field, for traits, consent, cart and session). A trait
    /// or a channel that does not exist is ``null``, as the dictionary's ``get`` gives.
    pub(crate) fn read(feature: &str, key: &str, part: &Bound<'_, PyAny>) -> PyResult<Node> {
        let code = |keys: &[&str]| keys.iter().position(|k| *k == key).map(|p| p as u8);
        let slot = match feature {
            "lifecycle" => Slot::Lifecycle,
            "at_risk" => Slot::AtRisk,
            "lapse_risk" => Slot::LapseRisk,
            "p_alive" => Slot::PAlive,
            "expected_orders" => Slot::ExpectedOrders,
            "expected_order_value" => Slot::ExpectedOrderValue,
            "clv" => Slot::Clv,
            "orders" => Slot::Orders,
            "refunds" => Slot::Refunds,
            "lifetime_spend" => Slot::LifetimeSpend,
            "monetary" => Slot::Monetary,
            "recency_days" => Slot::RecencyDays,
            "days_since_seen" => Slot::DaysSinceSeen,
            "tenure_days" => Slot::TenureDays,
            "mean_order_gap_days" => Slot::MeanOrderGapDays,
            "hour" => Slot::Hour,
            "preferred_hour" => Slot::PreferredHour,
            "last_store" => Slot::LastStore,
            "city" => Slot::City,
            "country" => Slot::Country,
            "traits" => match code(&TRAIT_KEYS) {
                Some(code) => Slot::Trait(code),
                None => return Ok(Node::Const(Const::Null)),
            },
            "consent" => match code(&CHANNELS) {
                Some(code) => Slot::Consent(code),
                None => return Ok(Node::Const(Const::Null)),
            },
            "cart" if key == "value" => Slot::CartValue,
            "cart" if key == "items" => Slot::CartItems,
            "session" if key == "pages" => Slot::SessionPages,
            "session" if key == "products_viewed" => Slot::SessionProductsViewed,
            _ => return Err(refused("feature", part)),
        };
        Ok(Node::Read(slot))
    }

    fn boxed(part: &Bound<'_, PyAny>) -> PyResult<Box<Node>> {
        node(part).map(Box::new)
    }

    /// A node from its lowered form (see `operators/rule_program.py`): a tuple whose first item
    /// names its kind.
    fn node(part: &Bound<'_, PyAny>) -> PyResult<Node> {
        let parts = part.downcast::<PyTuple>()?;
        let kind: String = parts.get_item(0)?.extract()?;
        let at = |i: usize| parts.get_item(i);
        Ok(match kind.as_str() {
            "const" => Node::Const(constant(&at(1)?)?),
            "read" => read(
                &at(1)?.extract::<String>()?,
                &at(2)?.extract::<String>()?,
                part,
            )?,
            "not" => Node::Not(boxed(&at(1)?)?),
            "neg" => Node::Neg(boxed(&at(1)?)?),
            "and" => Node::And(boxed(&at(1)?)?, boxed(&at(2)?)?),
            "or" => Node::Or(boxed(&at(1)?)?, boxed(&at(2)?)?),
            "if" => Node::If(Box::new([node(&at(1)?)?, node(&at(2)?)?, node(&at(3)?)?])),
            "compare" => {
                let ops: Vec<String> = at(1)?.extract()?;
                let operands: Vec<Bound<'_, PyAny>> = at(2)?.extract()?;
                if ops.is_empty() || operands.len() != ops.len() + 1 {
                    return Err(refused("comparison", part));
                }
                let ops = ops
                    .iter()
                    .map(|op| comparison(op, part))
                    .collect::<PyResult<_>>()?;
                let operands = operands.iter().map(node).collect::<PyResult<_>>()?;
                Node::Compare(operands, ops)
            }
            "arith" => {
                let op = arithmetic(&at(1)?.extract::<String>()?, part)?;
                Node::Arith(op, boxed(&at(2)?)?, boxed(&at(3)?)?)
            }
            _ => return Err(refused("node", part)),
        })
    }

    fn comparison(op: &str, part: &Bound<'_, PyAny>) -> PyResult<Cmp> {
        Ok(match op {
            "==" => Cmp::Eq,
            "!=" => Cmp::Ne,
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            ">" => Cmp::Gt,
            ">=" => Cmp::Ge,
            "in" => Cmp::In,
            "not in" => Cmp::NotIn,
            _ => return Err(refused("comparison", part)),
        })
    }

    fn arithmetic(op: &str, part: &Bound<'_, PyAny>) -> PyResult<Arith> {
        Ok(match op {
            "+" => Arith::Add,
            "-" => Arith::Sub,
            "*" => Arith::Mul,
            "/" => Arith::Div,
            "//" => Arith::FloorDiv,
            "%" => Arith::Mod,
            _ => return Err(refused("operator", part)),
        })
    }

    fn name_of(id: crate::features::Id) -> &'static str {
        name(id)
    }

    /// A rule set's expressions compiled over the features record: audiences first (their
    /// membership keys in ``members``), then any others; ``groups`` are the audience positions
    /// evaluated together (those an event kind can change); ``exits``, by audience position, the
    /// expression a member leaves on (``None``: when its own condition no longer holds).
    #[pyclass(module = "state._native", name = "RuleProgram", frozen)]
    pub struct RuleProgram {
        program: Program,
        members: Box<[Box<str>]>,
        groups: Box<[Box<[usize]>]>,
        exits: Box<[Option<usize>]>,
        lifecycle: Lifecycle,
        session_timeout_ms: i64,
    }

    impl RuleProgram {
        fn context<'a>(&'a self, features: &'a Features, now_ms: i64) -> Context<'a> {
            Context {
                features: &features.inner,
                now_ms,
                lifecycle: &self.lifecycle,
                session_timeout_ms: self.session_timeout_ms,
                name: &name_of,
            }
        }
    }

    impl RuleProgram {
        /// Whether expression ``index`` holds (``None``: evaluated in Python, or no such expression).
        pub(crate) fn verdict(
            &self,
            features: &Features,
            now_ms: i64,
            index: usize,
        ) -> Option<bool> {
            if index >= self.program.expressions.len() {
                return None;
            }
            self.program
                .holds(index, &self.context(features, now_ms))
                .ok()
        }

        /// The audiences of ``group`` whose membership changes (see :meth:`audience_changes`).
        pub(crate) fn changes(
            &self,
            features: &Features,
            now_ms: i64,
            members: &Bound<'_, PyTuple>,
            group: usize,
        ) -> PyResult<Vec<(usize, Option<bool>)>> {
            let positions = self
                .groups
                .get(group)
                .ok_or_else(|| PyIndexError::new_err(format!("no audience group {group}")))?;
            let context = self.context(features, now_ms);
            let mut changes: Vec<(usize, Option<bool>)> = Vec::new();
            for &position in positions.iter() {
                let member = is_member(members, &self.members[position])?;
                let inside = match self.exits.get(position).copied().flatten() {
                    // hysteresis: a member stays until its exit condition holds
                    Some(exit) if member => self.program.holds(exit, &context).map(|leave| !leave),
                    _ => self.program.holds(position, &context),
                };
                let inside = match inside {
                    Ok(inside) if inside == member => continue,
                    Ok(inside) => Some(inside),
                    Err(Defer) => None,
                };
                changes.push((position, inside));
            }
            Ok(changes)
        }
    }

    fn is_member(members: &Bound<'_, PyTuple>, member: &str) -> PyResult<bool> {
        for item in members.iter() {
            if item.downcast::<PyString>()?.to_str()? == member {
                return Ok(true);
            }
        }
        Ok(false)
    }

    #[pymethods]
    impl RuleProgram {
        #[new]
        #[allow(clippy::too_many_arguments)]
        #[pyo3(signature = (expressions, members, groups, new_days, lapse_days, at_risk_gap_factor, session_timeout_ms, population, exits = Vec::new()))]
        fn new(
            expressions: Vec<Option<Bound<'_, PyAny>>>,
            members: Vec<String>,
            groups: Vec<Vec<usize>>,
            new_days: i64,
            lapse_days: i64,
            at_risk_gap_factor: f64,
            session_timeout_ms: i64,
            population: PopulationArgs,
            exits: Vec<Option<usize>>,
        ) -> PyResult<Self> {
            if members.len() > expressions.len()
                || groups
                    .iter()
                    .flatten()
                    .any(|position| *position >= members.len())
            {
                return Err(PyValueError::new_err(
                    "a rule program's groups name audiences it does not have",
                ));
            }
            if exits.len() > members.len()
                || exits
                    .iter()
                    .flatten()
                    .any(|index| *index < members.len() || *index >= expressions.len())
            {
                return Err(PyValueError::new_err(
                    "a rule program's exits name expressions it does not have",
                ));
            }
            let expressions = expressions
                .iter()
                .map(|tree| tree.as_ref().map(node).transpose())
                .collect::<PyResult<_>>()?;
            Ok(Self {
                program: Program { expressions },
                members: members.into_iter().map(Into::into).collect(),
                groups: groups.into_iter().map(Into::into).collect(),
                exits: exits.into(),
                lifecycle: Lifecycle {
                    new_days,
                    lapse_days,
                    at_risk_gap_factor,
                    population: population.into(),
                },
                session_timeout_ms,
            })
        }

        /// The audiences of ``group`` whose membership changes at ``now_ms``, in order, as
        /// ``(position, inside)``; ``inside`` is ``None`` for one to evaluate in Python.
        /// ``None`` when none changes (``members``: the customer's audiences now).
        fn audience_changes<'py>(
            &self,
            py: Python<'py>,
            features: PyRef<'_, Features>,
            now_ms: i64,
            members: &Bound<'py, PyTuple>,
            group: usize,
        ) -> PyResult<Option<Bound<'py, PyList>>> {
            let changes = self.changes(&features, now_ms, members, group)?;
            if changes.is_empty() {
                return Ok(None);
            }
            PyList::new(py, changes).map(Some)
        }

        /// Whether expression ``index`` holds at ``now_ms``; ``None`` for one to evaluate in Python.
        fn holds(
            &self,
            features: PyRef<'_, Features>,
            now_ms: i64,
            index: usize,
        ) -> PyResult<Option<bool>> {
            if index >= self.program.expressions.len() {
                return Err(PyIndexError::new_err(format!("no expression {index}")));
            }
            Ok(self
                .program
                .holds(index, &self.context(&features, now_ms))
                .ok())
        }

        /// How many expressions are compiled (the others are evaluated in Python).
        #[getter]
        fn compiled(&self) -> usize {
            self.program.expressions.iter().flatten().count()
        }
    }
}
