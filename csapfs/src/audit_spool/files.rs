//! The spool directory on disk: its owner-only mode, `state.json` (the spool id and the highest
//! acknowledged seq, replaced atomically and durably), and the records of `spool.jsonl` not yet
//! acknowledged (a torn last line, from a crash mid-append, is cut off).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use keyserver_client::wire::MountAuditRecord;

use super::{io_err, SpoolError};

pub(super) fn create_private_dir(dir: &Path) -> Result<(), SpoolError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// A fresh random spool id; an unusable OS RNG is an error (the mount does not start).
pub(super) fn new_spool_id() -> Result<String, SpoolError> {
    let mut id = [0u8; 16];
    getrandom::getrandom(&mut id).map_err(|e| SpoolError::Randomness(e.to_string()))?;
    Ok(hex::encode(id))
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct State {
    pub(super) spool: String,
    pub(super) acked: u64,
}

pub(super) fn load_state(path: &Path) -> Result<Option<State>, SpoolError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SpoolError::State {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Replaces the state file atomically and durably (`csap-base`'s secret-file writer).
pub(super) fn save_state(path: &Path, state: &State) -> Result<(), SpoolError> {
    let bytes = serde_json::to_vec(state).expect("state serializes");
    csap_base::files::write_secret(path, &bytes).map_err(io_err(path))
}

/// The spooled records after `acked`, with their line sizes, and the highest seq in the
/// file. A torn last line (a crash mid-append) is cut off; other unreadable lines are
/// skipped and logged.
pub(super) fn load_unacked(
    file: &File,
    path: &Path,
    acked: u64,
) -> Result<(VecDeque<(MountAuditRecord, u64)>, u64), SpoolError> {
    let mut unacked = VecDeque::new();
    let mut last_seq = 0;
    let mut good_len = 0u64;
    let mut torn = false;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err(path))? as u64;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            torn = true;
            break;
        }
        good_len += n;
        match serde_json::from_slice::<MountAuditRecord>(&line) {
            Ok(r) => {
                last_seq = last_seq.max(r.seq);
                if r.seq > acked {
                    unacked.push_back((r, n));
                }
            }
            Err(e) => {
                tracing::error!(spool = %path.display(), error = %e, "unreadable audit spool line skipped")
            }
        }
    }
    if torn {
        tracing::warn!(spool = %path.display(), "audit spool ends in a torn line (crash mid-write); cut off");
        file.set_len(good_len).map_err(io_err(path))?;
    }
    Ok((unacked, last_seq))
}
