//! Assets bound to their registered path and write generation (FORMAT.md §7): what the key
//! server has on record for an asset, and whether a file opened at a path may be served.
//! Pure: no I/O; the key source supplies the record, the mount the authenticated header.

use std::fmt;

use crate::format::Header;

/// What the key server has recorded for one asset (from an authenticated license or answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Volume-relative path the asset is registered at (`show/f0001.exr`).
    pub path: String,
    /// The recorded write generation.
    pub generation: u32,
    /// A next generation a writer reserved and has not settled.
    pub pending: Option<u32>,
}

/// Why a file may not be served where it was opened. Each is answered with `EIO` and audited
/// with [`Refusal::code`] as the reason's first word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The asset is registered at another path: moved or swapped behind the mount's back.
    PathMismatch { registered: String, opened: String },
    /// The file is older than the recorded generation: an older authentic copy put back.
    Rollback { file: u32, recorded: u32 },
    /// The file names a generation the key server never handed out (newer than any on record).
    UnknownGeneration {
        file: u32,
        recorded: u32,
        pending: Option<u32>,
    },
}

impl Refusal {
    /// The audit reason code: `path_mismatch`, `rollback` or `unknown_generation`.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::PathMismatch { .. } => "path_mismatch",
            Refusal::Rollback { .. } => "rollback",
            Refusal::UnknownGeneration { .. } => "unknown_generation",
        }
    }

    /// Whether a fresher record could turn this refusal into an acceptance (the asset was
    /// renamed or rewritten through another mount since this one's record). A rollback never
    /// can: generations only grow.
    pub fn may_be_stale(&self) -> bool {
        !matches!(self, Refusal::Rollback { .. })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::PathMismatch { registered, opened } => write!(
                f,
                "path_mismatch: the asset is registered at {registered:?}, opened at {opened:?}"
            ),
            Refusal::Rollback { file, recorded } => write!(
                f,
                "rollback: the file is at write generation {file}, the key server recorded {recorded}"
            ),
            Refusal::UnknownGeneration {
                file,
                recorded,
                pending,
            } => write!(
                f,
                "unknown_generation: the file is at write generation {file}, the key server recorded {recorded} (pending {pending:?})"
            ),
        }
    }
}

/// May the asset whose header authenticated as `header` be served at `opened` (volume
/// relative, no leading slash)? Its path must be the registered one and its generation the
/// recorded or the pending one (a writer may have crashed between putting the pending one in
/// the file and settling it; FORMAT.md §7).
pub fn check(registered: &Registered, opened: &str, header: &Header) -> Result<(), Refusal> {
    if registered.path != opened {
        return Err(Refusal::PathMismatch {
            registered: registered.path.clone(),
            opened: opened.to_string(),
        });
    }
    let file = header.generation;
    if file == registered.generation || Some(file) == registered.pending {
        return Ok(());
    }
    if file < registered.generation {
        return Err(Refusal::Rollback {
            file,
            recorded: registered.generation,
        });
    }
    Err(Refusal::UnknownGeneration {
        file,
        recorded: registered.generation,
        pending: registered.pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{AssetId, KeyId, ScopeId, Suite, DEFAULT_CHUNK_SIZE};

    fn header(generation: u32) -> Header {
        Header::new(
            Suite::Gcm,
            DEFAULT_CHUNK_SIZE,
            AssetId([1; 16]),
            KeyId {
                scope: ScopeId([2; 16]),
                version: 1,
            },
        )
        .unwrap()
        .with_generation(generation)
    }

    fn at(generation: u32, pending: Option<u32>) -> Registered {
        Registered {
            path: "show/f1.exr".into(),
            generation,
            pending,
        }
    }

    #[test]
    fn the_recorded_and_the_pending_generation_are_accepted() {
        assert_eq!(check(&at(3, None), "show/f1.exr", &header(3)), Ok(()));
        assert_eq!(check(&at(3, Some(4)), "show/f1.exr", &header(3)), Ok(()));
        assert_eq!(check(&at(3, Some(4)), "show/f1.exr", &header(4)), Ok(()));
        // A version-1-era header (no generation flag) is generation 0.
        assert_eq!(check(&at(0, None), "show/f1.exr", &header(0)), Ok(()));
    }

    #[test]
    fn an_older_generation_is_a_rollback() {
        let refusal = check(&at(3, Some(4)), "show/f1.exr", &header(2)).unwrap_err();
        assert_eq!(refusal.code(), "rollback");
        assert!(!refusal.may_be_stale());
        let legacy = check(&at(1, None), "show/f1.exr", &header(0)).unwrap_err();
        assert_eq!(legacy.code(), "rollback");
    }

    #[test]
    fn a_generation_never_handed_out_is_refused() {
        let refusal = check(&at(3, None), "show/f1.exr", &header(4)).unwrap_err();
        assert_eq!(refusal.code(), "unknown_generation");
        assert!(refusal.may_be_stale());
    }

    #[test]
    fn another_path_is_refused_before_the_generation() {
        let refusal = check(&at(3, None), "show/f2.exr", &header(1)).unwrap_err();
        assert_eq!(refusal.code(), "path_mismatch");
        assert!(refusal.to_string().starts_with("path_mismatch: "));
    }
}
