//! ARDS end to end: a real ARDS over TLS on loopback (manual clock) and real PEP clients. The
//! suite runs on both store engines (`on_sqlite::…`: a SQLite file in a temp dir;
//! `on_postgres::…`: a fresh database on the test PostgreSQL server).

mod util;

use std::sync::Arc;
use std::time::Duration;

use ards::wire::{ExceptionOutcome, ExceptionStatus, RemovalReason, TargetState};
use ards::ClientError;
use authz::wire::Revocation;
use authz::IssuerKey;
use csap_testkit::postgres::Engine;
use util::*;

csap_testkit::on_both_engines!(
    publish_is_delivered_only_to_targeted_peps,
    rules_are_released_just_in_time,
    revocation_reaches_the_pep_within_a_second,
    expired_rules_are_removed_everywhere,
    resume_after_disconnect_gets_only_the_delta,
    service_rejects_tampered_and_unknown_issuer_rules,
    client_drops_tampered_and_unknown_issuer_rules_from_its_cache,
    pep_restarted_while_ards_is_down_enforces_from_cache,
    exception_flood_is_throttled_and_duplicates_are_counted,
    exception_releases_a_matching_pending_rule,
    malformed_input_gets_400_json_naming_the_field,
    store_is_durable_wal_sqlite_and_cert_is_reused,
    authz_http_sink_publishes_and_revokes,
    every_route_refuses_anonymous_and_wrong_principal_callers,
    unusable_clock_fails_closed_in_service_and_pep,
);

const SEC: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(10);

async fn publish_is_delivered_only_to_targeted_peps(engine: Engine) {
    let h = Harness::start_on(engine).await;
    let r1 = h.sign(rule(
        "r-1",
        "alice",
        "ws-07",
        &["keyserver", "mount:ws-07"],
        T0 - 10,
        T0 + 3600,
    ));
    let r2 = h.sign(rule(
        "r-2",
        "bob",
        "ws-08",
        &["mount:ws-08"],
        T0 - 10,
        T0 + 3600,
    ));
    let out = h.http.publish(&[r1.clone(), r2.clone()]).await.unwrap();
    assert_eq!(out.stored, vec!["r-1", "r-2"]);

    let ks = h
        .http
        .changes("keyserver", 0, Duration::ZERO)
        .await
        .unwrap();
    assert!(ks.reset);
    assert_eq!(ids(&ks.upserts), vec!["r-1"]);
    let m8 = h
        .http
        .changes("mount:ws-08", 0, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(ids(&m8.upserts), vec!["r-2"]);
    let other = h
        .http
        .changes("mount:ws-09", 0, Duration::ZERO)
        .await
        .unwrap();
    assert!(other.upserts.is_empty() && other.revision == 0);

    let c7 = h.client("mount:ws-07").await;
    let c9 = h.client("mount:ws-09").await;
    assert!(c7.wait_synced(LONG).await && c9.wait_synced(LONG).await);
    assert!(c7.evaluator().decide(&access("alice", "ws-07", T0)).allowed);
    assert_eq!(c7.evaluator().rules().len(), 1);
    assert!(c9.evaluator().rules().is_empty());
    assert!(!c9.evaluator().decide(&access("alice", "ws-07", T0)).allowed);

    // Idle PEPs wait in a long poll instead of spinning, with or without rules.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peps = h.http.peps().await.unwrap();
    for pep in ["mount:ws-07", "mount:ws-09"] {
        let st = peps.iter().find(|p| p.pep_id == pep).unwrap();
        assert!(st.polls <= 3, "{pep} polled {} times in 0.5 s", st.polls);
    }
    let st7 = peps.iter().find(|p| p.pep_id == "mount:ws-07").unwrap();
    assert_eq!(
        st7.acknowledged,
        Some(st7.revision),
        "the PEP acknowledged its head"
    );
}

async fn rules_are_released_just_in_time(engine: Engine) {
    let h = Harness::start_on(engine).await;
    let nb = T0 + 3600;
    let r = h.sign(rule(
        "r-jit",
        "alice",
        "ws-07",
        &["mount:ws-07"],
        nb,
        nb + 3600,
    ));
    h.http.publish(&[r]).await.unwrap();
    let c = h.client("mount:ws-07").await;
    assert!(c.wait_synced(LONG).await);

    // Listed as pending, not in any stream.
    let listed = h.http.rules(Some("mount:ws-07")).await.unwrap();
    assert_eq!(listed.rules.len(), 1);
    assert_eq!(listed.rules[0].release_at, nb - 300);
    assert_eq!(listed.rules[0].targets[0].state, TargetState::Pending);
    h.clock.set(nb - 301);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h
        .http
        .changes("mount:ws-07", 0, Duration::ZERO)
        .await
        .unwrap()
        .upserts
        .is_empty());
    assert!(c.pending().is_empty());

    // At not_before - lead it goes out; the client holds it as pending, not yet allowing.
    let rx = c.subscribe();
    h.clock.set(nb - 300);
    assert!(
        wait_until(LONG, || c.pending().len() == 1).await.is_some(),
        "released rule reached the PEP"
    );
    assert!(rx.has_changed().unwrap());
    assert!(
        !c.evaluator()
            .decide(&access("alice", "ws-07", nb - 300))
            .allowed
    );
    assert_eq!(
        h.http.rules(Some("mount:ws-07")).await.unwrap().rules[0].targets[0].state,
        TargetState::Released
    );

    // At not_before the client moves it into its evaluator on its own clock.
    h.clock.set(nb);
    assert!(wait_until(LONG, || c.evaluator().rules().len() == 1)
        .await
        .is_some());
    assert!(c.pending().is_empty());
    assert!(c.evaluator().decide(&access("alice", "ws-07", nb)).allowed);
}

async fn revocation_reaches_the_pep_within_a_second(engine: Engine) {
    let h = Harness::start_on(engine).await;
    let r = h.sign(rule(
        "r-rev",
        "alice",
        "ws-07",
        &["mount:ws-07", "keyserver"],
        T0 - 10,
        T0 + 3600,
    ));
    h.http.publish(&[r]).await.unwrap();
    let c = h.client("mount:ws-07").await;
    assert!(wait_until(LONG, || c.evaluator().rules().len() == 1)
        .await
        .is_some());
    let mut rx = c.subscribe();
    rx.mark_unchanged();

    let rev = Revocation::sign("r-rev", ISSUER, "task cancelled", T0, &h.key);
    let start = std::time::Instant::now();
    let out = h.http.revoke(&rev).await.unwrap();
    assert!(out.known);
    assert_eq!(out.removed_from, vec!["keyserver", "mount:ws-07"]);
    tokio::time::timeout(SEC, rx.changed())
        .await
        .expect("change signalled within 1 s")
        .unwrap();
    let took = start.elapsed();
    assert!(c.evaluator().rules().is_empty(), "revoked rule gone");
    assert!(!c.evaluator().decide(&access("alice", "ws-07", T0)).allowed);
    assert!(took < SEC, "revocation took {took:?}");
    println!("revocation: signed POST to PEP evaluator swap in {took:?}");
    assert!(h.http.rules(None).await.unwrap().rules.is_empty());

    // Idempotent, and a rule revoked before it arrives never releases.
    h.http.revoke(&rev).await.unwrap();
    let early = Revocation::sign("r-later", ISSUER, "cancelled", T0, &h.key);
    assert!(!h.http.revoke(&early).await.unwrap().known);
    let later = h.sign(rule(
        "r-later",
        "alice",
        "ws-07",
        &["mount:ws-07"],
        T0 - 10,
        T0 + 3600,
    ));
    let out = h.http.publish(&[later]).await.unwrap();
    assert_eq!(out.inactive, vec!["r-later"]);
    let ch = h
        .http
        .changes("mount:ws-07", 0, Duration::ZERO)
        .await
        .unwrap();
    assert!(ch.upserts.is_empty());
}

async fn expired_rules_are_removed_everywhere(engine: Engine) {
    let h = Harness::start_on(engine).await;
    let r = h.sign(rule(
        "r-exp",
        "alice",
        "ws-07",
        &["mount:ws-07"],
        T0 - 10,
        T0 + 60,
    ));
    h.http.publish(&[r]).await.unwrap();
    let c = h.client("mount:ws-07").await;
    assert!(wait_until(LONG, || c.evaluator().rules().len() == 1)
        .await
        .is_some());
    let first = h
        .http
        .changes("mount:ws-07", 0, Duration::ZERO)
        .await
        .unwrap();

    h.clock.set(T0 + 60);
    assert!(wait_until(LONG, || c.evaluator().rules().is_empty())
        .await
        .is_some());
    let delta = h
        .http
        .changes("mount:ws-07", first.revision, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(delta.removals.len(), 1);
    assert_eq!(delta.removals[0].reason, RemovalReason::Expired);
    assert!(h.http.rules(None).await.unwrap().rules.is_empty());
}

async fn resume_after_disconnect_gets_only_the_delta(engine: Engine) {
    let mut h = Harness::start_on(engine).await;
    let pep = "mount:ws-07";
    let mk = |id: &str| rule(id, "alice", "ws-07", &[pep], T0 - 10, T0 + 3600);
    h.http
        .publish(&[h.sign(mk("r-a")), h.sign(mk("r-b"))])
        .await
        .unwrap();
    let snap = h.http.changes(pep, 0, Duration::ZERO).await.unwrap();
    assert_eq!(ids(&snap.upserts), vec!["r-a", "r-b"]);

    h.http.publish(&[h.sign(mk("r-c"))]).await.unwrap();
    h.http
        .revoke(&Revocation::sign("r-a", ISSUER, "x", T0, &h.key))
        .await
        .unwrap();
    let delta = h
        .http
        .changes(pep, snap.revision, Duration::ZERO)
        .await
        .unwrap();
    assert!(!delta.reset);
    assert_eq!(
        ids(&delta.upserts),
        vec!["r-c"],
        "only the new rule, not r-b again"
    );
    assert_eq!(delta.removals.len(), 1);
    assert_eq!(delta.removals[0].rule_id, "r-a");
    assert!(delta.revision > snap.revision);
    // Nothing new: empty answer at the same revision.
    let none = h
        .http
        .changes(pep, delta.revision, Duration::ZERO)
        .await
        .unwrap();
    assert!(none.is_empty() && none.revision == delta.revision);

    // A long poll is answered as soon as something changes.
    let http = h.http.clone();
    let rev = delta.revision;
    let poll = tokio::spawn(async move { http.changes(pep, rev, Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.http.publish(&[h.sign(mk("r-d"))]).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ids(&woke.upserts), vec!["r-d"]);

    // A client that loses ARDS reconnects (with backoff) and resumes from its revision.
    let c = h.client(pep).await;
    assert!(wait_until(LONG, || c.evaluator().rules().len() == 3)
        .await
        .is_some());
    let before = c.revision();
    h.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.evaluator().rules().len(),
        3,
        "still enforcing while ARDS is down"
    );
    h.restart().await;
    h.http.publish(&[h.sign(mk("r-e"))]).await.unwrap();
    assert!(wait_until(LONG, || c.evaluator().rules().len() == 4)
        .await
        .is_some());
    assert!(c.revision() > before);
    let expected_delta = h.http.changes(pep, before, Duration::ZERO).await.unwrap();
    assert!(!expected_delta.reset);
    assert_eq!(ids(&expected_delta.upserts), vec!["r-e"]);
}

async fn service_rejects_tampered_and_unknown_issuer_rules(engine: Engine) {
    let h = Harness::start_on(engine).await;
    let good = h.sign(rule(
        "r-ok",
        "alice",
        "ws-07",
        &["mount:ws-07"],
        T0,
        T0 + 60,
    ));

    let mut tampered = good.clone();
    tampered.rule.policy = tampered.rule.policy.replace("alice", "mallory");
    tampered.rule.id = "r-tampered".into();
    let err = h.http.publish(&[good.clone(), tampered]).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 403, field: Some(f), .. } if f == "rules[1].signature"),
        "{err}"
    );

    let rogue = IssuerKey::from_seed([9; 32]);
    let mut r = rule("r-rogue", "alice", "ws-07", &["mount:ws-07"], T0, T0 + 60);
    r.issuer = "rogue".into();
    let err = h.http.publish(&[authz::sign(r, &rogue)]).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 403, field: Some(f), .. } if f == "rules[0].rule.issuer"),
        "{err}"
    );
    // Right name, wrong key.
    let forged = authz::sign(
        rule("r-forged", "alice", "ws-07", &["mount:ws-07"], T0, T0 + 60),
        &rogue,
    );
    let err = h.http.publish(&[forged]).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 403, .. }),
        "{err}"
    );
    let bad_rev = Revocation::sign("r-ok", ISSUER, "x", T0, &rogue);
    let err = h.http.revoke(&bad_rev).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 403, field: Some(f), .. } if f == "signature"),
        "{err}"
    );

    // The whole batch was refused: nothing stored.
    assert!(h.http.rules(None).await.unwrap().rules.is_empty());
    // Same id, other content: conflict; exact retry: fine.
    h.http.publish(std::slice::from_ref(&good)).await.unwrap();
    assert_eq!(
        h.http
            .publish(std::slice::from_ref(&good))
            .await
            .unwrap()
            .unchanged,
        vec!["r-ok"]
    );
    let mut changed = good.rule.clone();
    changed.not_after += 1;
    let err = h.http.publish(&[h.sign(changed)]).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 409, .. }),
        "{err}"
    );
}

async fn client_drops_tampered_and_unknown_issuer_rules_from_its_cache(engine: Engine) {
    let h = Harness::start_on(engine).await;
    let pep = "mount:ws-07";
    let good = h.sign(rule("r-good", "alice", "ws-07", &[pep], T0 - 10, T0 + 3600));
    let mut tampered = h.sign(rule("r-tamp", "bob", "ws-07", &[pep], T0 - 10, T0 + 3600));
    tampered.rule.policy = tampered.rule.policy.replace("bob", "mallory");
    let rogue = IssuerKey::from_seed([9; 32]);
    let mut r = rule("r-rogue", "carol", "ws-07", &[pep], T0 - 10, T0 + 3600);
    r.issuer = "rogue".into();
    let unknown = authz::sign(r, &rogue);
    let cfg = h.client_config(pep);
    let cache = serde_json::json!({
        "format": "csap-ards-cache/1", "pep_id": pep, "revision": 42,
        "rules": [good, tampered, unknown],
    });
    std::fs::write(&cfg.cache_path, serde_json::to_vec(&cache).unwrap()).unwrap();

    // Point the client at a port where nothing listens so only the cache counts.
    let mut offline = cfg.clone();
    offline.url = "https://127.0.0.1:9".into();
    let c = ards::RulesClient::start_with(offline, h.client_options())
        .await
        .unwrap();
    let eval = c.evaluator();
    assert_eq!(eval.rules().len(), 1);
    assert_eq!(eval.rules()[0].id, "r-good");
    assert!(eval.decide(&access("alice", "ws-07", T0)).allowed);
    assert!(!eval.decide(&access("mallory", "ws-07", T0)).allowed);
    assert!(!eval.decide(&access("carol", "ws-07", T0)).allowed);
    assert_eq!(
        c.revision(),
        0,
        "a cache that failed verification forces a full resync"
    );
}

async fn pep_restarted_while_ards_is_down_enforces_from_cache(engine: Engine) {
    let mut h = Harness::start_on(engine).await;
    let pep = "mount:ws-07";
    let r = h.sign(rule(
        "r-cached",
        "alice",
        "ws-07",
        &[pep],
        T0 - 10,
        T0 + 600,
    ));
    h.http.publish(&[r]).await.unwrap();
    {
        let c = h.client(pep).await;
        assert!(wait_until(LONG, || c.evaluator().rules().len() == 1)
            .await
            .is_some());
        // The cache is written right after the rule is enforced.
        let path = h.client_config(pep).cache_path;
        let cached = || std::fs::read_to_string(&path).is_ok_and(|t| t.contains("r-cached"));
        assert!(wait_until(LONG, cached).await.is_some());
    }
    h.stop().await;
    let c = h.client(pep).await;
    assert!(
        c.evaluator().decide(&access("alice", "ws-07", T0)).allowed,
        "cached rule enforced at once"
    );
    assert!(!c.wait_synced(Duration::from_millis(300)).await);
    // Expiry applies locally even while disconnected.
    let mut rx = c.subscribe();
    h.clock.set(T0 + 600);
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(c.evaluator().rules().is_empty());
}

async fn exception_flood_is_throttled_and_duplicates_are_counted(engine: Engine) {
    let h = Harness::start_on(engine).await;
    let ws07 = h.http_as(&h.pep_identity("mount:ws-07"));
    let ws08 = h.http_as(&h.pep_identity("mount:ws-08"));
    let mut accepted = 0;
    let mut throttled = 0;
    for i in 0..1000 {
        match ws07
            .report(
                "mount:ws-07",
                &denial("alice", "ws-07", &format!("show/x/{i}.exr")),
            )
            .await
        {
            Ok(ExceptionOutcome::Recorded { .. }) => accepted += 1,
            Err(ClientError::Throttled) => throttled += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted, 20, "burst of 20 per PEP");
    assert_eq!(throttled, 980);
    let list = h.http.exceptions(0, true).await.unwrap();
    assert_eq!(
        list.exceptions.len(),
        20,
        "only admitted reports are stored"
    );
    assert_eq!(list.throttled[0].count, 980);

    // Another PEP has its own bucket; identical reports fold into one record.
    for n in 1..=5 {
        let out = ws08
            .report("mount:ws-08", &denial("bob", "ws-08", "show/y.exr"))
            .await
            .unwrap();
        match out {
            ExceptionOutcome::Recorded { .. } => assert_eq!(n, 1),
            ExceptionOutcome::Duplicate { count, .. } => assert_eq!(count, n),
            other => panic!("unexpected {other:?}"),
        }
    }
    let list = h.http.exceptions(0, false).await.unwrap();
    let bob: Vec<_> = list
        .exceptions
        .iter()
        .filter(|e| e.pep_id == "mount:ws-08")
        .collect();
    assert_eq!(bob.len(), 1);
    assert_eq!(bob[0].count, 5);
    // After the dedup window the same report is a new record; the bucket refills with time.
    h.clock.advance(301);
    let out = ws08
        .report("mount:ws-08", &denial("bob", "ws-08", "show/y.exr"))
        .await
        .unwrap();
    assert!(matches!(out, ExceptionOutcome::Recorded { .. }), "{out:?}");
    assert!(ws07
        .report("mount:ws-07", &denial("alice", "ws-07", "show/z.exr"))
        .await
        .is_ok());
}

async fn exception_releases_a_matching_pending_rule(engine: Engine) {
    let h = Harness::start_on(engine).await;
    let pep = "mount:ws-07";
    let nb = T0 + 7200;
    let r = h.sign(rule(
        "r-pend",
        "alice",
        "ws-07",
        &[pep, "keyserver"],
        nb,
        nb + 3600,
    ));
    h.http.publish(&[r]).await.unwrap();
    let c = h.client(pep).await;
    assert!(c.wait_synced(LONG).await);
    assert!(c.pending().is_empty());

    // Not matching (other user): recorded for authz.
    let out = c
        .report_denial(denial("mallory", "ws-07", "show/seq1/shot010/f0001.exr"))
        .await
        .unwrap();
    assert!(matches!(out, ExceptionOutcome::Recorded { .. }), "{out:?}");
    // Matching: the pending rule is released to this PEP now.
    let out = c
        .report_denial(denial("alice", "ws-07", "show/seq1/shot010/f0001.exr"))
        .await
        .unwrap();
    match out {
        ExceptionOutcome::Released { rule_ids, .. } => assert_eq!(rule_ids, vec!["r-pend"]),
        other => panic!("expected a release, got {other:?}"),
    }
    assert!(wait_until(LONG, || c.pending().len() == 1).await.is_some());
    // Only to the reporting PEP; the key server still waits for the normal release time.
    let ks = h
        .http
        .changes("keyserver", 0, Duration::ZERO)
        .await
        .unwrap();
    assert!(ks.upserts.is_empty());
    let list = h.http.exceptions(0, false).await.unwrap();
    assert_eq!(list.exceptions.len(), 1);
    assert_eq!(list.exceptions[0].report.participant, "mallory");
    assert_eq!(list.exceptions[0].status, ExceptionStatus::Open);
    let all = h.http.exceptions(0, true).await.unwrap();
    assert_eq!(all.exceptions.len(), 2);
    assert_eq!(all.exceptions[1].released_rules, vec!["r-pend"]);
    // The normal release later does not resend it to the PEP that has it.
    h.clock.set(nb - 300);
    let ks = h
        .http
        .changes("keyserver", 0, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(ids(&ks.upserts), vec!["r-pend"]);
}

/// Issue 15: `/healthz` and `/readyz` answer without a certificate; readiness reads the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_anyone() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    let h = Harness::start().await;
    let app = ards::app(h.ards().clone());
    for (path, key, want) in [
        ("/healthz", "status", serde_json::json!("ok")),
        ("/readyz", "ready", serde_json::json!(true)),
    ] {
        let req = Request::get(path).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body[key], want, "{path}: {body}");
    }
}

async fn malformed_input_gets_400_json_naming_the_field(engine: Engine) {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    let h = Harness::start_on(engine).await;
    let app = ards::app(h.ards().clone());
    // Reports are filed by the PEP itself; everything else is called as the admin.
    let ws07 = h.pep_identity("mount:ws-07");
    let call = |method: &str, uri: &str, body: &str| {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let who = if uri.starts_with("/v1/pep/mount:ws-07/exceptions") {
            &ws07
        } else {
            &h.admin
        };
        h.pki.attach(&mut req, who);
        req
    };
    let good =
        serde_json::to_value(h.sign(rule("r-1", "alice", "ws-07", &["keyserver"], T0, T0 + 60)))
            .unwrap();
    let mut bad_nb = good.clone();
    bad_nb["rule"]["not_before"] = serde_json::json!("soon");
    let mut no_policy = good.clone();
    no_policy["rule"].as_object_mut().unwrap().remove("policy");
    let mut unparsable = rule("r-2", "alice", "ws-07", &["keyserver"], T0, T0 + 60);
    unparsable.policy = "permit(".into();
    let bad_policy = serde_json::to_value(h.sign(unparsable)).unwrap();
    let rev = serde_json::to_value(Revocation::sign("r-1", ISSUER, "x", T0, &h.key)).unwrap();
    let mut rev_bad = rev.clone();
    rev_bad["revoked_at"] = serde_json::json!([1]);
    let report = serde_json::to_value(denial("alice", "ws-07", "a/b")).unwrap();
    let mut report_bad = report.clone();
    report_bad["action"] = serde_json::json!("fly");
    let mut report_empty = report.clone();
    report_empty["device"] = serde_json::json!("");

    let cases: Vec<(Request<Body>, StatusCode, Option<&str>)> = vec![
        (
            call("POST", "/v1/publish", "{"),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            call("POST", "/v1/publish", ""),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            call("POST", "/v1/publish", r#"{"rules": []}"#),
            StatusCode::BAD_REQUEST,
            Some("rules"),
        ),
        (
            call(
                "POST",
                "/v1/publish",
                &serde_json::json!({"rules": [bad_nb]}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            Some("rules[0].rule.not_before"),
        ),
        (
            call(
                "POST",
                "/v1/publish",
                &serde_json::json!({"rules": [no_policy]}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            Some("rules[0].rule.policy"),
        ),
        (
            call(
                "POST",
                "/v1/publish",
                &format!("{} x", serde_json::json!({"rules": [good]})),
            ),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            call("POST", "/v1/revoke", &rev_bad.to_string()),
            StatusCode::BAD_REQUEST,
            Some("revoked_at"),
        ),
        (
            call("POST", "/v1/revoke", "[]"),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            call("GET", "/v1/pep/mount:ws-07/changes?since=abc", ""),
            StatusCode::BAD_REQUEST,
            Some("since"),
        ),
        (
            call("GET", "/v1/pep/mount:ws-07/changes?wait=-1", ""),
            StatusCode::BAD_REQUEST,
            Some("wait"),
        ),
        (
            call("GET", "/v1/pep/mount:ws-07/changes?bogus=1", ""),
            StatusCode::BAD_REQUEST,
            Some("bogus"),
        ),
        (
            call("GET", "/v1/pep/a%20b/changes", ""),
            StatusCode::BAD_REQUEST,
            Some("pep_id"),
        ),
        (
            call(
                "POST",
                "/v1/pep/mount:ws-07/exceptions",
                &report_bad.to_string(),
            ),
            StatusCode::BAD_REQUEST,
            Some("action"),
        ),
        (
            call(
                "POST",
                "/v1/pep/mount:ws-07/exceptions",
                &report_empty.to_string(),
            ),
            StatusCode::BAD_REQUEST,
            Some("device"),
        ),
        (
            call(
                "POST",
                "/v1/pep/mount:ws-07/exceptions",
                "{\"participant\": 1}",
            ),
            StatusCode::BAD_REQUEST,
            Some("participant"),
        ),
        (
            call("GET", "/v1/exceptions?after=x", ""),
            StatusCode::BAD_REQUEST,
            Some("after"),
        ),
        (
            call("GET", "/v1/exceptions?all=maybe", ""),
            StatusCode::BAD_REQUEST,
            Some("all"),
        ),
        (
            call("GET", "/v1/rules?pep=", ""),
            StatusCode::BAD_REQUEST,
            Some("pep"),
        ),
        (call("GET", "/v1/nope", ""), StatusCode::NOT_FOUND, None),
        (
            call("DELETE", "/v1/publish", ""),
            StatusCode::METHOD_NOT_ALLOWED,
            None,
        ),
        (
            call("POST", "/v1/revoke", &"x".repeat(100_000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
    ];
    let mut cases = cases;
    cases.push((
        call(
            "POST",
            "/v1/publish",
            &serde_json::json!({"rules": [bad_policy]}).to_string(),
        ),
        StatusCode::BAD_REQUEST,
        Some("rules[0].rule.policy"),
    ));
    for (req, status, field) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), status, "{what}");
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{what}: not JSON: {bytes:?}"));
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
        if let Some(f) = field {
            assert_eq!(body["field"], f, "{what}: {body}");
        }
    }
    // Nothing of that was stored.
    assert!(h.http.rules(None).await.unwrap().rules.is_empty());
}

async fn store_is_durable_wal_sqlite_and_cert_is_reused(engine: Engine) {
    let mut h = Harness::start_on(engine).await;
    let pep = "keyserver";
    let r = h.sign(rule(
        "r-dur",
        "alice",
        "ws-07",
        &[pep],
        T0 + 3600,
        T0 + 7200,
    ));
    h.http.publish(&[r]).await.unwrap();
    let cert_before = h.ca_pem.clone();
    h.restart().await;
    assert_eq!(
        h.server.as_ref().unwrap().ca_pem,
        cert_before,
        "certificate reused"
    );
    // Still pending after the restart, and released on time.
    assert_eq!(h.http.rules(Some(pep)).await.unwrap().rules.len(), 1);
    h.clock.set(T0 + 3300);
    let ch = h.http.changes(pep, 0, Duration::ZERO).await.unwrap();
    assert_eq!(ids(&ch.upserts), vec!["r-dur"]);
    if h.on_sqlite() {
        let db = h.dir.path().join("ards/ards.db");
        let store = ards::store::sqlite::Db::open(&db).unwrap();
        assert_eq!(store.journal_mode().unwrap(), "wal");
    }
}

/// Distribution latency with many PEPs (run explicitly; prints figures):
/// `cargo test -p ards --release --test ards -- --ignored --nocapture many_peps`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load measurement, not a unit of correctness"]
async fn many_peps_get_a_publish_and_a_revocation() {
    let n: usize = std::env::var("ARDS_PEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let h = Harness::start().await;
    let peps: Vec<String> = (0..n).map(|i| format!("mount:ws-{i}")).collect();
    let mut clients = Vec::with_capacity(n);
    for p in &peps {
        let mut opts = h.client_options();
        opts.poll_wait = Duration::from_secs(50);
        clients.push(
            ards::RulesClient::start_with(h.client_config(p), opts)
                .await
                .unwrap(),
        );
    }
    for c in &clients {
        assert!(c.wait_synced(Duration::from_secs(120)).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let targets: Vec<&str> = peps.iter().map(String::as_str).collect();
    let r = h.sign(rule("r-all", "alice", "ws-0", &targets, T0 - 10, T0 + 3600));
    let start = std::time::Instant::now();
    h.http.publish(&[r]).await.unwrap();
    let acked = start.elapsed();
    let all = wait_until(Duration::from_secs(120), || {
        clients.iter().all(|c| c.evaluator().rules().len() == 1)
    })
    .await
    .expect("every PEP got the rule");
    h.http
        .revoke(&Revocation::sign("r-all", ISSUER, "x", T0, &h.key))
        .await
        .unwrap();
    let gone = wait_until(Duration::from_secs(120), || {
        clients.iter().all(|c| c.evaluator().rules().is_empty())
    })
    .await
    .expect("every PEP dropped the rule");
    println!("{n} PEPs: publish acknowledged in {acked:?}; all PEPs enforcing after {all:?}; revocation everywhere after {gone:?}");
}

/// authz's own HTTP sink (what `csap authz serve` uses) talks to ARDS unchanged.
async fn authz_http_sink_publishes_and_revokes(engine: Engine) {
    use authz::wire::{HttpSink, PublishRules, RuleSink};
    let h = Harness::start_on(engine).await;
    // The issuer's service principal (named like the issuer) may publish.
    let issuer = h.pki.issue(util::ISSUER, authz::principal::Role::Service);
    let sink = HttpSink::new(&h.url, &h.ca_pem, &issuer.identity).unwrap();
    let r = h.sign(rule(
        "r-sink",
        "alice",
        "ws-07",
        &["keyserver"],
        T0 - 10,
        T0 + 60,
    ));
    let batch = PublishRules { rules: vec![r] };
    sink.publish(&batch).await.unwrap();
    sink.publish(&batch).await.unwrap(); // outbox retry: still 2xx
    let c = h
        .http
        .changes("keyserver", 0, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(ids(&c.upserts), vec!["r-sink"]);
    sink.revoke(&Revocation::sign("r-sink", ISSUER, "done", T0, &h.key))
        .await
        .unwrap();
    let d = h
        .http
        .changes("keyserver", c.revision, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(d.removals[0].rule_id, "r-sink");
    // A sink with an untrusted signer is refused with a 4xx, so authz keeps it in its outbox.
    let rogue = IssuerKey::from_seed([3; 32]);
    let bad = PublishRules {
        rules: vec![authz::sign(
            rule("r-x", "a", "b", &["keyserver"], T0, T0 + 1),
            &rogue,
        )],
    };
    match sink.publish(&bad).await {
        Err(authz::wire::SinkError::Status { status: 403, .. }) => {}
        other => panic!("expected 403, got {other:?}"),
    }
}

/// Attack: any peer reads any PEP's rules (who works on which shot, with which application, on
/// which device), files exceptions as another PEP, or publishes. Over real TLS: every route but
/// health refuses a caller without a certificate; a PEP reads and reports only as itself; only
/// an admin or the trusted issuer's service principal publishes; inventories are for admins and
/// auditors.
async fn every_route_refuses_anonymous_and_wrong_principal_callers(engine: Engine) {
    let h = Harness::start_on(engine).await;
    let anonymous = ards::ArdsHttp::new(&h.url, &h.ca_pem, None).unwrap();
    let ws07 = h.http_as(&h.pep_identity("mount:ws-07"));
    let ws08 = h.http_as(&h.pep_identity("mount:ws-08"));
    let keyserver = h.http_as(&h.pep_identity("keyserver"));
    let auditor = h.http_as(&h.pki.issue("audit-1", authz::principal::Role::Auditor));
    let workflow = h.http_as(&h.pki.issue("wf-1", authz::principal::Role::Workflow));
    let issuer = h.http_as(&h.pki.issue(ISSUER, authz::principal::Role::Service));
    fn status<T: std::fmt::Debug>(r: Result<T, ClientError>) -> u16 {
        match r {
            Ok(_) => 200,
            Err(ClientError::Status { status, .. }) => status,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    let signed = h.sign(rule(
        "r-acl",
        "alice",
        "ws-07",
        &["mount:ws-07"],
        T0 - 10,
        T0 + 60,
    ));
    let rev = authz::wire::Revocation::sign("r-acl", ISSUER, "test", T0, &h.key);
    let report = || denial("alice", "ws-07", "show/a.exr");

    // Publishing and revoking: the issuer's principal and admins only.
    for c in [&anonymous, &ws07, &keyserver, &auditor, &workflow] {
        let want = if std::ptr::eq(c, &anonymous) {
            401
        } else {
            403
        };
        assert_eq!(status(c.publish(std::slice::from_ref(&signed)).await), want);
        assert_eq!(status(c.revoke(&rev).await), want);
    }
    assert_eq!(
        status(issuer.publish(std::slice::from_ref(&signed)).await),
        200
    );

    // Streams: only the PEP itself (and admins).
    let z = Duration::ZERO;
    assert_eq!(status(ws07.changes("mount:ws-07", 0, z).await), 200);
    assert_eq!(status(h.http.changes("mount:ws-07", 0, z).await), 200);
    for c in [&ws08, &keyserver, &auditor, &workflow, &issuer] {
        assert_eq!(status(c.changes("mount:ws-07", 0, z).await), 403);
    }
    assert_eq!(status(anonymous.changes("mount:ws-07", 0, z).await), 401);
    assert_eq!(status(ws07.changes("keyserver", 0, z).await), 403);

    // Exceptions: only as itself — not even an admin files one for a PEP.
    assert_eq!(status(ws07.report("mount:ws-07", &report()).await), 200);
    for c in [&ws08, &keyserver, &h.http, &auditor] {
        assert_eq!(status(c.report("mount:ws-07", &report()).await), 403);
    }

    // Inventories: admins and auditors.
    for c in [&h.http, &auditor] {
        assert_eq!(status(c.exceptions(0, true).await), 200);
        assert_eq!(status(c.rules(None).await), 200);
        assert_eq!(status(c.peps().await), 200);
    }
    for c in [&ws07, &keyserver, &workflow, &issuer] {
        assert_eq!(status(c.exceptions(0, true).await), 403);
        assert_eq!(status(c.rules(None).await), 403);
        assert_eq!(status(c.peps().await), 403);
    }
    assert_eq!(status(anonymous.rules(None).await), 401);

    // Health answers anyone; every route is in the table the handlers follow.
    assert_eq!(status(anonymous.health().await), 200);
    assert_eq!(ards::http::ROUTES.len(), 10);

    // A revoked device's next request is refused, also on a connection opened before.
    let dev = h.pep_identity("mount:ws-09");
    let ws09 = h.http_as(&dev);
    assert_eq!(status(ws09.changes("mount:ws-09", 0, z).await), 200);
    h.pki.revoke(&dev);
    match ws09.changes("mount:ws-09", 0, z).await {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, 401),
        Err(ClientError::Http(_)) => {} // a new connection: refused in the handshake
        other => panic!("a revoked device was served: {other:?}"),
    }
}

/// Issue 11: a second ARDS on the same data directory is refused, naming the holder's pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_ards_on_the_same_data_dir_is_refused_naming_the_pid() {
    let h = Harness::start().await;
    let cfg = ards::ArdsConfig::new(
        h.dir.path().join("ards").join("ards.db"),
        vec![(ISSUER.to_owned(), h.key.public())],
    );
    let err = ards::Ards::open(cfg, Arc::new(h.clock.clone())).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("in use by process {}", std::process::id())),
        "{msg}"
    );
}

/// Issue 11: the store (with its WAL files), the TLS key and a PEP's rule cache are 0600 and the
/// data dir 0700 — also after a restart that finds them 0644 / 0755.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_are_private_and_tightened_on_restart() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut h = Harness::start().await;
    let pep = "mount:ws-07";
    h.http
        .publish(&[h.sign(rule("r-m", "alice", "ws-07", &[pep], T0 - 10, T0 + 600))])
        .await
        .unwrap();
    let cache = h.client_config(pep).cache_path;
    {
        let c = h.client(pep).await;
        assert!(wait_until(LONG, || cache.exists()).await.is_some());
        drop(c);
    }
    let data = h.dir.path().join("ards");
    let files = [
        "ards.db",
        "ards.db-wal",
        "ards.db-shm",
        "ards-key.pem",
        ".lock",
    ];
    let check = |when: &str| {
        assert_eq!(mode(&data), 0o700, "data dir {when}");
        for f in files {
            assert_eq!(mode(&data.join(f)), 0o600, "{f} {when}");
        }
    };
    check("at first start");
    assert_eq!(mode(&cache), 0o600);
    h.stop().await;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A clean stop may remove the WAL files; loosen what is left.
    for f in files.iter().filter(|f| data.join(f).exists()) {
        std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o644)).unwrap();
    h.restart().await;
    check("after restart");
    let _c = h.client(pep).await;
    assert_eq!(mode(&cache), 0o600, "cache after restart");
}

/// Issue 11: an unusable clock (before the epoch, unset) makes ARDS refuse time-driven work with
/// a 503 and the PEP client deactivate every rule, instead of acting as if it were 1970.
async fn unusable_clock_fails_closed_in_service_and_pep(engine: Engine) {
    let h = Harness::start_on(engine).await;
    let pep = "mount:ws-07";
    h.http
        .publish(&[h.sign(rule("r-c", "alice", "ws-07", &[pep], T0 - 10, T0 + 600))])
        .await
        .unwrap();
    let c = h.client(pep).await;
    assert!(wait_until(LONG, || c.evaluator().rules().len() == 1)
        .await
        .is_some());
    h.clock.set_unusable(true);
    let err = h
        .http
        .publish(&[h.sign(rule("r-d", "alice", "ws-07", &[pep], T0 - 10, T0 + 600))])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 503, .. })
            && err.to_string().contains("cannot tell the time"),
        "{err}"
    );
    assert!(
        wait_until(LONG, || c.evaluator().rules().is_empty())
            .await
            .is_some(),
        "the PEP deactivates its rules"
    );
    assert!(!c.evaluator().decide(&access("alice", "ws-07", T0)).allowed);
    h.clock.set_unusable(false);
    assert!(
        wait_until(LONG, || c.evaluator().rules().len() == 1)
            .await
            .is_some(),
        "kept, and active again once the clock is usable"
    );
}
