//! `POST /v1/assets/{id}/generation`: the asset registry's write generations (csapfs
//! FORMAT.md §7). A mount that writes a new version of an asset reserves the next generation
//! here, puts it in the file's header, syncs, and settles it; licenses then name the recorded
//! (and any pending) generation, so the mount refuses an older authentic copy put back in
//! place. Both steps are authorized like a write to the asset's registered path and audited.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::Json;

use crate::api::{
    check_asset_id, check_digest, deny_request, rate_limit, subject_and_asset, DevicePeer, Who, S,
};
use crate::db::{self, AuditEvent};
use crate::error::{ApiError, ApiJson};
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
    let st2 = Arc::clone(&st);
    st.db
        .call(move |conn| {
            let st = st2;
            let now = st.clock.now()?;
            let who = |user| Who {
                user,
                app_digest: &req.app_digest,
                device: &peer.name,
                action: Action::Write,
            };
            let ids = std::slice::from_ref(&id);
            let (subject, asset) =
                subject_and_asset(&st, conn, now, req.token.expose(), who(None), &id)?;
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
                let who = who(Some(subject.user));
                return Err(deny_request(conn, now, who, ids, Reason::NoRule));
            }
            // Each step is one UPDATE, atomic on its own.
            match req.step {
                GenerationStep::Reserve => db::reserve_generation(conn, &id)?,
                GenerationStep::Settle => db::settle_generation(conn, &id, req.generation)?,
            }
            let asset = db::get_asset(conn, &id)?
                .ok_or_else(|| ApiError::NotFound(format!("asset {id}")))?;
            let reason = match req.step {
                GenerationStep::Reserve => format!(
                    "generation {} reserved (recorded {})",
                    asset.pending_generation.unwrap_or(asset.generation),
                    asset.generation
                ),
                GenerationStep::Settle => format!("generation {} settled", asset.generation),
            };
            db::insert_audit(
                conn,
                &[AuditEvent {
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
                }],
            )?;
            Ok(Json(asset))
        })
        .await
}
