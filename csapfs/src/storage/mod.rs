//! Where the encrypted assets live: the [`Storage`] seam under the mount and `csap import`.
//!
//! Everything above this module sees a tree of entries named by volume-relative paths (the
//! paths that rules and the key server's registry use) and, for each asset, its stored bytes
//! through [`StoredObject`]. [`LocalDir`] — a directory on a local or network filesystem — is
//! the embedded backend; [`ObjectStorage`] keeps the assets in an S3-compatible bucket
//! ([`object`]: what it does where an object store differs from a filesystem).
//!
//! # What a backend must guarantee
//!
//! - **Paths.** Every path is relative, made only of normal components (no `.`, `..` or
//!   root), `""` being the root; the backend refuses anything else (`EINVAL`) and never
//!   resolves a path outside its root. Depth and total length are limited only by what the
//!   store itself limits (each component ≤ 255 bytes), not by `PATH_MAX`.
//! - **Errors** are `io::Error`s with the errno a local filesystem would give (`ENOENT`,
//!   `EEXIST`, `ENOTEMPTY`, `ENOTDIR`, `EISDIR`, `EXDEV`, …): the mount answers them as
//!   they are.
//! - **Metadata** ([`Attr`]): `ino` is unique among live entries, stable while the entry
//!   lives, and shared by hard links (the mount uses it as the inode number); `size` is the
//!   *stored* length (the mount derives the plaintext size from it and the asset header).
//! - **Stored bytes** ([`StoredObject`]): byte-range reads see every write that returned
//!   before them; `sync_data` returns once the bytes written before it survive a crash.
//!   Reads are the hot path: a backend serves them without allocating or asking anything
//!   but the bytes' store.
//! - **Creation is exclusive** (`EEXIST` if the name is taken) and [`Storage::put_new`] is
//!   all or nothing: the object appears under its name only complete, never replacing
//!   another, and a put cut short (error, crash) leaves nothing visible under that name.
//! - **Rename** moves one entry (a directory with everything below it) to a new name in one
//!   step as seen through this backend, replacing a non-directory or empty directory unless
//!   told not to. A backend that cannot rename atomically (an object store: copy, then
//!   delete) must say so in its documentation.
//! - **Nothing here decides access.** The mount authorizes before it calls; the backend
//!   stores ciphertext, names and metadata, and must never see a key or plaintext.

mod dircache;
mod local;
pub mod object;

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use csap_format::stored::StoredBytes;
pub use local::LocalDir;
pub use object::{AccessKey, ObjectConfig, ObjectStorage};

/// What kind of entry a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Metadata of one stored entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    /// Permission bits, set-id and sticky bits (`mode & 0o7777`).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number of a device node (`makedev(major, minor)`), else 0.
    pub rdev: u64,
    /// Stored length in bytes (an asset's ciphertext, a symlink's target length).
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub blksize: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// One entry of a directory listing (`.` and `..` are not listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirItem {
    pub name: OsString,
    pub ino: u64,
    pub kind: Kind,
}

/// Who a new entry belongs to: its creator. A backend applies its directories' rules on top,
/// as a local filesystem would (a set-group-ID directory gives its group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// A node that holds no content: stored as such, nothing to encrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Fifo,
    Socket,
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
}

/// A time to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(SystemTime),
}

/// Metadata changes of one `setattr`; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttrChange {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

impl AttrChange {
    pub fn is_empty(&self) -> bool {
        *self == AttrChange::default()
    }
}

/// How an asset's stored bytes are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    Read,
    ReadWrite,
}

/// Whether a rename may replace an existing entry at its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    Allowed,
    Never,
}

/// Capacity figures for `statfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub block_size: u32,
    pub name_max: u32,
    pub fragment_size: u32,
}

/// The stored bytes of one asset, open, with what else is kept per asset.
pub trait StoredObject: StoredBytes + Send + Sync {
    /// Metadata of the entry these bytes belong to (also after it was unlinked).
    fn attr(&self) -> io::Result<Attr>;
    /// The asset's sealed user attributes (`csap_format::xattrs`), if it has any.
    fn sealed_xattrs(&self) -> io::Result<Option<Vec<u8>>>;
    /// Replaces the sealed user attributes in one step; `None` removes them.
    fn set_sealed_xattrs(&self, sealed: Option<&[u8]>) -> io::Result<()>;
    /// The bytes written reach the store only at [`StoredBytes::sync_data`] (an object store
    /// stages them): the mount then syncs a written asset when a handle closes, so that a
    /// closed file is stored. A local file is stored as it is written: no sync at close.
    fn syncs_at_close(&self) -> bool {
        false
    }
}

/// A tree of entries holding encrypted assets (see the module documentation for the contract).
pub trait Storage: std::fmt::Debug + Send + Sync + 'static {
    /// Names the store in logs and as the mount's source (`fsname`).
    fn describe(&self) -> String;
    /// Metadata of `path`; a final symlink is not followed.
    fn stat(&self, path: &Path) -> io::Result<Attr>;
    fn set_attr(&self, path: &Path, change: &AttrChange) -> io::Result<()>;
    fn statfs(&self) -> io::Result<FsStats>;
    /// The entries of directory `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<DirItem>>;
    fn make_dir(&self, path: &Path, perm: u32, owner: Option<Owner>) -> io::Result<()>;
    fn make_special(
        &self,
        path: &Path,
        node: Special,
        perm: u32,
        owner: Option<Owner>,
    ) -> io::Result<()>;
    fn make_symlink(&self, path: &Path, target: &Path, owner: Option<Owner>) -> io::Result<()>;
    fn hard_link(&self, existing: &Path, new: &Path) -> io::Result<()>;
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// Removes a non-directory.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path, replace: Replace) -> io::Result<()>;
    /// Makes the entries of directory `dir` durable (creations, removals, renames in it).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Opens the stored bytes of the asset at `path` (a regular file; `EISDIR` or `EINVAL`
    /// for anything else; a final symlink is not followed).
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StoredObject>>;
    /// Creates an empty regular file at `path` (exclusive) and opens it for reading and
    /// writing.
    fn create(
        &self,
        path: &Path,
        perm: u32,
        owner: Option<Owner>,
    ) -> io::Result<Box<dyn StoredObject>>;
    /// Writes a whole new object at `path` from what `fill` writes, creating missing parent
    /// directories: visible only once complete and durable, never replacing an existing
    /// entry (`EEXIST`), and nothing left under `path` if `fill` or the store fails.
    fn put_new(
        &self,
        path: &Path,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()>;
}

#[cfg(test)]
mod tests;
