//! Real FUSE mounts of a bucket on a real S3 server (`s3s-fs`, started per test on loopback by
//! `csap_testkit::s3`): round trips, ranged reads, renames and listings over object keys, the fs
//! model, tampered objects, and the server killed mid-read. Skipped (said why) without a
//! server binary, a failure under `CI=true`.

mod support;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use csap_testkit::s3::{s3_server, S3Server};
use csapfs::format::{CHUNK_OVERHEAD, HEADER_LEN};
use csapfs::fs::CacheMode;
use csapfs::storage::ObjectConfig;
use support::{contains, Rng, TestMount};

const EIO: i32 = 5;
const CHUNK: u64 = 64 * 1024;

/// FUSE and an S3 server, or `None` (a skip outside CI).
fn server() -> Option<S3Server> {
    if !support::fuse_usable() {
        return None;
    }
    s3_server()
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn files_written_through_the_mount_are_objects_read_back_by_range_renamed_and_listed() {
    let Some(server) = server() else { return };
    let mut mount = TestMount::on_s3(CacheMode::Direct, CHUNK as u32, server, None);
    let mut rng = Rng(7);
    let small = rng.bytes(1000);
    // Over the single-PUT limit (8 MiB): a multipart upload.
    let large = rng.bytes(9 * 1024 * 1024 + 12345);
    fs::create_dir(mount.path("shot")).unwrap();
    fs::write(mount.path("shot/small.txt"), &small).unwrap();
    {
        let mut file = File::create(mount.path("shot/large.exr")).unwrap();
        for piece in large.chunks(1 << 20) {
            file.write_all(piece).unwrap();
        }
        file.sync_all().unwrap();
    }
    fs::create_dir(mount.path("empty")).unwrap();
    assert_eq!(names(&mount.path("")), ["empty", "shot"]);
    assert_eq!(names(&mount.path("shot")), ["large.exr", "small.txt"]);

    // Stored as ciphertext, one object per asset, no plaintext.
    let stored = fs::read(mount.s3.as_ref().unwrap().object_file("vol/shot/small.txt")).unwrap();
    assert_eq!(&stored[..8], b"CSAP-AST");
    assert!(!contains(&stored, &small[..64]));

    // A fresh mount reads what the store holds (nothing cached from the writes).
    mount.remount();
    assert_eq!(fs::read(mount.path("shot/small.txt")).unwrap(), small);
    let file = File::open(mount.path("shot/large.exr")).unwrap();
    for _ in 0..40 {
        let offset = rng.below(large.len() as u64);
        let len = (rng.below(300_000) + 1).min(large.len() as u64 - offset) as usize;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).unwrap();
        assert_eq!(
            buf,
            &large[offset as usize..offset as usize + len],
            "{offset}+{len}"
        );
    }
    drop(file);
    assert_eq!(fs::read(mount.path("shot/large.exr")).unwrap(), large);

    // Rename: a file (copy + delete), then a directory with what is below it.
    fs::rename(mount.path("shot/small.txt"), mount.path("shot/notes.txt")).unwrap();
    fs::rename(mount.path("shot"), mount.path("shot010")).unwrap();
    assert_eq!(names(&mount.path("")), ["empty", "shot010"]);
    assert_eq!(names(&mount.path("shot010")), ["large.exr", "notes.txt"]);
    mount.remount();
    assert_eq!(fs::read(mount.path("shot010/notes.txt")).unwrap(), small);
    assert_eq!(fs::read(mount.path("shot010/large.exr")).unwrap(), large);
    assert!(!mount.path("shot").exists());

    // An empty directory exists, a full one cannot be removed, an emptied one stays.
    assert_eq!(
        fs::remove_dir(mount.path("shot010"))
            .unwrap_err()
            .raw_os_error(),
        Some(39) // ENOTEMPTY
    );
    fs::remove_file(mount.path("shot010/notes.txt")).unwrap();
    fs::remove_file(mount.path("shot010/large.exr")).unwrap();
    assert!(mount.path("shot010").is_dir());
    fs::remove_dir(mount.path("shot010")).unwrap();
    fs::remove_dir(mount.path("empty")).unwrap();
    assert!(names(&mount.path("")).is_empty());

    // What an object store cannot hold is refused, not faked.
    let link = std::os::unix::fs::symlink("x", mount.path("link")).unwrap_err();
    assert_eq!(link.raw_os_error(), Some(1)); // EPERM
}

#[test]
fn a_file_being_written_is_visible_before_its_upload_and_stored_at_close() {
    let Some(server) = server() else { return };
    let mount = TestMount::on_s3(CacheMode::Direct, CHUNK as u32, server, None);
    let path = mount.path("frame.dpx");
    let mut file = File::create(&path).unwrap();
    file.write_all(b"first part ").unwrap();
    // Staged, not uploaded: listed and sized all the same.
    assert_eq!(names(&mount.path("")), ["frame.dpx"]);
    assert_eq!(fs::metadata(&path).unwrap().len(), 11);
    let object = mount.s3.as_ref().unwrap().object_file("vol/frame.dpx");
    assert!(
        !object.exists(),
        "nothing is under the key before fsync or close"
    );
    file.write_all(b"and the rest").unwrap();
    drop(file);
    assert!(object.exists(), "close uploads");
    assert_eq!(fs::read(&path).unwrap(), b"first part and the rest");
}

#[test]
fn random_operations_match_a_model_on_s3() {
    let Some(server) = server() else { return };
    let mount = TestMount::on_s3(CacheMode::Direct, 4096, server, None);
    support::model::run(&mount, 0x53C3, 400);
}

#[test]
fn a_tampered_object_fails_only_the_tampered_chunk() {
    let Some(server) = server() else { return };
    let mut mount = TestMount::on_s3(CacheMode::Direct, CHUNK as u32, server, None);
    let data = Rng(3).bytes(4 * CHUNK as usize);
    fs::write(mount.path("frame.exr"), &data).unwrap();
    mount.unmount();
    // Flip one ciphertext byte inside chunk 2, as someone with write access to the bucket.
    let object = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mount.s3.as_ref().unwrap().object_file("vol/frame.exr"))
        .unwrap();
    let at = HEADER_LEN + 2 * (CHUNK + CHUNK_OVERHEAD) + 12 + 100;
    let mut byte = [0u8; 1];
    object.read_exact_at(&mut byte, at).unwrap();
    object.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    drop(object);
    mount.mount();

    let file = File::open(mount.path("frame.exr")).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = file.read_exact_at(&mut buf, 2 * CHUNK + 8192).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(EIO), "the tampered chunk is EIO");
    for index in [0u64, 1, 3] {
        let mut good = vec![0u8; CHUNK as usize];
        file.read_exact_at(&mut good, index * CHUNK).unwrap();
        assert_eq!(
            good,
            &data[(index * CHUNK) as usize..((index + 1) * CHUNK) as usize]
        );
    }
    assert_eq!(
        fs::read(mount.path("frame.exr"))
            .unwrap_err()
            .raw_os_error(),
        Some(EIO)
    );
}

fn short_timeout(config: &mut ObjectConfig) {
    config.timeout = Duration::from_secs(2);
    config.readahead_bytes = 0;
    config.metadata_ttl = Duration::from_millis(100);
}

#[test]
fn a_killed_server_fails_reads_within_the_timeout_and_a_restarted_one_serves_again() {
    let Some(server) = server() else { return };
    let mut mount = TestMount::on_s3(CacheMode::Direct, CHUNK as u32, server, Some(short_timeout));
    let data = Rng(11).bytes(64 * CHUNK as usize);
    fs::write(mount.path("frame.exr"), &data).unwrap();
    let file = File::open(mount.path("frame.exr")).unwrap();
    let mut buf = vec![0u8; CHUNK as usize];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, &data[..CHUNK as usize]);

    mount.s3.as_mut().unwrap().kill();
    let started = Instant::now();
    let err = file.read_exact_at(&mut buf, 40 * CHUNK).unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
    assert!(
        waited < Duration::from_secs(6),
        "the read failed only after {waited:?} (timeout 2 s)"
    );
    // Listing fails the same way once the cached listing is past its TTL (no hang either).
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let err = fs::read_dir(mount.path("")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
    assert!(started.elapsed() < Duration::from_secs(6));

    mount.s3.as_mut().unwrap().restart().unwrap();
    file.read_exact_at(&mut buf, 40 * CHUNK).unwrap();
    assert_eq!(buf, &data[40 * CHUNK as usize..41 * CHUNK as usize]);
    assert_eq!(fs::read(mount.path("frame.exr")).unwrap(), data);
    assert_eq!(
        File::open(mount.path("missing")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn random_operations_match_a_model_on_s3_with_the_page_cache() {
    let Some(server) = server() else { return };
    let mount = TestMount::on_s3(CacheMode::Page, 4096, server, None);
    support::model::run(&mount, 0x9A6E, 300);
}

#[test]
fn a_put_is_whole_or_absent_and_never_replaces_an_object() {
    use csapfs::storage::{ObjectStorage, Storage};
    use std::path::Path;
    let Some(server) = s3_server() else { return };
    let storage = ObjectStorage::open(support::s3_config(&server, "vol")).unwrap();
    let big = Rng(5).bytes(9 << 20); // multipart
    for (name, data) in [("a/small", &b"0123456789"[..]), ("a/big", &big[..])] {
        storage
            .put_new(Path::new(name), &mut |out| out.write_all(data))
            .unwrap();
        assert_eq!(
            fs::read(server.object_file(&format!("vol/{name}"))).unwrap(),
            data
        );
        let again = storage.put_new(Path::new(name), &mut |out| out.write_all(b"other"));
        assert_eq!(
            again.unwrap_err().kind(),
            ErrorKind::AlreadyExists,
            "{name}"
        );
        assert_eq!(
            fs::read(server.object_file(&format!("vol/{name}"))).unwrap(),
            data
        );
    }
    // A fill that fails half way (after more than a part) leaves nothing under the key.
    let failed = storage.put_new(Path::new("a/cut"), &mut |out| {
        out.write_all(&big)?;
        Err(std::io::Error::other("the source went away"))
    });
    assert!(failed.is_err());
    assert!(!server.object_file("vol/a/cut").exists());
    assert_eq!(
        storage.stat(Path::new("a/cut")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // Paths an object key cannot hold, or that leave the prefix, are refused.
    for bad in ["../x", "./a", "/abs", "a/.csap-dir"] {
        assert_eq!(
            storage.stat(Path::new(bad)).unwrap_err().raw_os_error(),
            Some(22), // EINVAL
            "{bad}"
        );
    }
    let items: Vec<String> = storage
        .list(Path::new("a"))
        .unwrap()
        .into_iter()
        .map(|i| i.name.into_string().unwrap())
        .collect();
    assert_eq!(items.len(), 2, "{items:?}");
}

fn no_readahead_no_cache(config: &mut ObjectConfig) {
    config.readahead_bytes = 0;
    config.cache_bytes = 0;
}

/// Replaces `key`'s object in the bucket with `bytes` through the S3 API, as another writer of
/// the bucket would (a new ETag; the mount's own tables know nothing of it).
fn replace_object(server: &S3Server, key: &str, bytes: Vec<u8>) {
    use object_store::aws::AmazonS3Builder;
    use object_store::{path::Path as ObjectPath, ObjectStore};
    let store = AmazonS3Builder::new()
        .with_bucket_name(&server.bucket)
        .with_endpoint(server.endpoint())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(&server.access_key)
        .with_secret_access_key(&server.secret_key)
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(store.put(&ObjectPath::from(key), bytes.into()))
        .unwrap();
}

/// An S3 mount (no readahead, no chunk cache: every read is a GET) holding `frame.exr`
/// written twice — the same asset, so the same key, and the first version's chunks would still
/// authenticate — with both plaintexts and the first version's stored object.
fn two_versions(server: S3Server, seed: u64) -> (TestMount, [Vec<u8>; 2], Vec<u8>) {
    let mut mount = TestMount::on_s3(
        CacheMode::Direct,
        CHUNK as u32,
        server,
        Some(no_readahead_no_cache),
    );
    let versions = [
        Rng(seed).bytes(4 * CHUNK as usize),
        Rng(seed + 1).bytes(4 * CHUNK as usize),
    ];
    let path = mount.path("frame.exr");
    fs::write(&path, &versions[0]).unwrap();
    let first = fs::read(mount.s3.as_ref().unwrap().object_file("vol/frame.exr")).unwrap();
    fs::write(&path, &versions[1]).unwrap();
    // close() returns before the kernel's RELEASE reaches the mount, and an open made while the
    // writer's handle lives shares its staged body instead of opening what is stored; a remount
    // makes the next open the one that pins the stored version, as the tests mean it.
    mount.unmount();
    mount.mount();
    (mount, versions, first)
}

#[test]
fn an_open_file_never_mixes_in_chunks_of_a_replaced_object() {
    let Some(server) = server() else { return };
    let (mut mount, [old, new], old_ciphertext) = two_versions(server, 21);
    let path = mount.path("frame.exr");

    let file = File::open(&path).unwrap();
    let mut chunk = vec![0u8; CHUNK as usize];
    file.read_exact_at(&mut chunk, 0).unwrap();
    assert_eq!(chunk, &new[..CHUNK as usize]);

    // Someone with write access to the bucket puts the old version back.
    replace_object(mount.s3.as_ref().unwrap(), "vol/frame.exr", old_ciphertext);
    let err = file.read_exact_at(&mut chunk, 3 * CHUNK).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(EIO),
        "a handle opened on one version must not read chunks of another"
    );
    drop(file);
    mount.unmount();
    mount.mount();
    // Opened afresh, the file is the version now stored, whole.
    assert_eq!(fs::read(mount.path("frame.exr")).unwrap(), old);
}

static STAGE_DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();

fn stage_in_test_dir(config: &mut ObjectConfig) {
    config.stage_dir = Some(STAGE_DIR.get().unwrap().path().to_path_buf());
}

/// What this process holds open in the stage directory: the mount stages in unlinked files, so
/// they are found through `/proc/self/fd`, and read through it.
fn staged_files(stage: &std::path::Path) -> Vec<Vec<u8>> {
    let mut staged = Vec::new();
    for entry in fs::read_dir("/proc/self/fd").unwrap() {
        let fd = entry.unwrap().path();
        let Ok(target) = fs::read_link(&fd) else {
            continue;
        };
        if target.starts_with(stage) {
            staged.push(fs::read(&fd).unwrap());
        }
    }
    staged
}

#[test]
fn staged_writes_hold_only_ciphertext() {
    let Some(server) = server() else { return };
    let stage = STAGE_DIR
        .get_or_init(|| tempfile::tempdir().unwrap())
        .path();
    let mount = TestMount::on_s3(
        CacheMode::Direct,
        CHUNK as u32,
        server,
        Some(stage_in_test_dir),
    );
    let marker = b"PLAINTEXT-MARKER-".repeat(20_000);
    let path = mount.path("frame.exr");
    // A new file, then a rewrite of a stored one (staged from its downloaded ciphertext).
    for round in 0..2 {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(round == 0)
            .open(&path)
            .unwrap();
        file.write_all(&marker).unwrap();
        let staged = staged_files(stage);
        assert!(
            staged.iter().any(|bytes| bytes.len() >= marker.len()),
            "round {round}: the write is staged in {stage:?}"
        );
        for bytes in &staged {
            assert!(
                !contains(bytes, b"PLAINTEXT-MARKER"),
                "round {round}: plaintext in a staged file"
            );
        }
        drop(file);
        let stored = fs::read(mount.s3.as_ref().unwrap().object_file("vol/frame.exr")).unwrap();
        assert!(!contains(&stored, b"PLAINTEXT-MARKER"));
    }
    assert_eq!(fs::read(&path).unwrap(), marker);
}

#[test]
fn a_stat_fetches_the_header_and_a_sequential_read_fetches_each_chunk_once() {
    let Some(server) = server() else { return };
    // The defaults: a 32 MiB readahead window, the shared chunk cache.
    let mut mount = TestMount::on_s3(CacheMode::Direct, CHUNK as u32, server, None);
    let data = Rng(41).bytes(24 << 20);
    fs::write(mount.path("plate.exr"), &data).unwrap();
    let stored = fs::metadata(mount.s3.as_ref().unwrap().object_file("vol/plate.exr"))
        .unwrap()
        .len();
    mount.unmount();
    mount.mount();
    let fetched = || mount.storage.as_ref().unwrap().bytes_fetched();

    // A stat needs the chunk size from the header: not the readahead window of a handle that
    // is dropped at once (it was, and the open after it fetched everything again).
    assert_eq!(
        fs::metadata(mount.path("plate.exr")).unwrap().len(),
        data.len() as u64
    );
    assert!(fetched() < 1 << 20, "a stat fetched {} bytes", fetched());

    // Two readers of one handle in turn, as the kernel's split requests arrive: every chunk
    // is fetched about once, none twice over.
    let file = File::open(mount.path("plate.exr")).unwrap();
    let mut got = vec![0u8; data.len()];
    std::thread::scope(|s| {
        let half = 512 << 10;
        let (file, got) = (&file, &mut got);
        let pieces: Vec<(usize, &mut [u8])> = got
            .chunks_mut(half)
            .enumerate()
            .map(|(i, piece)| (i * half, piece))
            .collect();
        let (even, odd): (Vec<_>, Vec<_>) =
            pieces.into_iter().partition(|(at, _)| at / half % 2 == 0);
        for side in [even, odd] {
            s.spawn(move || {
                for (at, piece) in side {
                    file.read_exact_at(piece, at as u64).unwrap();
                }
            });
        }
    });
    assert!(got == data, "the file reads back");
    let ratio = fetched() as f64 / stored as f64;
    assert!(ratio < 1.2, "fetched {:.2}× the stored size", ratio);
}

#[test]
fn a_closed_file_is_stored_whole_with_nothing_left_to_upload() {
    let Some(server) = server() else { return };
    let mut mount = TestMount::on_s3(
        CacheMode::Direct,
        CHUNK as u32,
        server,
        Some(no_readahead_no_cache),
    );
    let object = mount.s3.as_ref().unwrap().object_file("vol/frame.exr");
    // Written by appends (the asset carries its appending mark until synced), then closed.
    let mut file = File::create(mount.path("frame.exr")).unwrap();
    for piece in Rng(31).bytes(3 * CHUNK as usize + 99).chunks(20_000) {
        file.write_all(piece).unwrap();
    }
    drop(file);
    let at_close = fs::read(&object).unwrap();
    // A flush of a handle that wrote nothing (as when a forked child closes an inherited
    // descriptor) and the sync at unmount store nothing more: the close stored it all.
    let untouched = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mount.path("frame.exr"))
        .unwrap();
    let dup = untouched.try_clone().unwrap();
    drop(dup);
    drop(untouched);
    mount.unmount();
    assert!(
        fs::read(&object).unwrap() == at_close,
        "the object changed after its close: something written before it was not uploaded"
    );
}

#[test]
fn a_write_to_a_replaced_object_is_refused_and_uploads_nothing() {
    let Some(server) = server() else { return };
    let (mount, _, old_ciphertext) = two_versions(server, 23);
    let path = mount.path("frame.exr");
    let object = mount.s3.as_ref().unwrap().object_file("vol/frame.exr");

    // Opened at the new version; the old one is put back before the first write stages it.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    replace_object(
        mount.s3.as_ref().unwrap(),
        "vol/frame.exr",
        old_ciphertext.clone(),
    );
    // A whole chunk: nothing of the stored one needs reading first, only staging.
    let err = file
        .write_all_at(&vec![7u8; CHUNK as usize], 2 * CHUNK)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
    drop(file);
    assert_eq!(
        fs::read(&object).unwrap(),
        old_ciphertext,
        "the other writer's object is left as it was"
    );
}
