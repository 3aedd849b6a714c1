//! The systemd units under `contrib/systemd/` pass `systemd-analyze verify` (syntax, known
//! directives, executables that exist). Needs systemd-analyze: skipped with a message where it
//! is missing, a failure when CI=true.

use std::path::Path;
use std::process::Command;

const CSAP: &str = env!("CARGO_BIN_EXE_csap");
const UNITS: [&str; 2] = ["csap-server.service", "csap-mount@.service"];

#[test]
fn contrib_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze is missing (apt-get install systemd)"
        );
        eprintln!("skipped: systemd-analyze is missing (apt-get install systemd)");
        return;
    }
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for unit in UNITS {
        let text = std::fs::read_to_string(contrib.join(unit)).unwrap();
        assert!(
            text.contains("ExecStart=/usr/local/bin/csap "),
            "{unit}: the documented install path changed"
        );
        // The units name the installed binary; verify checks that it exists, so point them at
        // the one this test built.
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace("/usr/local/bin/csap", CSAP)).unwrap();
        paths.push(path);
    }
    // --man=no: the Documentation= pages exist only once `csap man` has installed them.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
