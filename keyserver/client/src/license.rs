//! Licenses as a device sees them: verification of [`License`]s (the server's Ed25519 signature,
//! or a session license's MAC) and opening one into zeroizing content keys (online, and offline
//! from a file for the mount). Signing is the key server's (`keyserver::license::LicenseSigner`).

use std::path::Path;

use csap_base::keys::ContentKey;
use csap_identity::pki::{HPKE_KEY_FILE, SERVER_KEY_FILE};
use ring::signature::{UnparsedPublicKey, ED25519};

use crate::seal::{HpkeKeyPair, SealError};
use crate::session::SessionSecret;
use crate::wire::{Grant, License, Session, SignedLicense, SignedSession};

/// Domain separation of session signatures from license signatures (same signing key).
const SESSION_SIGNATURE_PREFIX: &[u8] = b"csap/v1/session\n";

/// The bytes a session announcement's signature covers (the signer and every verifier use this).
pub fn session_bytes(session: &Session) -> Vec<u8> {
    let mut bytes = SESSION_SIGNATURE_PREFIX.to_vec();
    bytes.extend(serde_json::to_vec(session).expect("session serializes"));
    bytes
}

#[derive(Debug, thiserror::Error)]
pub enum LicenseError {
    #[error("cannot check the license's validity: {0}")]
    Clock(#[from] csap_base::ClockError),
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

impl LicenseError {
    /// The error for an I/O failure on `path`.
    pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> LicenseError + '_ {
        move |source| LicenseError::Io {
            path: path.display().to_string(),
            source,
        }
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
        let asset_id = csap_base::ids::parse_hex16(&g.asset_id).ok_or_else(bad)?;
        let scope_id = csap_base::ids::parse_hex16(&g.scope_id).ok_or_else(bad)?;
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
    open_offline_at(file, device_dir, csap_base::clock::unix_now()?)
}

/// [`open_offline`] with an explicit clock (unix seconds).
pub fn open_offline_at(
    file: &Path,
    device_dir: &Path,
    now: i64,
) -> Result<OpenedLicense, LicenseError> {
    let text = std::fs::read_to_string(file).map_err(LicenseError::at(file))?;
    let signed: SignedLicense =
        serde_json::from_str(&text).map_err(|e| LicenseError::Parse(e.to_string()))?;
    let key_path = device_dir.join(HPKE_KEY_FILE);
    let keypair = HpkeKeyPair::load(&key_path)?;
    let pub_path = device_dir.join(SERVER_KEY_FILE);
    let server_pub = std::fs::read_to_string(&pub_path).map_err(LicenseError::at(&pub_path))?;
    let opened = open(signed, &keypair, &server_pub)?;
    if now >= opened.license.not_after {
        return Err(LicenseError::Expired(opened.license.not_after));
    }
    Ok(opened)
}
