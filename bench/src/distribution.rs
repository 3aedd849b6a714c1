//! `bench distribution`: ARDS on loopback TLS with many subscribed PEPs — publish and revoke
//! until every PEP has it, and one PEP's publish → receive latency.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use authz::template::RuleSpec;
use authz::{Action, IssuerKey, Rule};

use crate::report::{dur, Samples, Table};
use crate::{blake3_hex, Knobs};

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
        delegates_to: None,
        delegated_by: None,
        id: id.to_owned(),
        issuer: ISSUER.to_owned(),
        request_id: spec.request_id.clone(),
        targets,
        not_before: spec.not_before,
        not_after: spec.not_after,
        policy: spec.to_cedar(),
    }
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

pub async fn run(k: &Knobs) -> Result<()> {
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
