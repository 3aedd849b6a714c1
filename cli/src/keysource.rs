//! The key-server flags of `csap mount` (`--server`, `--identity`, `--scope`, `--token-file`)
//! and building the mount's [`KeyServerSource`] from them.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use csapfs::keys::{KeySource, NewAssetParams};
use csapfs::license_source::{KeyServerSource, LicenseSourceConfig, TokenMap};

#[derive(Args, Debug, Clone)]
pub struct KeyServerArgs {
    /// Key server URL: content keys come from licenses for each attested caller
    /// (instead of --key-file).
    #[arg(long, value_name = "URL", conflicts_with = "key_file")]
    pub server: Option<String>,
    /// This device's enrollment directory (from `csap device enroll`), used for mTLS.
    #[arg(long, value_name = "DIR", requires = "server")]
    pub identity: Option<PathBuf>,
    /// Key scope that files created through the mount are licensed in (without it, creating
    /// files is refused).
    #[arg(long, value_name = "NAME", requires = "server")]
    pub scope: Option<String>,
    /// User token file: `PATH` for the mounting user, or `UID:PATH` (repeatable, for service
    /// accounts). Default per uid: the file `csap login` writes.
    #[arg(long, value_name = "[UID:]PATH", requires = "server")]
    pub token_file: Vec<String>,
}

impl KeyServerArgs {
    /// The key server source, or `None` when `--server` was not given.
    pub fn source(&self, params: NewAssetParams) -> Result<Option<Arc<dyn KeySource>>> {
        let Some(url) = &self.server else {
            return Ok(None);
        };
        let Some(identity) = &self.identity else {
            bail!("--server needs --identity DIR (the device enrollment directory)");
        };
        let mut tokens = TokenMap::default();
        for spec in &self.token_file {
            let (uid, path) = parse_token_spec(spec)?;
            csapfs::license_source::check_token_file(&path)
                .with_context(|| format!("cannot read token file {}", path.display()))?;
            tokens.insert(uid, path);
        }
        let mut cfg = LicenseSourceConfig::new(url.clone(), identity.clone());
        cfg.scope = self.scope.clone();
        cfg.tokens = tokens;
        cfg.params = params;
        let source = KeyServerSource::connect(cfg)
            .with_context(|| format!("key server {url} with identity {}", identity.display()))?;
        tracing::info!(
            device = source.device(),
            "licensing keys from the key server"
        );
        Ok(Some(Arc::new(source)))
    }
}

/// `PATH` (for the current uid) or `UID:PATH`.
fn parse_token_spec(spec: &str) -> Result<(u32, PathBuf)> {
    if let Some((uid, path)) = spec.split_once(':') {
        if let Ok(uid) = uid.parse::<u32>() {
            return Ok((uid, PathBuf::from(path)));
        }
    }
    if spec.is_empty() {
        bail!("--token-file needs a path");
    }
    Ok((nix::unistd::getuid().as_raw(), PathBuf::from(spec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_specs() {
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(parse_token_spec("/t").unwrap(), (me, PathBuf::from("/t")));
        assert_eq!(
            parse_token_spec("1001:/srv/t").unwrap(),
            (1001, PathBuf::from("/srv/t"))
        );
        // A path that merely contains a colon stays a path.
        assert_eq!(parse_token_spec("a:b").unwrap(), (me, PathBuf::from("a:b")));
        assert!(parse_token_spec("").is_err());
    }
}
