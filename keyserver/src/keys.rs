//! Key material of the key server: the root key and sealed scope seeds. Seeds, content keys and
//! the one content-key derivation are `csap-base`'s (the mount derives with the same code):
//!
//! Content key = HKDF-SHA256(salt: none, IKM: seed, info: b"csap/v1/asset" ‖ asset_id, L = 32).
//!
//! License sessions kept in the store are sealed under a key of their own, derived from the
//! root key: HKDF-SHA256(salt: none, IKM: root key, info: [`SESSION_SEAL_INFO`], L = 32).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
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

/// The key server's root key (AES-256-GCM); it only ever wraps scope seeds (and its check
/// value). License sessions are sealed under a key derived from it ([`SessionSealKey`]).
pub struct RootKey {
    /// Expanded, in locked memory like the seeds it wraps.
    key: LockedBox<LessSafeKey>,
    /// Derived when the root key is read: the raw root key is not kept to derive it later.
    sessions: Arc<SessionSealKey>,
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
            sessions: Arc::new(SessionSealKey::derive(bytes)),
        })
    }

    /// The key license sessions are sealed under in the store.
    pub fn session_seal_key(&self) -> Arc<SessionSealKey> {
        Arc::clone(&self.sessions)
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
        seal_with(&self.key, aad, plaintext)
    }

    /// The plaintext of `sealed`, if it was sealed under the root key with `aad`.
    fn open(&self, aad: &[u8], sealed: &SealedSeed) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        open_with(&self.key, aad, sealed)
    }
}

/// `plaintext` sealed under `key` with `aad`, under a fresh random nonce.
fn seal_with(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<SealedSeed, KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce)?;
    // Room for the tag up front: appending it must not reallocate and leave a copy of the
    // plaintext in freed memory (it is sealed in place).
    let mut buf = Vec::with_capacity(plaintext.len() + AES_256_GCM.tag_len());
    buf.extend_from_slice(plaintext);
    key.seal_in_place_append_tag(
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

/// The plaintext of `sealed`, if it was sealed under `key` with `aad`.
fn open_with(
    key: &LessSafeKey,
    aad: &[u8],
    sealed: &SealedSeed,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let mut buf = Zeroizing::new(sealed.ciphertext.clone());
    let len = key
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

/// HKDF `info` of [`SessionSealKey`]: a label of its own, so no other key derived from the
/// root key (now or later) is this one.
pub const SESSION_SEAL_INFO: &[u8] = b"csap/v1/keyserver/session-seal";

/// What a stored license session is bound to: its sealed secret opens only in the row it was
/// sealed for. Each field length-prefixed, so no two rows' fields run together alike.
#[derive(Debug, Clone, Copy)]
pub struct SessionBinding<'a> {
    pub id: &'a str,
    pub device: &'a str,
    pub recipient: &'a [u8],
    pub not_after: i64,
}

impl SessionBinding<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64 + self.id.len() + self.device.len());
        for part in [self.id.as_bytes(), self.device.as_bytes(), self.recipient] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad.extend_from_slice(&self.not_after.to_be_bytes());
        aad
    }
}

/// The key (AES-256-GCM, derived from the root key) that license session secrets are sealed
/// under in the store, so every replica given the same root key opens them and nothing else
/// does. Derived, not the root key itself: a session row can never open as a seed or the
/// root-key check, whatever its AAD.
pub struct SessionSealKey {
    key: LockedBox<LessSafeKey>,
}

impl fmt::Debug for SessionSealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSealKey(<redacted>)")
    }
}

impl SessionSealKey {
    fn derive(root: &[u8]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(root);
        // Expanding 32 bytes with SHA-256 cannot fail (the limit is 255 · 32).
        let unbound: UnboundKey = prk
            .expand(&[SESSION_SEAL_INFO], &AES_256_GCM)
            .expect("32-byte HKDF output")
            .into();
        SessionSealKey {
            key: LockedBox::new(LessSafeKey::new(unbound)),
        }
    }

    /// `secret` sealed for the session row `binding` describes.
    pub fn seal(
        &self,
        binding: SessionBinding<'_>,
        secret: &[u8; 32],
    ) -> Result<SealedSeed, KeyError> {
        seal_with(&self.key, &binding.aad(), secret)
    }

    /// The secret sealed for `binding`; [`KeyError::Unseal`] when it was sealed under another
    /// root key, for another row, or tampered with.
    pub fn open(
        &self,
        binding: SessionBinding<'_>,
        sealed: &SealedSeed,
    ) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let plain = open_with(&self.key, &binding.aad(), sealed)?;
        Ok(Zeroizing::new(
            (&plain[..]).try_into().map_err(|_| KeyError::Unseal)?,
        ))
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

    #[test]
    fn a_sealed_session_opens_only_in_its_own_row_under_its_own_root_key() {
        let root = RootKey::from_bytes(&[9u8; 32]).unwrap();
        let key = root.session_seal_key();
        let row = SessionBinding {
            id: "0123456789abcdef0123456789abcdef",
            device: "ws-07",
            recipient: &[5u8; 32],
            not_after: 1_060,
        };
        let sealed = key.seal(row, &[7u8; 32]).unwrap();
        assert_eq!(*key.open(row, &sealed).unwrap(), [7u8; 32]);
        // The row moved to another id, another device, or given more time does not open.
        for moved in [
            SessionBinding {
                id: "fedcba9876543210fedcba9876543210",
                ..row
            },
            SessionBinding {
                device: "ws-08",
                ..row
            },
            SessionBinding {
                recipient: &[6u8; 32],
                ..row
            },
            SessionBinding {
                not_after: 99_999,
                ..row
            },
        ] {
            assert!(matches!(key.open(moved, &sealed), Err(KeyError::Unseal)));
        }
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(matches!(key.open(row, &tampered), Err(KeyError::Unseal)));
        let other = RootKey::from_bytes(&[10u8; 32]).unwrap();
        assert!(other.session_seal_key().open(row, &sealed).is_err());
        // Derived, not the root key: a session secret is no seed, whatever the AAD.
        let as_seed = root
            .seal_seed("shot010", 1, &Seed::generate().unwrap())
            .unwrap();
        assert!(key.open(row, &as_seed).is_err());
        assert!(root.open(&row.aad(), &sealed).is_err());
    }
}
