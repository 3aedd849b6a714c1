//! Delegated authentication ([`crate::federation`]): the organizations' identity providers
//! (`PUT|DELETE /v1/admin/identity-providers/{organization}`, `GET /v1/admin/identity-providers`,
//! and `GET /v1/identity-providers/{organization}` for login clients) and the federated login
//! `POST /v1/login/oidc`: an ID token of the organization's provider for a csap token.

use axum::extract::{Path, State as AxState};
use axum::Json;

use super::audit::audited;
use super::checks::check_name;
use super::login::{grant_login, refuse_login};
use super::peers::{rate_limit, AdminPeer, AnyPeer, DevicePeer};
use super::S;
use crate::error::{ApiError, ApiJson};
use crate::federation::{check_issuer_url, participant_name, Refusal};
use crate::store::{ProviderRecord, StoreError, UserRow};
use crate::wire::{
    IdentityProvider, IdentityProviderList, LoginResponse, OidcLoginRequest, Reason,
};

/// The password hash of a participant who logs in through their organization's provider: not
/// a PHC string, so no password ever verifies against it.
pub(crate) const FEDERATED_HASH: &str = "!federated";

/// The settings an admin gives for an organization's provider.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderSettings {
    issuer: String,
    client_id: String,
    #[serde(default)]
    pseudonymous: bool,
}

/// `PUT /v1/admin/identity-providers/{organization}`: trusts the provider for the organization's
/// people (replacing the one it had). A pseudonymous organization keeps its pseudonym key across
/// replacements, so its people keep their names.
pub(crate) async fn put_provider(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    Path(organization): Path<String>,
    ApiJson(req): ApiJson<ProviderSettings>,
) -> Result<Json<IdentityProvider>, ApiError> {
    check_name("organization", &organization)?;
    check_issuer_url(&req.issuer).map_err(|e| ApiError::bad("issuer", e))?;
    let client_id_ok = !req.client_id.is_empty()
        && req.client_id.len() <= 256
        && req.client_id.chars().all(|c| c.is_ascii_graphic());
    if !client_id_ok {
        return Err(ApiError::bad(
            "client_id",
            "must be 1-256 printable ASCII characters",
        ));
    }
    let previous = st.store.identity_provider(&organization).await?;
    let pseudonym_key = match (req.pseudonymous, previous.and_then(|p| p.pseudonym_key)) {
        (false, _) => None,
        (true, Some(kept)) => Some(kept),
        (true, None) => Some(
            st.root
                .new_pseudonym_key(&organization)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        ),
    };
    let provider = IdentityProvider {
        organization: organization.clone(),
        issuer: req.issuer,
        client_id: req.client_id,
        pseudonymous: req.pseudonymous,
        added_at: st.clock.stamp(),
    };
    st.store
        .put_identity_provider(&ProviderRecord {
            provider: provider.clone(),
            pseudonym_key,
        })
        .await?;
    let subject = format!("{organization} {}", provider.issuer);
    audited(&st, &admin, "idp.add", &subject).await?;
    Ok(Json(provider))
}

pub(crate) async fn list_providers(
    AxState(st): AxState<S>,
    AdminPeer(_): AdminPeer,
) -> Result<Json<IdentityProviderList>, ApiError> {
    Ok(Json(IdentityProviderList {
        providers: st.store.identity_providers().await?,
    }))
}

/// `DELETE /v1/admin/identity-providers/{organization}`: its people log in no more (tokens
/// already issued run out; disable the users to end them at once).
pub(crate) async fn remove_provider(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    Path(organization): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_name("organization", &organization)?;
    if !st.store.remove_identity_provider(&organization).await? {
        return Err(ApiError::NotFound(format!(
            "identity provider of {organization}"
        )));
    }
    audited(&st, &admin, "idp.remove", &organization).await?;
    Ok(Json(
        serde_json::json!({ "organization": organization, "removed": true }),
    ))
}

/// `GET /v1/identity-providers/{organization}`: where a login client sends the person (the
/// issuer and the client id are public at the provider too).
pub(crate) async fn provider(
    AxState(st): AxState<S>,
    _: AnyPeer,
    Path(organization): Path<String>,
) -> Result<Json<IdentityProvider>, ApiError> {
    check_name("organization", &organization)?;
    match st.store.identity_provider(&organization).await? {
        Some(record) => Ok(Json(record.provider)),
        None => Err(ApiError::Denied(Reason::UnknownOrganization)),
    }
}

/// `POST /v1/login/oidc`.
pub(crate) async fn login_oidc(
    AxState(st): AxState<S>,
    DevicePeer(peer): DevicePeer,
    ApiJson(req): ApiJson<OidcLoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    rate_limit(&st, &peer.name)?;
    check_name("organization", &req.organization)?;
    if req.nonce.is_empty() || req.nonce.len() > 256 {
        return Err(ApiError::bad("nonce", "must be 1-256 characters"));
    }
    let now = st.clock.now()?;
    let user = match federated_user(&st, &req, now).await? {
        Ok(user) => user,
        Err((user, refusal)) => {
            let detail = format!("{}: {}", refusal.reason.as_str(), refusal.detail);
            return Err(refuse_login(&st, user, &peer, now, &detail, refusal.reason).await);
        }
    };
    let grant = format!(
        "token for uid {} through {} ({})",
        req.uid, req.organization, user.1
    );
    grant_login(&st, &user.0, &peer, req.uid, now, grant).await
}

/// The participant `req`'s ID token logs in (provisioned at the first login) and the issuer
/// that vouched for them, or why not (with the participant, when the token named one).
async fn federated_user(
    st: &S,
    req: &OidcLoginRequest,
    now: i64,
) -> Result<Result<(UserRow, String), (Option<String>, Refusal)>, ApiError> {
    let unknown = || Refusal {
        reason: Reason::UnknownOrganization,
        detail: format!("no identity provider on record for {}", req.organization),
    };
    let Some(record) = st.store.identity_provider(&req.organization).await? else {
        return Ok(Err((None, unknown())));
    };
    let idp = &record.provider;
    let subject = match st
        .federation
        .verify(idp, req.id_token.expose(), &req.nonce, now)
        .await
    {
        Ok(subject) => subject,
        Err(refusal) => return Ok(Err((None, refusal))),
    };
    let key = match &record.pseudonym_key {
        Some(sealed) => Some(
            st.root
                .open_pseudonym_key(&idp.organization, sealed)
                .map_err(|e| ApiError::Internal(format!("pseudonym key: {e}")))?,
        ),
        None => None,
    };
    let name = match participant_name(idp, key.as_ref().map(|k| k.as_slice()), &subject) {
        Ok(name) => name,
        Err(refusal) => return Ok(Err((None, refusal))),
    };
    let user = match st.store.user(&name).await? {
        Some(user) => user,
        None => {
            match st.store.add_user(&name, FEDERATED_HASH, now).await {
                // Another login (or replica) provisioned them a moment ago.
                Ok(()) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
            st.store
                .user(&name)
                .await?
                .ok_or_else(|| ApiError::Internal(format!("user {name} vanished")))?
        }
    };
    let refused = |reason, detail: &str| {
        Ok(Err((
            Some(name.clone()),
            Refusal {
                reason,
                detail: detail.into(),
            },
        )))
    };
    if user.password_hash != FEDERATED_HASH {
        // A local user of that name: an organization's provider never logs in as them.
        return refused(
            Reason::IdTokenInvalid,
            "a local (password) user has the participant's name",
        );
    }
    if user.disabled {
        return refused(Reason::UserDisabled, "the participant is disabled");
    }
    Ok(Ok((user, idp.issuer.clone())))
}
