//! The authz → ARDS handoff: wire types (`PublishRules`, `Revocation`), their signatures, and
//! the `RuleSink` delivery trait with HTTP and in-memory implementations.
//!
//! Endpoints (see `/v1/publish` and `/v1/revoke` in the ARDS docs): authz posts a
//! `PublishRules` JSON body to `{ards}/v1/publish` and one `Revocation` per call to
//! `{ards}/v1/revoke`. ARDS verifies every signature against the issuer's public key.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rule::{IssuerKey, IssuerPublicKey, RuleError, SignedRule};

/// Body of `POST {ards}/v1/publish`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PublishRules {
    pub rules: Vec<SignedRule>,
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

/// Errors delivering to ARDS.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("ARDS request failed: {0}")]
    Transport(String),
    #[error("ARDS answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("ARDS client setup failed: {0}")]
    Setup(String),
    #[error("rule sink unavailable: {0}")]
    Unavailable(String),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where authz delivers signed rules and revocations (ARDS in production).
/// Implementations must be idempotent-safe: authz re-sends after failures.
pub trait RuleSink: Send + Sync {
    fn publish<'a>(&'a self, batch: &'a PublishRules) -> BoxFuture<'a, Result<(), SinkError>>;
    fn revoke<'a>(&'a self, revocation: &'a Revocation) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// Posts to a real ARDS over HTTPS.
#[derive(Clone, Debug)]
pub struct HttpSink {
    base: String,
    client: reqwest::Client,
}

impl HttpSink {
    /// `ards_url` like `https://127.0.0.1:7443`; `ca_pem` is the ARDS certificate (or its CA) to
    /// trust; `identity` this issuer's client certificate (a `service` principal named like the
    /// issuer, which ARDS lets publish).
    pub fn new(
        ards_url: &str,
        ca_pem: &str,
        identity: &crate::tls::ClientIdentity,
    ) -> Result<Self, SinkError> {
        let cfg = crate::tls::client_config_with(ca_pem, Some(identity))
            .map_err(|e| SinkError::Setup(e.to_string()))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .use_preconfigured_tls(cfg)
            .build()
            .map_err(|e| SinkError::Setup(e.to_string()))?;
        Ok(Self {
            base: ards_url.trim_end_matches('/').to_string(),
            client,
        })
    }

    async fn post<T: Serialize + Sync>(&self, path: &str, body: &T) -> Result<(), SinkError> {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .map_err(|e| SinkError::Transport(e.to_string()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let mut body = resp.text().await.unwrap_or_default();
        body.truncate(512);
        Err(SinkError::Status {
            status: status.as_u16(),
            body,
        })
    }
}

impl RuleSink for HttpSink {
    fn publish<'a>(&'a self, batch: &'a PublishRules) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.post("/v1/publish", batch))
    }
    fn revoke<'a>(&'a self, revocation: &'a Revocation) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.post("/v1/revoke", revocation))
    }
}

/// Records deliveries in memory (tests, and `csap server` wiring before ARDS is up).
/// `set_failing(true)` makes every delivery fail, to exercise the outbox retry path.
#[derive(Debug, Default)]
pub struct MemorySink {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    published: Vec<SignedRule>,
    revoked: Vec<Revocation>,
    failing: bool,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A poisoned lock only means a test panicked elsewhere; the data is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn published(&self) -> Vec<SignedRule> {
        self.lock().published.clone()
    }

    pub fn revocations(&self) -> Vec<Revocation> {
        self.lock().revoked.clone()
    }

    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }
}

impl RuleSink for MemorySink {
    fn publish<'a>(&'a self, batch: &'a PublishRules) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut s = self.lock();
            if s.failing {
                return Err(SinkError::Unavailable("memory sink set to fail".into()));
            }
            s.published.extend(batch.rules.iter().cloned());
            Ok(())
        })
    }
    fn revoke<'a>(&'a self, revocation: &'a Revocation) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut s = self.lock();
            if s.failing {
                return Err(SinkError::Unavailable("memory sink set to fail".into()));
            }
            s.revoked.push(revocation.clone());
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
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
