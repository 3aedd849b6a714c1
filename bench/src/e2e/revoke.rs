//! `bench revoke`: how long an identity revocation takes to end an open handle, end to end.
//!
//! Each trial uses a user of its own (a disabled user cannot be re-enabled): the user is added,
//! logged in on the mount's device (the mount re-reads its token file at every license
//! request), given a read rule through authz, and a worker process (a registered copy of this
//! binary) opens an asset through `csap mount --server … --ards …` and reads it. The timer
//! starts just before `csap user disable`'s admin call and stops when the worker's read, repeated
//! every millisecond on the same handle, fails with `EACCES`: the figure covers the admin
//! round trip and commit, the long poll's wake-up, the mount's sweep and the lease check.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use csap_testkit::Conversation;

use super::stack::{app_copy, Stack};
use super::{blake3_importer, E2eKnobs, NODE};
use crate::report::{dur, load1, p50_p99, LoadTable, Samples};

/// The asset every trial's worker holds open.
const ASSET: &str = "bench/revoke/held.raw";
/// The p99 goal (issue 11): well inside the one-second promise, on loopback.
const GOAL_P99: Duration = Duration::from_millis(250);

pub fn run(k: &E2eKnobs, trials: usize) -> Result<()> {
    ensure!(trials > 0, "BENCH_REVOKE_TRIALS must be positive");
    let t = Instant::now();
    let mut stack = Stack::start(k, 1024 * 1024)?;
    let apps_dir = stack.sys.dir.path().join("apps");
    std::fs::create_dir_all(&apps_dir)?;
    let imp = stack.importer(&blake3_importer())?;
    stack.allow_import(&imp.digest)?;
    let holder = app_copy(&apps_dir, "bench-revoke")?;
    stack.sys.register(&holder.digest, "bench-revoke")?;
    imp.import(
        &stack.sys.rt,
        &stack.backing,
        ASSET,
        &[&vec![7u8; 64 * 1024]],
    )?;
    stack.mount_csap()?;
    let device = stack.sys.license_client(NODE)?;
    println!(
        "> csap server and csap mount --server --ards as processes of {}; {trials} trials of \
         (user disable → the held handle's next read fails), a new user each; set up in {:.1} s\n",
        stack.sys.setup.csap.display(),
        t.elapsed().as_secs_f64()
    );

    let mut took = Vec::with_capacity(trials);
    let file = stack.mnt().join(ASSET);
    for trial in 0..trials {
        let user = format!("revokee-{trial:03}");
        let password = "a long bench passphrase";
        stack
            .sys
            .rt
            .block_on(stack.sys.admin.add_user(&user, password))
            .with_context(|| format!("adding {user}"))?;
        let uid = nix::unistd::getuid().as_raw();
        let (token, _) = stack.sys.rt.block_on(device.login(&user, password, uid))?;
        token.save(&stack.sys.token_file)?;
        let req = stack.allow_read(
            &format!("revoke-{trial:03}"),
            &user,
            &holder.digest,
            "bench/revoke/**",
            keyserver::now()? - 60,
        )?;
        stack.wait_rules(&req, true)?;

        let mut hold = Command::new(&holder.path);
        hold.args([crate::worker::ARG, "hold"]).arg(&file);
        let (mut worker, first) = Conversation::start(&mut hold, "the holding worker")?;
        ensure!(
            first == "opened",
            "trial {trial}: the worker could not open {} ({first:?})",
            file.display()
        );
        worker.say("go")?;
        let since = Instant::now();
        stack.sys.rt.block_on(stack.sys.admin.disable_user(&user))?;
        let answer = worker.line()?;
        let elapsed = since.elapsed();
        let _ = worker.wait();
        ensure!(
            answer == "refused",
            "trial {trial}: the held handle still read 5 s after disabling {user} ({answer:?})"
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
