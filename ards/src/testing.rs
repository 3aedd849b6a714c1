//! Helpers to run a real ARDS (TLS on loopback, SQLite file) inside a test or benchmark.

use std::path::PathBuf;
use std::sync::Arc;

use authz::IssuerPublicKey;

use crate::clock::Clock;
use crate::server::{load_or_create_identity, serve_tls, ServeError, ServerHandle};
use crate::service::{Ards, ArdsConfig};

/// What to start.
#[derive(Debug, Clone)]
pub struct LoopbackOptions {
    /// Holds `ards.db` and the TLS certificate.
    pub data_dir: PathBuf,
    pub trusted_issuers: Vec<(String, IssuerPublicKey)>,
    pub lead_time_secs: i64,
    pub clock: Arc<dyn Clock>,
    /// How callers are authenticated (e.g. `authz::testing::pki::TestPki::client_auth`).
    pub client_auth: authz::tls::ClientAuth,
    /// Where the store lives (default: SQLite in `data_dir`).
    pub store: authz::pg::Engine,
}

impl LoopbackOptions {
    /// Real clock, default lead time.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        trusted_issuers: Vec<(String, IssuerPublicKey)>,
        client_auth: authz::tls::ClientAuth,
    ) -> Self {
        Self {
            data_dir: data_dir.into(),
            trusted_issuers,
            client_auth,
            lead_time_secs: crate::service::DEFAULT_LEAD_TIME_SECS,
            clock: Arc::new(crate::clock::SystemClock),
            store: authz::pg::Engine::Sqlite,
        }
    }
}

/// A running loopback ARDS. Dropping it stops the server.
#[derive(Debug)]
pub struct LoopbackArds {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The server's self-signed certificate: pass it as `ca_pem` to clients.
    pub ca_pem: String,
    pub cert_path: PathBuf,
    /// The engine itself, for direct calls.
    pub ards: Ards,
    pub server: ServerHandle,
    scheduler: AbortOnDrop,
}

impl LoopbackArds {
    /// Stops the scheduler and the server, and waits until the listener is closed.
    pub async fn shutdown(self) {
        drop(self.scheduler);
        self.server.shutdown().await;
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts ARDS on `127.0.0.1:0` over TLS with its scheduler running.
pub async fn spawn_loopback(opts: LoopbackOptions) -> Result<LoopbackArds, ServeError> {
    spawn_on(opts, "127.0.0.1:0").await
}

/// Starts ARDS on `addr` (e.g. the port a stopped instance used, to test reconnects).
pub async fn spawn_on(opts: LoopbackOptions, addr: &str) -> Result<LoopbackArds, ServeError> {
    let identity = load_or_create_identity(&opts.data_dir, &[])?;
    let mut cfg = ArdsConfig::new(opts.data_dir.join("ards.db"), opts.trusted_issuers);
    cfg.lead_time_secs = opts.lead_time_secs;
    cfg.store = opts.store;
    let ards = Ards::connect(cfg, opts.clock).await?;
    let scheduler = ards.spawn_scheduler();
    let server = serve_tls(
        addr,
        &identity,
        crate::http::app(ards.clone()),
        &opts.client_auth,
    )
    .await?;
    Ok(LoopbackArds {
        url: format!("https://127.0.0.1:{}", server.local_addr.port()),
        ca_pem: identity.cert_pem.clone(),
        cert_path: identity.cert_path.clone(),
        ards,
        server,
        scheduler: AbortOnDrop(scheduler),
    })
}
