//! Licenses: the server's Ed25519 signing key, signing and verification of [`License`]s, and
//! opening a license into zeroizing content keys (online, and offline from a file for the mount).

use std::fmt;
use std::path::Path;

use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use zeroize::Zeroizing;

use crate::keys::ContentKey;
use crate::pki::{HPKE_KEY_FILE, SERVER_KEY_FILE};
use crate::seal::{HpkeKeyPair, SealError};
use crate::session::SessionSecret;
use crate::wire::{Grant, License, Session, SignedLicense, SignedSession};

/// Domain separation of session signatures from license signatures (same signing key).
const SESSION_SIGNATURE_PREFIX: &[u8] = b"csap/v1/session\n";

fn session_bytes(session: &Session) -> Vec<u8> {
    let mut bytes = SESSION_SIGNATURE_PREFIX.to_vec();
    bytes.extend(serde_json::to_vec(session).expect("session serializes"));
    bytes
}

#[derive(Debug, thiserror::Error)]
pub enum LicenseError {
    #[error("cannot check the license's validity: {0}")]
    Clock(#[from] crate::ClockError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("license signing key is malformed")]
    BadSigningKey,
    #[error("license file is not a valid license: {0}")]
    Parse(String),
    #[error("license signature does not verify")]
    BadSignature,
    #[error("license is sealed to another key")]
    WrongRecipient,
    #[error("license expired at {0}")]
    Expired(i64),
    #[error("license encapsulated key is malformed")]
    BadEnc,
    #[error("license grant for {0} is malformed")]
    BadGrant(String),
    #[error("license belongs to another session")]
    WrongSession,
    #[error("license session announcement is not for this device and key")]
    BadSession,
    #[error(transparent)]
    Seal(#[from] SealError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LicenseError + '_ {
    move |source| LicenseError::Io {
        path: path.display().to_string(),
        source,
    }
}

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
            let pkcs8 = Zeroizing::new(std::fs::read(path).map_err(io_err(path))?);
            let kp = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| LicenseError::BadSigningKey)?;
            return Ok(LicenseSigner(kp));
        }
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| LicenseError::BadSigningKey)?;
        let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
        crate::fsutil::write_private(path, &pkcs8).map_err(io_err(path))?;
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

/// Checks the server's signature over a session announcement.
pub fn verify_session(signed: &SignedSession, server_public_hex: &str) -> Result<(), LicenseError> {
    let pk = hex::decode(server_public_hex.trim()).map_err(|_| LicenseError::BadSignature)?;
    let sig = hex::decode(&signed.signature).map_err(|_| LicenseError::BadSignature)?;
    UnparsedPublicKey::new(&ED25519, pk)
        .verify(&session_bytes(&signed.session), &sig)
        .map_err(|_| LicenseError::BadSignature)
}

/// The device's end of an established license session.
#[derive(Debug)]
pub struct DeviceSession {
    pub id: String,
    pub not_after: i64,
    recipient: String,
    secret: SessionSecret,
}

impl DeviceSession {
    /// Accepts a signed session announcement made for `device` and `keypair`.
    pub fn accept(
        signed: &SignedSession,
        keypair: &HpkeKeyPair,
        device: &str,
        server_public_hex: &str,
    ) -> Result<Self, LicenseError> {
        verify_session(signed, server_public_hex)?;
        let s = &signed.session;
        let recipient = keypair.public().to_hex();
        if s.recipient != recipient || s.device != device {
            return Err(LicenseError::BadSession);
        }
        let enc = hex::decode(&s.enc).map_err(|_| LicenseError::BadEnc)?;
        Ok(DeviceSession {
            id: s.session_id.clone(),
            not_after: s.not_after,
            recipient,
            secret: SessionSecret::accept(keypair, &enc)?,
        })
    }
}

/// Checks the server's signature over the license body.
pub fn verify(signed: &SignedLicense, server_public_hex: &str) -> Result<(), LicenseError> {
    let pk = hex::decode(server_public_hex.trim()).map_err(|_| LicenseError::BadSignature)?;
    let sig = hex::decode(&signed.signature).map_err(|_| LicenseError::BadSignature)?;
    let bytes =
        serde_json::to_vec(&signed.license).map_err(|e| LicenseError::Parse(e.to_string()))?;
    UnparsedPublicKey::new(&ED25519, pk)
        .verify(&bytes, &sig)
        .map_err(|_| LicenseError::BadSignature)
}

/// One granted asset with its opened content key.
#[derive(Debug)]
pub struct OpenedGrant {
    pub asset_id: [u8; 16],
    pub scope_id: [u8; 16],
    pub grant: Grant,
    pub key: ContentKey,
}

/// A verified license with its keys opened. Keys zeroize when this is dropped.
#[derive(Debug)]
pub struct OpenedLicense {
    pub license: License,
    pub grants: Vec<OpenedGrant>,
}

impl OpenedLicense {
    pub fn key_for(&self, asset_id: &[u8; 16]) -> Option<&ContentKey> {
        self.grants
            .iter()
            .find(|g| &g.asset_id == asset_id)
            .map(|g| &g.key)
    }
}

pub(crate) fn parse_id16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

/// Verifies `signed` against the server key and opens every grant with `keypair`.
pub fn open(
    signed: SignedLicense,
    keypair: &HpkeKeyPair,
    server_public_hex: &str,
) -> Result<OpenedLicense, LicenseError> {
    if signed.license.session.is_some() {
        // A session license carries a MAC, not a signature: only `open_in_session` opens it.
        return Err(LicenseError::BadSignature);
    }
    verify(&signed, server_public_hex)?;
    let license = signed.license;
    if license.recipient != keypair.public().to_hex() {
        return Err(LicenseError::WrongRecipient);
    }
    if license.grants.is_empty() {
        return Ok(OpenedLicense {
            license,
            grants: Vec::new(),
        });
    }
    // One HPKE context for the whole license; grants open in their listed order.
    let enc = hex::decode(&license.enc).map_err(|_| LicenseError::BadEnc)?;
    let mut opener = keypair.opener(&enc)?;
    let license_id = license.license_id.clone();
    open_grants(license, |sealed, asset_id| {
        opener.open_next(sealed, &license_id, asset_id)
    })
}

/// Verifies a session license's MAC and opens every grant with the session's keys.
pub fn open_in_session(
    signed: SignedLicense,
    session: &DeviceSession,
) -> Result<OpenedLicense, LicenseError> {
    let license = signed.license;
    if license.session.as_deref() != Some(session.id.as_str()) {
        return Err(LicenseError::WrongSession);
    }
    let mut keys = session.secret.license_keys(&license.license_id);
    let tag = hex::decode(&signed.signature).map_err(|_| LicenseError::BadSignature)?;
    let bytes = serde_json::to_vec(&license).map_err(|e| LicenseError::Parse(e.to_string()))?;
    if !keys.verify(&bytes, &tag) {
        return Err(LicenseError::BadSignature);
    }
    if license.recipient != session.recipient {
        return Err(LicenseError::WrongRecipient);
    }
    open_grants(license, |sealed, asset_id| keys.open_next(sealed, asset_id))
}

/// Decodes each grant and opens its key with `open` (called in grant order).
fn open_grants(
    license: License,
    mut open: impl FnMut(&[u8], &[u8; 16]) -> Result<ContentKey, SealError>,
) -> Result<OpenedLicense, LicenseError> {
    let mut grants = Vec::with_capacity(license.grants.len());
    for g in &license.grants {
        let bad = || LicenseError::BadGrant(g.asset_id.clone());
        let asset_id = parse_id16(&g.asset_id).ok_or_else(bad)?;
        let scope_id = parse_id16(&g.scope_id).ok_or_else(bad)?;
        let sealed = hex::decode(&g.sealed_key).map_err(|_| bad())?;
        grants.push(OpenedGrant {
            key: open(&sealed, &asset_id)?,
            asset_id,
            scope_id,
            grant: g.clone(),
        });
    }
    Ok(OpenedLicense { license, grants })
}

/// Opens an admin-issued license file with the device's enrollment directory (its `hpke.key`
/// and the server's `server.pub`). Refuses licenses past their `not_after`.
pub fn open_offline(file: &Path, device_dir: &Path) -> Result<OpenedLicense, LicenseError> {
    open_offline_at(file, device_dir, crate::now()?)
}

/// [`open_offline`] with an explicit clock (unix seconds).
pub fn open_offline_at(
    file: &Path,
    device_dir: &Path,
    now: i64,
) -> Result<OpenedLicense, LicenseError> {
    let text = std::fs::read_to_string(file).map_err(io_err(file))?;
    let signed: SignedLicense =
        serde_json::from_str(&text).map_err(|e| LicenseError::Parse(e.to_string()))?;
    let key_path = device_dir.join(HPKE_KEY_FILE);
    let keypair = HpkeKeyPair::load(&key_path)?;
    let pub_path = device_dir.join(SERVER_KEY_FILE);
    let server_pub = std::fs::read_to_string(&pub_path).map_err(io_err(&pub_path))?;
    let opened = open(signed, &keypair, &server_pub)?;
    if now >= opened.license.not_after {
        return Err(LicenseError::Expired(opened.license.not_after));
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::LicenseSealer;
    use crate::wire::Action;

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
