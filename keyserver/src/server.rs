//! Key server start-up and transport: the data directory (CA, server certificate, root key,
//! token and license keys, SQLite, admin identity), and the TLS 1.3 mTLS accept loop that
//! hands each authenticated connection to the axum router with its [`Peer`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use zeroize::Zeroizing;

use crate::audit::AuditLog;
use crate::db::{self, AuditEvent, Db, StoreError};
use crate::keys::{KeyError, RootKey};
use crate::license::{LicenseError, LicenseSigner};
use crate::pki::{self, Ca, Identity, PkiError, Principal, PrincipalKind, PrincipalRegistry};
use crate::ratelimit::{RateLimit, RateLimiter};
use crate::rules::RuleCheck;
use crate::session::SessionStore;
use crate::token::{PasswordCost, TokenError, TokenKey};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    License(#[from] LicenseError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    StateDir(#[from] authz::statedir::StateDirError),
    #[error(transparent)]
    Clock(#[from] crate::ClockError),
    #[error("start-up task failed: {0}")]
    Join(String),
}

/// A clock in unix seconds with an adjustable offset (tests move time; production leaves it 0).
/// Clones share the offset and the `unusable` switch.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset: Arc<AtomicI64>,
    unusable: Arc<AtomicBool>,
}

impl Clock {
    /// Now, for validity decisions (tokens, sessions, licenses, certificates): an unusable
    /// system clock is an error, and the request is refused.
    pub fn now(&self) -> Result<i64, crate::ClockError> {
        if self.unusable.load(Ordering::Relaxed) {
            return Err(crate::ClockError::Unusable("Clock::set_unusable"));
        }
        Ok(crate::now()? + self.offset.load(Ordering::Relaxed))
    }
    /// Now, for the record only (audit rows, creation and revocation times) where nothing is
    /// decided on it: an unusable clock stamps 0 rather than losing the event or blocking a
    /// revocation.
    pub fn stamp(&self) -> i64 {
        self.now().unwrap_or(0)
    }
    /// Moves this clock (and every server sharing it) forward by `secs`.
    pub fn advance(&self, secs: i64) {
        self.offset.fetch_add(secs, Ordering::Relaxed);
    }
    /// Makes every reading fail (`true`), as a clock before the epoch would — the seam for
    /// the fail-closed tests — or heals it.
    pub fn set_unusable(&self, unusable: bool) {
        self.unusable.store(unusable, Ordering::Relaxed);
    }
}

/// Resource limits of the service.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_batch: usize,
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    /// Per-device token bucket for license, login and asset requests.
    pub per_device: RateLimit,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 256 * 1024,
            max_batch: 1024,
            request_timeout: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            per_device: RateLimit {
                rate: 200.0,
                burst: 400.0,
            },
        }
    }
}

/// Everything `start` needs.
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// DNS names / IP addresses for the server certificate (used on first start or when changed).
    pub server_names: Vec<String>,
    pub rules: Arc<dyn RuleCheck>,
    /// Root key as hex (from `CSAP_ROOT_KEY`); `None` uses `DATA_DIR/root.key`.
    pub root_key_hex: Option<Zeroizing<String>>,
    pub limits: Limits,
    pub token_ttl_secs: i64,
    pub license_ttl_secs: i64,
    pub password_cost: PasswordCost,
    pub clock: Clock,
    pub db_connections: usize,
    /// Lifetime of a license session (devices renew before it ends).
    pub session_ttl_secs: i64,
}

impl ServerConfig {
    pub fn new(
        data_dir: impl Into<PathBuf>,
        listen: SocketAddr,
        rules: Arc<dyn RuleCheck>,
    ) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            listen,
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            rules,
            root_key_hex: None,
            limits: Limits::default(),
            token_ttl_secs: 8 * 3600,
            license_ttl_secs: 15 * 60,
            password_cost: PasswordCost::default(),
            clock: Clock::default(),
            db_connections: 4,
            session_ttl_secs: 3600,
        }
    }
}

/// The authenticated peer of one TLS connection (from its client certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub kind: PrincipalKind,
    pub serial: String,
}

/// Shared state of the running service.
pub(crate) struct State {
    pub db: Arc<Db>,
    pub root: RootKey,
    pub tokens: TokenKey,
    pub signer: LicenseSigner,
    pub ca: Ca,
    pub registry: Arc<PrincipalRegistry>,
    pub rules: Arc<dyn RuleCheck>,
    pub limiter: RateLimiter,
    pub limits: Limits,
    pub token_ttl: i64,
    pub license_ttl: i64,
    pub password_cost: PasswordCost,
    /// A hash of a random password, verified against when a login names an unknown user.
    pub dummy_hash: String,
    pub clock: Clock,
    /// The audit writer (group commit); see [`crate::audit`].
    pub audit: AuditLog,
    /// Live license sessions (memory only); see [`crate::session`].
    pub sessions: SessionStore,
    /// Wakes the long polls of `GET /v1/revocations`; see [`crate::revocation`].
    pub revocations: crate::revocation::Notifier,
}

impl State {
    /// Queues an audit event without blocking (where SQLite must not be touched: TLS
    /// handshakes, middleware). Under a flood, events are dropped and that is logged.
    pub fn audit_async(&self, ev: AuditEvent) {
        self.audit.record_later(ev);
    }
}

/// Live license sessions held at most (each is ~200 bytes; a device keeps one per connection).
const SESSION_CAPACITY: u64 = 100_000;

/// Paths inside the data directory.
pub const ADMIN_DIR: &str = "admin";
/// The key server's own client identity (service `keyserver`), for its ARDS subscription.
pub const SERVICE_DIR: &str = "service";
const DB_FILE: &str = "keyserver.sqlite";
/// Secrets in the data directory, each kept 0600. Certificates and public keys stay readable.
const PRIVATE_FILES: &[&str] = &[
    "root.key",
    "token.key",
    "license.key",
    "ca.key",
    "server.key",
    "admin/key.pem",
    "admin/hpke.key",
    "service/key.pem",
];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::DataDir {
        path: path.display().to_string(),
        source,
    }
}

/// First start creates everything; a restart reuses it all.
fn init_state(cfg: &ServerConfig, audit: AuditLog) -> Result<State, ServerError> {
    let dir = &cfg.data_dir;
    // `start` took the data-dir lock, which made `dir` private; tighten what an older version
    // or a copy left looser before anything reads it.
    for f in PRIVATE_FILES {
        authz::statedir::private_file(&dir.join(f))?;
    }
    for sub in [ADMIN_DIR, SERVICE_DIR] {
        let sub = dir.join(sub);
        if sub.exists() {
            authz::statedir::private_dir(&sub)?;
        }
    }
    let root = RootKey::load_or_create(
        &dir.join("root.key"),
        cfg.root_key_hex.as_deref().map(|s| s.as_str()),
    )?;
    let tokens = TokenKey::load_or_create(&dir.join("token.key"))?;
    let signer = LicenseSigner::load_or_create(&dir.join("license.key"))?;
    let ca = Ca::load_or_create(dir)?;
    let db_path = dir.join(DB_FILE);
    // Password hashes, sealed seeds and the audit trail live here: owner-only, like the keys.
    authz::statedir::private_sqlite(&db_path)?;
    let db = Db::open(&db_path, cfg.db_connections)?;
    ensure_server_cert(&ca, dir, &cfg.server_names)?;
    ensure_admin_identity(&ca, &db, &signer, dir, cfg.clock.now()?)?;
    // The key server's own identity as a policy enforcement point: it reads its ARDS stream
    // (PEP `keyserver`) with this certificate.
    ensure_identity(
        &ca,
        &db,
        &dir.join(SERVICE_DIR),
        authz::template::KEYSERVER_PEP,
        PrincipalKind::Service,
        cfg.clock.now()?,
    )?;
    let principals = db.call_sync(|c| db::all_principals(c))?;
    Ok(State {
        db,
        root,
        tokens,
        signer,
        ca,
        registry: Arc::new(PrincipalRegistry::new(principals)),
        rules: Arc::clone(&cfg.rules),
        limiter: RateLimiter::new(cfg.limits.per_device),
        limits: cfg.limits,
        token_ttl: cfg.token_ttl_secs,
        license_ttl: cfg.license_ttl_secs,
        password_cost: cfg.password_cost,
        dummy_hash: {
            let mut pw = [0u8; 16];
            crate::keys::random_bytes(&mut pw)?;
            crate::token::hash_password(&hex::encode(pw), cfg.password_cost)?
        },
        clock: cfg.clock.clone(),
        audit,
        sessions: SessionStore::new(cfg.session_ttl_secs, SESSION_CAPACITY),
        revocations: crate::revocation::Notifier::default(),
    })
}

fn ensure_server_cert(ca: &Ca, dir: &Path, names: &[String]) -> Result<(), ServerError> {
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    let names_file = dir.join("server.names");
    let wanted = names.join("\n");
    let same = std::fs::read_to_string(&names_file).ok().as_deref() == Some(wanted.as_str());
    if cert.exists() && key.exists() && same {
        return Ok(());
    }
    let (cert_pem, key_pem) = ca.issue_server(names)?;
    crate::fsutil::write_private(&key, key_pem.as_bytes()).map_err(io(&key))?;
    crate::fsutil::write_public(&cert, cert_pem.as_bytes()).map_err(io(&cert))?;
    crate::fsutil::write_public(&names_file, wanted.as_bytes()).map_err(io(&names_file))?;
    Ok(())
}

fn ensure_admin_identity(
    ca: &Ca,
    db: &Db,
    signer: &LicenseSigner,
    dir: &Path,
    now: i64,
) -> Result<(), ServerError> {
    let admin = dir.join(ADMIN_DIR);
    if !ensure_identity(ca, db, &admin, "admin", PrincipalKind::Admin, now)? {
        return Ok(());
    }
    let pubfile = admin.join(pki::SERVER_KEY_FILE);
    crate::fsutil::write_public(&pubfile, signer.public_hex().as_bytes()).map_err(io(&pubfile))?;
    Ok(())
}

/// Creates the identity directory `at` for principal `name` of `kind` unless it exists.
/// Returns true if it was created now.
fn ensure_identity(
    ca: &Ca,
    db: &Db,
    at: &Path,
    name: &str,
    kind: PrincipalKind,
    now: i64,
) -> Result<bool, ServerError> {
    if at.join(pki::CERT_FILE).exists() {
        return Ok(false);
    }
    let (cert_pem, key_pem, serial) = ca.issue_client_with_key(name)?;
    let principal = Principal {
        name: name.into(),
        kind,
        serial,
        revoked: false,
    };
    db.call_sync(|c| db::insert_cert(c, &principal, None, now))?;
    Identity {
        cert_pem,
        key_pem,
        ca_pem: ca.pem().to_string(),
    }
    .save(at)?;
    Ok(true)
}

/// A running key server.
pub struct RunningServer {
    pub url: String,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    directory: crate::directory::KeyServerDirectory,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// The admin identity directory created at first start.
    pub fn admin_dir(&self) -> PathBuf {
        self.data_dir.join(ADMIN_DIR)
    }
    /// The key server's own client identity directory (service `keyserver`).
    pub fn service_dir(&self) -> PathBuf {
        self.data_dir.join(SERVICE_DIR)
    }
    /// The installation's directory of principals and identities, for authz and ARDS.
    pub fn directory(&self) -> crate::directory::KeyServerDirectory {
        self.directory.clone()
    }
    /// Stops accepting, closes every connection and waits for the loop to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
    /// Serves until the accept loop ends (it ends only on shutdown).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Opens (or creates) the data directory, binds and serves in the background.
pub async fn start(cfg: ServerConfig) -> Result<RunningServer, ServerError> {
    let data_dir = cfg.data_dir.clone();
    let listen = cfg.listen;
    // Held by the serving task until it has drained: one key server per data directory.
    let dir_lock = authz::statedir::lock(&data_dir)?;
    let (audit, audit_queue) = AuditLog::new();
    let (state, cfg) =
        tokio::task::spawn_blocking(move || init_state(&cfg, audit).map(|s| (s, cfg)))
            .await
            .map_err(|e| ServerError::Join(e.to_string()))??;
    let state = Arc::new(state);
    let read = |f: &str| {
        let p = data_dir.join(f);
        std::fs::read_to_string(&p).map_err(|source| ServerError::DataDir {
            path: p.display().to_string(),
            source,
        })
    };
    let cert_pem = read("server.pem")?;
    let key_pem = Zeroizing::new(read("server.key")?);
    let hook_audit = state.audit.clone();
    let clock = state.clock.clone();
    let hook: pki::RefusalHook = Arc::new(move |info: &pki::CertInfo, revoked: bool| {
        let ev = AuditEvent {
            time: clock.stamp(),
            device: Some(info.common_name.clone()),
            action: "handshake".into(),
            decision: "deny",
            reason: Some(
                if revoked {
                    crate::wire::Reason::DeviceRevoked
                } else {
                    crate::wire::Reason::UnknownDevice
                }
                .as_str()
                .into(),
            ),
            ..Default::default()
        };
        hook_audit.record_later(ev);
    });
    let directory = crate::directory::KeyServerDirectory {
        db: Arc::clone(&state.db),
        registry: Arc::clone(&state.registry),
    };
    let tls = pki::server_config(
        &cert_pem,
        &key_pem,
        state.ca.pem(),
        Arc::new(directory.clone()),
        Some(hook),
    )?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: listen,
        source,
    })?;
    let host = if addr.ip().is_unspecified() {
        cfg.server_names
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".into())
    } else {
        match addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    let url = format!("https://{host}:{}", addr.port());
    let router = crate::api::router(Arc::clone(&state));
    let (tx, rx) = watch::channel(false);
    let writer = audit_queue.start(&state.db)?;
    let checkpointer = tokio::spawn(checkpoint_loop(Arc::clone(&state.db)));
    let loop_state = Arc::clone(&state);
    let task = tokio::spawn(async move {
        let _dir_lock = dir_lock;
        accept_loop(listener, acceptor, router, loop_state, rx).await;
        checkpointer.abort();
        // Connections are gone and with them every sender: the writer drains and stops.
        let joined = tokio::task::spawn_blocking(move || writer.join());
        let _ = tokio::time::timeout(Duration::from_secs(5), joined).await;
    });
    tracing::info!(%url, "key server listening");
    Ok(RunningServer {
        url,
        addr,
        data_dir,
        directory,
        shutdown: tx,
        task,
    })
}

/// WAL frames (4 KiB pages) a checkpoint aims to find: the log stays around 16 MiB.
const CHECKPOINT_TARGET_FRAMES: f64 = 4096.0;
const CHECKPOINT_MIN_WAIT: Duration = Duration::from_secs(1);
const CHECKPOINT_MAX_WAIT: Duration = Duration::from_secs(30);

/// Moves the write-ahead log into the database off every request's path: connections do not
/// checkpoint on commit (see `db::open_conn`), so no request waits for the checkpoint's fsync,
/// and PASSIVE never blocks readers or the writer. Its fsync still slows the writes around it
/// (on the development VM cold license latency p99 was 2.2–2.4 ms with a checkpoint every
/// second, 1.5 ms with one every 30 s), so the pace follows the write rate: often enough to
/// keep the log near [`CHECKPOINT_TARGET_FRAMES`], at most once a second, at least every 30 s.
async fn checkpoint_loop(db: Arc<Db>) {
    let mut wait = CHECKPOINT_MIN_WAIT;
    loop {
        tokio::time::sleep(wait).await;
        match db.call(db::checkpoint).await {
            Ok(frames) => wait = next_checkpoint_wait(wait, frames),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

/// The wait after a checkpoint that found `frames` written during `last`.
fn next_checkpoint_wait(last: Duration, frames: u64) -> Duration {
    let rate = frames as f64 / last.as_secs_f64();
    if rate <= 0.0 {
        return CHECKPOINT_MAX_WAIT;
    }
    Duration::from_secs_f64(CHECKPOINT_TARGET_FRAMES / rate)
        .clamp(CHECKPOINT_MIN_WAIT, CHECKPOINT_MAX_WAIT)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Connection tasks live in this set: dropping it on shutdown aborts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _addr)) => {
                    conns.spawn(serve_conn(tcp, acceptor.clone(), router.clone(), Arc::clone(&state)));
                }
                Err(e) => {
                    // Usually EMFILE; back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_conn(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    router: axum::Router,
    state: Arc<State>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(state.limits.handshake_timeout, acceptor.accept(tcp)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            // Refused certificates are audited by the verifier; here: no certificate at all.
            let tls_err = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            if matches!(tls_err, Some(rustls::Error::NoCertificatesPresented)) {
                state.audit_async(AuditEvent {
                    time: state.clock.stamp(),
                    action: "handshake".into(),
                    decision: "deny",
                    reason: Some("no_client_certificate".into()),
                    ..Default::default()
                });
            }
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    // The verifier accepted the certificate; look the principal up again to attach it.
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| pki::parse_cert(der).ok())
        .and_then(|info| state.registry.active(&info))
        .map(|p| Peer {
            name: p.name,
            kind: p.kind,
            serial: p.serial,
        });
    let Some(peer) = peer else {
        return;
    };
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_read_timeout);
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_follow_the_write_rate() {
        let s = Duration::from_secs;
        // Idle: the longest wait; a trickle: proportionally longer; a flood: once a second.
        assert_eq!(next_checkpoint_wait(s(1), 0), CHECKPOINT_MAX_WAIT);
        assert_eq!(next_checkpoint_wait(s(4), 1024), s(16));
        assert_eq!(next_checkpoint_wait(s(1), 100), CHECKPOINT_MAX_WAIT);
        assert_eq!(next_checkpoint_wait(s(30), 1_000_000), CHECKPOINT_MIN_WAIT);
    }
}
