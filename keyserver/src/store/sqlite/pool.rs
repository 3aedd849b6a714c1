//! A fixed pool of SQLite connections used from the blocking thread pool, and the read cache's
//! coherence: each connection's update hook marks it when it changes a cached table, and its
//! checkout, once returned, voids the cache ([`ReadCache::changed`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::readcache::ReadCache;
use crate::store::StoreError;

pub(crate) struct Pool {
    conns: Mutex<Vec<Pooled>>,
    permits: tokio::sync::Semaphore,
    path: PathBuf,
    /// Rows the license path reads, kept coherent by the pool's update hooks.
    pub(crate) cache: ReadCache,
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

pub(crate) fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // The store checkpoints from a background task (`checkpoint`); a commit that
    // checkpointed would make every request queued behind it wait for an fsync.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// Copies the write-ahead log into the database without waiting for readers or writers.
/// Returns how many frames (pages) the log held.
pub(crate) fn checkpoint(conn: &mut Connection) -> Result<u64, StoreError> {
    let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    Ok(frames.max(0) as u64)
}

impl Pool {
    /// Opens (creating and migrating) the database with `size` pooled connections.
    pub(crate) fn open(path: &Path, size: usize) -> Result<Arc<Self>, StoreError> {
        let size = size.max(1);
        let mut first = pooled(path)?;
        authz::migrate::migrate(&mut first.conn, super::schema::MIGRATIONS)?;
        let mut conns = vec![first];
        for _ in 1..size {
            conns.push(pooled(path)?);
        }
        Ok(Arc::new(Pool {
            conns: Mutex::new(conns),
            permits: tokio::sync::Semaphore::new(size),
            path: path.to_path_buf(),
            cache: ReadCache::default(),
        }))
    }

    /// Runs `f` with a pooled connection on the blocking pool (never on an async worker).
    pub(crate) async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || pool.with_conn(f)?)
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// Runs a short read `f` on the calling (async) thread if a pooled connection is free right
    /// now, else `None`. WAL readers never wait for writers, so this blocks only for the read
    /// itself; it saves the two thread hand-offs of [`Pool::call`] (the license fast path).
    pub(crate) fn try_read_inline<T>(&self, f: impl FnOnce(&Connection) -> T) -> Option<T> {
        let _permit = self.permits.try_acquire().ok()?;
        self.with_conn(|conn| f(conn)).ok()
    }

    /// A connection of its own, outside the pool (the audit writer's).
    pub(crate) fn dedicated_connection(&self) -> Result<Connection, StoreError> {
        open_conn(&self.path)
    }

    /// Runs `f` synchronously on the calling thread (start-up, directory lookups).
    pub(crate) fn call_sync<T>(
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
            pool: self,
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
    pool: &'a Pool,
    p: Option<Pooled>,
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.p.take() {
            if p.dirty.swap(false, Ordering::SeqCst) {
                self.pool.cache.changed();
            }
            self.pool
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(p);
        }
    }
}

/// SQLite's write lock was taken by another connection (and the busy timeout ran out).
pub(crate) fn is_busy(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DatabaseBusy)
}

pub(crate) fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}
