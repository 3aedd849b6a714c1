//! `csap server` as a real process: it starts the three services, prints where they are, serves
//! TLS on the printed key server URL, and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CSAP: &str = env!("CARGO_BIN_EXE_csap");

#[test]
fn server_prints_its_urls_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(CSAP)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    while !printed.contains("authz issuer key") {
        match lines.next() {
            Some(Ok(line)) => printed.push_str(&(line + "\n")),
            _ => panic!("server stopped early; printed:\n{printed}"),
        }
    }
    let ks_url = printed
        .lines()
        .find(|l| l.starts_with("key server"))
        .and_then(|l| l.split_whitespace().nth(2))
        .expect("key server URL")
        .to_string();
    for want in ["authz", "ARDS", "admin identity"] {
        assert!(printed.contains(want), "{want} missing in:\n{printed}");
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

    nix_kill(child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "server exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn nix_kill(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
