//! `POST /v1/assets/{id}/generation`: the asset registry's write generations (csapfs
//! FORMAT.md §7). A mount that writes a new version of an asset reserves the next generation
//! here, puts it in the file's header, syncs, and settles it; licenses then name the recorded
//! (and any pending) generation, so the mount refuses an older authentic copy put back in
//! place. Both steps are authorized like a write to the asset's registered path and audited.

use axum::extract::{Path, State as AxState};
use axum::Json;

use super::checks::{check_asset_id, check_digest};
use super::peers::{rate_limit, DevicePeer};
use super::subject::{deny_request, subject_and_asset, Who};
use super::S;
use crate::error::{ApiError, ApiJson};
use crate::store::AuditEvent;
use crate::wire::{Action, AssetInfo, GenerationRequest, GenerationStep, Reason};

pub(crate) async fn advance(
    AxState(st): AxState<S>,
    DevicePeer(peer): DevicePeer,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<GenerationRequest>,
) -> Result<Json<AssetInfo>, ApiError> {
    rate_limit(&st, &peer.name)?;
    check_asset_id("asset_id", &id)?;
    check_digest("app_digest", &req.app_digest)?;
    let now = st.clock.now()?;
    let asking = Who {
        user: None,
        app_digest: &req.app_digest,
        device: &peer.name,
        action: Action::Write,
    };
    let (subject, asset) = subject_and_asset(&st, now, req.token.expose(), asking, &id).await?;
    // A new version is a write of the asset where it is registered.
    let verdict = st.rules.check(&authz::AccessRequest {
        participant: &subject.user,
        application_digest: &req.app_digest,
        device: &peer.name,
        asset_path: &asset.path,
        asset_scope: &asset.scope,
        action: Action::Write,
        now,
    });
    if !verdict.allowed {
        let who = Who {
            user: Some(&subject.user),
            ..asking
        };
        let ids = std::slice::from_ref(&id);
        return Err(deny_request(&st, now, who, ids, Reason::NoRule).await);
    }
    let asset = st
        .store
        .advance_generation(&id, req.step, req.generation)
        .await?;
    let reason = match req.step {
        GenerationStep::Reserve => format!(
            "generation {} reserved (recorded {})",
            asset.pending_generation.unwrap_or(asset.generation),
            asset.generation
        ),
        GenerationStep::Settle => format!("generation {} settled", asset.generation),
    };
    st.store
        .record_audit(vec![AuditEvent {
            time: now,
            user: Some(subject.user),
            app_digest: Some(req.app_digest.clone()),
            device: Some(peer.name.clone()),
            asset: Some(id.clone()),
            action: "write".into(),
            decision: "grant",
            rule_ids: verdict.rule_ids,
            reason: Some(reason),
            license_id: None,
            path: Some(asset.path.clone()),
        }])
        .await?;
    Ok(Json(asset))
}
