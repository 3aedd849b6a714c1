//! The local backend through the [`Storage`] trait, on a real temporary directory.

use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::*;

const PATH_MAX: usize = 4096;

fn backing() -> (tempfile::TempDir, LocalDir) {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalDir::open(dir.path()).unwrap();
    (dir, storage)
}

/// `depth` nested directories of 200-byte names: far beyond `PATH_MAX` as one path.
fn deep_tree(storage: &LocalDir, depth: usize) -> PathBuf {
    let mut path = PathBuf::new();
    for level in 0..depth {
        path.push(format!("{level:03}{}", "d".repeat(197)));
        storage.make_dir(&path, 0o755, None).unwrap();
    }
    path
}

fn exercise_deep_paths(storage: &LocalDir, root: &Path) {
    let deep = deep_tree(storage, 30);
    assert!(root.join(&deep).as_os_str().len() > PATH_MAX);
    let file = deep.join("frame.exr");
    let object = storage.create(&file, 0o640, None).unwrap();
    object.write_all_at(b"sealed bytes", 0).unwrap();
    drop(object);
    let attr = storage.stat(&file).unwrap();
    assert_eq!((attr.kind, attr.size, attr.perm), (Kind::File, 12, 0o640));
    let mut buf = [0u8; 12];
    let n = storage
        .open(&file, OpenMode::Read)
        .unwrap()
        .read_at(&mut buf, 0)
        .unwrap();
    assert_eq!(&buf[..n], b"sealed bytes");
    let names: Vec<_> = storage
        .list(&deep)
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["frame.exr"]);
    let moved = deep.join("renamed.exr");
    storage.rename(&file, &moved, Replace::Never).unwrap();
    storage
        .set_attr(
            &moved,
            &AttrChange {
                perm: Some(0o600),
                ..AttrChange::default()
            },
        )
        .unwrap();
    assert_eq!(storage.stat(&moved).unwrap().perm, 0o600);
    storage
        .make_symlink(&deep.join("link"), Path::new("renamed.exr"), None)
        .unwrap();
    assert_eq!(
        storage.read_link(&deep.join("link")).unwrap(),
        Path::new("renamed.exr")
    );
    storage.sync_dir(&deep).unwrap();
    storage.remove_file(&deep.join("link")).unwrap();
    storage.remove_file(&moved).unwrap();
    let mut dir = deep.clone();
    loop {
        storage.remove_dir(&dir).unwrap();
        if !dir.pop() || dir.as_os_str().is_empty() {
            break;
        }
    }
    assert!(storage.list(Path::new("")).unwrap().is_empty());
}

#[test]
fn paths_far_beyond_path_max_work_with_openat2() {
    let (dir, storage) = backing();
    exercise_deep_paths(&storage, dir.path());
}

#[test]
fn paths_far_beyond_path_max_work_one_component_at_a_time() {
    let (dir, storage) = backing();
    storage.no_openat2.store(true, Ordering::Relaxed);
    exercise_deep_paths(&storage, dir.path());
}

#[test]
fn a_symlink_planted_in_the_backing_store_is_never_followed() {
    let (dir, storage) = backing();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
    std::os::unix::fs::symlink("/tmp", dir.path().join("dirlink")).unwrap();
    let chmod = AttrChange {
        perm: Some(0o777),
        ..AttrChange::default()
    };
    assert!(storage.set_attr(Path::new("link"), &chmod).is_err());
    let mode = std::fs::metadata(outside.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "chmod followed a backing symlink");
    assert!(storage
        .open(Path::new("link"), OpenMode::ReadWrite)
        .is_err());
    assert_eq!(storage.stat(Path::new("link")).unwrap().kind, Kind::Symlink);
    assert!(storage.stat(Path::new("dirlink/x")).is_err());
    let name = format!("csap-never-created-{}", std::process::id());
    assert!(storage
        .create(&Path::new("dirlink").join(&name), 0o600, None)
        .is_err());
    assert!(
        !Path::new("/tmp").join(&name).exists(),
        "create followed a backing symlink"
    );
}

#[test]
fn paths_that_leave_the_root_are_refused() {
    let (_dir, storage) = backing();
    for path in ["../x", "a/../../x", "/etc/passwd", "./x"] {
        let err = storage.stat(Path::new(path)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(22), "{path}: {err}");
    }
}

#[test]
fn a_rename_forgets_the_handles_below_it() {
    let (_dir, storage) = backing();
    storage.make_dir(Path::new("a"), 0o755, None).unwrap();
    storage.make_dir(Path::new("a/b"), 0o755, None).unwrap();
    storage.create(Path::new("a/b/f"), 0o644, None).unwrap();
    storage.stat(Path::new("a/b/f")).unwrap(); // caches the handle of a/b
    storage
        .rename(Path::new("a"), Path::new("c"), Replace::Never)
        .unwrap();
    storage.make_dir(Path::new("a"), 0o755, None).unwrap();
    storage.make_dir(Path::new("a/b"), 0o755, None).unwrap();
    assert_eq!(
        storage.stat(Path::new("a/b/f")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    storage.stat(Path::new("c/b/f")).unwrap();
}

#[test]
fn special_nodes_are_stored_as_themselves() {
    let (dir, storage) = backing();
    storage
        .make_special(Path::new("fifo"), Special::Fifo, 0o640, None)
        .unwrap();
    storage
        .make_special(Path::new("sock"), Special::Socket, 0o600, None)
        .unwrap();
    let fifo = storage.stat(Path::new("fifo")).unwrap();
    assert_eq!((fifo.kind, fifo.perm), (Kind::Fifo, 0o640));
    assert!(std::fs::symlink_metadata(dir.path().join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(storage.stat(Path::new("sock")).unwrap().kind, Kind::Socket);
    if rustix::process::geteuid().is_root() {
        let dev = Special::CharDevice { major: 1, minor: 3 };
        storage
            .make_special(Path::new("null"), dev, 0o666, None)
            .unwrap();
        let null = storage.stat(Path::new("null")).unwrap();
        assert_eq!(
            (null.kind, null.rdev),
            (Kind::CharDevice, rustix::fs::makedev(1, 3))
        );
        // Opening it as an asset must not open the device.
        assert!(storage.open(Path::new("null"), OpenMode::Read).is_err());
    }
}

#[test]
fn put_new_is_all_or_nothing_and_never_replaces() {
    let (dir, storage) = backing();
    let path = Path::new("shot/010/f0001.exr");
    let err = storage
        .put_new(path, &mut |out: &mut dyn Write| {
            out.write_all(b"half")?;
            Err(std::io::Error::other("source went away"))
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "source went away");
    assert!(
        storage.list(Path::new("shot/010")).unwrap().is_empty(),
        "a partial was left"
    );
    storage
        .put_new(path, &mut |out: &mut dyn Write| out.write_all(b"whole"))
        .unwrap();
    assert_eq!(std::fs::read(dir.path().join(path)).unwrap(), b"whole");
    let again = storage.put_new(path, &mut |out: &mut dyn Write| out.write_all(b"other"));
    assert_eq!(again.unwrap_err().kind(), ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(dir.path().join(path)).unwrap(), b"whole");
}

#[test]
fn a_partial_left_by_a_dead_importer_is_removed_by_the_next_put() {
    let (dir, storage) = backing();
    std::fs::create_dir(dir.path().join("shot")).unwrap();
    // No process has pid 2^22 + 1 (above the kernel's largest pid_max).
    let stale = dir.path().join("shot/.f1.csap-import-4194305");
    std::fs::write(&stale, b"cut short").unwrap();
    storage
        .put_new(Path::new("shot/f2"), &mut |out: &mut dyn Write| {
            out.write_all(b"x")
        })
        .unwrap();
    assert!(!stale.exists());
}

#[test]
fn sealed_attributes_are_kept_with_the_backing_file() {
    let (_dir, storage) = backing();
    let object = storage.create(Path::new("f"), 0o600, None).unwrap();
    assert_eq!(object.sealed_xattrs().unwrap(), None);
    object.set_sealed_xattrs(Some(b"sealed")).unwrap();
    let reopened = storage.open(Path::new("f"), OpenMode::Read).unwrap();
    assert_eq!(
        reopened.sealed_xattrs().unwrap().as_deref(),
        Some(&b"sealed"[..])
    );
    reopened.set_sealed_xattrs(None).unwrap();
    assert_eq!(object.sealed_xattrs().unwrap(), None);
    object.set_sealed_xattrs(None).unwrap();
}
