//! Who a csap client is, as the client itself uses it: the certificate and key the key server's
//! CA issued it (an identity directory), the role that certificate carries, and the rustls
//! client configuration every csap client presents it with (TLS 1.3, ring, trusting exactly the
//! installation's CA).
//!
//! - [`role`]: principal roles and workflow grants (one vocabulary for every service);
//! - [`tls`]: the client side of every csap TLS connection;
//! - [`pki`]: identity directories, and (feature `csr`) the key pair and CSR of an enrolment.
//!
//! Apart from the services, so that a mount or a client tool links no server for it; it lives
//! in `keyserver/` because the key server's CA issues every identity.

#![forbid(unsafe_code)]

pub mod pki;
pub mod role;
pub mod tls;

pub use pki::{Identity, PkiError};
pub use role::{Role, WorkflowGrant};
pub use tls::{ClientIdentity, TlsError};
