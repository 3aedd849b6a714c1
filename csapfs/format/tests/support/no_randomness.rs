//! The OS random number generator failing, on one thread: a seccomp filter makes getrandom(2)
//! answer `EIO` there (the getrandom crate then reports an error; it falls back to a file only
//! on `ENOSYS` or `EPERM`). Shared by `csapfs/format/tests/randomness.rs` and
//! `csapfs/tests/write_faults.rs` (included by path).

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

pub const EIO: i32 = 5;

/// From now on getrandom(2) fails with `EIO` on the calling thread (the filter is the thread's
/// own; the rest of the process is unaffected).
pub fn deny_randomness_on_this_thread() {
    let filter = SeccompFilter::new(
        [(libc::SYS_getrandom, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(EIO as u32),
        std::env::consts::ARCH
            .try_into()
            .expect("a seccomp architecture"),
    )
    .expect("filter");
    let program: BpfProgram = filter.try_into().expect("BPF program");
    seccompiler::apply_filter(&program).expect("seccomp filter on this thread");
}
