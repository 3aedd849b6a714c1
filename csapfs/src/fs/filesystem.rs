//! The FUSE callbacks: one state struct ([`CsapFs`]); helpers return `Result<T, Errno>`; each
//! callback validates, calls its helper and replies.
//!
//! Locking: the inode table, the open-inode map and the handle maps are each behind a short
//! mutex (held for map lookups only, never across I/O or key fetches). File data is behind one
//! `RwLock<Asset>` per open inode, shared by all handles of that inode: reads take it shared,
//! writes and truncates exclusive, so writers to different files never wait on each other.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::asset_lock::AssetLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, warn};

use super::inodes::{InodeTable, ROOT};
use super::{CacheMode, MountOptions};
use crate::asset::{plain_size_of, read_header, Asset, AssetError};
use crate::format::Layout;
use crate::keys::{Access, Caller, KeyError, KeySource, Lease};

/// Entry and attribute TTL. Short, so a change made outside the mount (or a revocation that
/// invalidates attributes) is seen within a second, yet `stat` storms are still absorbed.
const TTL: Duration = Duration::from_secs(1);
/// Largest request: 1 MiB, i.e. the kernel's cap of 256 pages per FUSE request.
const MAX_REQUEST: u32 = 1 << 20;

thread_local! {
    /// Plaintext for read replies, reused per event-loop thread: no allocation per read.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One open backing file, shared by every handle of its inode.
struct OpenInode {
    asset: AssetLock,
    writable: bool,
    /// This open of the asset moved it to a new write generation already (or created it).
    versioned: AtomicBool,
}

struct OpenEntry {
    inode: Arc<OpenInode>,
    handles: usize,
}

struct Handle {
    ino: u64,
    inode: Arc<OpenInode>,
    writable: bool,
    /// The license this handle was opened under; checked (one atomic load) on every read
    /// and write, so a revocation reaches handles that are already open.
    lease: Lease,
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

/// One directory entry of an `opendir` snapshot (offsets index this list).
struct DirEntry {
    name: std::ffi::OsString,
    ino: u64,
    kind: FileType,
}

/// The mount's state.
pub struct CsapFs {
    backing: PathBuf,
    backing_dev: u64,
    keys: Arc<dyn KeySource>,
    cache: CacheMode,
    read_only: bool,
    inodes: Mutex<InodeTable>,
    open: Mutex<HashMap<u64, OpenEntry>>,
    /// Seen by the page invalidator (see [`CsapFs::leases`]).
    handles: Arc<RwLock<HashMap<u64, Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    /// Inodes whose backing file is not a valid asset, already reported in the log.
    reported_invalid: Mutex<HashSet<u64>>,
    running_as_root: bool,
}

impl std::fmt::Debug for CsapFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsapFs")
            .field("backing", &self.backing)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// Recovers the data from a poisoned lock: a panicking callback must not take the mount down.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn io_errno(err: io::Error) -> Errno {
    Errno::from(err)
}

fn nix_errno(err: nix::Error) -> Errno {
    Errno::from_i32(err as i32)
}

fn file_type(ft: fs::FileType) -> FileType {
    FileType::from_std(ft).unwrap_or(FileType::RegularFile)
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = nsecs.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsecs)
    }
}

/// `FileAttr` of a backing entry, with `size` already translated to plaintext.
fn make_attr(ino: u64, meta: &fs::Metadata, size: u64) -> FileAttr {
    let kind = file_type(meta.file_type());
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: meta.blocks(),
        atime: system_time(meta.atime(), meta.atime_nsec()),
        mtime: system_time(meta.mtime(), meta.mtime_nsec()),
        ctime: system_time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: meta.blksize() as u32,
        flags: 0,
    }
}

impl CsapFs {
    pub(super) fn new(
        backing: &Path,
        keys: Arc<dyn KeySource>,
        options: &MountOptions,
    ) -> io::Result<CsapFs> {
        let meta = fs::metadata(backing)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(CsapFs {
            backing: backing.to_path_buf(),
            backing_dev: meta.dev(),
            keys,
            cache: options.cache,
            read_only: options.read_only,
            inodes: Mutex::new(InodeTable::new(meta.ino())),
            open: Mutex::new(HashMap::new()),
            handles: Arc::new(RwLock::new(HashMap::new())),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            reported_invalid: Mutex::new(HashSet::new()),
            running_as_root: nix::unistd::geteuid().is_root(),
        })
    }

    // ---- paths and attributes ------------------------------------------------------------

    fn rel_path(&self, ino: u64) -> Result<PathBuf, Errno> {
        lock(&self.inodes).path(ino).ok_or(Errno::ENOENT)
    }

    fn child_rel(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.as_bytes().contains(&b'/') || name == "." || name == ".." {
            return Err(Errno::EINVAL);
        }
        Ok(self.rel_path(parent)?.join(name))
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    /// The path handed to the key source: volume-relative, `/`-separated, no leading slash
    /// (`show/f0001.exr`), the form rules and the key server's asset registry use.
    fn asset_path(rel: &Path) -> String {
        rel.display().to_string()
    }

    fn caller(req: &Request) -> Caller {
        Caller {
            uid: req.uid(),
            gid: req.gid(),
            pid: req.pid(),
        }
    }

    fn open_inode(&self, ino: u64) -> Option<Arc<OpenInode>> {
        lock(&self.open).get(&ino).map(|entry| entry.inode.clone())
    }

    fn handle(&self, fh: FileHandle) -> Result<(u64, Arc<OpenInode>, bool), Errno> {
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
    fn live_handle(&self, fh: FileHandle) -> Result<(u64, Arc<OpenInode>, bool), Errno> {
        let handles = self.handles.read().unwrap_or_else(|p| p.into_inner());
        let h = handles.get(&fh.0).ok_or(Errno::EBADF)?;
        if h.lease.is_revoked() {
            debug!(ino = h.ino, "I/O refused: the handle's license was revoked");
            return Err(Errno::EACCES);
        }
        Ok((h.ino, h.inode.clone(), h.writable))
    }

    /// Asks the key source whether the caller may do `access` on `rel` (local rules).
    fn authorize(&self, req: &Request, rel: &Path, access: Access) -> Result<(), Errno> {
        self.keys
            .authorize(&Self::caller(req), &Self::asset_path(rel), access)
            .map_err(|err| self.key_errno(rel, &err))
    }

    /// Plaintext size of a regular backing file from its stored length and the chunk size in
    /// its header (read once per inode, then cached). A file that is not an asset shows size 0:
    /// its size would say something about ciphertext, and it cannot be opened anyway.
    fn plain_size(&self, ino: u64, full: &Path, stored_len: u64) -> u64 {
        // An open asset a panicked write refused: its stored length says the size, as closed.
        if let Some(Ok(size)) = self
            .open_inode(ino)
            .map(|open| open.asset.read().map(|a| a.plain_size()))
        {
            return size;
        }
        // Bound first: a guard in the `match` scrutinee would live through the arms.
        let cached = lock(&self.inodes).chunk_size(ino);
        let chunk_size = match cached {
            Some(size) => size,
            None => {
                let header = File::open(full)
                    .map_err(AssetError::from)
                    .and_then(|file| read_header(&file));
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

    /// Attributes of a backing entry found by path (regular files show their plaintext size).
    fn attr_from_meta(&self, ino: u64, full: &Path, meta: &fs::Metadata) -> FileAttr {
        let size = if meta.is_file() {
            self.plain_size(ino, full, meta.len())
        } else {
            meta.len()
        };
        make_attr(ino, meta, size)
    }

    /// Attributes of `ino`: from its open backing file if it has one (also works after unlink),
    /// else from its path.
    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        if let Some(open) = self.open_inode(ino) {
            // One shared lock, released before anything else: taking it again further down
            // (a recursive read) could deadlock behind a waiting writer.
            let (meta, size) = {
                let asset = open.asset.read()?;
                (
                    asset.file().metadata().map_err(io_errno)?,
                    asset.plain_size(),
                )
            };
            return Ok(make_attr(ino, &meta, size));
        }
        let full = self.full(&self.rel_path(ino)?);
        let meta = fs::symlink_metadata(&full).map_err(io_errno)?;
        Ok(self.attr_from_meta(ino, &full, &meta))
    }

    /// Stats `rel`, records it in the inode table (one kernel reference when `count_lookup`)
    /// and returns its attributes.
    fn entry(&self, rel: &Path, count_lookup: bool) -> Result<FileAttr, Errno> {
        let full = self.full(rel);
        let meta = fs::symlink_metadata(&full).map_err(io_errno)?;
        if meta.dev() != self.backing_dev {
            // Another filesystem mounted inside BACKING: its inode numbers would collide.
            debug!(path = %full.display(), "hiding an entry on another filesystem");
            return Err(Errno::ENOENT);
        }
        let ino = {
            let mut inodes = lock(&self.inodes);
            let ino = inodes.fuse_ino(meta.ino());
            inodes.remember(ino, rel, count_lookup);
            ino
        };
        Ok(self.attr_from_meta(ino, &full, &meta))
    }

    /// New entries belong to the caller, as on a local filesystem (the daemon runs as root when
    /// it serves several users with `allow_other`).
    fn give_to_caller(&self, full: &Path, req: &Request) -> Result<(), Errno> {
        if self.running_as_root {
            std::os::unix::fs::lchown(full, Some(req.uid()), Some(req.gid())).map_err(io_errno)?;
        }
        Ok(())
    }

    // ---- assets ----------------------------------------------------------------------------

    fn report_invalid(&self, ino: u64, rel: &Path, err: &AssetError) {
        if lock(&self.reported_invalid).insert(ino) {
            warn!(path = %Self::asset_path(rel), ino, error = %err,
                "backing file is not a valid asset; opening it fails with EIO");
        }
    }

    fn key_errno(&self, rel: &Path, err: &KeyError) -> Errno {
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

    /// Opens the backing file of `ino` as an asset: header, key, header MAC.
    fn open_asset(
        &self,
        req: &Request,
        ino: u64,
        access: Access,
    ) -> Result<(OpenInode, Lease), Errno> {
        let rel = self.rel_path(ino)?;
        let full = self.full(&rel);
        let (file, writable) = if self.read_only {
            (File::open(&full).map_err(io_errno)?, false)
        } else {
            match OpenOptions::new().read(true).write(true).open(&full) {
                Ok(file) => (file, true),
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc_consts::EACCES | libc_consts::EROFS | libc_consts::EPERM)
                    ) =>
                {
                    (File::open(&full).map_err(io_errno)?, false)
                }
                Err(err) => return Err(io_errno(err)),
            }
        };
        if !file.metadata().map_err(io_errno)?.is_file() {
            return Err(Errno::EISDIR);
        }
        let header = read_header(&file).map_err(|err| {
            self.report_invalid(ino, &rel, &err);
            Errno::EIO
        })?;
        let licensed = self
            .keys
            .open_key(&Self::caller(req), &Self::asset_path(&rel), &header, access)
            .map_err(|err| self.key_errno(&rel, &err))?;
        let asset = Asset::open_recovering(file, &licensed.key).map_err(|err| {
            self.report_invalid(ino, &rel, &err);
            Errno::EIO
        })?;
        // The header authenticated: is this the asset registered here, at its generation?
        self.keys
            .check_binding(&Self::caller(req), &Self::asset_path(&rel), asset.header())
            .map_err(|err| self.key_errno(&rel, &err))?;
        if let Some(node) = lock(&self.inodes).node_mut(ino) {
            node.chunk_size = Some(asset.header().chunk_size);
        }
        Ok((
            OpenInode {
                asset: AssetLock::new(asset),
                writable,
                versioned: AtomicBool::new(false),
            },
            licensed.lease,
        ))
    }

    /// Authorizes one more open of an inode that is already open: the same key, but a
    /// decision (and a lease) for this caller.
    fn license_open_inode(
        &self,
        req: &Request,
        ino: u64,
        inode: &OpenInode,
        access: Access,
    ) -> Result<Lease, Errno> {
        let rel = self.rel_path(ino)?;
        let header = *inode.asset.read()?.header();
        let lease = self
            .keys
            .open_key(&Self::caller(req), &Self::asset_path(&rel), &header, access)
            .map(|licensed| licensed.lease)
            .map_err(|err| self.key_errno(&rel, &err))?;
        // The open asset's header authenticated when it was opened; the path may have changed.
        self.keys
            .check_binding(&Self::caller(req), &Self::asset_path(&rel), &header)
            .map_err(|err| self.key_errno(&rel, &err))?;
        Ok(lease)
    }

    /// Registers a handle on `ino`, sharing the inode's open asset if it has one. The asset is
    /// opened outside the map lock (a key fetch may take a network round trip); if two opens
    /// race, the first to insert wins and the other's asset is dropped.
    fn add_handle(
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

    fn drop_handle_ref(&self, ino: u64) {
        let mut open = lock(&self.open);
        if let Some(entry) = open.get_mut(&ino) {
            entry.handles -= 1;
            if entry.handles == 0 {
                open.remove(&ino);
            }
        }
    }

    fn do_open(&self, req: &Request, ino: u64, flags: OpenFlags) -> Result<u64, Errno> {
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
            Some(inode) => (None, self.license_open_inode(req, ino, &inode, access)?),
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

    fn fopen_flags(&self) -> FopenFlags {
        match self.cache {
            CacheMode::Direct => FopenFlags::FOPEN_DIRECT_IO,
            // No FOPEN_KEEP_CACHE: the kernel drops this file's cached pages at each open.
            CacheMode::Page => FopenFlags::empty(),
        }
    }

    fn do_create(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        if self.read_only {
            return Err(Errno::EROFS);
        }
        let rel = self.child_rel(parent, name)?;
        // Local rules first: a denial needs no key server round trip and leaves no file.
        self.authorize(req, &rel, Access::Create)?;
        let full = self.full(&rel);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&full)
            .map_err(io_errno)?;
        let created = (|| {
            fs::set_permissions(&full, fs::Permissions::from_mode(mode & !umask & 0o7777))
                .map_err(io_errno)?;
            self.give_to_caller(&full, req)?;
            let (header, licensed) = self
                .keys
                .create_key(&Self::caller(req), &Self::asset_path(&rel))
                .map_err(|err| self.key_errno(&rel, &err))?;
            let asset = Asset::create(file, header, &licensed.key).map_err(|err| {
                warn!(path = %Self::asset_path(&rel), error = %err, "creating an asset failed");
                Errno::from_i32(err.errno())
            })?;
            Ok((asset, licensed.lease))
        })();
        let (asset, lease) = match created {
            Ok(asset) => asset,
            Err(errno) => {
                // Never leave a half-made, non-asset file behind.
                let _ = fs::remove_file(&full);
                return Err(errno);
            }
        };
        let chunk_size = asset.header().chunk_size;
        let attr = self.entry(&rel, true)?;
        let ino = attr.ino.0;
        if let Some(node) = lock(&self.inodes).node_mut(ino) {
            node.chunk_size = Some(chunk_size);
        }
        let inode = OpenInode {
            asset: AssetLock::new(asset),
            writable: true,
            // A new asset: there is no older version to tell it from.
            versioned: AtomicBool::new(true),
        };
        let writable = (flags & libc_consts::O_ACCMODE) != libc_consts::O_RDONLY;
        // A stale open entry can exist only if the backing inode number was reused while the
        // old file was still open; the new file must not share it.
        lock(&self.open).remove(&ino);
        // The creator's handle lives under the create license: it ends when that license's
        // rule is withdrawn or ends, like any other handle.
        let fh = self.add_handle(ino, Some(inode), writable, lease)?;
        Ok((attr, fh))
    }

    fn do_read(&self, fh: FileHandle, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let (_, inode, _) = self.live_handle(fh)?;
        let asset = inode.asset.read()?;
        // An authentication failure is logged once, by `Asset`, with the asset and chunk.
        asset
            .read_at(offset, buf)
            .map_err(|err| Errno::from_i32(err.errno()))
    }

    fn do_write(
        &self,
        req: &Request,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, Errno> {
        let (ino, inode, writable) = self.live_handle(fh)?;
        if !writable {
            return Err(Errno::EBADF);
        }
        let len = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        let mut asset = inode.asset.write()?;
        self.new_version(req, ino, &inode, &mut asset)?;
        asset
            .write_at(offset, data)
            .map_err(|err| Errno::from_i32(err.errno()))?;
        Ok(len)
    }

    /// Runs `f` on the inode's asset, exclusively: the shared open one if any, else a
    /// temporary one (truncate of a file nobody has open). A size change is a write, decided
    /// for this caller: by the handle it came with (`ftruncate`, `fallocate`: that handle's
    /// own write license), else by the caller's own write license — also when the inode is
    /// open through somebody else's handle, which must not lend its license to a caller that
    /// holds none.
    fn with_asset_mut<T>(
        &self,
        req: &Request,
        ino: u64,
        fh: Option<FileHandle>,
        f: impl FnOnce(&mut Asset) -> Result<T, AssetError>,
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
        let mut asset = inode.asset.write()?;
        self.new_version(req, ino, &inode, &mut asset)?;
        f(&mut asset).map_err(|err| Errno::from_i32(err.errno()))
    }

    /// Before the first change through this open asset: its next write generation.
    fn new_version(
        &self,
        req: &Request,
        ino: u64,
        inode: &OpenInode,
        asset: &mut Asset,
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

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
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
        let full = match self.rel_path(ino) {
            Ok(rel) => Some(self.full(&rel)),
            // Unlinked but open: only the size could be changed.
            Err(_) if mode.is_none() && uid.is_none() && gid.is_none() => None,
            Err(e) => return Err(e),
        };
        if let Some(full) = &full {
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(full, uid, gid).map_err(io_errno)?;
            }
            if let Some(mode) = mode {
                fs::set_permissions(full, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(io_errno)?;
            }
            if atime.is_some() || mtime.is_some() {
                let spec = |t: Option<TimeOrNow>| match t {
                    None => nix::sys::time::TimeSpec::UTIME_OMIT,
                    Some(TimeOrNow::Now) => nix::sys::time::TimeSpec::UTIME_NOW,
                    Some(TimeOrNow::SpecificTime(t)) => {
                        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                        nix::sys::time::TimeSpec::from_duration(d)
                    }
                };
                nix::sys::stat::utimensat(
                    nix::fcntl::AT_FDCWD,
                    full.as_path(),
                    &spec(atime),
                    &spec(mtime),
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                )
                .map_err(nix_errno)?;
            }
        }
        self.attr(ino)
    }

    fn do_unlink(&self, req: &Request, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let rel = self.child_rel(parent, name)?;
        let full = self.full(&rel);
        let meta = fs::symlink_metadata(&full).map_err(io_errno)?;
        if meta.is_file() {
            self.authorize(req, &rel, Access::Delete)?;
        }
        if dir {
            fs::remove_dir(&full).map_err(io_errno)?;
        } else {
            fs::remove_file(&full).map_err(io_errno)?;
        }
        let mut inodes = lock(&self.inodes);
        let ino = inodes.fuse_ino(meta.ino());
        inodes.unlinked(ino, &rel);
        Ok(())
    }

    fn do_rename(
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
        let (from_full, to_full) = (self.full(&from), self.full(&to));
        let replaced = fs::symlink_metadata(&to_full).ok();
        if fs::symlink_metadata(&from_full)
            .map_err(io_errno)?
            .is_file()
        {
            // Moving an asset removes it from one path and creates it at another.
            self.authorize(req, &from, Access::Delete)?;
            self.authorize(req, &to, Access::Create)?;
            if replaced.as_ref().is_some_and(|m| m.is_file()) {
                self.authorize(req, &to, Access::Delete)?;
            }
            // The key server's asset registry follows the file (and may refuse the move).
            if let Ok(header) = File::open(&from_full)
                .map_err(AssetError::from)
                .and_then(|f| read_header(&f))
            {
                self.keys
                    .renamed(
                        &Self::caller(req),
                        &header,
                        &Self::asset_path(&from),
                        &Self::asset_path(&to),
                    )
                    .map_err(|err| self.key_errno(&from, &err))?;
            }
        } else if fs::symlink_metadata(&from_full).map_err(io_errno)?.is_dir() {
            self.rename_assets_under(req, &from, &to)?;
        }
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                from_full.as_path(),
                nix::fcntl::AT_FDCWD,
                to_full.as_path(),
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
            .map_err(nix_errno)?;
        } else {
            fs::rename(&from_full, &to_full).map_err(io_errno)?;
        }
        let mut inodes = lock(&self.inodes);
        if let Some(meta) = replaced {
            let ino = inodes.fuse_ino(meta.ino());
            inodes.unlinked(ino, &to);
        }
        inodes.renamed(&from, &to);
        Ok(())
    }

    /// Moves the registration of every asset below directory `from` to its place below `to`
    /// (the key server decides each). If one is refused, those already moved are moved back
    /// and the rename fails: no asset is left registered where its file is not.
    fn rename_assets_under(&self, req: &Request, from: &Path, to: &Path) -> Result<(), Errno> {
        let assets = super::moves::assets_under(&self.full(from)).map_err(io_errno)?;
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

    fn do_readdir_snapshot(&self, ino: u64) -> Result<Vec<DirEntry>, Errno> {
        let rel = self.rel_path(ino)?;
        let full = self.full(&rel);
        let parent_ino = match rel.parent() {
            Some(parent) => {
                let meta = fs::metadata(self.full(parent)).map_err(io_errno)?;
                lock(&self.inodes).fuse_ino(meta.ino())
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
        let inodes_snapshot = fs::read_dir(&full).map_err(io_errno)?;
        for item in inodes_snapshot {
            let item = item.map_err(io_errno)?;
            let kind = item
                .file_type()
                .map(file_type)
                .unwrap_or(FileType::RegularFile);
            let backing_ino = std::os::unix::fs::DirEntryExt::ino(&item);
            entries.push(DirEntry {
                name: item.file_name(),
                ino: lock(&self.inodes).fuse_ino(backing_ino),
                kind,
            });
        }
        Ok(entries)
    }

    fn dir_snapshot(&self, fh: FileHandle) -> Result<Arc<Vec<DirEntry>>, Errno> {
        lock(&self.dirs).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn new_entry_reply(&self, rel: &Path) -> Result<FileAttr, Errno> {
        self.entry(rel, true)
    }

    fn do_mkdir(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Result<FileAttr, Errno> {
        let rel = self.child_rel(parent, name)?;
        let full = self.full(&rel);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&full)
            .map_err(io_errno)?;
        fs::set_permissions(&full, fs::Permissions::from_mode(mode & !umask & 0o7777))
            .map_err(io_errno)?;
        self.give_to_caller(&full, req)?;
        self.new_entry_reply(&rel)
    }

    fn do_symlink(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> Result<FileAttr, Errno> {
        let rel = self.child_rel(parent, name)?;
        let full = self.full(&rel);
        std::os::unix::fs::symlink(target, &full).map_err(io_errno)?;
        self.give_to_caller(&full, req)?;
        self.new_entry_reply(&rel)
    }

    fn do_link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<FileAttr, Errno> {
        let from = self.full(&self.rel_path(ino)?);
        let rel = self.child_rel(newparent, newname)?;
        fs::hard_link(&from, self.full(&rel)).map_err(io_errno)?;
        self.new_entry_reply(&rel)
    }

    fn do_fallocate(
        &self,
        req: &Request,
        ino: u64,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
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
            FALLOC_FL_KEEP_SIZE => Ok(()),
            // Punching or zeroing ranges would need chunk re-sealing at arbitrary boundaries.
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    fn do_statfs(&self) -> Result<nix::sys::statvfs::Statvfs, Errno> {
        nix::sys::statvfs::statvfs(self.backing.as_path()).map_err(nix_errno)
    }

    /// Flushes every open asset to stable storage (unmount and shutdown).
    fn sync_all(&self) {
        let inodes: Vec<Arc<OpenInode>> =
            lock(&self.open).values().map(|e| e.inode.clone()).collect();
        for inode in inodes {
            // A panicked write's asset is not flushed: its state is not to be trusted.
            let Ok(mut asset) = inode.asset.write() else {
                continue;
            };
            if let Err(err) = asset.sync() {
                warn!(asset = %asset.header().asset_id, error = %err, "flush at unmount failed");
            }
        }
    }
}

/// The few raw constants we compare against, from the one place that has them (`nix`
/// re-exports `libc`), kept together so the intent is visible.
mod libc_consts {
    pub(super) use nix::libc::{EACCES, EPERM, EROFS, O_ACCMODE, O_RDONLY};
}

impl Filesystem for CsapFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // 1 MiB requests; fuser derives max_pages (256, the kernel's cap) from this.
        if let Err(nearest) = config.set_max_write(MAX_REQUEST) {
            let _ = config.set_max_write(nearest);
        }
        // Take the largest readahead the kernel offers at INIT; `mount` widens it afterwards.
        if let Err(nearest) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.set_max_background(64);
        let wanted = [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_ASYNC_DIO,
        ];
        for flag in wanted {
            let _ = config.add_capabilities(flag);
        }
        match self.cache {
            CacheMode::Direct => {
                // mmap of a direct-I/O file works only with this (Linux ≥ 6.6).
                if config
                    .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
                    .is_err()
                {
                    warn!(
                        "kernel lacks FUSE_DIRECT_IO_ALLOW_MMAP: mmap fails under --cache direct"
                    );
                }
            }
            CacheMode::Page => {
                // Drop cached pages when the file's mtime or size changes (outside writers).
                let _ = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA);
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.sync_all();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self
            .child_rel(parent.0, name)
            .and_then(|rel| self.entry(&rel, true))
        {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(req, ino.0, mode, uid, gid, size, atime, mtime, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .rel_path(ino.0)
            .and_then(|rel| fs::read_link(self.full(&rel)).map_err(io_errno))
        {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.do_mkdir(req, parent.0, name, mode, umask) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(req, parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(req, parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self.do_symlink(req, parent.0, link_name, target) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_rename(req, parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.do_link(ino.0, newparent.0, newname) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(req, ino.0, flags) {
            Ok(fh) => reply.opened(FileHandle(fh), self.fopen_flags()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let size = size.min(MAX_REQUEST) as usize;
        READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < size {
                // Grows once per thread to the largest request; never shrinks.
                buf.resize(size, 0);
            }
            match self.do_read(fh, offset, &mut buf[..size]) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(e),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(req, fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes go straight to the backing file (no buffering here), so close has nothing
        // to push; durability is fsync's job, as on a local filesystem.
        match self.handle(fh) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.handle(fh).and_then(|(_, inode, _)| {
            let mut asset = inode.asset.write()?;
            asset.sync().map_err(|err| Errno::from_i32(err.errno()))
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let handle = self
            .handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        match handle {
            Some(handle) => {
                self.drop_handle_ref(handle.ino);
                reply.ok();
            }
            None => reply.error(Errno::EBADF),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_readdir_snapshot(ino.0) {
            Ok(entries) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                lock(&self.dirs).insert(fh, Arc::new(entries));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.dir_snapshot(fh) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(entry.ino), (i + 1) as u64, entry.kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.dir_snapshot(fh) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        let dir_rel = match self.rel_path(ino.0) {
            Ok(rel) => rel,
            Err(e) => return reply.error(e),
        };
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            let next = (i + 1) as u64;
            if entry.name == "." || entry.name == ".." {
                // Not counted as lookups by the kernel.
                let attr = match self.attr(entry.ino) {
                    Ok(attr) => attr,
                    Err(_) => continue,
                };
                if reply.add(
                    INodeNo(entry.ino),
                    next,
                    &entry.name,
                    &TTL,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            let rel = dir_rel.join(&entry.name);
            // Stat without counting a lookup first: if the buffer is full the entry is not
            // sent and must not be counted.
            let attr = match self.entry(&rel, false) {
                Ok(attr) => attr,
                Err(_) => continue, // vanished since opendir, or on another filesystem
            };
            if reply.add(attr.ino, next, &entry.name, &TTL, &attr, Generation(0)) {
                break;
            }
            lock(&self.inodes).remember(attr.ino.0, &rel, true);
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.rel_path(ino.0).and_then(|rel| {
            File::open(self.full(&rel))
                .and_then(|dir| dir.sync_all())
                .map_err(io_errno)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.do_statfs() {
            Ok(st) => reply.statfs(
                st.blocks(),
                st.blocks_free(),
                st.blocks_available(),
                st.files(),
                st.files_free(),
                st.block_size() as u32,
                st.name_max() as u32,
                st.fragment_size() as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(req, parent.0, name, mode, umask, flags) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                self.fopen_flags(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.do_fallocate(req, ino.0, fh, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
