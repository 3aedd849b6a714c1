//! The user-token format, and its one parser.
//!
//! token = signed part ‖ "." ‖ hex(MAC)      signed part = "v2." ‖ hex(JSON claims)
//!
//! The key server makes tokens and checks their MAC (HMAC-SHA256 under its token key, over the
//! signed part); everyone reads them through [`split`] and [`decode`] here. A token names the
//! device it was issued on and the local uid it was issued for. "v1." tokens named neither and
//! are refused as outdated (log in again).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::files;

/// The version prefix of the signed part of every token issued today.
pub const PREFIX: &str = "v2.";
/// Tokens from before device and uid binding: refused as outdated.
pub const OUTDATED_PREFIX: &str = "v1.";

/// The claims of a user token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub user: String,
    /// The device principal the token was issued on (from the login's client certificate).
    pub device: String,
    /// The local uid on that device the token was issued for.
    pub uid: u32,
    pub issued_at: i64,
    pub expires_at: i64,
    pub generation: u64,
}

/// Why a token's claims could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnverifiedError {
    #[error("not a user token")]
    NotAToken,
    #[error("this token names no device and uid (issued before tokens were bound to them): run `csap login` again")]
    Outdated,
    #[error("the user token's claims are malformed")]
    Malformed,
}

/// What the signed part of a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A token of today's format.
    Current(Claims),
    /// A "v1." token, bound to no device and uid; only its user is read (for audit records).
    Outdated { user: Option<String> },
}

/// The signed part of `token` and its MAC (hex), split at the last dot. Nothing is decoded.
pub fn split(token: &str) -> Result<(&str, &str), UnverifiedError> {
    token.rsplit_once('.').ok_or(UnverifiedError::NotAToken)
}

/// Decodes the signed part of a token. Whoever grants on what it says must have checked the MAC
/// over `signed` first.
pub fn decode(signed: &str) -> Result<Body, UnverifiedError> {
    if let Some(hex_json) = signed.strip_prefix(OUTDATED_PREFIX) {
        #[derive(Deserialize)]
        struct Named {
            user: String,
        }
        let user = hex::decode(hex_json)
            .ok()
            .and_then(|json| serde_json::from_slice::<Named>(&json).ok())
            .map(|n| n.user);
        return Ok(Body::Outdated { user });
    }
    let hex_json = signed
        .strip_prefix(PREFIX)
        .ok_or(UnverifiedError::NotAToken)?;
    let json = hex::decode(hex_json).map_err(|_| UnverifiedError::Malformed)?;
    serde_json::from_slice(&json)
        .map(Body::Current)
        .map_err(|_| UnverifiedError::Malformed)
}

/// The signed part of a new token carrying `claims` (the key server appends "." and its MAC).
pub fn signed_part(claims: &Claims) -> String {
    let json = serde_json::to_vec(claims).expect("claims serialize");
    format!("{PREFIX}{}", hex::encode(json))
}

/// The claims of `token`, read without checking its MAC. Only for a party that cannot verify
/// (the mount) and uses them to refuse, never to grant: the key server verifies every token
/// it is shown, so a forged claim gains nothing.
pub fn read_claims_unverified(token: &str) -> Result<Claims, UnverifiedError> {
    match decode(split(token)?.0)? {
        Body::Current(claims) => Ok(claims),
        Body::Outdated { .. } => Err(UnverifiedError::Outdated),
    }
}

/// The user a token names, of any version, unverified: for the audit record of a refusal.
pub fn named_user_unverified(token: &str) -> Option<String> {
    match decode(split(token).ok()?.0).ok()? {
        Body::Current(claims) => Some(claims.user),
        Body::Outdated { user } => user,
    }
}

/// A user token as held by a client; zeroized on drop, redacted in Debug.
#[derive(Clone)]
pub struct UserToken(Zeroizing<String>);

impl fmt::Debug for UserToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserToken(<redacted>)")
    }
}

impl UserToken {
    pub fn new(s: String) -> Self {
        UserToken(Zeroizing::new(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where `csap login` keeps the token: $XDG_RUNTIME_DIR/csap/token, else ~/.config/csap/token.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(d).join("csap").join("token"));
        }
        std::env::var_os("HOME")
            .filter(|d| !d.is_empty())
            .map(|h| PathBuf::from(h).join(".config").join("csap").join("token"))
    }

    /// Writes the token to `path` (a secret file; a missing parent is created 0700).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                files::create_private_dir(dir)?;
            }
        }
        files::write_secret(path, self.0.as_bytes())
    }

    pub fn load(path: &Path) -> std::io::Result<Self> {
        let s = Zeroizing::new(std::fs::read_to_string(path)?);
        Ok(UserToken::new(s.trim().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            user: "alice".into(),
            device: "ws-07".into(),
            uid: 1000,
            issued_at: 100,
            expires_at: 200,
            generation: 3,
        }
    }

    #[test]
    fn a_token_reads_back_its_claims_without_its_key() {
        let token = format!("{}.{}", signed_part(&claims()), "00".repeat(32));
        assert!(token.starts_with(PREFIX));
        assert_eq!(read_claims_unverified(&token), Ok(claims()));
        assert_eq!(named_user_unverified(&token).as_deref(), Some("alice"));
        let (signed, tag) = split(&token).unwrap();
        assert_eq!(
            (signed, tag),
            (signed_part(&claims()).as_str(), &*"00".repeat(32))
        );
    }

    #[test]
    fn outdated_and_malformed_tokens_are_told_apart() {
        let old = br#"{"user":"alice","issued_at":100,"expires_at":200,"generation":3}"#;
        let old = format!("v1.{}.00", hex::encode(old));
        assert_eq!(read_claims_unverified(&old), Err(UnverifiedError::Outdated));
        assert!(UnverifiedError::Outdated.to_string().contains("csap login"));
        assert_eq!(named_user_unverified(&old).as_deref(), Some("alice"));
        assert_eq!(
            read_claims_unverified("v2.zz.00"),
            Err(UnverifiedError::Malformed)
        );
        // Claims the format does not know are malformed, not ignored.
        let extra = br#"{"user":"a","device":"d","uid":1,"issued_at":1,"expires_at":2,"generation":0,"admin":true}"#;
        assert_eq!(
            read_claims_unverified(&format!("v2.{}.00", hex::encode(extra))),
            Err(UnverifiedError::Malformed)
        );
        assert_eq!(
            read_claims_unverified("junk"),
            Err(UnverifiedError::NotAToken)
        );
        assert_eq!(
            read_claims_unverified("v3.00.00"),
            Err(UnverifiedError::NotAToken)
        );
        assert_eq!(named_user_unverified("junk"), None);
    }

    #[test]
    fn a_saved_token_is_a_secret_file_and_loads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csap").join("token");
        UserToken::new("v2.ab.cd".into()).save(&path).unwrap();
        assert_eq!(UserToken::load(&path).unwrap().as_str(), "v2.ab.cd");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(
            format!("{:?}", UserToken::new("secret".into())),
            "UserToken(<redacted>)"
        );
    }
}
