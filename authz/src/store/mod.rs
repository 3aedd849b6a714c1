//! The authz service's store layer: requests (status, reasons), rules issued and their
//! revocations, global policies, and the outbox of deliveries to ARDS not yet acknowledged —
//! as operations in the service's words ([`AuthzStore`]), with SQLite
//! ([`sqlite::SqliteAuthzStore`]) the embedded default and PostgreSQL
//! ([`postgres::PgAuthzStore`]) for replicas sharing one database.
//!
//! An engine keeps these rules:
//! - A state change and the outbox entries that announce it are written in one transaction, so
//!   a crash can delay delivery to ARDS but never lose or invent one.
//! - A decision is made inside the transaction that writes it ([`AuthzStore::decide`]): what
//!   it read (the global policies, the request and its rules) cannot change before it commits,
//!   so a request is never approved against policies another decision just replaced.
//! - Outbox entries are delivered in the order they were written.
//! - Migrations are versioned per engine (SQLite: `crate::migrate`; PostgreSQL:
//!   `crate::pg::migrate`).

pub mod catalog;
pub mod postgres;
pub mod sqlite;

pub use catalog::{AssetMapping, Catalog, Organization};

use crate::global::{GlobalPolicy, Reason};
use crate::rule::SignedRule;
use crate::service::ServiceError;
use crate::wire::{PublishRules, Revocation};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] crate::pg::PgError),
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
    #[error("database schema version {0} is newer than this build understands")]
    FutureSchema(i64),
    #[error("store task failed: {0}")]
    Worker(String),
}

impl From<crate::migrate::MigrateError> for StoreError {
    fn from(e: crate::migrate::MigrateError) -> Self {
        match e {
            crate::migrate::MigrateError::Sqlite(e) => StoreError::Sql(e),
            crate::migrate::MigrateError::FutureSchema(v) => StoreError::FutureSchema(v),
        }
    }
}

/// Request lifecycle.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Rules issued and live.
    Active,
    /// Refused by global security policies; no rules issued.
    Refused,
    /// Cancelled by workflow management; rules revoked.
    Cancelled,
    /// A global policy added later contradicts it; rules revoked.
    Revoked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Refused => "refused",
            Status::Cancelled => "cancelled",
            Status::Revoked => "revoked",
        }
    }
    pub(crate) fn parse(s: &str) -> Status {
        match s {
            "active" => Status::Active,
            "refused" => Status::Refused,
            "cancelled" => Status::Cancelled,
            // Unknown values only arise from manual edits; treat them as not active.
            _ => Status::Revoked,
        }
    }
}

/// One stored request.
#[derive(Clone, Debug)]
pub struct RequestRow {
    pub id: String,
    /// The request as submitted (wire JSON).
    pub body: serde_json::Value,
    /// The normalized request (None when it was refused before normalization succeeded).
    pub normalized: Option<crate::request::PolicyRequest>,
    pub status: Status,
    pub reasons: Vec<Reason>,
    pub change_refused: Vec<Reason>,
    pub revision: i64,
    pub next_rule: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One rule as stored.
#[derive(Clone, Debug)]
pub struct RuleRow {
    pub signed: SignedRule,
    pub issued_at: i64,
    pub revoked_at: Option<i64>,
    pub revoke_reason: Option<String>,
}

/// An outbox entry.
#[derive(Clone, Debug)]
pub enum Outgoing {
    Publish(PublishRules),
    Revoke(Revocation),
}

/// What a decision reads, besides the global policies (always read).
#[derive(Debug, Clone, Default)]
pub struct Reads {
    /// This request and its rules.
    pub request: Option<String>,
    /// Every active request and its rules.
    pub active: bool,
}

/// What a decision was made on, as [`Reads`] asked.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub policies: Vec<GlobalPolicy>,
    pub request: Option<(RequestRow, Vec<RuleRow>)>,
    pub active: Vec<(RequestRow, Vec<RuleRow>)>,
}

/// What a decision writes, in this order: a new policy, request rows (the first one's owner
/// recorded with `owner`, at submission), revocations of rules (queued for ARDS), then new
/// rules (recorded and queued for publication).
#[derive(Debug, Clone, Default)]
pub struct Writes {
    pub policy: Option<GlobalPolicy>,
    pub requests: Vec<RequestRow>,
    pub owner: Option<String>,
    pub revoked: Vec<Revocation>,
    pub issued: Vec<SignedRule>,
    /// When the new rules were issued (the decision's clock).
    pub issued_at: i64,
}

/// A decision: from what it saw to what it writes, or a refusal that writes nothing.
pub type Decide = Box<dyn FnOnce(Seen) -> Result<Writes, ServiceError> + Send>;

#[async_trait::async_trait]
pub trait AuthzStore: Catalog {
    /// Who submitted request `id` (`role:name` of the principal), if it exists.
    async fn owner(&self, id: &str) -> Result<Option<String>, StoreError>;
    /// A request and every rule issued for it.
    async fn request(&self, id: &str) -> Result<Option<(RequestRow, Vec<RuleRow>)>, StoreError>;
    async fn policies(&self) -> Result<Vec<GlobalPolicy>, StoreError>;
    /// The newest `limit` requests (newest first) with their rules; only those submitted by
    /// `owner` (`role:name`) when given.
    async fn requests(
        &self,
        owner: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(RequestRow, Vec<RuleRow>)>, StoreError>;
    /// Rules not revoked and not yet expired at `now`, optionally only those targeting `pep`.
    async fn live_rules(&self, now: i64, pep: Option<&str>) -> Result<Vec<SignedRule>, StoreError>;
    /// Reads what `reads` names, lets `decide` decide on it, and writes what it returns, in
    /// one transaction; returns what was written.
    async fn decide(&self, reads: Reads, decide: Decide) -> Result<Writes, ServiceError>;
    /// Deletes a global policy; false if it did not exist.
    async fn remove_policy(&self, id: &str) -> Result<bool, StoreError>;
    /// The oldest undelivered outbox entry.
    async fn outbox_next(&self) -> Result<Option<(i64, Outgoing)>, StoreError>;
    async fn outbox_len(&self) -> Result<i64, StoreError>;
    async fn outbox_done(&self, seq: i64) -> Result<(), StoreError>;
    async fn outbox_failed(&self, seq: i64, error: &str) -> Result<(), StoreError>;
}
