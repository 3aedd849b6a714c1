//! The assets a directory rename moves: each one's registered path must follow it (FORMAT.md
//! §7: an asset opened anywhere but its registered path is refused).

use std::path::{Path, PathBuf};

use crate::asset::{read_header, AssetError};
use crate::format::Header;
use crate::storage::{Kind, OpenMode, Storage};

/// Every asset below `dir` (depth first, symlinks not followed), with its path relative to
/// `dir`. Files that are not assets are not registered anywhere and are left out.
pub(super) fn assets_under(
    storage: &dyn Storage,
    dir: &Path,
) -> std::io::Result<Vec<(PathBuf, Header)>> {
    let mut found = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(sub) = dirs.pop() {
        for item in storage.list(&dir.join(&sub))? {
            let rel = sub.join(&item.name);
            match item.kind {
                Kind::Dir => dirs.push(rel),
                Kind::File => {
                    let header = storage
                        .open(&dir.join(&rel), OpenMode::Read)
                        .map_err(AssetError::from)
                        .and_then(|object| read_header(&object));
                    if let Ok(header) = header {
                        found.push((rel, header));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(found)
}
