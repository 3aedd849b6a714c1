//! The key server's HTTP API (axum), one module per concern: who is calling (`peers`), input
//! checks (`checks`), who a token speaks for and recorded refusals (`subject`), building a
//! license (`grant`), then the routes — login, licenses and sessions, assets and their write
//! generations, users, devices and principals, application builds, key scopes, the audit trail
//! and the revocation stream. Handlers validate input, then go through the store
//! ([`crate::store::KeyStore`]); they never see SQL.

mod apps;
mod audit;
mod checks;
mod federation;
mod generation;
mod grant;
mod issue;
mod licenses;
mod login;
mod peers;
mod principals;
mod revocations;
mod scopes;
mod subject;
mod users;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State as AxState};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;

use crate::error::ApiError;
use crate::server::{Peer, State};
use crate::store::AuditEvent;

pub(crate) type S = Arc<State>;

/// The key server's router. [`crate::start`] serves it on TLS with each connection's [`Peer`]
/// attached to its requests; a test calls it in-process (`oneshot`), inserting the `Peer`
/// itself ([`State::peer_of`]). A request without a `Peer` is refused on every route.
pub fn app(state: Arc<State>) -> Router {
    let admin = Router::new()
        .route(
            "/devices",
            post(principals::enroll).get(principals::list_devices),
        )
        .route("/devices/{name}/revoke", post(principals::revoke_device))
        .route("/users", post(users::add_user).get(users::list_users))
        .route("/users/{name}/disable", post(users::disable_user))
        .route("/users/{name}/enable", post(users::enable_user))
        .route("/apps", post(apps::register_app).get(apps::list_apps))
        .route("/apps/revoke", post(apps::revoke_app))
        .route(
            "/scopes",
            post(scopes::create_scope).get(scopes::list_scopes),
        )
        .route("/scopes/{name}/rotate", post(scopes::rotate_scope))
        .route("/scopes/{name}/revoke", post(scopes::revoke_key))
        .route("/assets", get(licenses::list_assets))
        .route("/licenses", post(issue::issue_license))
        .route("/audit", get(audit::tail))
        .route("/audit/query", get(audit::query))
        .route("/audit/verify", get(audit::verify))
        .route("/principals", post(principals::add_principal))
        .route("/identity-providers", get(federation::list_providers))
        .route(
            "/identity-providers/{organization}",
            put(federation::put_provider).delete(federation::remove_provider),
        )
        .route(
            "/principals/{kind}/{name}/revoke",
            post(principals::revoke_principal),
        );
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/v1/info", get(login::info))
        .route("/v1/login", post(login::login))
        .route("/v1/login/oidc", post(federation::login_oidc))
        .route(
            "/v1/identity-providers/{organization}",
            get(federation::provider),
        )
        .route("/v1/sessions", post(licenses::open_session))
        .route("/v1/licenses", post(licenses::licenses))
        .route("/v1/assets", post(licenses::create_asset))
        .route("/v1/assets/{id}/rename", post(licenses::rename_asset))
        .route("/v1/assets/{id}/generation", post(generation::advance))
        .route("/v1/directory", get(principals::directory))
        .route("/v1/revocations", get(revocations::list))
        .route("/v1/apps/{digest}/code", get(apps::app_code))
        .route("/v1/audit", post(audit::ship))
        .nest("/v1/admin", admin)
        .fallback(|| async { ApiError::NotFound("endpoint".into()) })
        .layer(middleware::from_fn_with_state(Arc::clone(&state), timeout))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(middleware::map_response(
            authz::http_errors::json_error_body,
        ))
        .with_state(state)
}

/// `GET /healthz`: alive (any active principal's certificate).
async fn health(_: peers::AnyPeer) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the store answers, else 503 naming why.
async fn ready(AxState(st): AxState<S>, _: peers::AnyPeer) -> Response {
    authz::ops::readiness_response(st.as_ref()).await
}

/// Bounds each request's time, and audits requests refused before any handler logic ran
/// (malformed or oversized bodies, unknown endpoints): those are attack signals too.
async fn timeout(AxState(st): AxState<S>, req: axum::extract::Request, next: Next) -> Response {
    let peer = req.extensions().get::<Peer>().map(|p| p.name.clone());
    let path = req.uri().path().to_string();
    let resp = match tokio::time::timeout(st.limits.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => axum::response::IntoResponse::into_response(ApiError::Timeout),
    };
    let status = resp.status();
    if matches!(
        status.as_u16(),
        400 | 404 | 405 | 408 | 413 | 415 | 422 | 503
    ) {
        st.audit_async(AuditEvent {
            time: st.clock.stamp(),
            device: peer,
            action: "request".into(),
            decision: "deny",
            reason: Some(format!("bad_request: {} {path}", status.as_u16())),
            ..Default::default()
        });
    }
    resp
}
