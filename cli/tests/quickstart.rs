//! `csap quickstart` end to end: embedded server, enrollment, licensed import, a real FUSE
//! mount with `--server`, an allowed read by the registered viewer and a denied `cat`.
//! Needs FUSE: skipped (with a message) where /dev/fuse is unusable, a failure when CI=true.

#[path = "../../csapfs/tests/support/mod.rs"]
mod support;

use std::process::Command;

const CSAP: &str = env!("CARGO_BIN_EXE_csap");

/// Runs a quickstart to success and returns what it printed on stdout.
fn quickstart_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run csap quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quickstart failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // A clean run warns of nothing (its stop once logged the key server's lost ARDS poll).
    assert!(!stderr.contains("WARN"), "quickstart warned:\n{stderr}");
    stdout
}

/// The mount's own denial of cat is in the audit trail under the frame's path.
fn assert_audit_shows_the_mount_denial(stdout: &str) {
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("mount     deny  read")),
        "the mount's denial of cat missing from the audit query:\n{stdout}"
    );
}

#[test]
fn quickstart_allows_the_viewer_and_denies_cat() {
    require_fuse!();
    // The viewer must sit beside csap: `cargo test --workspace` builds it for its own test.
    let viewer = std::path::Path::new(CSAP).with_file_name("csap-view");
    assert!(
        viewer.exists(),
        "{} missing: build it with `cargo build -p csap-view`",
        viewer.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("qs");
    let stdout = quickstart_ok(Command::new(CSAP).arg("quickstart").arg("--dir").arg(&work));
    assert!(
        stdout.contains("first bytes"),
        "viewer output missing:\n{stdout}"
    );
    assert!(
        stdout.contains("Permission denied"),
        "cat denial missing:\n{stdout}"
    );
    assert_audit_shows_the_mount_denial(&stdout);
    // Cleaned up: nothing is mounted on the mountpoint any more.
    let mnt = work.join("mnt").canonicalize().unwrap();
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !table
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap())),
        "mount left behind on {}",
        mnt.display()
    );
    // A second run into the same directory is refused with a clear message, not a crash.
    let again = Command::new(CSAP)
        .arg("quickstart")
        .arg("--dir")
        .arg(&work)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a quickstart"));
}

#[test]
fn quickstart_without_dir_removes_its_keys_and_password() {
    require_fuse!();
    // std::env::temp_dir() follows TMPDIR: the default working directory lands in here.
    let tmp = tempfile::tempdir().unwrap();
    let stdout = quickstart_ok(
        Command::new(CSAP)
            .arg("quickstart")
            .env("TMPDIR", tmp.path()),
    );
    // Its "every grant and denial" section has the mount's refusal of cat.
    assert_audit_shows_the_mount_denial(&stdout);
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}\n{stdout}");
    assert!(stdout.contains("is removed"), "{stdout}");
    // Nothing to continue in, so no instructions that point into the removed directory.
    assert!(!stdout.contains("Continue by hand"), "{stdout}");
}
