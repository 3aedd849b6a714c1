//! csap key server: the Authentication Service (users, devices with their own CA and mTLS,
//! application builds), asset-protection key management (scopes, versioned seeds, content-key
//! derivation), the license server and its audit log — plus the client library the mount uses.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod directory;
pub mod error;
pub mod fsutil;
pub mod keys;
pub mod license;
pub mod pki;
pub mod ratelimit;
pub mod readcache;
pub mod revocation;
pub mod rules;
pub mod seal;
pub mod server;
pub mod session;
pub mod store;
pub mod testing;
pub mod token;
pub mod wire;

pub use api::app;
pub use client::{AdminClient, ClientError, LicenseClient};
pub use keys::{derive_content_key, ContentKey};
pub use license::{open_offline, OpenedGrant, OpenedLicense};
pub use rules::{RuleCheck, RuleVerdict, SwappableRules};
pub use server::{start, Clock, Limits, RunningServer, ServerConfig, ServerError, State};
pub use token::UserToken;

pub use authz::clock::ClockError;

/// Wall-clock unix seconds for validity decisions; fails closed ([`authz::clock`]).
pub fn now() -> Result<i64, ClockError> {
    authz::clock::unix_now()
}
