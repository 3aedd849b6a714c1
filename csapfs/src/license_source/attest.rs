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
mod remembered;

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::exec_watch::{ExecWatch, Pidfd};
use code::{CodeFacts, Probe, TrustCache};
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

/// The identity of an executable file as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ExeKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
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

/// Attestations allowed to be stuck on helper threads at once before new ones are refused.
const MAX_IN_FLIGHT: usize = 64;

/// An idle helper thread exits after this long.
const HELPER_IDLE: Duration = Duration::from_secs(30);

/// What a measurement yields: the attestation and what a later open checks it against.
type Measured = (Attestation, Probe);

/// One measurement for a helper thread: the pid and where to send the answer.
type Job = (u32, mpsc::SyncSender<Result<Measured, AttestError>>);

/// Reusable helper threads. A job goes to an idle helper; when none is idle (all busy, or some
/// stuck in a blocking `/proc` read) a new one starts, so a stuck helper never delays the next
/// caller. The number of jobs queued or running is bounded by [`MAX_IN_FLIGHT`] in
/// [`Attestor::attest`], which bounds the threads too.
struct Helpers {
    tx: mpsc::Sender<Job>,
    shared: Arc<HelperQueue>,
}

/// What the helper threads share.
struct HelperQueue {
    rx: Mutex<mpsc::Receiver<Job>>,
    /// Helpers waiting for a job.
    idle: AtomicUsize,
    /// Jobs sent and not yet taken by a helper.
    queued: AtomicUsize,
}

impl Helpers {
    fn new() -> Helpers {
        let (tx, rx) = mpsc::channel();
        Helpers {
            tx,
            shared: Arc::new(HelperQueue {
                rx: Mutex::new(rx),
                idle: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
            }),
        }
    }

    fn submit(&self, inner: &Arc<Inner>, job: Job) -> io::Result<()> {
        let q = &self.shared;
        q.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(job).is_err() {
            q.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(io::Error::other("attestation helpers stopped"));
        }
        if q.queued.load(Ordering::SeqCst) > q.idle.load(Ordering::SeqCst) {
            self.spawn(inner)?;
        }
        Ok(())
    }

    fn spawn(&self, inner: &Arc<Inner>) -> io::Result<()> {
        let q = Arc::clone(&self.shared);
        // The helper holds the attestor weakly: dropping the last Attestor ends the helpers.
        let inner = Arc::downgrade(inner);
        std::thread::Builder::new()
            .name("csap-attest".into())
            .spawn(move || loop {
                q.idle.fetch_add(1, Ordering::SeqCst);
                let job =
                    q.rx.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .recv_timeout(HELPER_IDLE);
                q.idle.fetch_sub(1, Ordering::SeqCst);
                let Ok((pid, answer)) = job else { return };
                q.queued.fetch_sub(1, Ordering::SeqCst);
                let Some(inner) = inner.upgrade() else { return };
                let result = inner.measure(pid);
                inner.in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = answer.send(result);
            })
            .map(|_| ())
    }
}

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
        let d: Arc<str> = hash_file(file)
            .map_err(|e| unreadable(pid, "executable", e))?
            .into();
        self.hashes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pid, ino = key.ino, size = key.size, digest = %d, "executable hashed");
        self.digests.insert(key, Arc::clone(&d));
        Ok(d)
    }
}

impl ExeKey {
    fn of(meta: &std::fs::Metadata) -> ExeKey {
        ExeKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

fn unreadable(pid: u32, what: &'static str, source: io::Error) -> AttestError {
    if source.kind() == io::ErrorKind::NotFound
        || source.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32)
    {
        AttestError::Gone { pid }
    } else {
        AttestError::Unreadable { pid, what, source }
    }
}

/// Lowercase hex BLAKE3 of everything readable from `file`.
pub fn hash_file(mut file: File) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Field 22 (`starttime`) of `DIR/stat` where `DIR` is `/proc/<pid>`.
pub fn start_time(proc_pid_dir: &Path, pid: u32) -> Result<u64, AttestError> {
    let stat = std::fs::read_to_string(proc_pid_dir.join("stat"))
        .map_err(|e| unreadable(pid, "stat", e))?;
    parse_start_time(&stat).ok_or(AttestError::BadStat { pid })
}

/// The `Tgid:` line of `DIR/status`: the process a thread belongs to.
fn thread_group(proc_pid_dir: &Path, pid: u32) -> Result<u32, AttestError> {
    let status = std::fs::read_to_string(proc_pid_dir.join("status"))
        .map_err(|e| unreadable(pid, "status", e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(AttestError::BadStat { pid })
}

/// `pid (comm) state ppid …`: comm may hold spaces and parentheses, so fields are counted
/// after the last `)`; the first field there is field 3 (state), so starttime is the 20th.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

/// Refuses environments that inject code the executable's digest does not cover.
pub fn check_environ(pid: u32, environ: &[u8]) -> Result<(), AttestError> {
    for var in environ.split(|b| *b == 0) {
        let Some(eq) = var.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (name, value) = (&var[..eq], &var[eq + 1..]);
        match name {
            // ld.so ignores empty values, so they inject nothing.
            b"LD_PRELOAD" if !value.is_empty() => {
                return Err(AttestError::Injection {
                    pid,
                    var: "LD_PRELOAD",
                });
            }
            b"LD_AUDIT" if !value.is_empty() => {
                return Err(AttestError::Injection {
                    pid,
                    var: "LD_AUDIT",
                });
            }
            b"LD_LIBRARY_PATH" => {
                // ld.so splits on ':' and ';'; an empty entry means the current directory.
                for entry in value.split(|b| *b == b':' || *b == b';') {
                    let entry = String::from_utf8_lossy(entry);
                    if !code::below_system_lib_dir(&entry) {
                        return Err(AttestError::LibraryPath {
                            pid,
                            entry: entry.into_owned(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    fn sleeper(envs: &[(&str, &str)]) -> Child {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").stdin(Stdio::null()).stdout(Stdio::null());
        // `cargo test` itself sets LD_LIBRARY_PATH to build directories.
        cmd.env_remove("LD_LIBRARY_PATH").env_remove("LD_PRELOAD");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn sleep");
        wait_exec_done(child.id());
        child
    }

    /// `spawn` returns once exec is past its point of no return, but the kernel sets up the
    /// new environment block a little later; until then `environ` reads empty.
    fn wait_exec_done(pid: u32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read(format!("/proc/{pid}/environ")).map_or(true, |e| e.is_empty()) {
            assert!(
                std::time::Instant::now() < deadline,
                "child {pid} never finished exec"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn assert_preload_refused(result: &Result<Attestation, AttestError>) {
        assert!(
            matches!(
                result,
                Err(AttestError::Injection {
                    var: "LD_PRELOAD",
                    ..
                })
            ),
            "{result:?}"
        );
    }

    fn kill(mut child: Child) {
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn start_time_parsing_survives_odd_command_names() {
        let stat =
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("4242 (x) S 1"), None);
        assert_eq!(parse_start_time("no parens"), None);
    }

    #[test]
    fn measures_a_real_child_and_caches_its_digest() {
        let child = sleeper(&[]);
        let pid = child.id();
        let attestor = Attestor::new(Duration::from_secs(10));
        let a = attestor.attest(pid).unwrap();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        let expected = blake3::hash(&std::fs::read(&exe).unwrap())
            .to_hex()
            .to_string();
        assert_eq!(a.app_digest, expected);
        assert_eq!(a.pid, pid);
        assert_eq!(
            a.start_time,
            start_time(Path::new(&format!("/proc/{pid}")), pid).unwrap()
        );
        assert_eq!(attestor.hashes_computed(), 1);
        // The second caller running the same file is served from the digest cache.
        let again = attestor.attest(pid).unwrap();
        assert_eq!(again, a);
        assert_eq!(attestor.hashes_computed(), 1);
        kill(child);
        // Once reaped, the PID has no process: attestation fails closed, also though the
        // attestation is remembered (the pidfd says the thread is gone; this fails if the
        // remembered entry ignores it — checked).
        assert!(matches!(
            attestor.attest(pid),
            Err(AttestError::Gone { .. }) | Err(AttestError::Unreadable { .. })
        ));
    }

    #[test]
    fn a_rebuilt_binary_is_measured_again() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, b"version one").unwrap();
        let fake = FakeProc::new(dir.path(), 77, &exe, b"HOME=/x\0");
        let attestor = Attestor::with_proc_root(fake.root.clone(), Duration::from_secs(5), None);
        let one = attestor.attest(77).unwrap();
        assert_eq!(
            one.app_digest,
            blake3::hash(b"version one").to_hex().to_string()
        );
        assert_eq!(attestor.attest(77).unwrap(), one);
        assert_eq!(attestor.hashes_computed(), 1);
        // Same size, new content: mtime/ctime change, so the cache key does too.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&exe, b"version two").unwrap();
        let two = attestor.attest(77).unwrap();
        assert_eq!(
            two.app_digest,
            blake3::hash(b"version two").to_hex().to_string()
        );
        assert_eq!(attestor.hashes_computed(), 2);
    }

    struct Fixed(Result<CodeAllowance, String>);

    impl Allowances for Fixed {
        fn allowance(&self, _: &str) -> Result<CodeAllowance, String> {
            self.0.clone()
        }
    }

    /// Executable anonymous memory and a library outside the system directories are refused
    /// by default, refused when the registration cannot be asked (key server unreachable), and
    /// accepted only as far as the registration allows.
    #[test]
    fn code_beyond_the_defaults_needs_the_registration() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, b"binary").unwrap();
        let fake = FakeProc::new(dir.path(), 61, &exe, b"");
        let maps = fake.root.join("61/maps");
        let mut listing = std::fs::read_to_string(&maps).unwrap();
        listing.push_str("7f0000000000-7f0000001000 rwxp 00000000 00:00 0 \n");
        std::fs::write(&maps, &listing).unwrap();
        let attest = |allow: Option<Result<CodeAllowance, String>>| {
            let a = Attestor::with_proc_root(fake.root.clone(), Duration::from_secs(5), None);
            if let Some(allow) = allow {
                assert!(a.set_allowances(Arc::new(Fixed(allow))));
            }
            a.attest(61)
        };
        assert!(matches!(
            attest(None),
            Err(AttestError::AnonymousCode { .. })
        ));
        let unreachable = Err("the key server did not answer in time".to_string());
        assert!(matches!(
            attest(Some(unreachable)),
            Err(AttestError::Allowance { .. })
        ));
        let jit = CodeAllowance {
            jit: true,
            ..CodeAllowance::default()
        };
        assert!(attest(Some(Ok(jit.clone()))).is_ok());
        // A library from a temporary directory as well: JIT alone no longer suffices.
        listing.push_str("7f0000100000-7f0000101000 r-xp 00000000 00:2a 999 /tmp/plugin.so\n");
        std::fs::write(&maps, &listing).unwrap();
        assert!(matches!(
            attest(Some(Ok(jit))),
            Err(AttestError::ForeignCode { ref path, .. }) if path == "/tmp/plugin.so"
        ));
    }

    #[test]
    fn pid_reuse_during_measurement_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, b"binary").unwrap();
        let fake = FakeProc::new(dir.path(), 91, &exe, b"");
        let stat_path = fake.root.join("91").join("stat");
        // Between the two start-time reads another process takes over PID 91.
        let hook: Hook = Box::new(move |_pid| {
            std::fs::write(&stat_path, fake_stat(91, 555_555)).unwrap();
        });
        let attestor =
            Attestor::with_proc_root(fake.root.clone(), Duration::from_secs(5), Some(hook));
        assert!(matches!(
            attestor.attest(91),
            Err(AttestError::Reused { pid: 91 })
        ));
    }

    /// A helper stuck in a blocking read (libfuse issue 206) costs its caller a timeout, and
    /// nobody else anything: the next caller gets another helper at once.
    #[test]
    fn a_stuck_helper_does_not_delay_the_next_caller() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, b"binary").unwrap();
        let fake = FakeProc::new(dir.path(), 51, &exe, b"");
        FakeProc::new(dir.path(), 52, &exe, b"");
        let (release, stuck) = mpsc::channel::<()>();
        let stuck = Mutex::new(stuck);
        let hook: Hook = Box::new(move |pid| {
            if pid == 51 {
                let _ = stuck.lock().unwrap().recv();
            }
        });
        let attestor =
            Attestor::with_proc_root(fake.root.clone(), Duration::from_millis(300), Some(hook));
        assert!(matches!(
            attestor.attest(51),
            Err(AttestError::Timeout { pid: 51 })
        ));
        let t = std::time::Instant::now();
        for _ in 0..20 {
            assert_eq!(attestor.attest(52).unwrap().pid, 52);
        }
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "callers waited behind the stuck helper: {:?}",
            t.elapsed()
        );
        release.send(()).unwrap();
    }

    /// The attack a remembered attestation invites: measured clean, then exec with
    /// `LD_PRELOAD` under the same pid. The exec notice must end the memory.
    #[test]
    fn a_remembered_caller_is_measured_again_after_it_execs() {
        use std::io::Write;
        let mut child = Command::new("sh")
            .args([
                "-c",
                "read go; exec env LD_PRELOAD=/nonexistent/libhook.so sleep 30",
            ])
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        wait_exec_done(pid);
        let attestor = Attestor::new(Duration::from_secs(10));
        assert!(
            attestor.remembers(),
            "exec notices are needed on this machine"
        );
        let shell = attestor.attest(pid).unwrap();
        assert_eq!(attestor.attest(pid).unwrap(), shell);
        assert_eq!(attestor.remembered_hits(), 1);

        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        // Through `env` to `sleep`, under the same pid.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !std::fs::read_link(format!("/proc/{pid}/exe"))
            .unwrap()
            .ends_with("sleep")
        {
            assert!(std::time::Instant::now() < deadline, "no exec");
            std::thread::sleep(Duration::from_millis(5));
        }
        wait_exec_done(pid);
        let result = attestor.attest(pid);
        kill(child);
        assert_preload_refused(&result);
        assert_eq!(attestor.remembered_hits(), 1);
    }

    /// Cost of one attestation with a warm digest cache (helper thread, stat, environ, fstat):
    /// `cargo test -p csapfs --lib attest_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement, not a check"]
    fn attest_cost() {
        let child = sleeper(&[]);
        let attestor = Attestor::with_proc_root("/proc", Duration::from_secs(10), None);
        attestor.attest(child.id()).unwrap();
        let n = 2000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            attestor.attest(child.id()).unwrap();
        }
        let threaded = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            attestor.attest_blocking(child.id()).unwrap();
        }
        let inline = t.elapsed() / n;
        let remembering = Attestor::new(Duration::from_secs(10));
        remembering.attest(child.id()).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..n {
            remembering.attest(child.id()).unwrap();
        }
        let remembered = t.elapsed() / n;
        kill(child);
        println!(
            "attest (warm cache): {threaded:?} with the helper thread, {inline:?} inline, \
             {remembered:?} remembered"
        );
    }

    #[test]
    fn pid_zero_is_refused() {
        let attestor = Attestor::new(Duration::from_secs(1));
        assert!(matches!(attestor.attest(0), Err(AttestError::NoPid)));
    }

    #[test]
    fn ld_preload_on_a_real_child_is_refused() {
        let child = sleeper(&[("LD_PRELOAD", "/nonexistent/libhook.so")]);
        let pid = child.id();
        let result = Attestor::new(Duration::from_secs(10)).attest(pid);
        kill(child);
        assert_preload_refused(&result);
    }

    #[test]
    fn library_path_outside_system_dirs_is_refused() {
        let child = sleeper(&[("LD_LIBRARY_PATH", "/usr/lib/x86_64-linux-gnu:/tmp/evil")]);
        let pid = child.id();
        let result = Attestor::new(Duration::from_secs(10)).attest(pid);
        kill(child);
        assert!(
            matches!(result, Err(AttestError::LibraryPath { ref entry, .. }) if entry == "/tmp/evil"),
            "{result:?}"
        );

        let ok = sleeper(&[("LD_LIBRARY_PATH", "/usr/lib/x86_64-linux-gnu:/lib64/")]);
        let pid = ok.id();
        let result = Attestor::new(Duration::from_secs(10)).attest(pid);
        kill(ok);
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn environment_rules() {
        assert!(check_environ(1, b"A=1\0LD_PRELOAD=\0B=2\0").is_ok());
        assert!(check_environ(1, b"LD_AUDIT=/x.so\0").is_err());
        assert!(
            check_environ(1, b"LD_LIBRARY_PATH=\0").is_err(),
            "empty entry = current directory"
        );
        assert!(check_environ(1, b"LD_LIBRARY_PATH=/usr/lib/../../home/a\0").is_err());
        assert!(check_environ(1, b"LD_LIBRARY_PATH=/usr/libevil\0").is_err());
        assert!(check_environ(1, b"LD_LIBRARY_PATH=/usr/local/lib;/lib\0").is_ok());
    }

    /// A minimal `/proc/<pid>` tree: stat, environ and an `exe` symlink.
    struct FakeProc {
        root: PathBuf,
    }

    fn fake_stat(pid: u32, start: u64) -> String {
        format!("{pid} (tool) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 10\n")
    }

    impl FakeProc {
        fn new(base: &Path, pid: u32, exe: &Path, environ: &[u8]) -> FakeProc {
            let root = base.join("proc");
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("stat"), fake_stat(pid, 123_456)).unwrap();
            std::fs::write(dir.join("status"), format!("Name:\ttool\nTgid:\t{pid}\n")).unwrap();
            std::fs::write(dir.join("environ"), environ).unwrap();
            std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
            // The executable mapped as the process's only code, in the mount's namespace.
            let meta = std::fs::metadata(exe).unwrap();
            let (major, minor) = code::split_dev(meta.dev());
            let maps = format!(
                "00400000-00401000 r-xp 00000000 {major:02x}:{minor:02x} {} {}\n",
                meta.ino(),
                exe.display()
            );
            std::fs::write(dir.join("maps"), maps).unwrap();
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            std::os::unix::fs::symlink("/proc/self/ns/user", dir.join("ns/user")).unwrap();
            FakeProc { root }
        }
    }
}
