//! Two key-server stores on one PostgreSQL database, as two replicas have them: revocations
//! are numbered in commit order across both and wake the other's watchers, the directory one
//! changes is seen by the other, and concurrent group commits lose and duplicate no row.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authz::principal::Standing;
use keyserver::pki::{Principal, PrincipalKind};
use keyserver::store::postgres::PgKeyStore;
use keyserver::store::{AuditEvent, KeyStore};

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
