//! `postcard` encodings appended to a reused `Vec<u8>`.
//!
//! `postcard::to_extend` pushes through `Extend` one byte at a time and takes the vector by
//! value; snapshots and the RocksDB backend encode millions of small values, so they append
//! through this flavor instead: a byte is a `push`, a slice one `extend_from_slice`, and the
//! vector stays borrowed. The bytes are exactly `postcard`'s.

use postcard::ser_flavors::Flavor;
use serde::Serialize;

/// Appends `value`'s `postcard` encoding to `buf` (whose capacity is reused).
///
/// On an error, `buf` may hold part of the encoding behind its old end; callers truncate or
/// drop it.
#[inline]
pub(crate) fn append<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> postcard::Result<()> {
    postcard::serialize_with_flavor(value, Append(buf))
}

/// The flavor behind [`append`].
struct Append<'a>(&'a mut Vec<u8>);

impl Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Sample {
        id: u64,
        name: String,
        amounts: Vec<i64>,
        flag: Option<bool>,
    }

    #[test]
    fn appends_exactly_postcards_bytes_behind_what_is_there() {
        let sample = Sample {
            id: 1_700_000_000_123,
            name: "eddy".into(),
            amounts: vec![-1, 0, 300, i64::MIN],
            flag: Some(true),
        };
        let mut buf = vec![0xAA, 0xBB];
        append(&sample, &mut buf).unwrap();
        let expected = postcard::to_allocvec(&sample).unwrap();
        assert_eq!(&buf[..2], &[0xAA, 0xBB]);
        assert_eq!(&buf[2..], &expected[..]);
    }
}
