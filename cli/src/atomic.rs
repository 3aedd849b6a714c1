//! Writing a file whole or not at all: through a temporary file in the same directory, fsynced,
//! renamed into place, the directory fsynced. On any error the temporary file is removed and
//! the destination is untouched. Used wherever a partial output would be wrong (a decrypt that
//! fails authentication). Imports write through the storage seam instead
//! (`csapfs::storage::Storage::put_new`).

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result};

/// What to do when the destination already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (an explicit output path).
    Replace,
}

/// Writes `dest` through `.<name><tmp_mark><pid>` beside it; `write` fills the buffered file.
pub fn write_atomically<T>(
    dest: &Path,
    tmp_mark: &str,
    existing: Existing,
    write: impl FnOnce(&mut BufWriter<&File>) -> Result<T>,
) -> Result<T> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest.file_name().context("the destination names no file")?;
    let tmp = dir.join(format!(
        ".{}{tmp_mark}{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A leftover of this very pid can only be from an earlier, failed attempt of this run.
    let _ = std::fs::remove_file(&tmp);
    let file =
        File::create_new(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = (|| {
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        let value = write(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let flags = match existing {
            Existing::Replace => nix::fcntl::RenameFlags::empty(),
        };
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &tmp,
            nix::fcntl::AT_FDCWD,
            dest,
            flags,
        )
        .with_context(|| format!("cannot rename into {}", dest.display()))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync directory {}", dir.display()))?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
