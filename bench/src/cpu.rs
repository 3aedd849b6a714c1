//! CPU time read from `/proc`: of this process, of its threads by name (the key servers' share
//! of a process that also runs the load generator), and of a process with its children
//! (PostgreSQL's postmaster and its backends). `/proc` counts in clock ticks of USER_HZ, which
//! Linux fixes at 100 per second whatever the kernel's own tick rate.

use std::path::Path;

const SECS_PER_TICK: f64 = 0.01;

/// Fields 3.. of a `stat` file (after the parenthesised command name, which may hold spaces):
/// index 0 is field 3 (state).
fn stat_fields(path: &Path) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    // The state is a letter: keep its slot so indices match the field numbers.
    Some(
        after
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime (fields 14, 15), and cutime + cstime (16, 17): the children waited for.
fn own_and_children(path: &Path) -> Option<(u64, u64, u64)> {
    let f = stat_fields(path)?;
    let ppid = *f.get(1)?;
    Some((f.get(11)? + f.get(12)?, f.get(13)? + f.get(14)?, ppid))
}

/// CPU seconds this process has used (all its threads, user and system).
pub(crate) fn process_secs() -> f64 {
    own_and_children(Path::new("/proc/self/stat")).map_or(0.0, |(own, _, _)| own as f64)
        * SECS_PER_TICK
}

/// CPU seconds of this process's live threads whose name starts with one of `prefixes`. A
/// thread that exited between two readings takes its time with it (tokio's blocking-pool
/// threads live 10 s idle, longer than the gaps measured here).
pub(crate) fn threads_secs(prefixes: &[&str]) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0;
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if prefixes.iter().any(|p| name.starts_with(p)) {
            ticks += own_and_children(&task.path().join("stat")).map_or(0, |(own, _, _)| own);
        }
    }
    ticks as f64 * SECS_PER_TICK
}

/// CPU seconds of process `root`, its exited children, and its live children (PostgreSQL:
/// the postmaster, backends that ended, and the backends and background workers running).
pub(crate) fn tree_secs(root: i32) -> f64 {
    let mut ticks = own_and_children(&Path::new("/proc").join(root.to_string()))
        .map_or(0, |(own, children, _)| own + children);
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            if !p
                .file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            if let Some((own, children, ppid)) = own_and_children(&p.path().join("stat")) {
                if ppid == root as u64 {
                    ticks += own + children;
                }
            }
        }
    }
    ticks as f64 * SECS_PER_TICK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_shows_in_its_process_and_under_its_name() {
        let (before, named_before) = (process_secs(), threads_secs(&["cpu-spin"]));
        let spin = std::thread::Builder::new()
            .name("cpu-spin".into())
            .spawn(|| {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < std::time::Duration::from_millis(300) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                threads_secs(&["cpu-spin"])
            })
            .unwrap();
        let named = spin.join().unwrap() - named_before;
        let total = process_secs() - before;
        assert!(named >= 0.1, "the spinning thread's own time: {named} s");
        assert!(total >= named, "process {total} s ≥ thread {named} s");
        assert_eq!(threads_secs(&["no-such-thread"]), 0.0);
    }
}
