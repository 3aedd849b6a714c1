//! Real FUSE mounts in temp dirs, in process: file operations, sparse files, integrity, the
//! ciphertext-only backing store. Process-level tests (kill -9, the CLI) are in
//! `cli/tests/mount.rs` and share `support/`.

mod support;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use csapfs::format::{CHUNK_OVERHEAD, HEADER_LEN};
use csapfs::fs::CacheMode;
use support::{contains, files_under, Rng, TestMount};

const EIO: i32 = 5;
const GIB: u64 = 1 << 30;

fn both_modes() -> [CacheMode; 2] {
    [CacheMode::Direct, CacheMode::Page]
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn assert_same_tree(a: &Path, b: &Path) {
    let mut names_a: Vec<_> = fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut names_b: Vec<_> = fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "listing of {}", a.display());
    for name in names_a {
        let (pa, pb) = (a.join(&name), b.join(&name));
        let ma = fs::symlink_metadata(&pa).unwrap();
        if ma.is_dir() {
            assert_same_tree(&pa, &pb);
        } else if ma.file_type().is_symlink() {
            assert_eq!(fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
        } else {
            assert_eq!(
                fs::read(&pa).unwrap(),
                fs::read(&pb).unwrap(),
                "{}",
                pa.display()
            );
            assert_eq!(fs::metadata(&pb).unwrap().len(), ma.len());
        }
    }
}

#[test]
fn copy_a_tree_in_and_out() {
    require_fuse!();
    for cache in both_modes() {
        let mount = TestMount::new(cache);
        let src = mount.scratch.dir.path().join("src");
        let mut rng = Rng(7);
        fs::create_dir_all(src.join("shot010/renders")).unwrap();
        fs::create_dir_all(src.join("empty_dir")).unwrap();
        let chunk = 65536usize;
        for (i, size) in [
            0,
            1,
            4095,
            chunk - 1,
            chunk,
            chunk + 1,
            3 * chunk + 17,
            3 << 20,
        ]
        .into_iter()
        .enumerate()
        {
            fs::write(
                src.join(format!("shot010/renders/f{i:04}.exr")),
                rng.bytes(size),
            )
            .unwrap();
        }
        fs::write(src.join("notes.txt"), b"frame notes\n").unwrap();
        std::os::unix::fs::symlink("shot010/renders/f0001.exr", src.join("latest")).unwrap();

        copy_tree(&src, &mount.path("show"));
        let out = mount.scratch.dir.path().join("out");
        copy_tree(&mount.path("show"), &out);
        assert_same_tree(&src, &out);
        assert_same_tree(&src, &mount.path("show"));
    }
}

#[test]
fn random_operations_match_a_model_direct() {
    require_fuse!();
    support::model::run(
        &TestMount::with_chunk_size(CacheMode::Direct, 4096),
        0xC5A9,
        2500,
    );
}

#[test]
fn random_operations_match_a_model_page() {
    require_fuse!();
    support::model::run(
        &TestMount::with_chunk_size(CacheMode::Page, 4096),
        0xF00D,
        2000,
    );
}

#[test]
fn concurrent_readers_and_writers_on_one_file() {
    require_fuse!();
    let mount = TestMount::new(CacheMode::Direct);
    const BLOCK: usize = 4096;
    const WRITERS: usize = 3;
    const BLOCKS_PER_WRITER: usize = 48; // regions straddle chunk boundaries
    let path = mount.path("shared.bin");
    let file = File::create(&path).unwrap();
    for w in 0..WRITERS {
        let fill = vec![(w as u8) << 4; BLOCK * BLOCKS_PER_WRITER];
        file.write_all_at(&fill, (w * BLOCK * BLOCKS_PER_WRITER) as u64)
            .unwrap();
    }
    drop(file);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let path = path.clone();
        threads.push(std::thread::spawn(move || {
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            let mut rng = Rng(w as u64 + 100);
            for round in 0..300u32 {
                // Every block is filled with one byte: writer id in the high nibble.
                let byte = ((w as u8) << 4) | (round % 16) as u8;
                let blocks = rng.below(5) as usize + 1;
                let first = rng.below((BLOCKS_PER_WRITER - blocks + 1) as u64) as usize;
                let at = (w * BLOCKS_PER_WRITER + first) * BLOCK;
                file.write_all_at(&vec![byte; blocks * BLOCK], at as u64)
                    .unwrap();
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..3u64 {
        let path = path.clone();
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            let file = File::open(&path).unwrap();
            let mut rng = Rng(r);
            let mut buf = vec![0u8; BLOCK * 8];
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) || reads < 50 {
                let block = rng.below((WRITERS * BLOCKS_PER_WRITER - 8) as u64) as usize;
                file.read_exact_at(&mut buf, (block * BLOCK) as u64)
                    .unwrap();
                for (k, b) in buf.chunks(BLOCK).enumerate() {
                    let owner = (block + k) / BLOCKS_PER_WRITER;
                    assert!(b.iter().all(|&x| x == b[0]), "torn block {}", block + k);
                    assert_eq!(
                        (b[0] >> 4) as usize,
                        owner,
                        "block {} has another writer's data",
                        block + k
                    );
                }
                reads += 1;
            }
            reads
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() >= 50);
    }
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        (WRITERS * BLOCKS_PER_WRITER * BLOCK) as u64
    );
}

#[test]
fn sparse_file_beyond_4_gib() {
    require_fuse!();
    for cache in both_modes() {
        let mount = TestMount::new(cache);
        let path = mount.path("huge.bin");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(5 * GIB).unwrap();
        let marker = b"written at four and a half GiB";
        let at = 4 * GIB + GIB / 2 + 12345;
        file.write_all_at(marker, at).unwrap();
        let mut back = vec![0u8; marker.len()];
        file.read_exact_at(&mut back, at).unwrap();
        assert_eq!(&back, marker);
        let mut hole = vec![1u8; 200_000];
        file.read_exact_at(&mut hole, GIB + 7).unwrap();
        assert!(hole.iter().all(|&b| b == 0), "a hole must read as zeros");
        let mut tail = vec![1u8; 100];
        file.read_exact_at(&mut tail, 5 * GIB - 100).unwrap();
        assert!(tail.iter().all(|&b| b == 0));
        assert_eq!(file.read_at(&mut tail, 5 * GIB).unwrap(), 0, "EOF at 5 GiB");
        drop(file);
        assert_eq!(fs::metadata(&path).unwrap().len(), 5 * GIB);
        // The backing file is sparse too: a few chunks, not 5 GiB of encrypted zeros.
        let allocated = fs::metadata(mount.backing("huge.bin")).unwrap().blocks() * 512;
        assert!(
            allocated < 64 << 20,
            "backing file allocates {allocated} bytes"
        );
    }
}

#[test]
fn truncate_up_and_down_reads_zeros_like_ext4() {
    require_fuse!();
    let mount = TestMount::new(CacheMode::Direct);
    let path = mount.path("t");
    fs::write(&path, vec![7u8; 100_000]).unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(30_000).unwrap();
    file.set_len(300_000).unwrap();
    drop(file);
    let data = fs::read(&path).unwrap();
    assert_eq!(data.len(), 300_000);
    assert!(data[..30_000].iter().all(|&b| b == 7));
    assert!(
        data[30_000..].iter().all(|&b| b == 0),
        "extended range reads zeros"
    );
}

#[test]
fn unlinked_open_file_stays_readable() {
    require_fuse!();
    let mount = TestMount::new(CacheMode::Direct);
    let path = mount.path("doomed");
    fs::write(&path, b"still here after unlink").unwrap();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    assert!(!mount.backing("doomed").exists());
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    assert_eq!(text, "still here after unlink");
    file.write_all_at(b"STILL", 0).unwrap();
    let mut back = [0u8; 5];
    file.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back, b"STILL");
    assert_eq!(file.metadata().unwrap().len(), 23);
}

#[test]
fn rename_over_an_open_file() {
    require_fuse!();
    for cache in both_modes() {
        let mount = TestMount::new(cache);
        fs::write(mount.path("a"), b"old content of a").unwrap();
        fs::write(mount.path("b"), b"new content").unwrap();
        let open_a = File::open(mount.path("a")).unwrap();
        fs::rename(mount.path("b"), mount.path("a")).unwrap();
        let mut text = String::new();
        (&open_a).read_to_string(&mut text).unwrap();
        assert_eq!(
            text, "old content of a",
            "the open handle keeps the replaced file"
        );
        assert_eq!(fs::read(mount.path("a")).unwrap(), b"new content");
        assert!(!mount.path("b").exists());
        // A renamed directory keeps its children reachable under the new name.
        fs::create_dir_all(mount.path("dir/sub")).unwrap();
        fs::write(mount.path("dir/sub/f"), b"deep").unwrap();
        fs::rename(mount.path("dir"), mount.path("moved")).unwrap();
        assert_eq!(fs::read(mount.path("moved/sub/f")).unwrap(), b"deep");
        fs::write(mount.path("moved/sub/g"), b"new").unwrap();
        assert_eq!(fs::read(mount.path("moved/sub/g")).unwrap(), b"new");
    }
}

#[test]
fn tampered_chunk_fails_only_its_own_range() {
    require_fuse!();
    for cache in both_modes() {
        let mut mount = TestMount::new(cache);
        let chunk = 65536u64;
        let mut rng = Rng(3);
        let data = rng.bytes(4 * chunk as usize);
        fs::write(mount.path("frame.exr"), &data).unwrap();
        mount.unmount();
        // Flip one ciphertext byte inside chunk 2.
        let backing = OpenOptions::new()
            .read(true)
            .write(true)
            .open(mount.backing("frame.exr"))
            .unwrap();
        let at = HEADER_LEN + 2 * (chunk + CHUNK_OVERHEAD) + 12 + 100;
        let mut byte = [0u8; 1];
        backing.read_exact_at(&mut byte, at).unwrap();
        backing.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
        drop(backing);
        mount.mount();

        let file = File::open(mount.path("frame.exr")).unwrap();
        let mut buf = vec![0u8; 4096];
        let err = file.read_exact_at(&mut buf, 2 * chunk + 8192).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(EIO),
            "{cache:?}: tampered chunk must give EIO"
        );
        for index in [0u64, 1, 3] {
            let mut good = vec![0u8; chunk as usize];
            file.read_exact_at(&mut good, index * chunk).unwrap();
            assert_eq!(
                good,
                &data[(index * chunk) as usize..((index + 1) * chunk) as usize]
            );
        }
        let err = fs::read(mount.path("frame.exr")).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(EIO),
            "a whole-file read must fail, not return partial data"
        );
    }
}

#[test]
fn backing_files_never_contain_plaintext() {
    require_fuse!();
    let mount = TestMount::with_chunk_size(CacheMode::Page, 4096);
    let marker = b"CSAP-PLAINTEXT-MARKER-7f3a";
    let mut rng = Rng(11);
    for i in 0..6 {
        let mut data = Vec::new();
        for _ in 0..(i * 300 + 1) {
            data.extend_from_slice(marker);
            let len = rng.below(40) as usize;
            data.extend_from_slice(&rng.bytes(len));
        }
        let path = mount.path(&format!("f{i}"));
        fs::write(&path, &data).unwrap();
        // Partial overwrites and truncates re-seal chunks: still no plaintext.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(marker, (data.len() / 2) as u64).unwrap();
        file.set_len((data.len() * 2) as u64).unwrap();
        file.write_all_at(marker, (data.len() * 2 - 5) as u64)
            .unwrap();
        file.sync_all().unwrap();
    }
    fs::write(mount.path("small"), marker).unwrap();
    let files = files_under(&mount.scratch.backing);
    assert_eq!(files.len(), 7);
    for file in files {
        let bytes = fs::read(&file).unwrap();
        assert!(
            !contains(&bytes, marker),
            "plaintext marker found in {}",
            file.display()
        );
        assert!(
            !contains(&bytes, &marker[..12]),
            "plaintext fragment in {}",
            file.display()
        );
    }
}

#[test]
fn a_non_asset_file_fails_with_eio_and_never_shows_ciphertext() {
    require_fuse!();
    let mount = TestMount::new(CacheMode::Direct);
    fs::write(
        mount.backing("readme.txt"),
        b"this was copied in without encryption",
    )
    .unwrap();
    fs::write(mount.backing("empty"), b"").unwrap();
    let names: Vec<String> = fs::read_dir(&mount.scratch.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"readme.txt".to_string()),
        "listed like any other file"
    );
    for name in ["readme.txt", "empty"] {
        let err = File::open(mount.path(name)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EIO), "{name}");
        assert_eq!(fs::metadata(mount.path(name)).unwrap().len(), 0);
    }
    // An asset from another key is refused the same way.
    let other = TestMount::new(CacheMode::Direct);
    fs::write(other.path("theirs"), b"secret").unwrap();
    fs::copy(other.backing("theirs"), mount.backing("theirs")).unwrap();
    assert_eq!(
        File::open(mount.path("theirs")).unwrap_err().raw_os_error(),
        Some(EIO)
    );
}

#[test]
fn metadata_links_and_directories() {
    require_fuse!();
    let mount = TestMount::new(CacheMode::Direct);
    fs::write(mount.path("f"), b"hello").unwrap();
    // Inode numbers are the backing file's (passthrough numbering).
    assert_eq!(
        fs::metadata(mount.path("f")).unwrap().ino(),
        fs::metadata(mount.backing("f")).unwrap().ino()
    );

    fs::hard_link(mount.path("f"), mount.path("g")).unwrap();
    let (mf, mg) = (
        fs::metadata(mount.path("f")).unwrap(),
        fs::metadata(mount.path("g")).unwrap(),
    );
    assert_eq!(mf.ino(), mg.ino());
    assert_eq!(mg.nlink(), 2);
    OpenOptions::new()
        .write(true)
        .open(mount.path("g"))
        .unwrap()
        .write_all_at(b"J", 0)
        .unwrap();
    assert_eq!(fs::read(mount.path("f")).unwrap(), b"Jello");
    fs::remove_file(mount.path("f")).unwrap();
    assert_eq!(fs::read(mount.path("g")).unwrap(), b"Jello");

    std::os::unix::fs::symlink("g", mount.path("link")).unwrap();
    assert_eq!(fs::read_link(mount.path("link")).unwrap(), Path::new("g"));
    assert_eq!(fs::read(mount.path("link")).unwrap(), b"Jello");

    fs::set_permissions(mount.path("g"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(mount.path("g")).unwrap().mode() & 0o777, 0o640);
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(mount.path("g"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    assert_eq!(
        fs::metadata(mount.path("g")).unwrap().mtime(),
        1_000_000_000
    );
    std::os::unix::fs::chown(mount.path("g"), Some(1234), Some(5678)).unwrap();
    let m = fs::metadata(mount.path("g")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));

    fs::create_dir(mount.path("d")).unwrap();
    assert!(fs::metadata(mount.path("d")).unwrap().is_dir());
    fs::write(mount.path("d/x"), b"").unwrap();
    assert_eq!(
        fs::remove_dir(mount.path("d")).unwrap_err().raw_os_error(),
        Some(39)
    ); // ENOTEMPTY
    fs::remove_file(mount.path("d/x")).unwrap();
    fs::remove_dir(mount.path("d")).unwrap();
    assert!(!mount.backing("d").exists());

    // fallocate grows the file with zeros; KEEP_SIZE is a hint; hole punching is refused.
    let g = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mount.path("g"))
        .unwrap();
    use nix::fcntl::{fallocate, FallocateFlags};
    fallocate(&g, FallocateFlags::empty(), 0, 100_000).unwrap();
    assert_eq!(g.metadata().unwrap().len(), 100_000);
    assert_eq!(&fs::read(mount.path("g")).unwrap()[..6], b"Jello\0");
    fallocate(&g, FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, 200_000).unwrap();
    assert_eq!(g.metadata().unwrap().len(), 100_000);
    let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    assert!(fallocate(&g, punch, 0, 4096).is_err());

    let st = nix::sys::statvfs::statvfs(&mount.scratch.mnt).unwrap();
    assert!(st.blocks() > 0);
}

#[test]
fn key_file_assets_interoperate_with_the_library_stream_codec() {
    require_fuse!();
    let mount = TestMount::new(CacheMode::Direct);
    let keys = mount.scratch.key_source(16384);
    let plain = Rng(5).bytes(100_000);
    // Encrypted outside the mount (what `csap asset encrypt --key-file` does) → readable inside.
    let (header, key) = keys.new_asset().unwrap();
    let out = File::create(mount.backing("outside.bin")).unwrap();
    csapfs::stream::encrypt_stream(&plain[..], out, &header, &key).unwrap();
    assert_eq!(fs::read(mount.path("outside.bin")).unwrap(), plain);
    // Written inside → decryptable outside.
    fs::write(mount.path("inside.bin"), &plain).unwrap();
    let mut back = Vec::new();
    csapfs::stream::decrypt_stream(
        File::open(mount.backing("inside.bin")).unwrap(),
        &mut back,
        |header| {
            keys.key_for(header)
                .map_err(|e| csapfs::AssetError::Io(std::io::Error::other(e.to_string())))
        },
    )
    .unwrap();
    assert_eq!(back, plain);
}

#[test]
fn read_only_mount_refuses_writes() {
    require_fuse!();
    let mut mount = TestMount::new(CacheMode::Direct);
    fs::write(mount.path("kept"), b"data").unwrap();
    mount.unmount();
    mount.options.read_only = true;
    mount.mount();
    assert_eq!(fs::read(mount.path("kept")).unwrap(), b"data");
    let err = OpenOptions::new()
        .write(true)
        .open(mount.path("kept"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30)); // EROFS
    assert_eq!(
        fs::write(mount.path("new"), b"x")
            .unwrap_err()
            .raw_os_error(),
        Some(30)
    );
}
