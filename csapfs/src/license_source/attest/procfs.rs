//! What attestation reads from `/proc/<pid>` besides the mappings: the start time (PID reuse),
//! the thread group, and the loader variables of the environment (a cheap pre-check).

use std::io;
use std::path::Path;

use super::{code, AttestError};

pub(super) fn unreadable(pid: u32, what: &'static str, source: io::Error) -> AttestError {
    if source.kind() == io::ErrorKind::NotFound
        || source.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32)
    {
        AttestError::Gone { pid }
    } else {
        AttestError::Unreadable { pid, what, source }
    }
}

/// Field 22 (`starttime`) of `DIR/stat` where `DIR` is `/proc/<pid>`.
pub fn start_time(proc_pid_dir: &Path, pid: u32) -> Result<u64, AttestError> {
    let stat = std::fs::read_to_string(proc_pid_dir.join("stat"))
        .map_err(|e| unreadable(pid, "stat", e))?;
    parse_start_time(&stat).ok_or(AttestError::BadStat { pid })
}

/// The `Tgid:` line of `DIR/status`: the process a thread belongs to.
pub(super) fn thread_group(proc_pid_dir: &Path, pid: u32) -> Result<u32, AttestError> {
    let status = std::fs::read_to_string(proc_pid_dir.join("status"))
        .map_err(|e| unreadable(pid, "status", e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(AttestError::BadStat { pid })
}

/// `pid (comm) state ppid …`: comm may hold spaces and parentheses, so fields are counted
/// after the last `)`; the first field there is field 3 (state), so starttime is the 20th.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

/// Refuses environments that inject code the executable's digest does not cover.
pub fn check_environ(pid: u32, environ: &[u8]) -> Result<(), AttestError> {
    for var in environ.split(|b| *b == 0) {
        let Some(eq) = var.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (name, value) = (&var[..eq], &var[eq + 1..]);
        match name {
            // ld.so ignores empty values, so they inject nothing.
            b"LD_PRELOAD" if !value.is_empty() => {
                return Err(AttestError::Injection {
                    pid,
                    var: "LD_PRELOAD",
                });
            }
            b"LD_AUDIT" if !value.is_empty() => {
                return Err(AttestError::Injection {
                    pid,
                    var: "LD_AUDIT",
                });
            }
            b"LD_LIBRARY_PATH" => {
                // ld.so splits on ':' and ';'; an empty entry means the current directory.
                for entry in value.split(|b| *b == b':' || *b == b';') {
                    let entry = String::from_utf8_lossy(entry);
                    if !code::below_system_lib_dir(&entry) {
                        return Err(AttestError::LibraryPath {
                            pid,
                            entry: entry.into_owned(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}
