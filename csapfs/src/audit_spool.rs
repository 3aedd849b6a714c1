//! The mount's own decisions on their way to the one audit trail: a bounded channel from the
//! FUSE threads, a durable spool on the device (append + fsync in batches, by a writer
//! thread), and a shipper thread that sends batches to the key server (`POST /v1/audit`)
//! until each is acknowledged.
//!
//! The open path pays one `try_send` on a bounded channel (no syscall, no lock across I/O:
//! the writer polls the channel instead of sleeping on it, so a send never has to wake it).
//! Every record gets the next sequence number of the spool when it is written; the key server
//! keeps (device, spool id, seq) unique, so a resend after a crash or a lost answer stores
//! nothing twice, and the spool keeps every record until the key server has acknowledged it,
//! so nothing is lost either. Identical decisions within one flush interval are aggregated
//! into one record with a `count` (a tight loop of denied opens costs one row per interval).
//!
//! Fail secure: while the unshipped records reach the size cap (the key server has been
//! unreachable for long), new records are dropped and counted, that is logged as an error,
//! and [`AuditSpool::accepts_grants`] turns false — the mount then refuses the grants it
//! would make on its own (opens from cached licenses): nothing is granted without a record.
//!
//! Files in the spool directory: `spool.jsonl` (one [`MountAuditRecord`] per line, in seq
//! order) and `state.json` (the spool id and the highest acknowledged seq, replaced
//! atomically). The spool file is locked (`flock`), so two mounts cannot share a spool.

#![forbid(unsafe_code)]

mod files;
mod shipper;
#[cfg(test)]
mod tests;
mod writer;

use files::{create_private_dir, load_state, load_unacked, save_state, State};
use shipper::Shipper;
use writer::Writer;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use keyserver_client::wire::{Action, AuditBatch, AuditBatchAck, MountAuditRecord};
use nix::fcntl::{Flock, FlockArg};

/// Most records per shipped batch (the key server accepts up to 1,000).
const SHIP_BATCH: usize = 500;
/// Decisions queued between the FUSE threads and the writer at most.
const CHANNEL_CAPACITY: usize = 65_536;
/// Longest wait between two shipping attempts while the key server is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often "still unreachable" / "still full" is logged again.
const LOG_AGAIN: Duration = Duration::from_secs(60);

const SPOOL_FILE: &str = "spool.jsonl";
const STATE_FILE: &str = "state.json";

/// Where the spool lives and how it behaves.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool's directory (created 0700 if missing), one per mount.
    pub dir: PathBuf,
    /// Size cap of unshipped records, bytes (as spooled, JSON lines).
    pub max_bytes: u64,
    /// How often decisions are written and fsynced (and aggregated within).
    pub flush_interval: Duration,
    /// The device name the mount believes it is (the key server stamps its own).
    pub device: String,
}

impl SpoolConfig {
    /// A 64 MiB cap, flushed every 250 ms.
    pub fn new(dir: impl Into<PathBuf>, device: impl Into<String>) -> SpoolConfig {
        SpoolConfig {
            dir: dir.into(),
            max_bytes: 64 << 20,
            flush_interval: Duration::from_millis(250),
            device: device.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("audit spool {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("audit spool {0} is in use by another mount")]
    Locked(String),
    #[error("audit spool state {path} is unreadable: {message}")]
    State { path: String, message: String },
    #[error("no spool id: the operating system's random number generator failed: {0}")]
    Randomness(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One decision the mount made itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decision {
    pub user: Option<String>,
    pub uid: u32,
    pub app_digest: Option<String>,
    /// Volume-relative path.
    pub path: String,
    pub asset: Option<[u8; 16]>,
    pub action: Action,
    pub grant: bool,
    pub reason: Cow<'static, str>,
}

/// Sends a batch to the key server; `Err` says why it did not arrive (tried again later).
pub trait Ship: Send + 'static {
    fn ship(&mut self, batch: &AuditBatch) -> Result<AuditBatchAck, String>;
}

/// Counters of a spool (for logs, tests and operators).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records written to the spool since the mount started.
    pub spooled: u64,
    /// Records the key server acknowledged since the mount started.
    pub shipped: u64,
    /// Decisions dropped: channel full, or spool at its cap.
    pub dropped: u64,
    /// Records in the spool not acknowledged yet.
    pub unshipped: u64,
    /// At the cap: grants the mount would make alone are refused.
    pub full: bool,
}

/// The recording side, owned by the key source; dropping it flushes the channel to the
/// spool, makes one last shipping attempt and stops both threads.
pub struct AuditSpool {
    tx: Option<SyncSender<(i64, Decision)>>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    full: AtomicBool,
    dropped: AtomicU64,
    spooled: AtomicU64,
    shipped: AtomicU64,
    stopping: AtomicBool,
    pending: Mutex<Pending>,
    /// Signalled when records were spooled, or on stop.
    wake: Condvar,
}

/// Spooled records not acknowledged yet (a copy of the file's tail, in seq order).
struct Pending {
    spool_id: String,
    unacked: VecDeque<(MountAuditRecord, u64)>,
    unacked_bytes: u64,
    writer_done: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for AuditSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSpool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl AuditSpool {
    /// Opens (or creates) the spool in `cfg.dir`, loads what was not shipped before, and
    /// starts the writer and shipper threads.
    pub fn open(cfg: SpoolConfig, shipper: Box<dyn Ship>) -> Result<AuditSpool, SpoolError> {
        create_private_dir(&cfg.dir)?;
        let spool_path = cfg.dir.join(SPOOL_FILE);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600) // user names and paths: the mount's business only
            .open(&spool_path)
            .map_err(io_err(&spool_path))?;
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| SpoolError::Locked(cfg.dir.display().to_string()))?;
        let state_path = cfg.dir.join(STATE_FILE);
        let state = match load_state(&state_path)? {
            Some(s) => s,
            None => {
                let s = State {
                    spool: files::new_spool_id()?,
                    acked: 0,
                };
                save_state(&state_path, &s)?;
                s
            }
        };
        let (unacked, last_seq) = load_unacked(&file, &spool_path, state.acked)?;
        let unacked_bytes = unacked.iter().map(|(_, b)| b).sum();
        if !unacked.is_empty() {
            tracing::info!(records = unacked.len(), spool = %cfg.dir.display(), "audit records from an earlier run not shipped yet; shipping them");
        }
        let shared = Arc::new(Shared {
            full: AtomicBool::new(unacked_bytes >= cfg.max_bytes),
            dropped: AtomicU64::new(0),
            spooled: AtomicU64::new(0),
            shipped: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            pending: Mutex::new(Pending {
                spool_id: state.spool.clone(),
                unacked,
                unacked_bytes,
                writer_done: false,
            }),
            wake: Condvar::new(),
        });
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL_CAPACITY);
        let writer = Writer {
            shared: Arc::clone(&shared),
            rx,
            file,
            spool_path,
            next_seq: last_seq.max(state.acked) + 1,
            cfg: cfg.clone(),
            full_logged: None,
        };
        let shipper = Shipper {
            shared: Arc::clone(&shared),
            ship: shipper,
            state_path,
            spool: state.spool,
            acked: state.acked,
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(io_err(&cfg.dir))
        };
        let threads = vec![
            spawn("csap-audit-spool", Box::new(move || writer.run()))?,
            spawn("csap-audit-ship", Box::new(move || shipper.run()))?,
        ];
        Ok(AuditSpool {
            tx: Some(tx),
            shared,
            threads,
        })
    }

    /// Queues `decision` for the spool; `false` when it was dropped (channel full, or the
    /// spool at its cap). Never blocks, never makes a syscall.
    pub fn record(&self, decision: Decision) -> bool {
        let queued = !self.shared.full.load(Ordering::Acquire)
            && self
                .tx
                .as_ref()
                .is_some_and(|tx| match tx.try_send((unix_now(), decision)) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
                });
        if !queued {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Whether grants the mount makes on its own may go ahead (their record can be kept).
    pub fn accepts_grants(&self) -> bool {
        !self.shared.full.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> SpoolStats {
        let unshipped = self.shared.lock().unacked.len() as u64;
        SpoolStats {
            spooled: self.shared.spooled.load(Ordering::Relaxed),
            shipped: self.shared.shipped.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            unshipped,
            full: self.shared.full.load(Ordering::Acquire),
        }
    }
}

impl Drop for AuditSpool {
    fn drop(&mut self) {
        // The writer sees the channel disconnected, spools what is left, and stops; the
        // shipper then makes one last attempt and stops.
        self.tx = None;
        self.shared.stopping.store(true, Ordering::Release);
        for t in &self.threads {
            t.thread().unpark();
        }
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
