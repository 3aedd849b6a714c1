//! The helper threads that read another process's `/proc` files for [`super::Attestor`]: such a
//! read can block (the process's `mmap_lock` may be held while it waits on this very mount), so
//! it runs here and the caller gives up after its timeout instead of stalling the FUSE loop.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::{AttestError, Inner, Measured};

/// Attestations allowed to be stuck on helper threads at once before new ones are refused.
pub(super) const MAX_IN_FLIGHT: usize = 64;

/// An idle helper thread exits after this long.
const HELPER_IDLE: Duration = Duration::from_secs(30);

/// One measurement for a helper thread: the pid and where to send the answer.
pub(super) type Job = (u32, mpsc::SyncSender<Result<Measured, AttestError>>);

/// Reusable helper threads. A job goes to an idle helper; when none is idle (all busy, or some
/// stuck in a blocking `/proc` read) a new one starts, so a stuck helper never delays the next
/// caller. The number of jobs queued or running is bounded by [`MAX_IN_FLIGHT`] in
/// [`Attestor::attest`], which bounds the threads too.
pub(super) struct Helpers {
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
    pub(super) fn new() -> Helpers {
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

    pub(super) fn submit(&self, inner: &Arc<Inner>, job: Job) -> io::Result<()> {
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
