//! SQL of the identity revocation stream on PostgreSQL. A revoking transaction takes the
//! revocation lock before it numbers its event and holds it until it commits, so sequence
//! numbers are assigned in commit order across every replica: strictly increasing, never
//! reused, and a reader that saw head N will find every later event above N. The
//! `NOTIFY csap_keyserver, 'revocation'` it sends is delivered on commit, to every replica.

use tokio_postgres::GenericClient;

use super::{notify, Change};
use crate::revocation::{RevocationEvent, RevocationKind, RevocationsResponse};
use crate::store::StoreError;

/// Serialises revocation numbering across replicas.
const REVOCATION_LOCK: i64 = authz::pg::lock_key("csap.keyserver.revocations");

/// Records one revocation inside the caller's transaction; its sequence number.
pub(crate) async fn record(
    c: &impl GenericClient,
    time: i64,
    kind: RevocationKind,
    subject: &str,
    version: Option<u32>,
) -> Result<i64, StoreError> {
    c.execute("SELECT pg_advisory_xact_lock($1)", &[&REVOCATION_LOCK])
        .await?;
    let row = c
        .query_one(
            "INSERT INTO revocations (seq, time, kind, subject, version)
             SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3, $4 FROM revocations
             RETURNING seq",
            &[&time, &kind.as_str(), &subject, &version.map(i64::from)],
        )
        .await?;
    notify(c, Change::Revocation).await?;
    Ok(row.get(0))
}

/// The head and, with `since`, at most `limit` events after it (one snapshot).
pub(crate) async fn read(
    c: &impl GenericClient,
    since: Option<i64>,
    limit: u32,
) -> Result<RevocationsResponse, StoreError> {
    let head: i64 = c
        .query_one("SELECT COALESCE(MAX(seq), 0) FROM revocations", &[])
        .await?
        .get(0);
    let mut events = Vec::new();
    if let Some(since) = since {
        for r in c
            .query(
                "SELECT seq, time, kind, subject, version FROM revocations
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&since, &i64::from(limit)],
            )
            .await?
        {
            let kind: &str = r.get(2);
            events.push(RevocationEvent {
                seq: r.get(0),
                time: r.get(1),
                kind: RevocationKind::parse(kind)
                    .ok_or_else(|| StoreError::Worker(format!("unknown revocation kind {kind}")))?,
                subject: r.get(3),
                version: r
                    .get::<_, Option<i64>>(4)
                    .and_then(|v| u32::try_from(v).ok()),
            });
        }
    }
    Ok(RevocationsResponse { head, events })
}
