//! Where a background `csap mount --daemon` keeps its log and its pid file, and the pid file
//! itself.
//!
//! Both are named after the mountpoint, so two mounts on one host never share a file:
//! `/mnt/show` → `mount-mnt-show`. As root the log goes to `/var/log/csap/` and the pid file to
//! `/run/csap/`; for anyone else to `$XDG_STATE_HOME/csap/` (default `~/.local/state/csap/`)
//! and `$XDG_RUNTIME_DIR/csap/` (the state directory when that is unset).

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::atomic::{write_atomically, Existing};

/// `mount-<mountpoint with '/' as '-'>`, from the canonical mountpoint.
pub fn instance_name(mountpoint: &Path) -> String {
    let joined = mountpoint
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("-");
    if joined.is_empty() {
        "mount-root".into()
    } else {
        format!("mount-{joined}")
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `$XDG_STATE_HOME/csap`, else `~/.local/state/csap`.
fn user_state_dir() -> Result<PathBuf> {
    env_dir("XDG_STATE_HOME")
        .or_else(|| env_dir("HOME").map(|home| home.join(".local/state")))
        .map(|dir| dir.join("csap"))
        .context("neither XDG_STATE_HOME nor HOME is set: give --log-file and --pid-file")
}

/// The log file a daemon appends to when `--log-file` is not given.
pub fn default_log_file(mountpoint: &Path) -> Result<PathBuf> {
    let dir = if is_root() {
        PathBuf::from("/var/log/csap")
    } else {
        user_state_dir()?
    };
    Ok(dir.join(format!("{}.log", instance_name(mountpoint))))
}

/// The pid file a daemon writes when `--pid-file` is not given.
pub fn default_pid_file(mountpoint: &Path) -> Result<PathBuf> {
    let dir = if is_root() {
        PathBuf::from("/run/csap")
    } else {
        match env_dir("XDG_RUNTIME_DIR") {
            Some(runtime) => runtime.join("csap"),
            None => user_state_dir()?,
        }
    };
    Ok(dir.join(format!("{}.pid", instance_name(mountpoint))))
}

/// Creates the directory a log or pid file goes into (0700: logs name users and paths).
pub fn create_parent(file: &Path) -> Result<()> {
    let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// This process's pid in a file for as long as it serves the mount; removed when dropped, so a
/// pid file that exists names a running mount (or one that was killed).
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    pub fn create(path: &Path) -> Result<PidFile> {
        create_parent(path)?;
        // Whole or not at all: a reader never sees an empty or half-written pid.
        write_atomically(path, ".pid-", Existing::Replace, |out| {
            writeln!(out, "{}", std::process::id())?;
            Ok(())
        })
        .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_follow_the_mountpoint() {
        assert_eq!(instance_name(Path::new("/mnt/show")), "mount-mnt-show");
        assert_eq!(instance_name(Path::new("/")), "mount-root");
    }

    #[test]
    fn a_pid_file_holds_this_pid_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/csap/mount-x.pid");
        let pid_file = PidFile::create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(pid_file);
        assert!(!path.exists());
    }
}
