//! The asset-identifier map and organizations (issue 18 parts 1 and 2), on both engines: kept
//! in authz's store, managed over the HTTP API, and used by requests made of OMC-JSON v2.8
//! entities (assets by an asset manager's identifiers, organizations as participants).

use std::sync::Arc;

use authz::principal::{Role, Standing};
use authz::request::WireRequest;
use authz::testing::pki::{Issued, TestDirectory, TestPki};
use authz::wire::MemorySink;
use authz::{Authz, Config};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use csap_testkit::postgres::Engine;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

csap_testkit::on_both_engines!(
    assets_named_by_an_asset_manager_resolve_through_the_map,
    the_four_vendors_of_the_seed_are_organizations,
    requests_name_only_registered_organizations,
    invalid_omc_entities_are_refused_naming_the_field,
);

const DIGEST: &str = "6c3b8d2f0a1e4b5c9d7e8f901a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d";

struct Harness {
    _dir: tempfile::TempDir,
    _engine: Engine,
    authz: Arc<Authz>,
    pki: Arc<TestPki>,
    admin: Issued,
}

impl Harness {
    async fn on(engine: Engine) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = Arc::new(TestPki::new(TestDirectory::new(Standing::Active)));
        let mut cfg = Config::new(dir.path());
        if let Some(url) = engine.url() {
            cfg.store = authz::pg::Engine::postgres(authz::pg::Target::parse(url, None).unwrap());
        }
        let authz = Arc::new(
            Authz::connect(&cfg, Arc::new(MemorySink::new()), pki.directory.clone())
                .await
                .unwrap(),
        );
        let admin = pki.issue("admin", Role::Admin);
        Self {
            _dir: dir,
            _engine: engine,
            authz,
            pki,
            admin,
        }
    }

    async fn call_as(
        &self,
        who: &Issued,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(
                body.map(|b| Body::from(b.to_string()))
                    .unwrap_or_else(Body::empty),
            )
            .unwrap();
        self.pki.attach(&mut req, who);
        let resp = authz::app(self.authz.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let admin = self.admin.clone();
        self.call_as(&admin, method, uri, body).await
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A request for alice on ws-07 with `assets` (the builder's OMC entities).
fn request(
    edit: impl FnOnce(authz::request::RequestBuilder) -> authz::request::RequestBuilder,
) -> Value {
    let b = WireRequest::builder("comp-shot010")
        .application(DIGEST, "nuke", "15.1", None)
        .device("ws-07")
        .action("read")
        .window(now() - 60, now() + 3600);
    serde_json::from_str(&edit(b).to_json()).unwrap()
}

/// MovieLabs' own Asset example (singleEntities/Asset.json), as an asset manager sends it.
fn movielabs_asset() -> Value {
    json!({
        "schemaVersion": "https://movielabs.com/omc/json/schema/v2.8",
        "entityType": "Asset",
        "identifier": [{"identifierScope": "labkoat", "identifierValue": "ast/669E728D-8393-4FD1-BF29-2BB7B9DE662C"}],
        "name": "Plate shot010",
        "AssetSC": null,
        "version": null
    })
}

async fn assets_named_by_an_asset_manager_resolve_through_the_map(engine: Engine) {
    let h = Harness::on(engine).await;
    let mut body = request(|b| b.person("alice"));
    body["assets"] = json!([movielabs_asset()]);

    // Not mapped yet: refused, naming the identifier and how to add it.
    let (status, v) = h
        .call(Method::POST, "/v1/requests", Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], "assets[0].identifier", "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("labkoat \"ast/669E728D-8393-4FD1-BF29-2BB7B9DE662C\"")
            && msg.contains("csap asset map add"),
        "{msg}"
    );

    // A bad entry is refused whole, naming it.
    let (status, v) = h
        .call(
            Method::POST,
            "/v1/asset-ids",
            Some(json!({"entries": [
                {"scope": "labkoat", "value": "ast/1", "path": "show/a/**"},
                {"scope": "labkoat", "value": "ast/2", "path": "/etc/passwd"}
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], "entries[1].path", "{v}");
    let (_, v) = h.call(Method::GET, "/v1/asset-ids", None).await;
    assert_eq!(
        v["entries"],
        json!([]),
        "nothing of a refused batch is kept"
    );

    let (status, v) = h
        .call(Method::POST, "/v1/asset-ids", Some(json!({"entries": [
            {"scope": "labkoat", "value": "ast/669E728D-8393-4FD1-BF29-2BB7B9DE662C", "path": "show/seq1/shot010/plate/**"},
            {"scope": "labkoat", "value": "ast/2", "path": "show/b"}
        ]})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["added"], 2);
    let (_, v) = h.call(Method::GET, "/v1/asset-ids", None).await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 2, "{v}");

    let (status, v) = h.call(Method::POST, "/v1/requests", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    // The rules issued carry the mapped path.
    let rules = serde_json::to_string(&h.authz.live_rules(None).await.unwrap()).unwrap();
    assert!(rules.contains("show/seq1/shot010/plate/"), "{rules}");

    // Replacing an entry changes what later requests resolve to.
    let (status, _) = h
        .call(
            Method::POST,
            "/v1/asset-ids",
            Some(json!({"entries": [
                {"scope": "labkoat", "value": "ast/2", "path": "show/c/**"}
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, v) = h.call(Method::GET, "/v1/asset-ids", None).await;
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["value"] == "ast/2" && e["path"] == "show/c/**"),
        "{v}"
    );

    // A workflow or an auditor may not change the map.
    let auditor = h.pki.issue("aud", Role::Auditor);
    let (status, _) = h
        .call_as(
            &auditor,
            Method::POST,
            "/v1/asset-ids",
            Some(json!({"entries": []})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn the_four_vendors_of_the_seed_are_organizations(engine: Engine) {
    let h = Harness::on(engine).await;
    for (name, delegate) in [
        (
            "acme-post",
            json!(["authentication", "authorization", "asset-protection"]),
        ),
        ("globex-vfx", json!(["authentication", "authorization"])),
        ("cottage-sound", json!(["authentication"])),
        ("hamilton", json!([])),
    ] {
        let (status, v) = h
            .call(
                Method::POST,
                "/v1/organizations",
                Some(json!({"name": name, "delegate": delegate})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    let (_, v) = h.call(Method::GET, "/v1/organizations", None).await;
    let table: Vec<(String, bool, bool, bool)> = v["organizations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap().to_string(),
                o["authentication"].as_bool().unwrap(),
                o["authorization"].as_bool().unwrap(),
                o["asset_protection"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        table,
        vec![
            ("acme-post".into(), true, true, true),
            ("cottage-sound".into(), true, false, false),
            ("globex-vfx".into(), true, true, false),
            ("hamilton".into(), false, false, false),
        ]
    );
    let (status, v) = h
        .call(
            Method::POST,
            "/v1/organizations",
            Some(json!({"name": "hamilton"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, v) = h
        .call(
            Method::POST,
            "/v1/organizations",
            Some(json!({"name": "x", "delegate": ["everything"]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], "delegate[0]", "{v}");
    let (status, v) = h
        .call(Method::GET, "/v1/organizations/globex-vfx", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["authorization"], true);
    let (status, _) = h
        .call(Method::DELETE, "/v1/organizations/hamilton", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .call(Method::GET, "/v1/organizations/hamilton", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h
        .call(Method::DELETE, "/v1/organizations/hamilton", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn requests_name_only_registered_organizations(engine: Engine) {
    let h = Harness::on(engine).await;
    let body = request(|b| {
        b.person_of("alice", "acme-post")
            .organization("globex-vfx")
            .asset_path("show/**")
    });
    let (status, v) = h
        .call(Method::POST, "/v1/requests", Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], "participants[0]", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("csap org add acme-post"),
        "{v}"
    );

    h.authz
        .add_organization("acme-post", &["authentication".into()])
        .await
        .unwrap();
    let (status, v) = h
        .call(Method::POST, "/v1/requests", Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], "participants[1]", "{v}");

    h.authz.add_organization("globex-vfx", &[]).await.unwrap();
    let (status, v) = h.call(Method::POST, "/v1/requests", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"], "active", "{v}");
}

async fn invalid_omc_entities_are_refused_naming_the_field(engine: Engine) {
    let h = Harness::on(engine).await;
    let good = request(|b| b.person("alice").asset_path("show/**"));
    let (status, v) = h
        .call(Method::POST, "/v1/requests", Some(good.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");

    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| {
                v["task"].as_object_mut().unwrap().remove("schemaVersion");
            }),
            "/task",
        ),
        (
            Box::new(|v| v["participants"][0]["identifier"] = json!([])),
            "/participants/0/identifier",
        ),
        (
            Box::new(|v| {
                v["assets"][0]["identifier"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("identifierScope");
            }),
            "/assets/0/identifier/0/identifierScope",
        ),
        (
            Box::new(|v| {
                v["participants"][0]["structuralCharacteristics"] =
                    json!({"structuralType": "person"})
            }),
            "/participants/0",
        ),
        (
            Box::new(|v| v["participants"][0]["ParticipantSC"] = Value::Null),
            "participants[0].ParticipantSC",
        ),
    ];
    for (edit, field) in cases {
        let mut body = good.clone();
        edit(&mut body);
        let (status, v) = h.call(Method::POST, "/v1/requests", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["field"], field, "{v}");
        let msg = v["error"].as_str().unwrap();
        assert!(!msg.contains('\n'), "one sentence: {msg}");
    }
}
