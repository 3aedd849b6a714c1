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

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
                    spool: new_spool_id(),
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

fn create_private_dir(dir: &Path) -> Result<(), SpoolError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

fn new_spool_id() -> String {
    let mut id = [0u8; 16];
    getrandom::getrandom(&mut id).expect("the operating system RNG is available");
    hex::encode(id)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    spool: String,
    acked: u64,
}

fn load_state(path: &Path) -> Result<Option<State>, SpoolError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SpoolError::State {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Replaces the state file atomically and durably (`csap-base`'s secret-file writer).
fn save_state(path: &Path, state: &State) -> Result<(), SpoolError> {
    let bytes = serde_json::to_vec(state).expect("state serializes");
    csap_base::files::write_secret(path, &bytes).map_err(io_err(path))
}

/// The spooled records after `acked`, with their line sizes, and the highest seq in the
/// file. A torn last line (a crash mid-append) is cut off; other unreadable lines are
/// skipped and logged.
fn load_unacked(
    file: &File,
    path: &Path,
    acked: u64,
) -> Result<(VecDeque<(MountAuditRecord, u64)>, u64), SpoolError> {
    let mut unacked = VecDeque::new();
    let mut last_seq = 0;
    let mut good_len = 0u64;
    let mut torn = false;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err(path))? as u64;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            torn = true;
            break;
        }
        good_len += n;
        match serde_json::from_slice::<MountAuditRecord>(&line) {
            Ok(r) => {
                last_seq = last_seq.max(r.seq);
                if r.seq > acked {
                    unacked.push_back((r, n));
                }
            }
            Err(e) => {
                tracing::error!(spool = %path.display(), error = %e, "unreadable audit spool line skipped")
            }
        }
    }
    if torn {
        tracing::warn!(spool = %path.display(), "audit spool ends in a torn line (crash mid-write); cut off");
        file.set_len(good_len).map_err(io_err(path))?;
    }
    Ok((unacked, last_seq))
}

/// Aggregation key: everything but the time.
type Key = Decision;

struct Writer {
    shared: Arc<Shared>,
    rx: Receiver<(i64, Decision)>,
    file: Flock<File>,
    spool_path: PathBuf,
    next_seq: u64,
    cfg: SpoolConfig,
    /// When "spool full" was last logged.
    full_logged: Option<Instant>,
}

impl Writer {
    fn run(mut self) {
        loop {
            // Polling, not blocking on the channel: a sender never has to wake this thread.
            std::thread::park_timeout(self.cfg.flush_interval);
            let (window, disconnected) = self.drain();
            if !window.is_empty() {
                self.spool(window);
            } else {
                self.compact();
            }
            if disconnected {
                break;
            }
        }
        self.shared.lock().writer_done = true;
        self.shared.wake.notify_all();
    }

    /// Everything queued now, identical decisions aggregated (first time, count).
    fn drain(&mut self) -> (Vec<(i64, Decision, u32)>, bool) {
        let mut window: Vec<(i64, Decision, u32)> = Vec::new();
        let mut index: HashMap<Key, usize> = HashMap::new();
        loop {
            match self.rx.try_recv() {
                Ok((time, d)) => match index.get(&d) {
                    Some(&i) => window[i].2 = window[i].2.saturating_add(1),
                    None => {
                        index.insert(d.clone(), window.len());
                        window.push((time, d, 1));
                    }
                },
                Err(TryRecvError::Empty) => return (window, false),
                Err(TryRecvError::Disconnected) => return (window, true),
            }
        }
    }

    /// Appends the window's records (numbered), fsyncs, and hands them to the shipper; at
    /// the cap, drops them instead and says so.
    fn spool(&mut self, window: Vec<(i64, Decision, u32)>) {
        let mut bytes = Vec::new();
        let mut records = Vec::with_capacity(window.len());
        let room = {
            let p = self.shared.lock();
            self.cfg.max_bytes.saturating_sub(p.unacked_bytes)
        };
        let mut dropped = 0u64;
        for (time, d, count) in window {
            let record = MountAuditRecord {
                seq: self.next_seq,
                time,
                user: d.user,
                uid: Some(d.uid),
                app_digest: d.app_digest,
                device: Some(self.cfg.device.clone()),
                path: d.path,
                asset: d.asset.map(hex::encode),
                action: d.action,
                decision: if d.grant { "grant" } else { "deny" }.into(),
                reason: d.reason.into_owned(),
                count,
            };
            let mut line = serde_json::to_vec(&record).expect("record serializes");
            line.push(b'\n');
            if bytes.len() as u64 + line.len() as u64 > room {
                dropped += u64::from(count);
                continue;
            }
            self.next_seq += 1;
            bytes.extend_from_slice(&line);
            records.push((record, line.len() as u64));
        }
        if dropped > 0 {
            self.shared.full.store(true, Ordering::Release);
            self.shared.dropped.fetch_add(dropped, Ordering::Relaxed);
            self.log_full();
        }
        if records.is_empty() {
            return;
        }
        if let Err(e) = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data())
        {
            // Not on disk: the records are kept in memory and shipped from there; a crash
            // before they are shipped would lose them, so say so loudly.
            tracing::error!(spool = %self.spool_path.display(), error = %e, "cannot write the audit spool; records held in memory only");
        }
        let n = records.len() as u64;
        let mut p = self.shared.lock();
        for (r, size) in records {
            p.unacked_bytes += size;
            p.unacked.push_back((r, size));
        }
        if p.unacked_bytes >= self.cfg.max_bytes {
            self.shared.full.store(true, Ordering::Release);
        }
        drop(p);
        self.shared.spooled.fetch_add(n, Ordering::Relaxed);
        self.shared.wake.notify_all();
    }

    /// Empties the spool file once every record in it is acknowledged (the acknowledgement
    /// is durable in the state file by then), and lifts the cap.
    fn compact(&mut self) {
        let p = self.shared.lock();
        let empty = p.unacked.is_empty();
        // Hysteresis: grants resume once half the cap is free, not at the first free byte.
        let below = p.unacked_bytes <= self.cfg.max_bytes / 2;
        drop(p);
        if below && self.shared.full.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                dropped = self.shared.dropped.load(Ordering::Relaxed),
                "audit spool half empty again: the mount grants again"
            );
            self.full_logged = None;
        }
        if !empty {
            return;
        }
        match self.file.metadata() {
            Ok(m) if m.len() > 0 => {
                if let Err(e) = self.file.set_len(0).and_then(|()| self.file.sync_data()) {
                    tracing::warn!(spool = %self.spool_path.display(), error = %e, "cannot empty the shipped audit spool");
                }
            }
            _ => {}
        }
    }

    fn log_full(&mut self) {
        if self.full_logged.is_some_and(|t| t.elapsed() < LOG_AGAIN) {
            return;
        }
        self.full_logged = Some(Instant::now());
        tracing::error!(
            spool = %self.spool_path.display(),
            cap_bytes = self.cfg.max_bytes,
            dropped = self.shared.dropped.load(Ordering::Relaxed),
            "AUDIT SPOOL FULL: the key server has not taken the mount's audit records; new records are dropped and opens from cached licenses are refused until it does"
        );
    }
}

struct Shipper {
    shared: Arc<Shared>,
    ship: Box<dyn Ship>,
    state_path: PathBuf,
    spool: String,
    acked: u64,
}

impl Shipper {
    fn run(mut self) {
        let mut backoff = Duration::ZERO;
        let mut retry_at: Option<Instant> = None;
        let mut failing_since: Option<Instant> = None;
        let mut logged: Option<Instant> = None;
        loop {
            let (records, stopping) = {
                let mut p = self.shared.lock();
                loop {
                    let stopping = p.writer_done && self.shared.stopping.load(Ordering::Acquire);
                    let now = Instant::now();
                    let due = retry_at.is_none_or(|t| now >= t);
                    if stopping || (!p.unacked.is_empty() && due) {
                        break;
                    }
                    let wait = match retry_at {
                        Some(t) if !p.unacked.is_empty() => t.saturating_duration_since(now),
                        _ => Duration::from_secs(3600),
                    };
                    p = self
                        .shared
                        .wake
                        .wait_timeout(p, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                let records: Vec<MountAuditRecord> = p
                    .unacked
                    .iter()
                    .take(SHIP_BATCH)
                    .map(|(r, _)| r.clone())
                    .collect();
                (records, p.writer_done)
            };
            if records.is_empty() {
                if stopping {
                    return;
                }
                continue;
            }
            match self.send(records) {
                Ok(n) => {
                    if failing_since.take().is_some() {
                        tracing::info!("audit records reach the key server again");
                    }
                    self.shared.shipped.fetch_add(n, Ordering::Relaxed);
                    backoff = Duration::ZERO;
                    retry_at = None;
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if logged.is_none_or(|t| t.elapsed() >= LOG_AGAIN) {
                        logged = Some(Instant::now());
                        let unshipped = self.shared.lock().unacked.len();
                        tracing::warn!(error = %e, unshipped, failing_for = ?since.elapsed(), "cannot ship audit records to the key server; they stay in the spool");
                    }
                    if stopping {
                        return; // the spool keeps them for the next run
                    }
                    backoff = (backoff * 2).clamp(Duration::from_millis(250), MAX_BACKOFF);
                    retry_at = Some(Instant::now() + backoff);
                }
            }
        }
    }

    /// Ships one batch; on success records the acknowledgement durably, then forgets the
    /// acknowledged records. Returns how many were acknowledged.
    fn send(&mut self, records: Vec<MountAuditRecord>) -> Result<u64, String> {
        let last = records.last().map_or(0, |r| r.seq);
        let batch = AuditBatch {
            spool: self.spool.clone(),
            records,
        };
        let ack = self.ship.ship(&batch)?;
        if ack.through_seq != last {
            return Err(format!(
                "the key server acknowledged through seq {}, sent through {last}",
                ack.through_seq
            ));
        }
        save_state(
            &self.state_path,
            &State {
                spool: self.spool.clone(),
                acked: last,
            },
        )
        .map_err(|e| e.to_string())?;
        self.acked = last;
        let mut p = self.shared.lock();
        let mut n = 0;
        while p.unacked.front().is_some_and(|(r, _)| r.seq <= last) {
            if let Some((_, size)) = p.unacked.pop_front() {
                p.unacked_bytes -= size;
                n += 1;
            }
        }
        debug_assert_eq!(p.spool_id, self.spool);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key server stand-in: keeps what it was sent (deduplicated by seq, as the real one
    /// does) and can be switched off.
    #[derive(Clone, Default)]
    struct Sink {
        up: Arc<AtomicBool>,
        got: Arc<Mutex<Vec<MountAuditRecord>>>,
        calls: Arc<AtomicU64>,
    }

    impl Ship for Sink {
        fn ship(&mut self, batch: &AuditBatch) -> Result<AuditBatchAck, String> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if !self.up.load(Ordering::Acquire) {
                return Err("connection refused".into());
            }
            let mut got = self.got.lock().unwrap();
            let mut accepted = 0;
            for r in &batch.records {
                if !got.iter().any(|g| g.seq == r.seq) {
                    got.push(r.clone());
                    accepted += 1;
                }
            }
            Ok(AuditBatchAck {
                accepted,
                duplicates: batch.records.len() as u32 - accepted,
                through_seq: batch.records.last().map_or(0, |r| r.seq),
            })
        }
    }

    fn deny(path: &str) -> Decision {
        Decision {
            user: Some("alice".into()),
            uid: 1000,
            app_digest: Some("ab".repeat(32)),
            path: path.into(),
            asset: None,
            action: Action::Read,
            grant: false,
            reason: Cow::Borrowed("no_rule_at_mount"),
        }
    }

    fn config(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            flush_interval: Duration::from_millis(20),
            ..SpoolConfig::new(dir.join("spool"), "ws-1")
        }
    }

    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Records made while the key server is down survive the mount stopping; the next run
    /// ships them, each exactly once, numbered without gaps.
    #[test]
    fn unshipped_records_survive_a_restart_and_are_shipped_once() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::default();
        let spool = AuditSpool::open(config(dir.path()), Box::new(sink.clone())).unwrap();
        for i in 0..3 {
            assert!(spool.record(deny(&format!("show/f{i}.exr"))));
        }
        eventually("spooled", || spool.stats().spooled == 3);
        assert_eq!(spool.stats().unshipped, 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("spool").join(SPOOL_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the spool names users and paths");
        drop(spool);
        assert!(sink.got.lock().unwrap().is_empty());

        sink.up.store(true, Ordering::Release);
        let spool = AuditSpool::open(config(dir.path()), Box::new(sink.clone())).unwrap();
        assert!(spool.record(deny("show/f3.exr")));
        eventually("shipped", || sink.got.lock().unwrap().len() == 4);
        eventually("acknowledged", || spool.stats().unshipped == 0);
        drop(spool);
        let got = sink.got.lock().unwrap().clone();
        let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            ["show/f0.exr", "show/f1.exr", "show/f2.exr", "show/f3.exr"]
        );
        // A third run has nothing left to send, and numbers on.
        let calls = sink.calls.load(Ordering::Relaxed);
        let spool = AuditSpool::open(config(dir.path()), Box::new(sink.clone())).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            sink.calls.load(Ordering::Relaxed),
            calls,
            "resent acked records"
        );
        assert!(spool.record(deny("show/f4.exr")));
        eventually("numbered on", || sink.got.lock().unwrap().len() == 5);
        assert_eq!(sink.got.lock().unwrap()[4].seq, 5);
    }

    /// A crash mid-append leaves a torn last line: it is cut off, the records before it are
    /// shipped.
    #[test]
    fn a_torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::default();
        let spool = AuditSpool::open(config(dir.path()), Box::new(sink.clone())).unwrap();
        assert!(spool.record(deny("show/a.exr")));
        eventually("spooled", || spool.stats().spooled == 1);
        drop(spool);
        let path = dir.path().join("spool").join(SPOOL_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"seq":2,"time":17"#).unwrap();
        sink.up.store(true, Ordering::Release);
        let spool = AuditSpool::open(config(dir.path()), Box::new(sink.clone())).unwrap();
        eventually("shipped", || spool.stats().unshipped == 0);
        assert_eq!(sink.got.lock().unwrap().len(), 1);
        assert!(spool.record(deny("show/b.exr")));
        eventually("the next", || sink.got.lock().unwrap().len() == 2);
        assert_eq!(sink.got.lock().unwrap()[1].seq, 2);
    }

    /// Identical decisions within a flush interval become one record with a count.
    #[test]
    fn identical_decisions_are_aggregated() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::default();
        sink.up.store(true, Ordering::Release);
        let mut cfg = config(dir.path());
        cfg.flush_interval = Duration::from_millis(300);
        let spool = AuditSpool::open(cfg, Box::new(sink.clone())).unwrap();
        for _ in 0..100 {
            assert!(spool.record(deny("show/a.exr")));
        }
        eventually("shipped", || spool.stats().shipped >= 1);
        let got = sink.got.lock().unwrap().clone();
        assert_eq!(got.iter().map(|r| r.count).sum::<u32>(), 100);
        assert!(got.len() < 100, "not aggregated: {} records", got.len());
    }

    /// Attack: fill the spool while the key server is away. At the cap, records are dropped
    /// and counted, and grants the mount makes alone are refused (fail secure) until the key
    /// server takes the records.
    #[test]
    fn a_full_spool_refuses_grants_until_it_drains() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::default();
        let mut cfg = config(dir.path());
        cfg.max_bytes = 1000;
        let spool = AuditSpool::open(cfg, Box::new(sink.clone())).unwrap();
        assert!(spool.accepts_grants());
        for i in 0..20 {
            spool.record(deny(&format!("show/f{i}.exr")));
            std::thread::sleep(Duration::from_millis(2));
        }
        eventually("full", || spool.stats().full);
        assert!(!spool.accepts_grants());
        assert!(
            !spool.record(deny("show/more.exr")),
            "recorded past the cap"
        );
        let stats = spool.stats();
        assert!(stats.dropped > 0, "{stats:?}");
        sink.up.store(true, Ordering::Release);
        eventually("drained", || spool.accepts_grants());
        assert_eq!(spool.stats().unshipped, 0);
    }

    /// Two mounts cannot share one spool (their sequence numbers would collide).
    #[test]
    fn a_spool_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = AuditSpool::open(config(dir.path()), Box::new(Sink::default())).unwrap();
        let second = AuditSpool::open(config(dir.path()), Box::new(Sink::default()));
        assert!(matches!(second, Err(SpoolError::Locked(_))), "{second:?}");
    }
}
