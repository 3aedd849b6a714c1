//! `csap import` as a real process: offline with a seed file (round trip through
//! `csap asset decrypt`), killed mid-run and resumed, and against a loopback `csap server`
//! (key ids of the scope; `csap login` handing its token to a session socket).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use csap_testkit::{CsapServer, ServerOptions};

const CSAP: &str = env!("CARGO_BIN_EXE_csap");

fn csap(args: &[&str]) -> Command {
    let mut c = Command::new(CSAP);
    c.args(args)
        .env_remove("CSAP_SERVER")
        .env_remove("CSAP_IDENTITY")
        .env_remove("CSAP_MOUNT_SOCKET");
    c
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// Relative paths and contents of a small frame tree, written under `src`.
fn frame_tree(src: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let files = vec![
        ("shot010/f0001.exr", pattern(150_000, 1)),
        ("shot010/f0002.exr", pattern(65_536, 2)),
        ("shot010/sub/empty.txt", Vec::new()),
        ("notes.txt", b"a small note\n".to_vec()),
    ];
    for (rel, data) in &files {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    files
}

fn decrypt(key: &Path, asset: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("plain.out");
    ok(csap(&["asset", "decrypt", "--key-file"])
        .arg(key)
        .arg(asset)
        .arg(&out)
        .output()
        .unwrap());
    std::fs::read(out).unwrap()
}

/// Every file under `dir` (recursively) whose name marks an import's temporary file.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(temporaries(&p));
        } else if e.file_name().to_string_lossy().contains(".csap-import-") {
            found.push(p);
        }
    }
    found
}

#[test]
fn key_file_import_decrypts_back_and_reruns_skip() {
    let dir = tempfile::tempdir().unwrap();
    let (src, backing, key) = (
        dir.path().join("src"),
        dir.path().join("backing"),
        dir.path().join("k"),
    );
    std::fs::write(&key, [9u8; 32]).unwrap();
    let files = frame_tree(&src);
    let out = ok(csap(&["import"])
        .arg(&src)
        .arg(&backing)
        .arg("--key-file")
        .arg(&key)
        .output()
        .unwrap());
    assert!(out.contains("imported 4 file(s)"), "{out}");
    for (rel, data) in &files {
        let asset = backing.join(rel);
        assert_ne!(
            &std::fs::read(&asset).unwrap(),
            data,
            "{rel} stored in plaintext"
        );
        assert_eq!(&decrypt(&key, &asset, dir.path()), data, "{rel} round trip");
    }
    assert!(temporaries(&backing).is_empty());

    // A rerun skips everything; a file in the way is a counted failure, left untouched.
    std::fs::write(src.join("extra.bin"), b"new").unwrap();
    std::fs::write(backing.join("extra.bin"), b"someone else's file").unwrap();
    let out = csap(&["import"])
        .arg(&src)
        .arg(&backing)
        .arg("--key-file")
        .arg(&key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed file must fail the run");
    assert!(
        stdout.contains("skipped 4") && stdout.contains("1 failed"),
        "{stdout}"
    );
    assert!(
        stderr.contains("extra.bin") && stderr.contains("not an asset"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(backing.join("extra.bin")).unwrap(),
        b"someone else's file"
    );

    // A different key does not count an existing asset as done.
    let other = dir.path().join("k2");
    std::fs::write(&other, [7u8; 32]).unwrap();
    std::fs::remove_file(backing.join("extra.bin")).unwrap();
    let out = csap(&["import"])
        .arg(&src)
        .arg(&backing)
        .arg("--key-file")
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("different key"));
}

#[test]
fn killed_import_leaves_no_partial_asset_and_a_rerun_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (src, backing, key) = (
        dir.path().join("src"),
        dir.path().join("backing"),
        dir.path().join("k"),
    );
    std::fs::write(&key, [3u8; 32]).unwrap();
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), pattern(10_000, 1)).unwrap();
    std::fs::write(src.join("b.bin"), pattern(20_000, 2)).unwrap();
    // Big enough that encrypting it takes far longer than noticing its temporary file.
    let big = pattern(96 << 20, 3);
    std::fs::write(src.join("z.bin"), &big).unwrap();

    let mut child = csap(&["import"])
        .arg(&src)
        .arg(&backing)
        .arg("--key-file")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // One listing per look: a small file's temporary can be renamed between two.
        let seen = if backing.exists() {
            temporaries(&backing)
        } else {
            Vec::new()
        };
        if seen.iter().any(|t| {
            t.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".z.bin")
        }) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "import finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "no temporary file appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup of any kind
    child.wait().unwrap();

    assert!(
        !backing.join("z.bin").exists(),
        "a partial asset under its final name"
    );
    assert_eq!(
        temporaries(&backing).len(),
        1,
        "the killed run's temporary file"
    );
    assert!(backing.join("a.bin").exists() && backing.join("b.bin").exists());

    let out = ok(csap(&["import"])
        .arg(&src)
        .arg(&backing)
        .arg("--key-file")
        .arg(&key)
        .output()
        .unwrap());
    assert!(
        out.contains("imported 1 file(s)") && out.contains("skipped 2"),
        "{out}"
    );
    assert!(
        temporaries(&backing).is_empty(),
        "stale temporary file removed"
    );
    assert_eq!(decrypt(&key, &backing.join("z.bin"), dir.path()), big);
    assert_eq!(
        decrypt(&key, &backing.join("a.bin"), dir.path()),
        pattern(10_000, 1)
    );
}

#[test]
fn server_import_uses_the_scopes_key_ids_and_login_hands_over_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let mut opts = ServerOptions::new(Path::new(CSAP), dir.path());
    opts.data_dir = data.clone();
    let server = CsapServer::start(&opts).unwrap();
    let admin = data.join("keyserver/admin");
    let ks = &server.info.keyserver_url;
    let as_admin = |args: &[&str]| {
        let mut c = csap(args);
        c.args(["--server", ks]).arg("--identity").arg(&admin);
        c
    };
    let device = dir.path().join("device");
    ok(as_admin(&[
        "device",
        "enroll",
        "ws-test",
        "--out",
        device.to_str().unwrap(),
    ])
    .output()
    .unwrap());
    let mut add = as_admin(&["user", "add", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(b"a long passphrase\n")
        .unwrap();
    ok(add.wait_with_output().unwrap());
    ok(as_admin(&[
        "app",
        "register",
        CSAP,
        "--name",
        "csap-import",
        "--version",
        "1",
    ])
    .output()
    .unwrap());
    let created = ok(as_admin(&["scope", "create", "shot010"]).output().unwrap());
    // "created scope shot010 (id HEX, version 1)"
    let scope_id = created
        .split("(id ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no scope id in {created:?}"))
        .to_string();

    let digest = csapfs::license_source::attest::app_digest_at(Path::new(CSAP)).unwrap();
    let now = keyserver::now().expect("system clock usable");
    let request = authz::request::WireRequest::builder("import")
        .workflow_id("wf-import")
        .person("alice")
        .application(&digest, "csap-import", "1", None)
        .device("ws-test")
        .asset_path("shot010/**")
        .action("create")
        .window(now - 60, now + 3600);
    let req_file = dir.path().join("import.json");
    std::fs::write(&req_file, request.to_json()).unwrap();
    ok(csap(&["request", "submit"])
        .arg(&req_file)
        .args(["--authz", &server.info.authz_url])
        .arg("--ca")
        .arg(data.join("authz/tls-cert.pem"))
        .arg("--identity")
        .arg(&admin)
        .output()
        .unwrap());

    // Log in; the token goes to the file and to a session socket served by this test process.
    let registry = csapfs::session::SessionRegistry::new();
    let socket = dir.path().join("run/mount.sock");
    /// The mount's side of a handover needs only the device name (tokens are checked
    /// against it); logins through this socket are not what this test is about.
    struct Device;
    impl csapfs::session::DeviceLogin for Device {
        fn device(&self) -> &str {
            "ws-test"
        }
        fn login(&self, _: &str, _: &str, _: u32) -> Result<(keyserver::UserToken, i64), String> {
            Err("this test's socket takes handed-over tokens only".into())
        }
        fn identity_provider(&self, _: &str) -> Result<csapfs::session::OidcProvider, String> {
            Err("this test's socket takes handed-over tokens only".into())
        }
        fn login_oidc(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: u32,
        ) -> Result<(keyserver::UserToken, i64, String), String> {
            Err("this test's socket takes handed-over tokens only".into())
        }
    }
    let _sessions = csapfs::session::serve(
        &socket,
        std::sync::Arc::clone(&registry),
        std::sync::Arc::new(Device),
    )
    .unwrap();
    let token_file = dir.path().join("alice.token");
    let mut login = csap(&["login", "--user", "alice", "--server", ks])
        .arg("--identity")
        .arg(&device)
        .arg("--token-file")
        .arg(&token_file)
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    login
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long passphrase\n")
        .unwrap();
    let said = ok(login.wait_with_output().unwrap());
    let me = nix::unistd::getuid().as_raw();
    assert!(said.contains(&format!("for uid {me}")), "{said}");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(registry.token_for(me).as_deref(), Some(token.trim()));

    // Import; the rules reach the key server through ARDS shortly after the submit, so a
    // first attempt may be denied — and must then leave nothing behind.
    let src = dir.path().join("src");
    let files = frame_tree(&src.join("shot010"));
    std::fs::write(src.join("outside.txt"), b"no rule covers this path").unwrap();
    let backing = dir.path().join("backing");
    let import = || {
        csap(&["import"])
            .arg(&src)
            .arg(&backing)
            .args(["--scope", "shot010", "--server", ks])
            .arg("--identity")
            .arg(&device)
            .arg("--token-file")
            .arg(&token_file)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = import();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if stdout.contains("skipped 0") && stdout.contains("imported 4 file(s)") {
            break out;
        }
        assert!(
            stdout.contains("imported 0 file(s)"),
            "a partial first run: {stdout}"
        );
        assert!(temporaries(&backing).is_empty());
        assert!(Instant::now() < deadline, "rules never arrived: {stdout}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // The file outside the rules' paths is refused and fails the run.
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside.txt"));
    assert!(!backing.join("outside.txt").exists());
    for (rel, data) in &files {
        let asset = backing.join("shot010").join(rel);
        let inspect = ok(csap(&["asset", "inspect", "--json"])
            .arg(&asset)
            .output()
            .unwrap());
        let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        let key_id = v["key_id"].to_string();
        assert!(
            key_id.contains(&scope_id),
            "{rel}: key id {key_id} is not scope {scope_id}"
        );
        assert_eq!(v["plaintext_size"], data.len() as u64, "{rel}");
    }
    // A rerun skips the finished assets and requests nothing new.
    std::fs::remove_file(src.join("outside.txt")).unwrap();
    let again = ok(import());
    assert!(
        again.contains("imported 0 file(s)") && again.contains("skipped 4"),
        "{again}"
    );
}
