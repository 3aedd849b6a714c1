//! Issue 12: a user token is bound to the device and the local uid it was issued for. A copy
//! of alice's token — handed to the mount's session socket by another uid, put in another
//! uid's token file, or presented by another device — gives no plaintext.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use csapfs::fs::MountOptions;

use super::fixture::{bash_as, Env, Req, DEVICE, SCOPE};
use super::{assert_frame, denied, direct, read_all, wait_until_bash_opens};

/// The other uid of these tests.
const NOBODY: u32 = 65534;
/// A second enrolled device, whose holder has a copy of alice's token.
const THIEF: &str = "ws-thief";

/// World-readable all the way down to the sample frame, so any denial to [`NOBODY`] is the
/// mount's, not the kernel's.
fn open_to_everyone(env: &Env) {
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(env.dir.path(), 0o755);
    mode(&env.backing, 0o755);
    mode(&env.backing.join("samples"), 0o755);
    mode(&env.backing.join("samples/f1.raw"), 0o644);
}

fn allow_other() -> MountOptions {
    MountOptions {
        allow_other: true,
        ..direct()
    }
}

/// Sends one JSON line to the session socket at `socket` as `uid` (a perl client, so the
/// kernel reports that uid to the mount) and returns the mount's reply line.
fn socket_exchange_as(uid: u32, socket: &Path, line: &str) -> serde_json::Value {
    let script = r#"use IO::Socket::UNIX; $| = 1;
my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!\n";
my $line = <STDIN>; print $s $line; print scalar <$s>;"#;
    let mut child = Command::new("/usr/bin/perl")
        .args(["-e", script])
        .arg(socket)
        .uid(uid)
        .gid(uid)
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{line}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "session client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "not a session reply: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The mount's records of `uid`'s denials on `samples/f1.raw`, once they reached the trail.
fn mount_denials_of(env: &Env, uid: u32) -> Vec<keyserver::wire::AuditRecord> {
    let mut rows = Vec::new();
    csap_testkit::eventually(
        "the mount's denial on record",
        std::time::Duration::from_secs(10),
        || {
            rows = env
                .audit_at("samples/f1.raw")
                .into_iter()
                .filter(|r| r.source == "mount" && r.uid == Some(uid) && r.decision == "deny")
                .collect();
            !rows.is_empty()
        },
    );
    rows
}

/// Alice's token (issued for the test's uid on [`DEVICE`]) handed to the session socket by
/// uid 65534 is refused there, and 65534's approved program gets `EACCES`; 65534 logging in
/// through the mount (which asks the key server with the device identity and the uid the
/// kernel reported) gets a session of its own and reads the plaintext.
#[test]
fn a_token_handed_over_by_another_uid_gives_no_plaintext() {
    let Some(env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    env.submit(&Req::now("view", &[&env.apps.bash], &["read"]));
    env.with_frames(&["f1.raw"]);
    open_to_everyone(&env);
    let socket = env.dir.path().join("run/mount.sock");
    let mut args = env.args();
    args.socket = Some(socket.clone());
    let (mnt, mounted) = env.mount("mnt", &args, &allow_other());
    let f1 = mnt.join("samples/f1.raw");
    wait_until_bash_opens(&f1);
    assert_frame(&env, &bash_as(None, &read_all(&f1)), "alice's own uid");

    let stolen = serde_json::json!({ "token": env.token.as_str() }).to_string();
    let reply = socket_exchange_as(NOBODY, &socket, &stolen);
    let theirs = bash_as(Some(NOBODY), &read_all(&f1));
    assert!(
        denied(&theirs),
        "uid {NOBODY} with alice's token got: {}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert_eq!(reply["ok"], false, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("uid {NOBODY}")), "{reply}");
    assert!(error.contains("csap login"), "{reply}");

    // A login through the mount binds a token to the uid the kernel reports.
    let login = serde_json::json!({ "user": "alice", "password": super::fixture::PASSWORD });
    let reply = socket_exchange_as(NOBODY, &socket, &login.to_string());
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["uid"], NOBODY, "{reply}");
    let token = keyserver::UserToken::new(reply["token"].as_str().unwrap().to_string());
    let claims = keyserver::token::read_claims_unverified(token.as_str()).unwrap();
    assert_eq!((claims.uid, claims.device.as_str()), (NOBODY, DEVICE));
    assert_frame(
        &env,
        &bash_as(Some(NOBODY), &read_all(&f1)),
        &format!("uid {NOBODY} after its own login"),
    );
    mounted.unmount().unwrap();
}

/// Alice's token copied into uid 65534's token file: 65534's approved program gets `EACCES`,
/// and the mount's record of that denial says why; a token issued for uid 65534 in the same
/// file reads.
#[test]
fn a_token_in_another_uids_token_file_gives_no_plaintext() {
    let Some(env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    env.submit(&Req::now("view", &[&env.apps.bash], &["read"]));
    env.with_frames(&["f1.raw"]);
    open_to_everyone(&env);
    let nobody_token = env.dir.path().join("nobody.token");
    std::fs::copy(&env.token_file, &nobody_token).unwrap();
    let mut args = env.args();
    args.token_file
        .push(format!("{NOBODY}:{}", nobody_token.display()));
    let (mnt, mounted) = env.mount("mnt", &args, &allow_other());
    let f1 = mnt.join("samples/f1.raw");
    wait_until_bash_opens(&f1);

    let theirs = bash_as(Some(NOBODY), &read_all(&f1));
    assert!(
        denied(&theirs),
        "uid {NOBODY} with a copy of alice's token file got: {}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    let rows = mount_denials_of(&env, NOBODY);
    assert!(
        rows.iter().any(|r| r
            .reason
            .as_deref()
            .is_some_and(|why| why.contains(&format!("not uid {NOBODY}")))),
        "{rows:#?}"
    );

    // What a device-identity holder (root: `csap login --uid`) issues for that uid reads.
    let (own, _) = env
        .rt
        .block_on(env.client.login("alice", super::fixture::PASSWORD, NOBODY))
        .unwrap();
    own.save(&nobody_token).unwrap();
    assert_frame(
        &env,
        &bash_as(Some(NOBODY), &read_all(&f1)),
        &format!("uid {NOBODY} with a token of its own"),
    );
    mounted.unmount().unwrap();
}

/// Alice's token presented by another enrolled device, under a rule that lets alice read on
/// both: the key server refuses it (401 `token_wrong_device`, on record against that
/// device), and a mount on that device with a copy of the token file gives no plaintext.
#[test]
fn a_token_from_another_device_is_refused() {
    let Some(env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    let thief_dir: PathBuf = env.dir.path().join("thief");
    env.rt
        .block_on(env.admin.enroll_device(THIEF, &thief_dir))
        .unwrap();
    let both = [DEVICE, THIEF];
    env.submit_for(
        &Req::now("import", &[&env.apps.importer], &["create"]),
        &both,
    );
    env.add_frames(&["f1.raw"]);
    env.submit_for(&Req::now("view", &[&env.apps.bash], &["read"]), &both);

    // Straight to the key server with the thief's device certificate.
    let thief = env
        .rt
        .block_on(keyserver::LicenseClient::connect(
            &env.server().keyserver_url,
            &thief_dir,
        ))
        .unwrap();
    let answer =
        env.rt
            .block_on(thief.create(&env.token, &env.apps.importer, "samples/stolen.raw", SCOPE));
    match answer {
        Err(keyserver::client::ClientError::Denied(keyserver::wire::Reason::TokenWrongDevice)) => {}
        other => panic!("alice's token from {THIEF}: {:?}", other.map(|_| "granted")),
    }
    let refused = env
        .audit()
        .into_iter()
        .find(|r| r.reason.as_deref() == Some("token_wrong_device"))
        .expect("the refusal is on record");
    assert_eq!(refused.device.as_deref(), Some(THIEF));
    assert_eq!(refused.decision, "deny");

    // A mount on the thief's device with a copy of alice's token file.
    let stolen_file = env.dir.path().join("stolen.token");
    std::fs::copy(&env.token_file, &stolen_file).unwrap();
    let mut args = env.args();
    args.identity = thief_dir;
    args.token_file = vec![stolen_file.display().to_string()];
    args.ards = None;
    let (mnt, mounted) = env.mount("mnt-thief", &args, &direct());
    let out = bash_as(None, &read_all(&mnt.join("samples/f1.raw")));
    assert!(
        denied(&out),
        "alice's token on {THIEF}'s mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    mounted.unmount().unwrap();
}
