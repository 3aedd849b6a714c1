//! The PostgreSQL engine of the ARDS store: the SQLite engine's tables in schema `ards` of a
//! database that any number of ARDS replicas share.
//!
//! How it keeps the store's rules across processes:
//! - Every mutation is one transaction that first takes the ARDS write lock (a transaction-level
//!   advisory lock), so mutations run one at a time across all replicas, as on SQLite's one
//!   connection: a revision is its PEP's head bumped under that lock, so revisions strictly
//!   increase and a reader that sees head `h` sees every event up to `h` (they committed with
//!   it). Rule traffic is small; the license path never takes this lock.
//! - Reads of several statements ([`RuleStore::changes`]) run in one `REPEATABLE READ`
//!   snapshot.
//! - A transaction that grew PEPs' logs sends `NOTIFY csap_ards, 'REV PEP'` for each before it
//!   commits; PostgreSQL delivers them only on commit, to every replica listening, which
//!   wakes its long polls ([`RuleStore::remote_changes`]). After a reconnect of that
//!   subscription every PEP's head is re-read, so a notification lost meanwhile costs a wake-up
//!   at most, never a missed change (the poll re-reads the store).
//! - A publish that stored a pending rule sends `NOTIFY csap_ards, 'due'`, so every replica's
//!   scheduler asks the store for its next due time: the rule is released on time even when
//!   the replica that took the publish is gone by then.

mod schema;

use std::sync::Mutex;

use authz::pg::{Notice, Target};
use authz::{Rule, SignedRule};
use deadpool_postgres::{Pool, Transaction};
use tokio::sync::mpsc;
use tokio_postgres::IsolationLevel;

use super::{
    action_str, dedup_key, distinct_targets, initial_target_state, parse_signed, raw, Outcome,
    Published, Recorded, Revoked, RuleStore, StoreError, Touched, WouldAllow,
};
use crate::wire::{
    DenialReport, ExceptionOutcome, ExceptionRecord, ExceptionStatus, ListedRule, ListedTarget,
    RawChanges, Removal, RemovalReason, TargetState,
};

/// The PostgreSQL schema holding ARDS's tables.
pub const SCHEMA: &str = "ards";
/// The notification channel of grown PEP logs.
const CHANNEL: &str = "csap_ards";
/// Serialises ARDS mutations across replicas.
const WRITE_LOCK: i64 = authz::pg::lock_key("csap.ards.writes");

/// The ARDS store on PostgreSQL.
pub struct PgRuleStore {
    pool: Pool,
    remote: Mutex<Option<mpsc::UnboundedReceiver<Touched>>>,
}

impl std::fmt::Debug for PgRuleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgRuleStore")
    }
}

impl PgRuleStore {
    /// Connects (a pool of at most `pool_size`), migrates schema `ards` and subscribes to the
    /// changes of every replica.
    pub async fn connect(target: &Target, pool_size: usize) -> Result<Self, StoreError> {
        let pool = target.pool(SCHEMA, pool_size)?;
        authz::pg::migrate(&pool, SCHEMA, schema::MIGRATIONS).await?;
        let notices = target.listen(CHANNEL);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(relay(pool.clone(), notices, tx));
        Ok(Self {
            pool,
            remote: Mutex::new(Some(rx)),
        })
    }
}

/// The payload that says a publish stored pending work.
const DUE: &str = "due";

/// Turns notifications into [`Touched`] sets; a resync reports every PEP at its head (and,
/// like a `due` notice, comes with an empty set: time-driven work may have moved).
async fn relay(
    pool: Pool,
    mut notices: mpsc::UnboundedReceiver<Notice>,
    tx: mpsc::UnboundedSender<Touched>,
) {
    loop {
        // Ends once the service stops listening, which ends the subscription's connection.
        let notice = tokio::select! {
            notice = notices.recv() => match notice {
                Some(notice) => notice,
                None => return,
            },
            _ = tx.closed() => return,
        };
        let touched = match notice {
            Notice::Payload(p) if p == DUE => Touched::new(),
            Notice::Payload(p) => match p.split_once(' ') {
                Some((rev, pep)) => match rev.parse::<u64>() {
                    Ok(rev) => Touched::from([(pep.to_owned(), rev)]),
                    Err(_) => continue,
                },
                None => continue,
            },
            Notice::Resync => match heads(&pool).await {
                Ok(all) => {
                    if tx.send(Touched::new()).is_err() {
                        return;
                    }
                    all.into_iter().collect()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot re-read PEP heads after reconnecting");
                    continue;
                }
            },
        };
        if tx.send(touched).is_err() {
            return;
        }
    }
}

async fn heads(pool: &Pool) -> Result<Vec<(String, u64)>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query("SELECT pep_id, head FROM peps ORDER BY pep_id", &[])
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect())
}

/// Begins a mutation: a transaction holding the ARDS write lock.
async fn begin_write<'a>(
    client: &'a mut deadpool_postgres::Client,
) -> Result<Transaction<'a>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await?;
    Ok(tx)
}

/// Announces the grown logs (delivered when the transaction commits) and commits.
async fn commit(tx: Transaction<'_>, touched: &Touched) -> Result<(), StoreError> {
    for (pep, rev) in touched {
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &format!("{rev} {pep}")],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The next time `advance` has work, as an [`Outcome`] reports it (`i64::MAX`: none).
async fn next_due(tx: &Transaction<'_>) -> Result<Option<i64>, StoreError> {
    let row = tx
        .query_one(
            "SELECT MIN(CASE t.state WHEN 'pending' THEN LEAST(r.release_at, r.not_after)
                                     ELSE r.not_after END)
             FROM targets t JOIN rules r ON r.id = t.rule_id
             WHERE t.state IN ('pending', 'released')",
            &[],
        )
        .await?;
    Ok(Some(row.get::<_, Option<i64>>(0).unwrap_or(i64::MAX)))
}

/// Appends one event to `pep`'s log and returns its revision (the PEP's new head).
async fn append_event(
    tx: &Transaction<'_>,
    pep: &str,
    rule_id: &str,
    kind: &str,
    reason: Option<RemovalReason>,
    now: i64,
) -> Result<u64, StoreError> {
    let rev: i64 = tx
        .query_one(
            "INSERT INTO peps(pep_id, head) VALUES ($1, 1)
             ON CONFLICT(pep_id) DO UPDATE SET head = peps.head + 1 RETURNING head",
            &[&pep],
        )
        .await?
        .get(0);
    tx.execute(
        "INSERT INTO events(pep_id, rev, rule_id, kind, reason, at) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&pep, &rev, &rule_id, &kind, &reason.map(|r| r.as_str()), &now],
    )
    .await?;
    Ok(rev as u64)
}

/// Marks one target released and appends its upsert event.
async fn release_target(
    tx: &Transaction<'_>,
    rule_id: &str,
    pep: &str,
    now: i64,
    touched: &mut Touched,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE targets SET state = 'released' WHERE rule_id = $1 AND pep_id = $2",
        &[&rule_id, &pep],
    )
    .await?;
    let rev = append_event(tx, pep, rule_id, "upsert", None, now).await?;
    touched.insert(pep.to_owned(), rev);
    Ok(())
}

async fn publish_one(
    tx: &Transaction<'_>,
    signed: &SignedRule,
    release_at: i64,
    now: i64,
    touched: &mut Touched,
) -> Result<Published, StoreError> {
    let rule = &signed.rule;
    let existing = tx
        .query_opt("SELECT signed FROM rules WHERE id = $1", &[&rule.id])
        .await?;
    if let Some(row) = existing {
        let held = parse_signed(&rule.id, row.get(0))?;
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
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &rule.id,
            &rule.issuer,
            &json,
            &rule.not_before,
            &rule.not_after,
            &release_at,
            &now,
        ],
    )
    .await?;
    // Only the rule's own issuer can have revoked it ahead of its arrival.
    let revoked = tx
        .query_opt(
            "SELECT 1 FROM tombstones WHERE rule_id = $1 AND issuer = $2",
            &[&rule.id, &rule.issuer],
        )
        .await?
        .is_some();
    let start = initial_target_state(revoked, rule.not_after, release_at, now);
    let (state, release_now) = (start.state, start.release_now);
    for pep in distinct_targets(rule) {
        tx.execute(
            "INSERT INTO targets(rule_id, pep_id, state) VALUES ($1, $2, $3)",
            &[&rule.id, pep, &state],
        )
        .await?;
        if release_now {
            let rev = append_event(tx, pep, &rule.id, "upsert", None, now).await?;
            touched.insert(pep.clone(), rev);
        }
    }
    Ok(start.published)
}

/// Stores a denial report, or folds it into an identical one seen within `window` seconds.
async fn record_exception(
    tx: &Transaction<'_>,
    pep: &str,
    report: &DenialReport,
    now: i64,
    window: i64,
) -> Result<Recorded, StoreError> {
    let key = dedup_key(pep, report);
    let recent = tx
        .query_opt(
            "SELECT id, count FROM exceptions WHERE dedup_key = $1 AND last_seen >= $2
             ORDER BY id DESC LIMIT 1",
            &[&key, &(now - window)],
        )
        .await?;
    if let Some(row) = recent {
        let (id, count): (i64, i64) = (row.get(0), row.get(1));
        tx.execute(
            "UPDATE exceptions SET count = count + 1, last_seen = $2 WHERE id = $1",
            &[&id, &now],
        )
        .await?;
        return Ok(Recorded::Duplicate {
            id,
            count: count + 1,
        });
    }
    let row = tx
        .query_one(
            "INSERT INTO exceptions(dedup_key, pep_id, participant, application_digest, device,
                 asset_path, asset_scope, action, first_seen, last_seen, count, status, released_rules)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, 1, 'open', '[]') RETURNING id",
            &[
                &key,
                &pep,
                &report.participant,
                &report.application_digest,
                &report.device,
                &report.asset_path,
                &report.asset_scope,
                &action_str(report.action),
                &now,
            ],
        )
        .await?;
    Ok(Recorded::New(row.get(0)))
}

/// Rules still pending for `pep` and not yet expired.
async fn pending_for(tx: &Transaction<'_>, pep: &str, now: i64) -> Result<Vec<Rule>, StoreError> {
    let rows = tx
        .query(
            "SELECT r.id, r.signed FROM targets t JOIN rules r ON r.id = t.rule_id
             WHERE t.pep_id = $1 AND t.state = 'pending' AND r.not_after > $2
             ORDER BY r.release_at, r.id",
            &[&pep, &now],
        )
        .await?;
    rows.iter()
        .map(|r| Ok(parse_signed(r.get(0), r.get(1))?.rule))
        .collect()
}

#[async_trait::async_trait]
impl RuleStore for PgRuleStore {
    async fn publish(
        &self,
        batch: Vec<(SignedRule, i64)>,
        now: i64,
    ) -> Result<Outcome<Vec<Published>>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = begin_write(&mut client).await?;
        let mut touched = Touched::new();
        let mut value = Vec::with_capacity(batch.len());
        for (signed, release_at) in &batch {
            value.push(publish_one(&tx, signed, *release_at, now, &mut touched).await?);
        }
        let pending = batch
            .iter()
            .zip(&value)
            .any(|((_, release_at), published)| {
                *published == Published::Stored && *release_at > now
            });
        if pending {
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &DUE])
                .await?;
        }
        let next_due = next_due(&tx).await?;
        commit(tx, &touched).await?;
        Ok(Outcome {
            value,
            touched,
            next_due,
        })
    }

    async fn revoke(
        &self,
        rule_id: &str,
        issuer: &str,
        reason: &str,
        revoked_at: i64,
        now: i64,
    ) -> Result<Outcome<Revoked>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = begin_write(&mut client).await?;
        let mut touched = Touched::new();
        let owner = tx
            .query_opt("SELECT issuer FROM rules WHERE id = $1", &[&rule_id])
            .await?
            .map(|r| r.get::<_, String>(0));
        let known = match owner {
            Some(owner) if owner != issuer => {
                return Ok(Outcome {
                    value: Revoked::NotIssuer { owner },
                    touched,
                    next_due: None,
                })
            }
            Some(_) => true,
            None => false,
        };
        tx.execute(
            "INSERT INTO tombstones(rule_id, issuer, reason, revoked_at, received_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (rule_id) DO NOTHING",
            &[&rule_id, &issuer, &reason, &revoked_at, &now],
        )
        .await?;
        let removed_from: Vec<String> = tx
            .query(
                "SELECT pep_id FROM targets WHERE rule_id = $1 AND state = 'released'
                 ORDER BY pep_id",
                &[&rule_id],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute(
            "UPDATE targets SET state = 'removed' WHERE rule_id = $1",
            &[&rule_id],
        )
        .await?;
        for pep in &removed_from {
            let why = Some(RemovalReason::Revoked);
            let rev = append_event(&tx, pep, rule_id, "remove", why, now).await?;
            touched.insert(pep.clone(), rev);
        }
        let next_due = next_due(&tx).await?;
        commit(tx, &touched).await?;
        Ok(Outcome {
            value: Revoked::Tombstoned {
                known,
                removed_from,
            },
            touched,
            next_due,
        })
    }

    async fn advance(&self, now: i64) -> Result<Outcome<()>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = begin_write(&mut client).await?;
        let mut touched = Touched::new();
        // Expiry first, so a rule whose whole window already passed is never released.
        let expired = tx
            .query(
                "SELECT t.rule_id, t.pep_id, t.state FROM targets t JOIN rules r ON r.id = t.rule_id
                 WHERE t.state IN ('pending', 'released') AND r.not_after <= $1
                 ORDER BY r.not_after, t.rule_id, t.pep_id",
                &[&now],
            )
            .await?;
        for row in &expired {
            let (rule_id, pep, state): (&str, &str, &str) = (row.get(0), row.get(1), row.get(2));
            tx.execute(
                "UPDATE targets SET state = 'removed' WHERE rule_id = $1 AND pep_id = $2",
                &[&rule_id, &pep],
            )
            .await?;
            if state == "released" {
                let why = Some(RemovalReason::Expired);
                let rev = append_event(&tx, pep, rule_id, "remove", why, now).await?;
                touched.insert(pep.to_owned(), rev);
            }
        }
        let due = tx
            .query(
                "SELECT t.rule_id, t.pep_id FROM targets t JOIN rules r ON r.id = t.rule_id
                 WHERE t.state = 'pending' AND r.release_at <= $1 AND r.not_after > $1
                 ORDER BY r.release_at, t.rule_id, t.pep_id",
                &[&now],
            )
            .await?;
        for row in &due {
            release_target(&tx, row.get(0), row.get(1), now, &mut touched).await?;
        }
        let next_due = next_due(&tx).await?;
        commit(tx, &touched).await?;
        Ok(Outcome {
            value: (),
            touched,
            next_due,
        })
    }

    async fn changes(&self, pep: &str, since: u64) -> Result<RawChanges, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let head = tx
            .query_opt("SELECT head FROM peps WHERE pep_id = $1", &[&pep])
            .await?
            .map_or(0, |r| r.get::<_, i64>(0) as u64);
        let reset = since == 0 || since > head;
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        if reset {
            let rows = tx
                .query(
                    "SELECT r.id, r.signed FROM targets t JOIN rules r ON r.id = t.rule_id
                     WHERE t.pep_id = $1 AND t.state = 'released' ORDER BY r.id",
                    &[&pep],
                )
                .await?;
            for row in rows {
                upserts.push(raw(row.get(0), row.get(1))?);
            }
        } else {
            let rows = tx
                .query(
                    "SELECT e.rule_id, e.kind, e.reason, r.signed
                     FROM events e LEFT JOIN rules r ON r.id = e.rule_id
                     WHERE e.pep_id = $1 AND e.rev > $2
                       AND e.rev = (SELECT MAX(e2.rev) FROM events e2
                                    WHERE e2.pep_id = e.pep_id AND e2.rule_id = e.rule_id)
                     ORDER BY e.rev",
                    &[&pep, &(since as i64)],
                )
                .await?;
            for row in rows {
                let id: String = row.get(0);
                let kind: &str = row.get(1);
                if kind == "upsert" {
                    let signed: Option<String> = row.get(3);
                    upserts.push(raw(&id, signed.unwrap_or_default())?);
                } else {
                    let reason = row
                        .get::<_, Option<&str>>(2)
                        .and_then(RemovalReason::parse)
                        .unwrap_or(RemovalReason::Revoked);
                    removals.push(Removal {
                        rule_id: id,
                        reason,
                    });
                }
            }
        }
        tx.commit().await?;
        Ok(RawChanges {
            pep_id: pep.to_owned(),
            revision: head,
            reset,
            upserts,
            removals,
        })
    }

    async fn list(&self, pep: Option<&str>) -> Result<Vec<ListedRule>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT r.id, r.signed, r.release_at, t.pep_id, t.state
                 FROM targets t JOIN rules r ON r.id = t.rule_id
                 WHERE t.state IN ('pending', 'released') AND ($1::text IS NULL OR t.pep_id = $1)
                 ORDER BY r.not_before, r.id, t.pep_id",
                &[&pep],
            )
            .await?;
        let mut out: Vec<ListedRule> = Vec::new();
        for row in &rows {
            let id: &str = row.get(0);
            let state = if row.get::<_, &str>(4) == "released" {
                TargetState::Released
            } else {
                TargetState::Pending
            };
            let target = ListedTarget {
                pep_id: row.get(3),
                state,
            };
            match out.last_mut() {
                Some(last) if last.rule.rule.id == id => last.targets.push(target),
                _ => out.push(ListedRule {
                    rule: parse_signed(id, row.get(1))?,
                    release_at: row.get(2),
                    targets: vec![target],
                }),
            }
        }
        Ok(out)
    }

    async fn heads(&self) -> Result<Vec<(String, u64)>, StoreError> {
        heads(&self.pool).await
    }

    async fn triage_exception(
        &self,
        pep: &str,
        report: &DenialReport,
        now: i64,
        window: i64,
        allows: WouldAllow,
    ) -> Result<Outcome<ExceptionOutcome>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = begin_write(&mut client).await?;
        let mut touched = Touched::new();
        let id = match record_exception(&tx, pep, report, now, window).await? {
            Recorded::Duplicate { id, count } => {
                commit(tx, &touched).await?;
                let value = ExceptionOutcome::Duplicate {
                    exception_id: id,
                    count,
                };
                return Ok(Outcome {
                    value,
                    touched,
                    next_due: None,
                });
            }
            Recorded::New(id) => id,
        };
        // Read and released under the write lock: each is still pending when released.
        let mut released = Vec::new();
        for rule in pending_for(&tx, pep, now).await? {
            if allows(&rule) {
                release_target(&tx, &rule.id, pep, now, &mut touched).await?;
                released.push(rule.id);
            }
        }
        if released.is_empty() {
            commit(tx, &touched).await?;
            let value = ExceptionOutcome::Recorded { exception_id: id };
            return Ok(Outcome {
                value,
                touched,
                next_due: None,
            });
        }
        let list = serde_json::to_string(&released).unwrap_or_else(|_| "[]".into());
        tx.execute(
            "UPDATE exceptions SET status = 'released', released_rules = $2 WHERE id = $1",
            &[&id, &list],
        )
        .await?;
        let next_due = next_due(&tx).await?;
        commit(tx, &touched).await?;
        let value = ExceptionOutcome::Released {
            exception_id: id,
            rule_ids: released,
        };
        Ok(Outcome {
            value,
            touched,
            next_due,
        })
    }

    async fn exceptions(&self, after: i64, all: bool) -> Result<Vec<ExceptionRecord>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, pep_id, participant, application_digest, device, asset_path,
                        asset_scope, action, first_seen, last_seen, count, status, released_rules
                 FROM exceptions WHERE id > $1 AND ($2 OR status = 'open') ORDER BY id LIMIT 10000",
                &[&after, &all],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ExceptionRecord {
                id: r.get(0),
                pep_id: r.get(1),
                report: DenialReport {
                    participant: r.get(2),
                    application_digest: r.get(3),
                    device: r.get(4),
                    asset_path: r.get(5),
                    asset_scope: r.get(6),
                    action: serde_json::from_value(serde_json::Value::String(r.get(7)))
                        .unwrap_or(authz::Action::Read),
                },
                first_seen: r.get(8),
                last_seen: r.get(9),
                count: r.get(10),
                status: if r.get::<_, &str>(11) == "open" {
                    ExceptionStatus::Open
                } else {
                    ExceptionStatus::Released
                },
                released_rules: serde_json::from_str(r.get(12)).unwrap_or_default(),
            })
            .collect())
    }

    fn remote_changes(&self) -> Option<mpsc::UnboundedReceiver<Touched>> {
        self.remote.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
