//! Caller attestation: which code is the process behind a FUSE request running?
//!
//! The answer is the BLAKE3 digest of its main image (`/proc/<pid>/exe`), the application
//! identity the key server and the rules know — accepted only if the process's executable
//! *mappings* agree ([`code`]): the main image is mapped, every other executable mapping is a
//! system library only root can change (or one the registration allows), no anonymous memory
//! is executable, and the caller shares the mount's user namespace. Also:
//! - PID reuse: the process start time (`/proc/<pid>/stat` field 22) is read before and after
//!   measuring; if it changed, another process now owns the PID and nothing is decided.
//! - A fast pre-check on loader variables: an environment that sets `LD_PRELOAD` or
//!   `LD_AUDIT`, or an `LD_LIBRARY_PATH` entry outside the system library directories, is
//!   refused before anything is hashed. (The environment block is the process's own memory
//!   and can be scrubbed; the mappings are what decide.)
//! - pid 0 (a request from the kernel itself, or from a PID namespace the mount cannot see) is
//!   refused: there is no process to measure.
//!
//! The executable is opened once through `/proc/<pid>/exe` and both its identity
//! (device, inode, size, mtime, ctime) and its bytes come from that one open file, so a rename
//! race cannot pair one file's identity with another's digest. Digests are cached by that
//! identity: a rebuilt binary has a new mtime/ctime and is measured again.
//!
//! Reading another process's `/proc` files can block (its `mmap_lock` may be held while it
//! waits on this very mount), so [`Attestor::attest`] runs the reads on a helper thread and
//! gives up after a timeout instead of stalling the FUSE loop. Helper threads are kept and
//! reused ([`Helpers`]): starting a thread per open cost ~70 µs of the warm open (measured by
//! `cargo run -p bench --release -- open`).
//!
//! Even so, handing a measurement to a helper and back costs ~95 µs of wake-ups on a small VM.
//! So an attestation is remembered per calling thread ([`remembered`]) until its process
//! execs or the thread dies, which the kernel tells us ([`crate::exec_watch`]); a remembered
//! caller is answered on the request's own thread after checking, through the `maps` file
//! opened at measurement, that it has mapped no new code since ([`code::Probe`]). Where exec
//! notices or `PROCMAP_QUERY` are unavailable, every open measures its caller.

pub mod code;
mod digest;
mod helpers;
mod procfs;
mod remembered;
#[cfg(test)]
pub(crate) mod tests;

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::exec_watch::{ExecWatch, Pidfd};
use code::{CodeFacts, Probe, TrustCache};
use digest::ExeKey;
pub use digest::{app_digest, app_digest_at};
use helpers::{Helpers, MAX_IN_FLIGHT};
pub use procfs::{check_environ, parse_start_time, start_time};
use procfs::{thread_group, unreadable};
use remembered::Remembered;

/// Why a caller could not be attested. Every variant means "deny".
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("request has no process id (kernel-internal, or from another PID namespace)")]
    NoPid,
    #[error("process {pid} is gone")]
    Gone { pid: u32 },
    #[error("cannot read {what} of process {pid}: {source}")]
    Unreadable {
        pid: u32,
        what: &'static str,
        source: io::Error,
    },
    #[error("process {pid}: malformed /proc/{pid}/stat")]
    BadStat { pid: u32 },
    #[error("process {pid} runs with {var} set (library injection)")]
    Injection { pid: u32, var: &'static str },
    #[error(
        "process {pid} has LD_LIBRARY_PATH entry {entry:?} outside the system library directories"
    )]
    LibraryPath { pid: u32, entry: String },
    #[error(
        "process {pid} does not run the executable it names (its exe is not mapped: relabelled)"
    )]
    NotMapped { pid: u32 },
    #[error(
        "process {pid} runs code from {path}, which is neither a system library nor a library \
         its application's registration allows"
    )]
    ForeignCode { pid: u32, path: String },
    #[error(
        "process {pid} has executable anonymous memory (JIT or injected code), which its \
         application's registration does not allow"
    )]
    AnonymousCode { pid: u32 },
    #[error(
        "process {pid} runs in another user namespace than the mount, which its application's \
         registration does not allow"
    )]
    UserNamespace { pid: u32 },
    #[error("cannot learn what the registration of process {pid}'s application allows: {reason}")]
    Allowance { pid: u32, reason: String },
    #[error("process {pid} changed while it was measured (PID reused)")]
    Reused { pid: u32 },
    #[error("attestation of process {pid} timed out")]
    Timeout { pid: u32 },
    #[error("too many attestations are stuck; refusing more")]
    Overloaded,
}

/// What attestation established about one caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// The calling thread (what the FUSE request names).
    pub pid: u32,
    /// Its process (thread group).
    pub tgid: u32,
    /// Clock ticks since boot at which the process started (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// Lowercase hex BLAKE3 of the executable.
    pub app_digest: String,
}

/// What an application's registration allows beyond the defaults (see [`code`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeAllowance {
    /// Executable anonymous memory (a JIT).
    pub jit: bool,
    /// Running in a user namespace other than the mount's.
    pub user_namespaces: bool,
    /// BLAKE3 digests (lowercase hex) of libraries it may map besides system libraries.
    pub libraries: Vec<String>,
}

/// Where allowances come from: consulted only for a caller that needs one.
pub trait Allowances: Send + Sync {
    fn allowance(&self, app_digest: &str) -> Result<CodeAllowance, String>;
}

/// No registration allows anything beyond the defaults.
struct NoAllowances;

impl Allowances for NoAllowances {
    fn allowance(&self, _: &str) -> Result<CodeAllowance, String> {
        Ok(CodeAllowance::default())
    }
}

/// What a measurement yields: the attestation and what a later open checks it against.
type Measured = (Attestation, Probe);

/// Measures callers; share one per mount.
#[derive(Clone)]
pub struct Attestor {
    inner: Arc<Inner>,
}

type Hook = Box<dyn Fn(u32) + Send + Sync>;

struct Inner {
    proc_root: PathBuf,
    timeout: Duration,
    digests: moka::sync::Cache<ExeKey, Arc<str>>,
    trust: TrustCache,
    allowances: std::sync::OnceLock<Arc<dyn Allowances>>,
    /// The mount's own user namespace (`st_dev`, `st_ino` of its `ns/user` link).
    own_userns: (u64, u64),
    hashes: AtomicU64,
    in_flight: AtomicUsize,
    /// Runs between the two start-time reads (tests use it to simulate PID reuse).
    between: Option<Hook>,
    helpers: Helpers,
    /// Attestations kept until exec; `None` where exec notices are unavailable.
    remembered: Option<Remembered>,
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestor")
            .field("proc_root", &self.inner.proc_root)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Attestor {
    /// An attestor over the real `/proc`, remembering callers until they exec when the kernel
    /// can say so.
    pub fn new(timeout: Duration) -> Attestor {
        let me = nix::unistd::gettid().as_raw() as u32;
        let remembered = match ExecWatch::open().and_then(|w| Pidfd::open(me).map(|_| w)) {
            Ok(_) if !code::query_supported() => {
                tracing::warn!(
                    "no PROCMAP_QUERY (Linux < 6.11): every open measures its caller (slower)"
                );
                None
            }
            Ok(watch) => Some(Remembered::new(watch)),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "no exec notices from the kernel: every open measures its caller (slower)"
                );
                None
            }
        };
        Self::build(PathBuf::from("/proc"), timeout, None, remembered)
    }

    /// An attestor over another proc-like tree, with a hook run mid-measurement (tests).
    pub fn with_proc_root(
        proc_root: impl Into<PathBuf>,
        timeout: Duration,
        between: Option<Hook>,
    ) -> Attestor {
        Self::build(proc_root.into(), timeout, between, None)
    }

    fn build(
        proc_root: PathBuf,
        timeout: Duration,
        between: Option<Hook>,
        remembered: Option<Remembered>,
    ) -> Attestor {
        // Unreadable only without /proc; then no caller can be measured either.
        let own_userns = code::namespace_id(Path::new("/proc/self/ns/user")).unwrap_or((0, 0));
        Attestor {
            inner: Arc::new(Inner {
                proc_root,
                timeout,
                digests: moka::sync::Cache::new(4096),
                trust: TrustCache::default(),
                allowances: std::sync::OnceLock::new(),
                own_userns,
                hashes: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                between,
                helpers: Helpers::new(),
                remembered,
            }),
        }
    }

    /// Asks `allowances` what a registration allows beyond the defaults (once; until then,
    /// and if never set, nothing is allowed beyond them). False if already set.
    pub fn set_allowances(&self, allowances: Arc<dyn Allowances>) -> bool {
        self.inner.allowances.set(allowances).is_ok()
    }

    /// How many executables were hashed (not served from the digest cache).
    pub fn hashes_computed(&self) -> u64 {
        self.inner.hashes.load(Ordering::Relaxed)
    }

    /// Whether attestations are remembered until exec (see the module documentation).
    pub fn remembers(&self) -> bool {
        self.inner.remembered.is_some()
    }

    /// How many attestations were answered from memory.
    pub fn remembered_hits(&self) -> u64 {
        self.inner.remembered.as_ref().map_or(0, Remembered::hits)
    }

    /// Attests `pid`: from memory if its process has not exec'd since it was measured, else
    /// on a helper thread, waiting at most the configured timeout.
    pub fn attest(&self, pid: u32) -> Result<Attestation, AttestError> {
        if pid == 0 {
            return Err(AttestError::NoPid);
        }
        let Some(remembered) = &self.inner.remembered else {
            return self.measure(pid).map(|(a, _)| a);
        };
        let ticket = match remembered.lookup(pid) {
            Ok((known, probe)) if self.inner.still_as_measured(&probe) => return Ok(known),
            // New code mapped since: measure afresh.
            Ok(_) => remembered.forget(pid),
            Err(ticket) => ticket,
        };
        // Opened before measuring: alive at admission means it named the measured thread.
        // (`PIDFD_THREAD` works here: `new` checked, so a failure means the thread is gone.)
        let pidfd = Pidfd::open(pid).map_err(|e| unreadable(pid, "pidfd", e))?;
        let (attestation, probe) = self.measure(pid)?;
        remembered.admit(ticket, pidfd, &attestation, probe);
        Ok(attestation)
    }

    /// Measures `pid` on a helper thread, waiting at most the configured timeout.
    fn measure(&self, pid: u32) -> Result<Measured, AttestError> {
        // A bound on threads left behind by timeouts, so a wedged process cannot make the
        // mount spawn threads without limit.
        if self.inner.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
            self.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(AttestError::Overloaded);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        if let Err(source) = self.inner.helpers.submit(&self.inner, (pid, tx)) {
            self.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(AttestError::Unreadable {
                pid,
                what: "helper thread",
                source,
            });
        }
        match rx.recv_timeout(self.inner.timeout) {
            Ok(result) => result,
            Err(_) => Err(AttestError::Timeout { pid }),
        }
    }

    /// The same measurement on the calling thread (no timeout).
    pub fn attest_blocking(&self, pid: u32) -> Result<Attestation, AttestError> {
        self.inner.measure(pid).map(|(a, _)| a)
    }
}

impl Inner {
    /// A remembered caller has mapped no new code (see [`Probe`] for the user namespace).
    fn still_as_measured(&self, probe: &Probe) -> bool {
        probe.unchanged()
    }

    fn measure(&self, pid: u32) -> Result<Measured, AttestError> {
        if pid == 0 {
            return Err(AttestError::NoPid);
        }
        let dir = self.proc_root.join(pid.to_string());
        let before = start_time(&dir, pid)?;
        let tgid = thread_group(&dir, pid)?;
        let environ =
            std::fs::read(dir.join("environ")).map_err(|e| unreadable(pid, "environment", e))?;
        check_environ(pid, &environ)?;
        let exe = File::open(dir.join("exe")).map_err(|e| unreadable(pid, "executable", e))?;
        let meta = exe
            .metadata()
            .map_err(|e| unreadable(pid, "executable", e))?;
        let key = ExeKey::of(&meta);
        let digest = self.digest_of(exe, &meta, pid)?;
        let probe = self.check_code(&dir, pid, (key.dev, key.ino), &digest)?;
        if let Some(hook) = &self.between {
            hook(pid);
        }
        let after = start_time(&dir, pid)?;
        if before != after {
            return Err(AttestError::Reused { pid });
        }
        let attestation = Attestation {
            pid,
            tgid,
            start_time: before,
            app_digest: digest.to_string(),
        };
        Ok((attestation, probe))
    }

    /// Decides on the process's executable mappings (see [`code`]); `main` is the opened
    /// executable's `(st_dev, st_ino)`, `digest` its digest.
    fn check_code(
        &self,
        dir: &Path,
        pid: u32,
        main: (u64, u64),
        digest: &str,
    ) -> Result<Probe, AttestError> {
        let userns =
            code::namespace_id(&dir.join("ns/user")).map_err(|e| unreadable(pid, "ns/user", e))?;
        let maps = File::open(dir.join("maps")).map_err(|e| unreadable(pid, "maps", e))?;
        let (maps, text) = code::read_maps(maps).map_err(|e| unreadable(pid, "maps", e))?;
        let mappings = code::exec_mappings(&text).ok_or(AttestError::BadStat { pid })?;
        let facts = code::facts(&mappings, main, |m| self.trust.trusted(m));
        if !facts.main_mapped {
            return Err(AttestError::NotMapped { pid });
        }
        let other_userns = userns != self.own_userns;
        if facts.anonymous || other_userns || !facts.foreign.is_empty() {
            self.check_allowance(dir, pid, digest, &facts, other_userns)?;
        }
        Ok(Probe::new(maps, code::fingerprint(&mappings)))
    }

    /// Whether the application's registration allows what `facts` found beyond the defaults.
    fn check_allowance(
        &self,
        dir: &Path,
        pid: u32,
        digest: &str,
        facts: &CodeFacts,
        other_userns: bool,
    ) -> Result<(), AttestError> {
        let allow = self
            .allowances
            .get_or_init(|| Arc::new(NoAllowances))
            .allowance(digest)
            .map_err(|reason| AttestError::Allowance { pid, reason })?;
        if facts.anonymous && !allow.jit {
            return Err(AttestError::AnonymousCode { pid });
        }
        if other_userns && !allow.user_namespaces {
            return Err(AttestError::UserNamespace { pid });
        }
        for foreign in &facts.foreign {
            let refused = || AttestError::ForeignCode {
                pid,
                path: foreign.path.clone(),
            };
            if allow.libraries.is_empty() {
                return Err(refused());
            }
            let library = self.mapped_digest(dir, pid, &foreign.region)?;
            if !allow.libraries.iter().any(|d| *d == *library) {
                return Err(refused());
            }
        }
        Ok(())
    }

    /// The digest of the file behind one mapping, opened through `map_files` (the mapped file
    /// itself, wherever it has been renamed to) and checked to be the inode the listing named.
    fn mapped_digest(
        &self,
        dir: &Path,
        pid: u32,
        region: &code::Region,
    ) -> Result<Arc<str>, AttestError> {
        let entry = dir.join(format!("map_files/{:x}-{:x}", region.start, region.end));
        let file = File::open(entry).map_err(|e| unreadable(pid, "mapped library", e))?;
        let meta = file
            .metadata()
            .map_err(|e| unreadable(pid, "mapped library", e))?;
        if meta.ino() != region.inode {
            // The mapping changed between the listing and this open: measure again later.
            return Err(AttestError::Unreadable {
                pid,
                what: "mapped library",
                source: io::Error::other("the mapping changed while it was measured"),
            });
        }
        self.digest_of(file, &meta, pid)
    }

    /// The digest of an opened executable file, from the cache when its identity is known.
    fn digest_of(
        &self,
        file: File,
        meta: &std::fs::Metadata,
        pid: u32,
    ) -> Result<Arc<str>, AttestError> {
        let key = ExeKey::of(meta);
        if let Some(d) = self.digests.get(&key) {
            return Ok(d);
        }
        let d: Arc<str> = app_digest(file)
            .map_err(|e| unreadable(pid, "executable", e))?
            .into();
        self.hashes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pid, ino = key.ino, size = key.size, digest = %d, "executable hashed");
        self.digests.insert(key, Arc::clone(&d));
        Ok(d)
    }
}
