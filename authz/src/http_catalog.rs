//! The catalog's HTTP API (admins write; admins and auditors read):
//!
//! | method | path | success |
//! |---|---|---|
//! | GET | /v1/asset-ids | 200 `{entries: [{scope, value, path}...]}` |
//! | POST | /v1/asset-ids | 201 `{added: N}` from `{entries: [{scope, value, path}...]}` (replaces existing entries) |
//! | GET | /v1/organizations | 200 `{organizations: [org...]}` |
//! | POST | /v1/organizations | 201 org from `{name, delegate: ["authentication", "authorization", "asset-protection"]}` |
//! | GET | /v1/organizations/{name} | 200 org |
//! | DELETE | /v1/organizations/{name} | 200 `{name, removed: true}` |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::http::{allow, body, id_param, ApiError};
use crate::principal::Caller;
use crate::request::parse_json;
use crate::service::Authz;
use crate::store::AssetMapping;

type AppState = Arc<Authz>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/asset-ids", get(list_asset_ids).post(add_asset_ids))
        .route(
            "/v1/organizations",
            get(list_organizations).post(add_organization),
        )
        .route(
            "/v1/organizations/{name}",
            get(get_organization).delete(remove_organization),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddAssetIds {
    entries: Vec<AssetMapping>,
}

async fn list_asset_ids(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    allow(&caller, "GET", "/v1/asset-ids")?;
    Ok(Json(json!({"entries": s.asset_mappings().await?})).into_response())
}

async fn add_asset_ids(
    State(s): State<AppState>,
    caller: Caller,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    allow(&caller, "POST", "/v1/asset-ids")?;
    let add: AddAssetIds = parse_json(&body(b)?).map_err(crate::service::ServiceError::from)?;
    let n = s.add_asset_mappings(add.entries).await?;
    Ok((StatusCode::CREATED, Json(json!({"added": n}))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddOrganization {
    name: String,
    #[serde(default)]
    delegate: Vec<String>,
}

async fn list_organizations(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    allow(&caller, "GET", "/v1/organizations")?;
    Ok(Json(json!({"organizations": s.organizations().await?})).into_response())
}

async fn add_organization(
    State(s): State<AppState>,
    caller: Caller,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    allow(&caller, "POST", "/v1/organizations")?;
    let add: AddOrganization = parse_json(&body(b)?).map_err(crate::service::ServiceError::from)?;
    let org = s.add_organization(&add.name, &add.delegate).await?;
    Ok((StatusCode::CREATED, Json(org)).into_response())
}

async fn get_organization(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    allow(&caller, "GET", "/v1/organizations/{name}")?;
    id_param(&name)?;
    Ok(Json(s.organization(&name).await?).into_response())
}

async fn remove_organization(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    allow(&caller, "DELETE", "/v1/organizations/{name}")?;
    id_param(&name)?;
    s.remove_organization(&name).await?;
    Ok(Json(json!({"name": name, "removed": true})).into_response())
}
