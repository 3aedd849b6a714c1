//! End-to-end benchmarks of the mount as a policy enforcement point (issue 6): open latency
//! (warm and cold, against a bindfs passthrough of the same backing store) and the render-node
//! pattern (frames read by worker processes, with and without pre-loading, against one
//! sequential `dd` through the same mount).
//!
//! Everything runs as the product runs: `csap server` (authz, ARDS and the key server on
//! loopback TLS, SQLite on disk) and `csap mount --server … --ards …` are separate processes
//! of the release `csap` binary; the openers are separate processes too — copies of this
//! binary, each made distinct by a trailer and registered as an application by its BLAKE3
//! digest — so every open is attested, checked against the mount's rules and licensed exactly
//! as an artist's application would be. This process only sets up, starts, waits and counts.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use csapfs::format::{AssetId, Header, KeyId, ScopeId, DEFAULT_CHUNK_SIZE};
use csapfs::{Asset, ContentKey, Suite};
use keyserver::wire::RegisterAppRequest;
use keyserver::{AdminClient, LicenseClient, UserToken};

use crate::{dur, env_num, Samples};

pub mod revoke;

const USER: &str = "alice";
const PASSWORD: &str = "a long bench passphrase";
const SCOPE: &str = "bench";
/// The device the mount runs as (its rules are `mount:bench-node`).
const NODE: &str = "bench-node";
/// A second device for the import, so creating the assets does not spend the mount device's
/// rate-limit budget (200 licenses/s, burst 400) before the measurements.
const IMPORT_DEVICE: &str = "bench-import";
const MIB: usize = 1024 * 1024;

/// Sizes and counts of the end-to-end runs (environment `BENCH_*`, see `bench help`).
pub struct E2eKnobs {
    warm_opens: usize,
    cold_opens: usize,
    cold_pace_ms: u64,
    frames: usize,
    frame_mib: usize,
    seq_mib: usize,
    seq_runs: usize,
    workers: usize,
    read_kib: usize,
    backing_parent: PathBuf,
    csap: Option<PathBuf>,
    perf_dir: Option<PathBuf>,
}

impl E2eKnobs {
    pub fn from_env(quick: bool) -> Result<Self> {
        let q = |full: usize, small: usize| if quick { small } else { full };
        let k = E2eKnobs {
            warm_opens: env_num("BENCH_WARM_OPENS", q(20_000, 2_000))?,
            cold_opens: env_num("BENCH_COLD_OPENS", q(500, 50))?,
            cold_pace_ms: env_num("BENCH_COLD_PACE_MS", 8)?,
            frames: env_num("BENCH_FRAMES", q(1000, 40))?,
            frame_mib: env_num("BENCH_FRAME_MIB", 8)?,
            seq_mib: env_num("BENCH_SEQ_MIB", q(2048, 256))?,
            seq_runs: env_num("BENCH_SEQ_RUNS", q(3, 1))?,
            workers: env_num("BENCH_WORKERS", 2)?,
            read_kib: env_num("BENCH_READ_KIB", 1024)?,
            backing_parent: std::env::var_os("BENCH_BACKING_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/dev/shm")),
            csap: std::env::var_os("BENCH_CSAP").map(PathBuf::from),
            perf_dir: std::env::var_os("BENCH_PERF_DIR").map(PathBuf::from),
        };
        ensure!(
            k.warm_opens >= 20
                && k.cold_opens > 0
                && k.frames > 0
                && k.frame_mib > 0
                && k.seq_mib > 0
                && k.seq_runs > 0
                && k.workers > 0
                && k.read_kib > 0,
            "BENCH_* counts and sizes must be positive (BENCH_WARM_OPENS at least 20)"
        );
        Ok(k)
    }
}

// ---------- output ----------

/// The 1-minute load average now: the machine is shared, so every figure carries it.
fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// A Markdown table whose rows also carry the load average at the time they were measured.
struct LoadTable {
    title: String,
    rows: Vec<[String; 5]>,
}

impl LoadTable {
    fn new(title: impl Into<String>) -> Self {
        LoadTable {
            title: title.into(),
            rows: Vec::new(),
        }
    }
    fn row(&mut self, figure: impl Into<String>, value: impl Into<String>, load: &str) {
        self.rows.push([
            figure.into(),
            value.into(),
            "—".into(),
            String::new(),
            load.into(),
        ]);
    }
    fn goal(
        &mut self,
        figure: impl Into<String>,
        value: impl Into<String>,
        goal: &str,
        met: bool,
        load: &str,
    ) {
        self.rows.push([
            figure.into(),
            value.into(),
            goal.into(),
            if met { "yes".into() } else { "**no**".into() },
            load.into(),
        ]);
    }
    fn print(&self) {
        println!("### {}\n", self.title);
        println!("| figure | measured | goal | met? | load (1 min) |");
        println!("|---|---:|---|---|---:|");
        for [f, v, g, m, l] in &self.rows {
            println!("| {f} | {v} | {g} | {m} | {l} |");
        }
        println!();
    }
}

/// CPU time (user + system, all threads, exited ones included) a process has used so far.
/// /proc reports it in USER_HZ ticks, 100 per second on Linux.
fn cpu_ns(pid: nix::unistd::Pid) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<u64>() * 10_000_000
}

/// Busy and total CPU ticks of the whole machine (all processes, all cores) from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// What the mount and the machine spent during one phase.
struct Snap {
    mount: u64,
    machine: (u64, u64),
}

impl Snap {
    fn now(mount: nix::unistd::Pid) -> Snap {
        Snap {
            mount: cpu_ns(mount),
            machine: machine_ticks(),
        }
    }
    /// "mount CPU x s/GB; machine y % busy" since `self`, for `bytes` read.
    fn since(&self, mount: nix::unistd::Pid, bytes: u64) -> String {
        let now = Snap::now(mount);
        let cpu_s = now.mount.saturating_sub(self.mount) as f64 / 1e9;
        let busy = now.machine.0.saturating_sub(self.machine.0) as f64;
        let total = now.machine.1.saturating_sub(self.machine.1).max(1) as f64;
        format!(
            "mount CPU {:.2} s/GB; machine {:.0} % busy",
            cpu_s / (bytes as f64 / 1e9),
            100.0 * busy / total
        )
    }
}

fn per_op(cpu: u64, ops: usize) -> String {
    dur(cpu / ops.max(1) as u64)
}

fn p50_p99(s: &Samples) -> String {
    format!("{} / {}", dur(s.pct(0.5)), dur(s.pct(0.99)))
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

// ---------- processes ----------

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                eprintln!("bench: {} did not stop on SIGTERM; killing it", self.what);
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A FUSE mount served by a child process; unmounted (and detached if need be) when dropped.
struct FuseMount {
    mnt: PathBuf,
    proc: Proc,
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.proc.stop();
        if is_mounted(&self.mnt) {
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn is_mounted(mnt: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mnt.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

/// Waits until `mnt` is mounted, failing early if the serving process exits.
fn wait_mounted(proc: &mut Proc, mnt: &Path, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_mounted(mnt) {
        if let Some(status) = proc.child.try_wait()? {
            bail!(
                "{} exited with {status} before mounting; its log ({}):\n{}",
                proc.what,
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        ensure!(
            Instant::now() < deadline,
            "{} did not mount {} within 30 s (log {})",
            proc.what,
            mnt.display(),
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Children that the mount attests start without loader variables: the mount refuses
/// processes whose environment injects libraries, and `cargo run` sets LD_LIBRARY_PATH.
fn clean(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("LD_LIBRARY_PATH")
        .env_remove("LD_PRELOAD")
        .env_remove("LD_AUDIT")
}

/// Runs a worker to completion and returns its stdout lines.
fn run_worker(app: &Path, args: &[String]) -> Result<Vec<String>> {
    let out = clean(Command::new(app).arg(crate::worker::ARG).args(args))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", app.display()))?;
    ensure!(
        out.status.success(),
        "worker {} {args:?} failed ({})",
        app.display(),
        out.status
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_owned)
        .collect())
}

fn parse_samples(line: &str) -> Result<Samples> {
    let v = line
        .split_whitespace()
        .map(|s| s.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .context("worker printed a bad sample line")?;
    Ok(Samples::new(v))
}

/// `perf record` of one process while a measurement runs (BENCH_PERF_DIR).
struct Perf(Option<Proc>);

impl Perf {
    fn start(dir: Option<&Path>, pids: &[nix::unistd::Pid], name: &str) -> Result<Perf> {
        let Some(dir) = dir else {
            return Ok(Perf(None));
        };
        std::fs::create_dir_all(dir)?;
        let out = dir.join(format!("perf.{name}.data"));
        let child = Command::new("perf")
            .args(["record", "-F", "1999", "-g", "-p"])
            .arg(
                pids.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run perf (apt-get install linux-perf)")?;
        std::thread::sleep(Duration::from_millis(300));
        println!("> perf: recording pids {pids:?} into {}\n", out.display());
        Ok(Perf(Some(Proc {
            child,
            what: "perf".into(),
        })))
    }
    fn stop(mut self) {
        if let Some(p) = self.0.as_mut() {
            // perf writes its file on SIGINT.
            let _ = nix::sys::signal::kill(p.pid(), nix::sys::signal::Signal::SIGINT);
            let _ = p.child.wait();
        }
    }
}

// ---------- the stack ----------

struct ServerInfo {
    authz_url: String,
    ards_url: String,
    ks_url: String,
    authz_cert: PathBuf,
    ards_cert: PathBuf,
    admin_dir: PathBuf,
    issuer_pub: PathBuf,
    rules_cache: PathBuf,
}

/// A registered application: an executable and its digest.
struct App {
    path: PathBuf,
    digest: String,
}

/// The running system. Field order is drop order: mounts go before the server and before the
/// backing store's temp dir is removed.
struct Stack {
    csap_mount: Option<FuseMount>,
    passthrough: Option<FuseMount>,
    server: Proc,
    rt: tokio::runtime::Runtime,
    admin: AdminClient,
    info: ServerInfo,
    csap: PathBuf,
    node_dir: PathBuf,
    token_file: PathBuf,
    backing: PathBuf,
    dir: tempfile::TempDir,
    _backing_root: tempfile::TempDir,
}

fn digest_of(path: &Path) -> Result<String> {
    csapfs::license_source::attest::app_digest_at(path)
        .with_context(|| format!("cannot read {}", path.display()))
}

/// A copy of this binary made distinct by a trailer (the loader ignores bytes past the ELF
/// image), so each role has its own digest and its own license cache entries.
fn app_copy(dir: &Path, role: &str) -> Result<App> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe().context("cannot locate the bench executable")?;
    let path = dir.join(role);
    std::fs::copy(&me, &path).with_context(|| format!("cannot copy {}", me.display()))?;
    let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
    writeln!(f, "\ncsap-bench-role:{role}")?;
    drop(f);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    let digest = digest_of(&path)?;
    Ok(App { path, digest })
}

/// An authorization request: alice, on `device`, may do `action` on `assets` with `apps`.
fn request_json(
    name: &str,
    apps: &[&str],
    device: &str,
    assets: &str,
    action: &str,
    start: i64,
) -> Result<String> {
    request_json_for(USER, name, apps, device, assets, action, start)
}

/// [`request_json`] for another participant than alice.
fn request_json_for(
    user: &str,
    name: &str,
    apps: &[&str],
    device: &str,
    assets: &str,
    action: &str,
    start: i64,
) -> Result<String> {
    let mut req = authz::request::WireRequest::builder(name)
        .workflow_id(&format!("bench-{name}"))
        .person(user)
        .device(device)
        .asset_path(assets)
        .action(action)
        .window(start, start + 8 * 3600);
    for digest in apps {
        req = req.application(digest, name, "1", None);
    }
    Ok(req.to_json())
}

/// A submitted request's rules: the key server's and the mount's (authz renders one rule for
/// the key server PEP, then one per device for `mount:<device>`, in that order).
struct Submitted {
    keyserver_rule: String,
    mount_rules: Vec<String>,
}

impl Stack {
    fn start(k: &E2eKnobs, backing_bytes: u64) -> Result<Stack> {
        let csap = match &k.csap {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("csap"),
        };
        ensure!(
            csap.exists(),
            "{} is missing: build it first with `cargo build --release -p cli` (same target \
             dir as the bench), or point BENCH_CSAP at a csap binary",
            csap.display()
        );
        ensure!(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/fuse")
                .is_ok(),
            "/dev/fuse is not usable: the end-to-end benchmarks need FUSE"
        );
        check_room(&k.backing_parent, backing_bytes)?;
        let backing_root = tempfile::Builder::new()
            .prefix("csap-bench-backing")
            .tempdir_in(&k.backing_parent)
            .with_context(|| {
                format!("cannot create a temp dir in {}", k.backing_parent.display())
            })?;
        let backing = backing_root.path().join("backing");
        std::fs::create_dir_all(&backing)?;
        let dir = tempfile::Builder::new()
            .prefix("csap-bench-e2e")
            .tempdir()?;

        let (server, info) = start_server(&csap, dir.path())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let admin = AdminClient::connect(&info.ks_url, &info.admin_dir)?;
        let node_dir = dir.path().join("node");
        rt.block_on(async {
            admin.enroll_device(NODE, &node_dir).await?;
            admin
                .enroll_device(IMPORT_DEVICE, &dir.path().join("import"))
                .await?;
            admin.add_user(USER, PASSWORD).await?;
            admin.create_scope(SCOPE).await?;
            Ok::<_, keyserver::ClientError>(())
        })
        .context("setting up the device, user and scope")?;
        let token_file = dir.path().join("alice.token");
        let token = rt.block_on(async {
            let c = LicenseClient::connect(&info.ks_url, &node_dir).await?;
            // The mount and the readers it serves run as this process's uid.
            c.login(USER, PASSWORD, nix::unistd::getuid().as_raw())
                .await
        })?;
        token.0.save(&token_file)?;
        Ok(Stack {
            csap_mount: None,
            passthrough: None,
            server,
            rt,
            admin,
            info,
            csap,
            node_dir,
            token_file,
            backing,
            dir,
            _backing_root: backing_root,
        })
    }

    fn register(&self, app: &App, name: &str) -> Result<()> {
        self.rt
            .block_on(self.admin.register_app(&RegisterAppRequest {
                digest: app.digest.clone(),
                name: name.into(),
                version: "1".into(),
                vendor: Some("csap-bench".into()),
                code: Default::default(),
            }))?;
        Ok(())
    }

    /// Submits a request with `csap request submit`, as workflow management would.
    fn submit(&self, name: &str, body: &str) -> Result<Submitted> {
        let file = self.dir.path().join(format!("request-{name}.json"));
        std::fs::write(&file, body)?;
        let out = Command::new(&self.csap)
            .args(["request", "submit"])
            .arg(&file)
            .args(["--authz", &self.info.authz_url])
            .arg("--ca")
            .arg(&self.info.authz_cert)
            .arg("--identity")
            .arg(&self.info.admin_dir)
            .output()?;
        ensure!(
            out.status.success(),
            "csap request submit {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let ids: Vec<String> = v["rule_ids"]
            .as_array()
            .context("no rule_ids in authz's answer")?
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect();
        let (first, rest) = ids.split_first().context("authz issued no rule")?;
        Ok(Submitted {
            keyserver_rule: first.clone(),
            mount_rules: rest.to_vec(),
        })
    }

    /// Waits until the key server's and (if `mount`) the mount's rule caches hold the rules.
    fn wait_rules(&self, s: &Submitted, mount: bool) -> Result<()> {
        let mut want = vec![(self.info.rules_cache.clone(), s.keyserver_rule.clone())];
        if mount {
            let cache = self.node_dir.join("mount-rules.json");
            want.extend(s.mount_rules.iter().map(|r| (cache.clone(), r.clone())));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for (file, id) in want {
            let quoted = format!("\"{id}\"");
            while !std::fs::read_to_string(&file).is_ok_and(|t| t.contains(&quoted)) {
                ensure!(
                    Instant::now() < deadline,
                    "rule {id} did not reach {} within 30 s",
                    file.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // The cache file is written as the evaluator is swapped; let both sides settle.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// The id of the newest audit record (0 when there is none).
    fn audit_mark(&self) -> Result<i64> {
        Ok(self
            .rt
            .block_on(self.admin.audit_tail(1))?
            .last()
            .map(|r| r.id)
            .unwrap_or(0))
    }

    /// Grants to `digest` audited after `mark` (each granted asset is one record).
    fn grants_since(&self, mark: i64, digest: &str) -> Result<usize> {
        let mut after = mark;
        let mut n = 0;
        loop {
            let page = self.rt.block_on(self.admin.audit_after(after, 10_000))?;
            let Some(last) = page.last() else {
                return Ok(n);
            };
            after = last.id;
            n += page
                .iter()
                .filter(|r| r.decision == "grant" && r.app_digest.as_deref() == Some(digest))
                .count();
        }
    }

    fn mount(&mut self) -> Result<()> {
        self.mount_csap()?;
        self.mount_passthrough()
    }

    /// `csap mount --server … --ards …` of the backing store.
    fn mount_csap(&mut self) -> Result<()> {
        let mnt = self.dir.path().join("mnt");
        std::fs::create_dir_all(&mnt)?;
        let log = self.dir.path().join("mount.log");
        let child = Command::new(&self.csap)
            .arg("mount")
            .arg(&self.backing)
            .arg(&mnt)
            .args(["--server", &self.info.ks_url, "--scope", SCOPE])
            .args(["--ards", &self.info.ards_url])
            .arg("--ards-ca")
            .arg(&self.info.ards_cert)
            .arg("--issuer-pub")
            .arg(&self.info.issuer_pub)
            .arg("--identity")
            .arg(&self.node_dir)
            .arg("--token-file")
            .arg(&self.token_file)
            .env("CSAP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start csap mount")?;
        let mut proc = Proc {
            child,
            what: "csap mount".into(),
        };
        wait_mounted(&mut proc, &mnt, &log)?;
        self.csap_mount = Some(FuseMount { mnt, proc });
        Ok(())
    }

    /// A bindfs passthrough of the same backing store, the baseline of the open figures.
    fn mount_passthrough(&mut self) -> Result<()> {
        let pass = self.dir.path().join("passthrough");
        std::fs::create_dir_all(&pass)?;
        let log = self.dir.path().join("bindfs.log");
        let child = Command::new("bindfs")
            .arg("-f")
            .arg(&self.backing)
            .arg(&pass)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start bindfs (apt-get install bindfs)")?;
        let mut proc = Proc {
            child,
            what: "bindfs".into(),
        };
        wait_mounted(&mut proc, &pass, &log)?;
        self.passthrough = Some(FuseMount { mnt: pass, proc });
        Ok(())
    }

    fn mnt(&self) -> &Path {
        &self.csap_mount.as_ref().expect("mounted").mnt
    }
    fn pass(&self) -> &Path {
        &self.passthrough.as_ref().expect("mounted").mnt
    }
    fn pass_pid(&self) -> nix::unistd::Pid {
        self.passthrough.as_ref().expect("mounted").proc.pid()
    }
    fn mount_pid(&self) -> nix::unistd::Pid {
        self.csap_mount.as_ref().expect("mounted").proc.pid()
    }
}

/// Refuses to fill a tmpfs (or the machine's memory) with the backing store.
fn check_room(parent: &Path, bytes: u64) -> Result<()> {
    let st = nix::sys::statvfs::statvfs(parent)
        .with_context(|| format!("cannot stat {}", parent.display()))?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    let need = bytes + bytes / 50 + 256 * MIB as u64;
    ensure!(
        free >= need,
        "{} has {} MiB free, the backing store needs {} MiB: lower BENCH_FRAMES / \
         BENCH_SEQ_MIB or set BENCH_BACKING_DIR",
        parent.display(),
        free / MIB as u64,
        need / MIB as u64
    );
    let on_tmpfs = nix::sys::statfs::statfs(parent)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false);
    if on_tmpfs {
        let avail_kib: u64 = std::fs::read_to_string("/proc/meminfo")?
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let margin = 4 * 1024 * MIB as u64;
        ensure!(
            avail_kib * 1024 >= need + margin,
            "{} is a tmpfs and only {} MiB of memory are available; the backing store needs \
             {} MiB plus 4 GiB of headroom: lower BENCH_FRAMES / BENCH_SEQ_MIB",
            parent.display(),
            avail_kib / 1024,
            need / MIB as u64
        );
    }
    Ok(())
}

fn start_server(csap: &Path, dir: &Path) -> Result<(Proc, ServerInfo)> {
    let data = dir.join("server");
    let out = dir.join("server.out");
    let log = dir.join("server.log");
    let child = Command::new(csap)
        .arg("server")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env("CSAP_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("cannot start csap server")?;
    let mut proc = Proc {
        child,
        what: "csap server".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.contains("\nnext:") {
            break text;
        }
        if let Some(status) = proc.child.try_wait()? {
            bail!(
                "csap server exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        ensure!(
            Instant::now() < deadline,
            "csap server did not start within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let url = |prefix: &str| -> Result<String> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("https://")))
            .map(str::to_owned)
            .with_context(|| format!("csap server printed no {prefix} URL:\n{text}"))
    };
    let info = ServerInfo {
        authz_url: url("authz ")?,
        ards_url: url("ARDS ")?,
        ks_url: url("key server ")?,
        authz_cert: data.join("authz/tls-cert.pem"),
        ards_cert: data.join("ards").join(ards::server::CERT_FILE),
        admin_dir: data.join("keyserver").join(keyserver::server::ADMIN_DIR),
        issuer_pub: data.join("authz/issuer.pub"),
        rules_cache: data.join("keyserver-rules.json"),
    };
    for f in [&info.authz_cert, &info.ards_cert, &info.issuer_pub] {
        ensure!(f.exists(), "csap server did not create {}", f.display());
    }
    Ok((proc, info))
}

// ---------- import ----------

/// Licenses and writes assets in the backing store through the import device, as
/// `csap import` does: a create license per file, the file encrypted under its key.
struct Importer {
    client: LicenseClient,
    token: UserToken,
    digest: String,
}

impl Importer {
    fn new(stack: &Stack) -> Result<Importer> {
        let dir = stack.dir.path().join("import");
        let (client, token) = stack.rt.block_on(async {
            let c = LicenseClient::connect(&stack.info.ks_url, &dir).await?;
            let (t, _) = c
                .login(USER, PASSWORD, nix::unistd::getuid().as_raw())
                .await?;
            Ok::<_, keyserver::ClientError>((c, t))
        })?;
        Ok(Importer {
            client,
            token,
            // The importer is this process, licensing on behalf of a registered import tool.
            digest: blake3::hash(b"csap-bench-importer").to_hex().to_string(),
        })
    }

    /// A create license for `path`, waiting out the per-device rate limit.
    fn create(&self, rt: &tokio::runtime::Runtime, path: &str) -> Result<(Header, ContentKey)> {
        let mut tries = 0;
        let lic = loop {
            match rt.block_on(self.client.create(&self.token, &self.digest, path, SCOPE)) {
                Ok(l) => break l,
                Err(keyserver::ClientError::RateLimited { .. }) if tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e).with_context(|| format!("create license for {path}")),
            }
        };
        let g = lic
            .grants
            .first()
            .context("create license without a grant")?;
        let header = Header::new(
            Suite::Gcm,
            DEFAULT_CHUNK_SIZE,
            AssetId(g.asset_id),
            KeyId {
                scope: ScopeId(g.scope_id),
                version: g.grant.key_version,
            },
        )?;
        Ok((header, ContentKey::from_bytes(*g.key.as_bytes())))
    }
}

fn write_asset(path: &Path, header: Header, key: &ContentKey, pieces: &[&[u8]]) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let f = std::fs::File::create_new(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut a = Asset::create(f, header, key)?;
    let mut at = 0u64;
    for p in pieces {
        a.write_at(at, p)?;
        at += p.len() as u64;
    }
    a.sync()?;
    Ok(())
}

/// Incompressible-looking bytes (xorshift), so nothing in the path can shortcut them.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

// ---------- open latency ----------

const LAT_DIR: &str = "bench/lat";

/// The cold assets, one directory each: a cold open licenses its directory's other assets in
/// the same round trip (sibling batch), which would turn the next cold opens into cache hits.
fn lat_paths(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{LAT_DIR}/c{i:05}/c.raw")).collect()
}

/// Writes the warm asset and the cold ones; returns the warm asset's key (for the breakdown).
fn import_lat(stack: &Stack, imp: &Importer, k: &E2eKnobs) -> Result<ContentKey> {
    let data = noise(4096, 7);
    let warm = format!("{LAT_DIR}/warm.raw");
    let (h, warm_key) = imp.create(&stack.rt, &warm)?;
    write_asset(&stack.backing.join(&warm), h, &warm_key, &[&data])?;
    for p in &lat_paths(k.cold_opens) {
        let (h, key) = imp.create(&stack.rt, p)?;
        write_asset(&stack.backing.join(p), h, &key, &[&data])?;
    }
    Ok(warm_key)
}

/// Where a warm open's time goes on the mount's side: the steps `csap mount` takes for every
/// open (csapfs's `open_asset` and `KeyServerSource::open_key`), timed one by one in this
/// process with the same library code, against a live process and the real files.
fn breakdown(stack: &Stack, warm_key: &ContentKey, n: usize) -> Result<()> {
    use csapfs::license_source::attest::Attestor;
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<Samples> {
        f()?; // warm the caches, as a warm open finds them
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            f()?;
            v.push(t.elapsed().as_nanos() as u64);
        }
        Ok(Samples::new(v))
    };
    let mut target = Proc {
        child: clean(Command::new("sleep").arg("600"))
            .stdin(Stdio::null())
            .spawn()?,
        what: "sleep".into(),
    };
    let pid = target.child.id();
    let attestor = Attestor::new(Duration::from_secs(10));
    let remembered = time(&mut || {
        attestor.attest(pid)?;
        Ok(())
    })?;
    // The measurement a process's first open (after each exec) gets.
    let measuring = Attestor::with_proc_root("/proc", Duration::from_secs(10), None);
    let threaded = time(&mut || {
        measuring.attest(pid)?;
        Ok(())
    })?;
    let inline = time(&mut || {
        attestor.attest_blocking(pid)?;
        Ok(())
    })?;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let stat = time(&mut || {
        csapfs::license_source::attest::start_time(&proc_dir, pid)?;
        Ok(())
    })?;
    let environ = time(&mut || {
        std::fs::read(proc_dir.join("environ"))?;
        Ok(())
    })?;
    let exe = time(&mut || {
        std::fs::File::open(proc_dir.join("exe"))?.metadata()?;
        Ok(())
    })?;
    target.stop();
    let token = time(&mut || {
        UserToken::load(&stack.token_file)?;
        Ok(())
    })?;
    let warm = stack.backing.join(LAT_DIR).join("warm.raw");
    let asset = time(&mut || {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&warm)?;
        csapfs::asset::read_header(&f)?;
        Asset::open_recovering(f, warm_key)?;
        Ok(())
    })?;
    let load = load1();
    let mut t = LoadTable::new(format!(
        "Warm open, mount-side steps timed alone (same library calls as `csap mount`, {n} \
         times each, in the bench process)"
    ));
    t.row(
        "caller attestation, remembered until exec (what a warm open does): p50 / p99",
        p50_p99(&remembered),
        &load,
    );
    t.row(
        "caller measurement on a helper thread (first open after exec): p50 / p99",
        p50_p99(&threaded),
        &load,
    );
    t.row(
        "the same measurement inline (no thread): p50 / p99",
        p50_p99(&inline),
        &load,
    );
    t.row(
        "  of which /proc/<pid>/stat read (done twice): p50 / p99",
        p50_p99(&stat),
        &load,
    );
    t.row(
        "  of which /proc/<pid>/environ read: p50 / p99",
        p50_p99(&environ),
        &load,
    );
    t.row(
        "  of which /proc/<pid>/exe open + fstat: p50 / p99",
        p50_p99(&exe),
        &load,
    );
    t.row("user token file read: p50 / p99", p50_p99(&token), &load);
    t.row(
        "backing file open + header + final-chunk check: p50 / p99",
        p50_p99(&asset),
        &load,
    );
    t.print();
    Ok(())
}

fn open_latency(stack: &Stack, opener: &App, warm_key: &ContentKey, k: &E2eKnobs) -> Result<()> {
    let warm = format!("{LAT_DIR}/warm.raw");
    let (pass, mnt) = (stack.pass(), stack.mnt());
    let rounds = 20;
    let per_round = (k.warm_opens / rounds).max(1);
    let args = vec![
        "opens".to_string(),
        "--rounds".into(),
        rounds.to_string(),
        "--per-round".into(),
        per_round.to_string(),
        pass.join(&warm).display().to_string(),
        mnt.join(&warm).display().to_string(),
    ];
    let perf = Perf::start(k.perf_dir.as_deref(), &[stack.mount_pid()], "warm")?;
    let cpu0 = (cpu_ns(stack.mount_pid()), cpu_ns(stack.pass_pid()));
    let lines = run_worker(&opener.path, &args)?;
    let warm_cpu = (
        cpu_ns(stack.mount_pid()).saturating_sub(cpu0.0),
        cpu_ns(stack.pass_pid()).saturating_sub(cpu0.1),
    );
    perf.stop();
    let warm_load = load1();
    ensure!(lines.len() == 2, "the opener printed {} lines", lines.len());
    let (p, c) = (parse_samples(&lines[0])?, parse_samples(&lines[1])?);

    // Cold: distinct assets, each first opened now (a license round trip each).
    let names = lat_paths(k.cold_opens);
    let list = |root: &Path, file: &str| -> Result<PathBuf> {
        let f = stack.dir.path().join(file);
        let text: Vec<String> = names
            .iter()
            .map(|n| root.join(n).display().to_string())
            .collect();
        std::fs::write(&f, text.join("\n"))?;
        Ok(f)
    };
    let csap_list = list(mnt, "cold-csap.list")?;
    let pass_list = list(pass, "cold-pass.list")?;
    let mark = stack.audit_mark()?;
    let cold_args = |l: &Path| {
        vec![
            "cold".to_string(),
            "--pace-ms".into(),
            k.cold_pace_ms.to_string(),
            l.display().to_string(),
        ]
    };
    let perf = Perf::start(
        k.perf_dir.as_deref(),
        &[stack.mount_pid(), stack.server.pid()],
        "cold",
    )?;
    let cpu0 = (cpu_ns(stack.mount_pid()), cpu_ns(stack.server.pid()));
    let cold = parse_samples(
        run_worker(&opener.path, &cold_args(&csap_list))?
            .first()
            .context("no cold samples")?,
    )?;
    let cold_cpu = (
        cpu_ns(stack.mount_pid()).saturating_sub(cpu0.0),
        cpu_ns(stack.server.pid()).saturating_sub(cpu0.1),
    );
    perf.stop();
    let cold_load = load1();
    let round_trips = stack.grants_since(mark, &opener.digest)?;
    let cold_pass = parse_samples(
        run_worker(&opener.path, &cold_args(&pass_list))?
            .first()
            .context("no cold samples")?,
    )?;
    let pass_load = load1();

    let diff50 = c.pct(0.5) as i64 - p.pct(0.5) as i64;
    let diff99 = c.pct(0.99) as i64 - p.pct(0.99) as i64;
    let sdur = |d: i64| {
        if d < 0 {
            format!("−{}", dur(d.unsigned_abs()))
        } else {
            format!("+{}", dur(d as u64))
        }
    };
    let mut t = LoadTable::new(format!(
        "Open latency: open+close from a registered application process (csap mount: \
         direct cache, key server + ARDS rules; passthrough: bindfs of the same backing \
         store on tmpfs); warm {} opens per mount in {rounds} interleaved rounds, cold {} \
         distinct assets",
        c.len(),
        cold.len()
    ));
    t.row(
        "warm, passthrough (bindfs): p50 / p99",
        p50_p99(&p),
        &warm_load,
    );
    t.row(
        "warm, csap mount (license cached): p50 / p99",
        p50_p99(&c),
        &warm_load,
    );
    t.goal(
        "warm: csap minus passthrough, p50",
        sdur(diff50),
        "≤ 50 µs",
        diff50 <= 50_000,
        &warm_load,
    );
    t.row(
        "warm: csap minus passthrough, p99",
        sdur(diff99),
        &warm_load,
    );
    t.row(
        "cold, passthrough (first open of each file): p50 / p99",
        p50_p99(&cold_pass),
        &pass_load,
    );
    t.row(
        "cold, csap mount (license round trip): p50",
        dur(cold.pct(0.5)),
        &cold_load,
    );
    t.goal(
        "cold, csap mount (license round trip): p99",
        dur(cold.pct(0.99)),
        "≤ 2 ms",
        cold.pct(0.99) <= 2_000_000,
        &cold_load,
    );
    t.row("cold, csap mount: max", dur(cold.max()), &cold_load);
    t.row(
        "CPU per warm open: csap mount / bindfs daemon",
        format!(
            "{} / {}",
            per_op(warm_cpu.0, c.len() + 1),
            per_op(warm_cpu.1, p.len() + 1)
        ),
        &warm_load,
    );
    t.row(
        "CPU per cold open: csap mount / csap server",
        format!(
            "{} / {}",
            per_op(cold_cpu.0, cold.len()),
            per_op(cold_cpu.1, cold.len())
        ),
        &cold_load,
    );
    t.row(
        "cold opens that made a key server round trip (audited grants)",
        format!("{round_trips} of {}", cold.len()),
        &cold_load,
    );
    t.print();
    // The same license requests without the mount: this process, the mount's device and
    // user, the opener's digest, one TLS connection kept alive, `block_on` from a plain
    // thread as the mount does, paced alike.
    let client = stack
        .rt
        .block_on(LicenseClient::connect(&stack.info.ks_url, &stack.node_dir))?;
    let token = UserToken::load(&stack.token_file)?;
    let mut ids = Vec::with_capacity(names.len());
    for n in &names {
        let f = std::fs::File::open(stack.backing.join(n))?;
        ids.push(csapfs::asset::read_header(&f)?.asset_id.0);
    }
    let mut direct = Vec::with_capacity(ids.len());
    let server_cpu0 = cpu_ns(stack.server.pid());
    for id in &ids {
        std::thread::sleep(Duration::from_millis(k.cold_pace_ms));
        let t0 = Instant::now();
        let lic = stack.rt.block_on(client.request(
            &token,
            &opener.digest,
            keyserver::wire::Action::Read,
            &[*id],
        ))?;
        direct.push(t0.elapsed().as_nanos() as u64);
        ensure!(
            lic.grants.len() == 1,
            "the key server did not grant {id:02x?}"
        );
    }
    let server_cpu = cpu_ns(stack.server.pid()).saturating_sub(server_cpu0);
    let direct = Samples::new(direct);
    let direct_load = load1();
    let mut t = LoadTable::new(
        "Cold open without the mount: the same license requests from the bench process",
    );
    t.row(
        "license request to `csap server`, one asset: p50 / p99",
        p50_p99(&direct),
        &direct_load,
    );
    t.row(
        "CPU of `csap server` per license",
        per_op(server_cpu, direct.len()),
        &direct_load,
    );
    t.row(
        "cold open through the mount minus this, p50",
        sdur(cold.pct(0.5) as i64 - direct.pct(0.5) as i64),
        &direct_load,
    );
    t.print();
    breakdown(stack, warm_key, 2000)?;
    ensure!(
        round_trips == cold.len(),
        "{round_trips} of {} cold opens reached the key server: the cold figure is not a \
         round-trip figure",
        cold.len()
    );
    Ok(())
}

// ---------- render-node pattern ----------

const FRAME_DIR: &str = "bench/frames";
const SEQ_FILE: &str = "bench/seq/big.raw";

fn import_render(stack: &Stack, imp: &Importer, k: &E2eKnobs) -> Result<()> {
    let frame_len = k.frame_mib * MIB;
    let base = noise(frame_len.max(8 * MIB), 11);
    // Licenses first (network), then encryption on two threads (CPU).
    let mut jobs = Vec::with_capacity(k.frames);
    for i in 0..k.frames {
        let p = format!("{FRAME_DIR}/f{i:05}.raw");
        let (h, key) = imp.create(&stack.rt, &p)?;
        jobs.push((i, stack.backing.join(p), h, key));
    }
    let (h, key) = imp.create(&stack.rt, SEQ_FILE)?;
    let piece = &base[..8 * MIB];
    let pieces: Vec<&[u8]> = (0..k.seq_mib.div_ceil(8))
        .map(|i| &piece[..(k.seq_mib * MIB - i * 8 * MIB).min(8 * MIB)])
        .collect();
    write_asset(&stack.backing.join(SEQ_FILE), h, &key, &pieces)?;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let (jobs, base) = (&jobs, &base);
                s.spawn(move || -> Result<()> {
                    let mut frame = base[..frame_len].to_vec();
                    for (i, path, h, key) in jobs.iter().skip(t).step_by(2) {
                        frame[..8].copy_from_slice(&(*i as u64).to_le_bytes());
                        write_asset(path, *h, key, &[&frame])?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("an import thread panicked"))??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}

/// One `dd` of the large file; bytes per second.
fn dd(root: &Path, read_kib: usize) -> Result<(u64, Duration)> {
    let src = root.join(SEQ_FILE);
    let t = Instant::now();
    let out = clean(&mut Command::new("dd"))
        .arg(format!("if={}", src.display()))
        .arg("of=/dev/null")
        .arg(format!("bs={read_kib}K"))
        .output()?;
    let e = t.elapsed();
    ensure!(
        out.status.success(),
        "dd {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((std::fs::metadata(&src)?.len(), e))
}

struct Worker {
    proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// `workers` processes of `app`, each reading every `workers`-th frame; the wall time from
/// "go" until the last one is done, and the bytes read.
fn render(app: &App, list: &Path, k: &E2eKnobs) -> Result<(u64, Duration)> {
    let mut ws = Vec::new();
    for w in 0..k.workers {
        let mut child = clean(Command::new(&app.path).arg(crate::worker::ARG))
            .args(["read", "--index", &w.to_string(), "--stride"])
            .arg(k.workers.to_string())
            .arg("--buf-kib")
            .arg(k.read_kib.to_string())
            .arg(list)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        ws.push(Worker {
            proc: Proc {
                child,
                what: format!("render worker {w}"),
            },
            stdin,
            stdout,
        });
    }
    let mut line = String::new();
    for w in &mut ws {
        line.clear();
        w.stdout.read_line(&mut line)?;
        ensure!(line.trim() == "ready", "{} did not start", w.proc.what);
    }
    let t = Instant::now();
    for w in &mut ws {
        writeln!(w.stdin, "go")?;
        w.stdin.flush()?;
    }
    let mut bytes = 0u64;
    for w in &mut ws {
        line.clear();
        w.stdout.read_line(&mut line)?;
        let n = line
            .trim()
            .strip_prefix("done ")
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("{} failed (see its error above)", w.proc.what))?;
        bytes += n;
    }
    let e = t.elapsed();
    for w in &mut ws {
        w.proc.child.wait()?;
    }
    Ok((bytes, e))
}

fn render_bench(stack: &Stack, apps: &RenderApps, k: &E2eKnobs) -> Result<()> {
    let (mnt, pass) = (stack.mnt(), stack.pass());
    let mut t = LoadTable::new(format!(
        "Render-node pattern: {} frames of {} MiB read by {} worker processes in {} KiB reads \
         through the csap mount (direct cache; backing store on {}), against one `dd` of a \
         {} MiB file through the same mount",
        k.frames,
        k.frame_mib,
        k.workers,
        k.read_kib,
        k.backing_parent.display(),
        k.seq_mib
    ));

    // The baseline: the mount's single-stream sequential read.
    let mut runs = Vec::new();
    let mut seq_load = String::new();
    let snap = Snap::now(stack.mount_pid());
    let mut seq_bytes = 0;
    for _ in 0..k.seq_runs {
        let (b, e) = dd(mnt, k.read_kib)?;
        runs.push(mb_s(b, e));
        seq_bytes += b;
        seq_load = load1();
    }
    let seq_usage = snap.since(stack.mount_pid(), seq_bytes);
    runs.sort_by(|a, b| a.total_cmp(b));
    let seq = runs[runs.len() / 2];
    let (b, e) = dd(pass, k.read_kib)?;
    let pass_seq = mb_s(b, e);
    let pass_load = load1();

    let frames: Vec<String> = (0..k.frames)
        .map(|i| {
            mnt.join(format!("{FRAME_DIR}/f{i:05}.raw"))
                .display()
                .to_string()
        })
        .collect();
    let list = stack.dir.path().join("frames.list");
    std::fs::write(&list, frames.join("\n"))?;

    // Without pre-loading: the rule is active; each first open asks the key server.
    let mark = stack.audit_mark()?;
    let perf = Perf::start(
        k.perf_dir.as_deref(),
        &[stack.mount_pid(), stack.server.pid()],
        "render-cold",
    )?;
    let snap = Snap::now(stack.mount_pid());
    let (bytes, cold_e) = render(&apps.cold, &list, k)?;
    let cold_usage = snap.since(stack.mount_pid(), bytes);
    perf.stop();
    let cold_load = load1();
    let cold = mb_s(bytes, cold_e);
    let cold_trips = stack.grants_since(mark, &apps.cold.digest)?;
    ensure!(
        bytes == (k.frames * k.frame_mib * MIB) as u64,
        "the workers read {bytes} bytes"
    );

    // With pre-loading: the rule arrives ahead of its window; when the window opens the mount
    // licenses the frames in batches before any worker opens one.
    let mark = stack.audit_mark()?;
    let opens_at = keyserver::now().expect("system clock usable") + 5;
    let s = stack.submit(
        "render-preload",
        &request_json(
            "render-preload",
            &[&apps.preload.digest],
            NODE,
            &format!("{FRAME_DIR}/**"),
            "read",
            opens_at,
        )?,
    )?;
    stack.wait_rules(&s, true)?;
    let deadline = Instant::now() + Duration::from_secs(60 + k.frames as u64 / 20);
    let preloaded_at = loop {
        let n = stack.grants_since(mark, &apps.preload.digest)?;
        if n >= k.frames {
            break std::time::SystemTime::now();
        }
        ensure!(
            Instant::now() < deadline,
            "the mount pre-loaded {n} of {} licenses (see {})",
            k.frames,
            stack.dir.path().join("mount.log").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let preload_secs = preloaded_at
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64()
        - opens_at as f64;
    // The grants are audited before the key server answers; let the batch land in the cache.
    std::thread::sleep(Duration::from_millis(500));
    let mark = stack.audit_mark()?;
    let perf = Perf::start(
        k.perf_dir.as_deref(),
        &[stack.mount_pid()],
        "render-preloaded",
    )?;
    let snap = Snap::now(stack.mount_pid());
    let (bytes, e) = render(&apps.preload, &list, k)?;
    let pre_usage = snap.since(stack.mount_pid(), bytes);
    perf.stop();
    let pre_load = load1();
    let pre = mb_s(bytes, e);
    let pre_trips = stack.grants_since(mark, &apps.preload.digest)?;

    t.row(
        format!(
            "sequential read, csap mount (`dd`, median of {})",
            k.seq_runs
        ),
        format!("{seq:.0} MB/s ({seq_usage})"),
        &seq_load,
    );
    t.row(
        "sequential read, passthrough (bindfs, `dd`)",
        format!("{pass_seq:.0} MB/s"),
        &pass_load,
    );
    t.row(
        "render without pre-loading",
        format!(
            "{cold:.0} MB/s ({:.2}× sequential; {:.1} s; {cold_usage})",
            cold / seq,
            cold_e.as_secs_f64()
        ),
        &cold_load,
    );
    t.row(
        "key server round trips during it",
        format!("{cold_trips} (one per frame)"),
        &cold_load,
    );
    t.row(
        format!("pre-load: window open → all {} licenses held", k.frames),
        format!("{preload_secs:.2} s"),
        &pre_load,
    );
    t.goal(
        "render with pre-loading",
        format!(
            "{pre:.0} MB/s ({:.2}× sequential; {:.1} s; {pre_usage})",
            pre / seq,
            e.as_secs_f64()
        ),
        "≥ 0.90× sequential",
        pre >= 0.9 * seq,
        &pre_load,
    );
    t.row(
        "key server round trips during it",
        pre_trips.to_string(),
        &pre_load,
    );
    t.print();
    ensure!(
        pre_trips == 0,
        "the pre-loaded render made {pre_trips} key server round trips"
    );
    Ok(())
}

struct RenderApps {
    cold: App,
    preload: App,
}

// ---------- entry ----------

/// Which end-to-end benchmarks a run does (one stack serves both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Open latency, warm and cold.
    Open,
    /// The render-node pattern.
    Render,
    Both,
}

/// Runs the open-latency and/or render benchmarks on one stack.
pub fn run(k: &E2eKnobs, part: Part) -> Result<()> {
    let open = part != Part::Render;
    let render = part != Part::Open;
    let backing_bytes = if render {
        (k.frames * k.frame_mib + k.seq_mib) as u64 * MIB as u64
    } else {
        0
    } + if open {
        (k.cold_opens as u64 + 1) * 8192
    } else {
        0
    };
    let t = Instant::now();
    let mut stack = Stack::start(k, backing_bytes)?;
    let apps_dir = stack.dir.path().join("apps");
    std::fs::create_dir_all(&apps_dir)?;

    // Applications and their requests: the importer may create; each reader may read its part.
    let imp = Importer::new(&stack)?;
    let import_app = App {
        path: PathBuf::new(),
        digest: imp.digest.clone(),
    };
    stack.register(&import_app, "bench-importer")?;
    let import_req = stack.submit(
        "import",
        &request_json(
            "import",
            &[&imp.digest],
            IMPORT_DEVICE,
            "bench/**",
            "create",
            keyserver::now().expect("system clock usable") - 60,
        )?,
    )?;
    let mut readers = Vec::new();
    let opener = if open {
        let a = app_copy(&apps_dir, "bench-open")?;
        stack.register(&a, "bench-open")?;
        readers.push(("open", a.digest.clone(), format!("{LAT_DIR}/**")));
        Some(a)
    } else {
        None
    };
    let render_apps = if render {
        let cold = app_copy(&apps_dir, "bench-render")?;
        let preload = app_copy(&apps_dir, "bench-render-preloaded")?;
        let dd = App {
            path: PathBuf::from("/usr/bin/dd"),
            digest: digest_of(&std::fs::canonicalize("/bin/dd")?)?,
        };
        for (a, n) in [
            (&cold, "bench-render"),
            (&preload, "bench-render-preloaded"),
            (&dd, "dd"),
        ] {
            stack.register(a, n)?;
        }
        readers.push(("render", cold.digest.clone(), format!("{FRAME_DIR}/**")));
        readers.push(("seq", dd.digest.clone(), "bench/seq/**".into()));
        Some(RenderApps { cold, preload })
    } else {
        None
    };
    let now = keyserver::now().expect("system clock usable");
    let mut reader_reqs = Vec::new();
    for (name, digest, assets) in &readers {
        reader_reqs.push(stack.submit(
            name,
            &request_json(name, &[digest], NODE, assets, "read", now - 60)?,
        )?);
    }

    stack.wait_rules(&import_req, false)?;
    let ti = Instant::now();
    let warm_key = if open {
        Some(import_lat(&stack, &imp, k)?)
    } else {
        None
    };
    if render {
        import_render(&stack, &imp, k)?;
    }
    let import_secs = ti.elapsed().as_secs_f64();
    stack.mount()?;
    for r in &reader_reqs {
        stack.wait_rules(r, true)?;
    }
    println!(
        "> csap server (authz, ARDS, key server) and csap mount as processes of {}; backing \
         store in {}; set up in {:.1} s (assets imported in {import_secs:.1} s)\n",
        stack.csap.display(),
        k.backing_parent.display(),
        t.elapsed().as_secs_f64()
    );
    if let (Some(opener), Some(key)) = (&opener, &warm_key) {
        open_latency(&stack, opener, key, k)?;
    }
    if let Some(apps) = &render_apps {
        render_bench(&stack, apps, k)?;
    }
    Ok(())
}
