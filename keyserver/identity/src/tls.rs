//! The TLS client side of every csap connection: rustls with the ring provider, TLS 1.3 only,
//! ALPN http/1.1, trusting exactly the given certificates (the installation's CA or a
//! self-signed service certificate) and presenting a client certificate when given one. The
//! servers' side (certificate issuance, client verification, accept loops) is authz's `tls`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("TLS configuration rejected: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The ring provider restricted to what csap uses everywhere.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in `pem`; at least one.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// A root store of exactly the certificates in `trusted_pem`.
pub fn root_store(trusted_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(trusted_pem)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Config(format!("trusted certificate: {e}")))?;
    }
    Ok(roots)
}

/// Client config trusting exactly the given certificate(s) (a self-signed service cert or a CA).
pub fn client_config(trusted_cert_pem: &str) -> Result<rustls::ClientConfig, TlsError> {
    client_config_with(trusted_cert_pem, None)
}

/// A client certificate and key (PEM) from the installation's CA: how a caller proves who it
/// is to authz, ARDS and the key server.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// Reads `cert.pem` and `key.pem` from an identity directory.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read_to_string(&p).map_err(|source| TlsError::Io {
                path: p.display().to_string(),
                source,
            })
        };
        Ok(ClientIdentity {
            cert_pem: read("cert.pem")?,
            key_pem: Zeroizing::new(read("key.pem")?),
        })
    }
}

/// Client config trusting `trusted_cert_pem`, presenting `identity` when given.
pub fn client_config_with(
    trusted_cert_pem: &str,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(root_store(trusted_cert_pem)?);
    let mut cfg = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
                .map_err(|e| TlsError::Pem(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(certs(&id.cert_pem)?, key)
                .map_err(|e| TlsError::Config(e.to_string()))?
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
