//! `csap asset`: offline encrypt, decrypt and inspect of single asset files.
//!
//! For tests and break-glass recovery: the key comes from a 32-byte seed file, used exactly as the
//! mount's `--key-file` uses it, so either can read what the other wrote.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::atomic::{write_atomically, Existing};
use clap::{Subcommand, ValueEnum};
use csapfs::format::{Layout, DEFAULT_CHUNK_SIZE, HEADER_LEN};
use csapfs::keys::{KeyFileSource, NewAssetParams};
use csapfs::stream::{decrypt_stream, encrypt_stream};
use csapfs::{AssetError, Header, Seed, Suite};

#[derive(Subcommand)]
pub enum AssetCommand {
    /// authz's asset-identifier map: an asset manager's identifiers → csap path patterns.
    Map(crate::catalog::AssetMapArgs),
    /// Encrypt a plaintext file into an asset keyed from a 32-byte seed file.
    Encrypt {
        /// Key file: exactly 32 raw bytes (`head -c 32 /dev/urandom > k`), a key-scope seed.
        #[arg(long)]
        key_file: PathBuf,
        #[arg(long, value_enum, default_value_t = SuiteArg::Gcm)]
        suite: SuiteArg,
        /// Plaintext bytes per chunk: a power of two from 4096 to 16777216.
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
        input: PathBuf,
        output: PathBuf,
    },
    /// Decrypt an asset. Writes nothing unless every chunk authenticates.
    Decrypt {
        #[arg(long)]
        key_file: PathBuf,
        input: PathBuf,
        output: PathBuf,
    },
    /// Print an asset's header (no key needed; the fields are not authenticated without one).
    Inspect {
        file: PathBuf,
        #[command(flatten)]
        format: crate::output::Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SuiteArg {
    /// AES-256-GCM per chunk (default).
    Gcm,
    /// AES-256-CTR with a BLAKE3 keyed MAC per chunk.
    Ctr,
}

pub fn run(command: AssetCommand) -> Result<()> {
    match command {
        AssetCommand::Map(args) => crate::catalog::run_asset_map(args),
        AssetCommand::Encrypt {
            key_file,
            suite,
            chunk_size,
            input,
            output,
        } => {
            let suite = match suite {
                SuiteArg::Gcm => Suite::Gcm,
                SuiteArg::Ctr => Suite::CtrBlake3,
            };
            let source = KeyFileSource::new(
                Seed::from_file(&key_file)?,
                NewAssetParams { suite, chunk_size },
            );
            let (header, key) = source.new_asset()?;
            let reader = BufReader::new(open(&input)?);
            write_atomically(&output, ".csap-tmp-", Existing::Replace, |out| {
                encrypt_stream(reader, out, &header, &key)?;
                Ok(())
            })
        }
        AssetCommand::Decrypt {
            key_file,
            input,
            output,
        } => {
            let source = KeyFileSource::new(Seed::from_file(&key_file)?, NewAssetParams::default());
            let reader = BufReader::with_capacity(1 << 20, open(&input)?);
            write_atomically(&output, ".csap-tmp-", Existing::Replace, |out| {
                decrypt_stream(reader, out, |header| {
                    source
                        .key_for(header)
                        .map_err(|err| AssetError::Io(std::io::Error::other(err.to_string())))
                })?;
                Ok(())
            })
            .with_context(|| format!("cannot decrypt {}", input.display()))
        }
        AssetCommand::Inspect { file, format } => inspect(&file, format),
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("cannot open {}", path.display()))
}

#[derive(serde::Serialize)]
struct Inspection {
    #[serde(flatten)]
    header: Header,
    format_version: u16,
    sparse: bool,
    chunk_count: u64,
    plaintext_size: u64,
    stored_size: u64,
}

fn inspect(path: &Path, format: crate::output::Format) -> Result<()> {
    let file = open(path)?;
    let header = csapfs::asset::read_header(&file)
        .with_context(|| format!("{} is not a readable asset", path.display()))?;
    let stored_size = file.metadata()?.len();
    let layout: Layout = header.layout();
    let Ok(plaintext_size) = layout.plain_size(stored_size) else {
        bail!(
            "{} has an invalid length ({stored_size} bytes after a {HEADER_LEN}-byte header): it was truncated or extended",
            path.display()
        );
    };
    let info = Inspection {
        header,
        format_version: csapfs::format::VERSION,
        sparse: header.is_sparse(),
        chunk_count: layout.chunk_count(plaintext_size),
        plaintext_size,
        stored_size,
    };
    format.print(&info, |info| {
        let header = &info.header;
        [
            format!("asset id:       {}", header.asset_id),
            format!(
                "key id:         {} (scope {}, version {})",
                header.key_id, header.key_id.scope, header.key_id.version
            ),
            format!("format version: {}", info.format_version),
            format!("suite:          {}", header.suite),
            format!("chunk size:     {}", header.chunk_size),
            format!("chunk count:    {}", info.chunk_count),
            format!("plaintext size: {}", info.plaintext_size),
            format!("stored size:    {}", info.stored_size),
            format!("sparse:         {}", info.sparse),
            // The key server records the current one; an older one is a rollback (FORMAT.md §7).
            format!("generation:     {}", header.generation),
            "(header fields are unauthenticated until a key verifies them)".to_string(),
        ]
        .join("\n")
    })
}
