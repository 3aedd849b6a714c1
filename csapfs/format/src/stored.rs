//! The stored bytes of one asset as [`Asset`](crate::asset::Asset) reads and writes them:
//! positional I/O with no seek position, so readers share one asset, and so that whatever holds
//! the bytes — a local file, an object staged from a store — can back an asset.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::unix::fs::FileExt;

/// Positional access to the stored (encrypted) bytes of one asset.
///
/// What an implementation must guarantee: a read at an offset sees every write that returned
/// before it; `write_all_at` writes all of `buf` or fails; `size` is the stored length after
/// every write and `set_size` that returned; `sync_data` returns only once everything written
/// before it survives a crash. Nothing here is trusted: the asset authenticates every byte.
pub trait StoredBytes {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end (0 at or past it).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Reads consecutive bytes from `offset` into `bufs` in order, as [`Self::read_at`] would
    /// into one buffer: `preadv` where there is a file. By default one `read_at` into a joined
    /// buffer, then copied apart (a remote store reads whole ranges; its copy is not the cost).
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<usize> {
        let mut joined = vec![0u8; bufs.iter().map(|b| b.len()).sum()];
        let n = self.read_at(&mut joined, offset)?;
        let mut from = &joined[..n];
        for buf in bufs.iter_mut() {
            let take = buf.len().min(from.len());
            buf[..take].copy_from_slice(&from[..take]);
            from = &from[take..];
        }
        Ok(n)
    }
    /// Writes all of `buf` at `offset`, growing the stored bytes as needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The stored length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Cuts or extends (with zeros) the stored bytes to `size`.
    fn set_size(&self, size: u64) -> io::Result<()>;
    /// Makes every write so far durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Whether [`Self::sync_data`] stores every write so far as one whole or nothing (an object
    /// store's upload), never a part of them: then a write that must only ever follow the data
    /// to stable storage (clearing the appending mark) can go before it and be stored with it.
    fn syncs_whole(&self) -> bool {
        false
    }
}

impl StoredBytes for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }

    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<usize> {
        Ok(rustix::io::preadv(self, bufs, offset)?)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_size(&self, size: u64) -> io::Result<()> {
        self.set_len(size)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
}

impl<T: StoredBytes + ?Sized> StoredBytes for Box<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }

    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<usize> {
        (**self).read_vectored_at(bufs, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_all_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }

    fn set_size(&self, size: u64) -> io::Result<()> {
        (**self).set_size(size)
    }

    fn sync_data(&self) -> io::Result<()> {
        (**self).sync_data()
    }

    fn syncs_whole(&self) -> bool {
        (**self).syncs_whole()
    }
}
