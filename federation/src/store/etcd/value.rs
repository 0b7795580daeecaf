//! How a user value is laid out in etcd: inline, or — when it is larger than
//! [`LARGE_VALUE_BYTES`](crate::store::LARGE_VALUE_BYTES) — as chunks under a fresh generation
//! (in the chunk area, like blobs) plus a small *chunked-value pointer* at the key, written in
//! the commit's own transaction. Readers (`get`, `list`, watches) see the whole value or the
//! previous one, never a part: the pointer is published only once every chunk is stored.
//!
//! A chunked-value pointer starts with a NUL byte, which no inline value can start with: an
//! inline value that starts with NUL is stored with one more NUL in front (and read back
//! without it).
//!
//! Must not: talk to etcd (the backend does), or know what values mean.

use crate::store::StoreError;
use crate::store::blob::BlobPointer;

/// Marker of a chunked-value pointer; the pointer's JSON follows.
const CHUNKED: &[u8] = b"\0isthmus-chunked:";
/// Put in front of an inline value that starts with NUL.
const ESCAPE: u8 = 0;

/// A value as etcd holds it.
#[derive(Debug, PartialEq)]
pub(super) enum Stored {
    /// The user's bytes.
    Inline(Vec<u8>),
    /// The user's bytes are the chunks this pointer names.
    Chunked(BlobPointer),
}

/// The bytes etcd holds for an inline `value`.
pub(super) fn inline(mut value: Vec<u8>) -> Vec<u8> {
    if value.first() == Some(&ESCAPE) {
        value.insert(0, ESCAPE);
    }
    value
}

/// The bytes etcd holds for a value stored as the chunks `pointer` names.
pub(super) fn chunked(pointer: &BlobPointer) -> Vec<u8> {
    let mut out = CHUNKED.to_vec();
    out.extend_from_slice(&pointer.encode());
    out
}

/// What etcd's `raw` bytes at user key `key` are.
pub(super) fn decode(key: &str, raw: &[u8]) -> Result<Stored, StoreError> {
    if let Some(json) = raw.strip_prefix(CHUNKED) {
        return BlobPointer::decode_required(key, json).map(Stored::Chunked);
    }
    match raw {
        [ESCAPE, ESCAPE, rest @ ..] => {
            let mut value = Vec::with_capacity(rest.len() + 1);
            value.push(ESCAPE);
            value.extend_from_slice(rest);
            Ok(Stored::Inline(value))
        }
        other => Ok(Stored::Inline(other.to_vec())),
    }
}

/// The chunk generation `raw` refers to: a chunked value's, or a blob pointer's.
pub(super) fn generation(key: &str, raw: &[u8]) -> Option<String> {
    match decode(key, raw) {
        Ok(Stored::Chunked(pointer)) => Some(pointer.generation),
        Ok(Stored::Inline(value)) => BlobPointer::decode(key, &value)
            .ok()
            .flatten()
            .map(|p| p.generation),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_values_round_trip_and_pointers_are_recognised() {
        for value in [&b""[..], b"plain", b"\0", b"\0\0x", b"\0isthmus-chunked:"] {
            let raw = inline(value.to_vec());
            assert_eq!(
                decode("k", &raw).expect("decode"),
                Stored::Inline(value.to_vec())
            );
            assert_eq!(generation("k", &raw), None);
        }
        let pointer = BlobPointer::new(&[1; 10]).expect("pointer");
        let raw = chunked(&pointer);
        assert_eq!(
            decode("k", &raw).expect("decode"),
            Stored::Chunked(pointer.clone())
        );
        assert_eq!(generation("k", &raw), Some(pointer.generation.clone()));
        assert_eq!(
            generation("k", &pointer.encode()),
            Some(pointer.generation.clone())
        );
        assert!(decode("k", b"\0isthmus-chunked:{broken").is_err());
    }
}
