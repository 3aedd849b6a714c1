//! Issue 16: `csap server --store postgres://…` keeps authz's and ARDS's state in a real
//! PostgreSQL (the test harness's), and the installation works as on SQLite: a request
//! becomes rules that reach the key server and the mount, the mount opens a frame, and a
//! cancellation withdraws them.

use super::fixture::{bash_as, Env, Req};
use super::{assert_frame, assert_open_denied, direct, read_all, wait_until_bash_opens};

#[test]
fn a_server_on_postgres_serves_a_mount_that_opens_a_frame() {
    let Some(db) = csap_testkit::postgres::database() else {
        return; // no PostgreSQL here (never under CI=true)
    };
    let Some(env) = Env::start_on(None, Some(db.url.clone())) else {
        return; // no FUSE here (never under CI=true)
    };
    let view = env.submit(&Req::now("view", &[&env.apps.bash], &["read"]));
    env.with_frames(&["f1.raw"]);
    let (mnt, _mounted) = env.mount("mnt", &env.args(), &direct());
    let f1 = mnt.join("samples/f1.raw");
    wait_until_bash_opens(&f1);
    assert_frame(
        &env,
        &bash_as(None, &read_all(&f1)),
        "open through the mount",
    );

    // The requests and rules are PostgreSQL's rows, not a SQLite file's.
    let requests = db.psql("SELECT count(*) FROM authz.requests").unwrap();
    assert_eq!(requests, "2", "view and import requests in authz's schema");
    let released = db
        .psql("SELECT count(*) FROM ards.targets WHERE state = 'released'")
        .unwrap();
    assert!(
        released.parse::<u32>().unwrap() >= 2,
        "released: {released}"
    );
    let server_dir = env.dir.path().join("server");
    for file in ["authz/authz.sqlite", "ards/ards.db"] {
        assert!(!server_dir.join(file).exists(), "{file} was created");
    }

    env.cancel(&view);
    csap_testkit::eventually(
        "the cancellation at the mount",
        std::time::Duration::from_secs(10),
        || !super::bash_open(&f1).0,
    );
    assert_open_denied(&f1, "after the cancellation");
}
