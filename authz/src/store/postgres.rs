//! The PostgreSQL engine of the authz store: the SQLite engine's tables in schema `authz` of a
//! database that any number of authz replicas share.
//!
//! Every write is one transaction that first takes the authz write lock (a transaction-level
//! advisory lock), so decisions run one at a time across replicas as on SQLite's one
//! connection: what a decision read (policies, requests, rules) cannot change before it
//! commits. Insertion order (SQLite's `rowid`) is an `ord` identity column.
//!
//! Each replica runs its own outbox delivery, so two replicas may deliver one entry twice, or
//! an older one after a newer: ARDS takes both (a publish it holds is unchanged, a revocation
//! leaves a tombstone that a later publish of the rule cannot pass).

use deadpool_postgres::{Pool, Transaction};

use super::{
    AuthzStore, Decide, Outgoing, Reads, RequestRow, RuleRow, Seen, Status, StoreError, Writes,
};
use crate::global::GlobalPolicy;
use crate::pg::Target;
use crate::rule::SignedRule;
use crate::service::ServiceError;
use crate::wire::{PublishRules, Revocation};

/// The PostgreSQL schema holding authz's tables.
pub const SCHEMA: &str = "authz";
/// Serialises authz's writes across replicas.
const WRITE_LOCK: i64 = crate::pg::lock_key("csap.authz.writes");

/// The schema, one step per version (`crate::pg::migrate`). Append only; version numbers
/// count per engine.
const MIGRATIONS: &[&str] = &[SCHEMA_1, catalog::SCHEMA_2];

mod catalog;

const SCHEMA_1: &str = "
CREATE TABLE requests (
  ord BIGINT GENERATED ALWAYS AS IDENTITY,
  id TEXT PRIMARY KEY,
  body TEXT NOT NULL,
  normalized TEXT,
  status TEXT NOT NULL,
  reasons TEXT NOT NULL DEFAULT '[]',
  change_refused TEXT NOT NULL DEFAULT '[]',
  revision BIGINT NOT NULL,
  next_rule BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  owner TEXT NOT NULL DEFAULT 'admin:admin'
);
CREATE INDEX requests_status ON requests(status, ord);
CREATE TABLE rules (
  ord BIGINT GENERATED ALWAYS AS IDENTITY,
  id TEXT PRIMARY KEY,
  request_id TEXT NOT NULL REFERENCES requests(id),
  signed TEXT NOT NULL,
  not_after BIGINT NOT NULL,
  issued_at BIGINT NOT NULL,
  revoked_at BIGINT,
  revoke_reason TEXT
);
CREATE INDEX rules_by_request ON rules(request_id, ord);
CREATE TABLE policies (
  ord BIGINT GENERATED ALWAYS AS IDENTITY,
  id TEXT PRIMARY KEY,
  body TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE TABLE outbox (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  kind TEXT NOT NULL,
  body TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  attempts BIGINT NOT NULL DEFAULT 0,
  last_error TEXT
);
";

/// The authz store on PostgreSQL.
pub struct PgAuthzStore {
    pool: Pool,
}

impl PgAuthzStore {
    /// Connects (a pool of at most `pool_size`) and migrates schema `authz`.
    pub async fn connect(target: &Target, pool_size: usize) -> Result<Self, StoreError> {
        let pool = target.pool(SCHEMA, pool_size)?;
        crate::pg::migrate(&pool, SCHEMA, MIGRATIONS).await?;
        Ok(Self { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        Ok(self.pool.get().await.map_err(crate::pg::PgError::from)?)
    }
}

/// Begins a read of one snapshot: what it reads, one commit left (requests with their rules).
async fn begin_snapshot(
    client: &mut deadpool_postgres::Client,
) -> Result<Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg)
}

/// Begins a write: a transaction holding the authz write lock.
async fn begin_write(
    client: &mut deadpool_postgres::Client,
) -> Result<Transaction<'_>, StoreError> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await
        .map_err(pg)?;
    Ok(tx)
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(e.into())
}

async fn policies(c: &impl tokio_postgres::GenericClient) -> Result<Vec<GlobalPolicy>, StoreError> {
    let rows = c
        .query("SELECT body FROM policies ORDER BY ord", &[])
        .await
        .map_err(pg)?;
    rows.iter()
        .map(|r| serde_json::from_str(r.get(0)).map_err(StoreError::from))
        .collect()
}

async fn get_request(
    c: &impl tokio_postgres::GenericClient,
    id: &str,
) -> Result<Option<RequestRow>, StoreError> {
    let row = c
        .query_opt(
            "SELECT body, normalized, status, reasons, change_refused, revision, next_rule,
                    created_at, updated_at
             FROM requests WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(pg)?;
    let Some(r) = row else { return Ok(None) };
    let normalized: Option<&str> = r.get(1);
    Ok(Some(RequestRow {
        id: id.to_string(),
        body: serde_json::from_str(r.get(0))?,
        normalized: normalized.map(serde_json::from_str).transpose()?,
        status: Status::parse(r.get(2)),
        reasons: serde_json::from_str(r.get(3))?,
        change_refused: serde_json::from_str(r.get(4))?,
        revision: r.get(5),
        next_rule: r.get::<_, i64>(6) as u64,
        created_at: r.get(7),
        updated_at: r.get(8),
    }))
}

async fn rules_of(
    c: &impl tokio_postgres::GenericClient,
    request_id: &str,
) -> Result<Vec<RuleRow>, StoreError> {
    let rows = c
        .query(
            "SELECT signed, issued_at, revoked_at, revoke_reason FROM rules
             WHERE request_id = $1 ORDER BY ord",
            &[&request_id],
        )
        .await
        .map_err(pg)?;
    rows.iter()
        .map(|r| {
            Ok(RuleRow {
                signed: serde_json::from_str(r.get(0))?,
                issued_at: r.get(1),
                revoked_at: r.get(2),
                revoke_reason: r.get(3),
            })
        })
        .collect()
}

async fn requests_with_status(
    c: &impl tokio_postgres::GenericClient,
    status: Status,
) -> Result<Vec<RequestRow>, StoreError> {
    let rows = c
        .query(
            "SELECT id FROM requests WHERE status = $1 ORDER BY ord",
            &[&status.as_str()],
        )
        .await
        .map_err(pg)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        if let Some(row) = get_request(c, r.get(0)).await? {
            out.push(row);
        }
    }
    Ok(out)
}

async fn enqueue(tx: &Transaction<'_>, kind: &str, body: &str, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO outbox (kind, body, created_at) VALUES ($1, $2, $3)",
        &[&kind, &body, &now],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

async fn put_request(tx: &Transaction<'_>, row: &RequestRow) -> Result<(), StoreError> {
    let normalized = row
        .normalized
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    tx.execute(
        "INSERT INTO requests (id, body, normalized, status, reasons, change_refused, revision,
                               next_rule, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT(id) DO UPDATE SET body = $2, normalized = $3, status = $4, reasons = $5,
           change_refused = $6, revision = $7, next_rule = $8, updated_at = $10",
        &[
            &row.id,
            &serde_json::to_string(&row.body)?,
            &normalized,
            &row.status.as_str(),
            &serde_json::to_string(&row.reasons)?,
            &serde_json::to_string(&row.change_refused)?,
            &row.revision,
            &(row.next_rule as i64),
            &row.created_at,
            &row.updated_at,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Applies a decision's writes inside `tx`, in [`Writes`] order.
async fn write(tx: &Transaction<'_>, w: &Writes) -> Result<(), StoreError> {
    if let Some(p) = &w.policy {
        tx.execute(
            "INSERT INTO policies (id, body, created_at) VALUES ($1, $2, $3)",
            &[&p.id, &serde_json::to_string(p)?, &p.created_at],
        )
        .await
        .map_err(pg)?;
    }
    for (i, row) in w.requests.iter().enumerate() {
        put_request(tx, row).await?;
        if let (0, Some(owner)) = (i, &w.owner) {
            tx.execute(
                "UPDATE requests SET owner = $2 WHERE id = $1",
                &[&row.id, owner],
            )
            .await
            .map_err(pg)?;
        }
    }
    for r in &w.revoked {
        tx.execute(
            "UPDATE rules SET revoked_at = $2, revoke_reason = $3
             WHERE id = $1 AND revoked_at IS NULL",
            &[&r.rule_id, &r.revoked_at, &r.reason],
        )
        .await
        .map_err(pg)?;
        enqueue(tx, "revoke", &serde_json::to_string(r)?, r.revoked_at).await?;
    }
    if !w.issued.is_empty() {
        for r in &w.issued {
            tx.execute(
                "INSERT INTO rules (id, request_id, signed, not_after, issued_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &r.rule.id,
                    &r.rule.request_id,
                    &serde_json::to_string(r)?,
                    &r.rule.not_after,
                    &w.issued_at,
                ],
            )
            .await
            .map_err(pg)?;
        }
        let batch = PublishRules {
            rules: w.issued.clone(),
        };
        enqueue(tx, "publish", &serde_json::to_string(&batch)?, w.issued_at).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl AuthzStore for PgAuthzStore {
    async fn owner(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT owner FROM requests WHERE id = $1", &[&id])
            .await
            .map_err(pg)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn request(&self, id: &str) -> Result<Option<(RequestRow, Vec<RuleRow>)>, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_snapshot(&mut client).await?;
        let Some(row) = get_request(&*tx, id).await? else {
            return Ok(None);
        };
        let rules = rules_of(&*tx, id).await?;
        tx.commit().await.map_err(pg)?;
        Ok(Some((row, rules)))
    }

    async fn policies(&self) -> Result<Vec<GlobalPolicy>, StoreError> {
        policies(&**self.client().await?).await
    }

    async fn requests(
        &self,
        owner: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(RequestRow, Vec<RuleRow>)>, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_snapshot(&mut client).await?;
        let ids = tx
            .query(
                "SELECT id FROM requests WHERE $1::TEXT IS NULL OR owner = $1
                 ORDER BY ord DESC LIMIT $2",
                &[&owner, &i64::from(limit)],
            )
            .await
            .map_err(pg)?;
        let mut out = Vec::with_capacity(ids.len());
        for r in &ids {
            let id: &str = r.get(0);
            if let Some(row) = get_request(&*tx, id).await? {
                let rules = rules_of(&*tx, id).await?;
                out.push((row, rules));
            }
        }
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    async fn live_rules(&self, now: i64, pep: Option<&str>) -> Result<Vec<SignedRule>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT signed FROM rules WHERE revoked_at IS NULL AND not_after > $1 ORDER BY ord",
                &[&now],
            )
            .await
            .map_err(pg)?;
        let mut out = Vec::new();
        for r in &rows {
            let signed: SignedRule = serde_json::from_str(r.get(0))?;
            if pep.is_none_or(|p| signed.rule.targets.iter().any(|t| t == p)) {
                out.push(signed);
            }
        }
        Ok(out)
    }

    async fn decide(&self, reads: Reads, decide: Decide) -> Result<Writes, ServiceError> {
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        let mut seen = Seen {
            policies: policies(&*tx).await?,
            ..Default::default()
        };
        if let Some(id) = &reads.request {
            if let Some(row) = get_request(&*tx, id).await? {
                seen.request = Some((row, rules_of(&*tx, id).await?));
            }
        }
        if reads.active {
            for row in requests_with_status(&*tx, Status::Active).await? {
                let rules = rules_of(&*tx, &row.id).await?;
                seen.active.push((row, rules));
            }
        }
        let writes = decide(seen)?;
        write(&tx, &writes).await?;
        tx.commit().await.map_err(pg)?;
        Ok(writes)
    }

    async fn remove_policy(&self, id: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        let n = tx
            .execute("DELETE FROM policies WHERE id = $1", &[&id])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(n > 0)
    }

    async fn outbox_next(&self) -> Result<Option<(i64, Outgoing)>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT seq, kind, body FROM outbox ORDER BY seq LIMIT 1",
                &[],
            )
            .await
            .map_err(pg)?;
        let Some(r) = row else { return Ok(None) };
        let out = if r.get::<_, &str>(1) == "publish" {
            Outgoing::Publish(serde_json::from_str(r.get(2))?)
        } else {
            Outgoing::Revoke(serde_json::from_str::<Revocation>(r.get(2))?)
        };
        Ok(Some((r.get(0), out)))
    }

    async fn outbox_len(&self) -> Result<i64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT COUNT(*) FROM outbox", &[])
            .await
            .map_err(pg)?;
        Ok(row.get(0))
    }

    async fn outbox_done(&self, seq: i64) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("DELETE FROM outbox WHERE seq = $1", &[&seq])
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn outbox_failed(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = $1",
                &[&seq, &error],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }
}
