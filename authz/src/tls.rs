//! Shared TLS plumbing for every csap service: self-signed certificates (rcgen), rustls server
//! configs (ring provider, TLS 1.3 only; the client side is `csap-identity`'s, re-exported),
//! client-certificate verification against the installation's CA and its [`Principals`];
//! [`serve`] runs an axum router on the one accept loop ([`crate::listener`]).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use zeroize::Zeroizing;

use crate::principal::{parse_cert, CertInfo, Directory, DirectoryHandle, PeerCert};

// The client side (configs, identities, the ring provider) is csap-identity's: mounts and
// other clients link no server for it.
use csap_identity::tls::{certs, provider, root_store};
pub use csap_identity::tls::{client_config, client_config_with, ClientIdentity, TlsError};

/// A self-signed certificate for `names` (DNS names or IP addresses). Returns (cert, key) PEM.
pub fn self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((ck.cert.pem(), ck.key_pair.serialize_pem()))
}

/// Server config: TLS 1.3 only, no client authentication, ALPN http/1.1.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<rustls::ServerConfig, TlsError> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs(cert_pem)?, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Called (without blocking) when a certificate that chains to the CA is refused: with the
/// certificate's fields and whether it was revoked (true) or unknown.
pub type RefusalHook = Arc<dyn Fn(&CertInfo, bool) + Send + Sync>;

/// How a listener authenticates its clients: certificates chaining to `ca_pem` whose serial
/// and name are active in `directory`.
#[derive(Clone)]
pub struct ClientAuth {
    pub ca_pem: String,
    pub directory: Arc<dyn Directory>,
    /// Let connections without any certificate through the handshake (their requests carry no
    /// [`PeerCert`], so only routes that need no caller answer them: health).
    pub allow_anonymous: bool,
    pub on_refusal: Option<RefusalHook>,
}

impl ClientAuth {
    /// The handle requests carry, for [`crate::principal::Caller`].
    pub fn handle(&self) -> DirectoryHandle {
        DirectoryHandle(Arc::clone(&self.directory))
    }
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("allow_anonymous", &self.allow_anonymous)
            .finish_non_exhaustive()
    }
}

/// Chain verification by webpki, then the principals check: a certificate that chains to the
/// CA but whose serial is unknown, revoked, or whose name differs from the record is refused
/// in the handshake.
struct PrincipalVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    principals: Arc<dyn Directory>,
    on_refusal: Option<RefusalHook>,
}

impl std::fmt::Debug for PrincipalVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrincipalVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for PrincipalVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = parse_cert(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self
            .principals
            .principal(&info.serial, &info.common_name)
            .is_some()
        {
            return Ok(verified);
        }
        let revoked = self.principals.is_revoked(&info.serial);
        tracing::info!(serial = %info.serial, name = %info.common_name, revoked, "client certificate refused");
        if let Some(hook) = &self.on_refusal {
            hook(&info, revoked);
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server config with client authentication: TLS 1.3, certificates from `auth.ca_pem` checked
/// against `auth.principals`, no session resumption (a resumed session would skip the check,
/// so a revocation takes effect on the next connection).
pub fn mtls_server_config(
    cert_pem: &str,
    key_pem: &str,
    auth: &ClientAuth,
) -> Result<rustls::ServerConfig, TlsError> {
    let roots = Arc::new(root_store(&auth.ca_pem)?);
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider());
    let builder = if auth.allow_anonymous {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    let inner = builder
        .build()
        .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
    let verifier = Arc::new(PrincipalVerifier {
        inner,
        principals: Arc::clone(&auth.directory),
        on_refusal: auth.on_refusal.clone(),
    });
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem)?, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The verified client certificate of an accepted connection, if it presented one.
pub fn peer_cert(conn: &rustls::ServerConnection) -> Option<PeerCert> {
    // Only certificates the verifier accepted get here: the handshake failed otherwise.
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| parse_cert(der).ok())
        .map(PeerCert)
}

/// Loads `tls-cert.pem`/`tls-key.pem` from `dir`, creating a self-signed pair for `names` on
/// first use (key file 0600). Returns (cert, key) PEM.
pub fn load_or_create(
    dir: &Path,
    names: &[String],
) -> Result<(String, Zeroizing<String>), TlsError> {
    let cert_path = dir.join("tls-cert.pem");
    let key_path = dir.join("tls-key.pem");
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| TlsError::Io { path, source }
    };
    if cert_path.exists() && key_path.exists() {
        let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = Zeroizing::new(std::fs::read_to_string(&key_path).map_err(io(&key_path))?);
        return Ok((cert, key));
    }
    let (cert, key) = self_signed(names)?;
    let key = Zeroizing::new(key);
    csap_base::files::write_secret(&key_path, key.as_bytes()).map_err(io(&key_path))?;
    csap_base::files::write_public(&cert_path, cert.as_bytes()).map_err(io(&cert_path))?;
    Ok((cert, key))
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, through the one accept loop
/// ([`crate::listener::serve`]) with default timeouts. With `directory`, every request carries
/// the connection's verified [`PeerCert`] (when it presented one) and the [`DirectoryHandle`],
/// for [`crate::principal::Caller`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: rustls::ServerConfig,
    app: axum::Router,
    directory: Option<DirectoryHandle>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    crate::listener::serve(
        listener,
        config,
        app,
        crate::listener::ServeOptions::default(),
        crate::listener::DirectoryAdmission(directory),
        shutdown,
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build_from_self_signed_pair() {
        let (cert, key) = self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        server_config(&cert, &key).unwrap();
        client_config(&cert).unwrap();
        assert!(matches!(client_config("nope"), Err(TlsError::Pem(_))));
        assert!(server_config(&cert, "nope").is_err());
    }

    /// A key file left looser (an older version, a copied data dir) or a symlink planted at its
    /// name must not receive a new private key: the old writer truncated the file in place,
    /// keeping its 0644 mode, and followed the symlink.
    #[test]
    fn a_new_key_never_goes_into_a_loose_file_or_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        let key_path = dir.path().join("tls-key.pem");
        std::fs::write(&key_path, b"stale").unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_, key) = load_or_create(dir.path(), &names).unwrap();
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the new key is not readable by others");
        assert_eq!(std::fs::read_to_string(&key_path).unwrap(), *key);

        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"not a key").unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::remove_file(&key_path).unwrap();
        std::fs::remove_file(dir.path().join("tls-cert.pem")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &key_path).unwrap();
        load_or_create(dir.path(), &names).unwrap();
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"not a key");
        assert!(!std::fs::symlink_metadata(&key_path)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn load_or_create_reuses_files() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        let (c1, k1) = load_or_create(dir.path(), &names).unwrap();
        let (c2, k2) = load_or_create(dir.path(), &names).unwrap();
        assert_eq!(c1, c2);
        assert_eq!(*k1, *k2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("tls-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
