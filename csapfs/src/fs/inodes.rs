//! The inode table: FUSE inode numbers ↔ paths in the backing directory.
//!
//! Numbering is passthrough style: a node's FUSE inode number is its backing file's inode
//! number, so hard links share one number and numbers stay stable across remounts. FUSE
//! reserves 1 for the root, so the backing root's number and 1 swap places (a bijection: a
//! backing file that really has inode 1 is shown under the root's backing number, which no
//! other backing file can have).
//!
//! A node remembers every path it is known under (hard links) relative to the backing root.
//! Renames rewrite the paths of the renamed entry and everything below it; unlinks drop one
//! path. A node lives as long as the kernel holds a lookup reference to it (`forget`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The FUSE root inode number.
pub(crate) const ROOT: u64 = 1;

#[derive(Debug)]
pub(crate) struct Node {
    /// Paths relative to the backing root, most recently used first; empty once unlinked.
    pub(crate) paths: Vec<PathBuf>,
    /// Kernel lookup count (`lookup`, `create`, `mkdir`, `readdirplus` … minus `forget`).
    lookups: u64,
    /// Chunk size from the asset header, read once per inode for `getattr` size math.
    pub(crate) chunk_size: Option<u32>,
}

#[derive(Debug)]
pub(crate) struct InodeTable {
    root_backing_ino: u64,
    nodes: HashMap<u64, Node>,
}

impl InodeTable {
    pub(crate) fn new(root_backing_ino: u64) -> InodeTable {
        let mut nodes = HashMap::new();
        // The root is never forgotten: one permanent lookup reference.
        nodes.insert(
            ROOT,
            Node {
                paths: vec![PathBuf::new()],
                lookups: 1,
                chunk_size: None,
            },
        );
        InodeTable {
            root_backing_ino,
            nodes,
        }
    }

    /// The FUSE inode number of a backing inode number.
    pub(crate) fn fuse_ino(&self, backing_ino: u64) -> u64 {
        if backing_ino == self.root_backing_ino {
            ROOT
        } else if backing_ino == ROOT {
            self.root_backing_ino
        } else {
            backing_ino
        }
    }

    /// A current path of `ino`, if it still has one.
    pub(crate) fn path(&self, ino: u64) -> Option<PathBuf> {
        self.nodes
            .get(&ino)
            .and_then(|node| node.paths.first().cloned())
    }

    pub(crate) fn node_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub(crate) fn chunk_size(&self, ino: u64) -> Option<u32> {
        self.nodes.get(&ino).and_then(|node| node.chunk_size)
    }

    /// Records that `ino` is reachable at `path`. `count_lookup` adds one kernel reference
    /// (every reply that hands the kernel an entry does).
    pub(crate) fn remember(&mut self, ino: u64, path: &Path, count_lookup: bool) {
        let node = self.nodes.entry(ino).or_insert_with(|| Node {
            paths: Vec::new(),
            lookups: 0,
            chunk_size: None,
        });
        if let Some(pos) = node.paths.iter().position(|p| p == path) {
            // Most recently used first, so the common single-path case stays at index 0.
            node.paths.swap(0, pos);
        } else {
            node.paths.insert(0, path.to_path_buf());
        }
        if count_lookup {
            node.lookups += 1;
        }
    }

    /// Drops `n` kernel references; the node goes away at zero.
    pub(crate) fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                self.nodes.remove(&ino);
            }
        }
    }

    /// `path` no longer names `ino` (unlink, rmdir, or replaced by a rename).
    pub(crate) fn unlinked(&mut self, ino: u64, path: &Path) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.paths.retain(|p| p != path);
        }
    }

    /// `from` was renamed to `to`: rewrite that path and every path below it, in every node.
    pub(crate) fn renamed(&mut self, from: &Path, to: &Path) {
        for node in self.nodes.values_mut() {
            for path in node.paths.iter_mut() {
                if let Ok(rest) = path.strip_prefix(from) {
                    *path = if rest.as_os_str().is_empty() {
                        to.to_path_buf()
                    } else {
                        to.join(rest)
                    };
                }
            }
        }
    }

    #[cfg(test)]
    fn contains(&self, ino: u64) -> bool {
        self.nodes.contains_key(&ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_inode_one_swap_places() {
        let table = InodeTable::new(2);
        assert_eq!(table.fuse_ino(2), ROOT);
        assert_eq!(table.fuse_ino(ROOT), 2);
        assert_eq!(table.fuse_ino(77), 77);
        assert_eq!(table.path(ROOT), Some(PathBuf::new()));
    }

    #[test]
    fn rename_rewrites_descendants_only() {
        let mut table = InodeTable::new(2);
        table.remember(10, Path::new("a"), true);
        table.remember(11, Path::new("a/b"), true);
        table.remember(12, Path::new("a/b/c"), true);
        table.remember(13, Path::new("ab"), true);
        table.renamed(Path::new("a"), Path::new("x/y"));
        assert_eq!(table.path(10).unwrap(), Path::new("x/y"));
        assert_eq!(table.path(11).unwrap(), Path::new("x/y/b"));
        assert_eq!(table.path(12).unwrap(), Path::new("x/y/b/c"));
        // "ab" shares a string prefix with "a" but is not below it.
        assert_eq!(table.path(13).unwrap(), Path::new("ab"));
    }

    #[test]
    fn hard_links_keep_the_other_name_after_unlink() {
        let mut table = InodeTable::new(2);
        table.remember(10, Path::new("one"), true);
        table.remember(10, Path::new("two"), true);
        table.unlinked(10, Path::new("two"));
        assert_eq!(table.path(10).unwrap(), Path::new("one"));
        table.unlinked(10, Path::new("one"));
        assert_eq!(table.path(10), None);
        // Still known (the kernel holds references) until forgotten.
        assert!(table.contains(10));
        table.forget(10, 2);
        assert!(!table.contains(10));
    }

    #[test]
    fn root_is_never_forgotten() {
        let mut table = InodeTable::new(2);
        table.forget(ROOT, 1000);
        assert_eq!(table.path(ROOT), Some(PathBuf::new()));
    }
}
