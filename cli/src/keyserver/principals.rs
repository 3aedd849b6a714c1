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
