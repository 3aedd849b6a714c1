//! Issue 16, the fault test: three `csap server` replicas on one PostgreSQL database, sharing
//! the first one's key-server directory and authz issuer key as docs/operations.md says; a
//! mount given all three key-server URLs opens never-licensed frames in a loop while license
//! clients with the same list ask for licenses; the replica they all use is killed with SIGKILL
//! mid-run. No open and no license fails (failover is a transparent retry), every license a
//! client received has exactly one audit row and no grant is on record twice; the killed
//! replica, restarted, serves again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csap_testkit::{eventually, CsapServer, ServerOptions, Submitted};
use keyserver::wire::Action;
use keyserver::LicenseClient;

use super::direct;
use super::fixture::{bash_as, Env, Req, DEVICE};

/// Frames opened through the mount, one directory each (no open licenses another frame as its
/// sibling), so every open is a license round trip.
const FRAMES: usize = 60;
/// The replica is killed once the mount has opened this many frames.
const KILL_AFTER: usize = FRAMES / 3;
/// License clients besides the mount.
const LOAD_THREADS: usize = 2;
/// Far above what this test asks: a 429 would be a refusal, not the failover under test.
const DEVICE_RATE: &str = "100000/100000";
/// An open slower than this is a failure (the failover itself is reported, not asserted).
const SLOWEST_OPEN: Duration = Duration::from_secs(10);

/// One more `csap server` on the database, started from a copy of the first one's shared keys.
struct Replica {
    opts: ServerOptions,
    server: Option<CsapServer>,
}

impl Replica {
    /// Copies what replicas must share from `first_data_dir` into `dir/server` (the key
    /// server's directory minus its lock, authz's `issuer.key`) and starts `csap server` there
    /// on free ports of its own.
    fn start(env: &Env, dir: &Path, first_data_dir: &Path, store: &str) -> Replica {
        let mut opts = ServerOptions::new(&env.setup.csap, dir);
        opts.listen = csap_testkit::free_port_triple();
        opts.store = Some(store.to_string());
        opts.device_rate = Some(DEVICE_RATE.into());
        share_keys(first_data_dir, &opts.data_dir);
        let server = CsapServer::start(&opts).unwrap();
        Replica {
            opts,
            server: Some(server),
        }
    }

    fn server(&self) -> &CsapServer {
        self.server.as_ref().expect("the replica is down")
    }

    fn url(&self) -> String {
        self.server().info.keyserver_url.clone()
    }

    /// SIGKILL: no shutdown, no flush, connections cut mid-request.
    fn kill(&mut self) {
        let server = self.server.take().expect("the replica is down");
        nix::sys::signal::kill(server.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
        // Reaps it (`stop` signals only a process still running).
        server.stop();
    }

    /// Starts it again on the same ports and data directory.
    fn restart(&mut self) {
        self.server = Some(CsapServer::start(&self.opts).unwrap());
    }

    /// Until this replica's key server holds `submitted`'s key-server rules.
    fn wait_rules(&self, submitted: &Submitted) {
        let cache = &self.server().info.rules_cache;
        for id in submitted.rules_for("keyserver") {
            eventually(
                &format!("rule {id} at {}", cache.display()),
                Duration::from_secs(30),
                || std::fs::read_to_string(cache).is_ok_and(|t| t.contains(&format!("\"{id}\""))),
            );
        }
    }
}

/// docs/operations.md: "copy its `keyserver/` directory minus `.lock` to each other replica's
/// data dir", and every authz replica holds the same `issuer.key` (else its ARDS would refuse
/// the rules the first one's authz signed).
fn share_keys(from: &Path, to: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    let private = |dir: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .unwrap()
    };
    private(to);
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(from.join("keyserver"))
        .arg(to.join("keyserver"))
        .status()
        .unwrap();
    assert!(copied.success(), "cp -a of the key server's directory");
    std::fs::remove_file(to.join("keyserver/.lock")).unwrap();
    private(&to.join("authz"));
    std::fs::copy(from.join("authz/issuer.key"), to.join("authz/issuer.key")).unwrap();
}

/// What one open through the mount did.
struct Open {
    frame: usize,
    at: Instant,
    took: Duration,
    failure: Option<String>,
}

/// What the license clients received: (license id, asset id, when) per grant, each failure,
/// the slowest answer.
#[derive(Default)]
struct Licensed {
    grants: Vec<(String, String, Instant)>,
    failures: Vec<String>,
    slowest: Duration,
}

#[test]
fn killing_the_replica_in_use_fails_no_open_and_loses_no_audit_row() {
    let Some(db) = csap_testkit::postgres::database() else {
        return; // no PostgreSQL here (never under CI=true)
    };
    let Some(env) = Env::start_on(Some(DEVICE_RATE.into()), Some(db.url.clone())) else {
        return; // no FUSE here (never under CI=true)
    };
    // The mount opens as bash; the load generator asks as cat, so their grants are told apart.
    let view = env.submit(&Req::now(
        "view",
        &[&env.apps.bash, &env.apps.cat],
        &["read"],
    ));
    env.submit(&Req::now("import", &[&env.apps.importer], &["create"]));
    let frame: Vec<u8> = (0..65_536u32).map(|k| (k * 7) as u8).collect();
    let importer = env.importer(DEVICE, &env.apps.importer).unwrap();
    let assets: Vec<[u8; 16]> = (0..FRAMES)
        .map(|i| {
            let path = format!("samples/d{i:02}/f.raw");
            let (header, key) = importer.create(&env.rt, &path).unwrap();
            let asset_id = header.asset_id.0;
            csap_testkit::write_asset(&env.backing.join(&path), header, &key, &[&frame]).unwrap();
            asset_id
        })
        .collect();

    let first_data_dir = env.dir.path().join("server");
    let mut replicas: Vec<Replica> = ["r2", "r3"]
        .iter()
        .map(|name| Replica::start(&env, &env.dir.path().join(name), &first_data_dir, &db.url))
        .collect();
    for r in &replicas {
        r.wait_rules(&view);
    }
    // Everyone starts on r2 (a client uses the first URL until it fails): that is the one to
    // kill. The first server (authz, ARDS, the admin) stays up throughout.
    let urls = format!(
        "{},{},{}",
        replicas[0].url(),
        replicas[1].url(),
        env.server().keyserver_url
    );
    let mut args = env.args();
    args.server = urls.clone();
    args.ards = None; // every open asks the key server
    let (mnt, mounted) = env.mount("mnt", &args, &direct());

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let licensed = Arc::new(Mutex::new(Licensed::default()));
    let load: Vec<_> = (0..LOAD_THREADS)
        .map(|t| {
            let (stop, licensed) = (Arc::clone(&stop), Arc::clone(&licensed));
            let (urls, device_dir) = (urls.clone(), env.device_dir(DEVICE));
            let (token, cat, assets) = (env.token.clone(), env.apps.cat.clone(), assets.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let client = rt
                    .block_on(LicenseClient::connect(&urls, &device_dir))
                    .unwrap();
                let mut k = t;
                while !stop.load(Ordering::Relaxed) {
                    let asset = assets[k % assets.len()];
                    k += LOAD_THREADS;
                    let started = Instant::now();
                    let answer = rt.block_on(client.request(&token, &cat, Action::Read, &[asset]));
                    let took = started.elapsed();
                    let mut l = licensed.lock().unwrap();
                    l.slowest = l.slowest.max(took);
                    match answer {
                        Ok(lic) if lic.grants.len() == 1 => l.grants.push((
                            lic.license.license_id.clone(),
                            hex::encode(asset),
                            Instant::now(),
                        )),
                        Ok(lic) => l.failures.push(format!("no grant: {:?}", lic.license)),
                        Err(e) => l.failures.push(e.to_string()),
                    }
                    drop(l);
                    // Leaves the two CPUs some room for the mount and the servers.
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    let reader = {
        let (mnt, frame, opened) = (mnt.clone(), frame.clone(), Arc::clone(&opened));
        std::thread::spawn(move || {
            (0..FRAMES)
                .map(|i| {
                    let file = mnt.join(format!("samples/d{i:02}/f.raw"));
                    let started = Instant::now();
                    let out = bash_as(None, &super::read_all(&file));
                    let took = started.elapsed();
                    opened.fetch_add(1, Ordering::SeqCst);
                    let failure = if !out.status.success() {
                        Some(String::from_utf8_lossy(&out.stderr).into_owned())
                    } else if out.stdout != frame {
                        Some("not the frame's plaintext".into())
                    } else {
                        None
                    };
                    Open {
                        frame: i,
                        at: started,
                        took,
                        failure,
                    }
                })
                .collect::<Vec<Open>>()
        })
    };

    eventually("the mount's first opens", Duration::from_secs(30), || {
        opened.load(Ordering::SeqCst) >= KILL_AFTER
    });
    let killed_at = Instant::now();
    replicas[0].kill();
    let opens = reader.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }

    // Zero failures: the mount's opens and the load generator's licenses.
    let failed: Vec<_> = opens.iter().filter(|o| o.failure.is_some()).collect();
    for o in &failed {
        eprintln!("open of frame {}: {:?}", o.frame, o.failure);
    }
    assert!(
        failed.is_empty(),
        "{} of {FRAMES} opens failed",
        failed.len()
    );
    let mut licensed = std::mem::take(&mut *licensed.lock().unwrap());
    assert!(
        licensed.failures.is_empty(),
        "license failures: {:?}",
        licensed.failures
    );
    let after_kill = licensed
        .grants
        .iter()
        .filter(|(_, _, at)| *at > killed_at)
        .count();
    assert!(after_kill > 0, "no license granted after the kill");
    // The mount was on r2 and moved on (the client says so when it does).
    let log = std::fs::read_to_string(mounted.log()).unwrap();
    assert!(
        log.contains("trying the next replica"),
        "the mount never failed over:\n{log}"
    );

    // How much the failover cost the opens (reported; only a generous bound is asserted).
    let slowest =
        |opens: &mut dyn Iterator<Item = &Open>| opens.map(|o| o.took).max().unwrap_or_default();
    let before = slowest(&mut opens.iter().filter(|o| o.at + o.took <= killed_at));
    let across = slowest(&mut opens.iter().filter(|o| o.at + o.took > killed_at));
    eprintln!(
        "slowest open before the kill {before:?}, from the kill on {across:?}; \
         slowest license of the load generator {:?}; {} licenses ({after_kill} after the kill)",
        licensed.slowest,
        licensed.grants.len()
    );
    assert!(across < SLOWEST_OPEN, "an open took {across:?}");

    // The killed replica, restarted, serves a license on its own.
    replicas[0].restart();
    let alone = env
        .rt
        .block_on(LicenseClient::connect(
            &replicas[0].url(),
            &env.device_dir(DEVICE),
        ))
        .unwrap();
    let lic = env
        .rt
        .block_on(alone.request(&env.token, &env.apps.cat, Action::Read, &[assets[0]]))
        .expect("the restarted replica serves");
    assert_eq!(lic.grants.len(), 1);
    licensed.grants.push((
        lic.license.license_id.clone(),
        hex::encode(assets[0]),
        Instant::now(),
    ));

    // The audit trail: every grant on record once, every license received on record.
    let rows = db
        .psql(
            "SELECT license_id || ' ' || asset || ' ' || app_digest FROM keyserver.audit \
             WHERE decision = 'grant' AND source = 'keyserver' AND license_id IS NOT NULL",
        )
        .unwrap();
    let mut on_record: HashMap<(String, String), usize> = HashMap::new();
    let mut mount_grants: HashMap<String, usize> = HashMap::new();
    let mut load_rows = 0;
    for row in rows.lines() {
        let mut f = row.split(' ');
        let (lic, asset, app) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        *on_record
            .entry((lic.to_string(), asset.to_string()))
            .or_default() += 1;
        if app == env.apps.bash {
            *mount_grants.entry(asset.to_string()).or_default() += 1;
        } else if app == env.apps.cat {
            load_rows += 1;
        }
    }
    let doubled: Vec<_> = on_record.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "grants on record twice: {doubled:?}");
    for (lic, asset, _) in &licensed.grants {
        assert_eq!(
            on_record.get(&(lic.clone(), asset.clone())),
            Some(&1),
            "license {lic} for {asset}"
        );
    }
    for asset in &assets {
        assert!(
            mount_grants.contains_key(&hex::encode(asset)),
            "the mount's license for {} is not on record",
            hex::encode(asset)
        );
    }
    // A license committed by the killed replica whose answer was lost is asked again (the
    // request is repeatable) and granted anew: two grant rows, each its own license, one of
    // them never received. Reported: how often the kill landed in that window.
    eprintln!(
        "grants on record that no client received: {} of the load generator's, {} of the mount's",
        load_rows - licensed.grants.len(),
        mount_grants.values().map(|n| n - 1).sum::<usize>()
    );
    mounted.unmount().unwrap();
}
