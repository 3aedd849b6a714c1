//! Identity revocations reach a `--server` mount within a second: disabling the user, revoking
//! the application digest, the key version or the device itself ends the open handles that
//! depend on it (next read `EACCES`) and refuses fresh opens, with and without the mount's own
//! ARDS rules; handles that do not depend on it keep reading.

use std::time::{Duration, Instant};

use keyserver::wire::RevokeAppRequest;

use csap_testkit::{CsapMount, KeyServerFlags};

use super::fixture::{Env, Reader, Req, DEVICE, SCOPE};
use super::{assert_open_denied, direct, wait_until_bash_opens};

/// The mount's flags: with its own ARDS subscription, or leaving every decision to the key
/// server (no rules at the mount: the revocation stream alone must end the handles).
fn args(env: &Env, with_rules: bool) -> KeyServerFlags {
    let mut args = env.args();
    if !with_rules {
        args.ards = None;
    }
    args
}

/// The open handle's next reads are refused with EACCES within a second of `since`.
fn assert_refused_within_a_second(reader: &mut Reader, since: Instant, what: &str) {
    let (answer, took) = reader.until_refused(since, Duration::from_secs(3));
    eprintln!("{what} reached the open handle after {took:?}");
    assert!(
        answer.contains("Permission denied"),
        "read after {what}: {answer:?}"
    );
    assert!(
        took < Duration::from_secs(1),
        "the open handle read for {took:?} after {what}"
    );
}

/// Mounts, lets bash and perl read `samples/f1.raw`, opens a bash handle on it and returns
/// (env, mount point, mount, handle).
fn mounted_with_a_reader(with_rules: bool) -> Option<(Env, std::path::PathBuf, CsapMount, Reader)> {
    let env = Env::start()?;
    env.with_frames(&["f1.raw"]);
    let (mnt, mounted) = env.mount("mnt", &args(&env, with_rules), &direct());
    env.submit(&Req::now(
        "view",
        &[&env.apps.bash, &env.apps.perl],
        &["read"],
    ));
    let f1 = mnt.join("samples/f1.raw");
    wait_until_bash_opens(&f1);
    let mut reader = Reader::open(&f1);
    assert_eq!(reader.read(), "ok");
    Some((env, mnt, mounted, reader))
}

#[test]
fn disabling_the_user_ends_open_handles_within_a_second() {
    let Some((env, mnt, mounted, mut reader)) = mounted_with_a_reader(true) else {
        return; // no FUSE here (never under CI=true)
    };
    let since = Instant::now();
    env.rt.block_on(env.admin.disable_user("alice")).unwrap();
    assert_refused_within_a_second(&mut reader, since, "disabling the user");
    assert_open_denied(&mnt.join("samples/f1.raw"), "after disabling the user");
    drop(reader);
    mounted.unmount().unwrap();
}

#[test]
fn revoking_the_application_ends_its_handles_within_a_second() {
    let Some((env, mnt, mounted, mut reader)) = mounted_with_a_reader(false) else {
        return; // no FUSE here (never under CI=true)
    };
    let f1 = mnt.join("samples/f1.raw");
    // Another application's handle on the same file does not depend on bash's digest.
    let mut perl = Reader::rereading(&f1);
    assert_eq!(perl.read(), "ok");
    let since = Instant::now();
    env.rt
        .block_on(env.admin.revoke_app(&RevokeAppRequest {
            digest: Some(env.apps.bash.clone()),
            name: None,
            version: None,
        }))
        .unwrap();
    assert_refused_within_a_second(&mut reader, since, "revoking bash");
    assert_open_denied(&f1, "after revoking bash");
    assert_eq!(perl.read(), "ok", "perl's handle does not depend on bash");
    drop((reader, perl));
    mounted.unmount().unwrap();
}

#[test]
fn revoking_the_key_version_ends_its_handles_within_a_second() {
    let Some((env, mnt, mounted, mut reader)) = mounted_with_a_reader(true) else {
        return; // no FUSE here (never under CI=true)
    };
    // A frame under the next seed version, read through a handle of its own.
    env.rt.block_on(env.admin.rotate(SCOPE)).unwrap();
    env.add_frames(&["f2.raw"]);
    let f2 = mnt.join("samples/f2.raw");
    wait_until_bash_opens(&f2);
    let mut other = Reader::open(&f2);
    assert_eq!(other.read(), "ok");
    let since = Instant::now();
    env.rt.block_on(env.admin.revoke_key(SCOPE, 1)).unwrap();
    assert_refused_within_a_second(&mut reader, since, "revoking key version 1");
    assert_open_denied(&mnt.join("samples/f1.raw"), "after revoking key version 1");
    assert_eq!(
        other.read(),
        "ok",
        "the version 2 handle does not depend on v1"
    );
    drop((reader, other));
    mounted.unmount().unwrap();
}

#[test]
fn revoking_the_device_ends_every_handle_within_a_second() {
    let Some((env, mnt, mounted, mut reader)) = mounted_with_a_reader(false) else {
        return; // no FUSE here (never under CI=true)
    };
    let since = Instant::now();
    env.rt.block_on(env.admin.revoke_device(DEVICE)).unwrap();
    assert_refused_within_a_second(&mut reader, since, "revoking the device");
    assert_open_denied(&mnt.join("samples/f1.raw"), "after revoking the device");
    drop(reader);
    mounted.unmount().unwrap();
}
