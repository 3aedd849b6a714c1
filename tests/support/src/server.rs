//! `csap server` as a child process: authz, ARDS and the key server on loopback TLS with their
//! SQLite files in a data directory, found from what the server prints when it is up.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::process::Proc;

/// How long a debug build of `csap server` may take to come up (it makes its CA and keys on the
/// first start).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start `csap server`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The `csap` binary (or a wrapper that execs it with the same arguments).
    pub csap: PathBuf,
    pub data_dir: PathBuf,
    /// `--listen`: port 0 picks three free ports; a fixed first port (see [`free_port_triple`])
    /// lets a restart come back on the same three.
    pub listen: SocketAddr,
    /// `--device-rate RATE/BURST`, the key server's per-device license limit.
    pub device_rate: Option<String>,
    /// `--store URL`: authz and ARDS on this PostgreSQL database (e.g. a
    /// [`crate::postgres::TestDb`]'s); `None`: SQLite under the data directory.
    pub store: Option<String>,
    /// `--store-ca FILE`: the CA of a PostgreSQL server with TLS (see
    /// [`crate::postgres::tls_server`]).
    pub store_ca: Option<PathBuf>,
    /// `--replicas N` (with a `store`): N processes under this one; [`ServerInfo`] describes
    /// replica 0 and lists them all in [`ServerInfo::replicas`].
    pub replicas: u16,
    /// `CSAP_LOG` of the server.
    pub log_level: String,
    /// Where its standard output (what it prints when up) and its log go.
    pub out: PathBuf,
    pub log: PathBuf,
}

impl ServerOptions {
    /// Data in `dir/server`, output and log beside it, on three free ports.
    pub fn new(csap: &Path, dir: &Path) -> ServerOptions {
        ServerOptions {
            csap: csap.to_path_buf(),
            data_dir: dir.join("server"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            device_rate: None,
            store: None,
            store_ca: None,
            replicas: 1,
            log_level: "warn".into(),
            out: dir.join("server.out"),
            log: dir.join("server.log"),
        }
    }
}

/// Where the running services are, as `csap server` printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub authz_url: String,
    pub ards_url: String,
    pub keyserver_url: String,
    /// authz's TLS certificate (`csap request --ca`).
    pub authz_cert: PathBuf,
    /// ARDS's TLS certificate (`csap mount --ards-ca`).
    pub ards_cert: PathBuf,
    /// The admin identity directory (cert.pem, key.pem, ca.pem).
    pub admin_dir: PathBuf,
    /// authz's issuer public key (`csap mount --issuer-pub`).
    pub issuer_pub: PathBuf,
    /// `http://ADDR` of the operations listener (/metrics, /healthz, /readyz).
    pub metrics_url: Option<String>,
    /// The key server's rule cache: a rule id in it is in the key server's evaluator (the
    /// subscription swaps the evaluator before it writes the file).
    pub rules_cache: PathBuf,
    /// With `--replicas`: each replica's process and URLs, replica 0 first; empty otherwise.
    pub replicas: Vec<ReplicaInfo>,
}

/// One replica of `csap server --replicas N`, as it printed itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    pub pid: u32,
    pub data_dir: PathBuf,
    pub authz_url: String,
    pub ards_url: String,
    pub keyserver_url: String,
}

/// The first `https://` word of the line starting with `prefix` in `lines`.
fn url_in<'a>(lines: impl IntoIterator<Item = &'a str>, prefix: &str) -> Option<String> {
    lines
        .into_iter()
        .find(|l| l.starts_with(prefix))?
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .map(str::to_owned)
}

/// The `replica I (pid P, data dir D)` blocks `csap server --replicas` prints, in order.
fn parse_replicas(printed: &str) -> Result<Vec<ReplicaInfo>> {
    let lines: Vec<&str> = printed.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("replica ") && lines[i].contains("(pid "))
        .collect();
    let mut replicas = Vec::new();
    for (n, &at) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(lines.len());
        let block = &lines[at..end];
        let header = block[0];
        let (pid, dir) = header
            .split_once("(pid ")
            .and_then(|(_, rest)| rest.split_once(", data dir "))
            .with_context(|| format!("not a replica line: {header}"))?;
        let url = |prefix: &str| {
            url_in(block.iter().copied(), prefix)
                .with_context(|| format!("no {prefix:?} URL for {header}:\n{printed}"))
        };
        replicas.push(ReplicaInfo {
            pid: pid.parse().with_context(|| format!("pid in {header}"))?,
            data_dir: PathBuf::from(dir.trim_end_matches(')')),
            authz_url: url("authz ")?,
            ards_url: url("ARDS ")?,
            keyserver_url: url("key server ")?,
        });
    }
    Ok(replicas)
}

impl ServerInfo {
    /// Reads the start-up lines of `csap server` (see `EmbeddedServer::describe`).
    fn parse(printed: &str, data_dir: &Path) -> Result<ServerInfo> {
        let line = |prefix: &str| {
            printed
                .lines()
                .find(|l| l.starts_with(prefix))
                .with_context(|| format!("csap server printed no {prefix:?} line:\n{printed}"))
        };
        let url = |prefix: &str| -> Result<String> {
            url_in([line(prefix)?], prefix)
                .with_context(|| format!("no URL on the {prefix:?} line:\n{printed}"))
        };
        let between = |prefix: &str, open: &str, close: &str| -> Result<PathBuf> {
            let l = line(prefix)?;
            let rest = l
                .split_once(open)
                .with_context(|| format!("no {open:?} on the {prefix:?} line: {l}"))?
                .1;
            Ok(PathBuf::from(
                rest.split(close).next().unwrap_or(rest).trim(),
            ))
        };
        Ok(ServerInfo {
            authz_url: url("authz ")?,
            ards_url: url("ARDS ")?,
            keyserver_url: url("key server ")?,
            authz_cert: between("authz ", "(trust ", ")")?,
            ards_cert: between("ARDS ", "(trust ", ")")?,
            admin_dir: between("admin identity:", "admin identity:", "  (")?,
            issuer_pub: between("authz issuer key:", "authz issuer key:", "\n")?,
            metrics_url: printed
                .lines()
                .find(|l| l.starts_with("metrics "))
                .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
                .map(|w| w.trim_end_matches("/metrics").to_owned()),
            rules_cache: data_dir.join("keyserver-rules.json"),
            replicas: parse_replicas(printed)?,
        })
    }
}

/// A running `csap server`; stopped (SIGTERM) when dropped.
pub struct CsapServer {
    proc: Proc,
    pub info: ServerInfo,
    /// Everything it printed up to its last start-up line.
    pub printed: String,
    opts: ServerOptions,
}

impl CsapServer {
    /// Starts it and waits until it says where its services are.
    pub fn start(opts: &ServerOptions) -> Result<CsapServer> {
        let mut cmd = Command::new(&opts.csap);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&opts.data_dir)
            .arg("--listen")
            .arg(opts.listen.to_string())
            // A free port: PORT+3 of a fixed triple is nobody's to take.
            .args(["--metrics-listen", "127.0.0.1:0"]);
        if let Some(rate) = &opts.device_rate {
            cmd.args(["--device-rate", rate]);
        }
        if let Some(url) = &opts.store {
            cmd.args(["--store", url]);
        }
        if let Some(ca) = &opts.store_ca {
            cmd.arg("--store-ca").arg(ca);
        }
        if opts.replicas > 1 {
            cmd.args(["--replicas", &opts.replicas.to_string()]);
        }
        // What the developer's shell points at is not this installation.
        for var in [
            "CSAP_SERVER",
            "CSAP_IDENTITY",
            "CSAP_ROOT_KEY",
            "CSAP_STORE",
        ] {
            cmd.env_remove(var);
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&opts.log)
            .with_context(|| format!("cannot open {}", opts.log.display()))?;
        cmd.env("CSAP_LOG", &opts.log_level)
            .stdin(Stdio::null())
            .stdout(File::create(&opts.out)?)
            .stderr(log);
        let mut proc = Proc::spawn(&mut cmd, "csap server")?;
        let deadline = Instant::now() + START_TIMEOUT;
        let printed = loop {
            let text = std::fs::read_to_string(&opts.out).unwrap_or_default();
            if text.contains("\nnext:") {
                break text;
            }
            if let Some(status) = proc.exited()? {
                bail!(
                    "csap server exited with {status}; its log ({}):\n{}",
                    opts.log.display(),
                    std::fs::read_to_string(&opts.log).unwrap_or_default()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "csap server did not start within {START_TIMEOUT:?} (log {})",
                opts.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let info = ServerInfo::parse(&printed, &opts.data_dir)?;
        for f in [&info.authz_cert, &info.ards_cert, &info.issuer_pub] {
            ensure!(f.exists(), "csap server did not create {}", f.display());
        }
        Ok(CsapServer {
            proc,
            info,
            printed,
            opts: opts.clone(),
        })
    }

    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        self.proc.pid()
    }

    /// SIGTERM, then up to `within` for the exit: its status, `None` if it did not stop.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        self.proc.terminate(within)
    }

    /// Stops it (SIGTERM; killed after a grace period) and waits until it is gone, so its
    /// ports and data-directory lock are free.
    pub fn stop(mut self) {
        self.proc.stop();
    }
}

/// A loopback address whose port and the next two are free now, so the services can be
/// restarted on the same three ports (`csap server --listen` semantics).
pub fn free_port_triple() -> SocketAddr {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(std::process::id()) ^ u64::from(nanos);
    let mut candidate = 20_000 + (seed.wrapping_mul(7919) % 30_000) as u16;
    for _ in 0..200 {
        let bound: Vec<_> = (0..3)
            .map_while(|n| TcpListener::bind(("127.0.0.1", candidate + n)).ok())
            .collect();
        if bound.len() == 3 {
            return SocketAddr::from(([127, 0, 0, 1], candidate));
        }
        candidate = 20_000 + (candidate - 20_000 + 97) % 30_000;
    }
    panic!("no three consecutive free loopback ports");
}
