//! The encrypting FUSE mount (the data-plane PEP): mount options, mounting, unmounting.
//!
//! The storage (a `BACKING` directory by default, [`crate::storage`]) holds encrypted assets
//! (one asset per plaintext file, same names — names are not encrypted, a deliberate choice:
//! asset management must see them); the mountpoint shows plaintext. [`state`] is the mount's
//! state and the map of the operation families, [`callbacks`] the FUSE entry points,
//! [`inodes`] the inode-number table, [`invalidate`] ends cached and mapped plaintext pages
//! when a handle's lease ends.
//!
//! Speed by design (see `DESIGN.md` and docs/guide.md's mount section):
//! - several FUSE event loops, each with its own cloned `/dev/fuse` fd (fuser
//!   `Config::n_threads` + `Config::clone_fd`);
//! - 1 MiB requests (`KernelConfig::set_max_write`, which also sets `max_pages` = 256, the
//!   kernel's cap) and a readahead window raised through the mount's BDI in sysfs;
//! - no per-read allocation (thread-local buffers); the stored bytes stay open per inode.
//!
//! Page-cache behaviour is a deliberate choice, see [`CacheMode`].

#![forbid(unsafe_code)]

mod asset_lock;
mod attributes;
mod callbacks;
mod directories;
mod files;
mod handles;
mod inodes;
mod invalidate;
mod mountpoint;
mod moves;
mod special;
mod state;
mod versioning;
mod xattrs;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::keys::KeySource;
use crate::storage::{LocalDir, Storage};

pub use mountpoint::{
    fuse_mounts, mounted_fs_type, wait_until_released, FuseMount, MountpointClaim, CSAP_FS_TYPE,
};
pub use state::CsapFs;

/// How long a new mount waits for the previous server of its mountpoint to finish exiting.
const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// How plaintext may live in the kernel page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// `FOPEN_DIRECT_IO`: reads never put plaintext in the page cache, so every read reaches
    /// the enforcement point (a revoked license takes effect on the next `read`). `mmap` still
    /// works where the kernel offers `FUSE_DIRECT_IO_ALLOW_MMAP` (Linux ≥ 6.6); mapped pages
    /// do live in the page cache and are invalidated when the lease ends ([`invalidate`]).
    Direct,
    /// Normal page cache, but without `FOPEN_KEEP_CACHE`: cached pages are dropped at every
    /// open and whenever a handle's lease ends ([`invalidate`]); attribute and entry TTLs are
    /// short.
    Page,
}

impl CacheMode {
    /// The default of `csap mount` — one line to change after measuring both (bench/).
    pub const DEFAULT: CacheMode = CacheMode::Direct;
}

/// Options of one mount (config struct, not bool parameters).
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub cache: CacheMode,
    /// `-o ro`: the kernel refuses writes and backing files are opened read-only.
    pub read_only: bool,
    /// `-o allow_other`: other users may use the mount (kernel permission checks stay on).
    pub allow_other: bool,
    /// FUSE event loops (threads reading `/dev/fuse`).
    pub threads: usize,
    /// Readahead window in KiB written to the mount's BDI (`/sys/class/bdi/0:N/read_ahead_kb`);
    /// 0 leaves the kernel default. Needs root; failures are logged and ignored.
    pub readahead_kb: u32,
    /// `-o nonempty`: mount over a directory that has entries (they are hidden meanwhile).
    pub allow_nonempty: bool,
    /// Other `-o` options passed to the kernel as they are.
    pub extra: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            cache: CacheMode::DEFAULT,
            read_only: false,
            allow_other: false,
            threads: default_threads(),
            readahead_kb: 4096,
            allow_nonempty: false,
            extra: Vec::new(),
        }
    }
}

/// Several event loops: with one loop, several readers of a mount collapse to about 1.3 GB/s
/// because every request waits for the one thread that reads `/dev/fuse`.
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 2).clamp(4, 16)
}

/// Why a mount could not be made or unmade.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("backing directory {path}: {source}")]
    Backing { path: PathBuf, source: io::Error },
    #[error("mountpoint {path}: {source}")]
    Mountpoint { path: PathBuf, source: io::Error },
    #[error("{path} is already a mount point; unmount it first (`csap umount {path}`) or choose another directory")]
    AlreadyMounted { path: PathBuf },
    #[error("{path} is not empty; mount on an empty directory, or give `-o nonempty` to hide its entries while mounted")]
    NotEmpty { path: PathBuf },
    #[error("{path} is still held by another csap mount after {waited:?} (one that is starting or shutting down); try again once it has exited")]
    Claimed { path: PathBuf, waited: Duration },
    #[error("mounting on {path} failed (is /dev/fuse usable and fuse3 installed?): {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("unmounting {path} failed: {source}")]
    Unmount { path: PathBuf, source: io::Error },
    #[error("the FUSE session of {path} ended with an error: {source}")]
    Session { path: PathBuf, source: io::Error },
}

/// A live mount served by background threads. Dropping it unmounts.
#[derive(Debug)]
pub struct MountedFs {
    session: fuser::BackgroundSession,
    mountpoint: PathBuf,
    /// Released after the session has ended and flushed (fields drop in order).
    _claim: MountpointClaim,
}

/// Mounts `backing` on `mountpoint` and serves it from background threads until
/// [`MountedFs::unmount`] (or an external `umount`). Returns once the kernel handshake is done,
/// so the mount is usable immediately.
pub fn mount(
    backing: &Path,
    mountpoint: &Path,
    keys: Arc<dyn KeySource>,
    options: &MountOptions,
) -> Result<MountedFs, MountError> {
    mount_storage(open_backing(backing)?, mountpoint, keys, options)
}

/// The backing directory `backing` as the mount's [`Storage`] (shared with the key source,
/// which lists it for pre-loading and sibling batches).
pub fn open_backing(backing: &Path) -> Result<Arc<dyn Storage>, MountError> {
    let backing_error = |source| MountError::Backing {
        path: backing.to_path_buf(),
        source,
    };
    let canonical = backing.canonicalize().map_err(backing_error)?;
    let storage = LocalDir::open(&canonical).map_err(backing_error)?;
    Ok(Arc::new(storage))
}

/// [`mount`] over any [`Storage`].
pub fn mount_storage(
    storage: Arc<dyn Storage>,
    mountpoint: &Path,
    keys: Arc<dyn KeySource>,
    options: &MountOptions,
) -> Result<MountedFs, MountError> {
    let mountpoint_meta =
        std::fs::metadata(mountpoint).map_err(|source| MountError::Mountpoint {
            path: mountpoint.to_path_buf(),
            source,
        })?;
    if !mountpoint_meta.is_dir() {
        return Err(MountError::Mountpoint {
            path: mountpoint.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let mountpoint = &mountpoint
        .canonicalize()
        .map_err(|source| MountError::Mountpoint {
            path: mountpoint.to_path_buf(),
            source,
        })?;
    // Stacking a second mount on a live one hides it, and stopping either ends both.
    let claim = MountpointClaim::take(mountpoint, CLAIM_WAIT)?;
    mountpoint::check_empty(mountpoint, options.allow_nonempty)?;
    let source_name = storage.describe();
    let fs = CsapFs::new(storage, keys.clone(), options).map_err(|source| MountError::Backing {
        path: PathBuf::from(&source_name),
        source,
    })?;

    let leases = fs.leases();

    use fuser::MountOption as O;
    let mut mount_options: Vec<O> = options.extra.iter().map(|o| kernel_option(o)).collect();
    let given = |pred: fn(&O) -> bool, opts: &[O]| opts.iter().any(pred);
    // Defaults unless the caller said otherwise; the kernel checks mode bits itself (with
    // allow_other that is what keeps users apart).
    let mut defaults = vec![O::DefaultPermissions];
    if !given(|o| matches!(o, O::FSName(_)), &mount_options) {
        defaults.push(O::FSName(source_name));
    }
    if !given(|o| matches!(o, O::Subtype(_)), &mount_options) {
        defaults.push(O::Subtype("csapfs".to_string()));
    }
    if !given(|o| matches!(o, O::Dev), &mount_options) {
        defaults.push(O::NoDev);
    }
    if !given(|o| matches!(o, O::Suid), &mount_options) {
        defaults.push(O::NoSuid);
    }
    mount_options.retain(|o| !matches!(o, O::RO | O::RW | O::DefaultPermissions));
    defaults.push(if options.read_only { O::RO } else { O::RW });
    mount_options.extend(defaults);
    let mut config = fuser::Config::default();
    config.mount_options = mount_options;
    config.acl = if options.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;

    let session =
        fuser::spawn_mount(fs, mountpoint, &config).map_err(|source| MountError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        })?;
    // In both modes: mapped pages (and, with `--cache page`, read pages) never reach the
    // handle's lease check, so they are dropped when a lease ends.
    invalidate::start(leases, session.notifier(), keys.as_ref());
    let mounted = MountedFs {
        session,
        mountpoint: mountpoint.to_path_buf(),
        _claim: claim,
    };
    if options.readahead_kb > 0 {
        set_readahead(mountpoint, options.readahead_kb);
    }
    Ok(mounted)
}

/// The checks [`mount`] makes of `mountpoint` before it mounts: nothing mounted there, and empty
/// unless `options.allow_nonempty`. For a launcher that wants the sentence before it starts a
/// background server; [`mount`] checks again itself.
pub fn check_mountpoint(mountpoint: &Path, options: &MountOptions) -> Result<(), MountError> {
    let canonical = mountpoint
        .canonicalize()
        .map_err(|source| MountError::Mountpoint {
            path: mountpoint.to_path_buf(),
            source,
        })?;
    if mounted_fs_type(&canonical)
        .map_err(|source| MountError::Mountpoint {
            path: canonical.clone(),
            source,
        })?
        .is_some()
    {
        return Err(MountError::AlreadyMounted { path: canonical });
    }
    mountpoint::check_empty(&canonical, options.allow_nonempty)
}

/// Maps a `-o` word to fuser's option: generic flags (`noatime`, `noexec`, …) are mount flags,
/// not FUSE data options, and the kernel rejects them as `CUSTOM` text.
fn kernel_option(option: &str) -> fuser::MountOption {
    use fuser::MountOption as O;
    match option {
        "default_permissions" => O::DefaultPermissions,
        "auto_unmount" => O::AutoUnmount,
        "dev" => O::Dev,
        "nodev" => O::NoDev,
        "suid" => O::Suid,
        "nosuid" => O::NoSuid,
        "ro" => O::RO,
        "rw" => O::RW,
        "exec" => O::Exec,
        "noexec" => O::NoExec,
        "atime" => O::Atime,
        "noatime" => O::NoAtime,
        "dirsync" => O::DirSync,
        "sync" => O::Sync,
        "async" => O::Async,
        other => match other.split_once('=') {
            Some(("fsname", name)) => O::FSName(name.to_string()),
            Some(("subtype", name)) => O::Subtype(name.to_string()),
            _ => O::CUSTOM(other.to_string()),
        },
    }
}

/// The kernel offers FUSE at most its default readahead (128 KiB) at INIT; a larger window is
/// set on the mount's backing device info, which exists only once mounted.
fn set_readahead(mountpoint: &Path, readahead_kb: u32) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(mountpoint) {
        Ok(meta) => meta.dev(),
        Err(err) => {
            tracing::debug!(%err, "cannot stat the new mount to set its readahead");
            return;
        }
    };
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&knob, readahead_kb.to_string()) {
        Ok(()) => tracing::debug!(%knob, readahead_kb, "readahead window set"),
        Err(err) => tracing::debug!(%knob, %err, "readahead window left at the kernel default"),
    }
}

impl MountedFs {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Holds the claim on the mountpoint until this process exits, past the end of the mount:
    /// `csap umount` (which waits for the claim, [`wait_until_released`]) then returns only
    /// once the serving process is gone, not while it is still tearing down.
    pub fn hold_claim_until_exit(&self) -> io::Result<()> {
        use std::os::fd::IntoRawFd;
        // Never closed by us: the kernel closes it, releasing the lock, as the process exits.
        let _ = self._claim.share()?.into_raw_fd();
        Ok(())
    }

    /// True once the session has ended (for example after an external `umount`).
    pub fn is_finished(&self) -> bool {
        self.session.guard.is_finished()
    }

    /// Unmounts, waits for the event loops to stop and flushes every open asset.
    pub fn unmount(self) -> Result<(), MountError> {
        let MountedFs {
            session,
            mountpoint,
            _claim,
        } = self;
        session
            .umount_and_join()
            .map_err(|source| MountError::Unmount {
                path: mountpoint,
                source,
            })
    }

    /// Waits until the mount goes away by other means (`umount`, `csap umount`).
    pub fn join(self) -> Result<(), MountError> {
        let MountedFs {
            session,
            mountpoint,
            _claim,
        } = self;
        session.join().map_err(|source| MountError::Session {
            path: mountpoint,
            source,
        })
    }
}
