//! One encrypted asset file on disk: random-access reads, read-modify-write of chunks with fresh
//! nonces, truncation up and down, holes, and recovery of a tail torn by a crash.
//!
//! I/O is positional (`pread`/`pwrite` through [`StoredBytes`], a local [`File`] by default), so
//! readers of one [`Asset`] share it without a seek position; writers need `&mut`, which the
//! filesystem gets from a per-file lock.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, IoSliceMut};

use tracing::warn;

use crate::crypto::{AssetKeys, ContentKey, RandomnessUnavailable};
use crate::format::{
    open_chunk, open_chunk_detached, seal_chunk, FormatError, Header, Layout, StoredLength,
    CHUNK_OVERHEAD, FLAG_APPENDING, FLAG_SPARSE, HEADER_LEN, NONCE_LEN, TAG_LEN,
};
use crate::stored::StoredBytes;

/// A gap longer than this many chunks, opened by a write past EOF or a truncate up, is left as a
/// hole in the backing file (see FORMAT.md "Holes") instead of being encrypted as zeros.
const HOLE_THRESHOLD_CHUNKS: u64 = 16;
/// How many chunks one `pwrite` carries at most, bounding the write buffer.
const WRITE_BATCH_CHUNKS: u64 = 16;
/// How far back from a torn tail recovery looks for the last chunk sealed as final.
const TORN_TAIL_SCAN_CHUNKS: u64 = 256;
/// A read, or a run of chunks to seal, is split across two cores from this many chunks and
/// bytes on: below it, handing half to another thread costs more than it saves.
const PARALLEL_MIN_CHUNKS: u64 = 4;
const PARALLEL_MIN_BYTES: usize = 256 << 10;

thread_local! {
    /// Per-thread (chunks read in part, nonces and tags of whole chunks) for the read path, so
    /// it does not allocate per call.
    static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// Per-thread (sealed batch, one chunk's plaintext) buffers for the write path.
    static WRITE_SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// A chunk's stored bytes beyond its plaintext: nonce and tag.
const OVERHEAD: usize = CHUNK_OVERHEAD as usize;

/// One chunk of a read: where its plaintext goes and how much of it is wanted.
struct Piece {
    index: u64,
    plain_len: usize,
    /// The read wants all of it: its ciphertext is read straight into the caller's buffer.
    whole: bool,
    /// The wanted range within the chunk's plaintext.
    from: usize,
    to: usize,
    /// Where the wanted range goes in the caller's buffer.
    at: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("chunk {chunk_index} failed authentication (tampered or corrupt); its plaintext is withheld")]
    Authentication { chunk_index: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
    /// No fresh nonce: the chunk was not sealed (and nothing of it written).
    #[error(transparent)]
    Randomness(#[from] RandomnessUnavailable),
}

impl AssetError {
    /// The errno a filesystem should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            AssetError::Io(err) => err.raw_os_error().unwrap_or(libc_eio()),
            _ => libc_eio(),
        }
    }
}

const fn libc_eio() -> i32 {
    5 // EIO on every Linux architecture
}

/// An open asset: its verified header, its keys and its plaintext size.
pub struct Asset<F = File> {
    file: F,
    header: Header,
    keys: AssetKeys,
    layout: Layout,
    plain_size: u64,
    /// The stored file carries bytes past `stored_len(plain_size)` left by a crash; the next
    /// mutation cuts them.
    torn_tail: bool,
}

/// Reads and strictly decodes the header of an asset without authenticating it (to learn which
/// key to ask for). Nothing it returns may be trusted before [`Asset::open`] verifies it.
pub fn read_header<F: StoredBytes + ?Sized>(file: &F) -> Result<Header, AssetError> {
    let mut bytes = [0u8; HEADER_LEN as usize];
    let n = read_full_at(file, &mut bytes, 0)?;
    Ok(Header::decode_unauthenticated(&bytes[..n])?)
}

/// Plaintext size of an asset from its stored length, without reading data (for `getattr`).
/// A torn tail counts as absent.
pub fn plain_size_of(layout: Layout, stored_len: u64) -> u64 {
    match layout.classify(stored_len) {
        StoredLength::Valid(size) => size,
        StoredLength::Torn { whole_chunks_plain } => whole_chunks_plain,
    }
}

impl<F: StoredBytes> Asset<F> {
    /// Starts a new asset in `file` (which must be empty): header and one empty final chunk.
    pub fn create(file: F, header: Header, key: &ContentKey) -> Result<Asset<F>, AssetError> {
        let keys = AssetKeys::new(header.suite, key);
        let asset = Asset {
            file,
            layout: header.layout(),
            header,
            keys,
            plain_size: 0,
            torn_tail: false,
        };
        asset.file.set_size(0)?;
        asset.write_header()?;
        let mut empty = [0u8; CHUNK_OVERHEAD as usize];
        seal_chunk(
            &asset.keys,
            &asset.header.asset_id,
            0,
            true,
            &[],
            &mut empty,
        )?;
        asset.file.write_all_at(&empty, HEADER_LEN)?;
        Ok(asset)
    }

    /// Opens an existing asset, verifying its header under `key`. Strict: a stored length that
    /// no well-formed asset has is an error (truncated or extended file).
    pub fn open(file: F, key: &ContentKey) -> Result<Asset<F>, AssetError> {
        let (mut asset, stored_len) = Self::open_header(file, key)?;
        match asset.layout.classify(stored_len) {
            StoredLength::Valid(size) => asset.plain_size = size,
            StoredLength::Torn { .. } => return Err(FormatError::InvalidLength(stored_len).into()),
        }
        Ok(asset)
    }

    /// Opens an asset that a crash may have left with a torn tail (the filesystem's open).
    ///
    /// The consistent state is the one whose final chunk authenticates *as final*. If the chunk
    /// the stored length names as final does not, look back for the last chunk that does: bytes
    /// after it were written after the last consistent state (a crash during an append) and are
    /// ignored, then cut by the next mutation. An attacker cannot forge the final flag, so a
    /// truncation finds no such chunk: the asset then opens at its stored length and the cut
    /// chunk fails to read (`EIO` for that range only), or, if the length is not even
    /// well-formed, the open fails.
    pub fn open_recovering(file: F, key: &ContentKey) -> Result<Asset<F>, AssetError> {
        let (mut asset, stored_len) = Self::open_header(file, key)?;
        if asset.header.flags & FLAG_APPENDING != 0 {
            // An extension was under way. While the chunk that was final before it still
            // authenticates as final, the extension did not finish: return to that size (its
            // data is intact; the extension's was never synced).
            let base = asset.header.append_base;
            let base_final = asset.layout.chunk_count(base) - 1;
            if asset.layout.stored_len(base) <= stored_len
                && asset.chunk_authenticates_as_final(base_final, base)
            {
                if asset.layout.stored_len(base) < stored_len {
                    warn!(asset = %asset.header.asset_id, plain_size = base,
                        "asset was being extended when its writer stopped; using the size before");
                    asset.torn_tail = true;
                }
                asset.plain_size = base;
                return Ok(asset);
            }
        }
        let (candidate, whole_chunks) = match asset.layout.classify(stored_len) {
            StoredLength::Valid(size) => (Some(size), asset.layout.chunk_count(size)),
            StoredLength::Torn { whole_chunks_plain } => {
                (None, whole_chunks_plain / asset.layout.chunk_size)
            }
        };
        if let Some(size) = candidate {
            if asset.chunk_authenticates_as_final(asset.layout.chunk_count(size) - 1, size) {
                asset.plain_size = size;
                return Ok(asset);
            }
        }
        let lowest = whole_chunks.saturating_sub(TORN_TAIL_SCAN_CHUNKS);
        for index in (lowest..whole_chunks).rev() {
            let size = (index + 1) * asset.layout.chunk_size;
            if candidate != Some(size) && asset.chunk_authenticates_as_final(index, size) {
                warn!(asset = %asset.header.asset_id, chunk_index = index, stored_len,
                    "asset has a torn tail (a crash during a write); using its last consistent size");
                asset.plain_size = size;
                asset.torn_tail = true;
                return Ok(asset);
            }
        }
        match candidate {
            Some(size) => {
                warn!(asset = %asset.header.asset_id, "the final chunk does not authenticate: tampered or truncated");
                asset.plain_size = size;
                Ok(asset)
            }
            None => Err(FormatError::InvalidLength(stored_len).into()),
        }
    }

    fn open_header(file: F, key: &ContentKey) -> Result<(Asset<F>, u64), AssetError> {
        let mut bytes = [0u8; HEADER_LEN as usize];
        let n = read_full_at(&file, &mut bytes, 0)?;
        let header = Header::decode_unauthenticated(&bytes[..n])?;
        let keys = AssetKeys::new(header.suite, key);
        Header::verify(&bytes, &keys)?;
        let stored_len = file.size()?;
        let asset = Asset {
            file,
            layout: header.layout(),
            header,
            keys,
            plain_size: 0,
            torn_tail: false,
        };
        Ok((asset, stored_len))
    }

    fn chunk_authenticates_as_final(&self, index: u64, size: u64) -> bool {
        let len = (self.layout.chunk_plain_len(index, size) + CHUNK_OVERHEAD) as usize;
        let mut stored = vec![0u8; len];
        read_full_at(&self.file, &mut stored, self.layout.chunk_offset(index)).ok() == Some(len)
            && open_chunk(&self.keys, &self.header.asset_id, index, true, &mut stored).is_ok()
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn plain_size(&self) -> u64 {
        self.plain_size
    }

    pub fn file(&self) -> &F {
        &self.file
    }

    /// Reads plaintext at `offset` into `buf`; short only at end of file. Every chunk is
    /// authenticated before the read returns; on an error `buf` is zeroed, so nothing of the
    /// read (neither the failed chunk nor its neighbours) can be used by mistake.
    ///
    /// A read of many chunks is split in two halves, the second read and decrypted by a pool
    /// thread while the caller does the first: a single sequential reader (`dd`, one request in
    /// flight) otherwise leaves every core but one idle (docs/benchmarks.md).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, AssetError>
    where
        F: Sync,
    {
        if offset >= self.plain_size || buf.is_empty() {
            return Ok(0);
        }
        let end = self.plain_size.min(offset.saturating_add(buf.len() as u64));
        let buf = &mut buf[..(end - offset) as usize];
        let cs = self.layout.chunk_size;
        let (first, last) = (offset / cs, (end - 1) / cs);
        let chunks = last - first + 1;
        let result = if chunks < PARALLEL_MIN_CHUNKS || buf.len() < PARALLEL_MIN_BYTES {
            self.read_span(offset, buf)
        } else {
            let split = (first + chunks / 2) * cs; // a chunk boundary inside the read
            let (head, tail) = buf.split_at_mut((split - offset) as usize);
            let mut tail_result = None;
            let head_result = rayon_core::in_place_scope(|scope| {
                scope.spawn(|_| tail_result = Some(self.read_span(split, tail)));
                self.read_span(offset, head)
            });
            let tail_result = tail_result.expect("the scope waits for its spawned half");
            head_result.and_then(|head| Ok(head + tail_result?))
        };
        if result.is_err() {
            buf.fill(0);
        }
        result
    }

    /// [`Self::read_at`] on the calling thread alone, in one `preadv`: a chunk the read covers
    /// whole has its ciphertext read straight into `buf`, where it is decrypted in place (its
    /// nonce and tag go to a side table); a chunk covered in part (at most the first and the
    /// last) is read whole into scratch, opened there and the wanted piece copied out.
    fn read_span(&self, offset: u64, buf: &mut [u8]) -> Result<usize, AssetError> {
        if offset >= self.plain_size || buf.is_empty() {
            return Ok(0);
        }
        let end = self.plain_size.min(offset.saturating_add(buf.len() as u64));
        let buf = &mut buf[..(end - offset) as usize];
        let cs = self.layout.chunk_size;
        let pieces: Vec<Piece> = (offset / cs..=(end - 1) / cs)
            .map(|index| {
                let chunk_start = index * cs;
                let plain_len = self.layout.chunk_plain_len(index, self.plain_size);
                let from = offset.max(chunk_start) - chunk_start;
                let to = end.min(chunk_start + plain_len) - chunk_start;
                Piece {
                    index,
                    plain_len: plain_len as usize,
                    whole: from == 0 && to == plain_len,
                    from: from as usize,
                    to: to as usize,
                    at: (chunk_start + from - offset) as usize,
                }
            })
            .collect();
        let stored_start = self.layout.chunk_offset(pieces[0].index);
        SCRATCH.with(|scratch| {
            let (scratch, side) = &mut *scratch.borrow_mut();
            let parts = pieces.iter().filter(|p| !p.whole);
            scratch.resize(parts.map(|p| p.plain_len + OVERHEAD).sum(), 0);
            side.resize(pieces.iter().filter(|p| p.whole).count() * OVERHEAD, 0);
            self.read_pieces(&pieces, stored_start, buf, scratch, side)?;
            let (mut scratch, mut side) = (&mut scratch[..], &side[..]);
            for piece in &pieces {
                if piece.whole {
                    let (nonce_tag, rest) = side.split_at(OVERHEAD);
                    side = rest;
                    let data = &mut buf[piece.at..piece.at + piece.plain_len];
                    self.open_whole_chunk(piece.index, nonce_tag, data)?;
                } else {
                    let (stored, rest) =
                        std::mem::take(&mut scratch).split_at_mut(piece.plain_len + OVERHEAD);
                    scratch = rest;
                    let plain = self.open_stored_chunk(piece.index, stored)?;
                    let wanted = piece.to - piece.from;
                    buf[piece.at..piece.at + wanted].copy_from_slice(&plain[piece.from..piece.to]);
                }
            }
            Ok(buf.len())
        })
    }

    /// The one `preadv` of [`Self::read_span`], repeated from where it stopped if the kernel
    /// returns short; the stored bytes ending first means the file shrank under us.
    fn read_pieces(
        &self,
        pieces: &[Piece],
        stored_start: u64,
        buf: &mut [u8],
        scratch: &mut [u8],
        side: &mut [u8],
    ) -> Result<(), AssetError> {
        let mut iov: Vec<IoSliceMut<'_>> = Vec::with_capacity(pieces.len() * 3);
        let (mut buf, mut scratch, mut side) = (buf, scratch, side);
        let mut buf_at = 0;
        for piece in pieces {
            if piece.whole {
                let (nonce_tag, rest) = std::mem::take(&mut side).split_at_mut(OVERHEAD);
                side = rest;
                let (nonce, tag) = nonce_tag.split_at_mut(NONCE_LEN);
                let rest = std::mem::take(&mut buf).split_at_mut(piece.at - buf_at).1;
                let (data, rest) = rest.split_at_mut(piece.plain_len);
                buf = rest;
                buf_at = piece.at + piece.plain_len;
                iov.extend([nonce, data, tag].map(IoSliceMut::new));
            } else {
                let (stored, rest) =
                    std::mem::take(&mut scratch).split_at_mut(piece.plain_len + OVERHEAD);
                scratch = rest;
                iov.push(IoSliceMut::new(stored));
            }
        }
        let mut iov = &mut iov[..];
        let mut at = stored_start;
        while !iov.is_empty() {
            match self.file.read_vectored_at(iov, at) {
                Ok(0) => {
                    // The file shrank under us (another writer outside the mount): nothing to trust.
                    return Err(AssetError::Authentication {
                        chunk_index: (at.saturating_sub(HEADER_LEN))
                            / self.layout.stored_chunk_size(),
                    });
                }
                Ok(n) => {
                    IoSliceMut::advance_slices(&mut iov, n);
                    at += n as u64;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// Verifies and decrypts, in place in `data`, a chunk read apart from its nonce and tag
    /// (`nonce_tag`: 12 + 16 bytes). A hole of a sparse asset reads as zeros.
    fn open_whole_chunk(
        &self,
        index: u64,
        nonce_tag: &[u8],
        data: &mut [u8],
    ) -> Result<(), AssetError> {
        let is_final = index + 1 == self.layout.chunk_count(self.plain_size);
        if self.header.is_sparse()
            && !is_final
            && nonce_tag.iter().all(|&b| b == 0)
            && data.iter().all(|&b| b == 0)
        {
            return Ok(());
        }
        let (nonce, tag) = nonce_tag.split_at(NONCE_LEN);
        let nonce: &[u8; NONCE_LEN] = nonce.try_into().expect("NONCE_LEN bytes");
        let tag: &[u8; TAG_LEN] = tag.try_into().expect("TAG_LEN bytes");
        open_chunk_detached(
            &self.keys,
            &self.header.asset_id,
            index,
            is_final,
            nonce,
            data,
            tag,
        )
        .map_err(|_| {
            warn!(asset = %self.header.asset_id, chunk_index = index, "chunk failed authentication");
            AssetError::Authentication { chunk_index: index }
        })
    }

    /// Verifies and decrypts one stored chunk in place. A hole (all-zero interior chunk of a
    /// sparse asset) reads as zeros.
    fn open_stored_chunk<'a>(
        &self,
        index: u64,
        stored: &'a mut [u8],
    ) -> Result<&'a mut [u8], AssetError> {
        let is_final = index + 1 == self.layout.chunk_count(self.plain_size);
        if self.header.is_sparse() && !is_final && stored.iter().all(|&b| b == 0) {
            let len = stored.len() - CHUNK_OVERHEAD as usize;
            return Ok(&mut stored[..len]);
        }
        open_chunk(&self.keys, &self.header.asset_id, index, is_final, stored).map_err(|_| {
            warn!(asset = %self.header.asset_id, chunk_index = index, "chunk failed authentication");
            AssetError::Authentication { chunk_index: index }
        })
    }

    /// Writes `data` at `offset`, growing the asset as needed (a gap reads as zeros).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), AssetError>
    where
        F: Sync,
    {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(too_large)?;
        self.rewrite(self.plain_size.max(end), Some((offset, data)))
    }

    /// Truncates or extends the asset to `size` plaintext bytes; extension reads as zeros.
    pub fn set_len(&mut self, size: u64) -> Result<(), AssetError>
    where
        F: Sync,
    {
        if size == self.plain_size && !self.torn_tail {
            return Ok(());
        }
        self.rewrite(size, None)
    }

    /// Makes everything written so far durable. Afterwards the asset is consistent as it
    /// stands, so the appending mark (FORMAT.md §6) is cleared: after the data is durable on a
    /// file (a crash before must still find the mark), with the data where a sync stores all
    /// or nothing (an object's upload) — there, a clear written after the sync would be left
    /// unstored, and the next flush of the unchanged object would download it to store it.
    pub fn sync(&mut self) -> Result<(), AssetError> {
        let appending = self.header.flags & FLAG_APPENDING != 0;
        if appending && self.file.syncs_whole() {
            self.clear_appending()?;
            return Ok(self.file.sync_data()?);
        }
        self.file.sync_data()?;
        if appending {
            self.clear_appending()?;
        }
        Ok(())
    }

    fn clear_appending(&mut self) -> Result<(), AssetError> {
        self.header.flags &= !FLAG_APPENDING;
        self.header.append_base = 0;
        self.write_header()
    }

    /// Puts the asset at write generation `generation` (FORMAT.md §7): one header `pwrite`,
    /// then synced, so the key server is told to settle on it only once it is on disk.
    pub fn set_generation(&mut self, generation: u32) -> Result<(), AssetError> {
        self.header = self.header.with_generation(generation);
        self.write_header()?;
        self.file.sync_data()?;
        Ok(())
    }

    /// The one mutation path: re-seals every chunk whose content, length or finality changes,
    /// each with a fresh nonce, then fixes the file length.
    fn rewrite(&mut self, new_size: u64, write: Option<(u64, &[u8])>) -> Result<(), AssetError>
    where
        F: Sync,
    {
        let layout = self.layout;
        let old_size = self.plain_size;
        let old_final = layout.chunk_count(old_size) - 1;
        let new_final = layout.chunk_count(new_size) - 1;
        let data_chunks = write.map(|(offset, data)| {
            (
                offset / layout.chunk_size,
                (offset + data.len() as u64 - 1) / layout.chunk_size,
            )
        });

        // Runs of chunk indices to seal, and the zero-filled gap (if any) to leave as a hole.
        let mut runs: Vec<(u64, u64)> = Vec::with_capacity(2);
        if new_size > old_size {
            let first_data = data_chunks.map_or(new_final, |(first, _)| first);
            // Chunks up to the old final one (re-sealed as non-final) form their own run, which
            // is written last: a `pwrite` cut short by SIGKILL stops between pages, so the old
            // final chunk must not share one with the new tail.
            runs.push((old_final.min(first_data), old_final));
            let mut header = self.header;
            if new_final > old_final {
                let gap = first_data.saturating_sub(old_final + 1);
                let tail_start = if gap > HOLE_THRESHOLD_CHUNKS {
                    header.flags |= FLAG_SPARSE;
                    first_data
                } else {
                    old_final + 1
                };
                runs.push((tail_start, new_final));
            }
            // Record the size before this extension, so that recovery can return to it if a
            // crash stops the extension halfway (FORMAT.md §6). One 96-byte `pwrite`.
            header.flags |= FLAG_APPENDING;
            header.append_base = old_size;
            if header != self.header {
                self.header = header;
                self.write_header()?;
            }
        } else {
            if let Some(range) = data_chunks {
                runs.push(range);
            }
            if new_size < old_size || self.torn_tail {
                runs.push((new_final, new_final));
            }
        }

        // Highest run first, so an append puts its new tail down before the old final chunk is
        // re-sealed as non-final: a crash in between leaves a tail that recovery can find.
        runs.sort_unstable();
        runs.dedup();
        for &(first, last) in runs.iter().rev() {
            self.seal_run(first, last, old_size, new_size, write)?;
        }
        if new_size < old_size || self.torn_tail {
            self.file.set_size(layout.stored_len(new_size))?;
            self.torn_tail = false;
        }
        self.plain_size = new_size;
        Ok(())
    }

    /// Seals and writes chunks `first..=last`, highest batch first. A run of many chunks is
    /// split in two halves, the upper one sealed on a pool thread while the caller seals the
    /// lower: runs are the unit of ordering against a crash (see `rewrite`), the chunks within
    /// one are independent, and one writer (`dd`, one request in flight) would use one core.
    fn seal_run(
        &self,
        first: u64,
        last: u64,
        old_size: u64,
        new_size: u64,
        write: Option<(u64, &[u8])>,
    ) -> Result<(), AssetError>
    where
        F: Sync,
    {
        let chunks = last - first + 1;
        let bytes = chunks.saturating_mul(self.layout.chunk_size);
        if chunks < PARALLEL_MIN_CHUNKS || bytes < PARALLEL_MIN_BYTES as u64 {
            return self.seal_batches(first, last, old_size, new_size, write);
        }
        let mid = first + chunks / 2;
        let mut upper = None;
        let lower = rayon_core::in_place_scope(|scope| {
            scope.spawn(|_| upper = Some(self.seal_batches(mid, last, old_size, new_size, write)));
            self.seal_batches(first, mid - 1, old_size, new_size, write)
        });
        upper.expect("the scope waits for its spawned half")?;
        lower
    }

    fn seal_batches(
        &self,
        first: u64,
        last: u64,
        old_size: u64,
        new_size: u64,
        write: Option<(u64, &[u8])>,
    ) -> Result<(), AssetError> {
        let mut batch_end = last + 1;
        while batch_end > first {
            let batch_start = batch_end.saturating_sub(WRITE_BATCH_CHUNKS).max(first);
            self.seal_batch(batch_start, batch_end - 1, old_size, new_size, write)?;
            batch_end = batch_start;
        }
        Ok(())
    }

    /// Seals chunks `first..=last` of the new content into one buffer and writes it at once.
    fn seal_batch(
        &self,
        first: u64,
        last: u64,
        old_size: u64,
        new_size: u64,
        write: Option<(u64, &[u8])>,
    ) -> Result<(), AssetError> {
        let layout = self.layout;
        let new_final = layout.chunk_count(new_size) - 1;
        let start = layout.chunk_offset(first);
        let stored_end =
            layout.chunk_offset(last) + layout.chunk_plain_len(last, new_size) + CHUNK_OVERHEAD;
        WRITE_SCRATCH.with(|scratch| {
            let (out, plain) = &mut *scratch.borrow_mut();
            out.resize((stored_end - start) as usize, 0);
            plain.resize(layout.chunk_size as usize, 0);
            let mut at = 0usize;
            let sealed = (first..=last).try_for_each(|index| {
                let new_len = layout.chunk_plain_len(index, new_size) as usize;
                let plain = &mut plain[..new_len];
                self.chunk_content(index, old_size, write, plain)?;
                let stored_len = new_len + CHUNK_OVERHEAD as usize;
                seal_chunk(
                    &self.keys,
                    &self.header.asset_id,
                    index,
                    index == new_final,
                    plain,
                    &mut out[at..at + stored_len],
                )?;
                at += stored_len;
                Ok::<(), AssetError>(())
            });
            // Plaintext must not linger in a buffer that outlives this write, failed or not.
            plain.fill(0);
            sealed?;
            self.file.write_all_at(&out[..at], start)?;
            Ok(())
        })
    }

    /// Fills `plain` (the chunk's new length) with its new content: the old content where it
    /// exists and the write does not cover it, zeros beyond the old end, then the written bytes.
    fn chunk_content(
        &self,
        index: u64,
        old_size: u64,
        write: Option<(u64, &[u8])>,
        plain: &mut [u8],
    ) -> Result<(), AssetError> {
        let chunk_start = index * self.layout.chunk_size;
        let chunk_end = chunk_start + plain.len() as u64;
        let covered = write.map_or((0, 0), |(offset, data)| {
            (
                offset.max(chunk_start),
                (offset + data.len() as u64).min(chunk_end),
            )
        });
        let fully_covered = covered.0 == chunk_start && covered.1 == chunk_end;
        let old_len = if chunk_start < old_size {
            self.layout
                .chunk_plain_len(index, old_size)
                .min(plain.len() as u64)
        } else {
            0
        };
        plain.fill(0);
        if old_len > 0 && !fully_covered {
            let n = self.read_span(chunk_start, &mut plain[..old_len as usize])?;
            debug_assert_eq!(n as u64, old_len);
        }
        if let Some((offset, data)) = write {
            if covered.0 < covered.1 {
                let src = &data[(covered.0 - offset) as usize..(covered.1 - offset) as usize];
                plain[(covered.0 - chunk_start) as usize..(covered.1 - chunk_start) as usize]
                    .copy_from_slice(src);
            }
        }
        Ok(())
    }

    /// The header is 96 bytes at offset 0, inside one page: one `pwrite` puts it down whole.
    fn write_header(&self) -> Result<(), AssetError> {
        self.file.write_all_at(&self.header.encode(&self.keys), 0)?;
        Ok(())
    }
}

impl<F> std::fmt::Debug for Asset<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asset")
            .field("asset_id", &self.header.asset_id)
            .field("plain_size", &self.plain_size)
            .finish_non_exhaustive()
    }
}

fn too_large() -> AssetError {
    AssetError::Io(io::Error::new(
        io::ErrorKind::InvalidInput,
        "offset beyond the largest file size",
    ))
}

/// `pread` until `buf` is full or end of file; returns the bytes read.
fn read_full_at<F: StoredBytes + ?Sized>(
    file: &F,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(done)
}
