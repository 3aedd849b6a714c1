//! Integration tests of the authz service: the HTTP API in-process (oneshot), the store (on
//! both engines: `on_sqlite::…`, `on_postgres::…`), delivery to ARDS through a sink, and one
//! run over real TLS on loopback.

use std::sync::{Arc, Mutex};

use authz::model::Action;
use authz::principal::{Role, Standing, WorkflowGrant};
use authz::testing::pki::{Issued, TestDirectory, TestPki};
use authz::wire::{MemorySink, PublishRules, Revocation, RuleSink};
use authz::{AccessRequest, Authz, Config, Evaluator, IssuerPublicKey, SignedRule, Submitter};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use csap_testkit::postgres::Engine;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

csap_testkit::on_both_engines!(
    submit_issues_signed_rules_for_the_right_peps,
    blocked_application_version_refuses_with_reason_recorded,
    two_blocks_list_both_reasons,
    adding_a_global_policy_revokes_live_rules,
    cancel_revokes_every_rule,
    change_replaces_rules,
    malformed_input_on_every_endpoint_is_400_naming_the_field,
    undelivered_changes_stay_queued_and_are_retried,
    state_and_issuer_key_survive_restart,
    every_route_refuses_anonymous_and_wrong_role_callers,
    a_workflow_authorizes_only_inside_its_grant_and_only_its_own_requests,
    requests_naming_unknown_or_disabled_principals_are_refused,
    method_not_allowed_has_a_json_body,
);

const EXAMPLE: &str = include_str!("../examples/request-shot010.json");
const DIGEST: &str = "6c3b8d2f0a1e4b5c9d7e8f901a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d";

struct Harness {
    dir: tempfile::TempDir,
    /// The store's engine (a PostgreSQL test database lives while this does).
    engine: Engine,
    sink: Arc<MemorySink>,
    authz: Arc<Authz>,
    /// Every caller's certificate comes from here; names not set explicitly are active.
    pki: Arc<TestPki>,
    admin: Issued,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(MemorySink::new());
        let pki = Arc::new(TestPki::new(TestDirectory::new(Standing::Active)));
        let authz = Arc::new(
            Authz::open(
                &Config::new(dir.path()),
                sink.clone(),
                pki.directory.clone(),
            )
            .unwrap(),
        );
        let admin = pki.issue("admin", Role::Admin);
        Self {
            dir,
            engine: Engine::Sqlite,
            sink,
            authz,
            pki,
            admin,
        }
    }

    async fn on(engine: Engine) -> Self {
        Self::with_directory_on(TestDirectory::new(Standing::Active), engine).await
    }

    /// The service's configuration: its data directory, its store on `engine`.
    fn config(dir: &std::path::Path, engine: &Engine) -> Config {
        let mut cfg = Config::new(dir);
        if let Some(url) = engine.url() {
            cfg.store = authz::pg::Engine::postgres(authz::pg::Target::parse(url, None).unwrap());
        }
        cfg
    }

    async fn with_directory_on(directory: TestDirectory, engine: Engine) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(MemorySink::new());
        let pki = Arc::new(TestPki::new(directory));
        let cfg = Self::config(dir.path(), &engine);
        let authz = Arc::new(
            Authz::connect(&cfg, sink.clone(), pki.directory.clone())
                .await
                .unwrap(),
        );
        // The example's participant is of acme-vfx: requests name only known organizations.
        // (A restarted service on the same store has it already: a conflict, not a failure.)
        let _exists_after_restart = authz.add_organization("acme-vfx", &[]).await.is_err();
        let admin = pki.issue("admin", Role::Admin);
        Self {
            dir,
            engine,
            sink,
            authz,
            pki,
            admin,
        }
    }

    /// Calls as the admin.
    async fn call(&self, method: Method, uri: &str, body: Option<String>) -> (StatusCode, Value) {
        let admin = self.admin.clone();
        self.call_as(Some(&admin), method, uri, body).await
    }

    /// Calls as `who` (`None`: a connection without a client certificate).
    async fn call_as(
        &self,
        who: Option<&Issued>,
        method: Method,
        uri: &str,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        if let Some(w) = who {
            self.pki.attach(&mut req, w);
        }
        let resp = authz::app(self.authz.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("non-JSON body: {}", String::from_utf8_lossy(&bytes)));
        (status, v)
    }

    fn issuer_pub(&self) -> IssuerPublicKey {
        let text = std::fs::read_to_string(self.dir.path().join("issuer.pub")).unwrap();
        IssuerPublicKey::from_hex(&text).unwrap()
    }
}

fn now() -> i64 {
    authz::service::now().expect("system clock usable")
}

/// The example request with its window moved to [now - 60 s, now + 1 day), so tests never rot.
fn request_json(edit: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
    v["window"] = json!({"start": now() - 60, "end": now() + 86_400});
    edit(&mut v);
    v.to_string()
}

fn access<'a>(device: &'a str, path: &'a str, action: Action) -> AccessRequest<'a> {
    AccessRequest {
        participant: "alice",
        application_digest: DIGEST,
        device,
        asset_path: path,
        asset_scope: "unrelated",
        action,
        now: now(),
    }
}

async fn submit_issues_signed_rules_for_the_right_peps(engine: Engine) {
    let h = Harness::on(engine).await;
    let (st, v) = h
        .call(Method::POST, "/v1/requests", Some(request_json(|_| {})))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["status"], "active");
    assert_eq!(v["delivered"], true);
    assert_eq!(
        v["rule_ids"],
        json!([format!("r-{id}-1"), format!("r-{id}-2")])
    );

    let published = h.sink.published();
    assert_eq!(published.len(), 2);
    let pk = h.issuer_pub();
    for r in &published {
        pk.verify(r).unwrap();
    }

    let (st, v) = h.call(Method::GET, "/v1/rules?pep=keyserver", None).await;
    assert_eq!(st, StatusCode::OK);
    let ks: Vec<SignedRule> = serde_json::from_value(v["rules"].clone()).unwrap();
    assert_eq!(ks.len(), 1);
    assert_eq!(ks[0].rule.targets, vec!["keyserver"]);
    let (_, v) = h.call(Method::GET, "/v1/rules?pep=mount:ws-07", None).await;
    let mount: Vec<SignedRule> = serde_json::from_value(v["rules"].clone()).unwrap();
    assert_eq!(mount.len(), 1);
    let (_, v) = h.call(Method::GET, "/v1/rules?pep=mount:ws-99", None).await;
    assert_eq!(v["rules"], json!([]));

    // The rules a PEP receives decide as intended.
    let ks_eval = Evaluator::new(ks.into_iter().map(|s| s.rule)).unwrap();
    let m_eval = Evaluator::new(mount.into_iter().map(|s| s.rule)).unwrap();
    let frame = "show/seq1/shot010/f0001.exr";
    assert!(
        ks_eval
            .decide(&access("ws-07", frame, Action::License))
            .allowed
    );
    assert!(
        !m_eval
            .decide(&access("ws-07", frame, Action::License))
            .allowed
    );
    assert!(
        m_eval
            .decide(&access("ws-07", frame, Action::Write))
            .allowed
    );
    assert!(
        !m_eval
            .decide(&access("ws-07", "show/seq2/x.exr", Action::Read))
            .allowed
    );
    assert!(
        !m_eval
            .decide(&access("ws-07", frame, Action::Delete))
            .allowed
    );

    let (st, v) = h
        .call(Method::GET, &format!("/v1/requests/{id}"), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["status"], "active");
    assert_eq!(v["request"]["task"]["name"], "Comp shot 010");

    let (_, v) = h.call(Method::GET, "/v1/issuer", None).await;
    assert_eq!(v["public_key"], pk.to_hex());
}

async fn add_policy(h: &Harness, body: Value) -> Value {
    let (st, v) = h
        .call(Method::POST, "/v1/policies", Some(body.to_string()))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    v
}

async fn blocked_application_version_refuses_with_reason_recorded(engine: Engine) {
    let h = Harness::on(engine).await;
    add_policy(&h, json!({"kind": "application_version", "name": "nuke", "version": "15.1", "note": "CVE-2026-1234"})).await;
    let (st, v) = h
        .call(Method::POST, "/v1/requests", Some(request_json(|_| {})))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["status"], "refused");
    let reasons = v["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1);
    assert_eq!(reasons[0]["field"], "applications[0]");
    assert!(reasons[0]["message"]
        .as_str()
        .unwrap()
        .contains("nuke 15.1"));
    assert!(h.sink.published().is_empty());

    // Workflow management reads the refusal back.
    let id = v["id"].as_str().unwrap();
    let (st, got) = h
        .call(Method::GET, &format!("/v1/requests/{id}"), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got["status"], "refused");
    assert_eq!(got["reasons"], v["reasons"]);
    assert_eq!(got["rule_ids"], json!([]));
}

async fn two_blocks_list_both_reasons(engine: Engine) {
    let h = Harness::on(engine).await;
    add_policy(&h, json!({"kind": "device", "device": "ws-07"})).await;
    add_policy(
        &h,
        json!({"kind": "organization", "organization": "acme-vfx"}),
    )
    .await;
    let (st, v) = h
        .call(Method::POST, "/v1/requests", Some(request_json(|_| {})))
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let fields: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["devices[0]", "participants[0]"]);
    let (_, list) = h.call(Method::GET, "/v1/policies", None).await;
    assert_eq!(list["policies"].as_array().unwrap().len(), 2);
}

async fn adding_a_global_policy_revokes_live_rules(engine: Engine) {
    let h = Harness::on(engine).await;
    let (_, v) = h
        .call(Method::POST, "/v1/requests", Some(request_json(|_| {})))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    // An unrelated request must survive.
    let (_, other) = h
        .call(
            Method::POST,
            "/v1/requests",
            Some(request_json(|r| {
                r["devices"][0]["identifier"][0]["identifierValue"] = "ws-08".into();
            })),
        )
        .await;

    let added = add_policy(
        &h,
        json!({"kind": "device", "device": "ws-07", "note": "compromised"}),
    )
    .await;
    assert_eq!(added["revoked_requests"], json!([id]));
    assert_eq!(
        added["revoked_rules"],
        json!([format!("r-{id}-1"), format!("r-{id}-2")])
    );

    let revs = h.sink.revocations();
    assert_eq!(revs.len(), 2);
    let pk = h.issuer_pub();
    for r in &revs {
        r.verify(&pk).unwrap();
        assert!(r.reason.contains("device ws-07"), "{}", r.reason);
    }
    let (_, got) = h
        .call(Method::GET, &format!("/v1/requests/{id}"), None)
        .await;
    assert_eq!(got["status"], "revoked");
    assert_eq!(got["reasons"][0]["field"], "devices[0]");
    let (_, rules) = h.call(Method::GET, "/v1/rules", None).await;
    let live: Vec<SignedRule> = serde_json::from_value(rules["rules"].clone()).unwrap();
    assert!(live
        .iter()
        .all(|r| r.rule.request_id == other["id"].as_str().unwrap()));
    assert_eq!(live.len(), 2);

    // Removing the block does not resurrect revoked rules.
    let pid = added["policy"]["id"].as_str().unwrap();
    let (st, _) = h
        .call(Method::DELETE, &format!("/v1/policies/{pid}"), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = h
        .call(Method::DELETE, &format!("/v1/policies/{pid}"), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, got) = h
        .call(Method::GET, &format!("/v1/requests/{id}"), None)
        .await;
    assert_eq!(got["status"], "revoked");
}

async fn cancel_revokes_every_rule(engine: Engine) {
    let h = Harness::on(engine).await;
    let (_, v) = h
        .call(Method::POST, "/v1/requests", Some(request_json(|_| {})))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let (st, c) = h
        .call(Method::DELETE, &format!("/v1/requests/{id}"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["revoked"], v["rule_ids"]);
    let revoked: Vec<String> = h
        .sink
        .revocations()
        .into_iter()
        .map(|r| r.rule_id)
        .collect();
    assert_eq!(json!(revoked), v["rule_ids"]);
    let (_, got) = h
        .call(Method::GET, &format!("/v1/requests/{id}"), None)
        .await;
    assert_eq!(got["status"], "cancelled");
    assert_eq!(got["revoked_rule_ids"], v["rule_ids"]);
    let (_, rules) = h.call(Method::GET, "/v1/rules", None).await;
    assert_eq!(rules["rules"], json!([]));
    // Cancelling again revokes nothing more; changing a cancelled request is a conflict.
    let (st, c) = h
        .call(Method::DELETE, &format!("/v1/requests/{id}"), None)
        .await;
    assert_eq!((st, c["revoked"].clone()), (StatusCode::OK, json!([])));
    let (st, _) = h
        .call(
            Method::PUT,
            &format!("/v1/requests/{id}"),
            Some(request_json(|_| {})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = h.call(Method::DELETE, "/v1/requests/req-nope", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

async fn change_replaces_rules(engine: Engine) {
    let h = Harness::on(engine).await;
    let (_, v) = h
        .call(Method::POST, "/v1/requests", Some(request_json(|_| {})))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let changed = request_json(|r| {
        r["devices"][0]["identifier"][0]["identifierValue"] = "rn-01".into();
        r["actions"] = json!(["read"]);
    });
    let (st, c) = h
        .call(Method::PUT, &format!("/v1/requests/{id}"), Some(changed))
        .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["revision"], 2);
    assert_eq!(c["replaced"], v["rule_ids"]);
    assert_eq!(
        c["rule_ids"],
        json!([format!("r-{id}-3"), format!("r-{id}-4")])
    );
    assert_eq!(h.sink.revocations().len(), 2);
    let published = h.sink.published();
    assert_eq!(published.len(), 4);
    assert_eq!(published[3].rule.targets, vec!["mount:rn-01"]);
    let (_, rules) = h.call(Method::GET, "/v1/rules?pep=mount:ws-07", None).await;
    assert_eq!(rules["rules"], json!([]));

    // A change refused by a global policy leaves the request in force.
    add_policy(&h, json!({"kind": "participant", "participant": "alice"})).await;
    // (that block revoked it; re-activate with a different participant first)
    let bob = request_json(|r| {
        r["participants"][0]["identifier"][0]["identifierValue"] = "bob".into();
    });
    let (st, c) = h
        .call(Method::PUT, &format!("/v1/requests/{id}"), Some(bob))
        .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    let (st, r) = h
        .call(
            Method::PUT,
            &format!("/v1/requests/{id}"),
            Some(request_json(|_| {})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{r}");
    let (_, got) = h
        .call(Method::GET, &format!("/v1/requests/{id}"), None)
        .await;
    assert_eq!(got["status"], "active");
    assert_eq!(got["rule_ids"], c["rule_ids"]);
    assert_eq!(got["change_refused"][0]["field"], "participants[0]");
}

async fn malformed_input_on_every_endpoint_is_400_naming_the_field(engine: Engine) {
    let h = Harness::on(engine).await;
    let (_, v) = h
        .call(Method::POST, "/v1/requests", Some(request_json(|_| {})))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let bad_window = request_json(|r| r["window"]["end"] = "soon".into());
    let cases: Vec<(Method, String, Option<String>, &str)> = vec![
        (
            Method::POST,
            "/v1/requests".into(),
            Some("{not json".into()),
            "body",
        ),
        (
            Method::POST,
            "/v1/requests".into(),
            Some(bad_window.clone()),
            "window.end",
        ),
        (
            Method::POST,
            "/v1/requests".into(),
            Some(request_json(|r| r["actions"] = json!(["read", 5]))),
            "actions[1]",
        ),
        (
            Method::PUT,
            format!("/v1/requests/{id}"),
            Some("[]".into()),
            "body",
        ),
        (
            Method::PUT,
            format!("/v1/requests/{id}"),
            Some(bad_window),
            "window.end",
        ),
        (
            Method::PUT,
            "/v1/requests/bad%20id".into(),
            Some(request_json(|_| {})),
            "id",
        ),
        (Method::GET, "/v1/requests/bad%22id".into(), None, "id"),
        (Method::DELETE, "/v1/requests/bad%20id".into(), None, "id"),
        (
            Method::POST,
            "/v1/policies".into(),
            Some("{\"kind\":\"device\"}".into()),
            "device",
        ),
        (Method::POST, "/v1/policies".into(), Some("".into()), "body"),
        (Method::DELETE, "/v1/policies/bad%20id".into(), None, "id"),
        (Method::GET, "/v1/rules?pep=nonsense".into(), None, "pep"),
        (Method::GET, "/v1/rules?colour=red".into(), None, "query"),
    ];
    for (method, uri, body, field) in cases {
        let (st, v) = h.call(method.clone(), &uri, body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{method} {uri}: {v}");
        assert_eq!(v["field"], field, "{method} {uri}: {v}");
        assert!(v["error"].as_str().is_some());
    }
    // Oversized bodies are refused before parsing, still with a JSON error.
    let huge = "x".repeat(authz::http::BODY_LIMIT + 1);
    let (st, v) = h.call(Method::POST, "/v1/requests", Some(huge)).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["field"], "body");
    // Nothing malformed changed the state.
    let (_, got) = h
        .call(Method::GET, &format!("/v1/requests/{id}"), None)
        .await;
    assert_eq!(got["revision"], 1);
}

async fn undelivered_changes_stay_queued_and_are_retried(engine: Engine) {
    let h = Harness::on(engine).await;
    h.sink.set_failing(true);
    let (st, v) = h
        .call(Method::POST, "/v1/requests", Some(request_json(|_| {})))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(v["delivered"], false);
    let id = v["id"].as_str().unwrap();
    h.call(Method::DELETE, &format!("/v1/requests/{id}"), None)
        .await;
    assert_eq!(h.authz.pending_deliveries().await.unwrap(), 3);
    h.sink.set_failing(false);
    assert_eq!(h.authz.flush_outbox().await.unwrap(), 3);
    // In order: the publication first, then both revocations.
    assert_eq!(h.sink.published().len(), 2);
    assert_eq!(h.sink.revocations().len(), 2);
    assert_eq!(h.authz.pending_deliveries().await.unwrap(), 0);
}

async fn state_and_issuer_key_survive_restart(engine: Engine) {
    let h = Harness::on(engine).await;
    let (_, v) = h
        .call(Method::POST, "/v1/requests", Some(request_json(|_| {})))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let pk = h.authz.public_key();
    // The data directory is locked while the first service lives: stop it first.
    let Harness {
        dir,
        engine,
        sink,
        authz,
        pki,
        ..
    } = h;
    drop(authz);
    let cfg = Harness::config(dir.path(), &engine);
    let reopened = Arc::new(
        Authz::connect(&cfg, sink.clone(), pki.directory.clone())
            .await
            .unwrap(),
    );
    assert_eq!(reopened.public_key(), pk);
    assert_eq!(
        reopened
            .get(&id, &Submitter::admin("admin"))
            .await
            .unwrap()
            .rule_ids
            .len(),
        2
    );
    let on_sqlite = matches!(engine, Engine::Sqlite);
    assert_eq!(dir.path().join("authz.sqlite").exists(), on_sqlite);
}

/// A minimal ARDS stand-in over TLS: verifies signatures like the real one must, records bodies.
#[derive(Default)]
struct FakeArds {
    published: Mutex<Vec<SignedRule>>,
    revoked: Mutex<Vec<Revocation>>,
}

#[tokio::test]
async fn service_over_real_tls_on_loopback_delivers_to_ards_over_tls() {
    use axum::routing::post;
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];

    // Fake ARDS, trusting the authz issuer key from its issuer.pub.
    let dir = tempfile::tempdir().unwrap();
    let (ards_cert, ards_key) = authz::tls::self_signed(&names).unwrap();
    let ards_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ards_url = format!(
        "https://127.0.0.1:{}",
        ards_listener.local_addr().unwrap().port()
    );
    let pki = TestPki::new(TestDirectory::new(Standing::Active));
    let publisher = pki.issue("authz", Role::Service);
    let sink =
        Arc::new(authz::wire::HttpSink::new(&ards_url, &ards_cert, &publisher.identity).unwrap());
    let service =
        Arc::new(Authz::open(&Config::new(dir.path()), sink, pki.directory.clone()).unwrap());
    service.add_organization("acme-vfx", &[]).await.unwrap();
    let pk =
        IssuerPublicKey::from_hex(&std::fs::read_to_string(dir.path().join("issuer.pub")).unwrap())
            .unwrap();
    let fake = Arc::new(FakeArds::default());
    let f1 = fake.clone();
    let f2 = fake.clone();
    let ards_app = axum::Router::new()
        .route(
            "/v1/publish",
            post(move |axum::Json(b): axum::Json<PublishRules>| async move {
                for r in &b.rules {
                    if pk.verify(r).is_err() {
                        return StatusCode::FORBIDDEN;
                    }
                }
                f1.published.lock().unwrap().extend(b.rules);
                StatusCode::OK
            }),
        )
        .route(
            "/v1/revoke",
            post(move |axum::Json(r): axum::Json<Revocation>| async move {
                if r.verify(&pk).is_err() {
                    return StatusCode::FORBIDDEN;
                }
                f2.revoked.lock().unwrap().push(r);
                StatusCode::OK
            }),
        );
    tokio::spawn(authz::tls::serve(
        ards_listener,
        authz::tls::server_config(&ards_cert, &ards_key).unwrap(),
        ards_app,
        None,
        std::future::pending(),
    ));

    // authz itself over TLS with the cert it creates in its data dir.
    let (cert, key) = authz::tls::load_or_create(dir.path(), &names).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let auth = pki.client_auth();
    let server = tokio::spawn(authz::tls::serve(
        listener,
        authz::tls::mtls_server_config(&cert, &key, &auth).unwrap(),
        authz::app(service.clone()),
        Some(auth.handle()),
        async {
            let _ = stop_rx.await;
        },
    ));

    let admin = pki.issue("admin", Role::Admin);
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(
            authz::tls::client_config_with(&cert, Some(&admin.identity)).unwrap(),
        )
        .build()
        .unwrap();
    let resp = client
        .post(format!("{url}/v1/requests"))
        .header("content-type", "application/json")
        .body(request_json(|_| {}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["delivered"], true, "{v}");
    assert_eq!(fake.published.lock().unwrap().len(), 2);

    let id = v["id"].as_str().unwrap();
    let resp = client
        .delete(format!("{url}/v1/requests/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(fake.revoked.lock().unwrap().len(), 2);

    // Without a client certificate only health answers; a revoked one fails its handshake; a
    // certificate of another CA fails too.
    let anonymous = reqwest::Client::builder()
        .use_preconfigured_tls(authz::tls::client_config(&cert).unwrap())
        .build()
        .unwrap();
    let r = anonymous
        .get(format!("{url}/v1/policies"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("client certificate"));
    let r = anonymous
        .get(format!("{url}/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    pki.revoke(&admin);
    let revoked = reqwest::Client::builder()
        .use_preconfigured_tls(
            authz::tls::client_config_with(&cert, Some(&admin.identity)).unwrap(),
        )
        .build()
        .unwrap();
    assert!(revoked
        .get(format!("{url}/v1/policies"))
        .send()
        .await
        .is_err());
    // The connection opened before the revocation (if the pool reuses it) is refused at its
    // next request; a new one fails its handshake.
    if let Ok(r) = client.get(format!("{url}/v1/policies")).send().await {
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let other = TestPki::new(TestDirectory::new(Standing::Active));
    let foreign = other.issue("admin", Role::Admin);
    let stranger_ca = reqwest::Client::builder()
        .use_preconfigured_tls(
            authz::tls::client_config_with(&cert, Some(&foreign.identity)).unwrap(),
        )
        .build()
        .unwrap();
    assert!(stranger_ca
        .get(format!("{url}/v1/policies"))
        .send()
        .await
        .is_err());

    // A client that does not trust the cert cannot talk to the service.
    let (other_cert, _) = authz::tls::self_signed(&names).unwrap();
    let stranger = reqwest::Client::builder()
        .use_preconfigured_tls(authz::tls::client_config(&other_cert).unwrap())
        .build()
        .unwrap();
    assert!(stranger
        .get(format!("{url}/v1/policies"))
        .send()
        .await
        .is_err());

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

#[test]
fn sinks_are_object_safe() {
    let _: Arc<dyn RuleSink> = Arc::new(MemorySink::new());
}

/// One principal of every role (names chosen so a role's principal never matches another's).
fn principals(h: &Harness) -> Vec<Issued> {
    [
        ("admin2", Role::Admin),
        ("wf-render", Role::Workflow),
        ("audit-1", Role::Auditor),
        ("ws-07", Role::Device),
        ("keyserver", Role::Service),
    ]
    .into_iter()
    .map(|(n, r)| h.pki.issue(n, r))
    .collect()
}

/// Attack: anyone who can connect issues rules for themselves. Every route of the router but
/// health refuses a caller without a certificate (401) and each role it does not list (403),
/// and answers a role it lists (neither 401 nor 403).
async fn every_route_refuses_anonymous_and_wrong_role_callers(engine: Engine) {
    let h = Harness::on(engine).await;
    h.pki.directory.set_grant(
        "wf-render",
        WorkflowGrant {
            scopes: vec!["*".into()],
            paths: vec!["**".into()],
        },
    );
    let all = principals(&h);
    for (method, path, roles) in authz::http::ROUTES {
        let uri = path.replace("{id}", "req-000000000000000000000000");
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let body = (*method == "POST" || *method == "PUT").then(|| "{}".to_string());
        let (status, v) = h.call_as(None, m.clone(), &uri, body.clone()).await;
        let Some(roles) = roles else {
            assert_eq!(status, StatusCode::OK, "{method} {path} anonymous: {v}");
            continue;
        };
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} anonymous: {v}"
        );
        assert!(v["error"].as_str().is_some(), "{v}");
        for p in &all {
            let (status, v) = h.call_as(Some(p), m.clone(), &uri, body.clone()).await;
            if roles.contains(&p.principal.role) {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {path} as {:?}: {status} {v}",
                    p.principal.role
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {path} as {:?}: {v}",
                    p.principal.role
                );
            }
        }
    }
    // A certificate the directory never issued, and one revoked, are refused per request.
    let stranger = h.pki.issue_unregistered("mallory");
    let (status, _) = h
        .call_as(Some(&stranger), Method::GET, "/v1/policies", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let admin = h.pki.issue("admin3", Role::Admin);
    let (status, _) = h
        .call_as(Some(&admin), Method::GET, "/v1/policies", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    h.pki.revoke(&admin);
    let (status, _) = h
        .call_as(Some(&admin), Method::GET, "/v1/policies", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// One asset with both a path and a scope, so a grant can cover it.
fn granted_request(path: &str, scope: &str) -> String {
    request_json(|v| {
        v["assets"] = json!([{
            "schemaVersion": "https://movielabs.com/omc/json/schema/v2.8",
            "entityType": "Asset",
            "identifier": [
                {"identifierScope": "path", "identifierValue": path},
                {"identifierScope": "scope", "identifierValue": scope}
            ]
        }]);
    })
}

/// Attack: a workflow principal granted `show/seq1` in scope `shot010` authorizes itself (or
/// anyone) for other paths or scopes, or cancels another workflow's request.
async fn a_workflow_authorizes_only_inside_its_grant_and_only_its_own_requests(engine: Engine) {
    let h = Harness::on(engine).await;
    let grant = WorkflowGrant {
        scopes: vec!["shot010".into()],
        paths: vec!["show/seq1".into()],
    };
    h.pki.directory.set_grant("wf-a", grant.clone());
    h.pki.directory.set_grant("wf-b", grant);
    let a = h.pki.issue("wf-a", Role::Workflow);
    let b = h.pki.issue("wf-b", Role::Workflow);

    let (status, v) = h
        .call_as(
            Some(&a),
            Method::POST,
            "/v1/requests",
            Some(granted_request("show/seq1/shot010/**", "shot010")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();

    for (path, scope) in [
        ("show/seq2/**", "shot010"),
        ("show/**", "shot010"),
        ("show/seq10/**", "shot010"),
        ("show/seq1/shot010/**", "shot020"),
    ] {
        let (status, v) = h
            .call_as(
                Some(&a),
                Method::POST,
                "/v1/requests",
                Some(granted_request(path, scope)),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path} {scope}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("workflow:wf-a"),
            "{v}"
        );
    }
    // The example's scope-only and path-only selectors cover every path / every scope.
    let (status, _) = h
        .call_as(
            Some(&a),
            Method::POST,
            "/v1/requests",
            Some(request_json(|_| {})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A workflow without a grant is refused outright.
    let nogrant = h.pki.issue("wf-none", Role::Workflow);
    let (status, v) = h
        .call_as(
            Some(&nogrant),
            Method::POST,
            "/v1/requests",
            Some(granted_request("show/seq1/**", "shot010")),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");

    // Listing: the owner and an admin see it, another workflow does not.
    let listed = |v: &serde_json::Value| {
        v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let (status, v) = h.call_as(Some(&a), Method::GET, "/v1/requests", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(listed(&v), vec![id.clone()]);
    let (_, v) = h.call_as(Some(&b), Method::GET, "/v1/requests", None).await;
    assert!(listed(&v).is_empty(), "{v}");
    let (_, v) = h.call(Method::GET, "/v1/requests?limit=1", None).await;
    assert_eq!(listed(&v), vec![id.clone()]);
    let (status, v) = h.call(Method::GET, "/v1/requests?limit=5000", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], "limit", "{v}");

    // Another workflow neither sees, changes nor cancels it; the owner and an admin do.
    let uri = format!("/v1/requests/{id}");
    for m in [Method::GET, Method::DELETE] {
        let (status, _) = h.call_as(Some(&b), m, &uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _) = h
        .call_as(
            Some(&b),
            Method::PUT,
            &uri,
            Some(granted_request("show/seq1/**", "shot010")),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, v) = h.call_as(Some(&a), Method::GET, &uri, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["status"], "active");
    let (status, v) = h.call(Method::DELETE, &uri, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

/// A request naming a user, device or application build the directory does not know (or has
/// disabled) is refused with the field, the value and how to fix it — not issued as rules that
/// never match.
async fn requests_naming_unknown_or_disabled_principals_are_refused(engine: Engine) {
    let dir = TestDirectory::new(Standing::Unknown);
    dir.set_user("alice", Standing::Active);
    dir.set_device("ws-07", Standing::Active);
    dir.set_application(DIGEST, Standing::Active);
    let h = Harness::with_directory_on(dir, engine).await;
    let (status, v) = h
        .call(Method::POST, "/v1/requests", Some(request_json(|_| {})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");

    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Edit, &str, &str)> = vec![
        (
            Box::new(|v| v["participants"][0]["identifier"][0]["identifierValue"] = "bob".into()),
            "participants[0]",
            "csap user add bob",
        ),
        (
            Box::new(|v| v["devices"][0]["identifier"][0]["identifierValue"] = "ws-99".into()),
            "devices[0]",
            "csap device enroll ws-99",
        ),
        (
            Box::new(|v| {
                v["applications"][0]["identifier"][0]["identifierValue"] = "ab".repeat(32).into()
            }),
            "applications[0]",
            "csap app register",
        ),
    ];
    for (edit, field, hint) in cases {
        let (status, v) = h
            .call(Method::POST, "/v1/requests", Some(request_json(edit)))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["field"], field, "{v}");
        assert!(v["error"].as_str().unwrap().contains(hint), "{v}");
    }
    h.pki.directory.set_user("alice", Standing::Inactive);
    let (status, v) = h
        .call(Method::POST, "/v1/requests", Some(request_json(|_| {})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("disabled"), "{v}");
}

/// Issue 11: a wrong method is a 405 with a JSON `{"error"}` body (it was empty), like every
/// other error status; `call` panics on a non-JSON body.
async fn method_not_allowed_has_a_json_body(engine: Engine) {
    let h = Harness::on(engine).await;
    for (method, uri) in [
        (Method::PATCH, "/v1/requests/req-1"),
        (Method::DELETE, "/v1/issuer"),
        (Method::PUT, "/v1/requests"),
    ] {
        let (st, body) = h.call(method.clone(), uri, None).await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {uri}: {body}"
        );
    }
}

/// Issue 11: two services on one data directory would both write the same SQLite file and
/// keys; the second is refused with the holder's pid.
#[test]
fn second_service_on_the_same_data_dir_is_refused_naming_the_pid() {
    let h = Harness::new();
    let err = Authz::open(
        &Config::new(h.dir.path()),
        h.sink.clone(),
        h.pki.directory.clone(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("in use by process {}", std::process::id())),
        "{msg}"
    );
}

/// Issue 11: state files are 0600 and the data dir 0700, also when an older version (or a
/// loose umask) left them 0644 / 0755 — tightened on the next start.
#[test]
fn state_files_are_private_and_tightened_on_restart() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("authz");
    let sink = Arc::new(MemorySink::new());
    let directory = TestPki::new(TestDirectory::new(Standing::Active)).directory;
    let files = ["authz.sqlite", "issuer.key", ".lock"];
    {
        let _a = Authz::open(&Config::new(&data), sink.clone(), directory.clone()).unwrap();
        assert_eq!(mode(&data), 0o700);
        for f in files {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in files {
        std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let _a = Authz::open(&Config::new(&data), sink, directory).unwrap();
    assert_eq!(mode(&data), 0o700);
    for f in files {
        assert_eq!(mode(&data.join(f)), 0o600, "{f} after restart");
    }
}
