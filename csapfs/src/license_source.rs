//! [`KeyServerSource`]: the mount's key source in production — content keys come from key
//! server licenses asked for on behalf of the attested calling process.
//!
//! For each open: map the caller's uid to its user token (a token file per uid), measure the
//! caller's executable ([`attest`]), then look in the license cache keyed by
//! (user token, application digest, asset id, action); on a miss ask the key server over mTLS
//! with the device identity. The key server re-checks everything (user, device, application,
//! rules) itself; this side only decides what it asks for and holds what it was granted, until
//! the license's `not_after`. Every failure is a denial (`EACCES`), never a hang: attestation
//! and network calls are bounded by timeouts.

#![forbid(unsafe_code)]

pub mod attest;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyserver::client::ClientError;
use keyserver::wire::Action;
use keyserver::{LicenseClient, UserToken};

use crate::crypto::ContentKey;
use crate::format::{AssetId, Header, KeyId, ScopeId};
use crate::keys::{Caller, KeyError, KeySource, NewAssetParams};

use attest::{AttestError, Attestor};

/// How to reach the key server and whom to ask for.
#[derive(Debug, Clone)]
pub struct LicenseSourceConfig {
    /// Key server base URL, `https://host:port`.
    pub server_url: String,
    /// The device's enrollment directory (cert.pem, key.pem, ca.pem, server.pub).
    pub identity_dir: PathBuf,
    /// Key scope new assets are created in; `None` refuses creation.
    pub scope: Option<String>,
    /// Where each uid's user token lives.
    pub tokens: TokenMap,
    /// Suite and chunk size of new assets.
    pub params: NewAssetParams,
    /// Upper bound on measuring one caller.
    pub attest_timeout: Duration,
    /// Upper bound on one key server round trip.
    pub request_timeout: Duration,
}

impl LicenseSourceConfig {
    pub fn new(server_url: impl Into<String>, identity_dir: impl Into<PathBuf>) -> Self {
        LicenseSourceConfig {
            server_url: server_url.into(),
            identity_dir: identity_dir.into(),
            scope: None,
            tokens: TokenMap::default(),
            params: NewAssetParams::default(),
            attest_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// uid → user token file. A uid without an explicit entry uses the file `csap login` writes
/// for it: `$XDG_RUNTIME_DIR/csap/token` (else `~/.config/csap/token`) for the mounting user,
/// `/run/user/<uid>/csap/token` for others.
#[derive(Debug, Clone, Default)]
pub struct TokenMap {
    explicit: HashMap<u32, PathBuf>,
}

impl TokenMap {
    /// Token file for `uid` (a service account's token, or a test's).
    pub fn insert(&mut self, uid: u32, path: impl Into<PathBuf>) {
        self.explicit.insert(uid, path.into());
    }

    /// Where the token of `uid` is looked for.
    pub fn path_for(&self, uid: u32) -> Option<PathBuf> {
        if let Some(p) = self.explicit.get(&uid) {
            return Some(p.clone());
        }
        if uid == nix::unistd::getuid().as_raw() {
            return UserToken::default_path();
        }
        Some(PathBuf::from(format!("/run/user/{uid}/csap/token")))
    }

    /// Reads the token of `uid` (re-read at every license request, so a new `csap login`
    /// takes effect without remounting).
    pub fn load(&self, uid: u32) -> Result<UserToken, KeyError> {
        let path = self
            .path_for(uid)
            .ok_or_else(|| KeyError::Denied(format!("no token location for uid {uid}")))?;
        UserToken::load(&path).map_err(|e| {
            KeyError::Denied(format!(
                "uid {uid} has no session ({}: {e}); run `csap login`",
                path.display()
            ))
        })
    }
}

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum LicenseSourceError {
    #[error("cannot start the key server client runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot connect to the key server: {0}")]
    Connect(ClientError),
    #[error("connecting to the key server timed out")]
    Timeout,
}

/// License cache key: whose session, which executable, which asset, what for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LicenseKey {
    /// BLAKE3 of the user token (the token itself never sits in a key).
    session: [u8; 32],
    app_digest: Arc<str>,
    asset_id: [u8; 16],
    action: Action,
}

/// A licensed content key held until its license ends.
struct Held {
    key: ContentKey,
    key_id: KeyId,
    /// Unix seconds.
    not_after: i64,
}

/// Evicts each license at its own `not_after`.
struct UntilNotAfter;

impl moka::Expiry<LicenseKey, Arc<Held>> for UntilNotAfter {
    fn expire_after_create(
        &self,
        _key: &LicenseKey,
        value: &Arc<Held>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = value.not_after.saturating_sub(keyserver::now()).max(0);
        Some(Duration::from_secs(left as u64))
    }
}

/// Content keys from key server licenses, for the attested caller. Cheap to share.
pub struct KeyServerSource {
    runtime: Option<tokio::runtime::Runtime>,
    client: LicenseClient,
    attestor: Attestor,
    tokens: TokenMap,
    scope: Option<String>,
    params: NewAssetParams,
    request_timeout: Duration,
    licenses: moka::sync::Cache<LicenseKey, Arc<Held>>,
}

impl std::fmt::Debug for KeyServerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyServerSource")
            .field("device", &self.client.device())
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl KeyServerSource {
    /// Connects to the key server with the device identity. Call from outside any async
    /// runtime (the source runs its own, small one for the FUSE threads to block on).
    pub fn connect(cfg: LicenseSourceConfig) -> Result<KeyServerSource, LicenseSourceError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("csap-license")
            .enable_all()
            .build()
            .map_err(LicenseSourceError::Runtime)?;
        let client = runtime
            .block_on(async {
                tokio::time::timeout(
                    cfg.request_timeout,
                    LicenseClient::connect(&cfg.server_url, &cfg.identity_dir),
                )
                .await
            })
            .map_err(|_| LicenseSourceError::Timeout)?
            .map_err(LicenseSourceError::Connect)?;
        Ok(KeyServerSource {
            runtime: Some(runtime),
            client,
            attestor: Attestor::new(cfg.attest_timeout),
            tokens: cfg.tokens,
            scope: cfg.scope,
            params: cfg.params,
            request_timeout: cfg.request_timeout,
            licenses: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .expire_after(UntilNotAfter)
                .build(),
        })
    }

    /// The device name the key server knows this mount by.
    pub fn device(&self) -> &str {
        self.client.device()
    }

    /// The caller measurement in use (shared digest cache).
    pub fn attestor(&self) -> &Attestor {
        &self.attestor
    }

    /// Drops every held license (after a revocation notice, or on demand).
    pub fn forget_all(&self) {
        self.licenses.invalidate_all();
    }

    /// Runs one key server call on the source's runtime, bounded by the request timeout.
    fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, KeyError> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| KeyError::Unavailable("key source is shutting down".into()))?;
        match runtime.block_on(async { tokio::time::timeout(self.request_timeout, fut).await }) {
            Err(_) => Err(KeyError::Unavailable(
                "key server did not answer in time".into(),
            )),
            Ok(result) => result.map_err(client_error),
        }
    }

    fn who(&self, caller: &Caller) -> Result<(UserToken, attest::Attestation), KeyError> {
        let token = self.tokens.load(caller.uid)?;
        let attestation = self.attestor.attest(caller.pid).map_err(attest_error)?;
        Ok((token, attestation))
    }
}

fn session_of(token: &UserToken) -> [u8; 32] {
    *blake3::hash(token.as_str().as_bytes()).as_bytes()
}

fn attest_error(e: AttestError) -> KeyError {
    match e {
        AttestError::Timeout { .. } | AttestError::Overloaded => {
            KeyError::Unavailable(e.to_string())
        }
        other => KeyError::Denied(other.to_string()),
    }
}

fn client_error(e: ClientError) -> KeyError {
    match e {
        ClientError::Denied(reason) => KeyError::Denied(format!("key server: {reason}")),
        ClientError::Server { status, body } if (400..500).contains(&status) => {
            KeyError::Denied(format!("key server answered {status}: {}", body.error))
        }
        other => KeyError::Unavailable(chain(&other)),
    }
}

/// An error with its causes, "outer: cause: root" (client errors hide the transport detail).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn to_content_key(key: &keyserver::ContentKey) -> ContentKey {
    ContentKey::from_bytes(*key.as_bytes())
}

impl KeySource for KeyServerSource {
    fn open_key(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
    ) -> Result<ContentKey, KeyError> {
        let (token, who) = self.who(caller)?;
        let cache_key = LicenseKey {
            session: session_of(&token),
            app_digest: who.app_digest.as_str().into(),
            asset_id: header.asset_id.0,
            action: Action::Read,
        };
        let held = match self.licenses.get(&cache_key) {
            Some(h) if h.not_after > keyserver::now() => h,
            _ => {
                let asset_id = header.asset_id.0;
                let license = self.call(self.client.request(
                    &token,
                    &who.app_digest,
                    Action::Read,
                    &[asset_id],
                ))?;
                let Some(grant) = license.grants.iter().find(|g| g.asset_id == asset_id) else {
                    let reason = license
                        .license
                        .denials
                        .iter()
                        .map(|d| d.reason.to_string())
                        .next()
                        .unwrap_or_else(|| "not granted".into());
                    tracing::info!(uid = caller.uid, pid = caller.pid, app = %who.app_digest, path, %reason, "license denied");
                    return Err(KeyError::Denied(format!("key server: {reason}")));
                };
                let held = Arc::new(Held {
                    key: to_content_key(&grant.key),
                    key_id: KeyId {
                        scope: ScopeId(grant.scope_id),
                        version: grant.grant.key_version,
                    },
                    not_after: grant.grant.not_after.min(license.license.not_after),
                });
                self.licenses.insert(cache_key, Arc::clone(&held));
                held
            }
        };
        // The header is not authenticated yet: a mismatch means tampering or a misfiled
        // asset, and the key we hold would fail the header MAC anyway.
        if header.key_id != held.key_id {
            return Err(KeyError::WrongKey {
                asset_key: header.key_id.to_string(),
                source_key: held.key_id.to_string(),
            });
        }
        Ok(held.key.clone())
    }

    fn create_key(&self, caller: &Caller, path: &str) -> Result<(Header, ContentKey), KeyError> {
        let scope = self.scope.as_deref().ok_or_else(|| {
            KeyError::Denied("this mount has no --scope, so it cannot create assets".into())
        })?;
        // The key server registers volume-relative paths ("show/f.exr"); the mount may hand
        // them over rooted ("/show/f.exr").
        let path = path.trim_start_matches('/');
        let (token, who) = self.who(caller)?;
        let license = self.call(self.client.create(&token, &who.app_digest, path, scope))?;
        let grant = license
            .grants
            .first()
            .ok_or_else(|| KeyError::Denied("key server granted no create license".into()))?;
        let header = Header::new(
            self.params.suite,
            self.params.chunk_size,
            AssetId(grant.asset_id),
            KeyId {
                scope: ScopeId(grant.scope_id),
                version: grant.grant.key_version,
            },
        )?;
        tracing::debug!(uid = caller.uid, pid = caller.pid, path, asset_id = %header.asset_id, "created asset under a create license");
        Ok((header, to_content_key(&grant.key)))
    }
}

impl Drop for KeyServerSource {
    fn drop(&mut self) {
        // Dropping a runtime from inside another runtime panics; this never blocks.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Reads one token file (for callers that configure a [`TokenMap`] from a path argument).
pub fn check_token_file(path: &Path) -> Result<(), std::io::Error> {
    UserToken::load(path).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyserver::testing;
    use keyserver::SwappableRules;

    /// Against a real key server on loopback (TLS 1.3, mTLS, SQLite): a create license keys a
    /// new asset, the same caller then opens it from the license (and the cache), and a caller
    /// running an unregistered executable is refused.
    #[test]
    fn licenses_from_a_loopback_key_server() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let rules = Arc::new(SwappableRules::new(
            authz::Evaluator::new(Vec::new()).unwrap(),
        ));
        let lb = rt
            .block_on(testing::spawn_loopback(
                &dir.path().join("ks"),
                rules.clone(),
            ))
            .unwrap();
        let device_dir = dir.path().join("device");
        let prov = rt
            .block_on(testing::provision(
                &lb,
                "ws-1",
                &device_dir,
                "alice",
                "unused",
                "shot010",
            ))
            .unwrap();
        // The application is `sleep`, run as a child without cargo's LD_LIBRARY_PATH (which
        // attestation would rightly refuse).
        let spawn = |prog: &str, args: &[&str]| {
            std::process::Command::new(prog)
                .args(args)
                .env_remove("LD_LIBRARY_PATH")
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut app = spawn("sleep", &["30"]);
        let digest = Attestor::new(Duration::from_secs(30))
            .attest(app.id())
            .unwrap()
            .app_digest;
        rt.block_on(
            lb.admin()
                .unwrap()
                .register_app(&keyserver::wire::RegisterAppRequest {
                    digest: digest.clone(),
                    name: "sleep".into(),
                    version: "1".into(),
                    vendor: None,
                }),
        )
        .unwrap();
        let now = keyserver::now();
        rules.replace(
            authz::Evaluator::new(vec![testing::RuleFor {
                id: "r1",
                user: "alice",
                device: "ws-1",
                app_digest: &digest,
                path_like: "show/*",
                actions: &[Action::Read, Action::Create],
                not_before: now - 60,
                not_after: now + 3600,
            }
            .build()])
            .unwrap(),
        );
        let token_file = dir.path().join("token");
        prov.token.save(&token_file).unwrap();

        let mut cfg = LicenseSourceConfig::new(lb.url.clone(), &device_dir);
        cfg.scope = Some("shot010".into());
        let uid = nix::unistd::getuid().as_raw();
        cfg.tokens.insert(uid, &token_file);
        let source = KeyServerSource::connect(cfg).unwrap();
        assert_eq!(source.device(), "ws-1");
        let caller = Caller {
            uid,
            gid: 0,
            pid: app.id(),
        };

        let (header, key) = source.create_key(&caller, "show/f0001.exr").unwrap();
        let opened = source.open_key(&caller, "show/f0001.exr", &header).unwrap();
        assert_eq!(opened.as_bytes(), key.as_bytes());
        let grants = |lb: &testing::Loopback| {
            rt.block_on(lb.admin().unwrap().audit_tail(1000))
                .unwrap()
                .iter()
                .filter(|r| r.decision == "grant")
                .count()
        };
        let before = grants(&lb);
        let again = source.open_key(&caller, "show/f0001.exr", &header).unwrap();
        assert_eq!(again.as_bytes(), key.as_bytes());
        assert_eq!(
            grants(&lb),
            before,
            "second open must come from the license cache"
        );

        // Outside the rule's paths: the key server refuses the create.
        assert!(matches!(
            source.create_key(&caller, "other/f.exr"),
            Err(KeyError::Denied(_))
        ));
        // A different executable (`tail`) is not a registered application.
        let mut child = spawn("tail", &["-f", "/dev/null"]);
        let other = Caller {
            uid,
            gid: 0,
            pid: child.id(),
        };
        let denied = source.open_key(&other, "show/f0001.exr", &header);
        for c in [&mut child, &mut app] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(
            matches!(&denied, Err(KeyError::Denied(m)) if m.contains("unknown_application")),
            "{denied:?}"
        );
        // No token for this uid: denied before any network call.
        let stranger = Caller {
            uid: uid.wrapping_add(4242),
            gid: 0,
            pid: std::process::id(),
        };
        assert!(matches!(
            source.open_key(&stranger, "show/f0001.exr", &header),
            Err(KeyError::Denied(_))
        ));

        drop(source);
        rt.block_on(lb.server.shutdown());
    }
}
