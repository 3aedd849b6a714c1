//! The system under measurement: the shared fixture's installation (`csap server` as a
//! process, the mount's device and an import device, alice, the bench scope), a backing store
//! where the knobs put it, `csap mount --server … --ards …` of it and a bindfs passthrough of
//! the same store as the baseline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use csap_testkit::{CsapMount, FuseProcess, Importer, Request, Setup, Submitted, System};
use keyserver::wire::AuditRecord;

use super::{window, E2eKnobs, IMPORT_DEVICE, MIB, NODE, PASSWORD, SCOPE, USER};

/// A registered application: an executable and its digest.
pub struct App {
    pub path: PathBuf,
    pub digest: String,
}

/// A copy of this binary made distinct by a trailer (the loader ignores bytes past the ELF
/// image), so each role has its own digest and its own license cache entries.
pub fn app_copy(dir: &Path, role: &str) -> Result<App> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe().context("cannot locate the bench executable")?;
    let path = dir.join(role);
    std::fs::copy(&me, &path).with_context(|| format!("cannot copy {}", me.display()))?;
    let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
    writeln!(f, "\ncsap-bench-role:{role}")?;
    drop(f);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    let digest = csap_testkit::digest_of(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(App { path, digest })
}

/// The running system. Field order is drop order: mounts go before the server and before the
/// backing store's temp dir is removed.
pub struct Stack {
    csap_mount: Option<CsapMount>,
    passthrough: Option<FuseProcess>,
    pub sys: System,
    pub backing: PathBuf,
    _backing_root: tempfile::TempDir,
}

impl Stack {
    /// The server up with the devices, user and scope provisioned; a backing store of room
    /// for `backing_bytes`; nothing mounted yet.
    pub fn start(k: &E2eKnobs, backing_bytes: u64) -> Result<Stack> {
        let csap = match &k.csap {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("csap"),
        };
        ensure!(
            csap.exists(),
            "{} is missing: build it first with `cargo build --release -p cli` (same target \
             dir as the bench), or point BENCH_CSAP at a csap binary",
            csap.display()
        );
        if let Some(why) = csap_testkit::fuse::unusable() {
            anyhow::bail!("{why}: the end-to-end benchmarks need FUSE");
        }
        check_room(&k.backing_parent, backing_bytes)?;
        let backing_root = tempfile::Builder::new()
            .prefix("csap-bench-backing")
            .tempdir_in(&k.backing_parent)
            .with_context(|| {
                format!("cannot create a temp dir in {}", k.backing_parent.display())
            })?;
        let backing = backing_root.path().join("backing");
        std::fs::create_dir_all(&backing)?;
        let sys = System::start(Setup {
            csap,
            user: USER.into(),
            password: PASSWORD.into(),
            scope: SCOPE.into(),
            // The mount's device first: alice's token file is for it.
            devices: vec![NODE.into(), IMPORT_DEVICE.into()],
            listen: "127.0.0.1:0".parse()?,
            device_rate: None,
            store: None,
        })?;
        Ok(Stack {
            csap_mount: None,
            passthrough: None,
            sys,
            backing,
            _backing_root: backing_root,
        })
    }

    /// Licenses and writes assets through the import device, as `csap import` does, on behalf
    /// of the registered import tool `digest`.
    pub fn importer(&self, digest: &str) -> Result<Importer> {
        self.sys.importer(IMPORT_DEVICE, digest)
    }

    /// Registers the import tool `digest` and lets it create every bench asset through the
    /// import device (a device of its own, so importing spends none of the mount device's
    /// rate-limit budget); waits until the key server has the rule.
    pub fn allow_import(&self, digest: &str) -> Result<Submitted> {
        self.sys.register(digest, "bench-importer")?;
        let now = keyserver::now()?;
        let import = self.sys.submit(&Request {
            name: "import",
            user: USER,
            apps: &[digest],
            devices: &[IMPORT_DEVICE],
            assets: "bench/**",
            actions: &["create"],
            window: window(now - 60),
        })?;
        self.wait_rules(&import, false)?;
        Ok(import)
    }

    /// Lets `user` read `assets` on the mount's device with the application `digest`, from
    /// `start` on (rules released ahead of a later window are pre-loaded by the mount).
    pub fn allow_read(
        &self,
        name: &str,
        user: &str,
        digest: &str,
        assets: &str,
        start: i64,
    ) -> Result<Submitted> {
        self.sys.submit(&Request {
            name,
            user,
            apps: &[digest],
            devices: &[NODE],
            assets,
            actions: &["read"],
            window: window(start),
        })
    }

    /// Waits until the key server's and (if `mount`) the mount's evaluators hold the rules.
    pub fn wait_rules(&self, s: &Submitted, mount: bool) -> Result<()> {
        self.sys.wait_rules(s, mount.then_some(NODE))
    }

    /// The key server's license grants to `digest` audited after `mark` (one record per
    /// granted asset; the mount's own records of cached licenses left out).
    pub fn grants_since(&self, mark: i64, digest: &str) -> Result<Vec<AuditRecord>> {
        Ok(self
            .sys
            .audit_since(mark)?
            .into_iter()
            .filter(|r| {
                r.source == "keyserver"
                    && r.decision == "grant"
                    && r.app_digest.as_deref() == Some(digest)
            })
            .collect())
    }

    /// Both mounts of the backing store.
    pub fn mount(&mut self) -> Result<()> {
        self.mount_csap()?;
        self.mount_passthrough()
    }

    /// `csap mount --server … --ards …` of the backing store, as the mount's device.
    pub fn mount_csap(&mut self) -> Result<()> {
        let mnt = self.sys.dir.path().join("mnt");
        std::fs::create_dir_all(&mnt)?;
        let flags = self.sys.mount_flags(NODE);
        let mount = self
            .sys
            .mount(&self.backing, &mnt, &flags, &Default::default())?;
        self.csap_mount = Some(mount);
        Ok(())
    }

    /// A bindfs passthrough of the same backing store, the baseline of the open figures.
    fn mount_passthrough(&mut self) -> Result<()> {
        let pass = self.sys.dir.path().join("passthrough");
        std::fs::create_dir_all(&pass)?;
        let mut bindfs = Command::new("bindfs");
        bindfs.arg("-f").arg(&self.backing).arg(&pass);
        let log = self.sys.dir.path().join("bindfs.log");
        let mount = FuseProcess::start(&mut bindfs, "bindfs", &pass, &log)
            .context("bindfs (apt-get install bindfs)")?;
        self.passthrough = Some(mount);
        Ok(())
    }

    fn csap(&self) -> &CsapMount {
        self.csap_mount.as_ref().expect("mounted")
    }
    fn passthrough(&self) -> &FuseProcess {
        self.passthrough.as_ref().expect("mounted")
    }
    pub fn mnt(&self) -> &Path {
        self.csap().mnt()
    }
    /// The csap mount's log (`CSAP_LOG=info`).
    pub fn mount_log(&self) -> &Path {
        self.csap().log()
    }
    pub fn pass(&self) -> &Path {
        self.passthrough().mnt()
    }
    pub fn pass_pid(&self) -> nix::unistd::Pid {
        self.passthrough().pid()
    }
    pub fn mount_pid(&self) -> nix::unistd::Pid {
        self.csap().pid()
    }
}

/// Refuses to fill a tmpfs (or the machine's memory) with the backing store.
fn check_room(parent: &Path, bytes: u64) -> Result<()> {
    let st = nix::sys::statvfs::statvfs(parent)
        .with_context(|| format!("cannot stat {}", parent.display()))?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    let need = bytes + bytes / 50 + 256 * MIB as u64;
    ensure!(
        free >= need,
        "{} has {} MiB free, the backing store needs {} MiB: lower BENCH_FRAMES / \
         BENCH_SEQ_MIB or set BENCH_BACKING_DIR",
        parent.display(),
        free / MIB as u64,
        need / MIB as u64
    );
    let on_tmpfs = nix::sys::statfs::statfs(parent)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false);
    if on_tmpfs {
        let avail_kib: u64 = std::fs::read_to_string("/proc/meminfo")?
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let margin = 4 * 1024 * MIB as u64;
        ensure!(
            avail_kib * 1024 >= need + margin,
            "{} is a tmpfs and only {} MiB of memory are available; the backing store needs \
             {} MiB plus 4 GiB of headroom: lower BENCH_FRAMES / BENCH_SEQ_MIB",
            parent.display(),
            avail_kib / 1024,
            need / MIB as u64
        );
    }
    Ok(())
}
