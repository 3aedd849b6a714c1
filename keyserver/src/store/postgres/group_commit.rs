//! The PostgreSQL store's audit group commit ([`crate::store::KeyStore::record_audit`]): one
//! writer task per replica takes everything queued since its last flush (up to [`MAX_BATCH`]
//! events) and inserts it in one transaction under the audit lock; every receipt of the batch
//! resolves only after that transaction committed, or with its error (the license is then
//! refused: no key leaves without its rows). While one flush waits for the database, the
//! next batch queues, so the commit rate follows the database's latency, not the request rate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use crate::store::{AuditEvent, AuditReceipt, StoreError};

/// Events per transaction at most (bounds one commit's latency).
const MAX_BATCH: usize = 1024;

/// Queued receipt-less jobs beyond which [`AuditWriter::record_later`] drops events (a flood).
const MAX_QUEUED_LATER: usize = 4096;

/// Told a batch's outcome once its events are committed (or failed to be).
type Done = oneshot::Sender<Result<(), String>>;

enum Msg {
    Job {
        events: Vec<AuditEvent>,
        done: Option<Done>,
    },
    /// Commit what came before, then stop.
    Stop(oneshot::Sender<()>),
}

/// The recording side of the writer task.
pub(crate) struct AuditWriter {
    tx: mpsc::UnboundedSender<Msg>,
    queued_later: Arc<AtomicUsize>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl AuditWriter {
    /// Starts the writer task on the current runtime.
    pub(crate) fn start(pool: Pool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued_later = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(writer(pool, rx, Arc::clone(&queued_later)));
        AuditWriter {
            tx,
            queued_later,
            task: Mutex::new(Some(task)),
        }
    }

    pub(crate) fn record(&self, events: Vec<AuditEvent>) -> AuditReceipt {
        let (done, receipt) = AuditReceipt::new();
        // A stopped writer drops `done`: the receipt resolves as an error.
        let _ = self.tx.send(Msg::Job {
            events,
            done: Some(done),
        });
        receipt
    }

    pub(crate) fn record_later(&self, events: Vec<AuditEvent>) {
        if self.queued_later.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_LATER {
            self.queued_later.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(events = events.len(), "audit queue full: events dropped");
            return;
        }
        if self.tx.send(Msg::Job { events, done: None }).is_err() {
            tracing::warn!("audit writer stopped: events dropped");
        }
    }

    /// Commits what is queued and stops the writer (waits at most 5 s).
    pub(crate) async fn stop(&self) {
        let (ack, acked) = oneshot::channel();
        if self.tx.send(Msg::Stop(ack)).is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), acked).await;
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

async fn writer(pool: Pool, mut rx: mpsc::UnboundedReceiver<Msg>, queued_later: Arc<AtomicUsize>) {
    let mut stopping = None;
    while stopping.is_none() {
        let Some(first) = rx.recv().await else { return };
        let mut batch = Vec::new();
        let mut size = 0;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Job { events, done } => {
                    if done.is_none() {
                        queued_later.fetch_sub(1, Ordering::Relaxed);
                    }
                    size += events.len();
                    batch.push((events, done));
                }
                Msg::Stop(ack) => {
                    stopping = Some(ack);
                    break;
                }
            }
            if size >= MAX_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if batch.is_empty() {
            continue;
        }
        let outcome = commit(&pool, &batch).await.map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            tracing::error!(error = %e, rows = size, "audit commit failed; the licenses waiting on it are refused");
        }
        for (_, done) in batch {
            if let Some(done) = done {
                let _ = done.send(outcome.clone());
            }
        }
    }
    if let Some(ack) = stopping {
        let _ = ack.send(());
    }
}

async fn commit(pool: &Pool, batch: &[(Vec<AuditEvent>, Option<Done>)]) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    super::audit::lock(&*tx).await?;
    super::audit::insert_audit_rows(&*tx, batch.iter().flat_map(|(events, _)| events)).await?;
    tx.commit().await?;
    Ok(())
}
