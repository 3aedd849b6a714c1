//! POSIX behaviour through real mounts (issue 14): paths deeper than `PATH_MAX`, `mknod` of
//! every type, Unix sockets, `copy_file_range`, user extended attributes sealed under the
//! file's key, and the attacks on them.

mod support;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use csapfs::format::{Header, HEADER_LEN};
use csapfs::fs::{CacheMode, MountOptions};
use csapfs::keys::{
    Access, Caller, KeyError, KeyFileSource, KeySource, Lease, Licensed, NewAssetParams,
};
use csapfs::Seed;
use rustix::fs::{Mode, OFlags};
use support::{contains, Rng, Scratch, TestMount};

const PATH_MAX: usize = 4096;
const EACCES: i32 = 13;
/// The backing extended attribute holding a file's sealed user attributes (FORMAT.md §11).
const SEALED: &str = "user.csap.xattrs";

fn both_modes() -> [CacheMode; 2] {
    [CacheMode::Direct, CacheMode::Page]
}

fn open_dir(at: impl AsFd, name: &str) -> OwnedFd {
    rustix::fs::openat(at, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
}

/// Issue 14 (a): every backing call was made on `backing.join(rel)`, so once the absolute
/// backing path reached `PATH_MAX` a legal `mkdirat`/`openat` failed with `ENAMETOOLONG`.
#[test]
fn paths_deeper_than_path_max_work_through_the_mount() {
    require_fuse!();
    for cache in both_modes() {
        let mount = TestMount::new(cache);
        let name = "d".repeat(250);
        let mut dir = open_dir(File::open(&mount.scratch.mnt).unwrap(), ".");
        let depth = 2 * PATH_MAX / name.len();
        for _ in 0..depth {
            rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            dir = open_dir(&dir, &name);
        }
        let data = Rng(3).bytes(200_000);
        let fd = rustix::fs::openat(
            &dir,
            "frame.exr",
            OFlags::CREATE | OFlags::RDWR,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        let file = File::from(fd);
        file.write_all_at(&data, 0).unwrap();
        rustix::fs::renameat(&dir, "frame.exr", &dir, "moved.exr").unwrap();
        rustix::fs::symlinkat("moved.exr", &dir, "link").unwrap();
        let mut back = Vec::new();
        File::from(rustix::fs::openat(&dir, "link", OFlags::RDONLY, Mode::empty()).unwrap())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data, "{cache:?}");
        let stat = rustix::fs::statat(&dir, "moved.exr", rustix::fs::AtFlags::empty()).unwrap();
        assert_eq!(stat.st_size as usize, data.len());
        // The backing path of that file really is beyond PATH_MAX.
        let backing_len = mount.scratch.backing.as_os_str().len() + depth * (name.len() + 1);
        assert!(backing_len > PATH_MAX);
    }
}

#[test]
fn mknod_makes_fifos_sockets_devices_and_empty_assets() {
    require_fuse!();
    let mount = TestMount::new(CacheMode::Direct);
    let mnt = File::open(&mount.scratch.mnt).unwrap();
    let at = mnt.as_fd();
    use rustix::fs::FileType as T;
    rustix::fs::mknodat(at, "fifo", T::Fifo, Mode::from_raw_mode(0o640), 0).unwrap();
    rustix::fs::mknodat(at, "sock", T::Socket, Mode::from_raw_mode(0o600), 0).unwrap();
    rustix::fs::mknodat(at, "plain", T::RegularFile, Mode::from_raw_mode(0o644), 0).unwrap();
    let fifo = fs::symlink_metadata(mount.path("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.permissions().mode() & 0o7777, 0o640);
    assert!(fs::symlink_metadata(mount.backing("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(fs::symlink_metadata(mount.path("sock"))
        .unwrap()
        .file_type()
        .is_socket());
    if rustix::process::geteuid().is_root() {
        let dev = rustix::fs::makedev(1, 3);
        rustix::fs::mknodat(
            at,
            "chr",
            T::CharacterDevice,
            Mode::from_raw_mode(0o600),
            dev,
        )
        .unwrap();
        rustix::fs::mknodat(at, "blk", T::BlockDevice, Mode::from_raw_mode(0o600), dev).unwrap();
        let chr = fs::symlink_metadata(mount.path("chr")).unwrap();
        assert!(chr.file_type().is_char_device());
        assert_eq!(chr.rdev(), dev);
        assert!(fs::symlink_metadata(mount.path("blk"))
            .unwrap()
            .file_type()
            .is_block_device());
        // The mount is nodev: the node is stored, never usable as the device through it.
        assert!(File::open(mount.path("chr")).is_err());
    }
    // mknod(S_IFREG) makes an empty asset, as create does: header, key, readable, writable.
    let stored = fs::read(mount.backing("plain")).unwrap();
    assert!(stored.len() as u64 > HEADER_LEN);
    assert_eq!(&stored[..8], b"CSAP-AST");
    assert_eq!(fs::metadata(mount.path("plain")).unwrap().len(), 0);
    assert_eq!(fs::read(mount.path("plain")).unwrap(), b"");
    fs::write(mount.path("plain"), b"written later").unwrap();
    assert_eq!(fs::read(mount.path("plain")).unwrap(), b"written later");
    // A FIFO carries data between processes (the kernel's, never the mount's).
    let reader = std::thread::spawn({
        let path = mount.path("fifo");
        move || fs::read(path).unwrap()
    });
    fs::write(mount.path("fifo"), b"through the pipe").unwrap();
    assert_eq!(reader.join().unwrap(), b"through the pipe");
}

#[test]
fn a_unix_socket_binds_and_connects_on_the_mount() {
    require_fuse!();
    let mount = TestMount::new(CacheMode::Direct);
    let path = mount.path("render.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let client = std::thread::spawn({
        let path = path.clone();
        move || {
            let mut stream = UnixStream::connect(path).unwrap();
            stream.write_all(b"frame 42").unwrap();
        }
    });
    let (mut conn, _) = listener.accept().unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    client.join().unwrap();
    assert_eq!(got, b"frame 42");
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
}

/// `len` bytes at `offset` of every stored chunk of a backing file: windows of ciphertext that
/// a copy must never reproduce under another asset's key.
fn ciphertext_windows(stored: &[u8], chunk_size: usize) -> Vec<Vec<u8>> {
    stored[HEADER_LEN as usize..]
        .chunks(chunk_size + 28)
        .filter(|chunk| chunk.len() > 60)
        .flat_map(|chunk| [chunk[..12].to_vec(), chunk[12..44].to_vec()])
        .collect()
}

#[test]
fn copy_file_range_copies_plaintext_and_reseals_it_under_the_destination_key() {
    require_fuse!();
    for cache in both_modes() {
        let mount = TestMount::with_chunk_size(cache, 4096);
        let data = Rng(7).bytes(50_000);
        fs::write(mount.path("src"), &data).unwrap();
        fs::write(mount.path("dst"), b"").unwrap();
        let src = File::open(mount.path("src")).unwrap();
        let dst = OpenOptions::new()
            .write(true)
            .open(mount.path("dst"))
            .unwrap();
        let (mut off_in, mut off_out) = (1000u64, 0u64);
        let mut copied = 0;
        while copied < 40_000 {
            let n = rustix::fs::copy_file_range(
                &src,
                Some(&mut off_in),
                &dst,
                Some(&mut off_out),
                40_000 - copied,
            )
            .unwrap();
            assert!(n > 0);
            copied += n;
        }
        drop(dst);
        assert_eq!(
            fs::read(mount.path("dst")).unwrap(),
            &data[1000..41_000],
            "{cache:?}"
        );
        let src_stored = fs::read(mount.backing("src")).unwrap();
        let dst_stored = fs::read(mount.backing("dst")).unwrap();
        for window in ciphertext_windows(&src_stored, 4096) {
            assert!(
                !contains(&dst_stored, &window),
                "ciphertext (or a nonce) of the source reappears in the destination"
            );
        }
        // The destination is its own asset: another id, so another key.
        let id = |stored: &[u8]| stored[16..32].to_vec();
        assert_ne!(id(&src_stored), id(&dst_stored));
    }
}

/// A key file source whose leases one flag revokes.
struct Revocable {
    inner: KeyFileSource,
    revoked: Arc<AtomicBool>,
}

impl Revocable {
    fn lease(&self) -> Lease {
        Lease::tied_to(self.revoked.clone(), i64::MAX)
    }
}

impl KeySource for Revocable {
    fn open_key(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
        access: Access,
    ) -> Result<Licensed, KeyError> {
        let key = self.inner.open_key(caller, path, header, access)?.key;
        Ok(Licensed {
            key,
            lease: self.lease(),
        })
    }

    fn create_key(&self, caller: &Caller, path: &str) -> Result<(Header, Licensed), KeyError> {
        let (header, licensed) = self.inner.create_key(caller, path)?;
        Ok((
            header,
            Licensed {
                key: licensed.key,
                lease: Lease::permanent(),
            },
        ))
    }
}

#[test]
fn copy_file_range_from_a_source_the_caller_may_no_longer_read_fails_as_read_does() {
    require_fuse!();
    let scratch = Scratch::new();
    let revoked = Arc::new(AtomicBool::new(false));
    let keys = Arc::new(Revocable {
        inner: KeyFileSource::new(
            Seed::from_file(&scratch.key_file).unwrap(),
            NewAssetParams {
                chunk_size: 4096,
                ..NewAssetParams::default()
            },
        ),
        revoked: revoked.clone(),
    });
    let options = MountOptions {
        threads: 2,
        ..MountOptions::default()
    };
    let mounted = csapfs::fs::mount(&scratch.backing, &scratch.mnt, keys, &options).unwrap();
    let path = |name: &str| scratch.mnt.join(name);
    fs::write(path("src"), b"licensed frame").unwrap();
    let src = File::open(path("src")).unwrap();
    let dst = File::create(path("dst")).unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(src.read_at(&mut buf, 0).unwrap(), 4);
    revoked.store(true, Ordering::Release);
    let read = src.read_at(&mut buf, 0).unwrap_err();
    let copy = rustix::fs::copy_file_range(&src, Some(&mut 0), &dst, Some(&mut 0), 8)
        .map_err(std::io::Error::from)
        .unwrap_err();
    assert_eq!(read.raw_os_error(), Some(EACCES));
    assert_eq!(copy.raw_os_error(), read.raw_os_error());
    drop((src, dst));
    mounted.unmount().unwrap();
}

/// Attack: attributes are the file's content too. Once the license that allows a caller the
/// file is revoked, its attributes are refused like its bytes — for a closed file (licensed
/// afresh for the attribute call) and for one held open — and so is a truncate by path.
#[test]
fn a_revoked_license_reaches_attributes_and_truncation_too() {
    require_fuse!();
    let scratch = Scratch::new();
    let revoked = Arc::new(AtomicBool::new(false));
    let keys = Arc::new(Revocable {
        inner: KeyFileSource::new(
            Seed::from_file(&scratch.key_file).unwrap(),
            NewAssetParams::default(),
        ),
        revoked: revoked.clone(),
    });
    let options = MountOptions {
        threads: 2,
        ..MountOptions::default()
    };
    let mounted = csapfs::fs::mount(&scratch.backing, &scratch.mnt, keys, &options).unwrap();
    let closed = scratch.mnt.join("closed");
    let held = scratch.mnt.join("held");
    for file in [&closed, &held] {
        fs::write(file, b"frame").unwrap();
        rustix::fs::setxattr(file, "user.grade", b"v3", rustix::fs::XattrFlags::empty()).unwrap();
        assert_eq!(xattr(file, "user.grade").unwrap(), b"v3");
    }
    let open = File::open(&held).unwrap();
    revoked.store(true, Ordering::Release);
    for file in [&closed, &held] {
        assert_eq!(
            xattr(file, "user.grade").unwrap_err(),
            rustix::io::Errno::ACCESS
        );
        let set = rustix::fs::setxattr(file, "user.grade", b"x", rustix::fs::XattrFlags::empty());
        assert_eq!(set.unwrap_err(), rustix::io::Errno::ACCESS);
        let listed = rustix::fs::listxattr(file, &mut [0u8; 256]);
        assert_eq!(listed.unwrap_err(), rustix::io::Errno::ACCESS);
        let cut = OpenOptions::new()
            .write(true)
            .open(file)
            .and_then(|f| f.set_len(0));
        assert_eq!(cut.unwrap_err().raw_os_error(), Some(EACCES));
        // By path, without an open of its own (truncate(2)).
        let by_path = nix::unistd::truncate(file.as_path(), 0);
        assert_eq!(by_path.unwrap_err(), nix::errno::Errno::EACCES);
    }
    drop(open);
    revoked.store(false, Ordering::Release);
    assert_eq!(
        fs::read(&held).unwrap(),
        b"frame",
        "a refused truncate cut nothing"
    );
    mounted.unmount().unwrap();
}

#[test]
fn user_xattrs_are_set_read_listed_and_removed_sealed_under_the_file_key() {
    require_fuse!();
    let mut mount = TestMount::new(CacheMode::Direct);
    let file = mount.path("f0001.exr");
    fs::write(&file, b"pixels").unwrap();
    let value = b"colour: ACEScg, grade v3";
    rustix::fs::setxattr(&file, "user.grade", value, rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::setxattr(&file, "user.shot", b"010", rustix::fs::XattrFlags::CREATE).unwrap();
    let exists = rustix::fs::setxattr(&file, "user.shot", b"x", rustix::fs::XattrFlags::CREATE);
    assert_eq!(exists.unwrap_err(), rustix::io::Errno::EXIST);
    let absent = rustix::fs::setxattr(&file, "user.none", b"x", rustix::fs::XattrFlags::REPLACE);
    assert_eq!(absent.unwrap_err(), rustix::io::Errno::NODATA);
    // Nothing readable in the backing store: not the value, not the name.
    let sealed = xattr(&mount.backing("f0001.exr"), SEALED).unwrap();
    assert!(!contains(&sealed, b"ACEScg") && !contains(&sealed, b"grade"));
    mount.remount();
    assert_eq!(xattr(&file, "user.grade").unwrap(), value);
    assert_eq!(list_xattrs(&file), ["user.grade", "user.shot"]);
    rustix::fs::removexattr(&file, "user.grade").unwrap();
    assert_eq!(
        xattr(&file, "user.grade").unwrap_err(),
        rustix::io::Errno::NODATA
    );
    assert_eq!(list_xattrs(&file), ["user.shot"]);
    rustix::fs::removexattr(&file, "user.shot").unwrap();
    assert!(list_xattrs(&file).is_empty());
    // The last one removed takes the sealed set with it.
    assert_eq!(
        xattr(&mount.backing("f0001.exr"), SEALED).unwrap_err(),
        rustix::io::Errno::NODATA
    );
    // Also through an open handle, and the content is untouched.
    let open = File::open(&file).unwrap();
    rustix::fs::fsetxattr(&open, "user.k", b"v", rustix::fs::XattrFlags::empty()).unwrap();
    assert_eq!(xattr(&file, "user.k").unwrap(), b"v");
    assert_eq!(fs::read(&file).unwrap(), b"pixels");
}

#[test]
fn trusted_security_and_directory_attributes_are_refused() {
    require_fuse!();
    let mount = TestMount::new(CacheMode::Direct);
    let file = mount.path("f");
    fs::write(&file, b"x").unwrap();
    fs::create_dir(mount.path("dir")).unwrap();
    let set = |path: &Path, name: &str| {
        rustix::fs::setxattr(path, name, b"v", rustix::fs::XattrFlags::empty()).unwrap_err()
    };
    assert_eq!(set(&file, "trusted.overlay"), rustix::io::Errno::PERM);
    assert_eq!(set(&file, "security.selinux"), rustix::io::Errno::OPNOTSUPP);
    assert_eq!(
        set(&mount.path("dir"), "user.note"),
        rustix::io::Errno::OPNOTSUPP
    );
    // What the kernel itself asks for (capabilities before a write, ACLs) finds nothing.
    assert_eq!(
        xattr(&file, "security.capability").unwrap_err(),
        rustix::io::Errno::NODATA
    );
    assert!(list_xattrs(&mount.path("dir")).is_empty());
    assert!(list_xattrs(&file).is_empty());
}

#[test]
fn tampered_or_transplanted_xattr_ciphertext_is_eio_never_garbage() {
    require_fuse!();
    let mount = TestMount::new(CacheMode::Direct);
    for name in ["a", "b", "c"] {
        fs::write(mount.path(name), b"frame").unwrap();
        rustix::fs::setxattr(
            mount.path(name),
            "user.note",
            b"secret note",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }
    // One flipped bit in the stored set.
    let mut sealed = xattr(&mount.backing("a"), SEALED).unwrap();
    let last = sealed.len() - 1;
    sealed[last] ^= 1;
    set_backing_xattr(&mount.backing("a"), &sealed);
    // Another file's authentic set, moved onto this one.
    let theirs = xattr(&mount.backing("c"), SEALED).unwrap();
    set_backing_xattr(&mount.backing("b"), &theirs);
    for name in ["a", "b"] {
        let path = mount.path(name);
        assert_eq!(
            xattr(&path, "user.note").unwrap_err(),
            rustix::io::Errno::IO
        );
        let mut list = vec![0u8; 256];
        assert_eq!(
            rustix::fs::listxattr(&path, &mut list[..]).unwrap_err(),
            rustix::io::Errno::IO
        );
        let change = rustix::fs::setxattr(&path, "user.x", b"y", rustix::fs::XattrFlags::empty());
        assert_eq!(change.unwrap_err(), rustix::io::Errno::IO, "{name}");
        // The file's content is unaffected.
        assert_eq!(fs::read(&path).unwrap(), b"frame");
    }
    assert_eq!(
        xattr(&mount.path("c"), "user.note").unwrap(),
        b"secret note"
    );
}

/// An attacker with write access to the backing directory swaps a file the kernel knows for a
/// symlink to a file elsewhere. The daemon (root with `allow_other`) used to follow it:
/// `chmod` through the mount changed the target (`fs::set_permissions` on the joined path).
#[test]
fn a_symlink_planted_in_the_backing_store_cannot_redirect_chmod() {
    require_fuse!();
    let mount = TestMount::new(CacheMode::Direct);
    let outside = tempfile::NamedTempFile::new().unwrap();
    fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o600)).unwrap();
    let file = mount.path("f");
    fs::write(&file, b"x").unwrap();
    // The kernel now holds the inode of "f" (regular file) for the attribute TTL.
    fs::metadata(&file).unwrap();
    fs::remove_file(mount.backing("f")).unwrap();
    std::os::unix::fs::symlink(outside.path(), mount.backing("f")).unwrap();
    let _ = fs::set_permissions(&file, fs::Permissions::from_mode(0o777));
    let mode = fs::metadata(outside.path()).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "chmod through the mount followed a backing symlink"
    );
}

fn xattr(path: &Path, name: &str) -> Result<Vec<u8>, rustix::io::Errno> {
    let mut value = vec![0u8; 65536];
    let n = rustix::fs::getxattr(path, name, &mut value[..])?;
    value.truncate(n);
    Ok(value)
}

fn set_backing_xattr(path: &Path, value: &[u8]) {
    rustix::fs::setxattr(path, SEALED, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn list_xattrs(path: &Path) -> Vec<String> {
    let mut list = vec![0u8; 4096];
    let n = rustix::fs::listxattr(path, &mut list[..]).unwrap();
    list[..n]
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8(name.to_vec()).unwrap())
        .collect()
}
