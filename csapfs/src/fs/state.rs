//! The mount's state ([`CsapFs`]) and what every operation family shares: paths of inodes, the
//! caller, local authorization and how key and storage errors become errnos.
//!
//! The FUSE callbacks (`callbacks.rs`) validate, call a helper of one operation family and
//! reply; the families live apart as in gocryptfs's `fusefrontend`: [`super::attributes`],
//! [`super::directories`], [`super::handles`] (opens, leases) and [`super::files`] (data),
//! [`super::special`] (nodes without content), [`super::xattrs`].
//!
//! Locking: the inode table, the open-inode map and the handle maps are each behind a short
//! mutex (held for map lookups only, never across I/O or key fetches). File data is behind one
//! `RwLock<Asset>` per open inode, shared by all handles of that inode: reads take it shared,
//! writes and truncates exclusive, so writers to different files never wait on each other.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use fuser::{Errno, Request};
use tracing::warn;

use super::directories::DirEntry;
use super::handles::{Handle, OpenEntry};
use super::inodes::InodeTable;
use super::{CacheMode, MountOptions};
use crate::asset::{Asset, AssetError};
use crate::keys::{Access, Caller, KeyError, KeySource};
use crate::storage::{Kind, Owner, Storage, StoredObject};

/// An asset over the stored bytes the storage hands out.
pub(super) type StoredAsset = Asset<Box<dyn StoredObject>>;

/// The mount's state.
pub struct CsapFs {
    pub(super) storage: Arc<dyn Storage>,
    pub(super) keys: Arc<dyn KeySource>,
    pub(super) cache: CacheMode,
    pub(super) read_only: bool,
    pub(super) inodes: Mutex<InodeTable>,
    pub(super) open: Mutex<HashMap<u64, OpenEntry>>,
    /// Seen by the page invalidator (see [`CsapFs::leases`]).
    pub(super) handles: Arc<RwLock<HashMap<u64, Handle>>>,
    pub(super) dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    pub(super) next_fh: AtomicU64,
    /// Inodes whose backing file is not a valid asset, already reported in the log.
    reported_invalid: Mutex<HashSet<u64>>,
    /// Serializes changes of sealed user attributes (read, change, reseal, store).
    pub(super) xattr_writes: Mutex<()>,
    /// Whether a refused attribute namespace was already reported at warn level: `cp -a` and
    /// `tar` try ACLs on every file, so each refusal after the first is logged at debug only.
    pub(super) xattr_refusal_told: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for CsapFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsapFs")
            .field("storage", &self.storage.describe())
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// Recovers the data from a poisoned lock: a panicking callback must not take the mount down.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn io_errno(err: io::Error) -> Errno {
    Errno::from(err)
}

pub(super) fn asset_errno(err: &AssetError) -> Errno {
    Errno::from_i32(err.errno())
}

impl CsapFs {
    pub(super) fn new(
        storage: Arc<dyn Storage>,
        keys: Arc<dyn KeySource>,
        options: &MountOptions,
    ) -> io::Result<CsapFs> {
        let root = storage.stat(Path::new(""))?;
        if root.kind != Kind::Dir {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(CsapFs {
            storage,
            keys,
            cache: options.cache,
            read_only: options.read_only,
            inodes: Mutex::new(InodeTable::new(root.ino)),
            open: Mutex::new(HashMap::new()),
            handles: Arc::new(RwLock::new(HashMap::new())),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            reported_invalid: Mutex::new(HashSet::new()),
            xattr_writes: Mutex::new(()),
            xattr_refusal_told: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub(super) fn rel_path(&self, ino: u64) -> Result<PathBuf, Errno> {
        lock(&self.inodes).path(ino).ok_or(Errno::ENOENT)
    }

    pub(super) fn child_rel(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.as_bytes().contains(&b'/') || name == "." || name == ".." || name.is_empty() {
            return Err(Errno::EINVAL);
        }
        Ok(self.rel_path(parent)?.join(name))
    }

    /// The path handed to the key source: volume-relative, `/`-separated, no leading slash
    /// (`show/f0001.exr`), the form rules and the key server's asset registry use.
    pub(super) fn asset_path(rel: &Path) -> String {
        rel.display().to_string()
    }

    pub(super) fn caller(req: &Request) -> Caller {
        Caller {
            uid: req.uid(),
            gid: req.gid(),
            pid: req.pid(),
        }
    }

    /// New entries belong to the caller, as on a local filesystem (the daemon runs as root when
    /// it serves several users with `allow_other`; the storage applies it where it can).
    pub(super) fn owner(req: &Request) -> Option<Owner> {
        Some(Owner {
            uid: req.uid(),
            gid: req.gid(),
        })
    }

    /// Asks the key source whether the caller may do `access` on `rel` (local rules).
    pub(super) fn authorize(&self, req: &Request, rel: &Path, access: Access) -> Result<(), Errno> {
        self.keys
            .authorize(&Self::caller(req), &Self::asset_path(rel), access)
            .map_err(|err| self.key_errno(rel, &err))
    }

    pub(super) fn report_invalid(&self, ino: u64, rel: &Path, err: &AssetError) {
        if lock(&self.reported_invalid).insert(ino) {
            warn!(path = %Self::asset_path(rel), ino, error = %err,
                "backing file is not a valid asset; opening it fails with EIO");
        }
    }

    pub(super) fn key_errno(&self, rel: &Path, err: &KeyError) -> Errno {
        match err {
            // Audited by the key source; the file is authentic but not the asset of this path
            // or not its current version.
            KeyError::Binding(_) => {
                warn!(path = %Self::asset_path(rel), error = %err, "asset refused");
                Errno::EIO
            }
            KeyError::WrongKey { .. } | KeyError::Format(_) | KeyError::Randomness(_) => {
                warn!(path = %Self::asset_path(rel), error = %err, "no usable key for this asset");
                Errno::EIO
            }
            other => {
                warn!(path = %Self::asset_path(rel), error = %other, "no key: access denied");
                Errno::EACCES
            }
        }
    }
}
