//! The end-to-end fixture of csap, shared by the CLI's integration tests (`cli/tests/`) and the
//! whole-system benchmarks (`bench`): everything runs as the product runs.
//!
//! - [`server`]: `csap server` (authz, ARDS and the key server on loopback TLS, SQLite on disk)
//!   as a child process, restartable on the same ports and data directory;
//! - [`system`]: that server with a user, its devices and a key scope provisioned, requests
//!   submitted with `csap request submit`, rules awaited at the PEPs, the audit trail read;
//! - [`mount`]: `csap mount --server … --ards …` (or any FUSE daemon) as a child process;
//! - [`import`]: assets licensed and encrypted into a backing store as `csap import` does;
//! - [`request`]: authorization policy requests as workflow management submits them;
//! - [`process`]: child processes stopped on drop, started without cargo's loader variables
//!   (attestation rightly refuses them), and conversing children driven line by line;
//! - [`postgres`]: a real PostgreSQL server (Debian's package) on loopback, a fresh database
//!   per test;
//! - [`s3`]: a real S3 server (`s3s-fs`) on loopback with a fresh bucket, killable;
//! - [`oidc`]: a real OpenID Connect provider (`oidc-provider`, node) on loopback and a
//!   "browser" that walks its login and consent pages;
//! - [`fuse`]: whether real mounts can run here (a failure, not a skip, under `CI=true`), and
//!   mount-table checks.

#![forbid(unsafe_code)]

pub mod fuse;
pub mod import;
pub mod mount;
pub mod oidc;
pub mod postgres;
pub mod process;
pub mod request;
pub mod s3;
pub mod server;
pub mod system;

pub use import::{write_asset, Importer};
pub use mount::{ArdsFlags, CsapMount, FuseProcess, KeyServerFlags};
pub use process::{clean, eventually, run, until, Conversation, Proc};
pub use request::Request;
pub use server::{free_port_triple, CsapServer, ReplicaInfo, ServerInfo, ServerOptions};
pub use system::{Setup, Submitted, System};

/// What a test does when a real part it needs (`what`) is missing here, for `reason`: under
/// `CI=true` it fails (panics), never skips; elsewhere it says on stderr that it skips, and the
/// caller returns early.
pub fn missing_part(what: &str, reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true requires {what}, but {reason}");
    }
    eprintln!("SKIPPED: {reason} (set CI=true to make this a failure)");
}

/// BLAKE3 of an executable as attestation measures it: the file the path resolves to.
pub fn digest_of(path: impl AsRef<std::path::Path>) -> std::io::Result<String> {
    csapfs::license_source::attest::app_digest_at(path.as_ref())
}
