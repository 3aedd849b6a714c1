//! The audit trail's HTTP side: every admin change's row ([`audited`]), mounts shipping their
//! own decisions (`POST /v1/audit`), refused license sessions, and reading the trail —
//! `GET /v1/admin/audit` (by id) and `GET /v1/admin/audit/query` (by path, user, device,
//! application, decision and time) and `GET /v1/admin/audit/verify` (the hash chain walked)
//! for admins and auditors.

use axum::extract::{Query, State as AxState};
use axum::Json;
use serde::Deserialize;

use super::checks::{check_asset_id, check_digest, check_name, check_path};
use super::peers::{rate_limit, AuditReader, DevicePeer};
use super::subject::token_user;
use super::S;
use crate::error::{ApiError, ApiJson};
use crate::server::{Peer, State};
use crate::store::audit_chain::Verifier;
use crate::store::{AuditEvent, AuditFilter};
use crate::wire::{
    AuditBatch, AuditBatchAck, AuditQuery, AuditRecord, AuditVerification, LicenseRequest,
    MountAuditRecord, Reason,
};

/// Records an admin change that succeeded, naming the admin and the change's subject; the
/// change is answered only once its row is committed.
pub(crate) async fn audited(
    st: &State,
    admin: &Peer,
    action: &str,
    subject: &str,
) -> Result<(), ApiError> {
    let ev = AuditEvent {
        time: st.clock.stamp(),
        user: Some(format!("admin:{}", admin.name)),
        action: action.into(),
        decision: "admin",
        reason: Some(subject.into()),
        ..Default::default()
    };
    Ok(st.store.record_audit(vec![ev]).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TailQuery {
    after: Option<i64>,
    limit: Option<u32>,
    tail: Option<u32>,
}

/// `GET /v1/admin/audit`: records after an id, or the last `tail` records, oldest first.
pub(crate) async fn tail(
    AxState(st): AxState<S>,
    _a: AuditReader,
    q: Result<Query<TailQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest {
        message: e.body_text(),
        field: None,
    })?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let rows = match (q.tail, q.after) {
        (Some(n), None) => st.store.audit_tail(n.min(10_000)).await?,
        (None, after) => st.store.audit_after(after.unwrap_or(0), limit).await?,
        (Some(_), Some(_)) => return Err(ApiError::bad("tail", "give tail or after, not both")),
    };
    Ok(Json(rows))
}

/// Records per shipped batch at most (bounds one transaction and one request body).
pub(crate) const MAX_SHIPPED_BATCH: usize = 1000;

/// Rows per query at most, and by default.
const MAX_QUERY_ROWS: u32 = 10_000;
const DEFAULT_QUERY_ROWS: u32 = 100;

/// How far ahead of the key server's clock a mount's record may be dated (clock skew).
const MAX_CLOCK_AHEAD_SECS: i64 = 3600;

/// `POST /v1/audit`: stores a mount's batch as the calling device (the peer certificate's
/// name; a device named in the body is ignored). Sequence numbers already on record for this
/// device and spool are skipped, so a resend is idempotent.
pub(crate) async fn ship(
    AxState(st): AxState<S>,
    DevicePeer(peer): DevicePeer,
    ApiJson(batch): ApiJson<AuditBatch>,
) -> Result<Json<AuditBatchAck>, ApiError> {
    rate_limit(&st, &peer.name)?;
    check_batch(&batch, st.clock.now()?)?;
    let claimed: Vec<&str> = batch
        .records
        .iter()
        .filter_map(|r| r.device.as_deref())
        .filter(|d| *d != peer.name)
        .collect();
    if let Some(claimed) = claimed.first() {
        tracing::warn!(device = %peer.name, claimed, "audit batch names another device; stamped with the peer's");
    }
    let through_seq = batch.records.last().map_or(0, |r| r.seq);
    let device = peer.name.clone();
    let shipped = st
        .store
        .store_shipped(&device, &batch.spool, &batch.records)
        .await?;
    tracing::debug!(device = %peer.name, accepted = shipped.accepted, duplicates = shipped.duplicates, through_seq, "mount audit batch stored");
    Ok(Json(AuditBatchAck {
        accepted: shipped.accepted,
        duplicates: shipped.duplicates,
        through_seq,
    }))
}

/// Every field of a batch checked, naming the first bad one (`records[3].path`).
fn check_batch(batch: &AuditBatch, now: i64) -> Result<(), ApiError> {
    if batch.spool.len() != 32 || check_asset_id("spool", &batch.spool).is_err() {
        return Err(ApiError::bad(
            "spool",
            "a spool id is 32 lowercase hex characters",
        ));
    }
    if batch.records.is_empty() || batch.records.len() > MAX_SHIPPED_BATCH {
        return Err(ApiError::bad(
            "records",
            format!("give 1 to {MAX_SHIPPED_BATCH} records"),
        ));
    }
    let mut last_seq = 0;
    for (i, r) in batch.records.iter().enumerate() {
        check_record(r, last_seq, now)
            .map_err(|(field, message)| ApiError::bad(&format!("records[{i}].{field}"), message))?;
        last_seq = r.seq;
    }
    Ok(())
}

type FieldError = (&'static str, String);

fn check_record(r: &MountAuditRecord, last_seq: u64, now: i64) -> Result<(), FieldError> {
    let field = |name: &'static str, e: ApiError| (name, e.to_string());
    if r.seq == 0 || r.seq <= last_seq || r.seq > i64::MAX as u64 {
        return Err(("seq", "sequence numbers start at 1 and increase".into()));
    }
    if r.time <= 0 || r.time > now + MAX_CLOCK_AHEAD_SECS {
        return Err(("time", "unix seconds, not in the future".into()));
    }
    if !matches!(r.decision.as_str(), "grant" | "deny") {
        return Err(("decision", "\"grant\" or \"deny\"".into()));
    }
    if r.count == 0 {
        return Err(("count", "at least 1".into()));
    }
    if r.reason.is_empty() || r.reason.len() > 1024 || r.reason.chars().any(char::is_control) {
        return Err(("reason", "1-1024 characters, no control characters".into()));
    }
    check_path("path", &r.path).map_err(|e| field("path", e))?;
    if let Some(user) = &r.user {
        check_name("user", user).map_err(|e| field("user", e))?;
    }
    if let Some(app) = &r.app_digest {
        check_digest("app_digest", app).map_err(|e| field("app_digest", e))?;
    }
    if let Some(asset) = &r.asset {
        check_asset_id("asset", asset).map_err(|e| field("asset", e))?;
    }
    Ok(())
}

/// A license request that names a license session the server does not know (never opened,
/// ended, another device's, or its stored row does not open): audited — one row per asset named, as
/// the user its token names (unverified) — without touching SQLite on this async thread.
pub(crate) fn refuse_session(st: &State, device: &str, req: &LicenseRequest) -> ApiError {
    let base = AuditEvent {
        time: st.clock.stamp(),
        user: token_user(req.token.expose()),
        app_digest: Some(req.app_digest.clone()),
        device: Some(device.to_string()),
        action: req.action.as_str().to_string(),
        decision: "deny",
        reason: Some(Reason::SessionUnknown.as_str().into()),
        path: req.create.as_ref().map(|c| c.path.clone()),
        ..Default::default()
    };
    // Only well-formed ids (the request is not validated yet), as many as a batch may name.
    let events: Vec<AuditEvent> = req
        .assets
        .iter()
        .filter(|a| check_asset_id("assets", a).is_ok())
        .take(st.limits.max_batch)
        .map(|a| AuditEvent {
            asset: Some(a.clone()),
            ..base.clone()
        })
        .collect();
    st.store.record_audit_later(if events.is_empty() {
        vec![base]
    } else {
        events
    });
    tracing::info!(device, "license request on an unknown session refused");
    ApiError::SessionUnknown
}

/// `GET /v1/admin/audit/query`: the newest records matching every filter given, oldest
/// first; mount-shipped and key server rows alike (`source` says which decided).
pub(crate) async fn query(
    AxState(st): AxState<S>,
    _reader: AuditReader,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest {
        message: e.body_text(),
        field: None,
    })?;
    let mut filter = AuditFilter {
        limit: q
            .limit
            .unwrap_or(DEFAULT_QUERY_ROWS)
            .clamp(1, MAX_QUERY_ROWS),
        since: q.since,
        until: q.until,
        ..Default::default()
    };
    if let Some(glob) = &q.path {
        authz::glob::check(glob).map_err(|m| ApiError::bad("path", m))?;
        filter.path_glob = Some(glob.clone());
    }
    if let Some(d) = &q.decision {
        if !matches!(d.as_str(), "grant" | "deny" | "admin") {
            return Err(ApiError::bad(
                "decision",
                "\"grant\", \"deny\" or \"admin\"",
            ));
        }
        filter.decision = Some(d.clone());
    }
    if let Some(user) = &q.user {
        check_name("user", user)?;
        filter.user = Some(user.clone());
    }
    if let Some(device) = &q.device {
        check_name("device", device)?;
        filter.device = Some(device.clone());
    }
    let app = q.app.clone();
    if let Some(app) = &app {
        if check_digest("app", app).is_ok() {
            filter.app_digests = Some(vec![app.clone()]);
        } else {
            check_name("app", app)
                .map_err(|_| ApiError::bad("app", "a BLAKE3 digest or an application name"))?;
        }
    }
    if let (Some(name), None) = (&app, &filter.app_digests) {
        let digests = st.store.app_digests_named(name).await?;
        if digests.is_empty() {
            return Err(ApiError::NotFound(format!(
                "registered application named {name}"
            )));
        }
        filter.app_digests = Some(digests);
    }
    let rows = st.store.audit_query(filter).await?;
    Ok(Json(rows))
}

/// Rows `verify` reads per round trip.
const VERIFY_PAGE: u32 = 5000;

/// `GET /v1/admin/audit/verify`: walks the whole trail in id order and reports the first row
/// whose chain does not link (`store::audit_chain`). Rows committed meanwhile are walked too.
pub(crate) async fn verify(
    AxState(st): AxState<S>,
    _reader: AuditReader,
) -> Result<Json<AuditVerification>, ApiError> {
    let mut verifier = Verifier::new();
    let mut after = 0;
    while !verifier.done() {
        let page = st.store.audit_chain_after(after, VERIFY_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let full = page.len() as u32 == VERIFY_PAGE;
        page.into_iter().for_each(|r| verifier.push(r));
        if !full {
            break;
        }
    }
    Ok(Json(verifier.finish()))
}
