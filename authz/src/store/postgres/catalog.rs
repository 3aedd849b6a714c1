//! [`Catalog`] on PostgreSQL: tables `asset_ids` and `organizations` (migration 2). Writes
//! take the authz write lock like every other write.

use tokio_postgres::Row;

use super::{begin_write, pg, PgAuthzStore};
use crate::store::catalog::{AssetMapping, Catalog, Organization};
use crate::store::StoreError;

pub(super) const SCHEMA_2: &str = "
CREATE TABLE asset_ids (
  scope TEXT NOT NULL,
  value TEXT NOT NULL,
  path TEXT NOT NULL,
  PRIMARY KEY (scope, value)
);
CREATE TABLE organizations (
  name TEXT PRIMARY KEY,
  deleg_authentication BOOLEAN NOT NULL,
  deleg_authorization BOOLEAN NOT NULL,
  deleg_asset_protection BOOLEAN NOT NULL,
  created_at BIGINT NOT NULL
);
";

fn mapping(r: &Row) -> AssetMapping {
    AssetMapping {
        scope: r.get(0),
        value: r.get(1),
        path: r.get(2),
    }
}

fn organization(r: &Row) -> Organization {
    Organization {
        name: r.get(0),
        authentication: r.get(1),
        authorization: r.get(2),
        asset_protection: r.get(3),
        created_at: r.get(4),
    }
}

const ORG_COLUMNS: &str =
    "name, deleg_authentication, deleg_authorization, deleg_asset_protection, created_at";

#[async_trait::async_trait]
impl Catalog for PgAuthzStore {
    async fn put_asset_mappings(&self, entries: Vec<AssetMapping>) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        for e in &entries {
            tx.execute(
                "INSERT INTO asset_ids (scope, value, path) VALUES ($1, $2, $3)
                 ON CONFLICT (scope, value) DO UPDATE SET path = excluded.path",
                &[&e.scope, &e.value, &e.path],
            )
            .await
            .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(entries.len())
    }

    async fn asset_mappings(&self) -> Result<Vec<AssetMapping>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT scope, value, path FROM asset_ids ORDER BY scope, value",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(mapping).collect())
    }

    async fn lookup_assets(
        &self,
        ids: Vec<(String, String)>,
    ) -> Result<Vec<AssetMapping>, StoreError> {
        let (scopes, values): (Vec<String>, Vec<String>) = ids.into_iter().unzip();
        let rows = self
            .client()
            .await?
            .query(
                "SELECT a.scope, a.value, a.path FROM asset_ids a
                 JOIN unnest($1::text[], $2::text[]) AS q(scope, value)
                   ON a.scope = q.scope AND a.value = q.value",
                &[&scopes, &values],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(mapping).collect())
    }

    async fn add_organization(&self, org: Organization) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        let n = tx
            .execute(
                "INSERT INTO organizations (name, deleg_authentication, deleg_authorization, deleg_asset_protection, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
                &[
                    &org.name,
                    &org.authentication,
                    &org.authorization,
                    &org.asset_protection,
                    &org.created_at,
                ],
            )
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(n == 1)
    }

    async fn organizations(&self) -> Result<Vec<Organization>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {ORG_COLUMNS} FROM organizations ORDER BY name"),
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(organization).collect())
    }

    async fn organization(&self, name: &str) -> Result<Option<Organization>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {ORG_COLUMNS} FROM organizations WHERE name = $1"),
                &[&name],
            )
            .await
            .map_err(pg)?;
        Ok(row.as_ref().map(organization))
    }

    async fn remove_organization(&self, name: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = begin_write(&mut client).await?;
        let n = tx
            .execute("DELETE FROM organizations WHERE name = $1", &[&name])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(n == 1)
    }
}
