//! Attributes: what `lookup`, `getattr` and `readdirplus` show (regular files with their
//! plaintext size), `setattr`, `statfs`.

use std::path::Path;
use std::time::UNIX_EPOCH;

use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo, Request, TimeOrNow};

use super::state::{io_errno, lock, CsapFs};
use crate::asset::{plain_size_of, read_header};
use crate::format::Layout;
use crate::storage::{Attr, AttrChange, FsStats, Kind, OpenMode, SetTime};

pub(super) fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

/// A device number as FUSE carries it: the kernel's `new_encode_dev` (12-bit major, 20-bit
/// minor in 32 bits).
pub(super) fn fuse_rdev(dev: u64) -> u32 {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// The (major, minor) of a FUSE device number (`new_decode_dev`).
pub(super) fn decode_fuse_rdev(rdev: u32) -> (u32, u32) {
    (
        (rdev & 0xfff00) >> 8,
        (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
    )
}

/// `FileAttr` of a stored entry, with `size` already translated to plaintext.
pub(super) fn make_attr(ino: u64, attr: &Attr, size: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: attr.blocks,
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: UNIX_EPOCH,
        kind: file_type(attr.kind),
        perm: (attr.perm & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: fuse_rdev(attr.rdev),
        blksize: attr.blksize,
        flags: 0,
    }
}

fn set_time(time: Option<TimeOrNow>) -> Option<SetTime> {
    time.map(|time| match time {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(at) => SetTime::At(at),
    })
}

impl CsapFs {
    /// Plaintext size of a regular stored file from its stored length and the chunk size in
    /// its header (read once per inode, then cached). A file that is not an asset shows size 0:
    /// its size would say something about ciphertext, and it cannot be opened anyway.
    fn plain_size(&self, ino: u64, rel: &Path, stored_len: u64) -> u64 {
        // An open asset a panicked write refused: its stored length says the size, as closed.
        if let Some(Ok(size)) = self
            .open_inode(ino)
            .map(|open| open.read_asset().map(|a| a.plain_size()))
        {
            return size;
        }
        // Bound first: a guard in the `match` scrutinee would live through the arms.
        let cached = lock(&self.inodes).chunk_size(ino);
        let chunk_size = match cached {
            Some(size) => size,
            None => {
                let header = self
                    .storage
                    .open(rel, OpenMode::Read)
                    .map_err(crate::asset::AssetError::from)
                    .and_then(|object| read_header(&object));
                match header {
                    Ok(header) => {
                        if let Some(node) = lock(&self.inodes).node_mut(ino) {
                            node.chunk_size = Some(header.chunk_size);
                        }
                        header.chunk_size
                    }
                    Err(_) => return 0,
                }
            }
        };
        plain_size_of(
            Layout {
                chunk_size: u64::from(chunk_size),
            },
            stored_len,
        )
    }

    /// Attributes of a stored entry found by path (regular files show their plaintext size).
    fn attr_from_stored(&self, ino: u64, rel: &Path, attr: &Attr) -> FileAttr {
        let size = if attr.kind == Kind::File {
            self.plain_size(ino, rel, attr.size)
        } else {
            attr.size
        };
        make_attr(ino, attr, size)
    }

    /// Attributes of `ino`: from its open asset if it has one (also works after unlink), else
    /// from its path.
    pub(super) fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        if let Some(open) = self.open_inode(ino) {
            // One shared lock, released before anything else: taking it again further down
            // (a recursive read) could deadlock behind a waiting writer.
            let (attr, size) = {
                let asset = open.read_asset()?;
                (asset.file().attr().map_err(io_errno)?, asset.plain_size())
            };
            return Ok(make_attr(ino, &attr, size));
        }
        let rel = self.rel_path(ino)?;
        let attr = self.storage.stat(&rel).map_err(io_errno)?;
        Ok(self.attr_from_stored(ino, &rel, &attr))
    }

    /// Stats `rel`, records it in the inode table (one kernel reference when `count_lookup`)
    /// and returns its attributes.
    pub(super) fn entry(&self, rel: &Path, count_lookup: bool) -> Result<FileAttr, Errno> {
        let attr = self.storage.stat(rel).map_err(io_errno)?;
        let ino = {
            let mut inodes = lock(&self.inodes);
            let ino = inodes.fuse_ino(attr.ino);
            inodes.remember(ino, rel, count_lookup);
            ino
        };
        Ok(self.attr_from_stored(ino, rel, &attr))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_setattr(
        &self,
        req: &Request,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        if let Some(size) = size {
            self.with_asset_mut(req, ino, fh, |asset| asset.set_len(size))?;
        }
        let change = AttrChange {
            perm: mode.map(|mode| mode & 0o7777),
            uid,
            gid,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        if !change.is_empty() {
            match self.rel_path(ino) {
                Ok(rel) => self.storage.set_attr(&rel, &change).map_err(io_errno)?,
                // Unlinked but open: only the size could be changed; times stay as they are.
                Err(_) if mode.is_none() && uid.is_none() && gid.is_none() => {}
                Err(e) => return Err(e),
            }
        }
        if mode.is_some_and(|mode| mode & 0o6000 != 0) {
            // Set-ID bits set again: the next write without CAP_FSETID must clear them.
            if let Some(open) = self.open_inode(ino) {
                open.setid_checked
                    .store(false, std::sync::atomic::Ordering::Release);
            }
        }
        self.attr(ino)
    }

    pub(super) fn do_statfs(&self) -> Result<FsStats, Errno> {
        self.storage.statfs().map_err(io_errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_cross_fuse_unchanged() {
        for (major, minor) in [(0, 0), (1, 3), (8, 1), (4095, 0xfffff), (259, 65536)] {
            let dev = rustix::fs::makedev(major, minor);
            assert_eq!(decode_fuse_rdev(fuse_rdev(dev)), (major, minor));
        }
    }
}
