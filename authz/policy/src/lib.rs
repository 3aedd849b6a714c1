//! The CSAP policy model and the evaluator every policy enforcement point runs — the key
//! server, each mount, ARDS's checks — apart from the authorization *service*, so a PEP links no
//! database and no HTTP stack for it.
//!
//! - [`model`]: the Cedar schema and actions; [`request`]: authorization policy requests;
//! - [`template`]: requests → rules per PEP; [`rule`]: rules, their Ed25519 signatures and
//!   revocations; [`eval`]: the evaluator over a signed rule set;
//! - [`glob`]: the one path-pattern dialect; [`clock`]: the fail-closed clock (`csap-base`'s,
//!   re-exported for the evaluator's callers);
//! - [`synthetic`]: rule sets and requests at scale for tests and benchmarks.

#![forbid(unsafe_code)]

pub mod eval;
pub mod glob;
pub mod model;
pub mod request;
pub mod rule;
pub mod synthetic;
pub mod template;

pub use csap_base::clock;

pub use eval::{AccessRequest, Decision, EvalError, Evaluator};
pub use model::Action;
pub use rule::{sign, IssuerKey, IssuerPublicKey, Revocation, Rule, RuleError, SignedRule};
