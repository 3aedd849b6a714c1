//! `csap keyserver serve`: the key server on its own, with its ARDS subscription.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::runtime;

#[derive(Subcommand)]
pub enum KeyserverCommand {
    /// Run the key server alone (`csap server` runs it together with authz and ARDS).
    Serve(ServeArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// State directory: CA, server certificate, root key (0600), SQLite, admin identity.
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7402")]
    pub listen: SocketAddr,
    /// ARDS URL to take the key server's rules from (PEP id `keyserver`). Without it the
    /// server holds no rules and licenses nothing except break-glass issues.
    #[arg(long, requires_all = ["ards_ca", "issuer_pub"])]
    pub ards_url: Option<String>,
    /// ARDS's TLS certificate (PEM).
    #[arg(long)]
    pub ards_ca: Option<PathBuf>,
    /// authz's issuer public key file (hex), to verify rules with.
    #[arg(long)]
    pub issuer_pub: Option<PathBuf>,
    /// The issuer name the rules carry.
    #[arg(long, default_value = "authz")]
    pub issuer_name: String,
    /// Extra DNS names / IPs for the server certificate (besides localhost and loopback).
    #[arg(long = "name")]
    pub names: Vec<String>,
    /// Plain-HTTP listener for /metrics (Prometheus), /healthz and /readyz (keep it on
    /// loopback: it has no authentication), e.g. 127.0.0.1:7412. Default: none.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub store: crate::store_args::StoreArgs,
    #[command(flatten)]
    pub root_key: crate::root_key::RootKeyArgs,
}

pub fn run_keyserver(cmd: KeyserverCommand) -> Result<()> {
    let KeyserverCommand::Serve(args) = cmd;
    crate::hardening::not_dumpable()?;
    runtime()?.block_on(async move {
        let late_rules = keyserver::rules::LateRules::default();
        let rules: Arc<dyn keyserver::RuleCheck> = Arc::new(late_rules.clone());
        let mut cfg = keyserver::ServerConfig::new(&args.data_dir, args.listen, rules);
        cfg.server_names.extend(args.names.iter().cloned());
        cfg.root_key_hex = args.root_key.hex()?;
        cfg.store = args.store.engine()?;
        let server = keyserver::start(cfg).await.context("cannot start the key server")?;
        match &args.ards_url {
            Some(url) => {
                let ca_path = args.ards_ca.as_ref().context("--ards-ca is required with --ards-url")?;
                let pub_path = args.issuer_pub.as_ref().context("--issuer-pub is required with --ards-url")?;
                let ca_pem = std::fs::read_to_string(ca_path)
                    .with_context(|| format!("cannot read {}", ca_path.display()))?;
                let issuer_hex = std::fs::read_to_string(pub_path)
                    .with_context(|| format!("cannot read {}", pub_path.display()))?;
                let issuer = authz::IssuerPublicKey::from_hex(issuer_hex.trim())
                    .with_context(|| format!("{} is not an issuer public key", pub_path.display()))?;
                // ARDS authenticates the key server with its own service certificate.
                let identity = authz::tls::ClientIdentity::load(&server.service_dir())
                    .context("cannot read the key server's service identity")?;
                let client = ards::RulesClient::start(ards::ClientConfig {
                    url: url.clone(),
                    pep_id: authz::template::KEYSERVER_PEP.to_string(),
                    ca_pem,
                    identity,
                    trusted_issuers: vec![(args.issuer_name.clone(), issuer)],
                    cache_path: args.data_dir.join("rules-cache.json"),
                })
                .await
                .context("cannot start the ARDS subscription")?;
                late_rules.set(Arc::new(client));
            }
            None => {
                eprintln!("csap: no --ards-url: the key server holds no rules and will license nothing (break-glass issues only)");
            }
        }
        let _ops = match args.metrics_listen {
            Some(addr) => Some(
                authz::ops::serve(addr, vec![server.probe()])
                    .await
                    .map_err(anyhow::Error::msg)?,
            ),
            None => None,
        };
        println!("{}", server.url);
        eprintln!(
            "key server on {} — admin identity: {}",
            server.url,
            server.admin_dir().display()
        );
        tokio::select! {
            _ = server_wait(server) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}

async fn server_wait(server: keyserver::RunningServer) {
    server.wait().await
}
