//! Encryption at rest for CA private keys: the key-encryption key ([`Kek`]) and the sealed-blob
//! format. Nothing here touches storage; the CA hands sealed bytes to its caller.
//!
//! Format (version 1): `"isk" | 0x01 (version) | 0x01 (ChaCha20-Poly1305) | kek_id[8] |
//! nonce[12] | ciphertext | tag[16]`. The first 13 bytes are authenticated as AAD. `kek_id`
//! (HMAC-SHA256 of a fixed label under the KEK, truncated) lets `open` tell "wrong KEK" from
//! "corrupt blob"; the AEAD key is a separate HMAC-derived subkey, so the KEK itself never keys
//! two primitives.

use std::fmt;

use base64::Engine as _;
use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::{Zeroize as _, Zeroizing};

use super::{IdentityError, Result};

const MAGIC: &[u8; 3] = b"isk";
const VERSION: u8 = 1;
const ALG_CHACHA20_POLY1305: u8 = 1;
const KEK_ID_LEN: usize = 8;
const HEADER_LEN: usize = MAGIC.len() + 2 + KEK_ID_LEN;
const KEY_LEN: usize = 32;

/// The key-encryption key: 32 secret bytes, wiped from memory on drop, never printed.
#[derive(Clone)]
pub struct Kek {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl Kek {
    /// Reads a KEK from config/env: exactly 32 bytes, base64 (standard or URL-safe, padding
    /// optional). Surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let decoded = Zeroizing::new(
            [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .ok_or_else(|| IdentityError::InvalidKek {
                reason: "it is not base64".into(),
            })?,
        );
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        if decoded.len() != KEY_LEN {
            return Err(IdentityError::InvalidKek {
                reason: format!("it decodes to {} bytes, not {KEY_LEN}", decoded.len()),
            });
        }
        bytes.copy_from_slice(&decoded);
        Ok(Self { bytes })
    }

    /// A fresh random KEK. Prints nothing; see [`Kek::to_base64`] to show it to an operator.
    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| IdentityError::Random)?;
        Ok(Self { bytes })
    }

    /// The KEK as standard base64, in memory that is wiped on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.bytes.as_ref()))
    }

    fn derive(&self, label: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.bytes.as_ref());
        let tag = hmac::sign(&key, label);
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn id(&self) -> [u8; KEK_ID_LEN] {
        let full = self.derive(b"isthmus sealed v1: kek id");
        let mut id = [0u8; KEK_ID_LEN];
        id.copy_from_slice(&full[..KEK_ID_LEN]);
        id
    }

    fn aead_key(&self) -> Result<LessSafeKey> {
        let key = self.derive(b"isthmus sealed v1: chacha20-poly1305 key");
        let unbound =
            UnboundKey::new(&CHACHA20_POLY1305, key.as_ref()).map_err(|_| IdentityError::Random)?;
        Ok(LessSafeKey::new(unbound))
    }

    /// Encrypts `plaintext` under this KEK with a random nonce.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| IdentityError::Random)?;
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(ALG_CHACHA20_POLY1305);
        out.extend_from_slice(&self.id());
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        let sealed = self.aead_key()?.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&out[..HEADER_LEN]),
            &mut body,
        );
        if sealed.is_err() {
            body.zeroize();
            return Err(IdentityError::Random);
        }
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypts a blob made by [`Kek::seal`]. A blob sealed under another KEK gives
    /// [`IdentityError::KekMismatch`]; a damaged one [`IdentityError::SealedCorrupt`].
    pub fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let corrupt = |reason| IdentityError::SealedCorrupt { reason };
        if sealed.len() < HEADER_LEN + NONCE_LEN + aead::CHACHA20_POLY1305.tag_len() {
            return Err(corrupt("too short"));
        }
        let (header, rest) = sealed.split_at(HEADER_LEN);
        if &header[..MAGIC.len()] != MAGIC {
            return Err(corrupt("not a sealed key"));
        }
        if header[MAGIC.len()] != VERSION {
            return Err(corrupt(
                "unknown format version; was it written by a newer Isthmus?",
            ));
        }
        if header[MAGIC.len() + 1] != ALG_CHACHA20_POLY1305 {
            return Err(corrupt("unknown cipher"));
        }
        let id = &header[MAGIC.len() + 2..];
        if !constant_time_eq(id, &self.id()) {
            return Err(IdentityError::KekMismatch);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt("bad nonce"))?;
        let mut body = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .aead_key()?
            .open_in_place(nonce, Aad::from(header), body.as_mut_slice())
            .map_err(|_| corrupt("authentication failed"))?
            .len();
        body.truncate(len);
        Ok(body)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_requires_32_bytes() {
        let kek = Kek::generate().unwrap();
        let text = kek.to_base64();
        let again = Kek::parse(&format!("  {}\n", text.as_str())).unwrap();
        assert_eq!(again.bytes.as_ref(), kek.bytes.as_ref());
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 31]);
        assert!(
            Kek::parse(&short)
                .unwrap_err()
                .to_string()
                .contains("31 bytes")
        );
        assert!(
            Kek::parse("not base64 !!")
                .unwrap_err()
                .to_string()
                .contains("base64")
        );
        assert!(Kek::parse("").is_err());
        assert_eq!(format!("{kek:?}"), "Kek(<redacted>)");
    }

    #[test]
    fn round_trip_and_wrong_kek() {
        let kek = Kek::generate().unwrap();
        let sealed = kek.seal(b"private key bytes").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"private"));
        assert_eq!(kek.open(&sealed).unwrap().as_slice(), b"private key bytes");
        // Random nonce: sealing twice differs.
        assert_ne!(kek.seal(b"x").unwrap(), kek.seal(b"x").unwrap());

        let other = Kek::generate().unwrap();
        let err = other.open(&sealed).unwrap_err();
        assert!(matches!(err, IdentityError::KekMismatch));
        assert!(
            err.to_string()
                .contains("the key-encryption key does not match the one the CA was created with")
        );
    }

    #[test]
    fn corruption_is_detected() {
        let kek = Kek::generate().unwrap();
        let sealed = kek.seal(b"secret").unwrap();
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            kek.open(&flipped),
            Err(IdentityError::SealedCorrupt { .. })
        ));
        assert!(matches!(
            kek.open(&sealed[..10]),
            Err(IdentityError::SealedCorrupt { .. })
        ));
        let mut version = sealed.clone();
        version[3] = 9;
        assert!(matches!(
            kek.open(&version),
            Err(IdentityError::SealedCorrupt { .. })
        ));
        assert!(matches!(
            kek.open(b""),
            Err(IdentityError::SealedCorrupt { .. })
        ));
    }
}
