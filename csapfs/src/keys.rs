//! Where the mount gets content keys: the [`KeySource`] trait and the local key-file source.
//!
//! The key-file source is for development and break-glass recovery: every asset is keyed from
//! one 32-byte seed exactly as `csap asset encrypt --key-file` does. The key server's license
//! client implements the same trait for real use.

use std::fmt;

use crate::crypto::{derive_content_key, ContentKey, Seed};
use crate::format::{AssetId, FormatError, Header, KeyId, Suite};

/// The process on whose behalf a key is asked for (from the FUSE request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Policy says no: the caller gets `EACCES`.
    #[error("access denied: {0}")]
    Denied(String),
    /// No key could be had right now (key server unreachable, …): `EACCES`, and logged.
    #[error("key unavailable: {0}")]
    Unavailable(String),
    /// The asset is keyed to a key this source does not hold: `EIO`.
    #[error(
        "the asset is encrypted under key {asset_key}, not under this source's key {source_key}"
    )]
    WrongKey {
        asset_key: String,
        source_key: String,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// A provider of content keys for the mount.
pub trait KeySource: Send + Sync + 'static {
    /// The key of an existing asset whose (not yet authenticated) header is `header`.
    fn open_key(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
    ) -> Result<ContentKey, KeyError>;
    /// A header and key for a new asset created at `path`.
    fn create_key(&self, caller: &Caller, path: &str) -> Result<(Header, ContentKey), KeyError>;
}

/// Parameters for assets that a key source creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewAssetParams {
    pub suite: Suite,
    pub chunk_size: u32,
}

impl Default for NewAssetParams {
    fn default() -> Self {
        NewAssetParams {
            suite: Suite::Gcm,
            chunk_size: crate::format::DEFAULT_CHUNK_SIZE,
        }
    }
}

/// Every asset keyed from one local seed file (scope id = the seed's fingerprint, version 1).
pub struct KeyFileSource {
    seed: Seed,
    key_id: KeyId,
    params: NewAssetParams,
}

impl KeyFileSource {
    pub fn new(seed: Seed, params: NewAssetParams) -> KeyFileSource {
        let key_id = key_file_key_id(&seed);
        KeyFileSource {
            seed,
            key_id,
            params,
        }
    }

    /// The key of an asset keyed from this seed, refusing assets of other keys up front.
    pub fn key_for(&self, header: &Header) -> Result<ContentKey, KeyError> {
        if header.key_id != self.key_id {
            return Err(KeyError::WrongKey {
                asset_key: header.key_id.to_string(),
                source_key: self.key_id.to_string(),
            });
        }
        Ok(derive_content_key(&self.seed, &header.asset_id))
    }

    /// A header and key for a new asset.
    pub fn new_asset(&self) -> Result<(Header, ContentKey), KeyError> {
        let header = Header::new(
            self.params.suite,
            self.params.chunk_size,
            AssetId::random(),
            self.key_id,
        )?;
        let key = derive_content_key(&self.seed, &header.asset_id);
        Ok((header, key))
    }
}

/// The key id that assets keyed from a seed file carry.
pub fn key_file_key_id(seed: &Seed) -> KeyId {
    KeyId {
        scope: seed.key_file_scope_id(),
        version: 1,
    }
}

impl KeySource for KeyFileSource {
    fn open_key(
        &self,
        _caller: &Caller,
        _path: &str,
        header: &Header,
    ) -> Result<ContentKey, KeyError> {
        self.key_for(header)
    }

    fn create_key(&self, _caller: &Caller, _path: &str) -> Result<(Header, ContentKey), KeyError> {
        self.new_asset()
    }
}

impl fmt::Debug for KeyFileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFileSource")
            .field("key_id", &self.key_id.to_string())
            .finish_non_exhaustive()
    }
}
