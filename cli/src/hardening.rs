//! Process hardening of the daemons that hold keys (`csap mount`, `csap keyserver serve`,
//! `csap server`).

use anyhow::{Context, Result};

/// Makes this process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no core dump of its memory,
/// and its `/proc/<pid>/mem`, `environ`, `maps`, … and `ptrace` are refused to every process
/// without `CAP_SYS_PTRACE`, even one of the same uid. Root keeps that capability:
/// docs/security.md says what root can still do. Fails the start rather than run without it.
pub fn not_dumpable() -> Result<()> {
    nix::sys::prctl::set_dumpable(false)
        .context("cannot make this process non-dumpable (prctl PR_SET_DUMPABLE)")
}
