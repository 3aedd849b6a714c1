//! The whole-system benchmark harness: `cargo run -p bench --release -- <evaluator|licenses|
//! distribution|open|render|e2e|revoke|all>`. Each subcommand runs real components on 127.0.0.1 (TLS,
//! SQLite files in a temp dir), stops by itself, and prints a Markdown table of figures against
//! their goals. `open` and `render` (see [`e2e`]) drive the release `csap` binary as processes.
//!
//! Environment: `BENCH_QUICK=1` shrinks every run to a smoke test (seconds, not minutes; the
//! figures are then not meaningful). Finer knobs are listed by `bench help`.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use authz::template::RuleSpec;
use authz::testing::{synthetic_request, synthetic_rules, OwnedAccessRequest};
use authz::{Action, Evaluator, IssuerKey, Rule};

mod e2e;
mod worker;

const USAGE: &str = "\
usage: bench <evaluator|licenses|distribution|open|render|e2e|revoke|all>

  evaluator     authz evaluator: 10,000 synthetic rules, per-call decide() latency
  licenses      key server on loopback TLS: licenses/s and latency at 1/16/64/256 clients,
                and the latency of a 1,000-key batch license
  distribution  ARDS on loopback TLS: 1,000 subscribed PEPs, publish/revoke → all have it;
                one PEP's publish → receive latency
  open          end to end (csap server + csap mount --server --ards as processes, FUSE):
                warm open+close vs a bindfs passthrough, cold open (license round trip)
  render        end to end: 1,000 frames of 8 MiB read by 2 worker processes, with and without
                pre-loading, vs the mount's sequential read (dd); backing store on /dev/shm
  e2e           open and render on one stack
  revoke        end to end: user disable → a handle held open through the mount fails its
                next read (EACCES); a new user per trial
  all           evaluator, licenses, distribution, open (not render: it needs ~10 GiB of tmpfs)

  open, render and e2e need root (or FUSE rights), bindfs, and the release csap binary next to
  this one: cargo build --release -p cli && cargo run -p bench --release -- e2e

environment (defaults in brackets):
  BENCH_QUICK=1          smoke-test sizes for every knob below
  BENCH_CALLS            evaluator: timed decide() calls [200000]
  BENCH_SECS             licenses: seconds per concurrency level [5]
  BENCH_CONCURRENCY      licenses: comma-separated client counts [1,16,64,256]
  BENCH_BATCH            licenses: keys in the batch license [1000]
  BENCH_BATCH_REPS       licenses: timed batch licenses [15]
  BENCH_SPLIT=1          licenses: key server pinned to CPU 0, load generator to CPU 1
                         (the server's capacity on one core, without the load generator)
  BENCH_PEPS             distribution: subscribed PEPs [1000]
  BENCH_ROUNDS           distribution: publish and revoke rounds [5]
  BENCH_SOLO_ROUNDS      distribution: single-PEP rounds [50]
  BENCH_WARM_OPENS       open: timed warm opens per mount [20000]
  BENCH_COLD_OPENS       open: distinct assets opened cold [500]
  BENCH_COLD_PACE_MS     open: pause before each cold open (key server rate limit) [8]
  BENCH_FRAMES           render: frames [1000]
  BENCH_FRAME_MIB        render: MiB per frame [8]
  BENCH_WORKERS          render: worker processes [2]
  BENCH_READ_KIB         render: read size of workers and dd [1024]
  BENCH_SEQ_MIB          render: size of the dd file [2048]
  BENCH_SEQ_RUNS         render: dd runs (median) [3]
  BENCH_REVOKE_TRIALS    revoke: trials, a user each [100]
  BENCH_BACKING_DIR      open/render: where the backing store lives [/dev/shm]
  BENCH_CSAP             open/render: the csap binary [next to this executable]
  BENCH_PERF_DIR         open/render: record the mount with `perf record -g` into this dir
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(worker::ARG) {
        // A child of the e2e modes: the opening/reading application.
        return worker::main(&args[2..]);
    }
    let what = args.get(1).cloned().unwrap_or_default();
    let run: &[&str] = match what.as_str() {
        "evaluator" | "licenses" | "distribution" | "open" | "render" | "e2e" | "revoke" => &[],
        "all" => &["evaluator", "licenses", "distribution", "open"],
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            return Ok(());
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown subcommand {other:?}");
        }
    };
    let run: Vec<&str> = if run.is_empty() {
        vec![what.as_str()]
    } else {
        run.to_vec()
    };
    let knobs = Knobs::from_env()?;
    if knobs.quick {
        println!("> BENCH_QUICK=1: smoke-test sizes; figures are not meaningful.\n");
    }
    println!("> {}\n", machine_line());
    for w in run {
        match w {
            "evaluator" => evaluator(&knobs)?,
            "licenses" if knobs.split => {
                pin_current_thread(LOAD_CPU)?;
                runtime_on(Some(LOAD_CPU))?.block_on(licenses(&knobs))?
            }
            "licenses" => runtime()?.block_on(licenses(&knobs))?,
            "open" => e2e::run(&e2e::E2eKnobs::from_env(knobs.quick)?, e2e::Part::Open)?,
            "render" => e2e::run(&e2e::E2eKnobs::from_env(knobs.quick)?, e2e::Part::Render)?,
            "e2e" => e2e::run(&e2e::E2eKnobs::from_env(knobs.quick)?, e2e::Part::Both)?,
            "revoke" => e2e::revoke::run(
                &e2e::E2eKnobs::from_env(knobs.quick)?,
                env_num("BENCH_REVOKE_TRIALS", if knobs.quick { 10 } else { 100 })?,
            )?,
            _ => runtime()?.block_on(distribution(&knobs))?,
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    runtime_on(None)
}

/// CPUs of BENCH_SPLIT=1.
const SERVER_CPU: usize = 0;
const LOAD_CPU: usize = 1;

/// A runtime whose threads (workers and blocking pool) all run on `cpu` when given.
fn runtime_on(cpu: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(cpu) = cpu {
        b.worker_threads(1).on_thread_start(move || {
            if let Err(e) = pin_current_thread(cpu) {
                eprintln!("pinning a thread to CPU {cpu}: {e}");
            }
        });
    }
    b.enable_all().build().context("starting the tokio runtime")
}

/// Restricts the calling thread (and threads it starts later) to `cpu`.
fn pin_current_thread(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// Build profile, cores and load: the context every figure needs.
fn machine_line() -> String {
    let profile = if cfg!(debug_assertions) {
        "DEBUG build (use --release for figures)"
    } else {
        "release build"
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    format!("{profile}; {cores} cores; load average {load} (at start)")
}

// ---------- configuration ----------

struct Knobs {
    quick: bool,
    calls: usize,
    secs: f64,
    concurrency: Vec<usize>,
    batch: usize,
    batch_reps: usize,
    peps: usize,
    rounds: usize,
    solo_rounds: usize,
    split: bool,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .with_context(|| format!("{name}={v:?} is not a valid number")),
        Err(_) => Ok(default),
    }
}

impl Knobs {
    fn from_env() -> Result<Self> {
        let flag = |name: &str| std::env::var(name).is_ok_and(|v| v != "0" && !v.is_empty());
        let quick = flag("BENCH_QUICK");
        let q = |full: usize, small: usize| if quick { small } else { full };
        let concurrency = match std::env::var("BENCH_CONCURRENCY") {
            Ok(v) => v
                .split(',')
                .map(|s| s.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|v| !v.is_empty() && v.iter().all(|&n| n > 0))
                .with_context(|| format!("BENCH_CONCURRENCY={v:?}: give e.g. 1,16,64"))?,
            Err(_) if quick => vec![1, 16],
            Err(_) => vec![1, 16, 64, 256],
        };
        let k = Knobs {
            quick,
            calls: env_num("BENCH_CALLS", q(200_000, 20_000))?,
            secs: env_num("BENCH_SECS", if quick { 1.0 } else { 5.0 })?,
            concurrency,
            batch: env_num("BENCH_BATCH", q(1000, 100))?,
            batch_reps: env_num("BENCH_BATCH_REPS", q(15, 3))?,
            peps: env_num("BENCH_PEPS", q(1000, 50))?,
            rounds: env_num("BENCH_ROUNDS", q(5, 2))?,
            solo_rounds: env_num("BENCH_SOLO_ROUNDS", q(50, 5))?,
            split: flag("BENCH_SPLIT"),
        };
        if k.calls == 0 || k.batch == 0 || k.batch_reps == 0 || k.peps == 0 || k.rounds == 0 {
            bail!("BENCH_* counts must be positive");
        }
        if !(k.secs > 0.0 && k.secs <= 600.0) {
            bail!("BENCH_SECS must be in (0, 600]");
        }
        Ok(k)
    }
}

// ---------- statistics and output ----------

/// Sorted samples in nanoseconds.
struct Samples(Vec<u64>);

impl Samples {
    fn new(mut v: Vec<u64>) -> Self {
        v.sort_unstable();
        Samples(v)
    }
    /// Nearest-rank percentile (`p` in 0..=1); 0 when empty.
    fn pct(&self, p: f64) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        let rank = ((self.0.len() as f64) * p).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
    fn max(&self) -> u64 {
        self.0.last().copied().unwrap_or(0)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

fn dur(ns: u64) -> String {
    match ns {
        n if n < 10_000 => format!("{n} ns"),
        n if n < 1_000_000 => format!("{:.1} µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.2} ms", n as f64 / 1e6),
        n => format!("{:.2} s", n as f64 / 1e9),
    }
}

fn rate(n: f64) -> String {
    if n >= 10_000.0 {
        format!("{:.0}", n)
    } else {
        format!("{:.1}", n)
    }
}

/// A Markdown table of figures; `met` is None for figures without a goal.
struct Table {
    title: String,
    rows: Vec<(String, String, String, Option<bool>)>,
}

impl Table {
    fn new(title: impl Into<String>) -> Self {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }
    fn info(&mut self, figure: impl Into<String>, value: impl Into<String>) {
        self.rows
            .push((figure.into(), value.into(), "—".into(), None));
    }
    fn goal(
        &mut self,
        figure: impl Into<String>,
        value: impl Into<String>,
        goal: impl Into<String>,
        met: bool,
    ) {
        self.rows
            .push((figure.into(), value.into(), goal.into(), Some(met)));
    }
    fn print(&self) {
        println!("### {}\n", self.title);
        println!("| figure | measured | goal | met? |");
        println!("|---|---:|---|---|");
        for (f, v, g, m) in &self.rows {
            let m = match m {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            println!("| {f} | {v} | {g} | {m} |");
        }
        println!();
    }
}

// ---------- evaluator ----------

/// A request for nobody's rules (no candidate at all): the cheapest denial.
fn outsider(k: usize) -> (OwnedAccessRequest, bool) {
    let (mut r, _) = synthetic_request(k);
    r.participant = format!("contractor{}", k % 37);
    r.action = Action::Read;
    (r, false)
}

/// The right participant, device and application, but a shot the rule does not cover: the
/// candidates are checked and none matches.
fn wrong_shot(k: usize) -> (OwnedAccessRequest, bool) {
    let (mut r, _) = synthetic_request(k);
    r.action = Action::Read;
    r.asset_path = format!("show/seq{}/shot{:05}/f0001.exr", (k + 1) % 20, k + 1);
    (r, false)
}

fn evaluator(k: &Knobs) -> Result<()> {
    const RULES: usize = 10_000;
    let rules = synthetic_rules(RULES);
    let t = Instant::now();
    let ev = Evaluator::new(rules).context("synthetic rules must compile")?;
    let build = t.elapsed();

    // The mix: 60 % allowed reads, 20 % denied by action (delete is never granted), 10 %
    // denied for the wrong shot, 10 % from principals without any rule.
    let mut reqs = Vec::with_capacity(RULES);
    for i in 0..RULES {
        let kk = (i * 7919) % RULES; // spread over the rule set, not in rule order
        let r = match i % 10 {
            0..=5 => synthetic_request(kk & !1),
            6 | 7 => synthetic_request(kk | 1),
            8 => wrong_shot(kk & !1),
            _ => outsider(kk),
        };
        reqs.push(r);
    }
    // Warm up and check every answer: a benchmark of wrong answers is worthless.
    for (r, expect) in &reqs {
        let got = ev.decide(&r.as_request()).allowed;
        if got != *expect {
            bail!("evaluator answered {got} for {r:?}, expected {expect}");
        }
    }
    let allowed_share = reqs.iter().filter(|(_, a)| *a).count() as f64 / reqs.len() as f64;

    // Timer overhead: back-to-back Instant::now() pairs, the floor of every sample below.
    let n_overhead = k.calls.min(200_000);
    let mut overhead = Vec::with_capacity(n_overhead);
    for _ in 0..n_overhead {
        let t = Instant::now();
        overhead.push(t.elapsed().as_nanos() as u64);
    }
    let overhead = Samples::new(overhead);

    let mut samples = Vec::with_capacity(k.calls);
    let mut allowed = 0usize;
    for i in 0..k.calls {
        let req = reqs[i % reqs.len()].0.as_request();
        let t = Instant::now();
        let d = ev.decide(&req);
        let e = t.elapsed();
        allowed += std::hint::black_box(d).allowed as usize;
        samples.push(e.as_nanos() as u64);
    }
    let s = Samples::new(samples);

    // Throughput without per-call timers.
    let t = Instant::now();
    for i in 0..k.calls {
        std::hint::black_box(ev.decide(&reqs[i % reqs.len()].0.as_request()));
    }
    let per_s = k.calls as f64 / t.elapsed().as_secs_f64();

    let mut tab = Table::new(format!(
        "Evaluator: {RULES} synthetic rules, {} decide() calls, one thread",
        k.calls
    ));
    tab.info(
        "Evaluator::new (compile 10,000 rules)",
        dur(build.as_nanos() as u64),
    );
    tab.info(
        "request mix",
        format!(
            "{:.0} % allowed ({allowed} of {} timed calls)",
            allowed_share * 100.0,
            k.calls
        ),
    );
    tab.info("decisions/s (untimed loop)", rate(per_s));
    tab.info("decide() p50", dur(s.pct(0.50)));
    tab.goal(
        "decide() p99",
        dur(s.pct(0.99)),
        "≤ 20 µs",
        s.pct(0.99) <= 20_000,
    );
    tab.info("decide() p99.9", dur(s.pct(0.999)));
    tab.info("decide() max", dur(s.max()));
    tab.info(
        "timer overhead (Instant pair) p50 / p99",
        format!("{} / {}", dur(overhead.pct(0.5)), dur(overhead.pct(0.99))),
    );
    tab.print();
    Ok(())
}

// ---------- licenses ----------

const KS_USER: &str = "bench-user";
const KS_DEVICE: &str = "bench-ws";
const KS_APP: &str = "bench-app";
const KS_SCOPE: &str = "bench-scope";

async fn licenses(k: &Knobs) -> Result<()> {
    let dir = tempfile::tempdir().context("temp dir")?;
    // The digest keyserver::testing::provision registers for the app.
    let digest = blake3_hex(KS_APP.as_bytes());
    let now = keyserver::now().expect("system clock usable");
    let rule = keyserver::testing::RuleFor {
        id: "r-bench",
        user: KS_USER,
        device: KS_DEVICE,
        app_digest: &digest,
        path_like: "bench/*",
        actions: &[Action::Read, Action::Create],
        not_before: now - 3600,
        not_after: now + 86_400,
    }
    .build();
    let rules = Arc::new(keyserver::SwappableRules::new(Evaluator::new([rule])?));
    // loopback_config already lifts the per-device token bucket (production default 200/s,
    // burst 400) to 100,000/s: every client here is the same device, so the production limit
    // would cap the run at 200 licenses/s.
    let cfg = keyserver::testing::loopback_config(&dir.path().join("ks"), rules);
    let limit = cfg.limits.per_device;
    let max_batch = cfg.limits.max_batch;
    if k.batch > max_batch {
        bail!(
            "BENCH_BATCH={} exceeds the server's max_batch {max_batch}",
            k.batch
        );
    }
    // The server lives in its own runtime (kept alive until the end of this function), as
    // `csap server` runs in its own process: its worker threads never run the load generator's
    // tasks. With BENCH_SPLIT its threads (and the audit thread they start) are pinned to a CPU.
    let server_rt = runtime_on(k.split.then_some(SERVER_CPU))?;
    let lb = server_rt
        .spawn(keyserver::testing::spawn_with(cfg))
        .await??;
    let dev = keyserver::testing::provision(
        &lb,
        KS_DEVICE,
        &dir.path().join("dev"),
        KS_USER,
        KS_APP,
        KS_SCOPE,
    )
    .await?;
    let dev = Arc::new(dev);

    // Register the assets (16 creators in parallel).
    let n_assets = k.batch.max(256);
    let t = Instant::now();
    let ids: Vec<[u8; 16]> = {
        let mut tasks = Vec::new();
        for c in 0..16 {
            let dev = dev.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in (c..n_assets).step_by(16) {
                    let lic = dev
                        .client
                        .create(
                            &dev.token,
                            &dev.app_digest,
                            &format!("bench/a{i:05}.exr"),
                            KS_SCOPE,
                        )
                        .await?;
                    out.push(lic.grants[0].asset_id);
                }
                Ok::<_, keyserver::ClientError>(out)
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.extend(t.await??);
        }
        ids
    };
    println!(
        "> key server on {}; {} assets registered in {:.1} s; per-device limit set to {}/s \
         (burst {}) for the bench — production default is 200/s\n",
        lb.url,
        ids.len(),
        t.elapsed().as_secs_f64(),
        limit.rate,
        limit.burst
    );
    let ids = Arc::new(ids);

    let layout = if k.split {
        "key server's runtime pinned to CPU 0, load generator's to CPU 1"
    } else {
        "key server and load generator in separate runtimes sharing both cores"
    };
    let mut tab = Table::new(format!(
        "Key server licenses over TLS keep-alive ({layout}; {:.0} s per level)",
        k.secs
    ));
    for &c in &k.concurrency {
        let r = license_load(&lb.url, &dev, &ids, c, Duration::from_secs_f64(k.secs)).await?;
        let label = format!("{c} client{}", if c == 1 { "" } else { "s" });
        if c == 64 {
            tab.goal(
                format!("single-key licenses/s, {label}"),
                rate(r.per_s),
                "≥ 20,000/s",
                r.per_s >= 20_000.0,
            );
            tab.goal(
                format!("p50 / p99, {label}"),
                format!("{} / {}", dur(r.lat.pct(0.5)), dur(r.lat.pct(0.99))),
                "p99 ≤ 10 ms",
                r.lat.pct(0.99) <= 10_000_000,
            );
        } else {
            tab.info(format!("single-key licenses/s, {label}"), rate(r.per_s));
            tab.info(
                format!("p50 / p99, {label}"),
                format!("{} / {}", dur(r.lat.pct(0.5)), dur(r.lat.pct(0.99))),
            );
        }
        if r.errors > 0 {
            tab.info(format!("failed requests, {label}"), r.errors.to_string());
        }
    }

    // The batch: the same connection, `batch` keys per license.
    let batch: Vec<[u8; 16]> = ids[..k.batch].to_vec();
    let client = keyserver::LicenseClient::connect(&lb.url, &dev.device_dir).await?;
    let one = || async {
        let t = Instant::now();
        let lic = client
            .request(&dev.token, &dev.app_digest, Action::Read, &batch)
            .await?;
        let e = t.elapsed();
        if lic.grants.len() != batch.len() {
            bail!(
                "batch license granted {} of {}",
                lic.grants.len(),
                batch.len()
            );
        }
        Ok(e.as_nanos() as u64)
    };
    one().await?; // warm-up
    let mut v = Vec::new();
    for _ in 0..k.batch_reps {
        v.push(one().await?);
    }
    let s = Samples::new(v);
    let med = s.pct(0.5);
    let fig = format!(
        "{}-key batch license, median of {} (incl. client-side opening)",
        k.batch,
        s.len()
    );
    if k.batch == 1000 {
        tab.goal(fig, dur(med), "≤ 20 ms", med <= 20_000_000);
    } else {
        tab.info(fig, dur(med));
    }
    tab.info(
        "batch license min / max",
        format!("{} / {}", dur(s.pct(0.0)), dur(s.max())),
    );
    tab.print();
    server_rt.spawn(lb.server.shutdown()).await?;
    server_rt.shutdown_background();
    Ok(())
}

struct LoadResult {
    per_s: f64,
    lat: Samples,
    errors: usize,
}

/// `c` tasks, each with its own client (one TLS connection, kept alive), asking for single-key
/// licenses back to back for `d`.
async fn license_load(
    url: &str,
    dev: &Arc<keyserver::testing::Provisioned>,
    ids: &Arc<Vec<[u8; 16]>>,
    c: usize,
    d: Duration,
) -> Result<LoadResult> {
    let mut clients = Vec::with_capacity(c);
    for _ in 0..c {
        let cl = keyserver::LicenseClient::connect(url, &dev.device_dir).await?;
        clients.push(cl);
    }
    let start = Arc::new(tokio::sync::Barrier::new(c + 1));
    let mut tasks = Vec::with_capacity(c);
    for (i, cl) in clients.into_iter().enumerate() {
        let (dev, ids, start) = (dev.clone(), ids.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut j = i * 7;
            start.wait().await;
            let deadline = Instant::now() + d;
            while Instant::now() < deadline {
                let id = ids[j % ids.len()];
                j += 1;
                let t = Instant::now();
                match cl
                    .request(&dev.token, &dev.app_digest, Action::Read, &[id])
                    .await
                {
                    Ok(l) if l.grants.len() == 1 => lat.push(t.elapsed().as_nanos() as u64),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    start.wait().await;
    let t = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        lat.extend(l);
        errors += e;
    }
    let el = t.elapsed().as_secs_f64();
    Ok(LoadResult {
        per_s: lat.len() as f64 / el,
        lat: Samples::new(lat),
        errors,
    })
}

// ---------- distribution ----------

const ISSUER: &str = "authz";

fn bench_rule(id: &str, targets: Vec<String>, now: i64) -> Rule {
    let spec = RuleSpec {
        id: id.to_owned(),
        request_id: format!("req-{id}"),
        task: "bench".into(),
        participant: "alice".into(),
        actions: vec![Action::Read],
        devices: vec!["dev0".into()],
        applications: vec![blake3_hex(b"nuke")],
        assets: vec![authz::request::AssetSelector {
            path: Some("show/seq1/*".into()),
            scope: None,
        }],
        not_before: now - 60,
        not_after: now + 3600,
    };
    Rule {
        id: id.to_owned(),
        issuer: ISSUER.to_owned(),
        request_id: spec.request_id.clone(),
        targets,
        not_before: spec.not_before,
        not_after: spec.not_after,
        policy: spec.to_cedar(),
    }
}

fn blake3_hex(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

async fn start_pep(
    url: &str,
    ca_pem: &str,
    key: &IssuerKey,
    dir: &Path,
    pep: &str,
    identity: authz::tls::ClientIdentity,
) -> Result<ards::RulesClient> {
    let cfg = ards::ClientConfig {
        url: url.to_owned(),
        pep_id: pep.to_owned(),
        ca_pem: ca_pem.to_owned(),
        identity,
        trusted_issuers: vec![(ISSUER.to_owned(), key.public())],
        cache_path: dir.join(format!("{}.json", pep.replace(':', "_"))),
    };
    let opts = ards::ClientOptions {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        ..Default::default()
    };
    Ok(ards::RulesClient::start_with(cfg, opts).await?)
}

/// Waits until every PEP's evaluator does (`want`) or does not hold rule `id`; each future
/// yields the instant it saw that (None: not within `limit`).
fn wait_all(
    peps: &[Arc<ards::RulesClient>],
    id: &str,
    want: bool,
    limit: Duration,
) -> Vec<impl Future<Output = Option<Instant>>> {
    peps.iter()
        .map(|p| {
            // Subscribe before the change is made, so no notification is missed.
            let mut rx = p.subscribe();
            let (p, id) = (p.clone(), id.to_owned());
            async move {
                let has = |p: &ards::RulesClient| p.evaluator().rules().iter().any(|r| r.id == id);
                let deadline = Instant::now() + limit;
                loop {
                    if has(&p) == want {
                        return Some(Instant::now());
                    }
                    let left = deadline.checked_duration_since(Instant::now())?;
                    match tokio::time::timeout(left, rx.changed()).await {
                        Ok(Ok(())) => {}
                        _ => return None,
                    }
                }
            }
        })
        .collect()
}

/// Starts the waits, makes the change, and returns each PEP's delay from the start of the
/// change call (the publish/revoke HTTP round trip is part of the figure), plus the misses.
async fn timed_change<F, Fut>(
    peps: &[Arc<ards::RulesClient>],
    id: &str,
    want: bool,
    limit: Duration,
    change: F,
) -> Result<(Vec<u64>, usize)>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let waits: Vec<_> = wait_all(peps, id, want, limit)
        .into_iter()
        .map(tokio::spawn)
        .collect();
    // Let the waiting tasks make their first check before the change is made.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t0 = Instant::now();
    change().await?;
    let mut got = Vec::with_capacity(peps.len());
    let mut missed = 0;
    for w in waits {
        match w.await? {
            Some(at) => got.push(at.saturating_duration_since(t0).as_nanos() as u64),
            None => missed += 1,
        }
    }
    Ok((got, missed))
}

async fn distribution(k: &Knobs) -> Result<()> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let key = IssuerKey::generate()?;
    // Every PEP and the publisher authenticate with a certificate of one CA, as in production.
    let pki = authz::testing::pki::TestPki::new(authz::testing::pki::TestDirectory::new(
        authz::principal::Standing::Unknown,
    ));
    let opts = ards::testing::LoopbackOptions::new(
        dir.path().join("ards"),
        vec![(ISSUER.to_owned(), key.public())],
        pki.client_auth(),
    );
    let server = ards::testing::spawn_loopback(opts).await?;
    let publisher = pki.issue(ISSUER, authz::principal::Role::Service);
    let http = ards::ArdsHttp::new(&server.url, &server.ca_pem, Some(&publisher.identity))?;
    // Each PEP writes its rule cache with fsync on every change. Real PEPs do that on their
    // own machines in parallel; 1,000 of them in one process on one disk would queue their
    // fsyncs behind each other and measure the disk, not distribution. So the PEP caches live
    // on tmpfs when there is one (ARDS's own SQLite store stays on disk).
    let shm = tempfile::Builder::new()
        .prefix("csap-bench-peps")
        .tempdir_in("/dev/shm")
        .ok();
    let caches = match &shm {
        Some(d) => d.path().to_path_buf(),
        None => dir.path().join("peps"),
    };
    std::fs::create_dir_all(&caches)?;
    let limit = Duration::from_secs(if k.quick { 20 } else { 30 });

    // Subscribe the PEPs (16 at a time: each is a TLS handshake and a first snapshot).
    let t = Instant::now();
    let names: Vec<String> = (0..k.peps).map(|i| format!("mount:dev{i}")).collect();
    let mut peps = Vec::with_capacity(k.peps);
    for chunk in names.chunks(16) {
        let mut starting = Vec::new();
        for n in chunk {
            let device = n.strip_prefix("mount:").unwrap_or(n);
            let identity = pki.issue(device, authz::principal::Role::Device).identity;
            starting.push(start_pep(
                &server.url,
                &server.ca_pem,
                &key,
                &caches,
                n,
                identity,
            ));
        }
        for s in starting {
            peps.push(Arc::new(s.await?));
        }
    }
    for p in &peps {
        if !p.wait_synced(limit).await {
            bail!("a PEP did not sync with ARDS within {limit:?}");
        }
    }
    println!(
        "> ARDS on {} (store on disk); {} PEPs subscribed and synced in {:.1} s; PEP rule \
         caches in {}\n",
        server.url,
        peps.len(),
        t.elapsed().as_secs_f64(),
        if shm.is_some() {
            "/dev/shm (tmpfs)"
        } else {
            "the temp dir (no /dev/shm)"
        }
    );

    let mut all_pub = Vec::new();
    let mut all_rev = Vec::new();
    let mut per_pep = Vec::new();
    let mut missed = 0;
    for r in 0..k.rounds {
        let id = format!("r-bench-{r}");
        let rule = authz::sign(
            bench_rule(
                &id,
                names.clone(),
                keyserver::now().expect("system clock usable"),
            ),
            &key,
        );
        let (d, m) = timed_change(&peps, &id, true, limit, || async {
            http.publish(std::slice::from_ref(&rule)).await?;
            Ok::<(), anyhow::Error>(())
        })
        .await?;
        missed += m;
        if m == 0 {
            all_pub.push(d.iter().copied().max().unwrap_or(0));
        }
        per_pep.extend(d);
        let rev = authz::wire::Revocation::sign(
            &id,
            ISSUER,
            "bench",
            keyserver::now().expect("system clock usable"),
            &key,
        );
        let (d, m) = timed_change(&peps, &id, false, limit, || async {
            http.revoke(&rev).await?;
            Ok::<(), anyhow::Error>(())
        })
        .await?;
        missed += m;
        if m == 0 {
            all_rev.push(d.iter().copied().max().unwrap_or(0));
        }
    }
    drop(peps);

    // One PEP alone: publish → receive.
    let solo_identity = pki.issue("solo", authz::principal::Role::Device).identity;
    let solo = Arc::new(
        start_pep(
            &server.url,
            &server.ca_pem,
            &key,
            &caches,
            "mount:solo",
            solo_identity,
        )
        .await?,
    );
    if !solo.wait_synced(limit).await {
        bail!("the single PEP did not sync with ARDS within {limit:?}");
    }
    let mut solo_lat = Vec::new();
    for r in 0..k.solo_rounds {
        let id = format!("r-solo-{r}");
        let rule = authz::sign(
            bench_rule(
                &id,
                vec!["mount:solo".into()],
                keyserver::now().expect("system clock usable"),
            ),
            &key,
        );
        let (d, m) = timed_change(std::slice::from_ref(&solo), &id, true, limit, || async {
            http.publish(std::slice::from_ref(&rule)).await?;
            Ok::<(), anyhow::Error>(())
        })
        .await?;
        missed += m;
        solo_lat.extend(d);
    }
    drop(solo);
    server.shutdown().await;

    let pubs = Samples::new(all_pub);
    let revs = Samples::new(all_rev);
    let pp = Samples::new(per_pep);
    let solo = Samples::new(solo_lat);
    let mut tab = Table::new(format!(
        "ARDS distribution: {} PEPs on loopback TLS, {} rounds (server and PEPs share the machine)",
        k.peps, k.rounds
    ));
    let trio = |s: &Samples| {
        format!(
            "{} / {} / {}",
            dur(s.pct(0.5)),
            dur(s.pct(0.99)),
            dur(s.max())
        )
    };
    tab.goal(
        format!("publish → all {} have it, p50 / p99 / max", k.peps),
        trio(&pubs),
        "p99 ≤ 1 s",
        pubs.len() == k.rounds && pubs.pct(0.99) <= 1_000_000_000,
    );
    tab.goal(
        format!("revoke → all {} dropped it, p50 / p99 / max", k.peps),
        trio(&revs),
        "p99 ≤ 1 s",
        revs.len() == k.rounds && revs.pct(0.99) <= 1_000_000_000,
    );
    tab.info(
        "publish → one PEP has it (all PEPs, all rounds), p50 / p99",
        format!("{} / {}", dur(pp.pct(0.5)), dur(pp.pct(0.99))),
    );
    tab.goal(
        format!("single PEP publish → receive, p50 of {}", solo.len()),
        dur(solo.pct(0.5)),
        "≤ 50 ms",
        solo.len() == k.solo_rounds && solo.pct(0.5) <= 50_000_000,
    );
    if missed > 0 {
        tab.info(
            format!("PEPs that missed a change within {limit:?}"),
            missed.to_string(),
        );
    }
    tab.print();
    Ok(())
}
