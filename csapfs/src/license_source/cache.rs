//! The license cache: licensed content keys held by (session, application, asset, action) until
//! their own `not_after`, each with the revocation flag its handles' leases share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyserver_client::license::OpenedGrant;
use keyserver_client::wire::Action;

use crate::crypto::ContentKey;
use crate::format::{KeyId, ScopeId};

/// Held licenses; evicted at their `not_after`.
pub(super) type Licenses = moka::sync::Cache<LicenseKey, Arc<Held>>;

/// Most licenses held at once.
const CAPACITY: u64 = 100_000;

/// An empty license cache.
pub(super) fn licenses() -> Licenses {
    moka::sync::Cache::builder()
        .max_capacity(CAPACITY)
        .expire_after(UntilNotAfter)
        .build()
}

/// License cache key: whose session, which executable, which asset, what for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct LicenseKey {
    /// BLAKE3 of the user token (the token itself never sits in a key).
    pub(super) session: [u8; 32],
    pub(super) app_digest: Arc<str>,
    pub(super) asset_id: [u8; 16],
    pub(super) action: Action,
}

/// A licensed content key held until its license ends.
pub(super) struct Held {
    pub(super) key: ContentKey,
    pub(super) key_id: KeyId,
    /// Unix seconds.
    pub(super) not_after: i64,
    /// What the license was for, re-checked against the mount's rules at every change.
    pub(super) user: String,
    pub(super) path: String,
    pub(super) scope: String,
    /// Set when the license lost its allowing rule; shared with every handle opened under it.
    pub(super) revoked: Arc<AtomicBool>,
}

impl Held {
    /// A granted key of `user`, held until the grant or its license ends (`license_end`).
    pub(super) fn from_grant(user: &str, grant: &OpenedGrant, license_end: i64) -> Held {
        Held {
            key: grant.key.clone(),
            key_id: grant_key_id(grant),
            not_after: grant.grant.not_after.min(license_end),
            user: user.to_string(),
            path: grant.grant.path.clone(),
            scope: grant.grant.scope.clone(),
            revoked: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Held {
    /// Not past its end (by a usable clock) and not revoked.
    pub(super) fn is_usable(&self) -> bool {
        csap_base::unix_now().is_ok_and(|now| self.not_after > now)
            && !self.revoked.load(Ordering::Acquire)
    }
}

/// Evicts each license at its own `not_after`.
pub(super) struct UntilNotAfter;

impl moka::Expiry<LicenseKey, Arc<Held>> for UntilNotAfter {
    fn expire_after_create(
        &self,
        _key: &LicenseKey,
        value: &Arc<Held>,
        _created_at: Instant,
    ) -> Option<Duration> {
        // An unusable clock keeps nothing: the license is re-requested (and refused).
        let left =
            csap_base::unix_now().map_or(0, |now| value.not_after.saturating_sub(now).max(0));
        Some(Duration::from_secs(left as u64))
    }
}

/// The key a grant is for: its scope and seed version.
pub(super) fn grant_key_id(grant: &OpenedGrant) -> KeyId {
    KeyId {
        scope: ScopeId(grant.scope_id),
        version: grant.grant.key_version,
    }
}
