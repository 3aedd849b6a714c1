//! SQL of the audit trail: the key server's own rows, the batches mounts ship, and queries.

use rusqlite::{params, Connection, TransactionBehavior};

use crate::store::audit_chain::{self, ChainRow};
use crate::store::{AuditEvent, AuditFilter, Shipped, StoreError};
use crate::wire::{AuditRecord, MountAuditRecord};

pub(crate) fn insert_audit<'a>(
    conn: &mut Connection,
    events: impl IntoIterator<Item = &'a AuditEvent>,
) -> Result<(), StoreError> {
    // Immediate: the chain's read of the last row comes first, and a read transaction that
    // later wants the write lock another connection holds fails at once instead of waiting.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    insert_audit_rows(&tx, events)?;
    tx.commit()?;
    Ok(())
}

/// Inserts `events` inside the caller's transaction (a change and its audit rows commit
/// together), chained onto the trail.
pub(crate) fn insert_audit_rows<'a>(
    conn: &Connection,
    events: impl IntoIterator<Item = &'a AuditEvent>,
) -> Result<(), StoreError> {
    let last = last_row(conn)?;
    insert_unchained(conn, events)?;
    chain_new_rows(conn, last)
}

fn insert_unchained<'a>(
    conn: &Connection,
    events: impl IntoIterator<Item = &'a AuditEvent>,
) -> Result<(), StoreError> {
    let mut st = conn.prepare_cached(
        "INSERT INTO audit (time, user, app_digest, device, asset, action, decision, rule_ids, reason, license_id, path)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                 COALESCE(?11, (SELECT a.path FROM assets a WHERE a.asset_id = ?5)))",
    )?;
    for e in events {
        let rule_ids = serde_json::to_string(&e.rule_ids).unwrap_or_else(|_| "[]".into());
        st.execute(params![
            e.time,
            e.user,
            e.app_digest,
            e.device,
            e.asset,
            e.action,
            e.decision,
            rule_ids,
            e.reason,
            e.license_id,
            e.path
        ])?;
    }
    Ok(())
}

/// The newest row's id and chain (0 and none on an empty trail), read before inserting.
fn last_row(conn: &Connection) -> Result<(i64, Option<Vec<u8>>), StoreError> {
    let mut st = conn.prepare_cached("SELECT id, chain FROM audit ORDER BY id DESC LIMIT 1")?;
    let mut rows = st.query([])?;
    Ok(match rows.next()? {
        Some(r) => (r.get(0)?, r.get(1)?),
        None => (0, None),
    })
}

/// Links the rows after `last` (the ones this transaction inserted: the connection is the
/// only writer) onto the chain. It reads them back, so a value the INSERT filled in (the
/// asset's path) is chained as stored.
fn chain_new_rows(conn: &Connection, last: (i64, Option<Vec<u8>>)) -> Result<(), StoreError> {
    let (after, last_chain) = last;
    let rows = chain_rows_after(conn, after, u32::MAX)?;
    let mut st = conn.prepare_cached("UPDATE audit SET chain = ?1 WHERE id = ?2")?;
    for (id, chain) in audit_chain::link_all(audit_chain::continue_from(last_chain), &rows) {
        st.execute(params![&chain[..], id])?;
    }
    Ok(())
}

/// Rows with id > `after` as stored, oldest first, at most `limit`.
pub(crate) fn chain_rows_after(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<ChainRow>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {} FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2",
        audit_chain::chain_cols("user")
    ))?;
    let rows = st.query_map(params![after, limit], |r| {
        Ok(ChainRow {
            id: r.get(0)?,
            time: r.get(1)?,
            user: r.get(2)?,
            app_digest: r.get(3)?,
            device: r.get(4)?,
            asset: r.get(5)?,
            action: r.get(6)?,
            decision: r.get(7)?,
            rule_ids: r.get(8)?,
            reason: r.get(9)?,
            license_id: r.get(10)?,
            path: r.get(11)?,
            source: r.get(12)?,
            uid: r.get(13)?,
            count: r.get(14)?,
            spool: r.get(15)?,
            seq: r.get(16)?,
            chain: r.get(17)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn audit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let rule_ids: String = r.get(8)?;
    Ok(AuditRecord {
        id: r.get(0)?,
        time: r.get(1)?,
        user: r.get(2)?,
        app_digest: r.get(3)?,
        device: r.get(4)?,
        asset: r.get(5)?,
        action: r.get(6)?,
        decision: r.get(7)?,
        rule_ids: serde_json::from_str(&rule_ids).unwrap_or_default(),
        reason: r.get(9)?,
        license_id: r.get(10)?,
        path: r.get(11)?,
        source: r.get(12)?,
        uid: r.get(13)?,
        count: r.get(14)?,
    })
}

const AUDIT_COLS: &str = "id, time, user, app_digest, device, asset, action, decision, rule_ids, \
     reason, license_id, path, source, uid, count";

/// Records with id > `after`, oldest first, at most `limit`.
pub(crate) fn audit_after(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {AUDIT_COLS} FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = st.query_map(params![after, limit], audit_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The last `n` records, oldest first.
pub(crate) fn audit_tail(conn: &Connection, n: u32) -> Result<Vec<AuditRecord>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {AUDIT_COLS} FROM (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id"
    ))?;
    let rows = st.query_map(params![n], audit_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Stores a batch a mount shipped, as `device` (the peer certificate's name), in one
/// transaction. A record whose (device, spool, seq) is on record already is a resend and is
/// skipped (the unique index `audit_spool_seq`), so resending after a lost answer is harmless.
pub(crate) fn insert_shipped(
    conn: &mut Connection,
    device: &str,
    spool: &str,
    records: &[MountAuditRecord],
) -> Result<Shipped, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let last = last_row(&tx)?;
    let mut done = Shipped {
        accepted: 0,
        duplicates: 0,
    };
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO audit (time, user, app_digest, device, asset, action, decision, rule_ids,
                                reason, path, source, uid, count, spool, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '[]', ?8, ?9, 'mount', ?10, ?11, ?12, ?13)
             ON CONFLICT (device, spool, seq) WHERE seq IS NOT NULL DO NOTHING",
        )?;
        for r in records {
            let n = st.execute(params![
                r.time,
                r.user,
                r.app_digest,
                device,
                r.asset,
                r.action.as_str(),
                r.decision,
                r.reason,
                r.path,
                r.uid,
                r.count,
                spool,
                r.seq as i64
            ])?;
            if n == 1 {
                done.accepted += 1;
            } else {
                done.duplicates += 1;
            }
        }
    }
    chain_new_rows(&tx, last)?;
    tx.commit()?;
    Ok(done)
}

/// The newest `filter.limit` records that pass `filter`, oldest first. A path glob narrows the
/// scan to its literal prefix (through `audit_path`); the glob itself is matched here.
pub(crate) fn audit_query(
    conn: &Connection,
    filter: &AuditFilter,
) -> Result<Vec<AuditRecord>, StoreError> {
    let path_prefix = filter
        .path_glob
        .as_deref()
        .map(|g| authz::glob::literal_prefix(g).to_string());
    let mut sql = format!("SELECT {AUDIT_COLS} FROM audit WHERE 1 = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(prefix) = &path_prefix {
        arg(&mut sql, " AND path >= ?", prefix.clone().into());
        // U+10FFFF sorts after every character a path can continue with (binary collation).
        arg(
            &mut sql,
            " AND path < ?",
            format!("{prefix}\u{10FFFF}").into(),
        );
    }
    if let Some(user) = &filter.user {
        arg(&mut sql, " AND (user = ?", user.clone().into());
        arg(
            &mut sql,
            " OR user = ?)",
            format!("{user} (unverified)").into(),
        );
    }
    if let Some(device) = &filter.device {
        arg(&mut sql, " AND device = ?", device.clone().into());
    }
    if let Some(digests) = &filter.app_digests {
        sql.push_str(" AND app_digest IN (NULL");
        for d in digests {
            arg(&mut sql, ", ?", d.clone().into());
        }
        sql.push(')');
    }
    if let Some(decision) = &filter.decision {
        arg(&mut sql, " AND decision = ?", decision.clone().into());
    }
    if let Some(since) = filter.since {
        arg(&mut sql, " AND time >= ?", since.into());
    }
    if let Some(until) = filter.until {
        arg(&mut sql, " AND time < ?", until.into());
    }
    sql.push_str(" ORDER BY id DESC");
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map(rusqlite::params_from_iter(args), audit_from_row)?;
    let mut found = Vec::new();
    for row in rows {
        let row = row?;
        if !filter.admits_path(row.path.as_deref()) {
            continue;
        }
        found.push(row);
        if found.len() >= filter.limit as usize {
            break;
        }
    }
    found.reverse();
    Ok(found)
}

/// Digests of the applications registered under `name` (any version, revoked or not).
pub(crate) fn app_digests_named(conn: &Connection, name: &str) -> Result<Vec<String>, StoreError> {
    let mut st = conn.prepare_cached("SELECT digest FROM applications WHERE name = ?1")?;
    let rows = st.query_map(params![name], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
