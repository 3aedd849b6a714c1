//! The key server's record of each asset's path and write generation, as the mount holds it
//! (FORMAT.md §7): learned from every license (the license is authenticated, so the record
//! is the key server's word) and from the answers to renames and generation steps. Opens are
//! checked against it without a round trip; only a refusal that a fresher record might undo
//! (a rename or a rewrite through another mount) asks the key server once more.

use std::sync::Arc;

use keyserver_client::wire::{Action, AssetInfo, GenerationStep};

use super::{decisions, Asker, KeyServerSource, LicenseKey};
use crate::binding::{self, Refusal, Registered};
use crate::format::Header;
use crate::keys::{Caller, KeyError};

/// Asset id → the key server's record, as last heard.
pub(super) type Registry = moka::sync::Cache<[u8; 16], Arc<Registered>>;

pub(super) fn registry() -> Registry {
    moka::sync::Cache::builder().max_capacity(100_000).build()
}

/// The record a grant carries.
pub(super) fn registered_of(grant: &keyserver_client::license::OpenedGrant) -> Arc<Registered> {
    Arc::new(Registered {
        path: grant.grant.path.clone(),
        generation: grant.grant.generation,
        pending: grant.grant.pending_generation,
    })
}

/// The record a registry answer (rename, generation step) carries.
pub(super) fn registered_from(info: &AssetInfo) -> Arc<Registered> {
    Arc::new(Registered {
        path: info.path.clone(),
        generation: info.generation,
        pending: info.pending_generation,
    })
}

impl KeyServerSource {
    /// [`crate::keys::KeySource::check_binding`]: against the held record, then — if the
    /// refusal could come from a stale record — against a fresh one; a refusal is audited.
    pub(super) fn check_bound(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
    ) -> Result<(), KeyError> {
        let asset_id = header.asset_id.0;
        let held = self.registry.get(&asset_id);
        let verdict = match held.as_deref().map(|r| binding::check(r, path, header)) {
            Some(Ok(())) => return Ok(()),
            Some(Err(refusal)) if !refusal.may_be_stale() => Err(refusal),
            // Not held (evicted), or maybe stale: the key server's current word decides.
            _ => {
                let fresh = self.fresh_record(caller, path, header)?;
                binding::check(&fresh, path, header)
            }
        };
        verdict.map_err(|refusal| self.refuse(caller, path, header, &refusal))
    }

    /// Asks the key server for the asset's read license again (which carries its record).
    fn fresh_record(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
    ) -> Result<Arc<Registered>, KeyError> {
        let (token, who) = self.who(caller)?;
        let user = super::token_user(&token)
            .ok_or_else(|| KeyError::Denied(format!("uid {}: unreadable token", caller.uid)))?;
        let asker = Asker {
            caller,
            token: &token,
            user: &user,
            app: &who.app_digest,
        };
        let cache_key = LicenseKey {
            session: super::session_of(&token),
            app_digest: who.app_digest.as_str().into(),
            asset_id: header.asset_id.0,
            action: Action::Read,
        };
        let mut seen = decisions::Seen::default();
        self.fetch(&asker, path, &cache_key, &mut seen)?;
        self.registry
            .get(&header.asset_id.0)
            .ok_or_else(|| KeyError::Unavailable("the license carried no asset record".into()))
    }

    /// Logs and audits a refusal; the error the mount answers with `EIO`.
    fn refuse(&self, caller: &Caller, path: &str, header: &Header, refusal: &Refusal) -> KeyError {
        tracing::warn!(uid = caller.uid, pid = caller.pid, path, asset_id = %header.asset_id, %refusal, "asset refused");
        let (user, app) = match self.who(caller) {
            Ok((token, who)) => (super::token_user(&token), Some(who.app_digest)),
            Err(_) => (None, None),
        };
        let reason = refusal.to_string();
        self.record_refusal(caller, path, header, user, app, Action::Read, reason);
        KeyError::Binding(refusal.to_string())
    }

    /// [`crate::keys::KeySource::new_version`]: reserve, write the header, settle — in this
    /// order, so that a crash at any point leaves the file at a generation the key server
    /// accepts (the recorded one before the header write, the pending one after it).
    pub(super) fn advance_generation(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
        write_header: &mut dyn FnMut(u32) -> std::io::Result<()>,
    ) -> Result<(), KeyError> {
        let result = self.advance(caller, path, header, write_header);
        match &result {
            // The key server's refusal is on its own record.
            Ok(()) | Err(KeyError::Denied(_)) => {}
            Err(e) => {
                tracing::warn!(uid = caller.uid, path, asset_id = %header.asset_id, error = %e, "write refused: no new write generation");
                self.record_refusal(
                    caller,
                    path,
                    header,
                    None,
                    None,
                    Action::Write,
                    e.to_string(),
                );
            }
        }
        result
    }

    fn advance(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
        write_header: &mut dyn FnMut(u32) -> std::io::Result<()>,
    ) -> Result<(), KeyError> {
        let asset_id = header.asset_id.0;
        let (token, who) = self.who(caller)?;
        let app = who.app_digest.as_str();
        let step = |step, generation| {
            self.call(
                self.client
                    .generation(&token, app, &asset_id, step, generation),
            )
        };
        let reserved = step(GenerationStep::Reserve, 0)?;
        self.registry.insert(asset_id, registered_from(&reserved));
        let next = reserved.pending_generation.ok_or_else(|| {
            KeyError::Unavailable("the key server reserved no next generation".into())
        })?;
        // A writer that crashed after its header write left the pending generation in place.
        if header.generation != next {
            write_header(next).map_err(|e| {
                KeyError::Binding(format!(
                    "cannot put write generation {next} into the header: {e}"
                ))
            })?;
        }
        let settled = step(GenerationStep::Settle, next)?;
        self.registry.insert(asset_id, registered_from(&settled));
        tracing::debug!(uid = caller.uid, path, asset_id = %header.asset_id, generation = next, "new write generation");
        Ok(())
    }
}
