//! What the mount is told when the object store fails: the errno a local filesystem would give
//! (`ENOENT`, `EEXIST`) where the store's answer means that, else `EIO` with one logged
//! sentence naming the operation, the object and the cause (never a credential: object_store's
//! errors carry the request, not the signing key).

use std::io;
use std::time::Duration;

use rustix::io::Errno;

/// Maps an object_store error of operation `what` on `key` to an `io::Error`.
pub(super) fn store_error(what: &str, key: &str, err: object_store::Error) -> io::Error {
    match err {
        object_store::Error::NotFound { .. } => io::Error::from(Errno::NOENT),
        object_store::Error::AlreadyExists { .. } => io::Error::from(Errno::EXIST),
        object_store::Error::Precondition { .. } => {
            tracing::warn!(
                "{what} of {key} failed: the object changed in the store while it was open here; reopen the file"
            );
            io::Error::from(Errno::IO)
        }
        other => {
            tracing::warn!("{what} of {key} failed in the object store: {other}");
            io::Error::from(Errno::IO)
        }
    }
}

/// The error of an operation that took longer than the configured timeout.
pub(super) fn timed_out(what: &str, key: &str, limit: Duration) -> io::Error {
    tracing::warn!(
        "{what} of {key} got no answer from the object store within {limit:?}; is the server reachable?"
    );
    io::Error::from(Errno::IO)
}

/// `EIO` with a logged sentence, for failures that are not the store's (local staging).
pub(super) fn local_error(what: &str, key: &str, err: io::Error) -> io::Error {
    tracing::warn!("{what} of {key} failed locally: {err}");
    io::Error::from(Errno::IO)
}
