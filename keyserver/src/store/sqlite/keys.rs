//! SQL of key scopes and their seed versions, of the asset registry with its write
//! generations, and the license path's reads through the read cache.

use rusqlite::{params, Connection, OptionalExtension};

use super::identities::{get_app, get_user};
use super::pool::is_constraint;
use crate::keys::SealedSeed;
use crate::readcache::ReadCache;
use crate::store::{
    LicenseReads, LicenseRows, RowsWanted, ScopeRow, ScopeVersionRow, StoreError, UserRow,
};
use crate::wire::{AppInfo, AssetInfo, ScopeInfo};

pub(crate) fn create_scope(
    conn: &mut Connection,
    name: &str,
    scope_id: &[u8; 16],
    sealed: &SealedSeed,
    now: i64,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO scopes (name, scope_id, current_version, created_at) VALUES (?1, ?2, 1, ?3)",
        params![name, &scope_id[..], now],
    )
    .map_err(|e| {
        if is_constraint(&e) {
            StoreError::Conflict(format!("scope {name}"))
        } else {
            e.into()
        }
    })?;
    insert_version(&tx, name, 1, sealed, now)?;
    tx.commit()?;
    Ok(())
}

fn insert_version(
    conn: &Connection,
    name: &str,
    version: u32,
    sealed: &SealedSeed,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO scope_versions (scope, version, nonce, sealed_seed, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![name, version, &sealed.nonce[..], sealed.ciphertext, now],
    )?;
    Ok(())
}

/// Adds version `current + 1` with the seed `seal(version)` returns, and makes it current.
pub(crate) fn rotate_scope(
    conn: &mut Connection,
    name: &str,
    now: i64,
    seal: impl FnOnce(u32) -> Result<SealedSeed, StoreError>,
) -> Result<u32, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let current: u32 = tx
        .query_row(
            "SELECT current_version FROM scopes WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("scope {name}")))?;
    let next = current + 1;
    let sealed = seal(next)?;
    insert_version(&tx, name, next, &sealed, now)?;
    tx.execute(
        "UPDATE scopes SET current_version = ?2 WHERE name = ?1",
        params![name, next],
    )?;
    tx.commit()?;
    Ok(next)
}

pub(crate) fn revoke_version(
    conn: &Connection,
    name: &str,
    version: u32,
    now: i64,
) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE scope_versions SET revoked_at = COALESCE(revoked_at, ?3) WHERE scope = ?1 AND version = ?2",
        params![name, version, now],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "scope {name} version {version}"
        )));
    }
    Ok(())
}

pub(crate) fn get_scope(conn: &Connection, name: &str) -> Result<Option<ScopeRow>, StoreError> {
    let row = conn
        .query_row(
            "SELECT name, scope_id, current_version FROM scopes WHERE name = ?1",
            params![name],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, u32>(2)?,
                ))
            },
        )
        .optional()?;
    row.map(|(name, id, v)| {
        let scope_id: [u8; 16] = id
            .try_into()
            .map_err(|_| StoreError::Worker(format!("scope {name}: malformed scope id")))?;
        Ok(ScopeRow {
            name,
            scope_id,
            current_version: v,
        })
    })
    .transpose()
}

pub(crate) fn get_scope_version(
    conn: &Connection,
    name: &str,
    version: u32,
) -> Result<Option<ScopeVersionRow>, StoreError> {
    // Cached statement: looked up once per grant of a batch license.
    let row = conn
        .prepare_cached(
            "SELECT nonce, sealed_seed, revoked_at FROM scope_versions WHERE scope = ?1 AND version = ?2",
        )?
        .query_row(
            params![name, version],
            |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Option<i64>>(2)?)),
        )
        .optional()?;
    row.map(|(nonce, ct, revoked)| {
        let nonce = nonce
            .try_into()
            .map_err(|_| StoreError::Worker(format!("scope {name} v{version}: malformed nonce")))?;
        Ok(ScopeVersionRow {
            sealed: SealedSeed {
                nonce,
                ciphertext: ct,
            },
            revoked: revoked.is_some(),
        })
    })
    .transpose()
}

pub(crate) fn revoked_versions(conn: &Connection, name: &str) -> Result<Vec<u32>, StoreError> {
    let mut st = conn.prepare(
        "SELECT version FROM scope_versions WHERE scope = ?1 AND revoked_at IS NOT NULL ORDER BY version",
    )?;
    let rows = st.query_map(params![name], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn list_scopes(conn: &Connection) -> Result<Vec<ScopeRow>, StoreError> {
    let mut st = conn.prepare("SELECT name FROM scopes ORDER BY name")?;
    let names: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    names
        .iter()
        .filter_map(|n| get_scope(conn, n).transpose())
        .collect()
}

// ---------- assets ----------

pub(crate) fn insert_asset(conn: &Connection, a: &AssetInfo) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO assets (asset_id, scope, version, path, creator, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![a.asset_id, a.scope, a.key_version, a.path, a.creator, a.created_at],
    )
    .map_err(|e| if is_constraint(&e) { StoreError::Conflict(format!("asset {}", a.asset_id)) } else { e.into() })?;
    Ok(())
}

fn asset_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AssetInfo> {
    let scope_id: Vec<u8> = r.get(6)?;
    Ok(AssetInfo {
        asset_id: r.get(0)?,
        scope: r.get(1)?,
        key_version: r.get(2)?,
        path: r.get(3)?,
        creator: r.get(4)?,
        created_at: r.get(5)?,
        scope_id: hex::encode(scope_id),
        generation: r.get(7)?,
        pending_generation: r.get(8)?,
    })
}

const ASSET_SELECT: &str =
    "SELECT a.asset_id, a.scope, a.version, a.path, a.creator, a.created_at, s.scope_id,
            a.generation, a.pending_generation
     FROM assets a JOIN scopes s ON s.name = a.scope";

pub(crate) fn get_asset(
    conn: &Connection,
    asset_id: &str,
) -> Result<Option<AssetInfo>, StoreError> {
    // Cached statement: a batch license looks up every asset, and re-parsing the SQL each time
    // cost more than the lookup itself.
    Ok(conn
        .prepare_cached(&format!("{ASSET_SELECT} WHERE a.asset_id = ?1"))?
        .query_row(params![asset_id], asset_from_row)
        .optional()?)
}

pub(crate) fn list_assets(conn: &Connection) -> Result<Vec<AssetInfo>, StoreError> {
    let mut st = conn.prepare(&format!("{ASSET_SELECT} ORDER BY a.path"))?;
    let rows = st.query_map([], asset_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn rename_asset(
    conn: &Connection,
    asset_id: &str,
    new_path: &str,
) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE assets SET path = ?2 WHERE asset_id = ?1",
        params![asset_id, new_path],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("asset {asset_id}")));
    }
    Ok(())
}

/// Reserves the asset's next write generation: records `generation + 1` as pending unless one
/// is pending already (a writer that crashed before settling: its generation may be in the
/// file, so it stays acceptable and is handed out again).
pub(crate) fn reserve_generation(conn: &Connection, asset_id: &str) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE assets SET pending_generation = generation + 1
         WHERE asset_id = ?1 AND pending_generation IS NULL AND generation < 4294967295",
        params![asset_id],
    )?;
    if n == 0 {
        let pending: Option<Option<u32>> = conn
            .query_row(
                "SELECT pending_generation FROM assets WHERE asset_id = ?1",
                params![asset_id],
                |r| r.get(0),
            )
            .optional()?;
        match pending {
            None => return Err(StoreError::NotFound(format!("asset {asset_id}"))),
            Some(None) => {
                return Err(StoreError::Conflict(format!(
                    "asset {asset_id}: write generations exhausted"
                )))
            }
            Some(Some(_)) => {}
        }
    }
    Ok(())
}

/// Makes the pending generation `generation` the recorded one (idempotent: settling the
/// recorded generation again is a no-op, for a writer whose answer was lost).
pub(crate) fn settle_generation(
    conn: &Connection,
    asset_id: &str,
    generation: u32,
) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE assets SET generation = pending_generation, pending_generation = NULL
         WHERE asset_id = ?1 AND pending_generation = ?2",
        params![asset_id, generation],
    )?;
    if n == 0 {
        let recorded: Option<u32> = conn
            .query_row(
                "SELECT generation FROM assets WHERE asset_id = ?1",
                params![asset_id],
                |r| r.get(0),
            )
            .optional()?;
        match recorded {
            None => return Err(StoreError::NotFound(format!("asset {asset_id}"))),
            Some(g) if g == generation => {}
            Some(_) => {
                return Err(StoreError::Conflict(format!(
                    "asset {asset_id}: generation {generation} is not pending"
                )))
            }
        }
    }
    Ok(())
}

/// A scope with its revoked versions, as the admin API shows it.
pub(crate) fn scope_info(conn: &Connection, name: &str) -> Result<Option<ScopeInfo>, StoreError> {
    let Some(s) = get_scope(conn, name)? else {
        return Ok(None);
    };
    Ok(Some(ScopeInfo {
        revoked_versions: revoked_versions(conn, name)?,
        name: s.name,
        scope_id: hex::encode(s.scope_id),
        current_version: s.current_version,
    }))
}

/// License reads on one connection, through the read cache; rows read inside an explicit
/// transaction (whose snapshot may predate a cache bump) are not stored.
pub(crate) struct SqlReads<'c> {
    pub(crate) conn: &'c Connection,
    pub(crate) cache: &'c ReadCache,
}

impl LicenseReads for SqlReads<'_> {
    fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        let c = self.cache;
        c.through(
            &c.users,
            name.to_string(),
            self.conn.is_autocommit(),
            || get_user(self.conn, name),
        )
    }
    fn app(&self, digest: &str) -> Result<Option<AppInfo>, StoreError> {
        let c = self.cache;
        c.through(
            &c.apps,
            digest.to_string(),
            self.conn.is_autocommit(),
            || get_app(self.conn, digest),
        )
    }
    fn asset(&self, id: &str) -> Result<Option<AssetInfo>, StoreError> {
        let c = self.cache;
        c.through(&c.assets, id.to_string(), self.conn.is_autocommit(), || {
            get_asset(self.conn, id)
        })
    }
    fn scope_version(
        &self,
        scope: &str,
        version: u32,
    ) -> Result<Option<ScopeVersionRow>, StoreError> {
        let c = self.cache;
        let key = (scope.to_string(), version);
        c.through(&c.scope_versions, key, self.conn.is_autocommit(), || {
            get_scope_version(self.conn, scope, version)
        })
    }
}

/// The snapshot of [`RowsWanted`], read through `reads` (on `reads.conn`).
pub(crate) fn license_rows(
    reads: &SqlReads<'_>,
    want: RowsWanted<'_>,
) -> Result<LicenseRows, StoreError> {
    let mut rows = LicenseRows {
        user: reads.user(want.user)?,
        user_name: want.user.to_string(),
        app: reads.app(want.app_digest)?,
        app_digest: want.app_digest.to_string(),
        ..Default::default()
    };
    for id in want.assets {
        let asset = reads.asset(id)?;
        if let Some(a) = &asset {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                rows.versions.entry((a.scope.clone(), a.key_version))
            {
                slot.insert(reads.scope_version(&a.scope, a.key_version)?);
            }
        }
        rows.assets.insert(id.clone(), asset);
    }
    if let Some(scope) = want.create_scope {
        let row = get_scope(reads.conn, scope)?;
        if let Some(s) = &row {
            let version = reads.scope_version(&s.name, s.current_version)?;
            rows.versions
                .insert((s.name.clone(), s.current_version), version);
        }
        rows.create_scope = row;
    }
    Ok(rows)
}

/// The root-key check value: `proposed` recorded if none is, then what is recorded.
pub(crate) fn root_key_check(
    conn: &Connection,
    proposed: &SealedSeed,
) -> Result<SealedSeed, StoreError> {
    conn.execute(
        "INSERT OR IGNORE INTO root_key_check (id, nonce, sealed) VALUES (1, ?1, ?2)",
        params![&proposed.nonce[..], proposed.ciphertext],
    )?;
    let (nonce, ciphertext) = conn.query_row(
        "SELECT nonce, sealed FROM root_key_check WHERE id = 1",
        [],
        |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
    )?;
    let nonce = nonce
        .try_into()
        .map_err(|_| StoreError::Worker("root key check: malformed nonce".into()))?;
    Ok(SealedSeed { nonce, ciphertext })
}
