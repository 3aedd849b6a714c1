//! The bottom of the crate graph: what the key server, the mount, the asset format, the policy
//! evaluator, ARDS and the CLI must agree on, each in one copy.
//!
//! - [`ids`]: asset and scope ids (128 random bits, lowercase hex on the wire);
//! - [`keys`]: scope seeds, content keys and the one content-key derivation (HKDF-SHA256);
//! - [`token`]: the user-token format and its one parser (the key server adds the MAC check);
//! - [`clock`]: the fail-closed wall clock every validity decision reads;
//! - [`files`]: the one writer of secret files (atomic, fsynced, 0600 from creation) and the
//!   modes of private files and directories.
//!
//! It lives in `keyserver/` because the key server defines most of it (it allocates asset ids,
//! holds the seeds, derives content keys and issues tokens); everyone else consumes it. It links
//! no network, no async runtime and no database, so the asset format may depend on it.

#![forbid(unsafe_code)]

pub mod clock;
pub mod files;
pub mod ids;
pub mod keys;
pub mod token;

pub use clock::{unix_now, ClockError};
pub use ids::{AssetId, ScopeId};
pub use keys::{derive_content_key, ContentKey, Seed};
pub use token::{Claims, UserToken};
