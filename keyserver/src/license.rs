//! Licenses, the server's half: the Ed25519 license-signing key that signs [`License`]s and
//! session announcements. Verifying and opening a license (what a device does) is the client
//! crate's ([`keyserver_client::license`], re-exported here).

use std::fmt;
use std::path::Path;

use ring::signature::{Ed25519KeyPair, KeyPair as _};
use zeroize::Zeroizing;

pub use keyserver_client::license::*;

use crate::wire::{License, Session, SignedLicense, SignedSession};

/// An asset or scope id from its 32 hex characters (`csap-base`'s one parser).
pub(crate) use csap_base::ids::parse_hex16 as parse_id16;

/// The key server's license-signing key (PKCS#8 Ed25519 in `license.key`, 0600).
pub struct LicenseSigner(Ed25519KeyPair);

impl fmt::Debug for LicenseSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LicenseSigner(<redacted>)")
    }
}

impl LicenseSigner {
    pub fn load_or_create(path: &Path) -> Result<Self, LicenseError> {
        if path.exists() {
            let pkcs8 = Zeroizing::new(std::fs::read(path).map_err(LicenseError::at(path))?);
            let kp = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| LicenseError::BadSigningKey)?;
            return Ok(LicenseSigner(kp));
        }
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| LicenseError::BadSigningKey)?;
        let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
        crate::fsutil::write_private(path, &pkcs8).map_err(LicenseError::at(path))?;
        let kp = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| LicenseError::BadSigningKey)?;
        Ok(LicenseSigner(kp))
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.0.public_key().as_ref())
    }

    pub fn sign(&self, license: License) -> SignedLicense {
        let bytes = serde_json::to_vec(&license).expect("license serializes");
        let signature = hex::encode(self.0.sign(&bytes).as_ref());
        SignedLicense { license, signature }
    }

    pub fn sign_session(&self, session: Session) -> SignedSession {
        let signature = hex::encode(self.0.sign(&session_bytes(&session)).as_ref());
        SignedSession { session, signature }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ContentKey;
    use crate::seal::{HpkeKeyPair, LicenseSealer, SealError};
    use crate::wire::{Action, Grant};

    /// A license with one grant per asset id, sealed in one context to `kp` and signed.
    fn build(
        signer: &LicenseSigner,
        kp: &HpkeKeyPair,
        license_id: &str,
        assets: &[[u8; 16]],
    ) -> SignedLicense {
        let mut sealer = LicenseSealer::new(kp.public()).unwrap();
        let grants = assets
            .iter()
            .map(|a| {
                let key = ContentKey::from_bytes([a[0]; 32]);
                Grant {
                    asset_id: hex::encode(a),
                    path: format!("show/{}", a[0]),
                    scope: "s".into(),
                    scope_id: hex::encode([7u8; 16]),
                    key_version: 1,
                    rule_ids: vec!["r".into()],
                    not_after: 2_000_000_000,
                    sealed_key: hex::encode(sealer.seal_next(&key, license_id, a).unwrap()),
                    generation: 0,
                    pending_generation: None,
                }
            })
            .collect();
        signer.sign(License {
            license_id: license_id.into(),
            issued_at: 1_700_000_000,
            not_after: 2_000_000_000,
            user: "alice".into(),
            device: "ws-07".into(),
            app_digest: "00".repeat(32),
            action: Action::Read,
            recipient: kp.public().to_hex(),
            enc: hex::encode(sealer.enc()),
            grants,
            denials: Vec::new(),
            break_glass: false,
            session: None,
        })
    }

    fn not_opening(r: Result<OpenedLicense, LicenseError>) -> bool {
        matches!(r, Err(LicenseError::Seal(SealError::Open)))
    }

    /// The signature already covers grant order; this checks the sealing binds it on its own:
    /// even a license re-signed by the server's own key does not open a reordered or
    /// transplanted grant.
    #[test]
    fn reordered_or_moved_grants_fail_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let signer = LicenseSigner::load_or_create(&dir.path().join("license.key")).unwrap();
        let pk = signer.public_hex();
        let kp = HpkeKeyPair::generate();
        let (a, b, c) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        let lic1 = build(&signer, &kp, &"1".repeat(32), &[a, b]);
        let opened = open(lic1.clone(), &kp, &pk).unwrap();
        assert_eq!(opened.key_for(&a), Some(&ContentKey::from_bytes([1u8; 32])));
        assert_eq!(opened.key_for(&b), Some(&ContentKey::from_bytes([2u8; 32])));

        // Reordered grants, re-signed.
        let mut body = lic1.license.clone();
        body.grants.swap(0, 1);
        assert!(not_opening(open(signer.sign(body), &kp, &pk)));

        // Grant b moved into another license (same recipient, same position), re-signed.
        let lic2 = build(&signer, &kp, &"2".repeat(32), &[c, c]);
        let mut body = lic2.license.clone();
        body.grants[1] = lic1.license.grants[1].clone();
        assert!(not_opening(open(signer.sign(body), &kp, &pk)));
        // ... or with the other license's encapsulated key taken along, under its own id.
        let mut body = lic1.license.clone();
        body.license_id = lic2.license.license_id.clone();
        assert!(not_opening(open(signer.sign(body), &kp, &pk)));

        // Unsigned tampering never gets as far as the seal.
        let mut forged = lic1.clone();
        forged.license.grants.swap(0, 1);
        assert!(matches!(
            open(forged, &kp, &pk),
            Err(LicenseError::BadSignature)
        ));
        // A grant dropped from the front shifts every later one: it fails too.
        let mut body = lic1.license.clone();
        body.grants.remove(0);
        assert!(not_opening(open(signer.sign(body), &kp, &pk)));
    }
    #[test]
    fn session_licenses_open_only_untampered_and_in_their_session() {
        use crate::session::SessionSecret;
        use crate::wire::Session;
        let dir = tempfile::tempdir().unwrap();
        let signer = LicenseSigner::load_or_create(&dir.path().join("license.key")).unwrap();
        let pk = signer.public_hex();
        let kp = HpkeKeyPair::generate();
        let (enc, server_secret) = SessionSecret::establish(kp.public()).unwrap();
        let announce = |device: &str| {
            signer.sign_session(Session {
                session_id: "s1".into(),
                device: device.into(),
                recipient: kp.public().to_hex(),
                enc: hex::encode(&enc),
                issued_at: 1_700_000_000,
                not_after: 1_700_003_600,
            })
        };
        // Announcements: for this device and key only, and signed.
        assert!(matches!(
            DeviceSession::accept(&announce("ws-08"), &kp, "ws-07", &pk),
            Err(LicenseError::BadSession)
        ));
        let mut forged = announce("ws-07");
        forged.session.not_after += 1;
        assert!(matches!(
            DeviceSession::accept(&forged, &kp, "ws-07", &pk),
            Err(LicenseError::BadSignature)
        ));
        let session = DeviceSession::accept(&announce("ws-07"), &kp, "ws-07", &pk).unwrap();

        let license_id = "1".repeat(32);
        let mut keys = server_secret.license_keys(&license_id);
        let a = [1u8; 16];
        let body = License {
            license_id: license_id.clone(),
            issued_at: 1_700_000_000,
            not_after: 1_700_000_900,
            user: "alice".into(),
            device: "ws-07".into(),
            app_digest: "00".repeat(32),
            action: Action::Read,
            recipient: kp.public().to_hex(),
            enc: String::new(),
            grants: vec![Grant {
                asset_id: hex::encode(a),
                path: "show/1".into(),
                scope: "s".into(),
                scope_id: hex::encode([7u8; 16]),
                key_version: 1,
                rule_ids: vec!["r".into()],
                not_after: 1_700_000_900,
                sealed_key: hex::encode(keys.seal_next(&ContentKey::from_bytes([9u8; 32]), &a)),
                generation: 0,
                pending_generation: None,
            }],
            denials: Vec::new(),
            break_glass: false,
            session: Some("s1".into()),
        };
        let mac = |l: &License| SignedLicense {
            license: l.clone(),
            signature: hex::encode(keys.tag(&serde_json::to_vec(l).unwrap())),
        };
        let good = mac(&body);
        let opened = open_in_session(good.clone(), &session).unwrap();
        assert_eq!(opened.key_for(&a), Some(&ContentKey::from_bytes([9u8; 32])));

        // A lengthened validity or a widened path without the MAC key: refused.
        let mut t = good.clone();
        t.license.not_after += 3600;
        assert!(matches!(
            open_in_session(t, &session),
            Err(LicenseError::BadSignature)
        ));
        let mut t = good.clone();
        t.license.grants[0].path = "show/2".into();
        assert!(matches!(
            open_in_session(t, &session),
            Err(LicenseError::BadSignature)
        ));
        // Another session's license, or a session license given to the signature path.
        let mut other = body.clone();
        other.session = Some("s2".into());
        assert!(matches!(
            open_in_session(mac(&other), &session),
            Err(LicenseError::WrongSession)
        ));
        assert!(matches!(
            open(good, &kp, &pk),
            Err(LicenseError::BadSignature)
        ));
    }
}
