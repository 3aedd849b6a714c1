//! `bench open`: open+close latency from a registered application process through the csap
//! mount, warm (license held) against a bindfs passthrough of the same store, and cold (one
//! license round trip per asset) against the same license requests made without the mount;
//! and where a warm open's time goes, step by step.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use csap_testkit::{clean, write_asset, Importer, Proc};
use csapfs::{Asset, ContentKey};
use keyserver::UserToken;

use super::stack::{App, Stack};
use super::usage::{cpu_ns, per_op, Perf};
use super::{noise, E2eKnobs, NODE};
use crate::report::{dur, load1, p50_p99, LoadTable, Samples};

pub const LAT_DIR: &str = "bench/lat";

/// The cold assets, one directory each: a cold open licenses its directory's other assets in
/// the same round trip (sibling batch), which would turn the next cold opens into cache hits.
fn lat_paths(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{LAT_DIR}/c{i:05}/c.raw")).collect()
}

/// Writes the warm asset and the cold ones; returns the warm asset's key (for the breakdown).
pub fn import_lat(stack: &Stack, imp: &Importer, k: &E2eKnobs) -> Result<ContentKey> {
    let data = noise(4096, 7);
    let warm = format!("{LAT_DIR}/warm.raw");
    let (h, warm_key) = imp.create(&stack.sys.rt, &warm)?;
    write_asset(&stack.backing.join(&warm), h, &warm_key, &[&data])?;
    for p in &lat_paths(k.cold_opens) {
        imp.import(&stack.sys.rt, &stack.backing, p, &[&data])?;
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
    let mut target = Proc::spawn(
        clean(Command::new("sleep").arg("600")).stdin(Stdio::null()),
        "sleep",
    )?;
    let pid = target.id();
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
        UserToken::load(&stack.sys.token_file)?;
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

pub fn open_latency(
    stack: &Stack,
    opener: &App,
    warm_key: &ContentKey,
    k: &E2eKnobs,
) -> Result<()> {
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
        let f = stack.sys.dir.path().join(file);
        let text: Vec<String> = names
            .iter()
            .map(|n| root.join(n).display().to_string())
            .collect();
        std::fs::write(&f, text.join("\n"))?;
        Ok(f)
    };
    let csap_list = list(mnt, "cold-csap.list")?;
    let pass_list = list(pass, "cold-pass.list")?;
    let mark = stack.sys.audit_mark()?;
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
        &[stack.mount_pid(), stack.sys.server_pid()],
        "cold",
    )?;
    let cpu0 = (cpu_ns(stack.mount_pid()), cpu_ns(stack.sys.server_pid()));
    let cold = parse_samples(
        run_worker(&opener.path, &cold_args(&csap_list))?
            .first()
            .context("no cold samples")?,
    )?;
    let cold_cpu = (
        cpu_ns(stack.mount_pid()).saturating_sub(cpu0.0),
        cpu_ns(stack.sys.server_pid()).saturating_sub(cpu0.1),
    );
    perf.stop();
    let cold_load = load1();
    let (licensed, round_trips) = cold_round_trips(stack, mark, &opener.digest, &names)?;
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
        "cold assets licensed by the key server / license requests it answered",
        format!("{licensed} / {round_trips} for {} cold opens", cold.len()),
        &cold_load,
    );
    t.print();
    // The same license requests without the mount: this process, the mount's device and
    // user, the opener's digest, one TLS connection kept alive, `block_on` from a plain
    // thread as the mount does, paced alike.
    let client = stack.sys.license_client(NODE)?;
    let token = UserToken::load(&stack.sys.token_file)?;
    let mut ids = Vec::with_capacity(names.len());
    for n in &names {
        let f = std::fs::File::open(stack.backing.join(n))?;
        ids.push(csapfs::asset::read_header(&f)?.asset_id.0);
    }
    let mut direct = Vec::with_capacity(ids.len());
    let server_cpu0 = cpu_ns(stack.sys.server_pid());
    for id in &ids {
        std::thread::sleep(Duration::from_millis(k.cold_pace_ms));
        let t0 = Instant::now();
        let lic = stack.sys.rt.block_on(client.request(
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
    let server_cpu = cpu_ns(stack.sys.server_pid()).saturating_sub(server_cpu0);
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
        licensed == cold.len() && round_trips == cold.len(),
        "{licensed} of {} cold assets were licensed by the key server, in {round_trips} license \
         requests: the cold figure is not a figure of one round trip per open",
        cold.len()
    );
    Ok(())
}

/// The cold assets (paths in `names`) the key server licensed to `digest` since `mark`, and in
/// how many license requests (distinct license ids). The audit trail also holds the mount's
/// own records of opens served from held licenses (the warm opens, shipped in batches) and a
/// grant per asset of a batch license: neither is a cold open's round trip.
fn cold_round_trips(
    stack: &Stack,
    mark: i64,
    digest: &str,
    names: &[String],
) -> Result<(usize, usize)> {
    let cold: HashSet<&str> = names.iter().map(String::as_str).collect();
    let grants: Vec<_> = stack
        .grants_since(mark, digest)?
        .into_iter()
        .filter(|r| r.path.as_deref().is_some_and(|p| cold.contains(p)))
        .collect();
    let assets: HashSet<_> = grants.iter().filter_map(|r| r.path.clone()).collect();
    let requests: HashSet<_> = grants.iter().filter_map(|r| r.license_id.clone()).collect();
    Ok((assets.len(), requests.len()))
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
