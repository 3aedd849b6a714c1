//! `csap scope` and `csap keys`: key scopes, their seed versions, and admin-issued license
//! files.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use keyserver::wire::{self, Action, IssueRequest};

use super::{runtime, Conn};

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
        #[command(flatten)]
        format: crate::output::Format,
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
            ScopeCommand::List { conn, format } => {
                let scopes = conn.admin()?.list_scopes().await?;
                format.print(&scopes, |scopes| {
                    crate::output::lines(scopes, |s| {
                        format!(
                            "{:<24} id {} version {} revoked {:?}",
                            s.name, s.scope_id, s.current_version, s.revoked_versions
                        )
                    })
                })?;
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
                let until = wire::parse_time(&a.until, keyserver::now()?).with_context(|| {
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
