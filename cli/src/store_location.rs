//! Where a volume's assets live, as `csap mount` and `csap import` name it: a local directory,
//! or `s3://BUCKET/PREFIX` in S3-compatible object storage (`csapfs::storage::object`), with
//! the flags that tune the object store backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use csapfs::storage::{ObjectConfig, ObjectStorage, Storage};

/// Flags of an `s3://` location (credentials come from the usual AWS environment variables:
/// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, or the instance's
/// role).
#[derive(Args, Debug, Clone)]
pub struct S3Args {
    /// S3 endpoint of an S3-compatible server (default: $AWS_ENDPOINT_URL, else AWS). Plain
    /// http is allowed to loopback only, unless AWS_ALLOW_HTTP=true.
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// MiB a sequential reader is served ahead, by concurrent ranged GETs.
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pub s3_readahead: u64,
    /// Seconds any one object store call may take before it fails (EIO).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub s3_timeout: u64,
    /// Seconds a HEAD or LIST answer is reused (changes by others show up after that).
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    pub s3_metadata_ttl: u64,
    /// MiB of fetched (encrypted) chunks kept in memory.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub s3_cache: u64,
    /// Directory where writes are staged before upload (unlinked files holding ciphertext
    /// only; default: the system temporary directory).
    #[arg(long, value_name = "DIR")]
    pub s3_stage_dir: Option<PathBuf>,
}

/// True if `location` names object storage rather than a directory.
pub fn is_object(location: &Path) -> bool {
    location
        .to_str()
        .is_some_and(csapfs::storage::object::is_object_url)
}

impl S3Args {
    fn config(&self, url: &str) -> ObjectConfig {
        ObjectConfig {
            endpoint: self.s3_endpoint.clone(),
            readahead_bytes: self.s3_readahead << 20,
            timeout: Duration::from_secs(self.s3_timeout.max(1)),
            metadata_ttl: Duration::from_secs(self.s3_metadata_ttl),
            cache_bytes: self.s3_cache << 20,
            stage_dir: self.s3_stage_dir.clone(),
            ..ObjectConfig::new(url)
        }
    }

    /// Connects to the bucket of `location` (an `s3://` URL).
    pub fn open(&self, location: &Path) -> Result<Arc<dyn Storage>> {
        let url = location
            .to_str()
            .context("the location is not valid UTF-8")?;
        let storage = ObjectStorage::open(self.config(url))
            .with_context(|| format!("cannot open the object store {url}"))?;
        Ok(Arc::new(storage))
    }
}
