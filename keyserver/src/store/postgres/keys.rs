//! SQL of key scopes and their seed versions, of the asset registry with its write
//! generations, and the license path's reads, on PostgreSQL (the SQLite engine's `keys`).
//! A license's rows are read in few round trips: the assets of a batch in one query, their
//! seed versions in another.

use std::collections::HashSet;

use tokio_postgres::GenericClient;

use super::unique;
use crate::keys::SealedSeed;
use crate::store::{LicenseRows, RowsWanted, ScopeRow, ScopeVersionRow, StoreError};
use crate::wire::{AssetInfo, ScopeInfo};

pub(crate) async fn create_scope(
    c: &impl GenericClient,
    name: &str,
    scope_id: &[u8; 16],
    sealed: &SealedSeed,
    now: i64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO scopes (name, scope_id, current_version, created_at) VALUES ($1, $2, 1, $3)",
        &[&name, &&scope_id[..], &now],
    )
    .await
    .map_err(|e| unique(e, || format!("scope {name}")))?;
    insert_version(c, name, 1, sealed, now).await
}

pub(crate) async fn insert_version(
    c: &impl GenericClient,
    name: &str,
    version: u32,
    sealed: &SealedSeed,
    now: i64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO scope_versions (scope, version, nonce, sealed_seed, created_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &name,
            &i64::from(version),
            &&sealed.nonce[..],
            &sealed.ciphertext,
            &now,
        ],
    )
    .await?;
    Ok(())
}

/// The current version of scope `name`, its row locked until the transaction ends (a rotation
/// on another replica waits, then sees the new version).
pub(crate) async fn lock_current_version(
    c: &impl GenericClient,
    name: &str,
) -> Result<u32, StoreError> {
    let row = c
        .query_opt(
            "SELECT current_version FROM scopes WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("scope {name}")))?;
    u32_of(row.get(0))
}

pub(crate) async fn set_current_version(
    c: &impl GenericClient,
    name: &str,
    version: u32,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE scopes SET current_version = $2 WHERE name = $1",
        &[&name, &i64::from(version)],
    )
    .await?;
    Ok(())
}

pub(crate) async fn revoke_version(
    c: &impl GenericClient,
    name: &str,
    version: u32,
    now: i64,
) -> Result<(), StoreError> {
    let n = c
        .execute(
            "UPDATE scope_versions SET revoked_at = COALESCE(revoked_at, $3)
             WHERE scope = $1 AND version = $2",
            &[&name, &i64::from(version), &now],
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "scope {name} version {version}"
        )));
    }
    Ok(())
}

fn u32_of(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Worker(format!("stored number {v} out of range")))
}

fn scope_from_row(r: &tokio_postgres::Row) -> Result<ScopeRow, StoreError> {
    let name: String = r.get(0);
    let scope_id: [u8; 16] = r
        .get::<_, &[u8]>(1)
        .try_into()
        .map_err(|_| StoreError::Worker(format!("scope {name}: malformed scope id")))?;
    Ok(ScopeRow {
        name,
        scope_id,
        current_version: u32_of(r.get(2))?,
    })
}

pub(crate) async fn get_scope(
    c: &impl GenericClient,
    name: &str,
) -> Result<Option<ScopeRow>, StoreError> {
    c.query_opt(
        "SELECT name, scope_id, current_version FROM scopes WHERE name = $1",
        &[&name],
    )
    .await?
    .as_ref()
    .map(scope_from_row)
    .transpose()
}

fn version_from_row(
    name: &str,
    version: u32,
    r: &tokio_postgres::Row,
) -> Result<ScopeVersionRow, StoreError> {
    let nonce = r
        .get::<_, &[u8]>("nonce")
        .try_into()
        .map_err(|_| StoreError::Worker(format!("scope {name} v{version}: malformed nonce")))?;
    Ok(ScopeVersionRow {
        sealed: SealedSeed {
            nonce,
            ciphertext: r.get("sealed_seed"),
        },
        revoked: r.get::<_, Option<i64>>("revoked_at").is_some(),
    })
}

/// A scope with its revoked versions, as the admin API shows it.
pub(crate) async fn scope_info(
    c: &impl GenericClient,
    name: &str,
) -> Result<Option<ScopeInfo>, StoreError> {
    let Some(s) = get_scope(c, name).await? else {
        return Ok(None);
    };
    let revoked = c
        .query(
            "SELECT version FROM scope_versions WHERE scope = $1 AND revoked_at IS NOT NULL
             ORDER BY version",
            &[&name],
        )
        .await?
        .iter()
        .map(|r| u32_of(r.get(0)))
        .collect::<Result<_, _>>()?;
    Ok(Some(ScopeInfo {
        revoked_versions: revoked,
        name: s.name,
        scope_id: hex::encode(s.scope_id),
        current_version: s.current_version,
    }))
}

pub(crate) async fn scope_names(c: &impl GenericClient) -> Result<Vec<String>, StoreError> {
    Ok(c.query("SELECT name FROM scopes ORDER BY name", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

// ---------- assets ----------

pub(crate) async fn insert_asset(c: &impl GenericClient, a: &AssetInfo) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO assets (asset_id, scope, version, path, creator, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &a.asset_id,
            &a.scope,
            &i64::from(a.key_version),
            &a.path,
            &a.creator,
            &a.created_at,
        ],
    )
    .await
    .map_err(|e| unique(e, || format!("asset {}", a.asset_id)))?;
    Ok(())
}

const ASSET_SELECT: &str =
    "SELECT a.asset_id, a.scope, a.version, a.path, a.creator, a.created_at, s.scope_id,
            a.generation, a.pending_generation
     FROM assets a JOIN scopes s ON s.name = a.scope";

fn asset_from_row(r: &tokio_postgres::Row) -> Result<AssetInfo, StoreError> {
    Ok(AssetInfo {
        asset_id: r.get(0),
        scope: r.get(1),
        key_version: u32_of(r.get(2))?,
        path: r.get(3),
        creator: r.get(4),
        created_at: r.get(5),
        scope_id: hex::encode(r.get::<_, &[u8]>(6)),
        generation: u32_of(r.get(7))?,
        pending_generation: r.get::<_, Option<i64>>(8).map(u32_of).transpose()?,
    })
}

pub(crate) async fn get_asset(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<AssetInfo>, StoreError> {
    c.query_opt(&format!("{ASSET_SELECT} WHERE a.asset_id = $1"), &[&id])
        .await?
        .as_ref()
        .map(asset_from_row)
        .transpose()
}

pub(crate) async fn list_assets(c: &impl GenericClient) -> Result<Vec<AssetInfo>, StoreError> {
    c.query(&format!("{ASSET_SELECT} ORDER BY a.path"), &[])
        .await?
        .iter()
        .map(asset_from_row)
        .collect()
}

pub(crate) async fn rename_asset(
    c: &impl GenericClient,
    id: &str,
    new_path: &str,
) -> Result<(), StoreError> {
    let n = c
        .execute(
            "UPDATE assets SET path = $2 WHERE asset_id = $1",
            &[&id, &new_path],
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("asset {id}")));
    }
    Ok(())
}

/// Reserves the asset's next write generation (see the SQLite engine's `reserve_generation`:
/// a pending one is handed out again).
pub(crate) async fn reserve_generation(c: &impl GenericClient, id: &str) -> Result<(), StoreError> {
    let n = c
        .execute(
            "UPDATE assets SET pending_generation = generation + 1
             WHERE asset_id = $1 AND pending_generation IS NULL AND generation < 4294967295",
            &[&id],
        )
        .await?;
    if n == 0 {
        let pending = c
            .query_opt(
                "SELECT pending_generation FROM assets WHERE asset_id = $1",
                &[&id],
            )
            .await?
            .map(|r| r.get::<_, Option<i64>>(0));
        match pending {
            None => return Err(StoreError::NotFound(format!("asset {id}"))),
            Some(None) => {
                return Err(StoreError::Conflict(format!(
                    "asset {id}: write generations exhausted"
                )))
            }
            Some(Some(_)) => {}
        }
    }
    Ok(())
}

/// Makes the pending generation `generation` the recorded one (idempotent).
pub(crate) async fn settle_generation(
    c: &impl GenericClient,
    id: &str,
    generation: u32,
) -> Result<(), StoreError> {
    let g = i64::from(generation);
    let n = c
        .execute(
            "UPDATE assets SET generation = pending_generation, pending_generation = NULL
             WHERE asset_id = $1 AND pending_generation = $2",
            &[&id, &g],
        )
        .await?;
    if n == 0 {
        let recorded = c
            .query_opt("SELECT generation FROM assets WHERE asset_id = $1", &[&id])
            .await?
            .map(|r| r.get::<_, i64>(0));
        match recorded {
            None => return Err(StoreError::NotFound(format!("asset {id}"))),
            Some(r) if r == g => {}
            Some(_) => {
                return Err(StoreError::Conflict(format!(
                    "asset {id}: generation {generation} is not pending"
                )))
            }
        }
    }
    Ok(())
}

/// The snapshot of [`RowsWanted`]; the caller runs it in one snapshot transaction when it
/// reads more than one asset.
pub(crate) async fn license_rows(
    c: &impl GenericClient,
    want: RowsWanted<'_>,
) -> Result<LicenseRows, StoreError> {
    let mut rows = LicenseRows {
        user: super::identities::get_user(c, want.user).await?,
        user_name: want.user.to_string(),
        app: super::identities::get_app(c, want.app_digest).await?,
        app_digest: want.app_digest.to_string(),
        ..Default::default()
    };
    let mut versions: Vec<(String, u32)> = Vec::new();
    let mut seen = HashSet::new();
    if !want.assets.is_empty() {
        for r in c
            .query(
                &format!("{ASSET_SELECT} WHERE a.asset_id = ANY($1)"),
                &[&want.assets],
            )
            .await?
        {
            let a = asset_from_row(&r)?;
            if seen.insert((a.scope.clone(), a.key_version)) {
                versions.push((a.scope.clone(), a.key_version));
            }
            rows.assets.insert(a.asset_id.clone(), Some(a));
        }
        for id in want.assets {
            rows.assets.entry(id.clone()).or_insert(None);
        }
    }
    if let Some(scope) = want.create_scope {
        let row = get_scope(c, scope).await?;
        if let Some(s) = &row {
            if seen.insert((s.name.clone(), s.current_version)) {
                versions.push((s.name.clone(), s.current_version));
            }
        }
        rows.create_scope = row;
    }
    if !versions.is_empty() {
        let scopes: Vec<&str> = versions.iter().map(|(s, _)| s.as_str()).collect();
        let numbers: Vec<i64> = versions.iter().map(|(_, v)| i64::from(*v)).collect();
        for (s, v) in &versions {
            rows.versions.insert((s.clone(), *v), None);
        }
        for r in c
            .query(
                "SELECT v.scope, v.version, v.nonce, v.sealed_seed, v.revoked_at
                 FROM scope_versions v
                 JOIN UNNEST($1::text[], $2::bigint[]) AS w(scope, version)
                   ON v.scope = w.scope AND v.version = w.version",
                &[&scopes, &numbers],
            )
            .await?
        {
            let scope: String = r.get("scope");
            let version = u32_of(r.get("version"))?;
            let row = version_from_row(&scope, version, &r)?;
            rows.versions.insert((scope, version), Some(row));
        }
    }
    Ok(rows)
}

/// The root-key check value: `proposed` recorded if none is, then what is recorded (a replica
/// inserting at the same moment waits on the key's conflict and then reads the winner's).
pub(crate) async fn root_key_check(
    c: &impl GenericClient,
    proposed: &SealedSeed,
) -> Result<SealedSeed, StoreError> {
    c.execute(
        "INSERT INTO root_key_check (id, nonce, sealed) VALUES (1, $1, $2)
         ON CONFLICT (id) DO NOTHING",
        &[&&proposed.nonce[..], &proposed.ciphertext],
    )
    .await?;
    let r = c
        .query_one("SELECT nonce, sealed FROM root_key_check WHERE id = 1", &[])
        .await?;
    let nonce = r
        .get::<_, &[u8]>("nonce")
        .try_into()
        .map_err(|_| StoreError::Worker("root key check: malformed nonce".into()))?;
    Ok(SealedSeed {
        nonce,
        ciphertext: r.get("sealed"),
    })
}
