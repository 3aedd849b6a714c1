//! JSON bodies of the ARDS HTTP API (the revoke body is the policy model's signed
//! `Revocation`), and the syntax of the ids that travel in it, which ARDS and every PEP check.

use csap_policy::{Action, SignedRule};
use serde::{Deserialize, Serialize};

pub use csap_policy::Revocation;

/// Body of `POST {ards}/v1/publish` (what an authz issuer sends).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PublishRules {
    pub rules: Vec<SignedRule>,
}

/// Longest accepted identifier (rule id, PEP id, issuer).
pub const MAX_ID_LEN: usize = 256;

/// What is wrong with `s` as a rule id or issuer name, if anything: 1..=256 printable ASCII
/// characters, no spaces or slashes (they appear in logs and listings). `field` names it.
pub fn id_problem(s: &str, field: &str) -> Option<String> {
    if s.is_empty() {
        return Some(format!("{field} must not be empty"));
    }
    if s.len() > MAX_ID_LEN {
        return Some(format!("{field} is longer than {MAX_ID_LEN} bytes"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\')
    {
        return Some(format!(
            "{field} may only contain printable ASCII without spaces or slashes"
        ));
    }
    None
}

/// What is wrong with `s` as a PEP id, if anything: an id (see [`id_problem`]) of letters,
/// digits and `. _ - : @ + =` only, because PEP ids travel unescaped in URL paths.
pub fn pep_id_problem(s: &str, field: &str) -> Option<String> {
    id_problem(s, field).or_else(|| {
        (!s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@+=".contains(&b)))
        .then(|| format!("{field} may only contain letters, digits and . _ - : @ + ="))
    })
}

/// Why a rule left a PEP's rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemovalReason {
    /// A signed revocation arrived.
    Revoked,
    /// `not_after` passed.
    Expired,
}

impl RemovalReason {
    /// The reason's name in ARDS's store and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RemovalReason::Revoked => "revoked",
            RemovalReason::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "revoked" => Some(RemovalReason::Revoked),
            "expired" => Some(RemovalReason::Expired),
            _ => None,
        }
    }
}

/// One rule removed from a PEP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub rule_id: String,
    pub reason: RemovalReason,
}

/// Answer to `GET /v1/pep/{pep_id}/changes?since=REV&wait=SECS`.
///
/// With `reset == false` the PEP applies `upserts` and `removals` to what it had at `since`.
/// With `reset == true` (first contact, `since == 0`, or a `since` newer than anything this
/// ARDS issued, e.g. after its store was rebuilt) `upserts` is the PEP's complete rule set and
/// the PEP drops every rule not in it.
///
/// `U` is how upserts are carried: parsed [`SignedRule`]s for clients, the stored JSON text
/// ([`RawChanges`]) on the server, which then never re-parses a rule per poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changes<U = SignedRule> {
    pub pep_id: String,
    /// The PEP's revision after applying this answer; send it back as `since`.
    pub revision: u64,
    pub reset: bool,
    pub upserts: Vec<U>,
    pub removals: Vec<Removal>,
}

/// [`Changes`] with each upsert as the signed rule's stored JSON, verbatim.
pub type RawChanges = Changes<Box<serde_json::value::RawValue>>;

impl<U> Changes<U> {
    /// True when applying this answer changes nothing.
    pub fn is_empty(&self) -> bool {
        !self.reset && self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// A denial a PEP reports to ARDS (`POST /v1/pep/{pep_id}/exceptions`): the request it refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenialReport {
    pub participant: String,
    pub application_digest: String,
    pub device: String,
    pub asset_path: String,
    pub asset_scope: String,
    pub action: Action,
}

/// What ARDS did with one denial report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ExceptionOutcome {
    /// Stored for the authorization service (`GET /v1/exceptions`).
    Recorded { exception_id: i64 },
    /// The same report arrived within the dedup window: counted, not stored again.
    Duplicate { exception_id: i64, count: i64 },
    /// A rule that would allow the request was waiting for its just-in-time release; it has
    /// been released to this PEP now.
    Released {
        exception_id: i64,
        rule_ids: Vec<String>,
    },
}

/// Whether an exception still needs the authorization service's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExceptionStatus {
    /// No rule known to ARDS allows it: for authz (and workflow management).
    Open,
    /// ARDS released a pending rule that allows it.
    Released,
}

/// One stored exception.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionRecord {
    pub id: i64,
    pub pep_id: String,
    #[serde(flatten)]
    pub report: DenialReport,
    pub first_seen: i64,
    pub last_seen: i64,
    /// Reports folded into this record (1 + duplicates within the dedup window).
    pub count: i64,
    pub status: ExceptionStatus,
    /// Rules released because of it (empty when open).
    pub released_rules: Vec<String>,
}

/// Reports refused by the per-PEP rate limit since ARDS started (not stored individually).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottledCount {
    pub pep_id: String,
    pub count: u64,
}

/// Answer to `GET /v1/exceptions[?after=ID][&all=true]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionList {
    pub exceptions: Vec<ExceptionRecord>,
    pub throttled: Vec<ThrottledCount>,
}

/// Where a rule stands for one PEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    /// Waiting for its release time (`not_before - lead time`).
    Pending,
    /// Sent (or being sent) to the PEP.
    Released,
}

/// One entry of `GET /v1/rules[?pep=ID]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListedRule {
    pub rule: SignedRule,
    /// When ARDS releases (or released) it: `not_before - lead time`.
    pub release_at: i64,
    /// Per target PEP (only the asked PEP when `?pep=` is given).
    pub targets: Vec<ListedTarget>,
}

/// State of one target of a listed rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedTarget {
    pub pep_id: String,
    pub state: TargetState,
}

/// Answer to `GET /v1/rules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleList {
    /// Rules neither revoked nor expired.
    pub rules: Vec<ListedRule>,
}

/// Answer to `POST /v1/publish`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishOutcome {
    /// Rules stored by this call.
    pub stored: Vec<String>,
    /// Rules ARDS already held with the same content (retries).
    pub unchanged: Vec<String>,
    /// Rules stored but never released: revoked earlier or already expired.
    pub inactive: Vec<String>,
}

/// Answer to `POST /v1/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeOutcome {
    pub rule_id: String,
    /// False when ARDS did not hold the rule yet (a tombstone keeps it from ever releasing).
    pub known: bool,
    /// PEPs that get a removal event.
    pub removed_from: Vec<String>,
}

/// One PEP as ARDS sees it (`GET /v1/peps`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PepStatus {
    pub pep_id: String,
    /// Latest revision issued to it.
    pub revision: u64,
    /// Latest revision it acknowledged (the `since` of its last poll), if it polled since ARDS
    /// started.
    pub acknowledged: Option<u64>,
    /// When it last polled (unix seconds), if it polled since ARDS started.
    pub last_seen: Option<i64>,
    /// Polls since ARDS started.
    pub polls: u64,
}

/// Error body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_a_url_path_are_refused() {
        assert_eq!(pep_id_problem("mount:ws-07", "pep_id"), None);
        assert_eq!(
            id_problem("r-req-1/2", "rule.id").as_deref(),
            Some("rule.id may only contain printable ASCII without spaces or slashes")
        );
        for bad in [
            "",
            "mount:ws 07",
            "../admin",
            "mount:ws-07?x=1",
            "a#b",
            "%2e%2e",
        ] {
            assert!(pep_id_problem(bad, "pep_id").is_some(), "{bad:?}");
        }
        assert!(id_problem(&"r".repeat(MAX_ID_LEN), "rule.id").is_none());
        assert!(id_problem(&"r".repeat(MAX_ID_LEN + 1), "rule.id")
            .is_some_and(|m| m.contains("longer than 256 bytes")));
    }
}
