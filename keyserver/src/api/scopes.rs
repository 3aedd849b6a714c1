//! Key scopes: creation (a random scope id and a first seed, sealed under the root key),
//! listing, rotation (a new seed version for new assets) and revocation of a seed version
//! (every license under it ends: a revocation event).

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::Json;

use super::audit::audited;
use super::checks::{check_name, new_id};
use super::peers::AdminPeer;
use super::S;
use crate::error::{ApiError, ApiJson};
use crate::keys::Seed;
use crate::server::State;
use crate::wire::*;

pub(crate) async fn create_scope(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    ApiJson(req): ApiJson<CreateScopeRequest>,
) -> Result<Json<ScopeInfo>, ApiError> {
    check_name("name", &req.name)?;
    let scope_id = new_id()?;
    let seed = Seed::generate().map_err(|e| ApiError::Internal(e.to_string()))?;
    let sealed = st
        .root
        .seal_seed(&req.name, 1, &seed)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    drop(seed);
    st.store
        .create_scope(&req.name, &scope_id, &sealed, st.clock.stamp())
        .await?;
    audited(&st, &admin, "scope.create", &req.name).await?;
    Ok(Json(ScopeInfo {
        name: req.name,
        scope_id: hex::encode(scope_id),
        current_version: 1,
        revoked_versions: Vec::new(),
    }))
}

async fn scope_info(st: &State, name: &str) -> Result<ScopeInfo, ApiError> {
    st.store
        .scope_info(name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("scope {name}")))
}

pub(crate) async fn list_scopes(
    AxState(st): AxState<S>,
    _a: AdminPeer,
) -> Result<Json<Vec<ScopeInfo>>, ApiError> {
    Ok(Json(st.store.scope_infos().await?))
}

pub(crate) async fn rotate_scope(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    Path(name): Path<String>,
) -> Result<Json<ScopeInfo>, ApiError> {
    check_name("name", &name)?;
    let seed = Seed::generate().map_err(|e| ApiError::Internal(e.to_string()))?;
    let sealer = Arc::clone(&st);
    let scope = name.clone();
    // Sealed for the version the store assigns, inside its transaction.
    let seal = Box::new(move |version| {
        sealer
            .root
            .seal_seed(&scope, version, &seed)
            .map_err(|e| e.to_string())
    });
    let v = st.store.rotate_scope(&name, st.clock.stamp(), seal).await?;
    let info = scope_info(&st, &name).await?;
    audited(&st, &admin, "keys.rotate", &format!("{name} v{v}")).await?;
    Ok(Json(info))
}

pub(crate) async fn revoke_key(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RevokeKeyRequest>,
) -> Result<Json<ScopeInfo>, ApiError> {
    check_name("name", &name)?;
    st.store
        .revoke_key_version(&name, req.version, st.clock.now()?)
        .await?;
    let info = scope_info(&st, &name).await?;
    audited(
        &st,
        &admin,
        "keys.revoke",
        &format!("{name} v{}", req.version),
    )
    .await?;
    Ok(Json(info))
}
