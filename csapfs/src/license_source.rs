//! [`KeyServerSource`]: the mount's key source in production — content keys come from key
//! server licenses asked for on behalf of the attested calling process.
//!
//! For each open: map the caller's uid to its user token (a token file per uid), measure the
//! caller's executable ([`attest`]), then look in the license cache keyed by
//! (user token, application digest, asset id, action); on a miss ask the key server over mTLS
//! with the device identity. The key server re-checks everything (user, device, application,
//! rules) itself; this side only decides what it asks for and holds what it was granted, until
//! the license's `not_after`. Every failure is a denial (`EACCES`), never a hang: attestation
//! and network calls are bounded by timeouts. An open for writing needs a `write` license
//! besides the `read` one (the key that writes also reads); a file created through the mount
//! is held under its `create` license, so a creator's handle ends like any other.
//!
//! With [`RulesConfig`] the source is also a policy enforcement point of its own: it subscribes
//! to ARDS as `mount:<device>`, checks every open and metadata operation against those rules
//! before any round trip (a deny needs no network), and on every change of the rule set drops
//! held licenses that lost their allowing rule and flags their leases revoked, so reads on
//! handles already open fail with `EACCES` (revocation in well under a second).
//!
//! With or without rules, the key server's identity revocations (a disabled user, a revoked
//! application digest, key version or this device) reach held licenses the same way, through
//! the long-poll subscription in [`revocations`].
//!
//! Its parts: [`tokens`] (whose token serves a caller), [`cache`] (held licenses), [`fetch`] (an
//! open's license: held, or asked for with its sibling batch), [`calls`] (bounded key server
//! calls), [`rules`] (the mount's own rules from ARDS), [`preload`] (licenses fetched when a rule
//! becomes active), [`attest`] (who the calling process is), [`decisions`] (the mount's own
//! decisions, audited), [`binding`] (registered path and generation), [`revocations`] (the key
//! server's identity revocations).

#![forbid(unsafe_code)]

mod allowances;
pub mod attest;
mod binding;
mod cache;
mod calls;
mod decisions;
mod fetch;
mod preload;
mod relay;
mod revocations;
mod rules;
mod siblings;
mod tokens;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyserver_client::wire::Action;
use keyserver_client::ClientError;
use keyserver_client::{LicenseClient, UserToken};

use crate::format::{AssetId, FormatError, Header};
use crate::keys::{
    Access, Caller, KeyError, KeySource, Lease, Licensed, NewAssetParams, RevocationListener,
};
use crate::storage::Storage;

use attest::{AttestError, Attestor};
use cache::{Held, LicenseKey, Licenses};
use calls::{chain, client_error};
use fetch::Asker;
use rules::MountRules;
pub use tokens::{check_token_file, TokenMap};
use tokens::{session_of, token_user};

/// One reading of what a mount holds ([`KeyServerSource::stats`]).
#[derive(Debug, Clone)]
pub struct SourceStats {
    /// Rules from ARDS in force (`None`: no subscription).
    pub rules: Option<usize>,
    /// Licenses held (each an asset's content key for one session, application and action).
    pub licenses: u64,
    /// The audit spool (`None`: the mount records nothing locally).
    pub spool: Option<crate::audit_spool::SpoolStats>,
}

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
    /// The mount's own rules from ARDS; `None` leaves every decision to the key server.
    pub rules: Option<RulesConfig>,
    /// The mount's backing store: listed for pre-loading (assets a rule released ahead of its
    /// window covers get their licenses when the window opens, before the first open) and for
    /// sibling batches.
    pub storage: Option<Arc<dyn Storage>>,
    /// Where the mount spools its own decisions for the key server's audit trail
    /// ([`crate::audit_spool`]); `None` records nothing locally.
    pub audit: Option<crate::audit_spool::SpoolConfig>,
}

/// How the mount subscribes to its rules (PEP id `mount:<device>`).
#[derive(Debug, Clone)]
pub struct RulesConfig {
    /// ARDS base URL, `https://host:port`.
    pub ards_url: String,
    /// Certificate (PEM) ARDS's TLS certificate must chain to.
    pub ards_ca_pem: String,
    /// Issuer name → key of the authz instances whose rules count.
    pub trusted_issuers: Vec<(String, csap_policy::IssuerPublicKey)>,
    /// Persistent rule cache (the mount enforces its last rules while ARDS is down).
    pub cache_path: PathBuf,
    /// How long `connect` waits for the first sync before going on with cached rules.
    pub sync_timeout: Duration,
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
            rules: None,
            storage: None,
            audit: None,
        }
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
    #[error("cannot subscribe to ARDS: {0}")]
    Ards(ards_client::ClientError),
    #[error("cannot subscribe to the key server's revocations: {0}")]
    Revocations(ClientError),
    #[error(transparent)]
    AuditSpool(#[from] crate::audit_spool::SpoolError),
}

/// Content keys from key server licenses, for the attested caller. Cheap to share.
pub struct KeyServerSource {
    runtime: Option<tokio::runtime::Runtime>,
    client: LicenseClient,
    /// Open-time license requests run here, driven by the FUSE thread that asks
    /// ([`KeyServerSource::request_here`]); `client` and `runtime` serve everything else.
    here: Option<tokio::runtime::Runtime>,
    here_client: LicenseClient,
    attestor: Attestor,
    tokens: TokenMap,
    scope: Option<String>,
    params: NewAssetParams,
    request_timeout: Duration,
    licenses: Licenses,
    /// The mount's ARDS subscription and its current rules (with the scope names they name).
    rules: Option<Arc<MountRules>>,
    /// The key server's identity revocations, applied as they come ([`revocations`]).
    revocations: Arc<revocations::Revocations>,
    /// Called after a sweep (rules or identities) revoked something.
    listeners: revocations::Listeners,
    /// The mount's own decisions on their way to the audit trail (see [`decisions`]).
    trail: Option<crate::audit_spool::AuditSpool>,
    /// The backing store, where a cold open finds its directory's other assets ([`siblings`]).
    storage: Option<Arc<dyn Storage>>,
    /// Sibling batches in flight, one per (session, application, directory).
    flights: siblings::Flights,
    /// Each asset's registered path and write generation, as licenses said ([`binding`]).
    registry: binding::Registry,
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
    pub fn connect(mut cfg: LicenseSourceConfig) -> Result<KeyServerSource, LicenseSourceError> {
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
        let licenses = cache::licenses();
        cfg.tokens.bind_to_device(client.device());
        let registry = binding::registry();
        let listeners = revocations::Listeners::default();
        let revocations = revocations::Subscription {
            client: client.clone(),
            device: client.device().to_string(),
            licenses: licenses.clone(),
            listeners: Arc::clone(&listeners),
            request_timeout: cfg.request_timeout,
        }
        .start(&runtime)?;
        let storage = cfg.storage.clone();
        let rules = match cfg.rules {
            None => None,
            Some(rc) => {
                let preload = cfg.storage.map(|storage| preload::Preloader {
                    handle: runtime.handle().clone(),
                    client: client.clone(),
                    tokens: cfg.tokens.clone(),
                    storage,
                    licenses: licenses.clone(),
                    registry: registry.clone(),
                    request_timeout: cfg.request_timeout,
                });
                Some(rules::subscribe(
                    &runtime,
                    rc,
                    &cfg.identity_dir,
                    client.device(),
                    &licenses,
                    preload,
                    Arc::clone(&listeners),
                )?)
            }
        };
        let here = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LicenseSourceError::Runtime)?;
        let here_client = client
            .with_own_connections()
            .map_err(LicenseSourceError::Connect)?;
        let trail = match cfg.audit {
            Some(spool) => Some(decisions::open_trail(
                spool,
                &runtime,
                &client,
                cfg.request_timeout,
            )?),
            None => None,
        };
        let attestor = Attestor::new(cfg.attest_timeout);
        attestor.set_allowances(Arc::new(allowances::KeyServerAllowances::new(
            runtime.handle().clone(),
            client.clone(),
            cfg.request_timeout,
        )));
        Ok(KeyServerSource {
            runtime: Some(runtime),
            client,
            here: Some(here),
            here_client,
            attestor,
            tokens: cfg.tokens,
            scope: cfg.scope,
            params: cfg.params,
            request_timeout: cfg.request_timeout,
            licenses,
            rules,
            revocations,
            listeners,
            trail,
            storage,
            flights: siblings::Flights::default(),
            registry,
        })
    }

    /// The mount's current rules from ARDS (`None` without a subscription).
    pub fn rules_evaluator(&self) -> Option<Arc<csap_policy::Evaluator>> {
        self.rules.as_ref().map(|r| r.snapshot().evaluator.clone())
    }

    /// The device name the key server knows this mount by.
    pub fn device(&self) -> &str {
        self.client.device()
    }

    /// Logins with this mount's device identity, for its session socket
    /// ([`crate::session::serve`]): how a user who cannot read the device key logs in.
    pub fn device_login(&self) -> Result<relay::MountLogin, LicenseSourceError> {
        relay::MountLogin::new(&self.client, self.request_timeout)
    }

    /// The caller measurement in use (shared digest cache).
    pub fn attestor(&self) -> &Attestor {
        &self.attestor
    }

    /// What the mount holds now, for its metrics and `csap status`.
    pub fn stats(&self) -> SourceStats {
        // entry_count is maintained lazily; pending evictions (ended licenses) go first.
        self.licenses.run_pending_tasks();
        SourceStats {
            rules: self
                .rules
                .as_ref()
                .map(|r| r.snapshot().evaluator.rules().len()),
            licenses: self.licenses.entry_count(),
            spool: self.trail.as_ref().map(|t| t.stats()),
        }
    }

    /// Drops every held license (after a revocation notice, or on demand).
    pub fn forget_all(&self) {
        self.licenses.invalidate_all();
    }

    fn who(&self, caller: &Caller) -> Result<(UserToken, attest::Attestation), KeyError> {
        let token = self.tokens.load(caller.uid)?;
        let attestation = self.attestor.attest(caller.pid).map_err(attest_error)?;
        Ok((token, attestation))
    }
}

/// A key server refusal an admin can fix says how: an unregistered build is named by its digest
/// and executable, with the command that registers it (the log is where they look first).
fn with_fix(e: KeyError, caller: &Caller, app_digest: Option<&str>) -> KeyError {
    match (e, app_digest) {
        (KeyError::Denied(m), Some(digest)) if m.ends_with("unknown_application") => {
            let exe = std::fs::read_link(format!("/proc/{}/exe", caller.pid))
                .map_or_else(|_| "PATH".into(), |p| p.display().to_string());
            KeyError::Denied(format!(
                "{m}: application blake3 {digest} ({exe}) is not registered; \
                 register it with `csap app register {exe}` if it may read these assets"
            ))
        }
        (e, _) => e,
    }
}

fn attest_error(e: AttestError) -> KeyError {
    match e {
        AttestError::Timeout { .. } | AttestError::Overloaded => {
            KeyError::Unavailable(e.to_string())
        }
        other => KeyError::Denied(other.to_string()),
    }
}

impl KeyServerSource {
    /// [`KeySource::open_key`], noting in `seen` who the caller turned out to be and who
    /// decided (for the audit record [`decisions`] makes of it).
    fn open_key_seen(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
        access: Access,
        seen: &mut decisions::Seen,
    ) -> Result<Licensed, KeyError> {
        let (token, who) = self.who(caller)?;
        seen.app = Some(who.app_digest.clone());
        let user = token_user(&token)
            .ok_or_else(|| KeyError::Denied(format!("uid {}: unreadable token", caller.uid)))?;
        seen.user = Some(user.clone());
        if let Some(rules) = &self.rules {
            let scope = rules.scope_name(&header.key_id.scope.0);
            self.local_check(&user, &who.app_digest, path, scope.as_deref(), Action::Read)?;
            if access == Access::Write {
                self.local_check(
                    &user,
                    &who.app_digest,
                    path,
                    scope.as_deref(),
                    Action::Write,
                )?;
            }
        }
        // The content key that writes also reads: a write open needs both licenses, and its
        // handle ends with either.
        let asker = Asker {
            caller,
            token: &token,
            user: &user,
            app: &who.app_digest,
        };
        let read = self.held(&asker, path, header, Action::Read, seen)?;
        let mut lease = Lease::tied_to(read.revoked.clone(), read.not_after);
        if access == Access::Write {
            let write = self.held(&asker, path, header, Action::Write, seen)?;
            lease = lease.and(Lease::tied_to(write.revoked.clone(), write.not_after));
        }
        Ok(Licensed {
            key: read.key.clone(),
            lease,
        })
    }

    /// [`KeySource::authorize`] with local rules, noting the caller in `seen`.
    fn authorize_seen(
        &self,
        caller: &Caller,
        path: &str,
        access: Access,
        seen: &mut decisions::Seen,
    ) -> Result<(), KeyError> {
        let (token, who) = self.who(caller)?;
        seen.app = Some(who.app_digest.clone());
        let user = token_user(&token)
            .ok_or_else(|| KeyError::Denied(format!("uid {}: unreadable token", caller.uid)))?;
        seen.user = Some(user.clone());
        let (action, scope) = match access {
            Access::Read => (Action::Read, None),
            Access::Write => (Action::Write, None),
            Access::Create => (Action::Create, self.scope.as_deref()),
            Access::Delete => (Action::Delete, None),
        };
        self.local_check(&user, &who.app_digest, path, scope, action)
    }
}

impl KeySource for KeyServerSource {
    fn open_key(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
        access: Access,
    ) -> Result<Licensed, KeyError> {
        let path = path.trim_start_matches('/');
        let mut seen = decisions::Seen::default();
        let result = self
            .open_key_seen(caller, path, header, access, &mut seen)
            .map_err(|e| with_fix(e, caller, seen.app.as_deref()));
        self.audit_open(caller, path, header, access, seen, result)
    }

    fn on_revocation(&self, listener: RevocationListener) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }

    fn authorize(&self, caller: &Caller, path: &str, access: Access) -> Result<(), KeyError> {
        if self.rules.is_none() {
            return Ok(());
        }
        let path = path.trim_start_matches('/');
        let mut seen = decisions::Seen::default();
        let result = self.authorize_seen(caller, path, access, &mut seen);
        self.audit_authorize(caller, path, access, seen, result)
    }

    fn renamed(
        &self,
        caller: &Caller,
        header: &Header,
        _from: &str,
        to: &str,
    ) -> Result<(), KeyError> {
        let to = to.trim_start_matches('/');
        let (token, who) = self.who(caller)?;
        let moved =
            self.call(
                self.client
                    .rename(&token, &who.app_digest, &header.asset_id.0, to),
            )?;
        // Opens at the new path are checked against the new registration.
        self.registry
            .insert(header.asset_id.0, binding::registered_from(&moved));
        Ok(())
    }

    fn check_binding(&self, caller: &Caller, path: &str, header: &Header) -> Result<(), KeyError> {
        self.check_bound(caller, path.trim_start_matches('/'), header)
    }

    fn new_version(
        &self,
        caller: &Caller,
        path: &str,
        header: &Header,
        write_header: &mut dyn FnMut(u32) -> std::io::Result<()>,
    ) -> Result<(), KeyError> {
        self.advance_generation(caller, path.trim_start_matches('/'), header, write_header)
    }

    fn create_key(&self, caller: &Caller, path: &str) -> Result<(Header, Licensed), KeyError> {
        let scope = self.scope.as_deref().ok_or_else(|| {
            KeyError::Denied("this mount has no --scope, so it cannot create assets".into())
        })?;
        // The key server registers volume-relative paths ("show/f.exr"); the mount may hand
        // them over rooted ("/show/f.exr").
        let path = path.trim_start_matches('/');
        let (token, who) = self.who(caller)?;
        let user = token_user(&token)
            .ok_or_else(|| KeyError::Denied(format!("uid {}: unreadable token", caller.uid)))?;
        let license = self
            .call(self.client.create(&token, &who.app_digest, path, scope))
            .map_err(|e| with_fix(e, caller, Some(&who.app_digest)))?;
        let grant = license
            .grants
            .first()
            .ok_or_else(|| KeyError::Denied("key server granted no create license".into()))?;
        let header = grant_header(&self.params, grant)?;
        tracing::debug!(uid = caller.uid, pid = caller.pid, path, asset_id = %header.asset_id, "created asset under a create license");
        // Held like any license, so the revocation sweep and `not_after` reach the creator's
        // handle too.
        let held = self.hold(&user, grant, license.license.not_after);
        self.licenses.insert(
            LicenseKey {
                session: session_of(&token),
                app_digest: who.app_digest.as_str().into(),
                asset_id: grant.asset_id,
                action: Action::Create,
            },
            Arc::clone(&held),
        );
        Ok((
            header,
            Licensed {
                key: held.key.clone(),
                lease: Lease::tied_to(held.revoked.clone(), held.not_after),
            },
        ))
    }
}

impl Drop for KeyServerSource {
    fn drop(&mut self) {
        // First: its last shipping attempt runs on the runtime.
        drop(self.trail.take());
        // Dropping a runtime from inside another runtime panics; this never blocks.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        if let Some(rt) = self.here.take() {
            rt.shutdown_background();
        }
    }
}

/// The header of a new asset under a create license's grant, with `params`' suite and chunk
/// size: the asset id, scope and key version are the key server's. (The mount's creates,
/// `csap import` and the test kit's importer make their headers here.)
pub fn grant_header(
    params: &NewAssetParams,
    grant: &keyserver_client::license::OpenedGrant,
) -> Result<Header, FormatError> {
    Header::new(
        params.suite,
        params.chunk_size,
        AssetId(grant.asset_id),
        cache::grant_key_id(grant),
    )
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
            csap_policy::Evaluator::new(Vec::new()).unwrap(),
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
            let child = std::process::Command::new(prog)
                .args(args)
                .env_remove("LD_LIBRARY_PATH")
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            attest::tests::wait_exec_done(child.id());
            child
        };
        let mut app = spawn("sleep", &["30"]);
        let digest = Attestor::new(Duration::from_secs(30))
            .attest(app.id())
            .unwrap()
            .app_digest;
        rt.block_on(lb.admin().unwrap().register_app(
            &keyserver_client::wire::RegisterAppRequest {
                digest: digest.clone(),
                name: "sleep".into(),
                version: "1".into(),
                vendor: None,
                code: Default::default(),
            },
        ))
        .unwrap();
        let now = csap_base::unix_now().unwrap();
        rules.replace(
            csap_policy::Evaluator::new(vec![testing::RuleFor {
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

        let (header, created) = source.create_key(&caller, "show/f0001.exr").unwrap();
        let key = created.key;
        assert!(!created.lease.is_revoked());
        let opened = source
            .open_key(&caller, "show/f0001.exr", &header, Access::Read)
            .unwrap();
        assert_eq!(opened.key.as_bytes(), key.as_bytes());
        let grants = |lb: &testing::Loopback| {
            rt.block_on(lb.admin().unwrap().audit_tail(1000))
                .unwrap()
                .iter()
                .filter(|r| r.decision == "grant")
                .count()
        };
        let before = grants(&lb);
        let again = source
            .open_key(&caller, "show/f0001.exr", &header, Access::Read)
            .unwrap();
        assert_eq!(again.key.as_bytes(), key.as_bytes());
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
        let denied = source
            .open_key(&other, "show/f0001.exr", &header, Access::Read)
            .map(|_| ());
        for c in [&mut child, &mut app] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(
            matches!(&denied, Err(KeyError::Denied(m)) if m.contains("unknown_application")
                && m.contains("is not registered; register it with `csap app register")
                && m.contains("/tail`")),
            "{denied:?}"
        );
        // No token for this uid: denied before any network call.
        let stranger = Caller {
            uid: uid.wrapping_add(4242),
            gid: 0,
            pid: std::process::id(),
        };
        assert!(matches!(
            source.open_key(&stranger, "show/f0001.exr", &header, Access::Read),
            Err(KeyError::Denied(_))
        ));

        drop(source);
        rt.block_on(lb.server.shutdown());
    }
}
