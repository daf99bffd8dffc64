//! The lines of an order or checkout (`properties.products`), read by the event scan on its way
//! through the bytes, so that they are neither decoded a second time nor read attribute by
//! attribute: a line is kept as where it lies in the event's bytes, with the three values the
//! features read (product, category, quantity).
//!
//! The scan takes over an event's lines only when every line is one the contract accepts as it is
//! (`schemas.events.Product`, checked here field by field) and its `product_id` and `category` hold
//! no escape; any other line (a bad one, a coercion, an escape there) leaves the lines to the
//! decoder, which drops or repairs them and says why, as always.

/// Lines an order may have (`schemas.events.MAX_LINES`).
pub const MAX_LINES: usize = 500;
/// Characters of a `product_id` (`schemas.events.Id`).
const MAX_ID_CHARS: usize = 200;
/// The largest `price` (`schemas.events.Money`).
const MAX_PRICE: f64 = 1e9;
/// The bounds of a line's `quantity` (`schemas.events.LineQuantity`).
const MAX_QUANTITY: i64 = 100_000;

/// The fields of a line (`schemas.events.Product`).
pub const FIELDS: [&str; 7] = [
    "product_id",
    "sku",
    "name",
    "category",
    "brand",
    "price",
    "quantity",
];

/// Whether `key` is one of a line's [`FIELDS`].
pub fn is_field(key: &[u8]) -> bool {
    matches!(
        key,
        b"product_id" | b"sku" | b"name" | b"category" | b"brand" | b"price" | b"quantity"
    )
}

/// Where a part of the event's bytes lies: `start..end`.
pub type Span = (usize, usize);

/// One accepted line: the span of its object, of its `product_id` and `category` texts and of its
/// `price` number, and its `quantity` (1 when not sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub object: Span,
    pub product_id: Span,
    pub category: Option<Span>,
    pub price: Option<Span>,
    pub quantity: i64,
}

/// A JSON value as the scan met it, with the span of a string's text or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// A string without escapes: the span of its text.
    Text(Span),
    /// A string with an escape.
    Escaped,
    Number(Span),
    Null,
    /// `true`, `false`, an object or an array.
    Other,
}

/// A line while its object is read: `None` once a field is one the lines are not taken over with.
pub struct Draft {
    start: usize,
    product_id: Option<Span>,
    category: Option<Span>,
    price: Option<Span>,
    quantity: i64,
    taken: bool,
}

impl Draft {
    pub fn new(start: usize) -> Self {
        Self {
            start,
            product_id: None,
            category: None,
            price: None,
            quantity: 1,
            taken: true,
        }
    }

    /// Reads the value of `key` (the line's `json`); a key the contract does not name is skipped.
    pub fn read(&mut self, json: &[u8], key: &[u8], value: Value) {
        let fits = match (key, value) {
            (b"product_id", Value::Text(span)) => {
                self.product_id = Some(span);
                id_fits(&json[span.0..span.1])
            }
            (b"category", Value::Text(span)) => {
                self.category = Some(span);
                true
            }
            (b"category", Value::Null) => true,
            (b"sku" | b"name" | b"brand", Value::Text(..) | Value::Escaped | Value::Null) => true,
            (b"price", Value::Null) => true,
            (b"price", Value::Number(span)) => {
                self.price = Some(span);
                price_fits(&json[span.0..span.1])
            }
            (b"quantity", Value::Number(span)) => match integer(&json[span.0..span.1]) {
                Some(quantity) if quantity.abs() <= MAX_QUANTITY => {
                    self.quantity = quantity;
                    true
                }
                _ => false,
            },
            (
                b"product_id" | b"category" | b"sku" | b"name" | b"brand" | b"price" | b"quantity",
                _,
            ) => false,
            _ => true,
        };
        self.taken &= fits;
    }

    /// The line, its object ending at `end`; `None` if it is not taken over.
    pub fn finish(self, end: usize) -> Option<Line> {
        Some(Line {
            object: (self.start, end),
            product_id: self.product_id.filter(|_| self.taken)?,
            category: self.category,
            price: self.price,
            quantity: self.quantity,
        })
    }
}

/// Whether UTF-8 `text` has 1 to [`MAX_ID_CHARS`] characters (counted only when its bytes do not tell).
fn id_fits(text: &[u8]) -> bool {
    match text.len() {
        0 => false,
        1..=MAX_ID_CHARS => true,
        _ => text.iter().filter(|byte| (**byte & 0xC0) != 0x80).count() <= MAX_ID_CHARS,
    }
}

/// Whether the JSON number `text` is a price from 0 to [`MAX_PRICE`]: read only when its digits do not
/// tell (a sign, or ten digits before the point).
fn price_fits(text: &[u8]) -> bool {
    let whole = text
        .iter()
        .position(|byte| *byte == b'.')
        .unwrap_or(text.len());
    if text[0] != b'-' && whole < 10 {
        return true;
    }
    (0.0..=MAX_PRICE).contains(&float(text))
}

/// The JSON number `text` as the nearest `f64` (as every JSON decoder reads it).
fn float(text: &[u8]) -> f64 {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The JSON number `text` as an integer: `None` if written with a fraction (or past an `i64`).
fn integer(text: &[u8]) -> Option<i64> {
    let (sign, digits) = match text.split_first() {
        Some((b'-', digits)) => (-1, digits),
        _ => (1, text),
    };
    digits
        .iter()
        .try_fold(0i64, |value, byte| match byte {
            b'0'..=b'9' => value.checked_mul(10)?.checked_add(i64::from(byte - b'0')),
            _ => None,
        })
        .map(|value| sign * value)
}

/// The text at `span` of `json` (the bytes of a plain event are UTF-8).
pub fn text(json: &[u8], span: Span) -> &str {
    std::str::from_utf8(&json[span.0..span.1]).unwrap_or_default()
}

/// An event's lines: the span of the `products` array and each line in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lines {
    pub array: Span,
    pub lines: Vec<Line>,
}

impl Lines {
    /// The event's bytes with an empty `products` array for its lines.
    pub fn without_lines(&self, json: &[u8], out: &mut [u8]) {
        let (start, end) = self.array;
        out[..start].copy_from_slice(&json[..start]);
        out[start..start + 2].copy_from_slice(b"[]");
        out[start + 2..].copy_from_slice(&json[end..]);
    }

    /// The length of [`Self::without_lines`].
    pub fn without_lines_len(&self, json: &[u8]) -> usize {
        json.len() - (self.array.1 - self.array.0) + 2
    }

    /// What the lines are worth: each price (none: 0) times its quantity, summed in order as
    /// Python's `sum` adds floats (`None` for no lines, where `sum` gives the integer 0).
    pub fn amount(&self, json: &[u8]) -> Option<f64> {
        let price = |line: &Line| line.price.map(|span| float(&json[span.0..span.1]));
        let worth =
            |line: &Line| price(line).filter(|p| *p != 0.0).unwrap_or(0.0) * line.quantity as f64;
        (!self.lines.is_empty()).then(|| {
            self.lines
                .iter()
                .fold(0.0, |total, line| total + worth(line))
        })
    }

    /// The lines bought (a quantity of 0 or more), the first `most` of them: product, category
    /// (`None` when not sent or null) and quantity.
    pub fn bought<'a>(
        &'a self,
        json: &'a [u8],
        most: usize,
    ) -> impl Iterator<Item = (&'a str, Option<&'a str>, i64)> + 'a {
        self.lines
            .iter()
            .filter(|line| line.quantity >= 0)
            .take(most)
            .map(move |line| {
                let category = line.category.map(|span| text(json, span));
                (text(json, line.product_id), category, line.quantity)
            })
    }
}

#[cfg(feature = "python")]
pub mod python {
    use pyo3::exceptions::PyIndexError;
    use pyo3::prelude::*;
    use pyo3::pyclass::CompareOp;
    use pyo3::types::{PyBytes, PyList, PyTuple};
    use pyo3::IntoPyObjectExt;

    use super::Lines;

    /// The lines of a plain order or checkout, as the scan read them: a read-only sequence of
    /// ``schemas.events.Product``, each decoded from its bytes when read (see
    /// ``state/native/src/order_lines.rs``).
    #[pyclass(module = "state._native", name = "OrderLines", frozen, sequence)]
    pub struct OrderLines {
        json: Py<PyBytes>,
        lines: Lines,
        decode: Py<PyAny>,
    }

    impl OrderLines {
        pub fn new(json: Py<PyBytes>, lines: Lines, decode: Py<PyAny>) -> Self {
            Self {
                json,
                lines,
                decode,
            }
        }

        /// The event's bytes and its lines.
        pub fn read<'a>(&'a self, py: Python<'a>) -> (&'a [u8], &'a Lines) {
            (self.json.bind(py).as_bytes(), &self.lines)
        }

        fn line<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyAny>> {
            let (start, end) = self.lines.lines[n].object;
            let bytes = PyBytes::new(py, &self.json.bind(py).as_bytes()[start..end]);
            self.decode.bind(py).call1((bytes,))
        }

        fn list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
            let lines = (0..self.lines.lines.len())
                .map(|n| self.line(py, n))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, lines)
        }
    }

    #[pymethods]
    impl OrderLines {
        fn __len__(&self) -> usize {
            self.lines.lines.len()
        }

        /// A line by index; a slice as a list.
        fn __getitem__<'py>(
            &self,
            py: Python<'py>,
            index: &Bound<'py, PyAny>,
        ) -> PyResult<Bound<'py, PyAny>> {
            let Ok(index) = index.extract::<isize>() else {
                return self.list(py)?.as_any().get_item(index);
            };
            let len = self.lines.lines.len() as isize;
            let at = if index < 0 { index + len } else { index };
            if !(0..len).contains(&at) {
                return Err(PyIndexError::new_err("order line index out of range"));
            }
            self.line(py, at as usize)
        }

        fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
            Ok(self.list(py)?.try_iter()?.into_any())
        }

        /// What the lines are worth, as ``sum((p.price or 0.0) * p.quantity for p in lines)``.
        fn amount(&self, py: Python<'_>) -> PyResult<PyObject> {
            match self.lines.amount(self.json.bind(py).as_bytes()) {
                Some(amount) => amount.into_py_any(py),
                None => 0.into_py_any(py),
            }
        }

        /// As the list of its lines.
        fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
            Ok(self.list(py)?.repr()?.to_string())
        }

        /// Equal to a list (or lines) of the same lines.
        fn __richcmp__(
            &self,
            py: Python<'_>,
            other: &Bound<'_, PyAny>,
            op: CompareOp,
        ) -> PyResult<PyObject> {
            let other = match other.downcast::<OrderLines>() {
                Ok(lines) => lines.get().list(py)?.into_any(),
                Err(_) if other.is_instance_of::<PyList>() => other.clone(),
                Err(_) => return Ok(py.NotImplemented()),
            };
            Ok(self.list(py)?.rich_compare(other, op)?.unbind())
        }

        /// Pickled as the list of its lines.
        fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
            let list = py.get_type::<PyList>();
            PyTuple::new(
                py,
                [
                    list.into_any(),
                    PyTuple::new(py, [self.list(py)?])?.into_any(),
                ],
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(fields: &[(&str, Value)], json: &[u8]) -> Option<Line> {
        let mut draft = Draft::new(0);
        for (key, value) in fields {
            draft.read(json, key.as_bytes(), *value);
        }
        draft.finish(json.len())
    }

    #[test]
    fn a_line_is_taken_with_its_product_category_and_quantity() {
        let json = b"p-1 shoes 3";
        let line = read(
            &[
                ("product_id", Value::Text((0, 3))),
                ("category", Value::Text((4, 9))),
                ("quantity", Value::Number((10, 11))),
                ("currency", Value::Other),
            ],
            json,
        );
        let expected = Line {
            object: (0, 11),
            product_id: (0, 3),
            category: Some((4, 9)),
            price: None,
            quantity: 3,
        };
        assert_eq!(line, Some(expected));
    }

    #[test]
    fn prices_and_quantities_are_checked_against_their_bounds() {
        for (price, fits) in [
            ("0", true),
            ("-0", true),
            ("-0.0", true),
            ("999999999.999", true),
            ("1000000000", true),
            ("1000000000.00000001", true), // reads as 1e9
            ("1000000000.001", false),
            ("10000000000", false),
            ("-0.001", false),
            ("-5", false),
        ] {
            assert_eq!(price_fits(price.as_bytes()), fits, "{price}");
        }
        assert_eq!(integer(b"-100000"), Some(-100_000));
        assert_eq!(integer(b"-0"), Some(0));
        assert_eq!(integer(b"2.0"), None);
        assert_eq!(integer(b"99999999999999999999"), None);
    }

    #[test]
    fn a_line_the_contract_refuses_or_would_repair_is_not_taken() {
        let long = format!("2.0 -1 1000000000.5 100001 -100000 {}", "é".repeat(201));
        let json = long.as_bytes();
        let id = ("product_id", Value::Text((0, 1)));
        let (ids, ids_end) = (35, 35 + 2 * 200);
        assert!(read(&[], json).is_none());
        assert!(read(&[("product_id", Value::Escaped)], json).is_none());
        assert!(read(&[("product_id", Value::Text((0, 0)))], json).is_none());
        assert!(read(&[("product_id", Value::Text((ids, ids_end + 2)))], json).is_none());
        assert!(read(&[("product_id", Value::Text((ids, ids_end)))], json).is_some());
        assert!(read(&[id, ("category", Value::Escaped)], json).is_none());
        assert!(read(&[id, ("name", Value::Number((0, 3)))], json).is_none());
        assert!(read(&[id, ("quantity", Value::Number((0, 3)))], json).is_none());
        assert!(read(&[id, ("quantity", Value::Null)], json).is_none());
        assert!(read(&[id, ("quantity", Value::Number((20, 26)))], json).is_none());
        assert!(read(&[id, ("price", Value::Number((4, 6)))], json).is_none());
        assert!(read(&[id, ("price", Value::Number((7, 19)))], json).is_none());
        assert!(read(&[id, ("price", Value::Other)], json).is_none());
        let returned = read(&[id, ("quantity", Value::Number((27, 34)))], json);
        assert_eq!(returned.map(|line| line.quantity), Some(-100_000));
        let named = read(
            &[id, ("name", Value::Escaped), ("price", Value::Null)],
            json,
        );
        assert!(named.is_some());
    }
}
