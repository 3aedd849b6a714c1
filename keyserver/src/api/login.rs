//! `GET /v1/info` (who the server says the caller is, and its license-signing key) and
//! `POST /v1/login` (a user token bound to the calling device and the uid it vouches for).

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::request::Parts;
use axum::Json;

use super::checks::check_name;
use super::peers::{peer_of, rate_limit, DevicePeer};
use super::S;
use crate::error::{ApiError, ApiJson};
use crate::server::Peer;
use crate::store::{AuditEvent, UserRow};
use crate::token::{verify_password, Claims};
use crate::wire::*;

pub(crate) async fn info(
    AxState(st): AxState<S>,
    parts: Parts,
) -> Result<Json<ServerInfo>, ApiError> {
    let peer = peer_of(&parts)?;
    match st.registry.get(&peer.serial) {
        Some(p) if !p.revoked => {}
        _ => return Err(ApiError::Denied(Reason::DeviceRevoked)),
    }
    Ok(Json(ServerInfo {
        license_public_key: st.signer.public_hex(),
        peer: peer.name,
        peer_kind: peer.kind,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }))
}

pub(crate) async fn login(
    AxState(st): AxState<S>,
    DevicePeer(peer): DevicePeer,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    rate_limit(&st, &peer.name)?;
    check_name("user", &req.user)?;
    let now = st.clock.now()?;
    let user = st.store.user(&req.user).await?;
    // argon2 is deliberately slow CPU work: on the blocking pool, never on an async worker.
    let st2 = Arc::clone(&st);
    let (verdict, req) = tokio::task::spawn_blocking(move || {
        let verdict = match user {
            None => {
                // Same work and same answer as a wrong password: no user enumeration.
                let _ = verify_password(req.password.expose(), &st2.dummy_hash);
                Err((Reason::UnknownUser, Reason::BadPassword))
            }
            Some(u) if !verify_password(req.password.expose(), &u.password_hash) => {
                Err((Reason::BadPassword, Reason::BadPassword))
            }
            Some(u) if u.disabled => Err((Reason::UserDisabled, Reason::UserDisabled)),
            Some(u) => Ok(u),
        };
        (verdict, req)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let user = match verdict {
        Ok(user) => user,
        Err((real, shown)) => {
            return Err(refuse_login(
                &st,
                Some(req.user.clone()),
                &peer,
                now,
                real.as_str(),
                shown,
            )
            .await)
        }
    };
    // The uid the token is bound to (the table's uid column is the mount's).
    let grant = format!("token for uid {}", req.uid);
    grant_login(&st, &user, &peer, req.uid, now, grant).await
}

/// Audits a refused login (`detail`: the real reason, which the audit trail keeps) and gives
/// the error the client sees (`shown`: never more than it may learn).
pub(super) async fn refuse_login(
    st: &S,
    user: Option<String>,
    peer: &Peer,
    now: i64,
    detail: &str,
    shown: Reason,
) -> ApiError {
    let ev = AuditEvent {
        time: now,
        user,
        device: Some(peer.name.clone()),
        action: "login".into(),
        decision: "deny",
        reason: Some(detail.into()),
        ..Default::default()
    };
    match st.store.record_audit(vec![ev]).await {
        Ok(()) => ApiError::Denied(shown),
        Err(e) => ApiError::Internal(e.to_string()),
    }
}

/// Issues `user` a token bound to the device of this connection's certificate and the uid it
/// vouches for, once its audit row (`grant`: what was granted, and how) is committed.
pub(super) async fn grant_login(
    st: &S,
    user: &UserRow,
    peer: &Peer,
    uid: u32,
    now: i64,
    grant: String,
) -> Result<Json<LoginResponse>, ApiError> {
    let expires_at = now + st.token_ttl;
    let token = st.tokens.issue(&Claims {
        user: user.name.clone(),
        device: peer.name.clone(),
        uid,
        issued_at: now,
        expires_at,
        generation: user.generation,
    });
    st.store
        .record_audit(vec![AuditEvent {
            time: now,
            user: Some(user.name.clone()),
            device: Some(peer.name.clone()),
            action: "login".into(),
            decision: "grant",
            reason: Some(grant),
            ..Default::default()
        }])
        .await?;
    Ok(Json(LoginResponse {
        token: Secret::new(token.as_str()),
        expires_at,
        user: Some(user.name.clone()),
    }))
}
