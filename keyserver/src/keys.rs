//! Key material of the key server: the root key and sealed scope seeds. Seeds, content keys and
//! the one content-key derivation are `csap-base`'s (the mount derives with the same code):
//!
//! Content key = HKDF-SHA256(salt: none, IKM: seed, info: b"csap/v1/asset" ‖ asset_id, L = 32).

use std::fmt;
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use secmem::LockedBox;
use zeroize::Zeroizing;

pub use csap_base::keys::{derive_content_key, ContentKey, Seed, CONTENT_KEY_INFO};

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
        csap_base::files::write_secret(path, bytes.as_ref()).map_err(io)?;
        Self::from_bytes(bytes.as_ref())
    }

    pub fn seal_seed(
        &self,
        scope: &str,
        version: u32,
        seed: &Seed,
    ) -> Result<SealedSeed, KeyError> {
        self.seal(&seed_aad(scope, version), seed.as_bytes())
    }

    pub fn open_seed(
        &self,
        scope: &str,
        version: u32,
        sealed: &SealedSeed,
    ) -> Result<Seed, KeyError> {
        let plain = self.open(&seed_aad(scope, version), sealed)?;
        let plain: Zeroizing<[u8; 32]> =
            Zeroizing::new((&plain[..]).try_into().map_err(|_| KeyError::Unseal)?);
        Ok(Seed::from_bytes(*plain))
    }

    /// `plaintext` sealed under the root key with `aad`, under a fresh random nonce.
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<SealedSeed, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        // Room for the tag up front: appending it must not reallocate and leave a copy of
        // the plaintext in freed memory (it is sealed in place).
        let mut buf = Vec::with_capacity(plaintext.len() + AES_256_GCM.tag_len());
        buf.extend_from_slice(plaintext);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| KeyError::Unseal)?;
        Ok(SealedSeed {
            nonce,
            ciphertext: buf,
        })
    }

    /// The plaintext of `sealed`, if it was sealed under the root key with `aad`.
    fn open(&self, aad: &[u8], sealed: &SealedSeed) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let mut buf = Zeroizing::new(sealed.ciphertext.clone());
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(sealed.nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| KeyError::Unseal)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// What the root-key check seals. Not 32 bytes, so a check row copied into `scope_versions`
/// never opens as a seed; its AAD is no scope's either way.
const CHECK_PLAINTEXT: &[u8] = b"csap root key check v1";
const CHECK_AAD: &[u8] = b"csap root key check";

impl RootKey {
    /// A check value for this key: a known text sealed under it (random nonce). Stored once in
    /// the database at first start, it lets every later start — every replica — tell whether
    /// it was given the same root key, without the key ever leaving the process.
    pub fn seal_check(&self) -> Result<SealedSeed, KeyError> {
        self.seal(CHECK_AAD, CHECK_PLAINTEXT)
    }

    /// Whether `check` was sealed by this same key ([`RootKey::seal_check`]).
    pub fn opens_check(&self, check: &SealedSeed) -> bool {
        self.open(CHECK_AAD, check)
            .is_ok_and(|plain| plain.as_slice() == CHECK_PLAINTEXT)
    }
}

/// AAD of an organization's pseudonym key: its own label and the organization, so the row
/// of one organization opens for no other (and no seed or check row opens as one).
fn pseudonym_aad(organization: &str) -> Vec<u8> {
    let mut aad = b"csap pseudonym key\0".to_vec();
    aad.extend_from_slice(organization.as_bytes());
    aad
}

impl RootKey {
    /// A fresh pseudonym key for `organization` (federated logins name its people by a keyed
    /// hash of their subject: `federation::participant_name`), sealed under the root key.
    pub fn new_pseudonym_key(&self, organization: &str) -> Result<SealedSeed, KeyError> {
        let mut key = Zeroizing::new([0u8; 32]);
        random_bytes(key.as_mut())?;
        self.seal(&pseudonym_aad(organization), key.as_ref())
    }

    /// The pseudonym key `sealed` holds for `organization`.
    pub fn open_pseudonym_key(
        &self,
        organization: &str,
        sealed: &SealedSeed,
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.open(&pseudonym_aad(organization), sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonym_keys_open_for_their_organization_only() {
        let root = RootKey::from_bytes(&[9u8; 32]).unwrap();
        let sealed = root.new_pseudonym_key("acme-post").unwrap();
        assert_eq!(
            root.open_pseudonym_key("acme-post", &sealed).unwrap().len(),
            32
        );
        assert!(root.open_pseudonym_key("globex-vfx", &sealed).is_err());
        assert!(!root.opens_check(&sealed));
        let other = RootKey::from_bytes(&[10u8; 32]).unwrap();
        assert!(other.open_pseudonym_key("acme-post", &sealed).is_err());
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
    fn the_check_value_opens_only_under_its_own_key_and_never_as_a_seed() {
        let root = RootKey::from_bytes(&[9u8; 32]).unwrap();
        let check = root.seal_check().unwrap();
        assert!(root.opens_check(&check));
        assert!(!RootKey::from_bytes(&[10u8; 32])
            .unwrap()
            .opens_check(&check));
        assert!(root.open_seed("csap root key check", 0, &check).is_err());
    }
}
