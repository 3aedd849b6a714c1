//! The lock of one open asset, which never hands out an asset a panic may have left half-changed.
//!
//! A thread that panics while it holds the write lock (in the middle of a write, a truncate, a
//! generation change) may leave the in-memory asset out of step with its file: its size, its
//! header flags, a batch of chunks sealed but not written. Recovering the data of the poisoned
//! lock would serve reads and writes from that state. Instead every later use through this open
//! is `EIO`; once all its handles are closed the asset is opened afresh from the file, whose
//! on-disk state crash recovery handles (FORMAT.md §6).

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use fuser::Errno;
use tracing::error;

use csap_format::asset::Asset;
use csap_format::stored::StoredBytes;

use crate::storage::StoredObject;

/// The lock of one open asset (generic over its bytes for the unit test; the mount's are a
/// storage backend's objects).
pub(super) struct AssetLock<S: StoredBytes = Box<dyn StoredObject>>(RwLock<Asset<S>>);

impl<S: StoredBytes> AssetLock<S> {
    pub(super) fn new(asset: Asset<S>) -> AssetLock<S> {
        AssetLock(RwLock::new(asset))
    }

    /// Shared access for reads and attributes; `EIO` once a writer panicked.
    pub(super) fn read(&self) -> Result<RwLockReadGuard<'_, Asset<S>>, Errno> {
        self.0.read().map_err(|poisoned| {
            refuse(poisoned.get_ref());
            Errno::EIO
        })
    }

    /// Exclusive access for changes and syncs; `EIO` once a writer panicked.
    pub(super) fn write(&self) -> Result<RwLockWriteGuard<'_, Asset<S>>, Errno> {
        self.0.write().map_err(|poisoned| {
            refuse(poisoned.get_ref());
            Errno::EIO
        })
    }
}

fn refuse<S: StoredBytes>(asset: &Asset<S>) {
    error!(asset = %asset.header().asset_id, "refused: a write to this open asset panicked; close every handle of it to open it afresh");
}

#[cfg(test)]
mod tests {
    use super::*;
    use csap_format::format::{AssetId, Header, KeyId, ScopeId, Suite, DEFAULT_CHUNK_SIZE};
    use csap_format::ContentKey;

    #[test]
    fn a_panic_while_writing_makes_every_later_use_eio() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("a"))
            .unwrap();
        let header = Header::new(
            Suite::Gcm,
            DEFAULT_CHUNK_SIZE,
            AssetId([1; 16]),
            KeyId {
                scope: ScopeId([2; 16]),
                version: 1,
            },
        )
        .unwrap();
        let lock =
            AssetLock::new(Asset::create(file, header, &ContentKey::from_bytes([3; 32])).unwrap());
        lock.write().unwrap().write_at(0, b"frame").unwrap();
        let panicked = std::thread::scope(|s| {
            s.spawn(|| {
                let _asset = lock.write().unwrap();
                panic!("a write panicked halfway");
            })
            .join()
        });
        assert!(panicked.is_err());
        assert_eq!(lock.read().err(), Some(Errno::EIO));
        assert_eq!(lock.write().err(), Some(Errno::EIO));
    }
}
