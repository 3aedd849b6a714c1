//! The key server's SQLite store (the only code that opens it): a small connection pool used
//! from `spawn_blocking`, schema migrations via `PRAGMA user_version`, and every query.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use crate::keys::SealedSeed;
use crate::pki::{Principal, PrincipalKind};
use crate::readcache::ReadCache;
use crate::wire::{AppCode, AppInfo, AssetInfo, AuditRecord, DeviceInfo, MountAuditRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("database schema version {0} is newer than this build understands")]
    FutureSchema(i64),
    #[error("database worker failed: {0}")]
    Worker(String),
    /// A cache-only lookup ([`crate::readcache::Reader::CacheOnly`]) missed.
    #[error("row not in the read cache")]
    NotCached,
}

/// Schema migrations; entry `i` moves `user_version` from `i` to `i + 1`. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    "CREATE TABLE certs (
        serial TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('device', 'admin')),
        hpke_public TEXT,
        issued_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX certs_name ON certs(name);
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        generation INTEGER NOT NULL DEFAULT 1,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE applications (
        digest TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        vendor TEXT,
        registered_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE scopes (
        name TEXT PRIMARY KEY,
        scope_id BLOB NOT NULL UNIQUE,
        current_version INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE scope_versions (
        scope TEXT NOT NULL REFERENCES scopes(name),
        version INTEGER NOT NULL,
        nonce BLOB NOT NULL,
        sealed_seed BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER,
        PRIMARY KEY (scope, version)
    );
    CREATE TABLE assets (
        asset_id TEXT PRIMARY KEY,
        scope TEXT NOT NULL REFERENCES scopes(name),
        version INTEGER NOT NULL,
        path TEXT NOT NULL,
        creator TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX assets_path ON assets(path);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time INTEGER NOT NULL,
        user TEXT,
        app_digest TEXT,
        device TEXT,
        asset TEXT,
        action TEXT NOT NULL,
        decision TEXT NOT NULL,
        rule_ids TEXT NOT NULL,
        reason TEXT,
        license_id TEXT
    );",
    // 2: control-plane principals (workflow, auditor, service certificates) and what an admin
    // granted each workflow. SQLite cannot widen a CHECK in place: rebuild `certs`.
    "CREATE TABLE certs_v2 (
        serial TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('device', 'admin', 'workflow', 'auditor', 'service')),
        hpke_public TEXT,
        issued_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    INSERT INTO certs_v2 SELECT serial, name, kind, hpke_public, issued_at, revoked_at FROM certs;
    DROP TABLE certs;
    ALTER TABLE certs_v2 RENAME TO certs;
    CREATE INDEX certs_name ON certs(name);
    CREATE TABLE workflows (
        name TEXT PRIMARY KEY,
        scopes TEXT NOT NULL,
        paths TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    // 3: identity revocation events (see crate::revocation)
    crate::revocation::MIGRATION,
    // 4: one audit trail for every enforcement point: the asset's path at decision time, who
    // decided (`source`), the caller's uid, aggregated counts, and the (spool, seq) of rows a
    // mount shipped, unique per device so a resend is recognised.
    "ALTER TABLE audit ADD COLUMN path TEXT;
    ALTER TABLE audit ADD COLUMN source TEXT NOT NULL DEFAULT 'keyserver';
    ALTER TABLE audit ADD COLUMN uid INTEGER;
    ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE audit ADD COLUMN spool TEXT;
    ALTER TABLE audit ADD COLUMN seq INTEGER;
    UPDATE audit SET path = (SELECT a.path FROM assets a WHERE a.asset_id = audit.asset)
        WHERE asset IS NOT NULL;
    CREATE INDEX audit_time ON audit(time);
    CREATE INDEX audit_path ON audit(path);
    CREATE INDEX audit_user ON audit(user, time);
    CREATE UNIQUE INDEX audit_spool_seq ON audit(device, spool, seq) WHERE seq IS NOT NULL;",
    // 5: each asset's write generation and a reserved next one (csapfs FORMAT.md §7); every
    // asset registered before starts at generation 0, which is what its header says.
    "ALTER TABLE assets ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE assets ADD COLUMN pending_generation INTEGER;",
    // 6: what each build may map beyond the mount's defaults (wire::AppCode)
    "ALTER TABLE applications ADD COLUMN allow_jit INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE applications ADD COLUMN allow_userns INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE applications ADD COLUMN libraries TEXT NOT NULL DEFAULT '[]';",
];

/// A fixed pool of connections; each call runs on the blocking thread pool.
pub struct Db {
    conns: Mutex<Vec<Pooled>>,
    permits: tokio::sync::Semaphore,
    path: PathBuf,
    /// Rows the license path reads, kept coherent by the pool's update hooks.
    pub cache: ReadCache,
}

/// A pooled connection and the mark its update hook sets when it changes a cached table.
struct Pooled {
    conn: Connection,
    dirty: Arc<AtomicBool>,
}

/// Whether a change can make a [`ReadCache`] entry stale. Inserts of assets cannot (only rows
/// that exist are cached, and asset ids are new): skipping them keeps imports from voiding the
/// cache at every file. Every other change to a cached table counts.
fn changes_cached_rows(action: rusqlite::hooks::Action, table: &str) -> bool {
    match table {
        "assets" => action != rusqlite::hooks::Action::SQLITE_INSERT,
        "users" | "applications" | "scopes" | "scope_versions" => true,
        _ => false,
    }
}

fn pooled(path: &Path) -> Result<Pooled, StoreError> {
    let conn = open_conn(path)?;
    let dirty = Arc::new(AtomicBool::new(false));
    let mark = Arc::clone(&dirty);
    conn.update_hook(Some(
        move |action: rusqlite::hooks::Action, _db: &str, table: &str, _row: i64| {
            if changes_cached_rows(action, table) {
                mark.store(true, Ordering::SeqCst);
            }
        },
    ));
    Ok(Pooled { conn, dirty })
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // The server checkpoints from a background task (`checkpoint`); a commit that
    // checkpointed would make every request queued behind it wait for an fsync.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// Copies the write-ahead log into the database without waiting for readers or writers.
/// Returns how many frames (pages) the log held.
pub fn checkpoint(conn: &mut Connection) -> Result<u64, StoreError> {
    let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    Ok(frames.max(0) as u64)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let target = MIGRATIONS.len() as i64;
    if current > target {
        return Err(StoreError::FutureSchema(current));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

impl Db {
    /// Opens (creating and migrating) the database with `size` pooled connections.
    pub fn open(path: &Path, size: usize) -> Result<Arc<Self>, StoreError> {
        let size = size.max(1);
        let mut first = pooled(path)?;
        migrate(&mut first.conn)?;
        let mut conns = vec![first];
        for _ in 1..size {
            conns.push(pooled(path)?);
        }
        Ok(Arc::new(Db {
            conns: Mutex::new(conns),
            permits: tokio::sync::Semaphore::new(size),
            path: path.to_path_buf(),
            cache: ReadCache::default(),
        }))
    }

    /// Runs `f` with a pooled connection on the blocking pool (never on an async worker).
    pub async fn call<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| E::from(StoreError::Worker(e.to_string())))?;
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || db.with_conn(f).map_err(E::from)?)
            .await
            .map_err(|e| E::from(StoreError::Worker(e.to_string())))?
    }

    /// Runs a short read `f` on the calling (async) thread if a pooled connection is free right
    /// now, else `None`. WAL readers never wait for writers, so this blocks only for the read
    /// itself; it saves the two thread hand-offs of [`Db::call`] (the license fast path).
    pub fn try_read_inline<T>(&self, f: impl FnOnce(&Connection) -> T) -> Option<T> {
        let _permit = self.permits.try_acquire().ok()?;
        self.with_conn(|conn| f(conn)).ok()
    }

    /// A connection of its own, outside the pool (the audit writer's).
    pub fn dedicated_connection(&self) -> Result<Connection, StoreError> {
        open_conn(&self.path)
    }

    /// Runs `f` synchronously (start-up only, before the runtime serves requests).
    pub fn call_sync<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_conn(f)?
    }

    /// Runs `f` on a pooled connection; afterwards (its writes committed or rolled back) voids
    /// the read cache if `f` changed a cached table. The outer error is the pool's own.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> Result<T, StoreError> {
        let p = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .ok_or_else(|| StoreError::Worker("pool empty".into()))?;
        let mut out = Checkout {
            db: self,
            p: Some(p),
        };
        let conn = &mut out.p.as_mut().expect("checked out").conn;
        Ok(f(conn))
    }
}

/// A connection out of the pool. Its drop — also when `f` panicked after committing — voids the
/// read cache if the connection changed a cached table, and returns the connection (an open
/// transaction was rolled back by its own drop), so the pool never shrinks.
struct Checkout<'a> {
    db: &'a Db,
    p: Option<Pooled>,
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.p.take() {
            if p.dirty.swap(false, Ordering::SeqCst) {
                self.db.cache.changed();
            }
            self.db
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(p);
        }
    }
}

/// SQLite's write lock was taken by another connection (and the busy timeout ran out).
pub fn is_busy(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DatabaseBusy)
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

// ---------- certificates ----------

/// Everything [`crate::wire::DirectorySnapshot`] holds, read in one transaction.
pub fn directory_snapshot(
    conn: &mut Connection,
) -> Result<crate::wire::DirectorySnapshot, StoreError> {
    let tx = conn.transaction()?;
    let mut snap = crate::wire::DirectorySnapshot {
        principals: all_principals(&tx)?
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
        if p.kind == PrincipalKind::Device {
            *snap.devices.entry(p.name.clone()).or_insert(false) |= !p.revoked;
        }
    }
    let mut st = tx.prepare("SELECT name, disabled FROM users")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (name, disabled) = row?;
        snap.users.insert(name, disabled == 0);
    }
    let mut st = tx.prepare("SELECT digest, revoked_at FROM applications")?;
    for row in st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
    })? {
        let (digest, revoked) = row?;
        snap.applications.insert(digest, revoked.is_none());
    }
    let mut st = tx.prepare("SELECT name, scopes, paths FROM workflows")?;
    for row in st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })? {
        let (name, scopes, paths) = row?;
        if let (Ok(scopes), Ok(paths)) =
            (serde_json::from_str(&scopes), serde_json::from_str(&paths))
        {
            snap.workflows
                .insert(name, authz::principal::WorkflowGrant { scopes, paths });
        }
    }
    Ok(snap)
}

/// Records (or replaces) what workflow principal `name` may authorize.
pub fn put_workflow(
    conn: &Connection,
    name: &str,
    grant: &authz::principal::WorkflowGrant,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO workflows (name, scopes, paths, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name) DO UPDATE SET scopes = ?2, paths = ?3, updated_at = ?4",
        params![
            name,
            serde_json::to_string(&grant.scopes).unwrap_or_else(|_| "[]".into()),
            serde_json::to_string(&grant.paths).unwrap_or_else(|_| "[]".into()),
            now
        ],
    )?;
    Ok(())
}

/// What workflow principal `name` may authorize (`None`: no grant recorded).
pub fn get_workflow(
    conn: &Connection,
    name: &str,
) -> Result<Option<authz::principal::WorkflowGrant>, StoreError> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT scopes, paths FROM workflows WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.and_then(|(scopes, paths)| {
        Some(authz::principal::WorkflowGrant {
            scopes: serde_json::from_str(&scopes).ok()?,
            paths: serde_json::from_str(&paths).ok()?,
        })
    }))
}

pub fn insert_cert(
    conn: &Connection,
    p: &Principal,
    hpke_public: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO certs (serial, name, kind, hpke_public, issued_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![p.serial, p.name, p.kind.as_str(), hpke_public, now],
    )
    .map_err(|e| if is_constraint(&e) { StoreError::Conflict(format!("certificate {}", p.serial)) } else { e.into() })?;
    Ok(())
}

pub fn active_cert_exists(
    conn: &Connection,
    kind: PrincipalKind,
    name: &str,
) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM certs WHERE kind = ?1 AND name = ?2 AND revoked_at IS NULL",
            params![kind.as_str(), name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// A certificate of `kind` was ever issued to `name` (revoked or not).
pub fn cert_exists(conn: &Connection, kind: PrincipalKind, name: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM certs WHERE kind = ?1 AND name = ?2",
            params![kind.as_str(), name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

pub fn revoke_certs(
    conn: &Connection,
    kind: PrincipalKind,
    name: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE certs SET revoked_at = ?3 WHERE kind = ?1 AND name = ?2 AND revoked_at IS NULL",
        params![kind.as_str(), name, now],
    )?)
}

pub fn all_principals(conn: &Connection) -> Result<Vec<Principal>, StoreError> {
    let mut st = conn.prepare("SELECT serial, name, kind, revoked_at FROM certs")?;
    let rows = st.query_map([], |r| {
        let kind: String = r.get(2)?;
        Ok(Principal {
            serial: r.get(0)?,
            name: r.get(1)?,
            kind: PrincipalKind::parse(&kind).unwrap_or(PrincipalKind::Device),
            revoked: r.get::<_, Option<i64>>(3)?.is_some(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn list_certs(conn: &Connection) -> Result<Vec<DeviceInfo>, StoreError> {
    let mut st = conn.prepare(
        "SELECT name, kind, serial, issued_at, revoked_at FROM certs ORDER BY issued_at, name",
    )?;
    let rows = st.query_map([], |r| {
        let kind: String = r.get(1)?;
        Ok(DeviceInfo {
            name: r.get(0)?,
            kind: PrincipalKind::parse(&kind).unwrap_or(PrincipalKind::Device),
            serial: r.get(2)?,
            issued_at: r.get(3)?,
            revoked_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The X25519 public key recorded at enrollment of the device's active certificate.
pub fn device_hpke_public(conn: &Connection, name: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT hpke_public FROM certs WHERE kind = 'device' AND name = ?1 AND revoked_at IS NULL
             ORDER BY issued_at DESC LIMIT 1",
            params![name],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

// ---------- users ----------

#[derive(Debug, Clone)]
pub struct UserRow {
    pub name: String,
    pub password_hash: String,
    pub generation: u64,
    pub disabled: bool,
}

pub fn add_user(
    conn: &Connection,
    name: &str,
    password_hash: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO users (name, password_hash, created_at) VALUES (?1, ?2, ?3)",
        params![name, password_hash, now],
    )
    .map_err(|e| {
        if is_constraint(&e) {
            StoreError::Conflict(format!("user {name}"))
        } else {
            e.into()
        }
    })?;
    Ok(())
}

pub fn get_user(conn: &Connection, name: &str) -> Result<Option<UserRow>, StoreError> {
    // Cached statements: these run on every license request.
    Ok(conn
        .prepare_cached(
            "SELECT name, password_hash, generation, disabled FROM users WHERE name = ?1",
        )?
        .query_row(params![name], |r| {
            Ok(UserRow {
                name: r.get(0)?,
                password_hash: r.get(1)?,
                generation: r.get::<_, i64>(2)? as u64,
                disabled: r.get::<_, i64>(3)? != 0,
            })
        })
        .optional()?)
}

/// Disables a user and bumps the generation, so every outstanding token stops working.
pub fn disable_user(conn: &Connection, name: &str) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE users SET disabled = 1, generation = generation + 1 WHERE name = ?1",
        params![name],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("user {name}")));
    }
    Ok(())
}

// ---------- applications ----------

pub fn register_app(conn: &Connection, app: &AppInfo) -> Result<(), StoreError> {
    let libraries = serde_json::to_string(&app.code.libraries).expect("strings serialize");
    conn.execute(
        "INSERT INTO applications (digest, name, version, vendor, registered_at, allow_jit, allow_userns, libraries) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![app.digest, app.name, app.version, app.vendor, app.registered_at, app.code.allow_jit, app.code.allow_user_namespaces, libraries],
    )
    .map_err(|e| if is_constraint(&e) { StoreError::Conflict(format!("application {}", app.digest)) } else { e.into() })?;
    Ok(())
}

/// The columns [`app_from_row`] reads, in its order.
const APP_COLUMNS: &str =
    "digest, name, version, vendor, registered_at, revoked_at, allow_jit, allow_userns, libraries";

fn app_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AppInfo> {
    let libraries: String = r.get(8)?;
    let libraries = serde_json::from_str(&libraries).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(AppInfo {
        digest: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        vendor: r.get(3)?,
        registered_at: r.get(4)?,
        revoked_at: r.get(5)?,
        code: AppCode {
            allow_jit: r.get(6)?,
            allow_user_namespaces: r.get(7)?,
            libraries,
        },
    })
}

pub fn get_app(conn: &Connection, digest: &str) -> Result<Option<AppInfo>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {APP_COLUMNS} FROM applications WHERE digest = ?1"
        ))?
        .query_row(params![digest], app_from_row)
        .optional()?)
}

pub fn list_apps(conn: &Connection) -> Result<Vec<AppInfo>, StoreError> {
    let mut st = conn.prepare(&format!(
        "SELECT {APP_COLUMNS} FROM applications ORDER BY name, version"
    ))?;
    let rows = st.query_map([], app_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn revoke_app_digest(conn: &Connection, digest: &str, now: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE applications SET revoked_at = ?2 WHERE digest = ?1 AND revoked_at IS NULL",
        params![digest, now],
    )?)
}

pub fn revoke_app_name_version(
    conn: &Connection,
    name: &str,
    version: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE applications SET revoked_at = ?3 WHERE name = ?1 AND version = ?2 AND revoked_at IS NULL",
        params![name, version, now],
    )?)
}

// ---------- scopes ----------

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

pub fn create_scope(
    conn: &mut Connection,
    name: &str,
    scope_id: &[u8; 16],
    sealed: &SealedSeed,
    now: i64,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO scopes (name, scope_id, current_version, created_at) VALUES (?1, ?2, 1, ?3)",
        params![name, &scope_id[..], now],
    )
    .map_err(|e| {
        if is_constraint(&e) {
            StoreError::Conflict(format!("scope {name}"))
        } else {
            e.into()
        }
    })?;
    insert_version(&tx, name, 1, sealed, now)?;
    tx.commit()?;
    Ok(())
}

fn insert_version(
    conn: &Connection,
    name: &str,
    version: u32,
    sealed: &SealedSeed,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO scope_versions (scope, version, nonce, sealed_seed, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![name, version, &sealed.nonce[..], sealed.ciphertext, now],
    )?;
    Ok(())
}

/// Adds version `current + 1` with the seed `seal(version)` returns, and makes it current.
pub fn rotate_scope(
    conn: &mut Connection,
    name: &str,
    now: i64,
    seal: impl FnOnce(u32) -> Result<SealedSeed, StoreError>,
) -> Result<u32, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let current: u32 = tx
        .query_row(
            "SELECT current_version FROM scopes WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("scope {name}")))?;
    let next = current + 1;
    let sealed = seal(next)?;
    insert_version(&tx, name, next, &sealed, now)?;
    tx.execute(
        "UPDATE scopes SET current_version = ?2 WHERE name = ?1",
        params![name, next],
    )?;
    tx.commit()?;
    Ok(next)
}

pub fn revoke_version(
    conn: &Connection,
    name: &str,
    version: u32,
    now: i64,
) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE scope_versions SET revoked_at = COALESCE(revoked_at, ?3) WHERE scope = ?1 AND version = ?2",
        params![name, version, now],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "scope {name} version {version}"
        )));
    }
    Ok(())
}

pub fn get_scope(conn: &Connection, name: &str) -> Result<Option<ScopeRow>, StoreError> {
    let row = conn
        .query_row(
            "SELECT name, scope_id, current_version FROM scopes WHERE name = ?1",
            params![name],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, u32>(2)?,
                ))
            },
        )
        .optional()?;
    row.map(|(name, id, v)| {
        let scope_id: [u8; 16] = id
            .try_into()
            .map_err(|_| StoreError::Worker(format!("scope {name}: malformed scope id")))?;
        Ok(ScopeRow {
            name,
            scope_id,
            current_version: v,
        })
    })
    .transpose()
}

pub fn get_scope_version(
    conn: &Connection,
    name: &str,
    version: u32,
) -> Result<Option<ScopeVersionRow>, StoreError> {
    // Cached statement: looked up once per grant of a batch license.
    let row = conn
        .prepare_cached(
            "SELECT nonce, sealed_seed, revoked_at FROM scope_versions WHERE scope = ?1 AND version = ?2",
        )?
        .query_row(
            params![name, version],
            |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Option<i64>>(2)?)),
        )
        .optional()?;
    row.map(|(nonce, ct, revoked)| {
        let nonce = nonce
            .try_into()
            .map_err(|_| StoreError::Worker(format!("scope {name} v{version}: malformed nonce")))?;
        Ok(ScopeVersionRow {
            sealed: SealedSeed {
                nonce,
                ciphertext: ct,
            },
            revoked: revoked.is_some(),
        })
    })
    .transpose()
}

pub fn revoked_versions(conn: &Connection, name: &str) -> Result<Vec<u32>, StoreError> {
    let mut st = conn.prepare(
        "SELECT version FROM scope_versions WHERE scope = ?1 AND revoked_at IS NOT NULL ORDER BY version",
    )?;
    let rows = st.query_map(params![name], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn list_scopes(conn: &Connection) -> Result<Vec<ScopeRow>, StoreError> {
    let mut st = conn.prepare("SELECT name FROM scopes ORDER BY name")?;
    let names: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    names
        .iter()
        .filter_map(|n| get_scope(conn, n).transpose())
        .collect()
}

// ---------- assets ----------

pub fn insert_asset(conn: &Connection, a: &AssetInfo) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO assets (asset_id, scope, version, path, creator, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![a.asset_id, a.scope, a.key_version, a.path, a.creator, a.created_at],
    )
    .map_err(|e| if is_constraint(&e) { StoreError::Conflict(format!("asset {}", a.asset_id)) } else { e.into() })?;
    Ok(())
}

fn asset_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AssetInfo> {
    let scope_id: Vec<u8> = r.get(6)?;
    Ok(AssetInfo {
        asset_id: r.get(0)?,
        scope: r.get(1)?,
        key_version: r.get(2)?,
        path: r.get(3)?,
        creator: r.get(4)?,
        created_at: r.get(5)?,
        scope_id: hex::encode(scope_id),
        generation: r.get(7)?,
        pending_generation: r.get(8)?,
    })
}

const ASSET_SELECT: &str =
    "SELECT a.asset_id, a.scope, a.version, a.path, a.creator, a.created_at, s.scope_id,
            a.generation, a.pending_generation
     FROM assets a JOIN scopes s ON s.name = a.scope";

pub fn get_asset(conn: &Connection, asset_id: &str) -> Result<Option<AssetInfo>, StoreError> {
    // Cached statement: a batch license looks up every asset, and re-parsing the SQL each time
    // cost more than the lookup itself.
    Ok(conn
        .prepare_cached(&format!("{ASSET_SELECT} WHERE a.asset_id = ?1"))?
        .query_row(params![asset_id], asset_from_row)
        .optional()?)
}

pub fn list_assets(conn: &Connection) -> Result<Vec<AssetInfo>, StoreError> {
    let mut st = conn.prepare(&format!("{ASSET_SELECT} ORDER BY a.path"))?;
    let rows = st.query_map([], asset_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn rename_asset(conn: &Connection, asset_id: &str, new_path: &str) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE assets SET path = ?2 WHERE asset_id = ?1",
        params![asset_id, new_path],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("asset {asset_id}")));
    }
    Ok(())
}

/// Reserves the asset's next write generation: records `generation + 1` as pending unless one
/// is pending already (a writer that crashed before settling: its generation may be in the
/// file, so it stays acceptable and is handed out again).
pub fn reserve_generation(conn: &Connection, asset_id: &str) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE assets SET pending_generation = generation + 1
         WHERE asset_id = ?1 AND pending_generation IS NULL AND generation < 4294967295",
        params![asset_id],
    )?;
    if n == 0 {
        let pending: Option<Option<u32>> = conn
            .query_row(
                "SELECT pending_generation FROM assets WHERE asset_id = ?1",
                params![asset_id],
                |r| r.get(0),
            )
            .optional()?;
        match pending {
            None => return Err(StoreError::NotFound(format!("asset {asset_id}"))),
            Some(None) => {
                return Err(StoreError::Conflict(format!(
                    "asset {asset_id}: write generations exhausted"
                )))
            }
            Some(Some(_)) => {}
        }
    }
    Ok(())
}

/// Makes the pending generation `generation` the recorded one (idempotent: settling the
/// recorded generation again is a no-op, for a writer whose answer was lost).
pub fn settle_generation(
    conn: &Connection,
    asset_id: &str,
    generation: u32,
) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE assets SET generation = pending_generation, pending_generation = NULL
         WHERE asset_id = ?1 AND pending_generation = ?2",
        params![asset_id, generation],
    )?;
    if n == 0 {
        let recorded: Option<u32> = conn
            .query_row(
                "SELECT generation FROM assets WHERE asset_id = ?1",
                params![asset_id],
                |r| r.get(0),
            )
            .optional()?;
        match recorded {
            None => return Err(StoreError::NotFound(format!("asset {asset_id}"))),
            Some(g) if g == generation => {}
            Some(_) => {
                return Err(StoreError::Conflict(format!(
                    "asset {asset_id}: generation {generation} is not pending"
                )))
            }
        }
    }
    Ok(())
}

// ---------- audit ----------

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

pub fn insert_audit<'a>(
    conn: &mut Connection,
    events: impl IntoIterator<Item = &'a AuditEvent>,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO audit (time, user, app_digest, device, asset, action, decision, rule_ids, reason, license_id, path)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                     COALESCE(?11, (SELECT a.path FROM assets a WHERE a.asset_id = ?5)))",
        )?;
        for e in events {
            let rule_ids = serde_json::to_string(&e.rule_ids).unwrap_or_else(|_| "[]".into());
            st.execute(params![
                e.time,
                e.user,
                e.app_digest,
                e.device,
                e.asset,
                e.action,
                e.decision,
                rule_ids,
                e.reason,
                e.license_id,
                e.path
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn audit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let rule_ids: String = r.get(8)?;
    Ok(AuditRecord {
        id: r.get(0)?,
        time: r.get(1)?,
        user: r.get(2)?,
        app_digest: r.get(3)?,
        device: r.get(4)?,
        asset: r.get(5)?,
        action: r.get(6)?,
        decision: r.get(7)?,
        rule_ids: serde_json::from_str(&rule_ids).unwrap_or_default(),
        reason: r.get(9)?,
        license_id: r.get(10)?,
        path: r.get(11)?,
        source: r.get(12)?,
        uid: r.get(13)?,
        count: r.get(14)?,
    })
}

const AUDIT_COLS: &str = "id, time, user, app_digest, device, asset, action, decision, rule_ids, \
     reason, license_id, path, source, uid, count";

/// Records with id > `after`, oldest first, at most `limit`.
pub fn audit_after(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {AUDIT_COLS} FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = st.query_map(params![after, limit], audit_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The last `n` records, oldest first.
pub fn audit_tail(conn: &Connection, n: u32) -> Result<Vec<AuditRecord>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {AUDIT_COLS} FROM (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id"
    ))?;
    let rows = st.query_map(params![n], audit_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What [`insert_shipped`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    pub accepted: u32,
    pub duplicates: u32,
}

/// Stores a batch a mount shipped, as `device` (the peer certificate's name), in one
/// transaction. A record whose (device, spool, seq) is on record already is a resend and is
/// skipped (the unique index `audit_spool_seq`), so resending after a lost answer is harmless.
pub fn insert_shipped(
    conn: &mut Connection,
    device: &str,
    spool: &str,
    records: &[MountAuditRecord],
) -> Result<Shipped, StoreError> {
    let tx = conn.transaction()?;
    let mut done = Shipped {
        accepted: 0,
        duplicates: 0,
    };
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO audit (time, user, app_digest, device, asset, action, decision, rule_ids,
                                reason, path, source, uid, count, spool, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '[]', ?8, ?9, 'mount', ?10, ?11, ?12, ?13)
             ON CONFLICT (device, spool, seq) WHERE seq IS NOT NULL DO NOTHING",
        )?;
        for r in records {
            let n = st.execute(params![
                r.time,
                r.user,
                r.app_digest,
                device,
                r.asset,
                r.action.as_str(),
                r.decision,
                r.reason,
                r.path,
                r.uid,
                r.count,
                spool,
                r.seq as i64
            ])?;
            if n == 1 {
                done.accepted += 1;
            } else {
                done.duplicates += 1;
            }
        }
    }
    tx.commit()?;
    Ok(done)
}

/// [`AuditQuery`] filters as the store applies them (validated, resolved by the API).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Literal prefix of the path glob (narrows the scan through `audit_path`); the glob
    /// itself is matched by the caller's `path_matches`.
    pub path_prefix: Option<String>,
    pub user: Option<String>,
    pub device: Option<String>,
    /// Any of these digests (an app name resolves to every digest registered under it).
    pub app_digests: Option<Vec<String>>,
    pub decision: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: u32,
}

/// The newest `filter.limit` records that pass `filter` and `path_matches`, oldest first.
/// A user filter also finds denials recorded against the user a token names unverified.
pub fn audit_query(
    conn: &Connection,
    filter: &AuditFilter,
    path_matches: impl Fn(&str) -> bool,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut sql = format!("SELECT {AUDIT_COLS} FROM audit WHERE 1 = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(prefix) = &filter.path_prefix {
        arg(&mut sql, " AND path >= ?", prefix.clone().into());
        // U+10FFFF sorts after every character a path can continue with (binary collation).
        arg(
            &mut sql,
            " AND path < ?",
            format!("{prefix}\u{10FFFF}").into(),
        );
    }
    if let Some(user) = &filter.user {
        arg(&mut sql, " AND (user = ?", user.clone().into());
        arg(
            &mut sql,
            " OR user = ?)",
            format!("{user} (unverified)").into(),
        );
    }
    if let Some(device) = &filter.device {
        arg(&mut sql, " AND device = ?", device.clone().into());
    }
    if let Some(digests) = &filter.app_digests {
        sql.push_str(" AND app_digest IN (NULL");
        for d in digests {
            arg(&mut sql, ", ?", d.clone().into());
        }
        sql.push(')');
    }
    if let Some(decision) = &filter.decision {
        arg(&mut sql, " AND decision = ?", decision.clone().into());
    }
    if let Some(since) = filter.since {
        arg(&mut sql, " AND time >= ?", since.into());
    }
    if let Some(until) = filter.until {
        arg(&mut sql, " AND time < ?", until.into());
    }
    sql.push_str(" ORDER BY id DESC");
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map(rusqlite::params_from_iter(args), audit_from_row)?;
    let mut found = Vec::new();
    for row in rows {
        let row = row?;
        if filter.path_prefix.is_some() && !row.path.as_deref().is_some_and(&path_matches) {
            continue;
        }
        found.push(row);
        if found.len() >= filter.limit as usize {
            break;
        }
    }
    found.reverse();
    Ok(found)
}

/// Digests of the applications registered under `name` (any version, revoked or not).
pub fn app_digests_named(conn: &Connection, name: &str) -> Result<Vec<String>, StoreError> {
    let mut st = conn.prepare_cached("SELECT digest FROM applications WHERE name = ?1")?;
    let rows = st.query_map(params![name], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_idempotent_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ks.sqlite");
        let db = Db::open(&path, 2).unwrap();
        db.call_sync(|c| {
            add_user(c, "alice", "h", 1)?;
            Ok(())
        })
        .unwrap();
        drop(db);
        let db = Db::open(&path, 1).unwrap();
        let v: i64 = db
            .call_sync(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let u = db.call_sync(|c| get_user(c, "alice")).unwrap().unwrap();
        assert_eq!(u.generation, 1);
        assert!(matches!(
            db.call_sync(|c| add_user(c, "alice", "h", 2)),
            Err(StoreError::Conflict(_))
        ));
    }
    /// Issue 12: a writer's reserve-then-settle of the next write generation; a writer that
    /// crashed after reserving leaves the same generation for the next one.
    #[test]
    fn write_generations_are_reserved_then_settled() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("ks.sqlite"), 1).unwrap();
        let id = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";
        let at = |c: &Connection| -> Result<(u32, Option<u32>), StoreError> {
            let a = get_asset(c, id)?.expect("registered");
            Ok((a.generation, a.pending_generation))
        };
        db.call_sync(|c| {
            c.execute(
                "INSERT INTO scopes (name, scope_id, current_version, created_at)
                 VALUES ('s', x'5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c', 1, 0)",
                [],
            )?;
            insert_asset(
                c,
                &AssetInfo {
                    asset_id: id.into(),
                    scope: "s".into(),
                    scope_id: String::new(),
                    key_version: 1,
                    path: "show/f1.exr".into(),
                    creator: "alice".into(),
                    created_at: 0,
                    generation: 0,
                    pending_generation: None,
                },
            )?;
            assert_eq!(at(c)?, (0, None));
            reserve_generation(c, id)?;
            reserve_generation(c, id)?; // a crashed writer's reservation is handed out again
            assert_eq!(at(c)?, (0, Some(1)));
            assert!(matches!(
                settle_generation(c, id, 2),
                Err(StoreError::Conflict(_))
            ));
            settle_generation(c, id, 1)?;
            settle_generation(c, id, 1)?; // a lost answer, asked again
            assert_eq!(at(c)?, (1, None));
            reserve_generation(c, id)?;
            assert_eq!(at(c)?, (1, Some(2)));
            assert!(matches!(
                reserve_generation(c, "00000000000000000000000000000000"),
                Err(StoreError::NotFound(_))
            ));
            Ok(())
        })
        .unwrap();
    }
}
