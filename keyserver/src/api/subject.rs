//! Who a request speaks for: the user behind its token, checked against the presenting device,
//! the user's standing and generation, and the application build — and the audit record of a
//! refusal, committed before the refusal is answered.

use crate::error::ApiError;
use crate::server::State;
use crate::store::{AuditEvent, LicenseReads, LicenseRows, RowsWanted};
use crate::token::Claims;
use crate::wire::{Action, AssetInfo, Reason};

/// Who is asking, once token, user, device and application have all been checked.
pub(crate) struct Subject {
    pub(crate) user: String,
}

/// The token's claims, if it verifies and was issued on `device` (the presenting connection's
/// client certificate): a copied token is useless elsewhere.
pub(crate) fn verify_token(
    st: &State,
    token: &str,
    device: &str,
    now: i64,
) -> Result<Claims, Reason> {
    let claims: Claims = st.tokens.verify(token, now)?;
    if claims.device != device {
        return Err(Reason::TokenWrongDevice);
    }
    Ok(claims)
}

/// The claimed user is enabled at the token's generation, and the application is registered
/// and not revoked, as `reads` says.
pub(crate) fn check_subject<R: LicenseReads + ?Sized>(
    reads: &R,
    claims: &Claims,
    app_digest: &str,
) -> Result<Subject, Reason> {
    let user = reads
        .user(&claims.user)
        .map_err(|_| Reason::TokenInvalid)?
        .ok_or(Reason::UnknownUser)?;
    if user.disabled {
        return Err(Reason::UserDisabled);
    }
    if user.generation != claims.generation {
        return Err(Reason::TokenInvalid);
    }
    let app = reads
        .app(app_digest)
        .map_err(|_| Reason::UnknownApplication)?
        .ok_or(Reason::UnknownApplication)?;
    if app.revoked_at.is_some() {
        return Err(Reason::ApplicationRevoked);
    }
    Ok(Subject { user: user.name })
}

/// [`verify_token`] then [`check_subject`].
pub(crate) fn authenticate<R: LicenseReads + ?Sized>(
    st: &State,
    reads: &R,
    token: &str,
    app_digest: &str,
    device: &str,
    now: i64,
) -> Result<Subject, Reason> {
    let claims = verify_token(st, token, device, now)?;
    check_subject(reads, &claims, app_digest)
}

/// The user named by a token whether or not it verifies, for the audit record of a denial.
pub(crate) fn token_user(token: &str) -> Option<String> {
    crate::token::named_user_unverified(token).map(|user| format!("{user} (unverified)"))
}

/// Who made a request that is being refused (for its audit rows).
#[derive(Clone, Copy)]
pub(crate) struct Who<'a> {
    pub(crate) user: Option<&'a str>,
    pub(crate) app_digest: &'a str,
    pub(crate) device: &'a str,
    pub(crate) action: Action,
}

/// Records a request-level denial (one row per asset named, or one row) and returns the error
/// once the rows are committed.
pub(crate) async fn deny_request(
    st: &State,
    now: i64,
    who: Who<'_>,
    assets: &[String],
    reason: Reason,
) -> ApiError {
    let base = AuditEvent {
        time: now,
        user: who.user.map(str::to_string),
        app_digest: Some(who.app_digest.to_string()),
        device: Some(who.device.to_string()),
        asset: None,
        action: who.action.as_str().to_string(),
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
    let tally = crate::metrics::Tally::of(&events);
    if let Err(e) = st.store.record_audit(events).await {
        return ApiError::Internal(e.to_string());
    }
    tally.count();
    tracing::info!(device = who.device, reason = %reason, "request denied");
    ApiError::Denied(reason)
}

/// The subject behind `token` and the rows its request reads (`assets`, a create's scope),
/// read from the store; a refusal is recorded against the user the token names (unverified),
/// one row per entry of `named`.
pub(crate) async fn authenticate_or_deny(
    st: &State,
    now: i64,
    token: &str,
    asking: Who<'_>,
    named: &[String],
    assets: &[String],
    create_scope: Option<&str>,
) -> Result<(Subject, LicenseRows), ApiError> {
    let refused = match verify_token(st, token, asking.device, now) {
        Err(reason) => reason,
        Ok(claims) => {
            let want = RowsWanted {
                user: &claims.user,
                app_digest: asking.app_digest,
                assets,
                create_scope,
            };
            let rows = st.store.license_rows(want).await?;
            match check_subject(&rows, &claims, asking.app_digest) {
                Ok(subject) => return Ok((subject, rows)),
                Err(reason) => reason,
            }
        }
    };
    let unverified = token_user(token);
    let who = Who {
        user: unverified.as_deref(),
        ..asking
    };
    Err(deny_request(st, now, who, named, refused).await)
}

/// The user behind `token` and the registered asset `id`, for a device's change to that asset
/// (rename, new write generation); an unknown user or asset is a recorded denial.
pub(crate) async fn subject_and_asset(
    st: &State,
    now: i64,
    token: &str,
    asking: Who<'_>,
    id: &str,
) -> Result<(Subject, AssetInfo), ApiError> {
    let ids = [id.to_string()];
    let (subject, rows) = authenticate_or_deny(st, now, token, asking, &ids, &ids, None).await?;
    match rows.asset(id)? {
        Some(asset) => Ok((subject, asset)),
        None => {
            let who = Who {
                user: Some(&subject.user),
                ..asking
            };
            Err(deny_request(st, now, who, &ids, Reason::UnknownAsset).await)
        }
    }
}
