//! License sessions: one HPKE key agreement per device session instead of one per license.
//!
//! # Why
//! A single-key license used to cost four X25519 operations (the device's ephemeral key, the
//! server's encapsulation and its DH, the device's decapsulation) plus an Ed25519 signature and
//! its verification: ~45 % of the CPU in the license benchmark's profile. None of that depends
//! on the license; only on the two parties. A session does it once.
//!
//! # Protocol
//! 1. `POST /v1/sessions` with an ephemeral X25519 public key. The server sets up an HPKE
//!    (RFC 9180) base-mode sender context to that key ([`SESSION_INFO`]) and keeps only the
//!    context's exported 32-byte secret, under a random session id, bound to the device named by
//!    the mTLS certificate, until `not_after`. The answer (id, device, recipient, encapsulated
//!    key, lifetime) is signed with the license-signing key, so the device knows the secret is
//!    shared with the key server and with no one else.
//! 2. A license request names the session. For each license the server derives from the session
//!    secret and the license's fresh random 128-bit id an AES-256-GCM key and an HMAC-SHA256 key
//!    (HKDF-SHA256, salt = license id). Grant i is sealed under the AES key with nonce = i and
//!    AAD = license id ‖ asset id; the HMAC tag over the license body takes the place of the
//!    Ed25519 signature. Both keys are unique per license id, so no nonce repeats under a key.
//!
//! What stays: content keys sealed end to end to a key only the device holds; every license
//! authenticated by the key server; a grant opens only at its own position of its own license
//! for its own asset. What changes: a session license can be verified only by its device (the
//! holder of the secret), not by third parties — admin-issued (offline) licenses therefore stay
//! Ed25519-signed and sealed to the device's long-term key ([`crate::seal`]).

use std::fmt;

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use rand_core::OsRng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::{hkdf, hmac};
use zeroize::Zeroizing;

use crate::seal::{HpkeKeyPair, HpkePublicKey, SealError};
use csap_base::keys::ContentKey;

type Kem = X25519HkdfSha256;

/// HPKE `info` of a session's key agreement (distinct from the per-license format's).
pub const SESSION_INFO: &[u8] = b"csap/v1/license-session";
/// HPKE exporter context of the session secret.
const EXPORT_CONTEXT: &[u8] = b"csap/v1/session-secret";
const AEAD_LABEL: &[u8] = b"csap/v1/session-license/aead";
const MAC_LABEL: &[u8] = b"csap/v1/session-license/mac";

/// The 32-byte secret both ends of a session hold; zeroized on drop, never printed.
pub struct SessionSecret(Zeroizing<[u8; 32]>);

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(<redacted>)")
    }
}

impl SessionSecret {
    /// The server side: one HPKE encapsulation to `recipient`. Returns the encapsulated key to
    /// send and the exported secret to keep.
    pub fn establish(recipient: &HpkePublicKey) -> Result<(Vec<u8>, Self), SealError> {
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient.as_bytes())
            .map_err(|_| SealError::BadPublicKey)?;
        let (enc, ctx) = hpke::setup_sender::<AesGcm256, HkdfSha256, Kem, _>(
            &OpModeS::Base,
            &pk,
            SESSION_INFO,
            &mut OsRng,
        )
        .map_err(|_| SealError::Seal)?;
        let mut secret = Zeroizing::new([0u8; 32]);
        ctx.export(EXPORT_CONTEXT, secret.as_mut())
            .map_err(|_| SealError::Seal)?;
        Ok((enc.to_bytes().to_vec(), SessionSecret(secret)))
    }

    /// The device side: the same secret from the encapsulated key and the session's private key.
    pub fn accept(keypair: &HpkeKeyPair, enc: &[u8]) -> Result<Self, SealError> {
        let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(keypair.secret_bytes())
            .map_err(|_| SealError::Open)?;
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| SealError::Open)?;
        let ctx = hpke::setup_receiver::<AesGcm256, HkdfSha256, Kem>(
            &OpModeR::Base,
            &sk,
            &enc,
            SESSION_INFO,
        )
        .map_err(|_| SealError::Open)?;
        let mut secret = Zeroizing::new([0u8; 32]);
        ctx.export(EXPORT_CONTEXT, secret.as_mut())
            .map_err(|_| SealError::Open)?;
        Ok(SessionSecret(secret))
    }

    /// A secret the server kept sealed in its store, opened again (on another replica, or
    /// after a restart).
    pub fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        SessionSecret(bytes)
    }

    /// The secret itself, for the server to seal it into its store; never for a log or the
    /// wire.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The keys of one license: its grants' AEAD key and its body's MAC key.
    pub fn license_keys(&self, license_id: &str) -> LicenseKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, license_id.as_bytes()).extract(&*self.0);
        // Expanding 32 bytes with SHA-256 cannot fail (the limit is 255 · 32).
        let aead: UnboundKey = prk
            .expand(&[AEAD_LABEL], &AES_256_GCM)
            .expect("32-byte HKDF output")
            .into();
        let mac: hmac::Key = prk
            .expand(&[MAC_LABEL], hmac::HMAC_SHA256)
            .expect("32-byte HKDF output")
            .into();
        LicenseKeys {
            aead: LessSafeKey::new(aead),
            mac,
            license_id: license_id.to_string(),
            next: 0,
        }
    }
}

/// One license's keys within a session. Seals (server) or opens (device) grants in order: the
/// i-th call uses nonce i, so grant order is bound exactly as in the per-license HPKE format.
pub struct LicenseKeys {
    aead: LessSafeKey,
    mac: hmac::Key,
    license_id: String,
    next: u64,
}

impl fmt::Debug for LicenseKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LicenseKeys")
            .field("license_id", &self.license_id)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl LicenseKeys {
    fn nonce_and_aad(&mut self, asset_id: &[u8; 16]) -> (Nonce, Vec<u8>) {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.next.to_be_bytes());
        self.next += 1;
        (
            Nonce::assume_unique_for_key(nonce),
            crate::seal::aad(&self.license_id, asset_id),
        )
    }

    /// Seals the next grant's content key: ciphertext ‖ tag (48 bytes).
    pub fn seal_next(&mut self, key: &ContentKey, asset_id: &[u8; 16]) -> Vec<u8> {
        let (nonce, aad) = self.nonce_and_aad(asset_id);
        let mut buf = key.as_bytes().to_vec();
        // Sealing into a Vec with a 32-byte plaintext cannot fail.
        self.aead
            .seal_in_place_append_tag(nonce, Aad::from(aad), &mut buf)
            .expect("AES-GCM seal of 32 bytes");
        buf
    }

    /// Opens the next grant's content key; every failure is the one opaque [`SealError::Open`].
    pub fn open_next(
        &mut self,
        sealed: &[u8],
        asset_id: &[u8; 16],
    ) -> Result<ContentKey, SealError> {
        let (nonce, aad) = self.nonce_and_aad(asset_id);
        let mut buf = Zeroizing::new(sealed.to_vec());
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| SealError::Open)?;
        let arr: [u8; 32] = (&*plain).try_into().map_err(|_| SealError::Open)?;
        Ok(ContentKey::from_bytes(arr))
    }

    /// The license body's authentication tag.
    pub fn tag(&self, body: &[u8]) -> Vec<u8> {
        hmac::sign(&self.mac, body).as_ref().to_vec()
    }

    /// Constant-time check of a body's tag.
    pub fn verify(&self, body: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.mac, body, tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> ContentKey {
        ContentKey::from_bytes([i; 32])
    }

    #[test]
    fn both_ends_derive_the_same_license_keys() {
        let kp = HpkeKeyPair::generate();
        let (enc, server) = SessionSecret::establish(kp.public()).unwrap();
        let device = SessionSecret::accept(&kp, &enc).unwrap();
        let lic = "1".repeat(32);
        let mut s = server.license_keys(&lic);
        let c1 = s.seal_next(&key(1), &[1u8; 16]);
        let c2 = s.seal_next(&key(2), &[2u8; 16]);
        let tag = s.tag(b"body");
        let mut d = device.license_keys(&lic);
        assert!(d.verify(b"body", &tag));
        assert!(!d.verify(b"bodY", &tag));
        assert_eq!(d.open_next(&c1, &[1u8; 16]).unwrap(), key(1));
        assert_eq!(d.open_next(&c2, &[2u8; 16]).unwrap(), key(2));
    }

    #[test]
    fn grants_open_only_in_their_place_license_and_session() {
        let kp = HpkeKeyPair::generate();
        let (enc, server) = SessionSecret::establish(kp.public()).unwrap();
        let device = SessionSecret::accept(&kp, &enc).unwrap();
        let (lic, other_lic) = ("1".repeat(32), "2".repeat(32));
        let mut s = server.license_keys(&lic);
        let c1 = s.seal_next(&key(1), &[1u8; 16]);
        let c2 = s.seal_next(&key(2), &[2u8; 16]);
        // Reordered.
        let mut d = device.license_keys(&lic);
        assert!(matches!(d.open_next(&c2, &[2u8; 16]), Err(SealError::Open)));
        // Other asset id.
        let mut d = device.license_keys(&lic);
        assert!(matches!(d.open_next(&c1, &[2u8; 16]), Err(SealError::Open)));
        // Moved into another license of the same session.
        let mut d = device.license_keys(&other_lic);
        assert!(matches!(d.open_next(&c1, &[1u8; 16]), Err(SealError::Open)));
        assert!(!d.verify(b"body", &s.tag(b"body")));
        // Another session of the same device key: a different secret.
        let (enc2, _) = SessionSecret::establish(kp.public()).unwrap();
        assert_ne!(enc, enc2);
        let other = SessionSecret::accept(&kp, &enc2).unwrap();
        let mut d = other.license_keys(&lic);
        assert!(matches!(d.open_next(&c1, &[1u8; 16]), Err(SealError::Open)));
        // Another recipient cannot accept the session at all usefully.
        let stranger = HpkeKeyPair::generate();
        let theirs = SessionSecret::accept(&stranger, &enc).unwrap();
        let mut d = theirs.license_keys(&lic);
        assert!(matches!(d.open_next(&c1, &[1u8; 16]), Err(SealError::Open)));
        // Tampering.
        let mut bad = c1.clone();
        bad[3] ^= 1;
        let mut d = device.license_keys(&lic);
        assert!(matches!(
            d.open_next(&bad, &[1u8; 16]),
            Err(SealError::Open)
        ));
    }
}
