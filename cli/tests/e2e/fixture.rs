//! The suite's installation, on the shared fixture (`csap-testkit`): `csap server` as a process
//! on loopback ports it can be restarted on, an enrolled device, alice logged in, the
//! applications the tests run registered by digest, sample frames encrypted under create
//! licenses, `csap mount` processes built from its flags, and approved programs run as
//! separate processes (attestation measures them, not the test binary).

use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use csap_testkit::fuse::fuse_usable;
use csap_testkit::{
    digest_of, free_port_triple, run, Conversation, CsapMount, Importer, KeyServerFlags, Request,
    Setup, Submitted, System,
};
use csapfs::fs::MountOptions;
use keyserver::LicenseClient;

const CSAP: &str = env!("CARGO_BIN_EXE_csap");
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

/// Digests of the registered applications.
pub struct Apps {
    pub bash: String,
    pub rm: String,
    pub cat: String,
    pub perl: String,
    /// Registered but never run: the importer that encrypts the sample frames.
    pub importer: String,
}

/// An authorization request for alice, assets `samples/**`.
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

    /// The request on `devices`.
    fn on<'a>(&'a self, devices: &'a [&'a str]) -> Request<'a> {
        Request {
            name: self.name,
            user: USER,
            apps: self.apps,
            devices,
            assets: "samples/**",
            actions: self.actions,
            window: self.window,
        }
    }
}

/// A server with alice, the device and the applications set up, and an empty backing store.
/// The installation's own handles (runtime, admin client, token, directory, restart) are
/// [`System`]'s, reached through `Deref`.
pub struct Env {
    /// A license client of [`DEVICE`].
    pub client: LicenseClient,
    importer: Importer,
    pub backing: PathBuf,
    pub apps: Apps,
    /// The plaintext of every sample frame (1 MiB).
    pub frame: Vec<u8>,
    system: System,
    _serial: MutexGuard<'static, ()>,
}

impl Deref for Env {
    type Target = System;
    fn deref(&self) -> &System {
        &self.system
    }
}

impl DerefMut for Env {
    fn deref_mut(&mut self) -> &mut System {
        &mut self.system
    }
}

impl Env {
    /// Everything set up, or `None` when FUSE is unusable here (a failure under CI=true).
    pub fn start() -> Option<Env> {
        Env::start_with(None)
    }

    /// [`Self::start`] with the key server's per-device rate limit (`RATE/BURST`).
    pub fn start_with(device_rate: Option<String>) -> Option<Env> {
        Env::start_on(device_rate, None)
    }

    /// [`Self::start_with`] with `csap server --store URL` when `store` is given.
    pub fn start_on(device_rate: Option<String>, store: Option<String>) -> Option<Env> {
        if !fuse_usable() {
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let system = System::start(Setup {
            csap: CSAP.into(),
            user: USER.into(),
            password: PASSWORD.into(),
            scope: SCOPE.into(),
            devices: vec![DEVICE.into()],
            listen: free_port_triple(),
            device_rate,
            store,
        })
        .unwrap();
        let apps = Apps {
            bash: digest_of("/bin/bash").unwrap(),
            rm: digest_of("/bin/rm").unwrap(),
            cat: digest_of("/bin/cat").unwrap(),
            perl: digest_of("/usr/bin/perl").unwrap(),
            importer: "cd".repeat(32),
        };
        for (digest, name) in [
            (&apps.bash, "bash"),
            (&apps.rm, "rm"),
            (&apps.cat, "cat"),
            (&apps.perl, "perl"),
            (&apps.importer, "importer"),
        ] {
            system.register(digest, name).unwrap();
        }
        let importer = Importer {
            client: system.license_client(DEVICE).unwrap(),
            token: system.token.clone(),
            digest: apps.importer.clone(),
            scope: SCOPE.into(),
        };
        let backing = system.dir.path().join("backing");
        std::fs::create_dir_all(backing.join("samples")).unwrap();
        Some(Env {
            client: system.license_client(DEVICE).unwrap(),
            importer,
            backing,
            apps,
            frame: (0..1_048_576u32).map(|k| (k * 31) as u8).collect(),
            system,
            _serial: serial,
        })
    }

    /// Submits `req` to authz and waits until the key server has its rules (the mount gets
    /// them through its own subscription; callers poll for that).
    pub fn submit(&self, req: &Req<'_>) -> Submitted {
        self.submit_for(req, &[DEVICE])
    }

    /// [`Self::submit`] for the request on `devices`.
    pub fn submit_for(&self, req: &Req<'_>, devices: &[&str]) -> Submitted {
        let submitted = self.submit_pending(req, devices);
        self.system.wait_rules(&submitted, None).unwrap();
        submitted
    }

    /// Submits `req` on `devices` without waiting for its rules anywhere (a window that
    /// opens later).
    pub fn submit_pending(&self, req: &Req<'_>, devices: &[&str]) -> Submitted {
        self.system.submit(&req.on(devices)).unwrap()
    }

    /// Withdraws a request's rules.
    pub fn cancel(&self, submitted: &Submitted) {
        self.system.cancel(submitted).unwrap();
    }

    /// Encrypts a sample frame to `samples/<name>` (`name` may have directories: frames in
    /// different directories are not licensed together as siblings) under a create license
    /// (as `csap import` does, with the importer's registered digest); needs a `create` rule
    /// for the importer.
    pub fn add_frames(&self, names: &[&str]) {
        for name in names {
            self.importer
                .import(
                    &self.rt,
                    &self.backing,
                    &format!("samples/{name}"),
                    &[&self.frame],
                )
                .unwrap();
        }
    }

    /// A create rule for the importer and the sample frames `names`.
    pub fn with_frames(&self, names: &[&str]) -> Submitted {
        let import = self.submit(&Req::now("import", &[&self.apps.importer], &["create"]));
        self.add_frames(names);
        import
    }

    /// The `csap mount` key-server flags for alice's token file, with the mount's own ARDS
    /// subscription (local rules); clear `ards` for a mount that leaves every decision to the
    /// key server.
    pub fn args(&self) -> KeyServerFlags {
        self.system.mount_flags(DEVICE)
    }

    /// `csap mount` of the backing store on `<tempdir>/<name>` with `args` and `options`.
    pub fn mount(
        &self,
        name: &str,
        args: &KeyServerFlags,
        options: &MountOptions,
    ) -> (PathBuf, CsapMount) {
        let mnt = self.dir.path().join(name);
        if !mnt.exists() {
            std::fs::create_dir(&mnt).unwrap();
        }
        let mounted = self
            .system
            .mount(&self.backing, &mnt, args, options)
            .unwrap();
        (mnt, mounted)
    }

    /// Id of the newest license decision in the key server's audit log.
    pub fn last_audit(&self) -> i64 {
        self.audit().iter().map(|r| r.id).max().unwrap_or(0)
    }

    /// The latest license decisions of the key server (admin events and the decisions mounts
    /// ship left out).
    pub fn audit(&self) -> Vec<keyserver::wire::AuditRecord> {
        self.system
            .audit_tail(1000)
            .unwrap()
            .into_iter()
            .filter(|r| r.decision != "admin" && r.source == "keyserver")
            .collect()
    }

    /// What `csap audit query --path GLOB` answers (newest 1,000).
    pub fn audit_at(&self, glob: &str) -> Vec<keyserver::wire::AuditRecord> {
        self.system.audit_at(glob).unwrap()
    }

    /// Starts the services again on the same ports and data directory.
    pub fn restart(&mut self) {
        self.system.restart().unwrap();
    }
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

/// A process that opened a file through the mount (so the open is attested as that program)
/// and answers each input line with "ok" or "err <why>" after one more I/O on that handle.
pub struct Reader(Conversation);

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
        let (talk, line) = Conversation::start(&mut cmd, "the approved program").unwrap();
        assert_eq!(
            line.trim(),
            "opened",
            "the approved program could not open {}",
            file.display()
        );
        Reader(talk)
    }

    pub fn read(&mut self) -> String {
        self.0.ask("r").unwrap().trim().to_string()
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
