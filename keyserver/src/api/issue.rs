//! `POST /v1/admin/licenses`: a license an admin issues for a device's enrolled HPKE key, for
//! every registered asset matching a path pattern — under the rules, or as break-glass (no
//! rules check, a reason required, every grant audited as such).

use std::collections::HashMap;

use axum::extract::State as AxState;
use axum::Json;

use super::checks::{check_digest, check_name, new_id};
use super::grant::{Grantor, KeyWrap};
use super::peers::AdminPeer;
use super::subject::{deny_request, Who};
use super::S;
use crate::error::{ApiError, ApiJson};
use crate::seal::HpkePublicKey;
use crate::store::RowsWanted;
use crate::wire::*;

pub(crate) async fn issue_license(
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
    let now = st.clock.now()?;
    if req.until <= now {
        return Err(ApiError::bad("until", "must be in the future"));
    }
    let recipient = st
        .store
        .device_hpke_public(&req.device)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "active device {} with an enrollment key",
                req.device
            ))
        })?;
    let recipient =
        HpkePublicKey::from_hex(&recipient).map_err(|e| ApiError::Internal(e.to_string()))?;
    let ids: Vec<String> = st
        .store
        .assets()
        .await?
        .into_iter()
        .filter(|a| authz::glob::matches(&req.assets, &a.path))
        .map(|a| a.asset_id)
        .collect();
    let rows = st
        .store
        .license_rows(RowsWanted {
            user: &req.user,
            app_digest: &req.app_digest,
            assets: &ids,
            create_scope: None,
        })
        .await?;
    let user = rows
        .user
        .as_ref()
        .ok_or_else(|| ApiError::NotFound(format!("user {}", req.user)))?;
    let refusal = match &rows.app {
        _ if user.disabled => Some(Reason::UserDisabled),
        None => Some(Reason::UnknownApplication),
        Some(a) if a.revoked_at.is_some() => Some(Reason::ApplicationRevoked),
        Some(_) => None,
    };
    if let Some(reason) = refusal {
        let who = Who {
            user: Some(&req.user),
            app_digest: &req.app_digest,
            device: &req.device,
            action: req.action,
        };
        let named = std::slice::from_ref(&req.assets);
        return Err(deny_request(&st, now, who, named, reason).await);
    }
    // In path order, as listed; an asset removed since the listing is simply not licensed.
    let assets: Vec<AssetInfo> = ids
        .iter()
        .filter_map(|id| rows.assets.get(id).cloned().flatten())
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
        match g.grant(&rows, a)? {
            Ok(grant) => {
                events.push(g.asset_event(a, "grant", grant.rule_ids.clone(), Some(how.clone())));
                grants.push(grant);
            }
            Err((reason, rule_ids)) => {
                events.push(g.asset_event(a, "deny", rule_ids, Some(format!("{reason}; {how}"))));
                denials.push(AssetDenial {
                    asset_id: a.asset_id.clone(),
                    reason,
                });
            }
        }
    }
    let license = g.finish(grants, denials);
    // No key leaves before its grant is on record.
    let tally = crate::metrics::Tally::of(&events);
    st.store.record_audit(events).await?;
    tally.count();
    Ok(Json(license))
}
