//! The ARDS SQLite schema and [`Db`], the store's synchronous core on one connection: every
//! mutation one transaction, so a crash never leaves a rule released to some of its PEPs' logs
//! and not others; a PEP's head is bumped in the transaction that appends its event
//! (`append_event`), so revisions strictly increase.

use std::path::Path;

use authz::migrate::Step;
use authz::{Rule, SignedRule};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::store::{
    action_str, dedup_key, distinct_targets, initial_target_state, parse_changes, parse_signed,
    raw, Published, Recorded, StoreError, Touched,
};
use crate::wire::{
    Changes, DenialReport, ExceptionRecord, ExceptionStatus, ListedRule, ListedTarget, RawChanges,
    Removal, RemovalReason, TargetState,
};

/// The schema, one step per version (`authz::migrate`). Append only; step 1 is written to
/// also adopt a database made before versioning (it creates only what is missing).
const MIGRATIONS: &[Step] = &[Step::Sql(SCHEMA_1)];

const SCHEMA_1: &str = "
CREATE TABLE IF NOT EXISTS rules(
    id           TEXT PRIMARY KEY,
    issuer       TEXT NOT NULL,
    signed       TEXT NOT NULL,     -- SignedRule as JSON
    not_before   INTEGER NOT NULL,
    not_after    INTEGER NOT NULL,
    release_at   INTEGER NOT NULL,  -- not_before - lead time, fixed at publish
    published_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rules_release ON rules(release_at);
CREATE INDEX IF NOT EXISTS rules_expiry ON rules(not_after);
-- One row per (rule, target PEP): pending -> released -> removed, or pending -> removed.
CREATE TABLE IF NOT EXISTS targets(
    rule_id TEXT NOT NULL REFERENCES rules(id),
    pep_id  TEXT NOT NULL,
    state   TEXT NOT NULL CHECK (state IN ('pending', 'released', 'removed')),
    PRIMARY KEY (rule_id, pep_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS targets_pep ON targets(pep_id, state);
CREATE INDEX IF NOT EXISTS targets_state ON targets(state);
-- Revocations, also of rules not (yet) held: a late publish must never release them.
CREATE TABLE IF NOT EXISTS tombstones(
    rule_id    TEXT PRIMARY KEY,
    issuer     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    revoked_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peps(
    pep_id TEXT PRIMARY KEY,
    head   INTEGER NOT NULL         -- latest revision issued to this PEP
);
CREATE TABLE IF NOT EXISTS events(
    pep_id  TEXT NOT NULL,
    rev     INTEGER NOT NULL,
    rule_id TEXT NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('upsert', 'remove')),
    reason  TEXT,
    at      INTEGER NOT NULL,
    PRIMARY KEY (pep_id, rev)
) WITHOUT ROWID;
-- The delta query keeps only each rule's latest event; this makes that lookup an index probe.
CREATE INDEX IF NOT EXISTS events_rule ON events(pep_id, rule_id, rev);
CREATE TABLE IF NOT EXISTS exceptions(
    id                 INTEGER PRIMARY KEY,
    dedup_key          TEXT NOT NULL,
    pep_id             TEXT NOT NULL,
    participant        TEXT NOT NULL,
    application_digest TEXT NOT NULL,
    device             TEXT NOT NULL,
    asset_path         TEXT NOT NULL,
    asset_scope        TEXT NOT NULL,
    action             TEXT NOT NULL,
    first_seen         INTEGER NOT NULL,
    last_seen          INTEGER NOT NULL,
    count              INTEGER NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('open', 'released')),
    released_rules     TEXT NOT NULL   -- JSON array of rule ids
);
CREATE INDEX IF NOT EXISTS exceptions_dedup ON exceptions(dedup_key, last_seen);
";

/// The SQLite store's synchronous core: one connection. Not `Sync`: [`SqliteRuleStore`] keeps
/// it behind a mutex.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
}

impl Db {
    /// Opens (creating if needed) the store at `path`, in WAL mode with full fsync on commit:
    /// a 2xx to the issuer means the rule survives a power cut.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut conn = conn;
        authz::migrate::migrate(&mut conn, MIGRATIONS)?;
        Ok(Self { conn })
    }

    /// The SQLite journal mode in force (for tests and diagnostics).
    pub fn journal_mode(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))?)
    }

    /// Stores a batch of verified rules in one transaction (all or nothing). Each comes with
    /// its release time; a rule whose release time has come is released at once (its targets'
    /// logs get an upsert). A rule id already held with other content fails the whole batch.
    pub fn publish(
        &mut self,
        batch: &[(SignedRule, i64)],
        now: i64,
        touched: &mut Touched,
    ) -> Result<Vec<Published>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut out = Vec::with_capacity(batch.len());
        let mut local = Touched::new();
        for (signed, release_at) in batch {
            out.push(publish_one(&tx, signed, *release_at, now, &mut local)?);
        }
        tx.commit()?;
        touched.extend(local);
        Ok(out)
    }

    /// Issuer of a held rule, if held.
    pub fn rule_issuer(&self, rule_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT issuer FROM rules WHERE id = ?1", [rule_id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Records a verified revocation: a tombstone, and a removal event for every PEP that had
    /// the rule. Returns whether the rule was held and the PEPs it was removed from.
    pub fn revoke(
        &mut self,
        rule_id: &str,
        issuer: &str,
        reason: &str,
        revoked_at: i64,
        now: i64,
        touched: &mut Touched,
    ) -> Result<(bool, Vec<String>), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO tombstones(rule_id, issuer, reason, revoked_at, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![rule_id, issuer, reason, revoked_at, now],
        )?;
        let known = tx
            .query_row("SELECT 1 FROM rules WHERE id = ?1", [rule_id], |_| Ok(()))
            .optional()?
            .is_some();
        let released: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT pep_id FROM targets WHERE rule_id = ?1 AND state = 'released' ORDER BY pep_id",
            )?;
            let rows = stmt.query_map([rule_id], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        tx.execute(
            "UPDATE targets SET state = 'removed' WHERE rule_id = ?1",
            [rule_id],
        )?;
        for pep in &released {
            let rev = append_event(
                &tx,
                pep,
                rule_id,
                "remove",
                Some(RemovalReason::Revoked),
                now,
            )?;
            touched.insert(pep.clone(), rev);
        }
        tx.commit()?;
        Ok((known, released))
    }

    /// Applies time: releases targets whose release time has come and removes rules past
    /// `not_after` everywhere.
    pub fn advance(&mut self, now: i64, touched: &mut Touched) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        // Expiry first, so a rule whose whole window already passed is never released.
        let expired: Vec<(String, String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT t.rule_id, t.pep_id, t.state FROM targets t JOIN rules r ON r.id = t.rule_id
                 WHERE t.state IN ('pending', 'released') AND r.not_after <= ?1
                 ORDER BY r.not_after, t.rule_id, t.pep_id",
            )?;
            let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (rule_id, pep, state) in &expired {
            tx.execute(
                "UPDATE targets SET state = 'removed' WHERE rule_id = ?1 AND pep_id = ?2",
                params![rule_id, pep],
            )?;
            if state == "released" {
                let rev = append_event(
                    &tx,
                    pep,
                    rule_id,
                    "remove",
                    Some(RemovalReason::Expired),
                    now,
                )?;
                touched.insert(pep.clone(), rev);
            }
        }
        let due: Vec<(String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT t.rule_id, t.pep_id FROM targets t JOIN rules r ON r.id = t.rule_id
                 WHERE t.state = 'pending' AND r.release_at <= ?1 AND r.not_after > ?1
                 ORDER BY r.release_at, t.rule_id, t.pep_id",
            )?;
            let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (rule_id, pep) in &due {
            release_target(&tx, rule_id, pep, now, touched)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The next time [`Db::advance`] has work: the earliest pending release or expiry of
    /// something not yet removed.
    pub fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.conn.query_row(
            "SELECT MIN(CASE t.state WHEN 'pending' THEN MIN(r.release_at, r.not_after) ELSE r.not_after END)
             FROM targets t JOIN rules r ON r.id = t.rule_id
             WHERE t.state IN ('pending', 'released')",
            [],
            |r| r.get(0),
        )?)
    }

    /// Releases one pending rule to one PEP ahead of its time (exception handling).
    /// Returns false when it was not pending for that PEP.
    pub fn release_early(
        &mut self,
        rule_id: &str,
        pep: &str,
        now: i64,
        touched: &mut Touched,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let pending = tx
            .query_row(
                "SELECT 1 FROM targets WHERE rule_id = ?1 AND pep_id = ?2 AND state = 'pending'",
                params![rule_id, pep],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if pending {
            release_target(&tx, rule_id, pep, now, touched)?;
        }
        tx.commit()?;
        Ok(pending)
    }

    /// Rules still pending for `pep` and not yet expired.
    pub fn pending_for(&self, pep: &str, now: i64) -> Result<Vec<Rule>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT r.id, r.signed FROM targets t JOIN rules r ON r.id = t.rule_id
             WHERE t.pep_id = ?1 AND t.state = 'pending' AND r.not_after > ?2
             ORDER BY r.release_at, r.id",
        )?;
        let rows = stmt.query_map(params![pep, now], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, text) = row?;
            out.push(parse_signed(&id, &text)?.rule);
        }
        Ok(out)
    }

    /// Latest revision issued to `pep` (0 if none).
    pub fn head(&self, pep: &str) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT head FROM peps WHERE pep_id = ?1", [pep], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .unwrap_or(0) as u64)
    }

    /// Every PEP with an event log and its head revision.
    pub fn heads(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT pep_id, head FROM peps ORDER BY pep_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What `pep` must apply to go from revision `since` to the head: only the last event of
    /// each rule counts (a rule released then revoked since `since` is just a removal).
    pub fn changes(&mut self, pep: &str, since: u64) -> Result<Changes, StoreError> {
        parse_changes(self.changes_raw(pep, since)?)
    }

    /// [`Db::changes`] with upserts as their stored JSON (no parse per poll).
    pub fn changes_raw(&mut self, pep: &str, since: u64) -> Result<RawChanges, StoreError> {
        let tx = self.conn.transaction()?;
        let head = tx
            .query_row("SELECT head FROM peps WHERE pep_id = ?1", [pep], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .unwrap_or(0) as u64;
        let reset = since == 0 || since > head;
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        if reset {
            let mut stmt = tx.prepare(
                "SELECT r.id, r.signed FROM targets t JOIN rules r ON r.id = t.rule_id
                 WHERE t.pep_id = ?1 AND t.state = 'released' ORDER BY r.id",
            )?;
            let rows = stmt.query_map([pep], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (id, text) = row?;
                upserts.push(raw(&id, text)?);
            }
        } else {
            let mut stmt = tx.prepare(
                "SELECT e.rule_id, e.kind, e.reason, r.signed
                 FROM events e LEFT JOIN rules r ON r.id = e.rule_id
                 WHERE e.pep_id = ?1 AND e.rev > ?2
                   AND e.rev = (SELECT MAX(e2.rev) FROM events e2
                                WHERE e2.pep_id = e.pep_id AND e2.rule_id = e.rule_id)
                 ORDER BY e.rev",
            )?;
            let rows = stmt.query_map(params![pep, since as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })?;
            for row in rows {
                let (id, kind, reason, signed) = row?;
                if kind == "upsert" {
                    let text = signed.unwrap_or_default();
                    upserts.push(raw(&id, text)?);
                } else {
                    let reason = reason
                        .as_deref()
                        .and_then(RemovalReason::parse)
                        .unwrap_or(RemovalReason::Revoked);
                    removals.push(Removal {
                        rule_id: id,
                        reason,
                    });
                }
            }
        }
        tx.commit()?;
        Ok(RawChanges {
            pep_id: pep.to_owned(),
            revision: head,
            reset,
            upserts,
            removals,
        })
    }

    /// Rules neither revoked nor expired, optionally only those targeting `pep`.
    pub fn list(&self, pep: Option<&str>) -> Result<Vec<ListedRule>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT r.id, r.signed, r.release_at, t.pep_id, t.state
             FROM targets t JOIN rules r ON r.id = t.rule_id
             WHERE t.state IN ('pending', 'released') AND (?1 IS NULL OR t.pep_id = ?1)
             ORDER BY r.not_before, r.id, t.pep_id",
        )?;
        let rows = stmt.query_map([pep], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out: Vec<ListedRule> = Vec::new();
        for row in rows {
            let (id, text, release_at, pep_id, state) = row?;
            let state = if state == "released" {
                TargetState::Released
            } else {
                TargetState::Pending
            };
            let target = ListedTarget { pep_id, state };
            match out.last_mut() {
                Some(last) if last.rule.rule.id == id => last.targets.push(target),
                _ => out.push(ListedRule {
                    rule: parse_signed(&id, &text)?,
                    release_at,
                    targets: vec![target],
                }),
            }
        }
        Ok(out)
    }

    /// Stores a denial report, or folds it into an identical one seen within `window` seconds.
    pub fn record_exception(
        &mut self,
        pep: &str,
        report: &DenialReport,
        now: i64,
        window: i64,
    ) -> Result<Recorded, StoreError> {
        let key = dedup_key(pep, report);
        let tx = self.conn.transaction()?;
        let recent: Option<(i64, i64)> = tx
            .query_row(
                "SELECT id, count FROM exceptions WHERE dedup_key = ?1 AND last_seen >= ?2
                 ORDER BY id DESC LIMIT 1",
                params![key, now - window],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let out = if let Some((id, count)) = recent {
            tx.execute(
                "UPDATE exceptions SET count = count + 1, last_seen = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            Recorded::Duplicate {
                id,
                count: count + 1,
            }
        } else {
            tx.execute(
                "INSERT INTO exceptions(dedup_key, pep_id, participant, application_digest, device,
                     asset_path, asset_scope, action, first_seen, last_seen, count, status, released_rules)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, 1, 'open', '[]')",
                params![
                    key,
                    pep,
                    report.participant,
                    report.application_digest,
                    report.device,
                    report.asset_path,
                    report.asset_scope,
                    action_str(report.action),
                    now
                ],
            )?;
            Recorded::New(tx.last_insert_rowid())
        };
        tx.commit()?;
        Ok(out)
    }

    /// Marks an exception as resolved by releasing `rule_ids` early.
    pub fn mark_released(&mut self, id: i64, rule_ids: &[String]) -> Result<(), StoreError> {
        let released = serde_json::to_string(rule_ids).unwrap_or_else(|_| "[]".into());
        self.conn.execute(
            "UPDATE exceptions SET status = 'released', released_rules = ?2 WHERE id = ?1",
            params![id, released],
        )?;
        Ok(())
    }

    /// Stored exceptions with id > `after`; only open ones unless `all`.
    pub fn exceptions(&self, after: i64, all: bool) -> Result<Vec<ExceptionRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, pep_id, participant, application_digest, device, asset_path, asset_scope,
                    action, first_seen, last_seen, count, status, released_rules
             FROM exceptions WHERE id > ?1 AND (?2 OR status = 'open') ORDER BY id LIMIT 10000",
        )?;
        let rows = stmt.query_map(params![after, all], |r| {
            let action: String = r.get(7)?;
            let status: String = r.get(11)?;
            let released: String = r.get(12)?;
            Ok(ExceptionRecord {
                id: r.get(0)?,
                pep_id: r.get(1)?,
                report: DenialReport {
                    participant: r.get(2)?,
                    application_digest: r.get(3)?,
                    device: r.get(4)?,
                    asset_path: r.get(5)?,
                    asset_scope: r.get(6)?,
                    action: serde_json::from_value(serde_json::Value::String(action))
                        .unwrap_or(authz::Action::Read),
                },
                first_seen: r.get(8)?,
                last_seen: r.get(9)?,
                count: r.get(10)?,
                status: if status == "open" {
                    ExceptionStatus::Open
                } else {
                    ExceptionStatus::Released
                },
                released_rules: serde_json::from_str(&released).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn publish_one(
    tx: &Transaction<'_>,
    signed: &SignedRule,
    release_at: i64,
    now: i64,
    touched: &mut Touched,
) -> Result<Published, StoreError> {
    let rule = &signed.rule;
    let existing: Option<String> = tx
        .query_row("SELECT signed FROM rules WHERE id = ?1", [&rule.id], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(text) = existing {
        let held = parse_signed(&rule.id, &text)?;
        if held.rule != *rule {
            return Err(StoreError::Conflict {
                id: rule.id.clone(),
            });
        }
        return Ok(Published::Unchanged);
    }
    let json = serde_json::to_string(signed).map_err(|source| StoreError::Corrupt {
        id: rule.id.clone(),
        source,
    })?;
    tx.execute(
        "INSERT INTO rules(id, issuer, signed, not_before, not_after, release_at, published_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            rule.id,
            rule.issuer,
            json,
            rule.not_before,
            rule.not_after,
            release_at,
            now
        ],
    )?;
    // Only the rule's own issuer can have revoked it ahead of its arrival.
    let revoked = tx
        .query_row(
            "SELECT 1 FROM tombstones WHERE rule_id = ?1 AND issuer = ?2",
            params![rule.id, rule.issuer],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    let start = initial_target_state(revoked, rule.not_after, release_at, now);
    let (state, release_now) = (start.state, start.release_now);
    for pep in distinct_targets(rule) {
        tx.execute(
            "INSERT INTO targets(rule_id, pep_id, state) VALUES (?1, ?2, ?3)",
            params![rule.id, pep, state],
        )?;
        if release_now {
            let rev = append_event(tx, pep, &rule.id, "upsert", None, now)?;
            touched.insert(pep.clone(), rev);
        }
    }
    Ok(start.published)
}

/// Marks one target released and appends its upsert event.
fn release_target(
    tx: &Transaction<'_>,
    rule_id: &str,
    pep: &str,
    now: i64,
    touched: &mut Touched,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE targets SET state = 'released' WHERE rule_id = ?1 AND pep_id = ?2",
        params![rule_id, pep],
    )?;
    let rev = append_event(tx, pep, rule_id, "upsert", None, now)?;
    touched.insert(pep.to_owned(), rev);
    Ok(())
}

/// Appends one event to `pep`'s log and returns its revision (the PEP's new head).
fn append_event(
    tx: &Transaction<'_>,
    pep: &str,
    rule_id: &str,
    kind: &str,
    reason: Option<RemovalReason>,
    now: i64,
) -> Result<u64, StoreError> {
    let rev: i64 = tx.query_row(
        "INSERT INTO peps(pep_id, head) VALUES (?1, 1)
         ON CONFLICT(pep_id) DO UPDATE SET head = head + 1 RETURNING head",
        [pep],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO events(pep_id, rev, rule_id, kind, reason, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![pep, rev, rule_id, kind, reason.map(|r| r.as_str()), now],
    )?;
    Ok(rev as u64)
}
