//! Child processes: stopped when dropped, started without inherited loader variables, and
//! conversing children driven one line at a time.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a stopped child gets to exit on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Removes the loader variables a child would inherit (`cargo run` and `cargo test` set
/// `LD_LIBRARY_PATH`): the mount refuses a process whose environment injects libraries, so
/// an inherited one would turn every open into a denial. Variables set on `cmd` on purpose
/// (an injection attack) are kept.
pub fn clean(cmd: &mut Command) -> &mut Command {
    for var in ["LD_LIBRARY_PATH", "LD_PRELOAD", "LD_AUDIT"] {
        if !cmd.get_envs().any(|(name, _)| name == var) {
            cmd.env_remove(var);
        }
    }
    cmd
}

/// Runs `cmd` to completion with a [`clean`] environment; panics if it cannot be started.
pub fn run(mut cmd: Command) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    clean(&mut cmd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Polls `done` every 50 ms until it holds; an error naming `what` after `timeout`.
pub fn until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// [`until`] for tests: panics on the timeout.
pub fn eventually(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    if let Err(err) = until(what, timeout, done) {
        panic!("{err}");
    }
}

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    /// Starts `cmd`; `what` names it in messages.
    pub fn spawn(cmd: &mut Command, what: impl Into<String>) -> Result<Proc> {
        let what = what.into();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Ok(Proc { child, what })
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("cannot wait for {}", self.what))
    }

    /// Sends `signal` (unless it has exited already).
    pub fn signal(&mut self, signal: Signal) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(self.pid(), signal);
        }
    }

    /// SIGTERM, then up to `within` for the exit; `None` if it is still running.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// [`Self::terminate`], killing it if it does not stop within the grace period.
    pub fn stop(&mut self) {
        if self.terminate(STOP_GRACE).is_none() {
            eprintln!("{} did not stop on SIGTERM; killing it", self.what);
            self.kill();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child with piped stdin and stdout that answers line by line (stderr is inherited): an
/// approved program holding a file open through the mount, a benchmark worker. Killed when
/// dropped — it holds nothing that needs a clean exit.
pub struct Conversation {
    proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Conversation {
    /// Starts `cmd` with a [`clean`] environment; returns it and the first line it printed.
    pub fn start(cmd: &mut Command, what: impl Into<String>) -> Result<(Conversation, String)> {
        let mut proc = Proc::spawn(
            clean(cmd)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
            what,
        )?;
        let stdin = proc.child.stdin.take().context("no stdin pipe")?;
        let stdout = BufReader::new(proc.child.stdout.take().context("no stdout pipe")?);
        let mut talk = Conversation {
            proc,
            stdin,
            stdout,
        };
        let first = talk.line()?;
        Ok((talk, first))
    }

    /// Sends one line.
    pub fn say(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("cannot write to {}", self.proc.what))
    }

    /// The next line it prints, without its line end ("" once it closed stdout).
    pub fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .with_context(|| format!("cannot read from {}", self.proc.what))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }

    /// [`Self::say`], then [`Self::line`].
    pub fn ask(&mut self, line: &str) -> Result<String> {
        self.say(line)?;
        self.line()
    }

    /// Everything it prints until it closes stdout.
    pub fn rest(&mut self) -> Result<String> {
        let mut rest = String::new();
        self.stdout
            .read_to_string(&mut rest)
            .with_context(|| format!("cannot read from {}", self.proc.what))?;
        Ok(rest)
    }

    /// Waits for its exit.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        self.proc
            .child
            .wait()
            .with_context(|| format!("cannot wait for {}", self.proc.what))
    }

    pub fn what(&self) -> &str {
        self.proc.what()
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        self.proc.kill();
    }
}
