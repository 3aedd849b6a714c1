//! ARDS, the Authorization Rules Distribution Service (CSAP Part 1 §5.4–5.7): stores signed
//! rules from trusted authz issuers, releases each to its policy enforcement points just in
//! time over per-PEP revisioned streams, pushes revocations at once, drops expired rules, and
//! triages PEP exception reports. The PEP side ([`client`], [`wire`], [`clock`]) is the
//! `ards-client` crate, re-exported here.
#![forbid(unsafe_code)]

pub mod error;
pub mod http;
pub mod probe;
pub mod server;
pub mod service;
pub mod store;
pub mod testing;

pub use ards_client::{client, clock, wire};

pub use client::{ArdsHttp, ClientConfig, ClientError, ClientOptions, RulesClient};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::ArdsError;
pub use http::app;
pub use service::{Ards, ArdsConfig, ExceptionPolicy};
pub use wire::DenialReport;
