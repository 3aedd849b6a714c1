//! An in-memory cache of the rows every license request reads (user, application, asset, scope
//! version), validated by a write epoch so that no committed change is ever missed.
//!
//! Why: in the license benchmark's server profile, these four SQLite lookups per license (page
//! reads, POSIX lock calls per read transaction) were a fifth of the server's CPU.
//!
//! Correctness is the engine's part (see `crate::store::sqlite`): every change to a cached table
//! is followed, once committed or rolled back, by [`ReadCache::changed`], which bumps the epoch.
//! A lookup records the epoch *before* it reads the database ([`ReadCache::through`]) and stores
//! the row under that epoch; a hit counts only when the stored epoch is still the current one. So
//! a row read before a commit carries an epoch older than the bump after that commit and is never
//! used; a row read after the bump is the committed one. Only present rows are cached, so an
//! insert cannot make an entry stale. Reads inside an explicit transaction (whose snapshot may
//! predate a bump) pass `store: false`.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};

use moka::sync::Cache;

use crate::store::{LicenseReads, ScopeVersionRow, StoreError, UserRow};
use crate::wire::{AppInfo, AssetInfo};

/// Entries per table at most.
const CAPACITY: u64 = 200_000;

pub struct ReadCache {
    epoch: AtomicU64,
    pub(crate) users: Cache<String, (u64, UserRow)>,
    pub(crate) apps: Cache<String, (u64, AppInfo)>,
    pub(crate) assets: Cache<String, (u64, AssetInfo)>,
    pub(crate) scope_versions: Cache<(String, u32), (u64, ScopeVersionRow)>,
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

    fn hit<K, V>(&self, cache: &Cache<K, (u64, V)>, key: &K) -> Option<V>
    where
        K: Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let hit = cache
            .get(key)
            .filter(|(at, _)| *at == epoch)
            .map(|(_, v)| v);
        // A miss here is counted where the database is read (`through`), once.
        if hit.is_some() {
            crate::metrics::cache_hit();
        }
        hit
    }

    /// A valid entry, else `load` (a database read), stored unless `store` is false.
    pub(crate) fn through<K, V>(
        &self,
        cache: &Cache<K, (u64, V)>,
        key: K,
        store: bool,
        load: impl FnOnce() -> Result<Option<V>, StoreError>,
    ) -> Result<Option<V>, StoreError>
    where
        K: Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        // Read before the database: a commit after this point bumps past it.
        let epoch = self.epoch.load(Ordering::SeqCst);
        if let Some((at, v)) = cache.get(&key) {
            if at == epoch {
                crate::metrics::cache_hit();
                return Ok(Some(v));
            }
        }
        crate::metrics::cache_miss();
        let row = load()?;
        if let Some(v) = &row {
            if store {
                cache.insert(key, (epoch, v.clone()));
            }
        }
        Ok(row)
    }
}

/// The cache alone: a miss is [`StoreError::NotCached`] (the license fast path, which runs on
/// the async thread and takes the store's path on any miss).
impl LicenseReads for ReadCache {
    fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        self.hit(&self.users, &name.to_string())
            .map(Some)
            .ok_or(StoreError::NotCached)
    }
    fn app(&self, digest: &str) -> Result<Option<AppInfo>, StoreError> {
        self.hit(&self.apps, &digest.to_string())
            .map(Some)
            .ok_or(StoreError::NotCached)
    }
    fn asset(&self, id: &str) -> Result<Option<AssetInfo>, StoreError> {
        self.hit(&self.assets, &id.to_string())
            .map(Some)
            .ok_or(StoreError::NotCached)
    }
    fn scope_version(
        &self,
        scope: &str,
        version: u32,
    ) -> Result<Option<ScopeVersionRow>, StoreError> {
        self.hit(&self.scope_versions, &(scope.to_string(), version))
            .map(Some)
            .ok_or(StoreError::NotCached)
    }
}
