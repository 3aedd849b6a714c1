//! `bench revoke`: how long an identity revocation takes to end an open handle, end to end.
//!
//! Each trial uses a user of its own (a disabled user cannot be re-enabled): the user is added,
//! logged in on the mount's device (the mount re-reads its token file at every license
//! request), given a read rule through authz, and a worker process (a registered copy of this
//! binary) opens an asset through `csap mount --server … --ards …` and reads it. The timer
//! starts just before `csap user disable`'s admin call and stops when the worker's read, repeated
//! every millisecond on the same handle, fails with `EACCES`: the figure covers the admin
//! round trip and commit, the long poll's wake-up, the mount's sweep and the lease check.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use keyserver::LicenseClient;

use super::{
    app_copy, clean, load1, p50_p99, request_json, request_json_for, write_asset, E2eKnobs,
    Importer, LoadTable, Stack, IMPORT_DEVICE, NODE,
};
use crate::{dur, Samples};

/// The asset every trial's worker holds open.
const ASSET: &str = "bench/revoke/held.raw";
/// The p99 goal (issue 11): well inside the one-second promise, on loopback.
const GOAL_P99: Duration = Duration::from_millis(250);

pub fn run(k: &E2eKnobs, trials: usize) -> Result<()> {
    ensure!(trials > 0, "BENCH_REVOKE_TRIALS must be positive");
    let t = Instant::now();
    let mut stack = Stack::start(k, 1024 * 1024)?;
    let apps_dir = stack.dir.path().join("apps");
    std::fs::create_dir_all(&apps_dir)?;
    let imp = Importer::new(&stack)?;
    let import_app = super::App {
        path: Default::default(),
        digest: imp.digest.clone(),
    };
    stack.register(&import_app, "bench-importer")?;
    let holder = app_copy(&apps_dir, "bench-revoke")?;
    stack.register(&holder, "bench-revoke")?;
    let import_req = stack.submit(
        "import",
        &request_json(
            "import",
            &[&imp.digest],
            IMPORT_DEVICE,
            "bench/**",
            "create",
            keyserver::now()? - 60,
        )?,
    )?;
    stack.wait_rules(&import_req, false)?;
    std::fs::create_dir_all(stack.backing.join("bench/revoke"))?;
    let (header, key) = imp.create(&stack.rt, ASSET)?;
    write_asset(
        &stack.backing.join(ASSET),
        header,
        &key,
        &[&vec![7u8; 64 * 1024]],
    )?;
    stack.mount_csap()?;
    let device = stack
        .rt
        .block_on(LicenseClient::connect(&stack.info.ks_url, &stack.node_dir))?;
    println!(
        "> csap server and csap mount --server --ards as processes of {}; {trials} trials of \
         (user disable → the held handle's next read fails), a new user each; set up in {:.1} s\n",
        stack.csap.display(),
        t.elapsed().as_secs_f64()
    );

    let mut took = Vec::with_capacity(trials);
    let file = stack.mnt().join(ASSET);
    for trial in 0..trials {
        let user = format!("revokee-{trial:03}");
        let password = "a long bench passphrase";
        stack
            .rt
            .block_on(stack.admin.add_user(&user, password))
            .with_context(|| format!("adding {user}"))?;
        let uid = nix::unistd::getuid().as_raw();
        let (token, _) = stack.rt.block_on(device.login(&user, password, uid))?;
        token.save(&stack.token_file)?;
        let req = stack.submit(
            &format!("revoke-{trial:03}"),
            &request_json_for(
                &user,
                &format!("revoke-{trial:03}"),
                &[&holder.digest],
                NODE,
                "bench/revoke/**",
                "read",
                keyserver::now()? - 60,
            )?,
        )?;
        stack.wait_rules(&req, true)?;

        let mut child = clean(Command::new(&holder.path).args([crate::worker::ARG, "hold"]))
            .arg(&file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the holding worker")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        ensure!(
            line.trim() == "opened",
            "trial {trial}: the worker could not open {} ({line:?})",
            file.display()
        );
        writeln!(stdin, "go")?;
        stdin.flush()?;
        let since = Instant::now();
        stack.rt.block_on(stack.admin.disable_user(&user))?;
        line.clear();
        stdout.read_line(&mut line)?;
        let elapsed = since.elapsed();
        let _ = child.wait();
        ensure!(
            line.trim() == "refused",
            "trial {trial}: the held handle still read 5 s after disabling {user} ({line:?})"
        );
        took.push(elapsed.as_nanos() as u64);
    }

    let s = Samples::new(took);
    let load = load1();
    let mut table = LoadTable::new(format!(
        "Identity revocation → open handle refused (csap mount, {trials} trials)"
    ));
    table.goal(
        "user disable → held handle's next read EACCES, p50 / p99",
        p50_p99(&s),
        "p99 ≤ 250 ms",
        s.pct(0.99) <= GOAL_P99.as_nanos() as u64,
        &load,
    );
    table.row("… max", dur(s.max()), &load);
    table.print();
    Ok(())
}
