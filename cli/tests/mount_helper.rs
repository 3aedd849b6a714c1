//! `mount.csap`, the helper mount(8) runs for `mount -t csap` and fstab lines, called as mount(8)
//! calls it (`mount.csap SPEC DIR -o OPTIONS`) through a symlink named like the installed one;
//! and what `--daemon` leaves behind: a log file without colour codes at the documented
//! default path, and a pid file for as long as the mount runs. The real mount needs FUSE.

#[path = "../../csapfs/tests/support/mod.rs"]
mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{is_mounted, Scratch};

const CSAP: &str = env!("CARGO_BIN_EXE_csap");

/// `DIR/mount.csap` → the csap binary under test, as `ln -s csap /sbin/mount.csap` installs it.
fn helper_in(dir: &Path) -> PathBuf {
    let helper = dir.join("mount.csap");
    std::os::unix::fs::symlink(CSAP, &helper).unwrap();
    helper
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fake_mount_shows_the_csap_mount_it_would_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(helper_in(dir.path()))
        .args(["/data/show.enc", "/mnt/show", "-fv", "-o"])
        .arg("defaults,noauto,key-file=/etc/csap/dev.key,cache=direct,ro")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "mount /data/show.enc /mnt/show --key-file /etc/csap/dev.key --cache direct -o ro --daemon"
        ),
        "{stderr}"
    );
}

#[test]
fn a_wrong_call_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(helper_in(dir.path()))
        .args(["/only-a-spec"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("mount.csap: usage: mount.csap BACKING MOUNTPOINT"),
        "{stderr}"
    );
}

#[test]
fn helper_mounts_as_a_daemon_with_a_log_and_a_pid_file() {
    require_fuse!();
    let scratch = Scratch::new();
    let helper = helper_in(scratch.dir.path());
    let state = scratch.dir.path().join("state");
    let runtime = scratch.dir.path().join("runtime");
    // The documented defaults (docs/operations.md): root's under /var/log and /run.
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let mnt = scratch.mnt.canonicalize().unwrap();
    let name = format!(
        "mount-{}",
        mnt.to_str()
            .unwrap()
            .trim_start_matches('/')
            .replace('/', "-")
    );
    let (log, pid_file) = if root {
        (
            PathBuf::from(format!("/var/log/csap/{name}.log")),
            PathBuf::from(format!("/run/csap/{name}.pid")),
        )
    } else {
        (
            state.join(format!("csap/{name}.log")),
            runtime.join(format!("csap/{name}.pid")),
        )
    };

    let out = Command::new(&helper)
        .arg(&scratch.backing)
        .arg(&scratch.mnt)
        .arg("-o")
        .arg(format!(
            "key-file={},cache=direct,noauto",
            scratch.key_file.display()
        ))
        .env("XDG_STATE_HOME", &state)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("CSAP_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mount.csap failed: {stderr}");
    assert!(
        is_mounted(&scratch.mnt),
        "not mounted after mount.csap returned"
    );

    // Served by the daemon: plaintext in the mount, ciphertext in the backing store.
    std::fs::write(scratch.mnt.join("frame.txt"), b"plain frame").unwrap();
    assert_eq!(
        std::fs::read(scratch.mnt.join("frame.txt")).unwrap(),
        b"plain frame"
    );
    let sealed = std::fs::read(scratch.backing.join("frame.txt")).unwrap();
    assert!(!sealed.windows(11).any(|w| w == b"plain frame"));

    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("pid file {}: {e}", pid_file.display()))
        .trim()
        .parse()
        .unwrap();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} is not running"
    );
    assert!(stderr.contains(&log.display().to_string()), "{stderr}");

    let unmount = Command::new(CSAP)
        .arg("umount")
        .arg(&scratch.mnt)
        .output()
        .unwrap();
    assert!(
        unmount.status.success(),
        "{}",
        String::from_utf8_lossy(&unmount.stderr)
    );
    wait_until("the pid file to go", || !pid_file.exists());

    let text = std::fs::read_to_string(&log).unwrap();
    if root {
        let _ = std::fs::remove_file(&log);
    }
    assert!(text.contains("mounted on"), "log: {text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in the log file: {text:?}"
    );
}
