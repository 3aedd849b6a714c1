//! Delegated authentication (CSAP Part 1 §8): an organization's people log in with the
//! organization's own OpenID Connect provider. The key server checks the ID token itself —
//! against the provider's discovery document and published keys, never trusting the client's
//! word — maps its subject to a participant of that organization, and issues a csap token
//! bound as a password login's is (`api::login::login_oidc`).
//!
//! What is checked, in the order of OIDC Core §3.1.3.7 (the `openidconnect` crate's verifier):
//! `iss` is the provider on record, `aud` holds exactly its client id, the signature verifies
//! under a key of the provider's JWKS with an algorithm it announces, `exp` has not passed and
//! `iat` is not in the future (the key server's clock), and `nonce` is the one the client put in
//! its authorization request. The provider's keys are cached for [`KEYS_TTL`]; a token signed
//! by a key the cache does not know fetches them again (key rotation), at most every
//! [`REFETCH_MIN`].

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use openidconnect::core::{
    CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    ClaimsVerificationError, ClientId, IssuerUrl, Nonce, SignatureVerificationError,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::wire::{IdentityProvider, Reason};

/// How long fetched provider keys are used before they are fetched again.
pub const KEYS_TTL: Duration = Duration::from_secs(300);
/// The least time between two fetches for one provider (an unknown `kid` triggers one).
pub const REFETCH_MIN: Duration = Duration::from_secs(10);
/// How long a used ID token is remembered (longer than providers let ID tokens live).
pub const USED_TTL: Duration = Duration::from_secs(24 * 3600);
/// Used ID tokens remembered at most (32 bytes each).
const USED_CAPACITY: u64 = 1_000_000;
/// How far in the future an `iat` may be (clocks differ a little).
const IAT_LEEWAY_SECS: i64 = 60;
/// The length of a pseudonym's hash part (base32 characters: 130 bits).
const PSEUDONYM_CHARS: usize = 26;

/// Why a federated login was refused: the reason the client and the audit trail get, and a
/// detail for the audit trail and the log (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub detail: String,
}

impl Refusal {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Refusal {
            reason,
            detail: detail.into(),
        }
    }
}

/// Whether `issuer` may be trusted as a provider: `https`, or plain `http` to a loopback
/// address (a provider on the same host; tests), never plain http across a network.
pub fn check_issuer_url(issuer: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(issuer).map_err(|e| format!("{issuer:?} is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "{issuer} is plain http: an identity provider must be https (http only on loopback)"
        )),
        other => Err(format!("{issuer}: scheme {other} is not https")),
    }
}

/// The participant name a subject of `organization` logs in as: `SUBJECT@ORGANIZATION`, or
/// with a pseudonymous provider `p-PSEUDONYM@ORGANIZATION`, where the pseudonym is a keyed
/// hash (HMAC-SHA256 under the organization's pseudonym key) of the subject: stable across
/// logins and replicas, and the production never holds the subject itself.
pub fn participant_name(
    idp: &IdentityProvider,
    pseudonym_key: Option<&[u8]>,
    subject: &str,
) -> Result<String, Refusal> {
    let local = if idp.pseudonymous {
        let key = pseudonym_key.ok_or_else(|| {
            Refusal::new(
                Reason::IdTokenInvalid,
                "the organization's pseudonym key is missing",
            )
        })?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(subject.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut name = String::from("p-");
        name.push_str(&base32_lower(&digest)[..PSEUDONYM_CHARS]);
        name
    } else {
        subject.to_string()
    };
    let name = format!("{local}@{}", idp.organization);
    let usable = !local.is_empty()
        && name.len() <= 128
        && !local.starts_with('.')
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !usable {
        return Err(Refusal::new(
            Reason::IdTokenInvalid,
            format!(
                "the subject {subject:?} is not usable as a participant name (A-Z a-z 0-9 . _ -, \
                 at most 128 with the organization): make the provider pseudonymous"
            ),
        ));
    }
    Ok(name)
}

/// RFC 4648 base32, lower case, no padding.
fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// What a provider publishes that verification needs.
struct ProviderKeys {
    fetched: Instant,
    keys: CoreJsonWebKeySet,
    algs: Vec<CoreJwsSigningAlgorithm>,
}

/// The discovery document's fields verification reads.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<CoreJwsSigningAlgorithm>,
}

/// Verifies ID tokens of the organizations' providers, caching each provider's keys.
pub struct Federation {
    http: reqwest::Client,
    cache: Mutex<HashMap<String, std::sync::Arc<ProviderKeys>>>,
    /// SHA-256 of the ID tokens that logged in, for [`USED_TTL`] (this replica's memory).
    used: moka::sync::Cache<[u8; 32], ()>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation").finish_non_exhaustive()
    }
}

impl Default for Federation {
    fn default() -> Self {
        Federation::new()
    }
}

impl Federation {
    pub fn new() -> Self {
        // No redirects (a provider's documents are at the URLs it names; following a redirect
        // would let a compromised one point the key server anywhere), and bounded waits.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client with rustls");
        Federation {
            http,
            cache: Mutex::new(HashMap::new()),
            used: moka::sync::Cache::builder()
                .max_capacity(USED_CAPACITY)
                .time_to_live(USED_TTL)
                .build(),
        }
    }

    /// The subject of `id_token` once every check passes (module doc), at time `now`.
    ///
    /// An ID token logs in once: one that verified before is refused as replayed (a token
    /// copied from a log or a browser's history, with the nonce it carries, must not log in
    /// another device).
    pub async fn verify(
        &self,
        idp: &IdentityProvider,
        id_token: &str,
        nonce: &str,
        now: i64,
    ) -> Result<String, Refusal> {
        let subject = self.verify_signed(idp, id_token, nonce, now).await?;
        let digest: [u8; 32] = Sha256::digest(id_token.as_bytes()).into();
        if !self.used.entry(digest).or_insert(()).is_fresh() {
            return Err(Refusal::new(
                Reason::IdTokenInvalid,
                "the ID token logged in before: a replayed token",
            ));
        }
        Ok(subject)
    }

    /// [`Self::verify`] but for the replay check.
    async fn verify_signed(
        &self,
        idp: &IdentityProvider,
        id_token: &str,
        nonce: &str,
        now: i64,
    ) -> Result<String, Refusal> {
        let token = CoreIdToken::from_str(id_token).map_err(|e| {
            Refusal::new(
                Reason::IdTokenInvalid,
                format!("not an ID token (JWT): {e}"),
            )
        })?;
        let keys = self.keys(idp, false).await?;
        match check(&token, idp, &keys, nonce, now) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) if keys.fetched.elapsed() >= REFETCH_MIN => {
                // Signed with a key newer than the cached set: the provider rotated its keys.
                let keys = self.keys(idp, true).await?;
                check(&token, idp, &keys, nonce, now).map_err(refusal)
            }
            other => other.map_err(refusal),
        }
    }

    /// The provider's keys, from the cache unless stale or `refresh`.
    async fn keys(
        &self,
        idp: &IdentityProvider,
        refresh: bool,
    ) -> Result<std::sync::Arc<ProviderKeys>, Refusal> {
        if !refresh {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(k) = cache.get(&idp.issuer) {
                if k.fetched.elapsed() < KEYS_TTL {
                    return Ok(std::sync::Arc::clone(k));
                }
            }
        }
        let keys = std::sync::Arc::new(self.fetch(&idp.issuer).await.map_err(|detail| {
            tracing::warn!(organization = %idp.organization, issuer = %idp.issuer, %detail, "identity provider unavailable");
            Refusal::new(Reason::ProviderUnavailable, detail)
        })?);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(idp.issuer.clone(), std::sync::Arc::clone(&keys));
        Ok(keys)
    }

    /// Discovery (`ISSUER/.well-known/openid-configuration`), then the JWKS it names.
    async fn fetch(&self, issuer: &str) -> Result<ProviderKeys, String> {
        check_issuer_url(issuer)?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self.get_json(&url).await?;
        if discovery.issuer != issuer {
            return Err(format!(
                "the discovery document at {url} names issuer {:?}, not {issuer:?}",
                discovery.issuer
            ));
        }
        check_issuer_url(&discovery.jwks_uri).map_err(|e| format!("jwks_uri: {e}"))?;
        let keys: CoreJsonWebKeySet = self.get_json(&discovery.jwks_uri).await?;
        Ok(ProviderKeys {
            fetched: Instant::now(),
            keys,
            algs: discovery.id_token_signing_alg_values_supported,
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not the JSON expected: {e}"))
    }
}

/// One verification of `token` against `keys` (no I/O).
fn check(
    token: &CoreIdToken,
    idp: &IdentityProvider,
    keys: &ProviderKeys,
    nonce: &str,
    now: i64,
) -> Result<String, ClaimsVerificationError> {
    let issuer = IssuerUrl::new(idp.issuer.clone())
        .map_err(|e| ClaimsVerificationError::Other(format!("issuer on record: {e}")))?;
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp(now, 0)
        .ok_or_else(|| ClaimsVerificationError::Other("the clock is out of range".into()))?;
    let mut verifier = CoreIdTokenVerifier::new_public_client(
        ClientId::new(idp.client_id.clone()),
        issuer,
        keys.keys.clone(),
    )
    .set_time_fn(move || at)
    .set_issue_time_verifier_fn(move |iat| {
        if iat.timestamp() > now + IAT_LEEWAY_SECS {
            Err(format!("issued in the future ({iat})"))
        } else {
            Ok(())
        }
    });
    if !keys.algs.is_empty() {
        // Only what the provider announces (the default otherwise: RS256).
        verifier = verifier.set_allowed_algs(keys.algs.iter().cloned());
    }
    let claims = token.claims(&verifier, &Nonce::new(nonce.to_string()))?;
    Ok(claims.subject().as_str().to_string())
}

fn refusal(e: ClaimsVerificationError) -> Refusal {
    let reason = match &e {
        ClaimsVerificationError::Expired(_) | ClaimsVerificationError::InvalidAuthTime(_) => {
            Reason::IdTokenExpired
        }
        ClaimsVerificationError::InvalidAudience(_) => Reason::IdTokenWrongAudience,
        ClaimsVerificationError::InvalidIssuer(_) => Reason::IdTokenWrongIssuer,
        ClaimsVerificationError::SignatureVerification(_) => Reason::IdTokenBadSignature,
        ClaimsVerificationError::Other(d) if d.contains("issued in the future") => {
            Reason::IdTokenExpired
        }
        _ => Reason::IdTokenInvalid,
    };
    let detail = match &e {
        ClaimsVerificationError::SignatureVerification(inner) => {
            format!("signature verification failed: {inner}")
        }
        other => other.to_string(),
    };
    Refusal::new(reason, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idp(pseudonymous: bool) -> IdentityProvider {
        IdentityProvider {
            organization: "acme-post".into(),
            issuer: "https://login.acme.example".into(),
            client_id: "csap".into(),
            pseudonymous,
            added_at: 0,
        }
    }

    #[test]
    fn subjects_map_to_names_of_their_organization() {
        assert_eq!(
            participant_name(&idp(false), None, "alice").unwrap(),
            "alice@acme-post"
        );
        // A subject the name rules cannot carry is refused, naming the way out.
        let err = participant_name(&idp(false), None, "alice smith").unwrap_err();
        assert_eq!(err.reason, Reason::IdTokenInvalid);
        assert!(err.detail.contains("pseudonymous"), "{}", err.detail);
        assert!(participant_name(&idp(false), None, "").is_err());
        assert!(participant_name(&idp(false), None, ".hidden").is_err());
    }

    #[test]
    fn pseudonyms_are_stable_keyed_and_hide_the_subject() {
        let key = [7u8; 32];
        let a = participant_name(&idp(true), Some(&key), "alice smith").unwrap();
        assert_eq!(
            a,
            participant_name(&idp(true), Some(&key), "alice smith").unwrap()
        );
        assert!(a.starts_with("p-") && a.ends_with("@acme-post"), "{a}");
        assert!(!a.contains("alice"));
        assert_ne!(a, participant_name(&idp(true), Some(&key), "bob").unwrap());
        assert_ne!(
            a,
            participant_name(&idp(true), Some(&[8u8; 32]), "alice smith").unwrap()
        );
        assert!(participant_name(&idp(true), None, "alice").is_err());
    }

    #[test]
    fn base32_matches_rfc4648() {
        // RFC 4648 §10 test vectors, lower case without padding.
        assert_eq!(base32_lower(b"f"), "my");
        assert_eq!(base32_lower(b"fo"), "mzxq");
        assert_eq!(base32_lower(b"foobar"), "mzxw6ytboi");
    }

    #[test]
    fn providers_must_be_https_except_on_loopback() {
        assert!(check_issuer_url("https://login.acme.example").is_ok());
        assert!(check_issuer_url("http://127.0.0.1:4000").is_ok());
        assert!(check_issuer_url("http://[::1]:4000").is_ok());
        assert!(check_issuer_url("http://localhost:4000").is_ok());
        assert!(check_issuer_url("http://login.acme.example").is_err());
        assert!(check_issuer_url("ftp://login.acme.example").is_err());
        assert!(check_issuer_url("not a url").is_err());
    }
}
