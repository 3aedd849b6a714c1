//! `bench licenses --replicas 1,2,3`: single-key licenses from the key server on SQLite, then
//! from 1, 2, 3… key-server replicas sharing one PostgreSQL database, in one run, with the CPU
//! each license costs the key servers, the whole process (key servers and load generator) and
//! the database server.
//!
//! Replicas run in this process, each in its own tokio runtime (as each `csap server` is its
//! own process) with its own data directory: the first replica's directory copied minus its
//! `.lock`, as docs/operations.md tells an operator (the same root key, token and license keys
//! and CA). The load generator's clients are spread evenly over the replicas.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use csap_testkit::postgres::PgServer;

use super::{bench_rules, license_load, provision_bench, register_assets};
use crate::cpu;
use crate::report::{dur, rate};
use crate::Knobs;

/// Names of the threads that run key servers (their runtimes' workers and blocking pools, and
/// the SQLite store's audit writer); everything else in the process is the load generator.
const SERVER_THREADS: &[&str] = &["ks-server", "csap-audit"];

/// Assets the load cycles over.
const ASSETS: usize = 256;

/// Where a measured configuration keeps its store.
enum Store<'a> {
    Sqlite,
    Postgres(&'a PgServer),
}

/// One measured configuration at one client count.
struct Row {
    engine: &'static str,
    replicas: usize,
    clients: usize,
    per_s: f64,
    p50: u64,
    p99: u64,
    errors: usize,
    licenses: usize,
    /// CPU seconds over the level: the key servers' threads, the whole process, PostgreSQL.
    server_cpu: f64,
    process_cpu: f64,
    db_cpu: Option<f64>,
    secs: f64,
}

impl Row {
    fn per_license_us(&self, secs: f64) -> String {
        if self.licenses == 0 {
            return "—".into();
        }
        format!("{:.0}", secs / self.licenses as f64 * 1e6)
    }
}

pub(crate) async fn run(k: &Knobs, replicas: &[usize]) -> Result<()> {
    let bin = csap_testkit::postgres::bin_dir().context(
        "--replicas needs PostgreSQL (initdb and pg_ctl under /usr/lib/postgresql/*/bin, \
         on PATH, or in CSAP_PG_BIN): apt-get install postgresql",
    )?;
    let pg = PgServer::start(&bin).context("starting PostgreSQL")?;
    println!(
        "> PostgreSQL from {} on 127.0.0.1:{} (the test cluster: fsync=off, shared_buffers=32MB; \
         SQLite runs WAL with synchronous=NORMAL, which does not fsync a commit either); \
         every replica count gets a fresh database\n",
        bin.display(),
        pg.port()
    );
    let mut rows = measure(k, Store::Sqlite, 1).await?;
    for &n in replicas {
        rows.extend(measure(k, Store::Postgres(&pg), n).await?);
    }
    print_table(k, &rows);
    print_ratios(&rows);
    Ok(())
}

/// A replica's runtime, shut down in the background when dropped (dropping a runtime inside
/// another's task would panic).
struct ReplicaRuntime(Option<tokio::runtime::Runtime>);

impl ReplicaRuntime {
    fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .thread_name("ks-server")
            .enable_all()
            .build()
            .context("starting a key server's runtime")?;
        Ok(ReplicaRuntime(Some(rt)))
    }
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("runtime present until drop")
            .handle()
    }
}

impl Drop for ReplicaRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

async fn measure(k: &Knobs, store: Store<'_>, n: usize) -> Result<Vec<Row>> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let rules = bench_rules()?;
    let (engine, db_pid, db_url) = match &store {
        Store::Sqlite => ("SQLite", None, None),
        Store::Postgres(pg) => (
            "PostgreSQL",
            Some(pg.postmaster_pid()?),
            Some(pg.create_database()?),
        ),
    };
    let config = |data: &Path| -> Result<keyserver::server::ServerConfig> {
        let mut cfg = keyserver::testing::loopback_config(data, rules.clone());
        if let Some(url) = &db_url {
            cfg.store = authz::pg::Engine::postgres(authz::pg::Target::parse(url, None)?);
        }
        Ok(cfg)
    };
    let mut runtimes = Vec::new();
    let mut servers = Vec::new();
    for i in 0..n {
        let data = dir.path().join(format!("ks-{i}"));
        if i > 0 {
            copy_replica_dir(&dir.path().join("ks-0"), &data)?;
        }
        let rt = ReplicaRuntime::new()?;
        let lb = rt
            .handle()
            .spawn(keyserver::testing::spawn_with(config(&data)?))
            .await??;
        runtimes.push(rt);
        servers.push(lb);
    }
    let dev = provision_bench(&servers[0], &dir.path().join("dev")).await?;
    let ids = std::sync::Arc::new(register_assets(&dev, ASSETS).await?);
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    println!(
        "> {engine}, {n} replica{}: {}",
        if n == 1 { "" } else { "s" },
        urls.join(", ")
    );

    let mut rows = Vec::new();
    for &c in &k.concurrency {
        let (server0, process0) = (cpu::threads_secs(SERVER_THREADS), cpu::process_secs());
        let db0 = db_pid.map(cpu::tree_secs);
        let started = std::time::Instant::now();
        let r = license_load(&urls, &dev, &ids, c, Duration::from_secs_f64(k.secs)).await?;
        let secs = started.elapsed().as_secs_f64();
        rows.push(Row {
            engine,
            replicas: n,
            clients: c,
            per_s: r.per_s,
            p50: r.lat.pct(0.5),
            p99: r.lat.pct(0.99),
            errors: r.errors,
            licenses: r.lat.len(),
            server_cpu: cpu::threads_secs(SERVER_THREADS) - server0,
            process_cpu: cpu::process_secs() - process0,
            db_cpu: db_pid
                .zip(db0)
                .map(|(pid, before)| cpu::tree_secs(pid) - before),
            secs,
        });
    }
    for (rt, lb) in runtimes.iter().zip(servers) {
        rt.handle().spawn(lb.server.shutdown()).await?;
    }
    Ok(rows)
}

/// A further replica's data directory: the first's, copied whole minus its `.lock`
/// (docs/operations.md, "what stays in --data-dir, per replica").
fn copy_replica_dir(first: &Path, to: &Path) -> Result<()> {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(first)
        .arg(to)
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!(
            "cp -a {} {} failed: {status}",
            first.display(),
            to.display()
        );
    }
    match std::fs::remove_file(to.join(".lock")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

fn print_table(k: &Knobs, rows: &[Row]) {
    println!(
        "\n### Single-key licenses, SQLite and PostgreSQL replicas ({:.0} s per level)\n",
        k.secs
    );
    println!(
        "CPU is µs per license: the key servers' threads, this whole process (key servers and \
         load generator), and PostgreSQL's processes; `busy` is their sum over the wall time, \
         in cores.\n"
    );
    println!(
        "| engine | replicas | clients | licenses/s | p50 / p99 | key servers µs | process µs \
         | PostgreSQL µs | busy cores | failed |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let busy = (r.process_cpu + r.db_cpu.unwrap_or(0.0)) / r.secs;
        println!(
            "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {:.2} | {} |",
            r.engine,
            r.replicas,
            r.clients,
            rate(r.per_s),
            dur(r.p50),
            dur(r.p99),
            r.per_license_us(r.server_cpu),
            r.per_license_us(r.process_cpu),
            r.db_cpu.map_or("—".into(), |s| r.per_license_us(s)),
            busy,
            r.errors
        );
    }
    println!();
}

/// Issue 16's goal: one PostgreSQL replica at ≥ 50 % of SQLite's rate, per client count.
fn print_ratios(rows: &[Row]) {
    for sqlite in rows.iter().filter(|r| r.engine == "SQLite") {
        if let Some(pg) = rows
            .iter()
            .find(|r| r.engine == "PostgreSQL" && r.replicas == 1 && r.clients == sqlite.clients)
        {
            let ratio = pg.per_s / sqlite.per_s;
            println!(
                "> {} clients: PostgreSQL, 1 replica, at {:.0} % of SQLite's rate (goal ≥ 50 %: {})",
                sqlite.clients,
                ratio * 100.0,
                if ratio >= 0.5 { "met" } else { "**not met**" }
            );
        }
    }
    println!();
}
