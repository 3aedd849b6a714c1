//! `csap user` and `csap login`: users, and tokens bound to this device and a local uid
//! (through the mount's session socket, or with the device identity).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use keyserver::client::LicenseClient;
use keyserver::wire;
use keyserver::UserToken;

use super::{read_password, runtime, Conn};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is typed without echo, or is the first line of a piped stdin.
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
    /// Enable a disabled user: they can log in again (tokens from before stay void).
    Enable {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List users and whether each is enabled.
    List {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        format: crate::output::Format,
    },
}

/// `csap idp`: which OpenID Connect provider authenticates an organization's people
/// (delegated authentication). They log in with `csap login --oidc ORGANIZATION` and are
/// named `SUBJECT@ORGANIZATION` (or `p-PSEUDONYM@ORGANIZATION`) in rules and the audit trail.
#[derive(Subcommand)]
pub enum IdpCommand {
    /// Trust ISSUER (https; http only on loopback) for ORGANIZATION's people, csap being
    /// registered there as CLIENT_ID (a public client: authorization code with PKCE, redirect
    /// URIs on http://127.0.0.1); replaces the provider the organization had.
    Add {
        organization: String,
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        client_id: String,
        /// Name its people by a keyed hash of their subject, never the subject itself.
        #[arg(long)]
        pseudonymous: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the organizations' providers.
    List {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        format: crate::output::Format,
    },
    /// Stop trusting an organization's provider: its people log in no more (tokens already
    /// issued run out; `csap user disable` ends one at once).
    Remove {
        organization: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub fn run_idp(cmd: IdpCommand) -> Result<()> {
    match cmd {
        IdpCommand::Add {
            organization,
            issuer,
            client_id,
            pseudonymous,
            conn,
        } => runtime()?.block_on(async move {
            let idp = conn
                .admin()?
                .put_identity_provider(&organization, &issuer, &client_id, pseudonymous)
                .await?;
            println!(
                "{} logs in at {} as client {}{}",
                idp.organization,
                idp.issuer,
                idp.client_id,
                if idp.pseudonymous {
                    " (pseudonymous)"
                } else {
                    ""
                }
            );
            Ok(())
        }),
        IdpCommand::List { conn, format } => runtime()?.block_on(async move {
            let list = conn.admin()?.list_identity_providers().await?;
            format.print(&list, |list| {
                crate::output::lines(list, |p| {
                    format!(
                        "{:<20} {:<40} {:<20} {}",
                        p.organization,
                        p.issuer,
                        p.client_id,
                        if p.pseudonymous {
                            "pseudonymous"
                        } else {
                            "named"
                        }
                    )
                })
            })
        }),
        IdpCommand::Remove { organization, conn } => runtime()?.block_on(async move {
            conn.admin()?
                .remove_identity_provider(&organization)
                .await?;
            println!("{organization}'s provider is no longer trusted");
            Ok(())
        }),
    }
}

/// `csap login`: through the local mount's session socket (any user), or directly with the
/// device identity (`--identity`, for whoever can read the device key: root, the mount's
/// operator). Either way the token is bound to this device and a local uid.
#[derive(Args)]
pub struct LoginArgs {
    /// User name (not with --oidc: the provider says who logs in).
    #[arg(long, env = "USER", required_unless_present = "oidc")]
    pub user: Option<String>,
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
    /// Log in at this organization's own OpenID Connect provider instead of with a password
    /// (delegated authentication; `csap idp add` registers it): prints the URL to open in a
    /// browser, waits for the provider to send the browser back, and has the key server trade
    /// the ID token for a token. Without --identity, through the mount's session socket (the
    /// mount asks the key server where the organization logs in and trades the ID token with
    /// its device identity, for your uid); with --identity, also --server.
    #[arg(long, value_name = "ORGANIZATION")]
    pub oidc: Option<String>,
    /// With --oidc: how long to wait for the browser login, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300, requires = "oidc")]
    pub oidc_timeout: u64,
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
        UserCommand::Enable { name, conn } => runtime()?.block_on(async move {
            conn.admin()?.enable_user(&name).await?;
            println!("enabled user {name}; they log in again to get a token");
            Ok(())
        }),
        UserCommand::List { conn, format } => runtime()?.block_on(async move {
            let users = conn.admin()?.list_users().await?;
            format.print(&users, |users| {
                crate::output::lines(users, |u| {
                    format!(
                        "{:<24} {:<8} added {}",
                        u.name,
                        if u.disabled { "disabled" } else { "enabled" },
                        wire::rfc3339(u.created_at)
                    )
                })
            })
        }),
    }
}

pub fn run_login(args: LoginArgs) -> Result<()> {
    if let Some(organization) = args.oidc.clone() {
        return run_oidc_login(args, &organization);
    }
    let user = args
        .user
        .clone()
        .context("give --user NAME (or set USER)")?;
    let pw = read_password(&format!("password for {user}"))?;
    let path = match &args.token_file {
        Some(p) => p.clone(),
        None => UserToken::default_path()
            .context("neither XDG_RUNTIME_DIR nor HOME is set: give --token-file")?,
    };
    let Some(identity) = &args.identity else {
        return login_through_mount(&args, &user, &pw, &path);
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
        let (token, expires) = client.login(&user, &pw, uid).await?;
        let logged_in = Issued {
            token,
            expires,
            who: user,
            device: client.device(),
            uid,
        };
        logged_in.keep(&path, me, args.socket.as_deref())
    })
}

/// A token the key server issued to a login with the device identity.
struct Issued<'a> {
    token: UserToken,
    expires: i64,
    /// Who it names, as printed (`alice`, `alice@acme-post (acme-post)`).
    who: String,
    device: &'a str,
    uid: u32,
}

impl Issued<'_> {
    /// Writes the token to `path`, says so, and hands it to the mount when it is for the uid
    /// running this (`me`).
    fn keep(self, path: &Path, me: u32, socket: Option<&Path>) -> Result<()> {
        let Issued {
            token,
            expires,
            who,
            device,
            uid,
        } = self;
        token
            .save(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "logged in as {who} on {device} for uid {uid} until {}; token in {}",
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
        hand_over_session(socket, &token)
    }
}

/// `csap login --oidc ORGANIZATION [--identity DIR --server URL]`: the person logs in at the
/// organization's provider in a browser; the key server verifies the ID token and answers with
/// a token for the participant it names, bound to this device and uid (through the mount
/// without `--identity`).
fn run_oidc_login(args: LoginArgs, organization: &str) -> Result<()> {
    let path = match &args.token_file {
        Some(p) => p.clone(),
        None => UserToken::default_path()
            .context("neither XDG_RUNTIME_DIR nor HOME is set: give --token-file")?,
    };
    let Some(identity) = &args.identity else {
        return oidc_login_through_mount(&args, organization, &path);
    };
    let server = args
        .server
        .as_deref()
        .context("--oidc with --identity needs --server URL (or CSAP_SERVER)")?;
    let me = nix::unistd::getuid().as_raw();
    let uid = args.uid.unwrap_or(me);
    runtime()?.block_on(async move {
        let client = LicenseClient::connect(server, identity)
            .await
            .with_context(|| format!("cannot connect as the device in {}", identity.display()))?;
        let idp = client.identity_provider(organization).await?;
        let (id_token, nonce) =
            browser_login(organization, &idp.issuer, &idp.client_id, args.oidc_timeout).await?;
        let (token, expires, user) = client
            .login_oidc(organization, &id_token, &nonce, uid)
            .await?;
        let logged_in = Issued {
            token,
            expires,
            who: format!("{user} ({organization})"),
            device: client.device(),
            uid,
        };
        logged_in.keep(&path, me, args.socket.as_deref())
    })
}

/// The browser half of `--oidc`: prints the provider's authorization URL, waits (at most
/// `timeout_secs`) for the browser to come back, and returns the ID token and the nonce the
/// authorization request carried (the key server checks the token holds it).
async fn browser_login(
    organization: &str,
    issuer: &str,
    client_id: &str,
    timeout_secs: u64,
) -> Result<(String, String)> {
    let flow = super::oidc::start(issuer, client_id).await?;
    eprintln!(
        "open this URL in a browser to log in at {organization}'s provider ({issuer}):\n  {}",
        flow.authorization_url
    );
    let nonce = flow.nonce.clone();
    let id_token = flow
        .id_token(std::time::Duration::from_secs(timeout_secs))
        .await?;
    Ok((id_token, nonce))
}

/// The mount's session socket for a login through it: `--socket` or the default path, which
/// must exist (without a mount there is no device identity to log in with).
fn mount_socket(args: &LoginArgs) -> Result<PathBuf> {
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
    Ok(socket)
}

/// `csap login --oidc ORGANIZATION` without a device identity: the mount on the session
/// socket says where the organization logs in, this process runs the browser flow, and the
/// mount has the key server trade the ID token for a token bound to the uid the kernel
/// reports for this process, and keeps the session.
fn oidc_login_through_mount(args: &LoginArgs, organization: &str, token_file: &Path) -> Result<()> {
    let socket = mount_socket(args)?;
    let provider = csapfs::session::oidc_provider(&socket, organization)
        .with_context(|| format!("login through the mount at {}", socket.display()))?;
    let (id_token, nonce) = runtime()?.block_on(browser_login(
        organization,
        &provider.issuer,
        &provider.client_id,
        args.oidc_timeout,
    ))?;
    let logged_in = csapfs::session::login_through_oidc(&socket, organization, &id_token, &nonce)
        .with_context(|| format!("login through the mount at {}", socket.display()))?;
    logged_in
        .token
        .save(token_file)
        .with_context(|| format!("cannot write {}", token_file.display()))?;
    println!(
        "logged in as {} ({organization}) through the mount at {} for uid {} until {}; token in {}",
        logged_in.user,
        socket.display(),
        logged_in.bound.uid,
        wire::rfc3339(logged_in.bound.expires_at),
        token_file.display()
    );
    Ok(())
}

/// `csap login` without a device identity: the mount on the session socket logs the user in
/// with its own, for the uid the kernel reports for this process, and keeps the session.
fn login_through_mount(
    args: &LoginArgs,
    user: &str,
    password: &str,
    token_file: &Path,
) -> Result<()> {
    let socket = mount_socket(args)?;
    let (bound, token) = csapfs::session::login_through(&socket, user, password)
        .with_context(|| format!("login through the mount at {}", socket.display()))?;
    token
        .save(token_file)
        .with_context(|| format!("cannot write {}", token_file.display()))?;
    println!(
        "logged in as {user} through the mount at {} for uid {} until {}; token in {}",
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
