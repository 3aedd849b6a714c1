//! Can real mounts run here, and is something mounted at a path.

use std::fs::OpenOptions;
use std::path::Path;

/// Why real FUSE mounts cannot run here, or `None` when /dev/fuse is usable.
pub fn unusable() -> Option<String> {
    match OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Ok(_) => None,
        Err(err) => Some(format!("/dev/fuse is not usable: {err}")),
    }
}

/// True if real mounts can run here. A test that needs them returns early on `false`; with
/// `CI=true` an unusable /dev/fuse is a failure (panic), never a skip.
pub fn fuse_usable() -> bool {
    let Some(reason) = unusable() else {
        return true;
    };
    crate::missing_part("FUSE", &reason);
    false
}

/// True if something is mounted exactly on `path`.
pub fn is_mounted(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    // mountinfo escapes spaces in paths as octal.
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

/// Lazily unmounts whatever is on `mnt` (a dead FUSE mount answers ENOTCONN until then).
pub fn detach(mnt: &Path) {
    if is_mounted(mnt) {
        let _ = nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH);
    }
}
