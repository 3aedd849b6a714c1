//! `csap status` (like `vault status`): is the key server reachable and which version it runs,
//! this identity's enrolment and certificate expiry, the `csap login` session's user and expiry,
//! and the csap mounts on this host with their rules and held licenses (from each mount's status
//! file, see `mount_observer`). Exits non-zero when the key server cannot be reached.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use keyserver::UserToken;
use serde::Serialize;

use crate::mount_observer::MountStatus;

/// How long the key server has to answer.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct StatusArgs {
    /// Key server URL, e.g. https://127.0.0.1:7402.
    #[arg(long, env = "CSAP_SERVER")]
    pub server: Option<String>,
    /// An identity directory of this installation (a device's enrolment, or the admin's).
    #[arg(long, env = "CSAP_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// The `csap login` token file (default: where `csap login` writes it).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub format: crate::output::Format,
}

#[derive(Serialize)]
struct Status {
    server: ServerStatus,
    identity: Option<IdentityStatus>,
    session: Option<SessionStatus>,
    mounts: Vec<MountEntry>,
}

#[derive(Serialize)]
struct ServerStatus {
    url: Option<String>,
    reachable: bool,
    version: Option<String>,
    /// Who the server takes this identity for (`device:ws-07`).
    peer: Option<String>,
    error: Option<String>,
}

#[derive(Serialize)]
struct IdentityStatus {
    dir: PathBuf,
    name: Option<String>,
    /// Unix seconds.
    certificate_expires: Option<i64>,
    error: Option<String>,
}

#[derive(Serialize)]
struct SessionStatus {
    token_file: PathBuf,
    user: Option<String>,
    device: Option<String>,
    uid: Option<u32>,
    /// Unix seconds.
    expires: Option<i64>,
    expired: Option<bool>,
    error: Option<String>,
}

#[derive(Serialize)]
struct MountEntry {
    mountpoint: PathBuf,
    source: String,
    /// What the mount last reported (absent when its status file is not readable here).
    status: Option<MountStatus>,
}

pub fn run(args: StatusArgs) -> Result<()> {
    let status = Status {
        server: server_status(&args),
        identity: args.identity.as_deref().map(identity_status),
        session: session_status(args.token_file.clone()),
        mounts: mounts()?,
    };
    args.format.print(&status, text)?;
    if !status.server.reachable {
        match &status.server.url {
            None => bail!("no key server given: set --server or CSAP_SERVER"),
            Some(url) => bail!(
                "the key server at {url} is unreachable: {}",
                status.server.error.as_deref().unwrap_or("no answer")
            ),
        }
    }
    Ok(())
}

fn server_status(args: &StatusArgs) -> ServerStatus {
    let mut s = ServerStatus {
        url: args.server.clone(),
        reachable: false,
        version: None,
        peer: None,
        error: None,
    };
    let (Some(url), Some(identity)) = (&args.server, &args.identity) else {
        if args.server.is_some() {
            s.error = Some("give --identity DIR (or CSAP_IDENTITY): the key server answers only certificates of its CA".into());
        }
        return s;
    };
    let asked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            rt.block_on(async {
                tokio::time::timeout(
                    SERVER_TIMEOUT,
                    keyserver::client::server_info(url, identity),
                )
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {SERVER_TIMEOUT:?}"))?
                .map_err(anyhow::Error::from)
            })
        });
    match asked {
        Ok(info) => {
            s.reachable = true;
            s.version = Some(info.version).filter(|v| !v.is_empty());
            s.peer = Some(format!("{}:{}", info.peer_kind.as_str(), info.peer));
        }
        Err(e) => s.error = Some(crate::errors::sentence(&e)),
    }
    s
}

fn identity_status(dir: &Path) -> IdentityStatus {
    let mut s = IdentityStatus {
        dir: dir.to_path_buf(),
        name: None,
        certificate_expires: None,
        error: None,
    };
    match certificate(&dir.join(csap_identity::pki::CERT_FILE)) {
        Ok((name, expires)) => {
            s.name = Some(name);
            s.certificate_expires = Some(expires);
        }
        Err(e) => s.error = Some(crate::errors::sentence(&e)),
    }
    s
}

/// The common name and expiry (unix seconds) of a PEM certificate.
fn certificate(path: &Path) -> Result<(String, i64)> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not a PEM certificate: {e}", path.display()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("{} is not a certificate: {e}", path.display()))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((name, cert.validity().not_after.timestamp()))
}

fn session_status(token_file: Option<PathBuf>) -> Option<SessionStatus> {
    let path = token_file.or_else(UserToken::default_path)?;
    let mut s = SessionStatus {
        token_file: path.clone(),
        user: None,
        device: None,
        uid: None,
        expires: None,
        expired: None,
        error: None,
    };
    let claims = UserToken::load(&path)
        .with_context(|| {
            format!(
                "no session: cannot read {} (run `csap login`)",
                path.display()
            )
        })
        .and_then(|t| {
            csap_base::token::read_claims_unverified(t.as_str()).map_err(anyhow::Error::from)
        });
    match claims {
        Ok(c) => {
            s.expired = csap_base::unix_now().ok().map(|now| c.expires_at <= now);
            s.user = Some(c.user);
            s.device = Some(c.device);
            s.uid = Some(c.uid);
            s.expires = Some(c.expires_at);
        }
        Err(e) => s.error = Some(crate::errors::sentence(&e)),
    }
    Some(s)
}

/// csap mounts on this host: `fuse.csapfs` ones (mounted through fusermount3), and plain `fuse`
/// ones whose status file names a live csap mount (a mount made as root keeps no subtype).
fn mounts() -> Result<Vec<MountEntry>> {
    let found = csapfs::fs::fuse_mounts().context("cannot read /proc/self/mountinfo")?;
    Ok(found
        .into_iter()
        .filter_map(|m| {
            let status = crate::mount_observer::status_file(&m.mountpoint)
                .ok()
                .and_then(|p| std::fs::read(p).ok())
                .and_then(|b| serde_json::from_slice::<MountStatus>(&b).ok())
                .filter(|s| std::path::Path::new(&format!("/proc/{}", s.pid)).exists());
            let csap =
                m.fs_type == csapfs::fs::CSAP_FS_TYPE || (m.fs_type == "fuse" && status.is_some());
            csap.then_some(MountEntry {
                mountpoint: m.mountpoint,
                source: m.source,
                status,
            })
        })
        .collect())
}

fn time(t: i64) -> String {
    keyserver::wire::rfc3339(t)
}

fn text(s: &Status) -> String {
    let mut out = Vec::new();
    let srv = &s.server;
    out.push(match (&srv.url, srv.reachable) {
        (None, _) => "key server  not configured (--server or CSAP_SERVER)".to_string(),
        (Some(url), true) => format!(
            "key server  {url}  reachable, version {}, as {}",
            srv.version.as_deref().unwrap_or("unknown"),
            srv.peer.as_deref().unwrap_or("?")
        ),
        (Some(url), false) => format!(
            "key server  {url}  UNREACHABLE: {}",
            srv.error.as_deref().unwrap_or("no answer")
        ),
    });
    match &s.identity {
        None => out.push("identity    none given (--identity or CSAP_IDENTITY)".into()),
        Some(i) => out.push(match (&i.name, i.certificate_expires, &i.error) {
            (Some(name), Some(exp), _) => format!(
                "identity    {name} in {}, certificate expires {}",
                i.dir.display(),
                time(exp)
            ),
            (_, _, Some(e)) => format!("identity    {}: {e}", i.dir.display()),
            _ => format!("identity    {}", i.dir.display()),
        }),
    }
    match &s.session {
        None => out
            .push("session     none (no token file location: set XDG_RUNTIME_DIR or HOME)".into()),
        Some(t) => out.push(match (&t.user, t.expires, &t.error) {
            (Some(user), Some(exp), _) => format!(
                "session     {user} on {} (uid {}), {} {}",
                t.device.as_deref().unwrap_or("?"),
                t.uid.map_or("?".into(), |u| u.to_string()),
                if t.expired == Some(true) {
                    "EXPIRED"
                } else {
                    "until"
                },
                time(exp)
            ),
            (_, _, Some(e)) => format!("session     {e}"),
            _ => "session     unreadable".into(),
        }),
    }
    if s.mounts.is_empty() {
        out.push("mounts      none on this host".into());
    }
    for m in &s.mounts {
        let detail = match &m.status {
            None => "no status file readable here".to_string(),
            Some(st) => {
                let mut parts = vec![format!("pid {}", st.pid), st.key_source.clone()];
                if let Some(r) = st.rules {
                    parts.push(format!("{r} rules"));
                }
                if let Some(l) = st.licenses {
                    parts.push(format!("{l} licenses held"));
                }
                if let Some(u) = st.audit_spool_unshipped {
                    parts.push(format!("{u} audit records unshipped"));
                }
                if st.audit_spool_full == Some(true) {
                    parts.push("AUDIT SPOOL FULL".into());
                }
                parts.join(", ")
            }
        };
        out.push(format!(
            "mount       {} ({})  {detail}",
            m.mountpoint.display(),
            m.source
        ));
    }
    out.join("\n")
}
