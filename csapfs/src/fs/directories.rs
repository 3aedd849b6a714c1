//! The namespace: listings, `mkdir`, `unlink`/`rmdir`, `rename` (with the key server's asset
//! registry following the files), hard and symbolic links.
//!
//! `RENAME_EXCHANGE` is refused (`EINVAL`), a documented limit: swapping two registered
//! assets moves two registrations at the key server, which moves one asset at a time and
//! refuses a path that another asset holds, so an exchange could not be made atomic there.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Errno, FileAttr, FileHandle, FileType, RenameFlags, Request};
use tracing::warn;

use super::attributes::file_type;
use super::inodes::ROOT;
use super::state::{io_errno, lock, CsapFs};
use crate::asset::{read_header, AssetError};
use crate::keys::Access;
use crate::storage::{Kind, OpenMode, Replace};

/// One directory entry of an `opendir` snapshot (offsets index this list).
pub(super) struct DirEntry {
    pub(super) name: OsString,
    pub(super) ino: u64,
    pub(super) kind: FileType,
}

impl CsapFs {
    pub(super) fn do_readdir_snapshot(&self, ino: u64) -> Result<Vec<DirEntry>, Errno> {
        let rel = self.rel_path(ino)?;
        let parent_ino = match rel.parent() {
            Some(parent) => {
                let attr = self.storage.stat(parent).map_err(io_errno)?;
                lock(&self.inodes).fuse_ino(attr.ino)
            }
            None => ROOT,
        };
        let mut entries = vec![
            DirEntry {
                name: ".".into(),
                ino,
                kind: FileType::Directory,
            },
            DirEntry {
                name: "..".into(),
                ino: parent_ino,
                kind: FileType::Directory,
            },
        ];
        let items = self.storage.list(&rel).map_err(io_errno)?;
        let inodes = lock(&self.inodes);
        entries.extend(items.into_iter().map(|item| DirEntry {
            ino: inodes.fuse_ino(item.ino),
            kind: file_type(item.kind),
            name: item.name,
        }));
        Ok(entries)
    }

    pub(super) fn dir_snapshot(&self, fh: FileHandle) -> Result<Arc<Vec<DirEntry>>, Errno> {
        lock(&self.dirs).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    pub(super) fn do_mkdir(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        perm: u32,
    ) -> Result<FileAttr, Errno> {
        let rel = self.child_rel(parent, name)?;
        self.storage
            .make_dir(&rel, perm & 0o7777, Self::owner(req))
            .map_err(io_errno)?;
        self.entry(&rel, true)
    }

    pub(super) fn do_unlink(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        dir: bool,
    ) -> Result<(), Errno> {
        let rel = self.child_rel(parent, name)?;
        let attr = self.storage.stat(&rel).map_err(io_errno)?;
        if attr.kind == Kind::File {
            self.authorize(req, &rel, Access::Delete)?;
        }
        if dir {
            self.storage.remove_dir(&rel).map_err(io_errno)?;
        } else {
            self.storage.remove_file(&rel).map_err(io_errno)?;
        }
        let mut inodes = lock(&self.inodes);
        let ino = inodes.fuse_ino(attr.ino);
        inodes.unlinked(ino, &rel);
        Ok(())
    }

    pub(super) fn do_rename(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let from = self.child_rel(parent, name)?;
        let to = self.child_rel(newparent, newname)?;
        let moved = self.storage.stat(&from).map_err(io_errno)?;
        let replaced = self.storage.stat(&to).ok();
        match moved.kind {
            Kind::File => {
                // Moving an asset removes it from one path and creates it at another.
                self.authorize(req, &from, Access::Delete)?;
                self.authorize(req, &to, Access::Create)?;
                if replaced.is_some_and(|r| r.kind == Kind::File) {
                    self.authorize(req, &to, Access::Delete)?;
                }
                // The key server's asset registry follows the file (and may refuse the move).
                let header = self
                    .storage
                    .open(&from, OpenMode::Read)
                    .map_err(AssetError::from)
                    .and_then(|object| read_header(&object));
                if let Ok(header) = header {
                    self.keys
                        .renamed(
                            &Self::caller(req),
                            &header,
                            &Self::asset_path(&from),
                            &Self::asset_path(&to),
                        )
                        .map_err(|err| self.key_errno(&from, &err))?;
                }
            }
            Kind::Dir => self.rename_assets_under(req, &from, &to)?,
            _ => {}
        }
        let replace = if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            Replace::Never
        } else {
            Replace::Allowed
        };
        self.storage.rename(&from, &to, replace).map_err(io_errno)?;
        let mut inodes = lock(&self.inodes);
        if let Some(attr) = replaced {
            let ino = inodes.fuse_ino(attr.ino);
            inodes.unlinked(ino, &to);
        }
        inodes.renamed(&from, &to);
        Ok(())
    }

    /// Moves the registration of every asset below directory `from` to its place below `to`
    /// (the key server decides each). If one is refused, those already moved are moved back
    /// and the rename fails: no asset is left registered where its file is not.
    fn rename_assets_under(&self, req: &Request, from: &Path, to: &Path) -> Result<(), Errno> {
        let assets = super::moves::assets_under(self.storage.as_ref(), from).map_err(io_errno)?;
        let caller = Self::caller(req);
        let path = |dir: &Path, rel: &Path| Self::asset_path(&dir.join(rel));
        for (done, (rel, header)) in assets.iter().enumerate() {
            let moved = self
                .keys
                .renamed(&caller, header, &path(from, rel), &path(to, rel));
            if let Err(err) = moved {
                for (rel, header) in &assets[..done] {
                    if let Err(back) =
                        self.keys
                            .renamed(&caller, header, &path(to, rel), &path(from, rel))
                    {
                        warn!(path = %path(from, rel), error = %back, "cannot move an asset's registration back after a refused directory rename");
                    }
                }
                return Err(self.key_errno(&from.join(rel), &err));
            }
        }
        Ok(())
    }

    pub(super) fn do_symlink(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> Result<FileAttr, Errno> {
        let rel = self.child_rel(parent, name)?;
        self.storage
            .make_symlink(&rel, target, Self::owner(req))
            .map_err(io_errno)?;
        self.entry(&rel, true)
    }

    pub(super) fn do_link(
        &self,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
    ) -> Result<FileAttr, Errno> {
        let from = self.rel_path(ino)?;
        let rel = self.child_rel(newparent, newname)?;
        self.storage.hard_link(&from, &rel).map_err(io_errno)?;
        self.entry(&rel, true)
    }

    pub(super) fn do_readlink(&self, ino: u64) -> Result<PathBuf, Errno> {
        let rel = self.rel_path(ino)?;
        self.storage.read_link(&rel).map_err(io_errno)
    }

    pub(super) fn do_fsyncdir(&self, ino: u64) -> Result<(), Errno> {
        let rel = self.rel_path(ino)?;
        self.storage.sync_dir(&rel).map_err(io_errno)
    }
}
