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
//! The processes, the provisioning and the imports are the shared end-to-end fixture's
//! (`csap-testkit`), the one the CLI's end-to-end tests run on.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Result};

use crate::env_num;
use open::{import_lat, open_latency, LAT_DIR};
use render::{import_render, render_bench, RenderApps, FRAME_DIR};
use stack::{app_copy, App, Stack};

mod open;
mod render;
pub mod revoke;
mod stack;
mod usage;

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
    let apps_dir = stack.sys.dir.path().join("apps");
    std::fs::create_dir_all(&apps_dir)?;

    // Applications and their requests: the importer may create; each reader may read its part.
    let imp = stack.importer(&blake3_importer())?;
    stack.allow_import(&imp.digest)?;
    let mut readers = Vec::new();
    let opener = if open {
        let a = app_copy(&apps_dir, "bench-open")?;
        stack.sys.register(&a.digest, "bench-open")?;
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
            digest: csap_testkit::digest_of("/bin/dd")?,
        };
        for (a, n) in [
            (&cold, "bench-render"),
            (&preload, "bench-render-preloaded"),
            (&dd, "dd"),
        ] {
            stack.sys.register(&a.digest, n)?;
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
        reader_reqs.push(stack.allow_read(name, USER, digest, assets, now - 60)?);
    }

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
        stack.sys.setup.csap.display(),
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

/// The digest the import tool is registered with: the importer is this process, licensing on
/// behalf of a registered import tool.
fn blake3_importer() -> String {
    crate::blake3_hex(b"csap-bench-importer")
}

/// Eight hours from `start`: longer than any run.
fn window(start: i64) -> (i64, i64) {
    (start, start + 8 * 3600)
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
