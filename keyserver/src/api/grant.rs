//! Building one license: the rules check, the seed of each asset's scope version (opened once
//! per license), the content key wrapped for the license session or the device's HPKE key, the
//! audit event of every grant and refusal, and the signed (or MACed) license.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::ApiError;
use crate::keys::Seed;
use crate::license::parse_id16;
use crate::rules::RuleVerdict;
use crate::seal::{HpkePublicKey, LicenseSealer};
use crate::server::State;
use crate::session::{LicenseKeys, ServerSession};
use crate::store::{AuditEvent, LicenseReads};
use crate::wire::*;

/// The fixed part of one license being built.
pub(crate) struct Grantor<'a> {
    pub(crate) st: &'a State,
    pub(crate) user: &'a str,
    pub(crate) app_digest: &'a str,
    pub(crate) device: &'a str,
    pub(crate) action: Action,
    pub(crate) license_id: &'a str,
    pub(crate) now: i64,
    /// Upper bound of every grant's not_after.
    pub(crate) cap: i64,
    /// Admin break-glass: skip the rules check.
    pub(crate) break_glass: bool,
    pub(crate) seeds: HashMap<(String, u32), Seed>,
    pub(crate) wrap: KeyWrap,
}

/// How a license's content keys are wrapped, and how the license is authenticated.
// Both variants hold key schedules (~0.8 KiB); one lives on the stack per request, so boxing
// would only add an allocation per license.
#[allow(clippy::large_enum_variant)]
pub(crate) enum KeyWrap {
    /// One HPKE context per license, set up at the first grant (a license that grants nothing
    /// costs no X25519 operation); the license is Ed25519-signed.
    Hpke {
        recipient: HpkePublicKey,
        sealer: Option<LicenseSealer>,
    },
    /// This license's keys within a license session; the license carries a MAC.
    Session {
        session: Arc<ServerSession>,
        keys: LicenseKeys,
    },
}

impl KeyWrap {
    pub(crate) fn hpke(recipient: HpkePublicKey) -> Self {
        KeyWrap::Hpke {
            recipient,
            sealer: None,
        }
    }

    fn session(session: Arc<ServerSession>, license_id: &str) -> Self {
        let keys = session.secret.license_keys(license_id);
        KeyWrap::Session { session, keys }
    }
}

pub(crate) type Refusal = (Reason, Vec<String>);

impl<'a> Grantor<'a> {
    /// A device's license for `req` (not break-glass; capped at the license TTL).
    pub(crate) fn new(
        st: &'a State,
        user: &'a str,
        device: &'a str,
        req: &'a LicenseRequest,
        license_id: &'a str,
        now: i64,
        wrap: SessionOrKey,
    ) -> Self {
        let wrap = match wrap {
            SessionOrKey::Session(s) => KeyWrap::session(s, license_id),
            SessionOrKey::Key(k) => KeyWrap::hpke(k),
        };
        Grantor {
            st,
            user,
            app_digest: &req.app_digest,
            device,
            action: req.action,
            license_id,
            now,
            cap: now + st.license_ttl,
            break_glass: false,
            seeds: HashMap::new(),
            wrap,
        }
    }

    fn rules(&self, path: &str, scope: &str, action: Action) -> RuleVerdict {
        self.st.rules.check(&authz::AccessRequest {
            participant: self.user,
            application_digest: self.app_digest,
            device: self.device,
            asset_path: path,
            asset_scope: scope,
            action,
            now: self.now,
        })
    }

    /// Grants `asset` (its seed version read through `reads`), or says why not.
    pub(crate) fn grant<R: LicenseReads + ?Sized>(
        &mut self,
        reads: &R,
        asset: &AssetInfo,
    ) -> Result<Result<Grant, Refusal>, ApiError> {
        let (rule_ids, until) = if self.break_glass {
            (Vec::new(), self.cap)
        } else {
            let v = self.rules(&asset.path, &asset.scope, self.action);
            if !v.allowed {
                return Ok(Err((Reason::NoRule, Vec::new())));
            }
            (v.rule_ids, v.until.unwrap_or(self.cap).min(self.cap))
        };
        let ver = reads.scope_version(&asset.scope, asset.key_version)?;
        let Some(ver) = ver else {
            return Ok(Err((Reason::KeyRevoked, rule_ids)));
        };
        if ver.revoked {
            return Ok(Err((Reason::KeyRevoked, rule_ids)));
        }
        let k = (asset.scope.clone(), asset.key_version);
        if !self.seeds.contains_key(&k) {
            let seed = self
                .st
                .root
                .open_seed(&asset.scope, asset.key_version, &ver.sealed)
                .map_err(|e| {
                    ApiError::Internal(format!("scope {} v{}: {e}", asset.scope, asset.key_version))
                })?;
            self.seeds.insert(k.clone(), seed);
        }
        let asset_id = parse_id16(&asset.asset_id)
            .ok_or_else(|| ApiError::Internal("malformed asset id in store".into()))?;
        let key = self.seeds[&k].content_key(&asset_id);
        // Sealing is the last fallible step, so the sequence number advances only for grants
        // that end up in the license, in the order the callers append them.
        let sealed = match &mut self.wrap {
            KeyWrap::Hpke { recipient, sealer } => {
                let sealer = match sealer {
                    Some(s) => s,
                    None => sealer.insert(
                        LicenseSealer::new(recipient)
                            .map_err(|e| ApiError::Internal(e.to_string()))?,
                    ),
                };
                sealer
                    .seal_next(&key, self.license_id, &asset_id)
                    .map_err(|e| ApiError::Internal(e.to_string()))?
            }
            KeyWrap::Session { keys, .. } => keys.seal_next(&key, &asset_id),
        };
        Ok(Ok(Grant {
            asset_id: asset.asset_id.clone(),
            path: asset.path.clone(),
            scope: asset.scope.clone(),
            scope_id: asset.scope_id.clone(),
            key_version: asset.key_version,
            rule_ids,
            not_after: until,
            sealed_key: hex::encode(sealed),
            generation: asset.generation,
            pending_generation: asset.pending_generation,
        }))
    }

    pub(crate) fn event(
        &self,
        asset: Option<String>,
        decision: &'static str,
        rule_ids: Vec<String>,
        reason: Option<String>,
    ) -> AuditEvent {
        AuditEvent {
            time: self.now,
            user: Some(self.user.to_string()),
            app_digest: Some(self.app_digest.to_string()),
            device: Some(self.device.to_string()),
            asset,
            action: self.action.as_str().to_string(),
            decision,
            rule_ids,
            reason,
            license_id: Some(self.license_id.to_string()),
            path: None,
        }
    }

    /// [`Grantor::event`] for a known asset: the row names its registered path without a
    /// lookup at insert time (a 1,000-key batch would otherwise run 1,000 subqueries).
    pub(crate) fn asset_event(
        &self,
        asset: &AssetInfo,
        decision: &'static str,
        rule_ids: Vec<String>,
        reason: Option<String>,
    ) -> AuditEvent {
        AuditEvent {
            path: Some(asset.path.clone()),
            ..self.event(Some(asset.asset_id.clone()), decision, rule_ids, reason)
        }
    }

    pub(crate) fn finish(&self, grants: Vec<Grant>, denials: Vec<AssetDenial>) -> SignedLicense {
        let not_after = grants.iter().map(|g| g.not_after).min().unwrap_or(self.cap);
        let (recipient, enc, session) = match &self.wrap {
            KeyWrap::Hpke { recipient, sealer } => (
                recipient.to_hex(),
                sealer
                    .as_ref()
                    .map(|s| hex::encode(s.enc()))
                    .unwrap_or_default(),
                None,
            ),
            KeyWrap::Session { session, .. } => (
                session.recipient.to_hex(),
                String::new(),
                Some(session.id.clone()),
            ),
        };
        let license = License {
            license_id: self.license_id.to_string(),
            issued_at: self.now,
            not_after,
            user: self.user.to_string(),
            device: self.device.to_string(),
            app_digest: self.app_digest.to_string(),
            action: self.action,
            recipient,
            enc,
            grants,
            denials,
            break_glass: self.break_glass,
            session,
        };
        match &self.wrap {
            KeyWrap::Hpke { .. } => self.st.signer.sign(license),
            KeyWrap::Session { keys, .. } => {
                let bytes = serde_json::to_vec(&license).expect("license serializes");
                let signature = hex::encode(keys.tag(&bytes));
                SignedLicense { license, signature }
            }
        }
    }
}

/// Where a license request wants its keys: its license session, or a one-license HPKE key.
#[derive(Clone)]
pub(crate) enum SessionOrKey {
    Session(Arc<ServerSession>),
    Key(HpkePublicKey),
}

/// What [`grant_assets`] decided: the grants, the per-asset denials, an audit event for each.
pub(crate) struct Outcomes {
    pub(crate) grants: Vec<Grant>,
    pub(crate) denials: Vec<AssetDenial>,
    pub(crate) events: Vec<AuditEvent>,
}

/// Grants or refuses each asset, in order.
pub(crate) fn grant_assets<R: LicenseReads + ?Sized>(
    g: &mut Grantor<'_>,
    reads: &R,
    ids: &[String],
) -> Result<Outcomes, ApiError> {
    let mut grants = Vec::new();
    let mut denials = Vec::new();
    let mut events = Vec::new();
    for id in ids {
        let asset = reads.asset(id)?;
        let outcome = match &asset {
            None => Err((Reason::UnknownAsset, Vec::new())),
            Some(asset) => g.grant(reads, asset)?,
        };
        let event = |decision, rule_ids, reason| match &asset {
            Some(a) => g.asset_event(a, decision, rule_ids, reason),
            None => g.event(Some(id.clone()), decision, rule_ids, reason),
        };
        match outcome {
            Ok(grant) => {
                events.push(event("grant", grant.rule_ids.clone(), None));
                grants.push(grant);
            }
            Err((reason, rule_ids)) => {
                events.push(event("deny", rule_ids, Some(reason.as_str().into())));
                denials.push(AssetDenial {
                    asset_id: id.clone(),
                    reason,
                });
            }
        }
    }
    Ok(Outcomes {
        grants,
        denials,
        events,
    })
}
