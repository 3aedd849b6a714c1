//! Which of the key source's decisions are the mount's own, and their audit records.
//!
//! The key server records every decision it makes (license grants and denials, 401s). What
//! the mount decides without it goes to the spool ([`crate::audit_spool`]): denials by local
//! rules, failed attestation, no session or an unreadable token, a key server that could not
//! be reached, a header naming another key; and grants it makes alone — each open served
//! from a cached license, and metadata operations its rules allowed. A grant whose record
//! cannot be kept (channel or spool full) is refused: nothing is granted without a record.

use std::borrow::Cow;
use std::time::Duration;

use keyserver_client::wire::{Action, AuditBatch, AuditBatchAck};
use keyserver_client::LicenseClient;

use super::{KeyServerSource, LicenseSourceError};
use crate::audit_spool::{AuditSpool, Decision, Ship, SpoolConfig};
use crate::format::Header;
use crate::keys::{Access, Caller, KeyError, Licensed};

/// The reason recorded for an open served from a held license.
const CACHED: &str = "license_cache";
/// The reason recorded for a metadata operation the mount's rules allowed.
const LOCAL_RULE: &str = "local_rule";
/// Reasons are cut to this many bytes (the key server takes up to 1,024).
const MAX_REASON: usize = 512;

/// What one decision turned out to rest on, noted while it is made.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// The user the caller's token names, once read.
    pub user: Option<String>,
    /// The caller's measured application, once attested.
    pub app: Option<String>,
    /// Licenses used from the cache, by action (a write open uses two).
    cached: Vec<Action>,
    /// The key server refused (and recorded that itself).
    key_server_refused: bool,
}

impl Seen {
    pub fn used_cached(&mut self, action: Action) {
        self.cached.push(action);
    }

    /// A license request failed with `e`: a refusal is the key server's decision (on its
    /// record); anything else (unreachable, timed out) leaves the denial to the mount.
    pub fn asked(&mut self, e: &KeyError) {
        self.key_server_refused = matches!(e, KeyError::Denied(_));
    }

    /// The key server answered, without a grant for the asset.
    pub fn refused_by_key_server(&mut self) {
        self.key_server_refused = true;
    }
}

/// Ships batches with the device's key server client, on the source's shared runtime.
struct KeyServerShip {
    handle: tokio::runtime::Handle,
    client: LicenseClient,
    timeout: Duration,
}

impl Ship for KeyServerShip {
    fn ship(&mut self, batch: &AuditBatch) -> Result<AuditBatchAck, String> {
        // The timer is made inside the runtime (it needs its time driver).
        self.handle
            .block_on(async {
                tokio::time::timeout(self.timeout, self.client.ship_audit(batch)).await
            })
            .map_err(|_| "the key server did not answer in time".to_string())?
            .map_err(|e| super::chain(&e))
    }
}

/// The spool for `cfg`, shipping through `client`.
pub(super) fn open_trail(
    cfg: SpoolConfig,
    runtime: &tokio::runtime::Runtime,
    client: &LicenseClient,
    timeout: Duration,
) -> Result<AuditSpool, LicenseSourceError> {
    let ship = KeyServerShip {
        handle: runtime.handle().clone(),
        client: client.clone(),
        timeout,
    };
    let cfg = SpoolConfig {
        device: client.device().to_string(),
        ..cfg
    };
    Ok(AuditSpool::open(cfg, Box::new(ship))?)
}

fn action_of(access: Access) -> Action {
    match access {
        Access::Read => Action::Read,
        Access::Write => Action::Write,
        Access::Create => Action::Create,
        Access::Delete => Action::Delete,
    }
}

/// An error as a recorded reason: one line, bounded.
fn reason_of(e: &dyn std::fmt::Display) -> Cow<'static, str> {
    let mut text: String = e
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    Cow::Owned(text)
}

impl KeyServerSource {
    /// Records what the mount decided itself about an open and returns the outcome — or a
    /// refusal, when a grant of the mount's own could not be put on record.
    pub(super) fn audit_open(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
        access: Access,
        seen: Seen,
        result: Result<Licensed, KeyError>,
    ) -> Result<Licensed, KeyError> {
        let Some(trail) = &self.trail else {
            return result;
        };
        let decision = |action: Action, grant: bool, reason: Cow<'static, str>| Decision {
            user: seen.user.clone(),
            uid: caller.uid,
            app_digest: seen.app.clone(),
            path: path.to_string(),
            asset: Some(header.asset_id.0),
            action,
            grant,
            reason,
        };
        match result {
            Ok(licensed) if seen.cached.is_empty() => Ok(licensed), // the key server's grant
            Ok(licensed) => {
                let recorded = trail.accepts_grants()
                    && seen
                        .cached
                        .iter()
                        .all(|a| trail.record(decision(*a, true, Cow::Borrowed(CACHED))));
                if recorded {
                    return Ok(licensed);
                }
                tracing::error!(
                    uid = caller.uid,
                    path,
                    "open refused: its audit record cannot be kept (audit spool full)"
                );
                Err(KeyError::Denied(
                    "the mount's audit spool is full (the key server has not taken its records): opens from held licenses are refused".into(),
                ))
            }
            Err(e) if seen.key_server_refused => Err(e),
            Err(e) => {
                trail.record(decision(action_of(access), false, reason_of(&e)));
                Err(e)
            }
        }
    }

    /// Records an open the mount refused because the file is not bound to where it was opened
    /// (`reason` starts with the refusal's code: `path_mismatch`, `rollback`, …), or a write
    /// refused because no new write generation could be had.
    #[allow(clippy::too_many_arguments)] // one audit record's fields
    pub(super) fn record_refusal(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
        user: Option<String>,
        app_digest: Option<String>,
        action: Action,
        reason: String,
    ) {
        let Some(trail) = &self.trail else {
            return;
        };
        trail.record(Decision {
            user,
            uid: caller.uid,
            app_digest,
            path: path.to_string(),
            asset: Some(header.asset_id.0),
            action,
            grant: false,
            // The refusal's code first (`path_mismatch: …`), as the trail is searched by it.
            reason: reason_of(&reason),
        });
    }

    /// Records a metadata operation's local-rule decision (allowed or refused).
    pub(super) fn audit_authorize(
        &self,
        caller: &Caller,
        path: &str,
        access: Access,
        seen: Seen,
        result: Result<(), KeyError>,
    ) -> Result<(), KeyError> {
        let Some(trail) = &self.trail else {
            return result;
        };
        let (grant, reason) = match &result {
            Ok(()) => (true, Cow::Borrowed(LOCAL_RULE)),
            Err(e) => (false, reason_of(e)),
        };
        let recorded = trail.record(Decision {
            user: seen.user,
            uid: caller.uid,
            app_digest: seen.app,
            path: path.to_string(),
            asset: None,
            action: action_of(access),
            grant,
            reason,
        });
        if grant && !recorded {
            tracing::error!(
                uid = caller.uid,
                path,
                "operation refused: its audit record cannot be kept (audit spool full)"
            );
            return Err(KeyError::Denied(
                "the mount's audit spool is full (the key server has not taken its records)".into(),
            ));
        }
        result
    }
}
