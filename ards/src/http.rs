//! The ARDS HTTP API (axum): routes, JSON extraction with field-naming errors, body limits.
//! `app` builds the router without a socket, so it is testable with `oneshot`.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use authz::principal::{Caller, Role};

use crate::error::ArdsError;
use crate::service::Ards;
use crate::wire::{DenialReport, ExceptionOutcome};

/// Body limit for `POST /v1/publish` (a batch of up to `MAX_BATCH` rules).
pub const PUBLISH_BODY_LIMIT: usize = 16 << 20;
/// Body limit for every other route.
pub const SMALL_BODY_LIMIT: usize = 64 << 10;

/// The ARDS router:
/// - `POST /v1/publish` — `authz::wire::PublishRules` → [`crate::wire::PublishOutcome`]
/// - `POST /v1/revoke` — `authz::wire::Revocation` → [`crate::wire::RevokeOutcome`]
/// - `GET /v1/pep/{pep_id}/changes?since=REV&wait=SECS` → [`crate::wire::Changes`]
/// - `POST /v1/pep/{pep_id}/exceptions` — [`DenialReport`] → [`ExceptionOutcome`]
/// - `GET /v1/exceptions?after=ID&all=BOOL` → [`crate::wire::ExceptionList`]
/// - `GET /v1/rules?pep=ID` → [`crate::wire::RuleList`]
/// - `GET /v1/peps` → `[`[`crate::wire::PepStatus`]`]`
/// - `GET /v1/health`, `GET /healthz` → `{"status":"ok"}`
/// - `GET /readyz` → `{"ready":true}`, or 503 `{"ready":false,"error"}` when the store does not
///   answer
///
/// Every route but health and readiness needs a client certificate from the installation's CA
/// ([`authz::principal::Caller`]); [`ROUTES`] says which roles may call what.
pub fn app(state: Ards) -> Router {
    Router::new()
        .route(
            "/v1/publish",
            post(publish).layer(DefaultBodyLimit::max(PUBLISH_BODY_LIMIT)),
        )
        .route("/v1/revoke", post(revoke))
        .route("/v1/pep/{pep_id}/changes", get(changes))
        .route("/v1/pep/{pep_id}/exceptions", post(report_exception))
        .route("/v1/exceptions", get(exceptions))
        .route("/v1/rules", get(rules))
        .route("/v1/peps", get(peps))
        .route("/v1/health", get(health))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(SMALL_BODY_LIMIT))
        .layer(axum::middleware::map_response(
            authz::http_errors::json_error_body,
        ))
        .with_state(state)
}

/// Who may call what. `"pep"`: only the policy enforcement point the path names (an admin may
/// read any stream, but files no exception as a PEP); `"issuer"`: an admin, or the service
/// principal of a trusted rule issuer (rules and revocations are signed as well).
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "/v1/publish", "issuer"),
    ("POST", "/v1/revoke", "issuer"),
    ("GET", "/v1/pep/{pep_id}/changes", "pep"),
    ("POST", "/v1/pep/{pep_id}/exceptions", "pep itself"),
    ("GET", "/v1/exceptions", "admin, auditor"),
    ("GET", "/v1/rules", "admin, auditor"),
    ("GET", "/v1/peps", "admin, auditor"),
    ("GET", "/v1/health", "anyone"),
    ("GET", "/healthz", "anyone"),
    ("GET", "/readyz", "anyone"),
];

const INSPECTORS: &[Role] = &[Role::Admin, Role::Auditor];

/// An admin, or the service principal named like a trusted issuer.
fn require_issuer(ards: &Ards, caller: &Caller, what: &str) -> Result<(), ArdsError> {
    let p = &caller.0;
    if p.role == Role::Service && ards.trusts_issuer(&p.name) {
        return Ok(());
    }
    caller.require(&[Role::Admin], what)?;
    Ok(())
}

async fn not_found(uri: Uri) -> ArdsError {
    ArdsError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> ArdsError {
    ArdsError::MethodNotAllowed
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(ards): State<Ards>) -> axum::response::Response {
    authz::ops::readiness_response(&ards).await
}

/// A JSON body whose parse errors become a 400 naming the offending field
/// (`rules[0].rule.not_before`), not axum's plain-text rejection.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ArdsError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ArdsError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ArdsError::TooLarge
            } else {
                ArdsError::BadRequest {
                    message: format!("unreadable request body: {}", e.body_text()),
                    field: None,
                }
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Strict JSON parse: one value, nothing after it, errors name the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ArdsError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let mut path = e.path().to_string();
        let message = e.inner().to_string();
        // serde reports a missing field at its parent; point at the field itself.
        if let Some(name) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            path = if path == "." {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            };
        }
        ArdsError::BadRequest {
            message: format!("invalid JSON body: {message}"),
            field: (path != ".").then_some(path),
        }
    })?;
    de.end().map_err(|e| ArdsError::BadRequest {
        message: format!("invalid JSON body: {e}"),
        field: None,
    })?;
    Ok(value)
}

type Params = Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

fn params(q: Params) -> Result<HashMap<String, String>, ArdsError> {
    q.map(|Query(m)| m).map_err(|e| ArdsError::BadRequest {
        message: format!("malformed query string: {}", e.body_text()),
        field: None,
    })
}

fn param_u64(p: &HashMap<String, String>, name: &str, default: u64) -> Result<u64, ArdsError> {
    match p.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            ArdsError::bad(
                format!("{name} must be a non-negative integer, got {v:?}"),
                name,
            )
        }),
    }
}

fn param_bool(p: &HashMap<String, String>, name: &str) -> Result<bool, ArdsError> {
    match p.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(ArdsError::bad(
            format!("{name} must be true or false, got {v:?}"),
            name,
        )),
    }
}

fn reject_unknown(p: &HashMap<String, String>, known: &[&str]) -> Result<(), ArdsError> {
    match p.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ArdsError::bad(
            format!("unknown query parameter {k:?}"),
            k.clone(),
        )),
        None => Ok(()),
    }
}

type PepPath = Result<Path<String>, axum::extract::rejection::PathRejection>;

fn pep_path(p: PepPath) -> Result<String, ArdsError> {
    p.map(|Path(s)| s).map_err(|e| ArdsError::BadRequest {
        message: format!("bad PEP id in path: {}", e.body_text()),
        field: Some("pep_id".into()),
    })
}

async fn publish(
    State(ards): State<Ards>,
    caller: Caller,
    JsonBody(body): JsonBody<authz::wire::PublishRules>,
) -> Result<Json<crate::wire::PublishOutcome>, ArdsError> {
    require_issuer(&ards, &caller, "publish rules")?;
    ards.publish(body).await.map(Json)
}

async fn revoke(
    State(ards): State<Ards>,
    caller: Caller,
    JsonBody(body): JsonBody<authz::wire::Revocation>,
) -> Result<Json<crate::wire::RevokeOutcome>, ArdsError> {
    require_issuer(&ards, &caller, "revoke rules")?;
    ards.revoke(body).await.map(Json)
}

async fn changes(
    State(ards): State<Ards>,
    caller: Caller,
    pep: PepPath,
    q: Params,
) -> Result<Json<crate::wire::RawChanges>, ArdsError> {
    let pep = pep_path(pep)?;
    caller.require_pep(&pep, "read the rule stream")?;
    let p = params(q)?;
    reject_unknown(&p, &["since", "wait"])?;
    let since = param_u64(&p, "since", 0)?;
    let wait = param_u64(&p, "wait", 0)?;
    ards.changes_raw(&pep, since, Duration::from_secs(wait))
        .await
        .map(Json)
}

async fn report_exception(
    State(ards): State<Ards>,
    caller: Caller,
    pep: PepPath,
    JsonBody(report): JsonBody<DenialReport>,
) -> Result<(StatusCode, Json<ExceptionOutcome>), ArdsError> {
    let pep = pep_path(pep)?;
    if caller.0.pep_id().as_deref() != Some(pep.as_str()) {
        return Err(authz::principal::Refusal::Forbidden(format!(
            "{} may file exception reports only as itself, not as PEP {pep}",
            caller.0.label()
        ))
        .into());
    }
    let outcome = ards.report_exception(&pep, report).await?;
    Ok((StatusCode::ACCEPTED, Json(outcome)))
}

async fn exceptions(
    State(ards): State<Ards>,
    caller: Caller,
    q: Params,
) -> Result<Json<crate::wire::ExceptionList>, ArdsError> {
    caller.require(INSPECTORS, "read exception reports")?;
    let p = params(q)?;
    reject_unknown(&p, &["after", "all"])?;
    let after = param_u64(&p, "after", 0)?;
    let after = i64::try_from(after).map_err(|_| ArdsError::bad("after is too large", "after"))?;
    let all = param_bool(&p, "all")?;
    ards.exceptions(after, all).await.map(Json)
}

async fn rules(
    State(ards): State<Ards>,
    caller: Caller,
    q: Params,
) -> Result<Json<crate::wire::RuleList>, ArdsError> {
    caller.require(INSPECTORS, "list rules")?;
    let p = params(q)?;
    reject_unknown(&p, &["pep"])?;
    ards.list_rules(p.get("pep").cloned()).await.map(Json)
}

async fn peps(
    State(ards): State<Ards>,
    caller: Caller,
) -> Result<Json<Vec<crate::wire::PepStatus>>, ArdsError> {
    caller.require(INSPECTORS, "list PEPs")?;
    ards.peps().await.map(Json)
}
