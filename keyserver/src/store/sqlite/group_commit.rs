//! The SQLite store's audit group commit ([`crate::store::KeyStore::record_audit`]): every
//! license's records are committed before the license is answered.
//!
//! Records are committed in batched transactions (group commit) by *whoever finds the writer
//! connection free*: usually the request's own thread, inline. An idle server so saves two
//! thread wake-ups per license — a hand-off to a writer thread and back — which on a small VM
//! cost more than the commit itself (`cargo run -p bench --release -- open`, cold opens).
//! Under load, records queue while one caller commits, and a caller commits everything queued
//! in its next transaction (flat combining). Two rules keep async threads from stalling:
//! a caller commits at most `INLINE_ROUNDS` transactions, and it never waits for SQLite's
//! write lock (busy timeout 0 inline). Either way the rest goes to the writer thread, which
//! may wait. Events recorded where SQLite must not be touched at all (TLS handshakes,
//! middleware: [`AuditLog::record_all_later`]) only queue and wake the writer thread.
//! Why batching at all: with a transaction per request, concurrent license requests
//! queued on SQLite's write lock, whose busy handler sleeps in steps of milliseconds.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::pool::{is_busy, Pool};
use crate::store::{AuditEvent, AuditReceipt, StoreError};

/// Events per transaction at most (bounds one commit's latency).
const MAX_BATCH: usize = 1024;

/// Transactions one caller commits inline before it hands the rest to the writer thread.
const INLINE_ROUNDS: usize = 2;

/// Queued jobs beyond which [`AuditLog::record_all_later`] drops events (a flood).
const MAX_QUEUED: usize = 4096;

/// How long the writer thread lets SQLite wait for the write lock.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

struct Job {
    events: Vec<AuditEvent>,
    /// Told the outcome once the events are committed (or failed to be).
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The recording side; clones share one queue and one writer connection.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
    /// Dropped with the last clone: then the writer thread drains the queue and stops.
    _alive: Arc<Alive>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when the writer thread has work (`Queue::handed_off`) or must stop.
    wake: Condvar,
    /// The writer connection, once [`AuditQueue::start`] has opened it. Holding it is the
    /// right to commit.
    conn: Mutex<Option<Connection>>,
    /// Transactions committed inline by recording callers (the rest were the writer's).
    inline_commits: AtomicU64,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    handed_off: bool,
    stopping: bool,
}

struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.lock_queue().stopping = true;
        self.0.wake.notify_all();
    }
}

/// The writer side, until [`AuditQueue::start`] gives it a connection and a thread.
pub struct AuditQueue(Arc<Shared>);

impl std::fmt::Debug for AuditQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditQueue").finish_non_exhaustive()
    }
}

impl AuditQueue {
    /// Opens the writer connection (its own, outside the request pool) and starts the writer
    /// thread; it stops once every [`AuditLog`] clone is dropped and the queue is drained.
    pub fn start(self, pool: &Pool) -> Result<std::thread::JoinHandle<()>, StoreError> {
        let conn = pool.dedicated_connection()?;
        *self.0.lock_conn() = Some(conn);
        // Whatever was recorded before there was a connection is the writer's first work.
        // Only then is the writer woken: a wake-up for nothing would hold the connection just
        // as the first caller tries it, and send that caller's records the slow way. (A record
        // queued after this look finds the connection set and commits itself.)
        let mut queue = self.0.lock_queue();
        queue.handed_off = !queue.jobs.is_empty();
        drop(queue);
        let shared = Arc::clone(&self.0);
        std::thread::Builder::new()
            .name("csap-audit".into())
            .spawn(move || writer(&shared))
            .map_err(|e| StoreError::Worker(e.to_string()))
    }
}

impl AuditLog {
    /// The log and its queue (the queue's writer needs the database, which comes later).
    pub fn new() -> (Self, AuditQueue) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            conn: Mutex::new(None),
            inline_commits: AtomicU64::new(0),
        });
        let log = AuditLog {
            shared: Arc::clone(&shared),
            _alive: Arc::new(Alive(Arc::clone(&shared))),
        };
        (log, AuditQueue(shared))
    }

    /// Queues the events of one refusal (one row per asset, committed together) for the writer
    /// thread and returns at once: for callers that must not touch SQLite at all (TLS
    /// handshakes, middleware). Under a flood the queue is full: the events are dropped and
    /// that is logged (used only where no key is released).
    pub fn record_all_later(&self, events: Vec<AuditEvent>) {
        let mut q = self.shared.lock_queue();
        if q.jobs.len() >= MAX_QUEUED {
            drop(q);
            tracing::warn!(events = events.len(), "audit queue full: events dropped");
            return;
        }
        q.jobs.push_back(Job { events, done: None });
        q.handed_off = true;
        drop(q);
        self.shared.wake.notify_one();
    }

    /// Queues `events` (committing them on this thread if the writer connection is free) and
    /// returns the receipt that resolves once they are committed.
    pub fn record(&self, events: Vec<AuditEvent>) -> AuditReceipt {
        let (done, committed) = AuditReceipt::new();
        self.shared.lock_queue().jobs.push_back(Job {
            events,
            done: Some(done),
        });
        self.shared.commit_inline();
        committed
    }

    /// Lets the writer thread commit what is queued and stop (the log keeps committing inline).
    pub fn stop(&self) {
        self.shared.lock_queue().stopping = true;
        self.shared.wake.notify_all();
    }

    /// Transactions committed inline by recording callers (the rest were the writer's).
    #[cfg(test)]
    pub fn inline_commits(&self) -> u64 {
        self.shared.inline_commits.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_conn(&self) -> MutexGuard<'_, Option<Connection>> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits queued jobs on the calling thread if the connection is free, up to
    /// [`INLINE_ROUNDS`] transactions, without waiting for SQLite's lock; hands what is left
    /// to the writer thread.
    ///
    /// No job is stranded: a caller that finds the connection taken leaves its job to the
    /// holder, and every holder looks at the queue again *after* letting go of the
    /// connection (so either it sees the job, or the job's caller's `try_lock` came later and
    /// succeeded, or a third holder took over that duty).
    fn commit_inline(&self) {
        let mut rounds = 0;
        loop {
            let mut guard = match self.conn.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            let Some(conn) = guard.as_mut() else {
                return; // not started: the writer thread will find the jobs
            };
            while rounds < INLINE_ROUNDS {
                let batch = self.take_batch();
                if batch.is_empty() {
                    break;
                }
                rounds += 1;
                match commit(conn, batch, Duration::ZERO) {
                    Ok(()) => {
                        self.inline_commits.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(busy) => {
                        self.requeue(busy);
                        rounds = INLINE_ROUNDS;
                    }
                }
            }
            drop(guard);
            let mut q = self.lock_queue();
            if q.jobs.is_empty() {
                return;
            }
            if rounds >= INLINE_ROUNDS {
                q.handed_off = true;
                drop(q);
                self.wake.notify_one();
                return;
            }
        }
    }

    /// The oldest queued jobs, up to [`MAX_BATCH`] events (at least one job).
    fn take_batch(&self) -> Vec<Job> {
        let mut q = self.lock_queue();
        let mut batch = Vec::new();
        let mut n = 0;
        while let Some(job) = q.jobs.front() {
            if !batch.is_empty() && n + job.events.len() > MAX_BATCH {
                break;
            }
            n += job.events.len();
            batch.extend(q.jobs.pop_front());
        }
        batch
    }

    fn requeue(&self, batch: Vec<Job>) {
        let mut q = self.lock_queue();
        for job in batch.into_iter().rev() {
            q.jobs.push_front(job);
        }
    }
}

/// Commits `batch` and tells each job. `Err` gives the batch back, untouched, when SQLite's
/// write lock was not free within `busy_timeout`; other failures are told to the jobs.
fn commit(conn: &mut Connection, batch: Vec<Job>, busy_timeout: Duration) -> Result<(), Vec<Job>> {
    let _ = conn.busy_timeout(busy_timeout);
    let started = std::time::Instant::now();
    let outcome = match super::audit::insert_audit(conn, batch.iter().flat_map(|j| &j.events)) {
        Ok(()) => {
            let records = batch.iter().map(|j| j.events.len()).sum();
            crate::metrics::audit_commit(records, started.elapsed());
            Ok(())
        }
        Err(e) if busy_timeout.is_zero() && is_busy(&e) => return Err(batch),
        Err(e) => {
            tracing::error!(error = %e, "audit write failed");
            Err(e.to_string())
        }
    };
    for job in batch {
        if let Some(done) = job.done {
            let _ = done.send(outcome.clone());
        }
    }
    Ok(())
}

/// The writer thread: commits what callers handed off (waiting for SQLite's lock as long as
/// it takes), and at the end everything still queued.
fn writer(shared: &Shared) {
    loop {
        {
            let mut q = shared.lock_queue();
            while !q.handed_off && !q.stopping {
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            q.handed_off = false;
            if q.stopping && q.jobs.is_empty() {
                return;
            }
        }
        // Like every holder of the connection, look at the queue again after letting go.
        loop {
            let mut guard = shared.lock_conn();
            let Some(conn) = guard.as_mut() else { return };
            loop {
                let batch = shared.take_batch();
                if batch.is_empty() {
                    break;
                }
                // With a timeout, `commit` never gives the batch back.
                let _ = commit(conn, batch, WRITER_BUSY_TIMEOUT);
            }
            drop(guard);
            if shared.lock_queue().jobs.is_empty() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_are_all_committed_before_they_return() {
        let (_dir, db, log, writer) = started(2);
        let mut tasks = Vec::new();
        for i in 0..64 {
            let log = log.clone();
            let db = Arc::clone(&db);
            tasks.push(tokio::spawn(async move {
                let ev = AuditEvent {
                    time: i,
                    action: "read".into(),
                    decision: "grant",
                    license_id: Some(format!("lic-{i}")),
                    ..Default::default()
                };
                log.record(vec![ev]).await.unwrap();
                // Committed: visible to another connection right away.
                let rows = db
                    .call(|c| super::super::audit::audit_after(c, 0, 10_000))
                    .await
                    .unwrap();
                assert!(rows
                    .iter()
                    .any(|r| r.license_id.as_deref() == Some(&*format!("lic-{i}"))));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        log.record_all_later(vec![AuditEvent {
            action: "handshake".into(),
            decision: "deny",
            ..Default::default()
        }]);
        drop(log);
        tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
        let rows = db
            .call(|c| super::super::audit::audit_after(c, 0, 10_000))
            .await
            .unwrap();
        assert_eq!(rows.len(), 65);
    }

    const DB_FILE: &str = "a.sqlite";

    /// A database with `pool` connections in a temp dir, and a started audit log on it.
    fn started(
        pool: usize,
    ) -> (
        tempfile::TempDir,
        Arc<Pool>,
        AuditLog,
        std::thread::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = Pool::open(&dir.path().join(DB_FILE), pool).unwrap();
        let (log, queue) = AuditLog::new();
        let writer = queue.start(&db).unwrap();
        (dir, db, log, writer)
    }

    fn event(license: &str) -> AuditEvent {
        AuditEvent {
            action: "read".into(),
            decision: "grant",
            license_id: Some(license.into()),
            ..Default::default()
        }
    }

    /// On an idle log the caller commits its own record: no hand-off to the writer thread.
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_log_commits_on_the_callers_thread() {
        let (_dir, db, log, _writer) = started(1);
        log.record(vec![event("lic-1")]).await.unwrap();
        log.record(vec![event("lic-2")]).await.unwrap();
        assert_eq!(log.inline_commits(), 2);
        let rows = db
            .call(|c| super::super::audit::audit_after(c, 0, 10))
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
    }

    /// `record_all_later` (TLS handshakes, middleware) never touches SQLite on the caller's
    /// thread; the writer thread commits the event on its own.
    #[tokio::test(flavor = "current_thread")]
    async fn record_later_leaves_the_commit_to_the_writer_thread() {
        let (_dir, db, log, _writer) = started(1);
        log.record_all_later(vec![event("handshake")]);
        assert_eq!(log.inline_commits(), 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let rows = db
                .call(|c| super::super::audit::audit_after(c, 0, 10))
                .await
                .unwrap();
            if rows.len() == 1 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never committed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(log.inline_commits(), 0);
    }

    /// While another connection holds SQLite's write lock, a record waits on the writer
    /// thread, not on the caller's async thread: other tasks keep running, and the record is
    /// committed (and only then returns) once the lock is free.
    #[tokio::test(flavor = "current_thread")]
    async fn a_locked_database_does_not_stall_the_async_thread() {
        let (dir, db, log, _writer) = started(1);
        let path = dir.path().join(DB_FILE);
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(400));
            conn.execute_batch("COMMIT").unwrap();
        });
        locked_rx.recv().unwrap();
        let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let ticker = {
            let ticks = Arc::clone(&ticks);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        let t = std::time::Instant::now();
        log.record(vec![event("lic-locked")]).await.unwrap();
        let waited = t.elapsed();
        ticker.abort();
        holder.join().unwrap();
        assert!(
            waited >= Duration::from_millis(300),
            "returned before the commit: {waited:?}"
        );
        let ticked = ticks.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            ticked >= 10,
            "the async thread stalled: {ticked} ticks in {waited:?}"
        );
        assert_eq!(log.inline_commits(), 0);
        let rows = db
            .call(|c| super::super::audit::audit_after(c, 0, 10))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
    }
}
