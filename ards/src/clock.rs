//! Time source for everything time-driven in ARDS (just-in-time release, expiry, rate limits),
//! injectable so tests can move time without sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A future returned by [`Clock::sleep_until`].
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Unix-seconds wall clock.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Current time, unix seconds.
    fn now(&self) -> i64;
    /// Completes once `now() >= deadline`.
    fn sleep_until(&self, deadline: i64) -> Sleep<'_>;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }

    fn sleep_until(&self, deadline: i64) -> Sleep<'_> {
        Box::pin(async move {
            // Sleep in bounded steps: a wall-clock jump (NTP, suspend) must not leave a release
            // waiting for the full original duration.
            loop {
                let now = self.now();
                if now >= deadline {
                    return;
                }
                let secs = (deadline - now).clamp(0, 30) as u64;
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
        })
    }
}

/// A clock that only moves when a test moves it. Cheap to clone; clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
    changed: Arc<watch::Sender<i64>>,
}

impl ManualClock {
    /// A clock standing at `now` (unix seconds).
    pub fn new(now: i64) -> Self {
        let (tx, _rx) = watch::channel(now);
        Self {
            now: Arc::new(AtomicI64::new(now)),
            changed: Arc::new(tx),
        }
    }

    /// Sets the time (may go backwards, which wakes nobody).
    pub fn set(&self, now: i64) {
        self.now.store(now, Ordering::SeqCst);
        self.changed.send_replace(now);
    }

    /// Moves the time forward by `secs`.
    pub fn advance(&self, secs: i64) {
        let now = self.now.fetch_add(secs, Ordering::SeqCst) + secs;
        self.changed.send_replace(now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, deadline: i64) -> Sleep<'_> {
        let mut rx = self.changed.subscribe();
        Box::pin(async move {
            loop {
                if self.now() >= deadline {
                    return;
                }
                // The sender lives as long as `self`, so `changed` only fails if it is dropped,
                // which cannot happen while we borrow it.
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let clock = ManualClock::new(100);
        let c2 = clock.clone();
        let task = tokio::spawn(async move { c2.sleep_until(150).await });
        tokio::task::yield_now().await;
        clock.advance(20);
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        clock.advance(30);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("sleeper woke")
            .expect("no panic");
        assert_eq!(clock.now(), 150);
    }
}
