//! Real-mount test harness, shared by `csapfs/tests/mount.rs` (in-process mounts) and
//! `cli/tests/mount.rs` (the `csap` binary as a separate process, for crash and CLI tests).
//!
//! A test that needs FUSE fails when `CI=true` and /dev/fuse is unusable; elsewhere it is
//! skipped with a printed reason.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod model;

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csap_testkit::s3::S3Server;
use csapfs::fs::{CacheMode, MountOptions, MountedFs};
use csapfs::keys::{KeyFileSource, NewAssetParams};
use csapfs::storage::{AccessKey, ObjectConfig, ObjectStorage};
use csapfs::Seed;
use tempfile::TempDir;

// Whether FUSE is usable (a failure under CI=true) and mount-table checks: the shared fixture's.
pub use csap_testkit::fuse::{detach, fuse_usable, is_mounted};

/// Returns early from a test (after printing why) when FUSE is not usable outside CI.
#[macro_export]
macro_rules! require_fuse {
    () => {
        if !$crate::support::fuse_usable() {
            return;
        }
    };
}

/// A scratch area: `backing/`, `mnt/` and a 32-byte key file.
pub struct Scratch {
    pub dir: TempDir,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    pub key_file: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("csapfs-test")
            .tempdir()
            .expect("tempdir");
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&backing).unwrap();
        fs::create_dir(&mnt).unwrap();
        let key_file = dir.path().join("dev.key");
        fs::write(&key_file, random_bytes(32)).unwrap();
        Scratch {
            dir,
            backing,
            mnt,
            key_file,
        }
    }

    pub fn key_source(&self, chunk_size: u32) -> Arc<KeyFileSource> {
        Arc::new(KeyFileSource::new(
            Seed::from_file(&self.key_file).expect("key file"),
            NewAssetParams {
                chunk_size,
                ..NewAssetParams::default()
            },
        ))
    }
}

/// An in-process mount over a fresh scratch area; unmounted on drop.
pub struct TestMount {
    pub scratch: Scratch,
    pub options: MountOptions,
    pub chunk_size: u32,
    /// Mount this server's bucket (prefix `vol`) instead of `scratch.backing`.
    pub s3: Option<S3Server>,
    /// How the S3 backend is tuned (timeout, readahead), with `s3`.
    pub s3_tuning: Option<fn(&mut ObjectConfig)>,
    mounted: Option<MountedFs>,
    /// The bucket's storage while mounted on S3 (its transfer counters).
    pub storage: Option<Arc<ObjectStorage>>,
}

/// The S3 backend's configuration for `server`'s bucket under `prefix`.
pub fn s3_config(server: &S3Server, prefix: &str) -> ObjectConfig {
    ObjectConfig {
        endpoint: Some(server.endpoint()),
        credentials: Some(AccessKey {
            id: server.access_key.clone(),
            secret: server.secret_key.clone(),
        }),
        ..ObjectConfig::new(&server.url(prefix))
    }
}

impl TestMount {
    pub fn new(cache: CacheMode) -> TestMount {
        TestMount::with_chunk_size(cache, csapfs::format::DEFAULT_CHUNK_SIZE)
    }

    pub fn with_chunk_size(cache: CacheMode, chunk_size: u32) -> TestMount {
        let options = MountOptions {
            cache,
            threads: 4,
            ..MountOptions::default()
        };
        let mut mount = TestMount {
            scratch: Scratch::new(),
            options,
            chunk_size,
            s3: None,
            s3_tuning: None,
            mounted: None,
            storage: None,
        };
        mount.mount();
        mount
    }

    /// A mount of `server`'s bucket, tuned by `tuning`.
    pub fn on_s3(
        cache: CacheMode,
        chunk_size: u32,
        server: S3Server,
        tuning: Option<fn(&mut ObjectConfig)>,
    ) -> TestMount {
        let options = MountOptions {
            cache,
            threads: 4,
            ..MountOptions::default()
        };
        let mut mount = TestMount {
            scratch: Scratch::new(),
            options,
            chunk_size,
            s3: Some(server),
            s3_tuning: tuning,
            mounted: None,
            storage: None,
        };
        mount.mount();
        mount
    }

    pub fn mount(&mut self) {
        assert!(self.mounted.is_none());
        let keys = self.scratch.key_source(self.chunk_size);
        if let Some(server) = &self.s3 {
            let mut config = s3_config(server, "vol");
            if let Some(tune) = self.s3_tuning {
                tune(&mut config);
            }
            let storage = Arc::new(ObjectStorage::open(config).expect("open the bucket"));
            self.storage = Some(storage.clone());
            self.mounted = Some(
                csapfs::fs::mount_storage(storage, &self.scratch.mnt, keys, &self.options)
                    .expect("mount the bucket"),
            );
            return;
        }
        self.mounted = Some(
            csapfs::fs::mount(
                &self.scratch.backing,
                &self.scratch.mnt,
                keys,
                &self.options,
            )
            .expect("mount"),
        );
    }

    pub fn unmount(&mut self) {
        if let Some(mounted) = self.mounted.take() {
            mounted.unmount().expect("unmount");
        }
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.scratch.mnt.join(rel)
    }

    /// A path inside the backing directory.
    pub fn backing(&self, rel: &str) -> PathBuf {
        self.scratch.backing.join(rel)
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if let Some(mounted) = self.mounted.take() {
            if mounted.unmount().is_err() {
                // A test failed with a file still open: detach so the temp dir can go.
                let _ = nix::mount::umount2(&self.scratch.mnt, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// `csap mount` as a child process (foreground mode), for crash and CLI tests.
pub struct ProcessMount {
    pub child: Child,
    pub mnt: PathBuf,
}

impl ProcessMount {
    /// Starts `csap mount BACKING MNT --key-file K EXTRA…` and waits until it is mounted.
    pub fn start(csap: &str, scratch: &Scratch, extra: &[&str]) -> ProcessMount {
        // A file, not a pipe: a pipe nobody drains could block the daemon's logging.
        let log_path = scratch
            .dir
            .path()
            .join(format!("mount-{}.log", random_bytes(4)[0]));
        let log = File::create(&log_path).expect("mount log");
        let mut child = Command::new(csap)
            .arg("mount")
            .arg(&scratch.backing)
            .arg(&scratch.mnt)
            .arg("--key-file")
            .arg(&scratch.key_file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn csap mount");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !is_mounted(&scratch.mnt) {
            if let Some(status) = child.try_wait().unwrap() {
                let err = fs::read_to_string(&log_path).unwrap_or_default();
                panic!("csap mount exited with {status}: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "csap mount did not mount in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ProcessMount {
            child,
            mnt: scratch.mnt.clone(),
        }
    }

    /// SIGKILLs the daemon (a crash) and clears the dead mount.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        detach(&self.mnt);
    }
}

impl Drop for ProcessMount {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        detach(&self.mnt);
    }
}

/// Deterministic PRNG (SplitMix64): seeded tests reproduce exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut v))
        .expect("/dev/urandom");
    v
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// True if `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
