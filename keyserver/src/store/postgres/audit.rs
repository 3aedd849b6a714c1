//! SQL of the audit trail on PostgreSQL: the key server's own rows (many per statement), the
//! batches mounts ship, and queries.
//!
//! Every transaction that inserts audit rows first takes the audit lock ([`AUDIT_LOCK`]), so
//! ids are assigned in commit order across replicas: a reader following `audit_after` never
//! sees id N+1 committed while N is still to come. Group commit keeps the lock's cost to one
//! acquisition per batch. Under the same lock the transaction links its rows onto the hash
//! chain (`store::audit_chain`): it reads the newest row's chain, inserts, reads its rows back
//! and stores their links.

use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

use crate::store::audit_chain::{self, ChainRow};
use crate::store::{AuditEvent, AuditFilter, Shipped, StoreError};
use crate::wire::{AuditRecord, MountAuditRecord};

/// Serialises audit inserts across replicas (see the module documentation).
pub(crate) const AUDIT_LOCK: i64 = authz::pg::lock_key("csap.keyserver.audit");

/// Takes the audit lock for the rest of the caller's transaction.
pub(crate) async fn lock(c: &impl GenericClient) -> Result<(), StoreError> {
    c.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
        .await?;
    Ok(())
}

/// Inserts `events`, in order, in one statement inside the caller's transaction (which holds
/// the audit lock), chained onto the trail.
pub(crate) async fn insert_audit_rows<'a>(
    c: &impl GenericClient,
    events: impl IntoIterator<Item = &'a AuditEvent>,
) -> Result<(), StoreError> {
    let last = last_row(c).await?;
    if insert_unchained(c, events).await? {
        chain_new_rows(c, last).await?;
    }
    Ok(())
}

/// The newest row's id and chain (0 and none on an empty trail), read under the audit lock
/// before inserting.
async fn last_row(c: &impl GenericClient) -> Result<(i64, Option<Vec<u8>>), StoreError> {
    Ok(
        c.query_opt("SELECT id, chain FROM audit ORDER BY id DESC LIMIT 1", &[])
            .await?
            .map_or((0, None), |r| (r.get(0), r.get(1))),
    )
}

/// Links the rows after `last` onto the chain: under the audit lock every row past it that
/// this transaction sees is its own. Reading them back chains what the INSERT stored (the
/// asset's path it filled in).
async fn chain_new_rows(
    c: &impl GenericClient,
    last: (i64, Option<Vec<u8>>),
) -> Result<(), StoreError> {
    let (after, last_chain) = last;
    let rows = chain_rows_after(c, after, None).await?;
    let links = audit_chain::link_all(audit_chain::continue_from(last_chain), &rows);
    let ids: Vec<i64> = links.iter().map(|(id, _)| *id).collect();
    let chains: Vec<&[u8]> = links.iter().map(|(_, c)| &c[..]).collect();
    c.execute(
        "UPDATE audit SET chain = l.chain FROM UNNEST($1::bigint[], $2::bytea[]) AS l(id, chain)
         WHERE audit.id = l.id",
        &[&ids, &chains],
    )
    .await?;
    Ok(())
}

/// Rows with id > `after` as stored, oldest first, at most `limit` (all: `None`).
pub(crate) async fn chain_rows_after(
    c: &impl GenericClient,
    after: i64,
    limit: Option<u32>,
) -> Result<Vec<ChainRow>, StoreError> {
    let limit = limit.map(i64::from);
    Ok(c.query(
        &format!(
            "SELECT {} FROM audit WHERE id > $1 ORDER BY id LIMIT $2",
            audit_chain::chain_cols("username")
        ),
        &[&after, &limit],
    )
    .await?
    .iter()
    .map(|r| ChainRow {
        id: r.get(0),
        time: r.get(1),
        user: r.get(2),
        app_digest: r.get(3),
        device: r.get(4),
        asset: r.get(5),
        action: r.get(6),
        decision: r.get(7),
        rule_ids: r.get(8),
        reason: r.get(9),
        license_id: r.get(10),
        path: r.get(11),
        source: r.get(12),
        uid: r.get(13),
        count: r.get(14),
        spool: r.get(15),
        seq: r.get(16),
        chain: r.get(17),
    })
    .collect())
}

/// Inserts `events` in one statement; whether there were any.
async fn insert_unchained<'a>(
    c: &impl GenericClient,
    events: impl IntoIterator<Item = &'a AuditEvent>,
) -> Result<bool, StoreError> {
    let mut time = Vec::new();
    let mut user = Vec::new();
    let mut app = Vec::new();
    let mut device = Vec::new();
    let mut asset = Vec::new();
    let mut action = Vec::new();
    let mut decision = Vec::new();
    let mut rule_ids = Vec::new();
    let mut reason = Vec::new();
    let mut license = Vec::new();
    let mut path = Vec::new();
    for e in events {
        time.push(e.time);
        user.push(e.user.as_deref());
        app.push(e.app_digest.as_deref());
        device.push(e.device.as_deref());
        asset.push(e.asset.as_deref());
        action.push(e.action.as_str());
        decision.push(e.decision);
        rule_ids.push(serde_json::to_string(&e.rule_ids).unwrap_or_else(|_| "[]".into()));
        reason.push(e.reason.as_deref());
        license.push(e.license_id.as_deref());
        path.push(e.path.as_deref());
    }
    if time.is_empty() {
        return Ok(false);
    }
    c.execute(
        "INSERT INTO audit (time, username, app_digest, device, asset, action, decision, rule_ids,
                            reason, license_id, path)
         SELECT e.time, e.username, e.app_digest, e.device, e.asset, e.action, e.decision,
                e.rule_ids, e.reason, e.license_id,
                COALESCE(e.path, (SELECT a.path FROM assets a WHERE a.asset_id = e.asset))
         FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
              WITH ORDINALITY AS e(time, username, app_digest, device, asset, action, decision,
                                   rule_ids, reason, license_id, path, ord)
         ORDER BY e.ord",
        &[
            &time, &user, &app, &device, &asset, &action, &decision, &rule_ids, &reason, &license,
            &path,
        ],
    )
    .await?;
    Ok(true)
}

const AUDIT_COLS: &str = "id, time, username, app_digest, device, asset, action, decision, \
     rule_ids, reason, license_id, path, source, uid, count";

fn audit_from_row(r: &tokio_postgres::Row) -> AuditRecord {
    AuditRecord {
        id: r.get(0),
        time: r.get(1),
        user: r.get(2),
        app_digest: r.get(3),
        device: r.get(4),
        asset: r.get(5),
        action: r.get(6),
        decision: r.get(7),
        rule_ids: serde_json::from_str(r.get(8)).unwrap_or_default(),
        reason: r.get(9),
        license_id: r.get(10),
        path: r.get(11),
        source: r.get(12),
        uid: r
            .get::<_, Option<i64>>(13)
            .and_then(|u| u32::try_from(u).ok()),
        count: u32::try_from(r.get::<_, i64>(14)).unwrap_or(u32::MAX),
    }
}

pub(crate) async fn audit_after(
    c: &impl GenericClient,
    after: i64,
    limit: u32,
) -> Result<Vec<AuditRecord>, StoreError> {
    Ok(c.query(
        &format!("SELECT {AUDIT_COLS} FROM audit WHERE id > $1 ORDER BY id LIMIT $2"),
        &[&after, &i64::from(limit)],
    )
    .await?
    .iter()
    .map(audit_from_row)
    .collect())
}

pub(crate) async fn audit_tail(
    c: &impl GenericClient,
    n: u32,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut rows: Vec<AuditRecord> = c
        .query(
            &format!("SELECT {AUDIT_COLS} FROM audit ORDER BY id DESC LIMIT $1"),
            &[&i64::from(n)],
        )
        .await?
        .iter()
        .map(audit_from_row)
        .collect();
    rows.reverse();
    Ok(rows)
}

/// Stores a batch a mount shipped, as `device`, inside the caller's transaction (which holds
/// the audit lock); a (device, spool, seq) on record already is a resend and is skipped.
pub(crate) async fn insert_shipped(
    c: &impl GenericClient,
    device: &str,
    spool: &str,
    records: &[MountAuditRecord],
) -> Result<Shipped, StoreError> {
    let last = last_row(c).await?;
    let st = c
        .prepare(
            "INSERT INTO audit (time, username, app_digest, device, asset, action, decision,
                                rule_ids, reason, path, source, uid, count, spool, seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, '[]', $8, $9, 'mount', $10, $11, $12, $13)
             ON CONFLICT (device, spool, seq) WHERE seq IS NOT NULL DO NOTHING",
        )
        .await?;
    let mut done = Shipped {
        accepted: 0,
        duplicates: 0,
    };
    for r in records {
        let n = c
            .execute(
                &st,
                &[
                    &r.time,
                    &r.user,
                    &r.app_digest,
                    &device,
                    &r.asset,
                    &r.action.as_str(),
                    &r.decision,
                    &r.reason,
                    &r.path,
                    &r.uid.map(i64::from),
                    &i64::from(r.count),
                    &spool,
                    &(r.seq as i64),
                ],
            )
            .await?;
        if n == 1 {
            done.accepted += 1;
        } else {
            done.duplicates += 1;
        }
    }
    if done.accepted > 0 {
        chain_new_rows(c, last).await?;
    }
    Ok(done)
}

/// Rows an audit query reads per round trip while a path glob filters them here.
const QUERY_PAGE: i64 = 1000;

/// The newest `filter.limit` records that pass `filter`, oldest first. A path glob narrows
/// the scan to its literal prefix; the glob itself is matched here, page by page.
pub(crate) async fn audit_query(
    c: &impl GenericClient,
    filter: &AuditFilter,
) -> Result<Vec<AuditRecord>, StoreError> {
    let prefix = filter
        .path_glob
        .as_deref()
        .map(|g| authz::glob::literal_prefix(g).to_string());
    let (user, unverified) = match &filter.user {
        Some(u) => (Some(u.clone()), Some(format!("{u} (unverified)"))),
        None => (None, None),
    };
    let mut sql = format!("SELECT {AUDIT_COLS} FROM audit WHERE id < $1");
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync + Send>| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("${}", args.len() + 1)));
    };
    if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
        arg(&mut sql, " AND starts_with(path, ?)", Box::new(prefix));
    }
    if let (Some(user), Some(unverified)) = (user, unverified) {
        arg(&mut sql, " AND (username = ?", Box::new(user));
        arg(&mut sql, " OR username = ?)", Box::new(unverified));
    }
    if let Some(device) = &filter.device {
        arg(&mut sql, " AND device = ?", Box::new(device.clone()));
    }
    if let Some(digests) = &filter.app_digests {
        arg(
            &mut sql,
            " AND app_digest = ANY(?)",
            Box::new(digests.clone()),
        );
    }
    if let Some(decision) = &filter.decision {
        arg(&mut sql, " AND decision = ?", Box::new(decision.clone()));
    }
    if let Some(since) = filter.since {
        arg(&mut sql, " AND time >= ?", Box::new(since));
    }
    if let Some(until) = filter.until {
        arg(&mut sql, " AND time < ?", Box::new(until));
    }
    let page = if filter.path_glob.is_some() {
        QUERY_PAGE
    } else {
        i64::from(filter.limit)
    };
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {page}"));
    let st = c.prepare(&sql).await?;
    let mut found = Vec::new();
    let mut before = i64::MAX;
    'pages: loop {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&before];
        params.extend(args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)));
        let rows = c.query(&st, &params).await?;
        let fetched = rows.len() as i64;
        for r in &rows {
            let row = audit_from_row(r);
            before = row.id;
            if !filter.admits_path(row.path.as_deref()) {
                continue;
            }
            found.push(row);
            if found.len() >= filter.limit as usize {
                break 'pages;
            }
        }
        if fetched < page {
            break;
        }
    }
    found.reverse();
    Ok(found)
}
