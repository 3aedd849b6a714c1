//! `csap ards`: run the Authorization Rules Distribution Service (ARDS).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

const DEFAULT_LISTEN: &str = "127.0.0.1:7401";

#[derive(Subcommand)]
pub enum ArdsCommand {
    /// Serve ARDS over HTTPS (TLS 1.3): stores signed rules, releases them to PEPs just in time.
    Serve(ServeArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// Directory for ards.db (SQLite) and the TLS certificate (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Accept rules signed by this authz issuer: NAME=HEXPUBKEY, or NAME=@FILE to read the key
    /// from a file such as authz's issuer.pub. Repeatable.
    #[arg(long = "trust-issuer", value_name = "NAME=KEY", required = true)]
    trust_issuer: Vec<String>,
    /// How long before a rule's window opens it is released to its PEPs: seconds, or with a
    /// unit (30s, 5m, 2h).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    lead_time: i64,
    /// Extra DNS names or IPs for the self-signed certificate (first start only).
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// Key server base URL: its directory authenticates every caller (PEPs read only their
    /// own stream; issuers publish; admins and auditors inspect).
    #[arg(long, env = "CSAP_SERVER")]
    keyserver: String,
    /// This service's identity directory (cert.pem, key.pem, ca.pem) from `csap service add`.
    #[arg(long, value_name = "DIR")]
    identity: PathBuf,
    /// Plain-HTTP listener for /metrics (Prometheus), /healthz and /readyz (keep it on
    /// loopback: it has no authentication), e.g. 127.0.0.1:7413. Default: none.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    store: crate::store_args::StoreArgs,
}

pub fn run(cmd: ArdsCommand) -> Result<()> {
    match cmd {
        ArdsCommand::Serve(args) => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(serve(args))
        }
    }
}

/// Parses `NAME=HEX` or `NAME=@FILE`.
fn parse_issuer(spec: &str) -> Result<(String, csap_policy::IssuerPublicKey)> {
    let Some((name, key)) = spec.split_once('=') else {
        bail!("--trust-issuer {spec:?}: expected NAME=HEXPUBKEY or NAME=@FILE");
    };
    if name.is_empty() {
        bail!("--trust-issuer {spec:?}: the issuer name is empty");
    }
    let hex = match key.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read issuer key file {path}"))?,
        None => key.to_owned(),
    };
    let key = csap_policy::IssuerPublicKey::from_hex(hex.trim())
        .with_context(|| format!("--trust-issuer {name}: not a 64-hex-digit Ed25519 public key"))?;
    Ok((name.to_owned(), key))
}

/// `300`, `300s`, `5m`, `2h`, `1d` → seconds.
pub(crate) fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 300, 30s, 5m, 2h)"))
}

async fn serve(args: ServeArgs) -> Result<()> {
    let issuers = args
        .trust_issuer
        .iter()
        .map(|s| parse_issuer(s))
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let mut names = args.tls_names.clone();
    if !args.listen.ip().is_unspecified() {
        names.push(args.listen.ip().to_string());
    }
    let identity = ards::server::load_or_create_identity(&args.data_dir, &names)
        .context("cannot prepare the TLS certificate")?;
    let mut cfg = ards::ArdsConfig::new(args.data_dir.join("ards.db"), issuers.clone());
    cfg.lead_time_secs = args.lead_time;
    cfg.store = args.store.engine()?;
    let service = ards::Ards::connect(cfg, Arc::new(ards::SystemClock))
        .await
        .with_context(|| match &args.store.store {
            None => format!("cannot open the store in {}", args.data_dir.display()),
            Some(url) => format!("cannot open the store in {}", authz::pg::redact(url)),
        })?;
    let _scheduler = service.spawn_scheduler();
    let (directory, follow) = crate::directory::mirror(&args.keyserver, &args.identity).await?;
    let ca_pem = std::fs::read_to_string(args.identity.join("ca.pem"))
        .with_context(|| format!("cannot read {}/ca.pem", args.identity.display()))?;
    let auth = authz::tls::ClientAuth {
        ca_pem,
        directory,
        allow_anonymous: true,
        on_refusal: None,
    };
    let _follow = tokio::spawn(follow);
    let ops = match args.metrics_listen {
        Some(addr) => Some(
            authz::ops::serve(addr, vec![Arc::new(service.clone())])
                .await
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let server = ards::server::serve_tls(
        &args.listen.to_string(),
        &identity,
        ards::app(service),
        &auth,
    )
    .await
    .context("cannot start the HTTPS listener")?;
    let host = if args.listen.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        args.listen.ip().to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    println!(
        "ARDS listening on https://{host}:{}",
        server.local_addr.port()
    );
    println!("certificate: {}", identity.cert_path.display());
    let trusted: Vec<&str> = issuers.iter().map(|(n, _)| n.as_str()).collect();
    println!(
        "trusting issuers: {}; lead time {} s",
        trusted.join(", "),
        args.lead_time
    );
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    server.shutdown().await;
    if let Some(ops) = ops {
        ops.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("300"), Ok(300));
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("5m"), Ok(300));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn issuer_specs_are_checked() {
        let key = ::authz::IssuerKey::from_seed([1; 32]).public();
        let (name, parsed) = parse_issuer(&format!("authz={}", key.to_hex())).unwrap();
        assert_eq!(name, "authz");
        assert_eq!(parsed, key);
        assert!(parse_issuer("authz").is_err());
        assert!(parse_issuer("=abcd").is_err());
        assert!(parse_issuer("authz=nothex").is_err());
    }
}
