//! `bench licenses`: the key server on loopback TLS — single-key licenses per second and
//! latency at several client counts, and the latency of one large batch license.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use authz::{Action, Evaluator};

pub(crate) mod replicas;

use crate::report::{dur, rate, Samples, Table};
use crate::{blake3_hex, runtime_on, Knobs, SERVER_CPU};

const KS_USER: &str = "bench-user";
const KS_DEVICE: &str = "bench-ws";
const KS_APP: &str = "bench-app";
const KS_SCOPE: &str = "bench-scope";

/// The one rule every license of the bench is decided on: the bench user, device and
/// application may read and create anything under `bench/`.
pub(crate) fn bench_rules() -> Result<Arc<keyserver::SwappableRules>> {
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
    Ok(Arc::new(keyserver::SwappableRules::new(Evaluator::new([
        rule,
    ])?)))
}

/// Enrolls the bench device, user, application and scope on `lb`, the device's files in
/// `device_dir`.
pub(crate) async fn provision_bench(
    lb: &keyserver::testing::Loopback,
    device_dir: &std::path::Path,
) -> Result<Arc<keyserver::testing::Provisioned>> {
    let dev =
        keyserver::testing::provision(lb, KS_DEVICE, device_dir, KS_USER, KS_APP, KS_SCOPE).await?;
    Ok(Arc::new(dev))
}

/// Creates `n` assets under `bench/` (16 creators in parallel); their ids.
pub(crate) async fn register_assets(
    dev: &Arc<keyserver::testing::Provisioned>,
    n: usize,
) -> Result<Vec<[u8; 16]>> {
    let mut tasks = Vec::new();
    for c in 0..16 {
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (c..n).step_by(16) {
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
    Ok(ids)
}

pub async fn run(k: &Knobs) -> Result<()> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let rules = bench_rules()?;
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
    let dev = provision_bench(&lb, &dir.path().join("dev")).await?;

    let n_assets = k.batch.max(256);
    let t = Instant::now();
    let ids = register_assets(&dev, n_assets).await?;
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
        let r = license_load(
            std::slice::from_ref(&lb.url),
            &dev,
            &ids,
            c,
            Duration::from_secs_f64(k.secs),
        )
        .await?;
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

pub(crate) struct LoadResult {
    pub(crate) per_s: f64,
    pub(crate) lat: Samples,
    pub(crate) errors: usize,
}

/// `c` tasks, each with its own client (one TLS connection, kept alive), asking for single-key
/// licenses back to back for `d`; client `i` talks to `urls[i % urls.len()]` (replicas share
/// the load evenly).
pub(crate) async fn license_load(
    urls: &[String],
    dev: &Arc<keyserver::testing::Provisioned>,
    ids: &Arc<Vec<[u8; 16]>>,
    c: usize,
    d: Duration,
) -> Result<LoadResult> {
    let mut clients = Vec::with_capacity(c);
    for i in 0..c {
        let url = &urls[i % urls.len()];
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
