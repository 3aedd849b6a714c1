//! The key server's PKI as its clients see it: the files of an identity directory (what
//! enrolment writes for a device or a principal), loading and saving one, and, with the `csr`
//! feature, the key pair and certificate signing request an enrolment starts from. Issuing
//! certificates (the CA) is the key server's.

use std::fmt;
use std::path::Path;

use csap_base::files;
use zeroize::Zeroizing;

/// File names inside an identity directory (admin or device).
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
pub const CA_FILE: &str = "ca.pem";
/// The device's X25519 (HPKE) private key for offline licenses, hex; mode 0600.
pub const HPKE_KEY_FILE: &str = "hpke.key";
/// The server's Ed25519 license-signing public key, hex.
pub const SERVER_KEY_FILE: &str = "server.pub";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[cfg(feature = "csr")]
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("bad PEM in {what}: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("certificate does not parse: {0}")]
    BadCertificate(String),
    #[error("system random number generator failed")]
    Random,
}

impl PkiError {
    /// The error for an I/O failure on `path`.
    pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
        move |source| PkiError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// A new key pair and a CSR for it (the private key never leaves the enrolling machine).
#[cfg(feature = "csr")]
pub fn new_csr(name: &str) -> Result<(String, Zeroizing<String>), PkiError> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, Zeroizing::new(key.serialize_pem())))
}

/// A client identity: certificate, private key and the CA that the server certificate chains to.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
    pub ca_pem: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads cert.pem, key.pem and ca.pem from `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read_to_string(&p).map_err(PkiError::at(&p))
        };
        Ok(Identity {
            cert_pem: read(CERT_FILE)?,
            key_pem: Zeroizing::new(read(KEY_FILE)?),
            ca_pem: read(CA_FILE)?,
        })
    }

    /// Writes the identity into `dir` (created 0700; key.pem 0600).
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        files::create_private_dir(dir).map_err(PkiError::at(dir))?;
        let w = |f: &str, data: &[u8], private: bool| {
            let p = dir.join(f);
            let r = if private {
                files::write_secret(&p, data)
            } else {
                files::write_public(&p, data)
            };
            r.map_err(PkiError::at(&p))
        };
        w(CERT_FILE, self.cert_pem.as_bytes(), false)?;
        w(KEY_FILE, self.key_pem.as_bytes(), true)?;
        w(CA_FILE, self.ca_pem.as_bytes(), false)
    }

    /// The rustls client configuration presenting this identity and trusting only its CA
    /// (TLS 1.3, ALPN http/1.1: the one client config of every csap service).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, PkiError> {
        let identity = crate::tls::ClientIdentity {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        };
        crate::tls::client_config_with(&self.ca_pem, Some(&identity)).map_err(|e| PkiError::Pem {
            what: "client identity",
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_identity_directory_round_trips_with_its_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("device");
        let identity = Identity {
            cert_pem: "CERT".into(),
            key_pem: Zeroizing::new("KEY".into()),
            ca_pem: "CA".into(),
        };
        identity.save(&at).unwrap();
        let mode = |f: &str| std::fs::metadata(at.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(KEY_FILE), 0o600);
        assert_eq!(mode(CERT_FILE), 0o644);
        assert_eq!(
            std::fs::metadata(&at).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let back = Identity::load(&at).unwrap();
        assert_eq!(
            (
                back.cert_pem.as_str(),
                back.key_pem.as_str(),
                back.ca_pem.as_str()
            ),
            ("CERT", "KEY", "CA")
        );
        assert!(!format!("{back:?}").contains("KEY\""));
        // Not PEM: refused when the TLS configuration is made, naming what was wrong.
        assert!(matches!(back.client_config(), Err(PkiError::Pem { .. })));
        std::fs::remove_file(at.join(CA_FILE)).unwrap();
        assert!(
            matches!(Identity::load(&at), Err(PkiError::Io { path, .. }) if path.ends_with(CA_FILE))
        );
    }
}
