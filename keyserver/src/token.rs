//! User authentication: argon2id password hashes and short-lived HMAC-SHA256 user tokens.
//!
//! Token = "v2." ‖ hex(JSON claims) ‖ "." ‖ hex(HMAC-SHA256(token key, "v2." ‖ hex(claims))).
//! The format, its claims and its one parser are `csap-base`'s ([`csap_base::token`]); the key
//! server adds the key: the token key is a 32-byte file (0600) in the data dir. A token is
//! accepted only while its user exists, is enabled and still has the generation the token
//! names (disable bumps it).
//!
//! A token is bound to the device it was issued on (the login connection's client
//! certificate) and to the local uid it was issued for (the kernel's SO_PEERCRED at the
//! device's mount, or the uid a device-identity holder names). The key server refuses it from
//! any other device; the mount refuses it for any other uid. "v1." tokens named neither and
//! are refused as outdated (log in again).

use std::fmt;
use std::path::Path;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use csap_base::token::{self as format, Body};
use ring::hmac;
use zeroize::Zeroizing;

use crate::wire::Reason;

pub use csap_base::token::{
    named_user_unverified, read_claims_unverified, Claims, UnverifiedError, UserToken,
};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("token key must be 32 bytes")]
    KeyLength,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("system random number generator failed")]
    Random,
}

/// The server's token-signing key.
pub struct TokenKey(hmac::Key);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.len() != 32 {
            return Err(TokenError::KeyLength);
        }
        Ok(TokenKey(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        let io = |source| TokenError::Io {
            path: path.display().to_string(),
            source,
        };
        if path.exists() {
            let bytes = Zeroizing::new(std::fs::read(path).map_err(io)?);
            return Self::from_bytes(&bytes);
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        crate::keys::random_bytes(bytes.as_mut()).map_err(|_| TokenError::Random)?;
        csap_base::files::write_secret(path, bytes.as_ref()).map_err(io)?;
        Self::from_bytes(bytes.as_ref())
    }

    pub fn issue(&self, claims: &Claims) -> UserToken {
        let signed = format::signed_part(claims);
        let tag = hmac::sign(&self.0, signed.as_bytes());
        UserToken::new(format!("{signed}.{}", hex::encode(tag.as_ref())))
    }

    /// Checks the MAC, then the version and expiry. User state (disabled, generation) and the
    /// device binding are checked by the caller.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, Reason> {
        let (signed, tag_hex) = format::split(token).map_err(|_| Reason::TokenInvalid)?;
        let tag = hex::decode(tag_hex).map_err(|_| Reason::TokenInvalid)?;
        hmac::verify(&self.0, signed.as_bytes(), &tag).map_err(|_| Reason::TokenInvalid)?;
        // Only what our MAC covers is decoded.
        let claims = match format::decode(signed) {
            Ok(Body::Current(claims)) => claims,
            // Ours, but from before device and uid binding: the user is to log in again.
            Ok(Body::Outdated { .. }) => return Err(Reason::TokenOutdated),
            Err(_) => return Err(Reason::TokenInvalid),
        };
        if now >= claims.expires_at {
            return Err(Reason::TokenExpired);
        }
        Ok(claims)
    }
}

/// Argon2id cost parameters (the defaults are the argon2 crate's OWASP-recommended ones).
#[derive(Debug, Clone, Copy)]
pub struct PasswordCost {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for PasswordCost {
    fn default() -> Self {
        PasswordCost {
            m_cost_kib: argon2::Params::DEFAULT_M_COST,
            t_cost: argon2::Params::DEFAULT_T_COST,
            p_cost: argon2::Params::DEFAULT_P_COST,
        }
    }
}

fn argon(cost: PasswordCost) -> Result<argon2::Argon2<'static>, TokenError> {
    let params = argon2::Params::new(cost.m_cost_kib, cost.t_cost, cost.p_cost, None)
        .map_err(|e| TokenError::Hash(e.to_string()))?;
    Ok(argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params,
    ))
}

/// Hashes a password to a PHC string (argon2id, random salt).
pub fn hash_password(password: &str, cost: PasswordCost) -> Result<String, TokenError> {
    let salt = SaltString::generate(&mut OsRng);
    argon(cost)?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| TokenError::Hash(e.to_string()))
}

/// Verifies a password against its PHC string (the cost is read from the hash).
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            user: "alice".into(),
            device: "ws-07".into(),
            uid: 1000,
            issued_at: 100,
            expires_at: exp,
            generation: 3,
        }
    }

    #[test]
    fn token_roundtrip_expiry_and_tamper() {
        let key = TokenKey::from_bytes(&[1u8; 32]).unwrap();
        let t = key.issue(&claims(200));
        assert_eq!(key.verify(t.as_str(), 150).unwrap(), claims(200));
        assert_eq!(key.verify(t.as_str(), 200), Err(Reason::TokenExpired));
        let other = TokenKey::from_bytes(&[2u8; 32]).unwrap();
        assert_eq!(other.verify(t.as_str(), 150), Err(Reason::TokenInvalid));
        // Changing the claims (here: a later expiry) breaks the MAC.
        let forged = key.issue(&claims(900));
        let (_, forged_tag) = forged.as_str().rsplit_once('.').unwrap();
        let (orig_body, _) = t.as_str().rsplit_once('.').unwrap();
        let (forged_body, _) = forged.as_str().rsplit_once('.').unwrap();
        assert_eq!(
            key.verify(
                &format!("{forged_body}.{}", &t.as_str()[orig_body.len() + 1..]),
                150
            ),
            Err(Reason::TokenInvalid)
        );
        assert_eq!(
            key.verify(&format!("{orig_body}.{forged_tag}"), 150),
            Err(Reason::TokenInvalid)
        );
        assert_eq!(key.verify("garbage", 150), Err(Reason::TokenInvalid));
    }

    /// Issue 12: a token from before device and uid binding ("v1.", claims without them) is
    /// refused as outdated even with a valid MAC, at the key server and at the mount.
    #[test]
    fn outdated_tokens_are_refused_with_a_reason() {
        let key = TokenKey::from_bytes(&[1u8; 32]).unwrap();
        let old_claims = br#"{"user":"alice","issued_at":100,"expires_at":200,"generation":3}"#;
        let body = format!("v1.{}", hex::encode(old_claims));
        let tag = hmac::sign(&key.0, body.as_bytes());
        let old = format!("{body}.{}", hex::encode(tag.as_ref()));
        assert_eq!(key.verify(&old, 150), Err(Reason::TokenOutdated));
        assert_eq!(read_claims_unverified(&old), Err(UnverifiedError::Outdated));
        assert!(UnverifiedError::Outdated.to_string().contains("csap login"));
        assert_eq!(named_user_unverified(&old).as_deref(), Some("alice"));
        // A v1 token under another key is simply invalid.
        let other = TokenKey::from_bytes(&[2u8; 32]).unwrap();
        assert_eq!(other.verify(&old, 150), Err(Reason::TokenInvalid));
        // The current version carries its binding.
        let new = key.issue(&claims(200));
        assert!(new.as_str().starts_with("v2."));
        let read = read_claims_unverified(new.as_str()).unwrap();
        assert_eq!((read.device.as_str(), read.uid), ("ws-07", 1000));
        assert_eq!(
            read_claims_unverified("v2.zz.00"),
            Err(UnverifiedError::Malformed)
        );
        assert_eq!(
            read_claims_unverified("junk"),
            Err(UnverifiedError::NotAToken)
        );
    }

    #[test]
    fn password_hash_verifies() {
        let cost = PasswordCost {
            m_cost_kib: 1024,
            t_cost: 1,
            p_cost: 1,
        };
        let h = hash_password("correct horse", cost).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }
}
