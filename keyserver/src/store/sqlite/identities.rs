//! SQL of the key server's identities: certificates and principals, workflow grants, users and
//! application builds, and the directory snapshot for standalone authz and ARDS.

use rusqlite::{params, Connection, OptionalExtension};

use super::pool::is_constraint;
use crate::pki::{Principal, PrincipalKind};
use crate::store::{StoreError, UserRow};
use crate::wire::{AppCode, AppInfo, DeviceInfo, DirectorySnapshot};

/// Everything [`DirectorySnapshot`] holds, read in one transaction.
pub(crate) fn directory_snapshot(conn: &mut Connection) -> Result<DirectorySnapshot, StoreError> {
    let tx = conn.transaction()?;
    let mut snap = crate::store::snapshot_of_principals(all_principals(&tx)?);
    let mut st = tx.prepare("SELECT name, disabled FROM users")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (name, disabled) = row?;
        snap.users.insert(name, disabled == 0);
    }
    let mut st = tx.prepare("SELECT digest, revoked_at FROM applications")?;
    for row in st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
    })? {
        let (digest, revoked) = row?;
        snap.applications.insert(digest, revoked.is_none());
    }
    let mut st = tx.prepare("SELECT name, scopes, paths FROM workflows")?;
    for row in st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })? {
        let (name, scopes, paths) = row?;
        if let (Ok(scopes), Ok(paths)) =
            (serde_json::from_str(&scopes), serde_json::from_str(&paths))
        {
            snap.workflows
                .insert(name, authz::principal::WorkflowGrant { scopes, paths });
        }
    }
    Ok(snap)
}

/// Records (or replaces) what workflow principal `name` may authorize.
pub(crate) fn put_workflow(
    conn: &Connection,
    name: &str,
    grant: &authz::principal::WorkflowGrant,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO workflows (name, scopes, paths, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name) DO UPDATE SET scopes = ?2, paths = ?3, updated_at = ?4",
        params![
            name,
            serde_json::to_string(&grant.scopes).unwrap_or_else(|_| "[]".into()),
            serde_json::to_string(&grant.paths).unwrap_or_else(|_| "[]".into()),
            now
        ],
    )?;
    Ok(())
}

/// What workflow principal `name` may authorize (`None`: no grant recorded).
pub(crate) fn get_workflow(
    conn: &Connection,
    name: &str,
) -> Result<Option<authz::principal::WorkflowGrant>, StoreError> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT scopes, paths FROM workflows WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.and_then(|(scopes, paths)| {
        Some(authz::principal::WorkflowGrant {
            scopes: serde_json::from_str(&scopes).ok()?,
            paths: serde_json::from_str(&paths).ok()?,
        })
    }))
}

pub(crate) fn insert_cert(
    conn: &Connection,
    p: &Principal,
    hpke_public: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO certs (serial, name, kind, hpke_public, issued_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![p.serial, p.name, p.kind.as_str(), hpke_public, now],
    )
    .map_err(|e| if is_constraint(&e) { StoreError::Conflict(format!("certificate {}", p.serial)) } else { e.into() })?;
    Ok(())
}

pub(crate) fn active_cert_exists(
    conn: &Connection,
    kind: PrincipalKind,
    name: &str,
) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM certs WHERE kind = ?1 AND name = ?2 AND revoked_at IS NULL",
            params![kind.as_str(), name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// A certificate of `kind` was ever issued to `name` (revoked or not).
pub(crate) fn cert_exists(
    conn: &Connection,
    kind: PrincipalKind,
    name: &str,
) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM certs WHERE kind = ?1 AND name = ?2",
            params![kind.as_str(), name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

pub(crate) fn revoke_certs(
    conn: &Connection,
    kind: PrincipalKind,
    name: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE certs SET revoked_at = ?3 WHERE kind = ?1 AND name = ?2 AND revoked_at IS NULL",
        params![kind.as_str(), name, now],
    )?)
}

pub(crate) fn all_principals(conn: &Connection) -> Result<Vec<Principal>, StoreError> {
    let mut st = conn.prepare("SELECT serial, name, kind, revoked_at FROM certs")?;
    let rows = st.query_map([], |r| {
        let kind: String = r.get(2)?;
        Ok(Principal {
            serial: r.get(0)?,
            name: r.get(1)?,
            kind: PrincipalKind::parse(&kind).unwrap_or(PrincipalKind::Device),
            revoked: r.get::<_, Option<i64>>(3)?.is_some(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn list_certs(conn: &Connection) -> Result<Vec<DeviceInfo>, StoreError> {
    let mut st = conn.prepare(
        "SELECT name, kind, serial, issued_at, revoked_at FROM certs ORDER BY issued_at, name",
    )?;
    let rows = st.query_map([], |r| {
        let kind: String = r.get(1)?;
        Ok(DeviceInfo {
            name: r.get(0)?,
            kind: PrincipalKind::parse(&kind).unwrap_or(PrincipalKind::Device),
            serial: r.get(2)?,
            issued_at: r.get(3)?,
            revoked_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The X25519 public key recorded at enrollment of the device's active certificate.
pub(crate) fn device_hpke_public(
    conn: &Connection,
    name: &str,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT hpke_public FROM certs WHERE kind = 'device' AND name = ?1 AND revoked_at IS NULL
             ORDER BY issued_at DESC LIMIT 1",
            params![name],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

// ---------- users ----------

pub(crate) fn add_user(
    conn: &Connection,
    name: &str,
    password_hash: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO users (name, password_hash, created_at) VALUES (?1, ?2, ?3)",
        params![name, password_hash, now],
    )
    .map_err(|e| {
        if is_constraint(&e) {
            StoreError::Conflict(format!("user {name}"))
        } else {
            e.into()
        }
    })?;
    Ok(())
}

pub(crate) fn get_user(conn: &Connection, name: &str) -> Result<Option<UserRow>, StoreError> {
    // Cached statements: these run on every license request.
    Ok(conn
        .prepare_cached(
            "SELECT name, password_hash, generation, disabled FROM users WHERE name = ?1",
        )?
        .query_row(params![name], |r| {
            Ok(UserRow {
                name: r.get(0)?,
                password_hash: r.get(1)?,
                generation: r.get::<_, i64>(2)? as u64,
                disabled: r.get::<_, i64>(3)? != 0,
            })
        })
        .optional()?)
}

/// Disables a user and bumps the generation, so every outstanding token stops working.
pub(crate) fn disable_user(conn: &Connection, name: &str) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE users SET disabled = 1, generation = generation + 1 WHERE name = ?1",
        params![name],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("user {name}")));
    }
    Ok(())
}

/// Clears `disabled` only: the generation the disable bumped stays, so no token from before it
/// works again.
pub(crate) fn enable_user(conn: &Connection, name: &str) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE users SET disabled = 0 WHERE name = ?1",
        params![name],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("user {name}")));
    }
    Ok(())
}

pub(crate) fn list_users(conn: &Connection) -> Result<Vec<crate::wire::UserInfo>, StoreError> {
    let mut st = conn.prepare("SELECT name, disabled, created_at FROM users ORDER BY name")?;
    let rows = st.query_map([], |r| {
        Ok(crate::wire::UserInfo {
            name: r.get(0)?,
            disabled: r.get(1)?,
            created_at: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// ---------- applications ----------

pub(crate) fn register_app(conn: &Connection, app: &AppInfo) -> Result<(), StoreError> {
    let libraries = serde_json::to_string(&app.code.libraries).expect("strings serialize");
    conn.execute(
        "INSERT INTO applications (digest, name, version, vendor, registered_at, allow_jit, allow_userns, libraries) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![app.digest, app.name, app.version, app.vendor, app.registered_at, app.code.allow_jit, app.code.allow_user_namespaces, libraries],
    )
    .map_err(|e| if is_constraint(&e) { StoreError::Conflict(format!("application {}", app.digest)) } else { e.into() })?;
    Ok(())
}

/// The columns [`app_from_row`] reads, in its order.
const APP_COLUMNS: &str =
    "digest, name, version, vendor, registered_at, revoked_at, allow_jit, allow_userns, libraries";

fn app_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AppInfo> {
    let libraries: String = r.get(8)?;
    let libraries = serde_json::from_str(&libraries).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(AppInfo {
        digest: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        vendor: r.get(3)?,
        registered_at: r.get(4)?,
        revoked_at: r.get(5)?,
        code: AppCode {
            allow_jit: r.get(6)?,
            allow_user_namespaces: r.get(7)?,
            libraries,
        },
    })
}

pub(crate) fn get_app(conn: &Connection, digest: &str) -> Result<Option<AppInfo>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {APP_COLUMNS} FROM applications WHERE digest = ?1"
        ))?
        .query_row(params![digest], app_from_row)
        .optional()?)
}

pub(crate) fn list_apps(conn: &Connection) -> Result<Vec<AppInfo>, StoreError> {
    let mut st = conn.prepare(&format!(
        "SELECT {APP_COLUMNS} FROM applications ORDER BY name, version"
    ))?;
    let rows = st.query_map([], app_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn revoke_app_digest(
    conn: &Connection,
    digest: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE applications SET revoked_at = ?2 WHERE digest = ?1 AND revoked_at IS NULL",
        params![digest, now],
    )?)
}

pub(crate) fn revoke_app_name_version(
    conn: &Connection,
    name: &str,
    version: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE applications SET revoked_at = ?3 WHERE name = ?1 AND version = ?2 AND revoked_at IS NULL",
        params![name, version, now],
    )?)
}
