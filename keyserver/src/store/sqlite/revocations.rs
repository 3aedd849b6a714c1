//! SQL of the identity revocation stream (see `crate::revocation`) and the notifier that wakes
//! its long polls after each commit that recorded an event.

use rusqlite::{params, Connection};
use tokio::sync::watch;

use crate::revocation::{RevocationEvent, RevocationKind};
use crate::store::StoreError;

/// Ticks after each commit that recorded a revocation, never before (a woken request must find
/// the row).
#[derive(Debug)]
pub(crate) struct Notifier(watch::Sender<u64>);

impl Default for Notifier {
    fn default() -> Self {
        Notifier(watch::channel(0).0)
    }
}

impl Notifier {
    pub(crate) fn committed(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Records one revocation on `conn` (inside the caller's transaction).
pub(crate) fn record(
    conn: &Connection,
    time: i64,
    kind: RevocationKind,
    subject: &str,
    version: Option<u32>,
) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO revocations (time, kind, subject, version) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![time, kind.as_str(), subject, version])?;
    Ok(conn.last_insert_rowid())
}

/// Digests of the unrevoked applications registered as `name` `version` (revoking by name and
/// version revokes each of them; each gets its own event).
pub(crate) fn unrevoked_digests(
    conn: &Connection,
    name: &str,
    version: &str,
) -> Result<Vec<String>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT digest FROM applications WHERE name = ?1 AND version = ?2 AND revoked_at IS NULL",
    )?;
    let rows = st.query_map(params![name, version], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest sequence number (`0` before any revocation).
pub(crate) fn head(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM revocations", [], |r| {
            r.get(0)
        })?,
    )
}

/// Events with `seq > since`, oldest first, at most `limit`.
pub(crate) fn events_after(
    conn: &Connection,
    since: i64,
    limit: u32,
) -> Result<Vec<RevocationEvent>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT seq, time, kind, subject, version FROM revocations WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = st.query_map(params![since, limit], |r| {
        let kind: String = r.get(2)?;
        Ok(RevocationEvent {
            seq: r.get(0)?,
            time: r.get(1)?,
            kind: RevocationKind::parse(&kind).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    2,
                    rusqlite::types::Type::Text,
                    format!("unknown revocation kind {kind}").into(),
                )
            })?,
            subject: r.get(3)?,
            version: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
