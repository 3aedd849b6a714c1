//! Authorization rules: the signed envelope around one Cedar policy, and the issuer's Ed25519 keys.
//!
//! A rule's signature covers the *canonical JSON* of the [`Rule`]: `serde_json::to_vec(&rule)`,
//! fields in declaration order, no whitespace. Verifiers recompute those bytes from the parsed
//! struct, so the wire text may be re-serialized freely without breaking signatures.

use std::fmt;
use std::path::Path;

use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// One authorization rule for one or more PEPs. Rules only permit (CSAP is deny-by-default).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Unique id, `r-<request id>-<n>`.
    pub id: String,
    /// Name of the authz instance that issued (and signed) the rule.
    pub issuer: String,
    /// The authorization policy request this rule was generated from.
    pub request_id: String,
    /// PEP ids: `"keyserver"` or `"mount:<device name>"`.
    pub targets: Vec<String>,
    /// Unix seconds; the rule applies when `not_before <= now < not_after`.
    pub not_before: i64,
    pub not_after: i64,
    /// Cedar policy text (a single `permit`).
    pub policy: String,
    /// On a production *delegation rule*: the organization it delegates authorization to. Its
    /// policy bounds (assets, actions, applications, devices, window) what that organization's
    /// own rules may grant, with the organization as principal; it grants nothing by itself.
    /// Absent from the signed bytes when `None`, so rules issued before delegation verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegates_to: Option<String>,
    /// On an *organization-issued* rule: the id of the production delegation rule it lives
    /// under. It grants only what both it and that delegation permit, and only while the
    /// delegation is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegated_by: Option<String>,
}

impl Rule {
    /// The exact bytes the issuer signs.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serializing a struct of strings/ints/Vec<String> cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether the rule's window covers `now`.
    pub fn in_window(&self, now: i64) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// A rule with its issuer's Ed25519 signature (128 lowercase hex chars).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SignedRule {
    pub rule: Rule,
    pub signature: String,
}

/// Errors of signing, verifying and key handling.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("signature verification failed")]
    BadSignature,
    #[error("malformed signature: expected 128 hex characters")]
    MalformedSignature,
    #[error("malformed public key: expected 64 hex characters of an Ed25519 point")]
    MalformedPublicKey,
    #[error("malformed issuer key file {path}: expected 64 hex characters")]
    MalformedKeyFile { path: String },
    #[error("issuer key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("random number generator failed: {0}")]
    Rng(String),
}

/// The issuer's Ed25519 signing key. Zeroized on drop; `Debug` never shows the secret.
pub struct IssuerKey(ed25519_dalek::SigningKey);

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKey")
            .field("public", &self.public().to_hex())
            .finish_non_exhaustive()
    }
}

impl IssuerKey {
    /// A fresh random key from the OS RNG.
    pub fn generate() -> Result<Self, RuleError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(|e| RuleError::Rng(e.to_string()))?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Deterministic key from a 32-byte seed (tests and synthetic data only).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// Reads a key saved by [`IssuerKey::save`] (64 hex chars of the seed).
    pub fn load(path: &Path) -> Result<Self, RuleError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| RuleError::Io {
                    path: path.display().to_string(),
                    source,
                })?,
            );
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), seed.as_mut()).map_err(|_| {
            RuleError::MalformedKeyFile {
                path: path.display().to_string(),
            }
        })?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Writes the seed as hex to a new secret file (0600); refuses to replace an existing one.
    pub fn save(&self, path: &Path) -> Result<(), RuleError> {
        let text = Zeroizing::new(format!("{}\n", hex::encode(self.0.to_bytes())));
        csap_base::files::create_secret(path, text.as_bytes()).map_err(|source| RuleError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Loads the key at `path`, or generates and saves one if the file does not exist.
    pub fn load_or_generate(path: &Path) -> Result<Self, RuleError> {
        if path.exists() {
            Self::load(path)
        } else {
            let key = Self::generate()?;
            key.save(path)?;
            Ok(key)
        }
    }

    pub fn public(&self) -> IssuerPublicKey {
        IssuerPublicKey(self.0.verifying_key())
    }

    /// Signs arbitrary bytes; used for rules and revocations.
    pub(crate) fn sign_bytes(&self, msg: &[u8]) -> String {
        hex::encode(self.0.sign(msg).to_bytes())
    }
}

/// The issuer's public key; ARDS and PEPs hold it to verify rules and revocations.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IssuerPublicKey(ed25519_dalek::VerifyingKey);

impl fmt::Debug for IssuerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerPublicKey({})", self.to_hex())
    }
}

impl fmt::Display for IssuerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl IssuerPublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    pub fn from_hex(s: &str) -> Result<Self, RuleError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut bytes).map_err(|_| RuleError::MalformedPublicKey)?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| RuleError::MalformedPublicKey)
    }

    /// Checks a rule's signature against its canonical bytes.
    pub fn verify(&self, signed: &SignedRule) -> Result<(), RuleError> {
        self.verify_bytes(&signed.rule.canonical_bytes(), &signed.signature)
    }

    /// Checks a revocation's signature.
    pub fn verify_revocation(&self, revocation: &Revocation) -> Result<(), RuleError> {
        self.verify_bytes(&revocation.canonical_bytes(), &revocation.signature)
    }

    pub(crate) fn verify_bytes(&self, msg: &[u8], signature_hex: &str) -> Result<(), RuleError> {
        let mut sig = [0u8; 64];
        hex::decode_to_slice(signature_hex, &mut sig).map_err(|_| RuleError::MalformedSignature)?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig);
        // verify_strict rejects weak keys and malleable signatures.
        self.0
            .verify_strict(msg, &sig)
            .map_err(|_| RuleError::BadSignature)
    }
}

/// Signs a rule with the issuer key.
pub fn sign(rule: Rule, key: &IssuerKey) -> SignedRule {
    let signature = key.sign_bytes(&rule.canonical_bytes());
    SignedRule { rule, signature }
}

/// Body of `POST {ards}/v1/revoke`: withdraws one rule, signed by the rule's issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub rule_id: String,
    pub issuer: String,
    pub reason: String,
    /// Unix seconds.
    pub revoked_at: i64,
    /// Hex Ed25519 signature over [`Revocation::canonical_bytes`].
    pub signature: String,
}

/// The signed part of a revocation, in this field order.
#[derive(Serialize)]
struct RevocationBody<'a> {
    rule_id: &'a str,
    issuer: &'a str,
    reason: &'a str,
    revoked_at: i64,
}

impl Revocation {
    /// Creates and signs a revocation.
    pub fn sign(
        rule_id: impl Into<String>,
        issuer: impl Into<String>,
        reason: impl Into<String>,
        revoked_at: i64,
        key: &IssuerKey,
    ) -> Self {
        let mut r = Revocation {
            rule_id: rule_id.into(),
            issuer: issuer.into(),
            reason: reason.into(),
            revoked_at,
            signature: String::new(),
        };
        r.signature = key.sign_bytes(&r.canonical_bytes());
        r
    }

    /// Canonical JSON of `{rule_id, issuer, reason, revoked_at}`: the signed bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&RevocationBody {
            rule_id: &self.rule_id,
            issuer: &self.issuer,
            reason: &self.reason,
            revoked_at: self.revoked_at,
        })
        .unwrap_or_default()
    }

    pub fn verify(&self, key: &IssuerPublicKey) -> Result<(), RuleError> {
        key.verify_revocation(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Rule {
        Rule {
            delegates_to: None,
            delegated_by: None,
            id: "r-req-1-1".into(),
            issuer: "authz".into(),
            request_id: "req-1".into(),
            targets: vec!["keyserver".into()],
            not_before: 10,
            not_after: 20,
            policy: "permit(principal, action, resource);".into(),
        }
    }

    #[test]
    fn sign_then_verify_roundtrips_through_json() {
        let key = IssuerKey::from_seed([7; 32]);
        let signed = sign(rule(), &key);
        let text = serde_json::to_string_pretty(&signed).unwrap();
        let back: SignedRule = serde_json::from_str(&text).unwrap();
        assert_eq!(back, signed, "the JSON round trip changed the rule");
        key.public().verify(&back).unwrap();
    }

    #[test]
    fn tampered_rule_fails_verify() {
        let key = IssuerKey::from_seed([7; 32]);
        let mut signed = sign(rule(), &key);
        signed.rule.not_after = 1_000_000;
        assert!(matches!(
            key.public().verify(&signed),
            Err(RuleError::BadSignature)
        ));
    }

    #[test]
    fn the_delegation_fields_are_signed_and_absent_ones_leave_old_bytes_alone() {
        let key = IssuerKey::from_seed([7; 32]);
        let old = rule().canonical_bytes();
        assert!(
            !String::from_utf8_lossy(&old).contains("delegat"),
            "a rule without delegation signs the bytes it signed before delegation existed"
        );
        let mut org_rule = rule();
        org_rule.delegated_by = Some("d-1".into());
        let signed = sign(org_rule, &key);
        key.public().verify(&signed).unwrap();
        // Stripped, it would pass for a production rule; moved, it would claim another
        // delegation; turned into a delegation, it would bound others: each breaks the signature.
        let mut stripped = signed.clone();
        stripped.rule.delegated_by = None;
        let mut moved = signed.clone();
        moved.rule.delegated_by = Some("d-2".into());
        let mut promoted = signed;
        promoted.rule.delegates_to = Some("acme-post".into());
        for tampered in [stripped, moved, promoted] {
            assert!(matches!(
                key.public().verify(&tampered),
                Err(RuleError::BadSignature)
            ));
        }
    }

    #[test]
    fn tampered_signature_fails_verify() {
        let key = IssuerKey::from_seed([7; 32]);
        let mut signed = sign(rule(), &key);
        let flipped = if signed.signature.starts_with('0') {
            "1"
        } else {
            "0"
        };
        signed.signature.replace_range(0..1, flipped);
        assert!(key.public().verify(&signed).is_err());
        signed.signature = "zz".into();
        assert!(matches!(
            key.public().verify(&signed),
            Err(RuleError::MalformedSignature)
        ));
    }

    #[test]
    fn other_issuer_key_fails_verify() {
        let signed = sign(rule(), &IssuerKey::from_seed([7; 32]));
        let other = IssuerKey::from_seed([8; 32]).public();
        assert!(other.verify(&signed).is_err());
    }

    #[test]
    fn key_file_roundtrip_is_private_and_debug_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issuer.key");
        let key = IssuerKey::load_or_generate(&path).unwrap();
        let again = IssuerKey::load_or_generate(&path).unwrap();
        assert_eq!(key.public(), again.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let secret_hex = std::fs::read_to_string(&path).unwrap();
        assert!(!format!("{key:?}").contains(secret_hex.trim()));
        let pk = IssuerPublicKey::from_hex(&key.public().to_hex()).unwrap();
        assert_eq!(pk, key.public());
        assert!(IssuerPublicKey::from_hex("abcd").is_err());
    }
}

#[cfg(test)]
mod revocation_tests {
    use super::*;

    #[test]
    fn revocation_sign_verify_and_tamper() {
        let key = IssuerKey::from_seed([3; 32]);
        let r = Revocation::sign("r-req-1-1", "authz", "request cancelled", 100, &key);
        r.verify(&key.public()).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        let back: Revocation = serde_json::from_str(&json).unwrap();
        back.verify(&key.public()).unwrap();
        let mut t = r.clone();
        t.rule_id = "r-req-1-2".into();
        assert!(t.verify(&key.public()).is_err());
        let mut t = r.clone();
        t.revoked_at += 1;
        assert!(t.verify(&key.public()).is_err());
        assert!(r.verify(&IssuerKey::from_seed([4; 32]).public()).is_err());
    }

    #[test]
    fn wire_json_shape_is_as_documented() {
        let key = IssuerKey::from_seed([3; 32]);
        let r = Revocation::sign("r1", "authz", "why", 5, &key);
        let v = serde_json::to_value(&r).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys.len(),
            5,
            "rule_id, issuer, reason, revoked_at, signature"
        );
        assert_eq!(
            String::from_utf8(r.canonical_bytes()).unwrap(),
            r#"{"rule_id":"r1","issuer":"authz","reason":"why","revoked_at":5}"#
        );
    }
}
