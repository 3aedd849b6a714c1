//! Attack tests on the mount's write path, on real FUSE mounts: a failure in the middle of a
//! write must end that write with `EIO`, never take the serving thread down, and never let a
//! half-changed asset serve later reads.
//! - the OS random number generator fails on the thread that serves the write (getrandom(2)
//!   refused by a seccomp filter): the write is `EIO`, no chunk is sealed, the mount serves on;
//! - a write panics while it holds the asset's lock: every later use of that open asset is
//!   `EIO` (the lock is poisoned and not recovered), until it is opened afresh.

mod support;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use csapfs::format::Header;
use csapfs::fs::{CacheMode, MountOptions};
use csapfs::keys::{Access, Caller, KeyError, KeyFileSource, KeySource, Licensed};
use support::Scratch;

#[path = "../format/tests/support/no_randomness.rs"]
mod no_randomness;
use no_randomness::{deny_randomness_on_this_thread, EIO};

/// The key-file source, with one fault armed for the request that meets it.
struct Faulty {
    keys: Arc<KeyFileSource>,
    /// The next open for writing takes the OS RNG away from the thread that serves it.
    deny_randomness_on_write_open: AtomicBool,
    /// The next change to an existing asset panics while the mount holds its lock.
    panic_before_change: AtomicBool,
}

impl Faulty {
    fn new(scratch: &Scratch) -> Arc<Faulty> {
        Arc::new(Faulty {
            keys: scratch.key_source(4096),
            deny_randomness_on_write_open: AtomicBool::new(false),
            panic_before_change: AtomicBool::new(false),
        })
    }
}

impl KeySource for Faulty {
    fn open_key(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
        access: Access,
    ) -> Result<Licensed, KeyError> {
        if access == Access::Write
            && self
                .deny_randomness_on_write_open
                .swap(false, Ordering::SeqCst)
        {
            deny_randomness_on_this_thread();
        }
        self.keys.open_key(caller, path, header, access)
    }

    fn create_key(&self, caller: &Caller, path: &str) -> Result<(Header, Licensed), KeyError> {
        self.keys.create_key(caller, path)
    }

    fn new_version(
        &self,
        _caller: &Caller,
        _path: &str,
        _header: &Header,
        _write_header: &mut dyn FnMut(u32) -> std::io::Result<()>,
    ) -> Result<(), KeyError> {
        if self.panic_before_change.swap(false, Ordering::SeqCst) {
            panic!("injected: a write panics while it holds the asset");
        }
        Ok(())
    }
}

fn options(threads: usize) -> MountOptions {
    MountOptions {
        // Writes reach the mount at once (no write-back from the page cache later).
        cache: CacheMode::Direct,
        threads,
        ..MountOptions::default()
    }
}

#[test]
fn a_write_without_randomness_is_eio_and_the_mount_serves_on() {
    require_fuse!();
    let scratch = Scratch::new();
    let keys = Faulty::new(&scratch);
    // One event loop: the thread that loses its RNG at the open serves the write too.
    let mounted =
        csapfs::fs::mount(&scratch.backing, &scratch.mnt, keys.clone(), &options(1)).unwrap();
    let path = scratch.mnt.join("f.bin");
    fs::write(&path, b"frame one").unwrap();
    let stored = fs::read(scratch.backing.join("f.bin")).unwrap();

    keys.deny_randomness_on_write_open
        .store(true, Ordering::SeqCst);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let err = file
        .write_at(b"FRAME", 0)
        .expect_err("sealed without a fresh nonce");
    assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
    drop(file);

    // The same thread serves on: reads need no randomness, and nothing was sealed.
    assert_eq!(fs::read(&path).unwrap(), b"frame one");
    assert_eq!(fs::read(scratch.backing.join("f.bin")).unwrap(), stored);
    mounted.unmount().unwrap();
}

#[test]
fn a_panic_in_the_middle_of_a_write_is_never_recovered_from() {
    require_fuse!();
    let scratch = Scratch::new();
    let keys = Faulty::new(&scratch);
    let mounted =
        csapfs::fs::mount(&scratch.backing, &scratch.mnt, keys.clone(), &options(4)).unwrap();
    let path = scratch.mnt.join("f.bin");
    fs::write(&path, b"frame one").unwrap();
    let reader = fs::File::open(&path).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(reader.read_at(&mut buf, 0).unwrap(), 9);

    // The writer shares the reader's open asset; its first change panics under the lock (the
    // thread serving it dies, and the kernel aborts the request).
    keys.panic_before_change.store(true, Ordering::SeqCst);
    let writer = OpenOptions::new().write(true).open(&path).unwrap();
    assert!(writer.write_at(b"FRAME", 0).is_err());

    // What that write left behind is never served: not to the reader, not to a new handle of
    // the same open asset, not through fstat.
    let err = reader
        .read_at(&mut buf, 0)
        .expect_err("served after a panicked write");
    assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
    assert_eq!(reader.metadata().unwrap_err().raw_os_error(), Some(EIO));
    match fs::File::open(&path) {
        Ok(again) => {
            let err = again
                .read_at(&mut buf, 0)
                .expect_err("served after a panicked write");
            assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
        }
        Err(err) => assert_eq!(err.raw_os_error(), Some(EIO), "{err}"),
    }

    // Once every handle is closed the asset opens afresh from its file.
    drop((reader, writer));
    let reopened = (0..50).find_map(|_| match fs::read(&path) {
        Ok(data) => Some(data),
        Err(err) => {
            // The kernel may not have released the handles yet.
            assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
            std::thread::sleep(std::time::Duration::from_millis(20));
            None
        }
    });
    assert_eq!(reopened.as_deref(), Some(&b"frame one"[..]));
    // The panicked event loop makes the session end with an error; the mount is gone either way.
    let _ = mounted.unmount();
}
