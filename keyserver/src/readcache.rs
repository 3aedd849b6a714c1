//! An in-memory cache of the rows every license request reads (user, application, asset, scope
//! version), validated by a write epoch so that no committed change is ever missed.
//!
//! Why: in the license benchmark's server profile, these four SQLite lookups per license (page
//! reads, POSIX lock calls per read transaction) were a fifth of the server's CPU.
//!
//! Correctness: every change to a cached table goes through a pooled connection of
//! [`crate::db::Db`], whose update hook marks that connection; after the call that made the change
//! has returned (its transaction committed or rolled back), the epoch is bumped
//! ([`ReadCache::changed`]). A lookup records the epoch *before* it reads SQLite and stores the
//! row under that epoch; a hit counts only when the stored epoch is still the current one. So a
//! row read before a commit carries an epoch older than the bump after that commit and is never
//! used; a row read after the bump is the committed one. Only absent rows are never cached, so an
//! insert cannot make an entry stale. Lookups inside an explicit transaction (whose snapshot may
//! predate a bump) read through without storing.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};

use moka::sync::Cache;
use rusqlite::Connection;

use crate::db::{self, ScopeVersionRow, StoreError, UserRow};
use crate::wire::{AppInfo, AssetInfo};

/// Where a lookup may read from.
#[derive(Clone, Copy)]
pub enum Reader<'a> {
    /// The cache, else SQLite through this connection.
    Sql(&'a Connection),
    /// The cache alone: a miss is [`StoreError::NotCached`] (the license fast path, which runs
    /// on the async thread and falls back to the blocking pool on any miss).
    CacheOnly,
}

/// Entries per table at most.
const CAPACITY: u64 = 200_000;

pub struct ReadCache {
    epoch: AtomicU64,
    users: Cache<String, (u64, UserRow)>,
    apps: Cache<String, (u64, AppInfo)>,
    assets: Cache<String, (u64, AssetInfo)>,
    scope_versions: Cache<(String, u32), (u64, ScopeVersionRow)>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("epoch", &self.epoch.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Default for ReadCache {
    fn default() -> Self {
        ReadCache {
            epoch: AtomicU64::new(0),
            users: Cache::new(CAPACITY),
            apps: Cache::new(CAPACITY),
            assets: Cache::new(CAPACITY),
            scope_versions: Cache::new(CAPACITY),
        }
    }
}

impl ReadCache {
    /// A cached table changed and the change is committed: every entry read before is void.
    pub fn changed(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn through<K, V>(
        &self,
        cache: &Cache<K, (u64, V)>,
        key: K,
        reader: Reader<'_>,
        load: impl FnOnce(&Connection) -> Result<Option<V>, StoreError>,
    ) -> Result<Option<V>, StoreError>
    where
        K: Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let epoch = self.epoch.load(Ordering::SeqCst);
        if let Some((at, v)) = cache.get(&key) {
            if at == epoch {
                return Ok(Some(v));
            }
        }
        let Reader::Sql(conn) = reader else {
            return Err(StoreError::NotCached);
        };
        let row = load(conn)?;
        if let Some(v) = &row {
            if conn.is_autocommit() {
                cache.insert(key, (epoch, v.clone()));
            }
        }
        Ok(row)
    }

    pub fn user(&self, reader: Reader<'_>, name: &str) -> Result<Option<UserRow>, StoreError> {
        self.through(&self.users, name.to_string(), reader, |c| {
            db::get_user(c, name)
        })
    }

    pub fn app(&self, reader: Reader<'_>, digest: &str) -> Result<Option<AppInfo>, StoreError> {
        self.through(&self.apps, digest.to_string(), reader, |c| {
            db::get_app(c, digest)
        })
    }

    pub fn asset(&self, reader: Reader<'_>, id: &str) -> Result<Option<AssetInfo>, StoreError> {
        self.through(&self.assets, id.to_string(), reader, |c| {
            db::get_asset(c, id)
        })
    }

    pub fn scope_version(
        &self,
        reader: Reader<'_>,
        scope: &str,
        version: u32,
    ) -> Result<Option<ScopeVersionRow>, StoreError> {
        self.through(
            &self.scope_versions,
            (scope.to_string(), version),
            reader,
            |c| db::get_scope_version(c, scope, version),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Reader;
    use crate::db::{self, Db, StoreError};

    fn disabled(db: &Db) -> bool {
        db.call_sync(|c| db.cache.user(Reader::Sql(c), "alice"))
            .unwrap()
            .unwrap()
            .disabled
    }

    #[test]
    fn a_committed_change_voids_what_was_cached_before() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("k.sqlite"), 2).unwrap();
        db.call_sync(|c| db::add_user(c, "alice", "h", 1)).unwrap();
        assert!(!disabled(&db));
        db.call_sync(|c| db::disable_user(c, "alice")).unwrap();
        assert!(disabled(&db));
    }

    /// The race the epoch exists for: a row read just before another connection commits a
    /// change is stored after that commit. It must not be served.
    #[test]
    fn a_row_read_before_a_commit_is_not_served_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("k.sqlite"), 2).unwrap();
        db.call_sync(|c| db::add_user(c, "alice", "h", 1)).unwrap();
        let stale = db
            .call_sync(|c| {
                db.cache
                    .through(&db.cache.users, "alice".to_string(), Reader::Sql(c), |c| {
                        let before = db::get_user(c, "alice")?;
                        // Another connection disables alice and commits, between our read and
                        // our store.
                        db.call_sync(|c2| db::disable_user(c2, "alice"))?;
                        Ok(before)
                    })
            })
            .unwrap()
            .unwrap();
        assert!(!stale.disabled);
        assert!(disabled(&db), "the stale row was served from the cache");
    }

    /// Rows read inside an explicit transaction are not stored (its snapshot may be older than
    /// the current epoch).
    #[test]
    fn reads_inside_a_transaction_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("k.sqlite"), 2).unwrap();
        db.call_sync(|c| db::add_user(c, "alice", "h", 1)).unwrap();
        db.call_sync(|c| {
            let tx = c.transaction()?;
            db.cache.user(Reader::Sql(&tx), "alice")?;
            tx.commit()?;
            Ok(())
        })
        .unwrap();
        assert_eq!(db.cache.users.entry_count(), 0);
        db.cache.users.run_pending_tasks();
        assert!(db.cache.users.get("alice").is_none());
        db.call_sync(|c| db.cache.user(Reader::Sql(c), "alice"))
            .unwrap();
        assert!(db.cache.users.get("alice").is_some());
    }

    /// A cache-only lookup serves valid entries and reports a miss, never reads SQLite.
    #[test]
    fn cache_only_lookups_miss_instead_of_reading() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("k.sqlite"), 2).unwrap();
        db.call_sync(|c| db::add_user(c, "alice", "h", 1)).unwrap();
        assert!(matches!(
            db.cache.user(Reader::CacheOnly, "alice"),
            Err(StoreError::NotCached)
        ));
        assert!(!disabled(&db));
        assert!(
            !db.cache
                .user(Reader::CacheOnly, "alice")
                .unwrap()
                .unwrap()
                .disabled
        );
        db.call_sync(|c| db::disable_user(c, "alice")).unwrap();
        assert!(matches!(
            db.cache.user(Reader::CacheOnly, "alice"),
            Err(StoreError::NotCached)
        ));
    }
    /// A call that commits a change and then panics still voids the cache, and its connection
    /// goes back to the pool.
    #[test]
    fn a_panic_after_a_commit_still_voids_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("k.sqlite"), 1).unwrap();
        db.call_sync(|c| db::add_user(c, "alice", "h", 1)).unwrap();
        assert!(!disabled(&db));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = db.call_sync(|c| -> Result<(), StoreError> {
                db::disable_user(c, "alice")?;
                panic!("after the commit");
            });
        }));
        assert!(panicked.is_err());
        // The one pooled connection is back, and the cached row is void.
        assert!(disabled(&db));
    }
}
