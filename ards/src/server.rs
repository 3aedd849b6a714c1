//! Serving the ARDS router over TLS 1.3 on the shared accept loop (`authz::listener`), and the
//! service's self-signed certificate, created in the data directory on first start and reused
//! after.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::Router;
use tokio::net::TcpListener;

/// Failures while preparing or starting the TLS listener.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ards(#[from] crate::error::ArdsError),
}

/// The service certificate and key (PEM) and where they live.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_path: PathBuf,
    pub cert_pem: String,
    /// Wiped from memory on drop; never printed.
    key_pem: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_path", &self.cert_path)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// File names inside the data directory.
pub const CERT_FILE: &str = "ards-cert.pem";
pub const KEY_FILE: &str = "ards-key.pem";

/// Loads `DIR/ards-cert.pem` + `DIR/ards-key.pem`, or creates them (self-signed for `names`
/// plus `localhost`, `127.0.0.1` and `::1`; key file mode 0600) on first start.
pub fn load_or_create_identity(dir: &Path, names: &[String]) -> Result<TlsIdentity, ServeError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ServeError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    authz::statedir::private_file(&key_path).map_err(|e| ServeError::Ards(e.into()))?;
    if cert_path.exists() && key_path.exists() {
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem =
            zeroize::Zeroizing::new(std::fs::read_to_string(&key_path).map_err(io(&key_path))?);
        return Ok(TlsIdentity {
            cert_path,
            cert_pem,
            key_pem,
        });
    }
    let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for n in names {
        if !all.contains(n) {
            all.push(n.clone());
        }
    }
    let (cert_pem, key_pem) =
        authz::tls::self_signed(&all).map_err(|e| ServeError::Tls(e.to_string()))?;
    let key_pem = zeroize::Zeroizing::new(key_pem);
    csap_base::files::write_secret(&key_path, key_pem.as_bytes()).map_err(io(&key_path))?;
    std::fs::write(&cert_path, cert_pem.as_bytes()).map_err(io(&cert_path))?;
    Ok(TlsIdentity {
        cert_path,
        cert_pem,
        key_pem,
    })
}

/// A running TLS server. Dropping it (or calling [`ServerHandle::shutdown`]) stops accepting
/// and closes every open connection, long polls included.
#[derive(Debug)]
pub struct ServerHandle {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops the server and waits until it has.
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves `router` over TLS with `identity` (TLS 1.3 only, HTTP/1.1),
/// authenticating clients with `auth` (every request carries the caller's certificate).
pub async fn serve_tls(
    addr: &str,
    identity: &TlsIdentity,
    router: Router,
    auth: &authz::tls::ClientAuth,
) -> Result<ServerHandle, ServeError> {
    let mut config = authz::tls::mtls_server_config(&identity.cert_pem, &identity.key_pem, auth)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    // This loop speaks HTTP/1.1 only; never let ALPN pick h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    let admission = authz::listener::DirectoryAdmission(Some(auth.handle()));
    let task = tokio::spawn(authz::listener::serve(
        listener,
        config,
        router,
        authz::listener::ServeOptions::default(),
        admission,
        std::future::pending(),
    ));
    Ok(ServerHandle { local_addr, task })
}
