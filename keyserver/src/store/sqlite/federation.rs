//! SQL of delegated authentication: the organizations' identity providers.

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::store::{ProviderRecord, StoreError};
use crate::wire::IdentityProvider;

const COLUMNS: &str =
    "organization, issuer, client_id, pseudonymous, added_at, pseudonym_nonce, pseudonym_key";

/// A row: the provider, and its pseudonym key's nonce and ciphertext (both or neither).
type RawRecord = (IdentityProvider, Option<Vec<u8>>, Option<Vec<u8>>);

fn record_of(r: &Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok((
        IdentityProvider {
            organization: r.get(0)?,
            issuer: r.get(1)?,
            client_id: r.get(2)?,
            pseudonymous: r.get::<_, i64>(3)? != 0,
            added_at: r.get(4)?,
        },
        r.get(5)?,
        r.get(6)?,
    ))
}

fn record((provider, nonce, key): RawRecord) -> Result<ProviderRecord, StoreError> {
    ProviderRecord::from_columns(provider, nonce.as_deref(), key)
}

/// Records `record`, replacing what its organization had.
pub(crate) fn put_identity_provider(
    conn: &Connection,
    record: &ProviderRecord,
) -> Result<(), StoreError> {
    let idp = &record.provider;
    let key = record.pseudonym_key.as_ref();
    conn.execute(
        &format!(
            "INSERT OR REPLACE INTO identity_providers ({COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        ),
        params![
            idp.organization,
            idp.issuer,
            idp.client_id,
            idp.pseudonymous as i64,
            idp.added_at,
            key.map(|k| k.nonce.to_vec()),
            key.map(|k| k.ciphertext.clone()),
        ],
    )?;
    Ok(())
}

pub(crate) fn identity_provider(
    conn: &Connection,
    organization: &str,
) -> Result<Option<ProviderRecord>, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM identity_providers WHERE organization = ?1"),
        [organization],
        record_of,
    )
    .optional()?
    .map(record)
    .transpose()
}

pub(crate) fn identity_providers(conn: &Connection) -> Result<Vec<IdentityProvider>, StoreError> {
    let mut st = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM identity_providers ORDER BY organization"
    ))?;
    let rows = st.query_map([], record_of)?;
    rows.map(|r| Ok(r?.0)).collect()
}

pub(crate) fn remove_identity_provider(
    conn: &Connection,
    organization: &str,
) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "DELETE FROM identity_providers WHERE organization = ?1",
        [organization],
    )? > 0)
}
