//! Ends the plaintext pages of files whose handles lost their lease, in both cache modes.
//!
//! A mapped page never reaches the mount's `read`: once in the page cache, it is served to
//! every mapping of the file (and, with `--cache page`, to `read` too). Even `--cache direct`
//! files use the page cache when mapped. So when a handle's lease ends — a rule revoked, an
//! identity revoked, or a license past its `not_after` with nothing renewing it — the file's
//! pages are invalidated (`FUSE_NOTIFY_INVAL_INODE`, which also unmaps them from every
//! process). The next touch faults back into the mount, whose `read` refuses the ended handle,
//! and the kernel delivers `SIGBUS` instead of plaintext.
//!
//! Two triggers: the key source's revocation listener (right after a sweep revoked
//! something), and a thread that wakes when the next lease ends by time (no listener fires for
//! that). Each ended handle's file is invalidated twice, the second time on the thread's next
//! pass, which also drops a page that a read in flight at the revocation put back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::handles::HandleLeases;
use crate::keys::KeySource;

/// The longest the thread sleeps: a handle opened meanwhile may end before the lease the
/// thread was waiting for, so this bounds how late a lease end by time is applied.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// How often the file of one ended handle is invalidated.
const PASSES: u8 = 2;

/// The page invalidator of one mount.
struct Invalidator {
    leases: HandleLeases,
    notifier: fuser::Notifier,
    /// Ended handles (fh) and how often their file was invalidated since the end.
    passes: Mutex<HashMap<u64, u8>>,
}

/// Starts invalidating for the mount whose handles are `leases`: on every revocation that
/// `keys` reports and at every lease end by time, until the filesystem is gone.
pub(super) fn start(leases: HandleLeases, notifier: fuser::Notifier, keys: &dyn KeySource) {
    let invalidator = Arc::new(Invalidator {
        leases,
        notifier,
        passes: Mutex::new(HashMap::new()),
    });
    let on_revocation = Arc::clone(&invalidator);
    keys.on_revocation(Arc::new(move || {
        on_revocation.sweep();
    }));
    let spawned = std::thread::Builder::new()
        .name("csapfs-lease-ends".into())
        .spawn(move || {
            while let Some(next_end) = invalidator.sweep() {
                std::thread::sleep(sleep_until(next_end, SystemTime::now()));
            }
        });
    if let Err(err) = spawned {
        // Without the thread, only revocations (not lease ends by time) reach mapped pages:
        // reads still end at `not_after`, mapped pages at the next revocation or open.
        tracing::error!(%err, "cannot start the lease-end thread: mapped pages of a license that ends by time stay until the next revocation");
    }
}

impl Invalidator {
    /// Invalidates the file of every ended handle that has not had its passes; returns the
    /// earliest end among live leases (`Some(None)`: none ends by time), `None` once the
    /// filesystem is gone.
    fn sweep(&self) -> Option<Option<i64>> {
        let leases = self.leases.snapshot()?;
        let mut passes = self.passes.lock().unwrap_or_else(|p| p.into_inner());
        // Forget handles that were released.
        passes.retain(|fh, _| leases.iter().any(|lease| lease.fh == *fh));
        let mut inos: Vec<u64> = Vec::new();
        let mut next_end: Option<i64> = None;
        for lease in &leases {
            if !lease.ended {
                next_end = match (next_end, lease.not_after) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                continue;
            }
            let done = passes.entry(lease.fh).or_insert(0);
            if *done < PASSES {
                *done += 1;
                inos.push(lease.ino);
            }
        }
        drop(passes);
        inos.sort_unstable();
        inos.dedup();
        for ino in inos {
            match self.notifier.inval_inode(fuser::INodeNo(ino), 0, 0) {
                Ok(()) => tracing::debug!(ino, "pages invalidated: a handle's lease ended"),
                // ENOENT: the kernel holds no inode (so no page) for it any more.
                Err(err) => tracing::debug!(ino, %err, "page invalidation failed"),
            }
        }
        Some(next_end)
    }
}

/// How long to sleep before the lease ending at `next_end` (unix seconds) has ended, at most
/// [`MAX_SLEEP`]. A lease ends once the clock's whole seconds reach its end, so waking just
/// after that second starts is on time.
fn sleep_until(next_end: Option<i64>, now: SystemTime) -> Duration {
    let Some(end) = next_end else {
        return MAX_SLEEP;
    };
    let end = UNIX_EPOCH + Duration::from_secs(end.max(0) as u64) + Duration::from_millis(5);
    end.duration_since(now)
        .unwrap_or(Duration::ZERO)
        .clamp(Duration::from_millis(5), MAX_SLEEP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_wakes_just_after_the_next_end_and_at_least_every_second() {
        let now = UNIX_EPOCH + Duration::from_millis(100_400);
        assert_eq!(sleep_until(None, now), MAX_SLEEP);
        assert_eq!(sleep_until(Some(1_000), now), MAX_SLEEP);
        assert_eq!(sleep_until(Some(101), now), Duration::from_millis(605));
        // Already past (a lease that ended while the sweep ran): a short pause, no busy loop.
        assert_eq!(sleep_until(Some(99), now), Duration::from_millis(5));
    }
}
