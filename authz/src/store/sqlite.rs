//! The embedded engine of the authz store: one SQLite file. [`Db`] is the synchronous core on
//! one connection; [`SqliteAuthzStore`] runs it on the blocking pool as an [`AuthzStore`].

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{
    AuthzStore, Decide, Outgoing, Reads, RequestRow, RuleRow, Seen, Status, StoreError, Writes,
};
use crate::blocking::Serialized;
use crate::global::GlobalPolicy;
use crate::migrate::Step;
use crate::rule::SignedRule;
use crate::service::ServiceError;
use crate::wire::{PublishRules, Revocation};

/// The synchronous core: one connection. Not `Sync`: [`SqliteAuthzStore`] keeps it behind a
/// mutex.
pub struct Db {
    conn: Connection,
}

/// The schema, one step per version (`authz::migrate`). Append only; the steps are written to
/// also adopt a database made before versioning (they create only what is missing).
const MIGRATIONS: &[Step] = &[
    Step::Sql(SCHEMA_1),
    Step::Code(add_owner_column),
    Step::Sql(catalog::SCHEMA_3),
];

mod catalog;

const SCHEMA_1: &str = "
CREATE TABLE IF NOT EXISTS requests (
  id TEXT PRIMARY KEY,
  body TEXT NOT NULL,
  normalized TEXT,
  status TEXT NOT NULL,
  reasons TEXT NOT NULL DEFAULT '[]',
  change_refused TEXT NOT NULL DEFAULT '[]',
  revision INTEGER NOT NULL,
  next_rule INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rules (
  id TEXT PRIMARY KEY,
  request_id TEXT NOT NULL REFERENCES requests(id),
  signed TEXT NOT NULL,
  not_after INTEGER NOT NULL,
  issued_at INTEGER NOT NULL,
  revoked_at INTEGER,
  revoke_reason TEXT
);
CREATE INDEX IF NOT EXISTS rules_by_request ON rules(request_id);
CREATE TABLE IF NOT EXISTS policies (
  id TEXT PRIMARY KEY,
  body TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL,
  body TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT
);
";

impl Db {
    /// Opens (creating and migrating) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        authz_migrate(&mut conn)?;
        Ok(Self { conn })
    }

    /// Who submitted request `id` (`role:name` of the principal), if it exists.
    pub fn owner(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT owner FROM requests WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn transaction(&mut self) -> Result<Tx<'_>, StoreError> {
        Ok(Tx(self.conn.transaction()?))
    }

    pub fn request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        get_request(&self.conn, id)
    }

    /// The newest `limit` requests, newest first (of `owner` only, when given).
    pub fn requests(&self, owner: Option<&str>, limit: u32) -> Result<Vec<RequestRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id FROM requests WHERE ?1 IS NULL OR owner = ?1 ORDER BY rowid DESC LIMIT ?2",
        )?;
        let ids: Vec<String> = stmt
            .query_map(params![owner, limit], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        ids.iter()
            .filter_map(|id| get_request(&self.conn, id).transpose())
            .collect()
    }

    pub fn requests_with_status(&self, status: Status) -> Result<Vec<RequestRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM requests WHERE status = ?1 ORDER BY rowid")?;
        let ids: Vec<String> = stmt
            .query_map([status.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        ids.iter()
            .filter_map(|id| get_request(&self.conn, id).transpose())
            .collect()
    }

    pub fn rules_of(&self, request_id: &str) -> Result<Vec<RuleRow>, StoreError> {
        rules_of(&self.conn, request_id)
    }

    /// Rules not revoked and not yet expired at `now`, optionally only those targeting `pep`.
    pub fn live_rules(&self, now: i64, pep: Option<&str>) -> Result<Vec<SignedRule>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT signed FROM rules WHERE revoked_at IS NULL AND not_after > ?1 ORDER BY rowid",
        )?;
        let rows: Vec<String> = stmt
            .query_map([now], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for text in rows {
            let signed: SignedRule = serde_json::from_str(&text)?;
            if pep.is_none_or(|p| signed.rule.targets.iter().any(|t| t == p)) {
                out.push(signed);
            }
        }
        Ok(out)
    }

    pub fn policies(&self) -> Result<Vec<GlobalPolicy>, StoreError> {
        policies(&self.conn)
    }

    /// The oldest undelivered outbox entry.
    pub fn outbox_next(&self) -> Result<Option<(i64, Outgoing)>, StoreError> {
        let row: Option<(i64, String, String)> = self
            .conn
            .query_row(
                "SELECT seq, kind, body FROM outbox ORDER BY seq LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((seq, kind, body)) = row else {
            return Ok(None);
        };
        let out = if kind == "publish" {
            Outgoing::Publish(serde_json::from_str(&body)?)
        } else {
            Outgoing::Revoke(serde_json::from_str(&body)?)
        };
        Ok(Some((seq, out)))
    }

    pub fn outbox_len(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?)
    }

    pub fn outbox_done(&self, seq: i64) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
        Ok(())
    }

    pub fn outbox_failed(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
            params![seq, error],
        )?;
        Ok(())
    }
}

fn authz_migrate(conn: &mut Connection) -> Result<(), StoreError> {
    crate::migrate::migrate(conn, MIGRATIONS)?;
    Ok(())
}

/// Requests made before principals existed were made with the (then only) API token, which
/// only admins held: they belong to `admin:admin`. (An unversioned database may have the
/// column already.)
fn add_owner_column(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    if !crate::migrate::has_column(tx, "requests", "owner")? {
        tx.execute_batch(
            "ALTER TABLE requests ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin:admin'",
        )?;
    }
    Ok(())
}

fn policies(conn: &Connection) -> Result<Vec<GlobalPolicy>, StoreError> {
    let mut stmt = conn.prepare("SELECT body FROM policies ORDER BY rowid")?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    rows.iter()
        .map(|t| serde_json::from_str(t).map_err(StoreError::from))
        .collect()
}

fn get_request(conn: &Connection, id: &str) -> Result<Option<RequestRow>, StoreError> {
    type Raw = (
        String,
        Option<String>,
        String,
        String,
        String,
        i64,
        i64,
        i64,
        i64,
    );
    let raw: Option<Raw> = conn
        .query_row(
            "SELECT body, normalized, status, reasons, change_refused, revision, next_rule, created_at, updated_at
             FROM requests WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            },
        )
        .optional()?;
    let Some((body, normalized, status, reasons, change_refused, revision, next_rule, c, u)) = raw
    else {
        return Ok(None);
    };
    Ok(Some(RequestRow {
        id: id.to_string(),
        body: serde_json::from_str(&body)?,
        normalized: normalized.map(|n| serde_json::from_str(&n)).transpose()?,
        status: Status::parse(&status),
        reasons: serde_json::from_str(&reasons)?,
        change_refused: serde_json::from_str(&change_refused)?,
        revision,
        next_rule: next_rule as u64,
        created_at: c,
        updated_at: u,
    }))
}

fn rules_of(conn: &Connection, request_id: &str) -> Result<Vec<RuleRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT signed, issued_at, revoked_at, revoke_reason FROM rules WHERE request_id = ?1 ORDER BY rowid",
    )?;
    let rows: Vec<(String, i64, Option<i64>, Option<String>)> = stmt
        .query_map([request_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(s, issued_at, revoked_at, revoke_reason)| {
            Ok(RuleRow {
                signed: serde_json::from_str(&s)?,
                issued_at,
                revoked_at,
                revoke_reason,
            })
        })
        .collect()
}

/// A write transaction; dropped without `commit` it rolls back.
pub struct Tx<'a>(Transaction<'a>);

impl Tx<'_> {
    pub fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit()?)
    }

    pub fn request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        get_request(&self.0, id)
    }

    pub fn rules_of(&self, request_id: &str) -> Result<Vec<RuleRow>, StoreError> {
        rules_of(&self.0, request_id)
    }

    /// Records who submitted request `id` (written once, at submission).
    pub fn set_owner(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE requests SET owner = ?2 WHERE id = ?1",
            params![id, owner],
        )?;
        Ok(())
    }

    pub fn put_request(&self, row: &RequestRow) -> Result<(), StoreError> {
        self.0.execute(
            "INSERT INTO requests (id, body, normalized, status, reasons, change_refused, revision, next_rule, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT(id) DO UPDATE SET body = ?2, normalized = ?3, status = ?4, reasons = ?5,
               change_refused = ?6, revision = ?7, next_rule = ?8, updated_at = ?10",
            params![
                row.id,
                serde_json::to_string(&row.body)?,
                row.normalized
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()?,
                row.status.as_str(),
                serde_json::to_string(&row.reasons)?,
                serde_json::to_string(&row.change_refused)?,
                row.revision,
                row.next_rule as i64,
                row.created_at,
                row.updated_at,
            ],
        )?;
        Ok(())
    }

    /// Records issued rules and queues their publication.
    pub fn issue_rules(&self, rules: &[SignedRule], now: i64) -> Result<(), StoreError> {
        if rules.is_empty() {
            return Ok(());
        }
        for r in rules {
            self.0.execute(
                "INSERT INTO rules (id, request_id, signed, not_after, issued_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    r.rule.id,
                    r.rule.request_id,
                    serde_json::to_string(r)?,
                    r.rule.not_after,
                    now
                ],
            )?;
        }
        let batch = PublishRules {
            rules: rules.to_vec(),
        };
        self.enqueue("publish", &serde_json::to_string(&batch)?, now)
    }

    /// Marks a rule revoked and queues the signed revocation.
    pub fn revoke_rule(&self, revocation: &Revocation) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE rules SET revoked_at = ?2, revoke_reason = ?3 WHERE id = ?1 AND revoked_at IS NULL",
            params![revocation.rule_id, revocation.revoked_at, revocation.reason],
        )?;
        self.enqueue(
            "revoke",
            &serde_json::to_string(revocation)?,
            revocation.revoked_at,
        )
    }

    fn enqueue(&self, kind: &str, body: &str, now: i64) -> Result<(), StoreError> {
        self.0.execute(
            "INSERT INTO outbox (kind, body, created_at) VALUES (?1, ?2, ?3)",
            params![kind, body, now],
        )?;
        Ok(())
    }

    pub fn put_policy(&self, p: &GlobalPolicy) -> Result<(), StoreError> {
        self.0.execute(
            "INSERT INTO policies (id, body, created_at) VALUES (?1, ?2, ?3)",
            params![p.id, serde_json::to_string(p)?, p.created_at],
        )?;
        Ok(())
    }

    /// Deletes a policy; false if it did not exist.
    pub fn delete_policy(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.0.execute("DELETE FROM policies WHERE id = ?1", [id])? > 0)
    }

    pub fn policies(&self) -> Result<Vec<GlobalPolicy>, StoreError> {
        policies(&self.0)
    }

    pub fn requests_with_status(&self, status: Status) -> Result<Vec<RequestRow>, StoreError> {
        let mut stmt = self
            .0
            .prepare("SELECT id FROM requests WHERE status = ?1 ORDER BY rowid")?;
        let ids: Vec<String> = stmt
            .query_map([status.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        ids.iter()
            .filter_map(|id| get_request(&self.0, id).transpose())
            .collect()
    }
}

/// [`Db`] as an [`AuthzStore`]: each operation on the blocking pool, one at a time on the one
/// connection.
#[derive(Clone)]
pub struct SqliteAuthzStore {
    db: Serialized<Db>,
}

impl SqliteAuthzStore {
    /// Opens (creating and migrating) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: Serialized::new(Db::open(path)?),
        })
    }

    async fn with<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        self.db
            .run(f)
            .await
            .map_err(|e| E::from(StoreError::Worker(e.to_string())))?
    }
}

/// Applies a decision's writes inside `tx`, in [`Writes`] order.
fn write(tx: &Tx<'_>, w: &Writes) -> Result<(), StoreError> {
    if let Some(p) = &w.policy {
        tx.put_policy(p)?;
    }
    for (i, row) in w.requests.iter().enumerate() {
        tx.put_request(row)?;
        if let (0, Some(owner)) = (i, &w.owner) {
            tx.set_owner(&row.id, owner)?;
        }
    }
    for r in &w.revoked {
        tx.revoke_rule(r)?;
    }
    tx.issue_rules(&w.issued, w.issued_at)
}

#[async_trait::async_trait]
impl AuthzStore for SqliteAuthzStore {
    async fn owner(&self, id: &str) -> Result<Option<String>, StoreError> {
        let id = id.to_owned();
        self.with(move |db| db.owner(&id)).await
    }

    async fn request(&self, id: &str) -> Result<Option<(RequestRow, Vec<RuleRow>)>, StoreError> {
        let id = id.to_owned();
        self.with(move |db| {
            let Some(row) = db.request(&id)? else {
                return Ok(None);
            };
            Ok(Some((row, db.rules_of(&id)?)))
        })
        .await
    }

    async fn policies(&self) -> Result<Vec<GlobalPolicy>, StoreError> {
        self.with(|db| db.policies()).await
    }

    async fn requests(
        &self,
        owner: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(RequestRow, Vec<RuleRow>)>, StoreError> {
        let owner = owner.map(str::to_owned);
        self.with(move |db| {
            db.requests(owner.as_deref(), limit)?
                .into_iter()
                .map(|row| {
                    let rules = db.rules_of(&row.id)?;
                    Ok((row, rules))
                })
                .collect()
        })
        .await
    }

    async fn live_rules(&self, now: i64, pep: Option<&str>) -> Result<Vec<SignedRule>, StoreError> {
        let pep = pep.map(str::to_owned);
        self.with(move |db| db.live_rules(now, pep.as_deref()))
            .await
    }

    async fn decide(&self, reads: Reads, decide: Decide) -> Result<Writes, ServiceError> {
        self.with(move |db| {
            let tx = db.transaction()?;
            let mut seen = Seen {
                policies: tx.policies()?,
                ..Default::default()
            };
            if let Some(id) = &reads.request {
                if let Some(row) = tx.request(id)? {
                    seen.request = Some((row, tx.rules_of(id)?));
                }
            }
            if reads.active {
                for row in tx.requests_with_status(Status::Active)? {
                    let rules = tx.rules_of(&row.id)?;
                    seen.active.push((row, rules));
                }
            }
            let writes = decide(seen)?;
            write(&tx, &writes)?;
            tx.commit()?;
            Ok(writes)
        })
        .await
    }

    async fn remove_policy(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with(move |db| {
            let tx = db.transaction()?;
            let removed = tx.delete_policy(&id)?;
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn outbox_next(&self) -> Result<Option<(i64, Outgoing)>, StoreError> {
        self.with(|db| db.outbox_next()).await
    }

    async fn outbox_len(&self) -> Result<i64, StoreError> {
        self.with(|db| db.outbox_len()).await
    }

    async fn outbox_done(&self, seq: i64) -> Result<(), StoreError> {
        self.with(move |db| db.outbox_done(seq)).await
    }

    async fn outbox_failed(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.with(move |db| db.outbox_failed(seq, &error)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database an older build made (no schema version; with or without the `owner` column
    /// it added ad hoc) is adopted as it is: its rows kept, its requests owned, versioned now.
    #[test]
    fn databases_from_before_versioning_are_adopted() {
        for with_owner in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("authz.sqlite");
            {
                let conn = Connection::open(&path).unwrap();
                conn.execute_batch(SCHEMA_1).unwrap();
                if with_owner {
                    conn.execute_batch(
                        "ALTER TABLE requests ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin:admin'",
                    )
                    .unwrap();
                }
                conn.execute(
                    "INSERT INTO requests (id, body, status, revision, next_rule, created_at, updated_at)
                     VALUES ('req-1', '{}', 'active', 1, 1, 0, 0)",
                    [],
                )
                .unwrap();
            }
            let db = Db::open(&path).unwrap();
            assert_eq!(db.owner("req-1").unwrap().as_deref(), Some("admin:admin"));
            let version: i64 = db
                .conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(version, MIGRATIONS.len() as i64);
            drop(db);
            Db::open(&path).unwrap();
        }
    }
}
