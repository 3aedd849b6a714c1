//! The harness of the mount's end-to-end tests: the embedded server (authz, ARDS, key server
//! over TLS) on loopback ports it can be restarted on, an enrolled device, alice logged in, the
//! applications the tests run registered by digest, sample frames encrypted under create
//! licenses, real FUSE mounts built from the `csap mount` flags, and helpers that run approved
//! programs as separate processes (attestation measures them, not the test binary).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use csapfs::format::{AssetId, Header, KeyId, ScopeId, DEFAULT_CHUNK_SIZE};
use csapfs::fs::{MountOptions, MountedFs};
use csapfs::keys::NewAssetParams;
use csapfs::{Asset, ContentKey, Suite};
use keyserver::wire::RegisterAppRequest;
use keyserver::{AdminClient, LicenseClient, UserToken};

use crate::keysource::KeyServerArgs;
use crate::server::{self, EmbeddedServer, ServerOptions};

/// The enrolled device every mount of these tests runs as.
pub const DEVICE: &str = "ws-pep";
/// The key scope of the sample frames and of files created through the mounts.
pub const SCOPE: &str = "pep";
/// The user every request is for.
const USER: &str = "alice";
pub const PASSWORD: &str = "a long passphrase";

/// One end-to-end test at a time: each runs a server, mounts and timed checks (revocation
/// within 1 s), which must not compete for the two CPUs with another such test.
static SERIAL: Mutex<()> = Mutex::new(());

/// Real mounts need /dev/fuse; under CI=true its absence is a failure, not a skip.
fn fuse_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => true,
        Err(err) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true requires FUSE, but /dev/fuse is not usable: {err}")
        }
        Err(err) => {
            eprintln!("SKIPPED: /dev/fuse is not usable: {err}");
            false
        }
    }
}

/// BLAKE3 of an executable, as attestation measures it.
pub fn digest_of(path: &str) -> String {
    csapfs::license_source::attest::app_digest_at(std::path::Path::new(path)).unwrap()
}

/// Digests of the registered applications.
pub struct Apps {
    pub bash: String,
    pub rm: String,
    pub cat: String,
    pub perl: String,
    /// Registered but never run: the importer that encrypts the sample frames.
    pub importer: String,
}

/// An authorization request for alice on [`DEVICE`], assets `samples/**`.
pub struct Req<'a> {
    pub name: &'a str,
    pub apps: &'a [&'a str],
    pub actions: &'a [&'a str],
    /// Window start and end, unix seconds.
    pub window: (i64, i64),
}

impl Req<'_> {
    /// A request whose window opened a minute ago and lasts an hour.
    pub fn now<'a>(name: &'a str, apps: &'a [&'a str], actions: &'a [&'a str]) -> Req<'a> {
        let start = keyserver::now().expect("system clock usable") - 60;
        Req {
            name,
            apps,
            actions,
            window: (start, start + 3600),
        }
    }

    /// OMC-JSON, as workflow management submits it.
    pub fn json(&self) -> String {
        self.json_for(&[DEVICE])
    }

    /// OMC-JSON for the request on `devices`.
    pub fn json_for(&self, devices: &[&str]) -> String {
        let name = self.name;
        let mut req = authz::request::WireRequest::builder(name)
            .workflow_id(&format!("wf-{name}"))
            .person(USER)
            .asset_path("samples/**")
            .window(self.window.0, self.window.1);
        for digest in self.apps {
            req = req.application(digest, name, "1", None);
        }
        for device in devices {
            req = req.device(device);
        }
        for action in self.actions {
            req = req.action(action);
        }
        req.to_json()
    }
}

/// A server with alice, the device and the applications set up, and an empty backing store.
pub struct Env {
    pub rt: tokio::runtime::Runtime,
    server: Option<EmbeddedServer>,
    opts: ServerOptions,
    pub admin: AdminClient,
    pub client: LicenseClient,
    pub token: UserToken,
    pub token_file: PathBuf,
    pub device_dir: PathBuf,
    pub backing: PathBuf,
    pub apps: Apps,
    /// The plaintext of every sample frame (1 MiB).
    pub frame: Vec<u8>,
    pub dir: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Env {
    /// Everything set up, or `None` when FUSE is unusable here (a failure under CI=true).
    pub fn start() -> Option<Env> {
        Env::start_with(None)
    }

    /// [`Self::start`] with the key server's per-device rate limit set to `device_rate`.
    pub fn start_with(device_rate: Option<keyserver::ratelimit::RateLimit>) -> Option<Env> {
        if !fuse_usable() {
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let opts = ServerOptions {
            data_dir: dir.path().join("server"),
            listen: free_port_triple(),
            root_key_hex: None,
            device_rate,
        };
        let server = rt.block_on(server::start(opts.clone())).unwrap();
        let ks = server.keyserver_url.clone();
        let admin = AdminClient::connect(&ks, &server.admin_dir).unwrap();
        let device_dir = dir.path().join("device");
        rt.block_on(admin.enroll_device(DEVICE, &device_dir))
            .unwrap();
        rt.block_on(admin.add_user(USER, PASSWORD)).unwrap();
        let apps = Apps {
            bash: digest_of("/bin/bash"),
            rm: digest_of("/bin/rm"),
            cat: digest_of("/bin/cat"),
            perl: digest_of("/usr/bin/perl"),
            importer: "cd".repeat(32),
        };
        for (digest, name) in [
            (&apps.bash, "bash"),
            (&apps.rm, "rm"),
            (&apps.cat, "cat"),
            (&apps.perl, "perl"),
            (&apps.importer, "importer"),
        ] {
            rt.block_on(admin.register_app(&RegisterAppRequest {
                digest: digest.clone(),
                name: name.into(),
                version: "1".into(),
                vendor: None,
                code: Default::default(),
            }))
            .unwrap();
        }
        rt.block_on(admin.create_scope(SCOPE)).unwrap();
        let client = rt
            .block_on(LicenseClient::connect(&ks, &device_dir))
            .unwrap();
        let me = nix::unistd::getuid().as_raw();
        let (token, _) = rt.block_on(client.login(USER, PASSWORD, me)).unwrap();
        let token_file = dir.path().join("alice.token");
        token.save(&token_file).unwrap();
        let backing = dir.path().join("backing");
        std::fs::create_dir_all(backing.join("samples")).unwrap();
        Some(Env {
            rt,
            server: Some(server),
            opts,
            admin,
            client,
            token,
            token_file,
            device_dir,
            backing,
            apps,
            frame: (0..1_048_576u32).map(|k| (k * 31) as u8).collect(),
            dir,
            _serial: serial,
        })
    }

    pub fn server(&self) -> &EmbeddedServer {
        self.server.as_ref().expect("the server is stopped")
    }

    /// Submits `req` to authz and waits until the key server has its rules (the mount gets
    /// them through its own subscription; callers poll for that).
    pub fn submit(&self, req: &Req<'_>) -> authz::service::Issued {
        self.submit_for(req, &[DEVICE])
    }

    /// [`Self::submit`] for the request on `devices`.
    pub fn submit_for(&self, req: &Req<'_>, devices: &[&str]) -> authz::service::Issued {
        let server = self.server();
        let issued = self
            .rt
            .block_on(server.authz.submit(
                req.json_for(devices).as_bytes(),
                &authz::Submitter::admin("admin"),
            ))
            .unwrap();
        let ks_rules: Vec<String> = server
            .authz
            .live_rules(Some("keyserver"))
            .unwrap()
            .into_iter()
            .map(|r| r.rule.id)
            .filter(|id| issued.rule_ids.contains(id))
            .collect();
        assert!(!ks_rules.is_empty(), "no key server rule for {issued:?}");
        assert!(self
            .rt
            .block_on(server.wait_for_rules(&ks_rules, Duration::from_secs(20))));
        issued
    }

    /// Withdraws a request's rules.
    pub fn cancel(&self, issued: &authz::service::Issued) {
        self.rt
            .block_on(
                self.server()
                    .authz
                    .cancel(&issued.id, &authz::Submitter::admin("admin")),
            )
            .unwrap();
    }

    /// Encrypts a sample frame to `samples/<name>` (`name` may have directories: frames in
    /// different directories are not licensed together as siblings) under a create license (as `csap import`
    /// does, with the importer's registered digest); needs a `create` rule for the importer.
    pub fn add_frames(&self, names: &[&str]) {
        for name in names {
            let path = format!("samples/{name}");
            let license = self
                .rt
                .block_on(
                    self.client
                        .create(&self.token, &self.apps.importer, &path, SCOPE),
                )
                .unwrap();
            let grant = &license.grants[0];
            let header = Header::new(
                Suite::Gcm,
                DEFAULT_CHUNK_SIZE,
                AssetId(grant.asset_id),
                KeyId {
                    scope: ScopeId(grant.scope_id),
                    version: grant.grant.key_version,
                },
            )
            .unwrap();
            let key = ContentKey::from_bytes(*grant.key.as_bytes());
            let target = self.backing.join(&path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            let file = std::fs::File::create_new(target).unwrap();
            let mut asset = Asset::create(file, header, &key).unwrap();
            asset.write_at(0, &self.frame).unwrap();
            asset.sync().unwrap();
        }
    }

    /// A create rule for the importer and the sample frames `names`.
    pub fn with_frames(&self, names: &[&str]) -> authz::service::Issued {
        let import = self.submit(&Req::now("import", &[&self.apps.importer], &["create"]));
        self.add_frames(names);
        import
    }

    /// The `csap mount` key-server flags for alice's token file, with the mount's own ARDS
    /// subscription (local rules); clear `ards` for a mount that leaves every decision to the
    /// key server.
    pub fn args(&self) -> KeyServerArgs {
        let server = self.server();
        KeyServerArgs {
            server: Some(server.keyserver_url.clone()),
            identity: Some(self.device_dir.clone()),
            scope: Some(SCOPE.into()),
            token_file: vec![self.token_file.display().to_string()],
            ards: Some(server.ards_url.clone()),
            ards_ca: Some(server.ards_cert.clone()),
            issuer_pub: Some(server.issuer_pub.clone()),
            issuer: "authz".into(),
            socket: None,
            audit_spool: None,
        }
    }

    /// Mounts the backing store on `<tempdir>/<name>` with a key source built from `args`
    /// exactly as `csap mount` builds it.
    pub fn mount(
        &self,
        name: &str,
        args: &KeyServerArgs,
        options: &MountOptions,
    ) -> (PathBuf, MountedFs) {
        let (mnt, mounted, _sessions) = self.mount_with_sessions(name, args, options);
        (mnt, mounted)
    }

    /// [`Self::mount`], also returning the session socket (`args.socket`), which serves
    /// `csap login` for as long as it is kept.
    pub fn mount_with_sessions(
        &self,
        name: &str,
        args: &KeyServerArgs,
        options: &MountOptions,
    ) -> (PathBuf, MountedFs, Option<csapfs::session::SessionServer>) {
        let mnt = self.dir.path().join(name);
        if !mnt.exists() {
            std::fs::create_dir(&mnt).unwrap();
        }
        let keys = args
            .source(NewAssetParams::default(), &self.backing, &mnt)
            .unwrap()
            .unwrap();
        let mounted = csapfs::fs::mount(&self.backing, &mnt, keys.source, options).unwrap();
        (mnt, mounted, keys.sessions)
    }

    /// Id of the newest license decision in the key server's audit log.
    pub fn last_audit(&self) -> i64 {
        self.audit().iter().map(|r| r.id).max().unwrap_or(0)
    }

    /// The latest license decisions of the key server (admin events and the decisions mounts
    /// ship left out).
    pub fn audit(&self) -> Vec<keyserver::wire::AuditRecord> {
        self.rt
            .block_on(self.admin.audit_tail(1000))
            .unwrap()
            .into_iter()
            .filter(|r| r.decision != "admin" && r.source == "keyserver")
            .collect()
    }

    /// What `csap audit query --path GLOB` answers (newest 1,000).
    pub fn audit_at(&self, glob: &str) -> Vec<keyserver::wire::AuditRecord> {
        self.rt
            .block_on(self.admin.audit_query(&keyserver::wire::AuditQuery {
                path: Some(glob.into()),
                limit: Some(1000),
                ..Default::default()
            }))
            .unwrap()
    }

    /// Stops every service (listeners closed, background tasks ended).
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            self.rt.block_on(server.shutdown());
        }
    }

    /// Starts the services again on the same ports and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.server = Some(self.rt.block_on(server::start(self.opts.clone())).unwrap());
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback address whose port and the next two are free now, so the services can be
/// restarted on the same three ports (`csap server --listen` semantics).
fn free_port_triple() -> std::net::SocketAddr {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(std::process::id()) ^ u64::from(nanos);
    let mut candidate = 20_000 + (seed.wrapping_mul(7919) % 30_000) as u16;
    for _ in 0..200 {
        let bound: Vec<_> = (0..3)
            .map_while(|n| std::net::TcpListener::bind(("127.0.0.1", candidate + n)).ok())
            .collect();
        if bound.len() == 3 {
            return std::net::SocketAddr::from(([127, 0, 0, 1], candidate));
        }
        candidate = 20_000 + (candidate - 20_000 + 97) % 30_000;
    }
    panic!("no three consecutive free loopback ports");
}

/// Polls `done` every 50 ms until it holds, failing after `timeout`.
pub fn eventually(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` without cargo's LD_LIBRARY_PATH (attestation rightly refuses it).
pub fn run(mut cmd: Command) -> Output {
    cmd.env_remove("LD_LIBRARY_PATH").output().unwrap()
}

/// A one-shot bash command (attested as bash) as `uid` (and its gid), or as this process.
pub fn bash_as(uid: Option<u32>, script: &str) -> Output {
    let mut cmd = Command::new("/bin/bash");
    cmd.args(["-c", script]);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    run(cmd)
}

/// A one-shot bash command, returning (success, stderr).
pub fn bash(script: &str) -> (bool, String) {
    let out = bash_as(None, script);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `cmd` (without cargo's library path, which attestation rightly refuses) with piped
/// stdin and stdout, and reads the first line it prints.
pub fn converse(mut cmd: Command) -> (Child, ChildStdin, BufReader<ChildStdout>, String) {
    let mut child = cmd
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    (child, stdin, stdout, line)
}

/// A process that opened a file through the mount (so the open is attested as that program)
/// and answers each input line with "ok" or "err <why>" after one more I/O on that handle.
pub struct Reader {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Reader {
    /// A bash that opened `file` on fd 3 and reads 4 KiB more through it per line.
    pub fn open(file: &Path) -> Reader {
        let script = r#"exec 3< "$1" || exit 7
echo opened
while read -r _; do
  if out=$(dd bs=4096 count=1 of=/dev/null <&3 2>&1); then echo ok; else echo "err $out"; fi
done"#;
        Reader::spawn(Command::new("/bin/bash"), &["-c", script, "reader"], file)
    }

    /// A perl that opened `file` and, per input line, re-reads its first 4 KiB (seek to
    /// 0, sysread): after the first read those bytes sit in the page cache of a
    /// `--cache page` mount, so only an invalidation makes the read reach the mount again.
    pub fn rereading(file: &Path) -> Reader {
        let script = r#"open(my $f, "<", $ARGV[0]) or exit 7; $| = 1; print "opened\n";
while (<STDIN>) { sysseek($f, 0, 0); my $n = sysread($f, my $buf, 4096);
  if (defined $n) { print "ok\n" } else { print "err $!\n" } }"#;
        Reader::spawn(Command::new("/usr/bin/perl"), &["-e", script], file)
    }

    /// A perl that creates `file` (O_CREAT|O_EXCL|O_RDWR: the FUSE create, no truncate) and,
    /// per input line, writes 4 KiB at the start and reads them back through that handle.
    pub fn creating(file: &Path) -> Reader {
        let script = r#"use Fcntl; sysopen(my $f, $ARGV[0], O_RDWR|O_CREAT|O_EXCL) or exit 7;
$| = 1; print "opened\n";
while (<STDIN>) { sysseek($f, 0, 0); my $n = syswrite($f, "x" x 4096);
  if (!defined $n) { print "err $!\n"; next }
  sysseek($f, 0, 0); $n = sysread($f, my $buf, 4096);
  if (defined $n && $buf eq "x" x 4096) { print "ok\n" } else { print "err $!\n" } }"#;
        Reader::spawn(Command::new("/usr/bin/perl"), &["-e", script], file)
    }

    fn spawn(mut cmd: Command, args: &[&str], file: &Path) -> Reader {
        cmd.args(args).arg(file);
        let (child, stdin, stdout, line) = converse(cmd);
        assert_eq!(
            line.trim(),
            "opened",
            "the approved program could not open {}",
            file.display()
        );
        Reader {
            child,
            stdin,
            stdout,
        }
    }

    pub fn read(&mut self) -> String {
        writeln!(self.stdin, "r").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    /// Repeats [`Self::read`] until it stops answering "ok" (or `timeout`); returns the last
    /// answer and how long after `since` it came.
    pub fn until_refused(&mut self, since: Instant, timeout: Duration) -> (String, Duration) {
        loop {
            let answer = self.read();
            if answer != "ok" || since.elapsed() > timeout {
                return (answer, since.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
