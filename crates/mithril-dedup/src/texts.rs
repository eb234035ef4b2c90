//! A read-only view of a column of texts: an Arrow string/binary array borrowed from its
//! producer, or a list of borrowed strings. Null entries read as `None`.

use crate::{Error, Result};

/// Random access to the texts of one batch; shared across worker threads.
pub trait Texts: Sync {
    fn len(&self) -> usize;
    fn get(&self, i: usize) -> Option<&[u8]>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Texts for [Option<&[u8]>] {
    fn len(&self) -> usize {
        <[Option<&[u8]>]>::len(self)
    }
    fn get(&self, i: usize) -> Option<&[u8]> {
        self[i]
    }
}

impl Texts for Vec<Option<&[u8]>> {
    fn len(&self) -> usize {
        <[Option<&[u8]>]>::len(self)
    }
    fn get(&self, i: usize) -> Option<&[u8]> {
        self[i]
    }
}

/// Offsets of an Arrow variable-length array: 32-bit (`utf8`, `binary`) or 64-bit (`large_*`).
#[derive(Clone, Copy)]
pub enum Offsets<'a> {
    I32(&'a [i32]),
    I64(&'a [i64]),
}

impl Offsets<'_> {
    fn len(&self) -> usize {
        match self {
            Offsets::I32(o) => o.len(),
            Offsets::I64(o) => o.len(),
        }
    }
    fn at(&self, i: usize) -> i64 {
        match self {
            Offsets::I32(o) => i64::from(o[i]),
            Offsets::I64(o) => o[i],
        }
    }
}

/// An Arrow `utf8`/`large_utf8`/`binary`/`large_binary` array, already sliced to its logical
/// `offset` (`offsets` holds `len + 1` entries, `validity` is the whole bitmap).
pub struct ArrowStrings<'a> {
    offsets: Offsets<'a>,
    data: &'a [u8],
    validity: Option<&'a [u8]>,
    bit_offset: usize,
    len: usize,
}

impl<'a> ArrowStrings<'a> {
    /// Checks every offset against the data buffer so that later reads cannot go out of
    /// bounds whatever the producer handed over.
    pub fn new(
        offsets: Offsets<'a>,
        data: &'a [u8],
        validity: Option<&'a [u8]>,
        bit_offset: usize,
        len: usize,
    ) -> Result<Self> {
        if offsets.len() != len + 1 {
            return Err(Error::Format(format!(
                "Arrow array of {len} values has {} offsets (expected {})",
                offsets.len(),
                len + 1
            )));
        }
        let mut prev = offsets.at(0);
        if prev < 0 {
            return Err(Error::Format(format!(
                "Arrow array: negative first offset {prev}"
            )));
        }
        for i in 1..=len {
            let o = offsets.at(i);
            if o < prev {
                return Err(Error::Format(format!(
                    "Arrow array: offsets decrease at value {} ({prev} then {o})",
                    i - 1
                )));
            }
            prev = o;
        }
        if prev as u64 > data.len() as u64 {
            return Err(Error::Format(format!(
                "Arrow array: last offset {prev} is past the {}-byte data buffer",
                data.len()
            )));
        }
        if let Some(v) = validity {
            let need = (bit_offset + len).div_ceil(8);
            if v.len() < need {
                return Err(Error::Format(format!(
                    "Arrow array: validity bitmap has {} bytes, {need} needed",
                    v.len()
                )));
            }
        }
        Ok(Self {
            offsets,
            data,
            validity,
            bit_offset,
            len,
        })
    }
}

impl Texts for ArrowStrings<'_> {
    fn len(&self) -> usize {
        self.len
    }
    fn get(&self, i: usize) -> Option<&[u8]> {
        if let Some(v) = self.validity {
            let bit = self.bit_offset + i;
            if v[bit / 8] >> (bit % 8) & 1 == 0 {
                return None;
            }
        }
        // Offsets were checked to be non-negative, non-decreasing and within `data`.
        let start = self.offsets.at(i) as usize;
        let end = self.offsets.at(i + 1) as usize;
        self.data.get(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_view_reads_values_and_nulls() {
        let offs = [0i32, 3, 3, 8];
        let data = b"abcHELLO";
        let validity = [0b101u8];
        let a = ArrowStrings::new(Offsets::I32(&offs), data, Some(&validity), 0, 3).unwrap();
        assert_eq!(a.get(0), Some(&b"abc"[..]));
        assert_eq!(a.get(1), None);
        assert_eq!(a.get(2), Some(&b"HELLO"[..]));
    }

    #[test]
    fn arrow_view_refuses_bad_offsets() {
        let data = b"abc";
        assert!(ArrowStrings::new(Offsets::I64(&[0, 2, 1]), data, None, 0, 2).is_err());
        assert!(ArrowStrings::new(Offsets::I64(&[0, 4]), data, None, 0, 1).is_err());
        assert!(ArrowStrings::new(Offsets::I64(&[-1, 2]), data, None, 0, 1).is_err());
        assert!(ArrowStrings::new(Offsets::I64(&[0, 2]), data, None, 0, 2).is_err());
        assert!(ArrowStrings::new(Offsets::I64(&[0, 1]), data, Some(&[]), 0, 1).is_err());
    }
}
