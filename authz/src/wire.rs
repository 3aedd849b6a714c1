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

use serde::Serialize;

pub use crate::rule::Revocation;
use crate::rule::SignedRule;

/// Body of `POST {ards}/v1/publish` (ARDS's wire type).
pub use ards_client::wire::PublishRules;

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
