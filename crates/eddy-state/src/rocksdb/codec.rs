//! Byte encodings of the RocksDB backend: keys, values, TTL headers and list framing.
//!
//! Everything here is type-free or generic over `serde`; the layout it implements is
//! described in the [module documentation](super).

use eddy_core::KeyGroup;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Length of the TTL header in front of every value of a TTL state: the last-access time in
/// milliseconds, `u64` big-endian, at offset 0 (so the compaction filter finds it without
/// knowing the value type).
pub(crate) const TTL_HEADER: usize = 8;

/// Length of the chunk suffix of a list key: the chunk's epoch, `u64` big-endian.
pub(crate) const CHUNK_SUFFIX: usize = 8;

/// The most bytes a LEB128-encoded `u32` takes.
const MAX_VARINT: usize = 5;

/// Appends `value`'s postcard encoding to `buf`, reusing its allocation.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> postcard::Result<()> {
    crate::append::append(value, buf)
}

/// Decodes exactly one `T` from `bytes`: trailing bytes mean the value was written as another
/// type (or is corrupt), which must not go unnoticed.
pub(crate) fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> postcard::Result<T> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

/// Starts a key: the key group, two bytes big-endian, so that a key group is one contiguous
/// byte range.
#[inline]
pub(crate) fn start_key(buf: &mut Vec<u8>, kg: KeyGroup) {
    buf.clear();
    buf.extend_from_slice(&kg.to_be_bytes());
}

/// The smallest byte string greater than every string starting with `prefix`, or `None` if
/// there is none (a prefix of only `0xFF` bytes). Used as an iterator's upper bound.
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The last-access time in a TTL value's header, or `None` if the value is too short.
#[inline]
pub(crate) fn ttl_timestamp(value: &[u8]) -> Option<u64> {
    let header: [u8; TTL_HEADER] = value.get(..TTL_HEADER)?.try_into().ok()?;
    Some(u64::from_be_bytes(header))
}

/// Overwrites the TTL header of `value` (which must hold one) with `now_ms`.
#[inline]
pub(crate) fn set_ttl_timestamp(value: &mut [u8], now_ms: u64) {
    if let Some(header) = value.get_mut(..TTL_HEADER) {
        header.copy_from_slice(&now_ms.to_be_bytes());
    }
}

/// Appends one list element to `buf`: a LEB128 length, then what `payload` writes.
///
/// The payload is written first, behind room for the longest length, and moved down once its
/// length is known: one small copy instead of serializing twice.
pub(crate) fn push_element(
    buf: &mut Vec<u8>,
    payload: impl FnOnce(&mut Vec<u8>) -> postcard::Result<()>,
) -> postcard::Result<usize> {
    let start = buf.len();
    buf.resize(start + MAX_VARINT, 0);
    payload(buf)?;
    let len = buf.len() - start - MAX_VARINT;
    let len32 = u32::try_from(len).map_err(|_| postcard::Error::SerializeBufferFull)?;
    let mut header = [0u8; MAX_VARINT];
    let n = write_varint(len32, &mut header);
    buf.copy_within(start + MAX_VARINT.., start + n);
    buf.truncate(buf.len() - (MAX_VARINT - n));
    buf[start..start + n].copy_from_slice(&header[..n]);
    Ok(n + len)
}

/// Writes `value` as LEB128 into `out`; returns the number of bytes used.
fn write_varint(mut value: u32, out: &mut [u8; MAX_VARINT]) -> usize {
    let mut i = 0;
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out[i] = byte;
            return i + 1;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

/// Walks the elements of a list chunk: yields each element's payload, or `Err(())` once if the
/// framing is broken (a truncated length or payload).
pub(crate) struct Elements<'a> {
    bytes: &'a [u8],
    failed: bool,
}

impl<'a> Elements<'a> {
    /// The elements of `bytes` (a list chunk, or a concatenation of chunks).
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Elements {
            bytes,
            failed: false,
        }
    }
}

impl Elements<'_> {
    /// The bytes not walked yet (to measure each element's framed length).
    pub(crate) fn rest(&self) -> usize {
        self.bytes.len()
    }
}

impl<'a> Iterator for Elements<'a> {
    type Item = Result<&'a [u8], ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() || self.failed {
            return None;
        }
        let mut len: u64 = 0;
        for (i, &byte) in self.bytes.iter().take(MAX_VARINT).enumerate() {
            len |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                let start = i + 1;
                let end = usize::try_from(len).ok().and_then(|l| start.checked_add(l));
                if let Some(payload) = end.and_then(|end| self.bytes.get(start..end)) {
                    self.bytes = &self.bytes[start + payload.len()..];
                    return Some(Ok(payload));
                }
                break;
            }
        }
        self.failed = true;
        Some(Err(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_round_trip_and_detect_truncation() {
        let mut buf = Vec::new();
        for value in [0u64, 1, 300, u64::MAX] {
            push_element(&mut buf, |b| encode_into(&value, b)).unwrap();
        }
        let big = vec![7u8; 1000];
        push_element(&mut buf, |b| encode_into(&big, b)).unwrap();
        let decoded: Vec<&[u8]> = Elements::new(&buf).map(Result::unwrap).collect();
        assert_eq!(decoded.len(), 5);
        assert_eq!(decode_exact::<u64>(decoded[2]).unwrap(), 300);
        assert_eq!(decode_exact::<Vec<u8>>(decoded[4]).unwrap(), big);
        let truncated = &buf[..buf.len() - 1];
        assert!(Elements::new(truncated).any(|e| e.is_err()));
    }

    #[test]
    fn successor_and_ttl_header() {
        assert_eq!(prefix_successor(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF]), None);
        let mut v = vec![0u8; 10];
        set_ttl_timestamp(&mut v, 42);
        assert_eq!(ttl_timestamp(&v), Some(42));
        assert_eq!(ttl_timestamp(&v[..3]), None);
        assert!(
            decode_exact::<u8>(&[1, 2]).is_err(),
            "trailing bytes are an error"
        );
    }
}
