//! SQL of license sessions on PostgreSQL (the SQLite engine's `sessions`): the table every
//! replica reads, so a session opened on one is known to all.

use tokio_postgres::GenericClient;

use crate::store::{SessionRow, StoreError};

/// Drops the sessions that ended by `now` and records `row` (the caller's transaction).
pub(crate) async fn put(
    c: &impl GenericClient,
    row: &SessionRow,
    now: i64,
) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM license_sessions WHERE not_after <= $1",
        &[&now],
    )
    .await?;
    c.execute(
        "INSERT INTO license_sessions (id, device, recipient, not_after, nonce, sealed)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &row.id,
            &row.device,
            &&row.recipient[..],
            &row.not_after,
            &&row.sealed.nonce[..],
            &row.sealed.ciphertext,
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn get(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<SessionRow>, StoreError> {
    let Some(r) = c
        .query_opt(
            "SELECT device, recipient, not_after, nonce, sealed FROM license_sessions
             WHERE id = $1",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(SessionRow::from_columns(
        id,
        r.get("device"),
        r.get("recipient"),
        r.get("not_after"),
        r.get("nonce"),
        r.get("sealed"),
    ))
}

/// Drops every session of `device` (inside its revocation's transaction).
pub(crate) async fn end_device(c: &impl GenericClient, device: &str) -> Result<(), StoreError> {
    c.execute("DELETE FROM license_sessions WHERE device = $1", &[&device])
        .await?;
    Ok(())
}
