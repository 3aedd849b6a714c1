//! HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256) + HKDF-SHA256 + AES-256-GCM: wraps the
//! content keys of one license to a recipient's X25519 public key.
//!
//! # One HPKE context per license
//!
//! A license sets up ONE HPKE context ([`LicenseSealer`]) with the recipient's public key; its
//! encapsulated key travels once, in the license body (`License::enc`). Each granted content key
//! is then sealed with the context's sequence-numbered AEAD (RFC 9180 §5.2: the nonce is
//! `base_nonce XOR seq`), AAD = license id ‖ asset id, in grant order; the recipient
//! ([`LicenseOpener`]) opens the grants in the same order. A batch of n keys thus costs two
//! X25519 operations on each side instead of 2·n (a 1,000-key license went from ~2,000 scalar
//! multiplications to 2 plus 1,000 AES-GCM seals).
//!
//! Why the sequence-numbered AEAD rather than per-grant keys from the HPKE export interface:
//! it is the standard HPKE message API (no AEAD code of our own on top of an exporter secret),
//! and its ordering property is exactly what we want — the signed license fixes the grant order,
//! and grant i only opens as the i-th message of its own context. A grant moved to another
//! position fails (wrong nonce), and so does a grant moved into another license (different
//! context, and the license id is in the AAD); an asset id swapped between grants fails on the
//! AAD. The cost is that a recipient must open grants in order, which it does anyway: a license
//! is opened as a whole ([`crate::license::open`]).

use std::fmt;
use std::path::Path;

use hpke::aead::AesGcm256;
use hpke::aead::{AeadCtxR, AeadCtxS};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_core::OsRng;
use zeroize::Zeroizing;

use csap_base::keys::ContentKey;

type Kem = X25519HkdfSha256;

/// HPKE `info` for license key wrapping. Differs from the earlier one-context-per-grant format
/// ("csap/v1/license"), so a key sealed under one format can never open under the other.
const INFO: &[u8] = b"csap/v2/license-context";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("malformed X25519 public key")]
    BadPublicKey,
    #[error("malformed X25519 private key")]
    BadPrivateKey,
    #[error("sealing failed")]
    Seal,
    /// Every opening failure (wrong key, tampered data, malformed fields) is this one error.
    #[error("license key failed to open")]
    Open,
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// An X25519 public key (32 bytes) for HPKE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HpkePublicKey([u8; 32]);

impl HpkePublicKey {
    pub fn from_hex(s: &str) -> Result<Self, SealError> {
        let v = hex::decode(s).map_err(|_| SealError::BadPublicKey)?;
        let arr: [u8; 32] = v.try_into().map_err(|_| SealError::BadPublicKey)?;
        // Reject what hpke rejects (it accepts any 32 bytes today, but keep the check here).
        <Kem as hpke::Kem>::PublicKey::from_bytes(&arr).map_err(|_| SealError::BadPublicKey)?;
        Ok(HpkePublicKey(arr))
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// An X25519 private key for HPKE; zeroized on drop, redacted in Debug.
pub struct HpkeKeyPair {
    secret: Zeroizing<[u8; 32]>,
    public: HpkePublicKey,
}

impl fmt::Debug for HpkeKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HpkeKeyPair")
            .field("public", &self.public)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl HpkeKeyPair {
    pub fn generate() -> Self {
        let (sk, pk) = Kem::gen_keypair(&mut OsRng);
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&sk.to_bytes());
        let mut public = [0u8; 32];
        public.copy_from_slice(&pk.to_bytes());
        HpkeKeyPair {
            secret,
            public: HpkePublicKey(public),
        }
    }

    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .map_err(|_| SealError::BadPrivateKey)?;
        let pk = Kem::sk_to_pk(&sk);
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(bytes);
        let mut public = [0u8; 32];
        public.copy_from_slice(&pk.to_bytes());
        Ok(HpkeKeyPair {
            secret,
            public: HpkePublicKey(public),
        })
    }

    pub fn public(&self) -> &HpkePublicKey {
        &self.public
    }

    pub(crate) fn secret_bytes(&self) -> &[u8] {
        self.secret.as_ref()
    }

    /// Loads a hex private key file (as written by [`HpkeKeyPair::save`]).
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| SealError::Io {
                    path: path.display().to_string(),
                    source,
                })?,
            );
        let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| SealError::BadPrivateKey)?);
        Self::from_secret_bytes(&bytes)
    }

    /// Writes the private key as hex, mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), SealError> {
        let text = Zeroizing::new(hex::encode(self.secret.as_ref()));
        csap_base::files::write_secret(path, text.as_bytes()).map_err(|source| SealError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Sets up the receiving side of a license's HPKE context from its encapsulated key.
    pub fn opener(&self, enc: &[u8]) -> Result<LicenseOpener, SealError> {
        let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(self.secret.as_ref())
            .map_err(|_| SealError::Open)?;
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| SealError::Open)?;
        let ctx =
            hpke::setup_receiver::<AesGcm256, HkdfSha256, Kem>(&OpModeR::Base, &sk, &enc, INFO)
                .map_err(|_| SealError::Open)?;
        Ok(LicenseOpener { ctx })
    }
}

/// A grant's AAD: license id ‖ asset id (both key-wrapping formats bind a grant this way).
pub(crate) fn aad(license_id: &str, asset_id: &[u8; 16]) -> Vec<u8> {
    let mut v = Vec::with_capacity(license_id.len() + 16);
    v.extend_from_slice(license_id.as_bytes());
    v.extend_from_slice(asset_id);
    v
}

/// The sending side of one license's HPKE context: seals content keys in grant order.
pub struct LicenseSealer {
    enc: Vec<u8>,
    ctx: AeadCtxS<AesGcm256, HkdfSha256, Kem>,
}

impl fmt::Debug for LicenseSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LicenseSealer")
            .field("enc", &hex::encode(&self.enc))
            .field("ctx", &"<redacted>")
            .finish()
    }
}

impl LicenseSealer {
    /// One X25519 encapsulation to `recipient` (fresh ephemeral key from the OS RNG).
    pub fn new(recipient: &HpkePublicKey) -> Result<Self, SealError> {
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&recipient.0)
            .map_err(|_| SealError::BadPublicKey)?;
        let (enc, ctx) = hpke::setup_sender::<AesGcm256, HkdfSha256, Kem, _>(
            &OpModeS::Base,
            &pk,
            INFO,
            &mut OsRng,
        )
        .map_err(|_| SealError::Seal)?;
        Ok(LicenseSealer {
            enc: enc.to_bytes().to_vec(),
            ctx,
        })
    }

    /// The encapsulated key, sent once per license.
    pub fn enc(&self) -> &[u8] {
        &self.enc
    }

    /// Seals the next grant's key (ciphertext ‖ tag). Call in the order the grants are listed.
    pub fn seal_next(
        &mut self,
        key: &ContentKey,
        license_id: &str,
        asset_id: &[u8; 16],
    ) -> Result<Vec<u8>, SealError> {
        self.ctx
            .seal(key.as_bytes(), &aad(license_id, asset_id))
            .map_err(|_| SealError::Seal)
    }
}

/// The receiving side of one license's HPKE context: opens content keys in grant order.
pub struct LicenseOpener {
    ctx: AeadCtxR<AesGcm256, HkdfSha256, Kem>,
}

impl fmt::Debug for LicenseOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LicenseOpener(<redacted>)")
    }
}

impl LicenseOpener {
    /// Opens the next grant's key. Any failure (wrong position, license, asset or recipient,
    /// tampering) is the one opaque [`SealError::Open`].
    pub fn open_next(
        &mut self,
        sealed: &[u8],
        license_id: &str,
        asset_id: &[u8; 16],
    ) -> Result<ContentKey, SealError> {
        let plain = Zeroizing::new(
            self.ctx
                .open(sealed, &aad(license_id, asset_id))
                .map_err(|_| SealError::Open)?,
        );
        let arr: [u8; 32] = plain.as_slice().try_into().map_err(|_| SealError::Open)?;
        Ok(ContentKey::from_bytes(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> ContentKey {
        ContentKey::from_bytes([i; 32])
    }

    #[test]
    fn seal_open_roundtrip_and_binding() {
        let kp = HpkeKeyPair::generate();
        let mut s = LicenseSealer::new(kp.public()).unwrap();
        let c1 = s.seal_next(&key(5), "lic-1", &[1u8; 16]).unwrap();
        let c2 = s.seal_next(&key(6), "lic-1", &[2u8; 16]).unwrap();
        let mut o = kp.opener(s.enc()).unwrap();
        assert_eq!(o.open_next(&c1, "lic-1", &[1u8; 16]).unwrap(), key(5));
        assert_eq!(o.open_next(&c2, "lic-1", &[2u8; 16]).unwrap(), key(6));
        // Wrong license id, asset id, recipient or a flipped bit: one opaque error.
        let first = |kp: &HpkeKeyPair, ct: &[u8], lic: &str, asset: &[u8; 16]| {
            kp.opener(s.enc()).unwrap().open_next(ct, lic, asset)
        };
        assert!(first(&kp, &c1, "lic-1", &[1u8; 16]).is_ok());
        assert!(matches!(
            first(&kp, &c1, "lic-2", &[1u8; 16]),
            Err(SealError::Open)
        ));
        assert!(matches!(
            first(&kp, &c1, "lic-1", &[2u8; 16]),
            Err(SealError::Open)
        ));
        let other = HpkeKeyPair::generate();
        assert!(matches!(
            first(&other, &c1, "lic-1", &[1u8; 16]),
            Err(SealError::Open)
        ));
        let mut bad = c1.clone();
        bad[0] ^= 1;
        assert!(matches!(
            first(&kp, &bad, "lic-1", &[1u8; 16]),
            Err(SealError::Open)
        ));
        assert!(matches!(kp.opener(&[0u8; 5]), Err(SealError::Open)));
    }

    #[test]
    fn grants_open_only_in_their_own_position_and_context() {
        let kp = HpkeKeyPair::generate();
        let mut s = LicenseSealer::new(kp.public()).unwrap();
        let c1 = s.seal_next(&key(1), "lic-1", &[1u8; 16]).unwrap();
        let c2 = s.seal_next(&key(2), "lic-1", &[2u8; 16]).unwrap();
        // Second grant presented first (a reordered license): sequence 0 does not open it.
        let mut o = kp.opener(s.enc()).unwrap();
        assert!(matches!(
            o.open_next(&c2, "lic-1", &[2u8; 16]),
            Err(SealError::Open)
        ));
        // A grant moved into another context (another license to the same recipient), even
        // at the same position and with the same license id: it does not open.
        let mut s2 = LicenseSealer::new(kp.public()).unwrap();
        let _ = s2.seal_next(&key(9), "lic-1", &[1u8; 16]).unwrap();
        assert_ne!(s2.enc(), s.enc());
        let mut o2 = kp.opener(s2.enc()).unwrap();
        assert!(matches!(
            o2.open_next(&c1, "lic-1", &[1u8; 16]),
            Err(SealError::Open)
        ));
    }

    #[test]
    fn keypair_save_load() {
        let dir = tempfile::tempdir().unwrap();
        let kp = HpkeKeyPair::generate();
        let p = dir.path().join("hpke.key");
        kp.save(&p).unwrap();
        let back = HpkeKeyPair::load(&p).unwrap();
        assert_eq!(back.public(), kp.public());
        assert_eq!(
            HpkePublicKey::from_hex(&kp.public().to_hex()).unwrap(),
            *kp.public()
        );
    }
}
