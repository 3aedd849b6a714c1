//! The CSAP asset format (specification: `csapfs/FORMAT.md`), apart from the mount so that
//! whatever reads or writes assets — the mount, `csap import`, the fuzz target, a future object
//! store backend — links only this: no FUSE, no async runtime, no database, no network.
//!
//! - [`crypto`]: keys and ciphers (the only module that names a cipher implementation);
//! - [`format`]: the byte format of an asset (header and chunk codec);
//! - [`asset`]: one asset with random access, over [`stored`] bytes (a local file by default);
//!   [`stream`]: whole-file streaming; [`xattrs`]: an asset's user attributes, sealed.
//!
//! `crypto` and `format` use each other (a chunk's codec needs the cipher, a key needs the
//! header's ids); `asset` and `stream` are built on both.

pub mod asset;
pub mod crypto;
pub mod format;
pub mod stored;
pub mod stream;
pub mod xattrs;

pub use asset::{Asset, AssetError};
pub use crypto::{derive_content_key, ContentKey, Seed};
pub use format::{AssetId, Header, KeyId, Layout, ScopeId, Suite};
