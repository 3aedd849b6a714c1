//! The mount's subscription to the key server's identity revocations (`GET /v1/revocations`):
//! a task on the source runtime long-polls from the last sequence number it applied and, for
//! each event, drops every held license that depends on it — a disabled user's, a revoked
//! application digest's, those under a revoked key version, all of them when this device is
//! revoked — flags their leases (open handles fail their next read or write with `EACCES`) and
//! calls the revocation listeners (page-cache invalidation).
//!
//! It subscribes from the head at connect time. After an outage it asks again from its last
//! sequence number, so nothing is missed; a sequence number the server does not have (its
//! database was replaced) or a refusal of the stream itself (this device revoked or unknown)
//! drops every held license. While the key server is unreachable, held licenses keep working
//! until they end, as every other key-server outage does.
//!
//! Remembered attestations need no forgetting: they record what a process runs (its digest),
//! not whether that digest is allowed, and every license request names the digest anew.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyserver_client::revocation::{RevocationEvent, RevocationKind, RevocationsResponse};
use keyserver_client::ClientError;
use keyserver_client::LicenseClient;

use super::{chain, Held, LicenseKey, LicenseSourceError};
use crate::keys::RevocationListener;

/// How long one poll waits at the server for an event.
const WAIT: Duration = Duration::from_secs(10);
/// Pause after a failed poll, doubled up to [`MAX_BACKOFF`] while failures last.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The listeners to call after a revocation dropped something (shared with the rule sweep).
pub(super) type Listeners = Arc<Mutex<Vec<RevocationListener>>>;

/// Calls every listener (page-cache invalidation) on a blocking thread: they write to
/// /dev/fuse, which must not stall the async task that swept. Call from a runtime.
pub(super) fn notify(listeners: &Listeners) {
    let listeners = listeners.lock().unwrap_or_else(|p| p.into_inner()).clone();
    tokio::task::spawn_blocking(move || {
        for listener in listeners {
            listener();
        }
    });
}

/// What the license path needs from the subscription: a counter bumped at the start of every
/// sweep, so a license request that was in flight during one can tell (its grant may predate
/// the revocation and the sweep may have missed it).
#[derive(Debug, Default)]
pub(super) struct Revocations {
    sweeps: AtomicU64,
}

impl Revocations {
    /// Sweeps begun so far; compare a value read before a license request with one read after
    /// the license is in the cache.
    pub(super) fn sweeps(&self) -> u64 {
        self.sweeps.load(Ordering::SeqCst)
    }
}

/// Everything the subscription task works on.
pub(super) struct Subscription {
    pub client: LicenseClient,
    pub device: String,
    pub licenses: super::Licenses,
    pub listeners: Listeners,
    pub request_timeout: Duration,
}

impl Subscription {
    /// Learns the current head (so only later revocations are applied: earlier ones are
    /// already refused by the key server) and starts the task on `runtime`.
    pub(super) fn start(
        self,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<Arc<Revocations>, LicenseSourceError> {
        let head = runtime
            .block_on(async {
                tokio::time::timeout(
                    self.request_timeout,
                    self.client.revocations(None, Duration::ZERO),
                )
                .await
            })
            .map_err(|_| LicenseSourceError::Timeout)?
            .map_err(LicenseSourceError::Revocations)?
            .head;
        tracing::info!(head, "subscribed to the key server's identity revocations");
        let revocations = Arc::new(Revocations::default());
        runtime.spawn(self.run(head, Arc::clone(&revocations)));
        Ok(revocations)
    }

    async fn run(self, mut since: i64, revocations: Arc<Revocations>) {
        let mut backoff = FIRST_BACKOFF;
        let mut failing = false;
        loop {
            let answer = tokio::time::timeout(
                WAIT + self.request_timeout,
                self.client.revocations(Some(since), WAIT),
            )
            .await;
            let response = match answer {
                Ok(Ok(response)) => response,
                Ok(Err(ClientError::Denied(reason))) => {
                    // The stream itself refused: this device is revoked or unknown.
                    tracing::warn!(%reason, "the key server refuses this device's revocation stream; dropping every held license");
                    self.sweep(&revocations, |_, _| true);
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
                failure => {
                    let error = match failure {
                        Ok(Err(e)) => chain(&e),
                        _ => "no answer in time".to_string(),
                    };
                    if !failing {
                        tracing::warn!(%error, "revocation stream unreachable; held licenses keep working until they end");
                        failing = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if failing {
                tracing::info!(since, "revocation stream reached again");
                failing = false;
            }
            backoff = FIRST_BACKOFF;
            since = self.apply(&revocations, since, response);
        }
    }

    /// Applies one answer; returns the sequence number to ask from next.
    fn apply(&self, revocations: &Revocations, since: i64, response: RevocationsResponse) -> i64 {
        if since > response.head {
            tracing::warn!(
                since,
                head = response.head,
                "the key server does not know this mount's last revocation: dropping every held license"
            );
            self.sweep(revocations, |_, _| true);
            return response.head;
        }
        let mut last = since;
        for event in &response.events {
            let dropped = self.sweep(revocations, |key, held| {
                depends_on(event, &self.device, key, held)
            });
            tracing::info!(seq = event.seq, kind = ?event.kind, subject = %event.subject, version = ?event.version, dropped, "identity revocation applied");
            crate::observe::revocation(kind_label(event.kind), dropped, event.time);
            last = last.max(event.seq);
        }
        last
    }

    /// Drops every held license `hit` selects and flags its lease; calls the listeners when
    /// something was dropped. Returns how many.
    fn sweep(&self, revocations: &Revocations, hit: impl Fn(&LicenseKey, &Held) -> bool) -> usize {
        // Bumped before looking: a license cached after this is caught by its requester.
        revocations.sweeps.fetch_add(1, Ordering::SeqCst);
        let mut dropped = 0;
        for (key, held) in self.licenses.iter() {
            if hit(&key, &held) {
                held.revoked.store(true, Ordering::Release);
                self.licenses.invalidate(key.as_ref());
                dropped += 1;
            }
        }
        if dropped > 0 {
            notify(&self.listeners);
        }
        dropped
    }
}

/// A revocation's kind as a metric label.
fn kind_label(kind: RevocationKind) -> &'static str {
    match kind {
        RevocationKind::User => "user",
        RevocationKind::App => "app",
        RevocationKind::KeyVersion => "key_version",
        RevocationKind::Device => "device",
    }
}

/// Whether the held license `key`/`held` of this `device` depends on what `event` revoked.
fn depends_on(event: &RevocationEvent, device: &str, key: &LicenseKey, held: &Held) -> bool {
    match event.kind {
        RevocationKind::User => held.user == event.subject,
        RevocationKind::App => *key.app_digest == *event.subject,
        RevocationKind::KeyVersion => {
            held.scope == event.subject && Some(held.key_id.version) == event.version
        }
        RevocationKind::Device => event.subject == device,
    }
}
