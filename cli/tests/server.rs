//! `csap server` as a real process: it starts the three services, prints where they are, serves
//! TLS on the printed key server URL, and stops cleanly on SIGTERM.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

/// `csap server --config FILE`: the file's keys stand for the flags (the data directory, the
/// listen address, the metrics listener); a flag on the command line wins over the file.
#[test]
fn server_reads_its_config_file_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-config");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = {:?}\nlisten = \"127.0.0.1:0\"\nmetrics-listen = \"127.0.0.1:0\"\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let start = |extra: &[&str]| -> String {
        let out = dir.path().join("out");
        let mut cmd = Command::new(CSAP);
        cmd.arg("server")
            .arg("--config")
            .arg(&config)
            .args(extra)
            .env_remove("CSAP_ROOT_KEY")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::process::Stdio::null());
        let mut proc = csap_testkit::Proc::spawn(&mut cmd, "csap server").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let printed = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.contains("\nnext:") {
                break text;
            }
            assert!(
                proc.exited().unwrap().is_none(),
                "csap server exited: {text}"
            );
            assert!(std::time::Instant::now() < deadline, "no start: {text}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let status = proc
            .terminate(Duration::from_secs(10))
            .expect("stops on SIGTERM");
        assert!(status.success(), "{status}");
        printed
    };
    let printed = start(&[]);
    assert!(
        printed.contains(&format!("state in {}", data.display())),
        "{printed}"
    );
    assert!(
        printed.contains("metrics     http://127.0.0.1:"),
        "{printed}"
    );
    let printed = start(&["--metrics-listen", "off"]);
    assert!(!printed.contains("metrics "), "{printed}");
}

/// `--log-format json` (and `CSAP_LOG_FORMAT=json`): every log line is one JSON object with
/// its level and fields, for a log collector; no colour codes.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    for how in ["flag", "env"] {
        let out = dir.path().join(format!("out-{how}"));
        let err = dir.path().join(format!("err-{how}"));
        let mut cmd = Command::new(CSAP);
        if how == "flag" {
            cmd.args(["--log-format", "json"]);
        } else {
            cmd.env("CSAP_LOG_FORMAT", "json");
        }
        cmd.arg("server")
            .arg("--data-dir")
            .arg(dir.path().join(format!("data-{how}")))
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .env("CSAP_LOG", "info")
            .env_remove("CSAP_ROOT_KEY")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        let mut proc = csap_testkit::Proc::spawn(&mut cmd, "csap server").unwrap();
        csap_testkit::until("csap server up", Duration::from_secs(60), || {
            std::fs::read_to_string(&out).is_ok_and(|t| t.contains("\nnext:"))
        })
        .unwrap();
        proc.terminate(Duration::from_secs(10))
            .expect("stops on SIGTERM");
        let log = std::fs::read_to_string(&err).unwrap();
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.iter().any(|l| l.contains("key server listening")),
            "{how}: {log}"
        );
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{how}: not JSON ({e}): {line}"));
            assert!(
                v["level"].is_string() && v["fields"].is_object(),
                "{how}: {line}"
            );
            assert!(!line.contains('\u{1b}'), "{how}: colour codes in {line}");
        }
    }
}

/// Issue 16: `csap server --replicas 2` on one PostgreSQL database runs two processes whose key
/// servers share the state: both answer, a user added through replica 0 is listed by replica 1,
/// and a revocation committed through replica 0 answers a device's long poll of replica 1's
/// `/v1/revocations` within a second. A replica killed alone is reported and the other keeps
/// serving; SIGTERM stops the rest.
#[test]
fn two_replicas_on_postgres_share_users_and_wake_each_others_revocation_polls() {
    let Some(db) = csap_testkit::postgres::database() else {
        return; // no PostgreSQL here (never under CI=true)
    };
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOptions::new(Path::new(CSAP), dir.path());
    opts.store = Some(db.url.clone());
    opts.replicas = 2;
    let mut server = CsapServer::start(&opts).unwrap();
    let replicas = server.info.replicas.clone();
    assert_eq!(replicas.len(), 2, "{}", server.printed);
    let (ks0, ks1) = (&replicas[0].keyserver_url, &replicas[1].keyserver_url);
    assert_ne!(ks0, ks1);
    assert_eq!(replicas[1].data_dir, opts.data_dir.join("replica-1"));
    assert!(
        server
            .printed
            .contains(&format!("key servers: --server {ks0},{ks1}")),
        "{}",
        server.printed
    );
    // One admin identity for both: replica 1 runs on a copy of replica 0's CA and keys.
    let admin = server.info.admin_dir.clone();
    let status = |url: &str| {
        Command::new(CSAP)
            .args(["status", "--server", url, "--identity"])
            .arg(&admin)
            .env_remove("CSAP_SERVER")
            .output()
            .unwrap()
    };
    for url in [ks0, ks1] {
        let out = status(url);
        assert!(
            out.status.success(),
            "{url}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = (
        keyserver::AdminClient::connect(ks0, &admin).unwrap(),
        keyserver::AdminClient::connect(ks1, &admin).unwrap(),
    );
    rt.block_on(a.add_user("bob", "a long passphrase")).unwrap();
    let users = rt.block_on(b.list_users()).unwrap();
    assert!(users.iter().any(|u| u.name == "bob"), "{users:?}");

    // A device enrolled through replica 0 long-polls replica 1 (its certificate reaches
    // replica 1's TLS handshakes through the database's notifications).
    let device_dir = dir.path().join("ws-1");
    rt.block_on(a.enroll_device("ws-1", &device_dir)).unwrap();
    let device = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match keyserver::LicenseClient::connect(ks1, &device_dir).await {
                Ok(device) => break device,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("replica 1 does not know ws-1 yet: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("replica 1 refuses ws-1: {e}"),
            }
        }
    });
    let head = rt
        .block_on(device.revocations(None, Duration::ZERO))
        .unwrap()
        .head;
    let poll = rt.spawn({
        let device = device.clone();
        async move {
            device
                .revocations(Some(head), Duration::from_secs(20))
                .await
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!poll.is_finished(), "the poll answered with nothing to say");
    // The second counts from the revocation's request, so it covers its commit too.
    let disabled = Instant::now();
    let answer = rt
        .block_on(async {
            let revoke_and_wake = async {
                a.disable_user("bob").await.unwrap();
                poll.await
            };
            tokio::time::timeout(Duration::from_secs(1), revoke_and_wake).await
        })
        .expect("replica 1's long poll answered within 1 s of the revocation on replica 0")
        .unwrap()
        .unwrap();
    let took = disabled.elapsed();
    assert!(
        answer.events.iter().any(|e| e.subject == "bob"),
        "{answer:?}"
    );
    eprintln!("revocation through replica 0 reached replica 1's poll in {took:?}");

    // Replica 1 killed alone: reported, not restarted; replica 0 keeps serving.
    let victim = nix::unistd::Pid::from_raw(replicas[1].pid as i32);
    nix::sys::signal::kill(victim, nix::sys::signal::Signal::SIGKILL).unwrap();
    let log = server.options().log.clone();
    csap_testkit::eventually(
        "the parent's report of replica 1",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log).is_ok_and(|l| {
                l.contains(&format!("replica 1 (pid {}) exited with signal: 9", victim))
                    && l.contains("1 keep serving")
            })
        },
    );
    assert!(status(ks0).status.success(), "replica 0 stopped serving");
    assert!(!status(ks1).status.success(), "replica 1 came back");

    let stopped = server
        .terminate(Duration::from_secs(20))
        .expect("SIGTERM stops the replicas and then the parent");
    // Replica 1's death was an unclean exit: the parent says so with its status.
    assert!(!stopped.success(), "{stopped}");
    let replica0 = nix::unistd::Pid::from_raw(replicas[0].pid as i32);
    assert!(
        nix::sys::signal::kill(replica0, None).is_err(),
        "replica 0 outlived the parent"
    );
}

/// `csap server --store postgres://…?sslmode=require --store-ca CA.pem` against a PostgreSQL
/// with TLS: every service's sessions are TLS; with a CA that did not issue the server's
/// certificate the server does not start, and says which file to look at.
#[test]
fn a_server_on_postgres_over_tls_trusts_only_the_store_ca() {
    let Some((pg, ca_pem)) = csap_testkit::postgres::tls_server() else {
        return; // no PostgreSQL here (never under CI=true)
    };
    let url = format!("{}?sslmode=require", pg.create_database().unwrap());
    let db = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let mut opts = ServerOptions::new(Path::new(CSAP), dir.path());
    opts.store = Some(url.clone());
    opts.store_ca = Some(ca);
    let server = CsapServer::start(&opts).unwrap();
    let tls_sessions = pg
        .psql_in(
            db,
            "SELECT count(*) FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) \
             WHERE application_name LIKE 'csap-%' AND ssl",
        )
        .unwrap();
    let plain_sessions = pg
        .psql_in(
            db,
            "SELECT count(*) FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) \
             WHERE application_name LIKE 'csap-%' AND NOT ssl",
        )
        .unwrap();
    assert!(tls_sessions.parse::<u32>().unwrap() > 0, "{tls_sessions}");
    assert_eq!(plain_sessions, "0");
    server.stop();

    let other = dir.path().join("other-ca.pem");
    let other_ca = csap_testkit::postgres::ServerTls::issue().unwrap().ca_pem;
    std::fs::write(&other, other_ca).unwrap();
    opts.store_ca = Some(other.clone());
    opts.data_dir = dir.path().join("other");
    let refused = match CsapServer::start(&opts) {
        Ok(_) => panic!("started with a CA that did not issue the database's certificate"),
        Err(e) => format!("{e:#}"),
    };
    let want = format!(
        "the database server's certificate is refused by --store-ca {}",
        other.display()
    );
    assert!(refused.contains(&want), "{refused}");
}
