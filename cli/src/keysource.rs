//! The key-server flags of `csap mount` (`--server`, `--identity`, `--scope`, `--token-file`,
//! and the mount's own ARDS subscription: `--ards`, `--ards-ca`, `--issuer-pub`) and building
//! the mount's [`KeyServerSource`] from them.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use csapfs::audit_spool::SpoolConfig;
use csapfs::keys::{KeySource, NewAssetParams};
use csapfs::license_source::{KeyServerSource, LicenseSourceConfig, RulesConfig, TokenMap};

#[derive(Args, Debug, Clone)]
pub struct KeyServerArgs {
    /// Key server URL: content keys come from licenses for each attested caller
    /// (instead of --key-file). Replicas comma-separated (https://ks1:7402,https://ks2:7402):
    /// when one cannot be reached the next is asked, without failing the open.
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
    /// accounts). Default per uid: the file `csap login` writes. A token is used only for the
    /// uid and device it was issued for (`csap login --uid` issues one for a service account).
    #[arg(long, value_name = "[UID:]PATH", requires = "server")]
    pub token_file: Vec<String>,
    /// ARDS URL: the mount subscribes to its own rules (PEP `mount:<device>`), denies locally
    /// what they do not allow (no round trip), gates create/unlink/rename/truncate, and applies
    /// revocations to open files within a second. `csap server` prints it (key server port - 1).
    #[arg(long, value_name = "URL", requires_all = ["server", "ards_ca", "issuer_pub"])]
    pub ards: Option<String>,
    /// ARDS's TLS certificate (`csap server` prints it: DATA_DIR/ards/ards-cert.pem).
    #[arg(long, value_name = "FILE", requires = "ards")]
    pub ards_ca: Option<PathBuf>,
    /// authz's issuer public key (hex; DATA_DIR/authz/issuer.pub): rules must be signed by it.
    #[arg(long, value_name = "FILE", requires = "ards")]
    pub issuer_pub: Option<PathBuf>,
    /// Issuer name the rules carry (authz's `issuer` setting).
    #[arg(long, value_name = "NAME", default_value = "authz", requires = "ards")]
    pub issuer: String,
    /// Accept user sessions from `csap login --socket PATH` on this Unix socket (mode 0666: the
    /// user is the caller's uid from SO_PEERCRED, not the socket's permissions). Users without
    /// access to the device key log in through it: the mount asks the key server with the
    /// device identity for a token bound to this device and their uid. Sessions are used
    /// before token files. Example: /run/csap/mount.sock.
    #[arg(long, value_name = "PATH", requires = "server")]
    pub socket: Option<PathBuf>,
    /// Directory of the mount's audit spool: decisions the mount makes itself (local denials,
    /// failed attestation, opens from held licenses) are kept here until the key server has
    /// them. Default: IDENTITY/audit/<hash of the mountpoint>, one per mount.
    #[arg(long, value_name = "DIR", requires = "server")]
    pub audit_spool: Option<PathBuf>,
}

/// A key-server key source and, with `--socket`, the session socket that feeds it (it removes
/// its socket file when dropped, so it must live as long as the mount).
pub struct KeyServerKeys {
    pub source: Arc<dyn KeySource>,
    /// The same source, for its counts (metrics, `csap status`).
    pub server: Arc<KeyServerSource>,
    pub sessions: Option<csapfs::session::SessionServer>,
}

impl KeyServerArgs {
    /// The key server source, or `None` when `--server` was not given. `storage` is listed
    /// for pre-loading when `--ards` is given and for sibling batches; `mountpoint` names the
    /// default audit spool.
    pub fn source(
        &self,
        params: NewAssetParams,
        storage: &Arc<dyn csapfs::storage::Storage>,
        mountpoint: &std::path::Path,
    ) -> Result<Option<KeyServerKeys>> {
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
        let registry = self.socket.as_ref().map(|_| {
            let registry = csapfs::session::SessionRegistry::new();
            tokens.use_sessions(registry.clone());
            registry
        });
        let mut cfg = LicenseSourceConfig::new(url.clone(), identity.clone());
        cfg.scope = self.scope.clone();
        cfg.tokens = tokens;
        cfg.params = params;
        cfg.rules = self.rules_config(identity)?;
        cfg.storage = Some(Arc::clone(storage));
        // The device name is filled in from the key server's answer on connecting.
        cfg.audit = Some(SpoolConfig::new(
            self.audit_spool_dir(identity, mountpoint)?,
            String::new(),
        ));
        let source = KeyServerSource::connect(cfg)
            .with_context(|| format!("key server {url} with identity {}", identity.display()))?;
        tracing::info!(
            device = source.device(),
            "licensing keys from the key server"
        );
        // Served once the device is known: logins through the socket use its identity.
        let sessions = match (&self.socket, registry) {
            (Some(path), Some(registry)) => {
                let login = Arc::new(source.device_login()?);
                let server = csapfs::session::serve(path, registry, login)
                    .with_context(|| format!("cannot serve sessions on {}", path.display()))?;
                tracing::info!(socket = %path.display(), "accepting `csap login` sessions");
                Some(server)
            }
            _ => None,
        };
        let source = Arc::new(source);
        Ok(Some(KeyServerKeys {
            source: source.clone(),
            server: source,
            sessions,
        }))
    }
}

impl KeyServerArgs {
    /// `--audit-spool`, or `IDENTITY/audit/<first 16 hex of BLAKE3(canonical mountpoint)>`:
    /// a remount on the same mountpoint finds what the last run did not ship.
    fn audit_spool_dir(
        &self,
        identity: &std::path::Path,
        mountpoint: &std::path::Path,
    ) -> Result<PathBuf> {
        if let Some(dir) = &self.audit_spool {
            return Ok(dir.clone());
        }
        let canonical = mountpoint
            .canonicalize()
            .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
        let hash = blake3::hash(canonical.as_os_str().as_encoded_bytes());
        Ok(identity.join("audit").join(&hash.to_hex()[..16]))
    }

    /// The mount's ARDS subscription, when `--ards` was given. Its rule cache lives in the
    /// device directory (`mount-rules.json`), so a restart while ARDS is down enforces the
    /// last rules seen.
    fn rules_config(&self, identity: &std::path::Path) -> Result<Option<RulesConfig>> {
        let Some(url) = &self.ards else {
            return Ok(None);
        };
        let (Some(ca), Some(issuer_pub)) = (&self.ards_ca, &self.issuer_pub) else {
            bail!("--ards needs --ards-ca FILE and --issuer-pub FILE");
        };
        let ca_pem = std::fs::read_to_string(ca)
            .with_context(|| format!("cannot read the ARDS certificate {}", ca.display()))?;
        let hex = std::fs::read_to_string(issuer_pub)
            .with_context(|| format!("cannot read the issuer key {}", issuer_pub.display()))?;
        let key = csap_policy::IssuerPublicKey::from_hex(hex.trim())
            .with_context(|| format!("{} is not an issuer public key", issuer_pub.display()))?;
        Ok(Some(RulesConfig {
            ards_url: url.clone(),
            ards_ca_pem: ca_pem,
            trusted_issuers: vec![(self.issuer.clone(), key)],
            cache_path: identity.join("mount-rules.json"),
            sync_timeout: Duration::from_secs(10),
        }))
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
