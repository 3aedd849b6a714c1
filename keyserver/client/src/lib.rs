//! The key server as a device (or an admin tool) sees it, apart from the server so that a mount
//! links no database, no HTTP server and no password hashing for it:
//!
//! - [`wire`]: the JSON types of the key server's API (the server's handlers use the same);
//! - [`client`]: [`LicenseClient`] for devices, [`AdminClient`] for the admin identity;
//! - [`license`]: verifying a license and opening its content keys, online and offline;
//! - [`session`]: license sessions (one HPKE agreement per device session), both ends;
//! - [`seal`]: per-license HPKE key wrapping, both ends, and the device's X25519 key;
//! - [`revocation`]: the identity revocation stream's events.
//!
//! Both ends of the license cryptography live here, next to each other, so that the key server
//! and the device cannot disagree on a label, a nonce or an AAD; the key server adds what only
//! it holds (the signing key, the seeds, the session store). Tokens, ids and content keys are
//! `csap-base`'s; identities and the TLS client configuration `csap-identity`'s.

#![forbid(unsafe_code)]

pub mod client;
pub mod failover;
pub mod license;
pub mod revocation;
pub mod seal;
pub mod session;
pub mod wire;

pub use client::{AdminClient, ClientError, KsClient, LicenseClient};
pub use csap_base::token::UserToken;
pub use license::{open_offline, OpenedGrant, OpenedLicense};
