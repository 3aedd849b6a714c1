//! The router in-process — `keyserver::app(state)` called with `oneshot`, as authz's and ARDS's
//! are tested: no socket, no TLS; the test attaches the `Peer` the accept loop would.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

async fn call(
    app: &axum::Router,
    req: Request<Body>,
    peer: Option<&keyserver::server::Peer>,
) -> (StatusCode, serde_json::Value) {
    let mut req = req;
    if let Some(p) = peer {
        req.extensions_mut().insert(p.clone());
    }
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

fn json(method: &str, uri: &str, body: serde_json::Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// A request no accepted certificate stands behind is refused on every kind of route (with a
/// JSON body); the admin's identity may create and list a scope, the change is on the audit
/// trail when it is answered, and a device-only route refuses the admin.
#[tokio::test]
async fn the_router_refuses_without_a_peer_and_serves_the_admin() {
    let dir = tempfile::tempdir().unwrap();
    let rules = Arc::new(SwappableRules::new(base_rules()));
    let cfg = keyserver::testing::loopback_config(&dir.path().join("ks"), rules);
    let (state, _lock) = keyserver::State::open(&cfg).await.unwrap();
    let app = keyserver::app(Arc::clone(&state));

    for req in [
        get("/v1/info"),
        get("/v1/admin/scopes"),
        json(
            "POST",
            "/v1/admin/scopes",
            serde_json::json!({"name": "show"}),
        ),
        json(
            "POST",
            "/v1/login",
            serde_json::json!({"user": USER, "password": "x", "uid": UID}),
        ),
        get("/v1/directory"),
    ] {
        let what = format!("{} {}", req.method(), req.uri());
        let (status, body) = call(&app, req, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
        assert!(body["error"].is_string(), "{what}: no JSON error body");
    }

    let cert = std::fs::read_to_string(state.admin_dir().join("cert.pem")).unwrap();
    let admin = state
        .peer_of(&cert)
        .expect("the admin identity is registered");
    let (status, info) = call(&app, get("/v1/info"), Some(&admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["peer"], "admin");
    let create = json(
        "POST",
        "/v1/admin/scopes",
        serde_json::json!({"name": "show"}),
    );
    let (status, scope) = call(&app, create, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{scope}");
    assert_eq!(scope["current_version"], 1);
    let (status, scopes) = call(&app, get("/v1/admin/scopes"), Some(&admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(scopes[0]["name"], "show");
    let (_, trail) = call(&app, get("/v1/admin/audit?tail=10"), Some(&admin)).await;
    assert!(
        trail
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "scope.create" && r["user"] == "admin:admin"),
        "the admin change is not on the trail: {trail}"
    );

    // The admin is not a device: device routes refuse it, and say so on the trail.
    let login = json(
        "POST",
        "/v1/login",
        serde_json::json!({"user": USER, "password": "x", "uid": UID}),
    );
    let (status, _) = call(&app, login, Some(&admin)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // An unknown certificate serial is refused like no certificate.
    let stranger = keyserver::server::Peer {
        serial: "00".into(),
        ..admin.clone()
    };
    let (status, _) = call(&app, get("/v1/admin/scopes"), Some(&stranger)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
