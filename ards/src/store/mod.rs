//! The ARDS store layer: what the service keeps durably, as operations in its own words
//! ([`RuleStore`]), with SQLite ([`sqlite::SqliteRuleStore`]) the embedded default and
//! PostgreSQL ([`postgres::PgRuleStore`]) for replicas sharing one database.
//!
//! The store trusts its caller to have verified signatures; it owns ordering and durability.
//! An engine keeps these rules:
//! - Each operation is one transaction: a rule is released to all of its PEPs' logs or none.
//! - **Monotonic revisions per PEP**: an event's revision is its PEP's head bumped in the same
//!   transaction; a reader that sees head `h` sees every event up to `h`.
//! - A revocation leaves a tombstone, so a rule published after its revocation never releases.
//! - A mutation reports the PEPs whose log grew ([`Touched`], for waking their long polls) and,
//!   when time-driven work may have moved, the next time [`RuleStore::advance`] has any.
//! - Migrations are versioned per engine (SQLite: `authz::migrate`; PostgreSQL:
//!   `authz::pg::migrate`).
//! - An engine with other writers (PostgreSQL replicas) reports the PEPs whose log grew in
//!   another process ([`RuleStore::remote_changes`]), so every replica's long polls wake.

pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;

use authz::{Rule, SignedRule};

use crate::wire::{
    Changes, DenialReport, ExceptionOutcome, ExceptionRecord, ListedRule, RawChanges,
};

/// Store failures. SQLite errors are internal (HTTP 500); `Conflict` is the caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] authz::pg::PgError),
    #[error("database schema version {0} is newer than this build understands")]
    FutureSchema(i64),
    #[error("stored rule {id} is unreadable: {source}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
    #[error("rule {id} is already held with different content")]
    Conflict { id: String },
    #[error("store task failed: {0}")]
    Worker(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Postgres(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Postgres(e.into())
    }
}

impl From<authz::migrate::MigrateError> for StoreError {
    fn from(e: authz::migrate::MigrateError) -> Self {
        match e {
            authz::migrate::MigrateError::Sqlite(e) => StoreError::Sqlite(e),
            authz::migrate::MigrateError::FutureSchema(v) => StoreError::FutureSchema(v),
        }
    }
}

/// What publishing one rule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// New rule stored (pending or released per its release time).
    Stored,
    /// Same rule already held.
    Unchanged,
    /// Stored, but revoked before it arrived or already expired: never released.
    Inactive,
}

/// What recording one exception report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    New(i64),
    Duplicate { id: i64, count: i64 },
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The rule is held under another issuer, who alone may revoke it: nothing changed.
    NotIssuer { owner: String },
    /// A tombstone recorded; `known`: the rule was held; `removed_from`: the PEPs that had it.
    Tombstoned {
        known: bool,
        removed_from: Vec<String>,
    },
}

/// PEPs whose event log grew, with their new head revision.
pub type Touched = HashMap<String, u64>;

/// A mutation's answer, the PEPs it touched, and — when it may have moved time-driven work —
/// the next time [`RuleStore::advance`] has any (`Some(i64::MAX)`: none).
#[derive(Debug)]
pub struct Outcome<T> {
    pub value: T,
    pub touched: Touched,
    pub next_due: Option<i64>,
}

/// Whether a pending rule would allow a reported request (the evaluator's call, handed to the
/// store so triage reads and releases in one transaction).
pub type WouldAllow = Box<dyn Fn(&Rule) -> bool + Send>;

#[async_trait::async_trait]
pub trait RuleStore: Send + Sync + 'static {
    /// Stores a batch of verified rules (all or nothing), each with its release time; a rule
    /// whose release time has come is released at once. A rule id already held with other
    /// content fails the whole batch ([`StoreError::Conflict`]).
    async fn publish(
        &self,
        batch: Vec<(SignedRule, i64)>,
        now: i64,
    ) -> Result<Outcome<Vec<Published>>, StoreError>;

    /// Records a verified revocation by `issuer`: a tombstone, and a removal event for every
    /// PEP that had the rule — unless the rule is held under another issuer.
    async fn revoke(
        &self,
        rule_id: &str,
        issuer: &str,
        reason: &str,
        revoked_at: i64,
        now: i64,
    ) -> Result<Outcome<Revoked>, StoreError>;

    /// Applies time: releases targets whose release time has come and removes rules past
    /// `not_after` everywhere.
    async fn advance(&self, now: i64) -> Result<Outcome<()>, StoreError>;

    /// What `pep` must apply to go from revision `since` to its head (only the last event of
    /// each rule counts; `since` 0 or beyond the head is a full snapshot), upserts as stored.
    async fn changes(&self, pep: &str, since: u64) -> Result<RawChanges, StoreError>;

    /// Rules neither revoked nor expired, optionally only those targeting `pep`.
    async fn list(&self, pep: Option<&str>) -> Result<Vec<ListedRule>, StoreError>;

    /// Every PEP with an event log and its head revision.
    async fn heads(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// Triage of a denial report in one transaction: stored, or folded into an identical one
    /// seen within `window` seconds; then every rule still pending for `pep` that `allows` is
    /// released to it at once, and the report marked as answered by them.
    async fn triage_exception(
        &self,
        pep: &str,
        report: &DenialReport,
        now: i64,
        window: i64,
        allows: WouldAllow,
    ) -> Result<Outcome<ExceptionOutcome>, StoreError>;

    /// Stored exceptions with id > `after`; only open ones unless `all`.
    async fn exceptions(&self, after: i64, all: bool) -> Result<Vec<ExceptionRecord>, StoreError>;

    /// The PEPs whose log grew through any writer of this store, this process's included, as
    /// commits are seen (taken once; later calls get `None`); an empty set says time-driven
    /// work may have been added (ask [`RuleStore::advance`] again). `None` when this process
    /// is the only writer (SQLite: one process per file), so [`Outcome`] tells everything.
    fn remote_changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Touched>> {
        None
    }
}

/// Parses the upserts of a [`RawChanges`].
pub fn parse_changes(raw: RawChanges) -> Result<Changes, StoreError> {
    let upserts = raw
        .upserts
        .iter()
        .map(|r| parse_signed("<stream>", r.get()))
        .collect::<Result<_, _>>()?;
    Ok(Changes {
        pep_id: raw.pep_id,
        revision: raw.revision,
        reset: raw.reset,
        upserts,
        removals: raw.removals,
    })
}

fn parse_signed(id: &str, text: &str) -> Result<SignedRule, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
        id: id.to_owned(),
        source,
    })
}

pub(crate) fn raw(id: &str, text: String) -> Result<Box<serde_json::value::RawValue>, StoreError> {
    serde_json::value::RawValue::from_string(text).map_err(|source| StoreError::Corrupt {
        id: id.to_owned(),
        source,
    })
}

pub(crate) fn action_str(action: authz::Action) -> String {
    match serde_json::to_value(action) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{action:?}").to_lowercase(),
    }
}

/// Identity of a report for deduplication: every field, unambiguously framed.
pub(crate) fn dedup_key(pep: &str, r: &DenialReport) -> String {
    let mut h = blake3::Hasher::new();
    let action = action_str(r.action);
    for part in [
        pep,
        &r.participant,
        &r.application_digest,
        &r.device,
        &r.asset_path,
        &r.asset_scope,
        &action,
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// Where a newly stored rule starts at each of its targets, the same on every engine: `removed`
/// when already revoked (by its own issuer) or expired, `released` when its release time has
/// come (the caller appends the upsert events), else `pending`; and what publishing it was.
pub(crate) struct TargetStart {
    pub state: &'static str,
    pub release_now: bool,
    pub published: Published,
}

pub(crate) fn initial_target_state(
    revoked: bool,
    not_after: i64,
    release_at: i64,
    now: i64,
) -> TargetStart {
    let inactive = revoked || not_after <= now;
    let release_now = !inactive && release_at <= now;
    let (state, published) = if inactive {
        ("removed", Published::Inactive)
    } else if release_now {
        ("released", Published::Stored)
    } else {
        ("pending", Published::Stored)
    };
    TargetStart {
        state,
        release_now,
        published,
    }
}

/// A rule's target PEPs, each once, in a fixed order (events are appended in it).
pub(crate) fn distinct_targets(rule: &Rule) -> Vec<&String> {
    let mut targets: Vec<&String> = rule.targets.iter().collect();
    targets.sort();
    targets.dedup();
    targets
}
