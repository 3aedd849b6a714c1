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
