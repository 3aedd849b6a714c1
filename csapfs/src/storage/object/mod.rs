//! Assets in S3-compatible object storage: `s3://bucket/prefix`, one object per asset in the
//! existing format, on the `object_store` crate (SigV4, rustls).
//!
//! How the tree maps to keys: the asset at volume path `a/b` is the object `prefix/a/b`; a
//! directory is every key below `prefix/a/`, made explicit by an empty marker object
//! `prefix/a/.csap-dir` when created through the mount (so that an empty directory exists and a
//! directory outlives its last file). The marker name is reserved.
//!
//! What an object store cannot do, and what this backend does instead (README, "Assets in S3"):
//! - **rename** is copy, then delete, object by object (a directory: every object below it):
//!   not atomic. A crash in between leaves the source, the copies made so far, or both — never
//!   a partial object, as every copy is whole.
//! - **writes** are staged in an unlinked local file (ciphertext, as the mount writes it) and
//!   uploaded whole at `fsync` and `close` ([`file`]); a crash before loses what was not
//!   uploaded. Exclusive creation and [`Storage::put_new`] check for the name first and, where
//!   the server supports conditional PUT (`AWS_CONDITIONAL_PUT=etag`), also refuse a race in
//!   the store itself.
//! - **metadata** is the object's: size and last-modified time; every entry belongs to the user
//!   running the mount, files `0644`, directories `0755`; `chmod`, `chown` and setting times are
//!   refused (`EPERM`); inode numbers are handed out per process. Symlinks, hard links and
//!   special files are refused (`EPERM`), and sealed user attributes are not kept (`ENOTSUP`).
//! - **failures** (server gone, timeout, refused credentials) are `EIO` with one logged sentence;
//!   no call waits longer than the configured timeout.
//!
//! The FUSE threads are synchronous: every call blocks on this backend's own small runtime
//! (`Handle::block_on` with a timeout), never on the caller's.

mod blocks;
mod errors;
mod file;
mod tables;

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};
use rustix::io::Errno;

use self::blocks::{Blocks, Source};
use self::errors::{local_error, store_error, timed_out};
use self::file::{Body, ObjectFile, OpenState};
use self::tables::{is_at_or_below, Inodes, Listed, Meta, MetaCache, OpenObjects};
use super::{
    Attr, AttrChange, DirItem, FsStats, Kind, OpenMode, Owner, Replace, Special, Storage,
    StoredObject,
};

/// The reserved name of a directory's marker object.
const DIR_MARKER: &str = ".csap-dir";

/// How to reach the store and how to read it.
#[derive(Debug, Clone)]
pub struct ObjectConfig {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// The S3 endpoint (an S3-compatible server); `None`: `AWS_ENDPOINT_URL`, else AWS.
    pub endpoint: Option<String>,
    /// Bytes a sequential reader is served ahead (concurrent GETs).
    pub readahead_bytes: u64,
    /// No store call waits longer than this.
    pub timeout: Duration,
    /// How long a HEAD or LIST answer is believed (changes by others show up after it).
    pub metadata_ttl: Duration,
    /// Bytes of fetched chunks kept in memory (ciphertext).
    pub cache_bytes: u64,
    /// Where writes are staged (unlinked files); `None`: the system temporary directory.
    pub stage_dir: Option<PathBuf>,
    /// An access key given in code (tests, embedding); `None`: the AWS environment variables
    /// and the usual providers (session token, web identity, instance role).
    pub credentials: Option<AccessKey>,
}

/// An S3 access key id and its secret.
#[derive(Clone)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ObjectConfig {
    pub fn new(url: &str) -> ObjectConfig {
        ObjectConfig {
            url: url.to_string(),
            endpoint: None,
            readahead_bytes: 32 << 20,
            timeout: Duration::from_secs(30),
            metadata_ttl: Duration::from_secs(2),
            cache_bytes: 256 << 20,
            stage_dir: None,
            credentials: None,
        }
    }
}

/// True for `s3://…` locations (the others are local directories).
pub fn is_object_url(location: &str) -> bool {
    location.starts_with("s3://")
}

/// The shared state of one store, used by the storage and every open object.
pub(super) struct Inner {
    rt: Runtime,
    store: Arc<dyn ObjectStore>,
    config: ObjectConfig,
    /// The key prefix every volume path goes below (no trailing slash; may be empty).
    prefix: ObjectPath,
    blocks: Arc<Blocks>,
    meta: MetaCache,
    inodes: Inodes,
    open_objects: OpenObjects,
    next_source: AtomicU64,
    uid: u32,
    gid: u32,
    /// The server refused conditional PUT (not configured): exclusive puts check first only.
    no_conditional_put: AtomicBool,
}

/// The backend's runtime, shut down without waiting when the last user goes (also from inside
/// a runtime, where dropping one would panic).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("live until dropped").handle()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A bucket (and prefix) of an S3-compatible store as the mount's [`Storage`].
pub struct ObjectStorage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("url", &self.inner.config.url)
            .finish_non_exhaustive()
    }
}

impl ObjectStorage {
    /// Bytes this mount fetched from the store so far (reads and readahead; not staging
    /// downloads): what a read pattern costs in transfer.
    pub fn bytes_fetched(&self) -> u64 {
        self.inner.blocks.fetched()
    }

    /// Connects to the store of `config.url` and checks that it answers (one LIST).
    pub fn open(config: ObjectConfig) -> io::Result<ObjectStorage> {
        let (bucket, prefix) = parse_url(&config.url)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("csap-s3")
            .enable_all()
            .build()?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(key) = &config.credentials {
            builder = builder
                .with_access_key_id(&key.id)
                .with_secret_access_key(&key.secret);
        }
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT").ok());
        let mut client = ClientOptions::new()
            .with_timeout(config.timeout)
            .with_connect_timeout(config.timeout.min(Duration::from_secs(5)));
        if let Some(endpoint) = &endpoint {
            if let Some(rest) = endpoint.strip_prefix("http://") {
                let host = rest.split(['/', ':']).next().unwrap_or("");
                let loopback =
                    host == "localhost" || host.starts_with("127.") || rest.starts_with("[::1]");
                let allowed = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true");
                if !loopback && !allowed {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("refusing plain http to {endpoint}: use https, or set AWS_ALLOW_HTTP=true if the network is trusted (loopback is always allowed)"),
                    ));
                }
                client = client.with_allow_http(true);
            }
            builder = builder.with_endpoint(endpoint);
        }
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: config.timeout,
            ..RetryConfig::default()
        };
        let store: Arc<dyn ObjectStore> = Arc::new(
            builder
                .with_client_options(client)
                .with_retry(retry)
                .build()
                .map_err(|err| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{}: {err}", config.url),
                    )
                })?,
        );
        let inner = Arc::new(Inner {
            rt: Runtime(Some(rt)),
            blocks: Arc::new(Blocks::new(
                store.clone(),
                config.cache_bytes,
                config.timeout,
            )),
            store,
            meta: MetaCache::new(config.metadata_ttl),
            inodes: Inodes::new(),
            open_objects: OpenObjects::default(),
            next_source: AtomicU64::new(1),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            no_conditional_put: AtomicBool::new(false),
            prefix,
            config,
        });
        let storage = ObjectStorage { inner };
        // Reachable, and the credentials are accepted: a bad store fails here, with its cause.
        storage.inner.list_raw("").map_err(|_| {
            io::Error::other(format!(
                "cannot list {} (see the log line above for the store's answer)",
                storage.inner.config.url
            ))
        })?;
        Ok(storage)
    }
}

/// `s3://bucket/prefix` → (bucket, prefix path).
fn parse_url(url: &str) -> io::Result<(String, ObjectPath)> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url} is not an object store location ({why}); expected s3://BUCKET or s3://BUCKET/PREFIX"),
        )
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("no s3:// scheme"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("no bucket"));
    }
    let mut parts = Vec::new();
    for part in prefix.split('/').filter(|p| !p.is_empty()) {
        parts.push(PathPart::parse(part).map_err(|_| bad("a prefix segment is not a valid key"))?);
    }
    Ok((bucket.to_string(), ObjectPath::from_iter(parts)))
}

/// A volume-relative path as a "/"-joined string of checked components (`EINVAL` otherwise).
fn rel_string(path: &Path) -> io::Result<String> {
    let mut out = String::new();
    for component in path.components() {
        let Component::Normal(name) = component else {
            return Err(io::Error::from(Errno::INVAL));
        };
        let name = name.to_str().ok_or_else(|| io::Error::from(Errno::INVAL))?;
        if name == DIR_MARKER || PathPart::parse(name).is_err() {
            return Err(io::Error::from(Errno::INVAL));
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(name);
    }
    Ok(out)
}

fn parent_of(rel: &str) -> &str {
    rel.rfind('/').map_or("", |i| &rel[..i])
}

impl Inner {
    fn block_on<T>(
        &self,
        what: &str,
        key: &str,
        call: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> io::Result<T> {
        let limit = self.config.timeout;
        self.rt
            .handle()
            .block_on(async { tokio::time::timeout(limit, call).await })
            .map_err(|_| timed_out(what, key, limit))?
            .map_err(|err| store_error(what, key, err))
    }

    /// The object key of a checked relative path.
    fn key(&self, rel: &str) -> ObjectPath {
        let mut parts: Vec<PathPart<'_>> = self.prefix.parts().collect();
        parts.extend(rel.split('/').filter(|p| !p.is_empty()).map(PathPart::from));
        ObjectPath::from_iter(parts)
    }

    fn marker(&self, dir: &str) -> ObjectPath {
        self.key(dir).child(DIR_MARKER)
    }

    fn staging_file(&self, rel: &str) -> io::Result<File> {
        let dir = self
            .config
            .stage_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        tempfile::tempfile_in(&dir).map_err(|err| local_error("staging", rel, err))
    }

    fn file_attr(&self, rel: &str, size: u64, mtime: SystemTime) -> Attr {
        Attr {
            ino: self.inodes.of(rel),
            kind: Kind::File,
            perm: 0o644,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            size,
            blocks: size.div_ceil(512),
            blksize: 1 << 20,
            atime: mtime,
            mtime,
            ctime: mtime,
        }
    }

    fn dir_attr(&self, rel: &str) -> Attr {
        Attr {
            ino: self.inodes.of(rel),
            kind: Kind::Dir,
            perm: 0o755,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            size: 0,
            blocks: 0,
            blksize: 1 << 20,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
        }
    }

    /// The entries directly below `dir` in the store (one LIST with delimiter).
    fn list_raw(&self, dir: &str) -> io::Result<Arc<Vec<Listed>>> {
        if let Some(listed) = self.meta.list(dir) {
            return Ok(listed);
        }
        let prefix = self.key(dir);
        let key = prefix.as_ref().to_string();
        let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
        let result = self.block_on(
            "listing",
            &key,
            self.store.list_with_delimiter(prefix.as_ref()),
        )?;
        let mut listed: Vec<Listed> = result
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .map(|name| Listed {
                name: name.to_string(),
                meta: Meta::Dir,
            })
            .collect();
        listed.extend(result.objects.iter().filter_map(|o| {
            let name = o.location.filename()?;
            (name != DIR_MARKER).then(|| Listed {
                name: name.to_string(),
                meta: Meta::File {
                    size: o.size,
                    mtime: o.last_modified.into(),
                },
            })
        }));
        let has_marker = result
            .objects
            .iter()
            .any(|o| o.location.filename() == Some(DIR_MARKER));
        let listed = Arc::new(listed);
        if !dir.is_empty() && (has_marker || !listed.is_empty()) {
            self.meta.remember_stat(dir, Meta::Dir);
        }
        self.meta.remember_list(dir, listed.clone());
        Ok(listed)
    }

    /// What `rel` is: an open object here, then the cache, then its parent's listing (one
    /// LIST answers for every sibling, and works where a server answers HEAD of a prefix
    /// with an error).
    fn meta(&self, rel: &str) -> io::Result<Meta> {
        if rel.is_empty() {
            return Ok(Meta::Dir);
        }
        if let Some(state) = self.open_state(rel) {
            return Ok(Meta::File {
                size: state.size()?,
                mtime: *state.mtime.lock().unwrap_or_else(|p| p.into_inner()),
            });
        }
        if let Some(meta) = self.meta.stat(rel) {
            return Ok(meta);
        }
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let meta = self
            .list_raw(parent_of(rel))?
            .iter()
            .find(|l| l.name == name)
            .map_or(Meta::Missing, |l| l.meta);
        Ok(meta)
    }

    /// The live, not unlinked object open here at `rel`.
    fn open_state(&self, rel: &str) -> Option<Arc<OpenState>> {
        self.open_objects
            .at(rel)
            .into_iter()
            .find(|s| !s.unlinked.load(Ordering::Acquire))
    }

    fn attr_of(&self, rel: &str, meta: Meta) -> io::Result<Attr> {
        match meta {
            Meta::File { size, mtime } => Ok(self.file_attr(rel, size, mtime)),
            Meta::Dir => Ok(self.dir_attr(rel)),
            Meta::Missing => Err(io::Error::from(Errno::NOENT)),
        }
    }

    /// The parent of a new entry at `rel` must be a directory.
    fn check_parent(&self, rel: &str) -> io::Result<()> {
        match self.meta(parent_of(rel))? {
            Meta::Dir => Ok(()),
            Meta::File { .. } => Err(io::Error::from(Errno::NOTDIR)),
            Meta::Missing => Err(io::Error::from(Errno::NOENT)),
        }
    }

    /// Keeps directory `dir` when its last object goes (an explicit marker).
    fn keep_dir(&self, dir: &str) -> io::Result<()> {
        if dir.is_empty() {
            return Ok(());
        }
        let marker = self.marker(dir);
        self.block_on(
            "keeping a directory",
            marker.as_ref(),
            self.store.put(&marker, PutPayload::default()),
        )
        .map(|_| ())
    }

    /// Uploads `file` as the object at `rel`: one PUT (exclusive when `create`), else multipart.
    fn upload(&self, rel: &str, file: &File, create: bool) -> io::Result<u64> {
        file::upload(self, rel, file, create)
    }

    /// Every object key at or below directory `dir` (recursive LIST).
    fn keys_below(&self, dir: &str) -> io::Result<Vec<ObjectPath>> {
        let prefix = self.key(dir);
        let key = prefix.as_ref().to_string();
        let prefix = (!key.is_empty()).then_some(prefix);
        self.block_on(
            "listing",
            &key,
            self.store
                .list(prefix.as_ref())
                .map_ok(|meta| meta.location)
                .try_collect::<Vec<_>>(),
        )
    }
}

mod storage_impl;
