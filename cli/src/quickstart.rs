//! `csap quickstart`: the whole system in one command — the embedded server, this machine
//! enrolled as a device, a user, a registered viewer, a key scope, encrypted sample frames, an
//! authorization request, a mount, one allowed read and one denied read — then clean up.
//!
//! Everything goes through the real paths (TLS, ARDS, licenses, the FUSE mount as a separate
//! `csap mount` process with `--server`), so a green quickstart means the parts fit.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use csapfs::keys::NewAssetParams;
use keyserver_client::wire::RegisterAppRequest;
use keyserver_client::{AdminClient, LicenseClient};

use crate::server::{self, EmbeddedServer, ServerOptions};

const USER: &str = "alice";
const SCOPE: &str = "quickstart";
const FRAMES: usize = 3;

#[derive(Args)]
pub struct QuickstartArgs {
    /// Working directory for server state, backing store and mountpoint (must not hold an
    /// earlier quickstart); kept afterwards so you can continue by hand. Default: a new
    /// directory under the system temp directory, removed at the end (it holds the admin key,
    /// the root key and alice's password).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

pub fn run(args: QuickstartArgs) -> Result<()> {
    let keep = args.dir.is_some();
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("csap-quickstart-{}", std::process::id()))
    });
    if dir.join("server").exists() {
        bail!(
            "{} already holds a quickstart; pass a new --dir, or continue with `csap server --data-dir {}`",
            dir.display(),
            dir.join("server").display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let csap = std::env::current_exe().context("cannot locate the csap executable")?;
    let viewer = csap.with_file_name("csap-view");
    if !viewer.exists() {
        bail!(
            "the demo viewer {} is missing; build it with `cargo build -p csap-view`",
            viewer.display()
        );
    }

    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    step(1, "Starting authz, ARDS and the key server in this process");
    let server = rt.block_on(server::start(ServerOptions {
        data_dir: dir.join("server"),
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        root_key_hex: None,
        device_rate: None,
        metrics_listen: None,
        store: authz::pg::Engine::Sqlite,
    }))?;
    print!("{}", indent(&server.describe()));
    let result = demo(&rt, &server, &dir, &csap, &viewer, keep);
    rt.block_on(server.shutdown());
    if keep {
        match &result {
            Ok(()) => println!(
                "\nquickstart finished: the server is stopped and the mount is gone; files stay in {}",
                dir.display()
            ),
            Err(_) => eprintln!(
                "\nquickstart failed; logs and state are in {}",
                dir.display()
            ),
        }
        return result;
    }
    let removed = remove_work_dir(&dir);
    match (&result, &removed) {
        (Ok(()), Ok(())) => println!(
            "\nquickstart finished: the server is stopped, the mount is gone and {} is removed \
             (keys, password, samples); run with --dir DIR to keep it and continue by hand",
            dir.display()
        ),
        (Err(_), Ok(())) => eprintln!(
            "\nquickstart failed; {} is removed: run with --dir DIR to keep its logs and state",
            dir.display()
        ),
        (_, Err(err)) => eprintln!("\ncsap: {}", crate::errors::sentence(err)),
    }
    result.and(removed)
}

/// Removes the default working directory (it holds the admin and root keys and a password),
/// but never through a mount that is still there: that would delete assets through it.
fn remove_work_dir(dir: &Path) -> Result<()> {
    let mnt = dir.join("mnt");
    if mnt.exists() && crate::mount::is_csap_mount(&mnt.canonicalize()?)? {
        bail!(
            "{} is still mounted, so {} is kept: unmount it (`csap umount {}`) and remove the directory",
            mnt.display(),
            dir.display(),
            mnt.display()
        );
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

fn demo(
    rt: &tokio::runtime::Runtime,
    server: &EmbeddedServer,
    dir: &Path,
    csap: &Path,
    viewer: &Path,
    keep: bool,
) -> Result<()> {
    let ks = &server.keyserver_url;
    let admin = AdminClient::connect(ks, &server.admin_dir)?;
    let device = device_name();
    let device_dir = dir.join("device");

    step(2, &format!("Enrolling this machine as device {device:?}"));
    rt.block_on(admin.enroll_device(&device, &device_dir))
        .context("device enrollment failed")?;
    println!(
        "    device identity (mTLS certificate, keys): {}",
        device_dir.display()
    );

    step(3, &format!("Adding user {USER:?}, registering the viewer and the importer, creating scope {SCOPE:?}"));
    let password = random_password()?;
    rt.block_on(admin.add_user(USER, &password))?;
    let password_file = dir.join("alice.password");
    keyserver::fsutil::write_private(&password_file, password.as_bytes())
        .with_context(|| format!("cannot write {}", password_file.display()))?;
    let viewer_digest = crate::keyserver::digest_file(viewer)?;
    let csap_digest = crate::keyserver::digest_file(csap)?;
    for (digest, name) in [(&viewer_digest, "csap-view"), (&csap_digest, "csap-import")] {
        rt.block_on(admin.register_app(&RegisterAppRequest {
            digest: digest.clone(),
            name: name.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            vendor: Some("csap".into()),
            code: Default::default(),
        }))?;
        println!("    {name:<12} {digest}");
    }
    rt.block_on(admin.create_scope(SCOPE))?;
    let client = rt.block_on(LicenseClient::connect(ks, &device_dir))?;
    // For this process's uid: the mount below runs as it and so does the viewer it serves.
    let uid = nix::unistd::getuid().as_raw();
    let (token, expires_at) = rt.block_on(client.login(USER, &password, uid))?;
    let token_file = dir.join("alice.token");
    token.save(&token_file)?;
    println!(
        "    {USER} logged in; token in {} (until {})",
        token_file.display(),
        csap_policy::request::format_time(expires_at)
    );

    step(
        4,
        "Submitting authorization requests to authz (viewer may read, importer may create)",
    );
    let now = csap_base::unix_now()?;
    let requests_dir = dir.join("requests");
    std::fs::create_dir_all(&requests_dir)?;
    let mut keyserver_rules = Vec::new();
    for (name, digest, app, action) in [
        ("viewer", &viewer_digest, "csap-view", "read"),
        ("importer", &csap_digest, "csap-import", "create"),
    ] {
        let body = request_json(name, digest, app, &device, action, now);
        let file = requests_dir.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_string_pretty(&body)?)?;
        let issued = rt
            .block_on(
                server
                    .authz
                    .submit(body.to_json().as_bytes(), &authz::Submitter::admin("admin")),
            )
            .with_context(|| format!("authz refused the {name} request"))?;
        let live = rt.block_on(
            server
                .authz
                .live_rules(Some(authz::template::KEYSERVER_PEP)),
        )?;
        keyserver_rules.extend(
            issued
                .rule_ids
                .iter()
                .filter(|id| live.iter().any(|r| &r.rule.id == *id))
                .cloned(),
        );
        println!(
            "    {name}: request {} -> rules {}",
            issued.id,
            issued.rule_ids.join(", ")
        );
    }
    if !rt.block_on(server.wait_for_rules(&keyserver_rules, Duration::from_secs(20))) {
        bail!("the key server did not receive its rules from ARDS within 20 s");
    }
    println!("    ARDS delivered the rules to the key server");

    step(
        5,
        &format!(
            "Importing {FRAMES} sample frames, each encrypted under its own licensed create key"
        ),
    );
    let backing = dir.join("backing");
    std::fs::create_dir_all(backing.join("samples"))?;
    let storage = csapfs::storage::LocalDir::open(&backing)?;
    let mut frames = Vec::new();
    for i in 1..=FRAMES {
        let path = format!("samples/frame_{i:04}.raw");
        let data = sample_frame(i);
        let (header, key) = rt.block_on(crate::import::licensed_create(
            &client,
            &token,
            &csap_digest,
            &path,
            SCOPE,
            NewAssetParams::default(),
        ))?;
        crate::import::write_asset(&storage, Path::new(&path), &header, &key, &data[..])?;
        println!(
            "    {path}: {} bytes, asset id {}",
            data.len(),
            header.asset_id
        );
        frames.push((path, data));
    }

    step(
        6,
        "Mounting the backing store with keys licensed from the key server",
    );
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let log = dir.join("mount.log");
    let mount = MountChild::start(csap, &backing, &mnt, server, &device_dir, &token_file, &log)?;
    println!(
        "    csap mount (pid {}) on {}; log {}",
        mount.child.id(),
        mnt.display(),
        log.display()
    );

    let (first_path, first_data) = &frames[0];
    let plain = mnt.join(first_path);
    step(7, "Reading a frame with the registered viewer (allowed)");
    let out = clean_env(Command::new(viewer).arg(&plain)).output()?;
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    eprint!("{}", indent(&String::from_utf8_lossy(&out.stderr)));
    if !out.status.success() {
        bail!(
            "the approved viewer was refused ({}); see {}",
            out.status,
            log.display()
        );
    }
    let expected = format!("{} bytes", first_data.len());
    if !String::from_utf8_lossy(&out.stdout).contains(&expected) {
        bail!("the viewer saw the wrong plaintext size (expected {expected})");
    }

    step(
        8,
        "Reading the same frame with `cat` (not a registered application: denied)",
    );
    let out = clean_env(Command::new("cat").arg(&plain))
        .stdout(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{}", indent(stderr.trim_end()));
    if out.status.success() || !stderr.contains("Permission denied") {
        bail!(
            "`cat` was not refused with EACCES ({}) — the mount is not enforcing",
            out.status
        );
    }

    step(
        9,
        &format!("The audit trail of {first_path} (`csap audit query --path {first_path}`)"),
    );
    // The mount ships its own decisions (cat's denial) every 250 ms: wait for that row.
    let query = keyserver_client::wire::AuditQuery {
        path: Some(first_path.clone()),
        limit: Some(8),
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let rows = loop {
        let rows = rt.block_on(admin.audit_query(&query))?;
        if rows.iter().any(|r| r.source == "mount") || std::time::Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    for r in rows {
        println!(
            "    {:<9} {:<5} {:<6} user={} app={} {}",
            r.source,
            r.decision,
            r.action,
            r.user.as_deref().unwrap_or("-"),
            r.app_digest
                .as_deref()
                .map(|d| &d[..d.len().min(12)])
                .unwrap_or("-"),
            r.reason.as_deref().unwrap_or(""),
        );
    }

    step(10, "Unmounting and stopping");
    mount.stop()?;
    // Only a kept directory can be continued in.
    if keep {
        print_next_steps(dir, &device_dir, &token_file, &password_file);
    }
    Ok(())
}

/// `csap mount … --server` as a child process; stopped (and unmounted) on drop.
struct MountChild {
    child: Child,
    mnt: PathBuf,
}

impl MountChild {
    fn start(
        csap: &Path,
        backing: &Path,
        mnt: &Path,
        server: &EmbeddedServer,
        identity: &Path,
        token: &Path,
        log: &Path,
    ) -> Result<MountChild> {
        let log_file = std::fs::File::create(log)?;
        let child = Command::new(csap)
            .arg("mount")
            .arg(backing)
            .arg(mnt)
            .args(["--server", &server.keyserver_url, "--scope", SCOPE])
            // The mount's own rules: local denials, and revocations reach open files.
            .args(["--ards", &server.ards_url])
            .arg("--ards-ca")
            .arg(&server.ards_cert)
            .arg("--issuer-pub")
            .arg(&server.issuer_pub)
            .arg("--identity")
            .arg(identity)
            .arg("--token-file")
            .arg(token)
            .env(
                "CSAP_LOG",
                std::env::var("CSAP_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("cannot start `csap mount`")?;
        let mut mount = MountChild {
            child,
            mnt: mnt.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if crate::mount::is_csap_mount(mnt)? {
                return Ok(mount);
            }
            if let Some(status) = mount.child.try_wait()? {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!(
                    "`csap mount` exited with {status} before mounting:\n{}",
                    indent(&text)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "`csap mount` did not mount within 20 s (log {})",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM: the mount unmounts, flushes and exits.
    fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
                bail!("`csap mount` did not stop within 10 s; killed and detached");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for MountChild {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("csap: {}", crate::errors::sentence(&e));
        }
    }
}

/// Children of the demo start without loader injection variables (the mount refuses those, and
/// `cargo test`/`cargo run` set LD_LIBRARY_PATH).
fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("LD_PRELOAD")
        .env_remove("LD_AUDIT")
        .env_remove("LD_LIBRARY_PATH")
}

fn request_json(
    name: &str,
    digest: &str,
    app: &str,
    device: &str,
    action: &str,
    now: i64,
) -> authz::request::WireRequest {
    authz::request::WireRequest::builder(&format!("quickstart-{name}"))
        .workflow_id(&format!("quickstart-{name}"))
        .task_name(&format!("quickstart {name}"))
        .person(USER)
        .application(digest, app, env!("CARGO_PKG_VERSION"), Some("csap"))
        .device(device)
        .asset_path("samples/**")
        .action(action)
        .window(now - 60, now + 8 * 3600)
        .build()
}

/// A recognisable frame: a text line, then a byte pattern spanning several chunks.
fn sample_frame(i: usize) -> Vec<u8> {
    let mut data = format!("CSAP quickstart frame {i}\n").into_bytes();
    data.extend((0..150_000usize).map(|k| (k * 31 + i * 7) as u8));
    data
}

fn random_password() -> Result<String> {
    let mut bytes = [0u8; 12];
    keyserver::keys::random_bytes(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// This machine's host name as a device name (letters, digits and '-'), or "workstation".
fn device_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    let name = name.trim_matches('-').to_string();
    if name.is_empty() {
        "workstation".into()
    } else {
        name
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn print_next_steps(dir: &Path, device_dir: &Path, token_file: &Path, password_file: &Path) {
    let d = dir.display();
    println!(
        "\nContinue by hand (same state, fixed ports 7400-7402):
    csap server --data-dir {d}/server &
    export CSAP_SERVER=https://127.0.0.1:7402 CSAP_IDENTITY={d}/server/keyserver/admin
    csap audit query --path 'samples/**' --since 1h
    csap request submit {d}/requests/viewer.json --authz https://127.0.0.1:7400 --ca {d}/server/authz/tls-cert.pem
    csap login --user {USER} --token-file {token} --identity {dev} < {pw}
    csap mount {d}/backing {d}/mnt --server https://127.0.0.1:7402 --identity {dev} --scope {SCOPE} --token-file {token} \\
        --ards https://127.0.0.1:7401 --ards-ca {d}/server/ards/ards-cert.pem --issuer-pub {d}/server/authz/issuer.pub
    {view} {d}/mnt/samples/frame_0001.raw     # allowed
    cat {d}/mnt/samples/frame_0001.raw        # Permission denied",
        token = token_file.display(),
        dev = device_dir.display(),
        pw = password_file.display(),
        view = std::env::current_exe()
            .map(|p| p.with_file_name("csap-view").display().to_string())
            .unwrap_or_else(|_| "csap-view".into()),
    );
}
