//! The audit writer: one task that stores audit events in batched transactions (group commit).
//!
//! A license is answered only after its audit records are stored: the handler awaits
//! [`AuditLog::record`]. Events from places that cannot wait (TLS handshakes, middleware) go
//! through [`AuditLog::record_later`]. Why one writer: with a transaction per request,
//! concurrent license requests queued on SQLite's write lock, whose busy handler sleeps in
//! steps of milliseconds — that was the tail of the license benchmark. One writer commits
//! whatever has queued up meanwhile in one transaction.

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::db::{self, AuditEvent, Db, StoreError};

/// Events per transaction at most (bounds one commit's latency).
const MAX_BATCH: usize = 1024;

struct Job {
    events: Vec<AuditEvent>,
    /// Told the outcome once the events are committed (or failed to be).
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The sending side of the audit writer.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("events", &self.events.len())
            .finish()
    }
}

/// The receiving side, until [`AuditQueue::start`] hands it to the writer task.
#[derive(Debug)]
pub struct AuditQueue(mpsc::Receiver<Job>);

impl AuditQueue {
    /// Starts the writer on its own thread with its own connection (it never waits for the
    /// request pool); it stops once every [`AuditLog`] clone is dropped and the queue is
    /// drained.
    pub fn start(self, db: &Db) -> Result<std::thread::JoinHandle<()>, StoreError> {
        let conn = db.dedicated_connection()?;
        std::thread::Builder::new()
            .name("csap-audit".into())
            .spawn(move || writer(conn, self.0))
            .map_err(|e| StoreError::Worker(e.to_string()))
    }
}

impl AuditLog {
    /// The log and its queue (the queue's writer needs the database, which comes later).
    pub fn new() -> (Self, AuditQueue) {
        let (tx, rx) = mpsc::channel(4096);
        (AuditLog { tx }, AuditQueue(rx))
    }

    /// Queues an event without waiting. Under a flood the queue is full: the event is dropped
    /// and that is logged (used only where no key is released).
    pub fn record_later(&self, event: AuditEvent) {
        let job = Job {
            events: vec![event],
            done: None,
        };
        if self.tx.try_send(job).is_err() {
            tracing::warn!("audit queue full: event dropped");
        }
    }

    /// Stores `events` and returns once they are committed.
    pub async fn record(&self, events: Vec<AuditEvent>) -> Result<(), String> {
        let (done, committed) = oneshot::channel();
        self.tx
            .send(Job {
                events,
                done: Some(done),
            })
            .await
            .map_err(|_| "audit writer stopped".to_string())?;
        committed
            .await
            .map_err(|_| "audit writer stopped".to_string())?
    }
}

fn writer(mut conn: Connection, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let mut n = jobs[0].events.len();
        while n < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    n += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let events: Vec<AuditEvent> = jobs.iter_mut().flat_map(|j| j.events.drain(..)).collect();
        let outcome = db::insert_audit(&mut conn, &events).map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "audit write failed");
        }
        for job in jobs {
            if let Some(done) = job.done {
                let _ = done.send(outcome.clone());
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
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("a.sqlite"), 2).unwrap();
        let (log, queue) = AuditLog::new();
        let writer = queue.start(&db).unwrap();
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
                let rows = db.call(|c| db::audit_after(c, 0, 10_000)).await.unwrap();
                assert!(rows
                    .iter()
                    .any(|r| r.license_id.as_deref() == Some(&*format!("lic-{i}"))));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        log.record_later(AuditEvent {
            action: "handshake".into(),
            decision: "deny",
            ..Default::default()
        });
        drop(log);
        tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
        let rows = db.call(|c| db::audit_after(c, 0, 10_000)).await.unwrap();
        assert_eq!(rows.len(), 65);
    }
}
