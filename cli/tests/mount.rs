//! `csap mount` / `csap umount` as real processes: crash safety (kill -9), signals, --daemon,
//! and interoperability with `csap asset encrypt|decrypt`. Shares the harness of
//! `csapfs/tests/mount.rs`.

#[path = "../../csapfs/tests/support/mod.rs"]
mod support;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{is_mounted, ProcessMount, Rng, Scratch};

const CSAP: &str = env!("CARGO_BIN_EXE_csap");

fn csap(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(CSAP).args(args).output().expect("run csap")
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `csap mount ARGS… --daemon` with its log and pid file in the scratch directory (the
/// defaults as root, /var/log/csap and /run/csap, would outlive it): what it printed, the log,
/// the pid file.
fn mount_daemon(
    scratch: &Scratch,
    args: &[&std::ffi::OsStr],
) -> (std::process::Output, std::path::PathBuf, std::path::PathBuf) {
    let log = scratch.dir.path().join("daemon.log");
    let pid_file = scratch.dir.path().join("daemon.pid");
    let mut all = vec!["mount".as_ref()];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--daemon".as_ref(),
        "--log-file".as_ref(),
        log.as_os_str(),
        "--pid-file".as_ref(),
        pid_file.as_os_str(),
    ]);
    (csap(&all), log, pid_file)
}

#[test]
fn kill_9_during_writes_keeps_fsynced_data() {
    require_fuse!();
    let scratch = Scratch::new();
    let mut rng = Rng(99);
    let durable = rng.bytes(3 << 20);
    let synced_prefix = rng.bytes(1 << 20);

    let mount = ProcessMount::start(CSAP, &scratch, &["--cache", "direct"]);
    let file = File::create(scratch.mnt.join("durable.bin")).unwrap();
    file.write_all_at(&durable, 0).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let torn = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(scratch.mnt.join("torn.bin"))
        .unwrap();
    torn.write_all_at(&synced_prefix, 0).unwrap();
    torn.sync_all().unwrap();

    // Keep appending and rewriting past the synced prefix while the daemon is killed.
    let writer = std::thread::spawn(move || {
        let mut rng = Rng(5);
        let mut at = 1u64 << 20;
        let mut writes = 0u32;
        loop {
            let piece = rng.bytes(100_000);
            if torn.write_all_at(&piece, at).is_err() {
                return writes;
            }
            at += 70_000; // overlaps the previous write: read-modify-write of partial chunks
            writes += 1;
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    mount.kill();
    let writes = writer.join().unwrap();
    assert!(writes > 0, "the writer should have been mid-stream");

    let _mount = ProcessMount::start(CSAP, &scratch, &["--cache", "direct"]);
    assert_eq!(fs::read(scratch.mnt.join("durable.bin")).unwrap(), durable);
    // The header is intact (the file opens) and the fsynced prefix is exactly what was synced.
    let torn = File::open(scratch.mnt.join("torn.bin")).expect("header must not be torn");
    let mut prefix = vec![0u8; synced_prefix.len()];
    torn.read_exact_at(&mut prefix, 0).unwrap();
    assert!(
        prefix == synced_prefix,
        "fsynced data changed after a crash"
    );
    // Past the synced prefix: whatever survived, or EIO — never unauthenticated bytes. An
    // interrupted extension is rolled back to the size before it (FORMAT.md §6), but a SIGKILL
    // can cut a multi-page pwrite inside a chunk being rewritten in place (these writes overlap),
    // and that unsynced chunk then fails to authenticate.
    match fs::read(scratch.mnt.join("torn.bin")) {
        Ok(whole) => assert!(
            whole.len() >= synced_prefix.len() && whole[..synced_prefix.len()] == synced_prefix[..]
        ),
        Err(err) => assert_eq!(err.raw_os_error(), Some(5), "only EIO is acceptable: {err}"),
    }
}

#[test]
fn asset_encrypt_and_mount_read_each_other() {
    require_fuse!();
    let scratch = Scratch::new();
    let plain = Rng(1).bytes(300_000);
    let plain_path = scratch.dir.path().join("plain.bin");
    fs::write(&plain_path, &plain).unwrap();
    let out = csap(&[
        "asset".as_ref(),
        "encrypt".as_ref(),
        "--key-file".as_ref(),
        scratch.key_file.as_os_str(),
        "--chunk-size".as_ref(),
        "16384".as_ref(),
        plain_path.as_os_str(),
        scratch.backing.join("from_cli.bin").as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mount = ProcessMount::start(CSAP, &scratch, &[]);
    assert_eq!(fs::read(scratch.mnt.join("from_cli.bin")).unwrap(), plain);
    fs::write(scratch.mnt.join("from_mount.bin"), &plain).unwrap();
    drop(mount);

    let decrypted = scratch.dir.path().join("decrypted.bin");
    let out = csap(&[
        "asset".as_ref(),
        "decrypt".as_ref(),
        "--key-file".as_ref(),
        scratch.key_file.as_os_str(),
        scratch.backing.join("from_mount.bin").as_os_str(),
        decrypted.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(&decrypted).unwrap(), plain);
}

#[test]
fn sigterm_unmounts_and_exits_cleanly() {
    require_fuse!();
    let scratch = Scratch::new();
    let mut mount = ProcessMount::start(CSAP, &scratch, &["--cache", "page"]);
    fs::write(scratch.mnt.join("f"), b"written before SIGTERM").unwrap();
    let pid = nix::unistd::Pid::from_raw(mount.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut status = None;
    wait_until("the mount process to exit", || {
        status = mount.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "exit status {status:?}");
    assert!(!is_mounted(&scratch.mnt));
    let decrypted = scratch.dir.path().join("out");
    let out = csap(&[
        "asset".as_ref(),
        "decrypt".as_ref(),
        "--key-file".as_ref(),
        scratch.key_file.as_os_str(),
        scratch.backing.join("f").as_os_str(),
        decrypted.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(&decrypted).unwrap(), b"written before SIGTERM");
}

#[test]
fn daemon_mode_and_csap_umount() {
    require_fuse!();
    let scratch = Scratch::new();
    let (out, _, pid_file) = mount_daemon(
        &scratch,
        &[
            scratch.backing.as_os_str(),
            scratch.mnt.as_os_str(),
            "--key-file".as_ref(),
            scratch.key_file.as_os_str(),
            "-o".as_ref(),
            "noatime".as_ref(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("daemon prints its pid");
    assert!(is_mounted(&scratch.mnt), "mounted when --daemon returns");
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    fs::write(scratch.mnt.join("x"), b"via the daemon").unwrap();
    assert_eq!(fs::read(scratch.mnt.join("x")).unwrap(), b"via the daemon");

    let out = csap(&["umount".as_ref(), scratch.mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&scratch.mnt));
    // The daemon notices the unmount and exits (it is not our child: poll /proc).
    wait_until("the daemon to exit", || {
        fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    });
    assert!(!pid_file.exists(), "the pid file outlived the daemon");

    let out = csap(&["umount".as_ref(), scratch.mnt.as_os_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a mount point"));
}

/// A metrics listener that cannot bind fails `--daemon` before its pid file exists: the launch
/// reports the daemon's exit (naming its log, which says why), and nothing stays mounted.
#[test]
fn a_metrics_listener_that_cannot_bind_fails_the_daemon_start() {
    require_fuse!();
    let scratch = Scratch::new();
    // TEST-NET-1: no interface of this host has it.
    let (out, log, pid_file) = mount_daemon(
        &scratch,
        &[
            scratch.backing.as_os_str(),
            scratch.mnt.as_os_str(),
            "--key-file".as_ref(),
            scratch.key_file.as_os_str(),
            "--metrics-listen".as_ref(),
            "192.0.2.1:9".as_ref(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("before mounting") && err.contains("daemon.log"),
        "{err}"
    );
    let logged = fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("the metrics listener cannot bind 192.0.2.1:9"),
        "{logged}"
    );
    wait_until("the failed mount to go away", || !is_mounted(&scratch.mnt));
    assert!(!pid_file.exists());
}

/// `csap mount --config FILE --daemon`: the file alone names the backing directory, the
/// mountpoint, the key and the options, as the flags would (the background process reads the
/// same file); the metrics textfile it names is written.
#[test]
fn a_config_file_mounts_as_its_flags_would() {
    require_fuse!();
    let scratch = Scratch::new();
    let dir = scratch.dir.path();
    let textfile = dir.join("mount.prom");
    let config = dir.join("mount.toml");
    fs::write(
        &config,
        format!(
            "backing = {:?}\nmountpoint = {:?}\nkey-file = {:?}\noptions = [\"noatime\"]\n\
             cache = \"page\"\nmetrics-textfile = {:?}\n",
            scratch.backing, scratch.mnt, scratch.key_file, textfile
        ),
    )
    .unwrap();
    let (out, _, _) = mount_daemon(&scratch, &["--config".as_ref(), config.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&scratch.mnt), "mounted from the config file");
    fs::write(scratch.mnt.join("x"), b"via the config file").unwrap();
    assert_eq!(
        fs::read(scratch.mnt.join("x")).unwrap(),
        b"via the config file"
    );
    let stored = fs::read(scratch.backing.join("x")).unwrap();
    assert!(
        !stored.windows(6).any(|w| w == b"config"),
        "the backing file holds plaintext"
    );
    // A key-file mount has no license series to export; the file's existence shows the key
    // was honoured (it is written at start and every refresh).
    wait_until("the metrics textfile", || textfile.exists());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(scratch.mnt.to_str().unwrap()))
        .expect("the mount in mountinfo");
    assert!(line.contains("noatime"), "the file's options apply: {line}");

    let out = csap(&["umount".as_ref(), scratch.mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&scratch.mnt));
}

/// `cp -a` tries to copy each file's ACL (`system.posix_acl_access`), which the mount does not
/// keep: the copy succeeds, and the mount's log says so once, not once per file.
#[test]
fn copying_a_tree_with_cp_a_warns_once_about_unsupported_attributes() {
    require_fuse!();
    let scratch = Scratch::new();
    let dir = scratch.dir.path();
    let src = dir.join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..5 {
        fs::write(src.join(format!("f{i}")), format!("frame {i}")).unwrap();
    }
    let (out, log, _) = mount_daemon(
        &scratch,
        &[
            scratch.backing.as_os_str(),
            scratch.mnt.as_os_str(),
            "--key-file".as_ref(),
            scratch.key_file.as_os_str(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(scratch.mnt.join("tree"))
        .output()
        .unwrap();
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    for i in 0..5 {
        assert_eq!(
            fs::read_to_string(scratch.mnt.join(format!("tree/f{i}"))).unwrap(),
            format!("frame {i}")
        );
    }
    let out = csap(&["umount".as_ref(), scratch.mnt.as_os_str()]);
    assert!(out.status.success());
    let text = fs::read_to_string(&log).unwrap();
    let warnings = text
        .lines()
        .filter(|l| l.contains("extended attribute refused"))
        .count();
    assert_eq!(warnings, 1, "one warning for the whole copy:\n{text}");
}
