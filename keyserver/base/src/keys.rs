//! Scope seeds, content keys, and the one derivation from the first to the second:
//!
//! content key = HKDF-SHA256(IKM = seed, salt = none, info = "csap/v1/asset" ‖ asset id), 32 bytes
//!
//! The key server derives a key to license it, the mount and `csap import` derive one from a
//! key file; both go through [`Seed::content_key`], so they cannot drift apart
//! (`csapfs/FORMAT.md` pins the vector of the test below).
//!
//! Both types keep their bytes in locked memory left out of core dumps (`secmem`), zeroize them
//! on drop and never print them. Their bytes must not be handed to a system call: copy them out
//! first.

use std::fmt;
use std::path::Path;

use secmem::Secret;
use zeroize::{Zeroize, Zeroizing};

use crate::ids::{AssetId, ScopeId};

/// Length of every symmetric key in csap (seeds, content keys, subkeys).
pub const KEY_LEN: usize = 32;

/// HKDF `info` prefix for content keys; the 16 raw asset-id bytes follow it.
pub const CONTENT_KEY_INFO: &[u8] = b"csap/v1/asset";

/// The operating system's RNG failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("system random number generator failed")]
pub struct RandomFailed;

/// A key-scope seed: every content key of a scope version is derived from it.
#[derive(Clone)]
pub struct Seed(Secret<KEY_LEN>);

impl Seed {
    /// Takes `bytes` into locked memory and zeroizes this copy of them.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut bytes = bytes;
        let seed = Seed(Secret::new(&bytes));
        bytes.zeroize();
        seed
    }

    /// A fresh random seed.
    pub fn generate() -> Result<Self, RandomFailed> {
        // The RNG (a system call) fills a stack copy: locked memory is out of the kernel's reach.
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::getrandom(bytes.as_mut()).map_err(|_| RandomFailed)?;
        Ok(Seed(Secret::new(&bytes)))
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
        let digest = Zeroizing::new(blake3::derive_key(
            "csap v1 key-file scope id",
            self.0.as_bytes(),
        ));
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        ScopeId(id)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }

    /// The content key of asset `asset_id` under this seed (the module's formula).
    pub fn content_key(&self, asset_id: &[u8; 16]) -> ContentKey {
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(None, self.0.as_bytes());
        let mut info = [0u8; CONTENT_KEY_INFO.len() + 16];
        info[..CONTENT_KEY_INFO.len()].copy_from_slice(CONTENT_KEY_INFO);
        info[CONTENT_KEY_INFO.len()..].copy_from_slice(asset_id);
        // The output goes straight into locked memory: no copy of the key in ordinary pages.
        let mut key = Secret::<KEY_LEN>::zeroed();
        hkdf.expand(&info, key.as_bytes_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        ContentKey(key)
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
#[derive(Clone, PartialEq, Eq)]
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

/// The content key of the asset `asset_id` under `seed` ([`Seed::content_key`]).
pub fn derive_content_key(seed: &Seed, asset_id: &AssetId) -> ContentKey {
    seed.content_key(&asset_id.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector `csapfs/FORMAT.md` publishes for other implementations.
    #[test]
    fn content_key_vector() {
        let seed = Seed::from_bytes(core::array::from_fn(|i| i as u8));
        let asset_id = AssetId(core::array::from_fn(|i| 0xa0 + i as u8));
        assert_eq!(
            hex::encode(derive_content_key(&seed, &asset_id).as_bytes()),
            "dffe308f677e5a3421257f7c8a5e37acdb6794d61db9675ff851df19594cb1b8"
        );
    }

    #[test]
    fn content_keys_differ_per_asset_and_per_seed() {
        let a = Seed::from_bytes([1; 32]).content_key(&[1; 16]);
        let b = Seed::from_bytes([1; 32]).content_key(&[2; 16]);
        let c = Seed::from_bytes([2; 32]).content_key(&[1; 16]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, Seed::from_bytes([1; 32]).content_key(&[1; 16]));
    }

    #[test]
    fn debug_output_never_shows_key_bytes() {
        let seed = Seed::from_bytes([0xAB; 32]);
        let key = seed.content_key(&[1; 16]);
        for text in [format!("{seed:?}"), format!("{key:?}")] {
            assert!(text.contains("redacted"), "{text}");
            assert!(!text.to_lowercase().contains("ab"), "{text}");
        }
        let fresh = Seed::generate().unwrap();
        assert!(!format!("{fresh:?}").contains(&hex::encode(fresh.as_bytes())));
    }

    #[test]
    fn key_file_must_be_exactly_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, [0u8; 31]).unwrap();
        let err = Seed::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("exactly 32 raw bytes"), "{err}");
        std::fs::write(&path, [0u8; 32]).unwrap();
        let seed = Seed::from_file(&path).unwrap();
        assert_eq!(seed.as_bytes(), &[0u8; 32]);
        assert_ne!(
            seed.key_file_scope_id(),
            Seed::from_bytes([1; 32]).key_file_scope_id()
        );
    }
}
