//! The PostgreSQL plumbing every engine shares (`authz::pg`), against a real server: versioned
//! migrations (once, also when two replicas start together; a newer schema refused) and the
//! notification subscription (payloads after commit, a resync after a lost connection).

use std::time::Duration;

use authz::pg::{migrate, Notice, PgError, Target};

const STEPS: &[&str] = &[
    "CREATE TABLE t (a BIGINT);",
    "ALTER TABLE t ADD COLUMN b BIGINT;",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_across_replicas_and_a_newer_schema_is_refused() {
    let Some(db) = csap_testkit::postgres::database() else {
        return;
    };
    let target = Target::parse(&db.url, None).unwrap();
    let (a, b) = (target.pool("m", 2).unwrap(), target.pool("m", 2).unwrap());
    assert_eq!(migrate(&a, "m", &STEPS[..1]).await.unwrap(), 1);
    // Two replicas of a later build start at once: the second step runs once.
    let (ra, rb) = tokio::join!(migrate(&a, "m", STEPS), migrate(&b, "m", STEPS));
    assert_eq!((ra.unwrap(), rb.unwrap()), (2, 2));
    assert_eq!(
        db.psql("SELECT version FROM m.schema_version").unwrap(),
        "2"
    );
    let columns = db
        .psql("SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns WHERE table_schema = 'm' AND table_name = 't'")
        .unwrap();
    assert_eq!(columns, "a,b");
    // The pool's sessions see their schema first.
    let client = a.get().await.unwrap();
    client
        .execute("INSERT INTO t(a, b) VALUES (1, 2)", &[])
        .await
        .unwrap();
    // An older build refuses the newer schema instead of writing into it.
    assert!(matches!(
        migrate(&a, "m", &STEPS[..1]).await,
        Err(PgError::FutureSchema(2))
    ));
}

async fn next(notices: &mut tokio::sync::mpsc::UnboundedReceiver<Notice>) -> Notice {
    tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .expect("a notice within 10 s")
        .expect("the subscription runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_arrive_after_commit_and_a_lost_connection_resyncs() {
    let Some(db) = csap_testkit::postgres::database() else {
        return;
    };
    let target = Target::parse(&db.url, None).unwrap();
    let mut notices = target.listen("csap_test");
    assert_eq!(next(&mut notices).await, Notice::Resync);
    let pool = target.pool("public", 1).unwrap();
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("SELECT pg_notify('csap_test', '1 pep')", &[])
        .await
        .unwrap();
    // Not before the commit.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), notices.recv())
            .await
            .is_err(),
        "a notification before its commit"
    );
    tx.commit().await.unwrap();
    assert_eq!(next(&mut notices).await, Notice::Payload("1 pep".into()));
    // The listening connection is cut: the subscription reconnects and says to re-read.
    db.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
        .unwrap();
    assert_eq!(next(&mut notices).await, Notice::Resync);
    client
        .execute("SELECT pg_notify('csap_test', '2 pep')", &[])
        .await
        .unwrap();
    assert_eq!(next(&mut notices).await, Notice::Payload("2 pep".into()));
}

/// `--store-ca`: a server with TLS (its certificate from a test CA) is reached over TLS with
/// `sslmode=require` and that CA; a CA that did not sign the server's certificate is refused at
/// the handshake, and the error says it is the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_is_verified_against_the_given_ca() {
    let Some((server, ca_pem)) = csap_testkit::postgres::tls_server() else {
        return;
    };
    let url = format!("{}?sslmode=require", server.create_database().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();
    let pool = Target::parse(&url, Some(&ca))
        .unwrap()
        .pool("t", 1)
        .unwrap();
    let client = pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the session is not TLS");

    let other = dir.path().join("other-ca.pem");
    let other_ca = csap_testkit::postgres::ServerTls::issue().unwrap().ca_pem;
    std::fs::write(&other, other_ca).unwrap();
    let pool = Target::parse(&url, Some(&other))
        .unwrap()
        .pool("t", 1)
        .unwrap();
    let refused = PgError::from(pool.get().await.unwrap_err());
    // The whole chain, as the CLI prints an error.
    let mut text = refused.to_string();
    let mut cause = std::error::Error::source(&refused);
    while let Some(e) = cause {
        text = format!("{text}: {e}");
        cause = e.source();
    }
    let want = format!(
        "the database server's certificate is refused by --store-ca {}",
        other.display()
    );
    assert!(text.contains(&want), "{text}");
}
