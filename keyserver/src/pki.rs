//! The key server's PKI: its CA, server and client certificates, and the rustls server
//! configuration (TLS 1.3 only, ring provider, mTLS with a revocation-checking verifier).
//! Identity directories and CSRs are `csap-identity`'s (what clients use), re-exported here.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use zeroize::Zeroizing;

use crate::fsutil;

pub use csap_identity::pki::{
    new_csr, Identity, PkiError, CA_FILE, CERT_FILE, HPKE_KEY_FILE, KEY_FILE, SERVER_KEY_FILE,
};
pub use csap_identity::tls::provider;

/// Who a certificate belongs to: the control plane's roles (one vocabulary for every service).
pub use authz::principal::Role as PrincipalKind;

/// A client certificate the server issued, as remembered for handshake checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub kind: PrincipalKind,
    pub serial: String,
    pub revoked: bool,
}

/// In-memory mirror of the `certs` table, consulted on every handshake (the verifier runs on
/// the async runtime and must not block on SQLite). Admin handlers update it right after the
/// database commit, so a revocation is seen by the next handshake.
#[derive(Debug, Default)]
pub struct PrincipalRegistry {
    by_serial: RwLock<HashMap<String, Principal>>,
}

impl PrincipalRegistry {
    pub fn new(principals: impl IntoIterator<Item = Principal>) -> Self {
        let map = principals
            .into_iter()
            .map(|p| (p.serial.clone(), p))
            .collect();
        PrincipalRegistry {
            by_serial: RwLock::new(map),
        }
    }
    pub fn upsert(&self, p: Principal) {
        let mut map = self.by_serial.write().unwrap_or_else(|e| e.into_inner());
        map.insert(p.serial.clone(), p);
    }
    /// Marks every certificate of `name` (of `kind`) revoked; returns how many were active.
    pub fn revoke_name(&self, kind: PrincipalKind, name: &str) -> usize {
        let mut map = self.by_serial.write().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for p in map.values_mut() {
            if p.kind == kind && p.name == name && !p.revoked {
                p.revoked = true;
                n += 1;
            }
        }
        n
    }
    /// Takes in the certificates as the store now lists them (another replica issued or
    /// revoked some). A revocation seen here stays, whatever the list says: a list read before
    /// a revocation committed cannot bring the certificate back.
    pub fn merge(&self, principals: impl IntoIterator<Item = Principal>) {
        let mut map = self.by_serial.write().unwrap_or_else(|e| e.into_inner());
        for mut p in principals {
            if map.get(&p.serial).is_some_and(|known| known.revoked) {
                p.revoked = true;
            }
            map.insert(p.serial.clone(), p);
        }
    }
    pub fn get(&self, serial: &str) -> Option<Principal> {
        let map = self.by_serial.read().unwrap_or_else(|e| e.into_inner());
        map.get(serial).cloned()
    }
    /// The active principal for a presented certificate: known serial, not revoked, and the
    /// certificate's common name equal to the recorded name.
    pub fn active(&self, info: &CertInfo) -> Option<Principal> {
        self.get(&info.serial)
            .filter(|p| !p.revoked && p.name == info.common_name)
    }
}

impl authz::principal::Principals for PrincipalRegistry {
    fn principal(&self, serial: &str, common_name: &str) -> Option<authz::principal::Principal> {
        self.get(serial)
            .filter(|p| !p.revoked && p.name == common_name)
            .map(|p| authz::principal::Principal {
                name: p.name,
                role: p.kind,
                serial: p.serial,
            })
    }

    fn is_revoked(&self, serial: &str) -> bool {
        self.get(serial).is_some_and(|p| p.revoked)
    }
}

pub use authz::principal::CertInfo;

pub fn parse_cert(der: &[u8]) -> Result<CertInfo, PkiError> {
    authz::principal::parse_cert(der).map_err(PkiError::BadCertificate)
}

/// 16 random serial bytes, positive and without a leading zero so the DER bytes equal them.
fn random_serial() -> Result<Vec<u8>, PkiError> {
    let mut s = [0u8; 16];
    crate::keys::random_bytes(&mut s).map_err(|_| PkiError::Random)?;
    s[0] = (s[0] & 0x7f) | 0x40;
    Ok(s.to_vec())
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that are a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// The certificate authority of one key server (ca.pem + ca.key in the data dir).
pub struct Ca {
    /// The CA certificate re-created from ca.pem: same subject and key, used as the issuer.
    issuer: rcgen::Certificate,
    key: KeyPair,
    pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ca { key: <redacted> }")
    }
}

impl Ca {
    /// Loads `dir/ca.pem` and `dir/ca.key`, creating both on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        if cert_path.exists() && key_path.exists() {
            let pem = std::fs::read_to_string(&cert_path).map_err(PkiError::at(&cert_path))?;
            let key_pem = Zeroizing::new(
                std::fs::read_to_string(&key_path).map_err(PkiError::at(&key_path))?,
            );
            let key = KeyPair::from_pem(&key_pem)?;
            let params = CertificateParams::from_ca_cert_pem(&pem)?;
            let issuer = params.self_signed(&key)?;
            return Ok(Ca { issuer, key, pem });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "csap key server CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        validity(&mut params, 3650);
        let issuer = params.self_signed(&key)?;
        let pem = issuer.pem();
        fsutil::write_private(&key_path, key.serialize_pem().as_bytes())
            .map_err(PkiError::at(&key_path))?;
        fsutil::write_public(&cert_path, pem.as_bytes()).map_err(PkiError::at(&cert_path))?;
        Ok(Ca { issuer, key, pem })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Issues the TLS server certificate for `names` (DNS names or IP addresses).
    pub fn issue_server(&self, names: &[String]) -> Result<(String, Zeroizing<String>), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "csap key server");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        validity(&mut params, 825);
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
    }

    /// Issues a client certificate for `name` over `public_key`; returns (pem, serial hex).
    /// The subject CN and the SAN are the name; the server decides them, not the requester.
    pub fn issue_client(
        &self,
        name: &str,
        public_key: &impl PublicKeyData,
    ) -> Result<(String, String), PkiError> {
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        validity(&mut params, 365);
        let cert = params.signed_by(public_key, &self.issuer, &self.key)?;
        Ok((cert.pem(), hex::encode(serial)))
    }

    /// Issues a client certificate for a CSR, taking only its (self-signed, checked) public key.
    pub fn issue_client_from_csr(
        &self,
        name: &str,
        csr_pem: &str,
    ) -> Result<(String, String), PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        self.issue_client(name, &csr.public_key)
    }

    /// Creates a key pair and certificate locally (for the admin identity at first start).
    pub fn issue_client_with_key(
        &self,
        name: &str,
    ) -> Result<(String, Zeroizing<String>, String), PkiError> {
        let key = KeyPair::generate()?;
        let (cert, serial) = self.issue_client(name, &key)?;
        Ok((cert, Zeroizing::new(key.serialize_pem()), serial))
    }
}

#[cfg(test)]
fn certs_from_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what,
            detail: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// Called (without blocking) when a certificate that chains to the CA is refused.
pub use authz::tls::RefusalHook;

/// The server's rustls configuration: TLS 1.3, mandatory client certificates from our CA checked
/// against the registry, no session resumption (so every connection re-runs the revocation check).
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    directory: Arc<dyn authz::principal::Directory>,
    on_refusal: Option<RefusalHook>,
) -> Result<rustls::ServerConfig, PkiError> {
    let auth = authz::tls::ClientAuth {
        ca_pem: ca_pem.to_string(),
        directory,
        allow_anonymous: false,
        on_refusal,
    };
    authz::tls::mtls_server_config(cert_pem, key_pem, &auth).map_err(|e| PkiError::Pem {
        what: "server TLS configuration",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_issued_cert_parses() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let ca2 = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.pem(), ca2.pem());
        let (csr, _key) = new_csr("ws-07").unwrap();
        let (pem, serial) = ca2.issue_client_from_csr("ws-07", &csr).unwrap();
        let der = certs_from_pem(&pem, "t").unwrap().remove(0);
        let info = parse_cert(&der).unwrap();
        assert_eq!(info.common_name, "ws-07");
        assert_eq!(info.serial, serial);
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }
}
