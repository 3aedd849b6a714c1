//! `csap app`: application builds registered by the digest attestation measures.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use keyserver::wire::{RegisterAppRequest, RevokeAppRequest};

use super::{runtime, Conn};

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
        #[command(flatten)]
        format: crate::output::Format,
    },
}

/// BLAKE3 of a file, lowercase hex: the digest attestation computes for an executable.
pub(crate) fn digest_file(path: &Path) -> Result<String> {
    csapfs::license_source::attest::app_digest_at(path)
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
                let code = keyserver::wire::AppCode {
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
            AppCommand::List { conn, format } => {
                let apps = conn.admin()?.list_apps().await?;
                format.print(&apps, |apps| {
                    crate::output::lines(apps, |a| {
                        let state = if a.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        format!(
                            "{:<16} {:<10} {} {state}{}",
                            a.name,
                            a.version,
                            a.digest,
                            code_summary(&a.code)
                        )
                    })
                })?;
            }
        }
        Ok(())
    })
}

/// " (allows jit, 2 libraries)" for what a build may map beyond the defaults, else "".
fn code_summary(code: &keyserver::wire::AppCode) -> String {
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
