//! The application digest: lowercase hex BLAKE3 of an executable's bytes. Attestation measures
//! it of a process's main image and mapped libraries; `csap app register`, the quickstart, the
//! import and the benchmarks register it. One function for both sides, so they cannot drift.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The digest of everything readable from `file` (opened once: its identity and its bytes come
/// from the same open, so a rename race cannot pair one file's identity with another's digest).
pub fn app_digest(mut file: File) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// The digest of the executable at `path` (symbolic links followed, as `exec` does).
pub fn app_digest_at(path: &Path) -> io::Result<String> {
    app_digest(File::open(path)?)
}

/// The identity of an executable file as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ExeKey {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl ExeKey {
    pub(super) fn of(meta: &std::fs::Metadata) -> ExeKey {
        ExeKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}
