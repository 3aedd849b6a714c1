//! `csap server --replicas N`: N control planes (authz, ARDS and the key server each) on one
//! PostgreSQL store, for tests and demos of the replicated setup on one host.
//!
//! Each replica is its own `csap server` process (this executable run again with that replica's
//! `--data-dir` and `--listen`), so one can be killed alone and the others keep serving, as
//! replicas on separate hosts would. Replica 0 uses `--data-dir` and `--listen`; replica i
//! `DATA_DIR/replica-i` and the ports [`PORT_STRIDE`]`*i` above. What replicas must share and
//! the database does not hold (the key server's CA and keys, its admin and service identities,
//! authz's issuer key) is copied from replica 0's data directory once it is up, before the
//! others start; the root key comes to every replica from the same source.
//!
//! This process prints every replica's URLs, forwards SIGTERM and SIGINT to all of them and
//! exits once they have exited. A replica that dies is reported, never restarted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::server::ServerArgs;

/// Replica i listens PORT_STRIDE*i above replica 0 on each of its four ports (authz, ARDS, the
/// key server, the operations listener: PORT..PORT+3), so the ranges never overlap.
pub const PORT_STRIDE: u16 = 10;

/// The last line `csap server` prints once all its services are up.
const UP_LINE: &str = "next:";

/// Where one replica runs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Replica {
    index: u16,
    data_dir: PathBuf,
    listen: SocketAddr,
    /// `None`: no operations listener (`--metrics-listen off`).
    metrics_listen: Option<SocketAddr>,
}

/// Replica `index`'s address: `base` moved up `PORT_STRIDE*index` (port 0 stays 0: each process
/// picks free ports of its own).
fn shifted(base: SocketAddr, index: u16) -> Result<SocketAddr> {
    if base.port() == 0 {
        return Ok(base);
    }
    let port = index
        .checked_mul(PORT_STRIDE)
        .and_then(|offset| base.port().checked_add(offset))
        .and_then(|port| port.checked_add(3))
        .map(|last| last - 3)
        .with_context(|| {
            format!(
                "{} replicas from port {} leave no room for replica {index}'s ports \
                 (PORT+{PORT_STRIDE}*i)",
                index + 1,
                base.port()
            )
        })?;
    Ok(SocketAddr::new(base.ip(), port))
}

/// Every replica's place, from the flags.
fn plan(args: &ServerArgs) -> Result<Vec<Replica>> {
    let metrics = match args.metrics_listen {
        Some(choice) => choice.0,
        None => Some(crate::server::default_metrics_listen(args.listen)?),
    };
    (0..args.replicas)
        .map(|index| {
            Ok(Replica {
                index,
                data_dir: match index {
                    0 => args.data_dir.clone(),
                    i => args.data_dir.join(format!("replica-{i}")),
                },
                listen: shifted(args.listen, index)?,
                metrics_listen: metrics.map(|m| shifted(m, index)).transpose()?,
            })
        })
        .collect()
}

/// What a replica needs of replica 0's data directory (`from`), copied into its own (`to`):
/// the key server's whole directory (CA, `token.key`, `license.key`, the root key when it is
/// kept there, the server certificate, the admin and service identities) but its lock, and
/// authz's issuer key pair. TLS certificates of authz and ARDS stay per replica.
fn copy_shared(from: &Path, to: &Path) -> Result<()> {
    copy_tree(&from.join("keyserver"), &to.join("keyserver"))?;
    let authz = to.join("authz");
    authz::statedir::private_dir(&authz)?;
    for file in ["issuer.key", "issuer.pub"] {
        let src = from.join("authz").join(file);
        std::fs::copy(&src, authz.join(file))
            .with_context(|| format!("cannot copy {} to {}", src.display(), authz.display()))?;
    }
    Ok(())
}

/// Copies the files under `from` into `to` (directories private; each file keeps its mode),
/// leaving out lock files and a SQLite store a SQLite start may have left.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    authz::statedir::private_dir(to)?;
    let entries =
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if name_str == authz::statedir::LOCK_FILE || name_str.starts_with("keyserver.sqlite") {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type()?.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// The `csap server` command line of one replica: the flags of this one with the replica's
/// data directory and ports, the store URL in the environment (out of `ps`), no `--config`
/// (its settings are in `args` already) and no `--replicas`.
fn command(
    args: &ServerArgs,
    replica: &Replica,
    store_url: &str,
    log_format: &str,
) -> Result<Command> {
    let exe = std::env::current_exe().context("cannot locate the csap executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["--log-format", log_format, "server", "--data-dir"])
        .arg(&replica.data_dir)
        .arg("--listen")
        .arg(replica.listen.to_string())
        .arg("--metrics-listen")
        .arg(
            replica
                .metrics_listen
                .map_or("off".into(), |m| m.to_string()),
        )
        .env("CSAP_STORE", store_url);
    if let Some(rate) = &args.device_rate {
        cmd.arg("--device-rate")
            .arg(format!("{}/{}", rate.rate, rate.burst));
    }
    if let Some(ca) = &args.store.store_ca {
        cmd.arg("--store-ca").arg(ca);
    }
    if let Some(file) = &args.root_key.root_key_file {
        cmd.arg("--root-key-file").arg(file);
    }
    if let Some(run) = &args.root_key.root_key_command {
        cmd.arg("--root-key-command").arg(run);
    }
    // Its log goes where ours does; what it prints when up comes to us. Its own process group:
    // a Ctrl-C at the terminal reaches only us, and we stop every replica, so no replica's exit
    // races our hearing of the signal (and reads as a replica that died).
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    Ok(cmd)
}

/// A replica's process, started.
struct Started {
    replica: Replica,
    child: Child,
    pid: u32,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// What a replica printed when it came up.
struct Printed {
    /// Its start-up lines between the first and `next:` (where its services are).
    describe: String,
    keyserver_url: String,
}

fn spawn(
    args: &ServerArgs,
    replica: Replica,
    store_url: &str,
    log_format: &str,
) -> Result<Started> {
    let mut child = command(args, &replica, store_url, log_format)?
        .spawn()
        .with_context(|| format!("cannot start replica {}", replica.index))?;
    let pid = child.id().context("the replica exited at once")?;
    let stdout = child
        .stdout
        .take()
        .context("the replica's output is not piped")?;
    Ok(Started {
        replica,
        child,
        pid,
        stdout: BufReader::new(stdout).lines(),
    })
}

/// Reads a replica's start-up lines until it is up; an exit before that is an error.
async fn until_up(s: &mut Started) -> Result<Printed> {
    let mut lines = Vec::new();
    while let Some(line) = s.stdout.next_line().await? {
        if !line.starts_with(UP_LINE) {
            lines.push(line);
            continue;
        }
        let keyserver_url = lines
            .iter()
            .find(|l| l.starts_with("key server"))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("https://")))
            .with_context(|| format!("replica {} printed no key server URL", s.replica.index))?
            .to_owned();
        // The first line says where its state is; the rest, where its services are.
        let describe = lines[1..].join("\n");
        return Ok(Printed {
            describe,
            keyserver_url,
        });
    }
    let status = s.child.wait().await?;
    bail!(
        "replica {} ({}) exited with {status} before it was up (its log is above)",
        s.replica.index,
        s.replica.data_dir.display()
    )
}

/// SIGTERM to every replica, then waits until each has exited.
async fn stop_all(started: &mut [Started]) {
    for s in started.iter() {
        terminate(s.pid);
    }
    for s in started.iter_mut() {
        let _ = s.child.wait().await;
    }
}

/// SIGTERM to a replica (it may have exited already).
fn terminate(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// Waits for SIGTERM or SIGINT.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// How starting the replicas ended.
enum Start {
    Up(Vec<Printed>),
    Stopped,
}

/// Starts replica 0, gives the others its keys, starts them, and waits until all are up; a
/// stop signal meanwhile stops them all.
async fn start_all(
    args: &ServerArgs,
    replicas: Vec<Replica>,
    store_url: &str,
    log_format: &str,
    signals: &mut StopSignals,
    started: &mut Vec<Started>,
) -> Result<Start> {
    let mut printed = Vec::new();
    let mut rest = replicas.into_iter();
    let first = rest.next().context("no replica to start")?;
    let first_dir = first.data_dir.clone();
    started.push(spawn(args, first, store_url, log_format)?);
    tokio::select! {
        up = until_up(&mut started[0]) => printed.push(up?),
        _ = signals.recv() => return Ok(Start::Stopped),
    }
    // The keys replica 0 made (or had) are on disk now: every other replica gets them.
    for replica in rest {
        let lock = authz::statedir::lock(&replica.data_dir)?;
        copy_shared(&first_dir, &replica.data_dir)
            .with_context(|| format!("cannot give replica {} replica 0's keys", replica.index))?;
        drop(lock);
        started.push(spawn(args, replica, store_url, log_format)?);
    }
    let others = async {
        let mut printed = Vec::new();
        for s in started[1..].iter_mut() {
            printed.push(until_up(s).await?);
        }
        anyhow::Ok(printed)
    };
    tokio::select! {
        up = others => printed.extend(up?),
        _ = signals.recv() => return Ok(Start::Stopped),
    }
    Ok(Start::Up(printed))
}

/// `csap server --replicas N` (N > 1): runs until SIGTERM or Ctrl-C, or until every replica
/// has exited.
pub fn run(args: ServerArgs, log_format: &str) -> Result<()> {
    let Some(store_url) = args.store.store.clone() else {
        bail!(
            "--replicas needs a PostgreSQL --store: replicas share their state through the \
             database, and SQLite under --data-dir serves one process"
        );
    };
    // The URL and CA are checked here, once, before any replica starts.
    args.store.engine()?;
    let replicas = plan(&args)?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        let mut signals = StopSignals::install()?;
        let mut started = Vec::new();
        let start = start_all(
            &args,
            replicas,
            &store_url,
            log_format,
            &mut signals,
            &mut started,
        )
        .await;
        let printed = match start {
            Ok(Start::Up(printed)) => printed,
            Ok(Start::Stopped) => {
                stop_all(&mut started).await;
                return Ok(());
            }
            Err(e) => {
                stop_all(&mut started).await;
                return Err(e);
            }
        };
        print_replicas(&args, &store_url, &started, &printed);
        supervise(started, &mut signals).await
    })
}

fn print_replicas(args: &ServerArgs, store_url: &str, started: &[Started], printed: &[Printed]) {
    println!(
        "csap server: {} replicas on PostgreSQL {} (each its own process; replica i on ports \
         PORT+{PORT_STRIDE}*i)",
        started.len(),
        authz::pg::redact(store_url)
    );
    for (s, p) in started.iter().zip(printed) {
        println!(
            "replica {} (pid {}, data dir {})",
            s.replica.index,
            s.pid,
            s.replica.data_dir.display()
        );
        println!("{}", p.describe);
    }
    let urls: Vec<&str> = printed.iter().map(|p| p.keyserver_url.as_str()).collect();
    println!("key servers: --server {}", urls.join(","));
    println!(
        "next: csap device enroll / user add / app register / scope create with --identity {} \
         (every replica takes it)",
        args.data_dir
            .join("keyserver")
            .join(keyserver::server::ADMIN_DIR)
            .display()
    );
}

/// How one replica ended.
struct Exit {
    index: u16,
    pid: u32,
    status: std::io::Result<ExitStatus>,
}

/// Forwards each replica's later output (prefixed with its number), reports a replica that
/// exits, forwards SIGTERM/SIGINT to all, and returns once every one has exited.
async fn supervise(started: Vec<Started>, signals: &mut StopSignals) -> Result<()> {
    let (exits, mut exited) = mpsc::unbounded_channel();
    let mut live: Vec<(u16, u32)> = Vec::new();
    for mut r in started {
        live.push((r.replica.index, r.pid));
        let exits = exits.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = r.stdout.next_line().await {
                println!("replica {}: {line}", r.replica.index);
            }
            let status = r.child.wait().await;
            let _ = exits.send(Exit {
                index: r.replica.index,
                pid: r.pid,
                status,
            });
        });
    }
    drop(exits);
    let mut stopping = false;
    // Replicas that exited on their own, and ones that failed to stop cleanly when told to.
    let (mut died, mut unclean) = (Vec::new(), Vec::new());
    while !live.is_empty() {
        tokio::select! {
            _ = signals.recv(), if !stopping => {
                stopping = true;
                println!("stopping {} replicas", live.len());
                live.iter().for_each(|(_, pid)| terminate(*pid));
            }
            exit = exited.recv() => {
                let Some(exit) = exit else { break };
                live.retain(|(index, _)| *index != exit.index);
                let status = match exit.status {
                    Ok(status) if status.success() && stopping => continue,
                    Ok(status) => status.to_string(),
                    Err(e) => format!("an unknown status ({e})"),
                };
                let now = match (stopping, live.len()) {
                    (true, _) => "while stopping".to_string(),
                    (false, 0) => "no replica is left".to_string(),
                    (false, n) => format!("{n} keep serving"),
                };
                eprintln!(
                    "csap server: replica {} (pid {}) exited with {status}; {now} (it is not \
                     restarted)",
                    exit.index, exit.pid,
                );
                if stopping { &mut unclean } else { &mut died }.push(exit.index);
            }
        }
    }
    if !stopping {
        bail!("every replica has exited (see above)");
    }
    if !died.is_empty() {
        bail!("{} had exited before the stop (see above)", named(&died));
    }
    if !unclean.is_empty() {
        bail!("{} did not stop cleanly (see above)", named(&unclean));
    }
    Ok(())
}

/// `replica 1`, `replicas 1, 2`.
fn named(indices: &[u16]) -> String {
    let list: Vec<String> = indices.iter().map(u16::to_string).collect();
    match list.len() {
        1 => format!("replica {}", list[0]),
        _ => format!("replicas {}", list.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    fn args(flags: &[&str]) -> ServerArgs {
        let mut argv = vec!["csap", "--data-dir", "/srv/csap"];
        argv.extend_from_slice(flags);
        Cli::parse_from(argv).server
    }

    #[test]
    fn replica_i_is_in_its_own_directory_ports_stride_above() {
        let plan = plan(&args(&["--replicas", "3", "--listen", "127.0.0.1:7400"])).unwrap();
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            plan,
            vec![
                Replica {
                    index: 0,
                    data_dir: "/srv/csap".into(),
                    listen: at("127.0.0.1:7400"),
                    metrics_listen: Some(at("127.0.0.1:7403")),
                },
                Replica {
                    index: 1,
                    data_dir: "/srv/csap/replica-1".into(),
                    listen: at("127.0.0.1:7410"),
                    metrics_listen: Some(at("127.0.0.1:7413")),
                },
                Replica {
                    index: 2,
                    data_dir: "/srv/csap/replica-2".into(),
                    listen: at("127.0.0.1:7420"),
                    metrics_listen: Some(at("127.0.0.1:7423")),
                },
            ]
        );
    }

    #[test]
    fn free_ports_stay_free_and_an_operations_listener_off_stays_off() {
        let plan = plan(&args(&[
            "--replicas",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ]))
        .unwrap();
        assert!(plan.iter().all(|r| r.listen.port() == 0));
        assert!(plan.iter().all(|r| r.metrics_listen.is_none()));
    }

    #[test]
    fn ports_past_the_last_are_refused() {
        // Replica 1 would start on 65535, its last port beyond it.
        let e = plan(&args(&["--replicas", "2", "--listen", "127.0.0.1:65525"])).unwrap_err();
        assert!(
            format!("{e:#}").contains("leave no room for replica 1"),
            "{e:#}"
        );
    }

    #[test]
    fn sqlite_is_refused() {
        let e = run(args(&["--replicas", "2"]), "text").unwrap_err();
        assert!(
            format!("{e:#}").contains("--replicas needs a PostgreSQL --store"),
            "{e:#}"
        );
    }

    #[test]
    fn the_shared_keys_are_copied_and_locks_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a"), dir.path().join("a/replica-1"));
        for (path, body) in [
            ("keyserver/ca.key", "ca"),
            ("keyserver/token.key", "token"),
            ("keyserver/admin/key.pem", "admin"),
            ("keyserver/.lock", "1"),
            ("authz/issuer.key", "issuer"),
            ("authz/issuer.pub", "issuer pub"),
            ("authz/tls-key.pem", "per replica"),
        ] {
            let path = from.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, body).unwrap();
        }
        copy_shared(&from, &to).unwrap();
        for (path, body) in [
            ("keyserver/ca.key", "ca"),
            ("keyserver/token.key", "token"),
            ("keyserver/admin/key.pem", "admin"),
            ("authz/issuer.key", "issuer"),
        ] {
            assert_eq!(std::fs::read_to_string(to.join(path)).unwrap(), body);
        }
        assert!(!to.join("keyserver/.lock").exists());
        assert!(!to.join("authz/tls-key.pem").exists());
    }
}
