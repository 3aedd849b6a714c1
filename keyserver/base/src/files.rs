//! Files that hold secrets (keys, tokens, caches naming users and paths), written one way:
//! through a new temporary file beside the target, created 0600 (never looser, not even for an
//! instant), written, fsynced, renamed over the target, and the directory fsynced. A crash
//! leaves the old file or the new one, never a torn or empty one, and a reader never sees a
//! partly written key.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of every secret file.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of every private directory.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of files that are not secret but written the same way (certificates, public keys).
pub const PUBLIC_MODE: u32 = 0o644;

/// What to do when the target already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    Replace,
    Refuse,
}

/// Writes `data` to `path` as a secret file (mode 0600), replacing any file there.
pub fn write_secret(path: &Path, data: &[u8]) -> io::Result<()> {
    write_whole(path, data, SECRET_MODE, Existing::Replace)
}

/// Writes `data` to a new secret file at `path`; fails with `AlreadyExists` (leaving the file
/// alone) if there is one: for keys that must never be replaced once made.
pub fn create_secret(path: &Path, data: &[u8]) -> io::Result<()> {
    write_whole(path, data, SECRET_MODE, Existing::Refuse)
}

/// Writes `data` to `path` like a secret file, but readable by everyone (0644): certificates
/// and public keys that must be whole as much as a key must.
pub fn write_public(path: &Path, data: &[u8]) -> io::Result<()> {
    write_whole(path, data, PUBLIC_MODE, Existing::Replace)
}

fn write_whole(path: &Path, data: &[u8], mode: u32, existing: Existing) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = temp_path(dir, &name.to_string_lossy());
    write_through(&tmp, path, dir, data, mode, existing)
}

/// Writes `data` into the new file `tmp`, then puts it in place at `path` (in `dir`).
fn write_through(
    tmp: &Path,
    path: &Path,
    dir: &Path,
    data: &[u8],
    mode: u32,
    existing: Existing,
) -> io::Result<()> {
    // create_new: a file (or symlink) already at the temporary name is never written through.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    let placed = (|| {
        // open() applies the umask, which can only take bits away; set the exact mode so the
        // owner can always read the file back.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(data)?;
        file.sync_all()?;
        match existing {
            Existing::Replace => std::fs::rename(tmp, path)?,
            // link(2) fails if the target exists, so no second writer's key is ever replaced.
            Existing::Refuse => {
                std::fs::hard_link(tmp, path)?;
                std::fs::remove_file(tmp)?;
            }
        }
        File::open(dir)?.sync_all()
    })();
    if placed.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    placed
}

/// A temporary name beside the target, distinct per process and per call, so concurrent
/// writers of one target never share a temporary file.
fn temp_path(dir: &Path, name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Creates `dir` (and missing parents) and sets it to 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
}

/// Makes an existing secret file 0600 if it is looser (a missing one is left missing).
pub fn tighten_secret(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => tighten(path, SECRET_MODE),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sets `path` to `mode` if its permission bits allow anyone but the owner more than `mode`
/// does; says so in the log, because a loose mode on a state file is worth an admin's look.
pub fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        // chmod would follow it to a file we do not own the meaning of.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is a symbolic link",
        ));
    }
    let current = meta.permissions().mode() & 0o7777;
    if current & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        tracing::warn!(
            path = %path.display(),
            from = format!("{current:04o}"),
            to = format!("{mode:04o}"),
            "tightened the mode of a state path"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }

    #[test]
    fn a_secret_replaces_the_old_file_whole_and_is_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"old contents, world-readable").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        // A new inode: the old, looser file was replaced, not truncated and reused.
        assert_eq!(mode(&path), 0o600);
        assert!(leftovers(dir.path()).is_empty());
        write_public(&dir.path().join("cert"), b"c").unwrap();
        assert_eq!(mode(&dir.path().join("cert")), 0o644);
    }

    /// The old writers opened the target itself with truncate: a reader (or a crash) in between
    /// saw an empty key, and a file that existed looser kept its mode. Here the target is only
    /// ever the old file or the complete new one.
    #[test]
    fn a_failed_write_leaves_the_old_secret_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_secret(&path, b"old").unwrap();
        // A directory at the target: the rename fails after the data was written.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"").unwrap();
        assert!(write_secret(&blocked, b"new").is_err());
        assert!(
            leftovers(dir.path()).is_empty(),
            "the temporary file is removed"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn create_secret_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issuer.key");
        create_secret(&path, b"first").unwrap();
        let err = create_secret(&path, b"second").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(mode(&path), 0o600);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn a_symlink_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"untouched").unwrap();
        let tmp = dir.path().join(".key.tmp-planted");
        std::os::unix::fs::symlink(&elsewhere, &tmp).unwrap();
        let path = dir.path().join("key");
        let err = write_through(
            &tmp,
            &path,
            dir.path(),
            b"k",
            SECRET_MODE,
            Existing::Replace,
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"untouched");
        assert!(!path.exists());
    }

    #[test]
    fn tightening_fixes_loose_files_and_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        tighten_secret(&path).unwrap(); // missing: left missing
        assert!(!path.exists());
        std::fs::write(&path, b"{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        tighten_secret(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(tighten_secret(&link).is_err());
        create_private_dir(&dir.path().join("d/e")).unwrap();
        assert_eq!(mode(&dir.path().join("d/e")), 0o700);
    }
}
