//! Users: `POST /v1/admin/users` (argon2id password hash), `GET /v1/admin/users` (names and
//! standing, never hashes), `POST /v1/admin/users/{name}/disable` (every token void, a
//! revocation event) and `POST /v1/admin/users/{name}/enable` (logins again; older tokens stay
//! void).

use axum::extract::{Path, State as AxState};
use axum::Json;

use super::audit::audited;
use super::checks::check_name;
use super::peers::AdminPeer;
use super::S;
use crate::error::{ApiError, ApiJson};
use crate::token::hash_password;
use crate::wire::AddUserRequest;

pub(crate) async fn add_user(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    ApiJson(req): ApiJson<AddUserRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_name("name", &req.name)?;
    if req.password.expose().chars().count() < 8 {
        return Err(ApiError::bad("password", "must be at least 8 characters"));
    }
    let cost = st.password_cost;
    // argon2 is deliberately slow CPU work: on the blocking pool, never on an async worker.
    let (hash, req) =
        tokio::task::spawn_blocking(move || (hash_password(req.password.expose(), cost), req))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    let hash = hash.map_err(|e| ApiError::Internal(e.to_string()))?;
    st.store
        .add_user(&req.name, &hash, st.clock.stamp())
        .await?;
    audited(&st, &admin, "user.add", &req.name).await?;
    Ok(Json(serde_json::json!({ "user": req.name })))
}

pub(crate) async fn disable_user(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_name("name", &name)?;
    st.store.disable_user(&name, st.clock.stamp()).await?;
    audited(&st, &admin, "user.disable", &name).await?;
    Ok(Json(serde_json::json!({ "user": name, "disabled": true })))
}

pub(crate) async fn enable_user(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_name("name", &name)?;
    st.store.enable_user(&name).await?;
    audited(&st, &admin, "user.enable", &name).await?;
    Ok(Json(serde_json::json!({ "user": name, "disabled": false })))
}

pub(crate) async fn list_users(
    AxState(st): AxState<S>,
    AdminPeer(_): AdminPeer,
) -> Result<Json<Vec<crate::wire::UserInfo>>, ApiError> {
    Ok(Json(st.store.users().await?))
}
