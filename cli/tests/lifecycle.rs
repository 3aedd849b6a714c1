//! The life of a mount through the real `csap` binary (issue 14): `csap umount` returns once the
//! server is gone, so a remount at once stays mounted; an already-mounted or non-empty
//! mountpoint is refused with a sentence; a clean stop logs no unmount warning.

#[path = "../../csapfs/tests/support/mod.rs"]
mod support;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{detach, is_mounted, Scratch};

const CSAP: &str = env!("CARGO_BIN_EXE_csap");

fn csap(args: &[&OsStr]) -> Output {
    Command::new(CSAP).args(args).output().expect("run csap")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `csap mount BACKING MNT --key-file K --daemon --log-file LOG EXTRA…`; the daemon's pid.
fn mount_daemon(backing: &Path, mnt: &Path, key: &Path, log: &Path, extra: &[&str]) -> u32 {
    let mut args: Vec<&OsStr> = vec![
        "mount".as_ref(),
        backing.as_os_str(),
        mnt.as_os_str(),
        "--key-file".as_ref(),
        key.as_os_str(),
        "--daemon".as_ref(),
        "--log-file".as_ref(),
        log.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let out = csap(&args);
    assert!(out.status.success(), "csap mount: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("--daemon prints the daemon's pid")
}

fn umount(mnt: &Path) {
    let out = csap(&["umount".as_ref(), mnt.as_os_str()]);
    assert!(out.status.success(), "csap umount: {}", stderr(&out));
}

/// The source (for csapfs: the backing directory) of the mount exactly on `mnt`.
fn mounted_source(mnt: &Path) -> Option<String> {
    let mnt = mnt.canonicalize().ok()?.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .rev()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            (fields.get(4) == Some(&mnt.as_str()))
                .then(|| fields.get(sep + 2).map(|s| s.to_string()))?
        })
}

fn exited(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

fn exited_within(pid: u32, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while !exited(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn wait_exited(pid: u32) {
    assert!(
        exited_within(pid, Duration::from_secs(30)),
        "daemon {pid} did not exit"
    );
}

/// A second backing directory beside the scratch area's.
fn second_backing(scratch: &Scratch) -> PathBuf {
    let b = scratch.dir.path().join("backing-b");
    fs::create_dir(&b).unwrap();
    b
}

/// Issue 14: `csap mount A M; csap umount M; csap mount B M` left B mounted for ~0.5 s — the old
/// daemon's fuser teardown unmounted M again, taking B with it.
#[test]
fn issue_14_remount_at_once_stays_mounted() {
    require_fuse!();
    let scratch = Scratch::new();
    let backing_b = second_backing(&scratch);
    let log = scratch.dir.path().join("mount.log");
    let a = mount_daemon(&scratch.backing, &scratch.mnt, &scratch.key_file, &log, &[]);
    fs::write(scratch.mnt.join("frame"), b"through A").unwrap();
    umount(&scratch.mnt);
    // The daemon releases its claim as it exits: the kernel closes its files a moment before
    // it reaps the process.
    let a_gone = exited_within(a, Duration::from_millis(250));
    let b = mount_daemon(&backing_b, &scratch.mnt, &scratch.key_file, &log, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let source = mounted_source(&scratch.mnt);
    let expected = backing_b.canonicalize().unwrap().display().to_string();
    assert_eq!(
        source.as_deref(),
        Some(expected.as_str()),
        "B is not mounted a second later; log:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(a_gone, "csap umount returned before the daemon of A exited");
    fs::write(scratch.mnt.join("frame"), b"through B").unwrap();
    umount(&scratch.mnt);
    wait_exited(b);
    assert!(!is_mounted(&scratch.mnt));
}

/// Issue 14: a second `csap mount` on a mounted path stacked silently, and stopping it also
/// ended the first.
#[test]
fn issue_14_mounting_on_a_mount_point_is_refused() {
    require_fuse!();
    let scratch = Scratch::new();
    let backing_b = second_backing(&scratch);
    let log = scratch.dir.path().join("mount.log");
    let a = mount_daemon(&scratch.backing, &scratch.mnt, &scratch.key_file, &log, &[]);
    fs::write(scratch.mnt.join("kept"), b"served by A").unwrap();
    let canonical = scratch.mnt.canonicalize().unwrap();
    for daemon in [true, false] {
        let mut args: Vec<&OsStr> = vec![
            "mount".as_ref(),
            backing_b.as_os_str(),
            scratch.mnt.as_os_str(),
            "--key-file".as_ref(),
            scratch.key_file.as_os_str(),
        ];
        if daemon {
            args.push("--daemon".as_ref());
        }
        let out = Command::new(CSAP)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "a second mount was accepted: {err}");
        assert!(
            err.contains(&format!("{} is already a mount point", canonical.display()))
                && err.contains("csap umount"),
            "{err}"
        );
    }
    // A is still the one mounted, and still serving.
    let expected = scratch
        .backing
        .canonicalize()
        .unwrap()
        .display()
        .to_string();
    assert_eq!(
        mounted_source(&scratch.mnt).as_deref(),
        Some(expected.as_str())
    );
    assert_eq!(fs::read(scratch.mnt.join("kept")).unwrap(), b"served by A");
    umount(&scratch.mnt);
    wait_exited(a);
}

/// Issue 14: a non-empty mountpoint was accepted (its files silently hidden); `-o nonempty`
/// says that is meant.
#[test]
fn issue_14_non_empty_mountpoint_is_refused_unless_nonempty() {
    require_fuse!();
    let scratch = Scratch::new();
    fs::write(scratch.mnt.join("left-behind"), b"underneath").unwrap();
    let out = csap(&[
        "mount".as_ref(),
        scratch.backing.as_os_str(),
        scratch.mnt.as_os_str(),
        "--key-file".as_ref(),
        scratch.key_file.as_os_str(),
        "--daemon".as_ref(),
    ]);
    let err = stderr(&out);
    assert!(!out.status.success(), "mounted over a non-empty directory");
    let canonical = scratch.mnt.canonicalize().unwrap();
    assert!(
        err.contains(&format!("{} is not empty", canonical.display()))
            && err.contains("-o nonempty"),
        "{err}"
    );
    assert!(!is_mounted(&scratch.mnt));

    let log = scratch.dir.path().join("mount.log");
    let pid = mount_daemon(
        &scratch.backing,
        &scratch.mnt,
        &scratch.key_file,
        &log,
        &["-o", "nonempty"],
    );
    assert!(
        !scratch.mnt.join("left-behind").exists(),
        "hidden while mounted"
    );
    umount(&scratch.mnt);
    wait_exited(pid);
    assert_eq!(
        fs::read(scratch.mnt.join("left-behind")).unwrap(),
        b"underneath"
    );
}

/// Issue 14: every clean stop logged `Unmount failed: Invalid argument` (fuser unmounting the
/// path a second time) — after `csap umount` and after SIGTERM alike.
#[test]
fn issue_14_clean_stop_logs_no_unmount_warning() {
    require_fuse!();
    let scratch = Scratch::new();
    let log = scratch.dir.path().join("umount.log");
    let pid = mount_daemon(&scratch.backing, &scratch.mnt, &scratch.key_file, &log, &[]);
    fs::write(scratch.mnt.join("f"), b"flushed at the stop").unwrap();
    umount(&scratch.mnt);
    wait_exited(pid);

    let term_log = scratch.dir.path().join("sigterm.log");
    let pid = mount_daemon(
        &scratch.backing,
        &scratch.mnt,
        &scratch.key_file,
        &term_log,
        &[],
    );
    assert_eq!(
        fs::read(scratch.mnt.join("f")).unwrap(),
        b"flushed at the stop"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_exited(pid);
    detach(&scratch.mnt);

    for log in [&log, &term_log] {
        let text = fs::read_to_string(log).unwrap();
        assert!(
            text.contains("mounted on"),
            "{} is not the daemon's log:\n{text}",
            log.display()
        );
        assert!(
            !text.to_lowercase().contains("unmount failed") && !text.contains("Invalid argument"),
            "{}:\n{text}",
            log.display()
        );
    }
}
