//! Service state on disk, for every service crate: private modes (data directories 0700, state
//! files 0600, tightened on start when they are looser) and one exclusive lock per data
//! directory, so two processes never run on the same state.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file inside each data directory; it holds the holder's pid.
pub const LOCK_FILE: &str = ".lock";

/// Mode of every data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every state file (databases, keys, caches).
pub const FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error(
        "data directory {} is in use by process {holder} (it holds {}); stop that process or use another data directory",
        dir.display(), lock.display()
    )]
    Locked {
        dir: PathBuf,
        lock: PathBuf,
        /// The holder's pid as written in the lock file (`unknown` if it has not written yet).
        holder: String,
    },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StateDirError + '_ {
    move |source| StateDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` (and missing parents) 0700, and tightens an existing looser mode (with a
/// warning: only a directory made by something else can be looser).
pub fn private_dir(dir: &Path) -> Result<(), StateDirError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_at(dir))?;
    tighten(dir, DIR_MODE)
}

/// Makes an existing state file 0600 (a missing one is left missing).
pub fn private_file(path: &Path) -> Result<(), StateDirError> {
    csap_base::files::tighten_secret(path).map_err(io_at(path))
}

/// Prepares a SQLite database path: creates the file 0600 if missing (SQLite gives its `-wal`
/// and `-shm` files the database file's mode, so they follow) and tightens all three.
pub fn private_sqlite(path: &Path) -> Result<(), StateDirError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_at(path))?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        private_file(Path::new(&p))?;
    }
    Ok(())
}

/// Sets `path` to `mode` if it is looser, logging it (`csap-base`'s rule for state paths).
fn tighten(path: &Path, mode: u32) -> Result<(), StateDirError> {
    csap_base::files::tighten(path, mode).map_err(io_at(path))
}

/// An exclusive `flock` on `DIR/.lock`, held until dropped (or the process dies: the kernel
/// releases it, so a crash never leaves a stale lock).
#[derive(Debug)]
pub struct DirLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl DirLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Makes `dir` a private data directory and takes its lock, or names the process holding it.
pub fn lock(dir: &Path) -> Result<DirLock, StateDirError> {
    private_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(io_at(&path))?;
    tighten(&path, FILE_MODE)?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(f) => f,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "unknown".to_string(),
                pid => pid.to_string(),
            };
            return Err(StateDirError::Locked {
                dir: dir.to_owned(),
                lock: path,
                holder,
            });
        }
        Err((_, errno)) => return Err(io_at(&path)(io::Error::from(errno))),
    };
    let write_pid = |f: &mut File| -> io::Result<()> {
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        f.flush()
    };
    write_pid(&mut file).map_err(io_at(&path))?;
    Ok(DirLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn second_lock_on_a_dir_is_refused_naming_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("in use by process {}", std::process::id())),
            "{msg}"
        );
        assert_eq!(mode(held.path()), 0o600);
        drop(held);
        lock(dir.path()).expect("free again once the holder is gone");
    }

    #[test]
    fn loose_dirs_and_files_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = data.join("x.sqlite");
        std::fs::write(&db, b"").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let wal = data.join("x.sqlite-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o666)).unwrap();
        private_dir(&data).unwrap();
        private_sqlite(&db).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&wal), 0o600);
        let fresh = data.join("new.sqlite");
        private_sqlite(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
    }
}
