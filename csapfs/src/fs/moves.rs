//! The assets a directory rename moves: each one's registered path must follow it (FORMAT.md
//! §7: an asset opened anywhere but its registered path is refused).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::asset::{read_header, AssetError};
use crate::format::Header;

/// Every asset below `dir` (depth first, symlinks not followed), with its path relative to
/// `dir`. Files that are not assets are not registered anywhere and are left out.
pub(super) fn assets_under(dir: &Path) -> std::io::Result<Vec<(PathBuf, Header)>> {
    let mut found = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(sub) = dirs.pop() {
        for entry in fs::read_dir(dir.join(&sub))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let rel = sub.join(entry.file_name());
            if kind.is_dir() {
                dirs.push(rel);
            } else if kind.is_file() {
                let header = File::open(entry.path())
                    .map_err(AssetError::from)
                    .and_then(|f| read_header(&f));
                if let Ok(header) = header {
                    found.push((rel, header));
                }
            }
        }
    }
    Ok(found)
}
