//! csapfs: the CSAP data plane — the asset format and its crypto, and the encrypting mount.
//!
//! Layers, each importing only those before it:
//! - [`crypto`]: keys and ciphers (the only module that names a cipher implementation);
//! - [`format`]: the byte format of an asset (pure codec, spec in `FORMAT.md`);
//! - [`asset`]: one asset file on disk with random access; [`stream`]: whole-file streaming;
//! - [`keys`]: where content keys come from ([`keys::KeySource`]);
//! - [`binding`]: assets bound to their registered path and write generation;
//! - [`exec_watch`]: the kernel's exec notices and pidfds (lets attestations be remembered);
//! - [`license_source`]: content keys from key server licenses for attested callers;
//! - [`audit_spool`]: the mount's own decisions, spooled durably and shipped to the key server;
//! - [`session`]: user tokens handed to the mount over a Unix socket, bound by SO_PEERCRED;
//! - [`fs`]: the FUSE mount (the data-plane PEP) built on the layers above.

pub mod asset;
pub mod audit_spool;
pub mod binding;
pub mod crypto;
pub mod exec_watch;
pub mod format;
pub mod fs;
pub mod keys;
pub mod license_source;
pub mod session;
pub mod stream;

pub use asset::{Asset, AssetError};
pub use crypto::{derive_content_key, ContentKey, Seed};
pub use format::{AssetId, Header, KeyId, Layout, ScopeId, Suite};
pub use keys::{Caller, KeyError, KeyFileSource, KeySource};
