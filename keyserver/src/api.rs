//! The key server's HTTP API (axum): login, licenses, asset registry, admin commands and the
//! audit log. Handlers validate input, then do all SQLite and key work on the blocking pool.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State as AxState};
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::Connection;
use serde::Deserialize;

use crate::db::{self, AuditEvent};
use crate::error::{ApiError, ApiJson};
use crate::keys::{random_bytes, Seed};
use crate::license::parse_id16;
use crate::pki::{Principal, PrincipalKind};
use crate::readcache::Reader;
use crate::revocation::{self, RevocationKind};
use crate::rules::RuleVerdict;
use crate::seal::{HpkePublicKey, LicenseSealer};
use crate::server::{Peer, State};
use crate::session::{LicenseKeys, ServerSession};
use crate::token::{hash_password, verify_password, Claims};
use crate::wire::*;

pub(crate) type S = Arc<State>;

pub(crate) fn router(state: S) -> Router {
    let admin = Router::new()
        .route("/devices", post(enroll).get(list_devices))
        .route("/devices/{name}/revoke", post(revoke_device))
        .route("/users", post(add_user))
        .route("/users/{name}/disable", post(disable_user))
        .route("/apps", post(register_app).get(list_apps))
        .route("/apps/revoke", post(revoke_app))
        .route("/scopes", post(create_scope).get(list_scopes))
        .route("/scopes/{name}/rotate", post(rotate_scope))
        .route("/scopes/{name}/revoke", post(revoke_key))
        .route("/assets", get(list_assets))
        .route("/licenses", post(issue_license))
        .route("/audit", get(audit))
        .route("/audit/query", get(crate::audit_api::query))
        .route("/principals", post(add_principal))
        .route("/principals/{kind}/{name}/revoke", post(revoke_principal));
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/login", post(login))
        .route("/v1/sessions", post(open_session))
        .route("/v1/licenses", post(licenses))
        .route("/v1/assets", post(create_asset))
        .route("/v1/assets/{id}/rename", post(rename_asset))
        .route(
            "/v1/assets/{id}/generation",
            post(crate::generation::advance),
        )
        .route("/v1/directory", get(directory))
        .route("/v1/revocations", get(crate::revocation::list))
        .route("/v1/apps/{digest}/code", get(app_code))
        .route("/v1/audit", post(crate::audit_api::ship))
        .nest("/v1/admin", admin)
        .fallback(|| async { ApiError::NotFound("endpoint".into()) })
        .layer(middleware::from_fn_with_state(Arc::clone(&state), timeout))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(middleware::map_response(
            authz::http_errors::json_error_body,
        ))
        .with_state(state)
}

/// Bounds each request's time, and audits requests refused before any handler logic ran
/// (malformed or oversized bodies, unknown endpoints): those are attack signals too.
async fn timeout(AxState(st): AxState<S>, req: axum::extract::Request, next: Next) -> Response {
    let peer = req.extensions().get::<Peer>().map(|p| p.name.clone());
    let path = req.uri().path().to_string();
    let resp = match tokio::time::timeout(st.limits.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => axum::response::IntoResponse::into_response(ApiError::Timeout),
    };
    let status = resp.status();
    if matches!(
        status.as_u16(),
        400 | 404 | 405 | 408 | 413 | 415 | 422 | 503
    ) {
        st.audit_async(AuditEvent {
            time: st.clock.stamp(),
            device: peer,
            action: "request".into(),
            decision: "deny",
            reason: Some(format!("bad_request: {} {path}", status.as_u16())),
            ..Default::default()
        });
    }
    resp
}

// ---------- peers ----------

fn peer_of(parts: &Parts) -> Result<Peer, ApiError> {
    parts
        .extensions
        .get::<Peer>()
        .cloned()
        .ok_or(ApiError::Denied(Reason::UnknownDevice))
}

/// The calling device; its certificate must still be active (revocation also cuts off
/// connections that were established before it).
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

/// Audits a request refused for who its peer is (not a device, revoked, not an admin).
fn refuse_peer(st: &State, peer: &Peer, parts: &Parts, reason: Reason) {
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

pub(crate) struct AdminPeer(pub(crate) Peer);

/// An admin or an auditor: may read the audit trail, changes nothing.
pub(crate) struct AuditReader;

impl FromRequestParts<S> for AuditReader {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &S) -> Result<Self, ApiError> {
        let peer = peer_of(parts)?;
        match st.registry.get(&peer.serial) {
            Some(p)
                if !p.revoked
                    && matches!(p.kind, PrincipalKind::Admin | PrincipalKind::Auditor) =>
            {
                Ok(AuditReader)
            }
            _ => {
                refuse_peer(st, &peer, parts, Reason::NotAdmin);
                Err(ApiError::Denied(Reason::NotAdmin))
            }
        }
    }
}

impl FromRequestParts<S> for AdminPeer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &S) -> Result<Self, ApiError> {
        let peer = peer_of(parts)?;
        match st.registry.get(&peer.serial) {
            Some(p) if !p.revoked && p.kind == PrincipalKind::Admin => Ok(AdminPeer(peer)),
            _ => {
                refuse_peer(st, &peer, parts, Reason::NotAdmin);
                Err(ApiError::Denied(Reason::NotAdmin))
            }
        }
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

// ---------- validation ----------

pub(crate) fn check_name(field: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        && !s.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            "must be 1-128 characters of A-Z a-z 0-9 . _ - @ (not starting with '.')",
        ))
    }
}

pub(crate) fn check_digest(field: &str, s: &str) -> Result<(), ApiError> {
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            "must be a BLAKE3 digest: 64 lowercase hex characters",
        ))
    }
}

/// Asset paths are relative, "/"-separated, without empty, "." or ".." segments.
pub(crate) fn check_path(field: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 4096
        && !s.contains('\0')
        && s.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            "must be a relative path without empty, '.' or '..' segments",
        ))
    }
}

pub(crate) fn check_asset_id(field: &str, s: &str) -> Result<[u8; 16], ApiError> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::bad(
            field,
            "asset ids are 32 lowercase hex characters",
        ));
    }
    parse_id16(s).ok_or_else(|| ApiError::bad(field, "asset ids are 32 lowercase hex characters"))
}

fn new_id() -> Result<[u8; 16], ApiError> {
    let mut id = [0u8; 16];
    random_bytes(&mut id).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(id)
}

// ---------- authentication of a request ----------

/// Who is asking, once token, user, device and application have all been checked.
pub(crate) struct Subject {
    pub(crate) user: String,
}

/// `device` is the presenting connection's device (its client certificate): a token issued on
/// another device is refused, so a copied token is useless elsewhere.
fn authenticate(
    st: &State,
    reader: Reader<'_>,
    token: &str,
    app_digest: &str,
    device: &str,
    now: i64,
) -> Result<Subject, Reason> {
    let claims: Claims = st.tokens.verify(token, now)?;
    if claims.device != device {
        return Err(Reason::TokenWrongDevice);
    }
    let user = st
        .db
        .cache
        .user(reader, &claims.user)
        .map_err(|_| Reason::TokenInvalid)?
        .ok_or(Reason::UnknownUser)?;
    if user.disabled {
        return Err(Reason::UserDisabled);
    }
    if user.generation != claims.generation {
        return Err(Reason::TokenInvalid);
    }
    let app = st
        .db
        .cache
        .app(reader, app_digest)
        .map_err(|_| Reason::UnknownApplication)?
        .ok_or(Reason::UnknownApplication)?;
    if app.revoked_at.is_some() {
        return Err(Reason::ApplicationRevoked);
    }
    Ok(Subject { user: user.name })
}

/// The user named by a token whether or not it verifies, for the audit record of a denial.
pub(crate) fn token_user(token: &str) -> Option<String> {
    crate::token::named_user_unverified(token).map(|user| format!("{user} (unverified)"))
}

// ---------- granting ----------

/// The fixed part of one license being built.
struct Grantor<'a> {
    st: &'a State,
    user: &'a str,
    app_digest: &'a str,
    device: &'a str,
    action: Action,
    license_id: &'a str,
    now: i64,
    /// Upper bound of every grant's not_after.
    cap: i64,
    /// Admin break-glass: skip the rules check.
    break_glass: bool,
    seeds: HashMap<(String, u32), Seed>,
    wrap: KeyWrap,
}

/// How a license's content keys are wrapped, and how the license is authenticated.
// Both variants hold key schedules (~0.8 KiB); one lives on the stack per request, so boxing
// would only add an allocation per license.
#[allow(clippy::large_enum_variant)]
enum KeyWrap {
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
    fn hpke(recipient: HpkePublicKey) -> Self {
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

type Refusal = (Reason, Vec<String>);

impl<'a> Grantor<'a> {
    /// A device's license for `req` (not break-glass; capped at the license TTL).
    fn new(
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

    fn grant(
        &mut self,
        reader: Reader<'_>,
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
        let ver = self
            .st
            .db
            .cache
            .scope_version(reader, &asset.scope, asset.key_version)?;
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

    fn event(
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
    fn asset_event(
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

    fn finish(&self, grants: Vec<Grant>, denials: Vec<AssetDenial>) -> SignedLicense {
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

/// Who made a request that is being refused (for its audit rows).
pub(crate) struct Who<'a> {
    pub(crate) user: Option<String>,
    pub(crate) app_digest: &'a str,
    pub(crate) device: &'a str,
    pub(crate) action: Action,
}

/// Records a request-level denial (one row per asset named, or one row) and returns the error.
pub(crate) fn deny_request(
    conn: &mut Connection,
    now: i64,
    who: Who<'_>,
    assets: &[String],
    reason: Reason,
) -> ApiError {
    let Who {
        user,
        app_digest,
        device,
        action,
    } = who;
    let base = AuditEvent {
        time: now,
        user,
        app_digest: Some(app_digest.to_string()),
        device: Some(device.to_string()),
        asset: None,
        action: action.as_str().to_string(),
        decision: "deny",
        rule_ids: Vec::new(),
        reason: Some(reason.as_str().to_string()),
        license_id: None,
        path: None,
    };
    let events: Vec<AuditEvent> = if assets.is_empty() {
        vec![base]
    } else {
        assets
            .iter()
            .map(|a| AuditEvent {
                asset: Some(a.clone()),
                ..base.clone()
            })
            .collect()
    };
    if let Err(e) = db::insert_audit(conn, &events) {
        return ApiError::Internal(format!("audit write failed: {e}"));
    }
    tracing::info!(device, reason = %reason, "request denied");
    ApiError::Denied(reason)
}

/// [`authenticate`] for a request served on the pool: a refusal is recorded against the
/// user the token names (unverified) and `assets`, and becomes the error.
/// The user behind `token` and the registered asset `id`, for a device's change to that
/// asset (rename, new write generation); an unknown user or asset is a recorded denial.
pub(crate) fn subject_and_asset(
    st: &State,
    conn: &mut Connection,
    now: i64,
    token: &str,
    asking: Who<'_>,
    id: &str,
) -> Result<(Subject, AssetInfo), ApiError> {
    let ids = [id.to_string()];
    let Who {
        app_digest,
        device,
        action,
        ..
    } = asking;
    let subject = authenticate_or_deny(st, conn, now, token, asking, &ids)?;
    match db::get_asset(conn, id)? {
        Some(asset) => Ok((subject, asset)),
        None => {
            let who = Who {
                user: Some(subject.user),
                app_digest,
                device,
                action,
            };
            Err(deny_request(conn, now, who, &ids, Reason::UnknownAsset))
        }
    }
}

pub(crate) fn authenticate_or_deny(
    st: &State,
    conn: &mut Connection,
    now: i64,
    token: &str,
    asking: Who<'_>,
    assets: &[String],
) -> Result<Subject, ApiError> {
    authenticate(
        st,
        Reader::Sql(conn),
        token,
        asking.app_digest,
        asking.device,
        now,
    )
    .map_err(|reason| {
        let who = Who {
            user: token_user(token),
            ..asking
        };
        deny_request(conn, now, who, assets, reason)
    })
}

// ---------- device endpoints ----------

async fn info(AxState(st): AxState<S>, parts: Parts) -> Result<Json<ServerInfo>, ApiError> {
    let peer = peer_of(&parts)?;
    match st.registry.get(&peer.serial) {
        Some(p) if !p.revoked => {}
        _ => return Err(ApiError::Denied(Reason::DeviceRevoked)),
    }
    Ok(Json(ServerInfo {
        license_public_key: st.signer.public_hex(),
        peer: peer.name,
        peer_kind: peer.kind,
    }))
}

async fn login(
    AxState(st): AxState<S>,
    DevicePeer(peer): DevicePeer,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    rate_limit(&st, &peer.name)?;
    check_name("user", &req.user)?;
    let st2 = Arc::clone(&st);
    st.db
        .call(move |conn| {
            let st = st2;
            let now = st.clock.now()?;
            let user = db::get_user(conn, &req.user)?;
            let refuse = |conn: &mut Connection, real: Reason, shown: Reason| {
                let ev = AuditEvent {
                    time: now,
                    user: Some(req.user.clone()),
                    device: Some(peer.name.clone()),
                    action: "login".into(),
                    decision: "deny",
                    reason: Some(real.as_str().into()),
                    ..Default::default()
                };
                match db::insert_audit(conn, &[ev]) {
                    Ok(()) => ApiError::Denied(shown),
                    Err(e) => ApiError::Internal(format!("audit write failed: {e}")),
                }
            };
            let Some(user) = user else {
                // Same work and same answer as a wrong password: no user enumeration.
                let _ = verify_password(req.password.expose(), &st.dummy_hash);
                return Err(refuse(conn, Reason::UnknownUser, Reason::BadPassword));
            };
            if !verify_password(req.password.expose(), &user.password_hash) {
                return Err(refuse(conn, Reason::BadPassword, Reason::BadPassword));
            }
            if user.disabled {
                return Err(refuse(conn, Reason::UserDisabled, Reason::UserDisabled));
            }
            let expires_at = now + st.token_ttl;
            // Bound to the device of this connection's certificate and the uid it vouches for.
            let token = st.tokens.issue(&Claims {
                user: user.name.clone(),
                device: peer.name.clone(),
                uid: req.uid,
                issued_at: now,
                expires_at,
                generation: user.generation,
            });
            db::insert_audit(
                conn,
                &[AuditEvent {
                    time: now,
                    user: Some(user.name),
                    device: Some(peer.name),
                    action: "login".into(),
                    decision: "grant",
                    // The uid the token is bound to (the table's uid column is the mount's).
                    reason: Some(format!("token for uid {}", req.uid)),
                    ..Default::default()
                }],
            )?;
            Ok(Json(LoginResponse {
                token: Secret::new(token.as_str()),
                expires_at,
            }))
        })
        .await
}

async fn licenses(
    AxState(st): AxState<S>,
    DevicePeer(peer): DevicePeer,
    ApiJson(req): ApiJson<LicenseRequest>,
) -> Result<Json<SignedLicense>, ApiError> {
    // A batch costs what it licenses; an oversized one is refused below before it costs more.
    rate_limit_assets(
        &st,
        &peer.name,
        req.assets.len().clamp(1, st.limits.max_batch),
    )?;
    check_digest("app_digest", &req.app_digest)?;
    let wrap = match (&req.session, req.hpke_public_key.is_empty()) {
        (Some(id), true) => {
            let session = st
                .sessions
                .get(id, &peer.name, st.clock.now()?)
                .ok_or_else(|| crate::audit_api::refuse_session(&st, &peer.name, &req))?;
            SessionOrKey::Session(session)
        }
        (None, false) => {
            SessionOrKey::Key(HpkePublicKey::from_hex(&req.hpke_public_key).map_err(|_| {
                ApiError::bad(
                    "hpke_public_key",
                    "must be an X25519 public key: 64 hex characters",
                )
            })?)
        }
        _ => {
            return Err(ApiError::bad(
                "session",
                "give either session or hpke_public_key",
            ))
        }
    };
    match (&req.create, req.assets.is_empty()) {
        (Some(_), false) => {
            return Err(ApiError::bad(
                "create",
                "give either assets or create, not both",
            ))
        }
        (None, true) => {
            return Err(ApiError::bad(
                "assets",
                "name at least one asset id (or use create)",
            ))
        }
        _ => {}
    }
    if let Some(c) = &req.create {
        if req.action != Action::Create {
            return Err(ApiError::bad(
                "action",
                "a create request must use action \"create\"",
            ));
        }
        check_path("create.path", &c.path)?;
        check_name("create.scope", &c.scope)?;
    }
    if req.assets.len() > st.limits.max_batch {
        return Err(ApiError::bad(
            "assets",
            format!("at most {} assets per request", st.limits.max_batch),
        ));
    }
    for a in &req.assets {
        check_asset_id("assets", a)?;
    }
    // From the read cache alone (no pool checkout: the common case under load); on a miss, for
    // one asset, the same reads inline if a connection is free (a first license for an asset:
    // no blocking-pool round trip). The retry repeats only cached lookups.
    let fast = license_fast(&st, &peer.name, &req, &wrap, Reader::CacheOnly).or_else(|| {
        if req.assets.len() != 1 {
            return None;
        }
        st.db
            .try_read_inline(|conn| license_fast(&st, &peer.name, &req, &wrap, Reader::Sql(conn)))
            .flatten()
    });
    let (license, events) = match fast {
        Some(done) => done,
        None => {
            let st2 = Arc::clone(&st);
            st.db
                .call(move |conn| license_work(&st2, conn, &peer.name, &req, wrap))
                .await?
        }
    };
    // No key leaves before its grant is on record.
    st.audit
        .record(events)
        .await
        .map_err(|e| ApiError::Internal(format!("audit write failed: {e}")))?;
    Ok(Json(license))
}

/// Where a license request wants its keys: its license session, or a one-license HPKE key.
#[derive(Clone)]
enum SessionOrKey {
    Session(Arc<ServerSession>),
    Key(HpkePublicKey),
}

/// `POST /v1/sessions`: a license session for the calling device (see [`crate::session`]).
async fn open_session(
    AxState(st): AxState<S>,
    DevicePeer(peer): DevicePeer,
    ApiJson(req): ApiJson<SessionRequest>,
) -> Result<Json<SignedSession>, ApiError> {
    rate_limit(&st, &peer.name)?;
    let recipient = HpkePublicKey::from_hex(&req.hpke_public_key).map_err(|_| {
        ApiError::bad(
            "hpke_public_key",
            "must be an X25519 public key: 64 hex characters",
        )
    })?;
    let now = st.clock.now()?;
    let id = hex::encode(new_id()?);
    let (session, enc) = st
        .sessions
        .open(id, &peer.name, recipient, now)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(st.signer.sign_session(Session {
        session_id: session.id.clone(),
        device: session.device.clone(),
        recipient: session.recipient.to_hex(),
        enc: hex::encode(enc),
        issued_at: now,
        not_after: session.not_after,
    })))
}

fn license_work(
    st: &State,
    conn: &mut Connection,
    device: &str,
    req: &LicenseRequest,
    wrap: SessionOrKey,
) -> Result<(SignedLicense, Vec<AuditEvent>), ApiError> {
    let now = st.clock.now()?;
    let named: Vec<String> = match &req.create {
        Some(c) => vec![c.path.clone()],
        None => req.assets.clone(),
    };
    let asking = Who {
        user: None,
        app_digest: &req.app_digest,
        device,
        action: req.action,
    };
    let subject = authenticate_or_deny(st, conn, now, req.token.expose(), asking, &named)?;
    let license_id = hex::encode(new_id()?);
    let mut g = Grantor::new(st, &subject.user, device, req, &license_id, now, wrap);
    if let Some(create) = &req.create {
        return create_work(&mut g, conn, create).map(|l| (l, Vec::new()));
    }
    // A batch reads in one transaction: a consistent snapshot, and one SQLite lock instead of
    // two per asset (locking showed up in the 1,000-key batch profile). A single key reads
    // outside one, so its rows can enter the read cache (see `crate::readcache`).
    let mut tx = None;
    let reader: &Connection = if req.assets.len() > 1 {
        tx.insert(conn.transaction().map_err(db::StoreError::from)?)
    } else {
        conn
    };
    let o = grant_assets(&mut g, Reader::Sql(reader), &req.assets)?;
    if let Some(tx) = tx {
        tx.commit().map_err(db::StoreError::from)?;
    }
    Ok((g.finish(o.grants, o.denials), o.events))
}

/// The license fast path: the same checks and grants as [`license_work`], on the async thread,
/// through `reader` (the read cache alone, or a pooled connection used for reads only).
/// `None` when anything is not cached or anything fails — the caller then takes the
/// blocking-pool path, which reads SQLite and records request-level denials, so this path never
/// decides anything the slow path would not.
fn license_fast(
    st: &State,
    device: &str,
    req: &LicenseRequest,
    wrap: &SessionOrKey,
    reader: Reader<'_>,
) -> Option<(SignedLicense, Vec<AuditEvent>)> {
    if req.create.is_some() {
        return None;
    }
    let now = st.clock.now().ok()?;
    let subject =
        authenticate(st, reader, req.token.expose(), &req.app_digest, device, now).ok()?;
    let license_id = hex::encode(new_id().ok()?);
    let mut g = Grantor::new(
        st,
        &subject.user,
        device,
        req,
        &license_id,
        now,
        wrap.clone(),
    );
    let o = grant_assets(&mut g, reader, &req.assets).ok()?;
    Some((g.finish(o.grants, o.denials), o.events))
}

/// What [`grant_assets`] decided: the grants, the per-asset denials, an audit event for each.
struct Outcomes {
    grants: Vec<Grant>,
    denials: Vec<AssetDenial>,
    events: Vec<AuditEvent>,
}

/// Grants or refuses each asset, in order.
fn grant_assets(
    g: &mut Grantor<'_>,
    reader: Reader<'_>,
    ids: &[String],
) -> Result<Outcomes, ApiError> {
    let mut grants = Vec::new();
    let mut denials = Vec::new();
    let mut events = Vec::new();
    for id in ids {
        let asset = g.st.db.cache.asset(reader, id)?;
        let outcome = match &asset {
            None => Err((Reason::UnknownAsset, Vec::new())),
            Some(asset) => g.grant(reader, asset)?,
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

/// Allocates an asset id in the scope's current version, registers it and grants its key.
fn create_work(
    g: &mut Grantor<'_>,
    conn: &mut Connection,
    create: &CreateAsset,
) -> Result<SignedLicense, ApiError> {
    let deny = |g: &Grantor<'_>, conn: &mut Connection, reason: Reason, rule_ids: Vec<String>| {
        let mut ev = g.event(
            Some(create.path.clone()),
            "deny",
            rule_ids,
            Some(reason.as_str().into()),
        );
        ev.path = Some(create.path.clone());
        match db::insert_audit(conn, &[ev]) {
            Ok(()) => ApiError::Denied(reason),
            Err(e) => ApiError::Internal(format!("audit write failed: {e}")),
        }
    };
    let Some(scope) = db::get_scope(conn, &create.scope)? else {
        return Err(deny(g, conn, Reason::UnknownScope, Vec::new()));
    };
    let asset_id = hex::encode(new_id()?);
    let asset = AssetInfo {
        asset_id: asset_id.clone(),
        scope: scope.name.clone(),
        scope_id: hex::encode(scope.scope_id),
        key_version: scope.current_version,
        path: create.path.clone(),
        creator: g.user.to_string(),
        created_at: g.now,
        // A new asset's header carries no generation, which reads as 0 (FORMAT.md §7).
        generation: 0,
        pending_generation: None,
    };
    // Grant before registering, so a refused create leaves no asset row behind.
    match g.grant(Reader::Sql(conn), &asset)? {
        Err((reason, rule_ids)) => Err(deny(g, conn, reason, rule_ids)),
        Ok(grant) => {
            let tx = conn.transaction().map_err(db::StoreError::from)?;
            db::insert_asset(&tx, &asset)?;
            tx.commit().map_err(db::StoreError::from)?;
            let ev = g.asset_event(
                &asset,
                "grant",
                grant.rule_ids.clone(),
                Some(format!("created {}", create.path)),
            );
            db::insert_audit(conn, &[ev])?;
            Ok(g.finish(vec![grant], Vec::new()))
        }
    }
}

/// `POST /v1/assets`: the create flow on its own path (same body and answer as a create license).
async fn create_asset(
    st: AxState<S>,
    peer: DevicePeer,
    body: ApiJson<LicenseRequest>,
) -> Result<Json<SignedLicense>, ApiError> {
    if body.0.create.is_none() {
        return Err(ApiError::bad(
            "create",
            "POST /v1/assets needs a create request",
        ));
    }
    licenses(st, peer, body).await
}

async fn rename_asset(
    AxState(st): AxState<S>,
    DevicePeer(peer): DevicePeer,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RenameRequest>,
) -> Result<Json<AssetInfo>, ApiError> {
    rate_limit(&st, &peer.name)?;
    check_asset_id("asset_id", &id)?;
    check_digest("app_digest", &req.app_digest)?;
    check_path("new_path", &req.new_path)?;
    let st2 = Arc::clone(&st);
    st.db
        .call(move |conn| {
            let st = st2;
            let now = st.clock.now()?;
            let asking = Who {
                user: None,
                app_digest: &req.app_digest,
                device: &peer.name,
                action: Action::Write,
            };
            let (subject, mut asset) =
                subject_and_asset(&st, conn, now, req.token.expose(), asking, &id)?;
            let ask = |path: &str, action| {
                st.rules.check(&authz::AccessRequest {
                    participant: &subject.user,
                    application_digest: &req.app_digest,
                    device: &peer.name,
                    asset_path: path,
                    asset_scope: &asset.scope,
                    action,
                    now,
                })
            };
            // Renaming writes the old name away and creates the new one.
            let from = ask(&asset.path, Action::Write);
            let to = ask(&req.new_path, Action::Create);
            if !from.allowed || !to.allowed {
                return Err(deny_request(
                    conn,
                    now,
                    Who {
                        user: Some(subject.user),
                        app_digest: &req.app_digest,
                        device: &peer.name,
                        action: Action::Write,
                    },
                    &[id],
                    Reason::NoRule,
                ));
            }
            db::rename_asset(conn, &id, &req.new_path)?;
            let mut rule_ids = from.rule_ids;
            rule_ids.extend(to.rule_ids);
            db::insert_audit(
                conn,
                &[AuditEvent {
                    time: now,
                    user: Some(subject.user),
                    app_digest: Some(req.app_digest.clone()),
                    device: Some(peer.name.clone()),
                    asset: Some(id.clone()),
                    action: "rename".into(),
                    decision: "grant",
                    rule_ids,
                    reason: Some(format!("{} -> {}", asset.path, req.new_path)),
                    license_id: None,
                    path: Some(req.new_path.clone()),
                }],
            )?;
            asset.path = req.new_path.clone();
            Ok(Json(asset))
        })
        .await
}

// ---------- admin endpoints ----------

fn admin_event(st: &State, admin: &Peer, action: &str, subject: &str) -> AuditEvent {
    AuditEvent {
        time: st.clock.stamp(),
        user: Some(format!("admin:{}", admin.name)),
        action: action.into(),
        decision: "admin",
        reason: Some(subject.into()),
        ..Default::default()
    }
}

/// Runs an admin change on the pool and records it in the audit log. `f` returns the answer and
/// the change's subject as the audit row names it.
async fn admin_change<T, F>(st: &S, admin: Peer, action: &'static str, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&State, &mut Connection) -> Result<(T, String), ApiError> + Send + 'static,
{
    let st2 = Arc::clone(st);
    st.db
        .call(move |conn| {
            let (answer, subject) = f(&st2, conn)?;
            db::insert_audit(conn, &[admin_event(&st2, &admin, action, &subject)])?;
            Ok(answer)
        })
        .await
}

async fn enroll(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    check_name("name", &req.name)?;
    HpkePublicKey::from_hex(&req.hpke_public_key).map_err(|_| {
        ApiError::bad(
            "hpke_public_key",
            "must be an X25519 public key: 64 hex characters",
        )
    })?;
    let principal = admin_change(&st, admin, "device.enroll", move |st, conn| {
        let (p, cert_pem) = issue_cert(
            st,
            conn,
            PrincipalKind::Device,
            &req.name,
            &req.csr_pem,
            Some(&req.hpke_public_key),
        )?;
        let serial = p.serial.clone();
        let answer = EnrollResponse {
            cert_pem,
            ca_pem: st.ca.pem().to_string(),
            serial,
            license_public_key: st.signer.public_hex(),
        };
        Ok(((p, answer), req.name))
    })
    .await?;
    st.registry.upsert(principal.0);
    Ok(Json(principal.1))
}

/// Issues and records a client certificate for `name` of `kind` from a CSR (only its public
/// key is taken); refused while the name holds an active certificate of that kind.
fn issue_cert(
    st: &State,
    conn: &mut Connection,
    kind: PrincipalKind,
    name: &str,
    csr_pem: &str,
    hpke_public: Option<&str>,
) -> Result<(Principal, String), ApiError> {
    if db::active_cert_exists(conn, kind, name)? {
        return Err(ApiError::Conflict(format!(
            "{} {name} (revoke it first to issue a new certificate)",
            kind.as_str()
        )));
    }
    let (cert_pem, serial) = st.ca.issue_client_from_csr(name, csr_pem).map_err(|e| {
        ApiError::bad(
            "csr_pem",
            format!("not a valid certificate signing request: {e}"),
        )
    })?;
    let p = Principal {
        name: name.to_string(),
        kind,
        serial,
        revoked: false,
    };
    db::insert_cert(conn, &p, hpke_public, st.clock.now()?)?;
    Ok((p, cert_pem))
}

/// The control-plane roles an admin issues certificates for here (devices enroll through
/// `/devices`, with their HPKE key; the admin and the key server's own identity are made at
/// first start).
fn issuable_kind(kind: &str) -> Result<PrincipalKind, ApiError> {
    match PrincipalKind::parse(kind) {
        Some(k @ (PrincipalKind::Workflow | PrincipalKind::Auditor | PrincipalKind::Service)) => {
            Ok(k)
        }
        _ => Err(ApiError::bad(
            "kind",
            "must be \"workflow\", \"auditor\" or \"service\" (devices: `csap device enroll`)",
        )),
    }
}

async fn add_principal(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    ApiJson(req): ApiJson<AddPrincipalRequest>,
) -> Result<Json<AddPrincipalResponse>, ApiError> {
    let kind = issuable_kind(&req.kind)?;
    check_name("name", &req.name)?;
    let grant =
        if kind == PrincipalKind::Workflow {
            if req.scopes.is_empty() || req.paths.is_empty() {
                return Err(ApiError::bad(
                if req.scopes.is_empty() { "scopes" } else { "paths" },
                "a workflow needs at least one key scope and one path prefix (`*` / `**` for all)",
            ));
            }
            for (i, s) in req.scopes.iter().enumerate() {
                if s != "*" {
                    check_name(&format!("scopes[{i}]"), s)?;
                }
            }
            for (i, p) in req.paths.iter().enumerate() {
                if p != "**" {
                    authz::model::normalize_pattern(p)
                        .ok()
                        .filter(|_| !p.contains('*'))
                        .ok_or_else(|| {
                            ApiError::bad(
                                &format!("paths[{i}]"),
                                "must be a path prefix without wildcards (e.g. show/seq1), or **",
                            )
                        })?;
                }
            }
            Some(authz::principal::WorkflowGrant {
                scopes: req.scopes.clone(),
                paths: req.paths.clone(),
            })
        } else {
            if !req.scopes.is_empty() || !req.paths.is_empty() {
                return Err(ApiError::bad(
                    "scopes",
                    "only a workflow takes scopes and paths",
                ));
            }
            None
        };
    let action = match kind {
        PrincipalKind::Workflow => "workflow.add",
        PrincipalKind::Auditor => "auditor.add",
        _ => "service.add",
    };
    let (principal, answer) = admin_change(&st, admin, action, move |st, conn| {
        let (p, cert_pem) = issue_cert(st, conn, kind, &req.name, &req.csr_pem, None)?;
        let serial = p.serial.clone();
        let now = st.clock.now()?;
        if let Some(g) = &grant {
            db::put_workflow(conn, &req.name, g, now)?;
        }
        let answer = AddPrincipalResponse {
            cert_pem,
            ca_pem: st.ca.pem().to_string(),
            serial,
        };
        let subject = match &grant {
            Some(g) => format!("{} scopes={:?} paths={:?}", req.name, g.scopes, g.paths),
            None => req.name.clone(),
        };
        Ok(((p, answer), subject))
    })
    .await?;
    st.registry.upsert(principal);
    Ok(Json(answer))
}

async fn revoke_principal(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Json<Revoked>, ApiError> {
    let kind = issuable_kind(&kind)?;
    check_name("name", &name)?;
    let n2 = name.clone();
    let revoked = admin_change(&st, admin, "principal.revoke", move |st, conn| {
        let n = db::revoke_certs(conn, kind, &n2, st.clock.stamp())?;
        if n == 0 {
            return Err(ApiError::NotFound(format!("active {} {n2}", kind.as_str())));
        }
        Ok((n, format!("{}:{n2}", kind.as_str())))
    })
    .await?;
    // After the commit: authz, ARDS and this server refuse it at the next request.
    st.registry.revoke_name(kind, &name);
    Ok(Json(Revoked { revoked }))
}

/// The directory for authz and ARDS running as their own processes: only admins and service
/// principals read it (it names every user, device and build).
async fn directory(
    AxState(st): AxState<S>,
    parts: Parts,
) -> Result<Json<DirectorySnapshot>, ApiError> {
    let peer = peer_of(&parts)?;
    match st.registry.get(&peer.serial) {
        Some(p)
            if !p.revoked && matches!(p.kind, PrincipalKind::Admin | PrincipalKind::Service) => {}
        _ => {
            refuse_peer(&st, &peer, &parts, Reason::NotAdmin);
            return Err(ApiError::Denied(Reason::NotAdmin));
        }
    }
    Ok(Json(st.db.call(db::directory_snapshot).await?))
}

async fn list_devices(
    AxState(st): AxState<S>,
    _a: AdminPeer,
) -> Result<Json<Vec<DeviceInfo>>, ApiError> {
    Ok(Json(st.db.call(|c| db::list_certs(c)).await?))
}

async fn revoke_device(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    Path(name): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    check_name("name", &name)?;
    let n2 = name.clone();
    let revoked = admin_change(&st, admin, "device.revoke", move |st, conn| {
        let now = st.clock.now()?;
        let tx = conn.transaction().map_err(db::StoreError::from)?;
        let n = db::revoke_certs(&tx, PrincipalKind::Device, &n2, now)?;
        if n == 0 {
            return Err(ApiError::NotFound(format!("active device {n2}")));
        }
        revocation::record(&tx, now, RevocationKind::Device, &n2, None)?;
        tx.commit().map_err(db::StoreError::from)?;
        Ok((n, n2))
    })
    .await?;
    // After the commit: the next handshake (and every request on open connections) is refused.
    st.registry.revoke_name(PrincipalKind::Device, &name);
    st.sessions.end_device(&name);
    st.revocations.committed();
    Ok(Json(Revoked { revoked }))
}

async fn add_user(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    ApiJson(req): ApiJson<AddUserRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_name("name", &req.name)?;
    if req.password.expose().chars().count() < 8 {
        return Err(ApiError::bad("password", "must be at least 8 characters"));
    }
    admin_change(&st, admin, "user.add", move |st, conn| {
        let hash = hash_password(req.password.expose(), st.password_cost)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        db::add_user(conn, &req.name, &hash, st.clock.stamp())?;
        Ok((
            Json(serde_json::json!({ "user": req.name })),
            req.name.clone(),
        ))
    })
    .await
}

async fn disable_user(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_name("name", &name)?;
    let answer = admin_change(&st, admin, "user.disable", move |st, conn| {
        let tx = conn.transaction().map_err(db::StoreError::from)?;
        db::disable_user(&tx, &name)?;
        revocation::record(&tx, st.clock.stamp(), RevocationKind::User, &name, None)?;
        tx.commit().map_err(db::StoreError::from)?;
        Ok((
            Json(serde_json::json!({ "user": name, "disabled": true })),
            name,
        ))
    })
    .await?;
    st.revocations.committed();
    Ok(answer)
}

async fn register_app(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    ApiJson(req): ApiJson<RegisterAppRequest>,
) -> Result<Json<AppInfo>, ApiError> {
    check_digest("digest", &req.digest)?;
    check_name("name", &req.name)?;
    check_name("version", &req.version)?;
    if let Some(v) = &req.vendor {
        check_name("vendor", v)?;
    }
    for library in &req.code.libraries {
        check_digest("code.libraries", library)?;
    }
    admin_change(&st, admin, "app.register", move |st, conn| {
        let app = AppInfo {
            digest: req.digest,
            name: req.name,
            version: req.version,
            vendor: req.vendor,
            registered_at: st.clock.stamp(),
            revoked_at: None,
            code: req.code,
        };
        db::register_app(conn, &app)?;
        let what = format!("{} {} {}", app.name, app.version, app.digest);
        Ok((Json(app), what))
    })
    .await
}

/// What a registered, unrevoked build may map beyond the defaults: asked by a mount whose
/// caller maps more than its executable and system libraries. Unknown and revoked builds are
/// 404 (the mount then allows nothing beyond the defaults).
async fn app_code(
    AxState(st): AxState<S>,
    _device: DevicePeer,
    Path(digest): Path<String>,
) -> Result<Json<AppCode>, ApiError> {
    check_digest("digest", &digest)?;
    let app = st
        .db
        .call(move |c| db::get_app(c, &digest))
        .await?
        .filter(|a| a.revoked_at.is_none())
        .ok_or_else(|| ApiError::NotFound("application".into()))?;
    Ok(Json(app.code))
}

async fn list_apps(AxState(st): AxState<S>, _a: AdminPeer) -> Result<Json<Vec<AppInfo>>, ApiError> {
    Ok(Json(st.db.call(|c| db::list_apps(c)).await?))
}

async fn revoke_app(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    ApiJson(req): ApiJson<RevokeAppRequest>,
) -> Result<Json<Revoked>, ApiError> {
    match (&req.digest, &req.name, &req.version) {
        (Some(d), None, None) => check_digest("digest", d)?,
        (None, Some(n), Some(v)) => {
            check_name("name", n)?;
            check_name("version", v)?;
        }
        _ => {
            return Err(ApiError::bad(
                "digest",
                "give either digest, or name and version",
            ))
        }
    }
    let answer = admin_change(&st, admin, "app.revoke", move |st, conn| {
        let now = st.clock.now()?;
        let tx = conn.transaction().map_err(db::StoreError::from)?;
        let (n, what, digests) = match (&req.digest, &req.name, &req.version) {
            (Some(d), _, _) => (
                db::revoke_app_digest(&tx, d, now)?,
                d.clone(),
                vec![d.clone()],
            ),
            (_, Some(n), Some(v)) => {
                let digests = revocation::unrevoked_digests(&tx, n, v)?;
                (
                    db::revoke_app_name_version(&tx, n, v, now)?,
                    format!("{n} {v}"),
                    digests,
                )
            }
            _ => unreachable!("validated above"),
        };
        if n == 0 {
            return Err(ApiError::NotFound(format!(
                "registered, unrevoked application {what}"
            )));
        }
        for digest in &digests {
            revocation::record(&tx, now, RevocationKind::App, digest, None)?;
        }
        tx.commit().map_err(db::StoreError::from)?;
        Ok((Json(Revoked { revoked: n }), what))
    })
    .await?;
    st.revocations.committed();
    Ok(answer)
}

async fn create_scope(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    ApiJson(req): ApiJson<CreateScopeRequest>,
) -> Result<Json<ScopeInfo>, ApiError> {
    check_name("name", &req.name)?;
    admin_change(&st, admin, "scope.create", move |st, conn| {
        let scope_id = new_id()?;
        let seed = Seed::generate().map_err(|e| ApiError::Internal(e.to_string()))?;
        let sealed = st
            .root
            .seal_seed(&req.name, 1, &seed)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        db::create_scope(conn, &req.name, &scope_id, &sealed, st.clock.stamp())?;
        let info = ScopeInfo {
            name: req.name.clone(),
            scope_id: hex::encode(scope_id),
            current_version: 1,
            revoked_versions: Vec::new(),
        };
        Ok((Json(info), req.name))
    })
    .await
}

fn scope_info(conn: &Connection, name: &str) -> Result<ScopeInfo, ApiError> {
    let s =
        db::get_scope(conn, name)?.ok_or_else(|| ApiError::NotFound(format!("scope {name}")))?;
    Ok(ScopeInfo {
        revoked_versions: db::revoked_versions(conn, name)?,
        name: s.name,
        scope_id: hex::encode(s.scope_id),
        current_version: s.current_version,
    })
}

async fn list_scopes(
    AxState(st): AxState<S>,
    _a: AdminPeer,
) -> Result<Json<Vec<ScopeInfo>>, ApiError> {
    st.db
        .call(|conn| {
            let names: Vec<String> = db::list_scopes(conn)?.into_iter().map(|s| s.name).collect();
            names
                .iter()
                .map(|n| scope_info(conn, n))
                .collect::<Result<Vec<_>, _>>()
                .map(Json)
        })
        .await
}

async fn rotate_scope(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    Path(name): Path<String>,
) -> Result<Json<ScopeInfo>, ApiError> {
    check_name("name", &name)?;
    admin_change(&st, admin, "keys.rotate", move |st, conn| {
        let seed = Seed::generate().map_err(|e| ApiError::Internal(e.to_string()))?;
        let root = &st.root;
        let v = db::rotate_scope(conn, &name, st.clock.stamp(), |version| {
            root.seal_seed(&name, version, &seed)
                .map_err(|e| db::StoreError::Worker(e.to_string()))
        })?;
        Ok((Json(scope_info(conn, &name)?), format!("{name} v{v}")))
    })
    .await
}

async fn revoke_key(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RevokeKeyRequest>,
) -> Result<Json<ScopeInfo>, ApiError> {
    check_name("name", &name)?;
    let answer = admin_change(&st, admin, "keys.revoke", move |st, conn| {
        let now = st.clock.now()?;
        let tx = conn.transaction().map_err(db::StoreError::from)?;
        db::revoke_version(&tx, &name, req.version, now)?;
        revocation::record(
            &tx,
            now,
            RevocationKind::KeyVersion,
            &name,
            Some(req.version),
        )?;
        let info = scope_info(&tx, &name)?;
        tx.commit().map_err(db::StoreError::from)?;
        let subject = format!("{name} v{}", req.version);
        Ok((Json(info), subject))
    })
    .await?;
    st.revocations.committed();
    Ok(answer)
}

async fn list_assets(
    AxState(st): AxState<S>,
    _a: AdminPeer,
) -> Result<Json<Vec<AssetInfo>>, ApiError> {
    Ok(Json(st.db.call(|c| db::list_assets(c)).await?))
}

async fn issue_license(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    ApiJson(req): ApiJson<IssueRequest>,
) -> Result<Json<SignedLicense>, ApiError> {
    check_name("device", &req.device)?;
    check_name("user", &req.user)?;
    check_digest("app_digest", &req.app_digest)?;
    if req.assets.is_empty() || req.assets.len() > 4096 {
        return Err(ApiError::bad("assets", "give a path pattern"));
    }
    authz::glob::check(&req.assets).map_err(|m| ApiError::bad("assets", m))?;
    if req.break_glass && req.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(ApiError::bad(
            "reason",
            "break-glass licenses need a reason",
        ));
    }
    let st2 = Arc::clone(&st);
    st.db
        .call(move |conn| {
            let st = st2;
            let now = st.clock.now()?;
            if req.until <= now {
                return Err(ApiError::bad("until", "must be in the future"));
            }
            let recipient = db::device_hpke_public(conn, &req.device)?.ok_or_else(|| {
                ApiError::NotFound(format!(
                    "active device {} with an enrollment key",
                    req.device
                ))
            })?;
            let recipient = HpkePublicKey::from_hex(&recipient)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let user = db::get_user(conn, &req.user)?
                .ok_or_else(|| ApiError::NotFound(format!("user {}", req.user)))?;
            let refusal = match db::get_app(conn, &req.app_digest)? {
                _ if user.disabled => Some(Reason::UserDisabled),
                None => Some(Reason::UnknownApplication),
                Some(a) if a.revoked_at.is_some() => Some(Reason::ApplicationRevoked),
                Some(_) => None,
            };
            if let Some(reason) = refusal {
                let who = Who {
                    user: Some(req.user.clone()),
                    app_digest: &req.app_digest,
                    device: &req.device,
                    action: req.action,
                };
                return Err(deny_request(
                    conn,
                    now,
                    who,
                    std::slice::from_ref(&req.assets),
                    reason,
                ));
            }
            let assets: Vec<AssetInfo> = db::list_assets(conn)?
                .into_iter()
                .filter(|a| authz::glob::matches(&req.assets, &a.path))
                .collect();
            if assets.is_empty() {
                return Err(ApiError::NotFound(format!(
                    "registered asset matching {}",
                    req.assets
                )));
            }
            let license_id = hex::encode(new_id()?);
            let mut g = Grantor {
                st: &st,
                user: &req.user,
                app_digest: &req.app_digest,
                device: &req.device,
                action: req.action,
                license_id: &license_id,
                now,
                cap: req.until,
                break_glass: req.break_glass,
                seeds: HashMap::new(),
                wrap: KeyWrap::hpke(recipient),
            };
            let how = if req.break_glass {
                format!(
                    "admin {} break-glass: {}",
                    admin.name,
                    req.reason.clone().unwrap_or_default()
                )
            } else {
                format!("issued by admin {}", admin.name)
            };
            let mut grants = Vec::new();
            let mut denials = Vec::new();
            let mut events = Vec::new();
            for a in &assets {
                match g.grant(Reader::Sql(conn), a)? {
                    Ok(grant) => {
                        events.push(g.asset_event(
                            a,
                            "grant",
                            grant.rule_ids.clone(),
                            Some(how.clone()),
                        ));
                        grants.push(grant);
                    }
                    Err((reason, rule_ids)) => {
                        events.push(g.asset_event(
                            a,
                            "deny",
                            rule_ids,
                            Some(format!("{reason}; {how}")),
                        ));
                        denials.push(AssetDenial {
                            asset_id: a.asset_id.clone(),
                            reason,
                        });
                    }
                }
            }
            db::insert_audit(conn, &events)?;
            Ok(Json(g.finish(grants, denials)))
        })
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    after: Option<i64>,
    limit: Option<u32>,
    tail: Option<u32>,
}

async fn audit(
    AxState(st): AxState<S>,
    _a: AuditReader,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest {
        message: e.body_text(),
        field: None,
    })?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    st.db
        .call(move |conn| {
            let rows = match (q.tail, q.after) {
                (Some(n), None) => db::audit_tail(conn, n.min(10_000))?,
                (None, after) => db::audit_after(conn, after.unwrap_or(0), limit)?,
                (Some(_), Some(_)) => {
                    return Err(ApiError::bad("tail", "give tail or after, not both"))
                }
            };
            Ok(Json(rows))
        })
        .await
}
