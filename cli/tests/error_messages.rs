//! The first errors an IT team meets, from the real `csap` binary: a failure exit, one line,
//! each cause once, and the fix where it is known.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use csap_testkit::{CsapServer, ServerOptions};

const CSAP: &str = env!("CARGO_BIN_EXE_csap");

/// Runs csap without the connection variables of the caller's shell.
fn csap(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(CSAP)
        .args(args)
        .env_remove("CSAP_SERVER")
        .env_remove("CSAP_IDENTITY")
        .env_remove("CSAP_MOUNT_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run csap");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The failure's one line; asserts the exit status, the single line and that no cause repeats.
fn one_sentence(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert_eq!(stderr.lines().count(), 1, "more than one line:\n{stderr}");
    let causes: Vec<&str> = stderr.trim_start_matches("csap: ").split(": ").collect();
    for (i, cause) in causes.iter().enumerate() {
        assert!(
            !causes[i + 1..].contains(cause),
            "cause {cause:?} repeated in: {stderr}"
        );
    }
    stderr
}

#[test]
fn a_missing_key_file_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.key");
    let out = csap(
        &[
            "asset",
            "decrypt",
            "--key-file",
            missing.to_str().unwrap(),
            "a",
            "b",
        ],
        "",
    );
    let line = one_sentence(&out);
    assert!(line.contains("missing.key"), "{line}");
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "{line}"
    );
}

#[test]
fn mount_without_a_key_source_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let line = one_sentence(&csap(&["mount", d, d], ""));
    assert!(
        line.contains("either `--key-file") && line.contains("`--server"),
        "{line}"
    );
}

#[test]
fn missing_directories_suggest_mkdir() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dev.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let present = dir.path().to_str().unwrap();
    let absent = dir.path().join("not-yet");
    let absent = absent.to_str().unwrap();
    for (backing, mountpoint, what) in [
        (absent, present, "backing directory"),
        (present, absent, "mountpoint"),
    ] {
        for daemon in [false, true] {
            let mut args = vec!["mount", backing, mountpoint, "--key-file"];
            args.push(key.to_str().unwrap());
            if daemon {
                args.push("--daemon");
            }
            let line = one_sentence(&csap(&args, ""));
            assert!(
                line.contains(&format!("{what} {absent} does not exist"))
                    && line.contains(&format!("mkdir -p {absent}")),
                "{line}"
            );
        }
    }
}

#[test]
fn login_with_the_admin_identity_says_what_to_use() {
    let dir = tempfile::tempdir().unwrap();
    let server = CsapServer::start(&ServerOptions::new(Path::new(CSAP), dir.path())).unwrap();
    let admin = server.info.admin_dir.clone();
    assert!(admin.join("cert.pem").exists(), "admin identity moved");
    let url = server.info.keyserver_url.clone();
    let token = dir.path().join("token");
    let line = one_sentence(&csap(
        &[
            "login",
            "--user",
            "alice",
            "--identity",
            admin.to_str().unwrap(),
            "--server",
            &url,
            "--token-file",
            token.to_str().unwrap(),
        ],
        "secret-pw\n",
    ));
    assert!(
        line.contains("unknown_device") && line.contains("csap device enroll"),
        "{line}"
    );
    assert!(
        !line.contains("secret-pw"),
        "the password was echoed: {line}"
    );
}
