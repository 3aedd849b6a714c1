//! File data: creating assets, reading (authenticated chunk by chunk), writing (re-sealed with
//! fresh nonces), size changes, `fsync`, and `copy_file_range` (decrypted from the source and
//! sealed again under the destination's key: ciphertext never moves from one asset to another).

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::{Errno, FileAttr, FileHandle, Request};
use tracing::warn;
use zeroize::Zeroizing;

use super::attributes::make_attr;
use super::handles::OpenInode;
use super::state::{asset_errno, io_errno, lock, CsapFs, StoredAsset};
use crate::asset::{Asset, AssetError};
use crate::keys::{Access, Lease};
use crate::storage::AttrChange;

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;

/// Largest request: 1 MiB, i.e. the kernel's cap of 256 pages per FUSE request.
pub(super) const MAX_REQUEST: u32 = 1 << 20;
/// Most bytes one `copy_file_range` request copies; callers loop on a short count, and a
/// bounded request keeps one FUSE thread from being held for long.
const MAX_COPY: u64 = 16 << 20;

impl CsapFs {
    /// Creates an empty asset named `name` in `parent`, exactly as every new file is made
    /// (`create`, `mknod(S_IFREG)`): local rules first, a create license, header and empty
    /// final chunk. Never leaves a half-made, non-asset file behind.
    pub(super) fn create_asset(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        perm: u32,
    ) -> Result<(FileAttr, StoredAsset, Lease), Errno> {
        if self.read_only {
            return Err(Errno::EROFS);
        }
        let rel = self.child_rel(parent, name)?;
        // Local rules first: a denial needs no key server round trip and leaves no file.
        self.authorize(req, &rel, Access::Create)?;
        let object = self
            .storage
            .create(&rel, perm & 0o7777, Self::owner(req))
            .map_err(io_errno)?;
        let created = self
            .keys
            .create_key(&Self::caller(req), &Self::asset_path(&rel))
            .map_err(|err| self.key_errno(&rel, &err))
            .and_then(|(header, licensed)| {
                let asset = Asset::create(object, header, &licensed.key).map_err(|err| {
                    warn!(path = %Self::asset_path(&rel), error = %err, "creating an asset failed");
                    asset_errno(&err)
                })?;
                Ok((asset, licensed.lease))
            });
        let (asset, lease) = match created {
            Ok(created) => created,
            Err(errno) => {
                let _ = self.storage.remove_file(&rel);
                return Err(errno);
            }
        };
        let attr = self.new_asset_entry(rel, &asset)?;
        Ok((attr, asset, lease))
    }

    /// The entry of an asset just created: plaintext size 0, chunk size known (no header
    /// read back).
    fn new_asset_entry(&self, rel: PathBuf, asset: &StoredAsset) -> Result<FileAttr, Errno> {
        let stored = asset.file().attr().map_err(io_errno)?;
        let mut inodes = lock(&self.inodes);
        let ino = inodes.fuse_ino(stored.ino);
        inodes.remember(ino, &rel, true);
        if let Some(node) = inodes.node_mut(ino) {
            node.chunk_size = Some(asset.header().chunk_size);
        }
        Ok(make_attr(ino, &stored, 0))
    }

    pub(super) fn do_create(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        perm: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let (attr, asset, lease) = self.create_asset(req, parent, name, perm)?;
        let ino = attr.ino.0;
        // A new asset: there is no older version to tell it from.
        let inode = OpenInode::new(asset, true, true);
        let writable = (flags & nix::libc::O_ACCMODE) != nix::libc::O_RDONLY;
        // A stale open entry can exist only if the backing inode number was reused while the
        // old file was still open; the new file must not share it.
        lock(&self.open).remove(&ino);
        // The creator's handle lives under the create license: it ends when that license's
        // rule is withdrawn or ends, like any other handle.
        let fh = self.add_handle(ino, Some(inode), writable, lease)?;
        Ok((attr, fh))
    }

    pub(super) fn do_read(
        &self,
        fh: FileHandle,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Errno> {
        let (_, inode, _) = self.live_handle(fh)?;
        let asset = inode.read_asset()?;
        // An authentication failure is logged once, by `Asset`, with the asset and chunk.
        asset.read_at(offset, buf).map_err(|err| asset_errno(&err))
    }

    pub(super) fn do_write(
        &self,
        req: &Request,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        kill_setid: bool,
    ) -> Result<u32, Errno> {
        let (ino, inode, writable) = self.live_handle(fh)?;
        if !writable {
            return Err(Errno::EBADF);
        }
        let len = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        let mut asset = inode.write_asset()?;
        self.new_version(req, ino, &inode, &mut asset)?;
        if kill_setid && !inode.setid_checked.load(Ordering::Acquire) {
            self.kill_setid(ino, &asset)?;
            inode.setid_checked.store(true, Ordering::Release);
        }
        asset
            .write_at(offset, data)
            .map_err(|err| asset_errno(&err))?;
        Ok(len)
    }

    /// A write by someone without `CAP_FSETID` ends the file's set-user-ID bit and, if group
    /// execution is allowed, its set-group-ID bit, as on a local filesystem. Checked once per
    /// open asset (a `chmod` that sets either bit again makes it check again), so writes cost
    /// no `stat` each.
    fn kill_setid(&self, ino: u64, asset: &StoredAsset) -> Result<(), Errno> {
        let perm = asset.file().attr().map_err(io_errno)?.perm;
        let mut killed = perm & !S_ISUID;
        if perm & S_IXGRP != 0 {
            killed &= !S_ISGID;
        }
        if killed == perm {
            return Ok(());
        }
        let Ok(rel) = self.rel_path(ino) else {
            return Ok(()); // unlinked: nobody can execute it any more
        };
        let change = AttrChange {
            perm: Some(killed),
            ..AttrChange::default()
        };
        self.storage.set_attr(&rel, &change).map_err(io_errno)
    }

    /// Copies plaintext from one handle to another: each piece is read (authenticated) under
    /// the source's key exactly as `read` reads it — so a source the caller may not read fails
    /// as `read` fails — and written as `write` writes, sealed under the destination's key with
    /// fresh nonces. The two assets are never locked at once (no lock order to get wrong).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_copy_file_range(
        &self,
        req: &Request,
        fh_in: FileHandle,
        offset_in: u64,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
    ) -> Result<u32, Errno> {
        let (_, source, _) = self.live_handle(fh_in)?;
        let (ino_out, target, writable) = self.live_handle(fh_out)?;
        if !writable {
            return Err(Errno::EBADF);
        }
        let len = len.min(MAX_COPY);
        if offset_out.checked_add(len).is_none() {
            return Err(Errno::EFBIG);
        }
        // Plaintext: zeroized when the copy is done.
        let mut piece = Zeroizing::new(vec![0u8; len.min(u64::from(MAX_REQUEST)) as usize]);
        let mut copied = 0u64;
        while copied < len {
            let want = (len - copied).min(piece.len() as u64) as usize;
            let n = source
                .read_asset()?
                .read_at(offset_in + copied, &mut piece[..want])
                .map_err(|err| asset_errno(&err))?;
            if n == 0 {
                break;
            }
            let mut asset = target.write_asset()?;
            self.new_version(req, ino_out, &target, &mut asset)?;
            asset
                .write_at(offset_out + copied, &piece[..n])
                .map_err(|err| asset_errno(&err))?;
            copied += n as u64;
        }
        Ok(copied as u32)
    }

    /// Runs `f` on the inode's asset, exclusively: the shared open one if any, else a
    /// temporary one (truncate of a file nobody has open). A size change is a write, decided
    /// for this caller: by the handle it came with (`ftruncate`, `fallocate`: that handle's
    /// own write license), else by the caller's own write license — also when the inode is
    /// open through somebody else's handle, which must not lend its license to a caller that
    /// holds none.
    pub(super) fn with_asset_mut<T>(
        &self,
        req: &Request,
        ino: u64,
        fh: Option<FileHandle>,
        f: impl FnOnce(&mut StoredAsset) -> Result<T, AssetError>,
    ) -> Result<T, Errno> {
        if self.read_only {
            return Err(Errno::EROFS);
        }
        let inode = match (fh, self.open_inode(ino)) {
            (Some(fh), _) => {
                let (handle_ino, inode, writable) = self.live_handle(fh)?;
                if handle_ino != ino || !writable {
                    return Err(Errno::EBADF);
                }
                inode
            }
            (None, Some(inode)) => {
                self.license_open_inode(req, ino, &inode, Access::Write)?;
                inode
            }
            (None, None) => Arc::new(self.open_asset(req, ino, Access::Write)?.0),
        };
        if !inode.writable {
            return Err(Errno::EACCES);
        }
        let mut asset = inode.write_asset()?;
        self.new_version(req, ino, &inode, &mut asset)?;
        f(&mut asset).map_err(|err| asset_errno(&err))
    }

    /// Before the first change through this open asset: its next write generation.
    fn new_version(
        &self,
        req: &Request,
        ino: u64,
        inode: &OpenInode,
        asset: &mut StoredAsset,
    ) -> Result<(), Errno> {
        // Unlinked but open: the generation still advances; the path only labels the record.
        let rel = self.rel_path(ino).unwrap_or_default();
        super::versioning::before_change(
            self.keys.as_ref(),
            &Self::caller(req),
            &Self::asset_path(&rel),
            asset,
            &inode.versioned,
        )
        .map_err(|err| self.key_errno(&rel, &err))
    }

    pub(super) fn do_fallocate(
        &self,
        req: &Request,
        ino: u64,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        match mode {
            // Allocation that may grow the file: grow it (the new range reads as zeros).
            0 => {
                let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
                self.with_asset_mut(req, ino, Some(fh), |asset| {
                    if end > asset.plain_size() {
                        asset.set_len(end)
                    } else {
                        Ok(())
                    }
                })
            }
            // Preallocation without a size change is only a hint; ciphertext space is
            // allocated when chunks are sealed.
            nix::libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            // Punching or zeroing ranges: a documented limit (docs/guide.md, "Mounting a volume", Limits).
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    pub(super) fn do_fsync(&self, fh: FileHandle) -> Result<(), Errno> {
        let (_, inode, _) = self.handle(fh)?;
        let mut asset = inode.write_asset()?;
        asset.sync().map_err(|err| asset_errno(&err))
    }

    /// At close: a writable handle's asset is synced when its store keeps writes back until
    /// then (an object store, [`crate::storage::StoredObject::syncs_at_close`]).
    pub(super) fn do_flush(&self, fh: FileHandle) -> Result<(), Errno> {
        let (_, inode, writable) = self.handle(fh)?;
        if !writable || !inode.writable {
            return Ok(());
        }
        let mut asset = inode.write_asset()?;
        if !asset.file().syncs_at_close() {
            return Ok(());
        }
        asset.sync().map_err(|err| asset_errno(&err))
    }

    /// Flushes every open asset to stable storage (unmount and shutdown).
    pub(super) fn sync_all(&self) {
        let inodes: Vec<Arc<OpenInode>> =
            lock(&self.open).values().map(|e| e.inode.clone()).collect();
        for inode in inodes {
            // A panicked write's asset is not flushed: its state is not to be trusted.
            let Ok(mut asset) = inode.write_asset() else {
                continue;
            };
            if let Err(err) = asset.sync() {
                warn!(asset = %asset.header().asset_id, error = %err, "flush at unmount failed");
            }
        }
    }
}
