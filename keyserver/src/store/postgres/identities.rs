//! SQL of the key server's identities on PostgreSQL: certificates and principals, workflow
//! grants, users, application builds, and the directory snapshot (the SQLite engine's
//! `identities`, statement for statement).

use tokio_postgres::GenericClient;

use super::unique;
use crate::pki::{Principal, PrincipalKind};
use crate::store::{StoreError, UserRow};
use crate::wire::{AppCode, AppInfo, DeviceInfo, DirectorySnapshot, UserInfo};

/// Everything [`DirectorySnapshot`] holds; the caller reads it in one snapshot transaction.
pub(crate) async fn directory_snapshot(
    c: &impl GenericClient,
) -> Result<DirectorySnapshot, StoreError> {
    let mut snap = crate::store::snapshot_of_principals(all_principals(c).await?);
    for r in c.query("SELECT name, disabled FROM users", &[]).await? {
        snap.users.insert(r.get(0), !r.get::<_, bool>(1));
    }
    for r in c
        .query("SELECT digest, revoked_at FROM applications", &[])
        .await?
    {
        snap.applications
            .insert(r.get(0), r.get::<_, Option<i64>>(1).is_none());
    }
    for r in c
        .query("SELECT name, scopes, paths FROM workflows", &[])
        .await?
    {
        let (scopes, paths): (&str, &str) = (r.get(1), r.get(2));
        if let (Ok(scopes), Ok(paths)) = (serde_json::from_str(scopes), serde_json::from_str(paths))
        {
            snap.workflows
                .insert(r.get(0), authz::principal::WorkflowGrant { scopes, paths });
        }
    }
    Ok(snap)
}

pub(crate) async fn put_workflow(
    c: &impl GenericClient,
    name: &str,
    grant: &authz::principal::WorkflowGrant,
    now: i64,
) -> Result<(), StoreError> {
    let scopes = serde_json::to_string(&grant.scopes).unwrap_or_else(|_| "[]".into());
    let paths = serde_json::to_string(&grant.paths).unwrap_or_else(|_| "[]".into());
    c.execute(
        "INSERT INTO workflows (name, scopes, paths, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET scopes = $2, paths = $3, updated_at = $4",
        &[&name, &scopes, &paths, &now],
    )
    .await?;
    Ok(())
}

pub(crate) async fn insert_cert(
    c: &impl GenericClient,
    p: &Principal,
    hpke_public: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO certs (serial, name, kind, hpke_public, issued_at) VALUES ($1, $2, $3, $4, $5)",
        &[&p.serial, &p.name, &p.kind.as_str(), &hpke_public, &now],
    )
    .await
    .map_err(|e| unique(e, || format!("certificate {}", p.serial)))?;
    Ok(())
}

pub(crate) async fn active_cert_exists(
    c: &impl GenericClient,
    kind: PrincipalKind,
    name: &str,
) -> Result<bool, StoreError> {
    Ok(c.query_opt(
        "SELECT 1 FROM certs WHERE kind = $1 AND name = $2 AND revoked_at IS NULL LIMIT 1",
        &[&kind.as_str(), &name],
    )
    .await?
    .is_some())
}

pub(crate) async fn revoke_certs(
    c: &impl GenericClient,
    kind: PrincipalKind,
    name: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(c.execute(
        "UPDATE certs SET revoked_at = $3 WHERE kind = $1 AND name = $2 AND revoked_at IS NULL",
        &[&kind.as_str(), &name, &now],
    )
    .await? as usize)
}

pub(crate) async fn all_principals(c: &impl GenericClient) -> Result<Vec<Principal>, StoreError> {
    Ok(
        c.query("SELECT serial, name, kind, revoked_at FROM certs", &[])
            .await?
            .iter()
            .map(|r| Principal {
                serial: r.get(0),
                name: r.get(1),
                kind: PrincipalKind::parse(r.get(2)).unwrap_or(PrincipalKind::Device),
                revoked: r.get::<_, Option<i64>>(3).is_some(),
            })
            .collect(),
    )
}

pub(crate) async fn list_certs(c: &impl GenericClient) -> Result<Vec<DeviceInfo>, StoreError> {
    Ok(c.query(
        "SELECT name, kind, serial, issued_at, revoked_at FROM certs ORDER BY issued_at, name",
        &[],
    )
    .await?
    .iter()
    .map(|r| DeviceInfo {
        name: r.get(0),
        kind: PrincipalKind::parse(r.get(1)).unwrap_or(PrincipalKind::Device),
        serial: r.get(2),
        issued_at: r.get(3),
        revoked_at: r.get(4),
    })
    .collect())
}

pub(crate) async fn device_hpke_public(
    c: &impl GenericClient,
    name: &str,
) -> Result<Option<String>, StoreError> {
    Ok(c.query_opt(
        "SELECT hpke_public FROM certs WHERE kind = 'device' AND name = $1 AND revoked_at IS NULL
             ORDER BY issued_at DESC LIMIT 1",
        &[&name],
    )
    .await?
    .and_then(|r| r.get::<_, Option<String>>(0)))
}

// ---------- users ----------

pub(crate) async fn add_user(
    c: &impl GenericClient,
    name: &str,
    password_hash: &str,
    now: i64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO users (name, password_hash, created_at) VALUES ($1, $2, $3)",
        &[&name, &password_hash, &now],
    )
    .await
    .map_err(|e| unique(e, || format!("user {name}")))?;
    Ok(())
}

pub(crate) async fn get_user(
    c: &impl GenericClient,
    name: &str,
) -> Result<Option<UserRow>, StoreError> {
    Ok(c.query_opt(
        "SELECT name, password_hash, generation, disabled FROM users WHERE name = $1",
        &[&name],
    )
    .await?
    .map(|r| UserRow {
        name: r.get(0),
        password_hash: r.get(1),
        generation: r.get::<_, i64>(2) as u64,
        disabled: r.get(3),
    }))
}

/// Disables a user and bumps the generation, so every outstanding token stops working.
pub(crate) async fn disable_user(c: &impl GenericClient, name: &str) -> Result<(), StoreError> {
    let n = c
        .execute(
            "UPDATE users SET disabled = TRUE, generation = generation + 1 WHERE name = $1",
            &[&name],
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("user {name}")));
    }
    Ok(())
}

/// Clears `disabled` only: the generation the disable bumped stays.
pub(crate) async fn enable_user(c: &impl GenericClient, name: &str) -> Result<(), StoreError> {
    let n = c
        .execute(
            "UPDATE users SET disabled = FALSE WHERE name = $1",
            &[&name],
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("user {name}")));
    }
    Ok(())
}

pub(crate) async fn list_users(c: &impl GenericClient) -> Result<Vec<UserInfo>, StoreError> {
    Ok(c.query(
        "SELECT name, disabled, created_at FROM users ORDER BY name",
        &[],
    )
    .await?
    .iter()
    .map(|r| UserInfo {
        name: r.get(0),
        disabled: r.get(1),
        created_at: r.get(2),
    })
    .collect())
}

// ---------- applications ----------

pub(crate) async fn register_app(c: &impl GenericClient, app: &AppInfo) -> Result<(), StoreError> {
    let libraries = serde_json::to_string(&app.code.libraries).expect("strings serialize");
    c.execute(
        "INSERT INTO applications (digest, name, version, vendor, registered_at, allow_jit,
                                   allow_userns, libraries)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &app.digest,
            &app.name,
            &app.version,
            &app.vendor,
            &app.registered_at,
            &app.code.allow_jit,
            &app.code.allow_user_namespaces,
            &libraries,
        ],
    )
    .await
    .map_err(|e| unique(e, || format!("application {}", app.digest)))?;
    Ok(())
}

/// The columns [`app_from_row`] reads, in its order.
const APP_COLUMNS: &str =
    "digest, name, version, vendor, registered_at, revoked_at, allow_jit, allow_userns, libraries";

fn app_from_row(r: &tokio_postgres::Row) -> Result<AppInfo, StoreError> {
    let libraries = serde_json::from_str(r.get(8))
        .map_err(|e| StoreError::Worker(format!("application libraries: {e}")))?;
    Ok(AppInfo {
        digest: r.get(0),
        name: r.get(1),
        version: r.get(2),
        vendor: r.get(3),
        registered_at: r.get(4),
        revoked_at: r.get(5),
        code: AppCode {
            allow_jit: r.get(6),
            allow_user_namespaces: r.get(7),
            libraries,
        },
    })
}

pub(crate) async fn get_app(
    c: &impl GenericClient,
    digest: &str,
) -> Result<Option<AppInfo>, StoreError> {
    c.query_opt(
        &format!("SELECT {APP_COLUMNS} FROM applications WHERE digest = $1"),
        &[&digest],
    )
    .await?
    .as_ref()
    .map(app_from_row)
    .transpose()
}

pub(crate) async fn list_apps(c: &impl GenericClient) -> Result<Vec<AppInfo>, StoreError> {
    c.query(
        &format!("SELECT {APP_COLUMNS} FROM applications ORDER BY name, version"),
        &[],
    )
    .await?
    .iter()
    .map(app_from_row)
    .collect()
}

pub(crate) async fn revoke_app_digest(
    c: &impl GenericClient,
    digest: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(c.execute(
        "UPDATE applications SET revoked_at = $2 WHERE digest = $1 AND revoked_at IS NULL",
        &[&digest, &now],
    )
    .await? as usize)
}

/// Revokes every unrevoked build named `name` `version`; the digests it revoked.
pub(crate) async fn revoke_app_name_version(
    c: &impl GenericClient,
    name: &str,
    version: &str,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(c.query(
        "UPDATE applications SET revoked_at = $3
             WHERE name = $1 AND version = $2 AND revoked_at IS NULL RETURNING digest",
        &[&name, &version, &now],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// Digests registered under `name` (any version, revoked or not).
pub(crate) async fn app_digests_named(
    c: &impl GenericClient,
    name: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(
        c.query("SELECT digest FROM applications WHERE name = $1", &[&name])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    )
}
