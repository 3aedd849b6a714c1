//! SQL of license sessions (`crate::session`): one row per live session, its secret sealed.

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::{SessionRow, StoreError};

/// Records `row` and drops the sessions that ended by `now`, in one transaction.
pub(crate) fn put(conn: &mut Connection, row: &SessionRow, now: i64) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM license_sessions WHERE not_after <= ?1",
        params![now],
    )?;
    tx.execute(
        "INSERT INTO license_sessions (id, device, recipient, not_after, nonce, sealed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            row.id,
            row.device,
            &row.recipient[..],
            row.not_after,
            &row.sealed.nonce[..],
            row.sealed.ciphertext
        ],
    )?;
    tx.commit()?;
    Ok(())
}

pub(crate) fn get(conn: &Connection, id: &str) -> Result<Option<SessionRow>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT device, recipient, not_after, nonce, sealed FROM license_sessions WHERE id = ?1",
        )?
        .query_row(params![id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })
        .optional()?;
    Ok(
        row.and_then(|(device, recipient, not_after, nonce, sealed)| {
            SessionRow::from_columns(id, device, &recipient, not_after, &nonce, sealed)
        }),
    )
}

/// Drops every session of `device` (inside its revocation's transaction).
pub(crate) fn end_device(conn: &Connection, device: &str) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM license_sessions WHERE device = ?1",
        params![device],
    )?;
    Ok(())
}
