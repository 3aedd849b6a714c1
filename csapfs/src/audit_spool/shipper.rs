//! The shipper thread: sends the unacknowledged records to the key server in batches until each
//! is acknowledged (backing off while it is unreachable), then records the acknowledgement in
//! the state file so the records can be forgotten.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyserver_client::wire::{AuditBatch, MountAuditRecord};

use super::files::{save_state, State};
use super::{Shared, Ship, LOG_AGAIN, MAX_BACKOFF, SHIP_BATCH};

pub(super) struct Shipper {
    pub(super) shared: Arc<Shared>,
    pub(super) ship: Box<dyn Ship>,
    pub(super) state_path: PathBuf,
    pub(super) spool: String,
    pub(super) acked: u64,
}

impl Shipper {
    pub(super) fn run(mut self) {
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
