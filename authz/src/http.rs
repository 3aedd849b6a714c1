//! The authz HTTP API (axum): routes, JSON error mapping, body limits. Serving over TLS is
//! `crate::tls::serve`; this module only builds the `Router`.
//!
//! | method | path | success |
//! |---|---|---|
//! | POST | /v1/requests | 201 `{id, status, revision, rule_ids, delivered}`; 409 refused `{error, id, status, reasons}` |
//! | GET | /v1/requests/{id} | 200 request view (status, reasons, rule ids, the request) |
//! | PUT | /v1/requests/{id} | 200 `{…, replaced}`; 409 refused (request unchanged) |
//! | DELETE | /v1/requests/{id} | 200 `{id, status: "cancelled", revoked}` |
//! | GET | /v1/policies | 200 `{policies: [...]}` |
//! | POST | /v1/policies | 201 `{policy, revoked_requests, revoked_rules, delivered}` |
//! | DELETE | /v1/policies/{id} | 200 `{id, removed: true}` |
//! | GET | /v1/rules?pep=ID | 200 `{rules: [SignedRule...]}` |
//! | GET | /v1/issuer | 200 `{issuer, public_key}` |
//!
//! Every error is JSON `{"error": "...", "field"?: "..."}`; bad input is 400 and names the field.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::model::check_name;
use crate::service::{Authz, ServiceError};

/// Largest request body accepted (a request naming 256 entities per list fits easily).
pub const BODY_LIMIT: usize = 256 * 1024;

/// An HTTP error with a JSON body. Internal errors are logged and shown generically.
#[derive(Debug)]
pub struct ApiError(StatusCode, serde_json::Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl ApiError {
    fn bad(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("{field}: {message}"), "field": field}),
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Input(i) => ApiError::bad(&i.field, &i.message),
            ServiceError::NotFound { .. } => {
                ApiError(StatusCode::NOT_FOUND, json!({"error": e.to_string()}))
            }
            ServiceError::Refused { id, reasons } => ApiError(
                StatusCode::CONFLICT,
                json!({
                    "error": format!("request {id} refused by global security policy"),
                    "id": id,
                    "status": "refused",
                    "reasons": reasons,
                }),
            ),
            ServiceError::Conflict(m) => ApiError(StatusCode::CONFLICT, json!({"error": m})),
            other => {
                tracing::error!(error = %other, "internal error");
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal error; see the authz log"}),
                )
            }
        }
    }
}

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        let status = r.status();
        let (field, msg) = if status == StatusCode::PAYLOAD_TOO_LARGE {
            ("body", format!("larger than {BODY_LIMIT} bytes"))
        } else {
            ("body", r.body_text())
        };
        ApiError(
            status,
            json!({"error": format!("{field}: {msg}"), "field": field}),
        )
    })
}

fn id_param(id: &str) -> Result<(), ApiError> {
    check_name(id).map_err(|m| ApiError::bad("id", m))
}

type AppState = Arc<Authz>;

/// Builds the router; serve it with `crate::tls::serve` (or test it with `oneshot`).
pub fn app(state: Arc<Authz>) -> Router {
    let protected = Router::new()
        .route("/v1/requests", axum::routing::post(submit))
        .route(
            "/v1/requests/{id}",
            get(get_request).put(change_request).delete(cancel_request),
        )
        .route("/v1/policies", get(list_policies).post(add_policy))
        .route("/v1/policies/{id}", delete(remove_policy))
        .route("/v1/rules", get(list_rules))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .merge(protected)
        .route("/v1/issuer", get(issuer))
        .fallback(|| async {
            ApiError(StatusCode::NOT_FOUND, json!({"error": "no such endpoint"}))
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Checks `Authorization: Bearer <token>` when the service has a token configured.
async fn require_token(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = s.api_token() {
        let presented = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| token.matches(p)) {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                json!({"error": "missing or wrong bearer token (see DATA_DIR/api-token)", "field": "authorization"}),
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn submit(
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let issued = s.submit(&body(b)?).await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

async fn get_request(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    id_param(&id)?;
    Ok(Json(s.get(&id)?).into_response())
}

async fn change_request(
    State(s): State<AppState>,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    id_param(&id)?;
    Ok(Json(s.change(&id, &body(b)?).await?).into_response())
}

async fn cancel_request(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    id_param(&id)?;
    Ok(Json(s.cancel(&id).await?).into_response())
}

async fn list_policies(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(json!({"policies": s.policies()?})).into_response())
}

async fn add_policy(
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let added = s.add_policy(&body(b)?).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

async fn remove_policy(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    id_param(&id)?;
    s.remove_policy(&id)?;
    Ok(Json(json!({"id": id, "removed": true})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesQuery {
    pep: Option<String>,
}

async fn list_rules(
    State(s): State<AppState>,
    q: Result<Query<RulesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::bad("query", r.body_text()))?;
    if let Some(p) = &q.pep {
        pep_param(p)?;
    }
    Ok(Json(json!({"rules": s.live_rules(q.pep.as_deref())?})).into_response())
}

/// PEP ids are `keyserver` or `mount:<device>`.
fn pep_param(p: &str) -> Result<(), ApiError> {
    let ok = p == crate::template::KEYSERVER_PEP
        || p.strip_prefix("mount:")
            .is_some_and(|d| check_name(d).is_ok());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            "pep",
            "must be \"keyserver\" or \"mount:<device name>\"",
        ))
    }
}

async fn issuer(State(s): State<AppState>) -> Response {
    Json(json!({"issuer": s.issuer(), "public_key": s.public_key().to_hex()})).into_response()
}
