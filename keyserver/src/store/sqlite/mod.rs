//! The embedded engine of the key server's store: one SQLite file (WAL), a small connection pool
//! on the blocking thread pool (`pool`), the read cache kept coherent by the pool's update hooks,
//! the audit group commit on its own connection (`group_commit`), and background WAL
//! checkpoints ([`KeyStore::maintain`]). Only this module opens the file.

mod audit;
mod federation;
mod group_commit;
mod identities;
mod keys;
mod pool;
mod revocations;
mod schema;
mod sessions;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authz::principal::{Standing, WorkflowGrant};
use rusqlite::Connection;
use tokio::sync::watch;

use self::group_commit::AuditLog;
use self::keys::SqlReads;
use self::pool::Pool;
use self::revocations::Notifier;
use super::audit_chain::ChainRow;
use super::{
    AuditEvent, AuditFilter, AuditReceipt, KeyStore, LicenseReads, LicenseRows, ProviderRecord,
    RevokeTarget, RowsWanted, SealVersion, SessionRow, Shipped, StoreError, UserRow,
};
use crate::keys::SealedSeed;
use crate::pki::{Principal, PrincipalKind};
use crate::readcache::ReadCache;
use crate::revocation::{RevocationKind, RevocationsResponse};
use crate::wire::{
    AppInfo, AssetInfo, AuditRecord, DeviceInfo, DirectorySnapshot, GenerationStep,
    IdentityProvider, MountAuditRecord, ScopeInfo,
};

/// The key server's SQLite store.
pub struct SqliteStore {
    pool: Arc<Pool>,
    audit: AuditLog,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    revocations: Notifier,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path` with `connections` pooled
    /// connections, and starts the audit writer on a connection of its own.
    pub fn open(path: &Path, connections: usize) -> Result<Self, StoreError> {
        let pool = Pool::open(path, connections)?;
        let (audit, queue) = AuditLog::new();
        let writer = queue.start(&pool)?;
        Ok(SqliteStore {
            pool,
            audit,
            writer: Mutex::new(Some(writer)),
            revocations: Notifier::default(),
        })
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.pool.call(f).await
    }

    /// Runs `f` in one transaction and, once it committed having recorded a revocation event
    /// (`f` says so with `true`), wakes the stream's long polls.
    async fn revoking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(T, bool), StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (out, recorded) = self
            .call(move |c| {
                let tx = c.transaction()?;
                let (out, recorded) = f(&tx)?;
                tx.commit()?;
                Ok((out, recorded))
            })
            .await?;
        if recorded {
            self.revocations.committed();
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl KeyStore for SqliteStore {
    fn read_cache(&self) -> Option<&ReadCache> {
        Some(&self.pool.cache)
    }

    fn reads_now(&self, f: &mut dyn FnMut(&dyn LicenseReads)) -> bool {
        let cache = &self.pool.cache;
        self.pool
            .try_read_inline(|conn| f(&SqlReads { conn, cache }))
            .is_some()
    }

    async fn license_rows(&self, want: RowsWanted<'_>) -> Result<LicenseRows, StoreError> {
        let user = want.user.to_string();
        let app = want.app_digest.to_string();
        let assets = want.assets.to_vec();
        let scope = want.create_scope.map(str::to_string);
        let pool = Arc::clone(&self.pool);
        self.call(move |conn| {
            let want = RowsWanted {
                user: &user,
                app_digest: &app,
                assets: &assets,
                create_scope: scope.as_deref(),
            };
            // A batch reads in one transaction: a consistent snapshot, and one SQLite lock
            // instead of two per asset (locking showed up in the 1,000-key batch profile). A
            // single key reads outside one, so its rows can enter the read cache.
            if assets.len() > 1 {
                let tx = conn.transaction()?;
                let rows = keys::license_rows(
                    &SqlReads {
                        conn: &tx,
                        cache: &pool.cache,
                    },
                    want,
                )?;
                tx.commit()?;
                Ok(rows)
            } else {
                keys::license_rows(
                    &SqlReads {
                        conn,
                        cache: &pool.cache,
                    },
                    want,
                )
            }
        })
        .await
    }

    fn record_audit(&self, events: Vec<AuditEvent>) -> AuditReceipt {
        self.audit.record(events)
    }

    fn record_audit_later(&self, events: Vec<AuditEvent>) {
        self.audit.record_all_later(events);
    }

    async fn principals(&self) -> Result<Vec<Principal>, StoreError> {
        self.call(|c| identities::all_principals(c)).await
    }

    async fn add_cert(
        &self,
        principal: &Principal,
        hpke_public: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        let p = principal.clone();
        let hpke = hpke_public.map(str::to_string);
        self.call(move |c| identities::insert_cert(c, &p, hpke.as_deref(), now))
            .await
    }

    async fn active_cert_exists(
        &self,
        kind: PrincipalKind,
        name: &str,
    ) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.call(move |c| identities::active_cert_exists(c, kind, &name))
            .await
    }

    async fn revoke_certs(
        &self,
        kind: PrincipalKind,
        name: &str,
        now: i64,
    ) -> Result<usize, StoreError> {
        let name = name.to_string();
        self.call(move |c| identities::revoke_certs(c, kind, &name, now))
            .await
    }

    async fn revoke_device(&self, name: &str, now: i64) -> Result<usize, StoreError> {
        let name = name.to_string();
        self.revoking(move |tx| {
            let n = identities::revoke_certs(tx, PrincipalKind::Device, &name, now)?;
            if n > 0 {
                revocations::record(tx, now, RevocationKind::Device, &name, None)?;
                sessions::end_device(tx, &name)?;
            }
            Ok((n, n > 0))
        })
        .await
    }

    async fn certs(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        self.call(|c| identities::list_certs(c)).await
    }

    async fn device_hpke_public(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_string();
        self.call(move |c| identities::device_hpke_public(c, &name))
            .await
    }

    async fn put_workflow(
        &self,
        name: &str,
        grant: &WorkflowGrant,
        now: i64,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        let grant = grant.clone();
        self.call(move |c| identities::put_workflow(c, &name, &grant, now))
            .await
    }

    async fn directory_snapshot(&self) -> Result<DirectorySnapshot, StoreError> {
        self.call(identities::directory_snapshot).await
    }

    fn workflow_grant_now(&self, name: &str) -> Result<Option<WorkflowGrant>, StoreError> {
        self.pool.call_sync(|c| identities::get_workflow(c, name))
    }

    fn user_standing_now(&self, name: &str) -> Result<Standing, StoreError> {
        self.pool.call_sync(|c| {
            Ok(match identities::get_user(c, name)? {
                Some(u) if !u.disabled => Standing::Active,
                Some(_) => Standing::Inactive,
                None => Standing::Unknown,
            })
        })
    }

    fn device_standing_now(&self, name: &str) -> Result<Standing, StoreError> {
        self.pool.call_sync(|c| {
            Ok(
                if identities::active_cert_exists(c, PrincipalKind::Device, name)? {
                    Standing::Active
                } else if identities::cert_exists(c, PrincipalKind::Device, name)? {
                    Standing::Inactive
                } else {
                    Standing::Unknown
                },
            )
        })
    }

    fn app_standing_now(&self, digest: &str) -> Result<Standing, StoreError> {
        self.pool.call_sync(|c| {
            Ok(match identities::get_app(c, digest)? {
                Some(a) if a.revoked_at.is_none() => Standing::Active,
                Some(_) => Standing::Inactive,
                None => Standing::Unknown,
            })
        })
    }

    async fn add_user(&self, name: &str, password_hash: &str, now: i64) -> Result<(), StoreError> {
        let name = name.to_string();
        let hash = password_hash.to_string();
        self.call(move |c| identities::add_user(c, &name, &hash, now))
            .await
    }

    async fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        let name = name.to_string();
        self.call(move |c| identities::get_user(c, &name)).await
    }

    async fn disable_user(&self, name: &str, now: i64) -> Result<(), StoreError> {
        let name = name.to_string();
        self.revoking(move |tx| {
            identities::disable_user(tx, &name)?;
            revocations::record(tx, now, RevocationKind::User, &name, None)?;
            Ok(((), true))
        })
        .await
    }

    async fn enable_user(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(move |c| identities::enable_user(c, &name)).await
    }

    async fn users(&self) -> Result<Vec<crate::wire::UserInfo>, StoreError> {
        self.call(|c| identities::list_users(c)).await
    }

    async fn register_app(&self, app: &AppInfo) -> Result<(), StoreError> {
        let app = app.clone();
        self.call(move |c| identities::register_app(c, &app)).await
    }

    async fn app(&self, digest: &str) -> Result<Option<AppInfo>, StoreError> {
        let digest = digest.to_string();
        self.call(move |c| identities::get_app(c, &digest)).await
    }

    async fn apps(&self) -> Result<Vec<AppInfo>, StoreError> {
        self.call(|c| identities::list_apps(c)).await
    }

    async fn revoke_apps(&self, target: &RevokeTarget, now: i64) -> Result<usize, StoreError> {
        let target = target.clone();
        self.revoking(move |tx| {
            let (n, digests) = match &target {
                RevokeTarget::Digest(d) => {
                    (identities::revoke_app_digest(tx, d, now)?, vec![d.clone()])
                }
                RevokeTarget::NameVersion { name, version } => {
                    let digests = revocations::unrevoked_digests(tx, name, version)?;
                    let n = identities::revoke_app_name_version(tx, name, version, now)?;
                    (n, digests)
                }
            };
            if n == 0 {
                return Ok((0, false));
            }
            for digest in &digests {
                revocations::record(tx, now, RevocationKind::App, digest, None)?;
            }
            Ok((n, true))
        })
        .await
    }

    async fn app_digests_named(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let name = name.to_string();
        self.call(move |c| audit::app_digests_named(c, &name)).await
    }

    async fn create_scope(
        &self,
        name: &str,
        scope_id: &[u8; 16],
        sealed: &SealedSeed,
        now: i64,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        let scope_id = *scope_id;
        let sealed = sealed.clone();
        self.call(move |c| keys::create_scope(c, &name, &scope_id, &sealed, now))
            .await
    }

    async fn root_key_check(&self, proposed: &SealedSeed) -> Result<SealedSeed, StoreError> {
        let proposed = proposed.clone();
        self.call(move |c| keys::root_key_check(c, &proposed)).await
    }

    async fn put_session(&self, row: &SessionRow, now: i64) -> Result<(), StoreError> {
        let row = row.clone();
        self.call(move |c| sessions::put(c, &row, now)).await
    }

    async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let id = id.to_string();
        self.call(move |c| sessions::get(c, &id)).await
    }

    async fn put_identity_provider(&self, record: &ProviderRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.call(move |c| federation::put_identity_provider(c, &record))
            .await
    }

    async fn identity_provider(
        &self,
        organization: &str,
    ) -> Result<Option<ProviderRecord>, StoreError> {
        let organization = organization.to_string();
        self.call(move |c| federation::identity_provider(c, &organization))
            .await
    }

    async fn identity_providers(&self) -> Result<Vec<IdentityProvider>, StoreError> {
        self.call(|c| federation::identity_providers(c)).await
    }

    async fn remove_identity_provider(&self, organization: &str) -> Result<bool, StoreError> {
        let organization = organization.to_string();
        self.call(move |c| federation::remove_identity_provider(c, &organization))
            .await
    }

    async fn scope_info(&self, name: &str) -> Result<Option<ScopeInfo>, StoreError> {
        let name = name.to_string();
        self.call(move |c| keys::scope_info(c, &name)).await
    }

    async fn scope_infos(&self) -> Result<Vec<ScopeInfo>, StoreError> {
        self.call(|c| {
            let tx = c.transaction()?;
            let mut out = Vec::new();
            for s in keys::list_scopes(&tx)? {
                out.extend(keys::scope_info(&tx, &s.name)?);
            }
            Ok(out)
        })
        .await
    }

    async fn rotate_scope(
        &self,
        name: &str,
        now: i64,
        seal: SealVersion,
    ) -> Result<u32, StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            keys::rotate_scope(c, &name, now, |version| {
                seal(version).map_err(StoreError::Worker)
            })
        })
        .await
    }

    async fn revoke_key_version(
        &self,
        name: &str,
        version: u32,
        now: i64,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.revoking(move |tx| {
            keys::revoke_version(tx, &name, version, now)?;
            revocations::record(tx, now, RevocationKind::KeyVersion, &name, Some(version))?;
            Ok(((), true))
        })
        .await
    }

    async fn assets(&self) -> Result<Vec<AssetInfo>, StoreError> {
        self.call(|c| keys::list_assets(c)).await
    }

    async fn register_asset(
        &self,
        asset: &AssetInfo,
        audit: Vec<AuditEvent>,
    ) -> Result<(), StoreError> {
        let asset = asset.clone();
        self.call(move |c| {
            let tx = c.transaction()?;
            keys::insert_asset(&tx, &asset)?;
            audit::insert_audit_rows(&tx, &audit)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn rename_asset(
        &self,
        id: &str,
        new_path: &str,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        let new_path = new_path.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            keys::rename_asset(&tx, &id, &new_path)?;
            audit::insert_audit_rows(&tx, [&audit])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn advance_generation(
        &self,
        id: &str,
        step: GenerationStep,
        generation: u32,
    ) -> Result<AssetInfo, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            // Each step is one UPDATE, atomic on its own.
            match step {
                GenerationStep::Reserve => keys::reserve_generation(c, &id)?,
                GenerationStep::Settle => keys::settle_generation(c, &id, generation)?,
            }
            keys::get_asset(c, &id)?.ok_or_else(|| StoreError::NotFound(format!("asset {id}")))
        })
        .await
    }

    async fn audit_after(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.call(move |c| audit::audit_after(c, after, limit))
            .await
    }

    async fn audit_tail(&self, n: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.call(move |c| audit::audit_tail(c, n)).await
    }

    async fn audit_chain_after(&self, after: i64, limit: u32) -> Result<Vec<ChainRow>, StoreError> {
        self.call(move |c| audit::chain_rows_after(c, after, limit))
            .await
    }

    async fn audit_query(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        self.call(move |c| audit::audit_query(c, &filter)).await
    }

    async fn store_shipped(
        &self,
        device: &str,
        spool: &str,
        records: &[MountAuditRecord],
    ) -> Result<Shipped, StoreError> {
        let device = device.to_string();
        let spool = spool.to_string();
        let records = records.to_vec();
        self.call(move |c| audit::insert_shipped(c, &device, &spool, &records))
            .await
    }

    async fn revocations(
        &self,
        since: Option<i64>,
        limit: u32,
    ) -> Result<RevocationsResponse, StoreError> {
        self.call(move |c| {
            let head = revocations::head(c)?;
            let events = match since {
                Some(since) => revocations::events_after(c, since, limit)?,
                None => Vec::new(),
            };
            Ok(RevocationsResponse { head, events })
        })
        .await
    }

    fn watch_revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    async fn maintain(&self) {
        let mut wait = CHECKPOINT_MIN_WAIT;
        loop {
            tokio::time::sleep(wait).await;
            match self.call(pool::checkpoint).await {
                Ok(frames) => wait = next_checkpoint_wait(wait, frames),
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
            }
        }
    }

    async fn close(&self) {
        self.audit.stop();
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            let joined = tokio::task::spawn_blocking(move || writer.join());
            let _ = tokio::time::timeout(Duration::from_secs(5), joined).await;
        }
    }
}

/// WAL frames (4 KiB pages) a checkpoint aims to find: the log stays around 16 MiB.
const CHECKPOINT_TARGET_FRAMES: f64 = 4096.0;
const CHECKPOINT_MIN_WAIT: Duration = Duration::from_secs(1);
const CHECKPOINT_MAX_WAIT: Duration = Duration::from_secs(30);

/// The wait after a checkpoint that found `frames` written during `last`.
///
/// Connections do not checkpoint on commit (see `pool::open_conn`), so no request waits for
/// the checkpoint's fsync, and PASSIVE never blocks readers or the writer. Its fsync still
/// slows the writes around it (on the development VM cold license latency p99 was 2.2–2.4 ms
/// with a checkpoint every second, 1.5 ms with one every 30 s), so the pace follows the write
/// rate: often enough to keep the log near [`CHECKPOINT_TARGET_FRAMES`], at most once a
/// second, at least every 30 s.
fn next_checkpoint_wait(last: Duration, frames: u64) -> Duration {
    let rate = frames as f64 / last.as_secs_f64();
    if rate <= 0.0 {
        return CHECKPOINT_MAX_WAIT;
    }
    Duration::from_secs_f64(CHECKPOINT_TARGET_FRAMES / rate)
        .clamp(CHECKPOINT_MIN_WAIT, CHECKPOINT_MAX_WAIT)
}

#[cfg(test)]
mod tests;
