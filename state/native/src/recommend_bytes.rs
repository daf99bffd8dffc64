//! The recommender's whole state as compact bytes, for snapshots: written and read in Rust,
//! with no Python object per link (pickling its `__getstate__` builds a dict per product).
//!
//! Layout: [`FORMAT`]; `frozen` (1 byte); the counters `checked`, `hits`,
//! `reciprocal_rank_micro`, `baseline_hits` (u64); then the [`Layout`] fields in order. Numbers are
//! little-endian, a string is its length (u32) and UTF-8 bytes, a list its length (u32) and items.

use std::fmt;

use crate::recommend::{CoOccurrence, Layout};

/// First byte of [`to_bytes`].
pub const FORMAT: u8 = 1;

/// Bytes [`from_bytes`] cannot read.
#[derive(Debug, PartialEq, Eq)]
pub enum BytesError {
    Format(Option<u8>),
    Cut(usize),
    Text(usize),
    Trailing(usize),
}

impl fmt::Display for BytesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Format(Some(found)) => {
                write!(
                    f,
                    "recommender bytes format {found} is not supported (expected {FORMAT})"
                )
            }
            Self::Format(None) => {
                write!(f, "recommender bytes are empty (expected format {FORMAT})")
            }
            Self::Cut(at) => write!(f, "recommender bytes are cut at byte {at}"),
            Self::Text(at) => write!(
                f,
                "recommender bytes hold text that is not UTF-8 at byte {at}"
            ),
            Self::Trailing(at) => {
                write!(f, "recommender bytes go on after their end, at byte {at}")
            }
        }
    }
}

/// The model's whole state (see the module's documentation).
pub fn to_bytes(model: &CoOccurrence) -> Vec<u8> {
    let layout = model.layout();
    let mut out = Writer(vec![FORMAT, u8::from(model.frozen)]);
    for counter in [
        model.checked,
        model.hits,
        model.reciprocal_rank_micro,
        model.baseline_hits,
    ] {
        out.0.extend_from_slice(&counter.to_le_bytes());
    }
    out.list(&layout.links, |out, (product, neighbours)| {
        out.text(product);
        out.list(neighbours, |out, (other, weight)| {
            out.text(other);
            out.0.extend_from_slice(&weight.to_le_bytes());
        });
    });
    out.list(&layout.counts, |out, (product, count)| {
        out.text(product);
        out.0.extend_from_slice(&count.to_le_bytes());
    });
    out.list(&layout.popular, |out, product| out.text(product));
    out.list(&layout.category_of, |out, (product, category)| {
        out.text(product);
        out.text(category);
    });
    out.list(&layout.popular_in, |out, (category, ranked)| {
        out.text(category);
        out.list(ranked, |out, product| out.text(product));
    });
    out.0
}

/// Restore `model` to the state [`to_bytes`] wrote; on an error the model is left as it was.
pub fn from_bytes(model: &mut CoOccurrence, data: &[u8]) -> Result<(), BytesError> {
    match data.first() {
        Some(&FORMAT) => {}
        found => return Err(BytesError::Format(found.copied())),
    }
    let mut input = Reader { data, at: 1 };
    let frozen = input.take(1)?[0] != 0;
    let mut counters = [0u64; 4];
    for counter in &mut counters {
        *counter = input.u64()?;
    }
    let layout = Layout {
        links: input.list(|input| {
            Ok((
                input.text()?,
                input.list(|input| Ok((input.text()?, input.f64()?)))?,
            ))
        })?,
        counts: input.list(|input| Ok((input.text()?, input.u64()? as i64)))?,
        popular: input.list(Reader::text)?,
        category_of: input.list(|input| Ok((input.text()?, input.text()?)))?,
        popular_in: input.list(|input| Ok((input.text()?, input.list(Reader::text)?)))?,
    };
    if input.at != data.len() {
        return Err(BytesError::Trailing(input.at));
    }
    model.restore(&layout);
    model.frozen = frozen;
    [
        model.checked,
        model.hits,
        model.reciprocal_rank_micro,
        model.baseline_hits,
    ] = counters;
    Ok(())
}

struct Writer(Vec<u8>);

impl Writer {
    fn len(&mut self, n: usize) {
        self.0.extend_from_slice(&(n as u32).to_le_bytes());
    }

    fn text(&mut self, text: &str) {
        self.len(text.len());
        self.0.extend_from_slice(text.as_bytes());
    }

    fn list<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Self, &T)) {
        self.len(items.len());
        for item in items {
            each(self, item);
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BytesError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.data.len());
        let end = end.ok_or(BytesError::Cut(self.data.len()))?;
        let taken = &self.data[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u64(&mut self) -> Result<u64, BytesError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn f64(&mut self) -> Result<f64, BytesError> {
        Ok(f64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn len(&mut self) -> Result<usize, BytesError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }

    fn text(&mut self) -> Result<String, BytesError> {
        let n = self.len()?;
        let at = self.at;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| BytesError::Text(at))
    }

    fn list<T>(
        &mut self,
        mut each: impl FnMut(&mut Self) -> Result<T, BytesError>,
    ) -> Result<Vec<T>, BytesError> {
        let n = self.len()?;
        let mut items = Vec::with_capacity(n.min(self.data.len() - self.at));
        for _ in 0..n {
            items.push(each(self)?);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trained() -> CoOccurrence {
        let mut model = CoOccurrence::new(false);
        let products: Vec<String> = (0..40).map(|i| format!("p{}", i * 7 % 23)).collect();
        for (i, product) in products.iter().enumerate() {
            let history: Vec<&str> = products[i.saturating_sub(4)..i]
                .iter()
                .map(String::as_str)
                .collect();
            model.learn(
                &history,
                product,
                Some(if i % 2 == 0 { "even" } else { "odd" }),
            );
        }
        model.checked = 5;
        model.hits = 2;
        model
    }

    #[test]
    fn a_model_read_back_is_the_model_its_layout_restores() {
        let model = trained();
        let mut read = CoOccurrence::new(true);
        from_bytes(&mut read, &to_bytes(&model)).unwrap();
        let mut restored = CoOccurrence::new(false);
        restored.restore(&model.layout());
        (restored.checked, restored.hits) = (5, 2);
        assert_eq!(to_bytes(&read), to_bytes(&restored));
        assert!(!read.frozen);
    }

    #[test]
    fn cut_or_foreign_bytes_are_refused_and_leave_the_model_alone() {
        let data = to_bytes(&trained());
        let mut model = CoOccurrence::new(false);
        let empty = to_bytes(&model);
        assert_eq!(
            from_bytes(&mut model, &data[..data.len() - 3]),
            Err(BytesError::Cut(data.len() - 3))
        );
        assert_eq!(
            from_bytes(&mut model, &[9]),
            Err(BytesError::Format(Some(9)))
        );
        assert_eq!(
            from_bytes(&mut model, &[data.as_slice(), &[0]].concat()),
            Err(BytesError::Trailing(data.len()))
        );
        assert_eq!(to_bytes(&model), empty);
    }
}
