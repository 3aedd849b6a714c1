//! Time source for everything time-driven in ARDS (just-in-time release, expiry, rate limits),
//! injectable so tests can move time without sleeping. Readings fail closed
//! ([`csap_base::clock`]): an unusable clock is an error, never time 0.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use csap_base::clock::ClockError;

use tokio::sync::watch;

/// A future returned by [`Clock::sleep_until`].
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Unix-seconds wall clock.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Current time, unix seconds, or why the clock cannot be trusted.
    fn now(&self) -> Result<i64, ClockError>;
    /// Completes once `now() >= deadline`, or once the clock is unusable (the caller's next
    /// `now()` then reports it, and it fails closed).
    fn sleep_until(&self, deadline: i64) -> Sleep<'_>;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Result<i64, ClockError> {
        csap_base::clock::unix_now()
    }

    fn sleep_until(&self, deadline: i64) -> Sleep<'_> {
        Box::pin(async move {
            // Sleep in bounded steps: a wall-clock jump (NTP, suspend) must not leave a release
            // waiting for the full original duration.
            loop {
                let secs = match self.now() {
                    Ok(now) if now >= deadline => return,
                    Ok(now) => (deadline - now).clamp(0, 30) as u64,
                    Err(_) => return,
                };
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
        })
    }
}

/// A clock that only moves when a test moves it. Cheap to clone; clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
    unusable: Arc<AtomicBool>,
    changed: Arc<watch::Sender<i64>>,
}

impl ManualClock {
    /// A clock standing at `now` (unix seconds).
    pub fn new(now: i64) -> Self {
        let (tx, _rx) = watch::channel(now);
        Self {
            now: Arc::new(AtomicI64::new(now)),
            unusable: Arc::new(AtomicBool::new(false)),
            changed: Arc::new(tx),
        }
    }

    /// Sets the time (may go backwards, which wakes nobody).
    pub fn set(&self, now: i64) {
        self.now.store(now, Ordering::SeqCst);
        self.changed.send_replace(now);
    }

    /// Makes every reading fail (`true`), as a clock before the epoch would, or heals it.
    pub fn set_unusable(&self, unusable: bool) {
        self.unusable.store(unusable, Ordering::SeqCst);
        self.changed.send_replace(self.now.load(Ordering::SeqCst));
    }

    /// Moves the time forward by `secs`.
    pub fn advance(&self, secs: i64) {
        let now = self.now.fetch_add(secs, Ordering::SeqCst) + secs;
        self.changed.send_replace(now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Result<i64, ClockError> {
        if self.unusable.load(Ordering::SeqCst) {
            return Err(ClockError::Unusable("ManualClock::set_unusable"));
        }
        Ok(self.now.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, deadline: i64) -> Sleep<'_> {
        let mut rx = self.changed.subscribe();
        Box::pin(async move {
            loop {
                if self.now().is_ok_and(|now| now >= deadline) || self.now().is_err() {
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
        assert_eq!(clock.now(), Ok(150));
    }
}
