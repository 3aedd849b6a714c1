//! FUSE daemons as child processes: `csap mount` with the key-server flags (and any other, such
//! as a bindfs passthrough baseline), mounted when started, unmounted when dropped.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use csapfs::fs::{CacheMode, MountOptions};

use crate::fuse::{detach, is_mounted};
use crate::process::Proc;

/// How long a daemon may take to mount (a `csap mount` first syncs its rules from ARDS).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an unmounted daemon may take to flush and exit.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// The mount's own ARDS subscription: `--ards`, `--ards-ca`, `--issuer-pub`.
#[derive(Debug, Clone)]
pub struct ArdsFlags {
    pub url: String,
    pub ca: PathBuf,
    pub issuer_pub: PathBuf,
}

/// The key-server flags of `csap mount`, one field per flag.
#[derive(Debug, Clone)]
pub struct KeyServerFlags {
    pub server: String,
    pub identity: PathBuf,
    pub scope: Option<String>,
    /// `--token-file [UID:]PATH`, repeated.
    pub token_file: Vec<String>,
    /// `None`: no rules at the mount, every decision is the key server's.
    pub ards: Option<ArdsFlags>,
    pub socket: Option<PathBuf>,
    pub audit_spool: Option<PathBuf>,
}

impl KeyServerFlags {
    fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--server".into(),
            self.server.clone().into(),
            "--identity".into(),
            self.identity.clone().into(),
        ];
        if let Some(scope) = &self.scope {
            a.extend(["--scope".into(), scope.into()]);
        }
        for t in &self.token_file {
            a.extend(["--token-file".into(), t.into()]);
        }
        if let Some(ards) = &self.ards {
            a.extend([
                "--ards".into(),
                ards.url.clone().into(),
                "--ards-ca".into(),
                ards.ca.clone().into(),
                "--issuer-pub".into(),
                ards.issuer_pub.clone().into(),
            ]);
        }
        if let Some(socket) = &self.socket {
            a.extend(["--socket".into(), socket.into()]);
        }
        if let Some(spool) = &self.audit_spool {
            a.extend(["--audit-spool".into(), spool.into()]);
        }
        a
    }
}

/// `csap mount`'s flags for `options` (what `mount_options` in the CLI parses back).
fn option_args(options: &MountOptions) -> Vec<OsString> {
    // Every field, so a new mount option cannot be silently dropped here.
    let MountOptions {
        cache,
        read_only,
        allow_other,
        threads,
        readahead_kb,
        allow_nonempty,
        extra,
    } = options;
    let cache = match cache {
        CacheMode::Direct => "direct",
        CacheMode::Page => "page",
    };
    let mut a: Vec<OsString> = vec![
        "--cache".into(),
        cache.into(),
        "--threads".into(),
        threads.to_string().into(),
        "--readahead-kb".into(),
        readahead_kb.to_string().into(),
    ];
    let flags = [
        (*read_only, "ro"),
        (*allow_other, "allow_other"),
        (*allow_nonempty, "nonempty"),
    ];
    let mut o: Vec<&str> = flags
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, s)| *s)
        .collect();
    o.extend(extra.iter().map(String::as_str));
    if !o.is_empty() {
        a.extend(["-o".into(), o.join(",").into()]);
    }
    a
}

/// A FUSE mount served by a child process; unmounted (and detached if need be) when dropped.
pub struct FuseProcess {
    mnt: PathBuf,
    log: PathBuf,
    proc: Proc,
}

impl FuseProcess {
    /// Starts `cmd` (its stderr to `log`) and waits until `mnt` is mounted, failing early
    /// with its log if it exits first.
    pub fn start(cmd: &mut Command, what: &str, mnt: &Path, log: &Path) -> Result<FuseProcess> {
        let log_file =
            File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let proc = Proc::spawn(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file),
            what,
        )?;
        let mut fuse = FuseProcess {
            mnt: mnt.to_path_buf(),
            log: log.to_path_buf(),
            proc,
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        while !is_mounted(mnt) {
            if let Some(status) = fuse.proc.exited()? {
                bail!(
                    "{what} exited with {status} before mounting {}; its log:\n{}",
                    mnt.display(),
                    fuse.log_text()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "{what} did not mount {} within {MOUNT_TIMEOUT:?}; its log:\n{}",
                mnt.display(),
                fuse.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(fuse)
    }

    pub fn mnt(&self) -> &Path {
        &self.mnt
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        self.proc.pid()
    }

    /// Where its stderr goes.
    pub fn log(&self) -> &Path {
        &self.log
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon (SIGTERM: it unmounts, flushes its open files and exits) and checks
    /// that it exited cleanly and left nothing mounted.
    pub fn unmount(mut self) -> Result<()> {
        let what = self.proc.what().to_string();
        let Some(status) = self.proc.terminate(UNMOUNT_TIMEOUT) else {
            bail!(
                "{what} on {} did not exit within {UNMOUNT_TIMEOUT:?}",
                self.mnt.display()
            );
        };
        ensure!(
            status.success(),
            "{what} on {} exited with {status}; its log:\n{}",
            self.mnt.display(),
            self.log_text()
        );
        ensure!(
            !is_mounted(&self.mnt),
            "{what} exited but {} is still mounted",
            self.mnt.display()
        );
        Ok(())
    }
}

impl Drop for FuseProcess {
    fn drop(&mut self) {
        self.proc.stop();
        detach(&self.mnt);
    }
}

/// `csap mount BACKING MNT --server …` as a process.
pub type CsapMount = FuseProcess;

/// Starts `csap mount backing mnt` with `flags` and `options` (stderr, at `CSAP_LOG=info`, to
/// `log`) and waits until it is mounted.
pub fn csap_mount(
    csap: &Path,
    backing: &Path,
    mnt: &Path,
    flags: &KeyServerFlags,
    options: &MountOptions,
    log: &Path,
) -> Result<CsapMount> {
    let mut cmd = Command::new(csap);
    cmd.arg("mount")
        .arg(backing)
        .arg(mnt)
        .args(flags.args())
        .args(option_args(options))
        .env("CSAP_LOG", "info");
    FuseProcess::start(&mut cmd, "csap mount", mnt, log)
}
