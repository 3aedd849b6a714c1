//! What a running `csap mount` tells operators: its metrics (`--metrics-listen ADDR`: a
//! plain-HTTP listener with /metrics, /healthz, /readyz; `--metrics-textfile PATH`: the same
//! exposition rewritten atomically for node_exporter's textfile collector) and its status file
//! (`csap status` reads it: rules, held licenses, audit spool), refreshed every
//! [`REFRESH`] by one thread of its own.
//!
//! The status file sits beside the pid file (`/run/csap/mount-NAME.status.json` as root) and is
//! removed when the mount ends.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use csapfs::license_source::{KeyServerSource, SourceStats};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::atomic::{write_atomically, Existing};

/// How often gauges, the status file and the textfile are refreshed.
pub const REFRESH: Duration = Duration::from_secs(2);

#[derive(Args, Debug, Clone, Default)]
pub struct ObserveArgs {
    /// Serve /metrics (Prometheus), /healthz and /readyz over plain HTTP on this address (keep
    /// it on loopback: it has no authentication), e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Write the Prometheus exposition to this file every 2 s (atomically, for node_exporter's
    /// textfile collector: give a path ending in .prom in its directory).
    #[arg(long, value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,
}

/// What `csap status` reads about one mount.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountStatus {
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub backing: PathBuf,
    /// `key-file` or `key-server`.
    pub key_source: String,
    pub server: Option<String>,
    pub device: Option<String>,
    /// Rules from ARDS in force (absent without `--ards`).
    pub rules: Option<usize>,
    /// Licenses held (absent with `--key-file`).
    pub licenses: Option<u64>,
    /// Audit records not yet taken by the key server, and whether the spool is at its cap.
    pub audit_spool_unshipped: Option<u64>,
    pub audit_spool_full: Option<bool>,
    pub metrics_listen: Option<SocketAddr>,
    /// Unix seconds of this reading.
    pub updated: i64,
}

/// The status file of the mount on `mountpoint` (canonical).
pub fn status_file(mountpoint: &Path) -> Result<PathBuf> {
    let pid = crate::daemon_files::default_pid_file(mountpoint)?;
    Ok(pid.with_extension("status.json"))
}

/// The mount's side of `/readyz` and of a scrape.
struct MountProbe {
    source: Option<Arc<KeyServerSource>>,
}

impl authz::ops::Probe for MountProbe {
    fn name(&self) -> &'static str {
        "mount"
    }

    fn ready(&self) -> authz::ops::ProbeFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match self.source.as_ref().and_then(|s| s.stats().spool) {
                Some(spool) if spool.full => {
                    Err("the audit spool is full (the key server has not taken its records)".into())
                }
                _ => Ok(()),
            }
        })
    }

    fn collect(&self) -> authz::ops::ProbeFuture<'_, ()> {
        Box::pin(async move {
            if let Some(source) = &self.source {
                csapfs::observe::publish(&source.stats());
            }
        })
    }
}

/// The observer thread; stopped (and the status file removed) when dropped.
pub struct Observer {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    status_path: Option<PathBuf>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.status_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Everything the observer reports on.
pub struct Observed {
    pub mountpoint: PathBuf,
    pub backing: PathBuf,
    pub server: Option<String>,
    pub source: Option<Arc<KeyServerSource>>,
}

/// Starts the observer: binds `--metrics-listen` (before returning, so a bad address fails the
/// mount's start) and writes the first status file.
pub fn start(args: &ObserveArgs, observed: Observed) -> Result<Observer> {
    let exporting = args.metrics_listen.is_some() || args.metrics_textfile.is_some();
    let handle = if exporting {
        Some(authz::ops::recorder().map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let status_path = match observed.mountpoint.canonicalize() {
        Ok(canonical) => match status_file(&canonical) {
            Ok(p) => crate::daemon_files::create_parent(&p).ok().map(|_| p),
            Err(e) => {
                tracing::warn!(error = %e, "no status file for this mount (csap status will not see its counts)");
                None
            }
        },
        Err(_) => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the observer's runtime")?;
    let probe = Arc::new(MountProbe {
        source: observed.source.clone(),
    });
    let listener = match args.metrics_listen {
        Some(addr) => Some(
            runtime
                .block_on(authz::ops::serve(addr, vec![probe.clone()]))
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let listen_addr = listener.as_ref().map(|l| l.addr);
    if let Some(l) = &listener {
        eprintln!("csap: metrics on {}/metrics", l.url());
    }
    let report = Report {
        observed,
        status_path: status_path.clone(),
        textfile: args.metrics_textfile.clone(),
        handle,
        listen_addr,
    };
    report.once();
    let (stop, mut stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("csap-observer".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut tick = tokio::time::interval(REFRESH);
                loop {
                    tokio::select! {
                        _ = tick.tick() => report.once(),
                        _ = stop_rx.wait_for(|s| *s) => break,
                    }
                }
                if let Some(l) = listener {
                    l.shutdown().await;
                }
            });
        })
        .context("cannot start the observer thread")?;
    Ok(Observer {
        stop,
        thread: Some(thread),
        status_path,
    })
}

/// One refresh: gauges, the status file, the textfile.
struct Report {
    observed: Observed,
    status_path: Option<PathBuf>,
    textfile: Option<PathBuf>,
    handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    listen_addr: Option<SocketAddr>,
}

impl Report {
    fn once(&self) {
        let stats = self.observed.source.as_ref().map(|s| s.stats());
        if let Some(stats) = &stats {
            csapfs::observe::publish(stats);
        }
        if let Some(path) = &self.status_path {
            if let Err(e) = self.write_status(path, stats.as_ref()) {
                tracing::warn!(error = %crate::errors::sentence(&e), "cannot write the status file");
            }
        }
        if let (Some(path), Some(handle)) = (&self.textfile, &self.handle) {
            handle.run_upkeep();
            let text = handle.render();
            let written = write_atomically(path, ".prom-", Existing::Replace, |out| {
                out.write_all(text.as_bytes())?;
                Ok(())
            });
            if let Err(e) = written {
                tracing::warn!(error = %crate::errors::sentence(&e), path = %path.display(), "cannot write the metrics textfile");
            }
        }
    }

    fn write_status(&self, path: &Path, stats: Option<&SourceStats>) -> Result<()> {
        let o = &self.observed;
        let status = MountStatus {
            pid: std::process::id(),
            mountpoint: o.mountpoint.clone(),
            backing: o.backing.clone(),
            key_source: if o.source.is_some() {
                "key-server".into()
            } else {
                "key-file".into()
            },
            server: o.server.clone(),
            device: o.source.as_ref().map(|s| s.device().to_string()),
            rules: stats.and_then(|s| s.rules),
            licenses: stats.map(|s| s.licenses),
            audit_spool_unshipped: stats.and_then(|s| s.spool).map(|s| s.unshipped),
            audit_spool_full: stats.and_then(|s| s.spool).map(|s| s.full),
            metrics_listen: self.listen_addr,
            updated: csap_base::unix_now().unwrap_or(0),
        };
        write_atomically(path, ".status-", Existing::Replace, |out| {
            serde_json::to_writer(&mut *out, &status)?;
            Ok(())
        })
    }
}
