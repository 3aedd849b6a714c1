//! Two key-server stores on one PostgreSQL database, as two replicas have them: revocations
//! are numbered in commit order across both and wake the other's watchers, the directory one
//! changes is seen by the other, concurrent group commits lose and duplicate no row, and a
//! license session opened on one serves on the other.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authz::principal::Standing;
use keyserver::keys::RootKey;
use keyserver::pki::{Principal, PrincipalKind};
use keyserver::seal::HpkeKeyPair;
use keyserver::session::SessionStore;
use keyserver::store::postgres::PgKeyStore;
use keyserver::store::{AuditEvent, KeyStore};
use keyserver::testing::{provision, RuleFor};
use keyserver::wire::Action;
use keyserver::LicenseClient;

async fn replicas() -> Option<(
    csap_testkit::postgres::TestDb,
    Arc<PgKeyStore>,
    Arc<PgKeyStore>,
)> {
    let db = csap_testkit::postgres::database()?;
    let target = authz::pg::Target::parse(&db.url, None).unwrap();
    let a = Arc::new(PgKeyStore::connect(&target, 4).await.unwrap());
    let b = Arc::new(PgKeyStore::connect(&target, 4).await.unwrap());
    Some((db, a, b))
}

/// Waits until `f` holds, at most `limit`; how long it took.
async fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_wakes_the_other_within_a_second() {
    let Some((_db, a, b)) = replicas().await else {
        return;
    };
    a.add_user("alice", "hash", 1).await.unwrap();
    // The directory: b sees a's new user without being asked.
    within(Duration::from_secs(1), || {
        b.user_standing_now("alice").unwrap() == Standing::Active
    })
    .await;
    let mut watch = b.watch_revocations();
    watch.borrow_and_update();
    let head = b.revocations(None, 10).await.unwrap().head;
    let started = Instant::now();
    a.disable_user("alice", 2).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), watch.changed())
        .await
        .expect("b's watcher woke within 1 s")
        .unwrap();
    let seen = b.revocations(Some(head), 10).await.unwrap();
    assert_eq!(seen.events.len(), 1, "{seen:?}");
    assert_eq!(seen.events[0].subject, "alice");
    assert!(started.elapsed() < Duration::from_secs(1));
    within(Duration::from_secs(1), || {
        b.user_standing_now("alice").unwrap() == Standing::Inactive
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_numbers_strictly_increase_across_replicas() {
    let Some((_db, a, b)) = replicas().await else {
        return;
    };
    for i in 0..20 {
        a.add_user(&format!("u{i}"), "h", 1).await.unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        tasks.push(tokio::spawn(async move {
            store.disable_user(&format!("u{i}"), 3).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = a.revocations(Some(0), 100).await.unwrap();
    let seqs: Vec<i64> = all.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "gapless, in order");
    assert_eq!(all.head, 20);
    let subjects: HashSet<_> = all.events.iter().map(|e| e.subject.clone()).collect();
    assert_eq!(subjects.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_issued_on_one_replica_reach_the_others_registry_feed() {
    let Some((_db, a, b)) = replicas().await else {
        return;
    };
    let mut changes = b
        .watch_directory()
        .expect("a shared engine reports directory changes");
    changes.borrow_and_update();
    let p = Principal {
        serial: "0a0b".into(),
        name: "ws-09".into(),
        kind: PrincipalKind::Device,
        revoked: false,
    };
    a.add_cert(&p, None, 1).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), changes.changed())
        .await
        .expect("b heard of the change within 1 s")
        .unwrap();
    assert!(b
        .principals()
        .await
        .unwrap()
        .iter()
        .any(|q| q.serial == "0a0b"));
    assert_eq!(b.device_standing_now("ws-09").unwrap(), Standing::Active);
    assert_eq!(a.revoke_device("ws-09", 2).await.unwrap(), 1);
    within(Duration::from_secs(1), || {
        b.device_standing_now("ws-09").unwrap() == Standing::Inactive
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_group_commits_on_two_replicas_keep_every_row_once() {
    let Some((_db, a, b)) = replicas().await else {
        return;
    };
    let mut receipts = Vec::new();
    for i in 0..400 {
        let store = if i % 2 == 0 { &a } else { &b };
        receipts.push(store.record_audit(vec![AuditEvent {
            time: 1,
            action: "read".into(),
            decision: "permit",
            license_id: Some(format!("lic-{i}")),
            ..Default::default()
        }]));
    }
    for r in receipts {
        r.await.expect("committed");
    }
    let rows = a.audit_after(0, 1000).await.unwrap();
    assert_eq!(rows.len(), 400);
    let ids: HashSet<_> = rows.iter().filter_map(|r| r.license_id.clone()).collect();
    assert_eq!(ids.len(), 400, "no row lost or doubled");
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
    a.close().await;
    // A closed writer refuses: the receipt is an error, never a silent success.
    assert!(a.record_audit(vec![AuditEvent::default()]).await.is_err());
}

/// A replica started from a copy of the first replica's data directory (what
/// docs/operations.md tells an operator to do) serves with the same CA on the same database,
/// and a replica given another root key refuses to start, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_copied_directory_and_another_root_key_is_refused() {
    let Some(db) = csap_testkit::postgres::database() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let engine = || authz::pg::Engine::postgres(authz::pg::Target::parse(&db.url, None).unwrap());
    let rules: Arc<dyn keyserver::RuleCheck> = Arc::new(keyserver::SwappableRules::new(
        authz::eval::Evaluator::new(Vec::<authz::Rule>::new()).unwrap(),
    ));
    let config = |dir: &std::path::Path| {
        let mut cfg = keyserver::testing::loopback_config(dir, rules.clone());
        cfg.store = engine();
        cfg
    };
    let first = tmp.path().join("a");
    let a = keyserver::testing::spawn_with(config(&first))
        .await
        .unwrap();
    a.admin()
        .unwrap()
        .add_user("alice", "a long passphrase")
        .await
        .unwrap();

    // The documented copy: the whole directory (root key, CA, token and license keys).
    let second = tmp.path().join("b");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&first)
        .arg(&second)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::remove_file(second.join(".lock")).ok();
    let b = keyserver::testing::spawn_with(config(&second))
        .await
        .unwrap();
    let users = b.admin().unwrap().list_users().await.unwrap();
    assert!(users.iter().any(|u| u.name == "alice"), "{users:?}");
    assert_eq!(
        std::fs::read(first.join("admin/ca.pem")).unwrap(),
        std::fs::read(second.join("admin/ca.pem")).unwrap()
    );

    // A third replica with the same directory but another root key.
    let third = tmp.path().join("c");
    let mut cfg = config(&third);
    cfg.root_key_hex = Some(zeroize::Zeroizing::new("22".repeat(32)));
    let err = keyserver::testing::spawn_with(cfg)
        .await
        .err()
        .expect("another root key must be refused");
    assert!(
        matches!(err, keyserver::server::ServerError::RootKeyMismatch),
        "{err}"
    );
    assert!(err.to_string().contains("same root key"), "{err}");
    b.server.shutdown().await;
    a.server.shutdown().await;
}

/// Issue 16: a session opened through one replica's store opens through the other's (no new
/// session, the same secret); the other given another root key finds it unknown — a `None`,
/// not an error and not a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_one_replicas_store_opens_in_the_others_under_the_same_root_key_only() {
    let Some((_db, a, b)) = replicas().await else {
        return;
    };
    let sessions = |store: &Arc<PgKeyStore>, root: u8| {
        let root = RootKey::from_bytes(&[root; 32]).unwrap();
        let store: Arc<dyn KeyStore> = Arc::clone(store) as _;
        SessionStore::new(3600, 100, store, root.session_seal_key())
    };
    let kp = HpkeKeyPair::generate();
    let id = "5e".repeat(16);
    let (opened, _enc) = sessions(&a, 9)
        .open(id.clone(), "ws-07", kp.public().clone(), 1_000)
        .await
        .unwrap();
    let on_b = sessions(&b, 9)
        .get(&id, "ws-07", 1_001)
        .await
        .unwrap()
        .expect("b knows a's session");
    assert_eq!(on_b.secret.expose(), opened.secret.expose());
    assert_eq!(on_b.not_after, opened.not_after);
    assert!(sessions(&b, 9)
        .get(&id, "ws-08", 1_001)
        .await
        .unwrap()
        .is_none());
    assert!(
        sessions(&b, 10)
            .get(&id, "ws-07", 1_001)
            .await
            .unwrap()
            .is_none(),
        "another root key opens no session"
    );
}

/// Issue 16: a device whose requests move to another replica (the first went down) keeps its
/// license session: the license from replica B is in the session opened on replica A, with
/// no new session (before, B answered `session_unknown` and the client opened a new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_license_session_opened_on_one_replica_serves_licenses_on_the_other() {
    let Some(db) = csap_testkit::postgres::database() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let now = keyserver::now().unwrap();
    let digest = blake3::hash(b"nuke").to_hex().to_string();
    let rule = RuleFor {
        id: "r-replicas",
        user: "alice",
        device: "ws-07",
        app_digest: &digest,
        path_like: "show/**",
        actions: &[Action::Read, Action::Create],
        not_before: now - 3600,
        not_after: now + 86_400,
    }
    .build();
    let rules: Arc<dyn keyserver::RuleCheck> = Arc::new(keyserver::SwappableRules::new(
        authz::eval::Evaluator::new(vec![rule]).unwrap(),
    ));
    let config = |dir: &std::path::Path| {
        let mut cfg = keyserver::testing::loopback_config(dir, rules.clone());
        cfg.store = authz::pg::Engine::postgres(authz::pg::Target::parse(&db.url, None).unwrap());
        cfg
    };
    let first = tmp.path().join("a");
    let a = keyserver::testing::spawn_with(config(&first))
        .await
        .unwrap();
    let dev_dir = tmp.path().join("dev");
    let dev = provision(&a, "ws-07", &dev_dir, "alice", "nuke", "shot010")
        .await
        .unwrap();
    // Replica B from a copy of A's directory (docs/operations.md), on the same database.
    let second = tmp.path().join("b");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&first)
        .arg(&second)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::remove_file(second.join(".lock")).ok();
    let b = keyserver::testing::spawn_with(config(&second))
        .await
        .unwrap();

    let client = LicenseClient::connect(&format!("{},{}", a.url, b.url), &dev_dir)
        .await
        .unwrap();
    let created = client
        .create(&dev.token, &digest, "show/seq1/a.exr", "shot010")
        .await
        .unwrap();
    let session = created.license.session.clone().expect("a session license");
    a.server.shutdown().await;
    let id = created.grants[0].asset_id;
    let read = client
        .request(&dev.token, &digest, Action::Read, &[id])
        .await
        .unwrap();
    assert_eq!(read.grants[0].key, created.grants[0].key);
    assert_eq!(
        read.license.session.as_deref(),
        Some(session.as_str()),
        "replica B licensed in the session opened on A"
    );
    b.server.shutdown().await;
}
