//! `mknod`: nodes that hold no content — FIFOs, sockets (a Unix-socket `bind` on the mount
//! arrives here), device nodes — are stored as themselves, with nothing to encrypt; a regular
//! file made by `mknod(S_IFREG)` is an empty asset, made exactly as `create` makes one.
//!
//! Devices are made as on any filesystem (the kernel lets only privileged callers ask), but
//! the mount is `nodev` unless `-o dev` is given, so they cannot be opened through it.

use std::ffi::OsStr;

use fuser::{Errno, FileAttr, Request};
use nix::libc::{S_IFBLK, S_IFCHR, S_IFIFO, S_IFMT, S_IFREG, S_IFSOCK};

use super::attributes::decode_fuse_rdev;
use super::state::{io_errno, CsapFs};
use crate::storage::Special;

impl CsapFs {
    pub(super) fn do_mknod(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<FileAttr, Errno> {
        let perm = mode & 0o7777;
        let node = match mode & S_IFMT {
            // Type 0 is a regular file too (POSIX).
            0 | S_IFREG => {
                // The creator holds no handle: the asset is complete once made.
                let (attr, _asset, _lease) = self.create_asset(req, parent, name, perm)?;
                return Ok(attr);
            }
            S_IFIFO => Special::Fifo,
            S_IFSOCK => Special::Socket,
            S_IFCHR | S_IFBLK => {
                let (major, minor) = decode_fuse_rdev(rdev);
                if mode & S_IFMT == S_IFCHR {
                    Special::CharDevice { major, minor }
                } else {
                    Special::BlockDevice { major, minor }
                }
            }
            _ => return Err(Errno::EINVAL),
        };
        if self.read_only {
            return Err(Errno::EROFS);
        }
        let rel = self.child_rel(parent, name)?;
        self.storage
            .make_special(&rel, node, perm, Self::owner(req))
            .map_err(io_errno)?;
        self.entry(&rel, true)
    }
}
