//! Where the mount gets content keys: the [`KeySource`] trait and the local key-file source.
//!
//! The key-file source is for development and break-glass recovery: every asset is keyed from
//! one 32-byte seed exactly as `csap asset encrypt --key-file` does. The key server's license
//! client implements the same trait for real use.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::crypto::{derive_content_key, ContentKey, RandomnessUnavailable, Seed};
use crate::format::{AssetId, FormatError, Header, KeyId, Suite};

/// The process on whose behalf a key is asked for (from the FUSE request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Policy says no: the caller gets `EACCES`.
    #[error("access denied: {0}")]
    Denied(String),
    /// No key could be had right now (key server unreachable, …): `EACCES`, and logged.
    #[error("key unavailable: {0}")]
    Unavailable(String),
    /// The asset is keyed to a key this source does not hold: `EIO`.
    #[error(
        "the asset is encrypted under key {asset_key}, not under this source's key {source_key}"
    )]
    WrongKey {
        asset_key: String,
        source_key: String,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The file is not the asset registered at this path, or an older version of it
    /// (FORMAT.md §7): `EIO`, audited by the source.
    #[error("asset refused: {0}")]
    Binding(String),
    /// No fresh asset id (the OS RNG failed): `EIO`.
    #[error(transparent)]
    Randomness(#[from] RandomnessUnavailable),
}

/// What a caller wants to do; the mount maps each FUSE operation to one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Open an existing asset for reading.
    Read,
    /// Open for writing, or change its size (truncate).
    Write,
    /// Create a new asset (and rename one to a new path).
    Create,
    /// Remove an asset (and rename one away from its old path).
    Delete,
}

/// The revocation flags of the licenses a key is held under: shared with the source, which
/// sets one when its license loses its allowing rule. Reads and writes on open handles check
/// them (an atomic load each), so a revocation reaches handles that are already open. A handle
/// opened for writing rests on two licenses (read and write) and ends with either.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    revoked: Vec<Arc<AtomicBool>>,
    /// Unix seconds after which the key may no longer be used (the earliest license end).
    not_after: Option<i64>,
}

impl Lease {
    /// A key that is never revoked and never expires (the local key-file source).
    pub fn permanent() -> Lease {
        Lease::default()
    }

    /// A lease tied to `flag` (true = revoked) that ends at `not_after` (unix seconds): a
    /// handle opened under a license stops reading when the license ends, even if no rule
    /// change ever revokes it and the key server is unreachable.
    pub fn tied_to(flag: Arc<AtomicBool>, not_after: i64) -> Lease {
        Lease {
            revoked: vec![flag],
            not_after: Some(not_after),
        }
    }

    /// A lease that holds only while both `self` and `other` hold (a key used under two
    /// licenses at once).
    pub fn and(mut self, other: Lease) -> Lease {
        self.revoked.extend(other.revoked);
        self.not_after = match (self.not_after, other.not_after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self
    }

    /// When the lease ends by time (unix seconds), if it does.
    pub fn not_after(&self) -> Option<i64> {
        self.not_after
    }

    /// Revoked, or past its end. An atomic load per license and one clock read (vDSO).
    pub fn is_revoked(&self) -> bool {
        self.revoked.iter().any(|f| f.load(Ordering::Acquire))
            || self
                .not_after
                .is_some_and(|end| expired(end, csap_base::clock::unix_now()))
    }
}

/// Past `end` — or unknowable, which counts as past: a license never outlives a broken clock.
fn expired(end: i64, now: Result<i64, csap_base::clock::ClockError>) -> bool {
    now.map_or(true, |now| now >= end)
}

#[cfg(test)]
fn unix_now() -> i64 {
    csap_base::clock::unix_now().expect("system clock usable")
}

/// A content key with the lease it is held under.
pub struct Licensed {
    pub key: ContentKey,
    pub lease: Lease,
}

impl fmt::Debug for Licensed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Licensed")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// Called after leases were revoked.
pub type RevocationListener = Arc<dyn Fn() + Send + Sync>;

/// A provider of content keys for the mount.
pub trait KeySource: Send + Sync + 'static {
    /// The key of an existing asset whose (not yet authenticated) header is `header`, for
    /// `access` (`Read` or `Write`). Called at every open, also when the asset is already open
    /// through another handle: each open is an authorization decision.
    fn open_key(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
        access: Access,
    ) -> Result<Licensed, KeyError>;
    /// A header for a new asset created at `path`, and its key with the lease the creator's
    /// handle holds it under (the create license: it ends with that license's rule).
    fn create_key(&self, caller: &Caller, path: &str) -> Result<(Header, Licensed), KeyError>;
    /// May `caller` do `access` on `path` (volume-relative)? Gates metadata operations
    /// (create, unlink, rename, truncate) before they touch the backing store. The default
    /// allows: a source without local rules leaves the decision to the key server.
    fn authorize(&self, _caller: &Caller, _path: &str, _access: Access) -> Result<(), KeyError> {
        Ok(())
    }
    /// Registers `listener`, called after each revocation sweep that revoked something (the
    /// mount drops cached plaintext pages of the affected files). The default never calls it:
    /// the source never revokes.
    fn on_revocation(&self, _listener: RevocationListener) {}
    /// May the asset whose header *authenticated* as `header` be served at `path`? Checks its
    /// registered path and write generation (FORMAT.md §7) and audits a refusal
    /// ([`KeyError::Binding`], answered with `EIO`). Called at every open, after the header
    /// MAC verified. The default binds nothing (the local key file has no registry).
    fn check_binding(
        &self,
        _caller: &Caller,
        _path: &str,
        _header: &Header,
    ) -> Result<(), KeyError> {
        Ok(())
    }
    /// Moves the asset of `header` (authenticated) to a new write generation before the first
    /// change an open of it makes: reserves the next generation, calls `write_header` to put
    /// it in the file's header (synced), then settles it (FORMAT.md §7). An error refuses
    /// the change. The default has no generations and never calls `write_header`.
    fn new_version(
        &self,
        _caller: &Caller,
        _path: &str,
        _header: &Header,
        _write_header: &mut dyn FnMut(u32) -> std::io::Result<()>,
    ) -> Result<(), KeyError> {
        Ok(())
    }
    /// Tells the source that an asset moved (so a key server's asset registry follows).
    /// The default does nothing.
    fn renamed(
        &self,
        _caller: &Caller,
        _header: &Header,
        _from: &str,
        _to: &str,
    ) -> Result<(), KeyError> {
        Ok(())
    }
}

/// Parameters for assets that a key source creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewAssetParams {
    pub suite: Suite,
    pub chunk_size: u32,
}

impl Default for NewAssetParams {
    fn default() -> Self {
        NewAssetParams {
            suite: Suite::Gcm,
            chunk_size: crate::format::DEFAULT_CHUNK_SIZE,
        }
    }
}

/// Every asset keyed from one local seed file (scope id = the seed's fingerprint, version 1).
pub struct KeyFileSource {
    seed: Seed,
    key_id: KeyId,
    params: NewAssetParams,
}

impl KeyFileSource {
    pub fn new(seed: Seed, params: NewAssetParams) -> KeyFileSource {
        let key_id = key_file_key_id(&seed);
        KeyFileSource {
            seed,
            key_id,
            params,
        }
    }

    /// The key of an asset keyed from this seed, refusing assets of other keys up front.
    pub fn key_for(&self, header: &Header) -> Result<ContentKey, KeyError> {
        if header.key_id != self.key_id {
            return Err(KeyError::WrongKey {
                asset_key: header.key_id.to_string(),
                source_key: self.key_id.to_string(),
            });
        }
        Ok(derive_content_key(&self.seed, &header.asset_id))
    }

    /// A header and key for a new asset.
    pub fn new_asset(&self) -> Result<(Header, ContentKey), KeyError> {
        let header = Header::new(
            self.params.suite,
            self.params.chunk_size,
            AssetId::random()?,
            self.key_id,
        )?;
        let key = derive_content_key(&self.seed, &header.asset_id);
        Ok((header, key))
    }
}

/// The key id that assets keyed from a seed file carry.
pub fn key_file_key_id(seed: &Seed) -> KeyId {
    KeyId {
        scope: seed.key_file_scope_id(),
        version: 1,
    }
}

impl KeySource for KeyFileSource {
    fn open_key(
        &self,
        _caller: &Caller,
        _path: &str,
        header: &Header,
        _access: Access,
    ) -> Result<Licensed, KeyError> {
        Ok(Licensed {
            key: self.key_for(header)?,
            lease: Lease::permanent(),
        })
    }

    fn create_key(&self, _caller: &Caller, _path: &str) -> Result<(Header, Licensed), KeyError> {
        let (header, key) = self.new_asset()?;
        Ok((
            header,
            Licensed {
                key,
                lease: Lease::permanent(),
            },
        ))
    }
}

impl fmt::Debug for KeyFileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFileSource")
            .field("key_id", &self.key_id.to_string())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_ends_when_revoked_or_when_its_license_ends() {
        assert!(!Lease::permanent().is_revoked());
        let flag = Arc::new(AtomicBool::new(false));
        let live = Lease::tied_to(flag.clone(), unix_now() + 3600);
        assert!(!live.is_revoked());
        flag.store(true, Ordering::Release);
        assert!(live.is_revoked(), "revocation flag ignored");
        let expired = Lease::tied_to(Arc::new(AtomicBool::new(false)), unix_now() - 1);
        assert!(expired.is_revoked(), "a lease past not_after still reads");
    }

    /// Issue 11: a clock that cannot be read (before the epoch, unset) used to read as 0, so
    /// every license looked live; now the lease counts as ended.
    #[test]
    fn a_lease_ends_when_the_clock_is_unusable() {
        let end = unix_now() + 3600;
        assert!(!expired(end, Ok(unix_now())));
        assert!(expired(end, Err(csap_base::clock::ClockError::BeforeEpoch)));
        assert!(expired(
            end,
            csap_base::clock::unix_seconds(std::time::UNIX_EPOCH)
        ));
    }

    #[test]
    fn a_lease_on_two_licenses_ends_with_either() {
        let (read, write) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let both = Lease::tied_to(read.clone(), unix_now() + 3600)
            .and(Lease::tied_to(write.clone(), unix_now() + 7200));
        assert!(!both.is_revoked());
        write.store(true, Ordering::Release);
        assert!(both.is_revoked(), "the second license's revocation ignored");
        read.store(false, Ordering::Release);
        let ends_early = Lease::tied_to(read, unix_now() + 3600).and(Lease::tied_to(
            Arc::new(AtomicBool::new(false)),
            unix_now() - 1,
        ));
        assert!(ends_early.is_revoked(), "the earlier license end ignored");
        assert!(!Lease::permanent().and(Lease::permanent()).is_revoked());
    }
}
