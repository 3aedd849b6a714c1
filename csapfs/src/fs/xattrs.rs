//! Extended attributes. `user.*` attributes of a file are sealed together under the file's
//! own key (FORMAT.md §11: names and values encrypted, bound to the asset, a fresh nonce per
//! change) and kept by the storage beside its bytes; reading them is a read decision and
//! changing them a write decision, as for the file's content. A sealed set that fails to
//! authenticate is `EIO`, never garbage.
//!
//! Nothing else is stored: `trusted.*` is refused (`EPERM`: privileged attributes would have
//! to be kept from the very users who hold the file's key), and `security.*`, `system.*` (ACLs)
//! and unknown namespaces are not supported (`EOPNOTSUPP`); the kernel's own queries of them
//! (`security.capability` before a write, ACLs at `ls`) find nothing (`ENODATA`). Directories
//! have no key, so they take no user attributes (`EOPNOTSUPP`); symlinks and special files
//! take none, as on Linux (`EPERM`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use fuser::{Errno, Request};
use tracing::{debug, warn};

use super::handles::OpenInode;
use super::state::{io_errno, lock, CsapFs, StoredAsset};
use crate::keys::Access;
use crate::storage::{Kind, OpenMode, StoredObject};
use crate::xattrs::{XattrError, Xattrs};

/// `setxattr` flags (`<sys/xattr.h>`).
const XATTR_CREATE: i32 = nix::libc::XATTR_CREATE;
const XATTR_REPLACE: i32 = nix::libc::XATTR_REPLACE;

/// Where the attributes of a file are reached: through its open asset, or its stored bytes.
enum Found {
    Open(Arc<OpenInode>),
    Closed(Box<dyn StoredObject>),
}

impl Found {
    fn sealed(&self) -> std::io::Result<Option<Vec<u8>>> {
        match self {
            Found::Open(inode) => inode.read_asset().map_err(eio)?.file().sealed_xattrs(),
            Found::Closed(object) => object.sealed_xattrs(),
        }
    }
}

/// The file after its license was granted: its header authenticated.
enum Licensed {
    Open(Arc<OpenInode>),
    Asset(StoredAsset),
}

impl Licensed {
    fn store(&self, sealed: Option<&[u8]>) -> std::io::Result<()> {
        match self {
            Licensed::Open(inode) => inode
                .read_asset()
                .map_err(eio)?
                .file()
                .set_sealed_xattrs(sealed),
            Licensed::Asset(asset) => asset.file().set_sealed_xattrs(sealed),
        }
    }
}

/// Only `user.*` is kept; the errno for changing anything else.
fn refusal(name: &[u8]) -> Option<(Errno, &'static str)> {
    if name.starts_with(b"user.") {
        None
    } else if name.starts_with(b"trusted.") {
        Some((Errno::EPERM, "the mount keeps no trusted.* attributes: they would be readable by every holder of the file's key"))
    } else {
        Some((Errno::EOPNOTSUPP, "the mount keeps only user.* attributes (encrypted under the file's key); security.*, system.* and other namespaces are not supported"))
    }
}

impl CsapFs {
    pub(super) fn do_getxattr(
        &self,
        req: &Request,
        ino: u64,
        name: &OsStr,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, Errno> {
        if refusal(name.as_bytes()).is_some() {
            return Err(Errno::NO_XATTR);
        }
        self.with_xattrs(req, ino, Access::Read, |xattrs| {
            xattrs
                .get(name.as_bytes())
                .map(|value| zeroize::Zeroizing::new(value.to_vec()))
                .ok_or(Errno::NO_XATTR)
        })
    }

    /// The names, each followed by a NUL, as `listxattr` returns them.
    pub(super) fn do_listxattr(&self, req: &Request, ino: u64) -> Result<Vec<u8>, Errno> {
        self.with_xattrs(req, ino, Access::Read, |xattrs| {
            let mut list = Vec::new();
            for name in xattrs.names() {
                list.extend_from_slice(name);
                list.push(0);
            }
            Ok(list)
        })
    }

    pub(super) fn do_setxattr(
        &self,
        req: &Request,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        self.refuse_changes_outside_user(ino, name)?;
        self.with_xattrs(req, ino, Access::Write, |xattrs| {
            let exists = xattrs.contains(name.as_bytes());
            if flags & XATTR_CREATE != 0 && exists {
                return Err(Errno::EEXIST);
            }
            if flags & XATTR_REPLACE != 0 && !exists {
                return Err(Errno::NO_XATTR);
            }
            xattrs
                .insert(name.as_bytes(), value)
                .map_err(|_| Errno::ERANGE)
        })
    }

    pub(super) fn do_removexattr(
        &self,
        req: &Request,
        ino: u64,
        name: &OsStr,
    ) -> Result<(), Errno> {
        self.refuse_changes_outside_user(ino, name)?;
        self.with_xattrs(req, ino, Access::Write, |xattrs| {
            if xattrs.remove(name.as_bytes()) {
                Ok(())
            } else {
                Err(Errno::NO_XATTR)
            }
        })
    }

    fn refuse_changes_outside_user(&self, ino: u64, name: &OsStr) -> Result<(), Errno> {
        if let Some((errno, why)) = refusal(name.as_bytes()) {
            let path = self.rel_path(ino).unwrap_or_default();
            let path = Self::asset_path(&path);
            if self
                .xattr_refusal_told
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                debug!(%path, attribute = ?name, "extended attribute refused: {why}");
            } else {
                warn!(%path, attribute = ?name, "extended attribute refused: {why} (further refusals are logged at debug level)");
            }
            return Err(errno);
        }
        if self.read_only {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    /// Runs `f` on the user attributes of `ino`. With `Access::Read`, a file that has none needs
    /// no license (nothing is revealed but that there is nothing, which its storage shows
    /// anyway); otherwise the file is licensed for `access`, its attributes authenticated,
    /// and with `Access::Write` what `f` leaves is sealed again (fresh nonce) and stored.
    fn with_xattrs<T>(
        &self,
        req: &Request,
        ino: u64,
        access: Access,
        f: impl FnOnce(&mut Xattrs) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        // Read, change, store: one change at a time, or two would lose one of them.
        let _writing = (access == Access::Write).then(|| lock(&self.xattr_writes));
        let Some(found) = self.xattr_holder(ino, access)? else {
            return f(&mut Xattrs::new());
        };
        let sealed = found.sealed().map_err(io_errno)?;
        if sealed.is_none() && access == Access::Read {
            return f(&mut Xattrs::new());
        }
        // The decision, and the authenticated header the attributes are bound to.
        let rel = self.rel_path(ino)?;
        let (holder, header, licensed) = match found {
            Found::Closed(object) => {
                let (asset, licensed) = self.license_asset(req, ino, &rel, object, access)?;
                let header = *asset.header();
                (Licensed::Asset(asset), header, licensed)
            }
            Found::Open(inode) => {
                let licensed = self.license_open_inode(req, ino, &inode, access)?;
                let header = *inode.read_asset()?.header();
                (Licensed::Open(inode), header, licensed)
            }
        };
        let mut xattrs = match &sealed {
            Some(sealed) => Xattrs::open(sealed, &header, &licensed.key).map_err(|err| {
                self.report_bad_xattrs(&rel, &err);
                Errno::EIO
            })?,
            None => Xattrs::new(),
        };
        let result = f(&mut xattrs)?;
        if access == Access::Write {
            let resealed = match xattrs.is_empty() {
                true => None,
                false => Some(xattrs.seal(&header, &licensed.key).map_err(|err| {
                    warn!(path = %rel.display(), error = %err, "attributes not changed");
                    Errno::EIO
                })?),
            };
            holder.store(resealed.as_deref()).map_err(io_errno)?;
        }
        Ok(result)
    }

    /// The file whose attributes `ino` names: `None` for entries that hold none (reading finds
    /// nothing; changing is refused here with the errno Linux gives).
    fn xattr_holder(&self, ino: u64, access: Access) -> Result<Option<Found>, Errno> {
        if let Some(inode) = self.open_inode(ino) {
            return Ok(Some(Found::Open(inode)));
        }
        let rel = self.rel_path(ino)?;
        match self.storage.stat(&rel).map_err(io_errno)?.kind {
            Kind::File => {
                let object = self.storage.open(&rel, OpenMode::Read).map_err(io_errno)?;
                Ok(Some(Found::Closed(object)))
            }
            _ if access == Access::Read => Ok(None),
            Kind::Dir => {
                debug!(path = %Self::asset_path(&rel), "user attribute on a directory refused: a directory has no key to seal it under");
                Err(Errno::EOPNOTSUPP)
            }
            _ => Err(Errno::EPERM),
        }
    }

    fn report_bad_xattrs(&self, rel: &Path, err: &XattrError) {
        warn!(path = %Self::asset_path(rel), error = %err,
            "the sealed user attributes of this file are refused; reading or changing them fails with EIO");
    }
}

/// A refused open asset ([`super::asset_lock`]) as the I/O error its xattr store would give.
fn eio(_: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EIO)
}
