//! Checks of `csap mount`'s arguments whose failure has a known fix, made before anything
//! starts (a daemon, a key server connection), so the error can say what to do.

use std::path::Path;

use anyhow::{bail, Result};

/// A mount needs exactly one key source; clap's own message would name only one of them.
pub fn key_source(key_file: Option<&Path>, server: Option<&str>) -> Result<()> {
    if key_file.is_none() && server.is_none() {
        bail!(
            "no key source: give either `--key-file K` (a local development seed) or \
             `--server URL` (licenses from the key server, with --identity DIR)"
        );
    }
    Ok(())
}

/// The backing directory and the mountpoint must exist and be directories.
pub fn directories(backing: &Path, mountpoint: &Path) -> Result<()> {
    for (what, path) in [("backing directory", backing), ("mountpoint", mountpoint)] {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => bail!("{what} {} is not a directory", path.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
                "{what} {} does not exist; create it with `mkdir -p {}`",
                path.display(),
                path.display()
            ),
            Err(err) => bail!("{what} {}: {err}", path.display()),
        }
    }
    Ok(())
}
