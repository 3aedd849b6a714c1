//! Key server start-up and transport: the data directory (CA, server certificate, root key,
//! token and license keys, the store, admin identity), the service's [`State`], and serving
//! it on the shared TLS 1.3 mTLS accept loop (`authz::listener`), each connection's requests
//! carrying its [`Peer`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use authz::statedir::DirLock;
use tokio::net::TcpListener;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::keys::{KeyError, RootKey};
use crate::license::{LicenseError, LicenseSigner};
use crate::pki::{self, Ca, Identity, PkiError, Principal, PrincipalKind, PrincipalRegistry};
use crate::ratelimit::{RateLimit, RateLimiter};
use crate::rules::RuleCheck;
use crate::session::SessionStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{AuditEvent, KeyStore, StoreError};
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
    #[error(
        "this key server was given another root key than the one the store's seeds are sealed \
         under (the store's root-key check does not open with it): start every replica with the \
         same root key (--root-key-file, --root-key-command or CSAP_ROOT_KEY)"
    )]
    RootKeyMismatch,
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
#[derive(Clone)]
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
    /// Connections of the store's pool (SQLite readers; PostgreSQL connections).
    pub db_connections: usize,
    /// Where the store is: SQLite in the data directory (the default) or a PostgreSQL
    /// database that replicas share (keys, the CA and certificates stay in the data directory;
    /// the root key never goes in the database).
    pub store: authz::pg::Engine,
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
            store: authz::pg::Engine::Sqlite,
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

/// Shared state of the service: what [`crate::api::app`] serves.
pub struct State {
    pub(crate) store: Arc<dyn KeyStore>,
    pub(crate) root: RootKey,
    pub(crate) tokens: TokenKey,
    pub(crate) signer: LicenseSigner,
    pub(crate) ca: Ca,
    pub(crate) registry: Arc<PrincipalRegistry>,
    pub(crate) rules: Arc<dyn RuleCheck>,
    pub(crate) limiter: RateLimiter,
    pub(crate) limits: Limits,
    pub(crate) token_ttl: i64,
    pub(crate) license_ttl: i64,
    pub(crate) password_cost: PasswordCost,
    /// A hash of a random password, verified against when a login names an unknown user.
    pub(crate) dummy_hash: String,
    pub(crate) clock: Clock,
    /// License sessions (in the store, the ones in use cached); see [`crate::session`].
    pub(crate) sessions: SessionStore,
    /// Verifies the organizations' ID tokens (delegated authentication).
    pub(crate) federation: crate::federation::Federation,
    data_dir: PathBuf,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl State {
    /// Queues an audit event without waiting (where nothing may block: TLS handshakes,
    /// middleware). Under a flood, events are dropped and that is logged.
    pub(crate) fn audit_async(&self, ev: AuditEvent) {
        self.store.record_audit_later(vec![ev]);
    }

    /// Opens (or creates) the data directory and its SQLite store, as [`start`] does, without
    /// listening: for [`crate::api::app`] in-process. The returned lock keeps a second
    /// process off the directory; hold it while serving.
    pub async fn open(cfg: &ServerConfig) -> Result<(Arc<State>, DirLock), ServerError> {
        let dir_lock = authz::statedir::lock(&cfg.data_dir)?;
        let files_cfg = cfg.clone();
        let files = tokio::task::spawn_blocking(move || open_files(&files_cfg))
            .await
            .map_err(|e| ServerError::Join(e.to_string()))??;
        let store: Arc<dyn KeyStore> = match (&cfg.store, files.store) {
            (_, Some(sqlite)) => sqlite,
            (authz::pg::Engine::Postgres(target), None) => Arc::new(
                crate::store::postgres::PgKeyStore::connect(target, cfg.db_connections).await?,
            ),
            (authz::pg::Engine::Sqlite, None) => unreachable!("open_files opens SQLite"),
        };
        let DataFiles {
            root,
            tokens,
            signer,
            ca,
            store: _,
            dummy_hash,
        } = files;
        check_root_key(&root, store.as_ref()).await?;
        let dir = &cfg.data_dir;
        ensure_admin_identity(&ca, store.as_ref(), &signer, dir, cfg.clock.now()?).await?;
        // The key server's own identity as a policy enforcement point: it reads its ARDS
        // stream (PEP `keyserver`) with this certificate.
        ensure_identity(
            &ca,
            store.as_ref(),
            &dir.join(SERVICE_DIR),
            authz::template::KEYSERVER_PEP,
            PrincipalKind::Service,
            cfg.clock.now()?,
        )
        .await?;
        let principals = store.principals().await?;
        let sessions = SessionStore::new(
            cfg.session_ttl_secs,
            SESSION_CAPACITY,
            Arc::clone(&store),
            root.session_seal_key(),
        );
        let state = State {
            store,
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
            dummy_hash,
            clock: cfg.clock.clone(),
            sessions,
            federation: crate::federation::Federation::new(),
            data_dir: cfg.data_dir.clone(),
        };
        Ok((Arc::new(state), dir_lock))
    }

    /// The admin identity directory created at first start.
    pub fn admin_dir(&self) -> PathBuf {
        self.data_dir.join(ADMIN_DIR)
    }

    /// The principal a client certificate (PEM) is registered as, if it is active: how a test
    /// of [`crate::api::app`] makes a request come from that identity, as the TLS layer would.
    pub fn peer_of(&self, cert_pem: &str) -> Option<Peer> {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
        let p = self.registry.active(&pki::parse_cert(&der).ok()?)?;
        Some(Peer {
            name: p.name,
            kind: p.kind,
            serial: p.serial,
        })
    }

    /// The installation's directory of principals and identities, for authz and ARDS.
    pub fn directory(&self) -> crate::directory::KeyServerDirectory {
        crate::directory::KeyServerDirectory {
            store: Arc::clone(&self.store),
            registry: Arc::clone(&self.registry),
        }
    }
}

/// License sessions cached at most (each is ~200 bytes; a device keeps one per connection). One
/// evicted is read from the store again on its next use.
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

/// What the data directory holds: keys, the CA, the store.
struct DataFiles {
    root: RootKey,
    tokens: TokenKey,
    signer: LicenseSigner,
    ca: Ca,
    /// The SQLite store; `None` on PostgreSQL (connected afterwards, on the runtime).
    store: Option<Arc<dyn KeyStore>>,
    dummy_hash: String,
}

/// First start creates everything; a restart reuses it all (on the blocking pool: file I/O,
/// SQLite migrations, an argon2 hash).
fn open_files(cfg: &ServerConfig) -> Result<DataFiles, ServerError> {
    let dir = &cfg.data_dir;
    // `State::open` took the data-dir lock, which made `dir` private; tighten what an older
    // version or a copy left looser before anything reads it.
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
    let store: Option<Arc<dyn KeyStore>> = match cfg.store {
        authz::pg::Engine::Sqlite => {
            let db_path = dir.join(DB_FILE);
            // Password hashes, sealed seeds and the audit trail live here: owner-only, like
            // the keys.
            authz::statedir::private_sqlite(&db_path)?;
            Some(Arc::new(SqliteStore::open(&db_path, cfg.db_connections)?))
        }
        authz::pg::Engine::Postgres(_) => None,
    };
    ensure_server_cert(&ca, dir, &cfg.server_names)?;
    let dummy_hash = {
        let mut pw = [0u8; 16];
        crate::keys::random_bytes(&mut pw)?;
        crate::token::hash_password(&hex::encode(pw), cfg.password_cost)?
    };
    Ok(DataFiles {
        root,
        tokens,
        signer,
        ca,
        store,
        dummy_hash,
    })
}

/// Refuses a root key other than the one the store was first started with: on a shared
/// database a replica with another key would seal new seeds no other replica can open, and
/// fail every license for the old ones.
async fn check_root_key(root: &RootKey, store: &dyn KeyStore) -> Result<(), ServerError> {
    let recorded = store.root_key_check(&root.seal_check()?).await?;
    if root.opens_check(&recorded) {
        Ok(())
    } else {
        Err(ServerError::RootKeyMismatch)
    }
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

async fn ensure_admin_identity(
    ca: &Ca,
    store: &dyn KeyStore,
    signer: &LicenseSigner,
    dir: &Path,
    now: i64,
) -> Result<(), ServerError> {
    let admin = dir.join(ADMIN_DIR);
    if !ensure_identity(ca, store, &admin, "admin", PrincipalKind::Admin, now).await? {
        return Ok(());
    }
    let pubfile = admin.join(pki::SERVER_KEY_FILE);
    crate::fsutil::write_public(&pubfile, signer.public_hex().as_bytes()).map_err(io(&pubfile))?;
    Ok(())
}

/// Creates the identity directory `at` for principal `name` of `kind` unless it exists (at
/// start-up, before anything is served: its few small file writes stay on this thread).
/// Returns true if it was created now.
async fn ensure_identity(
    ca: &Ca,
    store: &dyn KeyStore,
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
    store.add_cert(&principal, None, now).await?;
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
    state: Arc<State>,
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
    /// The key server's part in the operations listener (`authz::ops`): readiness, gauges.
    pub fn probe(&self) -> Arc<dyn authz::ops::Probe> {
        Arc::clone(&self.state) as Arc<dyn authz::ops::Probe>
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
    let (state, dir_lock) = State::open(&cfg).await?;
    let read = |f: &str| {
        let p = data_dir.join(f);
        std::fs::read_to_string(&p).map_err(|source| ServerError::DataDir {
            path: p.display().to_string(),
            source,
        })
    };
    let cert_pem = read("server.pem")?;
    let key_pem = Zeroizing::new(read("server.key")?);
    let hook_store = Arc::clone(&state.store);
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
        hook_store.record_audit_later(vec![ev]);
    });
    let directory = state.directory();
    let tls = pki::server_config(
        &cert_pem,
        &key_pem,
        state.ca.pem(),
        Arc::new(directory.clone()),
        Some(hook),
    )?;
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
    let router = crate::api::app(Arc::clone(&state));
    let kept_state = Arc::clone(&state);
    let (tx, mut rx) = watch::channel(false);
    let store = Arc::clone(&state.store);
    let maintenance = tokio::spawn(async move { store.maintain().await });
    let registry_refresh = state.store.watch_directory().map(|changes| {
        tokio::spawn(follow_directory(
            changes,
            Arc::clone(&state.store),
            Arc::clone(&state.registry),
        ))
    });
    let admission = RegistryAdmission {
        registry: Arc::clone(&state.registry),
        audit: Arc::clone(&state.store),
        clock: state.clock.clone(),
    };
    let options = authz::listener::ServeOptions {
        handshake_timeout: state.limits.handshake_timeout,
        header_read_timeout: state.limits.header_read_timeout,
    };
    let task = tokio::spawn(async move {
        let _dir_lock = dir_lock;
        let stop = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        authz::listener::serve(listener, tls, router, options, admission, stop).await;
        maintenance.abort();
        if let Some(refresh) = registry_refresh {
            refresh.abort();
        }
        // Connections are gone: commit what they queued and stop the audit writer.
        state.store.close().await;
    });
    tracing::info!(%url, "key server listening");
    Ok(RunningServer {
        url,
        addr,
        data_dir,
        directory,
        state: kept_state,
        shutdown: tx,
        task,
    })
}

/// Keeps the certificate registry (what handshakes check) in step with a store that other
/// replicas write: after each directory change, the certificates as the store lists them.
async fn follow_directory(
    mut changes: watch::Receiver<u64>,
    store: Arc<dyn KeyStore>,
    registry: Arc<PrincipalRegistry>,
) {
    while changes.changed().await.is_ok() {
        match store.principals().await {
            Ok(principals) => registry.merge(principals),
            Err(e) => tracing::warn!(error = %e, "certificate registry refresh failed"),
        }
    }
}

/// The key server's mTLS hook on the shared accept loop: the verifier accepted the certificate;
/// its principal is looked up again to attach it as the connection's [`Peer`]. A handshake
/// without any certificate is audited (refused certificates are, by the verifier's hook).
struct RegistryAdmission {
    registry: Arc<PrincipalRegistry>,
    audit: Arc<dyn KeyStore>,
    clock: Clock,
}

impl authz::listener::Attach for Peer {
    fn attach(&self, extensions: &mut axum::http::Extensions) {
        extensions.insert(self.clone());
    }
}

impl authz::listener::Admission for RegistryAdmission {
    type Attached = Peer;

    fn admit(&self, cert: Option<&pki::CertInfo>) -> Option<Peer> {
        let p = self.registry.active(cert?)?;
        Some(Peer {
            name: p.name,
            kind: p.kind,
            serial: p.serial,
        })
    }

    fn handshake_failed(&self, error: &std::io::Error) {
        let tls_err = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if matches!(tls_err, Some(rustls::Error::NoCertificatesPresented)) {
            self.audit.record_audit_later(vec![AuditEvent {
                time: self.clock.stamp(),
                action: "handshake".into(),
                decision: "deny",
                reason: Some("no_client_certificate".into()),
                ..Default::default()
            }]);
        }
    }
}
