//! `csap keyserver|device|user|login|app|scope|keys|audit`: run the key server and administer it
//! (devices, users, application builds, key scopes, admin-issued licenses, the audit trail).

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use csap_base::UserToken;
use keyserver_client::client::{AdminClient, LicenseClient};
use keyserver_client::wire::{
    self, Action, AuditRecord, IssueRequest, RegisterAppRequest, RevokeAppRequest,
};

/// Where the key server is and who we are (an admin or device identity directory).
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Key server URL, e.g. https://127.0.0.1:7402.
    #[arg(long, env = "CSAP_SERVER")]
    pub server: String,
    /// Identity directory with cert.pem, key.pem and ca.pem (DATA_DIR/admin for admins, the
    /// `csap device enroll --out` directory for devices).
    #[arg(long, env = "CSAP_IDENTITY")]
    pub identity: PathBuf,
}

impl Conn {
    fn admin(&self) -> Result<AdminClient> {
        AdminClient::connect(&self.server, &self.identity)
            .with_context(|| format!("cannot use identity {}", self.identity.display()))
    }
}

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
}

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Enroll a device: writes cert.pem, key.pem, ca.pem, hpke.key (0600) and server.pub to DIR.
    Enroll {
        name: String,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a device's certificate (takes effect on its next handshake and request).
    Revoke {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List enrolled devices and admin certificates.
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum WorkflowCommand {
    /// Issue a workflow-management certificate: it may submit, change and cancel its own
    /// authorization requests, only for the key scopes and path prefixes given here. Writes
    /// cert.pem, key.pem (0600) and ca.pem to DIR.
    Add {
        name: String,
        /// Key scopes its requests may name, comma-separated (`*`: every scope).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Path prefixes its requests' patterns must lie under, comma-separated, e.g.
        /// `show/seq1,show/seq2` (`**`: every path).
        #[arg(long, value_delimiter = ',', required = true)]
        paths: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a workflow's certificates (refused by authz at its next request).
    Revoke {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `csap auditor …` and `csap service …`.
#[derive(Subcommand)]
pub enum RoleCommand {
    /// Issue a certificate of this role; writes cert.pem, key.pem (0600) and ca.pem to DIR.
    Add {
        name: String,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke its certificates (refused at its next request everywhere).
    Revoke {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from standard input (first line).
    Add {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Disable a user; every token already issued stops working at once.
    Disable {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `csap login`: through the local mount's session socket (any user), or directly with the
/// device identity (`--identity`, for whoever can read the device key: root, the mount's
/// operator). Either way the token is bound to this device and a local uid.
#[derive(Args)]
pub struct LoginArgs {
    /// User name.
    #[arg(long, env = "USER")]
    pub user: String,
    /// Where to store the token (default $XDG_RUNTIME_DIR/csap/token or ~/.config/csap/token).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The mount's session socket (default $XDG_RUNTIME_DIR/csap/mount.sock). Without
    /// --identity the mount logs you in with its device identity, for your uid as the kernel
    /// reports it; with --identity the token is handed to it (skipped with a note when no mount
    /// listens at the default path).
    #[arg(long, value_name = "PATH", env = "CSAP_MOUNT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Log in directly with this device identity directory (needs read access to its key.pem)
    /// instead of through the mount.
    #[arg(long, env = "CSAP_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// Key server URL (with --identity).
    #[arg(long, env = "CSAP_SERVER")]
    pub server: Option<String>,
    /// With --identity: the local uid the token is for (default: yours), e.g. a service
    /// account's, whose token file the mount reads (`--token-file UID:PATH`).
    #[arg(long, requires = "identity")]
    pub uid: Option<u32>,
}

#[derive(Subcommand)]
pub enum AppCommand {
    /// Register an application build by the BLAKE3 digest of its executable (computed here).
    ///
    /// By default a mount accepts a process of this build only if it maps nothing but the
    /// executable and root-owned system libraries, has no executable anonymous memory and runs
    /// in the mount's user namespace; the flags allow more, per build.
    Register {
        path: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        vendor: Option<String>,
        /// The build compiles code at run time (executable anonymous memory).
        #[arg(long)]
        allow_jit: bool,
        /// The build may run inside a user namespace (a sandbox or container).
        #[arg(long)]
        allow_user_namespaces: bool,
        /// A plug-in or bundled library the build may map from outside the system library
        /// directories (its digest is computed here; repeat for each).
        #[arg(long = "library", value_name = "PATH")]
        libraries: Vec<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Block a build: by digest, or by name and version.
    Revoke {
        #[arg(long, conflicts_with_all = ["name", "version"], required_unless_present = "name")]
        digest: Option<String>,
        #[arg(long, requires = "version")]
        name: Option<String>,
        #[arg(long, requires = "name")]
        version: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List registered builds.
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum ScopeCommand {
    /// Create a key scope (a random 16-byte scope id and a first random seed, version 1).
    Create {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List key scopes with their current and revoked versions.
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// New seed version for new assets of SCOPE (older versions still decrypt).
    Rotate {
        scope: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke one version of SCOPE: no more licenses for assets under it.
    Revoke {
        scope: String,
        #[arg(long)]
        version: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Write a license file sealed to DEVICE's enrollment key (bounded by the rules unless
    /// --break-glass, which needs --reason and is audited as such).
    Issue(IssueArgs),
}

#[derive(Args)]
pub struct IssueArgs {
    #[arg(long)]
    pub device: String,
    #[arg(long)]
    pub user: String,
    /// BLAKE3 digest (hex) of the application the license is for.
    #[arg(long)]
    pub app: String,
    /// Path pattern over registered assets: `*` within a segment, `**` across segments.
    #[arg(long)]
    pub assets: String,
    /// End of validity: unix seconds, RFC 3339, or +30m / +4h / +2d.
    #[arg(long)]
    pub until: String,
    /// read, write, create or delete.
    #[arg(long, default_value = "read")]
    pub action: String,
    #[arg(long, requires = "reason")]
    pub break_glass: bool,
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Show the latest audit records (every grant and denial).
    Tail {
        /// Keep polling for new records.
        #[arg(long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[arg(short = 'n', default_value_t = 20)]
        n: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Search the audit trail on the server: key server and mount decisions alike (the
    /// `source` column says which enforcement point decided). Filters combine with AND.
    #[command(after_help = "\
Times (--since, --until): RFC 3339 (2026-12-01T09:00:00Z), unix seconds, or an age: 30m, 24h, 7d.

Examples:
  csap audit query --path 'show/seq1/f0001.exr' --since 7d
  csap audit query --path 'show/**/*.exr' --decision deny --app nuke
  csap audit query --user alice --device ws-07 --limit 1000 --json")]
    Query {
        /// Asset path glob: `*` within one segment, `**` across segments.
        #[arg(long, value_name = "GLOB")]
        path: Option<String>,
        #[arg(long, value_name = "U")]
        user: Option<String>,
        #[arg(long, value_name = "D")]
        device: Option<String>,
        /// An application digest, or a registered application's name.
        #[arg(long, value_name = "DIGEST|NAME")]
        app: Option<String>,
        #[arg(long, value_parser = ["grant", "deny", "admin"])]
        decision: Option<String>,
        #[arg(long, value_name = "T")]
        since: Option<String>,
        #[arg(long, value_name = "T")]
        until: Option<String>,
        /// Most records shown (the newest that match), at most 10000.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

/// A point in time for `audit query`: an age (`30m`, `24h`, `7d`: that long ago), or what
/// [`wire::parse_time`] takes (unix seconds, RFC 3339, `+4h`).
fn parse_past(s: &str, now: i64) -> Result<i64> {
    let t = s.trim();
    let unit = |c: char| match c {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86_400),
        'w' => Some(7 * 86_400),
        _ => None,
    };
    if let Some((i, c)) = t.char_indices().last() {
        if let (Some(mult), Ok(n)) = (unit(c), t[..i].parse::<i64>()) {
            if let Some(ago) = n.checked_mul(mult).and_then(|d| now.checked_sub(d)) {
                return Ok(ago);
            }
        }
    }
    wire::parse_time(t, now)
        .with_context(|| format!("{s:?}: give RFC 3339, unix seconds or an age such as 24h or 7d"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Reads one line (the password) from standard input, prompting when it is a terminal.
fn read_password(prompt: &str) -> Result<zeroize::Zeroizing<String>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}: ");
        std::io::stderr().flush().ok();
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let pw = zeroize::Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string());
    if pw.is_empty() {
        bail!("empty password on standard input");
    }
    Ok(pw)
}

pub fn run_keyserver(cmd: KeyserverCommand) -> Result<()> {
    let KeyserverCommand::Serve(args) = cmd;
    crate::hardening::not_dumpable()?;
    runtime()?.block_on(async move {
        let late_rules = keyserver::rules::LateRules::default();
        let rules: Arc<dyn keyserver::RuleCheck> = Arc::new(late_rules.clone());
        let mut cfg = keyserver::ServerConfig::new(&args.data_dir, args.listen, rules);
        cfg.server_names.extend(args.names.iter().cloned());
        if let Ok(hex) = std::env::var("CSAP_ROOT_KEY") {
            cfg.root_key_hex = Some(zeroize::Zeroizing::new(hex));
        }
        let server = keyserver::start(cfg).await.context("cannot start the key server")?;
        match &args.ards_url {
            Some(url) => {
                let ca_path = args.ards_ca.as_ref().context("--ards-ca is required with --ards-url")?;
                let pub_path = args.issuer_pub.as_ref().context("--issuer-pub is required with --ards-url")?;
                let ca_pem = std::fs::read_to_string(ca_path)
                    .with_context(|| format!("cannot read {}", ca_path.display()))?;
                let issuer_hex = std::fs::read_to_string(pub_path)
                    .with_context(|| format!("cannot read {}", pub_path.display()))?;
                let issuer = csap_policy::IssuerPublicKey::from_hex(issuer_hex.trim())
                    .with_context(|| format!("{} is not an issuer public key", pub_path.display()))?;
                // ARDS authenticates the key server with its own service certificate.
                let identity = csap_identity::ClientIdentity::load(&server.service_dir())
                    .context("cannot read the key server's service identity")?;
                let client = ards_client::RulesClient::start(ards_client::ClientConfig {
                    url: url.clone(),
                    pep_id: csap_policy::template::KEYSERVER_PEP.to_string(),
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

pub fn run_workflow(cmd: WorkflowCommand) -> Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            WorkflowCommand::Add {
                name,
                scopes,
                paths,
                out,
                conn,
            } => {
                let grant = csap_identity::WorkflowGrant { scopes, paths };
                let r = conn
                    .admin()?
                    .add_principal("workflow", &name, Some(&grant), &out)
                    .await?;
                println!(
                    "workflow {name} (serial {}) may authorize scopes {} under {} — identity in {}",
                    r.serial,
                    grant.scopes.join(","),
                    grant.paths.join(","),
                    out.display()
                );
            }
            WorkflowCommand::Revoke { name, conn } => {
                let r = conn.admin()?.revoke_principal("workflow", &name).await?;
                println!("revoked {} certificate(s) of workflow {name}", r.revoked);
            }
        }
        Ok(())
    })
}

/// `csap auditor …` (`kind` = "auditor") and `csap service …` (`kind` = "service").
pub fn run_role(kind: &'static str, cmd: RoleCommand) -> Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            RoleCommand::Add { name, out, conn } => {
                let r = conn.admin()?.add_principal(kind, &name, None, &out).await?;
                println!(
                    "{kind} {name} (serial {}) — identity in {}",
                    r.serial,
                    out.display()
                );
            }
            RoleCommand::Revoke { name, conn } => {
                let r = conn.admin()?.revoke_principal(kind, &name).await?;
                println!("revoked {} certificate(s) of {kind} {name}", r.revoked);
            }
        }
        Ok(())
    })
}

pub fn run_device(cmd: DeviceCommand) -> Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            DeviceCommand::Enroll { name, out, conn } => {
                let r = conn.admin()?.enroll_device(&name, &out).await?;
                println!(
                    "enrolled {name} (serial {}) into {}",
                    r.serial,
                    out.display()
                );
            }
            DeviceCommand::Revoke { name, conn } => {
                let r = conn.admin()?.revoke_device(&name).await?;
                println!("revoked {} certificate(s) of {name}", r.revoked);
            }
            DeviceCommand::List { conn } => {
                for d in conn.admin()?.list_devices().await? {
                    let state = match d.revoked_at {
                        Some(t) => format!("revoked {}", wire::rfc3339(t)),
                        None => "active".into(),
                    };
                    println!(
                        "{:<24} {:<6} {} {}  {state}",
                        d.name,
                        d.kind.as_str(),
                        d.serial,
                        wire::rfc3339(d.issued_at)
                    );
                }
            }
        }
        Ok(())
    })
}

pub fn run_user(cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add { name, conn } => {
            let pw = read_password(&format!("password for {name}"))?;
            runtime()?.block_on(async move {
                conn.admin()?.add_user(&name, &pw).await?;
                println!("added user {name}");
                Ok(())
            })
        }
        UserCommand::Disable { name, conn } => runtime()?.block_on(async move {
            conn.admin()?.disable_user(&name).await?;
            println!("disabled user {name}; outstanding tokens are void");
            Ok(())
        }),
    }
}

pub fn run_login(args: LoginArgs) -> Result<()> {
    let pw = read_password(&format!("password for {}", args.user))?;
    let path = match &args.token_file {
        Some(p) => p.clone(),
        None => UserToken::default_path()
            .context("neither XDG_RUNTIME_DIR nor HOME is set: give --token-file")?,
    };
    let Some(identity) = &args.identity else {
        return login_through_mount(&args, &pw, &path);
    };
    let server = args
        .server
        .as_deref()
        .context("--identity needs --server URL (or CSAP_SERVER)")?;
    let me = nix::unistd::getuid().as_raw();
    let uid = args.uid.unwrap_or(me);
    runtime()?.block_on(async move {
        let client = LicenseClient::connect(server, identity)
            .await
            .with_context(|| format!("cannot connect as the device in {}", identity.display()))?;
        let (token, expires) = client.login(&args.user, &pw, uid).await?;
        token
            .save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "logged in as {} on {} for uid {uid} until {}; token in {}",
            args.user,
            client.device(),
            wire::rfc3339(expires),
            path.display()
        );
        if uid != me {
            // The mount binds a handed-over token to the sender's uid: this one is for a
            // token file (`csap mount --token-file UID:PATH`).
            println!(
                "the token is for uid {uid}: give it to the mount with --token-file {uid}:{}",
                path.display()
            );
            return Ok(());
        }
        hand_over_session(args.socket.as_deref(), &token)
    })
}

/// `csap login` without a device identity: the mount on the session socket logs the user in
/// with its own, for the uid the kernel reports for this process, and keeps the session.
fn login_through_mount(args: &LoginArgs, password: &str, token_file: &Path) -> Result<()> {
    let socket = args
        .socket
        .clone()
        .or_else(csapfs::session::default_socket_path)
        .context("no mount session socket: give --socket PATH (or set XDG_RUNTIME_DIR)")?;
    if !socket.exists() {
        bail!(
            "no mount listens at {}: give the mount's --socket PATH, or log in with the device \
             identity (--identity DIR --server URL; needs read access to the device key)",
            socket.display()
        );
    }
    let (bound, token) = csapfs::session::login_through(&socket, &args.user, password)
        .with_context(|| format!("login through the mount at {}", socket.display()))?;
    token
        .save(token_file)
        .with_context(|| format!("cannot write {}", token_file.display()))?;
    println!(
        "logged in as {} through the mount at {} for uid {} until {}; token in {}",
        args.user,
        socket.display(),
        bound.uid,
        wire::rfc3339(bound.expires_at),
        token_file.display()
    );
    Ok(())
}

/// Gives the token to the local mount over its session socket (DESIGN §6). No socket at the
/// default path is normal (no mount running, or one reading token files): a note, not an error.
/// An explicit `--socket` that fails is an error.
fn hand_over_session(explicit: Option<&Path>, token: &UserToken) -> Result<()> {
    let Some(path) = explicit
        .map(Path::to_path_buf)
        .or_else(csapfs::session::default_socket_path)
    else {
        return Ok(());
    };
    if explicit.is_none() && !path.exists() {
        println!(
            "no mount session socket at {} (the mount reads the token file instead)",
            path.display()
        );
        return Ok(());
    }
    let bound = csapfs::session::hand_over(&path, token)
        .with_context(|| format!("cannot hand the session to the mount at {}", path.display()))?;
    println!(
        "session handed to the mount at {} for uid {}",
        path.display(),
        bound.uid
    );
    Ok(())
}

/// BLAKE3 of a file, lowercase hex: the digest attestation computes for an executable.
pub(crate) fn digest_file(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    csapfs::license_source::attest::hash_file(f)
        .with_context(|| format!("cannot read {}", path.display()))
}

pub fn run_app(cmd: AppCommand) -> Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            AppCommand::Register {
                path,
                name,
                version,
                vendor,
                allow_jit,
                allow_user_namespaces,
                libraries,
                conn,
            } => {
                let digest = digest_file(&path)?;
                let code = keyserver_client::wire::AppCode {
                    allow_jit,
                    allow_user_namespaces,
                    libraries: libraries
                        .iter()
                        .map(|l| digest_file(l))
                        .collect::<Result<_>>()?,
                };
                let app = conn
                    .admin()?
                    .register_app(&RegisterAppRequest {
                        digest,
                        name,
                        version,
                        vendor,
                        code,
                    })
                    .await?;
                println!(
                    "registered {} {} blake3 {}{}",
                    app.name,
                    app.version,
                    app.digest,
                    code_summary(&app.code)
                );
            }
            AppCommand::Revoke {
                digest,
                name,
                version,
                conn,
            } => {
                let r = conn
                    .admin()?
                    .revoke_app(&RevokeAppRequest {
                        digest,
                        name,
                        version,
                    })
                    .await?;
                println!("revoked {} build(s)", r.revoked);
            }
            AppCommand::List { conn } => {
                for a in conn.admin()?.list_apps().await? {
                    let state = if a.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<16} {:<10} {} {state}{}",
                        a.name,
                        a.version,
                        a.digest,
                        code_summary(&a.code)
                    );
                }
            }
        }
        Ok(())
    })
}

/// " (allows jit, 2 libraries)" for what a build may map beyond the defaults, else "".
fn code_summary(code: &keyserver_client::wire::AppCode) -> String {
    let mut allows = Vec::new();
    if code.allow_jit {
        allows.push("jit".to_string());
    }
    if code.allow_user_namespaces {
        allows.push("user namespaces".to_string());
    }
    if !code.libraries.is_empty() {
        allows.push(format!("{} libraries", code.libraries.len()));
    }
    if allows.is_empty() {
        String::new()
    } else {
        format!(" (allows {})", allows.join(", "))
    }
}

pub fn run_scope(cmd: ScopeCommand) -> Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            ScopeCommand::Create { name, conn } => {
                let s = conn.admin()?.create_scope(&name).await?;
                println!(
                    "created scope {} (id {}, version {})",
                    s.name, s.scope_id, s.current_version
                );
            }
            ScopeCommand::List { conn } => {
                for s in conn.admin()?.list_scopes().await? {
                    println!(
                        "{:<24} id {} version {} revoked {:?}",
                        s.name, s.scope_id, s.current_version, s.revoked_versions
                    );
                }
            }
        }
        Ok(())
    })
}

fn parse_action(s: &str) -> Result<Action> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .with_context(|| format!("unknown action {s:?}: use read, write, create or delete"))
}

pub fn run_keys(cmd: KeysCommand) -> Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            KeysCommand::Rotate { scope, conn } => {
                let s = conn.admin()?.rotate(&scope).await?;
                println!("scope {} now at version {}", s.name, s.current_version);
            }
            KeysCommand::Revoke {
                scope,
                version,
                conn,
            } => {
                let s = conn.admin()?.revoke_key(&scope, version).await?;
                println!(
                    "scope {}: revoked versions {:?}",
                    s.name, s.revoked_versions
                );
            }
            KeysCommand::Issue(a) => {
                let until =
                    wire::parse_time(&a.until, csap_base::unix_now()?).with_context(|| {
                        format!("--until {:?}: give unix seconds, RFC 3339 or +4h", a.until)
                    })?;
                let signed = a
                    .conn
                    .admin()?
                    .issue(&IssueRequest {
                        device: a.device,
                        user: a.user,
                        app_digest: a.app,
                        assets: a.assets,
                        until,
                        action: parse_action(&a.action)?,
                        break_glass: a.break_glass,
                        reason: a.reason,
                    })
                    .await?;
                let text = serde_json::to_vec_pretty(&signed)?;
                std::fs::write(&a.out, text)
                    .with_context(|| format!("cannot write {}", a.out.display()))?;
                let l = &signed.license;
                println!(
                    "license {} for {} on {}: {} granted, {} denied, valid until {} -> {}",
                    l.license_id,
                    l.user,
                    l.device,
                    l.grants.len(),
                    l.denials.len(),
                    wire::rfc3339(l.not_after),
                    a.out.display()
                );
                for d in &l.denials {
                    println!("  denied {}: {}", d.asset_id, d.reason);
                }
            }
        }
        Ok(())
    })
}

fn print_record(r: &AuditRecord, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let app = r
        .app_digest
        .as_deref()
        .map(|d| &d[..d.len().min(12)])
        .unwrap_or("-");
    let count = if r.count > 1 {
        format!(" x{}", r.count)
    } else {
        String::new()
    };
    println!(
        "{} {:<6} {:<9} {:<9} path={} user={} uid={} device={} app={} asset={} rules={} {}{count}",
        wire::rfc3339(r.time),
        r.decision,
        r.action,
        r.source,
        opt(&r.path),
        opt(&r.user),
        r.uid.map_or_else(|| "-".into(), |u| u.to_string()),
        opt(&r.device),
        app,
        opt(&r.asset),
        if r.rule_ids.is_empty() {
            "-".into()
        } else {
            r.rule_ids.join(",")
        },
        opt(&r.reason)
    );
    Ok(())
}

pub fn run_audit(cmd: AuditCommand) -> Result<()> {
    let (follow, json, n, conn) = match cmd {
        AuditCommand::Tail {
            follow,
            json,
            n,
            conn,
        } => (follow, json, n, conn),
        AuditCommand::Query {
            path,
            user,
            device,
            app,
            decision,
            since,
            until,
            limit,
            json,
            conn,
        } => {
            let now = csap_base::unix_now().context("the system clock is unusable")?;
            let q = wire::AuditQuery {
                path,
                user,
                device,
                app,
                decision,
                since: since.map(|s| parse_past(&s, now)).transpose()?,
                until: until.map(|s| parse_past(&s, now)).transpose()?,
                limit: Some(limit),
            };
            return runtime()?.block_on(async move {
                for r in conn.admin()?.audit_query(&q).await? {
                    print_record(&r, json)?;
                }
                Ok(())
            });
        }
    };
    runtime()?.block_on(async move {
        let admin = conn.admin()?;
        let mut last = 0;
        for r in admin.audit_tail(n).await? {
            print_record(&r, json)?;
            last = r.id;
        }
        if !follow {
            return Ok(());
        }
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            for r in admin.audit_after(last, 1000).await? {
                print_record(&r, json)?;
                last = r.id;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse_past;

    #[test]
    fn audit_query_times_are_ages_or_instants() {
        let now = 1_000_000;
        assert_eq!(parse_past("7d", now).unwrap(), now - 7 * 86_400);
        assert_eq!(parse_past("24h", now).unwrap(), now - 24 * 3600);
        assert_eq!(parse_past("30m", now).unwrap(), now - 1800);
        assert_eq!(parse_past("2w", now).unwrap(), now - 14 * 86_400);
        assert_eq!(
            parse_past("2026-12-01T00:00:00Z", now).unwrap(),
            1_796_083_200
        );
        assert_eq!(parse_past("1700000000", now).unwrap(), 1_700_000_000);
        let err = parse_past("last tuesday", now).unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }
}
