//! Open directory handles of the local backend, by volume-relative path. An operation on
//! `a/b/c/name` is one `*at` call on the handle of `a/b/c`: no syscall gets a path longer
//! than the backing filesystem's own limits, and the directory is resolved from the root only
//! when its handle is missing or stale.
//!
//! Freshness: the backend forgets the handles under a path it renames or removes itself. A
//! rename made *outside* the mount (in the backing directory) moves a handle's directory
//! with it, so handles are trusted for [`FRESH_FOR`] only, the attribute TTL of the mount: a
//! change behind its back is seen within the same second as its attributes.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a handle is used before its path is resolved again.
pub(super) const FRESH_FOR: Duration = Duration::from_secs(1);
/// Handles kept at most (each is one open file descriptor).
const CAPACITY: usize = 4096;

struct Cached {
    fd: Arc<OwnedFd>,
    opened: Instant,
}

/// Keyed by path in component order, so a directory and everything below it are adjacent.
#[derive(Default)]
pub(super) struct DirCache {
    entries: Mutex<BTreeMap<PathBuf, Cached>>,
}

impl DirCache {
    fn entries(&self) -> MutexGuard<'_, BTreeMap<PathBuf, Cached>> {
        // A map of file descriptors stays consistent whatever panicked while it was held.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The freshest handle on the way to `dir`: the handle of `dir` itself or of its nearest
    /// cached ancestor, with the number of `dir`'s components it covers (0: none cached).
    pub(super) fn closest(&self, dir: &Path, now: Instant) -> Option<(Arc<OwnedFd>, usize)> {
        let entries = self.entries();
        let depth = dir.components().count();
        dir.ancestors()
            .take(depth)
            .enumerate()
            .find_map(|(up, ancestor)| {
                let cached = entries.get(ancestor)?;
                (now.duration_since(cached.opened) < FRESH_FOR)
                    .then(|| (cached.fd.clone(), depth - up))
            })
    }

    pub(super) fn insert(&self, dir: &Path, fd: Arc<OwnedFd>, now: Instant) {
        let mut entries = self.entries();
        if entries.len() >= CAPACITY {
            entries.retain(|_, cached| now.duration_since(cached.opened) < FRESH_FOR);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(dir.to_path_buf(), Cached { fd, opened: now });
    }

    /// Drops the handles of `path` and of everything below it (it was renamed or removed).
    pub(super) fn forget_tree(&self, path: &Path) {
        let mut entries = self.entries();
        let below: Vec<PathBuf> = entries
            .range(path.to_path_buf()..)
            .take_while(|(key, _)| key.starts_with(path))
            .map(|(key, _)| key.clone())
            .collect();
        for key in below {
            entries.remove(&key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> Arc<OwnedFd> {
        Arc::new(std::fs::File::open("/").unwrap().into())
    }

    #[test]
    fn the_nearest_fresh_ancestor_answers_and_stale_ones_do_not() {
        let cache = DirCache::default();
        let now = Instant::now();
        cache.insert(Path::new("a"), fd(), now);
        cache.insert(Path::new("a/b/c"), fd(), now - FRESH_FOR);
        assert_eq!(cache.closest(Path::new("a/b/c/d"), now).unwrap().1, 1);
        assert_eq!(cache.closest(Path::new("a"), now).unwrap().1, 1);
        assert!(cache.closest(Path::new("x/y"), now).is_none());
        cache.insert(Path::new("a/b/c"), fd(), now);
        assert_eq!(cache.closest(Path::new("a/b/c/d"), now).unwrap().1, 3);
    }

    #[test]
    fn forgetting_a_tree_keeps_its_siblings() {
        let cache = DirCache::default();
        let now = Instant::now();
        for dir in ["a", "a/b", "a/b/c", "a/b c", "a/bc", "ab"] {
            cache.insert(Path::new(dir), fd(), now);
        }
        cache.forget_tree(Path::new("a/b"));
        assert_eq!(cache.len(), 4);
        assert!(cache.closest(Path::new("a/b/c"), now).unwrap().1 == 1);
        assert!(cache.closest(Path::new("a/b c"), now).unwrap().1 == 2);
        assert!(cache.closest(Path::new("a/bc"), now).unwrap().1 == 2);
    }

    #[test]
    fn a_full_cache_makes_room() {
        let cache = DirCache::default();
        let now = Instant::now();
        let shared = fd();
        for i in 0..CAPACITY + 10 {
            cache.insert(Path::new(&format!("d{i}")), shared.clone(), now);
        }
        assert!(cache.len() <= CAPACITY);
        assert!(cache
            .closest(Path::new(&format!("d{}", CAPACITY + 9)), now)
            .is_some());
    }
}
