//! csapfs: the CSAP data plane — the encrypting mount, built on the asset format.
//!
//! It links the asset format (`csap-format`), the policy evaluator (`csap-policy`), the key
//! server's and ARDS's client crates (`keyserver-client`, `ards-client`), `csap-identity` and
//! `csap-base`, and no service crate: no SQLite, no HTTP server, no password hashing
//! (`.ci/run` checks the resolved graph; `ARCHITECTURE.md` draws it).
//!
//! Its modules, each using (outside its tests) only those listed before it:
//! - [`format`], [`crypto`], [`asset`], [`stream`]: the asset format (they use one another),
//!   re-exported from the `csap-format` crate (`csapfs/format/`), which links none of what follows;
//! - [`keys`]: where content keys come from ([`keys::KeySource`]);
//! - [`binding`]: assets bound to their registered path and write generation;
//! - [`exec_watch`], [`procmap`]: the kernel's exec notices, pidfds and mapping queries (let
//!   attestations be remembered and re-checked);
//! - [`audit_spool`]: the mount's own decisions, spooled durably and shipped to the key server;
//! - [`session`]: user tokens handed to the mount over a Unix socket, bound by SO_PEERCRED;
//! - [`license_source`]: content keys from key server licenses for attested callers, built on
//!   all of the above;
//! - [`observe`]: the mount's metrics (names, recording; the facade only, no exporter);
//! - [`storage`]: where the encrypted assets live (the local directory backend and its trait);
//! - [`fs`]: the FUSE mount (the data-plane PEP) built on the layers above, which gets keys
//!   only through [`keys::KeySource`].

pub mod audit_spool;
pub mod binding;
pub mod exec_watch;
pub mod fs;
pub mod keys;
pub mod license_source;
pub mod observe;
pub mod procmap;
pub mod session;
pub mod storage;

pub use csap_format::{asset, crypto, format, stored, stream, xattrs};

pub use asset::{Asset, AssetError};
pub use crypto::{derive_content_key, ContentKey, Seed};
pub use format::{AssetId, Header, KeyId, Layout, ScopeId, Suite};
pub use keys::{Caller, KeyError, KeyFileSource, KeySource};
