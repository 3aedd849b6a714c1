//! ARDS as a policy enforcement point (or an issuer) sees it, apart from the service so that a
//! mount links no database and no HTTP server for it:
//!
//! - [`wire`]: the JSON bodies of the ARDS API and the syntax of the ids in them;
//! - [`client`]: [`ArdsHttp`], a typed client of the API, and [`RulesClient`], a PEP's rule set
//!   kept in sync (long poll, resume, backoff), verified, cached across restarts, and enforced in
//!   time while disconnected;
//! - [`clock`]: the injectable clock both ARDS and its clients run time-driven work on.

#![forbid(unsafe_code)]

pub mod client;
pub mod clock;
pub mod wire;

pub use client::{ArdsHttp, ClientConfig, ClientError, ClientOptions, RulesClient};
pub use clock::{Clock, ManualClock, SystemClock};
pub use wire::DenialReport;
