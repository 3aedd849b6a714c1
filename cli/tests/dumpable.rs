//! Issue 12, part 5: the daemons that hold keys — `csap mount`, `csap keyserver serve`,
//! `csap server` — are not dumpable (`PR_SET_DUMPABLE` 0): no core dump of their memory, and
//! a process of the same uid without `CAP_SYS_PTRACE` cannot read their `/proc/<pid>/mem`,
//! `environ` and the like (ptrace(2), "Ptrace access mode checking": a target that is not
//! dumpable needs `CAP_SYS_PTRACE` even for a caller of its own uid).
//!
//! The observable (for a root daemon, whose uid and capabilities a reader must match): the
//! daemon runs without `CAP_SYS_PTRACE` (dropped from its bounding set by `setpriv`), and a root
//! reader with the same capabilities opens `/proc/<pid>/mem` — granted for an ordinary process
//! started the same way (the control), refused for each daemon because it is not dumpable.

#[path = "../../csapfs/tests/support/mod.rs"]
mod support;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use csap_testkit::{CsapServer, ServerOptions};
use support::{ProcessMount, Scratch};

const CSAP: &str = env!("CARGO_BIN_EXE_csap");

/// `setpriv` arguments that drop `CAP_SYS_PTRACE` for good (bounding and inheritable sets).
const WITHOUT_PTRACE: [&str; 5] = [
    "--bounding-set",
    "-sys_ptrace",
    "--inh-caps",
    "-sys_ptrace",
    "--",
];

fn without_ptrace(program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(WITHOUT_PTRACE).arg(program);
    cmd
}

/// Opens `/proc/<pid>/mem` as root without `CAP_SYS_PTRACE`: opened, or the refusal.
fn open_mem(pid: u32) -> Result<(), String> {
    let out = without_ptrace("/bin/sh")
        .arg("-c")
        .arg(format!("exec 3< /proc/{pid}/mem"))
        .output()
        .expect("setpriv (util-linux) is needed to drop CAP_SYS_PTRACE");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Asserts the process `pid` (`what`) keeps its memory from a same-uid reader.
fn assert_not_dumpable(pid: u32, what: &str) {
    match open_mem(pid) {
        Ok(()) => panic!("{what} (pid {pid}) is dumpable: a same-uid reader without CAP_SYS_PTRACE opened its /proc/<pid>/mem"),
        Err(err) => assert!(err.contains("Permission denied"), "{what}: unexpected refusal: {err}"),
    }
}

/// A process started without `CAP_SYS_PTRACE`; killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The observable works: an ordinary process started the same way is readable.
#[test]
fn an_ordinary_process_is_readable_without_the_ptrace_capability() {
    let sleeper = Daemon(without_ptrace("sleep").arg("30").spawn().unwrap());
    // Until setpriv has exec'd `sleep` the child still holds CAP_SYS_PTRACE, and a reader
    // without it is refused for that reason alone: wait for the exec.
    let comm = format!("/proc/{}/comm", sleeper.0.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&comm).map_or(true, |c| c.trim() != "sleep") {
        assert!(Instant::now() < deadline, "setpriv never exec'd sleep");
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Err(err) = open_mem(sleeper.0.id()) {
        panic!("control: {err}");
    }
}

#[test]
fn the_mount_daemon_is_not_dumpable() {
    require_fuse!();
    let scratch = Scratch::new();
    let wrapper = csap_without_ptrace(scratch.dir.path());
    let mount = ProcessMount::start(wrapper.to_str().unwrap(), &scratch, &["--cache", "direct"]);
    assert_not_dumpable(mount.child.id(), "csap mount");
    mount.kill();
}

/// A script in `dir` that execs csap without CAP_SYS_PTRACE (keeping the pid), for harnesses
/// that run the program they are given as `csap`.
fn csap_without_ptrace(dir: &Path) -> PathBuf {
    let wrapper = dir.join("csap-without-ptrace");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv {} {CSAP} \"$@\"\n",
            WITHOUT_PTRACE.join(" ")
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    wrapper
}

/// Waits until `addr` accepts connections (the daemon is up), or fails.
fn wait_listening(daemon: &mut Daemon, addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon exited");
        assert!(
            Instant::now() < deadline,
            "the daemon never listened on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_addr() -> std::net::SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn the_embedded_server_is_not_dumpable() {
    let data = tempfile::tempdir().unwrap();
    let wrapper = csap_without_ptrace(data.path());
    let server = CsapServer::start(&ServerOptions::new(&wrapper, data.path())).unwrap();
    assert_not_dumpable(server.pid().as_raw() as u32, "csap server");
}

#[test]
fn the_standalone_key_server_is_not_dumpable() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut server = Daemon(
        without_ptrace(CSAP)
            .args([
                "keyserver",
                "serve",
                "--listen",
                &addr.to_string(),
                "--data-dir",
            ])
            .arg(data.path().join("ks"))
            .env_remove("CSAP_ROOT_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(&mut server, addr);
    assert_not_dumpable(server.0.id(), "csap keyserver serve");
}
