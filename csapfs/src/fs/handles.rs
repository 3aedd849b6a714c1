//! Opens and handles: each open is an authorization decision (a license and its lease), the
//! open asset is shared by every handle of its inode, and a handle's lease is checked on every
//! data operation so that a revocation reaches handles that are already open.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use fuser::{Errno, FileHandle, FopenFlags, OpenAccMode, OpenFlags, Request};
use tracing::debug;

use super::asset_lock::AssetLock;
use super::state::{io_errno, lock, CsapFs, StoredAsset};
use super::CacheMode;
use crate::asset::{read_header, Asset};
use crate::format::Header;
use crate::keys::{Access, Lease, Licensed};
use crate::storage::{OpenMode, StoredObject};

/// One open asset, shared by every handle of its inode.
pub(super) struct OpenInode {
    asset: AssetLock,
    pub(super) writable: bool,
    /// This open of the asset moved it to a new write generation already (or created it).
    pub(super) versioned: AtomicBool,
    /// Set-ID bits were cleared (or found absent) for a writer without `CAP_FSETID`.
    pub(super) setid_checked: AtomicBool,
}

impl OpenInode {
    pub(super) fn new(asset: StoredAsset, writable: bool, versioned: bool) -> OpenInode {
        OpenInode {
            asset: AssetLock::new(asset),
            writable,
            versioned: AtomicBool::new(versioned),
            setid_checked: AtomicBool::new(false),
        }
    }

    /// Shared access; `EIO` once a write through this open panicked ([`AssetLock`]).
    pub(super) fn read_asset(&self) -> Result<RwLockReadGuard<'_, StoredAsset>, Errno> {
        self.asset.read()
    }

    /// Exclusive access; `EIO` once a write through this open panicked ([`AssetLock`]).
    pub(super) fn write_asset(&self) -> Result<RwLockWriteGuard<'_, StoredAsset>, Errno> {
        self.asset.write()
    }
}

pub(super) struct OpenEntry {
    pub(super) inode: Arc<OpenInode>,
    pub(super) handles: usize,
}

pub(super) struct Handle {
    pub(super) ino: u64,
    pub(super) inode: Arc<OpenInode>,
    pub(super) writable: bool,
    /// The license this handle was opened under; checked (one atomic load) on every read
    /// and write, so a revocation reaches handles that are already open.
    pub(super) lease: Lease,
}

/// The lease of one open handle, as the page invalidator sees it.
pub(super) struct HandleLease {
    pub fh: u64,
    pub ino: u64,
    /// Revoked, or past its end: the handle's file must keep no page of plaintext.
    pub ended: bool,
    /// When a live lease ends (unix seconds), if it ends by time.
    pub not_after: Option<i64>,
}

/// The handle table seen from outside the filesystem, without keeping it alive.
pub(super) struct HandleLeases(std::sync::Weak<RwLock<HashMap<u64, Handle>>>);

impl HandleLeases {
    /// Every handle's lease, or `None` once the filesystem is gone.
    pub(super) fn snapshot(&self) -> Option<Vec<HandleLease>> {
        let handles = self.0.upgrade()?;
        let handles = handles.read().unwrap_or_else(|p| p.into_inner());
        Some(
            handles
                .iter()
                .map(|(&fh, h)| HandleLease {
                    fh,
                    ino: h.ino,
                    ended: h.lease.is_revoked(),
                    not_after: h.lease.not_after(),
                })
                .collect(),
        )
    }
}

impl CsapFs {
    pub(super) fn open_inode(&self, ino: u64) -> Option<Arc<OpenInode>> {
        lock(&self.open).get(&ino).map(|entry| entry.inode.clone())
    }

    pub(super) fn handle(&self, fh: FileHandle) -> Result<(u64, Arc<OpenInode>, bool), Errno> {
        let handles = self.handles.read().unwrap_or_else(|p| p.into_inner());
        handles
            .get(&fh.0)
            .map(|h| (h.ino, h.inode.clone(), h.writable))
            .ok_or(Errno::EBADF)
    }

    /// A view of every handle's lease for the page invalidator (see [`super::invalidate`]);
    /// it outlives `self` inside the session without keeping the handles alive.
    pub(super) fn leases(&self) -> HandleLeases {
        HandleLeases(Arc::downgrade(&self.handles))
    }

    /// [`Self::handle`] for data I/O: refused with `EACCES` once the handle's license was
    /// revoked.
    pub(super) fn live_handle(&self, fh: FileHandle) -> Result<(u64, Arc<OpenInode>, bool), Errno> {
        let handles = self.handles.read().unwrap_or_else(|p| p.into_inner());
        let h = handles.get(&fh.0).ok_or(Errno::EBADF)?;
        if h.lease.is_revoked() {
            debug!(ino = h.ino, "I/O refused: the handle's license was revoked");
            return Err(Errno::EACCES);
        }
        Ok((h.ino, h.inode.clone(), h.writable))
    }

    /// Licenses and authenticates the asset in `object` (stored at `rel`) for `access`:
    /// header, key, header MAC, registered path and generation.
    pub(super) fn license_asset(
        &self,
        req: &Request,
        ino: u64,
        rel: &Path,
        object: Box<dyn StoredObject>,
        access: Access,
    ) -> Result<(StoredAsset, Licensed), Errno> {
        let header = read_header(&object).map_err(|err| {
            self.report_invalid(ino, rel, &err);
            Errno::EIO
        })?;
        let licensed = self.licensed_now(req, rel, &header, access)?;
        let asset = Asset::open_recovering(object, &licensed.key).map_err(|err| {
            self.report_invalid(ino, rel, &err);
            Errno::EIO
        })?;
        // The header authenticated: is this the asset registered here, at its generation?
        self.keys
            .check_binding(&Self::caller(req), &Self::asset_path(rel), asset.header())
            .map_err(|err| self.key_errno(rel, &err))?;
        if let Some(node) = lock(&self.inodes).node_mut(ino) {
            node.chunk_size = Some(asset.header().chunk_size);
        }
        Ok((asset, licensed))
    }

    /// Opens the stored bytes of `ino` as an asset: for writing unless the mount or the
    /// store allows only reading.
    pub(super) fn open_asset(
        &self,
        req: &Request,
        ino: u64,
        access: Access,
    ) -> Result<(OpenInode, Lease), Errno> {
        let rel = self.rel_path(ino)?;
        let (object, writable) = if self.read_only {
            (
                self.storage.open(&rel, OpenMode::Read).map_err(io_errno)?,
                false,
            )
        } else {
            match self.storage.open(&rel, OpenMode::ReadWrite) {
                Ok(object) => (object, true),
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(nix::libc::EACCES | nix::libc::EROFS | nix::libc::EPERM)
                    ) =>
                {
                    (
                        self.storage.open(&rel, OpenMode::Read).map_err(io_errno)?,
                        false,
                    )
                }
                Err(err) => return Err(io_errno(err)),
            }
        };
        let (asset, licensed) = self.license_asset(req, ino, &rel, object, access)?;
        Ok((OpenInode::new(asset, writable, false), licensed.lease))
    }

    /// Authorizes one more use of an inode that is already open: the same key, but a decision
    /// (and a lease) for this caller.
    pub(super) fn license_open_inode(
        &self,
        req: &Request,
        ino: u64,
        inode: &OpenInode,
        access: Access,
    ) -> Result<Licensed, Errno> {
        let rel = self.rel_path(ino)?;
        let header = *inode.read_asset()?.header();
        let licensed = self.licensed_now(req, &rel, &header, access)?;
        // The open asset's header authenticated when it was opened; the path may have changed.
        self.keys
            .check_binding(&Self::caller(req), &Self::asset_path(&rel), &header)
            .map_err(|err| self.key_errno(&rel, &err))?;
        Ok(licensed)
    }

    /// The caller's license for the asset of `header` at `rel`, refused (`EACCES`) if it is
    /// revoked or ended already: every use of a license — an open, an attribute call, a
    /// truncate by path — gets the check a handle makes on each read.
    fn licensed_now(
        &self,
        req: &Request,
        rel: &Path,
        header: &Header,
        access: Access,
    ) -> Result<Licensed, Errno> {
        let licensed = self
            .keys
            .open_key(&Self::caller(req), &Self::asset_path(rel), header, access)
            .map_err(|err| self.key_errno(rel, &err))?;
        if licensed.lease.is_revoked() {
            debug!(path = %Self::asset_path(rel), "refused: the license is revoked or ended");
            return Err(Errno::EACCES);
        }
        Ok(licensed)
    }

    /// Registers a handle on `ino`, sharing the inode's open asset if it has one. The asset is
    /// opened outside the map lock (a key fetch may take a network round trip); if two opens
    /// race, the first to insert wins and the other's asset is dropped.
    pub(super) fn add_handle(
        &self,
        ino: u64,
        fresh: Option<OpenInode>,
        writable: bool,
        lease: Lease,
    ) -> Result<u64, Errno> {
        let inode = {
            let mut open = lock(&self.open);
            match open.get_mut(&ino) {
                Some(entry) => {
                    entry.handles += 1;
                    entry.inode.clone()
                }
                None => {
                    let fresh = fresh.ok_or(Errno::EAGAIN)?;
                    let inode = Arc::new(fresh);
                    open.insert(
                        ino,
                        OpenEntry {
                            inode: inode.clone(),
                            handles: 1,
                        },
                    );
                    inode
                }
            }
        };
        if writable && !inode.writable {
            self.drop_handle_ref(ino);
            return Err(Errno::EACCES);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                fh,
                Handle {
                    ino,
                    inode,
                    writable,
                    lease,
                },
            );
        Ok(fh)
    }

    pub(super) fn drop_handle_ref(&self, ino: u64) {
        let mut open = lock(&self.open);
        if let Some(entry) = open.get_mut(&ino) {
            entry.handles -= 1;
            if entry.handles == 0 {
                open.remove(&ino);
            }
        }
    }

    pub(super) fn do_open(&self, req: &Request, ino: u64, flags: OpenFlags) -> Result<u64, Errno> {
        let writable = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if writable && self.read_only {
            return Err(Errno::EROFS);
        }
        let access = if writable {
            Access::Write
        } else {
            Access::Read
        };
        // Every open is an authorization decision, also when another handle already has the
        // asset open (the key is shared, the permission is not).
        let (fresh, lease) = match self.open_inode(ino) {
            Some(inode) => (
                None,
                self.license_open_inode(req, ino, &inode, access)?.lease,
            ),
            None => {
                let (fresh, lease) = self.open_asset(req, ino, access)?;
                (Some(fresh), lease)
            }
        };
        match self.add_handle(ino, fresh, writable, lease) {
            // The inode was closed between our check and the insert: open it now.
            Err(e) if e == Errno::EAGAIN => {
                let (fresh, lease) = self.open_asset(req, ino, access)?;
                self.add_handle(ino, Some(fresh), writable, lease)
            }
            other => other,
        }
    }

    pub(super) fn do_release(&self, fh: FileHandle) -> Result<(), Errno> {
        let handle = self
            .handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0)
            .ok_or(Errno::EBADF)?;
        self.drop_handle_ref(handle.ino);
        Ok(())
    }

    pub(super) fn fopen_flags(&self) -> FopenFlags {
        match self.cache {
            CacheMode::Direct => FopenFlags::FOPEN_DIRECT_IO,
            // No FOPEN_KEEP_CACHE: the kernel drops this file's cached pages at each open.
            CacheMode::Page => FopenFlags::empty(),
        }
    }
}
