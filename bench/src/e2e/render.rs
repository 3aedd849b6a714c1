//! `bench render`: the render-node pattern — frames read by worker processes through the csap
//! mount, with and without pre-loading of their licenses, against one sequential `dd` of a
//! large file through the same mount (and through a bindfs passthrough).

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use csap_testkit::{clean, write_asset, Conversation, Importer};

use super::stack::{App, Stack};
use super::usage::{Perf, Snap};
use super::{noise, E2eKnobs, MIB, USER};
use crate::report::{load1, mb_s, LoadTable};

pub const FRAME_DIR: &str = "bench/frames";
pub const SEQ_FILE: &str = "bench/seq/big.raw";

pub fn import_render(stack: &Stack, imp: &Importer, k: &E2eKnobs) -> Result<()> {
    let frame_len = k.frame_mib * MIB;
    let base = noise(frame_len.max(8 * MIB), 11);
    // Licenses first (network), then encryption on two threads (CPU).
    let mut jobs = Vec::with_capacity(k.frames);
    for i in 0..k.frames {
        let p = format!("{FRAME_DIR}/f{i:05}.raw");
        let (h, key) = imp.create(&stack.sys.rt, &p)?;
        jobs.push((i, stack.backing.join(p), h, key));
    }
    let (h, key) = imp.create(&stack.sys.rt, SEQ_FILE)?;
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

/// `workers` processes of `app`, each reading every `workers`-th frame; the wall time from
/// "go" until the last one is done, and the bytes read.
fn render(app: &App, list: &Path, k: &E2eKnobs) -> Result<(u64, Duration)> {
    let mut ws = Vec::new();
    for w in 0..k.workers {
        let mut cmd = Command::new(&app.path);
        cmd.arg(crate::worker::ARG)
            .args(["read", "--index", &w.to_string(), "--stride"])
            .arg(k.workers.to_string())
            .arg("--buf-kib")
            .arg(k.read_kib.to_string())
            .arg(list);
        let (worker, first) = Conversation::start(&mut cmd, format!("render worker {w}"))?;
        ensure!(first == "ready", "{} did not start", worker.what());
        ws.push(worker);
    }
    let t = Instant::now();
    for w in &mut ws {
        w.say("go")?;
    }
    let mut bytes = 0u64;
    for w in &mut ws {
        let line = w.line()?;
        let n = line
            .strip_prefix("done ")
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("{} failed (see its error above)", w.what()))?;
        bytes += n;
    }
    let e = t.elapsed();
    for w in &mut ws {
        w.wait()?;
    }
    Ok((bytes, e))
}

pub fn render_bench(stack: &Stack, apps: &RenderApps, k: &E2eKnobs) -> Result<()> {
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
    let list = stack.sys.dir.path().join("frames.list");
    std::fs::write(&list, frames.join("\n"))?;

    // Without pre-loading: the rule is active; each first open asks the key server.
    let mark = stack.sys.audit_mark()?;
    let perf = Perf::start(
        k.perf_dir.as_deref(),
        &[stack.mount_pid(), stack.sys.server_pid()],
        "render-cold",
    )?;
    let snap = Snap::now(stack.mount_pid());
    let (bytes, cold_e) = render(&apps.cold, &list, k)?;
    let cold_usage = snap.since(stack.mount_pid(), bytes);
    perf.stop();
    let cold_load = load1();
    let cold = mb_s(bytes, cold_e);
    let (cold_grants, cold_trips) = license_requests(stack, mark, &apps.cold.digest)?;
    ensure!(
        bytes == (k.frames * k.frame_mib * MIB) as u64,
        "the workers read {bytes} bytes"
    );

    // With pre-loading: the rule arrives ahead of its window; when the window opens the mount
    // licenses the frames in batches before any worker opens one.
    let mark = stack.sys.audit_mark()?;
    let opens_at = keyserver::now().expect("system clock usable") + 5;
    let s = stack.allow_read(
        "render-preload",
        USER,
        &apps.preload.digest,
        &format!("{FRAME_DIR}/**"),
        opens_at,
    )?;
    stack.wait_rules(&s, true)?;
    let deadline = Instant::now() + Duration::from_secs(60 + k.frames as u64 / 20);
    let preloaded_at = loop {
        let (n, _) = license_requests(stack, mark, &apps.preload.digest)?;
        if n >= k.frames {
            break std::time::SystemTime::now();
        }
        ensure!(
            Instant::now() < deadline,
            "the mount pre-loaded {n} of {} licenses (see {})",
            k.frames,
            stack.mount_log().display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let preload_secs = preloaded_at
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64()
        - opens_at as f64;
    // The grants are audited before the key server answers; let the batch land in the cache.
    std::thread::sleep(Duration::from_millis(500));
    let mark = stack.sys.audit_mark()?;
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
    let (_, pre_trips) = license_requests(stack, mark, &apps.preload.digest)?;

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
        "key server round trips during it (license requests / frames they licensed)",
        format!("{cold_trips} / {cold_grants}"),
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
        "key server round trips during it (license requests)",
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

/// The two reading applications (their own digests, so their licenses are their own).
pub struct RenderApps {
    pub cold: App,
    pub preload: App,
}

/// Since `mark`, the frames the key server licensed to `digest` (distinct assets) and in how
/// many license requests (distinct license ids): a cold open licenses its directory's other
/// frames in the same round trip, so grants are not round trips.
fn license_requests(stack: &Stack, mark: i64, digest: &str) -> Result<(usize, usize)> {
    let grants = stack.grants_since(mark, digest)?;
    let frames: HashSet<_> = grants.iter().filter_map(|r| r.asset.clone()).collect();
    let requests: HashSet<_> = grants.iter().filter_map(|r| r.license_id.clone()).collect();
    Ok((frames.len(), requests.len()))
}
