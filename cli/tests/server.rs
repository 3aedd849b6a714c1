//! `csap server` as a real process: it starts the three services, prints where they are, serves
//! TLS on the printed key server URL, and stops cleanly on SIGTERM.

use std::process::Command;

mod common;
use common::{Server, CSAP};

#[test]
fn server_prints_its_urls_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data);
    let ks_url = server.url("key server");
    for want in ["authz", "ARDS", "admin identity"] {
        assert!(
            server.printed.contains(want),
            "{want} missing in:\n{}",
            server.printed
        );
    }
    let admin = data.join("keyserver/admin");
    assert!(admin.join("cert.pem").exists() && admin.join("key.pem").exists());

    // The printed URL serves the key server's API to the admin identity.
    let out = Command::new(CSAP)
        .args(["scope", "create", "s1", "--server", &ks_url, "--identity"])
        .arg(&admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let status = server.terminate().expect("server did not stop on SIGTERM");
    assert!(status.success(), "server exited with {status}");
}
