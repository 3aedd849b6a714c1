//! Integration tests: a real key server on loopback TLS with SQLite files in temp dirs.

use std::path::Path;
use std::sync::Arc;

use authz::{Action, Evaluator};
use csap_testkit::postgres::Engine;
use keyserver::client::{AdminClient, ClientError, LicenseClient};
use keyserver::license::{self, LicenseError};
use keyserver::pki::Identity;
use keyserver::testing::{provision, spawn_loopback, Loopback, Provisioned, RuleFor};
use keyserver::wire::{
    AppCode, AuditRecord, IssueRequest, Reason, RegisterAppRequest, RevokeAppRequest,
};
use keyserver::SwappableRules;

const USER: &str = "alice";
const DEVICE: &str = "ws-07";
const APP: &str = "nuke";
const SCOPE: &str = "shot010";
/// The local uid test logins bind their tokens to.
const UID: u32 = 1000;

#[path = "keyserver/tokens.rs"]
mod tokens;

#[path = "keyserver/app.rs"]
mod app;

fn app_digest(name: &str) -> String {
    blake3::hash(name.as_bytes()).to_hex().to_string()
}

/// The rules every test starts from: alice on ws-07 with nuke may read, write and create under
/// `show/seq1/` now; `future/` opens only in an hour.
fn base_rules() -> Evaluator {
    let now = keyserver::now().expect("system clock usable");
    let d = app_digest(APP);
    let all = [Action::Read, Action::Write, Action::Create, Action::License];
    Evaluator::new([
        RuleFor {
            id: "r-now",
            user: USER,
            device: DEVICE,
            app_digest: &d,
            path_like: "show/seq1/*",
            actions: &all,
            not_before: now - 3600,
            not_after: now + 86_400,
        }
        .build(),
        RuleFor {
            id: "r-future",
            user: USER,
            device: DEVICE,
            app_digest: &d,
            path_like: "future/*",
            actions: &all,
            not_before: now + 3600,
            not_after: now + 7200,
        }
        .build(),
    ])
    .expect("valid rules")
}

struct Env {
    /// The store's engine (holding a PostgreSQL database keeps its server running).
    engine: Engine,
    dir: tempfile::TempDir,
    lb: Loopback,
    admin: AdminClient,
    dev: Provisioned,
    rules: Arc<SwappableRules>,
}

async fn env() -> Env {
    env_on(Engine::Sqlite).await
}

/// [`env`] with the key server's store on `engine`.
async fn env_on(engine: Engine) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let rules = Arc::new(SwappableRules::new(base_rules()));
    let mut cfg = keyserver::testing::loopback_config(&dir.path().join("ks"), rules.clone());
    if let Some(url) = engine.url() {
        cfg.store = authz::pg::Engine::postgres(authz::pg::Target::parse(url, None).unwrap());
    }
    let lb = keyserver::testing::spawn_with(cfg).await.unwrap();
    let dev = provision(&lb, DEVICE, &dir.path().join("dev"), USER, APP, SCOPE)
        .await
        .unwrap();
    let admin = lb.admin().unwrap();
    Env {
        engine,
        dir,
        lb,
        admin,
        dev,
        rules,
    }
}

impl Env {
    async fn create(&self, path: &str) -> [u8; 16] {
        let lic = self
            .dev
            .client
            .create(&self.dev.token, &self.dev.app_digest, path, SCOPE)
            .await
            .unwrap();
        assert_eq!(lic.grants.len(), 1);
        lic.grants[0].asset_id
    }

    /// A single-asset read license (the request itself must be answered).
    async fn read(&self, id: [u8; 16]) -> license::OpenedLicense {
        self.dev
            .client
            .request(&self.dev.token, &self.dev.app_digest, Action::Read, &[id])
            .await
            .unwrap()
    }

    async fn audit(&self) -> Vec<AuditRecord> {
        // Events from handshakes and middleware are written by a background task.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        self.admin.audit_tail(1000).await.unwrap()
    }

    async fn assert_audited(&self, decision: &str, reason: &str) {
        let log = self.audit().await;
        assert!(
            log.iter().any(|r| r.decision == decision
                && r.reason.as_deref().is_some_and(|x| x.starts_with(reason))),
            "no {decision} audit record with reason {reason}: {log:#?}"
        );
    }
}

fn denied(r: Result<impl std::fmt::Debug, ClientError>) -> Reason {
    match r {
        Err(ClientError::Denied(reason)) => reason,
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// A reqwest client whose TLS config presents no client certificate.
fn anonymous_client(ca_pem: &str) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    use rustls::pki_types::pem::PemObject;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .build()
        .unwrap()
}

fn identity_client(dir: &Path) -> reqwest::Client {
    let cfg = Identity::load(dir).unwrap().client_config().unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .build()
        .unwrap()
}

#[tokio::test]
async fn handshake_without_client_certificate_fails() {
    let e = env().await;
    let ca = std::fs::read_to_string(e.dev.device_dir.join("ca.pem")).unwrap();
    let r = anonymous_client(&ca)
        .get(format!("{}/v1/info", e.lb.url))
        .send()
        .await;
    assert!(
        r.is_err(),
        "a connection without a client certificate must fail: {r:?}"
    );
    // With the device certificate the same request works.
    let ok = identity_client(&e.dev.device_dir)
        .get(format!("{}/v1/info", e.lb.url))
        .send()
        .await
        .unwrap();
    assert!(ok.status().is_success());
    e.assert_audited("deny", "no_client_certificate").await;
}

async fn revoked_device_fails_handshake_and_open_connections(engine: Engine) {
    let e = env_on(engine).await;
    let id = e.create("show/seq1/a.exr").await;
    e.admin.revoke_device(DEVICE).await.unwrap();
    // A request on a connection opened before the revocation is refused by the handler...
    let r = e
        .dev
        .client
        .request(&e.dev.token, &e.dev.app_digest, Action::Read, &[id])
        .await;
    match r {
        Err(ClientError::Denied(Reason::DeviceRevoked)) | Err(ClientError::Http(_)) => {}
        other => panic!("expected refusal, got {other:?}"),
    }
    // ...and a new handshake is refused outright.
    let fresh = LicenseClient::connect(&e.lb.url, &e.dev.device_dir).await;
    assert!(matches!(fresh, Err(ClientError::Http(_))), "{fresh:?}");
    e.assert_audited("deny", "device_revoked").await;
    // Re-enrolling under the same name issues a new certificate that works again.
    let dir2 = e.dir.path().join("dev2");
    e.admin.enroll_device(DEVICE, &dir2).await.unwrap();
    let c2 = LicenseClient::connect(&e.lb.url, &dir2).await.unwrap();
    let lic = c2
        .request(&e.dev.token, &e.dev.app_digest, Action::Read, &[id])
        .await
        .unwrap();
    assert_eq!(lic.grants.len(), 1);
}

async fn wrong_or_revoked_application_is_denied(engine: Engine) {
    let e = env_on(engine).await;
    let id = e.create("show/seq1/a.exr").await;
    let other = app_digest("copy-script");
    let r = e
        .dev
        .client
        .request(&e.dev.token, &other, Action::Read, &[id])
        .await;
    assert_eq!(denied(r), Reason::UnknownApplication);
    e.assert_audited("deny", "unknown_application").await;

    e.admin
        .revoke_app(&RevokeAppRequest {
            digest: None,
            name: Some(APP.into()),
            version: Some("1.0".into()),
        })
        .await
        .unwrap();
    let r = e
        .dev
        .client
        .request(&e.dev.token, &e.dev.app_digest, Action::Read, &[id])
        .await;
    assert_eq!(denied(r), Reason::ApplicationRevoked);
    e.assert_audited("deny", "application_revoked").await;
}

async fn disabled_user_and_expired_token_are_denied(engine: Engine) {
    let e = env_on(engine).await;
    let id = e.create("show/seq1/a.exr").await;
    // Expiry: move the server clock past the token lifetime (8 h default).
    e.lb.clock.advance(9 * 3600);
    let r = e
        .dev
        .client
        .request(&e.dev.token, &e.dev.app_digest, Action::Read, &[id])
        .await;
    assert_eq!(denied(r), Reason::TokenExpired);
    e.assert_audited("deny", "token_expired").await;
    e.lb.clock.advance(-9 * 3600);

    // A fresh token works, then disabling the user invalidates it at once.
    let (token, _) = e
        .dev
        .client
        .login(USER, "password-1234", UID)
        .await
        .unwrap();
    e.dev
        .client
        .request(&token, &e.dev.app_digest, Action::Read, &[id])
        .await
        .unwrap();
    e.admin.disable_user(USER).await.unwrap();
    let r = e
        .dev
        .client
        .request(&token, &e.dev.app_digest, Action::Read, &[id])
        .await;
    assert_eq!(denied(r), Reason::UserDisabled);
    assert_eq!(
        denied(e.dev.client.login(USER, "password-1234", UID).await),
        Reason::UserDisabled
    );
    e.assert_audited("deny", "user_disabled").await;
    // Wrong password and unknown user look the same to the client.
    assert_eq!(
        denied(e.dev.client.login("mallory", "password-1234", UID).await),
        Reason::BadPassword
    );
    e.assert_audited("deny", "unknown_user").await;
}

async fn outside_rule_window_and_revoked_key_are_denied(engine: Engine) {
    let e = env_on(engine).await;
    // Creating under future/ is refused: its rule opens in an hour.
    let r = e
        .dev
        .client
        .create(&e.dev.token, &e.dev.app_digest, "future/x.exr", SCOPE)
        .await;
    assert_eq!(denied(r), Reason::NoRule);
    e.assert_audited("deny", "no_rule").await;
    // No asset row was left behind by the refused create.
    assert!(e
        .admin
        .list_assets()
        .await
        .unwrap()
        .iter()
        .all(|a| a.path != "future/x.exr"));

    let v1 = e.create("show/seq1/v1.exr").await;
    let s = e.admin.rotate(SCOPE).await.unwrap();
    assert_eq!(s.current_version, 2);
    let v2 = e.create("show/seq1/v2.exr").await;
    // Licensed once before the revocation: its rows are in the server's read cache.
    assert_eq!(e.read(v1).await.grants.len(), 1);
    e.admin.revoke_key(SCOPE, 1).await.unwrap();
    let lic = e.read(v1).await;
    assert!(lic.grants.is_empty());
    assert_eq!(lic.license.denials[0].reason, Reason::KeyRevoked);
    let lic = e
        .dev
        .client
        .request(&e.dev.token, &e.dev.app_digest, Action::Read, &[v1, v2])
        .await
        .unwrap();
    assert_eq!(lic.grants.len(), 1);
    assert_eq!(lic.grants[0].asset_id, v2);
    assert_eq!(lic.grants[0].grant.key_version, 2);
    assert_eq!(lic.license.denials.len(), 1);
    assert_eq!(lic.license.denials[0].reason, Reason::KeyRevoked);
    e.assert_audited("deny", "key_revoked").await;
}

async fn batch_returns_exactly_the_permitted_subset(engine: Engine) {
    let e = env_on(engine).await;
    let a = e.create("show/seq1/a.exr").await;
    let b = e.create("show/seq1/b.exr").await;
    let c = e.create("show/seq1/c.exr").await;
    // Narrow the rules: only a.exr and b.exr may be read now.
    e.rules.replace(only_a_and_b(&e.dev.app_digest));
    let unknown = [0x11u8; 16];
    let lic = e
        .dev
        .client
        .request(
            &e.dev.token,
            &e.dev.app_digest,
            Action::Read,
            &[a, b, c, unknown],
        )
        .await
        .unwrap();
    let mut granted: Vec<[u8; 16]> = lic.grants.iter().map(|g| g.asset_id).collect();
    granted.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(granted, want);
    let denials: Vec<(String, Reason)> = lic
        .license
        .denials
        .iter()
        .map(|d| (d.asset_id.clone(), d.reason))
        .collect();
    assert_eq!(
        denials,
        vec![
            (hex::encode(c), Reason::NoRule),
            (hex::encode(unknown), Reason::UnknownAsset)
        ]
    );
    // The keys are the derivation's, distinct per asset, and each grant names its rule.
    assert_ne!(lic.grants[0].key.as_bytes(), lic.grants[1].key.as_bytes());
    assert!(lic.grants.iter().all(|g| !g.grant.rule_ids.is_empty()));
    assert!(lic.license.not_after <= keyserver::now().expect("system clock usable") + 15 * 60 + 5);
    e.assert_audited("deny", "unknown_asset").await;
    let log = e.audit().await;
    let lic_rows: Vec<_> = log
        .iter()
        .filter(|r| r.license_id.as_deref() == Some(&lic.license.license_id))
        .collect();
    assert_eq!(lic_rows.len(), 4, "one audit row per asset of the batch");
}

/// Rules allowing exactly a.exr and b.exr.
fn only_a_and_b(d: &str) -> Evaluator {
    Evaluator::new([
        RuleFor {
            id: "r-a",
            user: USER,
            device: DEVICE,
            app_digest: d,
            path_like: "show/seq1/a.exr",
            actions: &[Action::Read],
            not_before: 0,
            not_after: i64::MAX / 2,
        }
        .build(),
        RuleFor {
            id: "r-b",
            user: USER,
            device: DEVICE,
            app_digest: d,
            path_like: "show/seq1/b.exr",
            actions: &[Action::Read],
            not_before: 0,
            not_after: i64::MAX / 2,
        }
        .build(),
    ])
    .unwrap()
}

/// A key server whose data lives in `dir/ks` (so it can be restarted), a provisioned device,
/// and one asset it created.
struct Restartable {
    ks: std::path::PathBuf,
    rules: Arc<SwappableRules>,
    lb: Loopback,
    dev: Provisioned,
    created: license::OpenedLicense,
}

impl Restartable {
    async fn start(dir: &Path) -> Restartable {
        let ks = dir.join("ks");
        let rules = Arc::new(SwappableRules::new(base_rules()));
        let lb = spawn_loopback(&ks, rules.clone()).await.unwrap();
        let dev = provision(&lb, DEVICE, &dir.join("dev"), USER, APP, SCOPE)
            .await
            .unwrap();
        let created = dev
            .client
            .create(&dev.token, &dev.app_digest, "show/seq1/a.exr", SCOPE)
            .await
            .unwrap();
        Restartable {
            ks,
            rules,
            lb,
            dev,
            created,
        }
    }

    /// Stops the server and starts it again on the same data directory and address.
    async fn restart(self) -> Restartable {
        let addr = self.lb.server.addr;
        self.lb.server.shutdown().await;
        let mut cfg = keyserver::testing::loopback_config(&self.ks, self.rules.clone());
        cfg.listen = addr;
        let lb = keyserver::testing::spawn_with(cfg).await.unwrap();
        Restartable { lb, ..self }
    }
}

#[tokio::test]
async fn keys_survive_restart_and_decrypt_earlier_ciphertext() {
    let dir = tempfile::tempdir().unwrap();
    let r = Restartable::start(dir.path()).await;
    let g = &r.created.grants[0];
    let (id, key_before) = (g.asset_id, g.key.clone());
    // Seal something under the content key (AES-256-GCM), as the mount would.
    let sealed = aes_gcm_seal(key_before.as_bytes(), b"frame 1 pixels");
    let ks = r.ks.clone();
    let ca_before = std::fs::read_to_string(ks.join("ca.pem")).unwrap();
    let Restartable { lb, dev, .. } = r.restart().await;
    assert_eq!(
        std::fs::read_to_string(ks.join("ca.pem")).unwrap(),
        ca_before
    );
    use std::os::unix::fs::PermissionsExt;
    for f in [
        "root.key",
        "token.key",
        "license.key",
        "ca.key",
        "server.key",
    ] {
        let mode = std::fs::metadata(ks.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // The device certificate, user token and asset registry all carried over.
    let client = LicenseClient::connect(&lb.url, &dev.device_dir)
        .await
        .unwrap();
    let lic = client
        .request(&dev.token, &dev.app_digest, Action::Read, &[id])
        .await
        .unwrap();
    assert_eq!(lic.grants[0].key, key_before);
    assert_eq!(
        aes_gcm_open(lic.grants[0].key.as_bytes(), &sealed),
        b"frame 1 pixels"
    );
    // And the derivation is the public one.
    assert_eq!(lic.grants[0].grant.scope_id.len(), 32);
}

fn aes_gcm_seal(key: &[u8; 32], msg: &[u8]) -> Vec<u8> {
    use ring::aead::*;
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let mut buf = msg.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([7; 12]),
        Aad::empty(),
        &mut buf,
    )
    .unwrap();
    buf
}

fn aes_gcm_open(key: &[u8; 32], ct: &[u8]) -> Vec<u8> {
    use ring::aead::*;
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let mut buf = ct.to_vec();
    k.open_in_place(
        Nonce::assume_unique_for_key([7; 12]),
        Aad::empty(),
        &mut buf,
    )
    .unwrap()
    .to_vec()
}

/// License sessions (see `keyserver::session`): the client opens one and uses it; it survives
/// a restart of the server (same data directory: the session is in the store); a session's end
/// costs the client one transparent retry; another device cannot use a session id it learnt;
/// the one-license HPKE form still works and is signed.
#[tokio::test]
async fn license_sessions_survive_restart_and_stay_with_their_device() {
    let dir = tempfile::tempdir().unwrap();
    let r = Restartable::start(dir.path()).await;
    let (lb, dev, created) = (&r.lb, &r.dev, &r.created);
    let id = created.grants[0].asset_id;
    let first = dev
        .client
        .request(&dev.token, &dev.app_digest, Action::Read, &[id])
        .await
        .unwrap();
    let session = first.license.session.clone().expect("a session license");
    assert_eq!(created.license.session.as_deref(), Some(session.as_str()));
    assert!(first.license.enc.is_empty());

    // Another device presenting that session id is told the session is unknown.
    let admin = lb.admin().unwrap();
    let other_dir = dir.path().join("other");
    admin.enroll_device("ws-08", &other_dir).await.unwrap();
    let stolen = identity_client(&other_dir)
        .post(format!("{}/v1/licenses", lb.url))
        .json(
            &serde_json::json!({"token": dev.token.as_str(), "app_digest": dev.app_digest,
            "action": "read", "assets": [hex::encode(id)], "session": session}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stolen.status().as_u16(), 401);
    let v: serde_json::Value = stolen.json().await.unwrap();
    assert_eq!(v["reason"], "session_unknown", "{v}");

    // Naming both a session and a key, or neither, is a 400 on the field.
    let both = identity_client(&dev.device_dir)
        .post(format!("{}/v1/licenses", lb.url))
        .json(
            &serde_json::json!({"token": dev.token.as_str(), "app_digest": dev.app_digest,
            "action": "read", "assets": [hex::encode(id)], "session": session,
            "hpke_public_key": "11".repeat(32)}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(both.status().as_u16(), 400);

    // The one-license form: an Ed25519-signed license sealed to a key of the caller's choice.
    let kp = keyserver::seal::HpkeKeyPair::generate();
    let signed: keyserver::wire::SignedLicense = identity_client(&dev.device_dir)
        .post(format!("{}/v1/licenses", lb.url))
        .json(
            &serde_json::json!({"token": dev.token.as_str(), "app_digest": dev.app_digest,
            "action": "read", "assets": [hex::encode(id)],
            "hpke_public_key": kp.public().to_hex()}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let server_key = std::fs::read_to_string(dev.device_dir.join("server.pub")).unwrap();
    let opened = license::open(signed, &kp, &server_key).unwrap();
    assert_eq!(opened.grants[0].key, first.grants[0].key);

    // Restart on the same address: the restarted server reads the session from its store, and
    // the client carries on in it (no new session, no new key agreement).
    let r = r.restart().await;
    let dev = &r.dev;
    let after = dev
        .client
        .request(&dev.token, &dev.app_digest, Action::Read, &[id])
        .await
        .unwrap();
    assert_eq!(after.grants[0].key, first.grants[0].key);
    assert_eq!(after.license.session, Some(session));

    // A session past its end is refused like an unknown one (the server's clock decides, not
    // the client's): the client opens a new session and carries on.
    r.lb.clock.advance(3600);
    let later = dev
        .client
        .request(&dev.token, &dev.app_digest, Action::Read, &[id])
        .await
        .unwrap();
    assert_eq!(later.grants[0].key, first.grants[0].key);
    assert_ne!(later.license.session, after.license.session);
}

/// Another writer makes every audit insert fail from now on, on either engine.
fn break_audit_on(e: &Env) -> Option<rusqlite::Connection> {
    match &e.engine {
        Engine::Sqlite => Some(break_audit(e)),
        Engine::Postgres(db) => {
            db.psql(
                "CREATE FUNCTION keyserver.audit_broken() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'audit log unavailable'; END $$;
                 CREATE TRIGGER audit_broken BEFORE INSERT ON keyserver.audit
                   FOR EACH ROW EXECUTE FUNCTION keyserver.audit_broken();",
            )
            .unwrap();
            None
        }
    }
}

/// Another writer makes every audit insert fail from now on (until it drops `audit_broken`).
fn break_audit(e: &Env) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(e.dir.path().join("ks/keyserver.sqlite")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER audit_broken BEFORE INSERT ON audit
         BEGIN SELECT RAISE(FAIL, 'audit log unavailable'); END;",
    )
    .unwrap();
    db
}

/// No key leaves without its audit record: when the audit log cannot be written, a license
/// request fails with a 500 and carries no key — also on the fast path (rows cached).
async fn no_license_without_its_audit_record(engine: Engine) {
    let e = env_on(engine).await;
    let id = e.create("show/seq1/a.exr").await;
    assert_eq!(e.read(id).await.grants.len(), 1);
    let _db = break_audit_on(&e);
    let r = e
        .dev
        .client
        .request(&e.dev.token, &e.dev.app_digest, Action::Read, &[id])
        .await;
    assert!(
        matches!(r, Err(ClientError::Server { status: 500, .. })),
        "a license was answered without its audit record: {r:?}"
    );
}

/// A device revocation holds even when its audit row cannot be written: the admin is told
/// (500), and the device is refused from then on — also on its open connection — because the
/// registry drops it right after the store's commit, before anything else can fail. (Before,
/// the registry was updated only after the audit row: a failed row left the device served.)
#[tokio::test]
async fn a_revoked_device_is_refused_even_when_its_audit_row_fails() {
    let e = env().await;
    let id = e.create("show/seq1/a.exr").await;
    assert_eq!(e.read(id).await.grants.len(), 1);
    let db = break_audit(&e);
    let r = e.admin.revoke_device(DEVICE).await;
    assert!(
        matches!(r, Err(ClientError::Server { status: 500, .. })),
        "the revocation's audit failure was not reported: {r:?}"
    );
    db.execute_batch("DROP TRIGGER audit_broken").unwrap();
    let r = e
        .dev
        .client
        .request(&e.dev.token, &e.dev.app_digest, Action::Read, &[id])
        .await;
    assert!(
        matches!(
            r,
            Err(ClientError::Denied(Reason::DeviceRevoked)) | Err(ClientError::Http(_))
        ),
        "a revoked device was still served: {r:?}"
    );
}

/// Every admin change is an audit row naming the admin and the change's subject, and a
/// refused change (here: revoking a device that is already revoked) writes none.
async fn every_admin_change_is_audited(engine: Engine) {
    let e = env_on(engine).await;
    e.admin.rotate(SCOPE).await.unwrap();
    e.admin.revoke_key(SCOPE, 1).await.unwrap();
    e.admin
        .revoke_app(&RevokeAppRequest {
            digest: Some(app_digest(APP)),
            name: None,
            version: None,
        })
        .await
        .unwrap();
    e.admin.disable_user(USER).await.unwrap();
    e.admin.revoke_device(DEVICE).await.unwrap();
    let again = e.admin.revoke_device(DEVICE).await;
    assert!(
        matches!(again, Err(ClientError::Server { status: 404, .. })),
        "{again:?}"
    );
    let log = e.audit().await;
    let admin_rows: Vec<(&str, &str)> = log
        .iter()
        .filter(|r| r.decision == "admin")
        .map(|r| {
            assert!(
                r.user.as_deref().is_some_and(|u| u.starts_with("admin:")),
                "{r:?}"
            );
            (r.action.as_str(), r.reason.as_deref().unwrap_or(""))
        })
        .collect();
    let digest = app_digest(APP);
    for (action, subject) in [
        ("device.enroll", DEVICE.to_string()),
        ("user.add", USER.to_string()),
        ("scope.create", SCOPE.to_string()),
        ("keys.rotate", format!("{SCOPE} v2")),
        ("keys.revoke", format!("{SCOPE} v1")),
        ("app.revoke", digest.clone()),
        ("user.disable", USER.to_string()),
        ("device.revoke", DEVICE.to_string()),
    ] {
        let n = admin_rows
            .iter()
            .filter(|(a, s)| *a == action && *s == subject)
            .count();
        assert_eq!(n, 1, "{action} {subject}: {admin_rows:?}");
    }
    assert!(
        admin_rows
            .iter()
            .any(|(a, s)| *a == "app.register" && s.ends_with(&digest)),
        "{admin_rows:?}"
    );
}

#[tokio::test]
async fn malformed_and_oversized_bodies_get_json_4xx() {
    let e = env().await;
    let http = identity_client(&e.dev.device_dir);
    let url = format!("{}/v1/licenses", e.lb.url);
    let cases: Vec<(Vec<u8>, u16, Option<&str>)> = vec![
        (b"{not json".to_vec(), 400, None),
        (
            br#"{"token":"t","app_digest":"x","action":"read","hpke_public_key":"00"}"#.to_vec(),
            400,
            Some("app_digest"),
        ),
        (
            br#"{"token":"t","action":"read","assets":[],"hpke_public_key":"00"}"#.to_vec(),
            400,
            None,
        ),
        (
            br#"{"token":"t","app_digest":"x","action":"fly","hpke_public_key":"00"}"#.to_vec(),
            400,
            Some("action"),
        ),
        (vec![b' '; 300 * 1024], 413, None),
    ];
    for (body, status, field) in cases {
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
        let v: serde_json::Value = r.json().await.expect("JSON error body");
        assert!(v["error"].is_string(), "{v}");
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{v}");
        }
    }
    // A batch id that is not hex names the field too.
    let r = http
        .post(&url)
        .json(&serde_json::json!({"token":"t","app_digest":e.dev.app_digest,"action":"read","assets":["zz"],"hpke_public_key":"00".repeat(32)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["field"], "assets");
    // Admin endpoints refuse device certificates.
    let r = http
        .get(format!("{}/v1/admin/audit", e.lb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    e.assert_audited("deny", "not_admin: /v1/admin/audit").await;
    e.assert_audited("deny", "bad_request: 400").await;
    e.assert_audited("deny", "bad_request: 413").await;
}

async fn admin_issued_license_opens_only_with_the_right_device_key(engine: Engine) {
    let e = env_on(engine).await;
    let a = e.create("show/seq1/a.exr").await;
    let b = e.create("show/seq1/b.exr").await;
    let other_dir = e.dir.path().join("other");
    e.admin.enroll_device("ws-08", &other_dir).await.unwrap();
    let until = keyserver::now().expect("system clock usable") + 3600;
    let req = IssueRequest {
        device: DEVICE.into(),
        user: USER.into(),
        app_digest: e.dev.app_digest.clone(),
        assets: "show/seq1/**".into(),
        until,
        action: Action::Read,
        break_glass: false,
        reason: None,
    };
    let signed = e.admin.issue(&req).await.unwrap();
    let file = e.dir.path().join("lic.json");
    std::fs::write(&file, serde_json::to_vec(&signed).unwrap()).unwrap();
    let opened = license::open_offline(&file, &e.dev.device_dir).unwrap();
    assert_eq!(opened.grants.len(), 2);
    assert!(opened.license.not_after <= until);
    // The keys equal the online ones.
    let online = e
        .dev
        .client
        .request(&e.dev.token, &e.dev.app_digest, Action::Read, &[a, b])
        .await
        .unwrap();
    for g in &online.grants {
        assert_eq!(opened.key_for(&g.asset_id), Some(&g.key));
    }
    // Another device cannot open it; a tampered file does not verify; expiry is enforced.
    assert!(matches!(
        license::open_offline(&file, &other_dir),
        Err(LicenseError::WrongRecipient)
    ));
    let mut tampered = signed.clone();
    tampered.license.not_after += 86_400;
    std::fs::write(&file, serde_json::to_vec(&tampered).unwrap()).unwrap();
    assert!(matches!(
        license::open_offline(&file, &e.dev.device_dir),
        Err(LicenseError::BadSignature)
    ));
    std::fs::write(&file, serde_json::to_vec(&signed).unwrap()).unwrap();
    assert!(matches!(
        license::open_offline_at(&file, &e.dev.device_dir, until + 1),
        Err(LicenseError::Expired(_))
    ));

    // For a user without rules the issue is bounded by the rules: nothing granted...
    e.admin.add_user("bob", "password-1234").await.unwrap();
    let bob = IssueRequest {
        user: "bob".into(),
        ..req.clone()
    };
    let none = e.admin.issue(&bob).await.unwrap();
    assert!(none.license.grants.is_empty());
    assert!(none
        .license
        .denials
        .iter()
        .all(|d| d.reason == Reason::NoRule));
    // ...unless break-glass, which needs a reason and is audited as such.
    let bg = IssueRequest {
        break_glass: true,
        reason: Some("INC-42 dailies".into()),
        ..bob
    };
    let glass = e.admin.issue(&bg).await.unwrap();
    assert_eq!(glass.license.grants.len(), 2);
    assert!(glass.license.break_glass);
    let log = e.audit().await;
    assert!(log.iter().any(|r| r
        .reason
        .as_deref()
        .is_some_and(|x| x.contains("break-glass: INC-42"))));
    // An unregistered application is refused outright, and the refusal is audited.
    let unknown_app = IssueRequest {
        app_digest: app_digest("copy-script"),
        ..req.clone()
    };
    assert_eq!(
        denied(e.admin.issue(&unknown_app).await),
        Reason::UnknownApplication
    );
    e.assert_audited("deny", "unknown_application").await;
    let no_reason = IssueRequest { reason: None, ..bg };
    assert!(matches!(
        e.admin.issue(&no_reason).await,
        Err(ClientError::Server { status: 400, .. })
    ));
}

/// A license is decided on the asset's registered path as it is now: after a rename into a
/// folder the user may write into but not read, the asset is no longer licensed for reading,
/// although its old path was (and sat in the server's read cache).
async fn a_renamed_asset_is_licensed_by_its_new_path(engine: Engine) {
    let e = env_on(engine).await;
    let d = app_digest(APP);
    let drop_box = RuleFor {
        id: "r-drop",
        user: USER,
        device: DEVICE,
        app_digest: &d,
        path_like: "drop/*",
        actions: &[Action::Create, Action::Write],
        not_before: keyserver::now().expect("system clock usable") - 60,
        not_after: keyserver::now().expect("system clock usable") + 3600,
    }
    .build();
    let mut rules = base_rules().rules().to_vec();
    rules.push(drop_box);
    e.rules.replace(Evaluator::new(rules).unwrap());
    let id = e.create("show/seq1/a.exr").await;
    assert_eq!(e.read(id).await.grants.len(), 1);
    assert_eq!(e.read(id).await.grants.len(), 1);
    e.dev
        .client
        .rename(&e.dev.token, &e.dev.app_digest, &id, "drop/a.exr")
        .await
        .unwrap();
    let lic = e.read(id).await;
    assert!(lic.grants.is_empty(), "read licensed at the old path");
    assert_eq!(lic.license.denials[0].reason, Reason::NoRule);
}

async fn create_rename_and_registry(engine: Engine) {
    let e = env_on(engine).await;
    let lic = e
        .dev
        .client
        .create(&e.dev.token, &e.dev.app_digest, "show/seq1/a.exr", SCOPE)
        .await
        .unwrap();
    let g = &lic.grants[0];
    assert_eq!(g.grant.path, "show/seq1/a.exr");
    let scopes = e.admin.list_scopes().await.unwrap();
    assert_eq!(
        hex::decode(&scopes[0].scope_id).unwrap(),
        g.scope_id.to_vec()
    );
    let info = e
        .dev
        .client
        .rename(
            &e.dev.token,
            &e.dev.app_digest,
            &g.asset_id,
            "show/seq1/b.exr",
        )
        .await
        .unwrap();
    assert_eq!(info.path, "show/seq1/b.exr");
    // Renaming out of the permitted tree is refused.
    let r = e
        .dev
        .client
        .rename(
            &e.dev.token,
            &e.dev.app_digest,
            &g.asset_id,
            "elsewhere/b.exr",
        )
        .await;
    assert_eq!(denied(r), Reason::NoRule);
    let assets = e.admin.list_assets().await.unwrap();
    assert_eq!(assets.len(), 1);
    assert_eq!(assets[0].path, "show/seq1/b.exr");
    assert_eq!(assets[0].creator, USER);
    // Registering the same digest twice is a conflict, reported as JSON.
    let dup = e
        .admin
        .register_app(&RegisterAppRequest {
            digest: e.dev.app_digest.clone(),
            name: APP.into(),
            version: "1.0".into(),
            vendor: None,
            code: Default::default(),
        })
        .await;
    assert!(
        matches!(dup, Err(ClientError::Server { status: 409, .. })),
        "{dup:?}"
    );
}

/// A registration's code allowances reach mounts; unknown and revoked builds have none, and a
/// malformed library digest is refused at registration.
async fn app_code_allowances_are_served_to_devices(engine: Engine) {
    let e = env_on(engine).await;
    let plugin = "ab".repeat(32);
    let digest = "cd".repeat(32);
    let code = AppCode {
        allow_jit: true,
        allow_user_namespaces: false,
        libraries: vec![plugin.clone()],
    };
    let app = e
        .admin
        .register_app(&RegisterAppRequest {
            digest: digest.clone(),
            name: "nuke".into(),
            version: "15".into(),
            vendor: None,
            code: code.clone(),
        })
        .await
        .unwrap();
    assert_eq!(app.code, code);
    let listed = e.admin.list_apps().await.unwrap();
    assert_eq!(
        listed.iter().find(|a| a.digest == digest).unwrap().code,
        code
    );
    assert_eq!(e.dev.client.app_code(&digest).await.unwrap(), Some(code));
    // The provisioned app has the defaults; an unknown digest has nothing.
    let defaults = e.dev.client.app_code(&e.dev.app_digest).await.unwrap();
    assert_eq!(defaults, Some(AppCode::default()));
    assert_eq!(e.dev.client.app_code(&"ef".repeat(32)).await.unwrap(), None);
    e.admin
        .revoke_app(&RevokeAppRequest {
            digest: Some(digest.clone()),
            name: None,
            version: None,
        })
        .await
        .unwrap();
    assert_eq!(e.dev.client.app_code(&digest).await.unwrap(), None);
    let bad = e
        .admin
        .register_app(&RegisterAppRequest {
            digest: "12".repeat(32),
            name: "bad".into(),
            version: "1".into(),
            vendor: None,
            code: AppCode {
                libraries: vec!["not-a-digest".into()],
                ..AppCode::default()
            },
        })
        .await;
    assert!(
        matches!(bad, Err(ClientError::Server { status: 400, ref body }) if body.field.as_deref() == Some("code.libraries")),
        "{bad:?}"
    );
}

#[tokio::test]
async fn per_device_rate_limit_answers_429_json() {
    let dir = tempfile::tempdir().unwrap();
    let rules = Arc::new(SwappableRules::new(base_rules()));
    let mut cfg = keyserver::testing::loopback_config(&dir.path().join("ks"), rules);
    cfg.limits.per_device = keyserver::ratelimit::RateLimit {
        rate: 0.001,
        burst: 4.0,
    };
    let lb = keyserver::testing::spawn_with(cfg).await.unwrap();
    // provision() spends one token on login and the first create one on opening the license
    // session; two creates fit, the next does not.
    let dev = provision(&lb, DEVICE, &dir.path().join("dev"), USER, APP, SCOPE)
        .await
        .unwrap();
    dev.client
        .create(&dev.token, &dev.app_digest, "show/seq1/a.exr", SCOPE)
        .await
        .unwrap();
    dev.client
        .create(&dev.token, &dev.app_digest, "show/seq1/b.exr", SCOPE)
        .await
        .unwrap();
    let r = dev
        .client
        .create(&dev.token, &dev.app_digest, "show/seq1/c.exr", SCOPE)
        .await;
    match r {
        // 429 with a Retry-After: at 0.001 tokens/s, the bucket is positive again in ~17 min.
        Err(ClientError::RateLimited {
            retry_after: Some(wait),
        }) => assert!(wait >= std::time::Duration::from_secs(900), "{wait:?}"),
        other => panic!("expected 429, got {other:?}"),
    }
    // Admin requests are not limited by the device's bucket.
    assert_eq!(lb.admin().unwrap().list_assets().await.unwrap().len(), 2);
}

/// Throughput figure (not a check): `cargo test -p keyserver --test keyserver -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn license_throughput() {
    let e = env().await;
    let mut ids = Vec::new();
    for i in 0..64 {
        ids.push(e.create(&format!("show/seq1/f{i:04}.exr")).await);
    }
    for batch in [1usize, 64] {
        let n = if batch == 1 { 300 } else { 30 };
        let t = std::time::Instant::now();
        for _ in 0..n {
            let lic = e
                .dev
                .client
                .request(&e.dev.token, &e.dev.app_digest, Action::Read, &ids[..batch])
                .await
                .unwrap();
            assert_eq!(lic.grants.len(), batch);
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "batch {batch:>2}: {n} requests in {s:.2} s = {:.0} req/s, {:.0} keys/s, {:.2} ms/request",
            n as f64 / s,
            (n * batch) as f64 / s,
            s * 1000.0 / n as f64
        );
    }
}

/// Control-plane principals: a workflow, an auditor and a service get certificates with their
/// grant; the auditor reads the audit trail but changes nothing; only a service (or an admin)
/// reads the directory that standalone authz and ARDS mirror, and a revocation reaches that
/// mirror at its next refresh. A device is none of these.
async fn control_plane_principals_and_the_mirrored_directory(engine: Engine) {
    use authz::principal::{Directory, Principals, Role, Standing, WorkflowGrant};
    let e = env_on(engine).await;
    let dir = e.dir.path();
    let grant = WorkflowGrant {
        scopes: vec![SCOPE.into()],
        paths: vec!["show/seq1".into()],
    };
    let wf = e
        .admin
        .add_principal("workflow", "render", Some(&grant), &dir.join("wf"))
        .await
        .unwrap();
    e.admin
        .add_principal("auditor", "sec-1", None, &dir.join("auditor"))
        .await
        .unwrap();
    e.admin
        .add_principal("service", "authz", None, &dir.join("svc"))
        .await
        .unwrap();
    // A workflow needs a grant; devices enroll elsewhere; names are checked.
    for (kind, name, grant) in [
        ("workflow", "nogrant", None),
        ("device", "ws-99", None),
        ("admin", "root2", None),
        ("auditor", "bad name", None),
        ("auditor", "sec-2", Some(&grant)),
    ] {
        let r = e
            .admin
            .add_principal(kind, name, grant, &dir.join(format!("x-{kind}-{name}")))
            .await;
        assert!(
            matches!(r, Err(ClientError::Server { status: 400, .. })),
            "{kind} {name}: {r:?}"
        );
    }

    let auditor = AdminClient::connect(&e.lb.url, &dir.join("auditor")).unwrap();
    assert!(!auditor.audit_tail(10).await.unwrap().is_empty());
    assert_eq!(
        denied(auditor.create_scope("sneaky").await),
        Reason::NotAdmin
    );
    let device = AdminClient::connect(&e.lb.url, &dir.join("dev")).unwrap();
    assert_eq!(denied(device.directory().await), Reason::NotAdmin);
    assert_eq!(denied(auditor.directory().await), Reason::NotAdmin);

    let svc = AdminClient::connect(&e.lb.url, &dir.join("svc")).unwrap();
    let mirror = keyserver::directory::MirroredDirectory::fetch(&svc)
        .await
        .unwrap();
    let found = mirror.principal(&wf.serial, "render").unwrap();
    assert_eq!(found.role, Role::Workflow);
    assert!(mirror.principal(&wf.serial, "someone-else").is_none());
    assert_eq!(mirror.workflow_grant("render"), Some(grant));
    assert_eq!(mirror.user(USER), Standing::Active);
    assert_eq!(mirror.user("bob"), Standing::Unknown);
    assert_eq!(mirror.device(DEVICE), Standing::Active);
    assert_eq!(mirror.application(&app_digest(APP)), Standing::Active);
    assert_eq!(mirror.application(&app_digest("other")), Standing::Unknown);

    e.admin
        .revoke_principal("workflow", "render")
        .await
        .unwrap();
    e.admin.disable_user(USER).await.unwrap();
    mirror.replace(svc.directory().await.unwrap());
    assert!(mirror.principal(&wf.serial, "render").is_none());
    assert!(mirror.is_revoked(&wf.serial));
    assert_eq!(mirror.user(USER), Standing::Inactive);
    // The key server itself refuses the revoked workflow's certificate in the handshake.
    let revoked = AdminClient::connect(&e.lb.url, &dir.join("wf")).unwrap();
    assert!(revoked.audit_tail(1).await.is_err());
}

/// `GET /v1/revocations`: every identity revocation is an event, in commit order; a long poll
/// is woken by the commit (not by its own timeout); a failed change records nothing; a
/// sequence number beyond the head (a gap) is answered at once; only enrolled, unrevoked
/// devices may read the stream; bad queries get JSON 400s naming the field.
async fn revocation_events_stream_in_order_and_wake_long_polls(engine: Engine) {
    use keyserver::revocation::{RevocationKind, RevocationsResponse};
    use std::time::{Duration, Instant};
    let e = env_on(engine).await;
    let start = e
        .dev
        .client
        .revocations(None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        start,
        RevocationsResponse {
            head: 0,
            events: vec![]
        }
    );

    // A long poll from the head, woken by the commit of a user disable.
    let client = e.dev.client.clone();
    let poll = tokio::spawn(async move {
        let asked = Instant::now();
        let r = client.revocations(Some(0), Duration::from_secs(10)).await;
        (r, asked.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.admin.disable_user(USER).await.unwrap();
    let (r, took) = poll.await.unwrap();
    let r = r.unwrap();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "the long poll answered after {took:?}, not at the commit"
    );
    assert_eq!(r.events.len(), 1, "{r:?}");
    assert_eq!(r.events[0].kind, RevocationKind::User);
    assert_eq!(r.events[0].subject, USER);
    assert_eq!(r.head, r.events[0].seq);

    // A change that fails records no event.
    assert!(e.admin.disable_user("nobody").await.is_err());
    // Application by name and version (one event per digest), key version, another device.
    let maya = [app_digest("maya-a"), app_digest("maya-b")];
    for (i, digest) in maya.iter().enumerate() {
        e.admin
            .register_app(&RegisterAppRequest {
                digest: digest.clone(),
                name: "maya".into(),
                version: "2025".into(),
                vendor: Some(format!("build-{i}")),
                code: Default::default(),
            })
            .await
            .unwrap();
    }
    e.admin
        .revoke_app(&RevokeAppRequest {
            digest: None,
            name: Some("maya".into()),
            version: Some("2025".into()),
        })
        .await
        .unwrap();
    e.admin.rotate(SCOPE).await.unwrap();
    e.admin.revoke_key(SCOPE, 1).await.unwrap();
    e.admin
        .enroll_device("ws-08", &e.dir.path().join("dev8"))
        .await
        .unwrap();
    e.admin.revoke_device("ws-08").await.unwrap();

    let all = e
        .dev
        .client
        .revocations(Some(0), Duration::ZERO)
        .await
        .unwrap();
    let got: Vec<(RevocationKind, String, Option<u32>)> = all
        .events
        .iter()
        .map(|ev| (ev.kind, ev.subject.clone(), ev.version))
        .collect();
    let mut apps: Vec<_> = got[1..3].to_vec();
    apps.sort();
    assert_eq!(got[0], (RevocationKind::User, USER.into(), None));
    let mut want_apps: Vec<_> = maya
        .iter()
        .map(|d| (RevocationKind::App, d.clone(), None))
        .collect();
    want_apps.sort();
    assert_eq!(apps, want_apps);
    assert_eq!(got[3], (RevocationKind::KeyVersion, SCOPE.into(), Some(1)));
    assert_eq!(got[4], (RevocationKind::Device, "ws-08".into(), None));
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(all.events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(all.head, all.events[4].seq);

    // Nothing after the head: an empty answer (after the wait); from beyond the head (a gap):
    // at once, with the head, even when asked to wait.
    let tail = e
        .dev
        .client
        .revocations(Some(all.head), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(tail.events.is_empty());
    let asked = Instant::now();
    let gap = e
        .dev
        .client
        .revocations(Some(all.head + 100), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(asked.elapsed() < Duration::from_secs(2));
    assert_eq!(gap.head, all.head);
    assert!(gap.events.is_empty());

    // Bad queries.
    for (query, field) in [("since=-1", "since"), ("since=0&wait=31", "wait")] {
        let r: Result<RevocationsResponse, _> = e
            .dev
            .client
            .raw()
            .get(&format!("/v1/revocations?{query}"))
            .await;
        match r {
            Err(ClientError::Server { status: 400, body }) => {
                assert_eq!(body.field.as_deref(), Some(field), "{body:?}")
            }
            other => panic!("{query}: expected a 400, got {other:?}"),
        }
    }
    // Not a device: the admin identity is refused.
    let r: Result<RevocationsResponse, _> = e.admin.raw().get("/v1/revocations").await;
    assert_eq!(denied(r), Reason::UnknownDevice);
    // A revoked device may not read the stream any more.
    e.admin.revoke_device(DEVICE).await.unwrap();
    match e.dev.client.revocations(Some(0), Duration::ZERO).await {
        Err(ClientError::Denied(Reason::DeviceRevoked)) | Err(ClientError::Http(_)) => {}
        other => panic!("a revoked device read the stream: {other:?}"),
    }
}

#[path = "keyserver/audit_trail.rs"]
mod audit_trail;

/// Issue 11: every error status carries a JSON `{"error"}` body — the router's 405 (empty
/// before), an unknown endpoint's 404, a malformed body's 400.
#[tokio::test]
async fn error_statuses_have_json_bodies() {
    let e = env().await;
    let http = identity_client(&e.dev.device_dir);
    let cases = [
        (reqwest::Method::DELETE, "/v1/info", None, 405),
        (reqwest::Method::GET, "/v1/licenses", None, 405),
        (reqwest::Method::GET, "/v1/nope", None, 404),
        (reqwest::Method::POST, "/v1/login", Some("text/plain"), 400),
    ];
    for (method, path, content_type, status) in cases {
        let mut req = http.request(method.clone(), format!("{}{path}", e.lb.url));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct).body("{}");
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let body = resp.text().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {body:?}"));
        assert!(
            v["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path}: {v}"
        );
    }
}

/// Issue 15: `/healthz` and `/readyz` answer any active certificate of the installation (a
/// device's here); readiness reads the store.
#[tokio::test]
async fn health_and_readiness_answer_an_installation_certificate() {
    let e = env().await;
    let http = identity_client(&e.dev.device_dir);
    for (path, want) in [("/healthz", "status"), ("/readyz", "ready")] {
        let resp = http
            .get(format!("{}{path}", e.lb.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert!(v.get(want).is_some(), "{path}: {v}");
    }
    let v: serde_json::Value = http
        .get(format!("{}/readyz", e.lb.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["ready"], true, "{v}");
}

/// Issue 11: an unusable clock (before the epoch, unset) used to read as 0, so every
/// `not_after > now` check passed. Through the clock seam: a license on a live session and a
/// login are refused with a 503 naming the clock — no key — and work again once it heals.
#[tokio::test]
async fn unusable_clock_refuses_licenses_and_logins() {
    let e = env().await;
    let id = e.create("show/seq1/a.exr").await;
    assert_eq!(e.read(id).await.grants.len(), 1);
    e.lb.clock.set_unusable(true);
    let r = e
        .dev
        .client
        .request(&e.dev.token, &e.dev.app_digest, Action::Read, &[id])
        .await;
    assert!(
        matches!(&r, Err(ClientError::Server { status: 503, body })
            if body.error.contains("cannot tell the time")),
        "{r:?}"
    );
    let l = e.dev.client.login(USER, "password-1234", UID).await;
    assert!(
        matches!(l, Err(ClientError::Server { status: 503, .. })),
        "{l:?}"
    );
    e.lb.clock.set_unusable(false);
    assert_eq!(e.read(id).await.grants.len(), 1);
}

/// Issue 11: a second key server on the same data directory is refused, naming the holder.
#[tokio::test]
async fn second_keyserver_on_the_same_data_dir_is_refused_naming_the_pid() {
    let e = env().await;
    let again = spawn_loopback(&e.dir.path().join("ks"), e.rules.clone()).await;
    let msg = match again {
        Err(err) => err.to_string(),
        Ok(_) => panic!("a second key server started on a locked data directory"),
    };
    assert!(
        msg.contains(&format!("in use by process {}", std::process::id())),
        "{msg}"
    );
}

/// Issue 11: keys and the database are 0600 and the data dir 0700, also after a restart that
/// finds them 0644 / 0755.
#[tokio::test]
async fn state_files_are_private_and_tightened_on_restart() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let dir = tempfile::tempdir().unwrap();
    let ks = dir.path().join("ks");
    let rules = Arc::new(SwappableRules::new(base_rules()));
    let files = [
        "keyserver.sqlite",
        "keyserver.sqlite-wal",
        "keyserver.sqlite-shm",
        "root.key",
        "token.key",
        "license.key",
        "ca.key",
        "server.key",
        "admin/key.pem",
        ".lock",
    ];
    let check = |when: &str| {
        assert_eq!(mode(&ks), 0o700, "data dir {when}");
        assert_eq!(mode(&ks.join("admin")), 0o700, "admin dir {when}");
        for f in files {
            assert_eq!(mode(&ks.join(f)), 0o600, "{f} {when}");
        }
    };
    let lb = spawn_loopback(&ks, rules.clone()).await.unwrap();
    check("at first start");
    lb.server.shutdown().await;
    for d in [ks.clone(), ks.join("admin")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // A clean shutdown removes the WAL files; loosen what is left.
    for f in files.iter().filter(|f| ks.join(f).exists()) {
        std::fs::set_permissions(ks.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let _lb = spawn_loopback(&ks, rules).await.unwrap();
    check("after restart");
}

/// Issue 11: `csap keys issue` patterns are the rules' dialect — `show/*/f1` is one segment deep
/// (as before), `show/**` everything below — and so are the rules it is checked against: under
/// a rule for `show/*/f1` the deeper asset is not licensed even by a `show/**` request (that
/// rule's `*` crossed '/' when rules were judged by Cedar's `like`).
async fn keys_issue_and_rules_share_one_glob_dialect(engine: Engine) {
    let e = env_on(engine).await;
    let now = keyserver::now().unwrap();
    let d = app_digest(APP);
    let all = [Action::Read, Action::Write, Action::Create, Action::License];
    let rule = |id, path_like| {
        RuleFor {
            id,
            user: USER,
            device: DEVICE,
            app_digest: &d,
            path_like,
            actions: &all,
            not_before: now - 3600,
            not_after: now + 86_400,
        }
        .build()
    };
    e.rules
        .replace(Evaluator::new([rule("r-all", "show/**")]).unwrap());
    let shallow = e.create("show/a/f1").await;
    let deep = e.create("show/a/b/f1").await;
    let issue = |assets: &str| IssueRequest {
        device: DEVICE.into(),
        user: USER.into(),
        app_digest: e.dev.app_digest.clone(),
        assets: assets.into(),
        until: now + 3600,
        action: Action::Read,
        break_glass: false,
        reason: None,
    };
    let granted = |signed: &keyserver::wire::SignedLicense| {
        let file = e.dir.path().join("glob-lic.json");
        std::fs::write(&file, serde_json::to_vec(signed).unwrap()).unwrap();
        let opened = license::open_offline(&file, &e.dev.device_dir).unwrap();
        let mut ids: Vec<[u8; 16]> = opened.grants.iter().map(|g| g.asset_id).collect();
        ids.sort();
        ids
    };
    let mut both = vec![shallow, deep];
    both.sort();
    let one = e.admin.issue(&issue("show/*/f1")).await.unwrap();
    assert_eq!(
        granted(&one),
        vec![shallow],
        "'*' crossed '/' in keys issue"
    );
    let all_below = e.admin.issue(&issue("show/**")).await.unwrap();
    assert_eq!(granted(&all_below), both);
    // The rule now says `show/*/f1`: the deep asset is outside it.
    e.rules
        .replace(Evaluator::new([rule("r-one", "show/*/f1")]).unwrap());
    let lic = e
        .dev
        .client
        .request(&e.dev.token, &e.dev.app_digest, Action::Read, &[deep])
        .await
        .unwrap();
    assert!(lic.grants.is_empty(), "the rule's '*' crossed '/'");
    assert_eq!(lic.license.denials[0].reason, Reason::NoRule);
    let bad = e.admin.issue(&issue("show/a**")).await;
    assert!(
        matches!(&bad, Err(ClientError::Server { status: 400, body }) if body.field.as_deref() == Some("assets")),
        "{bad:?}"
    );
}

/// Attack: a principal of one role calls another role's routes (a workflow or auditor issuing
/// keys, a service taking licenses, a device reading the directory). Every route of the key
/// server, called as every role: the roles it serves get an answer other than 401/403, every
/// other role 403 (a connection without a certificate fails its handshake, tested above).
async fn every_route_refuses_the_wrong_role(engine: Engine) {
    use authz::principal::{Role, WorkflowGrant};
    let e = env_on(engine).await;
    let dir = e.dir.path();
    let grant = WorkflowGrant {
        scopes: vec!["*".into()],
        paths: vec!["**".into()],
    };
    e.admin
        .add_principal("workflow", "wf", Some(&grant), &dir.join("wf"))
        .await
        .unwrap();
    e.admin
        .add_principal("auditor", "aud", None, &dir.join("aud"))
        .await
        .unwrap();
    e.admin
        .add_principal("service", "svc", None, &dir.join("svc"))
        .await
        .unwrap();
    let callers = [
        (Role::Admin, identity_client(&e.lb.admin_dir)),
        (Role::Device, identity_client(&e.dev.device_dir)),
        (Role::Workflow, identity_client(&dir.join("wf"))),
        (Role::Auditor, identity_client(&dir.join("aud"))),
        (Role::Service, identity_client(&dir.join("svc"))),
    ];
    use Role::*;
    let routes: &[(&str, &str, &[Role])] = &[
        (
            "GET",
            "/v1/info",
            &[Admin, Device, Workflow, Auditor, Service],
        ),
        ("POST", "/v1/login", &[Device]),
        ("POST", "/v1/sessions", &[Device]),
        ("POST", "/v1/licenses", &[Device]),
        ("POST", "/v1/assets", &[Device]),
        (
            "POST",
            "/v1/assets/00000000000000000000000000000000/rename",
            &[Device],
        ),
        ("GET", "/v1/revocations", &[Device]),
        (
            "GET",
            "/v1/apps/0000000000000000000000000000000000000000000000000000000000000000/code",
            &[Device],
        ),
        ("POST", "/v1/audit", &[Device]),
        ("GET", "/v1/directory", &[Admin, Service]),
        ("POST", "/v1/admin/devices", &[Admin]),
        ("GET", "/v1/admin/devices", &[Admin]),
        ("POST", "/v1/admin/devices/nobody/revoke", &[Admin]),
        ("POST", "/v1/admin/users", &[Admin]),
        ("POST", "/v1/admin/users/nobody/disable", &[Admin]),
        ("POST", "/v1/admin/apps", &[Admin]),
        ("GET", "/v1/admin/apps", &[Admin]),
        ("POST", "/v1/admin/apps/revoke", &[Admin]),
        ("POST", "/v1/admin/scopes", &[Admin]),
        ("GET", "/v1/admin/scopes", &[Admin]),
        ("POST", "/v1/admin/scopes/nope/rotate", &[Admin]),
        ("POST", "/v1/admin/scopes/nope/revoke", &[Admin]),
        ("GET", "/v1/admin/assets", &[Admin]),
        ("POST", "/v1/admin/licenses", &[Admin]),
        ("GET", "/v1/admin/audit", &[Admin, Auditor]),
        ("GET", "/v1/admin/audit/query", &[Admin, Auditor]),
        ("POST", "/v1/admin/principals", &[Admin]),
        (
            "POST",
            "/v1/admin/principals/workflow/nobody/revoke",
            &[Admin],
        ),
    ];
    for (method, path, allowed) in routes {
        for (role, http) in &callers {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut req = http.request(m, format!("{}{path}", e.lb.url));
            if *method == "POST" {
                req = req.header("content-type", "application/json").body("{}");
            }
            let status = req.send().await.unwrap().status().as_u16();
            if allowed.contains(role) {
                assert!(
                    status != 401 && status != 403,
                    "{method} {path} as {role:?}: {status}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} as {role:?}");
            }
        }
    }
}

// The store's suite: each test on SQLite and on PostgreSQL.
csap_testkit::on_both_engines!(
    revoked_device_fails_handshake_and_open_connections,
    wrong_or_revoked_application_is_denied,
    disabled_user_and_expired_token_are_denied,
    outside_rule_window_and_revoked_key_are_denied,
    batch_returns_exactly_the_permitted_subset,
    no_license_without_its_audit_record,
    every_admin_change_is_audited,
    admin_issued_license_opens_only_with_the_right_device_key,
    a_renamed_asset_is_licensed_by_its_new_path,
    create_rename_and_registry,
    app_code_allowances_are_served_to_devices,
    control_plane_principals_and_the_mirrored_directory,
    revocation_events_stream_in_order_and_wake_long_polls,
    keys_issue_and_rules_share_one_glob_dialect,
    every_route_refuses_the_wrong_role,
);
