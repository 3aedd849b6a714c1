//! csap key server: the Authentication Service (users, devices with their own CA and mTLS,
//! application builds), asset-protection key management (scopes, versioned seeds, content-key
//! derivation), the license server and its audit log. The client library the mount uses is
//! `keyserver-client` (re-exported as `client`, `wire`, `seal`).
#![forbid(unsafe_code)]

pub mod api;
pub mod directory;
pub mod error;
pub mod federation;
pub mod fsutil;
pub mod keys;
pub mod license;
pub mod metrics;
pub mod pki;
pub mod ratelimit;
pub mod readcache;
pub mod revocation;
pub mod rules;
pub mod server;
pub mod session;
pub mod store;
pub mod testing;
pub mod token;

// The client side (wire types, license protocol, clients) is keyserver-client's; these paths
// stay for the server's code and its users.
pub use keyserver_client::{client, seal, wire};

pub use api::app;
pub use client::{AdminClient, ClientError, LicenseClient};
pub use keys::{derive_content_key, ContentKey};
pub use license::{open_offline, OpenedGrant, OpenedLicense};
pub use rules::{RuleCheck, RuleVerdict, SwappableRules};
pub use server::{start, Clock, Limits, RunningServer, ServerConfig, ServerError, State};
pub use token::UserToken;

/// Wall-clock unix seconds for validity decisions; fails closed ([`csap_base::clock`]).
pub use csap_base::clock::{unix_now as now, ClockError};
