//! SQL of delegated authentication on PostgreSQL: the organizations' identity providers (the
//! SQLite engine's `federation`, statement for statement).

use tokio_postgres::{GenericClient, Row};

use crate::store::{ProviderRecord, StoreError};
use crate::wire::IdentityProvider;

const COLUMNS: &str =
    "organization, issuer, client_id, pseudonymous, added_at, pseudonym_nonce, pseudonym_key";

fn provider_of(r: &Row) -> IdentityProvider {
    IdentityProvider {
        organization: r.get(0),
        issuer: r.get(1),
        client_id: r.get(2),
        pseudonymous: r.get(3),
        added_at: r.get(4),
    }
}

fn record_of(r: &Row) -> Result<ProviderRecord, StoreError> {
    ProviderRecord::from_columns(provider_of(r), r.get(5), r.get(6))
}

/// Records `record`, replacing what its organization had.
pub(crate) async fn put_identity_provider(
    c: &impl GenericClient,
    record: &ProviderRecord,
) -> Result<(), StoreError> {
    let idp = &record.provider;
    let nonce = record.pseudonym_key.as_ref().map(|k| k.nonce.to_vec());
    let key = record.pseudonym_key.as_ref().map(|k| k.ciphertext.clone());
    c.execute(
        &format!(
            "INSERT INTO identity_providers ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (organization) DO UPDATE SET issuer = EXCLUDED.issuer,
               client_id = EXCLUDED.client_id, pseudonymous = EXCLUDED.pseudonymous,
               added_at = EXCLUDED.added_at, pseudonym_nonce = EXCLUDED.pseudonym_nonce,
               pseudonym_key = EXCLUDED.pseudonym_key"
        ),
        &[
            &idp.organization,
            &idp.issuer,
            &idp.client_id,
            &idp.pseudonymous,
            &idp.added_at,
            &nonce,
            &key,
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn identity_provider(
    c: &impl GenericClient,
    organization: &str,
) -> Result<Option<ProviderRecord>, StoreError> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM identity_providers WHERE organization = $1"),
        &[&organization],
    )
    .await?
    .as_ref()
    .map(record_of)
    .transpose()
}

pub(crate) async fn identity_providers(
    c: &impl GenericClient,
) -> Result<Vec<IdentityProvider>, StoreError> {
    Ok(c.query(
        &format!("SELECT {COLUMNS} FROM identity_providers ORDER BY organization"),
        &[],
    )
    .await?
    .iter()
    .map(provider_of)
    .collect())
}

pub(crate) async fn remove_identity_provider(
    c: &impl GenericClient,
    organization: &str,
) -> Result<bool, StoreError> {
    Ok(c.execute(
        "DELETE FROM identity_providers WHERE organization = $1",
        &[&organization],
    )
    .await?
        > 0)
}
