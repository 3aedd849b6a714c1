//! `csap import SRC BACKING`: bulk-encrypts a directory tree of plaintext frames into a backing
//! store, each file under its own key — licensed for creation by the key server in a scope, or
//! derived from a local seed file offline — resumably, and never leaving a partial asset.
//!
//! Also owns the two steps every licensed import shares with `csap quickstart`:
//! [`licensed_create`] (a create license → header and content key) and [`write_asset`] (one
//! whole asset put into the storage: complete or absent, never replacing another).
//!
//! Everything written goes through the mount's storage seam (`csapfs::storage`): a local
//! backing directory, or a bucket of S3-compatible object storage (`s3://BUCKET/PREFIX`), where
//! `--jobs` uploads run at once.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use csapfs::format::{AssetId, Header, KeyId, ScopeId, DEFAULT_CHUNK_SIZE};
use csapfs::keys::{KeyFileSource, NewAssetParams};
use csapfs::storage::{LocalDir, OpenMode, Storage, StoredBytes};
use csapfs::stream::encrypt_stream;
use csapfs::{Asset, AssetError, ContentKey, Seed, Suite};
use indicatif::{ProgressBar, ProgressStyle};
use keyserver_client::{LicenseClient, UserToken};

use crate::asset::SuiteArg;

/// Create requests kept in flight ahead of the file being encrypted. The key server's create
/// endpoint takes one asset per request (it allocates the asset id and registers the path), so
/// import pipelines requests instead of batching them.
const CREATES_IN_FLIGHT: usize = 8;

#[derive(Args)]
#[command(
    long_about = "Encrypt a directory tree of plaintext files into a backing store.

Every regular file under SRC becomes an asset at the same relative path under BACKING, each under \
its own content key: with --server, the key server registers the asset in --scope and licenses its \
key for creation (the rules must let this user, with the `csap` executable as the application, on \
this device, create at that path); with --key-file, keys are derived offline from a 32-byte seed \
exactly as `csap asset encrypt` does.

Crash-safe: each asset is written to a temporary file `.NAME.csap-import-PID` in its destination \
directory, fsynced, then renamed into place (never over an existing file), so an asset under its \
final name is always complete. Temporary files left by an interrupted import (whose process is \
gone) are removed by the next run. Into object storage (s3://BUCKET/PREFIX), each asset is staged \
in an unlinked local file (ciphertext) and uploaded whole (one PUT, or a multipart upload that \
S3 shows only once complete), so no partial object is ever visible under its key; --jobs \
uploads run at once.

Resumable: re-run the same command after an interruption. A destination that already exists is \
skipped when it is an asset of the right size for its source — with --key-file its header and \
final chunk must also authenticate under the key; with --server (where the importer may only \
create, not read) the asset's structure and size are checked. Anything else at a destination \
(another file, a different size) is reported as a failure and left untouched; move it away to \
import that file again.

Per-file errors are reported and counted; the exit status is non-zero if any file failed."
)]
pub struct ImportArgs {
    /// Directory tree of plaintext files to import.
    pub src: PathBuf,
    /// Backing directory of the volume (created if missing; must not lie inside SRC), or
    /// `s3://BUCKET/PREFIX` in S3-compatible object storage (see the --s3-* flags).
    pub backing: PathBuf,
    /// With an s3:// location: how to reach the store.
    #[command(flatten)]
    pub s3: crate::store_location::S3Args,
    /// Assets encrypted and stored at once (default: 1 into a directory, 4 into object
    /// storage, where each upload waits on the network).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Key scope the assets are created in (required with --server).
    #[arg(long, value_name = "NAME")]
    pub scope: Option<String>,
    /// Offline mode: derive keys from this 32-byte seed file (as `csap asset encrypt`).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Key server URL (ignored with --key-file); replicas comma-separated, the next one asked
    /// when one cannot be reached.
    #[arg(long, env = "CSAP_SERVER")]
    pub server: Option<String>,
    /// This device's enrollment directory (from `csap device enroll`), for mTLS.
    #[arg(long, value_name = "DIR", env = "CSAP_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// The user's token (default: the file `csap login` writes).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = SuiteArg::Gcm)]
    pub suite: SuiteArg,
    /// Plaintext bytes per chunk: a power of two from 4096 to 16777216.
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u32,
}

/// Asks the key server to register a new asset at `path` in `scope` and returns the header to
/// write (the server's asset id and key id) and its content key.
pub async fn licensed_create(
    client: &LicenseClient,
    token: &UserToken,
    app_digest: &str,
    path: &str,
    scope: &str,
    params: NewAssetParams,
) -> Result<(Header, ContentKey)> {
    let license = client
        .create(token, app_digest, path, scope)
        .await
        .with_context(|| format!("no create license for {path}"))?;
    let grant = license
        .grants
        .first()
        .context("the key server answered a create without a grant")?;
    let header = csapfs::license_source::grant_header(&params, grant)?;
    Ok((header, grant.key.clone()))
}

/// Encrypts `input` into a new asset at `rel` in `storage` ([`Storage::put_new`]: visible only
/// complete and durable, never over an existing entry; on any error nothing is left at `rel`).
/// Returns the plaintext size.
pub fn write_asset(
    storage: &dyn Storage,
    rel: &Path,
    header: &Header,
    key: &ContentKey,
    mut input: impl Read,
) -> Result<u64> {
    let mut size = 0;
    storage
        .put_new(rel, &mut |out| {
            size = encrypt_stream(&mut input, out, header, key).map_err(|err| match err {
                AssetError::Io(err) => err,
                other => io::Error::other(other),
            })?;
            Ok(())
        })
        .with_context(|| format!("cannot write the asset {}", rel.display()))?;
    Ok(size)
}

/// One source file.
struct Entry {
    src: PathBuf,
    /// Relative path, "/"-separated (also the asset path at the key server).
    rel: String,
    size: u64,
}

#[derive(Default)]
struct Tally {
    imported: u64,
    imported_bytes: u64,
    skipped: u64,
    failed: u64,
}

// One value per import run: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Keys {
    Local(KeyFileSource),
    Server {
        rt: tokio::runtime::Runtime,
        client: LicenseClient,
        token: UserToken,
        app_digest: String,
        scope: String,
        params: NewAssetParams,
    },
}

pub fn run(args: ImportArgs) -> Result<()> {
    let params = NewAssetParams {
        suite: match args.suite {
            SuiteArg::Gcm => Suite::Gcm,
            SuiteArg::Ctr => Suite::CtrBlake3,
        },
        chunk_size: args.chunk_size,
    };
    // Fail on bad parameters before any key server round trip.
    Header::new(
        params.suite,
        params.chunk_size,
        AssetId([0; 16]),
        KeyId {
            scope: ScopeId([0; 16]),
            version: 1,
        },
    )
    .context("--chunk-size")?;
    let src = args
        .src
        .canonicalize()
        .with_context(|| format!("cannot open source directory {}", args.src.display()))?;
    if !src.is_dir() {
        bail!("{} is not a directory", src.display());
    }
    let object = crate::store_location::is_object(&args.backing);
    let (storage, backing): (Arc<dyn Storage>, PathBuf) = if object {
        (args.s3.open(&args.backing)?, args.backing.clone())
    } else {
        std::fs::create_dir_all(&args.backing)
            .with_context(|| format!("cannot create {}", args.backing.display()))?;
        let backing = args.backing.canonicalize()?;
        let storage = LocalDir::open(&backing)
            .with_context(|| format!("cannot open the backing store {}", backing.display()))?;
        if backing.starts_with(&src) {
            bail!(
                "the backing store {} lies inside the source {}: import would read its own output",
                backing.display(),
                src.display()
            );
        }
        (Arc::new(storage), backing)
    };
    let jobs = args.jobs.unwrap_or(if object { 4 } else { 1 }).max(1);
    let keys = keys_from(&args, params)?;

    let mut problems = Vec::new();
    let mut entries = Vec::new();
    walk(&src, "", &mut entries, &mut problems);
    entries.sort_by(|a, b| a.rel.cmp(&b.rel));
    let mut tally = Tally {
        failed: problems.len() as u64,
        ..Tally::default()
    };
    for p in &problems {
        eprintln!("csap import: {p}");
    }

    // Pass 1: what is already done, what is in the way, what is to do. (Partial files of an
    // interrupted run are the storage's to clean: the next put into their directory does.)
    let mut todo = Vec::new();
    for e in entries {
        let dest = PathBuf::from(&e.rel);
        match storage.stat(&dest) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => todo.push((e, dest)),
            Err(err) => {
                tally.failed += 1;
                eprintln!("csap import: {}: {err}", backing.join(&dest).display());
            }
            Ok(_) => match verify_existing(storage.as_ref(), &dest, e.size, &keys) {
                Ok(()) => tally.skipped += 1,
                Err(err) => {
                    tally.failed += 1;
                    eprintln!("csap import: {}: {}", e.rel, crate::errors::sentence(&err));
                }
            },
        }
    }

    // Pass 2: encrypt, with create licenses requested ahead.
    let total_bytes: u64 = todo.iter().map(|(e, _)| e.size).sum();
    let bar = ProgressBar::new(total_bytes);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:32} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("static template"),
    );
    let n = todo.len();
    let started = Instant::now();
    let mut pending: VecDeque<tokio::task::JoinHandle<Result<(Header, ContentKey)>>> =
        VecDeque::new();
    let mut next_request = 0;
    let tally = Mutex::new(tally);
    // Keys are asked for here, in order; `jobs` workers encrypt and store.
    let (work, queue) = std::sync::mpsc::sync_channel::<(usize, Header, ContentKey)>(jobs);
    let queue = Mutex::new(queue);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((i, header, key)) = next else { break };
                let (e, dest) = &todo[i];
                let result = File::open(&e.src)
                    .with_context(|| format!("cannot open {}", e.src.display()))
                    .and_then(|file| {
                        let input = BufReader::with_capacity(1 << 20, file);
                        write_asset(storage.as_ref(), dest, &header, &key, bar.wrap_read(input))
                    });
                record(&tally, &bar, e, result);
            });
        }
        for (i, (e, _)) in todo.iter().enumerate() {
            bar.set_message(format!("files {i}/{n}"));
            let key = match &keys {
                Keys::Local(source) => source.new_asset().map_err(anyhow::Error::from),
                Keys::Server {
                    rt,
                    client,
                    token,
                    app_digest,
                    scope,
                    params,
                } => {
                    while next_request < n && next_request < i + CREATES_IN_FLIGHT {
                        let (client, token, app_digest, scope, params) = (
                            client.clone(),
                            token.clone(),
                            app_digest.clone(),
                            scope.clone(),
                            *params,
                        );
                        let path = todo[next_request].0.rel.clone();
                        pending.push_back(rt.spawn(async move {
                            licensed_create(&client, &token, &app_digest, &path, &scope, params)
                                .await
                        }));
                        next_request += 1;
                    }
                    let task = pending.pop_front().expect("a request per file");
                    rt.block_on(task)
                        .unwrap_or_else(|e| Err(anyhow::anyhow!("create request failed: {e}")))
                }
            };
            match key {
                Ok((header, key)) => {
                    if work.send((i, header, key)).is_err() {
                        break; // every worker is gone (they only stop once the queue closes)
                    }
                }
                Err(err) => record(&tally, &bar, e, Err(err)),
            }
        }
        drop(work);
    });
    let tally = tally.into_inner().unwrap_or_else(|p| p.into_inner());
    bar.finish_and_clear();
    println!(
        "imported {} file(s), {} bytes in {:.1} s; skipped {} already complete; {} failed",
        tally.imported,
        tally.imported_bytes,
        started.elapsed().as_secs_f64(),
        tally.skipped,
        tally.failed
    );
    if tally.failed > 0 {
        bail!(
            "{} file(s) failed (see above); fix them and run the same command again — finished files are skipped",
            tally.failed
        );
    }
    Ok(())
}

/// Counts one file's outcome and says why it failed.
fn record(tally: &Mutex<Tally>, bar: &ProgressBar, e: &Entry, result: Result<u64>) {
    let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(size) => {
            tally.imported += 1;
            tally.imported_bytes += size;
            tracing::info!(path = %e.rel, size, "imported");
        }
        Err(err) => {
            tally.failed += 1;
            bar.suspend(|| eprintln!("csap import: {}: {}", e.rel, crate::errors::sentence(&err)));
        }
    }
}

fn keys_from(args: &ImportArgs, params: NewAssetParams) -> Result<Keys> {
    if let Some(path) = &args.key_file {
        let seed = Seed::from_file(path)
            .with_context(|| format!("cannot read key file {}", path.display()))?;
        return Ok(Keys::Local(KeyFileSource::new(seed, params)));
    }
    let Some(server) = &args.server else {
        bail!(
            "give --server URL (or CSAP_SERVER) and --scope, or --key-file FILE for offline import"
        );
    };
    let Some(identity) = &args.identity else {
        bail!("--server needs --identity DIR (the device enrollment directory)");
    };
    let Some(scope) = &args.scope else {
        bail!("--server needs --scope NAME: the key scope new assets are created in");
    };
    let token_path = match &args.token_file {
        Some(p) => p.clone(),
        None => UserToken::default_path()
            .context("neither XDG_RUNTIME_DIR nor HOME is set: give --token-file")?,
    };
    let token = UserToken::load(&token_path).with_context(|| {
        format!(
            "cannot read the user token {} (run `csap login`)",
            token_path.display()
        )
    })?;
    let exe = std::env::current_exe().context("cannot locate the csap executable")?;
    let app_digest = crate::keyserver::digest_file(&exe)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = rt
        .block_on(LicenseClient::connect(server, identity))
        .with_context(|| {
            format!(
                "cannot reach the key server {server} as the device in {}",
                identity.display()
            )
        })?;
    Ok(Keys::Server {
        rt,
        client,
        token,
        app_digest,
        scope: scope.clone(),
        params,
    })
}

/// Collects regular files (and symlinks to them) under `dir`; directory symlinks are not
/// followed (they could loop).
fn walk(dir: &Path, rel: &str, out: &mut Vec<Entry>, problems: &mut Vec<String>) {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) => return problems.push(format!("{}: {e}", dir.display())),
    };
    for item in read {
        let item = match item {
            Ok(i) => i,
            Err(e) => {
                problems.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        let path = item.path();
        let Some(name) = item.file_name().to_str().map(str::to_string) else {
            problems.push(format!(
                "{}: the name is not UTF-8 (asset paths must be)",
                path.display()
            ));
            continue;
        };
        let child_rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let is_link = item.file_type().map(|t| t.is_symlink()).unwrap_or(false);
        if meta.is_dir() && !is_link {
            walk(&path, &child_rel, out, problems);
        } else if meta.is_file() {
            out.push(Entry {
                src: path,
                rel: child_rel,
                size: meta.len(),
            });
        } else if is_link {
            problems.push(format!(
                "{}: a symlink to a directory; not followed",
                path.display()
            ));
        } else {
            problems.push(format!("{}: not a regular file", path.display()));
        }
    }
}

/// Whether an existing destination is this source's finished asset (see `--help`).
fn verify_existing(storage: &dyn Storage, dest: &Path, src_size: u64, keys: &Keys) -> Result<()> {
    let file = storage
        .open(dest, OpenMode::Read)
        .context("exists and cannot be opened")?;
    let header = csapfs::asset::read_header(&file)
        .context("exists and is not an asset; move it away to import this file")?;
    let stored = file.size()?;
    if stored != header.layout().stored_len(src_size) {
        bail!(
            "exists as an asset of another size ({stored} bytes stored, {} expected for the {src_size}-byte source); remove it to import this file again",
            header.layout().stored_len(src_size)
        );
    }
    if let Keys::Local(source) = keys {
        let key = source
            .key_for(&header)
            .context("exists under a different key")?;
        let asset = Asset::open(file, &key).context("exists but does not authenticate")?;
        if src_size > 0 {
            // The final chunk carries the end-of-asset flag: authenticating it proves the file
            // was finished, not cut at a chunk boundary.
            let mut last = [0u8; 1];
            asset
                .read_at(src_size - 1, &mut last)
                .context("exists but its final chunk does not authenticate")?;
        }
    }
    Ok(())
}
