//! The mount's series (`csap mount --metrics-listen` / `--metrics-textfile` expose them): the
//! license cache, license round trips, revocations and how long they took to reach the mount,
//! and — as gauges the mount's observer refreshes from [`license_source::SourceStats`] — rules,
//! held licenses and the audit spool's depth.
//!
//! Recorded through the `metrics` facade only: without an installed recorder (tests, a mount
//! without either flag) every call is a no-op.
//!
//! [`license_source::SourceStats`]: crate::license_source::SourceStats

use std::time::Duration;

/// Opens answered from a held license / that had to ask the key server.
pub const CACHE_HITS: &str = "csap_mount_license_cache_hits_total";
pub const CACHE_MISSES: &str = "csap_mount_license_cache_misses_total";
/// One license round trip to the key server (its sibling batch included), any outcome.
pub const LICENSE_SECONDS: &str = "csap_mount_license_request_seconds";
/// Licenses the key server refused for an open, label `reason`.
pub const LICENSE_DENIED: &str = "csap_mount_license_denials_total";
/// Identity revocations applied (label `kind`: user, app, key_version, device) and licenses
/// they dropped.
pub const REVOCATIONS: &str = "csap_mount_revocations_total";
pub const REVOKED_LICENSES: &str = "csap_mount_revoked_licenses_total";
/// From a revocation's commit at the key server to its sweep at this mount (the key server's
/// clock is in whole seconds, so the figure is coarse below one second).
pub const REVOCATION_SECONDS: &str = "csap_mount_revocation_apply_seconds";
/// Held licenses dropped because no rule of the mount allows them any more.
pub const RULE_REVOCATIONS: &str = "csap_mount_rule_revoked_licenses_total";
/// State gauges, refreshed by the mount's observer.
pub const RULES: &str = "csap_mount_rules";
pub const LICENSES_HELD: &str = "csap_mount_licenses_held";
pub const SPOOL_DEPTH: &str = "csap_mount_audit_spool_depth";
pub const SPOOL_FULL: &str = "csap_mount_audit_spool_full";
pub const SPOOL_DROPPED: &str = "csap_mount_audit_spool_dropped";

pub(crate) fn cache_hit() {
    metrics::counter!(CACHE_HITS).increment(1);
}

pub(crate) fn cache_miss() {
    metrics::counter!(CACHE_MISSES).increment(1);
}

pub(crate) fn license_request(took: Duration) {
    metrics::histogram!(LICENSE_SECONDS).record(took.as_secs_f64());
}

/// `reason` is the key server's code (`no_rule`, …): a bounded label.
pub(crate) fn license_denied(reason: &str) {
    metrics::counter!(LICENSE_DENIED, "reason" => reason.to_string()).increment(1);
}

/// One identity revocation applied: what kind, how many licenses it dropped, and how long
/// after its commit (`committed`, unix seconds) it was applied here.
pub(crate) fn revocation(kind: &'static str, dropped: usize, committed: i64) {
    metrics::counter!(REVOCATIONS, "kind" => kind).increment(1);
    metrics::counter!(REVOKED_LICENSES).increment(dropped as u64);
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        let late = now.as_secs_f64() - committed as f64;
        metrics::histogram!(REVOCATION_SECONDS).record(late.max(0.0));
    }
}

pub(crate) fn rule_revocations(dropped: usize) {
    if dropped > 0 {
        metrics::counter!(RULE_REVOCATIONS).increment(dropped as u64);
    }
}

/// Sets the state gauges from one reading of the source.
pub fn publish(stats: &crate::license_source::SourceStats) {
    if let Some(rules) = stats.rules {
        metrics::gauge!(RULES).set(rules as f64);
    }
    metrics::gauge!(LICENSES_HELD).set(stats.licenses as f64);
    if let Some(spool) = &stats.spool {
        metrics::gauge!(SPOOL_DEPTH).set(spool.unshipped as f64);
        metrics::gauge!(SPOOL_FULL).set(if spool.full { 1.0 } else { 0.0 });
        metrics::gauge!(SPOOL_DROPPED).set(spool.dropped as f64);
    }
}
