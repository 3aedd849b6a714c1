//! The embedded backend: a directory on a local (or network) filesystem, one backing file per
//! asset under the same relative path, special files stored as themselves.
//!
//! Every call is relative to a directory handle (`openat`, `mkdirat`, `unlinkat`,
//! `renameat2`, `statx`, `fchownat`, `fchmodat`, `utimensat`, `readlinkat`, `symlinkat`,
//! `linkat`, `mknodat`), from [`DirCache`]: path depth is limited only as on the backing
//! filesystem, never by `PATH_MAX` of the whole path. Nothing follows a symlink inside the
//! backing directory (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `RESOLVE_NO_SYMLINKS`), and nothing
//! on another filesystem mounted inside it is shown (`RESOLVE_NO_XDEV`, device checks): the
//! daemon may run as root, and a symlink planted in the backing store must not let it change
//! a file elsewhere.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, StatVfs, Statx, StatxFlags,
    StatxTimestamp, Timestamps, XattrFlags,
};
use rustix::io::Errno;

use super::dircache::DirCache;
use super::{
    Attr, AttrChange, DirItem, FsStats, Kind, OpenMode, Owner, Replace, SetTime, Special, Storage,
    StoredBytes, StoredObject,
};

/// The backing extended attribute that holds an asset's sealed user attributes.
const SEALED_XATTRS: &str = "user.csap.xattrs";
/// Largest extended attribute value Linux stores (`XATTR_SIZE_MAX`).
const XATTR_SIZE_MAX: usize = 64 * 1024;
/// Marks the temporary file of a [`Storage::put_new`]: `.NAME.csap-import-PID` beside `NAME`
/// (the name `csap import` has always used, so leftovers of older versions are cleaned too).
const PARTIAL_MARK: &str = ".csap-import-";
/// Longest relative path handed to one `openat2` (`PATH_MAX` with its terminating NUL).
const MAX_PATH_PIECE: usize = 4095;

/// A backing directory.
pub struct LocalDir {
    /// `O_PATH` handle of the backing root; every path is resolved beneath it.
    root: Arc<OwnedFd>,
    /// For logs and the mount's `fsname` only: never used to reach a file.
    display: PathBuf,
    dev: u64,
    /// Only root can give new entries to their creators.
    as_root: bool,
    dirs: DirCache,
    /// `openat2` is refused here (an old kernel or a seccomp filter): walk one component at a
    /// time instead.
    pub(super) no_openat2: AtomicBool,
    /// Directories whose stale partial objects were already removed by this process.
    swept: Mutex<HashSet<PathBuf>>,
}

impl std::fmt::Debug for LocalDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDir")
            .field("path", &self.display)
            .finish_non_exhaustive()
    }
}

impl LocalDir {
    /// Opens the backing directory `path`.
    pub fn open(path: &Path) -> io::Result<LocalDir> {
        let root = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = statx_at(root.as_fd(), "", AtFlags::EMPTY_PATH)?;
        Ok(LocalDir {
            root: Arc::new(root),
            display: path.to_path_buf(),
            dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            as_root: rustix::process::geteuid().is_root(),
            dirs: DirCache::default(),
            no_openat2: AtomicBool::new(false),
            swept: Mutex::new(HashSet::new()),
        })
    }

    /// The handle of directory `dir` (`""`: the root).
    fn dir(&self, dir: &Path) -> io::Result<Arc<OwnedFd>> {
        check_relative(dir)?;
        if dir.as_os_str().is_empty() {
            return Ok(self.root.clone());
        }
        let now = Instant::now();
        let (start, covered) = self
            .dirs
            .closest(dir, now)
            .unwrap_or_else(|| (self.root.clone(), 0));
        let depth = dir.components().count();
        if covered == depth {
            return Ok(start);
        }
        let rest: Vec<&OsStr> = dir.iter().skip(covered).collect();
        let fd = Arc::new(self.walk(start.as_fd(), &rest)?);
        self.dirs.insert(dir, fd.clone(), now);
        Ok(fd)
    }

    /// The handle of the directory holding `path`, and `path`'s last component.
    fn parent<'p>(&self, path: &'p Path) -> io::Result<(Arc<OwnedFd>, &'p OsStr)> {
        check_relative(path)?;
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::from(Errno::INVAL))?;
        let dir = self.dir(path.parent().unwrap_or(Path::new("")))?;
        Ok((dir, name))
    }

    /// Opens the directory `components` below `at`, in pieces that each fit one `openat2`.
    fn walk(&self, at: BorrowedFd<'_>, components: &[&OsStr]) -> io::Result<OwnedFd> {
        let mut current: Option<OwnedFd> = None;
        let mut piece: Vec<u8> = Vec::new();
        for (i, component) in components.iter().enumerate() {
            if !piece.is_empty() {
                piece.push(b'/');
            }
            piece.extend_from_slice(component.as_bytes());
            let next_fits = components
                .get(i + 1)
                .is_some_and(|next| piece.len() + 1 + next.len() <= MAX_PATH_PIECE);
            if !next_fits {
                let from = current.as_ref().map_or(at, |fd| fd.as_fd());
                current = Some(self.open_dir_beneath(from, &piece)?);
                piece.clear();
            }
        }
        current.ok_or_else(|| io::Error::from(Errno::INVAL))
    }

    fn open_dir_beneath(&self, at: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if !self.no_openat2.load(Ordering::Relaxed) {
            let resolve = ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV;
            match rustix::fs::openat2(at, rel, flags, Mode::empty(), resolve) {
                // Another filesystem mounted inside the backing store: hidden, as in `stat`.
                Err(Errno::XDEV) => return Err(io::Error::from(Errno::NOENT)),
                Err(Errno::NOSYS) => {
                    tracing::debug!(
                        "openat2 refused; resolving backing paths one component at a time"
                    );
                    self.no_openat2.store(true, Ordering::Relaxed);
                }
                other => return other.map_err(io::Error::from),
            }
        }
        walk_components(at, rel, flags, self.dev)
    }

    /// Metadata from `statx`, refusing entries on another filesystem (their inode numbers
    /// could collide with ours).
    fn attr_of(&self, st: &Statx) -> io::Result<Attr> {
        if rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor) != self.dev {
            return Err(io::Error::from(Errno::NOENT));
        }
        Ok(attr_from_statx(st))
    }

    /// Gives a new entry to its creator and sets its permissions, in that order: changing the
    /// owner clears set-id bits. `fd` is the entry itself, opened for I/O.
    fn settle_new_fd(
        &self,
        fd: BorrowedFd<'_>,
        parent: BorrowedFd<'_>,
        perm: u32,
        owner: Option<Owner>,
    ) -> io::Result<()> {
        if let Some((uid, gid)) = self.ownership(parent, owner)? {
            rustix::fs::fchown(fd, Some(uid), gid)?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(perm & 0o7777))?;
        Ok(())
    }

    /// [`Self::settle_new_fd`] for entries that cannot be opened for I/O (FIFOs, sockets,
    /// devices, symlinks), by name and without following a symlink.
    fn settle_new_name(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        perm: Option<u32>,
        owner: Option<Owner>,
    ) -> io::Result<()> {
        if let Some((uid, gid)) = self.ownership(parent, owner)? {
            rustix::fs::chownat(parent, name, Some(uid), gid, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        if let Some(perm) = perm {
            chmod_nofollow(parent, name, perm)?;
        }
        Ok(())
    }

    /// The owner to give a new entry in `parent`: its creator, with the directory's group if
    /// the directory is set-group-ID (`None` for the group: keep what the kernel gave it).
    /// Nothing unless the daemon runs as root (only root can give files away).
    fn ownership(
        &self,
        parent: BorrowedFd<'_>,
        owner: Option<Owner>,
    ) -> io::Result<Option<(rustix::fs::Uid, Option<rustix::fs::Gid>)>> {
        let Some(owner) = owner.filter(|_| self.as_root) else {
            return Ok(None);
        };
        let dir = statx_at(parent, "", AtFlags::EMPTY_PATH)?;
        let inherits_group = u32::from(dir.stx_mode) & 0o2000 != 0;
        let gid = (!inherits_group).then(|| rustix::fs::Gid::from_raw(owner.gid));
        Ok(Some((rustix::fs::Uid::from_raw(owner.uid), gid)))
    }

    /// A directory opened for reading (listing, fsync): by name in its parent, the root by
    /// its handle.
    fn open_dir_for_io(&self, dir: &Path) -> io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if dir.as_os_str().is_empty() {
            return Ok(rustix::fs::openat(&*self.root, ".", flags, Mode::empty())?);
        }
        let (parent, name) = self.parent(dir)?;
        Ok(rustix::fs::openat(&*parent, name, flags, Mode::empty())?)
    }

    /// The parent directory of `path`, made (with its missing ancestors) if needed.
    fn parent_made<'p>(&self, path: &'p Path) -> io::Result<(Arc<OwnedFd>, &'p OsStr, PathBuf)> {
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut made = PathBuf::new();
        for component in dir.iter() {
            made.push(component);
            match self.parent(&made) {
                Ok((at, name)) => match rustix::fs::mkdirat(&*at, name, Mode::from_raw_mode(0o777))
                {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(err) => return Err(io::Error::from(err)),
                },
                Err(err) => return Err(err),
            }
        }
        let (parent, name) = self.parent(path)?;
        Ok((parent, name, dir))
    }

    /// Removes the partial objects that interrupted puts (whose process is gone) left in `dir`,
    /// once per directory and process.
    fn sweep_partials(&self, dir: &Path, at: BorrowedFd<'_>) {
        if !self
            .swept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.to_path_buf())
        {
            return;
        }
        let Ok(fd) = self.open_dir_for_io(dir) else {
            return;
        };
        let Ok(mut entries) = rustix::fs::Dir::new(fd) else {
            return;
        };
        while let Some(Ok(entry)) = entries.read() {
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            let Some(pid) = partial_owner(name) else {
                continue;
            };
            let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
            if alive {
                continue;
            }
            match rustix::fs::unlinkat(at, name, AtFlags::empty()) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), file = ?name, "removed the partial file of an interrupted import")
                }
                Err(err) => {
                    tracing::warn!(dir = %dir.display(), file = ?name, %err, "cannot remove a stale partial file")
                }
            }
        }
    }
}

impl Storage for LocalDir {
    fn describe(&self) -> String {
        self.display.display().to_string()
    }

    fn stat(&self, path: &Path) -> io::Result<Attr> {
        let st = if path.as_os_str().is_empty() {
            statx_at(self.root.as_fd(), "", AtFlags::EMPTY_PATH)?
        } else {
            let (dir, name) = self.parent(path)?;
            statx_at(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)?
        };
        self.attr_of(&st)
    }

    fn set_attr(&self, path: &Path, change: &AttrChange) -> io::Result<()> {
        let times = (change.atime.is_some() || change.mtime.is_some()).then(|| Timestamps {
            last_access: timespec(change.atime),
            last_modification: timespec(change.mtime),
        });
        let owner = (change.uid.is_some() || change.gid.is_some()).then(|| {
            (
                change.uid.map(rustix::fs::Uid::from_raw),
                change.gid.map(rustix::fs::Gid::from_raw),
            )
        });
        if path.as_os_str().is_empty() {
            let root = self.open_dir_for_io(path)?;
            if let Some((uid, gid)) = owner {
                rustix::fs::fchown(&root, uid, gid)?;
            }
            if let Some(perm) = change.perm {
                rustix::fs::fchmod(&root, Mode::from_raw_mode(perm & 0o7777))?;
            }
            if let Some(times) = &times {
                rustix::fs::futimens(&root, times)?;
            }
            return Ok(());
        }
        let (dir, name) = self.parent(path)?;
        if let Some((uid, gid)) = owner {
            rustix::fs::chownat(&*dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        if let Some(perm) = change.perm {
            chmod_nofollow(dir.as_fd(), name, perm)?;
        }
        if let Some(times) = &times {
            rustix::fs::utimensat(&*dir, name, times, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        Ok(())
    }

    fn statfs(&self) -> io::Result<FsStats> {
        let st: StatVfs = rustix::fs::fstatvfs(&*self.root)?;
        Ok(FsStats {
            blocks: st.f_blocks,
            blocks_free: st.f_bfree,
            blocks_available: st.f_bavail,
            files: st.f_files,
            files_free: st.f_ffree,
            block_size: u32::try_from(st.f_bsize).unwrap_or(u32::MAX),
            name_max: u32::try_from(st.f_namemax).unwrap_or(255),
            fragment_size: u32::try_from(st.f_frsize).unwrap_or(u32::MAX),
        })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<DirItem>> {
        let mut entries = rustix::fs::Dir::new(self.open_dir_for_io(dir)?)?;
        let mut items = Vec::new();
        while let Some(entry) = entries.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name);
            let kind = match kind_of(entry.file_type()) {
                Some(kind) => kind,
                // The filesystem does not say in its listing: ask the entry.
                None => match statx_at(entries.fd()?, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => attr_from_statx(&st).kind,
                    Err(_) => continue, // gone since the listing was read
                },
            };
            items.push(DirItem {
                name: name.to_os_string(),
                ino: entry.ino(),
                kind,
            });
        }
        Ok(items)
    }

    fn make_dir(&self, path: &Path, perm: u32, owner: Option<Owner>) -> io::Result<()> {
        let (parent, name) = self.parent(path)?;
        // Private until it has its owner and permissions.
        rustix::fs::mkdirat(&*parent, name, Mode::from_raw_mode(0o700))?;
        let settled = rustix::fs::openat(
            &*parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
        .and_then(|fd| self.settle_new_fd(fd.as_fd(), parent.as_fd(), perm, owner));
        if let Err(err) = settled {
            let _ = rustix::fs::unlinkat(&*parent, name, AtFlags::REMOVEDIR);
            return Err(err);
        }
        Ok(())
    }

    fn make_special(
        &self,
        path: &Path,
        node: Special,
        perm: u32,
        owner: Option<Owner>,
    ) -> io::Result<()> {
        let (parent, name) = self.parent(path)?;
        let (kind, dev) = match node {
            Special::Fifo => (FileType::Fifo, 0),
            Special::Socket => (FileType::Socket, 0),
            Special::CharDevice { major, minor } => {
                (FileType::CharacterDevice, rustix::fs::makedev(major, minor))
            }
            Special::BlockDevice { major, minor } => {
                (FileType::BlockDevice, rustix::fs::makedev(major, minor))
            }
        };
        rustix::fs::mknodat(&*parent, name, kind, Mode::from_raw_mode(0o600), dev)?;
        if let Err(err) = self.settle_new_name(parent.as_fd(), name, Some(perm), owner) {
            let _ = rustix::fs::unlinkat(&*parent, name, AtFlags::empty());
            return Err(err);
        }
        Ok(())
    }

    fn make_symlink(&self, path: &Path, target: &Path, owner: Option<Owner>) -> io::Result<()> {
        let (parent, name) = self.parent(path)?;
        rustix::fs::symlinkat(target, &*parent, name)?;
        // A symlink's own permissions mean nothing on Linux.
        if let Err(err) = self.settle_new_name(parent.as_fd(), name, None, owner) {
            let _ = rustix::fs::unlinkat(&*parent, name, AtFlags::empty());
            return Err(err);
        }
        Ok(())
    }

    fn hard_link(&self, existing: &Path, new: &Path) -> io::Result<()> {
        let (from_dir, from_name) = self.parent(existing)?;
        let (to_dir, to_name) = self.parent(new)?;
        rustix::fs::linkat(&*from_dir, from_name, &*to_dir, to_name, AtFlags::empty())?;
        Ok(())
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        let (dir, name) = self.parent(path)?;
        let target = rustix::fs::readlinkat(&*dir, name, Vec::new())?;
        Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::unlinkat(&*dir, name, AtFlags::empty())?;
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::unlinkat(&*dir, name, AtFlags::REMOVEDIR)?;
        self.dirs.forget_tree(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path, replace: Replace) -> io::Result<()> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        let flags = match replace {
            Replace::Allowed => RenameFlags::empty(),
            Replace::Never => RenameFlags::NOREPLACE,
        };
        rustix::fs::renameat_with(&*from_dir, from_name, &*to_dir, to_name, flags)?;
        // Handles below `from` now reach `to`'s tree; a replaced directory's are gone.
        self.dirs.forget_tree(from);
        self.dirs.forget_tree(to);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        rustix::fs::fsync(self.open_dir_for_io(dir)?)?;
        Ok(())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StoredObject>> {
        let (dir, name) = self.parent(path)?;
        let access = match mode {
            OpenMode::Read => OFlags::RDONLY,
            OpenMode::ReadWrite => OFlags::RDWR,
        };
        // NONBLOCK and NOCTTY: whatever has taken the name since, opening it must not hang on
        // a FIFO or adopt a terminal; it is refused below unless it is a regular file.
        let flags = access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let file = File::from(rustix::fs::openat(&*dir, name, flags, Mode::empty())?);
        let st = statx_at(file.as_fd(), "", AtFlags::EMPTY_PATH)?;
        match self.attr_of(&st)?.kind {
            Kind::File => Ok(Box::new(LocalObject { file })),
            Kind::Dir => Err(io::Error::from(Errno::ISDIR)),
            _ => Err(io::Error::from(Errno::INVAL)),
        }
    }

    fn create(
        &self,
        path: &Path,
        perm: u32,
        owner: Option<Owner>,
    ) -> io::Result<Box<dyn StoredObject>> {
        let (dir, name) = self.parent(path)?;
        let flags =
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = File::from(rustix::fs::openat(
            &*dir,
            name,
            flags,
            Mode::from_raw_mode(0o600),
        )?);
        if let Err(err) = self.settle_new_fd(file.as_fd(), dir.as_fd(), perm, owner) {
            let _ = rustix::fs::unlinkat(&*dir, name, AtFlags::empty());
            return Err(err);
        }
        Ok(Box::new(LocalObject { file }))
    }

    fn put_new(
        &self,
        path: &Path,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let (dir, name, dir_path) = self.parent_made(path)?;
        self.sweep_partials(&dir_path, dir.as_fd());
        let mut partial = OsString::from(".");
        partial.push(name);
        partial.push(format!("{PARTIAL_MARK}{}", std::process::id()));
        // A partial of this very pid can only be an earlier, failed attempt of this run.
        let _ = rustix::fs::unlinkat(&*dir, &*partial, AtFlags::empty());
        let flags =
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = File::from(rustix::fs::openat(
            &*dir,
            &*partial,
            flags,
            Mode::from_raw_mode(0o666),
        )?);
        let written = (|| {
            let mut out = BufWriter::with_capacity(1 << 20, &file);
            fill(&mut out)?;
            out.into_inner().map_err(io::IntoInnerError::into_error)?;
            file.sync_all()?;
            rustix::fs::renameat_with(&*dir, &*partial, &*dir, name, RenameFlags::NOREPLACE)?;
            rustix::fs::fsync(self.open_dir_for_io(&dir_path)?)?;
            Ok(())
        })();
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&*dir, &*partial, AtFlags::empty());
        }
        written
    }
}

/// An asset's backing file.
struct LocalObject {
    file: File,
}

impl StoredBytes for LocalObject {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        StoredBytes::read_at(&self.file, buf, offset)
    }

    fn read_vectored_at(&self, bufs: &mut [io::IoSliceMut<'_>], offset: u64) -> io::Result<usize> {
        StoredBytes::read_vectored_at(&self.file, bufs, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        StoredBytes::write_all_at(&self.file, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        StoredBytes::size(&self.file)
    }

    fn set_size(&self, size: u64) -> io::Result<()> {
        StoredBytes::set_size(&self.file, size)
    }

    fn sync_data(&self) -> io::Result<()> {
        StoredBytes::sync_data(&self.file)
    }
}

impl StoredObject for LocalObject {
    fn attr(&self) -> io::Result<Attr> {
        Ok(attr_from_statx(&statx_at(
            self.file.as_fd(),
            "",
            AtFlags::EMPTY_PATH,
        )?))
    }

    fn sealed_xattrs(&self) -> io::Result<Option<Vec<u8>>> {
        let mut value = vec![0u8; XATTR_SIZE_MAX];
        match rustix::fs::fgetxattr(&self.file, SEALED_XATTRS, &mut value[..]) {
            Ok(len) => {
                value.truncate(len);
                Ok(Some(value))
            }
            Err(Errno::NODATA) => Ok(None),
            Err(err) => Err(io::Error::from(err)),
        }
    }

    fn set_sealed_xattrs(&self, sealed: Option<&[u8]>) -> io::Result<()> {
        match sealed {
            Some(value) => {
                rustix::fs::fsetxattr(&self.file, SEALED_XATTRS, value, XattrFlags::empty())?
            }
            None => match rustix::fs::fremovexattr(&self.file, SEALED_XATTRS) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(err) => return Err(io::Error::from(err)),
            },
        }
        Ok(())
    }
}

/// Paths handed to a backend are relative and made of names only (see the trait's contract).
fn check_relative(path: &Path) -> io::Result<()> {
    if path.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(())
    } else {
        Err(io::Error::from(Errno::INVAL))
    }
}

fn statx_at<P: rustix::path::Arg>(
    at: BorrowedFd<'_>,
    path: P,
    flags: AtFlags,
) -> io::Result<Statx> {
    Ok(rustix::fs::statx(at, path, flags, StatxFlags::BASIC_STATS)?)
}

/// `fchmodat(…, AT_SYMLINK_NOFOLLOW)`: the C library refuses a symlink (`EOPNOTSUPP`) and
/// changes anything else through its own handle, so a name swapped for a symlink in between
/// cannot redirect the change.
fn chmod_nofollow(dir: BorrowedFd<'_>, name: &OsStr, perm: u32) -> io::Result<()> {
    nix::sys::stat::fchmodat(
        dir,
        name,
        nix::sys::stat::Mode::from_bits_truncate(perm & 0o7777),
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// The fallback of `openat2`: one `openat` per component, none a symlink, none on another
/// filesystem.
fn walk_components(at: BorrowedFd<'_>, rel: &[u8], flags: OFlags, dev: u64) -> io::Result<OwnedFd> {
    let mut current: Option<OwnedFd> = None;
    for component in rel.split(|&b| b == b'/') {
        let from = current.as_ref().map_or(at, |fd| fd.as_fd());
        let fd = rustix::fs::openat(from, OsStr::from_bytes(component), flags, Mode::empty())?;
        let st = statx_at(fd.as_fd(), "", AtFlags::EMPTY_PATH)?;
        if rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor) != dev {
            return Err(io::Error::from(Errno::NOENT));
        }
        current = Some(fd);
    }
    current.ok_or_else(|| io::Error::from(Errno::INVAL))
}

/// The pid in a partial object's name `.NAME.csap-import-PID`.
fn partial_owner(name: &OsStr) -> Option<u32> {
    let name = name.to_str()?;
    let (_, pid) = name.strip_prefix('.')?.rsplit_once(PARTIAL_MARK)?;
    pid.parse().ok()
}

fn kind_of(file_type: FileType) -> Option<Kind> {
    Some(match file_type {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
        FileType::CharacterDevice => Kind::CharDevice,
        FileType::BlockDevice => Kind::BlockDevice,
        _ => return None,
    })
}

fn attr_from_statx(st: &Statx) -> Attr {
    let mode = u32::from(st.stx_mode);
    Attr {
        ino: st.stx_ino,
        // A type the kernel does not name cannot be opened as an asset; show it as a file.
        kind: kind_of(FileType::from_raw_mode(mode)).unwrap_or(Kind::File),
        perm: mode & 0o7777,
        nlink: st.stx_nlink,
        uid: st.stx_uid,
        gid: st.stx_gid,
        rdev: rustix::fs::makedev(st.stx_rdev_major, st.stx_rdev_minor),
        size: st.stx_size,
        blocks: st.stx_blocks,
        blksize: st.stx_blksize,
        atime: system_time(&st.stx_atime),
        mtime: system_time(&st.stx_mtime),
        ctime: system_time(&st.stx_ctime),
    }
}

fn system_time(ts: &StatxTimestamp) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(ts.tv_nsec.min(999_999_999)));
    match u64::try_from(ts.tv_sec) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs) + nanos,
        Err(_) => UNIX_EPOCH - Duration::from_secs(ts.tv_sec.unsigned_abs()) + nanos,
    }
}

fn timespec(time: Option<SetTime>) -> rustix::fs::Timespec {
    match time {
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(SetTime::Now) => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(SetTime::At(at)) => {
            let (secs, nanos) = match at.duration_since(UNIX_EPOCH) {
                Ok(after) => (after.as_secs() as i64, after.subsec_nanos()),
                Err(before) => {
                    // Before the epoch: whole seconds down, nanoseconds up, as `timespec` is.
                    let before = before.duration();
                    let secs = -(before.as_secs() as i64);
                    match before.subsec_nanos() {
                        0 => (secs, 0),
                        n => (secs - 1, 1_000_000_000 - n),
                    }
                }
            };
            rustix::fs::Timespec {
                tv_sec: secs,
                tv_nsec: nanos.into(),
            }
        }
    }
}
