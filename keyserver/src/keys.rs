//! Key material of the key server: the root key, sealed scope seeds and content-key derivation.
//!
//! Content key = HKDF-SHA256(salt: none, IKM: seed, info: b"csap/v1/asset" ‖ asset_id, L = 32).
//! The same derivation is implemented by csapfs; the unit test below pins a vector for both.

use std::fmt;
use std::path::Path;

use hkdf::Hkdf;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use secmem::{LockedBox, Secret};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::fsutil;

/// HKDF info prefix for content keys (followed by the 16 raw asset-id bytes).
pub const CONTENT_KEY_INFO: &[u8] = b"csap/v1/asset";

/// Derives the content key of one asset from its scope seed.
pub fn derive_content_key(seed: &[u8; 32], asset_id: &[u8; 16]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(None, seed);
    let mut info = [0u8; CONTENT_KEY_INFO.len() + 16];
    info[..CONTENT_KEY_INFO.len()].copy_from_slice(CONTENT_KEY_INFO);
    info[CONTENT_KEY_INFO.len()..].copy_from_slice(asset_id);
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 255*32 limit, so expand cannot fail.
    hk.expand(&info, okm.as_mut())
        .expect("HKDF-SHA256 output of 32 bytes is always valid");
    okm
}

/// Errors of key handling. AEAD failures collapse to one opaque variant on purpose.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("root key file {path}: {source}")]
    RootKeyIo {
        path: String,
        source: std::io::Error,
    },
    #[error("root key must be exactly 32 bytes (64 hex characters)")]
    RootKeyLength,
    #[error("sealed seed failed to decrypt (wrong root key or tampered database)")]
    Unseal,
    #[error("system random number generator failed")]
    Random,
}

/// Fills `out` from the operating system's CSPRNG.
pub fn random_bytes(out: &mut [u8]) -> Result<(), KeyError> {
    SystemRandom::new().fill(out).map_err(|_| KeyError::Random)
}

/// A 32-byte scope seed in the clear, in locked memory left out of core dumps (`secmem`);
/// zeroized on drop, never printed. Its bytes must not be handed to a system call.
pub struct Seed(Secret<32>);

impl Seed {
    pub fn generate() -> Result<Self, KeyError> {
        // The RNG (a system call) fills a stack copy: secret memory is out of the kernel's reach.
        let mut s = Zeroizing::new([0u8; 32]);
        random_bytes(s.as_mut())?;
        Ok(Seed(Secret::new(&s)))
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
    pub fn content_key(&self, asset_id: &[u8; 16]) -> ContentKey {
        ContentKey(Secret::new(&derive_content_key(
            self.0.as_bytes(),
            asset_id,
        )))
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed(<redacted>)")
    }
}

/// A 32-byte content key of one asset, in locked memory; zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ContentKey(Secret<32>);

impl ContentKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut b = bytes;
        let key = ContentKey(Secret::new(&b));
        b.zeroize();
        key
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey(<redacted>)")
    }
}

/// A seed encrypted under the root key: AES-256-GCM, random 96-bit nonce, AAD = scope ‖ version.
#[derive(Debug, Clone)]
pub struct SealedSeed {
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// The key server's root key (AES-256-GCM); it only ever wraps scope seeds.
pub struct RootKey {
    /// Expanded, in locked memory like the seeds it wraps.
    key: LockedBox<LessSafeKey>,
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

/// AAD binding a sealed seed to its scope and version, so rows cannot be swapped in the DB.
fn seed_aad(scope: &str, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(scope.len() + 4);
    aad.extend_from_slice(scope.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

impl RootKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() != 32 {
            return Err(KeyError::RootKeyLength);
        }
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| KeyError::RootKeyLength)?;
        Ok(RootKey {
            key: LockedBox::new(LessSafeKey::new(unbound)),
        })
    }

    /// Loads the root key from `CSAP_ROOT_KEY` (hex) if `env_hex` is given, else from `path`,
    /// creating the file (mode 0600, 32 random bytes) on first start.
    pub fn load_or_create(path: &Path, env_hex: Option<&str>) -> Result<Self, KeyError> {
        if let Some(h) = env_hex {
            let bytes = Zeroizing::new(hex::decode(h.trim()).map_err(|_| KeyError::RootKeyLength)?);
            return Self::from_bytes(&bytes);
        }
        let io = |source| KeyError::RootKeyIo {
            path: path.display().to_string(),
            source,
        };
        if path.exists() {
            let bytes = Zeroizing::new(std::fs::read(path).map_err(io)?);
            return Self::from_bytes(&bytes);
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        random_bytes(bytes.as_mut())?;
        fsutil::write_private(path, bytes.as_ref()).map_err(io)?;
        Self::from_bytes(bytes.as_ref())
    }

    pub fn seal_seed(
        &self,
        scope: &str,
        version: u32,
        seed: &Seed,
    ) -> Result<SealedSeed, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let mut buf = seed.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(seed_aad(scope, version)),
                &mut buf,
            )
            .map_err(|_| KeyError::Unseal)?;
        Ok(SealedSeed {
            nonce,
            ciphertext: buf,
        })
    }

    pub fn open_seed(
        &self,
        scope: &str,
        version: u32,
        sealed: &SealedSeed,
    ) -> Result<Seed, KeyError> {
        let mut buf = Zeroizing::new(sealed.ciphertext.clone());
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(sealed.nonce),
                Aad::from(seed_aad(scope, version)),
                &mut buf,
            )
            .map_err(|_| KeyError::Unseal)?;
        let plain: &[u8; 32] = (&*plain).try_into().map_err(|_| KeyError::Unseal)?;
        Ok(Seed(Secret::new(plain)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cross-implementation vector: csapfs/FORMAT.md carries the same hex.
    #[test]
    fn content_key_vector() {
        let seed: [u8; 32] = core::array::from_fn(|i| i as u8);
        let asset_id: [u8; 16] = core::array::from_fn(|i| 0xa0 + i as u8);
        let key = derive_content_key(&seed, &asset_id);
        let hex = hex::encode(key.as_ref());
        println!("content key vector: {hex}");
        assert_eq!(hex, CONTENT_KEY_VECTOR);
    }

    const CONTENT_KEY_VECTOR: &str =
        "dffe308f677e5a3421257f7c8a5e37acdb6794d61db9675ff851df19594cb1b8";

    #[test]
    fn content_key_depends_on_seed_and_asset() {
        let seed = [7u8; 32];
        let a = derive_content_key(&seed, &[1u8; 16]);
        let b = derive_content_key(&seed, &[2u8; 16]);
        let c = derive_content_key(&[8u8; 32], &[1u8; 16]);
        assert_ne!(*a, *b);
        assert_ne!(*a, *c);
    }

    #[test]
    fn seed_seal_roundtrip_and_binding() {
        let root = RootKey::from_bytes(&[9u8; 32]).unwrap();
        let seed = Seed::generate().unwrap();
        let sealed = root.seal_seed("shot010", 2, &seed).unwrap();
        let opened = root.open_seed("shot010", 2, &sealed).unwrap();
        assert_eq!(opened.as_bytes(), seed.as_bytes());
        // A row moved to another scope or version must not open.
        assert!(matches!(
            root.open_seed("shot011", 2, &sealed),
            Err(KeyError::Unseal)
        ));
        assert!(matches!(
            root.open_seed("shot010", 1, &sealed),
            Err(KeyError::Unseal)
        ));
        let other = RootKey::from_bytes(&[10u8; 32]).unwrap();
        assert!(matches!(
            other.open_seed("shot010", 2, &sealed),
            Err(KeyError::Unseal)
        ));
    }

    #[test]
    fn debug_is_redacted() {
        let seed = Seed::generate().unwrap();
        assert_eq!(format!("{seed:?}"), "Seed(<redacted>)");
        let k = seed.content_key(&[0u8; 16]);
        assert!(!format!("{k:?}").contains(&hex::encode(k.as_bytes())));
    }
}
