//! `csap device|workflow|auditor|service`: the principals of the control plane and their
//! certificates from the key server's CA.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use keyserver::wire;

use super::{runtime, Conn};

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
        #[command(flatten)]
        format: crate::output::Format,
    },
    /// Show one device: whether it is active, and each certificate issued to it.
    Show {
        name: String,
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        format: crate::output::Format,
    },
}

/// `csap device show`: a device and its certificates.
#[derive(serde::Serialize)]
struct DeviceView {
    name: String,
    /// `active` when a certificate of it is unrevoked, else `revoked`.
    state: &'static str,
    certificates: Vec<wire::DeviceInfo>,
}

fn device_line(d: &wire::DeviceInfo) -> String {
    let state = match d.revoked_at {
        Some(t) => format!("revoked {}", wire::rfc3339(t)),
        None => "active".into(),
    };
    format!(
        "{:<24} {:<6} {} {}  {state}",
        d.name,
        d.kind.as_str(),
        d.serial,
        wire::rfc3339(d.issued_at)
    )
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
                let grant = authz::principal::WorkflowGrant { scopes, paths };
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
            DeviceCommand::List { conn, format } => {
                let devices = conn.admin()?.list_devices().await?;
                format.print(&devices, |d| crate::output::lines(d, device_line))?;
            }
            DeviceCommand::Show { name, conn, format } => {
                let certificates: Vec<wire::DeviceInfo> = conn
                    .admin()?
                    .list_devices()
                    .await?
                    .into_iter()
                    .filter(|d| d.name == name && d.kind == wire::PrincipalKind::Device)
                    .collect();
                if certificates.is_empty() {
                    anyhow::bail!("no device {name} is enrolled (see `csap device list`)");
                }
                let active = certificates.iter().any(|c| c.revoked_at.is_none());
                let view = DeviceView {
                    name,
                    state: if active { "active" } else { "revoked" },
                    certificates,
                };
                format.print(&view, |v| {
                    format!(
                        "device {} {}\n{}",
                        v.name,
                        v.state,
                        crate::output::lines(&v.certificates, device_line)
                    )
                })?;
            }
        }
        Ok(())
    })
}
