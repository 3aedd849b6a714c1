//! `csap mount` and `csap umount`: serve a backing directory of assets as plaintext over FUSE.
//!
//! The mount runs in the foreground until SIGINT/SIGTERM or an external unmount, then unmounts
//! and flushes every open asset. `--daemon` re-executes this same command in the background
//! (a fresh process, not a fork: the FUSE threads must not be duplicated) and returns once the
//! mount is live.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use csapfs::format::DEFAULT_CHUNK_SIZE;
use csapfs::fs::{CacheMode, MountOptions};
use csapfs::keys::{KeyFileSource, NewAssetParams};
use csapfs::{Seed, Suite};
use nix::sys::signal::{SigSet, Signal};

use crate::asset::SuiteArg;
use crate::{daemon_files, mount_preflight};

/// How long `--daemon` waits for the background mount to come up.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `csap umount` waits for the server of the mount to exit.
const UMOUNT_WAIT: Duration = Duration::from_secs(30);

#[derive(Args)]
#[command(after_help = "\
Key source: --key-file is the local development key source: every asset is keyed from that one \
32-byte seed file exactly as `csap asset encrypt --key-file` does, so files written either way \
are readable the other way. It sits behind the same KeySource interface that the key-server \
client implements; production mounts get per-asset licenses from the key server instead \
(--server, --identity, --scope, --token-file) and, with --ards/--ards-ca/--issuer-pub, enforce \
their own rules from ARDS: local denials, gated create/unlink/rename/truncate, revocation of open \
files within a second, pre-loading of licenses for rules released ahead of their window.

Names are not encrypted (asset management must see them); contents are, chunk by chunk. A file \
in BACKING that is not a valid asset is logged once and fails to open with EIO.

BACKING may be s3://BUCKET/PREFIX: assets are objects of that bucket, read by ranged GETs with \
readahead, written through a local (encrypted) staging file and uploaded at fsync and close; \
rename is copy + delete (not atomic). See the README, \"Assets in S3\".

Examples:
  csap mount /data/show.enc /mnt/show --key-file ~/dev.key
  AWS_ENDPOINT_URL=https://s3.example.net csap mount s3://show/assets /mnt/show --key-file ~/dev.key
  csap mount /data/show.enc /mnt/show --key-file ~/dev.key -o ro,allow_other --cache page --daemon
  csap umount /mnt/show")]
pub struct MountArgs {
    /// Directory of encrypted assets (as written by `csap asset encrypt` or by a mount), or
    /// `s3://BUCKET/PREFIX` in S3-compatible object storage (see the --s3-* flags).
    pub backing: PathBuf,
    /// Empty directory where the plaintext view appears (refused if something is mounted there
    /// already, or if it has entries unless `-o nonempty`).
    pub mountpoint: PathBuf,
    /// With an s3:// location: how to reach and read the store.
    #[command(flatten)]
    pub s3: crate::store_location::S3Args,
    /// Local development key source: a 32-byte seed file (see below).
    #[arg(long, value_name = "K")]
    pub key_file: Option<PathBuf>,
    /// Production key source: licenses from the key server (see `--server`).
    #[command(flatten)]
    pub key_server: crate::keysource::KeyServerArgs,
    /// Mount options, comma-separated, repeatable: ro, rw, allow_other, nonempty (mount over a
    /// directory that has entries; refused otherwise); anything else is passed to the kernel
    /// as it is.
    #[arg(
        short = 'o',
        long = "options",
        value_name = "OPTIONS",
        value_delimiter = ','
    )]
    pub options: Vec<String>,
    /// Page-cache policy. direct: reads never put plaintext in the kernel page cache and every
    /// read passes the enforcement point (mmap still works on Linux >= 6.6). page: the kernel
    /// caches plaintext pages but drops them at each open; attributes are cached for 1 s. In
    /// both, a file's cached and mapped pages are dropped when a handle's license ends (a
    /// mapping then gets SIGBUS).
    #[arg(long, value_enum, default_value_t = CacheArg::from(CacheMode::DEFAULT))]
    pub cache: CacheArg,
    /// FUSE event-loop threads (default: 2 per core, 4 to 16).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Readahead window in KiB (set on the mount's BDI; needs root; 0 keeps the kernel default).
    #[arg(long, default_value_t = 4096)]
    pub readahead_kb: u32,
    /// Cipher suite of files created through the mount.
    #[arg(long, value_enum, default_value_t = SuiteArg::Gcm)]
    pub suite: SuiteArg,
    /// Plaintext bytes per chunk of files created through the mount (power of two, 4 KiB..16 MiB).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u32,
    /// Detach: run in the background and return once the mount is live.
    #[arg(long)]
    pub daemon: bool,
    /// With --daemon: append the daemon's log here (default: /var/log/csap/mount-NAME.log as
    /// root, else $XDG_STATE_HOME/csap/mount-NAME.log; NAME is the mountpoint with '/' as '-').
    #[arg(long, requires = "daemon")]
    pub log_file: Option<PathBuf>,
    /// Write the serving process's pid here while the mount is up (removed when it ends). With
    /// --daemon the default is /run/csap/mount-NAME.pid as root, else
    /// $XDG_RUNTIME_DIR/csap/mount-NAME.pid.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    #[command(flatten)]
    pub observe: crate::mount_observer::ObserveArgs,
    /// Read settings from this TOML file: its keys are these long flags without the dashes
    /// (`key-file`, `cache`, `options = ["ro"]`, ...) and `backing`/`mountpoint`; flags given
    /// here win over it. Example: contrib/config/mount.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Args)]
#[command(after_help = "\
Returns once the server of the mount has flushed its open files and exited (at most 30 s; an \
error says if it has not), so a new `csap mount` on the same path can follow at once. With \
--lazy it returns at once.")]
pub struct UmountArgs {
    /// Where a csap mount is mounted.
    pub mountpoint: PathBuf,
    /// Detach now even if files are open; the mount goes away when the last one is closed.
    #[arg(long)]
    pub lazy: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheArg {
    Page,
    Direct,
}

impl From<CacheMode> for CacheArg {
    fn from(mode: CacheMode) -> Self {
        match mode {
            CacheMode::Page => CacheArg::Page,
            CacheMode::Direct => CacheArg::Direct,
        }
    }
}

impl From<CacheArg> for CacheMode {
    fn from(arg: CacheArg) -> Self {
        match arg {
            CacheArg::Page => CacheMode::Page,
            CacheArg::Direct => CacheMode::Direct,
        }
    }
}

fn mount_options(args: &MountArgs) -> MountOptions {
    let mut options = MountOptions {
        cache: args.cache.into(),
        readahead_kb: args.readahead_kb,
        ..MountOptions::default()
    };
    if let Some(threads) = args.threads {
        options.threads = threads.max(1);
    }
    for option in args
        .options
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
    {
        match option {
            "ro" => options.read_only = true,
            "rw" => options.read_only = false,
            "allow_other" => options.allow_other = true,
            "nonempty" => options.allow_nonempty = true,
            other => options.extra.push(other.to_string()),
        }
    }
    options
}

pub fn run_mount(args: MountArgs) -> Result<()> {
    if let Some(config) = &args.config {
        tracing::info!(config = %config.display(), "settings from the config file, flags over them");
    }
    mount_preflight::key_source(args.key_file.as_deref(), args.key_server.server.as_deref())?;
    let object = crate::store_location::is_object(&args.backing);
    if object {
        mount_preflight::directories(&args.mountpoint, &args.mountpoint)?;
    } else {
        mount_preflight::directories(&args.backing, &args.mountpoint)?;
    }
    if args.daemon {
        return spawn_daemon(&args);
    }
    // Before any key is read (the key file, licenses): the daemon re-executes itself, and
    // exec resets the flag, so this runs in the process that serves the mount.
    crate::hardening::not_dumpable()?;
    let suite = match args.suite {
        SuiteArg::Gcm => Suite::Gcm,
        SuiteArg::Ctr => Suite::CtrBlake3,
    };
    let params = NewAssetParams {
        suite,
        chunk_size: args.chunk_size,
    };
    let seed = match &args.key_file {
        Some(key_file) => Some(
            Seed::from_file(key_file)
                .with_context(|| format!("reading key file {}", key_file.display()))?,
        ),
        None => None,
    };
    let options = mount_options(&args);

    // Block the shutdown signals before any thread exists, so every FUSE thread inherits the
    // mask and only the waiter below receives them. SIGHUP stays blocked: a closed terminal
    // must not take the mount down.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    let mut blocked = signals;
    blocked.add(Signal::SIGHUP);
    blocked.thread_block().context("blocking signals")?;

    // After blocking signals: the key server source starts runtime threads of its own.
    // `_sessions` serves `csap login` handovers for as long as the mount runs.
    let storage = if object {
        args.s3.open(&args.backing)?
    } else {
        csapfs::fs::open_backing(&args.backing)?
    };
    let (keys, _sessions, server): (Arc<dyn csapfs::keys::KeySource>, _, _) = match (
        seed,
        args.key_server.source(params, &storage, &args.mountpoint)?,
    ) {
        (_, Some(k)) => (k.source, k.sessions, Some(k.server)),
        (Some(seed), None) => (Arc::new(KeyFileSource::new(seed, params)), None, None),
        (None, None) => bail!("give --key-file or --server"),
    };

    let mounted = csapfs::fs::mount_storage(storage, &args.mountpoint, keys, &options)?;
    mounted
        .hold_claim_until_exit()
        .context("holding the claim on the mountpoint")?;
    // Held until this function returns: metrics, the status file `csap status` reads.
    // Before the pid file: `--daemon` takes that file for a mount that came up whole.
    let _observer = crate::mount_observer::start(
        &args.observe,
        crate::mount_observer::Observed {
            mountpoint: args.mountpoint.clone(),
            backing: args.backing.clone(),
            server: args.key_server.server.clone(),
            source: server,
        },
    )?;
    // Held until this function returns: the file names a live mount only.
    let _pid_file = args
        .pid_file
        .as_deref()
        .map(daemon_files::PidFile::create)
        .transpose()?;
    eprintln!(
        "csap: {} mounted on {} (cache {}, {} threads{}); stop with Ctrl-C or `csap umount {}`",
        args.backing.display(),
        args.mountpoint.display(),
        match options.cache {
            CacheMode::Direct => "direct",
            CacheMode::Page => "page",
        },
        options.threads,
        if options.read_only { ", read-only" } else { "" },
        args.mountpoint.display(),
    );

    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("csap-signals".into())
        .spawn(move || {
            if let Ok(signal) = signals.wait() {
                let _ = tx.send(signal);
            }
        })
        .context("starting the signal thread")?;

    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(signal) => {
                tracing::info!(?signal, "shutting down");
                unmount(&args.mountpoint, false).or_else(|err| {
                    eprintln!("csap: {}; detaching lazily (the mount goes away when the last open file is closed)", crate::errors::sentence(&err));
                    unmount(&args.mountpoint, true)
                })?;
                mounted.join()?;
                return Ok(());
            }
            Err(mpsc::RecvTimeoutError::Timeout) if !mounted.is_finished() => {}
            // Unmounted from outside (`csap umount`, `umount`): the session has ended.
            Err(_) => {
                mounted.join()?;
                return Ok(());
            }
        }
    }
}

/// Re-runs this command without `--daemon` as a detached child and waits until it is mounted.
fn spawn_daemon(args: &MountArgs) -> Result<()> {
    // Before starting it: a daemon refused on a mounted path would look mounted from here.
    csapfs::fs::check_mountpoint(&args.mountpoint, &mount_options(args))?;
    let exe = std::env::current_exe().context("locating the csap executable")?;
    let child_args: Vec<OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--daemon")
        .collect();
    let mut child_args = strip_log_file(child_args);
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    let log_file = match &args.log_file {
        Some(path) => path.clone(),
        None => daemon_files::default_log_file(&mountpoint)?,
    };
    daemon_files::create_parent(&log_file)?;
    let stderr = Stdio::from(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .with_context(|| format!("opening log file {}", log_file.display()))?,
    );
    let pid_file = match &args.pid_file {
        Some(path) => path.clone(),
        None => {
            let path = daemon_files::default_pid_file(&mountpoint)?;
            child_args.push("--pid-file".into());
            child_args.push(path.clone().into_os_string());
            path
        }
    };
    // check_mountpoint refused a live mount here, so a pid file left now is a killed one's; it
    // must go, or the wait below would take it for the new daemon's.
    let _ = std::fs::remove_file(&pid_file);
    let mut child = Command::new(exe)
        .args(&child_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        // Own process group: a Ctrl-C in the launching terminal does not reach the daemon.
        .process_group(0)
        .spawn()
        .context("starting the mount daemon")?;
    let deadline = Instant::now() + DAEMON_START_TIMEOUT;
    loop {
        // The daemon writes its pid file right after mounting.
        if is_csap_mount(&mountpoint)? && pid_file.exists() {
            println!("{}", child.id());
            eprintln!(
                "csap: mount daemon {} logs to {}; pid file {}",
                child.id(),
                log_file.display(),
                pid_file.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the mount daemon exited with {status} before mounting; see its log {}",
                log_file.display()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the mount daemon did not mount within {DAEMON_START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Drops `--log-file X` / `--log-file=X` (they are only valid with `--daemon`).
fn strip_log_file(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_next = false;
    for arg in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        if arg == "--log-file" {
            skip_next = true;
            continue;
        }
        if arg.to_string_lossy().starts_with("--log-file=") {
            continue;
        }
        out.push(arg);
    }
    out
}

/// True if a FUSE mount sits exactly on `mountpoint` (canonical path).
pub fn is_csap_mount(mountpoint: &Path) -> Result<bool> {
    Ok(csapfs::fs::mounted_fs_type(mountpoint)
        .context("reading /proc/self/mountinfo")?
        .is_some_and(|fs_type| fs_type.starts_with("fuse")))
}

pub fn run_umount(args: UmountArgs) -> Result<()> {
    unmount(&args.mountpoint, args.lazy)?;
    if args.lazy {
        // The server keeps serving the files still open; it exits when the last is closed.
        return Ok(());
    }
    // The server flushes its open assets after the kernel lets go; a mount made on the same
    // path before it has finished would race that teardown.
    if !csapfs::fs::wait_until_released(&args.mountpoint, UMOUNT_WAIT)
        .with_context(|| format!("waiting for the server of {}", args.mountpoint.display()))?
    {
        bail!(
            "{} is unmounted, but the csap mount that served it has not exited within {UMOUNT_WAIT:?} (still flushing open files?); see its log",
            args.mountpoint.display()
        );
    }
    Ok(())
}

/// Unmounts directly when privileged, else through the setuid `fusermount3 -u`.
fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    use nix::mount::{umount2, MntFlags};
    let flags = if lazy {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    match umount2(mountpoint, flags) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => fusermount_unmount(mountpoint, lazy),
        Err(nix::errno::Errno::EBUSY) => bail!(
            "{} is busy (a process has a file open or its working directory there); close it, or use --lazy",
            mountpoint.display()
        ),
        Err(nix::errno::Errno::EINVAL) => bail!("{} is not a mount point", mountpoint.display()),
        Err(err) => Err(err).with_context(|| format!("unmounting {}", mountpoint.display())),
    }
}

fn fusermount_unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let mut last_err = None;
    for tool in ["fusermount3", "fusermount"] {
        let mut cmd = Command::new(tool);
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        match cmd.arg(mountpoint).status() {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => bail!("{tool} -u {} failed ({status})", mountpoint.display()),
            Err(err) => last_err = Some(err),
        }
    }
    Err(last_err
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("no fusermount")))
    .context("unprivileged unmount needs fusermount3 (apt-get install fuse3)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_file_is_stripped_for_the_child() {
        let args: Vec<OsString> = ["a", "--log-file", "x", "--log-file=y", "b"]
            .iter()
            .map(OsString::from)
            .collect();
        let kept: Vec<OsString> = ["a", "b"].iter().map(OsString::from).collect();
        assert_eq!(strip_log_file(args), kept);
    }

    #[test]
    fn mount_options_are_parsed() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            m: MountArgs,
        }
        let t = T::try_parse_from([
            "t",
            "b",
            "m",
            "--key-file",
            "k",
            "-o",
            "ro,allow_other",
            "-o",
            "noatime",
        ])
        .unwrap();
        let options = mount_options(&t.m);
        assert!(options.read_only && options.allow_other);
        assert_eq!(options.extra, vec!["noatime".to_string()]);
        assert_eq!(options.cache, CacheMode::DEFAULT);
    }
}
