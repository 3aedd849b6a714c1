//! `csap import` into and `csap mount` of a bucket on a real S3 server (`s3s-fs` on loopback,
//! `csap_testkit::s3`), as real processes: the import stores one ciphertext object per file, a
//! re-run skips what is complete, and the mount reads the imported frames back. Skipped (said
//! why) without a server binary or FUSE, a failure under `CI=true`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use csap_testkit::fuse::{detach, fuse_usable, is_mounted};
use csap_testkit::s3::{s3_server, S3Server};

const CSAP: &str = env!("CARGO_BIN_EXE_csap");

fn csap(server: &S3Server, args: &[&str]) -> Command {
    let mut c = Command::new(CSAP);
    c.args(args)
        .env_remove("CSAP_SERVER")
        .env_remove("CSAP_IDENTITY");
    server.configure(&mut c);
    c
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

fn write_tree(src: &Path, files: &[(String, Vec<u8>)]) {
    for (rel, data) in files {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

#[test]
fn import_into_a_bucket_resumes_and_the_mount_reads_the_frames() {
    if !fuse_usable() {
        return;
    }
    let Some(server) = s3_server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (src, mnt, key) = (
        dir.path().join("src"),
        dir.path().join("mnt"),
        dir.path().join("dev.key"),
    );
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(&key, pattern(32, 9)).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            (
                format!("shot010/f{i:04}.exr"),
                pattern(200_000 + i * 7777, i as u8),
            )
        })
        .collect();
    // One frame over the single-PUT limit: a multipart upload.
    files.push(("shot020/plate.exr".into(), pattern(9 << 20, 77)));
    files.push(("notes.txt".into(), b"a small note\n".to_vec()));
    write_tree(&src, &files);
    let url = server.url("show");

    let out = ok(csap(&server, &["import", "--key-file"])
        .arg(&key)
        .arg(&src)
        .arg(&url)
        .args(["--jobs", "3"])
        .output()
        .unwrap());
    assert!(out.contains("imported 14 file(s)"), "{out}");
    for (rel, data) in &files {
        let object = std::fs::read(server.object_file(&format!("show/{rel}"))).unwrap();
        assert_eq!(&object[..8], b"CSAP-AST", "{rel} is an asset");
        assert!(object.len() > data.len(), "{rel}: ciphertext is larger");
        if data.len() >= 64 {
            assert!(
                !object.windows(64).any(|w| w == &data[..64]),
                "{rel}: no plaintext in the object"
            );
        }
    }

    // Resumable: what is complete is skipped; a missing object is imported again.
    std::fs::remove_file(server.object_file("show/shot010/f0003.exr")).unwrap();
    let out = ok(csap(&server, &["import", "--key-file"])
        .arg(&key)
        .arg(&src)
        .arg(&url)
        .output()
        .unwrap());
    assert!(
        out.contains("imported 1 file(s)") && out.contains("skipped 13 already complete"),
        "{out}"
    );

    // Mounted: every frame reads back.
    let log = std::fs::File::create(dir.path().join("mount.log")).unwrap();
    let mut child = csap(&server, &["mount"])
        .arg(&url)
        .arg(&mnt)
        .arg("--key-file")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(&mnt) {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join("mount.log")).unwrap();
            panic!("csap mount exited with {status}: {log}");
        }
        assert!(
            Instant::now() < deadline,
            "csap mount did not mount in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let read_all = || {
        for (rel, data) in &files {
            assert_eq!(&std::fs::read(mnt.join(rel)).unwrap(), data, "{rel}");
        }
    };
    read_all();
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["notes.txt", "shot010", "shot020"]);
    ok(Command::new(CSAP).arg("umount").arg(&mnt).output().unwrap());
    let _ = child.wait();
    detach(&mnt);
}

#[test]
fn a_bad_location_or_unreachable_store_is_one_sentence() {
    let Some(mut server) = s3_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dev.key");
    std::fs::write(&key, pattern(32, 1)).unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    let import = |server: &S3Server, url: &str| {
        csap(server, &["import", "--key-file"])
            .arg(&key)
            .arg(dir.path().join("src"))
            .arg(url)
            .args(["--s3-timeout", "2"])
            .output()
            .unwrap()
    };
    let out = import(&server, "s3:///nobucket");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no bucket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.kill();
    let started = Instant::now();
    let out = import(&server, &server.url("show"));
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(15));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot open the object store"), "{stderr}");
}
