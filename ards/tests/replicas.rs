//! ARDS replicas on one PostgreSQL database (the test harness's real server): each replica
//! learns from the database what another committed — PEPs' grown logs wake its long polls, a
//! pending rule another replica took is released on its time.

// Shared with the main suite; each test binary uses part of it.
#[allow(dead_code)]
mod util;

use std::time::Duration;

use authz::wire::Revocation;
use csap_testkit::postgres::Engine;
use util::*;

const SEC: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(10);

/// Two ARDS replicas on one PostgreSQL database: a rule published and then revoked through
/// replica A reaches a PEP long-polling replica B (the revocation within a second), through
/// PostgreSQL's notifications alone — B's service never saw either call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_database_wake_each_others_long_polls() {
    let Some(db) = csap_testkit::postgres::database() else {
        return;
    };
    let h = Harness::start_on(Engine::Postgres(db)).await;
    let b_dir = tempfile::tempdir().unwrap();
    let b_opts = Harness::options(
        b_dir.path().join("ards"),
        &h.clock,
        &h.key,
        &h.pki,
        &h.engine,
    );
    let b = ards::testing::spawn_loopback(b_opts).await.unwrap();
    let pep = "mount:ws-07";
    let mut cfg = h.client_config(pep);
    (cfg.url, cfg.ca_pem) = (b.url.clone(), b.ca_pem.clone());
    let mut opts = h.client_options();
    opts.poll_wait = Duration::from_secs(30); // a wake-up, not a re-poll, must deliver it
    let c = ards::RulesClient::start_with(cfg, opts).await.unwrap();
    assert!(c.wait_synced(LONG).await);

    let r = h.sign(rule("r-rep", "alice", "ws-07", &[pep], T0 - 10, T0 + 3600));
    h.http.publish(&[r]).await.unwrap();
    assert!(
        wait_until(LONG, || c.evaluator().rules().len() == 1)
            .await
            .is_some(),
        "the publish through A reached the PEP on B"
    );
    let mut rx = c.subscribe();
    rx.mark_unchanged();
    let start = std::time::Instant::now();
    let rev = Revocation::sign("r-rep", ISSUER, "task cancelled", T0, &h.key);
    assert_eq!(h.http.revoke(&rev).await.unwrap().removed_from, vec![pep]);
    tokio::time::timeout(SEC, rx.changed())
        .await
        .expect("the revocation through A reached the PEP on B within 1 s")
        .unwrap();
    let took = start.elapsed();
    assert!(c.evaluator().rules().is_empty(), "revoked rule gone");
    println!("revocation through replica A, PEP on replica B: {took:?}");
    b.shutdown().await;
}

/// A rule published through replica A and due later is released on time by replica B after
/// A is gone: B's scheduler learned of it from the database, not from A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_releases_what_another_replica_took_after_it_stopped() {
    let Some(db) = csap_testkit::postgres::database() else {
        return;
    };
    let mut h = Harness::start_on(Engine::Postgres(db)).await;
    let b_dir = tempfile::tempdir().unwrap();
    let b_opts = Harness::options(
        b_dir.path().join("ards"),
        &h.clock,
        &h.key,
        &h.pki,
        &h.engine,
    );
    let b = ards::testing::spawn_loopback(b_opts).await.unwrap();
    let pep = "mount:ws-07";
    // The PEP is synced with B first: B has asked the store, and nothing was due then.
    let mut cfg = h.client_config(pep);
    (cfg.url, cfg.ca_pem) = (b.url.clone(), b.ca_pem.clone());
    let mut opts = h.client_options();
    opts.poll_wait = Duration::from_secs(30);
    let c = ards::RulesClient::start_with(cfg, opts).await.unwrap();
    assert!(c.wait_synced(LONG).await);
    let r = h.sign(rule(
        "r-later",
        "alice",
        "ws-07",
        &[pep],
        T0 + 3600,
        T0 + 7200,
    ));
    assert_eq!(h.http.publish(&[r]).await.unwrap().stored, vec!["r-later"]);
    h.stop().await; // replica A is gone before the rule is due
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(c.pending().is_empty(), "not released before its time");
    h.clock.set(T0 + 3300); // its release time (lead 300 s); the PEP holds it as pending
    assert!(
        wait_until(LONG, || c.pending().len() == 1).await.is_some(),
        "B released the rule A took"
    );
    b.shutdown().await;
}
