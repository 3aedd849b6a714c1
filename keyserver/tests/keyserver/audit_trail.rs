//! The one audit trail: decisions shipped by mounts (`POST /v1/audit`), refused license
//! sessions, rows that name asset paths, the admin query over all of them, and the hash chain
//! that shows a row edited, deleted or moved in the database.

use std::time::Duration;

use keyserver::wire::{
    Action, AuditBatch, AuditBatchAck, AuditQuery, AuditRecord, AuditTamper, LicenseRequest,
    MountAuditRecord, SignedLicense,
};

use super::*;

const SPOOL: &str = "0123456789abcdef0123456789abcdef";

fn record(seq: u64, path: &str, decision: &str, reason: &str) -> MountAuditRecord {
    MountAuditRecord {
        seq,
        time: keyserver::now().unwrap(),
        user: Some(USER.into()),
        uid: Some(1000),
        app_digest: Some(app_digest("cat")),
        device: None,
        path: path.into(),
        asset: None,
        action: Action::Read,
        decision: decision.into(),
        reason: reason.into(),
        count: 1,
    }
}

/// The records matching `q`, polled until `done` holds (rows queued by `record_later` are
/// committed by the writer thread a moment later).
async fn query_until(
    e: &Env,
    q: &AuditQuery,
    done: impl Fn(&[AuditRecord]) -> bool,
) -> Vec<AuditRecord> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rows = e.admin.audit_query(q).await.unwrap();
        if done(&rows) || std::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn path_query(glob: &str) -> AuditQuery {
    AuditQuery {
        path: Some(glob.into()),
        ..Default::default()
    }
}

/// Attack: a device ships records that claim to come from another device. The key server
/// stamps the peer certificate's name; the body's device is ignored. A resend of the same
/// batch (the mount lost the answer) stores nothing twice.
async fn shipped_records_carry_the_peers_device_and_resends_are_idempotent(engine: Engine) {
    let e = env_on(engine).await;
    let mut forged = record(1, "show/seq1/f0001.exr", "deny", "no_rule_at_mount");
    forged.device = Some("ws-someone-else".into());
    let batch = AuditBatch {
        spool: SPOOL.into(),
        records: vec![
            forged,
            record(2, "show/seq1/f0002.exr", "grant", "license_cache"),
        ],
    };
    let ack = e.dev.client.ship_audit(&batch).await.unwrap();
    assert_eq!((ack.accepted, ack.duplicates, ack.through_seq), (2, 0, 2));
    let again = e.dev.client.ship_audit(&batch).await.unwrap();
    assert_eq!(
        (again.accepted, again.duplicates),
        (0, 2),
        "resend stored twice"
    );

    let rows = e
        .admin
        .audit_query(&path_query("show/seq1/**"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for r in &rows {
        assert_eq!(
            r.device.as_deref(),
            Some(DEVICE),
            "device from the body: {r:?}"
        );
        assert_eq!(r.source, "mount");
        assert_eq!(r.uid, Some(1000));
    }
    assert_eq!(rows[0].path.as_deref(), Some("show/seq1/f0001.exr"));
    assert_eq!(rows[0].reason.as_deref(), Some("no_rule_at_mount"));
    let ghost = e
        .admin
        .audit_query(&AuditQuery {
            device: Some("ws-someone-else".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(ghost.is_empty(), "{ghost:#?}");
    // The resend skipped ids on PostgreSQL (ON CONFLICT draws them): the chain still links.
    let chain = e.admin.audit_verify().await.unwrap();
    assert_eq!(chain.tamper, None, "{chain:?}");
}

/// Attack: malformed batches. Each is refused with a 400 whose JSON body names the field,
/// and nothing of the batch is stored.
async fn malformed_audit_batches_are_400_naming_the_field(engine: Engine) {
    let e = env_on(engine).await;
    let ship = |batch: serde_json::Value| {
        let client = e.dev.client.raw().clone();
        async move {
            client
                .post::<_, AuditBatchAck>("/v1/audit", &batch)
                .await
                .unwrap_err()
        }
    };
    let good = serde_json::to_value(record(1, "show/a.exr", "deny", "x")).unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut r = good.clone();
        r[field] = value;
        r
    };
    let mut second_bad_decision = with("decision", "maybe".into());
    second_bad_decision["seq"] = 2.into();
    let cases = [
        (
            serde_json::json!({"spool": SPOOL, "records": [good.clone(), second_bad_decision]}),
            "records[1].decision",
        ),
        (
            serde_json::json!({"spool": SPOOL, "records": [with("path", "../etc/passwd".into())]}),
            "records[0].path",
        ),
        (
            serde_json::json!({"spool": SPOOL, "records": [with("seq", 0.into())]}),
            "records[0].seq",
        ),
        (
            serde_json::json!({"spool": SPOOL, "records": [good.clone(), good.clone()]}),
            "records[1].seq",
        ),
        (
            serde_json::json!({"spool": SPOOL, "records": [with("app_digest", "cat".into())]}),
            "records[0].app_digest",
        ),
        (
            serde_json::json!({"spool": "not-hex", "records": [good.clone()]}),
            "spool",
        ),
        (
            serde_json::json!({"spool": SPOOL, "records": []}),
            "records",
        ),
        (
            serde_json::json!({"spool": SPOOL, "records": [with("action", "steal".into())]}),
            "records[0].action",
        ),
    ];
    for (body, field) in cases {
        match ship(body.clone()).await {
            ClientError::Server { status: 400, body } => {
                assert_eq!(body.field.as_deref(), Some(field), "{body:?}")
            }
            other => panic!("{body}: expected a 400 naming {field}, got {other:?}"),
        }
    }
    let rows = e.admin.audit_query(&path_query("**")).await.unwrap();
    assert!(rows.iter().all(|r| r.source != "mount"), "{rows:#?}");
}

/// Attack: license requests on a session the server does not know (made up, or ended) are
/// refused with 401 `session_unknown` — and that refusal is on record with the
/// asset's path, the user the token names and the application.
async fn a_refused_license_session_is_audited_with_path_user_and_app(engine: Engine) {
    let e = env_on(engine).await;
    let created = e
        .dev
        .client
        .create(
            &e.dev.token,
            &e.dev.app_digest,
            "show/seq1/f0001.exr",
            SCOPE,
        )
        .await
        .unwrap();
    let asset = hex::encode(created.grants[0].asset_id);
    let req = LicenseRequest {
        token: e.dev.token.as_str().into(),
        app_digest: e.dev.app_digest.clone(),
        action: Action::Read,
        assets: vec![asset.clone()],
        create: None,
        hpke_public_key: String::new(),
        session: Some("ab".repeat(16)),
    };
    let refused = e
        .dev
        .client
        .raw()
        .post::<_, SignedLicense>("/v1/licenses", &req)
        .await;
    assert!(
        matches!(&refused, Err(ClientError::Server { status: 401, .. })),
        "{refused:?}"
    );
    let q = AuditQuery {
        path: Some("show/**/f0001.exr".into()),
        user: Some(USER.into()),
        app: Some(APP.into()),
        decision: Some("deny".into()),
        ..Default::default()
    };
    let rows = query_until(&e, &q, |rows| !rows.is_empty()).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let r = &rows[0];
    assert_eq!(r.reason.as_deref(), Some("session_unknown"));
    assert_eq!(r.path.as_deref(), Some("show/seq1/f0001.exr"));
    assert_eq!(r.asset.as_deref(), Some(asset.as_str()));
    assert_eq!(r.device.as_deref(), Some(DEVICE));
    assert_eq!(r.source, "keyserver");
}

/// Key server rows name the registered path of their asset, and every filter narrows:
/// path glob, user, device, application by digest or by registered name, decision, time.
async fn the_audit_query_filters_on_the_server(engine: Engine) {
    let e = env_on(engine).await;
    let start = keyserver::now().unwrap();
    for path in ["show/seq1/f0001.exr", "show/seq1/f0002.exr"] {
        e.dev
            .client
            .create(&e.dev.token, &e.dev.app_digest, path, SCOPE)
            .await
            .unwrap();
    }
    let assets = e.admin.list_assets().await.unwrap();
    let ids: Vec<[u8; 16]> = assets
        .iter()
        .map(|a| hex::decode(&a.asset_id).unwrap().try_into().unwrap())
        .collect();
    e.dev
        .client
        .request(&e.dev.token, &e.dev.app_digest, Action::Read, &ids)
        .await
        .unwrap();
    e.dev
        .client
        .ship_audit(&AuditBatch {
            spool: SPOOL.into(),
            records: vec![record(1, "show/seq1/f0001.exr", "deny", "no_rule_at_mount")],
        })
        .await
        .unwrap();

    let q = |q: AuditQuery| {
        let admin = e.admin.clone();
        async move { admin.audit_query(&q).await.unwrap() }
    };
    let reads_of_f1 = q(AuditQuery {
        path: Some("show/*/f0001.exr".into()),
        ..Default::default()
    })
    .await;
    let actions: Vec<(&str, &str, &str)> = reads_of_f1
        .iter()
        .map(|r| (r.source.as_str(), r.action.as_str(), r.decision.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("keyserver", "create", "grant"),
            ("keyserver", "read", "grant"),
            ("mount", "read", "deny")
        ],
        "{reads_of_f1:#?}"
    );
    assert!(reads_of_f1
        .iter()
        .all(|r| r.path.as_deref() == Some("show/seq1/f0001.exr")));
    let by_app_name = q(AuditQuery {
        app: Some(APP.into()),
        decision: Some("grant".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(by_app_name.len(), 4, "2 creates, 2 reads: {by_app_name:#?}");
    let by_digest = q(AuditQuery {
        app: Some(e.dev.app_digest.clone()),
        decision: Some("grant".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(by_digest, by_app_name);
    let cat = q(AuditQuery {
        app: Some(app_digest("cat")),
        ..Default::default()
    })
    .await;
    assert_eq!(cat.len(), 1);
    assert_eq!(cat[0].source, "mount");
    let limited = q(AuditQuery {
        path: Some("show/**".into()),
        limit: Some(2),
        ..Default::default()
    })
    .await;
    assert_eq!(limited.len(), 2);
    assert_eq!(limited[1].source, "mount", "the newest rows: {limited:#?}");
    let other_user = q(AuditQuery {
        user: Some("bob".into()),
        ..Default::default()
    })
    .await;
    assert!(other_user.is_empty());
    let other_device = q(AuditQuery {
        device: Some("ws-99".into()),
        path: Some("**".into()),
        ..Default::default()
    })
    .await;
    assert!(other_device.is_empty());
    let later = q(AuditQuery {
        since: Some(start + 3600),
        ..Default::default()
    })
    .await;
    assert!(later.is_empty());
    let earlier = q(AuditQuery {
        until: Some(start),
        path: Some("**".into()),
        ..Default::default()
    })
    .await;
    assert!(earlier.is_empty());
    // Unknown application names and bad filters are errors, not empty answers.
    let unknown = e
        .admin
        .audit_query(&AuditQuery {
            app: Some("nonesuch".into()),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(unknown, Err(ClientError::Server { status: 404, .. })),
        "{unknown:?}"
    );
    let bad = e
        .admin
        .audit_query(&AuditQuery {
            decision: Some("perhaps".into()),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(&bad, Err(ClientError::Server { status: 400, body }) if body.field.as_deref() == Some("decision")),
        "{bad:?}"
    );
    // The path filter is in the rules' one dialect: what a rule may not say, a query may not
    // either (the query had its own, looser checker that took `a**`).
    for glob in ["show/seq**", "/show/**", "show//f.exr"] {
        let bad = e.admin.audit_query(&path_query(glob)).await;
        assert!(
            matches!(&bad, Err(ClientError::Server { status: 400, body }) if body.field.as_deref() == Some("path")),
            "{glob}: {bad:?}"
        );
    }
    // Devices may ship, not read.
    let as_device = e
        .dev
        .client
        .raw()
        .get::<Vec<AuditRecord>>("/v1/admin/audit/query")
        .await;
    assert!(
        matches!(as_device, Err(ClientError::Denied(Reason::NotAdmin))),
        "{as_device:?}"
    );
}

/// Runs `sql` on the key server's database behind its back (someone with write access).
fn tamper(e: &Env, sql: &str) {
    match &e.engine {
        Engine::Sqlite => {
            let db = rusqlite::Connection::open(e.dir.path().join("ks/keyserver.sqlite")).unwrap();
            db.execute_batch(sql).unwrap();
        }
        Engine::Postgres(db) => {
            db.psql(&format!("SET search_path TO keyserver; {sql}"))
                .unwrap();
        }
    }
}

/// Swaps two rows' contents, chain included (what a reordering leaves: the ids stay in place).
fn swap_rows(e: &Env, a: i64, b: i64) {
    match &e.engine {
        // An INTEGER PRIMARY KEY can be renumbered.
        Engine::Sqlite => tamper(
            e,
            &format!(
                "UPDATE audit SET id = -1 WHERE id = {a}; UPDATE audit SET id = {a} WHERE id = {b};
                 UPDATE audit SET id = {b} WHERE id = -1;"
            ),
        ),
        // An identity column cannot be: move every other column (the sub-select reads the
        // rows as they were before the statement).
        Engine::Postgres(_) => {
            let cols = "time, username, app_digest, device, asset, action, decision, rule_ids, \
                        reason, license_id, path, source, uid, count, spool, seq, chain";
            tamper(
                e,
                &format!(
                    "UPDATE audit t SET ({cols}) = (SELECT {cols} FROM audit o
                       WHERE o.id = CASE t.id WHEN {a} THEN {b} ELSE {a} END)
                     WHERE t.id IN ({a}, {b});"
                ),
            )
        }
    }
}

/// Attack: someone with write access to the database edits a row, swaps two, deletes one.
/// `GET /v1/admin/audit/verify` walks the hash chain and names the first row that no longer
/// links, and how; the untouched (or restored) trail verifies.
async fn the_hash_chain_shows_an_edited_a_swapped_and_a_deleted_row(engine: Engine) {
    let e = env_on(engine).await;
    for n in 0..6 {
        e.create(&format!("show/seq1/chain{n}.exr")).await;
    }
    let rows: Vec<i64> = e
        .audit()
        .await
        .iter()
        .filter(|r| {
            r.path
                .as_deref()
                .is_some_and(|p| p.starts_with("show/seq1/chain"))
        })
        .map(|r| r.id)
        .collect();
    assert_eq!(rows.len(), 6, "{rows:?}");
    let intact = e.admin.audit_verify().await.unwrap();
    assert_eq!((&intact.tamper, intact.unchained), (&None, 0), "{intact:?}");
    assert!(intact.rows >= 6 && intact.head.is_some(), "{intact:?}");

    let edited = rows[1];
    tamper(
        &e,
        &format!("UPDATE audit SET decision = 'deny' WHERE id = {edited};"),
    );
    let v = e.admin.audit_verify().await.unwrap();
    assert_eq!(v.tamper, Some(AuditTamper::Edited { id: edited }), "{v:?}");
    tamper(
        &e,
        &format!("UPDATE audit SET decision = 'grant' WHERE id = {edited};"),
    );
    let v = e.admin.audit_verify().await.unwrap();
    assert_eq!(v.tamper, None, "restored: {v:?}");

    let (a, b) = (rows[2], rows[4]);
    swap_rows(&e, a, b);
    let v = e.admin.audit_verify().await.unwrap();
    assert_eq!(
        v.tamper,
        Some(AuditTamper::Reordered {
            id: a,
            content_of: b
        }),
        "{v:?}"
    );
    swap_rows(&e, a, b);
    assert_eq!(e.admin.audit_verify().await.unwrap().tamper, None);

    let deleted = rows[3];
    let all: Vec<i64> = e.audit().await.iter().map(|r| r.id).collect();
    let at = all.iter().position(|id| *id == deleted).unwrap();
    tamper(&e, &format!("DELETE FROM audit WHERE id = {deleted};"));
    let v = e.admin.audit_verify().await.unwrap();
    assert_eq!(
        v.tamper,
        Some(AuditTamper::Deleted {
            id: all[at + 1],
            after: all[at - 1]
        }),
        "{v:?}"
    );
}

// The store's suite: each test on SQLite and on PostgreSQL.
csap_testkit::on_both_engines!(
    shipped_records_carry_the_peers_device_and_resends_are_idempotent,
    malformed_audit_batches_are_400_naming_the_field,
    a_refused_license_session_is_audited_with_path_user_and_app,
    the_audit_query_filters_on_the_server,
    the_hash_chain_shows_an_edited_a_swapped_and_a_deleted_row,
);
