//! Blob layout shared by both backends: the pointer stored at the blob's key, the chunking and
//! the integrity check. The backends decide where chunks live and how the swap is made atomic.
//!
//! A pointer is a small JSON document, so `get`, `list` and watches of a blob key show which
//! generation is current. Chunks of a generation are immutable once the pointer names them.
//!
//! A generation name starts with the time it was made (so the leaked-chunk sweep can tell a
//! generation whose writer may still publish it from one nobody will ever publish): writers
//! publish a generation within [`CHUNK_GRACE`] / 2 of making it or not at all, and the sweep
//! deletes only unreferenced generations older than [`CHUNK_GRACE`].

use super::StoreError;

/// Largest chunk: one etcd put of a chunk stays well below the 1.5 MiB request limit.
pub(crate) const CHUNK_BYTES: usize = 512 * 1024;

/// Unreferenced chunk generations younger than this are kept by the sweep: their writer may
/// still publish them. Covers clock skew between replicas of up to half of it.
pub(crate) const CHUNK_GRACE: std::time::Duration = std::time::Duration::from_secs(20 * 60);
/// How often each store sweeps chunk generations no pointer references (also once at open).
pub(crate) const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// Hex digits of a generation holding its creation time (unix ms, 48 bits).
const TIME_DIGITS: usize = 12;

const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlobPointer {
    /// Format marker and version; tells a pointer apart from an ordinary value.
    pub(crate) isthmus_blob: u32,
    /// 32 hex digits, random: chunk keys of different generations never collide.
    pub(crate) generation: String,
    pub(crate) chunks: u32,
    pub(crate) len: u64,
    /// Hex SHA-256 of the whole blob.
    pub(crate) sha256: String,
}

impl BlobPointer {
    /// A pointer for `bytes` under a fresh generation.
    pub(crate) fn new(bytes: &[u8]) -> Result<Self, StoreError> {
        let chunks =
            u32::try_from(bytes.len().div_ceil(CHUNK_BYTES)).map_err(|_| StoreError::Invalid {
                detail: format!("blob of {} bytes has too many chunks", bytes.len()),
            })?;
        Ok(BlobPointer {
            isthmus_blob: FORMAT,
            generation: new_generation(),
            chunks,
            len: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `Ok(None)` when `value` is not a blob pointer at all.
    pub(crate) fn decode(key: &str, value: &[u8]) -> Result<Option<Self>, StoreError> {
        if !value.starts_with(b"{\"isthmus_blob\":") {
            return Ok(None);
        }
        let pointer: BlobPointer =
            serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
                key: key.to_owned(),
                detail: format!("unreadable blob pointer: {e}"),
            })?;
        let hex32 = pointer.generation.len() == 32
            && pointer.generation.bytes().all(|b| b.is_ascii_hexdigit());
        if pointer.isthmus_blob != FORMAT || !hex32 {
            return Err(StoreError::Corrupt {
                key: key.to_owned(),
                detail: format!(
                    "blob pointer of format {} with generation {:?} (this build reads format \
                     {FORMAT}); was it written by a newer Isthmus?",
                    pointer.isthmus_blob, pointer.generation
                ),
            });
        }
        Ok(Some(pointer))
    }

    /// Like [`Self::decode`], but a value that is not a pointer is corrupt.
    pub(crate) fn decode_required(key: &str, value: &[u8]) -> Result<Self, StoreError> {
        Self::decode(key, value)?.ok_or_else(|| StoreError::Corrupt {
            key: key.to_owned(),
            detail: "the value is not a blob pointer (it was written with commit(), not \
                     put_blob())"
                .into(),
        })
    }

    /// Checks the reassembled blob against the pointer.
    pub(crate) fn verify(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.len() as u64 != self.len || sha256_hex(bytes) != self.sha256 {
            return Err(StoreError::Corrupt {
                key: key.to_owned(),
                detail: format!(
                    "blob generation {} reassembles to {} bytes that do not match its pointer \
                     ({} bytes, sha256 {})",
                    self.generation,
                    bytes.len(),
                    self.len,
                    self.sha256
                ),
            });
        }
        Ok(())
    }
}

/// The chunks of `bytes`, in order (none for an empty blob).
pub(crate) fn chunks(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.chunks(CHUNK_BYTES)
}

/// Name of chunk `index` of `generation`, relative to the backend's chunk area. Fixed width, so
/// chunks sort in order and every generation is a prefix of its own.
pub(crate) fn chunk_name(generation: &str, index: u32) -> String {
    format!("{generation}/{index:08}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The generation of a chunk name (`<generation>/<index>`).
pub(crate) fn generation_of(chunk_name: &str) -> &str {
    chunk_name.split_once('/').map_or(chunk_name, |(g, _)| g)
}

/// Whether the sweep may delete `generation` when no pointer references it: it was made more
/// than [`CHUNK_GRACE`] before `now_ms`. A generation from before names carried a time (its
/// time digits are random) counts as old once its time is more than a day in the future.
pub(crate) fn abandoned(generation: &str, now_ms: u64) -> bool {
    let Some(born) = generation
        .get(..TIME_DIGITS)
        .and_then(|t| u64::from_str_radix(t, 16).ok())
    else {
        return true;
    };
    let grace = CHUNK_GRACE.as_millis() as u64;
    born.saturating_add(grace) <= now_ms || born > now_ms.saturating_add(24 * 3600 * 1000)
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// The creation time (unix ms, 48 bits) then 80 random bits; falls back to the pid and a
/// counter if the OS RNG fails, which is still unique within this store (uniqueness, not
/// secrecy, is what matters here).
pub(crate) fn new_generation() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    let born = now_ms() & 0xffff_ffff_ffff;
    bytes[..8].copy_from_slice(&(born << 16).to_be_bytes());
    if ring::rand::SystemRandom::new()
        .fill(&mut bytes[6..])
        .is_err()
    {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[6..10].copy_from_slice(&std::process::id().to_be_bytes());
        bytes[10..].copy_from_slice(&n.to_be_bytes()[2..]);
    }
    hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_round_trips_and_rejects_foreign_values() {
        let data = vec![7u8; CHUNK_BYTES * 2 + 1];
        let p = BlobPointer::new(&data).expect("pointer");
        assert_eq!(p.chunks, 3);
        assert_eq!(chunks(&data).count(), 3);
        let decoded = BlobPointer::decode("k", &p.encode()).expect("decode");
        assert_eq!(decoded, Some(p.clone()));
        p.verify("k", &data).expect("verify");
        assert!(p.verify("k", &data[1..]).is_err());
        assert_eq!(BlobPointer::decode("k", b"plain").expect("plain"), None);
        assert!(BlobPointer::decode_required("k", b"plain").is_err());
        assert!(BlobPointer::decode("k", b"{\"isthmus_blob\":1,\"x\":2}").is_err());
        assert_ne!(new_generation(), new_generation());
        assert_eq!(BlobPointer::new(&[]).expect("empty").chunks, 0);
    }

    #[test]
    fn generations_carry_their_age() {
        let now = now_ms();
        let fresh = new_generation();
        assert_eq!(fresh.len(), 32);
        assert!(!abandoned(&fresh, now));
        let grace = CHUNK_GRACE.as_millis() as u64;
        assert!(abandoned(&fresh, now + grace + 1000));
        assert!(abandoned(&format!("{:012x}{}", 0, "0".repeat(20)), now));
        // A random pre-time name far in the future counts as old.
        assert!(abandoned("ffffffffffff00000000000000000000", now));
        assert_eq!(generation_of(&chunk_name(&fresh, 3)), fresh);
    }
}
