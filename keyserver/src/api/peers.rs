//! Who is calling: the connection's [`Peer`] (its client certificate, attached by the accept
//! loop), re-checked against the registry on every request (a revocation also cuts off
//! connections established before it), refusals audited; and the per-device rate limit.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::S;
use crate::error::ApiError;
use crate::pki::PrincipalKind;
use crate::server::{Peer, State};
use crate::store::AuditEvent;
use crate::wire::Reason;

pub(crate) fn peer_of(parts: &Parts) -> Result<Peer, ApiError> {
    parts
        .extensions
        .get::<Peer>()
        .cloned()
        .ok_or(ApiError::Denied(Reason::UnknownDevice))
}

/// The calling device; its certificate must still be active.
pub(crate) struct DevicePeer(pub(crate) Peer);

impl FromRequestParts<S> for DevicePeer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &S) -> Result<Self, ApiError> {
        let peer = peer_of(parts)?;
        let reason = match st.registry.get(&peer.serial) {
            Some(p) if !p.revoked && peer.kind == PrincipalKind::Device => {
                return Ok(DevicePeer(peer))
            }
            Some(p) if p.revoked => Reason::DeviceRevoked,
            _ => Reason::UnknownDevice,
        };
        refuse_peer(st, &peer, parts, reason);
        Err(ApiError::Denied(reason))
    }
}

/// Any active principal (health and readiness: the TLS layer admits only certificates from
/// the installation's CA, so there is no anonymous caller on the key server).
pub(crate) struct AnyPeer;

impl FromRequestParts<S> for AnyPeer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &S) -> Result<Self, ApiError> {
        let peer = peer_of(parts)?;
        match st.registry.get(&peer.serial) {
            Some(p) if !p.revoked => Ok(AnyPeer),
            _ => Err(ApiError::Denied(Reason::UnknownDevice)),
        }
    }
}

/// Audits a request refused for who its peer is (not a device, revoked, not an admin).
pub(crate) fn refuse_peer(st: &State, peer: &Peer, parts: &Parts, reason: Reason) {
    // Inside nested routers `parts.uri` lacks the prefix; the original URI has it.
    let path = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(parts.uri.path(), |u| u.0.path());
    st.audit_async(AuditEvent {
        time: st.clock.stamp(),
        device: Some(peer.name.clone()),
        action: "request".into(),
        decision: "deny",
        reason: Some(format!("{reason}: {path}")),
        ..Default::default()
    });
}

/// A peer whose active principal has one of `kinds`, else a recorded `NotAdmin` refusal.
pub(crate) fn require_kind(
    st: &State,
    parts: &Parts,
    kinds: &[PrincipalKind],
) -> Result<Peer, ApiError> {
    let peer = peer_of(parts)?;
    match st.registry.get(&peer.serial) {
        Some(p) if !p.revoked && kinds.contains(&p.kind) => Ok(peer),
        _ => {
            refuse_peer(st, &peer, parts, Reason::NotAdmin);
            Err(ApiError::Denied(Reason::NotAdmin))
        }
    }
}

/// An admin: changes the installation.
pub(crate) struct AdminPeer(pub(crate) Peer);

impl FromRequestParts<S> for AdminPeer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &S) -> Result<Self, ApiError> {
        require_kind(st, parts, &[PrincipalKind::Admin]).map(AdminPeer)
    }
}

/// An admin or an auditor: may read the audit trail, changes nothing.
pub(crate) struct AuditReader;

impl FromRequestParts<S> for AuditReader {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &S) -> Result<Self, ApiError> {
        require_kind(st, parts, &[PrincipalKind::Admin, PrincipalKind::Auditor])
            .map(|_| AuditReader)
    }
}

pub(crate) fn rate_limit(st: &State, device: &str) -> Result<(), ApiError> {
    rate_limit_assets(st, device, 1)
}

/// The per-device limit for a request naming `assets` assets (see [`crate::ratelimit`]).
pub(crate) fn rate_limit_assets(st: &State, device: &str, assets: usize) -> Result<(), ApiError> {
    st.limiter
        .admit(device, assets as f64)
        .map_err(|retry_after| {
            tracing::warn!(device, assets, ?retry_after, "rate limited");
            ApiError::RateLimited { retry_after }
        })
}
