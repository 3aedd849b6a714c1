//! [`Catalog`] on SQLite: tables `asset_ids` and `organizations` (migration 3).

use rusqlite::{params, OptionalExtension, Row};

use super::SqliteAuthzStore;
use crate::store::catalog::{AssetMapping, Catalog, Organization};
use crate::store::StoreError;

pub(super) const SCHEMA_3: &str = "
CREATE TABLE IF NOT EXISTS asset_ids (
  scope TEXT NOT NULL,
  value TEXT NOT NULL,
  path TEXT NOT NULL,
  PRIMARY KEY (scope, value)
);
CREATE TABLE IF NOT EXISTS organizations (
  name TEXT PRIMARY KEY,
  deleg_authentication INTEGER NOT NULL,
  deleg_authorization INTEGER NOT NULL,
  deleg_asset_protection INTEGER NOT NULL,
  created_at INTEGER NOT NULL
);
";

fn mapping(r: &Row<'_>) -> rusqlite::Result<AssetMapping> {
    Ok(AssetMapping {
        scope: r.get(0)?,
        value: r.get(1)?,
        path: r.get(2)?,
    })
}

fn organization(r: &Row<'_>) -> rusqlite::Result<Organization> {
    Ok(Organization {
        name: r.get(0)?,
        authentication: r.get(1)?,
        authorization: r.get(2)?,
        asset_protection: r.get(3)?,
        created_at: r.get(4)?,
    })
}

const ORG_COLUMNS: &str =
    "name, deleg_authentication, deleg_authorization, deleg_asset_protection, created_at";

#[async_trait::async_trait]
impl Catalog for SqliteAuthzStore {
    async fn put_asset_mappings(&self, entries: Vec<AssetMapping>) -> Result<usize, StoreError> {
        self.with(move |db| {
            let tx = db.conn.transaction()?;
            for e in &entries {
                tx.execute(
                    "INSERT INTO asset_ids (scope, value, path) VALUES (?1, ?2, ?3)
                     ON CONFLICT (scope, value) DO UPDATE SET path = excluded.path",
                    params![e.scope, e.value, e.path],
                )?;
            }
            tx.commit()?;
            Ok(entries.len())
        })
        .await
    }

    async fn asset_mappings(&self) -> Result<Vec<AssetMapping>, StoreError> {
        self.with(|db| {
            let mut stmt = db
                .conn
                .prepare("SELECT scope, value, path FROM asset_ids ORDER BY scope, value")?;
            let rows = stmt.query_map([], mapping)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn lookup_assets(
        &self,
        ids: Vec<(String, String)>,
    ) -> Result<Vec<AssetMapping>, StoreError> {
        self.with(move |db| {
            let mut stmt = db.conn.prepare(
                "SELECT scope, value, path FROM asset_ids WHERE scope = ?1 AND value = ?2",
            )?;
            let mut out = Vec::new();
            for (scope, value) in &ids {
                if let Some(m) = stmt.query_row(params![scope, value], mapping).optional()? {
                    out.push(m);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn add_organization(&self, org: Organization) -> Result<bool, StoreError> {
        self.with(move |db| {
            let n = db.conn.execute(
                "INSERT INTO organizations (name, deleg_authentication, deleg_authorization, deleg_asset_protection, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO NOTHING",
                params![
                    org.name,
                    org.authentication,
                    org.authorization,
                    org.asset_protection,
                    org.created_at
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn organizations(&self) -> Result<Vec<Organization>, StoreError> {
        self.with(|db| {
            let mut stmt = db.conn.prepare(&format!(
                "SELECT {ORG_COLUMNS} FROM organizations ORDER BY name"
            ))?;
            let rows = stmt.query_map([], organization)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn organization(&self, name: &str) -> Result<Option<Organization>, StoreError> {
        let name = name.to_owned();
        self.with(move |db| {
            Ok(db
                .conn
                .query_row(
                    &format!("SELECT {ORG_COLUMNS} FROM organizations WHERE name = ?1"),
                    [name],
                    organization,
                )
                .optional()?)
        })
        .await
    }

    async fn remove_organization(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.with(move |db| {
            Ok(db
                .conn
                .execute("DELETE FROM organizations WHERE name = ?1", [name])?
                == 1)
        })
        .await
    }
}
