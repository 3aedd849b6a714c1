//! PostgreSQL plumbing shared by the services' PostgreSQL engines (authz, ARDS, the key
//! server): the connection target (a `postgres://` URL, optional TLS roots), one pool per
//! service in that service's own schema, versioned migrations, advisory locks and a
//! LISTEN/NOTIFY subscription that survives reconnects.
//!
//! One database can hold every service: each service's tables live in a schema named after it
//! (`authz`, `ards`, `keyserver`), which its pool puts first on `search_path`, so no two
//! services' tables can clash and each migrates on its own. Replicas of a service share its
//! schema.
//!
//! **Migrations**: a service lists its PostgreSQL steps, append only, next to its SQLite steps;
//! `SCHEMA.schema_version` records how many ran. All pending steps run in one transaction under
//! the service's advisory lock, so two replicas starting at once migrate once, and a crash
//! leaves the schema at the version before. A schema newer than this build is refused.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Config, NoTls};

/// Where a PostgreSQL engine connects.
#[derive(Clone)]
pub struct Target {
    config: Config,
    /// TLS verified against the `--store-ca` roots; without it the connection is plain TCP
    /// (or a Unix socket).
    tls: Option<Arc<rustls::ClientConfig>>,
    shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{0}")]
    Config(String),
    #[error("database schema version {0} is newer than this build understands")]
    FutureSchema(i64),
}

impl Target {
    /// Parses a `postgres://user[:password]@host[:port]/database[?options]` URL (libpq's
    /// syntax). With `ca` (a PEM file of the server's CA), the connection uses TLS verified
    /// against it; add `sslmode=require` to the URL to refuse a server without TLS.
    pub fn parse(url: &str, ca: Option<&Path>) -> Result<Target, PgError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(PgError::Config(format!(
                "{:?} is not a PostgreSQL URL: give postgres://USER@HOST:PORT/DATABASE",
                redact(url)
            )));
        }
        let config = Config::from_str(url)
            .map_err(|e| PgError::Config(format!("PostgreSQL URL {:?}: {e}", redact(url))))?;
        if config.get_dbname().is_none() {
            return Err(PgError::Config(format!(
                "PostgreSQL URL {:?} names no database: add /DATABASE",
                redact(url)
            )));
        }
        let tls = match ca {
            None => None,
            Some(path) => Some(Arc::new(tls_config(path)?)),
        };
        Ok(Target {
            config,
            tls,
            shown: redact(url),
        })
    }

    /// The URL without its password, for logs and errors.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A pool of at most `size` connections whose sessions see `schema` first.
    pub fn pool(&self, schema: &str, size: usize) -> Result<Pool, PgError> {
        let mut config = self.config.clone();
        config.options(format!("-c search_path={schema}"));
        config.application_name(format!("csap-{schema}"));
        config.connect_timeout(Duration::from_secs(10));
        let mgr_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &self.tls {
            None => Manager::from_config(config, NoTls, mgr_config),
            Some(tls) => Manager::from_config(config, connector(tls), mgr_config),
        };
        Pool::builder(manager)
            .max_size(size.max(1))
            .wait_timeout(Some(Duration::from_secs(30)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| PgError::Config(format!("database pool: {e}")))
    }

    /// Subscribes to `channel`: every notification's payload, and [`Notice::Resync`] after each
    /// (re)connection, when notifications may have been missed. A dedicated connection, retried
    /// every second while the database is unreachable; the task ends when the receiver drops.
    pub fn listen(&self, channel: &'static str) -> mpsc::UnboundedReceiver<Notice> {
        let (tx, rx) = mpsc::unbounded_channel();
        let target = self.clone();
        tokio::spawn(async move {
            while !tx.is_closed() {
                if let Err(e) = target.listen_once(channel, &tx).await {
                    tracing::warn!(channel, error = %e, "database notifications interrupted; reconnecting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        rx
    }

    async fn listen_once(
        &self,
        channel: &str,
        tx: &mpsc::UnboundedSender<Notice>,
    ) -> Result<(), PgError> {
        match &self.tls {
            None => {
                let (client, conn) = self.config.connect(NoTls).await?;
                pump(client, conn, channel, tx).await
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(connector(tls)).await?;
                pump(client, conn, channel, tx).await
            }
        }
    }
}

/// What a [`Target::listen`] subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A notification's payload.
    Payload(String),
    /// The subscription (re)connected: anything may have changed unseen; read afresh.
    Resync,
}

async fn pump<S, T>(
    client: tokio_postgres::Client,
    mut conn: tokio_postgres::Connection<S, T>,
    channel: &str,
    tx: &mpsc::UnboundedSender<Notice>,
) -> Result<(), PgError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The connection must be polled for `LISTEN` to complete: drive both at once.
    let statement = format!("LISTEN {channel}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            done = &mut listen, if !listening => {
                done?;
                listening = true;
                if tx.send(Notice::Resync).is_err() {
                    return Ok(());
                }
            }
            msg = std::future::poll_fn(|cx| conn.poll_message(cx)) => match msg {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(Notice::Payload(n.payload().to_owned())).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(PgError::Config("the server closed the connection".into())),
            },
            _ = tx.closed() => return Ok(()),
        }
    }
}

fn connector(tls: &rustls::ClientConfig) -> tokio_postgres_rustls::MakeRustlsConnect {
    tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone())
}

/// TLS that trusts only the CA certificates in `ca`, and says so when it refuses a server.
fn tls_config(ca: &Path) -> Result<rustls::ClientConfig, PgError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(read_roots(ca)?);
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| PgError::Config(format!("database CA {}: {e}", ca.display())))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NamedCa {
            webpki,
            ca: ca.display().to_string(),
        }))
        .with_no_client_auth())
}

/// rustls's own verification, with a refusal naming the CA file it checked against: the bare
/// `invalid peer certificate: UnknownIssuer` reaches the operator through three layers of
/// pool and driver errors and does not say which flag to look at.
#[derive(Debug)]
struct NamedCa {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    ca: String,
}

impl rustls::client::danger::ServerCertVerifier for NamedCa {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| {
                rustls::Error::General(format!(
                    "the database server's certificate is refused by --store-ca {} ({e})",
                    self.ca
                ))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn read_roots(path: &Path) -> Result<rustls::RootCertStore, PgError> {
    let bad = |why: String| PgError::Config(format!("database CA {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&pem).map_err(bad)? {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(roots)
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))
}

/// `url` with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Runs `steps` not yet run in `schema` (created if missing), all in one transaction under the
/// schema's advisory lock. Returns the version reached.
pub async fn migrate(pool: &Pool, schema: &str, steps: &[&str]) -> Result<i64, PgError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(schema)])
        .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (version BIGINT NOT NULL);"
    ))
    .await?;
    let current: i64 = match tx
        .query_opt(&format!("SELECT version FROM {schema}.schema_version"), &[])
        .await?
    {
        Some(row) => row.get(0),
        None => {
            tx.execute(
                &format!("INSERT INTO {schema}.schema_version(version) VALUES (0)"),
                &[],
            )
            .await?;
            0
        }
    };
    let target = steps.len() as i64;
    if current > target {
        return Err(PgError::FutureSchema(current));
    }
    for step in &steps[current as usize..] {
        tx.batch_execute(step).await?;
    }
    tx.execute(
        &format!("UPDATE {schema}.schema_version SET version = $1"),
        &[&target],
    )
    .await?;
    tx.commit().await?;
    Ok(target)
}

/// The advisory lock key of `name` (FNV-1a): every engine that serialises one kind of write
/// across replicas takes `pg_advisory_xact_lock(lock_key(NAME))` first in its transaction.
pub const fn lock_key(name: &str) -> i64 {
    let bytes = name.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash as i64
}

impl Engine {
    /// PostgreSQL at `target`.
    pub fn postgres(target: Target) -> Engine {
        Engine::Postgres(Box::new(target))
    }
}

/// Where a service keeps its state: SQLite under its data directory (the default) or a
/// PostgreSQL database shared by its replicas.
#[derive(Debug, Clone, Default)]
pub enum Engine {
    #[default]
    Sqlite,
    Postgres(Box<Target>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        assert_eq!(
            redact("postgres://csap:s3cret@db:5432/csap"),
            "postgres://csap:***@db:5432/csap"
        );
        assert_eq!(redact("postgres://csap@db/csap"), "postgres://csap@db/csap");
        let t = Target::parse("postgres://csap:s3cret@db:5432/csap", None).unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(Target::parse("mysql://db/csap", None).is_err());
        let e = Target::parse("postgres://csap:pw@db:5432", None).unwrap_err();
        assert!(e.to_string().contains("names no database"), "{e}");
        assert!(!e.to_string().contains("pw@"), "{e}");
    }

    #[test]
    fn lock_keys_differ_per_name() {
        assert_ne!(lock_key("ards"), lock_key("authz"));
        assert_eq!(lock_key("ards"), lock_key("ards"));
    }
}
