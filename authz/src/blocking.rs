//! One synchronous owner of a database connection used from async code: each call runs on the
//! blocking thread pool (commits fsync), one at a time — the embedded SQLite engine of every
//! service store that keeps a single connection (authz, ARDS).

use std::sync::{Arc, Mutex, MutexGuard};

pub struct Serialized<T>(Arc<Mutex<T>>);

impl<T> Clone for Serialized<T> {
    fn clone(&self) -> Self {
        Serialized(Arc::clone(&self.0))
    }
}

impl<T> std::fmt::Debug for Serialized<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Serialized")
    }
}

impl<T: Send + 'static> Serialized<T> {
    pub fn new(value: T) -> Self {
        Serialized(Arc::new(Mutex::new(value)))
    }

    /// Runs `f` on the blocking pool with the value to itself. `Err` only if `f` panicked.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<R, tokio::task::JoinError> {
        let cell = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || f(&mut lock(&cell))).await
    }
}

fn lock<T>(cell: &Mutex<T>) -> MutexGuard<'_, T> {
    // What the owners keep here holds no invariant across a panic mid-call: every mutation is
    // a transaction, rolled back on unwind. So a poisoned lock is safe to reuse.
    cell.lock().unwrap_or_else(|e| e.into_inner())
}
