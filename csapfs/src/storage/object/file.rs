//! One open object: read through ranged GETs ([`super::blocks`]) until the first change, then
//! staged whole in an unlinked local file and uploaded on `sync_data` (the mount's `fsync`, and
//! its `close` through [`StoredObject::syncs_at_close`]).
//!
//! The staged file holds exactly what the object holds: sealed chunks. The mount encrypts
//! before it writes, so plaintext never reaches the local disk here either. The staged file is
//! created unlinked (`O_TMPFILE`), so a crash leaves nothing behind; what was not uploaded is
//! lost, as unsynced data is on a local filesystem.
//!
//! An upload replaces the object in one step: a single PUT, or a multipart upload completed
//! only once every part is stored (S3 shows neither until it completes), so the object under
//! its key is always one whole version.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use object_store::{GetOptions, PutMode, PutOptions, PutPayload, WriteMultipart};

use super::blocks::{Layout, Source};
use super::errors::{local_error, store_error, timed_out};
use super::{Inner, Meta};
use crate::storage::{Attr, StoredBytes, StoredObject};

/// Objects up to this size go up in one PUT; larger ones in parts of this size.
pub(super) const PART_SIZE: usize = 8 << 20;
/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// What one open object is, shared with the storage's table of open objects (renames and
/// unlinks reach it there).
pub(super) struct OpenState {
    /// The volume-relative path it is stored under now.
    pub rel: Mutex<String>,
    /// Created here and never uploaded: it exists only in this process.
    pub pending: AtomicBool,
    /// Its name was removed while open: nothing is uploaded any more.
    pub unlinked: AtomicBool,
    pub body: RwLock<Body>,
    pub mtime: Mutex<SystemTime>,
}

pub(super) enum Body {
    /// Served by ranged GETs of this version.
    Remote {
        source: Source,
        layout: Arc<OnceLock<Layout>>,
    },
    /// Staged locally (ciphertext), uploaded on sync when dirty.
    Staged { file: File, dirty: AtomicBool },
}

impl OpenState {
    pub(super) fn size(&self) -> io::Result<u64> {
        match &*self.body.read().unwrap_or_else(|p| p.into_inner()) {
            Body::Remote { source, .. } => Ok(source.size),
            Body::Staged { file, .. } => Ok(file.metadata()?.len()),
        }
    }
}

/// How far from the end of the last read a read may start and still count as sequential
/// (a few of the kernel's largest read requests).
const SEQUENTIAL_SLACK: u64 = 4 << 20;

/// The stored bytes of one asset in the object store.
pub(super) struct ObjectFile {
    pub inner: Arc<Inner>,
    pub state: Arc<OpenState>,
    /// The next block a sequential reader asks for; a read starting there reads ahead.
    next_block_offset: AtomicU64,
    /// Blocks before this one were asked for ahead of the reader already.
    ahead_until: AtomicU64,
}

impl ObjectFile {
    pub(super) fn new(inner: Arc<Inner>, state: Arc<OpenState>) -> ObjectFile {
        inner.open_objects.register(&state);
        ObjectFile {
            inner,
            state,
            next_block_offset: AtomicU64::new(0),
            ahead_until: AtomicU64::new(0),
        }
    }

    fn rel(&self) -> String {
        self.state
            .rel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes the body local (downloading the object once) so that it can change.
    fn stage(&self) -> io::Result<()> {
        let mut body = self.state.body.write().unwrap_or_else(|p| p.into_inner());
        let Body::Remote { source, .. } = &*body else {
            return Ok(());
        };
        let rel = self.rel();
        let mut file = self.inner.staging_file(&rel)?;
        if source.size > 0 {
            self.download(source, &mut file, &rel)?;
        }
        *body = Body::Staged {
            file,
            dirty: AtomicBool::new(false),
        };
        Ok(())
    }

    fn download(&self, source: &Source, file: &mut File, rel: &str) -> io::Result<()> {
        let key = source.path.as_ref().to_string();
        let limit = self.inner.config.timeout;
        let options = GetOptions {
            if_match: source.etag.clone(),
            ..GetOptions::default()
        };
        let store = self.inner.store.clone();
        let path = source.path.clone();
        let written = self.inner.rt.handle().block_on(async {
            let got = tokio::time::timeout(limit, store.get_opts(&path, options))
                .await
                .map_err(|_| timed_out("staging for a write", &key, limit))?
                .map_err(|err| store_error("staging for a write", &key, err))?;
            source
                .check_answer(&got.meta)
                .map_err(|err| store_error("staging for a write", &key, err))?;
            let mut stream = got.into_stream();
            let mut written = 0u64;
            loop {
                let piece = tokio::time::timeout(limit, stream.next())
                    .await
                    .map_err(|_| timed_out("staging for a write", &key, limit))?;
                let Some(piece) = piece else { break };
                let piece = piece.map_err(|err| store_error("staging for a write", &key, err))?;
                file.write_all(&piece)
                    .map_err(|err| local_error("staging for a write", rel, err))?;
                written += piece.len() as u64;
            }
            Ok::<u64, io::Error>(written)
        })?;
        if written != source.size {
            return Err(store_error(
                "staging for a write",
                &key,
                object_store::Error::Generic {
                    store: "S3",
                    source: format!("{written} bytes received, {} expected", source.size).into(),
                },
            ));
        }
        Ok(())
    }

    /// Uploads the staged body under the object's current key.
    fn upload(&self, file: &File) -> io::Result<()> {
        let rel = self.rel();
        let size = upload(&self.inner, &rel, file, false)?;
        self.state.pending.store(false, Ordering::Release);
        let now = SystemTime::now();
        *self.state.mtime.lock().unwrap_or_else(|p| p.into_inner()) = now;
        self.inner
            .meta
            .remember(&rel, Meta::File { size, mtime: now });
        Ok(())
    }
}

/// Uploads `file` whole as the object at `rel`: one PUT up to [`PART_SIZE`] (exclusive when
/// `create`, where the server supports conditional PUT), else a multipart upload completed
/// only once every part is stored. Returns the size uploaded.
pub(super) fn upload(inner: &Inner, rel: &str, file: &File, create: bool) -> io::Result<u64> {
    let path = inner.key(rel);
    let key = path.as_ref().to_string();
    let size = file.metadata()?.len();
    let limit = inner.config.timeout;
    let store = inner.store.clone();
    let handle = inner.rt.handle();
    if size <= PART_SIZE as u64 {
        let mut bytes = vec![0u8; size as usize];
        file.read_exact_at(&mut bytes, 0)
            .map_err(|err| local_error("uploading", rel, err))?;
        let payload = PutPayload::from(bytes);
        let exclusive = create && !inner.no_conditional_put.load(Ordering::Relaxed);
        let put = |mode: PutMode, payload: PutPayload| {
            let options = PutOptions {
                mode,
                ..PutOptions::default()
            };
            handle.block_on(async {
                tokio::time::timeout(limit, store.put_opts(&path, payload, options)).await
            })
        };
        let first = put(
            if exclusive {
                PutMode::Create
            } else {
                PutMode::Overwrite
            },
            payload.clone(),
        )
        .map_err(|_| timed_out("uploading", &key, limit))?;
        match first {
            Ok(_) => {}
            Err(object_store::Error::NotImplemented) if exclusive => {
                tracing::debug!("conditional PUT is not configured: exclusive creation checks the name first only");
                inner.no_conditional_put.store(true, Ordering::Relaxed);
                put(PutMode::Overwrite, payload)
                    .map_err(|_| timed_out("uploading", &key, limit))?
                    .map_err(|err| store_error("uploading", &key, err))?;
            }
            Err(err) => return Err(store_error("uploading", &key, err)),
        }
    } else {
        let mut reader = file.try_clone()?;
        reader.seek(SeekFrom::Start(0))?;
        handle.block_on(async {
            let upload = tokio::time::timeout(limit, store.put_multipart(&path))
                .await
                .map_err(|_| timed_out("starting an upload", &key, limit))?
                .map_err(|err| store_error("starting an upload", &key, err))?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let sent = async {
                loop {
                    let mut part = vec![0u8; PART_SIZE];
                    let n = read_full(&mut reader, &mut part)
                        .map_err(|err| local_error("uploading", rel, err))?;
                    if n == 0 {
                        break;
                    }
                    part.truncate(n);
                    tokio::time::timeout(limit, parts.wait_for_capacity(PARTS_IN_FLIGHT))
                        .await
                        .map_err(|_| timed_out("uploading a part", &key, limit))?
                        .map_err(|err| store_error("uploading a part", &key, err))?;
                    parts.put(Bytes::from(part));
                }
                Ok::<(), io::Error>(())
            }
            .await;
            match sent {
                Ok(()) => tokio::time::timeout(limit, parts.finish())
                    .await
                    .map_err(|_| timed_out("completing an upload", &key, limit))?
                    .map_err(|err| store_error("completing an upload", &key, err))
                    .map(|_| ()),
                Err(err) => {
                    // Nothing was visible under the key; the stored parts are dropped.
                    let _ = tokio::time::timeout(limit, parts.abort()).await;
                    Err(err)
                }
            }
        })?;
    }
    tracing::debug!(key, size, "uploaded");
    Ok(size)
}

impl Drop for ObjectFile {
    fn drop(&mut self) {
        self.inner.open_objects.unregister(&self.state);
    }
}

fn read_full(reader: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

impl StoredBytes for ObjectFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let body = self.state.body.read().unwrap_or_else(|p| p.into_inner());
        match &*body {
            Body::Staged { file, .. } => FileExt::read_at(file, buf, offset),
            Body::Remote { source, layout } => {
                let layout = match layout.get() {
                    Some(layout) => *layout,
                    None => {
                        let found = self.inner.blocks.layout(self.inner.rt.handle(), source)?;
                        *layout.get_or_init(|| found)
                    }
                };
                // Sequential: this read starts near where the last one ended. Near, not at:
                // the kernel splits one large read into requests that the mount's threads
                // serve out of order.
                let sequential = self
                    .next_block_offset
                    .load(Ordering::Relaxed)
                    .abs_diff(offset)
                    <= SEQUENTIAL_SLACK;
                let rt = self.inner.rt.handle();
                let (n, next) = self.inner.blocks.read_at(rt, source, layout, buf, offset)?;
                // A sequential reader's mark only moves forward (a request served late does
                // not pull it back); a jump moves it to where the reader went.
                if sequential {
                    self.next_block_offset
                        .fetch_max(offset + n as u64, Ordering::Relaxed);
                } else {
                    self.next_block_offset
                        .store(offset + n as u64, Ordering::Relaxed);
                }
                let window = self.inner.config.readahead_bytes / layout.block_len;
                // Only a reader of the data reads ahead: a read of the header alone (the
                // chunk size for a `stat`, an open checking the asset) must not fetch the
                // window for a handle that is about to be dropped.
                if sequential && offset >= layout.header_len && window > 0 && n > 0 {
                    // Topped up when a quarter of the window was consumed, not on every read.
                    let until = self.ahead_until.load(Ordering::Relaxed);
                    if until < next + window - window / 4 {
                        let end = next + window;
                        self.ahead_until.store(end, Ordering::Relaxed);
                        self.inner
                            .blocks
                            .read_ahead(rt, source, layout, until.max(next)..end);
                    }
                }
                Ok(n)
            }
        }
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.stage()?;
        let body = self.state.body.read().unwrap_or_else(|p| p.into_inner());
        let Body::Staged { file, dirty } = &*body else {
            unreachable!("staged just above, and never unstaged");
        };
        FileExt::write_all_at(file, buf, offset)?;
        dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        self.state.size()
    }

    fn set_size(&self, size: u64) -> io::Result<()> {
        self.stage()?;
        let body = self.state.body.read().unwrap_or_else(|p| p.into_inner());
        let Body::Staged { file, dirty } = &*body else {
            unreachable!("staged just above, and never unstaged");
        };
        file.set_len(size)?;
        dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// An upload stores the staged body whole, or nothing.
    fn syncs_whole(&self) -> bool {
        true
    }

    fn sync_data(&self) -> io::Result<()> {
        let body = self.state.body.read().unwrap_or_else(|p| p.into_inner());
        let Body::Staged { file, dirty } = &*body else {
            return Ok(()); // nothing changed since it was stored
        };
        if self.state.unlinked.load(Ordering::Acquire) || !dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        dirty.store(false, Ordering::Release);
        if let Err(err) = self.upload(file) {
            dirty.store(true, Ordering::Release);
            return Err(err);
        }
        Ok(())
    }
}

impl StoredObject for ObjectFile {
    fn attr(&self) -> io::Result<Attr> {
        let rel = self.rel();
        let mtime = *self.state.mtime.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.inner.file_attr(&rel, self.state.size()?, mtime))
    }

    /// Not kept in the object store (documented): there is nothing to read.
    fn sealed_xattrs(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }

    fn set_sealed_xattrs(&self, _sealed: Option<&[u8]>) -> io::Result<()> {
        Err(io::Error::from(rustix::io::Errno::OPNOTSUPP))
    }

    fn syncs_at_close(&self) -> bool {
        true
    }
}
