//! The whole-system benchmark harness: `cargo run -p bench --release -- <evaluator|licenses|
//! distribution|open|render|e2e|revoke|all>`. Each subcommand runs real components on 127.0.0.1 (TLS,
//! SQLite files in a temp dir), stops by itself, and prints a Markdown table of figures against
//! their goals. `open` and `render` (see [`e2e`]) drive the release `csap` binary as processes.
//!
//! Environment: `BENCH_QUICK=1` shrinks every run to a smoke test (seconds, not minutes; the
//! figures are then not meaningful). Finer knobs are listed by `bench help`.

use anyhow::{bail, Context, Result};

mod cpu;
mod distribution;
mod e2e;
mod evaluator;
mod licenses;
mod report;
mod worker;

const USAGE: &str = "\
usage: bench <evaluator|licenses|distribution|open|render|e2e|revoke|all>

  evaluator     authz evaluator: 10,000 synthetic rules, per-call decide() latency
  licenses      key server on loopback TLS: licenses/s and latency at 1/16/64/256 clients,
                and the latency of a 1,000-key batch license
  licenses --replicas 1,2,3
                single-key licenses on SQLite, then on 1, 2, 3 key-server replicas sharing
                one PostgreSQL database (a test cluster, needs PostgreSQL installed), with
                CPU per license of the key servers, the process and PostgreSQL
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
            "evaluator" => evaluator::run(&knobs)?,
            "licenses" if knobs.split => {
                pin_current_thread(LOAD_CPU)?;
                runtime_on(Some(LOAD_CPU))?.block_on(licenses::run(&knobs))?
            }
            "licenses" => match replicas_arg(&args[2..])? {
                Some(replicas) => {
                    runtime()?.block_on(licenses::replicas::run(&knobs, &replicas))?
                }
                None => runtime()?.block_on(licenses::run(&knobs))?,
            },
            "open" => e2e::run(&e2e::E2eKnobs::from_env(knobs.quick)?, e2e::Part::Open)?,
            "render" => e2e::run(&e2e::E2eKnobs::from_env(knobs.quick)?, e2e::Part::Render)?,
            "e2e" => e2e::run(&e2e::E2eKnobs::from_env(knobs.quick)?, e2e::Part::Both)?,
            "revoke" => e2e::revoke::run(
                &e2e::E2eKnobs::from_env(knobs.quick)?,
                env_num("BENCH_REVOKE_TRIALS", if knobs.quick { 10 } else { 100 })?,
            )?,
            _ => runtime()?.block_on(distribution::run(&knobs))?,
        }
    }
    Ok(())
}

/// `--replicas 1,2,3` after `licenses`: the replica counts to run on PostgreSQL.
fn replicas_arg(rest: &[String]) -> Result<Option<Vec<usize>>> {
    match rest {
        [] => Ok(None),
        [flag, list] if flag == "--replicas" => list
            .split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .ok()
            .filter(|v| !v.is_empty() && v.iter().all(|&n| (1..=16).contains(&n)))
            .map(Some)
            .with_context(|| format!("--replicas {list:?}: give e.g. 1,2,3 (each 1 to 16)")),
        _ => bail!("licenses takes only --replicas LIST (e.g. --replicas 1,2,3); got {rest:?}"),
    }
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

/// Lowercase hex BLAKE3 of `b` (synthetic application digests).
fn blake3_hex(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}
