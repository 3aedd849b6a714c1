//! Key types and the chunk ciphers: seeds, content keys, per-asset subkeys, nonces.
//!
//! This module is the only place that names a cipher implementation, so the implementation can
//! change without touching the format or the filesystem. Measured in `bench/` (docs/benchmarks.md):
//! `ring`'s AES-256-GCM decrypts about 3x faster than RustCrypto's `aes-gcm` on our machines, so
//! the GCM suite uses `ring`. `ring` has no raw AES-CTR, so the CTR suite uses RustCrypto's
//! `aes` + `ctr` (AES-NI), whose speed is not the bottleneck there: the BLAKE3 MAC is.
//!
//! Its only I/O is reading a key file ([`Seed::from_file`]) and asking the operating system for
//! random bytes, which can fail ([`RandomnessUnavailable`]); no key byte is ever formatted: every key type has a redacted
//! `Debug` and is zeroized on drop. Seeds, content keys, subkeys and ring's expanded AES-GCM
//! key live in locked memory left out of core dumps (`secmem`): they never sit in ordinary
//! heap pages, and none of them may be handed to a system call (copy the bytes out first).

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use secmem::{LockedBox, Secret};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::format::{Suite, NONCE_LEN, TAG_LEN};

// The key types and the content-key derivation are csap-base's, shared with the key server.
pub use csap_base::keys::{
    derive_content_key, ContentKey, KeyFileError, Seed, CONTENT_KEY_INFO, KEY_LEN,
};

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
    /// Crate-private: the nonce must be fresh, which only `format`'s chunk sealing guarantees.
    pub(crate) fn seal_in_place(
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
    /// Crate-private: outside, `format::open_chunk` is the only door to a chunk's plaintext.
    pub(crate) fn open_in_place<'a>(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8], AuthenticationFailed> {
        if data_and_tag.len() < TAG_LEN {
            return Err(AuthenticationFailed);
        }
        let (data, tag) = data_and_tag.split_at_mut(data_and_tag.len() - TAG_LEN);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().expect("TAG_LEN bytes");
        self.open_detached(nonce, aad, data, tag)?;
        Ok(data)
    }

    /// Verifies `tag` over `data` and decrypts `data` in place, the tag kept apart (so the
    /// ciphertext can be read straight into the buffer its plaintext is wanted in). On failure
    /// `data` is zeros (GCM: ring clears it) or the untouched ciphertext (CTR: verified first).
    pub(crate) fn open_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthenticationFailed> {
        match &self.chunk {
            ChunkCipher::Gcm(key) => key
                .open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(*nonce),
                    Aad::from(aad),
                    Tag::from(*tag),
                    data,
                    0..,
                )
                .map(|_| ())
                .map_err(|_| AuthenticationFailed),
            ChunkCipher::CtrBlake3 {
                encryption_key,
                mac_key,
            } => {
                // Encrypt-then-MAC: verify before any keystream touches the data.
                let expected = ctr_mac(mac_key.as_bytes(), nonce, aad, data);
                if !bool::from(expected.as_slice().ct_eq(tag)) {
                    return Err(AuthenticationFailed);
                }
                apply_ctr(encryption_key.as_bytes(), nonce, data);
                Ok(())
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
    // `from_bytes` takes the subkey into locked memory and zeroizes its argument.
    AssetKeys::new(
        suite,
        &ContentKey::from_bytes(blake3::derive_key(XATTR_KEY_CONTEXT, key.as_bytes())),
    )
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

/// The operating system's random number generator failed. Nothing is sealed and no id is made
/// without fresh randomness: the write that needed it fails (`EIO` at the mount).
pub use csap_base::ids::RandomnessUnavailable;

/// A fresh random 96-bit nonce from the operating system. Random (not counter) nonces need no
/// state to survive crashes, and with one key per asset the 2^32-messages bound of NIST SP
/// 800-38D §8.3 is out of reach for any real file.
pub(crate) fn random_nonce() -> Result<[u8; NONCE_LEN], RandomnessUnavailable> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(RandomnessUnavailable)?;
    Ok(nonce)
}

pub use csap_base::ids::random_id;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::AssetId;

    #[test]
    fn debug_output_never_shows_key_bytes() {
        let key = derive_content_key(&Seed::from_bytes([0xAB; 32]), &AssetId([1; 16]));
        let text = format!("{:?}", AssetKeys::new(Suite::Gcm, &key));
        assert!(text.contains("redacted"), "{text}");
        assert!(!text.to_lowercase().contains("ab"), "{text}");
    }

    #[test]
    fn both_suites_round_trip_and_reject_a_flipped_bit() {
        let key = ContentKey::from_bytes([7; 32]);
        for suite in [Suite::Gcm, Suite::CtrBlake3] {
            let keys = AssetKeys::new(suite, &key);
            let nonce = random_nonce().unwrap();
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
}
