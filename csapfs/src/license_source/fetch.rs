//! How an open gets its license: held already, or asked for now — with its directory's sibling
//! batch ([`super::siblings`]), asked again when an identity revocation arrived meanwhile — and
//! then held in the cache until its `not_after`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use keyserver_client::wire::Action;
use keyserver_client::ClientError;
use keyserver_client::UserToken;

use super::cache::{Held, LicenseKey};
use super::tokens::session_of;
use super::{binding, client_error, decisions, siblings, KeyServerSource};
use crate::format::Header;
use crate::keys::{Caller, KeyError};

/// What a cold open asks the key server for ([`KeyServerSource::sibling_batch`]).
pub(super) enum Batch<'a> {
    /// Another open's batch of the directory brought this asset's license.
    Landed(Arc<Held>),
    /// Ask for the asset and `siblings`; `leading` ends this directory's flight when dropped.
    Ask {
        leading: Option<siblings::Leading<'a>>,
        siblings: Vec<siblings::Sibling>,
    },
}

/// Who asks for a license: the calling process, its user's session, the measured application.
#[derive(Clone, Copy)]
pub(super) struct Asker<'a> {
    pub(super) caller: &'a Caller,
    pub(super) token: &'a UserToken,
    pub(super) user: &'a str,
    pub(super) app: &'a str,
}

impl KeyServerSource {
    /// The license of `token`/`app` for `action` on the asset of `header`: held already, or
    /// asked for now (and then held until its `not_after`).
    pub(super) fn held(
        &self,
        asker: &Asker<'_>,
        path: &str,
        header: &Header,
        action: Action,
        seen: &mut decisions::Seen,
    ) -> Result<Arc<Held>, KeyError> {
        let Asker { token, app, .. } = *asker;
        let asset_id = header.asset_id.0;
        let cache_key = LicenseKey {
            session: session_of(token),
            app_digest: app.into(),
            asset_id,
            action,
        };
        let held = match self.licenses.get(&cache_key) {
            Some(h) if h.is_usable() => {
                seen.used_cached(action);
                crate::observe::cache_hit();
                h
            }
            _ => {
                crate::observe::cache_miss();
                self.fetch_unrevoked(asker, path, &cache_key, seen)?
            }
        };
        // The header is not authenticated yet: a mismatch means tampering or a misfiled
        // asset, and the key we hold would fail the header MAC anyway.
        if header.key_id != held.key_id {
            return Err(KeyError::WrongKey {
                asset_key: header.key_id.to_string(),
                source_key: held.key_id.to_string(),
            });
        }
        Ok(held)
    }

    /// Asks for the license of `cache_key` and holds it. A grant cached while an identity
    /// revocation sweep ran may predate that revocation and have escaped the sweep: it is
    /// dropped and asked for again (the key server has the revocation by then).
    pub(super) fn fetch_unrevoked(
        &self,
        asker: &Asker<'_>,
        path: &str,
        cache_key: &LicenseKey,
        seen: &mut decisions::Seen,
    ) -> Result<Arc<Held>, KeyError> {
        for _ in 0..3 {
            let sweeps = self.revocations.sweeps();
            let held = self.fetch(asker, path, cache_key, seen)?;
            if self.revocations.sweeps() == sweeps {
                return Ok(held);
            }
            held.revoked.store(true, Ordering::Release);
            self.licenses.invalidate(cache_key);
            tracing::debug!(
                path,
                "a revocation arrived during the license request; asking again"
            );
        }
        Err(KeyError::Unavailable(
            "identity revocations kept arriving during the license request".into(),
        ))
    }

    /// One license request for `cache_key` (with its sibling batch, see [`siblings`]); the
    /// grants are held in the cache.
    pub(super) fn fetch(
        &self,
        asker: &Asker<'_>,
        path: &str,
        cache_key: &LicenseKey,
        seen: &mut decisions::Seen,
    ) -> Result<Arc<Held>, KeyError> {
        let Asker {
            caller,
            token,
            user,
            app,
        } = *asker;
        let (asset_id, action) = (cache_key.asset_id, cache_key.action);
        let (_leading, batch) = match self.sibling_batch(asker, path, cache_key) {
            Batch::Landed(held) => {
                seen.used_cached(action);
                return Ok(held);
            }
            Batch::Ask { leading, siblings } => (leading, siblings),
        };
        let mut ids = vec![asset_id];
        ids.extend(batch.iter().map(|s| s.asset_id));
        let sweeps = self.revocations.sweeps();
        let mut answer = self
            .request_here(token, app, action, &ids)
            .inspect_err(|e| seen.asked(e))?;
        if ids.len() > 1 && matches!(&answer, Err(ClientError::Server { status: 400, .. })) {
            // A key server configured with a smaller batch limit: this asset alone.
            tracing::info!(
                assets = ids.len(),
                "the key server refused the sibling batch; asking for the asset alone"
            );
            answer = self
                .request_here(token, app, action, &ids[..1])
                .inspect_err(|e| seen.asked(e))?;
        }
        let license = answer
            .map_err(client_error)
            .inspect_err(|e| seen.asked(e))?;
        self.hold_siblings(user, cache_key, &license, sweeps);
        let Some(grant) = license.grants.iter().find(|g| g.asset_id == asset_id) else {
            seen.refused_by_key_server();
            let reason = license
                .license
                .denials
                .iter()
                .find(|d| d.asset_id == hex::encode(asset_id))
                .map(|d| d.reason.to_string())
                .unwrap_or_else(|| "not granted".into());
            crate::observe::license_denied(if reason == "not granted" {
                "not_granted"
            } else {
                &reason
            });
            tracing::info!(uid = caller.uid, pid = caller.pid, app, path, ?action, %reason, "license denied");
            return Err(KeyError::Denied(format!("key server: {reason}")));
        };
        let held = self.hold(user, grant, license.license.not_after);
        self.licenses.insert(cache_key.clone(), Arc::clone(&held));
        Ok(held)
    }

    /// What a cold open asks for besides its own asset: for a read on a mount with rules and a
    /// backing store, the other assets of its directory that the rules allow this caller and
    /// that are not held yet — or, if another open of the directory is asking already, nothing
    /// until that answer has landed.
    pub(super) fn sibling_batch(
        &self,
        asker: &Asker<'_>,
        path: &str,
        cache_key: &LicenseKey,
    ) -> Batch<'_> {
        let none = Batch::Ask {
            leading: None,
            siblings: Vec::new(),
        };
        let (Some(rules), Some(storage)) = (&self.rules, &self.storage) else {
            return none;
        };
        if cache_key.action != Action::Read {
            return none;
        }
        let flight = siblings::FlightKey {
            session: cache_key.session,
            app_digest: Arc::clone(&cache_key.app_digest),
            dir: path.rsplit_once('/').map_or("", |(dir, _)| dir).to_string(),
        };
        let leading = match self.flights.join(flight) {
            siblings::Turn::Follow(flight) => {
                flight.wait(self.request_timeout);
                return match self.usable(cache_key) {
                    Some(held) => Batch::Landed(held),
                    None => none,
                };
            }
            siblings::Turn::Lead(leading) => leading,
        };
        let local = rules.snapshot();
        let siblings = siblings::siblings(storage.as_ref(), path, siblings::SIBLING_BATCH - 1)
            .into_iter()
            .filter(|s| {
                let key = LicenseKey {
                    asset_id: s.asset_id,
                    ..cache_key.clone()
                };
                let scope = rules.scope_name(&s.scope_id);
                self.usable(&key).is_none()
                    && local.allows(
                        asker.user,
                        asker.app,
                        &rules.device,
                        &s.path,
                        scope.as_deref(),
                        Action::Read,
                    )
            })
            .collect();
        Batch::Ask {
            leading: Some(leading),
            siblings,
        }
    }

    /// Holds the grants of a sibling batch besides `own`. Grants that an identity revocation
    /// sweep may have missed (one ran during the request) are not kept: their opens ask again.
    pub(super) fn hold_siblings(
        &self,
        user: &str,
        own: &LicenseKey,
        license: &keyserver_client::license::OpenedLicense,
        sweeps: u64,
    ) {
        if self.revocations.sweeps() != sweeps {
            return;
        }
        for grant in license.grants.iter().filter(|g| g.asset_id != own.asset_id) {
            let key = LicenseKey {
                asset_id: grant.asset_id,
                ..own.clone()
            };
            let held = self.hold(user, grant, license.license.not_after);
            self.licenses.insert(key, held);
        }
    }

    /// A held license of `key` still good to use.
    pub(super) fn usable(&self, key: &LicenseKey) -> Option<Arc<Held>> {
        self.licenses.get(key).filter(|h| h.is_usable())
    }

    /// A granted key as held by the mount (learning its scope's name for the local rules).
    pub(super) fn hold(
        &self,
        user: &str,
        grant: &keyserver_client::license::OpenedGrant,
        license_end: i64,
    ) -> Arc<Held> {
        self.registry
            .insert(grant.asset_id, binding::registered_of(grant));
        if let Some(rules) = &self.rules {
            rules
                .scope_names
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(grant.scope_id, grant.grant.scope.clone());
        }
        Arc::new(Held::from_grant(user, grant, license_end))
    }
}
