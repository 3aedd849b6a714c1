//! Synthetic rule sets and requests for benchmarks and tests of the evaluator at scale.
//!
//! Rule `i` permits participant `user{i%500}` on device `dev{i%200}` with application digest
//! `{i%50:064x}` to read and write `show/seq{i%20}/shot{i:05}/*` (or key scope `shot{i:05}`)
//! between 1_700_000_000 and 2_000_000_000. Each (participant, device, application) triple thus
//! carries `n/1000` rules, like a production with many shots per artist seat.

use crate::eval::AccessRequest;
use crate::model::Action;
use crate::request::AssetSelector;
use crate::rule::Rule;
use crate::template::{mount_pep, RuleSpec};

/// An owned [`AccessRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedAccessRequest {
    pub participant: String,
    pub application_digest: String,
    pub device: String,
    pub asset_path: String,
    pub asset_scope: String,
    pub action: Action,
    pub now: i64,
}

impl OwnedAccessRequest {
    pub fn as_request(&self) -> AccessRequest<'_> {
        AccessRequest {
            participant: &self.participant,
            application_digest: &self.application_digest,
            device: &self.device,
            asset_path: &self.asset_path,
            asset_scope: &self.asset_scope,
            action: self.action,
            now: self.now,
        }
    }
}

fn digest(i: usize) -> String {
    format!("{:064x}", i % 50)
}

/// `n` template-shaped rules (see the module docs), ids `r-syn-{i}`.
pub fn synthetic_rules(n: usize) -> Vec<Rule> {
    (0..n)
        .map(|i| {
            let device = format!("dev{}", i % 200);
            let spec = RuleSpec {
                id: format!("r-syn-{i}"),
                request_id: format!("req-syn-{i}"),
                task: format!("task-{i}"),
                participant: format!("user{}", i % 500),
                actions: vec![Action::Read, Action::Write],
                devices: vec![device.clone()],
                applications: vec![digest(i)],
                assets: vec![
                    AssetSelector {
                        path: Some(format!("show/seq{}/shot{i:05}/*", i % 20)),
                        scope: None,
                    },
                    AssetSelector {
                        path: None,
                        scope: Some(format!("shot{i:05}")),
                    },
                ],
                not_before: 1_700_000_000,
                not_after: 2_000_000_000,
            };
            Rule {
                delegates_to: None,
                delegated_by: None,
                id: spec.id.clone(),
                issuer: "authz".into(),
                request_id: spec.request_id.clone(),
                targets: vec![mount_pep(&device)],
                not_before: spec.not_before,
                not_after: spec.not_after,
                policy: spec.to_cedar(),
            }
        })
        .collect()
}

/// A request aimed at rule `k`'s key (any `n > k`): even `k` is allowed by rule `k`, odd `k`
/// asks for `delete` (never granted) and is denied after checking the candidates.
/// Returns the request and the expected `allowed`.
pub fn synthetic_request(k: usize) -> (OwnedAccessRequest, bool) {
    let allowed = k & 1 == 0;
    (
        OwnedAccessRequest {
            participant: format!("user{}", k % 500),
            application_digest: digest(k),
            device: format!("dev{}", k % 200),
            asset_path: format!("show/seq{}/shot{k:05}/f0001.exr", k % 20),
            asset_scope: "unrelated".into(),
            action: if allowed {
                Action::Read
            } else {
                Action::Delete
            },
            now: 1_800_000_000,
        },
        allowed,
    )
}
