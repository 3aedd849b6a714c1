//! What the object backend remembers in the process: inode numbers (an object store has
//! none), recent HEAD/LIST answers (a small cache with a TTL, invalidated by our own changes)
//! and the objects open here (created but not uploaded yet, or renamed while open).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use super::file::OpenState;

/// Inode numbers by path: handed out on first sight, moved by renames, dropped by removals;
/// unique among live entries while the process runs (the mount's contract), not across runs.
pub(super) struct Inodes {
    by_path: Mutex<HashMap<String, u64>>,
    next: AtomicU64,
}

/// The root's inode number.
pub(super) const ROOT_INO: u64 = 1;

impl Inodes {
    pub(super) fn new() -> Inodes {
        Inodes {
            by_path: Mutex::new(HashMap::new()),
            next: AtomicU64::new(ROOT_INO + 1),
        }
    }

    pub(super) fn of(&self, rel: &str) -> u64 {
        if rel.is_empty() {
            return ROOT_INO;
        }
        let mut map = self.by_path.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(rel.to_string())
            .or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// `from` (and everything below it) is now `to`; what was at `to` is gone.
    pub(super) fn renamed(&self, from: &str, to: &str) {
        let mut map = self.by_path.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|path, _| !is_at_or_below(path, to));
        let moved: Vec<(String, u64)> = map
            .iter()
            .filter(|(path, _)| is_at_or_below(path, from))
            .map(|(path, &ino)| (format!("{to}{}", &path[from.len()..]), ino))
            .collect();
        map.retain(|path, _| !is_at_or_below(path, from));
        map.extend(moved);
    }

    pub(super) fn removed(&self, rel: &str) {
        self.by_path
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(rel);
    }
}

/// `path` is `dir` or inside it.
pub(super) fn is_at_or_below(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path == dir
        || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// What a path was found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Meta {
    File { size: u64, mtime: SystemTime },
    Dir,
    Missing,
}

/// One listed name of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listed {
    pub name: String,
    /// `Meta::Dir`, or `Meta::File` with the object's size and time.
    pub meta: Meta,
}

/// Recent HEAD and LIST answers. Our own changes invalidate what they touch (the entry, every
/// ancestor and their listings); changes by others are seen once the TTL has passed.
pub(super) struct MetaCache {
    stat: moka::sync::Cache<String, Meta>,
    lists: moka::sync::Cache<String, Arc<Vec<Listed>>>,
}

impl MetaCache {
    pub(super) fn new(ttl: Duration) -> MetaCache {
        MetaCache {
            stat: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
            lists: moka::sync::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
        }
    }

    pub(super) fn stat(&self, rel: &str) -> Option<Meta> {
        self.stat.get(rel)
    }

    pub(super) fn list(&self, dir: &str) -> Option<Arc<Vec<Listed>>> {
        self.lists.get(dir)
    }

    pub(super) fn remember_list(&self, dir: &str, listed: Arc<Vec<Listed>>) {
        self.lists.insert(dir.to_string(), listed);
    }

    pub(super) fn remember_stat(&self, rel: &str, meta: Meta) {
        self.stat.insert(rel.to_string(), meta);
    }

    /// `rel` changed (created, written, removed): forget it, its ancestors and their lists.
    pub(super) fn changed(&self, rel: &str) {
        self.stat.invalidate(rel);
        let mut dir = rel;
        loop {
            dir = match dir.rfind('/') {
                Some(i) => &dir[..i],
                None => "",
            };
            self.lists.invalidate(dir);
            if dir.is_empty() {
                break;
            }
            self.stat.invalidate(dir);
        }
    }

    /// [`Self::changed`], then `rel` is known to be `meta`.
    pub(super) fn remember(&self, rel: &str, meta: Meta) {
        self.changed(rel);
        self.remember_stat(rel, meta);
    }

    /// Everything below `dir` changed (a directory rename or removal).
    pub(super) fn changed_below(&self, dir: &str) {
        self.changed(dir);
        let dir = dir.to_string();
        let below = move |path: &String| is_at_or_below(path, &dir);
        let (a, b) = (below.clone(), below);
        let _ = self.stat.invalidate_entries_if(move |k, _| a(k));
        let _ = self.lists.invalidate_entries_if(move |k, _| b(k));
    }
}

/// The objects open in this process, by path.
#[derive(Default)]
pub(super) struct OpenObjects {
    by_path: Mutex<HashMap<String, Vec<Weak<OpenState>>>>,
}

impl OpenObjects {
    pub(super) fn register(&self, state: &Arc<OpenState>) {
        let rel = state.rel.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut map = self.by_path.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(rel).or_default().push(Arc::downgrade(state));
    }

    pub(super) fn unregister(&self, state: &Arc<OpenState>) {
        let rel = state.rel.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut map = self.by_path.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(&rel) {
            // One registration per open object: another open of the same state keeps its own.
            if let Some(i) = list
                .iter()
                .position(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(state)))
            {
                list.swap_remove(i);
            }
            list.retain(|w| w.strong_count() > 0);
            if list.is_empty() {
                map.remove(&rel);
            }
        }
    }

    /// The live open objects at `rel`.
    pub(super) fn at(&self, rel: &str) -> Vec<Arc<OpenState>> {
        let map = self.by_path.lock().unwrap_or_else(|p| p.into_inner());
        map.get(rel)
            .map(|list| list.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// The live open objects at or below `dir`, with their paths.
    pub(super) fn below(&self, dir: &str) -> Vec<(String, Arc<OpenState>)> {
        let map = self.by_path.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(path, _)| is_at_or_below(path, dir))
            .flat_map(|(path, list)| {
                list.iter()
                    .filter_map(Weak::upgrade)
                    .map(move |state| (path.clone(), state))
            })
            .collect()
    }

    /// The open objects at or below `from` now live below `to`.
    pub(super) fn renamed(&self, from: &str, to: &str) {
        let mut map = self.by_path.lock().unwrap_or_else(|p| p.into_inner());
        let moved: Vec<String> = map
            .keys()
            .filter(|path| is_at_or_below(path, from))
            .cloned()
            .collect();
        for old in moved {
            let list = map.remove(&old).unwrap_or_default();
            let new = format!("{to}{}", &old[from.len()..]);
            for state in list.iter().filter_map(Weak::upgrade) {
                *state.rel.lock().unwrap_or_else(|p| p.into_inner()) = new.clone();
            }
            map.entry(new).or_default().extend(list);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_means_inside_not_a_longer_name() {
        assert!(is_at_or_below("a/b", "a"));
        assert!(is_at_or_below("a", "a"));
        assert!(!is_at_or_below("ab", "a"));
        assert!(is_at_or_below("anything", ""));
    }

    #[test]
    fn renames_carry_inode_numbers_below() {
        let inodes = Inodes::new();
        let (dir, file, other) = (inodes.of("d"), inodes.of("d/f"), inodes.of("dx"));
        let replaced = inodes.of("e/g");
        inodes.renamed("d", "e");
        assert_eq!(inodes.of("e"), dir);
        assert_eq!(inodes.of("e/f"), file);
        assert_eq!(inodes.of("dx"), other);
        assert_ne!(
            inodes.of("e/g"),
            replaced,
            "what was below the target is gone"
        );
        assert_ne!(inodes.of("d"), dir, "the old name is a new entry");
    }
}
