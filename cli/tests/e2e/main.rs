//! The mount as a policy enforcement point, end to end: `csap server` (authz, ARDS, key server
//! over TLS), an enrolled device, real `csap mount` processes with the key-server flags, and
//! approved programs run as separate processes. The harness is in [`fixture`], on the shared
//! fixture of `csap-testkit`.

mod binding;
mod code;
mod fixture;
mod mappings;
mod postgres;
mod ratelimit;
mod replica_fault;
mod revocation;
mod tokens;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use csapfs::fs::{CacheMode, MountOptions};

use csap_testkit::{eventually, run};
use fixture::{bash, bash_as, Env, Reader, Req};

/// Through the mount, reads go straight to it (no page cache hides a denial).
fn direct() -> MountOptions {
    MountOptions {
        cache: CacheMode::Direct,
        readahead_kb: 0,
        ..MountOptions::default()
    }
}

/// A bash that opens `file` and copies all of it to stdout (the open is attested as bash).
fn read_all(file: &std::path::Path) -> String {
    format!(
        "exec 3< '{}' && dd bs=1M iflag=fullblock status=none <&3",
        file.display()
    )
}

/// Opens `file` with bash (attested as bash): (success, stderr).
fn bash_open(file: &std::path::Path) -> (bool, String) {
    bash(&format!("exec 3< '{}'", file.display()))
}

/// A fresh open of `file` by the approved bash is refused with EACCES.
fn assert_open_denied(file: &std::path::Path, when: &str) {
    let (ok, err) = bash_open(file);
    assert!(
        !ok && err.contains("Permission denied"),
        "open {when}: {err}"
    );
}

/// Until the mount (and the key server) have a rule that lets bash open `file`.
fn wait_until_bash_opens(file: &std::path::Path) {
    eventually("the rule at the mount", Duration::from_secs(10), || {
        bash_open(file).0
    });
}

/// `out` is a successful run that printed the sample frame's plaintext.
fn assert_frame(env: &Env, out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not assert_eq: a mismatch must not print a megabyte.
    assert!(out.stdout == env.frame, "{what}: not the frame's plaintext");
}

fn denied(out: &std::process::Output) -> bool {
    !out.status.success()
        && out.stdout.is_empty()
        && String::from_utf8_lossy(&out.stderr).contains("Permission denied")
}

/// - local rules deny create and unlink (approved apps, no create/delete rule) with EACCES
///   and without a key server round trip (no new audit record);
/// - cancelling the authz request makes an already-open handle's next read fail with
///   EACCES within 1 s;
/// - a rule released ahead of its window is pre-loaded: the first open makes no round trip;
/// - `LD_PRELOAD` injection is denied, also by exec under a pid whose attestation the mount
///   remembers;
/// - with the key server (and ARDS) stopped, an already-licensed frame still reads and
///   opens, an unlicensed one is denied.
#[test]
fn mount_enforces_local_rules_revocation_and_outage() {
    let Some(mut env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    let (bash_digest, cat_digest) = (env.apps.bash.clone(), env.apps.cat.clone());
    // Readers may read; the importer may create (and is not a running program here).
    let view = env.submit(&Req::now(
        "view",
        &[&env.apps.bash, &env.apps.rm, &env.apps.perl],
        &["read"],
    ));
    env.with_frames(&["f1.raw", "b/f2.raw"]);

    let args = env.args();
    let (mnt, mounted) = env.mount("mnt", &args, &direct());
    let (f1, f2) = (mnt.join("samples/f1.raw"), mnt.join("samples/b/f2.raw"));
    // The same volume through the page cache, where reads may never reach the mount:
    // revocation must drop the cached plaintext too.
    let page = MountOptions {
        cache: CacheMode::Page,
        ..direct()
    };
    let (mnt_page, mounted_page) = env.mount("mnt-page", &args, &page);

    // Local rules: an approved app without a create/delete rule is refused at once.
    let before = env.last_audit();
    let new_file = mnt.join("samples/new.raw");
    let (ok, err) = bash(&format!(": > '{}'", new_file.display()));
    assert!(!ok && err.contains("Permission denied"), "create: {err}");
    assert!(
        !env.backing.join("samples/new.raw").exists(),
        "denied create left a file"
    );
    let mut rm = Command::new("/bin/rm");
    rm.arg(&f2);
    let out = run(rm);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Permission denied"),
        "unlink: {err}"
    );
    assert!(env.backing.join("samples/b/f2.raw").exists());
    // Rename (delete + create) and truncate (write) by an app that may only read.
    let perl = |code: &str| {
        let mut cmd = Command::new("/usr/bin/perl");
        cmd.args(["-e", code])
            .arg(&f2)
            .arg(mnt.join("samples/moved.raw"));
        let out = run(cmd);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = perl(r#"rename($ARGV[0], $ARGV[1]) or die "$!\n""#);
    assert!(!ok && err.contains("Permission denied"), "rename: {err}");
    let (ok, err) = perl(r#"truncate($ARGV[0], 10) or die "$!\n""#);
    assert!(!ok && err.contains("Permission denied"), "truncate: {err}");
    assert!(env.backing.join("samples/b/f2.raw").exists());
    assert!(!env.backing.join("samples/moved.raw").exists());
    assert_eq!(
        env.last_audit(),
        before,
        "local denials must not reach the key server"
    );

    // Revocation: an open handle fails its next read within 1 s of the cancel, on both
    // mounts (the page-cache one has the next pages cached by readahead already).
    let mut reader = Reader::open(&f1);
    let mut page_reader = Reader::rereading(&mnt_page.join("samples/f1.raw"));
    assert_eq!(reader.read(), "ok");
    assert_eq!(page_reader.read(), "ok");
    let cancelled = Instant::now();
    env.cancel(&view);
    for (what, reader) in [("direct", &mut reader), ("page cache", &mut page_reader)] {
        let (answer, took) = reader.until_refused(cancelled, Duration::from_secs(5));
        eprintln!("revocation reached the open {what} handle in {took:?}");
        assert!(
            answer.contains("Permission denied"),
            "{what}: after revocation: {answer:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "{what}: revocation took {took:?}"
        );
    }
    drop((reader, page_reader));
    mounted_page.unmount().unwrap();
    assert_open_denied(&f1, "after revocation");

    // Outage: re-grant, license f1, then stop every service.
    env.submit(&Req::now("view2", &[&bash_digest], &["read"]));
    // Until the mount has the new rule too.
    wait_until_bash_opens(&f1);
    let mut reader = Reader::open(&f1);
    assert_eq!(reader.read(), "ok");

    // Pre-loading: a rule for `cat` released ahead of its window (opens in 2 s); when the
    // window opens the mount licenses the covered assets itself, so cat's first open of
    // f2 makes no key server round trip.
    let soon = keyserver::now().expect("system clock usable") + 2;
    env.submit_pending(
        &Req {
            name: "pre",
            apps: &[&cat_digest],
            actions: &["read"],
            window: (soon, soon + 3600),
        },
        &[fixture::DEVICE],
    );
    let cat = || {
        let mut cmd = Command::new("/bin/cat");
        cmd.arg(&f2);
        cmd
    };
    // Before the window opens, cat is not yet allowed.
    let early = run(cat());
    assert!(
        denied(&early),
        "cat before its rule's window: {}",
        String::from_utf8_lossy(&early.stderr)
    );
    eventually(
        "the mount pre-loading cat's licenses",
        Duration::from_secs(20),
        || {
            env.audit().iter().any(|r| {
                r.decision == "grant" && r.app_digest.as_deref() == Some(cat_digest.as_str())
            })
        },
    );
    // Let the batch land in the mount's cache (the grant is audited before it answers).
    std::thread::sleep(Duration::from_millis(300));
    let before = env.last_audit();
    let out = run(cat());
    assert_frame(&env, &out, "cat of a pre-loaded frame");
    assert_eq!(
        env.last_audit(),
        before,
        "first open of a pre-loaded asset made a round trip"
    );
    // The same approved binary with a library injected through the environment is not the
    // approved application: denied, although its license is cached.
    let mut injected = cat();
    injected.env("LD_PRELOAD", "/lib/x86_64-linux-gnu/libm.so.6");
    let injected = run(injected);
    assert!(
        denied(&injected),
        "LD_PRELOAD injection into an approved app: {}",
        String::from_utf8_lossy(&injected.stderr)
    );
    // The same injection by exec under a pid the mount already attested and remembers: the
    // approved bash opens f1, then becomes bash with LD_PRELOAD (same pid, same binary).
    let f = f1.display();
    let same_pid = bash_as(
        None,
        &format!(
            "exec 3< '{f}' && echo first-open; exec 3<&-; \
             exec env LD_PRELOAD=/lib/x86_64-linux-gnu/libm.so.6 /bin/bash -c \
             \"exec 4< '{f}' && echo second-open\""
        ),
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&same_pid.stdout),
        String::from_utf8_lossy(&same_pid.stderr),
    );
    assert!(
        stdout.contains("first-open")
            && !stdout.contains("second-open")
            && stderr.contains("Permission denied"),
        "exec with LD_PRELOAD after an attested open: {stdout} / {stderr}"
    );

    env.stop();
    assert_eq!(reader.read(), "ok", "a held license must keep working");
    let (ok, err) = bash(&format!(
        "exec 3< '{}' && dd bs=4096 count=1 of=/dev/null <&3",
        f1.display()
    ));
    assert!(
        ok,
        "re-open of a licensed frame while the key server is down: {err}"
    );
    assert_open_denied(&f2, "unlicensed frame while down");
    drop(reader);
    mounted.unmount().unwrap();
}

/// With `-o allow_other`, the approved application run by another uid is denied (EACCES)
/// because that uid has no session, although the kernel's permission check lets it in; the
/// mounting user's run of the same program reads the plaintext, and the other uid does too
/// once it has a session.
#[test]
fn another_uid_without_a_session_is_denied() {
    const NOBODY: u32 = 65534;
    let Some(env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    env.submit(&Req::now("view", &[&env.apps.bash], &["read"]));
    env.with_frames(&["f1.raw"]);
    // World-readable all the way down: any denial is the mount's, not the kernel's.
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(env.dir.path(), 0o755);
    mode(&env.backing, 0o755);
    mode(&env.backing.join("samples"), 0o755);
    mode(&env.backing.join("samples/f1.raw"), 0o644);
    // uid 65534's session is a token file the mount re-reads at every license request (a
    // token issued for uid 65534 on this device, as `csap login --uid` issues it); it is
    // removed right after mounting and restored at the end.
    let nobody_token = env.dir.path().join("nobody.token");
    let (issued_for_nobody, _) = env
        .rt
        .block_on(env.client.login("alice", fixture::PASSWORD, NOBODY))
        .unwrap();
    issued_for_nobody.save(&nobody_token).unwrap();
    let mut args = env.args();
    args.token_file
        .push(format!("{NOBODY}:{}", nobody_token.display()));
    let options = MountOptions {
        allow_other: true,
        ..direct()
    };
    let (mnt, mounted) = env.mount("mnt", &args, &options);
    std::fs::remove_file(&nobody_token).unwrap();
    let f1 = mnt.join("samples/f1.raw");

    wait_until_bash_opens(&f1);
    let mine = bash_as(None, &read_all(&f1));
    assert_frame(&env, &mine, "the session's uid");

    let kernel_lets_in = bash_as(
        Some(NOBODY),
        &format!("[ -r '{0}' ] && ls '{0}'", f1.display()),
    );
    assert!(
        kernel_lets_in.status.success(),
        "uid {NOBODY} cannot even reach the file: {}",
        String::from_utf8_lossy(&kernel_lets_in.stderr)
    );
    let theirs = bash_as(Some(NOBODY), &read_all(&f1));
    assert!(
        denied(&theirs),
        "uid {NOBODY} without a session: {}",
        String::from_utf8_lossy(&theirs.stderr)
    );

    // The only difference was the session.
    issued_for_nobody.save(&nobody_token).unwrap();
    let theirs = bash_as(Some(NOBODY), &read_all(&f1));
    assert_frame(&env, &theirs, &format!("uid {NOBODY} with a session"));
    mounted.unmount().unwrap();
}

/// A rule whose window ends during the test: reads work inside it; at its end the open
/// handle's next read fails (the lease ends at the license's `not_after`, within a second),
/// and a fresh open is denied.
#[test]
fn the_end_of_a_window_ends_open_handles_and_new_opens() {
    let Some(env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    env.with_frames(&["f1.raw"]);
    let (mnt, mounted) = env.mount("mnt", &env.args(), &direct());
    let f1 = mnt.join("samples/f1.raw");
    let end = keyserver::now().expect("system clock usable") + 6;
    env.submit(&Req {
        name: "brief",
        apps: &[&env.apps.bash],
        actions: &["read"],
        window: (end - 60, end),
    });
    wait_until_bash_opens(&f1);
    let mut reader = Reader::open(&f1);
    assert_eq!(reader.read(), "ok");
    let end_at = UNIX_EPOCH + Duration::from_secs(end as u64);
    let left = end_at
        .duration_since(SystemTime::now())
        .expect("the setup outlasted the window");
    let since = Instant::now();
    let (answer, took) = reader.until_refused(since, left + Duration::from_secs(3));
    eprintln!(
        "the window's end reached the open handle after {:?}",
        took.saturating_sub(left)
    );
    assert!(
        answer.contains("Permission denied"),
        "read after the window: {answer:?}"
    );
    assert!(
        took + Duration::from_millis(100) >= left,
        "refused {:?} before the window ended",
        left - took
    );
    assert!(
        took < left + Duration::from_secs(1),
        "the open handle read for {:?} after the window",
        took - left
    );
    assert_open_denied(&f1, "after the window");
    drop(reader);
    mounted.unmount().unwrap();
}

/// The server stops and starts again on the same ports and data directory while the mount
/// keeps running: an asset never licensed before gets its license from the restarted server
/// and reads correctly, earlier ones still read, and the mount's ARDS subscription resumes
/// (a rule issued after the restart reaches it).
#[test]
fn a_server_restart_keeps_the_mount_decrypting() {
    let Some(mut env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    env.submit(&Req::now("view", &[&env.apps.bash], &["read"]));
    env.with_frames(&["f1.raw", "b/f2.raw"]);
    let (mnt, mounted) = env.mount("mnt", &env.args(), &direct());
    let (f1, f2) = (mnt.join("samples/f1.raw"), mnt.join("samples/b/f2.raw"));
    wait_until_bash_opens(&f1);
    let mut reader = Reader::open(&f1);
    assert_eq!(reader.read(), "ok");

    let urls = |env: &Env| {
        let s = env.server();
        (
            s.authz_url.clone(),
            s.ards_url.clone(),
            s.keyserver_url.clone(),
        )
    };
    let before_restart = urls(&env);
    env.restart();
    assert_eq!(urls(&env), before_restart, "restarted on other ports");

    let before = env.last_audit();
    let out = bash_as(None, &read_all(&f2));
    assert_frame(&env, &out, "never-licensed frame after the restart");
    assert!(
        env.audit().iter().any(|r| r.id > before
            && r.decision == "grant"
            && r.app_digest.as_deref() == Some(env.apps.bash.as_str())),
        "f2's license did not come from the restarted server"
    );
    assert_eq!(reader.read(), "ok", "an open handle after the restart");
    let out = bash_as(None, &read_all(&f1));
    assert_frame(&env, &out, "re-open of f1 after the restart");

    env.submit(&Req::now("after", &[&env.apps.cat], &["read"]));
    eventually(
        "a rule issued after the restart at the mount",
        Duration::from_secs(15),
        || {
            let mut cat = Command::new("/bin/cat");
            cat.arg(&f2);
            let out = run(cat);
            out.status.success() && out.stdout == env.frame
        },
    );
    drop(reader);
    mounted.unmount().unwrap();
}

/// Opening for writing asks the key server for a `write` license: with only a read rule and
/// no local rules on the mount, the key server itself refuses (audited as a `write` denial);
/// with a write rule the same open succeeds and the write lands.
#[test]
fn opening_for_write_needs_a_write_license() {
    let Some(env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    env.submit(&Req::now("view", &[&env.apps.bash], &["read"]));
    env.with_frames(&["f1.raw"]);
    let mut args = env.args();
    args.ards = None;
    let (mnt, mounted) = env.mount("mnt", &args, &direct());
    let f1 = mnt.join("samples/f1.raw");
    let (ok, err) = bash_open(&f1);
    assert!(ok, "read open: {err}");

    // Someone else's open handle lends nothing: with f1 open for reading by the approved
    // bash, perl (registered, no rule at all) truncating it by path is refused by the key
    // server, and the asset is untouched.
    let mut holder = Reader::open(&f1);
    assert_eq!(holder.read(), "ok");
    let mut perl = Command::new("/usr/bin/perl");
    perl.args(["-e", r#"truncate($ARGV[0], 10) or die "$!\n""#])
        .arg(&f1);
    let out = run(perl);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Permission denied"),
        "truncate of an open asset without a write license: {err}"
    );
    let out = bash_as(None, &read_all(&f1));
    assert!(
        out.status.success() && out.stdout == env.frame,
        "the asset changed"
    );
    drop(holder);

    let before = env.last_audit();
    let write = format!("exec 3<> '{}' && printf XYZ >&3", f1.display());
    let (ok, err) = bash(&write);
    assert!(
        !ok && err.contains("Permission denied"),
        "write open with a read rule: {err}"
    );
    assert!(
        env.audit()
            .iter()
            .any(|r| r.id > before && r.decision == "deny" && r.action == "write"),
        "the key server was not asked for a write license"
    );

    env.submit(&Req::now("edit", &[&env.apps.bash], &["write"]));
    let (ok, err) = bash(&write);
    assert!(ok, "write open with a write rule: {err}");
    let out = bash_as(None, &read_all(&f1));
    assert!(out.status.success());
    let mut expected = env.frame.clone();
    expected[..3].copy_from_slice(b"XYZ");
    assert!(out.stdout == expected, "the write did not land as written");
    mounted.unmount().unwrap();
}

/// The creator's handle holds the create license's lease: withdrawing the create rule makes
/// its next write (and read) fail with EACCES within 1 s.
#[test]
fn revoking_the_create_rule_ends_the_creators_handle() {
    let Some(env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    let (mnt, mounted) = env.mount("mnt", &env.args(), &direct());
    let create = env.submit(&Req::now("make", &[&env.apps.perl], &["create"]));
    let probe = mnt.join("samples/probe.raw");
    eventually(
        "the create rule at the mount",
        Duration::from_secs(10),
        || {
            let mut perl = Command::new("/usr/bin/perl");
            perl.args([
                "-e",
                r#"use Fcntl; sysopen(my $f, $ARGV[0], O_RDWR|O_CREAT|O_EXCL) or die "$!\n""#,
            ])
            .arg(&probe);
            run(perl).status.success()
        },
    );
    let mut creator = Reader::creating(&mnt.join("samples/new.raw"));
    assert_eq!(creator.read(), "ok");
    let cancelled = Instant::now();
    env.cancel(&create);
    let (answer, took) = creator.until_refused(cancelled, Duration::from_secs(5));
    eprintln!("revocation reached the creator's handle in {took:?}");
    assert!(
        answer.contains("Permission denied"),
        "creator after revocation: {answer:?}"
    );
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");
    drop(creator);
    mounted.unmount().unwrap();
}

/// The mount's own decisions reach the one audit trail, through outages and restarts:
/// - an unregistered program (`head`) and a registered one without a rule (`cat`) are denied
///   by the mount's local rules: both appear under their path with user, uid, app, device;
/// - a re-open served from the held license is a mount grant (`license_cache`);
/// - after a key server restart, the mount's license session still serves (the key server
///   keeps sessions in its store): no 401 `session_unknown` is on record;
/// - with the key server down, the mount's denials (local rules, key server unreachable) are
///   spooled; the mount is unmounted and mounted again, the server restarted: each record
///   arrives exactly once, and another remount sends nothing twice.
#[test]
fn mount_decisions_reach_the_audit_trail_through_outages_and_restarts() {
    let Some(mut env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    env.submit(&Req::now("view", &[&env.apps.bash], &["read"]));
    env.with_frames(&["f1.raw", "b/f2.raw", "c/f3.raw"]);
    let head = csap_testkit::digest_of("/usr/bin/head").unwrap();
    let args = env.args();
    let (mnt, mounted) = env.mount("mnt", &args, &direct());
    // One directory each, so no open licenses another frame as its sibling.
    let frame = |n: u32| {
        mnt.join(["samples/f1.raw", "samples/b/f2.raw", "samples/c/f3.raw"][n as usize - 1])
    };
    wait_until_bash_opens(&frame(1));
    let program = |prog: &str, file: &std::path::Path| {
        let mut cmd = Command::new(prog);
        if prog.ends_with("head") {
            cmd.args(["-c", "16"]);
        }
        run({
            cmd.arg(file);
            cmd
        })
    };
    assert!(
        denied(&program("/usr/bin/head", &frame(1))),
        "unregistered head"
    );
    assert!(
        denied(&program("/bin/cat", &frame(1))),
        "cat without a rule"
    );
    let (ok, err) = bash_open(&frame(1));
    assert!(ok, "re-open from the held license: {err}");

    let me = nix::unistd::getuid().as_raw();
    let mount_rows = |env: &Env, glob: &str| -> Vec<keyserver::wire::AuditRecord> {
        env.audit_at(glob)
            .into_iter()
            .filter(|r| r.source == "mount")
            .collect()
    };
    let by_app = |rows: &[keyserver::wire::AuditRecord], app: &str, decision: &str| {
        rows.iter()
            .filter(|r| r.app_digest.as_deref() == Some(app) && r.decision == decision)
            .map(|r| r.count)
            .sum::<u32>()
    };
    eventually(
        "the mount's records at the key server",
        Duration::from_secs(10),
        || {
            let rows = mount_rows(&env, "samples/f1.raw");
            by_app(&rows, &head, "deny") >= 1
                && by_app(&rows, &env.apps.cat, "deny") >= 1
                && by_app(&rows, &env.apps.bash, "grant") >= 1
        },
    );
    for r in mount_rows(&env, "samples/f1.raw") {
        assert_eq!(r.path.as_deref(), Some("samples/f1.raw"), "{r:?}");
        assert_eq!(r.user.as_deref(), Some("alice"), "{r:?}");
        assert_eq!(r.uid, Some(me), "{r:?}");
        assert_eq!(r.device.as_deref(), Some(fixture::DEVICE), "{r:?}");
        assert!(r.asset.is_some(), "{r:?}");
        if r.decision == "grant" {
            assert_eq!(r.reason.as_deref(), Some("license_cache"), "{r:?}");
        }
    }

    // A restarted key server reads the mount's license session from its store: the license
    // for f2 comes in that session, with no 401 on the way (which a refusal would have put on
    // record under the path, as keyserver's audit_trail tests check).
    let f2_grants = |env: &Env| {
        env.audit_at("samples/b/f2.raw")
            .iter()
            .filter(|r| r.source == "keyserver" && r.decision == "grant")
            .count()
    };
    let granted_before = f2_grants(&env);
    env.restart();
    let out = bash_as(None, &read_all(&frame(2)));
    assert_frame(&env, &out, "f2 after the restart");
    eventually("f2's license on record", Duration::from_secs(5), || {
        f2_grants(&env) > granted_before
    });
    // Refusals are recorded without waiting for a commit: give one the time it would take.
    std::thread::sleep(Duration::from_millis(300));
    let refused: Vec<_> = env
        .audit_at("samples/b/f2.raw")
        .into_iter()
        .filter(|r| r.reason.as_deref() == Some("session_unknown"))
        .collect();
    assert!(
        refused.is_empty(),
        "the session survived the restart: {refused:#?}"
    );

    // Outage: everything the mount decides now waits in its spool.
    env.stop();
    assert!(
        denied(&program("/usr/bin/head", &frame(2))),
        "head while down"
    );
    assert!(denied(&program("/bin/cat", &frame(2))), "cat while down");
    let (ok, err) = bash_open(&frame(3));
    assert!(
        !ok && err.contains("Permission denied"),
        "unlicensed f3 while down: {err}"
    );
    // Past the spool's flush interval, then the mount goes away with its records unshipped.
    std::thread::sleep(Duration::from_millis(600));
    mounted.unmount().unwrap();

    env.restart();
    let (_mnt, mounted) = env.mount("mnt", &args, &direct());
    let outage = |env: &Env| {
        let f2 = mount_rows(env, "samples/b/f2.raw");
        let f3 = mount_rows(env, "samples/c/f3.raw");
        (
            by_app(&f2, &head, "deny"),
            by_app(&f2, &env.apps.cat, "deny"),
            by_app(&f3, &env.apps.bash, "deny"),
        )
    };
    eventually(
        "the spooled records shipped",
        Duration::from_secs(10),
        || outage(&env) != (0, 0, 0),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(outage(&env), (1, 1, 1), "each outage decision exactly once");
    let unreachable = mount_rows(&env, "samples/c/f3.raw");
    assert!(
        unreachable[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("unavailable")),
        "{unreachable:#?}"
    );
    // Another remount finds nothing left to send: still exactly once.
    mounted.unmount().unwrap();
    let (_mnt, mounted) = env.mount("mnt", &args, &direct());
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(outage(&env), (1, 1, 1), "resent after a remount");
    mounted.unmount().unwrap();
}
