//! The one HTTPS accept loop of every csap service (authz, ARDS, the key server): TLS 1.3 by
//! rustls, HTTP/1.1 by hyper, one task per connection, and the mTLS hook — an [`Admission`]
//! that looks at each connection's verified client certificate once and decides what every
//! request on it carries (or closes the connection before a request is read).
//!
//! Connection tasks live in a `JoinSet` owned by the loop: when the loop ends (shutdown, or
//! its task is aborted) every open connection ends with it, long polls included.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Extensions;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::principal::{CertInfo, DirectoryHandle, PeerCert};

/// Timeouts of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// A client that has not finished its TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// A connection that sends no complete request header for this long is closed (idle
    /// keep-alive connections and slow-loris clients alike).
    pub header_read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// What a connection's requests carry, put into each request's extensions.
pub trait Attach: Clone + Send + Sync + 'static {
    fn attach(&self, extensions: &mut Extensions);
}

/// The mTLS hook: decides, once per connection, from its verified client certificate.
pub trait Admission: Send + Sync + 'static {
    type Attached: Attach;
    /// `cert` passed the TLS verifier (or is `None` where anonymous connections are allowed):
    /// what its requests carry, or `None` to close the connection.
    fn admit(&self, cert: Option<&CertInfo>) -> Option<Self::Attached>;
    /// A handshake failed: for the audit trail of services that record refused connections.
    fn handshake_failed(&self, _error: &std::io::Error) {}
}

/// What authz and ARDS attach: their directory and the caller's certificate, which
/// [`crate::principal::Caller`] resolves per request (so a revocation also ends connections
/// opened before it).
#[derive(Clone)]
pub struct CallerContext {
    pub directory: Option<DirectoryHandle>,
    pub cert: Option<PeerCert>,
}

impl Attach for CallerContext {
    fn attach(&self, extensions: &mut Extensions) {
        if let Some(d) = &self.directory {
            extensions.insert(d.clone());
            if let Some(c) = &self.cert {
                extensions.insert(c.clone());
            }
        }
    }
}

/// Admits every connection the TLS verifier let through and attaches [`CallerContext`].
#[derive(Clone)]
pub struct DirectoryAdmission(pub Option<DirectoryHandle>);

impl Admission for DirectoryAdmission {
    type Attached = CallerContext;
    fn admit(&self, cert: Option<&CertInfo>) -> Option<CallerContext> {
        Some(CallerContext {
            directory: self.0.clone(),
            cert: cert.cloned().map(PeerCert),
        })
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves. A failed or slow handshake
/// ends only its own connection; a failed `accept` (EMFILE) is retried after a pause.
pub async fn serve<A: Admission>(
    listener: TcpListener,
    config: rustls::ServerConfig,
    app: axum::Router,
    options: ServeOptions,
    admission: A,
    shutdown: impl Future<Output = ()> + Send,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let admission = Arc::new(admission);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let acceptor = acceptor.clone();
                    let app = app.clone();
                    let admission = Arc::clone(&admission);
                    conns.spawn(async move {
                        let _ = tcp.set_nodelay(true);
                        let tls = match tokio::time::timeout(
                            options.handshake_timeout,
                            acceptor.accept(tcp),
                        )
                        .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                admission.handshake_failed(&e);
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let cert = crate::tls::peer_cert(tls.get_ref().1);
                        let Some(attached) = admission.admit(cert.as_ref().map(|c| &c.0)) else {
                            tracing::debug!(%peer, "connection refused by its admission");
                            return;
                        };
                        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
                            app,
                            move |mut req: hyper::Request<hyper::body::Incoming>| {
                                attached.attach(req.extensions_mut());
                                req
                            },
                        ));
                        let mut builder = hyper::server::conn::http1::Builder::new();
                        builder
                            .timer(TokioTimer::new())
                            .header_read_timeout(options.header_read_timeout);
                        if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}
