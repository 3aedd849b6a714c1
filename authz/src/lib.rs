//! csap Authorization Service: policy requests → signed Cedar rules per PEP, global security
//! policies, and the rule evaluator every PEP (key server, mount) runs.
#![forbid(unsafe_code)]

pub mod blocking;
pub mod catalog;
pub mod global;
pub mod http;
pub mod http_catalog;
pub mod http_errors;
mod intake;
pub mod listener;
pub mod migrate;
pub mod omc;
pub mod ops;
pub mod pg;
pub mod principal;
mod probe;
pub mod service;
pub mod statedir;
pub mod store;
pub mod testing;
pub mod tls;
pub mod wire;

pub use csap_policy::{clock, eval, glob, model, request, rule, template};
pub use eval::{AccessRequest, Decision, EvalError, Evaluator};
pub use http::app;
pub use model::Action;
pub use rule::{sign, IssuerKey, IssuerPublicKey, Rule, RuleError, SignedRule};
pub use service::{Authz, Config, Submitter};
