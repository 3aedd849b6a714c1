//! Licenses: the server's Ed25519 signing key, signing and verification of [`License`]s, and
//! opening a license into zeroizing content keys (online, and offline from a file for the mount).

use std::fmt;
use std::path::Path;

use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use zeroize::Zeroizing;

use crate::keys::ContentKey;
use crate::pki::{HPKE_KEY_FILE, SERVER_KEY_FILE};
use crate::seal::{HpkeKeyPair, SealError};
use crate::wire::{Grant, License, SignedLicense};

#[derive(Debug, thiserror::Error)]
pub enum LicenseError {
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
    verify(&signed, server_public_hex)?;
    let license = signed.license;
    if license.recipient != keypair.public().to_hex() {
        return Err(LicenseError::WrongRecipient);
    }
    let mut grants = Vec::with_capacity(license.grants.len());
    if license.grants.is_empty() {
        return Ok(OpenedLicense { license, grants });
    }
    // One HPKE context for the whole license; grants open in their listed order.
    let enc = hex::decode(&license.enc).map_err(|_| LicenseError::BadEnc)?;
    let mut opener = keypair.opener(&enc)?;
    for g in &license.grants {
        let bad = || LicenseError::BadGrant(g.asset_id.clone());
        let asset_id = parse_id16(&g.asset_id).ok_or_else(bad)?;
        let scope_id = parse_id16(&g.scope_id).ok_or_else(bad)?;
        let sealed = hex::decode(&g.sealed_key).map_err(|_| bad())?;
        let key = opener.open_next(&sealed, &license.license_id, &asset_id)?;
        grants.push(OpenedGrant {
            asset_id,
            scope_id,
            grant: g.clone(),
            key,
        });
    }
    Ok(OpenedLicense { license, grants })
}

/// Opens an admin-issued license file with the device's enrollment directory (its `hpke.key`
/// and the server's `server.pub`). Refuses licenses past their `not_after`.
pub fn open_offline(file: &Path, device_dir: &Path) -> Result<OpenedLicense, LicenseError> {
    open_offline_at(file, device_dir, crate::now())
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
}
