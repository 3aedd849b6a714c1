//! The viewer as the quickstart and the walkthrough use it: size and first bytes on success,
//! the OS error and a failing status when the mount (or anything else) refuses the open.

use std::process::Command;

const VIEW: &str = env!("CARGO_BIN_EXE_csap-view");

#[test]
fn it_shows_the_size_and_first_bytes() {
    let dir = tempfile_dir();
    let frame = dir.join("f0001.exr");
    std::fs::write(&frame, b"frame 1\x00\x01 and more bytes").unwrap();
    let out = Command::new(VIEW).arg(&frame).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("24 bytes; first bytes 66 72 61 6d 65 20 31 00 01 20 61 6e 64 20 6d 6f |frame 1.. and mo|"),
        "{stdout}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_refused_open_is_its_os_error_and_a_failure() {
    let out = Command::new(VIEW)
        .arg("/nonexistent/f0001.exr")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("cannot open /nonexistent/f0001.exr: No such file or directory"),
        "{stderr}"
    );
    let out = Command::new(VIEW).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no file is a usage error");
}

/// A directory of this test's own (the package has no dependencies, tempfile included).
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("csap-view-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
