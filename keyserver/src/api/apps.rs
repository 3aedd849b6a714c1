//! Application builds: registration with what each may map beyond the mount's defaults,
//! listing, revocation (by digest, or every build of a name and version: [`RevokeTarget`]),
//! and `GET /v1/apps/{digest}/code` for mounts.

use axum::extract::{Path, State as AxState};
use axum::Json;

use super::audit::audited;
use super::checks::{check_digest, check_name};
use super::peers::{AdminPeer, DevicePeer};
use super::S;
use crate::error::{ApiError, ApiJson};
use crate::store::RevokeTarget;
use crate::wire::*;

pub(crate) async fn register_app(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    ApiJson(req): ApiJson<RegisterAppRequest>,
) -> Result<Json<AppInfo>, ApiError> {
    check_digest("digest", &req.digest)?;
    check_name("name", &req.name)?;
    check_name("version", &req.version)?;
    if let Some(v) = &req.vendor {
        check_name("vendor", v)?;
    }
    for library in &req.code.libraries {
        check_digest("code.libraries", library)?;
    }
    let app = AppInfo {
        digest: req.digest,
        name: req.name,
        version: req.version,
        vendor: req.vendor,
        registered_at: st.clock.stamp(),
        revoked_at: None,
        code: req.code,
    };
    st.store.register_app(&app).await?;
    let what = format!("{} {} {}", app.name, app.version, app.digest);
    audited(&st, &admin, "app.register", &what).await?;
    Ok(Json(app))
}

/// What a registered, unrevoked build may map beyond the defaults: asked by a mount whose
/// caller maps more than its executable and system libraries. Unknown and revoked builds are
/// 404 (the mount then allows nothing beyond the defaults).
pub(crate) async fn app_code(
    AxState(st): AxState<S>,
    _device: DevicePeer,
    Path(digest): Path<String>,
) -> Result<Json<AppCode>, ApiError> {
    check_digest("digest", &digest)?;
    let app = st
        .store
        .app(&digest)
        .await?
        .filter(|a| a.revoked_at.is_none())
        .ok_or_else(|| ApiError::NotFound("application".into()))?;
    Ok(Json(app.code))
}

pub(crate) async fn list_apps(
    AxState(st): AxState<S>,
    _a: AdminPeer,
) -> Result<Json<Vec<AppInfo>>, ApiError> {
    Ok(Json(st.store.apps().await?))
}

/// The builds a revocation request names: one digest, or a name and a version — never a mix.
fn revoke_target(req: RevokeAppRequest) -> Result<RevokeTarget, ApiError> {
    match (req.digest, req.name, req.version) {
        (Some(digest), None, None) => {
            check_digest("digest", &digest)?;
            Ok(RevokeTarget::Digest(digest))
        }
        (None, Some(name), Some(version)) => {
            check_name("name", &name)?;
            check_name("version", &version)?;
            Ok(RevokeTarget::NameVersion { name, version })
        }
        _ => Err(ApiError::bad(
            "digest",
            "give either digest, or name and version",
        )),
    }
}

pub(crate) async fn revoke_app(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    ApiJson(req): ApiJson<RevokeAppRequest>,
) -> Result<Json<Revoked>, ApiError> {
    let target = revoke_target(req)?;
    let revoked = st.store.revoke_apps(&target, st.clock.now()?).await?;
    if revoked == 0 {
        return Err(ApiError::NotFound(format!(
            "registered, unrevoked application {target}"
        )));
    }
    audited(&st, &admin, "app.revoke", &target.to_string()).await?;
    Ok(Json(Revoked { revoked }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(digest: Option<&str>, name: Option<&str>, version: Option<&str>) -> RevokeAppRequest {
        RevokeAppRequest {
            digest: digest.map(str::to_string),
            name: name.map(str::to_string),
            version: version.map(str::to_string),
        }
    }

    /// A request names builds one way: a digest alone, or a name with a version. Any other
    /// mix (which the old code sent to an `unreachable!`) is a 400 naming the field.
    #[test]
    fn a_revocation_names_builds_one_way_only() {
        let d = "a".repeat(64);
        assert_eq!(
            revoke_target(req(Some(&d), None, None)).unwrap(),
            RevokeTarget::Digest(d.clone())
        );
        assert_eq!(
            revoke_target(req(None, Some("nuke"), Some("15.1"))).unwrap(),
            RevokeTarget::NameVersion {
                name: "nuke".into(),
                version: "15.1".into()
            }
        );
        for bad in [
            req(Some(&d), Some("nuke"), None),
            req(Some(&d), None, Some("15.1")),
            req(None, Some("nuke"), None),
            req(None, None, None),
            req(Some("not-a-digest"), None, None),
        ] {
            assert!(matches!(
                revoke_target(bad),
                Err(ApiError::BadRequest { .. })
            ));
        }
    }
}
