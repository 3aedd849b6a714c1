//! The open-time license request at render rates: a cold open also licenses the other assets of
//! its directory that the mount's rules allow the caller (a *sibling batch*, one round trip per
//! directory), concurrent cold opens in one directory share that one request, and a
//! rate-limited answer (429) is waited out and asked again within the open's timeout instead of
//! becoming `EACCES`.
//!
//! Why siblings: a render opens the frames of a shot one after another; one license per open is
//! a round trip each (~300 a second at 2.5 GB/s of 8 MiB frames), past the key server's
//! per-device rate. The key server still decides every asset of the batch itself and audits
//! each grant; only assets the caller's own rules already allow are named, so a batch asks for
//! nothing the caller could not open one by one.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use keyserver_client::ClientError;

use crate::storage::{Kind, OpenMode, Storage};

/// Most assets in one sibling batch: the key server's default `max_batch`. A server configured
/// lower answers 400, and the open then asks for its own asset alone.
pub(super) const SIBLING_BATCH: usize = 1024;

/// First wait after a 429 that names no `Retry-After`; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Runs `ask` until it is not rate limited, waiting between tries for the server's
/// `Retry-After` (else an exponential backoff). The caller bounds the whole loop with the
/// open's request timeout, so a rate limit delays an open but never fails it early.
pub(super) async fn retry_rate_limited<T, F, Fut>(mut ask: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        match ask().await {
            Err(ClientError::RateLimited { retry_after }) => {
                let wait = retry_after.unwrap_or(backoff);
                tracing::debug!(?wait, "key server rate limit reached; asking again");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            answer => return answer,
        }
    }
}

/// Another asset of the directory, as its (not yet authenticated) header names it: only used to
/// choose what to ask for; the key server checks the asset and its open checks the header.
pub(super) struct Sibling {
    pub asset_id: [u8; 16],
    pub scope_id: [u8; 16],
    /// Relative to the mount root.
    pub path: String,
}

/// Every other asset in the directory of `rel`, in name order, as far as their headers can be
/// read; at most `limit`.
pub(super) fn siblings(storage: &dyn Storage, rel: &str, limit: usize) -> Vec<Sibling> {
    let (dir, own) = match rel.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", rel),
    };
    let Ok(entries) = storage.list(Path::new(dir)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .into_iter()
        .filter(|e| e.kind == Kind::File)
        .filter_map(|e| e.name.into_string().ok())
        .filter(|name| name != own)
        .collect();
    names.sort();
    let mut found = Vec::new();
    for name in names {
        if found.len() == limit {
            break;
        }
        let rel = if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        };
        // Not an asset (or unreadable): not asked for; its own open reports it.
        if let Some(header) = stored_header(storage, &rel) {
            found.push(Sibling {
                asset_id: header.asset_id.0,
                scope_id: header.key_id.scope.0,
                path: rel,
            });
        }
    }
    found
}

/// The header of the asset stored at `rel` (not yet authenticated), if it reads as one.
pub(super) fn stored_header(storage: &dyn Storage, rel: &str) -> Option<crate::format::Header> {
    let stored = storage.open(Path::new(rel), OpenMode::Read).ok()?;
    crate::asset::read_header(stored.as_ref()).ok()
}

/// Whose sibling batch: one request at a time per (session, application, directory).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct FlightKey {
    pub session: [u8; 32],
    pub app_digest: Arc<str>,
    pub dir: String,
}

/// The sibling batches in flight. A cold open that finds one for its directory waits for it
/// (its asset is most likely in it) instead of sending a second batch that the rate limit would
/// only make wait.
#[derive(Default)]
pub(super) struct Flights {
    in_flight: Mutex<HashMap<FlightKey, Arc<Flight>>>,
}

#[derive(Default)]
pub(super) struct Flight {
    done: Mutex<bool>,
    landed: Condvar,
}

/// Leading a flight: ends it (waking the followers) when dropped, whatever the outcome.
pub(super) struct Leading<'a> {
    flights: &'a Flights,
    key: FlightKey,
    flight: Arc<Flight>,
}

pub(super) enum Turn<'a> {
    Lead(Leading<'a>),
    Follow(Arc<Flight>),
}

impl Flights {
    /// Leads the batch of `key`, or follows the one in flight.
    pub fn join(&self, key: FlightKey) -> Turn<'_> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = map.get(&key) {
            return Turn::Follow(Arc::clone(flight));
        }
        let flight = Arc::new(Flight::default());
        map.insert(key.clone(), Arc::clone(&flight));
        Turn::Lead(Leading {
            flights: self,
            key,
            flight,
        })
    }
}

impl Flight {
    /// Waits until the flight has landed, at most `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            done = self
                .landed
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.flights
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        *self.flight.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.flight.landed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &str) -> FlightKey {
        FlightKey {
            session: [1; 32],
            app_digest: "app".into(),
            dir: dir.into(),
        }
    }

    #[test]
    fn one_flight_per_directory_and_followers_wake_when_it_lands() {
        let flights = Flights::default();
        let Turn::Lead(lead) = flights.join(key("shot010")) else {
            panic!("the first open leads");
        };
        assert!(matches!(flights.join(key("shot020")), Turn::Lead(_)));
        let Turn::Follow(follow) = flights.join(key("shot010")) else {
            panic!("a second open in the directory follows");
        };
        let waiter = std::thread::spawn(move || follow.wait(Duration::from_secs(60)));
        drop(lead);
        waiter.join().unwrap();
        assert!(matches!(flights.join(key("shot010")), Turn::Lead(_)));
    }

    #[tokio::test]
    async fn rate_limited_answers_are_asked_again() {
        let mut tries = 0;
        let answer: Result<u32, ClientError> = retry_rate_limited(|| {
            tries += 1;
            let n = tries;
            async move {
                if n < 3 {
                    Err(ClientError::RateLimited {
                        retry_after: (n == 1).then(|| Duration::from_millis(1)),
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(answer.unwrap(), 3);
    }
}
