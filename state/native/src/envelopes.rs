//! Envelopes made a source batch at a time: the plain events' way of `operators.parse.parse` (the
//! scan, the decoding into the model, the date-times and ids read, the envelope) in one call.
//!
//! Only what that way accepts at once is made here: anything else (a marker, a rejected or too large
//! record, an event that is not plain, that its decoder refuses or whose date-times or ids need a
//! closer look) is left to the Python way, which says what is wrong or gives the same envelope.

#[cfg(feature = "python")]
pub mod python {
    use pyo3::intern;
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyFrozenSet, PyList, PyString, PyTuple, PyType};

    use crate::order_lines::python::OrderLines;
    use crate::python::EventScan;
    use crate::timestamps;

    /// Makes the envelopes of a batch's plain events (see ``state/native/src/envelopes.rs``).
    #[pyclass(module = "state._native", name = "EnvelopeMaker", frozen)]
    pub struct EnvelopeMaker {
        scan: Py<EventScan>,
        raw_event: Py<PyType>,
        envelope: Py<PyType>,
        /// Per model (as the scan numbers them): its JSON decoder's ``decode``.
        decoders: Vec<Py<PyAny>>,
        /// Per model: whether its name is its ``event`` (a track call) rather than its ``type``.
        tracks: Vec<bool>,
        /// The model whose ``traits.created_at`` is a date-time, and the one whose anonymous id is
        /// its ``previousId``.
        identify: usize,
        alias: usize,
        known: Py<PyFrozenSet>,
        unknown_field_notes: Py<PyAny>,
        force_setattr: Py<PyAny>,
        no_notes: Py<PyTuple>,
    }

    #[pymethods]
    impl EnvelopeMaker {
        #[new]
        #[allow(clippy::too_many_arguments)]
        fn new(
            py: Python<'_>,
            scan: Py<EventScan>,
            raw_event: Py<PyType>,
            envelope: Py<PyType>,
            decoders: Vec<Py<PyAny>>,
            tracks: Vec<bool>,
            identify: usize,
            alias: usize,
            known: Py<PyFrozenSet>,
            unknown_field_notes: Py<PyAny>,
            force_setattr: Py<PyAny>,
        ) -> PyResult<Self> {
            if tracks.len() != decoders.len()
                || identify >= decoders.len()
                || alias >= decoders.len()
            {
                return Err(pyo3::exceptions::PyValueError::new_err(
                    "one decoder and one track flag per model, and the identify and alias models among them",
                ));
            }
            Ok(Self {
                scan,
                raw_event,
                envelope,
                decoders,
                tracks,
                identify,
                alias,
                known,
                unknown_field_notes,
                force_setattr,
                no_notes: PyTuple::empty(py).unbind(),
            })
        }

        /// ``(made, rest)``: per item of ``batch``, its envelope where the plain way made it, else
        /// None; ``rest``, the positions of the raw events left to the Python way.
        fn make<'py>(
            &self,
            py: Python<'py>,
            batch: &Bound<'py, PyList>,
            max_bytes: usize,
        ) -> PyResult<(Bound<'py, PyList>, Vec<usize>)> {
            let raw_event = self.raw_event.bind(py);
            let mut made = Vec::with_capacity(batch.len());
            let mut rest = Vec::new();
            for (at, item) in batch.iter().enumerate() {
                if !item.get_type().is(raw_event) {
                    made.push(py.None().into_bound(py));
                    continue;
                }
                match self.envelope(py, &item, max_bytes) {
                    Ok(Some(envelope)) => made.push(envelope),
                    _ => {
                        // an error here is the Python way's to name
                        made.push(py.None().into_bound(py));
                        rest.push(at);
                    }
                }
            }
            Ok((PyList::new(py, made)?, rest))
        }
    }

    impl EnvelopeMaker {
        /// The envelope of one raw event, or None when the Python way must look at it.
        fn envelope<'py>(
            &self,
            py: Python<'py>,
            raw: &Bound<'py, PyAny>,
            max_bytes: usize,
        ) -> PyResult<Option<Bound<'py, PyAny>>> {
            if !raw.getattr(intern!(py, "rejected"))?.is_none() {
                return Ok(None);
            }
            let payload = raw
                .getattr(intern!(py, "payload"))?
                .downcast_into::<PyBytes>()?;
            let bytes = payload.as_bytes();
            if bytes.len() > max_bytes {
                return Ok(None);
            }
            let scan = self.scan.get();
            let Some(plain) = scan.inner.scan(bytes) else {
                return Ok(None);
            };
            let Some(ts_ms) = plain.timestamp_ms else {
                return Ok(None);
            };
            let (decoded, lines) = match plain.lines {
                Some(lines) => {
                    let without = PyBytes::new_with(py, lines.without_lines_len(bytes), |out| {
                        lines.without_lines(bytes, out);
                        Ok(())
                    })?;
                    let decode = scan.decode_line.clone_ref(py);
                    (
                        without,
                        Some(OrderLines::new(payload.clone().unbind(), lines, decode)),
                    )
                }
                None => (payload.clone(), None),
            };
            let model = plain.model;
            let event = self.decoders[model].bind(py).call1((decoded,))?;
            let received_ms = match plain.received_ms {
                Some(ms) => Some(ms),
                None if event.getattr(intern!(py, "receivedAt"))?.is_none() => None,
                None => return Ok(None),
            };
            if !common_time(&event.getattr(intern!(py, "sentAt"))?) {
                return Ok(None);
            }
            if model == self.identify {
                let traits = event.getattr(intern!(py, "traits"))?;
                if !common_time(&traits.getattr(intern!(py, "created_at"))?) {
                    return Ok(None);
                }
            }
            let user_id = event.getattr(intern!(py, "userId"))?;
            let anonymous_id = event.getattr(intern!(py, "anonymousId"))?;
            if user_id.is_none() && anonymous_id.is_none() {
                return Ok(None);
            }
            if let Some(lines) = lines {
                let properties = event.getattr(intern!(py, "properties"))?;
                let lines = Bound::new(py, lines)?;
                self.force_setattr
                    .bind(py)
                    .call1((properties, intern!(py, "products"), lines))?;
            }
            let notes = if plain.unknown.is_empty() {
                self.no_notes.bind(py).clone().into_any()
            } else {
                self.unknown_field_notes.bind(py).call1((plain.unknown,))?
            };
            let name = if self.tracks[model] {
                event.getattr(intern!(py, "event"))?
            } else {
                event.getattr(intern!(py, "type"))?
            };
            let anonymous_id = if model == self.alias {
                event.getattr(intern!(py, "previousId"))?
            } else {
                anonymous_id
            };
            let known = self.known.bind(py).contains(&name)?;
            let message_id = event.getattr(intern!(py, "messageId"))?;
            let fields = PyTuple::new(
                py,
                [
                    raw.getattr(intern!(py, "seq"))?,
                    raw.getattr(intern!(py, "position"))?,
                    payload.into_any(),
                    event,
                    name,
                    message_id,
                    user_id,
                    anonymous_id,
                    ts_ms.into_pyobject(py)?.into_any(),
                    ts_ms.into_pyobject(py)?.into_any(), // mark_ms, until the source's marks stamp it
                    match received_ms {
                        Some(ms) => ms.into_pyobject(py)?.into_any(),
                        None => py.None().into_bound(py),
                    },
                    known.into_pyobject(py)?.to_owned().into_any(),
                    raw.getattr(intern!(py, "arrived"))?,
                    notes,
                ],
            )?;
            self.envelope.bind(py).call1(fields).map(Some)
        }
    }

    /// Whether an optional date-time is absent or in the common form (read natively); any other the
    /// Python way reads, or refuses.
    fn common_time(value: &Bound<'_, PyAny>) -> bool {
        if value.is_none() {
            return true;
        }
        value
            .downcast::<PyString>()
            .ok()
            .and_then(|text| timestamps::epoch_ms(text.to_str().ok()?.as_bytes()))
            .is_some()
    }
}
