//! Attestations remembered per calling thread until its process execs or the thread dies, so a
//! warm open measures nothing (see [`crate::exec_watch`] for why that is sound).
//!
//! A measurement takes time and the caller may exec meanwhile, so remembering follows a
//! ticket protocol: [`Remembered::lookup`] hands out a [`Ticket`] (the exec count so far); the
//! caller opens a [`Pidfd`], measures, and offers the result to [`Remembered::admit`], which
//! refuses it if any exec of that thread's process was seen since the ticket, if notices were
//! lost, or if the thread is gone (the pidfd ties the measured thread to the one that asked).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::code::Probe;
use super::Attestation;
use crate::exec_watch::{ExecWatch, Notice, Pidfd};

/// Threads remembered at most (each holds a pidfd, so this bounds descriptors too).
const CAPACITY: usize = 256;

/// Exec notices kept for tickets still out; a ticket older than all of them is refused.
const RECENT: usize = 1024;

/// Proof of what had been seen when a measurement started.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket(u64);

pub(super) struct Remembered {
    watch: ExecWatch,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By thread id (what a FUSE request names).
    entries: HashMap<u32, Entry>,
    /// `(seq, pid, tgid)` of the latest exec notices, oldest first.
    recent: VecDeque<(u64, u32, u32)>,
    /// Notices seen (an overrun counts as one).
    seq: u64,
    /// `seq` at the last overrun.
    lost_at: u64,
    hits: u64,
}

struct Entry {
    pidfd: Pidfd,
    attestation: Attestation,
    /// What the next open checks the process against (new code mapped since?).
    probe: Arc<Probe>,
}

impl Remembered {
    pub(super) fn new(watch: ExecWatch) -> Remembered {
        Remembered {
            watch,
            state: Mutex::new(State::default()),
        }
    }

    /// The remembered attestation of thread `pid` with its probe, or a ticket to measure it.
    pub(super) fn lookup(&self, pid: u32) -> Result<(Attestation, Arc<Probe>), Ticket> {
        let mut state = self.catch_up();
        if let Some(entry) = state.entries.get(&pid) {
            if entry.pidfd.alive() {
                let found = (entry.attestation.clone(), Arc::clone(&entry.probe));
                state.hits += 1;
                return Ok(found);
            }
            state.entries.remove(&pid);
        }
        Err(Ticket(state.seq))
    }

    /// Remembers `attestation`, measured after `ticket` was issued on the thread `pidfd` names,
    /// unless something since may have changed what it describes. True if remembered.
    pub(super) fn admit(
        &self,
        ticket: Ticket,
        pidfd: Pidfd,
        attestation: &Attestation,
        probe: Probe,
    ) -> bool {
        let mut state = self.catch_up();
        if !state.may_admit(ticket, attestation) || !pidfd.alive() {
            return false;
        }
        state.insert(pidfd, attestation.clone(), probe);
        true
    }

    /// Forgets thread `pid` and hands out a ticket to measure it again.
    pub(super) fn forget(&self, pid: u32) -> Ticket {
        let mut state = self.catch_up();
        state.entries.remove(&pid);
        Ticket(state.seq)
    }

    /// Lookups answered from memory.
    pub(super) fn hits(&self) -> u64 {
        self.lock().hits
    }

    /// The state with every queued exec notice applied.
    fn catch_up(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.lock();
        let drained = self.watch.drain(|notice| state.apply(notice));
        if let Err(e) = drained {
            tracing::warn!(error = %e, "exec notices unreadable; forgetting remembered callers");
            state.apply(Notice::Lost);
        }
        state
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn apply(&mut self, notice: Notice) {
        self.seq += 1;
        match notice {
            Notice::Exec { pid, tgid } => {
                self.recent.push_back((self.seq, pid, tgid));
                if self.recent.len() > RECENT {
                    self.recent.pop_front();
                }
                // Every thread of the process: exec ends them all (and the exec'ing thread
                // takes the leader's id).
                self.entries
                    .retain(|tid, e| e.attestation.tgid != tgid && *tid != pid && *tid != tgid);
            }
            Notice::Lost => {
                self.lost_at = self.seq;
                self.recent.clear();
                self.entries.clear();
            }
        }
    }

    fn may_admit(&self, ticket: Ticket, a: &Attestation) -> bool {
        if self.lost_at > ticket.0 {
            return false;
        }
        // Every notice since the ticket must still be in `recent` to be checked.
        let oldest_kept = self.recent.front().map_or(self.seq + 1, |r| r.0);
        if self.seq > ticket.0 && oldest_kept > ticket.0 + 1 {
            return false;
        }
        let touched = |&&(seq, pid, tgid): &&(u64, u32, u32)| {
            seq > ticket.0 && (tgid == a.tgid || pid == a.pid || pid == a.tgid || tgid == a.pid)
        };
        !self.recent.iter().any(|r| touched(&r))
    }

    fn insert(&mut self, pidfd: Pidfd, attestation: Attestation, probe: Probe) {
        if self.entries.len() >= CAPACITY {
            self.entries.retain(|_, e| e.pidfd.alive());
        }
        if self.entries.len() >= CAPACITY {
            // Still full of live threads: make room by forgetting one (it is measured again).
            if let Some(&tid) = self.entries.keys().next() {
                self.entries.remove(&tid);
            }
        }
        let probe = Arc::new(probe);
        self.entries.insert(
            attestation.pid,
            Entry {
                pidfd,
                attestation,
                probe,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Attestation {
        let pid = nix::unistd::gettid().as_raw() as u32;
        Attestation {
            pid,
            tgid: std::process::id(),
            start_time: 1,
            app_digest: "d".into(),
        }
    }

    fn pidfd(a: &Attestation) -> Pidfd {
        Pidfd::open(a.pid).unwrap()
    }

    fn probe() -> Probe {
        let maps = std::fs::File::open("/proc/self/maps").unwrap();
        Probe::new(maps, Vec::new())
    }

    /// Notices of other processes do not spoil a measurement; one of the measured process, or
    /// a lost notice, between ticket and admission does.
    #[test]
    fn admission_refuses_measurements_an_exec_may_have_overtaken() {
        let a = me();
        let mut s = State::default();
        let t = Ticket(s.seq);
        s.apply(Notice::Exec { pid: 9, tgid: 9 });
        assert!(s.may_admit(t, &a), "another process's exec");
        s.apply(Notice::Exec {
            pid: a.tgid,
            tgid: a.tgid,
        });
        assert!(!s.may_admit(t, &a), "exec of the measured process");
        let t = Ticket(s.seq);
        assert!(s.may_admit(t, &a), "a ticket after that exec");
        s.apply(Notice::Lost);
        assert!(!s.may_admit(t, &a), "lost notices");

        let mut s = State::default();
        let t = Ticket(s.seq);
        for i in 0..=RECENT as u32 {
            s.apply(Notice::Exec {
                pid: 100_000 + i,
                tgid: 100_000 + i,
            });
        }
        assert!(
            !s.may_admit(t, &a),
            "notices since the ticket fell out of memory"
        );
    }

    #[test]
    fn an_exec_forgets_every_thread_of_its_process() {
        let a = me();
        let mut s = State::default();
        s.insert(pidfd(&a), a.clone(), probe());
        assert_eq!(s.entries.len(), 1);
        s.apply(Notice::Exec { pid: 9, tgid: 9 });
        assert_eq!(s.entries.len(), 1);
        // The exec'ing thread (any of the process) takes the leader's id.
        s.apply(Notice::Exec {
            pid: a.tgid,
            tgid: a.tgid,
        });
        assert!(s.entries.is_empty());
    }

    #[test]
    fn capacity_is_kept() {
        let a = me();
        let mut s = State::default();
        for i in 0..CAPACITY as u32 + 10 {
            let mut b = a.clone();
            b.pid = 1_000_000 + i;
            s.insert(pidfd(&a), b, probe());
        }
        assert_eq!(s.entries.len(), CAPACITY);
    }
}
