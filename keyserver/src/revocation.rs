//! Identity revocation events: every disabled user, revoked device, revoked application digest
//! and revoked key version becomes a row of the `revocations` table (written in the same
//! transaction as the change), served to devices as a long-poll stream
//! (`GET /v1/revocations?since=SEQ&wait=SECS`) so each mount drops what it holds at once.
//!
//! Sequence numbers are SQLite `AUTOINCREMENT` keys: strictly increasing, never reused. Rows are
//! never deleted, so a client that asks from a sequence number the server has (its own `head`
//! or below) misses nothing; one that asks from beyond `head` (a restored or replaced database)
//! must treat that as a gap and drop everything it holds.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State as AxState};
use axum::Json;
use rusqlite::{params, Connection};
use serde::Deserialize;
use tokio::sync::watch;

use crate::api::DevicePeer;
use crate::db::StoreError;
use crate::error::ApiError;
use crate::server::State;

// The wire types are the client's (a mount reads the stream); the store and handler are here.
pub use keyserver_client::revocation::{
    RevocationEvent, RevocationKind, RevocationsResponse, MAX_WAIT_SECS,
};

/// Most events in one answer (a client asks again from the last one).
const PAGE: u32 = 1000;

/// The schema of the events table (a migration in [`crate::db`]).
pub(crate) const MIGRATION: &str = "CREATE TABLE revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('user', 'device', 'app', 'key_version')),
        subject TEXT NOT NULL,
        version INTEGER
    );";

/// Wakes the requests waiting for events. Admin handlers call [`Notifier::committed`] after
/// the transaction that recorded an event committed, never before (a woken request must find
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

    fn subscribe(&self) -> watch::Receiver<u64> {
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
fn head(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM revocations", [], |r| {
            r.get(0)
        })?,
    )
}

/// Events with `seq > since`, oldest first, at most `limit`.
fn events_after(
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevocationsQuery {
    /// Last sequence number the client applied; absent: only the head is returned.
    since: Option<i64>,
    /// Seconds to wait for an event when there is none after `since` (default 0).
    wait: Option<u64>,
}

/// `GET /v1/revocations`: for enrolled, unrevoked devices only (mTLS peer).
pub(crate) async fn list(
    AxState(st): AxState<Arc<State>>,
    DevicePeer(_device): DevicePeer,
    q: Result<Query<RevocationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RevocationsResponse>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest {
        message: e.body_text(),
        field: None,
    })?;
    if q.since.is_some_and(|s| s < 0) {
        return Err(ApiError::bad(
            "since",
            "must be a sequence number (0 or more)",
        ));
    }
    let wait_secs = q.wait.unwrap_or(0);
    if wait_secs > MAX_WAIT_SECS {
        return Err(ApiError::bad(
            "wait",
            format!("at most {MAX_WAIT_SECS} seconds"),
        ));
    }
    // Answer before the request timeout cuts the wait off with a 503.
    let wait = Duration::from_secs(wait_secs).min(
        st.limits
            .request_timeout
            .saturating_sub(Duration::from_secs(1)),
    );
    // Subscribed before the read: an event committed after the read still wakes this request.
    let mut woken = st.revocations.subscribe();
    let first = read(&st, q.since).await?;
    let Some(since) = q.since else {
        return Ok(Json(first));
    };
    // `since` beyond the head is a gap the client must see at once, not after a wait.
    if !first.events.is_empty() || since > first.head || wait.is_zero() {
        return Ok(Json(first));
    }
    if tokio::time::timeout(wait, woken.changed()).await.is_err() {
        return Ok(Json(first));
    }
    Ok(Json(read(&st, Some(since)).await?))
}

/// The head and, with `since`, the events after it.
async fn read(st: &Arc<State>, since: Option<i64>) -> Result<RevocationsResponse, ApiError> {
    st.db
        .call(move |conn| {
            let head = head(conn)?;
            let events = match since {
                Some(since) => events_after(conn, since, PAGE)?,
                None => Vec::new(),
            };
            Ok(RevocationsResponse { head, events })
        })
        .await
}
