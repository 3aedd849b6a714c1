//! `csap server`: authz, ARDS and the key server in one process — the embedded default.
//!
//! Each service keeps its own state under `DATA_DIR` (`authz/`, `ards/`, `keyserver/`: SQLite
//! files, keys, certificates) and its own TLS listener on loopback-derived ports, so the three
//! can later be split onto separate hosts without changing any client. What the composition adds:
//! - the key server starts first: its CA and directory authenticate every caller of authz and
//!   ARDS too (client certificates from the installation's CA, roles from its registry), and
//!   authz checks the names in requests against its users, devices and application builds;
//! - authz delivers rules to the in-process ARDS directly (no HTTP hop), and ARDS trusts
//!   authz's issuer key without anyone copying `issuer.pub`;
//! - the key server is an ARDS policy enforcement point (`keyserver`) that subscribes over
//!   HTTPS with its own service certificate like any remote PEP would, so the path exercised is
//!   the production one. Until that subscription exists it holds no rules: it denies.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use authz::wire::{BoxFuture, PublishRules, Revocation, RuleSink, SinkError};
use clap::Args;
use tokio::sync::watch;
use zeroize::Zeroizing;

/// The first port: authz listens on it, ARDS on the next, the key server on the one after.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";

#[derive(Args)]
pub struct ServerArgs {
    /// Directory for every service's state (created if missing; reused on restart).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// First of three consecutive ports: authz on PORT, ARDS on PORT+1, key server on PORT+2.
    /// Port 0 picks three free ports.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// The key server's per-device license limit: RATE licenses per second, bursts of up to
    /// BURST (default 200/400). A batch license counts one per asset.
    #[arg(long, value_name = "RATE/BURST", value_parser = parse_rate)]
    pub device_rate: Option<keyserver::ratelimit::RateLimit>,
    /// Plain-HTTP listener for /metrics (Prometheus, all three services), /healthz and
    /// /readyz; `off` to serve none. Default: 127.0.0.1 on PORT+3 (loopback: it has no
    /// authentication).
    #[arg(long, value_name = "ADDR|off")]
    pub metrics_listen: Option<authz::ops::ListenChoice>,
    /// Read settings from this TOML file: its keys are these long flags without the dashes
    /// (`data-dir`, `listen`, `device-rate`, `metrics-listen`, `store`); flags given here win over it.
    /// Example: contrib/config/server.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run N replicas, each its own `csap server` process, on the one PostgreSQL --store
    /// (refused on SQLite), for tests and demos: replica 0 uses --data-dir and --listen,
    /// replica i DATA_DIR/replica-i and every port 10*i higher (PORT+10*i..PORT+10*i+3). Replica
    /// 0's CA, key-server keys and identities and authz's issuer key are copied to the others
    /// before they start. Prints every replica's URLs and the --server list of their key
    /// servers; SIGTERM or Ctrl-C stops them all; a replica that dies is reported, not
    /// restarted.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub replicas: u16,
    #[command(flatten)]
    pub store: crate::store_args::StoreArgs,
    #[command(flatten)]
    pub root_key: crate::root_key::RootKeyArgs,
}

/// Where the operations listener goes when `--metrics-listen` is not given: loopback, PORT+3.
pub fn default_metrics_listen(listen: SocketAddr) -> Result<SocketAddr> {
    let port = port_plus(listen, 3)?.port();
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// `RATE/BURST`, both positive numbers.
fn parse_rate(s: &str) -> Result<keyserver::ratelimit::RateLimit, String> {
    let positive = |v: &str| v.trim().parse::<f64>().ok().filter(|n| *n > 0.0);
    match s.split_once('/').map(|(r, b)| (positive(r), positive(b))) {
        Some((Some(rate), Some(burst))) => Ok(keyserver::ratelimit::RateLimit { rate, burst }),
        _ => Err(format!(
            "{s:?}: give RATE/BURST, two positive numbers (e.g. 200/400)"
        )),
    }
}

/// How to start the embedded services.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Root key of the key server as hex (`CSAP_ROOT_KEY`); `None` keeps it in a 0600 file.
    pub root_key_hex: Option<Zeroizing<String>>,
    /// The key server's per-device rate limit; `None` keeps its default (200/s, burst 400).
    pub device_rate: Option<keyserver::ratelimit::RateLimit>,
    /// The operations listener (/metrics, /healthz, /readyz); `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// Where authz, ARDS and the key server keep their state (SQLite under `data_dir` by
    /// default).
    pub store: authz::pg::Engine,
}

/// Delivers authz's signed rules and revocations straight into the in-process ARDS.
struct DirectSink(ards::Ards);

impl RuleSink for DirectSink {
    fn publish<'a>(&'a self, batch: &'a PublishRules) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            self.0
                .publish(batch.clone())
                .await
                .map(|_| ())
                .map_err(|e| SinkError::Unavailable(e.to_string()))
        })
    }
    fn revoke<'a>(&'a self, revocation: &'a Revocation) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            self.0
                .revoke(revocation.clone())
                .await
                .map(|_| ())
                .map_err(|e| SinkError::Unavailable(e.to_string()))
        })
    }
}

/// The three services, running on the current tokio runtime.
pub struct EmbeddedServer {
    pub authz_url: String,
    pub ards_url: String,
    pub keyserver_url: String,
    /// authz's TLS certificate (trust it with `--ca` / `CSAP_CA` for `csap request …`).
    pub authz_cert: PathBuf,
    /// ARDS's TLS certificate (trust it for remote PEPs and `csap authz serve --ards-ca`).
    pub ards_cert: PathBuf,
    /// The key server's admin identity (cert.pem, key.pem, ca.pem) for admin commands.
    pub admin_dir: PathBuf,
    /// authz's issuer public key file (ARDS and PEPs verify rules with it).
    pub issuer_pub: PathBuf,
    pub authz: Arc<authz::Authz>,
    /// The key server's subscription to ARDS (PEP `keyserver`).
    pub keyserver_rules: Arc<ards_client::RulesClient>,
    /// `http://ADDR` of the operations listener (/metrics, /healthz, /readyz), if one runs.
    pub metrics_url: Option<String>,
    ops: Option<authz::ops::OpsListener>,
    keyserver: keyserver::RunningServer,
    ards_server: ards::server::ServerHandle,
    authz_stop: watch::Sender<bool>,
    authz_task: tokio::task::JoinHandle<std::io::Result<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// One `csap server` per data directory (each service also locks its own subdirectory).
    _dir_lock: authz::statedir::DirLock,
}

fn port_plus(listen: SocketAddr, n: u16) -> Result<SocketAddr> {
    if listen.port() == 0 {
        return Ok(listen);
    }
    let port = listen.port().checked_add(n).with_context(|| {
        format!(
            "--listen port {} leaves no room for PORT+{n}",
            listen.port()
        )
    })?;
    Ok(SocketAddr::new(listen.ip(), port))
}

/// The host part of a URL for a bound address (the unspecified address is reached as loopback).
fn url_host(addr: SocketAddr) -> String {
    match addr.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    }
}

/// TLS names for the certificates: loopback always, plus the listen address when specific.
fn tls_names(listen: SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    let ip = listen.ip().to_string();
    if !listen.ip().is_unspecified() && !names.contains(&ip) {
        names.push(ip);
    }
    names
}

/// Where a service's store is, for errors: its SQLite directory or the database URL.
fn store_place(opts: &ServerOptions, sqlite_dir: &std::path::Path) -> String {
    match &opts.store {
        authz::pg::Engine::Sqlite => format!("SQLite in {}", sqlite_dir.display()),
        authz::pg::Engine::Postgres(target) => format!("PostgreSQL {}", target.shown()),
    }
}

/// Opens (or creates) every service's state under `opts.data_dir` and starts serving.
pub async fn start(opts: ServerOptions) -> Result<EmbeddedServer> {
    let dir = &opts.data_dir;
    let authz_dir = dir.join("authz");
    let ards_dir = dir.join("ards");
    let ks_dir = dir.join("keyserver");
    let dir_lock = authz::statedir::lock(dir)?;
    for d in [dir, &authz_dir, &ards_dir] {
        authz::statedir::private_dir(d)
            .with_context(|| format!("cannot create {}", d.display()))?;
    }
    let names = tls_names(opts.listen);

    // The key server first: its CA and directory authenticate the callers of all three.
    let late_rules = keyserver::rules::LateRules::default();
    let ks_addr = port_plus(opts.listen, 2)?;
    let mut ks_cfg = keyserver::ServerConfig::new(&ks_dir, ks_addr, Arc::new(late_rules.clone()));
    ks_cfg.server_names = names.clone();
    ks_cfg.root_key_hex = opts.root_key_hex.clone();
    ks_cfg.store = opts.store.clone();
    if let Some(rate) = opts.device_rate {
        ks_cfg.limits.per_device = rate;
    }
    let ks = keyserver::start(ks_cfg).await.with_context(|| {
        format!(
            "cannot start the key server ({})",
            store_place(&opts, &ks_dir)
        )
    })?;
    let keyserver_url = format!("https://{}:{}", url_host(ks.addr), ks.addr.port());
    let directory: Arc<dyn authz::principal::Directory> = Arc::new(ks.directory());
    let ca_pem = std::fs::read_to_string(ks.admin_dir().join(csap_identity::pki::CA_FILE))
        .context("cannot read the key server's CA certificate")?;
    let client_auth = authz::tls::ClientAuth {
        ca_pem,
        directory: directory.clone(),
        allow_anonymous: true,
        on_refusal: None,
    };

    // The issuer key: ARDS must trust it before authz can deliver anything.
    let mut authz_cfg = authz::Config::new(&authz_dir);
    authz_cfg.store = opts.store.clone();
    let issuer_key = authz::IssuerKey::load_or_generate(&authz_dir.join("issuer.key"))
        .context("cannot load or create authz's issuer key")?;
    let trusted = vec![(authz_cfg.issuer.clone(), issuer_key.public())];
    drop(issuer_key);

    // ARDS.
    let mut ards_cfg = ards::ArdsConfig::new(ards_dir.join("ards.db"), trusted.clone());
    ards_cfg.store = opts.store.clone();
    let ards = ards::Ards::connect(ards_cfg, Arc::new(ards::SystemClock))
        .await
        .with_context(|| format!("cannot open ARDS state ({})", store_place(&opts, &ards_dir)))?;
    let scheduler = ards.spawn_scheduler();
    let ards_identity = ards::server::load_or_create_identity(&ards_dir, &names)
        .context("cannot create or load ARDS's TLS certificate")?;
    let ards_addr = port_plus(opts.listen, 1)?.to_string();
    let ards_server = ards::server::serve_tls(
        &ards_addr,
        &ards_identity,
        ards::app(ards.clone()),
        &client_auth,
    )
    .await
    .context("cannot start ARDS")?;
    let ards_url = format!(
        "https://{}:{}",
        url_host(ards_server.local_addr),
        ards_server.local_addr.port()
    );

    // authz, delivering into ARDS in-process; its HTTP API for workflow management.
    let service = Arc::new(
        authz::Authz::connect(
            &authz_cfg,
            Arc::new(DirectSink(ards.clone())),
            directory.clone(),
        )
        .await
        .with_context(|| {
            format!(
                "cannot open authz state ({})",
                store_place(&opts, &authz_dir)
            )
        })?,
    );
    let (cert, key) = authz::tls::load_or_create(&authz_dir, &names)
        .context("cannot create or load authz's TLS certificate")?;
    let tls = authz::tls::mtls_server_config(&cert, &key, &client_auth)?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("authz cannot listen on {}", opts.listen))?;
    let authz_addr = listener.local_addr()?;
    let authz_url = format!("https://{}:{}", url_host(authz_addr), authz_addr.port());
    let (authz_stop, mut stop_rx) = watch::channel(false);
    let authz_task = tokio::spawn(authz::tls::serve(
        listener,
        tls,
        authz::app(service.clone()),
        Some(client_auth.handle()),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let outbox = tokio::spawn(service.clone().run_outbox_retry());

    // The key server's subscription, as PEP `keyserver` with its service certificate.
    let rules = Arc::new(
        ards_client::RulesClient::start(ards_client::ClientConfig {
            url: ards_url.clone(),
            pep_id: csap_policy::template::KEYSERVER_PEP.to_string(),
            ca_pem: ards_identity.cert_pem.clone(),
            identity: csap_identity::ClientIdentity::load(&ks.service_dir())
                .context("cannot read the key server's service identity")?,
            trusted_issuers: trusted,
            cache_path: dir.join("keyserver-rules.json"),
        })
        .await
        .context("cannot start the key server's ARDS subscription")?,
    );
    late_rules.set(rules.clone());

    // Last: /readyz answers for all three, so it must not come up before they do.
    let ops = match opts.metrics_listen {
        Some(addr) => {
            let probes: Vec<Arc<dyn authz::ops::Probe>> = vec![
                service.clone() as Arc<dyn authz::ops::Probe>,
                Arc::new(ards.clone()),
                ks.probe(),
            ];
            Some(
                authz::ops::serve(addr, probes)
                    .await
                    .map_err(anyhow::Error::msg)?,
            )
        }
        None => None,
    };

    Ok(EmbeddedServer {
        metrics_url: ops.as_ref().map(|o| o.url()),
        ops,
        authz_url,
        ards_url,
        keyserver_url,
        authz_cert: authz_dir.join("tls-cert.pem"),
        ards_cert: ards_identity.cert_path.clone(),
        admin_dir: ks.admin_dir(),
        issuer_pub: authz_dir.join("issuer.pub"),
        authz: service,
        keyserver_rules: rules,
        keyserver: ks,
        ards_server,
        authz_stop,
        authz_task,
        background: vec![scheduler, outbox],
        _dir_lock: dir_lock,
    })
}

impl EmbeddedServer {
    /// Waits until every rule in `rule_ids` is active at the key server (or `timeout`).
    pub async fn wait_for_rules(&self, rule_ids: &[String], timeout: Duration) -> bool {
        let mut changed = self.keyserver_rules.subscribe();
        let has_all = || {
            let ev = self.keyserver_rules.evaluator();
            rule_ids
                .iter()
                .all(|id| ev.rules().iter().any(|r| &r.id == id))
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if has_all() {
                return true;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return has_all(),
            }
        }
    }

    /// What an operator needs to know, one item per line.
    pub fn describe(&self) -> String {
        let metrics = match &self.metrics_url {
            Some(url) => format!("\nmetrics     {url}/metrics  (/healthz, /readyz; plain HTTP)"),
            None => String::new(),
        };
        format!(
            "authz       {}  (trust {})\n\
             ARDS        {}  (trust {})\n\
             key server  {}  (CA {})\n\
             admin identity: {}  (cert.pem, key.pem, ca.pem — keep it private)\n\
             authz issuer key: {}{metrics}",
            self.authz_url,
            self.authz_cert.display(),
            self.ards_url,
            self.ards_cert.display(),
            self.keyserver_url,
            self.admin_dir.join(csap_identity::pki::CA_FILE).display(),
            self.admin_dir.display(),
            self.issuer_pub.display(),
        )
    }

    /// Stops every listener and background task and waits for them.
    pub async fn shutdown(self) {
        if let Some(ops) = self.ops {
            ops.shutdown().await;
        }
        let _ = self.authz_stop.send(true);
        let _ = self.authz_task.await;
        self.keyserver.shutdown().await;
        // Before ARDS stops: a poll still waiting there would log the lost connection.
        self.keyserver_rules.stop();
        self.ards_server.shutdown().await;
        for t in self.background {
            t.abort();
            // Awaited so what the task held (authz, ARDS and their data-dir locks) is released
            // when `shutdown` returns.
            let _ = t.await;
        }
    }
}

/// `csap server`: runs until Ctrl-C (or SIGTERM). `log_format` (`text` or `json`) is passed on
/// to replicas (`--replicas`).
pub fn run(args: ServerArgs, log_format: &str) -> Result<()> {
    if let Some(config) = &args.config {
        tracing::info!(config = %config.display(), "settings from the config file, flags over them");
    }
    if args.replicas > 1 {
        return crate::replicas::run(args, log_format);
    }
    crate::hardening::not_dumpable()?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        let server = start(ServerOptions {
            data_dir: args.data_dir.clone(),
            listen: args.listen,
            root_key_hex: args.root_key.hex()?,
            device_rate: args.device_rate,
            metrics_listen: match args.metrics_listen {
                Some(choice) => choice.0,
                None => Some(default_metrics_listen(args.listen)?),
            },
            store: args.store.engine()?,
        })
        .await?;
        match &args.store.store {
            None => println!("csap server running (state in {})", args.data_dir.display()),
            Some(url) => println!(
                "csap server running (authz, ARDS and the key server in PostgreSQL {}; keys and \
                 certificates in {})",
                authz::pg::redact(url),
                args.data_dir.display()
            ),
        }
        println!("{}", server.describe());
        println!(
            "next: csap device enroll / user add / app register / scope create with --identity {}",
            server.admin_dir.display()
        );
        wait_for_stop_signal().await;
        println!("stopping");
        server.shutdown().await;
        Ok(())
    })
}

async fn wait_for_stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn opts(dir: &Path) -> ServerOptions {
        ServerOptions {
            data_dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            root_key_hex: None,
            device_rate: None,
            metrics_listen: None,
            store: authz::pg::Engine::Sqlite,
        }
    }

    /// A request submitted to the embedded authz becomes a signed rule that the key server
    /// receives through ARDS, and a restart reuses all state (same CA, same issuer key).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_reaches_keyserver_through_ards_and_state_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let server = start(opts(dir.path())).await.unwrap();
        assert!(server.admin_dir.join("cert.pem").exists());
        // authz takes requests only for principals the key server knows.
        let admin =
            keyserver_client::AdminClient::connect(&server.keyserver_url, &server.admin_dir)
                .unwrap();
        admin.add_user("alice", "a long passphrase").await.unwrap();
        admin
            .enroll_device("ws-1", &dir.path().join("ws-1"))
            .await
            .unwrap();
        admin
            .register_app(&keyserver_client::wire::RegisterAppRequest {
                digest: "ab".repeat(32),
                name: "viewer".into(),
                version: "1".into(),
                vendor: None,
                code: Default::default(),
            })
            .await
            .unwrap();
        let now = keyserver::now().expect("system clock usable");
        let body = authz::request::WireRequest::builder("t1")
            .workflow_id("wf-1")
            .person("alice")
            .application(&"ab".repeat(32), "viewer", "1", None)
            .device("ws-1")
            .asset_path("show/**")
            .action("read")
            .window(now - 60, now + 3600)
            .to_json();
        let issued = server
            .authz
            .submit(body.as_bytes(), &authz::Submitter::admin("admin"))
            .await
            .unwrap();
        assert!(issued.delivered, "in-process delivery must succeed at once");
        let live = server.authz.live_rules(Some("keyserver")).await.unwrap();
        let ks_rules: Vec<String> = issued
            .rule_ids
            .iter()
            .filter(|id| live.iter().any(|r| &r.rule.id == *id))
            .cloned()
            .collect();
        assert_eq!(ks_rules.len(), 1);
        assert!(
            server
                .wait_for_rules(&ks_rules, Duration::from_secs(10))
                .await
        );
        let ca = std::fs::read_to_string(server.admin_dir.join("ca.pem")).unwrap();
        let issuer = std::fs::read_to_string(&server.issuer_pub).unwrap();
        server.shutdown().await;

        // Aborted connection tasks drop their handles to the engines (and the data-dir locks)
        // a moment after `shutdown` returns; a real restart is a new process.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let again = loop {
            match start(opts(dir.path())).await {
                Err(e)
                    if format!("{e:#}").contains("is in use by process")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => break other.unwrap(),
            }
        };
        assert_eq!(
            std::fs::read_to_string(again.admin_dir.join("ca.pem")).unwrap(),
            ca
        );
        assert_eq!(std::fs::read_to_string(&again.issuer_pub).unwrap(), issuer);
        assert!(
            again
                .wait_for_rules(&ks_rules, Duration::from_secs(10))
                .await
        );
        again.shutdown().await;
    }
}
