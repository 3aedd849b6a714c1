//! The mountpoint's side of a mount's lifecycle: refusing a directory that is already a mount
//! point or is not empty, and the claim the serving process holds on it until it exits.
//!
//! The claim is an exclusive `flock` on the mountpoint directory itself, opened before the
//! mount covers it. The kernel drops it when the serving process exits (however it exits), so
//! `csap umount` can wait for it to learn that the old server has flushed and gone, and a new
//! mount on the same path waits for it instead of racing the old server's teardown. No pid
//! files, nothing to clean up after a crash.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::MountError;

/// How often a waiter looks at the claim again.
const POLL: Duration = Duration::from_millis(20);

/// Held by the process serving a mount for as long as it runs; dropping it releases the path.
#[derive(Debug)]
pub struct MountpointClaim {
    _lock: Flock<File>,
}

impl MountpointClaim {
    /// A second descriptor of the claim's open file: the lock is held while any of them is
    /// open, so whoever keeps one extends the claim.
    pub(super) fn share(&self) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self._lock.as_fd().try_clone_to_owned()
    }

    /// Claims `mountpoint` (canonical, a directory): refuses it if something is mounted there,
    /// and waits up to `wait` for a previous server that is still shutting down.
    pub(super) fn take(mountpoint: &Path, wait: Duration) -> Result<MountpointClaim, MountError> {
        let deadline = Instant::now() + wait;
        loop {
            if mounted_fs_type(mountpoint)
                .map_err(|source| mountpoint_error(mountpoint, source))?
                .is_some()
            {
                return Err(MountError::AlreadyMounted {
                    path: mountpoint.to_path_buf(),
                });
            }
            let dir = File::open(mountpoint).map_err(|e| mountpoint_error(mountpoint, e))?;
            match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    // Mounted between the check and the lock by a server that then let go?
                    // Look once more while holding it.
                    if mounted_fs_type(mountpoint)
                        .map_err(|source| mountpoint_error(mountpoint, source))?
                        .is_some()
                    {
                        return Err(MountError::AlreadyMounted {
                            path: mountpoint.to_path_buf(),
                        });
                    }
                    return Ok(MountpointClaim { _lock: lock });
                }
                Err((_, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    std::thread::sleep(POLL)
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(MountError::Claimed {
                        path: mountpoint.to_path_buf(),
                        waited: wait,
                    })
                }
                Err((_, errno)) => {
                    return Err(mountpoint_error(mountpoint, io::Error::from(errno)))
                }
            }
        }
    }
}

/// Waits until no process holds the claim on `mountpoint` (after it was unmounted: the server
/// has finished flushing and exited). `Ok(false)` if it still holds it after `timeout`.
pub fn wait_until_released(mountpoint: &Path, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let dir = File::open(mountpoint)?;
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            // Released at once when dropped: only the answer matters.
            Ok(_) => return Ok(true),
            Err((_, Errno::EWOULDBLOCK)) if Instant::now() < deadline => std::thread::sleep(POLL),
            Err((_, Errno::EWOULDBLOCK)) => return Ok(false),
            Err((_, errno)) => return Err(errno.into()),
        }
    }
}

/// Refuses a mountpoint with entries unless the caller asked for `-o nonempty`: files there
/// would be hidden while mounted, which is rarely what was meant.
pub(super) fn check_empty(mountpoint: &Path, allow_nonempty: bool) -> Result<(), MountError> {
    if allow_nonempty {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(mountpoint).map_err(|e| mountpoint_error(mountpoint, e))?;
    if entries.next().is_some() {
        return Err(MountError::NotEmpty {
            path: mountpoint.to_path_buf(),
        });
    }
    Ok(())
}

/// The file system type mounted exactly on `path` (canonical), from `/proc/self/mountinfo`;
/// the top one (listed last) if several are stacked there.
pub fn mounted_fs_type(path: &Path) -> io::Result<Option<String>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let wanted = path.to_string_lossy();
    Ok(table.lines().rev().find_map(|line| {
        // "id parent major:minor root mountpoint options [optional…] - fstype source …"
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        let mountpoint = unescape_mountinfo(fields.get(4)?);
        (mountpoint == wanted).then(|| fields.get(sep + 1).map(|t| t.to_string()))?
    }))
}

/// The file system type of a csap mount made through `fusermount3` (unprivileged), which
/// records the subtype the mount sets. A privileged mount calls mount(2) itself and shows as
/// plain `fuse`: the kernel keeps no subtype then.
pub const CSAP_FS_TYPE: &str = "fuse.csapfs";

/// One FUSE mount of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuseMount {
    pub mountpoint: PathBuf,
    /// `fuse`, `fuse.csapfs`, `fuse.sshfs`, …
    pub fs_type: String,
    /// The backing store's name for a csap mount (its `fsname`).
    pub source: String,
}

/// Every FUSE mount in this mount namespace, in mount order (a csap mount is `fuse.csapfs`,
/// or plain `fuse` when mounted as root: tell those apart by what else is known of them).
pub fn fuse_mounts() -> io::Result<Vec<FuseMount>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let fs_type = *fields.get(sep + 1)?;
            (fs_type == "fuse" || fs_type.starts_with("fuse.")).then(|| FuseMount {
                mountpoint: PathBuf::from(unescape_mountinfo(fields.get(4).copied().unwrap_or(""))),
                fs_type: fs_type.to_string(),
                source: unescape_mountinfo(fields.get(sep + 2).copied().unwrap_or("")),
            })
        })
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mountpoint_error(path: &Path, source: io::Error) -> MountError {
    MountError::Mountpoint {
        path: PathBuf::from(path),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/mnt/plain"), "/mnt/plain");
        assert_eq!(unescape_mountinfo(r"/x\\"), r"/x\\");
    }

    #[test]
    fn the_root_is_a_mount_point_and_a_fresh_directory_is_not() {
        assert!(mounted_fs_type(Path::new("/")).unwrap().is_some());
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        assert_eq!(mounted_fs_type(&dir).unwrap(), None);
    }

    #[test]
    fn a_claim_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        let claim = MountpointClaim::take(&dir, Duration::ZERO).unwrap();
        assert!(matches!(
            MountpointClaim::take(&dir, Duration::ZERO),
            Err(MountError::Claimed { .. })
        ));
        assert!(!wait_until_released(&dir, Duration::ZERO).unwrap());
        drop(claim);
        assert!(wait_until_released(&dir, Duration::ZERO).unwrap());
    }
}
