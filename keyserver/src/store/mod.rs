//! The key server's store layer: every durable read and write the service makes, as operations
//! in its own words ([`KeyStore`]), with SQLite ([`sqlite::SqliteStore`]) the embedded default.
//!
//! The interface is what another engine (PostgreSQL) implements; the service holds it as
//! `Arc<dyn KeyStore>` and never sees SQL. Its rules:
//! - Methods that may wait for I/O are `async`: an engine awaits its driver, SQLite runs on
//!   the blocking pool. The license path's own calls are synchronous and never wait:
//!   [`KeyStore::read_cache`] (memory), [`KeyStore::reads_now`] (a read that a local engine can
//!   answer at once, else it declines), [`KeyStore::record_audit`] (queues, returns a receipt).
//! - A change and what must commit with it are one operation, so one transaction: a revocation
//!   and its `revocations` row, a new asset and its grant's audit rows, a rename and its row.
//! - **Audit group commit**: [`KeyStore::record_audit`] returns an [`AuditReceipt`] that
//!   resolves only once the rows are committed; concurrent records share transactions. The
//!   license handler answers only after its receipt resolved: no key leaves before its audit
//!   rows are committed.
//! - **Revocation stream**: sequence numbers strictly increase and are never reused;
//!   [`KeyStore::watch_revocations`] ticks only after a commit that recorded one.
//! - **Migrations** are versioned per service and engine (SQLite: `sqlite::schema`).

pub mod audit_chain;
pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use authz::principal::{Standing, WorkflowGrant};
use tokio::sync::{oneshot, watch};

use crate::keys::SealedSeed;
use crate::pki::{Principal, PrincipalKind};
use crate::readcache::ReadCache;
use crate::revocation::RevocationsResponse;
use crate::wire::{
    AppInfo, AssetInfo, AuditRecord, DeviceInfo, DirectorySnapshot, GenerationStep,
    IdentityProvider, MountAuditRecord, ScopeInfo,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] authz::pg::PgError),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("database schema version {0} is newer than this build understands")]
    FutureSchema(i64),
    #[error("database worker failed: {0}")]
    Worker(String),
    /// A lookup the caller may not wait for ([`ReadCache`], a [`LicenseRows`] snapshot) does
    /// not hold the row.
    #[error("row not in the read cache")]
    NotCached,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Postgres(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Postgres(e.into())
    }
}

impl From<authz::migrate::MigrateError> for StoreError {
    fn from(e: authz::migrate::MigrateError) -> Self {
        match e {
            authz::migrate::MigrateError::Sqlite(e) => StoreError::Sqlite(e),
            authz::migrate::MigrateError::FutureSchema(v) => StoreError::FutureSchema(v),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UserRow {
    pub name: String,
    pub password_hash: String,
    pub generation: u64,
    pub disabled: bool,
}

#[derive(Debug, Clone)]
pub struct ScopeRow {
    pub name: String,
    pub scope_id: [u8; 16],
    pub current_version: u32,
}

#[derive(Debug, Clone)]
pub struct ScopeVersionRow {
    pub sealed: SealedSeed,
    pub revoked: bool,
}

/// A license session as the store keeps it (`crate::session`): its secret sealed under the
/// root key's session key ([`crate::keys::SessionSealKey`]), bound to every other field.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    pub device: String,
    /// The X25519 public key the session was agreed with.
    pub recipient: [u8; 32],
    pub not_after: i64,
    pub sealed: SealedSeed,
}

impl SessionRow {
    /// A row from its stored columns; `None`, logged, when a column has the wrong length: a
    /// tampered row is an unknown session, not a failed request.
    pub(crate) fn from_columns(
        id: &str,
        device: String,
        recipient: &[u8],
        not_after: i64,
        nonce: &[u8],
        ciphertext: Vec<u8>,
    ) -> Option<SessionRow> {
        let (Ok(recipient), Ok(nonce)) = (recipient.try_into(), nonce.try_into()) else {
            tracing::warn!(session = id, %device, "stored license session is malformed; treated as unknown");
            return None;
        };
        Some(SessionRow {
            id: id.to_string(),
            device,
            recipient,
            not_after,
            sealed: SealedSeed { nonce, ciphertext },
        })
    }
}

/// Which application builds a revocation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// One build, by its BLAKE3 digest.
    Digest(String),
    /// Every unrevoked build registered under this name and version.
    NameVersion { name: String, version: String },
}

impl std::fmt::Display for RevokeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevokeTarget::Digest(d) => f.write_str(d),
            RevokeTarget::NameVersion { name, version } => write!(f, "{name} {version}"),
        }
    }
}

/// One audit event to record (the id and nothing else is assigned by the store).
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    pub time: i64,
    pub user: Option<String>,
    pub app_digest: Option<String>,
    pub device: Option<String>,
    pub asset: Option<String>,
    pub action: String,
    pub decision: &'static str,
    pub rule_ids: Vec<String>,
    pub reason: Option<String>,
    pub license_id: Option<String>,
    /// The asset's path, when the recorder knows it; else the registry's path of `asset` is
    /// filled in at insert time.
    pub path: Option<String>,
}

/// What [`KeyStore::store_shipped`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    pub accepted: u32,
    pub duplicates: u32,
}

/// Filters of an audit query (validated and resolved by the API).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// A path glob in the one dialect (`authz::glob`).
    pub path_glob: Option<String>,
    pub user: Option<String>,
    pub device: Option<String>,
    /// Any of these digests (an app name resolves to every digest registered under it).
    pub app_digests: Option<Vec<String>>,
    pub decision: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: u32,
}

impl AuditFilter {
    /// Whether a row with `path` passes the path glob. Engines match it after the SQL, the glob
    /// being in `authz::glob`'s dialect, which no SQL `LIKE` speaks.
    pub fn admits_path(&self, path: Option<&str>) -> bool {
        self.path_glob
            .as_deref()
            .is_none_or(|glob| path.is_some_and(|p| authz::glob::matches(glob, p)))
    }
}

/// The rows a license decision reads. Implemented by the read cache (memory only), by
/// [`LicenseRows`] (a snapshot read for one request) and inside an engine (its own reads).
pub trait LicenseReads {
    fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError>;
    fn app(&self, digest: &str) -> Result<Option<AppInfo>, StoreError>;
    fn asset(&self, id: &str) -> Result<Option<AssetInfo>, StoreError>;
    fn scope_version(
        &self,
        scope: &str,
        version: u32,
    ) -> Result<Option<ScopeVersionRow>, StoreError>;
}

/// The rows a license request names, for [`KeyStore::license_rows`].
#[derive(Debug, Clone, Copy)]
pub struct RowsWanted<'a> {
    pub user: &'a str,
    pub app_digest: &'a str,
    pub assets: &'a [String],
    /// A create request's scope: its row and its current seed version.
    pub create_scope: Option<&'a str>,
}

/// One consistent snapshot of what a license request reads. A lookup of something the request
/// did not name is [`StoreError::NotCached`], never a silent "absent".
#[derive(Debug, Clone, Default)]
pub struct LicenseRows {
    pub user_name: String,
    pub user: Option<UserRow>,
    pub app_digest: String,
    pub app: Option<AppInfo>,
    /// Every asset named, registered or not.
    pub assets: HashMap<String, Option<AssetInfo>>,
    /// The seed versions of the registered assets (and of a create's scope).
    pub versions: HashMap<(String, u32), Option<ScopeVersionRow>>,
    pub create_scope: Option<ScopeRow>,
}

impl LicenseReads for LicenseRows {
    fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        if name != self.user_name {
            return Err(StoreError::NotCached);
        }
        Ok(self.user.clone())
    }
    fn app(&self, digest: &str) -> Result<Option<AppInfo>, StoreError> {
        if digest != self.app_digest {
            return Err(StoreError::NotCached);
        }
        Ok(self.app.clone())
    }
    fn asset(&self, id: &str) -> Result<Option<AssetInfo>, StoreError> {
        self.assets.get(id).cloned().ok_or(StoreError::NotCached)
    }
    fn scope_version(
        &self,
        scope: &str,
        version: u32,
    ) -> Result<Option<ScopeVersionRow>, StoreError> {
        self.versions
            .get(&(scope.to_string(), version))
            .cloned()
            .ok_or(StoreError::NotCached)
    }
}

/// Resolves once the audit rows it was given for are committed (`Ok`) or failed to be.
/// A concrete type, not a boxed future: one is made per license.
#[derive(Debug)]
pub struct AuditReceipt(oneshot::Receiver<Result<(), String>>);

impl AuditReceipt {
    /// A receipt and the sender its engine tells the outcome through.
    pub fn new() -> (oneshot::Sender<Result<(), String>>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, AuditReceipt(rx))
    }
}

impl Future for AuditReceipt {
    type Output = Result<(), StoreError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|outcome| match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Worker(format!("audit write failed: {e}"))),
            Err(_) => Err(StoreError::Worker("audit writer stopped".into())),
        })
    }
}

/// An organization's identity provider as stored: with its pseudonym key (sealed under the
/// root key: `RootKey::new_pseudonym_key`) when the provider is pseudonymous.
#[derive(Debug, Clone)]
pub struct ProviderRecord {
    pub provider: IdentityProvider,
    pub pseudonym_key: Option<SealedSeed>,
}

impl ProviderRecord {
    /// A record from its stored columns: the pseudonym key's nonce and ciphertext (both or
    /// neither; engines store them as two nullable columns).
    pub(crate) fn from_columns(
        provider: IdentityProvider,
        nonce: Option<&[u8]>,
        key: Option<Vec<u8>>,
    ) -> Result<Self, StoreError> {
        let pseudonym_key = match (nonce, key) {
            (Some(nonce), Some(ciphertext)) => Some(SealedSeed {
                nonce: nonce.try_into().map_err(|_| {
                    StoreError::Worker(format!(
                        "identity provider of {}: malformed pseudonym key nonce",
                        provider.organization
                    ))
                })?,
                ciphertext,
            }),
            _ => None,
        };
        Ok(ProviderRecord {
            provider,
            pseudonym_key,
        })
    }
}

/// Seals a scope's new seed version (see [`KeyStore::rotate_scope`]).
pub type SealVersion = Box<dyn FnOnce(u32) -> Result<SealedSeed, String> + Send>;

/// Every durable operation of the key server. See the module documentation for the rules an
/// engine keeps.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync + 'static {
    // ----- the license path -----

    /// The read cache, when this engine keeps one coherent with every commit (the license
    /// fast path reads it alone, on the async thread).
    fn read_cache(&self) -> Option<&ReadCache>;

    /// Runs `f` on the calling thread with reads that need no waiting (a local engine with a
    /// free connection); returns false, without running `f`, when that is not possible now.
    fn reads_now(&self, _f: &mut dyn FnMut(&dyn LicenseReads)) -> bool {
        false
    }

    /// The rows `want` names, as one consistent snapshot.
    async fn license_rows(&self, want: RowsWanted<'_>) -> Result<LicenseRows, StoreError>;

    /// Queues `events` for the next group commit and returns its receipt at once.
    fn record_audit(&self, events: Vec<AuditEvent>) -> AuditReceipt;

    /// Queues `events` without a receipt, for callers that must not wait (TLS handshakes,
    /// middleware) and release nothing. Under a flood they may be dropped (and that is logged).
    fn record_audit_later(&self, events: Vec<AuditEvent>);

    // ----- certificates, principals and the directory -----

    async fn principals(&self) -> Result<Vec<Principal>, StoreError>;
    /// Records an issued certificate; [`StoreError::Conflict`] when its serial is on record.
    async fn add_cert(
        &self,
        principal: &Principal,
        hpke_public: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError>;
    async fn active_cert_exists(&self, kind: PrincipalKind, name: &str)
        -> Result<bool, StoreError>;
    /// Revokes every active certificate of `kind` named `name`; how many.
    async fn revoke_certs(
        &self,
        kind: PrincipalKind,
        name: &str,
        now: i64,
    ) -> Result<usize, StoreError>;
    /// [`KeyStore::revoke_certs`] for a device, with its revocation event when any was active;
    /// its license sessions end with it.
    async fn revoke_device(&self, name: &str, now: i64) -> Result<usize, StoreError>;
    async fn certs(&self) -> Result<Vec<DeviceInfo>, StoreError>;
    /// The X25519 public key enrolled with the device's active certificate.
    async fn device_hpke_public(&self, name: &str) -> Result<Option<String>, StoreError>;
    async fn put_workflow(
        &self,
        name: &str,
        grant: &WorkflowGrant,
        now: i64,
    ) -> Result<(), StoreError>;
    async fn directory_snapshot(&self) -> Result<DirectorySnapshot, StoreError>;

    // Directory lookups answer synchronously: `authz::principal::Directory` is called from
    // request extractors and checks that do not await. SQLite reads its local file; a
    // networked engine answers from a mirror it keeps fresh (as `MirroredDirectory` does).
    fn workflow_grant_now(&self, name: &str) -> Result<Option<WorkflowGrant>, StoreError>;
    fn user_standing_now(&self, name: &str) -> Result<Standing, StoreError>;
    fn device_standing_now(&self, name: &str) -> Result<Standing, StoreError>;
    fn app_standing_now(&self, digest: &str) -> Result<Standing, StoreError>;

    // ----- users -----

    async fn add_user(&self, name: &str, password_hash: &str, now: i64) -> Result<(), StoreError>;
    async fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError>;
    /// Disables the user, bumps its generation (every token void) and records the revocation.
    async fn disable_user(&self, name: &str, now: i64) -> Result<(), StoreError>;
    /// Enables a disabled user again; its generation stays, so older tokens stay void.
    async fn enable_user(&self, name: &str) -> Result<(), StoreError>;
    /// Every user, by name.
    async fn users(&self) -> Result<Vec<crate::wire::UserInfo>, StoreError>;

    // ----- application builds -----

    async fn register_app(&self, app: &AppInfo) -> Result<(), StoreError>;
    async fn app(&self, digest: &str) -> Result<Option<AppInfo>, StoreError>;
    async fn apps(&self) -> Result<Vec<AppInfo>, StoreError>;
    /// Revokes the unrevoked builds `target` names, each with its revocation event; how many.
    async fn revoke_apps(&self, target: &RevokeTarget, now: i64) -> Result<usize, StoreError>;
    /// Digests registered under `name` (any version, revoked or not).
    async fn app_digests_named(&self, name: &str) -> Result<Vec<String>, StoreError>;

    // ----- key scopes -----

    /// A new scope with its first seed version; [`StoreError::Conflict`] if it exists.
    async fn create_scope(
        &self,
        name: &str,
        scope_id: &[u8; 16],
        sealed: &SealedSeed,
        now: i64,
    ) -> Result<(), StoreError>;
    async fn scope_info(&self, name: &str) -> Result<Option<ScopeInfo>, StoreError>;
    async fn scope_infos(&self) -> Result<Vec<ScopeInfo>, StoreError>;
    /// Adds version `current + 1` with the seed `seal` gives for it and makes it current.
    async fn rotate_scope(
        &self,
        name: &str,
        now: i64,
        seal: SealVersion,
    ) -> Result<u32, StoreError>;
    /// Revokes one seed version, with its revocation event.
    async fn revoke_key_version(
        &self,
        name: &str,
        version: u32,
        now: i64,
    ) -> Result<(), StoreError>;

    // ----- assets -----

    async fn assets(&self) -> Result<Vec<AssetInfo>, StoreError>;
    /// Registers a new asset together with the audit rows of the grant that created it.
    async fn register_asset(
        &self,
        asset: &AssetInfo,
        audit: Vec<AuditEvent>,
    ) -> Result<(), StoreError>;
    /// Moves an asset to `new_path`, together with the audit row of the rename.
    async fn rename_asset(
        &self,
        id: &str,
        new_path: &str,
        audit: AuditEvent,
    ) -> Result<(), StoreError>;
    /// Reserves the next write generation, or settles `generation` (csapfs FORMAT.md §7);
    /// returns the asset as it now stands.
    async fn advance_generation(
        &self,
        id: &str,
        step: GenerationStep,
        generation: u32,
    ) -> Result<AssetInfo, StoreError>;

    // ----- the audit trail -----

    /// Records with id > `after`, oldest first, at most `limit`.
    async fn audit_after(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// The last `n` records, oldest first.
    async fn audit_tail(&self, n: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// Rows with id > `after` as stored, chain included, oldest first, at most `limit`
    /// (what [`audit_chain::Verifier`] checks).
    async fn audit_chain_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<audit_chain::ChainRow>, StoreError>;
    /// The newest `filter.limit` records passing `filter`, oldest first. A user filter also
    /// finds denials recorded against the user a token names unverified.
    async fn audit_query(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>, StoreError>;
    /// Stores a mount's batch as `device`; a (device, spool, seq) on record already is a
    /// resend and is skipped.
    async fn store_shipped(
        &self,
        device: &str,
        spool: &str,
        records: &[MountAuditRecord],
    ) -> Result<Shipped, StoreError>;

    // ----- the root key's check value -----

    /// The root-key check value of this store: `proposed` ([`crate::keys::RootKey::seal_check`])
    /// is recorded when none is yet (first start), and what is recorded is returned. Replicas
    /// started concurrently agree on one.
    async fn root_key_check(&self, proposed: &SealedSeed) -> Result<SealedSeed, StoreError>;

    // ----- license sessions -----

    /// Records a new license session and drops every session that ended by `now` (by the
    /// index on their end: cheap, and it keeps the table at the live sessions).
    async fn put_session(&self, row: &SessionRow, now: i64) -> Result<(), StoreError>;
    /// The session `id`, whatever its end (the caller checks it).
    async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError>;

    // ----- delegated authentication -----

    /// Records an organization's identity provider, replacing the one it had.
    async fn put_identity_provider(&self, record: &ProviderRecord) -> Result<(), StoreError>;
    async fn identity_provider(
        &self,
        organization: &str,
    ) -> Result<Option<ProviderRecord>, StoreError>;
    /// Every organization's provider, by organization.
    async fn identity_providers(&self) -> Result<Vec<IdentityProvider>, StoreError>;
    /// Removes an organization's provider; whether one was on record.
    async fn remove_identity_provider(&self, organization: &str) -> Result<bool, StoreError>;

    // ----- identity revocations -----

    /// The head and, with `since`, at most `limit` events after it.
    async fn revocations(
        &self,
        since: Option<i64>,
        limit: u32,
    ) -> Result<RevocationsResponse, StoreError>;
    /// Ticks after each commit that recorded a revocation (subscribe before reading).
    fn watch_revocations(&self) -> watch::Receiver<u64>;

    /// For an engine that replicas share: ticks after the directory (certificates, users,
    /// builds, workflow grants) may have changed on another replica, so the server reloads
    /// what it keeps in memory of it (the certificate registry). `None`: only this process
    /// writes the store, and it updates its memory itself.
    fn watch_directory(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    // ----- lifecycle -----

    /// Background upkeep while the server runs (SQLite: WAL checkpoints); never returns.
    async fn maintain(&self);
    /// Commits what is queued and stops background writers; called once, at shutdown.
    async fn close(&self);
}

/// A directory snapshot's principals and the device map derived from them (a device name is
/// active while any of its certificates is), the part both engines build alike; each adds the
/// users, builds and workflow grants it reads.
pub(crate) fn snapshot_of_principals(
    principals: Vec<crate::pki::Principal>,
) -> crate::wire::DirectorySnapshot {
    let mut snap = crate::wire::DirectorySnapshot {
        principals: principals
            .into_iter()
            .map(|p| crate::wire::PrincipalEntry {
                serial: p.serial,
                name: p.name,
                kind: p.kind,
                revoked: p.revoked,
            })
            .collect(),
        ..Default::default()
    };
    for p in &snap.principals {
        if p.kind == crate::pki::PrincipalKind::Device {
            *snap.devices.entry(p.name.clone()).or_insert(false) |= !p.revoked;
        }
    }
    snap
}
