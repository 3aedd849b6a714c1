//! The authz HTTP API (axum): routes, JSON error mapping, body limits. Serving over TLS is
//! `crate::tls::serve`; this module only builds the `Router`.
//!
//! | method | path | success |
//! |---|---|---|
//! | GET | /v1/requests?limit=N | 200 `{requests: [view...]}`, newest first (a workflow sees its own; default 100, at most 1000) |
//! | POST | /v1/requests | 201 `{id, status, revision, rule_ids, delivered}`; 409 refused `{error, id, status, reasons}` |
//! | GET | /v1/requests/{id} | 200 request view (status, reasons, rule ids, the request) |
//! | PUT | /v1/requests/{id} | 200 `{…, replaced}`; 409 refused (request unchanged) |
//! | DELETE | /v1/requests/{id} | 200 `{id, status: "cancelled", revoked}` |
//! | GET | /v1/policies | 200 `{policies: [...]}` |
//! | POST | /v1/policies | 201 `{policy, revoked_requests, revoked_rules, delivered}` |
//! | DELETE | /v1/policies/{id} | 200 `{id, removed: true}` |
//! | GET | /v1/rules?pep=ID | 200 `{rules: [SignedRule...]}` |
//! | GET | /v1/issuer | 200 `{issuer, public_key}` |
//! | | /v1/asset-ids, /v1/organizations | the catalog: [`crate::http_catalog`] |
//! | GET | /v1/health, /healthz | 200 `{status: "ok"}` (alive; no certificate needed) |
//! | GET | /readyz | 200 `{ready: true}`; 503 `{ready: false, error}` when the store does not answer (no certificate needed) |
//!
//! Every caller presents a client certificate from the installation's CA (see
//! [`crate::principal`]); [`ROUTES`] says which roles may call what. Every error is JSON
//! `{"error": "...", "field"?: "..."}`; bad input is 400 and names the field; no certificate is
//! 401, a wrong role 403.

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
use crate::principal::{Caller, Principal, Refusal, Role};
use crate::service::{Authz, ServiceError, Submitter};

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
            ServiceError::Forbidden(m) => ApiError(StatusCode::FORBIDDEN, json!({"error": m})),
            ServiceError::Clock(c) => {
                tracing::error!(error = %c, "refusing: clock unusable");
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": format!("authz cannot tell the time: {c}")}),
                )
            }
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

pub(crate) fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
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

pub(crate) fn id_param(id: &str) -> Result<(), ApiError> {
    check_name(id).map_err(|m| ApiError::bad("id", m))
}

type AppState = Arc<Authz>;

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError(
            r.status(),
            json!({"error": r.message(), "field": "client_certificate"}),
        )
    }
}

/// Every route and the roles that may call it (`None`: anyone, no certificate needed). The
/// handlers enforce it; a test walks this table against the router.
pub const ROUTES: &[(&str, &str, Option<&[Role]>)] = &[
    ("GET", "/v1/requests", Some(READERS)),
    ("POST", "/v1/requests", Some(SUBMITTERS)),
    ("GET", "/v1/requests/{id}", Some(READERS)),
    ("PUT", "/v1/requests/{id}", Some(SUBMITTERS)),
    ("DELETE", "/v1/requests/{id}", Some(SUBMITTERS)),
    ("GET", "/v1/policies", Some(INSPECTORS)),
    ("POST", "/v1/policies", Some(ADMINS)),
    ("DELETE", "/v1/policies/{id}", Some(ADMINS)),
    ("GET", "/v1/rules", Some(INSPECTORS)),
    ("GET", "/v1/issuer", Some(ANY_PRINCIPAL)),
    ("GET", "/v1/asset-ids", Some(INSPECTORS)),
    ("POST", "/v1/asset-ids", Some(ADMINS)),
    ("GET", "/v1/organizations", Some(INSPECTORS)),
    ("POST", "/v1/organizations", Some(ADMINS)),
    ("GET", "/v1/organizations/{name}", Some(INSPECTORS)),
    ("DELETE", "/v1/organizations/{name}", Some(ADMINS)),
    ("GET", "/v1/health", None),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
];

const ADMINS: &[Role] = &[Role::Admin];
/// Request authors: a workflow only within its grant and on its own requests.
const SUBMITTERS: &[Role] = &[Role::Admin, Role::Workflow];
const READERS: &[Role] = &[Role::Admin, Role::Workflow, Role::Auditor];
/// Who may see the policy and rule inventory (it says who works on what).
const INSPECTORS: &[Role] = &[Role::Admin, Role::Auditor];
const ANY_PRINCIPAL: &[Role] = &[
    Role::Admin,
    Role::Workflow,
    Role::Auditor,
    Role::Device,
    Role::Service,
];

/// Builds the router; serve it with `crate::tls::serve` and a directory (or test it with
/// `oneshot`, inserting `PeerCert` and `DirectoryHandle` extensions).
pub fn app(state: Arc<Authz>) -> Router {
    Router::new()
        .route("/v1/requests", get(list_requests).post(submit))
        .route(
            "/v1/requests/{id}",
            get(get_request).put(change_request).delete(cancel_request),
        )
        .route("/v1/policies", get(list_policies).post(add_policy))
        .route("/v1/policies/{id}", delete(remove_policy))
        .route("/v1/rules", get(list_rules))
        .route("/v1/issuer", get(issuer))
        .route("/v1/health", get(health))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .merge(crate::http_catalog::routes())
        .fallback(|| async {
            ApiError(StatusCode::NOT_FOUND, json!({"error": "no such endpoint"}))
        })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method not allowed on this endpoint"}),
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(
            crate::http_errors::json_error_body,
        ))
        .with_state(state)
}

/// The roles of `method path` in [`ROUTES`], checked against the caller.
pub(crate) fn allow(caller: &Caller, method: &str, path: &str) -> Result<(), ApiError> {
    let roles = ROUTES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .and_then(|(_, _, roles)| *roles)
        .unwrap_or(&[]);
    caller.require(roles, &format!("{method} {path}"))?;
    Ok(())
}

/// The submitter a caller acts as: an admin without limits, a workflow with its grant.
fn submitter(s: &Authz, p: &Principal) -> Result<Submitter, ApiError> {
    match p.role {
        Role::Workflow => {
            let grant = s.workflow_grant(&p.name).ok_or_else(|| {
                ApiError::from(Refusal::Forbidden(format!(
                    "{} has no grant (add it with `csap workflow add {} --scopes … --paths …`)",
                    p.label(),
                    p.name
                )))
            })?;
            Ok(Submitter::workflow(&p.name, grant))
        }
        // Auditors read requests too; they hold no grant, so reading is all they reach.
        Role::Auditor => Ok(Submitter {
            label: p.label(),
            grant: None,
        }),
        _ => Ok(Submitter::admin(&p.name)),
    }
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn ready(State(s): State<AppState>) -> Response {
    crate::ops::readiness_response(s.as_ref()).await
}

async fn submit(
    State(s): State<AppState>,
    caller: Caller,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    allow(&caller, "POST", "/v1/requests")?;
    let by = submitter(&s, &caller.0)?;
    let issued = s.submit(&body(b)?, &by).await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
}

/// Requests listed at most by `GET /v1/requests`.
const LIST_LIMIT: u32 = 1000;

async fn list_requests(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    allow(&caller, "GET", "/v1/requests")?;
    let Query(q) = q.map_err(|r| ApiError::bad("query", r.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > LIST_LIMIT {
        return Err(ApiError::bad("limit", format!("must be 1 to {LIST_LIMIT}")));
    }
    let by = submitter(&s, &caller.0)?;
    Ok(Json(json!({"requests": s.list(&by, limit).await?})).into_response())
}

async fn get_request(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    allow(&caller, "GET", "/v1/requests/{id}")?;
    id_param(&id)?;
    let by = submitter(&s, &caller.0)?;
    Ok(Json(s.get(&id, &by).await?).into_response())
}

async fn change_request(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    allow(&caller, "PUT", "/v1/requests/{id}")?;
    id_param(&id)?;
    let by = submitter(&s, &caller.0)?;
    Ok(Json(s.change(&id, &body(b)?, &by).await?).into_response())
}

async fn cancel_request(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    allow(&caller, "DELETE", "/v1/requests/{id}")?;
    id_param(&id)?;
    let by = submitter(&s, &caller.0)?;
    Ok(Json(s.cancel(&id, &by).await?).into_response())
}

async fn list_policies(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    allow(&caller, "GET", "/v1/policies")?;
    Ok(Json(json!({"policies": s.policies().await?})).into_response())
}

async fn add_policy(
    State(s): State<AppState>,
    caller: Caller,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    allow(&caller, "POST", "/v1/policies")?;
    let added = s.add_policy(&body(b)?).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

async fn remove_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    allow(&caller, "DELETE", "/v1/policies/{id}")?;
    id_param(&id)?;
    s.remove_policy(&id).await?;
    Ok(Json(json!({"id": id, "removed": true})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesQuery {
    pep: Option<String>,
}

async fn list_rules(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<RulesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    allow(&caller, "GET", "/v1/rules")?;
    let Query(q) = q.map_err(|r| ApiError::bad("query", r.body_text()))?;
    if let Some(p) = &q.pep {
        pep_param(p)?;
    }
    Ok(Json(json!({"rules": s.live_rules(q.pep.as_deref()).await?})).into_response())
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

async fn issuer(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    allow(&caller, "GET", "/v1/issuer")?;
    Ok(Json(json!({"issuer": s.issuer(), "public_key": s.public_key().to_hex()})).into_response())
}
