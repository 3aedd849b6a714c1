//! Licenses for devices (`POST /v1/licenses`, `/v1/assets`), license sessions
//! (`POST /v1/sessions`, see [`crate::session`]), renames (`POST /v1/assets/{id}/rename`) and
//! the registry listing for admins.
//!
//! A license is answered only once its audit rows are committed. Most are decided on the async
//! thread from the read cache alone; a miss for one asset reads inline when the store can
//! answer at once; everything else reads one snapshot from the store.

use axum::extract::{Path, State as AxState};
use axum::Json;

use super::checks::{check_asset_id, check_digest, check_name, check_path, new_id};
use super::grant::{grant_assets, Grantor, SessionOrKey};
use super::peers::{rate_limit, rate_limit_assets, AdminPeer, DevicePeer};
use super::subject::{authenticate, authenticate_or_deny, deny_request, subject_and_asset, Who};
use super::S;
use crate::error::{ApiError, ApiJson};
use crate::seal::HpkePublicKey;
use crate::server::State;
use crate::store::{AuditEvent, LicenseReads, LicenseRows};
use crate::wire::*;

pub(crate) async fn licenses(
    st: AxState<S>,
    peer: DevicePeer,
    req: ApiJson<LicenseRequest>,
) -> Result<Json<SignedLicense>, ApiError> {
    let started = std::time::Instant::now();
    let answer = license_request(st, peer, req).await;
    crate::metrics::license_latency(started.elapsed());
    answer
}

async fn license_request(
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
            // A cached session reads no database; another replica's (or one from before a
            // restart) is read from the store once.
            let session = st
                .sessions
                .get(id, &peer.name, st.clock.now()?)
                .await?
                .ok_or_else(|| super::audit::refuse_session(&st, &peer.name, &req))?;
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
    // one asset, the same reads inline if the store can answer at once (a first license for an
    // asset: no blocking-pool round trip). The retry repeats only cached lookups.
    let mut fast = st
        .store
        .read_cache()
        .and_then(|cache| license_fast(&st, &peer.name, &req, &wrap, cache));
    if fast.is_none() && req.assets.len() == 1 {
        st.store.reads_now(&mut |reads| {
            fast = license_fast(&st, &peer.name, &req, &wrap, reads);
        });
    }
    let (license, events) = match fast {
        Some(done) => done,
        None => license_work(&st, &peer.name, &req, wrap).await?,
    };
    // No key leaves before its grant is on record (a create's rows committed with its asset).
    if !events.is_empty() {
        let tally = crate::metrics::Tally::of(&events);
        st.store
            .record_audit(events)
            .await
            .map_err(|e| ApiError::Internal(format!("audit write failed: {e}")))?;
        tally.count();
    }
    Ok(Json(license))
}

/// `POST /v1/sessions`: a license session for the calling device (see [`crate::session`]).
pub(crate) async fn open_session(
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
        .await
        .map_err(|e| match e {
            crate::session::SessionError::Store(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        })?;
    Ok(Json(st.signer.sign_session(Session {
        session_id: session.id.clone(),
        device: session.device.clone(),
        recipient: session.recipient.to_hex(),
        enc: hex::encode(enc),
        issued_at: now,
        not_after: session.not_after,
    })))
}

/// The license path through the store: one snapshot of what the request names, read where
/// waiting is allowed; request-level refusals are recorded before they are answered.
async fn license_work(
    st: &State,
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
    let create_scope = req.create.as_ref().map(|c| c.scope.as_str());
    let (subject, rows) = authenticate_or_deny(
        st,
        now,
        req.token.expose(),
        asking,
        &named,
        &req.assets,
        create_scope,
    )
    .await?;
    let license_id = hex::encode(new_id()?);
    let mut g = Grantor::new(st, &subject.user, device, req, &license_id, now, wrap);
    if let Some(create) = &req.create {
        return create_work(&mut g, &rows, create)
            .await
            .map(|l| (l, Vec::new()));
    }
    let o = grant_assets(&mut g, &rows, &req.assets)?;
    Ok((g.finish(o.grants, o.denials), o.events))
}

/// The license fast path: the same checks and grants as [`license_work`], on the async thread,
/// through `reads` (the read cache alone, or the store's inline reads). `None` when anything is
/// not cached or anything fails — the caller then takes [`license_work`], which reads the store
/// and records request-level denials, so this path never decides anything the other would not.
fn license_fast<R: LicenseReads + ?Sized>(
    st: &State,
    device: &str,
    req: &LicenseRequest,
    wrap: &SessionOrKey,
    reads: &R,
) -> Option<(SignedLicense, Vec<AuditEvent>)> {
    if req.create.is_some() {
        return None;
    }
    let now = st.clock.now().ok()?;
    let subject = authenticate(st, reads, req.token.expose(), &req.app_digest, device, now).ok()?;
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
    let o = grant_assets(&mut g, reads, &req.assets).ok()?;
    Some((g.finish(o.grants, o.denials), o.events))
}

/// Allocates an asset id in the scope's current version, grants its key and registers it with
/// the grant's audit row (one transaction): a refused create leaves no asset row behind.
async fn create_work(
    g: &mut Grantor<'_>,
    rows: &LicenseRows,
    create: &CreateAsset,
) -> Result<SignedLicense, ApiError> {
    let Some(scope) = &rows.create_scope else {
        return Err(deny_create(g, create, Reason::UnknownScope, Vec::new()).await);
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
    match g.grant(rows, &asset)? {
        Err((reason, rule_ids)) => Err(deny_create(g, create, reason, rule_ids).await),
        Ok(grant) => {
            let ev = g.asset_event(
                &asset,
                "grant",
                grant.rule_ids.clone(),
                Some(format!("created {}", create.path)),
            );
            let tally = crate::metrics::Tally::of(std::slice::from_ref(&ev));
            g.st.store.register_asset(&asset, vec![ev]).await?;
            tally.count();
            Ok(g.finish(vec![grant], Vec::new()))
        }
    }
}

/// Records a refused create (named by its path) and returns the refusal.
async fn deny_create(
    g: &Grantor<'_>,
    create: &CreateAsset,
    reason: Reason,
    rule_ids: Vec<String>,
) -> ApiError {
    let mut ev = g.event(
        Some(create.path.clone()),
        "deny",
        rule_ids,
        Some(reason.as_str().into()),
    );
    ev.path = Some(create.path.clone());
    let tally = crate::metrics::Tally::of(std::slice::from_ref(&ev));
    match g.st.store.record_audit(vec![ev]).await {
        Ok(()) => {
            tally.count();
            ApiError::Denied(reason)
        }
        Err(e) => ApiError::Internal(format!("audit write failed: {e}")),
    }
}

/// `POST /v1/assets`: the create flow on its own path (same body and answer as a create license).
pub(crate) async fn create_asset(
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

pub(crate) async fn rename_asset(
    AxState(st): AxState<S>,
    DevicePeer(peer): DevicePeer,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RenameRequest>,
) -> Result<Json<AssetInfo>, ApiError> {
    rate_limit(&st, &peer.name)?;
    check_asset_id("asset_id", &id)?;
    check_digest("app_digest", &req.app_digest)?;
    check_path("new_path", &req.new_path)?;
    let now = st.clock.now()?;
    let asking = Who {
        user: None,
        app_digest: &req.app_digest,
        device: &peer.name,
        action: Action::Write,
    };
    let (subject, mut asset) = subject_and_asset(&st, now, req.token.expose(), asking, &id).await?;
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
        let who = Who {
            user: Some(&subject.user),
            ..asking
        };
        let ids = std::slice::from_ref(&id);
        return Err(deny_request(&st, now, who, ids, Reason::NoRule).await);
    }
    let mut rule_ids = from.rule_ids;
    rule_ids.extend(to.rule_ids);
    let event = AuditEvent {
        time: now,
        user: Some(subject.user.clone()),
        app_digest: Some(req.app_digest.clone()),
        device: Some(peer.name.clone()),
        asset: Some(id.clone()),
        action: "rename".into(),
        decision: "grant",
        rule_ids,
        reason: Some(format!("{} -> {}", asset.path, req.new_path)),
        license_id: None,
        path: Some(req.new_path.clone()),
    };
    st.store.rename_asset(&id, &req.new_path, event).await?;
    asset.path = req.new_path.clone();
    Ok(Json(asset))
}

pub(crate) async fn list_assets(
    AxState(st): AxState<S>,
    _a: AdminPeer,
) -> Result<Json<Vec<AssetInfo>>, ApiError> {
    Ok(Json(st.store.assets().await?))
}
