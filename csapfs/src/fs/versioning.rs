//! A new write generation for each open of an asset that changes it (FORMAT.md §7): the first
//! write, truncate or growth through an open asset asks the key source to move it to its next
//! generation (reserve at the key server, header, settle) before any chunk changes; later
//! changes through the same open asset stay in that generation.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::asset::{Asset, AssetError};
use crate::keys::{Caller, KeyError, KeySource};
use crate::storage::StoredBytes;

/// Moves `asset` to a new generation unless this open of it already did (`versioned`). The
/// caller holds the asset exclusively, so two writers cannot both advance it.
pub(super) fn before_change<F: StoredBytes>(
    keys: &dyn KeySource,
    caller: &Caller,
    path: &str,
    asset: &mut Asset<F>,
    versioned: &AtomicBool,
) -> Result<(), KeyError> {
    if versioned.load(Ordering::Acquire) {
        return Ok(());
    }
    let header = *asset.header();
    keys.new_version(caller, path, &header, &mut |generation| {
        asset.set_generation(generation).map_err(|err| match err {
            AssetError::Io(err) => err,
            other => io::Error::other(other.to_string()),
        })
    })?;
    versioned.store(true, Ordering::Release);
    Ok(())
}
