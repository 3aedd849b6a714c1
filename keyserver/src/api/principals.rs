//! Devices and control-plane principals: enrollment (`/v1/admin/devices`), workflow, auditor
//! and service certificates (`/v1/admin/principals`), their revocation, and the directory
//! snapshot standalone authz and ARDS mirror (`GET /v1/directory`).

use axum::extract::{Path, State as AxState};
use axum::http::request::Parts;
use axum::Json;

use super::audit::audited;
use super::checks::check_name;
use super::peers::{require_kind, AdminPeer};
use super::S;
use crate::error::{ApiError, ApiJson};
use crate::pki::{Principal, PrincipalKind};
use crate::seal::HpkePublicKey;
use crate::server::State;
use crate::wire::*;

pub(crate) async fn enroll(
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
    let (p, cert_pem) = issue_cert(
        &st,
        PrincipalKind::Device,
        &req.name,
        &req.csr_pem,
        Some(&req.hpke_public_key),
    )
    .await?;
    let answer = EnrollResponse {
        cert_pem,
        ca_pem: st.ca.pem().to_string(),
        serial: p.serial.clone(),
        license_public_key: st.signer.public_hex(),
    };
    audited(&st, &admin, "device.enroll", &req.name).await?;
    st.registry.upsert(p);
    Ok(Json(answer))
}

/// Issues and records a client certificate for `name` of `kind` from a CSR (only its public
/// key is taken); refused while the name holds an active certificate of that kind.
async fn issue_cert(
    st: &State,
    kind: PrincipalKind,
    name: &str,
    csr_pem: &str,
    hpke_public: Option<&str>,
) -> Result<(Principal, String), ApiError> {
    if st.store.active_cert_exists(kind, name).await? {
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
    st.store.add_cert(&p, hpke_public, st.clock.now()?).await?;
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

/// What a workflow principal may authorize, checked: at least one scope and one path prefix.
fn workflow_grant(req: &AddPrincipalRequest) -> Result<authz::principal::WorkflowGrant, ApiError> {
    if req.scopes.is_empty() || req.paths.is_empty() {
        return Err(ApiError::bad(
            if req.scopes.is_empty() {
                "scopes"
            } else {
                "paths"
            },
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
    Ok(authz::principal::WorkflowGrant {
        scopes: req.scopes.clone(),
        paths: req.paths.clone(),
    })
}

pub(crate) async fn add_principal(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    ApiJson(req): ApiJson<AddPrincipalRequest>,
) -> Result<Json<AddPrincipalResponse>, ApiError> {
    let kind = issuable_kind(&req.kind)?;
    check_name("name", &req.name)?;
    let grant = if kind == PrincipalKind::Workflow {
        Some(workflow_grant(&req)?)
    } else if !req.scopes.is_empty() || !req.paths.is_empty() {
        return Err(ApiError::bad(
            "scopes",
            "only a workflow takes scopes and paths",
        ));
    } else {
        None
    };
    let action = match kind {
        PrincipalKind::Workflow => "workflow.add",
        PrincipalKind::Auditor => "auditor.add",
        _ => "service.add",
    };
    let (p, cert_pem) = issue_cert(&st, kind, &req.name, &req.csr_pem, None).await?;
    if let Some(g) = &grant {
        st.store.put_workflow(&req.name, g, st.clock.now()?).await?;
    }
    let answer = AddPrincipalResponse {
        cert_pem,
        ca_pem: st.ca.pem().to_string(),
        serial: p.serial.clone(),
    };
    let subject = match &grant {
        Some(g) => format!("{} scopes={:?} paths={:?}", req.name, g.scopes, g.paths),
        None => req.name.clone(),
    };
    audited(&st, &admin, action, &subject).await?;
    st.registry.upsert(p);
    Ok(Json(answer))
}

pub(crate) async fn revoke_principal(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Json<Revoked>, ApiError> {
    let kind = issuable_kind(&kind)?;
    check_name("name", &name)?;
    let revoked = st.store.revoke_certs(kind, &name, st.clock.stamp()).await?;
    if revoked == 0 {
        return Err(ApiError::NotFound(format!(
            "active {} {name}",
            kind.as_str()
        )));
    }
    // After the commit, before anything else can fail: authz, ARDS and this server refuse it
    // at the next request.
    st.registry.revoke_name(kind, &name);
    audited(
        &st,
        &admin,
        "principal.revoke",
        &format!("{}:{name}", kind.as_str()),
    )
    .await?;
    Ok(Json(Revoked { revoked }))
}

/// The directory for authz and ARDS running as their own processes: only admins and service
/// principals read it (it names every user, device and build).
pub(crate) async fn directory(
    AxState(st): AxState<S>,
    parts: Parts,
) -> Result<Json<DirectorySnapshot>, ApiError> {
    require_kind(&st, &parts, &[PrincipalKind::Admin, PrincipalKind::Service])?;
    Ok(Json(st.store.directory_snapshot().await?))
}

pub(crate) async fn list_devices(
    AxState(st): AxState<S>,
    _a: AdminPeer,
) -> Result<Json<Vec<DeviceInfo>>, ApiError> {
    Ok(Json(st.store.certs().await?))
}

pub(crate) async fn revoke_device(
    AxState(st): AxState<S>,
    AdminPeer(admin): AdminPeer,
    Path(name): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    check_name("name", &name)?;
    let revoked = st.store.revoke_device(&name, st.clock.now()?).await?;
    if revoked == 0 {
        return Err(ApiError::NotFound(format!("active device {name}")));
    }
    // After the commit, before anything else can fail: the next handshake (and every request
    // on open connections) is refused.
    st.registry.revoke_name(PrincipalKind::Device, &name);
    // Its stored sessions went in the revocation's transaction; this replica's cached ones go now.
    st.sessions.end_device(&name);
    audited(&st, &admin, "device.revoke", &name).await?;
    Ok(Json(Revoked { revoked }))
}
