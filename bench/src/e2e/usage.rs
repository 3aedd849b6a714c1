//! What a measurement cost: CPU time of the processes involved and of the whole machine, and
//! optional `perf` profiles of them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use csap_testkit::Proc;

use crate::report::dur;

/// CPU time (user + system, all threads, exited ones included) a process has used so far.
/// /proc reports it in USER_HZ ticks, 100 per second on Linux.
pub fn cpu_ns(pid: nix::unistd::Pid) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<u64>() * 10_000_000
}

/// Busy and total CPU ticks of the whole machine (all processes, all cores) from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// What the mount and the machine spent during one phase.
pub struct Snap {
    mount: u64,
    machine: (u64, u64),
}

impl Snap {
    pub fn now(mount: nix::unistd::Pid) -> Snap {
        Snap {
            mount: cpu_ns(mount),
            machine: machine_ticks(),
        }
    }
    /// "mount CPU x s/GB; machine y % busy" since `self`, for `bytes` read.
    pub fn since(&self, mount: nix::unistd::Pid, bytes: u64) -> String {
        let now = Snap::now(mount);
        let cpu_s = now.mount.saturating_sub(self.mount) as f64 / 1e9;
        let busy = now.machine.0.saturating_sub(self.machine.0) as f64;
        let total = now.machine.1.saturating_sub(self.machine.1).max(1) as f64;
        format!(
            "mount CPU {:.2} s/GB; machine {:.0} % busy",
            cpu_s / (bytes as f64 / 1e9),
            100.0 * busy / total
        )
    }
}

pub fn per_op(cpu: u64, ops: usize) -> String {
    dur(cpu / ops.max(1) as u64)
}

/// `perf record` of some processes while a measurement runs (BENCH_PERF_DIR).
pub struct Perf(Option<Proc>);

impl Perf {
    pub fn start(dir: Option<&Path>, pids: &[nix::unistd::Pid], name: &str) -> Result<Perf> {
        let Some(dir) = dir else {
            return Ok(Perf(None));
        };
        std::fs::create_dir_all(dir)?;
        let out = dir.join(format!("perf.{name}.data"));
        let mut perf = Command::new("perf");
        perf.args(["record", "-F", "1999", "-g", "-p"])
            .arg(
                pids.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let proc = Proc::spawn(&mut perf, "perf (apt-get install linux-perf)")?;
        std::thread::sleep(Duration::from_millis(300));
        println!("> perf: recording pids {pids:?} into {}\n", out.display());
        Ok(Perf(Some(proc)))
    }

    pub fn stop(mut self) {
        if let Some(p) = self.0.as_mut() {
            // perf writes its file on SIGINT.
            p.signal(nix::sys::signal::Signal::SIGINT);
            let _ = p.child().wait();
        }
    }
}
