//! Issue 12: assets are bound to their registered path and write generation. Two backing
//! files swapped behind the mount's back are refused at both paths (EIO, audited
//! `path_mismatch`); an older authentic copy put back after a write through the mount is
//! refused (EIO, audited `rollback`); a writer that reserved a generation and died is no harm;
//! renames through the mount (a file, a directory of assets) keep the assets readable.

use std::process::Command;
use std::time::Duration;

use keyserver::wire::GenerationStep;

use csap_testkit::run;

use super::fixture::{bash, Env, Req};
use super::{direct, read_all, wait_until_bash_opens};

/// Reading all of `file` through the mount as bash: (success, stdout, stderr).
fn read_through(file: &std::path::Path) -> (bool, Vec<u8>, String) {
    let out = run({
        let mut cmd = Command::new("/bin/bash");
        cmd.args(["-c", &read_all(file)]);
        cmd
    });
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Opening `file` through the mount fails with EIO and returns no byte.
fn assert_refused_eio(file: &std::path::Path, what: &str) {
    let (ok, stdout, err) = read_through(file);
    assert!(
        !ok && stdout.is_empty() && err.contains("Input/output error"),
        "{what}: ok={ok}, {} bytes, stderr {err:?}",
        stdout.len()
    );
}

/// The mount's own audit records at `path` whose reason starts with `code` appear (shipped).
fn assert_audited(env: &Env, path: &str, code: &str) {
    let found = || {
        env.audit_at(path).iter().any(|r| {
            r.source == "mount"
                && r.decision == "deny"
                && r.reason.as_deref().is_some_and(|s| s.starts_with(code))
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !found() {
        assert!(
            std::time::Instant::now() < deadline,
            "no {code} record for {path} in {:#?}",
            env.audit_at(path)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn swapped_backing_files_are_refused_at_both_paths() {
    let Some(env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    env.with_frames(&["f1.raw", "f2.raw"]);
    let (mnt, mounted) = env.mount("mnt", &env.args(), &direct());
    env.submit(&Req::now("view", &[&env.apps.bash], &["read"]));
    let (f1, f2) = (mnt.join("samples/f1.raw"), mnt.join("samples/f2.raw"));
    wait_until_bash_opens(&f1);
    wait_until_bash_opens(&f2);
    let (ok, plain, err) = read_through(&f1);
    assert!(ok && plain == env.frame, "before the swap: {err}");

    // The attack: rename the two backing files into each other's place.
    let samples = env.backing.join("samples");
    std::fs::rename(samples.join("f1.raw"), samples.join("tmp")).unwrap();
    std::fs::rename(samples.join("f2.raw"), samples.join("f1.raw")).unwrap();
    std::fs::rename(samples.join("tmp"), samples.join("f2.raw")).unwrap();

    assert_refused_eio(&f1, "f1 after the swap");
    assert_refused_eio(&f2, "f2 after the swap");
    assert_audited(&env, "samples/f1.raw", "path_mismatch");
    assert_audited(&env, "samples/f2.raw", "path_mismatch");
    mounted.unmount().unwrap();
}

#[test]
fn an_older_copy_put_back_is_refused() {
    let Some(env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    env.with_frames(&["f1.raw"]);
    let (mnt, mounted) = env.mount("mnt", &env.args(), &direct());
    env.submit(&Req::now("edit", &[&env.apps.bash], &["read", "write"]));
    let f1 = mnt.join("samples/f1.raw");
    wait_until_bash_opens(&f1);
    let backing = env.backing.join("samples/f1.raw");
    let old = env.dir.path().join("f1-generation-0.raw");
    std::fs::copy(&backing, &old).unwrap();

    // A writer that reserved the next generation and died before writing: harmless, the file
    // (still at the recorded generation) reads, and the next writer uses the reserved one.
    let asset_id = csapfs::asset::read_header(&std::fs::File::open(&backing).unwrap())
        .unwrap()
        .asset_id;
    let reserved = env
        .rt
        .block_on(env.client.generation(
            &env.token,
            &env.apps.bash,
            &asset_id.0,
            GenerationStep::Reserve,
            0,
        ))
        .unwrap();
    assert_eq!(
        (reserved.generation, reserved.pending_generation),
        (0, Some(1))
    );
    let (ok, plain, err) = read_through(&f1);
    assert!(
        ok && plain == env.frame,
        "after a reserve without a write: {err}"
    );

    // A new version through the mount.
    let (ok, err) = bash(&format!("printf 'version two' > '{}'", f1.display()));
    assert!(ok, "write through the mount: {err}");
    let (ok, plain, err) = read_through(&f1);
    assert!(ok && plain == b"version two", "the new version: {err}");
    let header = csapfs::asset::read_header(&std::fs::File::open(&backing).unwrap()).unwrap();
    assert_eq!(
        header.generation, 1,
        "the file carries the settled generation"
    );

    // The attack: the older authentic copy put back in place.
    std::fs::copy(&old, &backing).unwrap();
    assert_refused_eio(&f1, "the older copy");
    assert_audited(&env, "samples/f1.raw", "rollback");
    mounted.unmount().unwrap();
}

#[test]
fn renames_through_the_mount_keep_assets_readable() {
    let Some(env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    std::fs::create_dir_all(env.backing.join("samples/a")).unwrap();
    env.with_frames(&["a/f1.raw", "f2.raw"]);
    let (mnt, mounted) = env.mount("mnt", &env.args(), &direct());
    let apps = [env.apps.bash.as_str(), env.apps.perl.as_str()];
    env.submit(&Req::now(
        "move",
        &apps,
        &["read", "write", "create", "delete"],
    ));
    wait_until_bash_opens(&mnt.join("samples/f2.raw"));
    let rename = |from: &str, to: &str| {
        let mut cmd = Command::new("/usr/bin/perl");
        cmd.args(["-e", r#"rename($ARGV[0], $ARGV[1]) or die "$!\n""#])
            .arg(mnt.join(from))
            .arg(mnt.join(to));
        let out = run(cmd);
        assert!(
            out.status.success(),
            "rename {from} -> {to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    rename("samples/f2.raw", "samples/g2.raw");
    rename("samples/a", "samples/b");
    for path in ["samples/g2.raw", "samples/b/f1.raw"] {
        let (ok, plain, err) = read_through(&mnt.join(path));
        assert!(ok && plain == env.frame, "{path} after the rename: {err}");
    }
    mounted.unmount().unwrap();
}
