//! Key types and the chunk ciphers: seeds, content keys, per-asset subkeys, nonces.
//!
//! This module is the only place that names a cipher implementation, so the implementation can
//! change without touching the format or the filesystem. Measured in `bench/` (README table):
//! `ring`'s AES-256-GCM decrypts about 3x faster than RustCrypto's `aes-gcm` on our machines, so
//! the GCM suite uses `ring`. `ring` has no raw AES-CTR, so the CTR suite uses RustCrypto's
//! `aes` + `ctr` (AES-NI), whose speed is not the bottleneck there: the BLAKE3 MAC is.
//!
//! Nothing here performs I/O, and no key byte is ever formatted: every key type has a redacted
//! `Debug` and is zeroized on drop. Seeds, content keys, subkeys and ring's expanded AES-GCM
//! key live in locked memory left out of core dumps (`secmem`): they never sit in ordinary
//! heap pages, and none of them may be handed to a system call (copy the bytes out first).

use std::fmt;
use std::path::Path;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use secmem::{LockedBox, Secret};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::format::{AssetId, ScopeId, Suite, NONCE_LEN, TAG_LEN};

/// Length of every symmetric key in csap (seeds, content keys, subkeys).
pub const KEY_LEN: usize = 32;

/// HKDF `info` prefix for content keys (DESIGN.md §5); the 16-byte asset id follows it.
pub const CONTENT_KEY_INFO: &[u8] = b"csap/v1/asset";

/// A key-scope seed: every asset key of a scope version is derived from it.
#[derive(Clone)]
pub struct Seed(Secret<KEY_LEN>);

impl Seed {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut bytes = bytes;
        let seed = Seed(Secret::new(&bytes));
        bytes.zeroize();
        seed
    }

    /// Reads a key file of exactly 32 raw bytes (`head -c 32 /dev/urandom > k`).
    pub fn from_file(path: &Path) -> Result<Seed, KeyFileError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyFileError::Read {
            path: path.display().to_string(),
            source,
        })?);
        let array: &[u8; KEY_LEN] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyFileError::Length {
                    path: path.display().to_string(),
                    len: bytes.len(),
                })?;
        Ok(Seed(Secret::new(array)))
    }

    /// The scope id that assets keyed from this seed file carry in their header.
    ///
    /// A keyed fingerprint of the seed (BLAKE3 `derive_key`, so it reveals nothing about the
    /// seed): it lets a reader say "this asset belongs to another key" instead of a bare
    /// authentication failure.
    pub fn key_file_scope_id(&self) -> ScopeId {
        let digest = blake3::derive_key("csap v1 key-file scope id", self.0.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        ScopeId(id)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} holds {len} bytes; a key file must hold exactly 32 raw bytes (make one with `head -c 32 /dev/urandom > FILE`)")]
    Length { path: String, len: usize },
}

/// The key of one asset. Never stored in the asset; derived or licensed when needed.
#[derive(Clone)]
pub struct ContentKey(Secret<KEY_LEN>);

impl ContentKey {
    /// Takes `bytes` into locked memory and zeroizes this copy of them.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut bytes = bytes;
        let key = ContentKey(Secret::new(&bytes));
        bytes.zeroize();
        key
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey(<redacted>)")
    }
}

/// content key = HKDF-SHA256(IKM = seed, salt = none, info = "csap/v1/asset" ‖ asset id), 32 bytes.
pub fn derive_content_key(seed: &Seed, asset_id: &AssetId) -> ContentKey {
    let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(None, seed.as_bytes());
    let mut info = [0u8; 13 + 16];
    info[..13].copy_from_slice(CONTENT_KEY_INFO);
    info[13..].copy_from_slice(&asset_id.0);
    let mut key = Secret::<KEY_LEN>::zeroed();
    hkdf.expand(&info, key.as_bytes_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    ContentKey(key)
}

/// BLAKE3 `derive_key` contexts for the per-asset subkeys (FORMAT.md §Keys).
const HEADER_MAC_CONTEXT: &str = "csap v1 header mac";
const CHUNK_ENCRYPTION_CONTEXT: &str = "csap v1 chunk encryption";
const CHUNK_MAC_CONTEXT: &str = "csap v1 chunk mac";

/// The ciphers of one asset, ready to use: subkeys derived once per open.
pub struct AssetKeys {
    header_mac_key: Secret<KEY_LEN>,
    chunk: ChunkCipher,
}

enum ChunkCipher {
    // Out of line: ring's expanded AES-GCM key is large, and it is as secret as the key
    // (the AES key schedule gives the key back), so it sits in locked memory too.
    Gcm(LockedBox<LessSafeKey>),
    CtrBlake3 {
        encryption_key: Secret<KEY_LEN>,
        mac_key: Secret<KEY_LEN>,
    },
}

/// A chunk's authenticator did not verify. Deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthenticationFailed;

impl AssetKeys {
    pub fn new(suite: Suite, key: &ContentKey) -> AssetKeys {
        let header_mac_key = subkey(HEADER_MAC_CONTEXT, key);
        let encryption_key = subkey(CHUNK_ENCRYPTION_CONTEXT, key);
        let chunk = match suite {
            Suite::Gcm => {
                let unbound = UnboundKey::new(&aead::AES_256_GCM, encryption_key.as_bytes())
                    .expect("a 32-byte key is valid for AES-256-GCM");
                ChunkCipher::Gcm(LockedBox::new(LessSafeKey::new(unbound)))
            }
            Suite::CtrBlake3 => ChunkCipher::CtrBlake3 {
                encryption_key,
                mac_key: subkey(CHUNK_MAC_CONTEXT, key),
            },
        };
        AssetKeys {
            header_mac_key,
            chunk,
        }
    }

    /// BLAKE3 keyed hash of the header's first 64 bytes.
    pub fn header_mac(&self, header_body: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(self.header_mac_key.as_bytes(), header_body).as_bytes()
    }

    pub fn verify_header_mac(
        &self,
        header_body: &[u8],
        mac: &[u8],
    ) -> Result<(), AuthenticationFailed> {
        let expected = self.header_mac(header_body);
        if bool::from(expected.as_slice().ct_eq(mac)) {
            Ok(())
        } else {
            Err(AuthenticationFailed)
        }
    }

    /// Encrypts `data` in place and returns the 16-byte tag. `aad` is the chunk's 25-byte AAD.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; TAG_LEN] {
        match &self.chunk {
            ChunkCipher::Gcm(key) => {
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(*nonce),
                        Aad::from(aad),
                        data,
                    )
                    .expect("a chunk is far below the AES-GCM message limit");
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                out
            }
            ChunkCipher::CtrBlake3 {
                encryption_key,
                mac_key,
            } => {
                apply_ctr(encryption_key.as_bytes(), nonce, data);
                ctr_mac(mac_key.as_bytes(), nonce, aad, data)
            }
        }
    }

    /// Verifies and decrypts `data || tag` in place; on failure `data` must not be used.
    pub fn open_in_place<'a>(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8], AuthenticationFailed> {
        if data_and_tag.len() < TAG_LEN {
            return Err(AuthenticationFailed);
        }
        match &self.chunk {
            ChunkCipher::Gcm(key) => key
                .open_in_place(
                    Nonce::assume_unique_for_key(*nonce),
                    Aad::from(aad),
                    data_and_tag,
                )
                .map_err(|_| AuthenticationFailed),
            ChunkCipher::CtrBlake3 {
                encryption_key,
                mac_key,
            } => {
                let (data, tag) = data_and_tag.split_at_mut(data_and_tag.len() - TAG_LEN);
                // Encrypt-then-MAC: verify before any keystream touches the data.
                let expected = ctr_mac(mac_key.as_bytes(), nonce, aad, data);
                if !bool::from(expected.as_slice().ct_eq(tag)) {
                    return Err(AuthenticationFailed);
                }
                apply_ctr(encryption_key.as_bytes(), nonce, data);
                Ok(data)
            }
        }
    }
}

impl fmt::Debug for AssetKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AssetKeys(<redacted>)")
    }
}

/// BLAKE3 `derive_key` context of the key that seals an asset's user attributes (FORMAT.md §11).
const XATTR_KEY_CONTEXT: &str = "csap v1 xattr key";

/// The ciphers that seal an asset's user attributes (FORMAT.md §11): the asset's suite under a
/// subkey of its content key, so attributes share neither a key nor a nonce space with chunks.
pub(crate) fn xattr_keys(suite: Suite, key: &ContentKey) -> AssetKeys {
    AssetKeys::new(suite, &ContentKey(subkey(XATTR_KEY_CONTEXT, key)))
}

/// A BLAKE3 `derive_key` subkey of `key`, in locked memory (the stack copy zeroized).
fn subkey(context: &str, key: &ContentKey) -> Secret<KEY_LEN> {
    let bytes = Zeroizing::new(blake3::derive_key(context, key.as_bytes()));
    Secret::new(&bytes)
}

/// AES-256-CTR with IV = nonce ‖ 32-bit big-endian block counter starting at 0.
fn apply_ctr(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], data: &mut [u8]) {
    use ctr::cipher::{KeyIvInit, StreamCipher};
    let mut iv = [0u8; 16];
    iv[..NONCE_LEN].copy_from_slice(nonce);
    let mut cipher = ctr::Ctr32BE::<aes::Aes256>::new(key.into(), &iv.into());
    cipher.apply_keystream(data);
}

/// First 16 bytes of BLAKE3-keyed(mac key, AAD ‖ nonce ‖ ciphertext). Every field before the
/// ciphertext has a fixed length, so the encoding is unambiguous.
fn ctr_mac(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> [u8; TAG_LEN] {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(aad);
    hasher.update(nonce);
    hasher.update(ciphertext);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&hasher.finalize().as_bytes()[..TAG_LEN]);
    tag
}

/// A fresh random 96-bit nonce from the operating system. Random (not counter) nonces need no
/// state to survive crashes, and with one key per asset the 2^32-messages bound of NIST SP
/// 800-38D §8.3 is out of reach for any real file.
pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).expect("the operating system RNG is available");
    nonce
}

/// 16 random bytes (asset ids, scope ids).
pub fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    getrandom::getrandom(&mut id).expect("the operating system RNG is available");
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_key_bytes() {
        let seed = Seed::from_bytes([0xAB; 32]);
        let key = derive_content_key(&seed, &AssetId([1; 16]));
        for text in [
            format!("{seed:?}"),
            format!("{key:?}"),
            format!("{:?}", AssetKeys::new(Suite::Gcm, &key)),
        ] {
            assert!(text.contains("redacted"), "{text}");
            assert!(!text.to_lowercase().contains("ab"), "{text}");
        }
    }

    #[test]
    fn content_keys_differ_per_asset_and_per_seed() {
        let a = derive_content_key(&Seed::from_bytes([1; 32]), &AssetId([1; 16]));
        let b = derive_content_key(&Seed::from_bytes([1; 32]), &AssetId([2; 16]));
        let c = derive_content_key(&Seed::from_bytes([2; 32]), &AssetId([1; 16]));
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), c.as_bytes());
    }

    #[test]
    fn both_suites_round_trip_and_reject_a_flipped_bit() {
        let key = ContentKey::from_bytes([7; 32]);
        for suite in [Suite::Gcm, Suite::CtrBlake3] {
            let keys = AssetKeys::new(suite, &key);
            let nonce = random_nonce();
            let mut data = b"frame 0001 of shot 010".to_vec();
            let tag = keys.seal_in_place(&nonce, b"aad", &mut data);
            let mut sealed = data.clone();
            sealed.extend_from_slice(&tag);
            let mut good = sealed.clone();
            assert_eq!(
                keys.open_in_place(&nonce, b"aad", &mut good).unwrap(),
                b"frame 0001 of shot 010"
            );
            let mut bad = sealed.clone();
            bad[3] ^= 1;
            assert_eq!(
                keys.open_in_place(&nonce, b"aad", &mut bad),
                Err(AuthenticationFailed)
            );
            let mut wrong_aad = sealed.clone();
            assert!(keys.open_in_place(&nonce, b"aae", &mut wrong_aad).is_err());
        }
    }

    #[test]
    fn key_file_must_be_exactly_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, [0u8; 31]).unwrap();
        let err = Seed::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("exactly 32 raw bytes"), "{err}");
        std::fs::write(&path, [0u8; 32]).unwrap();
        assert!(Seed::from_file(&path).is_ok());
    }
}
