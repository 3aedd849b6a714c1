//! The writer thread: drains the FUSE threads' channel, aggregates identical decisions of one
//! flush interval, appends them to the spool with the next sequence numbers and fsyncs in
//! batches, compacts the file once acknowledged records dominate it, and says when it is full.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use keyserver_client::wire::MountAuditRecord;
use nix::fcntl::Flock;

use super::{Decision, Shared, SpoolConfig, LOG_AGAIN};

/// Aggregation key: everything but the time.
type Key = Decision;

pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) rx: Receiver<(i64, Decision)>,
    pub(super) file: Flock<File>,
    pub(super) spool_path: PathBuf,
    pub(super) next_seq: u64,
    pub(super) cfg: SpoolConfig,
    /// When "spool full" was last logged.
    pub(super) full_logged: Option<Instant>,
}

impl Writer {
    pub(super) fn run(mut self) {
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
