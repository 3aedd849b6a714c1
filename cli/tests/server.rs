//! `csap server` as a real process: it starts the three services, prints where they are, serves
//! TLS on the printed key server URL, and stops cleanly on SIGTERM.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use csap_testkit::{CsapServer, ServerOptions};

const CSAP: &str = env!("CARGO_BIN_EXE_csap");

#[test]
fn server_prints_its_urls_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut opts = ServerOptions::new(Path::new(CSAP), dir.path());
    opts.data_dir = data.clone();
    let mut server = CsapServer::start(&opts).unwrap();
    let ks_url = server.info.keyserver_url.clone();
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

    let status = server
        .terminate(Duration::from_secs(10))
        .expect("server did not stop on SIGTERM");
    assert!(status.success(), "server exited with {status}");
}
