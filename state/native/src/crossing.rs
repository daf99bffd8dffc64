//! A shard's items of one pass packed into one record when they cross processes: each envelope (and
//! each forward of one, with no carried state) as its fields in a flat byte layout, in one call,
//! instead of one pickle call, tuple and memo entry per field; anything else is left to pickle.
//!
//! The layout, per item: a tag (envelope, forward, other: the next of the items pickled apart),
//! then for a forward its customer id, then the envelope's fields but the decoded event (decoded
//! again where it is read). Names, position keys and values that repeat (an event's name, a
//! recording's file name) are written once per record and then referred to by number.

use std::collections::HashMap;

/// How an item is packed.
pub const ENVELOPE: u8 = 0;
pub const FORWARD: u8 = 1;
pub const OTHER: u8 = 2;

/// Writes a record.
#[derive(Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
    names: HashMap<String, u32>,
}

impl Writer {
    pub fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }

    pub fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    pub fn i64(&mut self, value: i64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    pub fn u128(&mut self, value: u128) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    pub fn f64(&mut self, value: f64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    /// A length-prefixed byte string.
    pub fn blob(&mut self, value: &[u8]) {
        self.bytes
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(value);
    }

    /// A text that repeats: its number, followed by the text itself the first time.
    pub fn name(&mut self, value: &str) {
        let next = self.names.len() as u32;
        match self.names.get(value) {
            Some(&number) => self.bytes.extend_from_slice(&number.to_le_bytes()),
            None => {
                self.names.insert(value.to_owned(), next);
                self.bytes.extend_from_slice(&next.to_le_bytes());
                self.blob(value.as_bytes());
            }
        }
    }
}

/// Reads a record; `None` when it ends early (a record this module did not write).
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    pub fn done(&self) -> bool {
        self.at == self.bytes.len()
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(len)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.array()?))
    }

    pub fn u128(&mut self) -> Option<u128> {
        Some(u128::from_le_bytes(self.array()?))
    }

    pub fn f64(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.array()?))
    }

    pub fn blob(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A repeating text's number, and the text when this is its first time (the number is then the
    /// count of texts seen before).
    pub fn name(&mut self, seen: usize) -> Option<(usize, Option<&'a [u8]>)> {
        let number = self.u32()? as usize;
        match number.cmp(&seen) {
            std::cmp::Ordering::Less => Some((number, None)),
            std::cmp::Ordering::Equal => Some((number, Some(self.blob()?))),
            std::cmp::Ordering::Greater => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_what_was_written_with_repeated_names_once() {
        let mut w = Writer::default();
        w.u8(ENVELOPE);
        w.u128(1 << 100 | 7);
        w.name("order_completed");
        w.name("order_completed");
        w.blob(b"{}");
        w.i64(-5);
        w.f64(1.5);
        let mut r = Reader::new(&w.bytes);
        assert_eq!(r.u8(), Some(ENVELOPE));
        assert_eq!(r.u128(), Some(1 << 100 | 7));
        assert_eq!(r.name(0), Some((0, Some(&b"order_completed"[..]))));
        assert_eq!(r.name(1), Some((0, None)));
        assert_eq!(r.blob(), Some(&b"{}"[..]));
        assert_eq!(r.i64(), Some(-5));
        assert_eq!(r.f64(), Some(1.5));
        assert!(r.done());
    }

    #[test]
    fn a_short_or_foreign_record_reads_as_none_not_a_panic() {
        assert_eq!(Reader::new(&[1, 0]).u32(), None);
        assert_eq!(Reader::new(&[9, 0, 0, 0]).name(0), None);
        assert_eq!(Reader::new(&[255, 255, 255, 255]).blob(), None);
    }
}

#[cfg(feature = "python")]
pub mod python {
    use pyo3::exceptions::PyValueError;
    use pyo3::intern;
    use pyo3::prelude::*;
    use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};

    use super::{Reader, Writer, ENVELOPE, FORWARD, OTHER};

    /// The largest buffer a thread keeps (a bigger record's is freed).
    const KEPT_BYTES: usize = 8 << 20;

    thread_local! {
        /// The last record's bytes, kept for the next of the thread: a record is written into memory
        /// already in use, not grown into fresh pages each time.
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Packs and unpacks a shard's items of one pass (see ``state/native/src/crossing.rs``).
    #[pyclass(module = "state._native", name = "CrossingPacker", frozen)]
    pub struct CrossingPacker {
        envelope: Py<PyType>,
        forward: Py<PyType>,
        /// An envelope's fields as a tuple (``msgspec.structs.astuple``): one call, not one
        /// attribute lookup per field.
        fields: Py<PyAny>,
    }

    const SEQ: usize = 0;
    const POSITION: usize = 1;
    const RAW: usize = 2;
    const NAME: usize = 4;
    const MESSAGE_ID: usize = 5;
    const USER_ID: usize = 6;
    const ANONYMOUS_ID: usize = 7;
    const TS_MS: usize = 8;
    const MARK_MS: usize = 9;
    const RECEIVED_MS: usize = 10;
    const KNOWN: usize = 11;
    const ARRIVED: usize = 12;
    const NOTES: usize = 13;

    /// An envelope's fields, in the order the packer reads and rebuilds them.
    const FIELDS: [&str; 14] = [
        "seq",
        "position",
        "raw",
        "validated",
        "name",
        "message_id",
        "user_id",
        "anonymous_id",
        "ts_ms",
        "mark_ms",
        "received_ms",
        "known",
        "arrived",
        "notes",
    ];

    #[pymethods]
    impl CrossingPacker {
        #[new]
        fn new(
            py: Python<'_>,
            envelope: Py<PyType>,
            forward: Py<PyType>,
            fields: Py<PyAny>,
        ) -> PyResult<Self> {
            let names: Vec<String> = envelope.getattr(py, "__struct_fields__")?.extract(py)?;
            if names != FIELDS {
                return Err(PyValueError::new_err(format!(
                    "the envelope's fields are {names:?}, the packer knows {FIELDS:?}"
                )));
            }
            Ok(Self {
                envelope,
                forward,
                fields,
            })
        }

        /// ``(record, others)``: the items packed, and those left to pickle, in order.
        fn pack<'py>(
            &self,
            py: Python<'py>,
            items: &Bound<'py, PyList>,
        ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyList>)> {
            let mut w = Writer {
                bytes: BUFFER.with(|buffer| std::mem::take(&mut *buffer.borrow_mut())),
                ..Writer::default()
            };
            w.bytes.clear();
            let others = PyList::empty(py);
            let (envelope, forward) = (self.envelope.bind(py), self.forward.bind(py));
            for item in items.iter() {
                let start = w.bytes.len();
                let kind = item.get_type();
                let packed = if kind.is(envelope) {
                    w.u8(ENVELOPE);
                    self.pack_envelope(py, &mut w, &item)?
                } else if kind.is(forward) && item.getattr(intern!(py, "carried"))?.is_none() {
                    w.u8(FORWARD);
                    match item
                        .getattr(intern!(py, "customer_id"))?
                        .downcast::<PyString>()
                    {
                        Ok(id) => {
                            w.blob(id.to_str()?.as_bytes());
                            self.pack_envelope(py, &mut w, &item.getattr(intern!(py, "env"))?)?
                        }
                        Err(_) => false,
                    }
                } else {
                    false
                };
                if !packed {
                    w.bytes.truncate(start);
                    w.u8(OTHER);
                    others.append(item)?;
                }
            }
            let record = PyBytes::new(py, &w.bytes);
            if w.bytes.capacity() <= KEPT_BYTES {
                BUFFER.with(|buffer| *buffer.borrow_mut() = w.bytes);
            }
            Ok((record, others))
        }

        /// The items of a record :meth:`pack` made, ``others`` in their places.
        fn unpack<'py>(
            &self,
            py: Python<'py>,
            record: &[u8],
            others: &Bound<'py, PyList>,
        ) -> PyResult<Bound<'py, PyList>> {
            let broken =
                || PyValueError::new_err("not a record of items packed to cross processes");
            let mut r = Reader::new(record);
            let mut names: Vec<Bound<'py, PyString>> = Vec::new();
            let mut others = others.iter();
            let out = PyList::empty(py);
            while !r.done() {
                let item = match r.u8().ok_or_else(broken)? {
                    ENVELOPE => self
                        .unpack_envelope(py, &mut r, &mut names)?
                        .ok_or_else(broken)?,
                    FORWARD => {
                        let id = r.blob().ok_or_else(broken)?;
                        let id = PyString::new(py, std::str::from_utf8(id)?);
                        let env = self
                            .unpack_envelope(py, &mut r, &mut names)?
                            .ok_or_else(broken)?;
                        self.forward.bind(py).call1((env, id, py.None()))?
                    }
                    OTHER => others.next().ok_or_else(broken)?,
                    _ => return Err(broken()),
                };
                out.append(item)?;
            }
            Ok(out)
        }
    }

    impl CrossingPacker {
        /// Writes an envelope's fields but its event; `false` (the item is then pickled) for one
        /// this layout does not hold: notes, a position with other than texts and integers, a key
        /// beyond 128 bits, a field of another type than the envelope declares.
        fn pack_envelope(
            &self,
            py: Python<'_>,
            w: &mut Writer,
            env: &Bound<'_, PyAny>,
        ) -> PyResult<bool> {
            let fields = self.fields.bind(py).call1((env,))?;
            let Ok(fields) = fields.downcast::<PyTuple>() else {
                return Ok(false);
            };
            let field = |at: usize| fields.get_item(at);
            if !field(NOTES)?
                .downcast::<PyTuple>()
                .map(|notes| notes.is_empty())
                .unwrap_or(false)
            {
                return Ok(false);
            }
            let Ok(seq) = field(SEQ)?.extract::<u128>() else {
                return Ok(false);
            };
            w.u128(seq);
            let position = field(POSITION)?;
            let Ok(position) = position.downcast::<PyDict>() else {
                return Ok(false);
            };
            if position.len() > 255 {
                return Ok(false);
            }
            w.u8(position.len() as u8);
            for (key, value) in position.iter() {
                let Ok(key) = key.downcast_exact::<PyString>() else {
                    return Ok(false);
                };
                w.name(key.to_str()?);
                if let Ok(text) = value.downcast_exact::<PyString>() {
                    w.u8(0);
                    w.name(text.to_str()?);
                } else if let Some(number) = value
                    .downcast_exact::<PyInt>()
                    .ok()
                    .and_then(|n| n.extract::<i64>().ok())
                {
                    w.u8(1);
                    w.i64(number);
                } else {
                    return Ok(false);
                }
            }
            let Ok(raw) = field(RAW)?.downcast_into_exact::<PyBytes>() else {
                return Ok(false);
            };
            w.blob(raw.as_bytes());
            let name = field(NAME)?;
            let Ok(name) = name.downcast_exact::<PyString>() else {
                return Ok(false);
            };
            w.name(name.to_str()?);
            let message_id = field(MESSAGE_ID)?;
            let Ok(message_id) = message_id.downcast_exact::<PyString>() else {
                return Ok(false);
            };
            w.blob(message_id.to_str()?.as_bytes());
            for id in [USER_ID, ANONYMOUS_ID] {
                let value = field(id)?;
                if value.is_none() {
                    w.u8(0);
                } else if let Ok(text) = value.downcast_exact::<PyString>() {
                    w.u8(1);
                    w.blob(text.to_str()?.as_bytes());
                } else {
                    return Ok(false);
                }
            }
            let (Ok(ts_ms), Ok(mark_ms)) = (
                field(TS_MS)?.extract::<i64>(),
                field(MARK_MS)?.extract::<i64>(),
            ) else {
                return Ok(false);
            };
            w.i64(ts_ms);
            w.i64(mark_ms);
            match field(RECEIVED_MS)?.extract::<Option<i64>>() {
                Ok(None) => w.u8(0),
                Ok(Some(ms)) => {
                    w.u8(1);
                    w.i64(ms);
                }
                Err(_) => return Ok(false),
            }
            let known = field(KNOWN)?;
            let arrived = field(ARRIVED)?;
            let (Ok(known), Ok(arrived)) = (
                known.downcast_exact::<PyBool>(),
                arrived.downcast_exact::<PyFloat>(),
            ) else {
                return Ok(false);
            };
            w.u8(known.is_true() as u8);
            w.f64(arrived.value());
            Ok(true)
        }
    }

    impl CrossingPacker {
        fn unpack_envelope<'py>(
            &self,
            py: Python<'py>,
            r: &mut Reader<'_>,
            names: &mut Vec<Bound<'py, PyString>>,
        ) -> PyResult<Option<Bound<'py, PyAny>>> {
            let Some(seq) = r.u128() else { return Ok(None) };
            let Some(pairs) = r.u8() else { return Ok(None) };
            let position = PyDict::new(py);
            for _ in 0..pairs {
                let Some(key) = read_name(py, r, names)? else {
                    return Ok(None);
                };
                let value = match r.u8() {
                    Some(0) => match read_name(py, r, names)? {
                        Some(text) => text.into_any(),
                        None => return Ok(None),
                    },
                    Some(1) => match r.i64() {
                        Some(number) => number.into_pyobject(py)?.into_any(),
                        None => return Ok(None),
                    },
                    _ => return Ok(None),
                };
                position.set_item(key, value)?;
            }
            let Some(raw) = r.blob() else { return Ok(None) };
            let Some(name) = read_name(py, r, names)? else {
                return Ok(None);
            };
            let Some(message_id) = r.blob() else {
                return Ok(None);
            };
            let mut ids = [py.None().into_bound(py), py.None().into_bound(py)];
            for id in ids.iter_mut() {
                match r.u8() {
                    Some(0) => {}
                    Some(1) => match r.blob() {
                        Some(text) => {
                            *id = PyString::new(py, std::str::from_utf8(text)?).into_any()
                        }
                        None => return Ok(None),
                    },
                    _ => return Ok(None),
                }
            }
            let [user_id, anonymous_id] = ids;
            let (Some(ts_ms), Some(mark_ms)) = (r.i64(), r.i64()) else {
                return Ok(None);
            };
            let received_ms = match r.u8() {
                Some(0) => py.None().into_bound(py),
                Some(1) => match r.i64() {
                    Some(ms) => ms.into_pyobject(py)?.into_any(),
                    None => return Ok(None),
                },
                _ => return Ok(None),
            };
            let (Some(known), Some(arrived)) = (r.u8(), r.f64()) else {
                return Ok(None);
            };
            let fields = PyTuple::new(
                py,
                [
                    seq.into_pyobject(py)?.into_any(),
                    position.into_any(),
                    PyBytes::new(py, raw).into_any(),
                    py.None().into_bound(py), // the event, decoded again where it is read
                    name.into_any(),
                    PyString::new(py, std::str::from_utf8(message_id)?).into_any(),
                    user_id,
                    anonymous_id,
                    ts_ms.into_pyobject(py)?.into_any(),
                    mark_ms.into_pyobject(py)?.into_any(),
                    received_ms,
                    (known != 0).into_pyobject(py)?.to_owned().into_any(),
                    arrived.into_pyobject(py)?.into_any(),
                    PyTuple::empty(py).into_any(),
                ],
            )?;
            self.envelope.bind(py).call1(fields).map(Some)
        }
    }

    /// A repeating text (see [`Writer::name`]), made once per record.
    fn read_name<'py>(
        py: Python<'py>,
        r: &mut Reader<'_>,
        names: &mut Vec<Bound<'py, PyString>>,
    ) -> PyResult<Option<Bound<'py, PyString>>> {
        Ok(match r.name(names.len()) {
            Some((number, None)) => Some(names[number].clone()),
            Some((_, Some(text))) => {
                let text = PyString::new(py, std::str::from_utf8(text)?);
                names.push(text.clone());
                Some(text)
            }
            None => None,
        })
    }
}
