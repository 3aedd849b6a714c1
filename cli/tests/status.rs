//! `csap status` against a real server and a real key-server mount (rules, held licenses, the
//! login session, the identity's certificate; non-zero exit when the server is unreachable);
//! the mount's own metrics (listener and textfile) after a read and a user revocation; and the
//! list and show commands with and without `--json` (user list/enable, device show, request
//! list, app/scope/rules/policy lists).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use csap_testkit::{eventually, FuseProcess, Request, Setup, System};
use prometheus_parse::{Scrape, Value};
use serde_json::Value as Json;

const CSAP: &str = env!("CARGO_BIN_EXE_csap");
const DEVICE: &str = "ws-status";

fn system() -> System {
    System::start(Setup::one_device(CSAP, DEVICE)).unwrap()
}

fn csap(args: &[&str]) -> Output {
    let mut cmd = Command::new(CSAP);
    cmd.args(args);
    for var in ["CSAP_SERVER", "CSAP_IDENTITY", "CSAP_AUTHZ", "CSAP_CA"] {
        cmd.env_remove(var);
    }
    cmd.output().unwrap()
}

fn ok_json(args: &[&str]) -> Json {
    let out = csap(args);
    assert!(
        out.status.success(),
        "csap {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "csap {} printed no JSON ({e}): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn ok_text(args: &[&str]) -> String {
    let out = csap(args);
    assert!(
        out.status.success(),
        "csap {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

fn metric(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
}

#[test]
fn status_reports_server_identity_session_and_mounts() {
    if !csap_testkit::fuse::fuse_usable() {
        return;
    }
    let system = system();
    let info = system.server().clone();
    let cat = csap_testkit::digest_of("/bin/cat").unwrap();
    let importer = "cd".repeat(32);
    system.register(&cat, "cat").unwrap();
    system.register(&importer, "importer").unwrap();
    let now = keyserver::now().unwrap();
    let submitted = system
        .submit(&Request {
            name: "status",
            user: "alice",
            apps: &[&cat, &importer],
            devices: &[DEVICE],
            assets: "show/**",
            actions: &["create", "read"],
            window: (now - 60, now + 3600),
        })
        .unwrap();
    system.wait_rules(&submitted, None).unwrap();
    let backing = system.dir.path().join("backing");
    let mnt = system.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    system
        .importer(DEVICE, &importer)
        .unwrap()
        .import(&system.rt, &backing, "show/a.txt", &[b"hello"])
        .unwrap();

    let device_dir = system.device_dir(DEVICE);
    let textfile = system.dir.path().join("mount.prom");
    let token = system.token_file.clone();
    let mut cmd = Command::new(CSAP);
    cmd.arg("mount")
        .arg(&backing)
        .arg(&mnt)
        .args([
            "--server",
            &info.keyserver_url,
            "--identity",
            s(&device_dir),
        ])
        .args(["--scope", "show", "--token-file", s(&token)])
        .args(["--ards", &info.ards_url, "--ards-ca", s(&info.ards_cert)])
        .args(["--issuer-pub", s(&info.issuer_pub)])
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-textfile",
            s(&textfile),
        ])
        .env("CSAP_LOG", "info");
    csap_testkit::clean(&mut cmd);
    let mount = FuseProcess::start(
        &mut cmd,
        "csap mount",
        &mnt,
        &system.dir.path().join("mount.log"),
    )
    .unwrap();
    system.wait_rules(&submitted, Some(DEVICE)).unwrap();
    let read = csap_testkit::run({
        let mut c = Command::new("/bin/cat");
        c.arg(mnt.join("show/a.txt"));
        c
    });
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(read.stdout, b"hello");

    // The status file is refreshed every 2 s: wait for the read's license to show.
    let args = [
        "status",
        "--server",
        &info.keyserver_url,
        "--identity",
        s(&device_dir),
        "--token-file",
        s(&token),
        "--json",
    ];
    let canonical = mnt.canonicalize().unwrap();
    let mine = |v: &Json| -> Option<Json> {
        v["mounts"]
            .as_array()?
            .iter()
            .find(|m| m["mountpoint"] == s(&canonical) || m["mountpoint"] == s(&mnt))
            .cloned()
    };
    eventually(
        "the mount's status shows its license",
        Duration::from_secs(20),
        || {
            let v = ok_json(&args);
            let seen = mine(&v).is_some_and(|m| m["status"]["licenses"].as_u64() >= Some(1));
            if !seen {
                eprintln!("not yet: {v}");
            }
            seen
        },
    );
    let v = ok_json(&args);
    assert_eq!(v["server"]["reachable"], true, "{v}");
    assert_eq!(v["server"]["version"], env!("CARGO_PKG_VERSION"), "{v}");
    assert_eq!(v["server"]["peer"], format!("device:{DEVICE}"), "{v}");
    assert_eq!(v["identity"]["name"], DEVICE, "{v}");
    assert!(
        v["identity"]["certificate_expires"].as_i64().unwrap() > now,
        "{v}"
    );
    assert_eq!(v["session"]["user"], "alice", "{v}");
    assert_eq!(v["session"]["device"], DEVICE, "{v}");
    assert_eq!(v["session"]["expired"], false, "{v}");
    let m = mine(&v).unwrap();
    assert_eq!(m["status"]["key_source"], "key-server", "{m}");
    assert!(m["status"]["rules"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(
        m["status"]["pid"].as_u64(),
        Some(u64::from(mount.pid().as_raw() as u32)),
        "{m}"
    );

    // The same as text, for a person.
    let text = ok_text(&args[..args.len() - 1]);
    assert!(text.contains("reachable, version"), "{text}");
    assert!(text.contains("session     alice on ws-status"), "{text}");
    assert!(
        text.contains(s(&canonical)) && text.contains("licenses held"),
        "{text}"
    );

    // The mount's own listener and textfile.
    let listen = m["status"]["metrics_listen"]
        .as_str()
        .expect("a metrics listener")
        .to_string();
    let (ready, body) = system.rt.block_on(async {
        let r = reqwest::get(format!("http://{listen}/readyz"))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(ready, 200, "{body}");
    let live = system.rt.block_on(async {
        reqwest::get(format!("http://{listen}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let live = scrape(&live);
    assert!(metric(&live, "csap_mount_license_cache_misses_total", &[]) >= Some(1.0));
    assert!(metric(&live, "csap_mount_license_request_seconds", &[]) >= Some(1.0));
    assert!(metric(&live, "csap_mount_licenses_held", &[]) >= Some(1.0));
    assert!(metric(&live, "csap_mount_rules", &[]) >= Some(1.0));
    assert_eq!(metric(&live, "csap_mount_audit_spool_full", &[]), Some(0.0));

    // A user revocation reaches the mount: counted with its latency, in the textfile too.
    system
        .rt
        .block_on(system.admin.disable_user("alice"))
        .unwrap();
    eventually(
        "the revocation in the textfile",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&textfile).unwrap_or_default();
            let m = scrape(&text);
            metric(&m, "csap_mount_revocations_total", &[("kind", "user")]) == Some(1.0)
                && metric(&m, "csap_mount_revoked_licenses_total", &[]) >= Some(1.0)
                && metric(&m, "csap_mount_revocation_apply_seconds", &[]) == Some(1.0)
        },
    );
    mount.unmount().unwrap();

    // Unreachable: non-zero, one sentence naming the server; --json still says why.
    let down = [
        "status",
        "--server",
        "https://127.0.0.1:9",
        "--identity",
        s(&device_dir),
    ];
    let out = csap(&down);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("https://127.0.0.1:9 is unreachable"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = csap(&[&down[..], &["--json"]].concat());
    assert!(!out.status.success());
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["server"]["reachable"], false);
    assert!(
        v["server"]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{v}"
    );
}

#[test]
fn list_and_show_commands_print_text_or_json() {
    let system = system();
    let info = system.server().clone();
    let ks = [
        "--server",
        &info.keyserver_url,
        "--identity",
        s(&info.admin_dir),
    ];
    let with = |cmd: &[&str], conn: &[&str]| -> Vec<String> {
        cmd.iter().chain(conn).map(|s| s.to_string()).collect()
    };
    let run_json =
        |args: Vec<String>| ok_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let run_text =
        |args: Vec<String>| ok_text(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Users: listed, disabled, enabled again.
    let users = run_json(with(&["user", "list", "--json"], &ks));
    assert_eq!(users[0]["name"], "alice", "{users}");
    assert_eq!(users[0]["disabled"], false, "{users}");
    run_text(with(&["user", "disable", "alice"], &ks));
    let users = run_json(with(&["user", "list", "--json"], &ks));
    assert_eq!(users[0]["disabled"], true, "{users}");
    let text = run_text(with(&["user", "list"], &ks));
    assert!(
        text.starts_with("alice") && text.contains("disabled"),
        "{text}"
    );
    let said = run_text(with(&["user", "enable", "alice"], &ks));
    assert!(said.contains("enabled user alice"), "{said}");
    let users = run_json(with(&["user", "list", "--json"], &ks));
    assert_eq!(users[0]["disabled"], false, "{users}");
    let out = csap(
        &with(&["user", "enable", "nobody"], &ks)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!out.status.success(), "enabling an unknown user succeeded");

    // A device: shown alone; an unknown one is an error.
    let dev = run_json(with(&["device", "show", DEVICE, "--json"], &ks));
    assert_eq!(dev["name"], DEVICE, "{dev}");
    assert_eq!(dev["state"], "active", "{dev}");
    assert_eq!(
        dev["certificates"].as_array().map(Vec::len),
        Some(1),
        "{dev}"
    );
    let text = run_text(with(&["device", "show", DEVICE], &ks));
    assert!(
        text.starts_with(&format!("device {DEVICE} active")),
        "{text}"
    );
    let out = csap(
        &with(&["device", "show", "nobody"], &ks)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no device nobody is enrolled"), "{err}");
    let devices = run_json(with(&["device", "list", "--json"], &ks));
    assert!(
        devices
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == DEVICE),
        "{devices}"
    );

    // Apps and scopes.
    let digest = "ab".repeat(32);
    system.register(&digest, "viewer").unwrap();
    let apps = run_json(with(&["app", "list", "--json"], &ks));
    assert_eq!(apps[0]["digest"], digest, "{apps}");
    assert!(run_text(with(&["app", "list"], &ks)).contains(&digest));
    let scopes = run_json(with(&["scope", "list", "--json"], &ks));
    assert_eq!(scopes[0]["name"], "show", "{scopes}");

    // Requests: listed newest first, shown; rules and policies listed.
    let now = keyserver::now().unwrap();
    let submitted = system
        .submit(&Request {
            name: "lists",
            user: "alice",
            apps: &[&digest],
            devices: &[DEVICE],
            assets: "show/**",
            actions: &["read"],
            window: (now - 60, now + 3600),
        })
        .unwrap();
    let az = [
        "--authz",
        &info.authz_url,
        "--ca",
        s(&info.authz_cert),
        "--identity",
        s(&info.admin_dir),
    ];
    let list = run_json(with(&["request", "list", "--json"], &az));
    assert_eq!(list[0]["id"], submitted.id.as_str(), "{list}");
    assert_eq!(list[0]["status"], "active", "{list}");
    let text = run_text(with(&["request", "list"], &az));
    assert!(
        text.starts_with(&submitted.id) && text.contains("active"),
        "{text}"
    );
    let shown = run_json(with(&["request", "show", &submitted.id, "--json"], &az));
    assert_eq!(shown["id"], submitted.id.as_str(), "{shown}");
    let text = run_text(with(&["request", "show", &submitted.id], &az));
    assert!(
        text.lines().count() >= 2 && text.contains("  rule "),
        "{text}"
    );
    let rules = run_json(with(&["rules", "list", "--json"], &az));
    assert!(!rules.as_array().unwrap().is_empty(), "{rules}");
    let policies = run_json(with(&["policy", "global", "list", "--json"], &az));
    assert_eq!(policies, Json::Array(vec![]));
    let out = csap(
        &with(&["request", "list", "--limit", "0"], &az)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limit: must be 1 to 1000"));
}
