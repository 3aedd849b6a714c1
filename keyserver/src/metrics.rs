//! The key server's series (`authz::ops` serves them): license decisions by reason, license
//! latency, the read cache, the audit group commit — and its readiness probe.
//!
//! Decisions are counted from the audit events they are recorded as, after the commit, so a
//! counter never runs ahead of the trail it summarizes.

use std::time::Duration;

use authz::ops::{Probe, ProbeFuture};

use crate::server::State;
use crate::store::AuditEvent;

/// Licensed assets granted, label `action` (read, write, create).
pub const GRANTED: &str = "csap_keyserver_licenses_granted_total";
/// Licensed assets denied, labels `action` and `reason` (`no_rule`, `unknown_application`, …).
pub const DENIED: &str = "csap_keyserver_licenses_denied_total";
/// Time to answer one license request (`POST /v1/licenses`), any outcome.
pub const LICENSE_SECONDS: &str = "csap_keyserver_license_request_seconds";
/// Read-cache lookups answered from memory / read from the database.
pub const CACHE_HITS: &str = "csap_keyserver_readcache_hits_total";
pub const CACHE_MISSES: &str = "csap_keyserver_readcache_misses_total";
/// Audit records per group-commit transaction, and each commit's duration.
pub const AUDIT_BATCH: &str = "csap_keyserver_audit_batch_records";
pub const AUDIT_COMMIT_SECONDS: &str = "csap_keyserver_audit_commit_seconds";
/// License sessions this replica holds in memory (every one is in the store too).
pub const SESSIONS: &str = "csap_keyserver_license_sessions";

/// The license decisions among audit events, taken before the events go to the store and
/// counted once they are committed ([`Tally::count`]). Logins, handshakes, renames and refused
/// requests are not licenses.
#[must_use = "count the tally once the events are committed"]
pub(crate) struct Tally(Vec<(String, Option<String>, u64)>);

impl Tally {
    pub(crate) fn of(events: &[AuditEvent]) -> Tally {
        let mut tally: Vec<(String, Option<String>, u64)> = Vec::new();
        for ev in events {
            if !matches!(ev.action.as_str(), "read" | "write" | "create") {
                continue;
            }
            let reason = match ev.decision {
                "grant" => None,
                "deny" => Some(reason_label(ev.reason.as_deref())),
                _ => continue,
            };
            match tally
                .iter_mut()
                .find(|(a, r, _)| *a == ev.action && *r == reason)
            {
                Some(entry) => entry.2 += 1,
                None => tally.push((ev.action.clone(), reason, 1)),
            }
        }
        Tally(tally)
    }

    pub(crate) fn count(self) {
        for (action, reason, n) in self.0 {
            match reason {
                None => metrics::counter!(GRANTED, "action" => action).increment(n),
                Some(reason) => {
                    metrics::counter!(DENIED, "action" => action, "reason" => reason).increment(n)
                }
            }
        }
    }
}

/// A denial's reason as a label: its code (`no_rule`), never free text (bounded cardinality).
fn reason_label(reason: Option<&str>) -> String {
    let code = reason
        .unwrap_or("unknown")
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap_or("");
    if code.is_empty() {
        "unknown".into()
    } else {
        code.to_string()
    }
}

pub(crate) fn license_latency(took: Duration) {
    metrics::histogram!(LICENSE_SECONDS).record(took.as_secs_f64());
}

pub(crate) fn cache_hit() {
    metrics::counter!(CACHE_HITS).increment(1);
}

pub(crate) fn cache_miss() {
    metrics::counter!(CACHE_MISSES).increment(1);
}

pub(crate) fn audit_commit(records: usize, took: Duration) {
    metrics::histogram!(AUDIT_BATCH).record(records as f64);
    metrics::histogram!(AUDIT_COMMIT_SECONDS).record(took.as_secs_f64());
}

impl Probe for State {
    fn name(&self) -> &'static str {
        "keyserver"
    }

    /// Keys are loaded once a `State` exists; ready when the store answers a read.
    fn ready(&self) -> ProbeFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.store
                .audit_tail(1)
                .await
                .map(|_| ())
                .map_err(|e| format!("its store does not answer: {e}"))
        })
    }

    fn collect(&self) -> ProbeFuture<'_, ()> {
        Box::pin(async move {
            metrics::gauge!(SESSIONS).set(self.sessions.cached() as f64);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::reason_label;

    #[test]
    fn reasons_become_their_code() {
        assert_eq!(reason_label(Some("no_rule")), "no_rule");
        assert_eq!(reason_label(Some("bad_request: 404 /x")), "bad_request");
        assert_eq!(reason_label(None), "unknown");
        assert_eq!(reason_label(Some(" odd")), "unknown");
    }
}
