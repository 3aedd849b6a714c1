//! Reads of stored bytes that live in the object store: ranged GETs aligned to the asset's
//! stored chunks (so a chunk is fetched whole, once, and authenticated whole by the asset),
//! consecutive missing chunks coalesced into one GET, and sequential readers served ahead by
//! concurrent GETs of the next window. Fetched chunks live in one byte-bounded cache shared by
//! every open object; a chunk being fetched is awaited, never fetched twice.
//!
//! Nothing here is trusted: the asset above authenticates every chunk, so a tampered object
//! fails that chunk's read (`EIO`) and nothing else.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use rustix::io::Errno;

use crate::format::{Header, CHUNK_OVERHEAD, HEADER_LEN};

/// Block length when the object is no asset (its header does not decode): the asset layer
/// refuses it anyway, this only bounds what one read fetches.
const OPAQUE_BLOCK: u64 = 1 << 20;
/// Largest single GET of consecutive blocks.
const MAX_RUN_BYTES: u64 = 8 << 20;

/// Why a fetch failed, cloneable so that every waiter of a shared fetch gets it.
#[derive(Debug, Clone)]
pub(super) enum FetchError {
    NotFound,
    /// The object is not the one opened (its ETag changed, or it is shorter now).
    Changed,
    TimedOut,
    Failed,
}

impl FetchError {
    /// The errno for the mount, with the sentence logged once per failed fetch (in `fetch`).
    pub(super) fn to_io(&self) -> io::Error {
        match self {
            FetchError::NotFound => io::Error::from(Errno::NOENT),
            _ => io::Error::from(Errno::IO),
        }
    }
}

type RunFuture = Shared<BoxFuture<'static, Result<Bytes, FetchError>>>;
/// Each block being fetched: the GET that brings it and where it lies in that GET's bytes.
type InFlight = HashMap<(u64, u64), (RunFuture, Range<u64>)>;

/// What a read waits for, per block.
enum Wait {
    Ready(Bytes),
    Run(RunFuture, Range<u64>),
    Failed,
}

/// How an object's stored bytes are cut into blocks: the 96-byte header, then one block per
/// stored chunk (chunk size + nonce + tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    pub header_len: u64,
    pub block_len: u64,
}

impl Layout {
    /// The layout of an object whose first bytes are `head` (the header, if it is an asset).
    pub(super) fn from_head(head: &[u8]) -> Layout {
        match Header::decode_unauthenticated(head) {
            Ok(header) => Layout {
                header_len: HEADER_LEN,
                block_len: u64::from(header.chunk_size) + CHUNK_OVERHEAD,
            },
            Err(_) => Layout {
                header_len: 0,
                block_len: OPAQUE_BLOCK,
            },
        }
    }

    /// Block numbers: 0 is the header (when there is one), then 1 + chunk index.
    fn block_of(&self, offset: u64) -> u64 {
        if offset < self.header_len {
            0
        } else {
            1 + (offset - self.header_len) / self.block_len
        }
    }

    /// The stored byte range of `block`, cut at `size`.
    fn range_of(&self, block: u64, size: u64) -> Range<u64> {
        let (start, len) = if block == 0 {
            (0, self.header_len)
        } else {
            (
                self.header_len + (block - 1) * self.block_len,
                self.block_len,
            )
        };
        start.min(size)..(start + len).min(size)
    }
}

/// The object being read: where it is and which version of it was opened.
#[derive(Clone)]
pub(super) struct Source {
    /// Names this open object in the cache (never reused).
    pub id: u64,
    pub path: ObjectPath,
    /// The ETag the object had when opened: a replaced object is refused, never mixed in.
    pub etag: Option<String>,
    pub size: u64,
}

impl Source {
    /// Refuses a GET's answer that is not from the version opened, as the store refuses an
    /// unmet `If-Match`. The header asks the server, but not every S3-compatible server honours
    /// it on GET (s3s-fs ignores it), so the answer's own ETag is checked too; a pinned open
    /// whose answer carries no ETag fails closed.
    pub(super) fn check_answer(
        &self,
        answer: &object_store::ObjectMeta,
    ) -> Result<(), object_store::Error> {
        match &self.etag {
            Some(opened) if answer.e_tag.as_deref() != Some(opened.as_str()) => {
                Err(object_store::Error::Precondition {
                    path: self.path.to_string(),
                    source: format!("answered with ETag {:?}, opened at {opened}", answer.e_tag)
                        .into(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// The shared chunk cache and the fetches in flight.
pub(super) struct Blocks {
    store: Arc<dyn ObjectStore>,
    cache: moka::sync::Cache<(u64, u64), Bytes>,
    inflight: Mutex<InFlight>,
    timeout: Duration,
    /// Bytes the store answered with, all GETs together (readahead included).
    fetched: AtomicU64,
}

impl Blocks {
    pub(super) fn new(store: Arc<dyn ObjectStore>, cache_bytes: u64, timeout: Duration) -> Blocks {
        Blocks {
            store,
            cache: moka::sync::Cache::builder()
                .weigher(|_, bytes: &Bytes| u32::try_from(bytes.len()).unwrap_or(u32::MAX))
                .max_capacity(cache_bytes)
                .build(),
            inflight: Mutex::new(HashMap::new()),
            timeout,
            fetched: AtomicU64::new(0),
        }
    }

    /// Fetches the first bytes of `source` (its header) and tells its layout.
    pub(super) fn layout(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        source: &Source,
    ) -> io::Result<Layout> {
        let probe = Layout {
            header_len: HEADER_LEN,
            block_len: OPAQUE_BLOCK,
        };
        let head = self.read_blocks(rt, source, probe, 0..1)?;
        let head = head.first().cloned().unwrap_or_default();
        let layout = Layout::from_head(&head);
        if layout.header_len == 0 {
            // Block 0 under the probe layout is not block 0 of this one.
            self.cache.invalidate(&(source.id, 0));
        }
        Ok(layout)
    }

    /// Reads `buf.len()` bytes at `offset` (fewer only at the end), from the cache or the
    /// store. Returns the count and the block after the last one read.
    pub(super) fn read_at(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        source: &Source,
        layout: Layout,
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<(usize, u64)> {
        if offset >= source.size || buf.is_empty() {
            return Ok((0, 0));
        }
        let end = source.size.min(offset + buf.len() as u64);
        let first = layout.block_of(offset);
        let last = layout.block_of(end - 1);
        let blocks = self.read_blocks(rt, source, layout, first..last + 1)?;
        let mut copied = 0usize;
        for (block, bytes) in (first..=last).zip(blocks) {
            let range = layout.range_of(block, source.size);
            if bytes.len() as u64 != range.end - range.start {
                return Err(FetchError::Changed.to_io());
            }
            let from = offset.max(range.start);
            let to = end.min(range.end);
            let piece = &bytes[(from - range.start) as usize..(to - range.start) as usize];
            buf[copied..copied + piece.len()].copy_from_slice(piece);
            copied += piece.len();
        }
        Ok((copied, last + 1))
    }

    /// Every block of `blocks`, waiting for fetches in flight and starting the missing ones.
    fn read_blocks(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        source: &Source,
        layout: Layout,
        blocks: Range<u64>,
    ) -> io::Result<Vec<Bytes>> {
        // Fast path: everything cached, no runtime round trip.
        let cached: Vec<Option<Bytes>> = blocks
            .clone()
            .map(|b| self.cache.get(&(source.id, b)))
            .collect();
        if cached.iter().all(Option::is_some) {
            return Ok(cached.into_iter().flatten().collect());
        }
        let waits: Vec<Wait> = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            self.start_missing(rt, &mut inflight, source, layout, blocks.clone());
            blocks
                .clone()
                .zip(cached)
                .map(
                    |(b, hit)| match hit.or_else(|| self.cache.get(&(source.id, b))) {
                        Some(bytes) => Wait::Ready(bytes),
                        // Neither cached nor in flight: its fetch just failed (and logged why).
                        None => match inflight.get(&(source.id, b)) {
                            Some((run, within)) => Wait::Run(run.clone(), within.clone()),
                            None => Wait::Failed,
                        },
                    },
                )
                .collect()
        };
        let limit = self.timeout;
        let joined = rt.block_on(async move {
            let mut out = Vec::with_capacity(waits.len());
            for wait in waits {
                out.push(match wait {
                    Wait::Ready(bytes) => Ok(bytes),
                    Wait::Failed => Err(FetchError::Failed),
                    Wait::Run(run, within) => match tokio::time::timeout(limit, run).await {
                        Err(_) => Err(FetchError::TimedOut),
                        Ok(Err(err)) => Err(err),
                        Ok(Ok(run)) if within.end as usize <= run.len() => {
                            Ok(run.slice(within.start as usize..within.end as usize))
                        }
                        Ok(Ok(_)) => Err(FetchError::Changed),
                    },
                });
            }
            out
        });
        joined
            .into_iter()
            .map(|got| got.map_err(|err| err.to_io()))
            .collect()
    }

    /// Bytes fetched from the store so far.
    pub(super) fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Starts fetches of the blocks ahead of a sequential reader.
    pub(super) fn read_ahead(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        source: &Source,
        layout: Layout,
        blocks: Range<u64>,
    ) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        self.start_missing(rt, &mut inflight, source, layout, blocks);
    }

    /// Starts fetches of the blocks of `blocks` that are neither cached nor in flight:
    /// consecutive ones in one GET (up to [`MAX_RUN_BYTES`]), the GETs concurrently.
    fn start_missing(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        inflight: &mut InFlight,
        source: &Source,
        layout: Layout,
        blocks: Range<u64>,
    ) {
        let mut run: Vec<u64> = Vec::new();
        let max_blocks = (MAX_RUN_BYTES / layout.block_len).max(1) as usize;
        for block in blocks {
            let missing = !layout.range_of(block, source.size).is_empty()
                && !inflight.contains_key(&(source.id, block))
                && !self.cache.contains_key(&(source.id, block));
            if missing && run.len() < max_blocks {
                run.push(block);
                continue;
            }
            self.start_run(rt, inflight, source, layout, &run);
            run.clear();
            if missing {
                run.push(block);
            }
        }
        self.start_run(rt, inflight, source, layout, &run);
    }

    fn start_run(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        inflight: &mut InFlight,
        source: &Source,
        layout: Layout,
        run: &[u64],
    ) {
        let (Some(&first), Some(&last)) = (run.first(), run.last()) else {
            return;
        };
        let span =
            layout.range_of(first, source.size).start..layout.range_of(last, source.size).end;
        let this = self.clone();
        let (src, blocks) = (source.clone(), run.to_vec());
        let fetch = async move {
            let got = this.fetch(&src, span.clone()).await;
            if let Ok(bytes) = &got {
                for &b in &blocks {
                    let r = layout.range_of(b, src.size);
                    let piece =
                        bytes.slice((r.start - span.start) as usize..(r.end - span.start) as usize);
                    this.cache.insert((src.id, b), piece);
                }
            }
            let mut inflight = this.inflight.lock().unwrap_or_else(|p| p.into_inner());
            for &b in &blocks {
                inflight.remove(&(src.id, b));
            }
            got
        }
        .boxed()
        .shared();
        for &b in run {
            let r = layout.range_of(b, source.size);
            let start = layout.range_of(first, source.size).start;
            inflight.insert(
                (source.id, b),
                (fetch.clone(), r.start - start..r.end - start),
            );
        }
        // Runs to completion even if nobody waits (readahead).
        rt.spawn(fetch);
    }

    /// One ranged GET, pinned to the opened version.
    async fn fetch(&self, source: &Source, range: Range<u64>) -> Result<Bytes, FetchError> {
        let key = source.path.as_ref();
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            if_match: source.etag.clone(),
            ..GetOptions::default()
        };
        let get = async {
            let got = self.store.get_opts(&source.path, options).await?;
            source.check_answer(&got.meta)?;
            got.bytes().await
        };
        let bytes = match tokio::time::timeout(self.timeout, get).await {
            Err(_) => {
                tracing::warn!(key, "reading bytes {range:?} of {key} got no answer from the object store within {:?}; is the server reachable?", self.timeout);
                return Err(FetchError::TimedOut);
            }
            Ok(Err(object_store::Error::NotFound { .. })) => return Err(FetchError::NotFound),
            Ok(Err(object_store::Error::Precondition { .. })) => {
                tracing::warn!(
                    key,
                    "{key} changed in the object store while it was open here; reopen the file"
                );
                return Err(FetchError::Changed);
            }
            Ok(Err(err)) => {
                tracing::warn!(key, error = %err, "reading bytes {range:?} of {key} from the object store failed: {err}");
                return Err(FetchError::Failed);
            }
            Ok(Ok(bytes)) => bytes,
        };
        self.fetched
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if bytes.len() as u64 != range.end - range.start {
            tracing::warn!(
                key,
                "{key} is shorter in the object store than when it was opened; reopen the file"
            );
            return Err(FetchError::Changed);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_stored_chunks() {
        let layout = Layout {
            header_len: 96,
            block_len: 4096 + 28,
        };
        assert_eq!(layout.block_of(0), 0);
        assert_eq!(layout.block_of(95), 0);
        assert_eq!(layout.block_of(96), 1);
        assert_eq!(layout.block_of(96 + 4124), 2);
        assert_eq!(layout.range_of(0, 10_000), 0..96);
        assert_eq!(layout.range_of(1, 10_000), 96..96 + 4124);
        // The last block is cut at the stored size.
        assert_eq!(layout.range_of(3, 9000), 96 + 2 * 4124..9000);
        assert!(layout.range_of(4, 9000).is_empty());
    }

    #[test]
    fn an_object_that_is_no_asset_is_read_in_fixed_blocks() {
        let layout = Layout::from_head(b"not an asset at all");
        assert_eq!(layout.header_len, 0);
        assert_eq!(layout.block_of(0), 1);
        assert_eq!(layout.range_of(1, 10), 0..10);
    }
}
