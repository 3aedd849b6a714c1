//! The PostgreSQL engine of the key server's store: the SQLite engine's tables in schema
//! `keyserver` of a database that any number of key-server replicas share, on `authz::pg`'s
//! plumbing (the URL, a pool in the schema, versioned migrations, `LISTEN`).
//!
//! How it keeps the store's contract (`crate::store`) across replicas:
//! - **Audit group commit** (`group_commit`): one writer task per replica commits everything
//!   queued in one transaction; a receipt resolves only after that commit.
//! - **Revocations** (`revocations`): numbered under an advisory lock inside the committing
//!   transaction, so in commit order on every replica; the transaction's
//!   `NOTIFY csap_keyserver, 'revocation'` wakes the watchers of every replica (this one's are
//!   woken right after its own commit too).
//! - **The directory** (`*_now` lookups, which may not wait): answered from a mirror of
//!   [`DirectorySnapshot`] that this replica reloads after each of its own identity writes
//!   (before the write returns) and on `NOTIFY csap_keyserver, 'directory'` from any replica;
//!   [`KeyStore::watch_directory`] ticks after each reload, so the server refreshes its
//!   certificate registry (the TLS handshake's view) from the database too.
//! - No read cache: every license reads the database (one snapshot per batch), so a change
//!   committed by any replica is seen by the next license on all of them.
//! - **License sessions** are rows every replica reads (a replica caches the ones it used), so
//!   a device whose requests move to another replica keeps its session.
//! - The root key is not here: seeds and session secrets are stored sealed under it (and a key
//!   derived from it), as on SQLite.

mod audit;
mod federation;
mod group_commit;
mod identities;
mod keys;
mod operations;
mod revocations;
mod schema;
mod sessions;

use std::sync::Arc;

use authz::pg::{Notice, Target};
use authz::principal::{Directory, Standing, WorkflowGrant};
use deadpool_postgres::{Pool, Transaction};
use tokio::sync::watch;
use tokio_postgres::GenericClient;

use self::group_commit::AuditWriter;
use super::audit_chain::ChainRow;
use super::{
    AuditEvent, AuditFilter, AuditReceipt, KeyStore, LicenseRows, ProviderRecord, RevokeTarget,
    RowsWanted, SealVersion, SessionRow, Shipped, StoreError, UserRow,
};
use crate::directory::MirroredDirectory;
use crate::keys::SealedSeed;
use crate::pki::{Principal, PrincipalKind};
use crate::readcache::ReadCache;
use crate::revocation::{RevocationKind, RevocationsResponse};
use crate::wire::{
    AppInfo, AssetInfo, AuditRecord, DeviceInfo, DirectorySnapshot, GenerationStep,
    IdentityProvider, MountAuditRecord, ScopeInfo, UserInfo,
};

pub use self::schema::SCHEMA;

/// The channel every replica listens on.
const CHANNEL: &str = "csap_keyserver";

/// What a committed transaction changed, as its notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Revocation,
    Directory,
}

impl Change {
    fn payload(self) -> &'static str {
        match self {
            Change::Revocation => "revocation",
            Change::Directory => "directory",
        }
    }
}

/// Sends `change` to every replica when the caller's transaction commits.
pub(crate) async fn notify(c: &impl GenericClient, change: Change) -> Result<(), StoreError> {
    c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &change.payload()])
        .await?;
    Ok(())
}

/// A unique violation is a [`StoreError::Conflict`] on `what`; anything else stays an error.
pub(crate) fn unique(e: tokio_postgres::Error, what: impl FnOnce() -> String) -> StoreError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict(what())
    } else {
        e.into()
    }
}

/// The key server's store on PostgreSQL.
pub struct PgKeyStore {
    pool: Pool,
    audit: AuditWriter,
    revocations: watch::Sender<u64>,
    shared: Arc<Shared>,
    listener: tokio::task::JoinHandle<()>,
}

/// What the notification task and the store share.
struct Shared {
    pool: Pool,
    mirror: MirroredDirectory,
    /// Serialises mirror reloads: the last to finish read last.
    reload: tokio::sync::Mutex<()>,
    directory: watch::Sender<u64>,
}

impl std::fmt::Debug for PgKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgKeyStore").finish_non_exhaustive()
    }
}

impl Shared {
    /// Reads the directory afresh into the mirror and tells the watchers.
    async fn reload(&self) -> Result<(), StoreError> {
        let _one = self.reload.lock().await;
        let mut client = self.pool.get().await?;
        let tx = begin_snapshot(&mut client).await?;
        let snap = identities::directory_snapshot(&*tx).await?;
        tx.commit().await?;
        self.mirror.replace(snap);
        self.directory.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}

impl PgKeyStore {
    /// Connects (a pool of at most `pool_size`), migrates schema `keyserver`, loads the
    /// directory mirror and starts the audit writer and the notification listener.
    pub async fn connect(target: &Target, pool_size: usize) -> Result<Self, StoreError> {
        // One connection more than asked: the audit writer holds one while it commits.
        let pool = target.pool(SCHEMA, pool_size + 1)?;
        authz::pg::migrate(&pool, SCHEMA, schema::MIGRATIONS).await?;
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            mirror: MirroredDirectory::default(),
            reload: tokio::sync::Mutex::new(()),
            directory: watch::channel(0).0,
        });
        shared.reload().await?;
        let revocations = watch::channel(0).0;
        let listener = tokio::spawn(follow(
            target.listen(CHANNEL),
            Arc::clone(&shared),
            revocations.clone(),
        ));
        Ok(PgKeyStore {
            audit: AuditWriter::start(pool.clone()),
            pool,
            revocations,
            shared,
            listener,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// After a commit that recorded a revocation or changed the directory: wakes this
    /// replica's watchers and reloads its mirror (other replicas hear the notification).
    async fn changed(&self, changed: Changed) {
        if changed.revocation {
            self.revocations.send_modify(|n| *n = n.wrapping_add(1));
        }
        if changed.directory {
            if let Err(e) = self.shared.reload().await {
                // The notification reloads it again; until then the mirror is behind.
                tracing::warn!(error = %e, "directory reload failed after a write");
            }
        }
    }
}

/// What a committed write transaction changed (for [`PgKeyStore::changed`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Changed {
    revocation: bool,
    directory: bool,
}

const DIRECTORY: Changed = Changed {
    revocation: false,
    directory: true,
};
const REVOKED: Changed = Changed {
    revocation: true,
    directory: true,
};
const NOTHING: Changed = Changed {
    revocation: false,
    directory: false,
};

/// Applies every replica's notifications: revocations wake the watchers, directory changes
/// reload the mirror; after a (re)connection, when something may have been missed, both.
async fn follow(
    mut notices: tokio::sync::mpsc::UnboundedReceiver<Notice>,
    shared: Arc<Shared>,
    revocations: watch::Sender<u64>,
) {
    while let Some(notice) = notices.recv().await {
        let (revoked, directory) = match &notice {
            Notice::Payload(p) if p == Change::Revocation.payload() => (true, false),
            Notice::Payload(p) if p == Change::Directory.payload() => (false, true),
            Notice::Payload(p) => {
                tracing::debug!(payload = %p, "unknown key server notification");
                continue;
            }
            Notice::Resync => (true, true),
        };
        if directory {
            if let Err(e) = shared.reload().await {
                tracing::warn!(error = %e, "directory reload after a notification failed");
            }
        }
        if revoked {
            revocations.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Begins a read of one snapshot.
async fn begin_snapshot(
    client: &mut deadpool_postgres::Client,
) -> Result<Transaction<'_>, StoreError> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

impl Drop for PgKeyStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}
