//! `csap authz serve`, `csap request …`, `csap policy global …`, `csap rules list`: the
//! authorization service and its HTTP client commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
const DEFAULT_URL: &str = "https://127.0.0.1:7400";

#[derive(Subcommand)]
pub enum AuthzCommand {
    /// Run the authorization service (HTTPS, TLS 1.3) with its state in DATA_DIR.
    Serve(ServeArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// Directory for authz.sqlite, issuer.key/issuer.pub and the TLS cert (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Base URL of the ARDS that receives rules and revocations, e.g. https://127.0.0.1:7401.
    #[arg(long, env = "CSAP_ARDS")]
    ards: String,
    /// PEM certificate (or CA) to trust for the ARDS (its DATA_DIR/ards-cert.pem).
    #[arg(long, env = "CSAP_ARDS_CA")]
    ards_ca: PathBuf,
    /// Key server base URL: its directory authenticates every caller and says which users,
    /// devices and application builds requests may name.
    #[arg(long, env = "CSAP_SERVER")]
    keyserver: String,
    /// This service's identity directory (cert.pem, key.pem, ca.pem) from
    /// `csap service add NAME` — NAME must equal --issuer (ARDS lets that principal publish).
    #[arg(long, value_name = "DIR")]
    identity: PathBuf,
    /// Issuer name written into every rule.
    #[arg(long, default_value = "authz")]
    issuer: String,
    /// Extra DNS names or IPs for the self-signed certificate (first start only).
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// Plain-HTTP listener for /metrics (Prometheus), /healthz and /readyz (keep it on
    /// loopback: it has no authentication), e.g. 127.0.0.1:7413. Default: none.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    store: crate::store_args::StoreArgs,
}

/// Where the client commands find the service.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// authz base URL.
    #[arg(long = "authz", env = "CSAP_AUTHZ", default_value = DEFAULT_URL, global = true)]
    url: String,
    /// The service's certificate PEM (DATA_DIR/tls-cert.pem) to trust.
    #[arg(long, env = "CSAP_CA", global = true)]
    ca: Option<PathBuf>,
    /// Your identity directory (cert.pem, key.pem): the admin identity, or a workflow's from
    /// `csap workflow add`, or an auditor's.
    #[arg(long, value_name = "DIR", env = "CSAP_IDENTITY", global = true)]
    identity: Option<PathBuf>,
}

#[derive(Args)]
pub struct RequestArgs {
    #[command(subcommand)]
    command: RequestCommand,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum RequestCommand {
    /// Print a request made from flags (users, apps, devices, paths, actions, a window from
    /// now), ready for `csap request submit`.
    New(crate::request_new::NewRequest),
    #[command(flatten)]
    Remote(RemoteRequest),
}

/// The request commands that call authz.
#[derive(Subcommand)]
enum RemoteRequest {
    /// Submit an authorization policy request (OMC-style JSON; see authz/examples/); `-` reads
    /// it from standard input.
    Submit { file: PathBuf },
    /// Replace a request with a new version: its rules are revoked and reissued.
    Change { id: String, file: PathBuf },
    /// Cancel a request: its rules are revoked.
    Cancel { id: String },
    /// Show a request's status, reasons and rules.
    Show {
        id: String,
        #[command(flatten)]
        format: crate::output::Format,
    },
    /// List requests, newest first (a workflow identity sees its own).
    List {
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        format: crate::output::Format,
    },
}

#[derive(Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Global security policies: the deny list every request is checked against.
    #[command(subcommand)]
    Global(GlobalCommand),
}

#[derive(Subcommand)]
enum GlobalCommand {
    /// Block one component; live rules that touch it are revoked at once.
    Add(AddPolicy),
    /// List global security policies.
    List {
        #[command(flatten)]
        format: crate::output::Format,
    },
    /// Remove a global security policy (revoked rules are not reissued).
    Remove { id: String },
}

#[derive(Args)]
#[group(required = true, multiple = false, id = "what")]
struct Target {
    /// Block a participant (user or service name).
    #[arg(long)]
    participant: Option<String>,
    /// Block an organization and every participant in it.
    #[arg(long)]
    organization: Option<String>,
    /// Block one application build by its BLAKE3 digest.
    #[arg(long)]
    app_digest: Option<String>,
    /// Block an application version: NAME VERSION.
    #[arg(long, num_args = 2, value_names = ["NAME", "VERSION"])]
    app_version: Option<Vec<String>>,
    /// Block every application from a vendor.
    #[arg(long)]
    vendor: Option<String>,
    /// Block a device.
    #[arg(long)]
    device: Option<String>,
    /// Block an asset (key) scope.
    #[arg(long)]
    scope: Option<String>,
}

#[derive(Args)]
struct AddPolicy {
    #[command(flatten)]
    target: Target,
    /// Why (shown in refusal reasons), e.g. a CVE id.
    #[arg(long)]
    note: Option<String>,
}

#[derive(Args)]
pub struct RulesArgs {
    #[command(subcommand)]
    command: RulesCommand,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// List live signed rules, optionally for one PEP (`keyserver` or `mount:<device>`).
    List {
        #[arg(long)]
        pep: Option<String>,
        #[command(flatten)]
        format: crate::output::Format,
    },
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

pub fn run_authz(cmd: AuthzCommand) -> Result<()> {
    match cmd {
        AuthzCommand::Serve(args) => runtime()?.block_on(serve(args)),
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let identity = csap_identity::ClientIdentity::load(&args.identity)
        .with_context(|| format!("cannot read the identity in {}", args.identity.display()))?;
    let sink = authz::wire::HttpSink::new(&args.ards, &read(&args.ards_ca)?, &identity)
        .context("cannot set up the ARDS client")?;
    let (directory, follow) = crate::directory::mirror(&args.keyserver, &args.identity).await?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let cfg = authz::Config {
        data_dir: args.data_dir.clone(),
        store: args.store.engine()?,
        issuer: args.issuer.clone(),
    };
    let service = Arc::new(
        authz::Authz::connect(&cfg, Arc::new(sink), directory.clone())
            .await
            .with_context(|| match &args.store.store {
                None => format!("cannot open authz state in {}", args.data_dir.display()),
                Some(url) => format!("cannot open authz state in {}", authz::pg::redact(url)),
            })?,
    );
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !args.listen.ip().is_unspecified() {
        names.push(args.listen.ip().to_string());
    }
    names.extend(args.tls_names.iter().cloned());
    names.dedup();
    let (cert, key) = authz::tls::load_or_create(&args.data_dir, &names)
        .context("cannot create or load the TLS certificate")?;
    let auth = authz::tls::ClientAuth {
        ca_pem: read(&args.identity.join("ca.pem"))?,
        directory,
        allow_anonymous: true,
        on_refusal: None,
    };
    let tls = authz::tls::mtls_server_config(&cert, &key, &auth)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
        "authz issuer {} public key {}",
        service.issuer(),
        service.public_key()
    );
    println!(
        "  written to {}",
        args.data_dir.join("issuer.pub").display()
    );
    println!(
        "authz listening on https://{} (trust {}); callers present certificates of the key server's CA",
        listener.local_addr()?,
        args.data_dir.join("tls-cert.pem").display()
    );
    tokio::spawn(follow);
    tokio::spawn(service.clone().run_outbox_retry());
    let _ops = match args.metrics_listen {
        Some(addr) => Some(
            authz::ops::serve(addr, vec![service.clone() as Arc<dyn authz::ops::Probe>])
                .await
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    authz::tls::serve(
        listener,
        tls,
        authz::app(service),
        Some(auth.handle()),
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await?;
    Ok(())
}

pub(crate) fn read(p: &Path) -> Result<String> {
    if p == Path::new("-") {
        return std::io::read_to_string(std::io::stdin()).context("cannot read standard input");
    }
    std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
}

pub(crate) struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(args: &ClientArgs) -> Result<Self> {
        let ca = args
            .ca
            .as_ref()
            .context("give --ca (or CSAP_CA): authz's certificate, DATA_DIR/authz/tls-cert.pem")?;
        let dir = args.identity.as_ref().context(
            "give --identity DIR (or CSAP_IDENTITY): authz answers only callers with a certificate",
        )?;
        let identity = csap_identity::ClientIdentity::load(dir)
            .with_context(|| format!("cannot read the identity in {}", dir.display()))?;
        let cfg = csap_identity::tls::client_config_with(&read(ca)?, Some(&identity))
            .with_context(|| format!("bad certificate in {} or {}", ca.display(), dir.display()))?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .use_preconfigured_tls(cfg)
            .build()?;
        Ok(Self {
            base: args.url.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach authz at {} (check --authz/CSAP_AUTHZ and --ca/CSAP_CA)",
                self.base
            )
        })?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let msg = v["error"]
            .as_str()
            .unwrap_or("no error message")
            .to_string();
        if let Some(reasons) = v["reasons"].as_array() {
            let lines: Vec<String> = reasons
                .iter()
                .map(|r| {
                    format!(
                        "  - {}: {}",
                        r["field"].as_str().unwrap_or("?"),
                        r["message"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            bail!("{msg} ({status}); reasons:\n{}", lines.join("\n"));
        }
        bail!("{msg} ({status})")
    }
}

pub(crate) fn print(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn run_request(args: RequestArgs) -> Result<()> {
    let command = match args.command {
        RequestCommand::New(new) => return crate::request_new::run(new),
        RequestCommand::Remote(command) => command,
    };
    let client = Client::new(&args.client)?;
    runtime()?.block_on(async {
        let v = match command {
            RemoteRequest::Submit { file } => {
                client
                    .call(reqwest::Method::POST, "/v1/requests", Some(read(&file)?))
                    .await?
            }
            RemoteRequest::Change { id, file } => {
                client
                    .call(
                        reqwest::Method::PUT,
                        &format!("/v1/requests/{id}"),
                        Some(read(&file)?),
                    )
                    .await?
            }
            RemoteRequest::Cancel { id } => {
                client
                    .call(reqwest::Method::DELETE, &format!("/v1/requests/{id}"), None)
                    .await?
            }
            RemoteRequest::Show { id, format } => {
                let v = client
                    .call(reqwest::Method::GET, &format!("/v1/requests/{id}"), None)
                    .await?;
                return format.print(&v, request_text);
            }
            RemoteRequest::List { limit, format } => {
                let v = client
                    .call(
                        reqwest::Method::GET,
                        &format!("/v1/requests?limit={limit}"),
                        None,
                    )
                    .await?;
                let list = v["requests"].as_array().cloned().unwrap_or_default();
                return format.print(&list, |l| crate::output::lines(l, request_line));
            }
        };
        print(&v)
    })
}

pub fn run_policy(args: PolicyArgs) -> Result<()> {
    let client = Client::new(&args.client)?;
    runtime()?.block_on(async {
        let PolicyCommand::Global(cmd) = args.command;
        let v = match cmd {
            GlobalCommand::Add(add) => {
                let t = add.target;
                let mut body = if let Some(p) = t.participant {
                    json!({"kind": "participant", "participant": p})
                } else if let Some(o) = t.organization {
                    json!({"kind": "organization", "organization": o})
                } else if let Some(d) = t.app_digest {
                    json!({"kind": "application_build", "digest": d})
                } else if let Some(nv) = t.app_version {
                    json!({"kind": "application_version", "name": nv[0], "version": nv[1]})
                } else if let Some(v) = t.vendor {
                    json!({"kind": "vendor", "vendor": v})
                } else if let Some(d) = t.device {
                    json!({"kind": "device", "device": d})
                } else if let Some(s) = t.scope {
                    json!({"kind": "asset_scope", "scope": s})
                } else {
                    bail!("name what to block (see --help)")
                };
                if let Some(n) = add.note {
                    body["note"] = n.into();
                }
                client
                    .call(
                        reqwest::Method::POST,
                        "/v1/policies",
                        Some(body.to_string()),
                    )
                    .await?
            }
            GlobalCommand::List { format } => {
                let v = client
                    .call(reqwest::Method::GET, "/v1/policies", None)
                    .await?;
                let list = v["policies"].as_array().cloned().unwrap_or_default();
                return format.print(&list, |l| crate::output::lines(l, policy_line));
            }
            GlobalCommand::Remove { id } => {
                client
                    .call(reqwest::Method::DELETE, &format!("/v1/policies/{id}"), None)
                    .await?
            }
        };
        print(&v)
    })
}

pub fn run_rules(args: RulesArgs) -> Result<()> {
    let client = Client::new(&args.client)?;
    runtime()?.block_on(async {
        let RulesCommand::List { pep, format } = args.command;
        let path = match pep {
            Some(p) => {
                // Encode through Url so odd input reaches the server intact (and is refused there).
                let mut url = reqwest::Url::parse("https://x/v1/rules")?;
                url.query_pairs_mut().append_pair("pep", &p);
                format!("/v1/rules?{}", url.query().unwrap_or_default())
            }
            None => "/v1/rules".to_string(),
        };
        let v = client.call(reqwest::Method::GET, &path, None).await?;
        let list = v["rules"].as_array().cloned().unwrap_or_default();
        format.print(&list, |l| crate::output::lines(l, rule_line))
    })
}

/// A time field (unix seconds) as RFC 3339, `-` when absent.
fn time_of(v: &Value) -> String {
    v.as_i64()
        .map(keyserver::wire::rfc3339)
        .unwrap_or_else(|| "-".into())
}

fn text_of(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `req-… active rev 2 rules 3 updated 2026-…`.
fn request_line(r: &Value) -> String {
    format!(
        "{:<28} {:<9} rev {} rules {} updated {}",
        text_of(&r["id"]),
        text_of(&r["status"]),
        r["revision"],
        r["rule_ids"].as_array().map_or(0, Vec::len),
        time_of(&r["updated_at"])
    )
}

/// A request's status, reasons and rules, one item per line.
fn request_text(r: &Value) -> String {
    let mut out = vec![request_line(r)];
    for reason in r["reasons"].as_array().into_iter().flatten() {
        out.push(format!("  refused: {}", text_of(&reason["message"])));
    }
    for id in r["rule_ids"].as_array().into_iter().flatten() {
        out.push(format!("  rule {}", text_of(id)));
    }
    for id in r["revoked_rule_ids"].as_array().into_iter().flatten() {
        out.push(format!("  rule {} (revoked)", text_of(id)));
    }
    out.join("\n")
}

/// `gp-… device=ws-07 (CVE-…)`.
fn policy_line(p: &Value) -> String {
    let kind = text_of(&p["kind"]);
    let what = p
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !["id", "kind", "note", "created_at", "cedar"].contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_owned)))
        .collect::<Vec<_>>()
        .join(" ");
    let note = p["note"]
        .as_str()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    format!("{:<14} {kind} {what}{note}", text_of(&p["id"]))
}

/// `rule-… keyserver,mount:ws-07 2026-… .. 2026-…`.
fn rule_line(r: &Value) -> String {
    let rule = &r["rule"];
    let targets = rule["targets"]
        .as_array()
        .map(|t| t.iter().map(text_of).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    format!(
        "{:<32} {targets} {} .. {}",
        text_of(&rule["id"]),
        time_of(&rule["not_before"]),
        time_of(&rule["not_after"])
    )
}
