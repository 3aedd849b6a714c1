//! The guide's walkthrough (`docs/guide.md`), run exactly as written: its `sh` blocks, in order,
//! under `bash -euo pipefail`, with `csap` and `csap-view` from this build first on `PATH`. A
//! line marked `# refused` must fail; every other command must succeed. So the guide cannot
//! drift from what the commands do. Needs FUSE (a failure under CI=true, else skipped).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const CSAP: &str = env!("CARGO_BIN_EXE_csap");
const SECTION: &str = "## Walkthrough";
const REFUSED: &str = "# refused";

/// The `sh` code blocks of the walkthrough section, in order.
fn walkthrough_blocks(guide: &str) -> Vec<String> {
    let start = guide
        .find(SECTION)
        .expect("docs/guide.md has a walkthrough section");
    let section = &guide[start + SECTION.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(
        current.is_none(),
        "an sh block of the walkthrough is not closed"
    );
    blocks
}

/// A block as the script runs it: a `# refused` line must fail, so it becomes a check.
fn checked(block: &str) -> String {
    block
        .lines()
        .map(|line| match line.find(REFUSED) {
            Some(at) => {
                let command = line[..at].trim_end();
                format!(
                    "if {command}; then echo 'walkthrough: this was not refused: {}' >&2; exit 1; fi\n",
                    command.replace('\'', "")
                )
            }
            None => format!("{line}\n"),
        })
        .collect()
}

/// Four consecutive free loopback ports: authz, ARDS, the key server, the metrics listener.
fn free_ports() -> u16 {
    let seed = std::process::id() as u16;
    (0..200u16)
        .map(|i| 20_000 + (seed.wrapping_mul(7).wrapping_add(i * 3)) % 40_000)
        .find(|&p| (p..p + 4).all(|q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok()))
        .expect("four free consecutive ports")
}

/// Whatever the script left mounted under `dir` is detached, whatever it left running killed.
struct Cleanup {
    dir: PathBuf,
    group: Option<i32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for mnt in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
            if Path::new(mnt).starts_with(&self.dir) {
                csap_testkit::fuse::detach(Path::new(mnt));
            }
        }
        if let Some(group) = self.group {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(group),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn the_guides_walkthrough_runs_as_written() {
    if !csap_testkit::fuse::fuse_usable() {
        return;
    }
    let guide_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/guide.md");
    let guide = std::fs::read_to_string(&guide_path).unwrap();
    let blocks = walkthrough_blocks(&guide);
    assert!(blocks.len() >= 5, "the walkthrough lost its steps");
    let script: String = blocks.iter().map(|b| checked(b)).collect();

    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(CSAP).parent().unwrap();
    assert!(
        bin_dir.join("csap-view").exists(),
        "{} missing: build it with `cargo build -p csap-view`",
        bin_dir.join("csap-view").display()
    );
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let mut cleanup = Cleanup {
        dir: tmp.path().to_path_buf(),
        group: None,
    };
    let mut bash = Command::new("bash");
    // cargo test's LD_LIBRARY_PATH would make the mount refuse every program of the script.
    let child = csap_testkit::process::clean(&mut bash)
        .args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .env("PORT", free_ports().to_string())
        .env("TMPDIR", tmp.path()) // mktemp puts the walkthrough's directory here
        .env_remove("CSAP_LOG")
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cleanup.group = Some(child.id() as i32);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walkthrough failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("f0001.exr: 4194304 bytes; first bytes"),
        "csap-view did not show the frame:\n{stdout}"
    );
    assert!(
        stderr.contains("f0001.exr: Permission denied"),
        "cat was not refused with EACCES:\n{stderr}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("deny") && l.contains("show/f0001.exr")),
        "the audit tail lacks the denial:\n{stdout}"
    );
    // `csap org list` printed the seed's delegation table (CSAP Part 1 §8).
    for (vendor, delegated) in [
        ("acme-post", ["delegated", "delegated", "delegated"]),
        ("globex-vfx", ["delegated", "delegated", "production"]),
        ("cottage-sound", ["delegated", "production", "production"]),
        ("hamilton", ["production", "production", "production"]),
    ] {
        let row: Vec<&str> = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(vendor))
            .unwrap_or_else(|| panic!("csap org list lacks {vendor}:\n{stdout}"))
            .split_whitespace()
            .skip(1)
            .collect();
        assert_eq!(row, delegated, "{vendor}'s delegations");
    }
    assert!(
        stdout.contains("labkoat") && stdout.contains("show/f0001.exr"),
        "csap asset map list lacks the mapping:\n{stdout}"
    );
}

#[test]
fn refused_lines_become_checks() {
    let block = "echo hi\ncat f   # refused: Permission denied\n";
    let script = checked(block);
    assert!(script.starts_with("echo hi\nif cat f; then"), "{script}");
    let status = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &checked("true  # refused\n")])
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "a refused line that succeeds fails the script"
    );
}
