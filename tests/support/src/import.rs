//! Assets written into a backing store as `csap import` writes them: a create license per
//! file from the key server, the file encrypted under the key it carries.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use csapfs::format::Header;
use csapfs::keys::NewAssetParams;
use csapfs::{Asset, ContentKey};
use keyserver::{ClientError, LicenseClient, UserToken};
use tokio::runtime::Runtime;

/// How often a create refused by the per-device rate limit is tried again (every 50 ms).
const RATE_LIMITED_TRIES: u32 = 200;

/// Licenses new assets on behalf of a registered import tool (its digest), as one user on
/// one device.
pub struct Importer {
    pub client: LicenseClient,
    pub token: UserToken,
    /// The registered digest the create licenses are asked for.
    pub digest: String,
    pub scope: String,
}

impl Importer {
    /// A create license for `path` in the importer's scope, waiting out the per-device rate
    /// limit; the header and key the asset must be written with.
    pub fn create(&self, rt: &Runtime, path: &str) -> Result<(Header, ContentKey)> {
        let mut tries = 0;
        let license = loop {
            match rt.block_on(
                self.client
                    .create(&self.token, &self.digest, path, &self.scope),
            ) {
                Ok(l) => break l,
                Err(ClientError::RateLimited { .. }) if tries < RATE_LIMITED_TRIES => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e).with_context(|| format!("create license for {path}")),
            }
        };
        let grant = license
            .grants
            .first()
            .with_context(|| format!("the create license for {path} has no grant"))?;
        let header = csapfs::license_source::grant_header(&NewAssetParams::default(), grant)?;
        Ok((header, grant.key.clone()))
    }

    /// Licenses `path` and writes `pieces` (one after the other) as its plaintext at
    /// `backing/path`.
    pub fn import(&self, rt: &Runtime, backing: &Path, path: &str, pieces: &[&[u8]]) -> Result<()> {
        let (header, key) = self.create(rt, path)?;
        write_asset(&backing.join(path), header, &key, pieces)
    }
}

/// Creates the asset file `path` (and its directory) with `header`, writes `pieces` one after
/// the other under `key`, and syncs it.
pub fn write_asset(path: &Path, header: Header, key: &ContentKey, pieces: &[&[u8]]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = std::fs::File::create_new(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut asset = Asset::create(file, header, key)?;
    let mut at = 0u64;
    for piece in pieces {
        asset.write_at(at, piece)?;
        at += piece.len() as u64;
    }
    asset.sync()?;
    Ok(())
}
