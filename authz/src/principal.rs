//! Who calls a control-plane service: the principal behind a client certificate from the
//! installation's CA (the key server's), its role, and the directory that says whether it is
//! still active. authz, ARDS and the key server check every request against one [`Directory`]:
//! the TLS layer verifies the chain and attaches the certificate ([`PeerCert`]) and the
//! directory ([`DirectoryHandle`]) to each request; the [`Caller`] extractor looks the
//! certificate up again per request, so a revocation also cuts off connections already open.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub use csap_identity::{Role, WorkflowGrant};

/// An active principal: the name its certificate was issued for, its role, its serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub serial: String,
}

impl Principal {
    /// The ARDS stream this principal reads as a policy enforcement point, if it is one.
    pub fn pep_id(&self) -> Option<String> {
        match self.role {
            Role::Device => Some(format!("mount:{}", self.name)),
            Role::Service => Some(self.name.clone()),
            _ => None,
        }
    }

    /// `role:name`, as logs and refusals name it.
    pub fn label(&self) -> String {
        format!("{}:{}", self.role.as_str(), self.name)
    }
}

/// Whether a name in a request exists in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Active,
    /// Known, but disabled or revoked.
    Inactive,
    Unknown,
}

/// Certificates and identities of one installation (implemented by the key server, which
/// issues them).
pub trait Principals: Send + Sync {
    /// The active principal holding the certificate with this serial (lowercase hex of the DER
    /// serial bytes) and common name; `None` if unknown, revoked, or the name differs.
    fn principal(&self, serial: &str, common_name: &str) -> Option<Principal>;
    /// True if this serial was issued and later revoked (for the refusal's wording).
    fn is_revoked(&self, serial: &str) -> bool;
}

/// Everything a control-plane service asks about identities.
pub trait Directory: Principals {
    fn workflow_grant(&self, name: &str) -> Option<WorkflowGrant>;
    fn user(&self, name: &str) -> Standing;
    fn device(&self, name: &str) -> Standing;
    fn application(&self, digest: &str) -> Standing;
}

/// The fields of a client certificate a peer is identified by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Lowercase hex of the DER serial number bytes.
    pub serial: String,
    pub common_name: String,
}

/// Reads serial and common name from a DER certificate (strict: no trailing bytes).
pub fn parse_cert(der: &[u8]) -> Result<CertInfo, String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err("trailing bytes after certificate".into());
    }
    let serial = hex::encode(cert.tbs_certificate.raw_serial());
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| "no common name".to_string())?
        .to_string();
    Ok(CertInfo {
        serial,
        common_name,
    })
}

/// The verified client certificate of a request's connection (absent: no certificate).
#[derive(Debug, Clone)]
pub struct PeerCert(pub CertInfo);

/// The directory a listener checks its callers against, attached to every request.
#[derive(Clone)]
pub struct DirectoryHandle(pub Arc<dyn Directory>);

impl std::fmt::Debug for DirectoryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectoryHandle")
    }
}

/// A refused caller: 401 without an active certificate, 403 for a role that may not do this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unauthenticated(&'static str),
    Forbidden(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::Unauthenticated(m) => (*m).to_string(),
            Refusal::Forbidden(m) => m.clone(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.message(), "field": "client_certificate"});
        (self.status(), axum::Json(body)).into_response()
    }
}

/// The active principal calling, resolved per request. Rejects with 401 when the connection
/// carried no certificate or its principal is no longer active.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// Refuses unless the caller has one of `roles`; `what` names the operation.
    pub fn require(&self, roles: &[Role], what: &str) -> Result<(), Refusal> {
        if roles.contains(&self.0.role) {
            return Ok(());
        }
        let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        tracing::info!(caller = %self.0.label(), what, "refused: wrong role");
        Err(Refusal::Forbidden(format!(
            "{} may not {what} (needs role {})",
            self.0.label(),
            allowed.join(" or ")
        )))
    }

    /// Refuses unless the caller is the policy enforcement point `pep` (or an admin).
    pub fn require_pep(&self, pep: &str, what: &str) -> Result<(), Refusal> {
        if self.0.role == Role::Admin || self.0.pep_id().as_deref() == Some(pep) {
            return Ok(());
        }
        tracing::info!(caller = %self.0.label(), pep, what, "refused: not this PEP");
        Err(Refusal::Forbidden(format!(
            "{} may not {what} of PEP {pep}",
            self.0.label()
        )))
    }
}

/// Resolves the caller of a request from its extensions (see the module doc).
pub fn caller_of(parts: &Parts) -> Result<Principal, Refusal> {
    const NO_CERT: &str = "a client certificate from the installation's CA is required \
                           (use an identity directory from `csap device enroll`, \
                           `csap workflow add` or the admin identity)";
    let (Some(PeerCert(cert)), Some(DirectoryHandle(dir))) = (
        parts.extensions.get::<PeerCert>(),
        parts.extensions.get::<DirectoryHandle>(),
    ) else {
        return Err(Refusal::Unauthenticated(NO_CERT));
    };
    dir.principal(&cert.serial, &cert.common_name)
        .ok_or(Refusal::Unauthenticated(
            "this client certificate is revoked or unknown",
        ))
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Refusal> {
        caller_of(parts).map(Caller)
    }
}

/// True if `pattern` (a request's path pattern) lies under one of `prefixes`: equal to a
/// prefix, or starting with it followed by `/`. `**` allows everything.
pub fn path_within(pattern: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| {
        let p = p.trim_end_matches('/');
        p == "**" || pattern == p || pattern.strip_prefix(p).is_some_and(|r| r.starts_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefixes_do_not_leak_to_siblings() {
        let grant = vec!["show/seq1".to_string()];
        assert!(path_within("show/seq1/**", &grant));
        assert!(path_within("show/seq1", &grant));
        assert!(!path_within("show/seq10/**", &grant));
        assert!(!path_within("show/**", &grant));
        assert!(!path_within("show/*/x", &grant));
        assert!(path_within("anything/**", &["**".to_string()]));
    }

    #[test]
    fn roles_round_trip_and_name_peps() {
        for r in [
            Role::Admin,
            Role::Workflow,
            Role::Auditor,
            Role::Device,
            Role::Service,
        ] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        let dev = Principal {
            name: "ws-07".into(),
            role: Role::Device,
            serial: "01".into(),
        };
        assert_eq!(dev.pep_id().as_deref(), Some("mount:ws-07"));
        let wf = Principal {
            role: Role::Workflow,
            ..dev
        };
        assert_eq!(wf.pep_id(), None);
        assert_eq!(wf.label(), "workflow:ws-07");
    }
}
