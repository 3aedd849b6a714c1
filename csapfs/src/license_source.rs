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

#![forbid(unsafe_code)]

mod allowances;
pub mod attest;
mod binding;
mod decisions;
mod relay;
mod revocations;
mod siblings;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use keyserver_client::wire::Action;
use keyserver_client::ClientError;
use keyserver_client::{LicenseClient, UserToken};

use crate::crypto::ContentKey;
use crate::format::{AssetId, Header, KeyId, ScopeId};
use crate::keys::{
    Access, Caller, KeyError, KeySource, Lease, Licensed, NewAssetParams, RevocationListener,
};

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
    /// The mount's own rules from ARDS; `None` leaves every decision to the key server.
    pub rules: Option<RulesConfig>,
    /// The mount's backing directory: walked for pre-loading (assets a rule released ahead of
    /// its window covers get their licenses when the window opens, before the first open).
    pub backing: Option<PathBuf>,
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
            backing: None,
            audit: None,
        }
    }
}

/// uid → user token file. A uid without an explicit entry uses the file `csap login` writes
/// for it: `$XDG_RUNTIME_DIR/csap/token` (else `~/.config/csap/token`) for the mounting user,
/// `/run/user/<uid>/csap/token` for others. A token serves a uid only if it was issued for
/// that uid on this device ([`crate::session::check_binding`]), wherever it was found.
#[derive(Debug, Clone, Default)]
pub struct TokenMap {
    explicit: HashMap<u32, PathBuf>,
    /// Sessions handed over by `csap login` on the mount's Unix socket (uid from SO_PEERCRED);
    /// looked up before any token file.
    sessions: Option<Arc<crate::session::SessionRegistry>>,
    /// The device this mount runs as (set on connecting); no token is used before it is known.
    device: Option<String>,
}

impl TokenMap {
    /// Takes sessions from `registry` (served by [`crate::session::serve`]) before token files.
    pub fn use_sessions(&mut self, registry: Arc<crate::session::SessionRegistry>) {
        self.sessions = Some(registry);
    }

    /// Uses only tokens issued on `device` (the key server's name for this mount's certificate).
    pub fn bind_to_device(&mut self, device: &str) {
        self.device = Some(device.to_string());
    }

    /// `token` if it may serve `uid` here, else the denial saying why.
    fn bound(&self, uid: u32, token: UserToken) -> Result<UserToken, KeyError> {
        let Some(device) = &self.device else {
            return Err(KeyError::Denied(
                "the mount does not know its device yet: no token is used".into(),
            ));
        };
        match crate::session::check_binding(token.as_str(), uid, device) {
            Ok(_) => Ok(token),
            Err(e) => {
                tracing::warn!(uid, "token refused for uid {uid}: {e}");
                Err(KeyError::Denied(format!("uid {uid}: {e}")))
            }
        }
    }

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

    /// A token of `user` among the configured token files (explicit ones, then the mounting
    /// user's default), for work done before any of their processes opens a file.
    pub fn token_of_user(&self, user: &str) -> Option<UserToken> {
        let of_user = |(uid, token): (u32, UserToken)| {
            let token = self.bound(uid, token).ok()?;
            (token_user(&token).as_deref() == Some(user)).then_some(token)
        };
        if let Some(registry) = &self.sessions {
            let session = registry
                .uids()
                .into_iter()
                .filter_map(|uid| registry.session(uid).map(|t| (uid, t)))
                .find_map(of_user);
            if session.is_some() {
                return session;
            }
        }
        let me = nix::unistd::getuid().as_raw();
        let mut paths: Vec<(u32, PathBuf)> = self
            .explicit
            .iter()
            .map(|(uid, p)| (*uid, p.clone()))
            .collect();
        paths.extend(self.path_for(me).map(|p| (me, p)));
        paths
            .into_iter()
            .filter_map(|(uid, p)| UserToken::load(&p).ok().map(|t| (uid, t)))
            .find_map(of_user)
    }

    /// Reads the token of `uid` (re-read at every license request, so a new `csap login`
    /// takes effect without remounting).
    pub fn load(&self, uid: u32) -> Result<UserToken, KeyError> {
        if let Some(token) = self.sessions.as_ref().and_then(|s| s.session(uid)) {
            return self.bound(uid, token);
        }
        let path = self
            .path_for(uid)
            .ok_or_else(|| KeyError::Denied(format!("no token location for uid {uid}")))?;
        let token = UserToken::load(&path).map_err(|e| {
            KeyError::Denied(format!(
                "uid {uid} has no session ({}: {e}); run `csap login`",
                path.display()
            ))
        })?;
        self.bound(uid, token)
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
    /// What the license was for, re-checked against the mount's rules at every change.
    user: String,
    path: String,
    scope: String,
    /// Set when the license lost its allowing rule; shared with every handle opened under it.
    revoked: Arc<AtomicBool>,
}

impl Held {
    /// A granted key of `user`, held until the grant or its license ends (`license_end`).
    fn from_grant(
        user: &str,
        grant: &keyserver_client::license::OpenedGrant,
        license_end: i64,
    ) -> Held {
        Held {
            key: to_content_key(&grant.key),
            key_id: KeyId {
                scope: ScopeId(grant.scope_id),
                version: grant.grant.key_version,
            },
            not_after: grant.grant.not_after.min(license_end),
            user: user.to_string(),
            path: grant.grant.path.clone(),
            scope: grant.grant.scope.clone(),
            revoked: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// What a cold open asks the key server for ([`KeyServerSource::sibling_batch`]).
enum Batch<'a> {
    /// Another open's batch of the directory brought this asset's license.
    Landed(Arc<Held>),
    /// Ask for the asset and `siblings`; `leading` ends this directory's flight when dropped.
    Ask {
        leading: Option<siblings::Leading<'a>>,
        siblings: Vec<siblings::Sibling>,
    },
}

/// Who asks for a license: the calling process, its user's session, the measured application.
#[derive(Clone, Copy)]
struct Asker<'a> {
    caller: &'a Caller,
    token: &'a UserToken,
    user: &'a str,
    app: &'a str,
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
        // An unusable clock keeps nothing: the license is re-requested (and refused).
        let left =
            csap_base::unix_now().map_or(0, |now| value.not_after.saturating_sub(now).max(0));
        Some(Duration::from_secs(left as u64))
    }
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
    licenses: moka::sync::Cache<LicenseKey, Arc<Held>>,
    /// The mount's ARDS subscription and its current rules (with the scope names they name).
    rules: Option<Arc<MountRules>>,
    /// The key server's identity revocations, applied as they come ([`revocations`]).
    revocations: Arc<revocations::Revocations>,
    /// Called after a sweep (rules or identities) revoked something.
    listeners: revocations::Listeners,
    /// The mount's own decisions on their way to the audit trail (see [`decisions`]).
    trail: Option<crate::audit_spool::AuditSpool>,
    /// The backing store, where a cold open finds its directory's other assets ([`siblings`]).
    backing: Option<PathBuf>,
    /// Sibling batches in flight, one per (session, application, directory).
    flights: siblings::Flights,
    /// Each asset's registered path and write generation, as licenses said ([`binding`]).
    registry: binding::Registry,
}

/// The mount's rule set as last seen, and the subscription that updates it.
struct MountRules {
    client: ards_client::RulesClient,
    device: String,
    current: RwLock<Arc<LocalRules>>,
    /// Scope id → scope name, learned from licenses (rules name scopes, headers carry ids).
    scope_names: RwLock<HashMap<[u8; 16], String>>,
    /// Called after a sweep that revoked something (page-cache invalidation).
    listeners: revocations::Listeners,
    /// Ids of rules seen pending (released ahead of their window): pre-loaded once active.
    pending_seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// One rule-set snapshot: the evaluator, and every scope name its rules' asset selectors use
/// (tried when a check's scope is not known yet).
struct LocalRules {
    evaluator: Arc<csap_policy::Evaluator>,
    scopes: Vec<String>,
}

impl LocalRules {
    fn from(evaluator: Arc<csap_policy::Evaluator>) -> LocalRules {
        let mut scopes: Vec<String> = evaluator
            .rules()
            .iter()
            .filter_map(|r| csap_policy::template::RuleSpec::from_rendered(&r.policy))
            .flat_map(|spec| spec.assets.into_iter().filter_map(|a| a.scope))
            .collect();
        scopes.sort();
        scopes.dedup();
        LocalRules { evaluator, scopes }
    }

    /// Allowed by some rule? With `scope` unknown, any scope a rule names (or none) will do.
    fn allows(
        &self,
        user: &str,
        app: &str,
        device: &str,
        path: &str,
        scope: Option<&str>,
        action: Action,
    ) -> bool {
        let now = match csap_base::unix_now() {
            Ok(now) => now,
            Err(err) => {
                tracing::warn!(error = %err, "local rules deny: the clock is unusable");
                return false;
            }
        };
        let decide = |scope: &str| {
            self.evaluator
                .decide(&csap_policy::AccessRequest {
                    participant: user,
                    application_digest: app,
                    device,
                    asset_path: path,
                    asset_scope: scope,
                    action,
                    now,
                })
                .allowed
        };
        match scope {
            Some(s) => decide(s),
            None => decide("") || self.scopes.iter().any(|s| decide(s)),
        }
    }
}

impl MountRules {
    fn snapshot(&self) -> Arc<LocalRules> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn scope_name(&self, id: &[u8; 16]) -> Option<String> {
        self.scope_names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Takes the subscription's current rules, then revokes every held license they no longer
    /// allow: its lease flag is set (open handles fail their next read) and it is dropped.
    fn refresh(&self, licenses: &moka::sync::Cache<LicenseKey, Arc<Held>>) -> usize {
        let rules = Arc::new(LocalRules::from(self.client.evaluator()));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = rules.clone();
        let mut revoked = 0;
        for (key, held) in licenses.iter() {
            if !rules.allows(
                &held.user,
                &key.app_digest,
                &self.device,
                &held.path,
                Some(&held.scope),
                key.action,
            ) {
                held.revoked.store(true, Ordering::Release);
                licenses.invalidate(key.as_ref());
                revoked += 1;
                tracing::info!(user = %held.user, app = %key.app_digest, path = %held.path, "license revoked: no rule of this mount allows it any more");
            }
        }
        revoked
    }
}

impl MountRules {
    /// Active rules that were seen pending and are not pre-loaded yet (each is returned once);
    /// records the rules pending now.
    fn due_for_preload(&self) -> Vec<csap_policy::Rule> {
        let mut seen = self.pending_seen.lock().unwrap_or_else(|p| p.into_inner());
        for r in self.client.pending() {
            seen.insert(r.id);
        }
        let active = self.snapshot();
        let due: Vec<csap_policy::Rule> = active
            .evaluator
            .rules()
            .iter()
            .filter(|r| seen.remove(&r.id))
            .cloned()
            .collect();
        due
    }
}

/// Fetches licenses for the assets a newly active rule covers, so the first open in the
/// window is served from the license cache. Runs on a blocking thread of the source runtime.
#[derive(Clone)]
struct Preloader {
    handle: tokio::runtime::Handle,
    client: LicenseClient,
    tokens: TokenMap,
    backing: PathBuf,
    licenses: moka::sync::Cache<LicenseKey, Arc<Held>>,
    registry: binding::Registry,
    request_timeout: Duration,
}

/// Whether a rule's selectors name the asset at `rel` by path — the one glob dialect of every
/// PEP ([`csap_policy::glob`]); scopes are for the key server to check.
fn selects(selectors: &[csap_policy::request::AssetSelector], rel: &str) -> bool {
    selectors.iter().any(|s| {
        s.path
            .as_deref()
            .is_none_or(|p| csap_policy::glob::matches(p, rel))
    })
}

/// Most assets per pre-load license request.
const PRELOAD_BATCH: usize = 256;

impl Preloader {
    fn run(&self, rules: Vec<csap_policy::Rule>) {
        for rule in rules {
            let Some(spec) = csap_policy::template::RuleSpec::from_rendered(&rule.policy) else {
                tracing::debug!(rule_id = %rule.id, "not a template rule; nothing to pre-load");
                continue;
            };
            if !spec.actions.contains(&Action::Read) {
                continue;
            }
            let Some(token) = self.tokens.token_of_user(&spec.participant) else {
                tracing::info!(rule_id = %rule.id, user = %spec.participant, "no session of this user on the mount; nothing pre-loaded");
                continue;
            };
            let assets = self.covered(&spec.assets);
            for app in &spec.applications {
                let n = self.license(&token, &spec.participant, app, &assets);
                tracing::info!(rule_id = %rule.id, user = %spec.participant, app = %app, assets = assets.len(), licensed = n, "pre-loaded licenses");
            }
        }
    }

    /// (asset id, path) of every asset in the backing store a selector's path matches.
    fn covered(
        &self,
        selectors: &[csap_policy::request::AssetSelector],
    ) -> Vec<([u8; 16], String)> {
        let mut found = Vec::new();
        let mut dirs = vec![self.backing.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let path = entry.path();
                if kind.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if !kind.is_file() {
                    continue;
                }
                let Some(rel) = path
                    .strip_prefix(&self.backing)
                    .ok()
                    .and_then(|r| r.to_str())
                    .map(str::to_owned)
                else {
                    continue;
                };
                if !selects(selectors, &rel) {
                    continue;
                }
                if let Ok(header) = std::fs::File::open(&path)
                    .map_err(crate::asset::AssetError::from)
                    .and_then(|f| crate::asset::read_header(&f))
                {
                    found.push((header.asset_id.0, rel));
                }
            }
        }
        found
    }

    /// Licenses `assets` for (token, app) in batches, retrying briefly while the key server
    /// has not activated the rule yet (both sides switch at the same second). Returns how many
    /// were granted.
    fn license(
        &self,
        token: &UserToken,
        user: &str,
        app: &str,
        assets: &[([u8; 16], String)],
    ) -> usize {
        let session = session_of(token);
        let mut granted = 0;
        for batch in assets.chunks(PRELOAD_BATCH) {
            let mut left: Vec<[u8; 16]> = batch.iter().map(|(id, _)| *id).collect();
            for attempt in 0..5 {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_millis(400));
                }
                let answer = self.handle.block_on(async {
                    tokio::time::timeout(
                        self.request_timeout,
                        siblings::retry_rate_limited(|| {
                            self.client.request(token, app, Action::Read, &left)
                        }),
                    )
                    .await
                });
                let license = match answer {
                    Ok(Ok(l)) => l,
                    Ok(Err(e)) => {
                        tracing::info!(error = %chain(&e), "pre-load request failed");
                        continue;
                    }
                    Err(_) => {
                        tracing::info!("pre-load request timed out");
                        continue;
                    }
                };
                for grant in &license.grants {
                    self.registry
                        .insert(grant.asset_id, binding::registered_of(grant));
                    let held = Arc::new(Held::from_grant(user, grant, license.license.not_after));
                    self.licenses.insert(
                        LicenseKey {
                            session,
                            app_digest: app.into(),
                            asset_id: grant.asset_id,
                            action: Action::Read,
                        },
                        held,
                    );
                    granted += 1;
                }
                left.retain(|id| !license.grants.iter().any(|g| &g.asset_id == id));
                if left.is_empty() {
                    break;
                }
            }
        }
        granted
    }
}

/// The user a token names. The claims are read without checking the MAC (only the key server
/// can); a forged name here can only make the local check stricter than the key server's.
fn token_user(token: &UserToken) -> Option<String> {
    csap_base::token::read_claims_unverified(token.as_str())
        .ok()
        .map(|c| c.user)
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
        let licenses: moka::sync::Cache<LicenseKey, Arc<Held>> = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .expire_after(UntilNotAfter)
            .build();
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
        let backing = cfg.backing.clone();
        let rules = match cfg.rules {
            None => None,
            Some(rc) => {
                let preload = cfg.backing.map(|backing| Preloader {
                    handle: runtime.handle().clone(),
                    client: client.clone(),
                    tokens: cfg.tokens.clone(),
                    backing,
                    licenses: licenses.clone(),
                    registry: registry.clone(),
                    request_timeout: cfg.request_timeout,
                });
                Some(Self::subscribe(
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
            backing,
            flights: siblings::Flights::default(),
            registry,
        })
    }

    /// Starts the ARDS subscription as `mount:<device>` and the task that applies every change
    /// of the rule set (revocation sweep).
    fn subscribe(
        runtime: &tokio::runtime::Runtime,
        rc: RulesConfig,
        identity_dir: &Path,
        device: &str,
        licenses: &moka::sync::Cache<LicenseKey, Arc<Held>>,
        preload: Option<Preloader>,
        listeners: revocations::Listeners,
    ) -> Result<Arc<MountRules>, LicenseSourceError> {
        let pep_id = csap_policy::template::mount_pep(device);
        // ARDS authenticates the mount with the device's certificate (PEP `mount:<device>`).
        let identity = csap_identity::ClientIdentity::load(identity_dir).map_err(|e| {
            LicenseSourceError::Ards(ards_client::ClientError::Config(format!(
                "device identity for ARDS: {e}"
            )))
        })?;
        let client = runtime
            .block_on(ards_client::RulesClient::start(ards_client::ClientConfig {
                url: rc.ards_url.clone(),
                pep_id: pep_id.clone(),
                ca_pem: rc.ards_ca_pem,
                identity,
                trusted_issuers: rc.trusted_issuers,
                cache_path: rc.cache_path,
            }))
            .map_err(LicenseSourceError::Ards)?;
        if !runtime.block_on(client.wait_synced(rc.sync_timeout)) {
            tracing::warn!(ards = %rc.ards_url, %pep_id, "ARDS not reached yet; enforcing the cached rules (none: everything is denied) until it is");
        }
        let mut changes = client.subscribe();
        let rules = Arc::new(MountRules {
            current: RwLock::new(Arc::new(LocalRules::from(client.evaluator()))),
            client,
            device: device.to_string(),
            scope_names: RwLock::new(HashMap::new()),
            pending_seen: std::sync::Mutex::new(std::collections::HashSet::new()),
            listeners,
        });
        tracing::info!(%pep_id, rules = rules.snapshot().evaluator.rules().len(), "subscribed to ARDS");
        let (weak, licenses, preload) = (Arc::downgrade(&rules), licenses.clone(), preload);
        runtime.spawn(async move {
            loop {
                if let Some(rules) = weak.upgrade() {
                    let revoked = rules.refresh(&licenses);
                    tracing::debug!(revoked, "rule set changed");
                    if revoked > 0 {
                        revocations::notify(&rules.listeners);
                    }
                    if let Some(preload) = preload.as_ref() {
                        let due = rules.due_for_preload();
                        if !due.is_empty() {
                            // Off the change loop: a slow key server must not delay revocations.
                            let preload = preload.clone();
                            tokio::task::spawn_blocking(move || preload.run(due));
                        }
                    }
                } else {
                    break;
                }
                if changes.changed().await.is_err() {
                    break;
                }
            }
        });
        Ok(rules)
    }

    /// The mount's current rules from ARDS (`None` without a subscription).
    pub fn rules_evaluator(&self) -> Option<Arc<csap_policy::Evaluator>> {
        self.rules.as_ref().map(|r| r.snapshot().evaluator.clone())
    }

    /// Local rule check for `user`/`app` (no rules configured: allowed).
    fn local_check(
        &self,
        user: &str,
        app: &str,
        path: &str,
        scope: Option<&str>,
        action: Action,
    ) -> Result<(), KeyError> {
        let Some(rules) = &self.rules else {
            return Ok(());
        };
        if rules
            .snapshot()
            .allows(user, app, &rules.device, path, scope, action)
        {
            return Ok(());
        }
        tracing::info!(
            user,
            app,
            path,
            ?action,
            "denied by the mount's rules (no key server round trip)"
        );
        Err(KeyError::Denied(format!(
            "no rule of this mount allows {action:?} on {path} for {user} with this application"
        )))
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

    /// Drops every held license (after a revocation notice, or on demand).
    pub fn forget_all(&self) {
        self.licenses.invalidate_all();
    }

    /// The license of `token`/`app` for `action` on the asset of `header`: held already, or
    /// asked for now (and then held until its `not_after`).
    fn held(
        &self,
        asker: &Asker<'_>,
        path: &str,
        header: &Header,
        action: Action,
        seen: &mut decisions::Seen,
    ) -> Result<Arc<Held>, KeyError> {
        let Asker { token, app, .. } = *asker;
        let asset_id = header.asset_id.0;
        let cache_key = LicenseKey {
            session: session_of(token),
            app_digest: app.into(),
            asset_id,
            action,
        };
        let held = match self.licenses.get(&cache_key) {
            Some(h)
                if csap_base::unix_now().is_ok_and(|now| h.not_after > now)
                    && !h.revoked.load(Ordering::Acquire) =>
            {
                seen.used_cached(action);
                h
            }
            _ => self.fetch_unrevoked(asker, path, &cache_key, seen)?,
        };
        // The header is not authenticated yet: a mismatch means tampering or a misfiled
        // asset, and the key we hold would fail the header MAC anyway.
        if header.key_id != held.key_id {
            return Err(KeyError::WrongKey {
                asset_key: header.key_id.to_string(),
                source_key: held.key_id.to_string(),
            });
        }
        Ok(held)
    }

    /// Asks for the license of `cache_key` and holds it. A grant cached while an identity
    /// revocation sweep ran may predate that revocation and have escaped the sweep: it is
    /// dropped and asked for again (the key server has the revocation by then).
    fn fetch_unrevoked(
        &self,
        asker: &Asker<'_>,
        path: &str,
        cache_key: &LicenseKey,
        seen: &mut decisions::Seen,
    ) -> Result<Arc<Held>, KeyError> {
        for _ in 0..3 {
            let sweeps = self.revocations.sweeps();
            let held = self.fetch(asker, path, cache_key, seen)?;
            if self.revocations.sweeps() == sweeps {
                return Ok(held);
            }
            held.revoked.store(true, Ordering::Release);
            self.licenses.invalidate(cache_key);
            tracing::debug!(
                path,
                "a revocation arrived during the license request; asking again"
            );
        }
        Err(KeyError::Unavailable(
            "identity revocations kept arriving during the license request".into(),
        ))
    }

    /// One license request for `cache_key` (with its sibling batch, see [`siblings`]); the
    /// grants are held in the cache.
    fn fetch(
        &self,
        asker: &Asker<'_>,
        path: &str,
        cache_key: &LicenseKey,
        seen: &mut decisions::Seen,
    ) -> Result<Arc<Held>, KeyError> {
        let Asker {
            caller,
            token,
            user,
            app,
        } = *asker;
        let (asset_id, action) = (cache_key.asset_id, cache_key.action);
        let (_leading, batch) = match self.sibling_batch(asker, path, cache_key) {
            Batch::Landed(held) => {
                seen.used_cached(action);
                return Ok(held);
            }
            Batch::Ask { leading, siblings } => (leading, siblings),
        };
        let mut ids = vec![asset_id];
        ids.extend(batch.iter().map(|s| s.asset_id));
        let sweeps = self.revocations.sweeps();
        let mut answer = self
            .request_here(token, app, action, &ids)
            .inspect_err(|e| seen.asked(e))?;
        if ids.len() > 1 && matches!(&answer, Err(ClientError::Server { status: 400, .. })) {
            // A key server configured with a smaller batch limit: this asset alone.
            tracing::info!(
                assets = ids.len(),
                "the key server refused the sibling batch; asking for the asset alone"
            );
            answer = self
                .request_here(token, app, action, &ids[..1])
                .inspect_err(|e| seen.asked(e))?;
        }
        let license = answer
            .map_err(client_error)
            .inspect_err(|e| seen.asked(e))?;
        self.hold_siblings(user, cache_key, &license, sweeps);
        let Some(grant) = license.grants.iter().find(|g| g.asset_id == asset_id) else {
            seen.refused_by_key_server();
            let reason = license
                .license
                .denials
                .iter()
                .find(|d| d.asset_id == hex::encode(asset_id))
                .map(|d| d.reason.to_string())
                .unwrap_or_else(|| "not granted".into());
            tracing::info!(uid = caller.uid, pid = caller.pid, app, path, ?action, %reason, "license denied");
            return Err(KeyError::Denied(format!("key server: {reason}")));
        };
        let held = self.hold(user, grant, license.license.not_after);
        self.licenses.insert(cache_key.clone(), Arc::clone(&held));
        Ok(held)
    }

    /// What a cold open asks for besides its own asset: for a read on a mount with rules and a
    /// backing store, the other assets of its directory that the rules allow this caller and
    /// that are not held yet — or, if another open of the directory is asking already, nothing
    /// until that answer has landed.
    fn sibling_batch(&self, asker: &Asker<'_>, path: &str, cache_key: &LicenseKey) -> Batch<'_> {
        let none = Batch::Ask {
            leading: None,
            siblings: Vec::new(),
        };
        let (Some(rules), Some(backing)) = (&self.rules, &self.backing) else {
            return none;
        };
        if cache_key.action != Action::Read {
            return none;
        }
        let flight = siblings::FlightKey {
            session: cache_key.session,
            app_digest: Arc::clone(&cache_key.app_digest),
            dir: path.rsplit_once('/').map_or("", |(dir, _)| dir).to_string(),
        };
        let leading = match self.flights.join(flight) {
            siblings::Turn::Follow(flight) => {
                flight.wait(self.request_timeout);
                return match self.usable(cache_key) {
                    Some(held) => Batch::Landed(held),
                    None => none,
                };
            }
            siblings::Turn::Lead(leading) => leading,
        };
        let local = rules.snapshot();
        let siblings = siblings::siblings(backing, path, siblings::SIBLING_BATCH - 1)
            .into_iter()
            .filter(|s| {
                let key = LicenseKey {
                    asset_id: s.asset_id,
                    ..cache_key.clone()
                };
                let scope = rules.scope_name(&s.scope_id);
                self.usable(&key).is_none()
                    && local.allows(
                        asker.user,
                        asker.app,
                        &rules.device,
                        &s.path,
                        scope.as_deref(),
                        Action::Read,
                    )
            })
            .collect();
        Batch::Ask {
            leading: Some(leading),
            siblings,
        }
    }

    /// Holds the grants of a sibling batch besides `own`. Grants that an identity revocation
    /// sweep may have missed (one ran during the request) are not kept: their opens ask again.
    fn hold_siblings(
        &self,
        user: &str,
        own: &LicenseKey,
        license: &keyserver_client::license::OpenedLicense,
        sweeps: u64,
    ) {
        if self.revocations.sweeps() != sweeps {
            return;
        }
        for grant in license.grants.iter().filter(|g| g.asset_id != own.asset_id) {
            let key = LicenseKey {
                asset_id: grant.asset_id,
                ..own.clone()
            };
            let held = self.hold(user, grant, license.license.not_after);
            self.licenses.insert(key, held);
        }
    }

    /// A held license of `key` still good to use.
    fn usable(&self, key: &LicenseKey) -> Option<Arc<Held>> {
        self.licenses.get(key).filter(|h| {
            csap_base::unix_now().is_ok_and(|now| h.not_after > now)
                && !h.revoked.load(Ordering::Acquire)
        })
    }

    /// A granted key as held by the mount (learning its scope's name for the local rules).
    fn hold(
        &self,
        user: &str,
        grant: &keyserver_client::license::OpenedGrant,
        license_end: i64,
    ) -> Arc<Held> {
        self.registry
            .insert(grant.asset_id, binding::registered_of(grant));
        if let Some(rules) = &self.rules {
            rules
                .scope_names
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(grant.scope_id, grant.grant.scope.clone());
        }
        Arc::new(Held::from_grant(user, grant, license_end))
    }

    /// The license for `ids`, asked for on the calling thread: the FUSE thread drives the
    /// request on the source's current-thread runtime, so a cold open wakes no other thread of
    /// the mount (the hand-off to a runtime worker and back cost ~100 µs on the development VM).
    /// A transport failure — say on a connection the server closed while no call was polling
    /// it — is asked once more on the shared runtime. A rate-limited answer is waited out and
    /// asked again, all within the request timeout ([`siblings::retry_rate_limited`]). The
    /// outer error is the mount's (timed out, shutting down), the inner the key server's.
    fn request_here(
        &self,
        token: &UserToken,
        app: &str,
        action: Action,
        ids: &[[u8; 16]],
    ) -> Result<Result<keyserver_client::license::OpenedLicense, ClientError>, KeyError> {
        let ask =
            siblings::retry_rate_limited(|| self.here_client.request(token, app, action, ids));
        match self.block_on(self.here.as_ref(), ask)? {
            Err(ClientError::Http(e)) => {
                tracing::debug!(error = %chain(&e), "license request failed on this thread; asking again on the shared runtime");
                self.block_on(
                    self.runtime.as_ref(),
                    siblings::retry_rate_limited(|| self.client.request(token, app, action, ids)),
                )
            }
            answer => Ok(answer),
        }
    }

    /// Runs one key server call on the source's shared runtime.
    fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, KeyError> {
        self.block_on(self.runtime.as_ref(), fut)?
            .map_err(client_error)
    }

    /// Runs `fut` on `runtime` (`None` once the source is shutting down), bounded by the
    /// request timeout; the inner result is the call's own.
    fn block_on<T>(
        &self,
        runtime: Option<&tokio::runtime::Runtime>,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<Result<T, ClientError>, KeyError> {
        let runtime =
            runtime.ok_or_else(|| KeyError::Unavailable("key source is shutting down".into()))?;
        runtime
            .block_on(async { tokio::time::timeout(self.request_timeout, fut).await })
            .map_err(|_| KeyError::Unavailable("key server did not answer in time".into()))
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

fn to_content_key(key: &csap_base::ContentKey) -> ContentKey {
    ContentKey::from_bytes(*key.as_bytes())
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
        let result = self.open_key_seen(caller, path, header, access, &mut seen);
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

/// Reads one token file (for callers that configure a [`TokenMap`] from a path argument).
pub fn check_token_file(path: &Path) -> Result<(), std::io::Error> {
    UserToken::load(path).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11: the pre-loader selects assets in the rules' dialect — `*` within a segment,
    /// `**` across (it used Cedar's `like`, where `*` crossed '/').
    #[test]
    fn preloader_selects_in_the_rule_dialect() {
        let sel = |p: &str| {
            vec![csap_policy::request::AssetSelector {
                path: Some(p.into()),
                scope: None,
            }]
        };
        assert!(!selects(&sel("show/*/f1"), "show/a/b/f1"));
        assert!(selects(&sel("show/*/f1"), "show/a/f1"));
        assert!(selects(&sel("show/**"), "show/a/b/f1"));
        assert!(!selects(&sel("show/**"), "other/f1"));
    }
    use keyserver::testing;
    use keyserver::SwappableRules;

    /// A session handed over on the mount's socket wins over the uid's token file; without
    /// either the caller is denied with a pointer to `csap login`.
    #[test]
    fn sessions_come_before_token_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = keyserver::token::TokenKey::from_bytes(&[3u8; 32]).unwrap();
        let token = |uid: u32, device: &str, issued_at: i64| {
            key.issue(&csap_base::token::Claims {
                user: "alice".into(),
                device: device.into(),
                uid,
                issued_at,
                expires_at: i64::MAX / 2,
                generation: 0,
            })
        };
        let (from_file, from_session) = (token(4242, "ws-1", 1), token(4242, "ws-1", 2));
        let file = dir.path().join("token");
        from_file.save(&file).unwrap();
        let mut tokens = TokenMap::default();
        tokens.insert(4242, &file);
        let registry = crate::session::SessionRegistry::new();
        tokens.use_sessions(registry.clone());
        assert!(
            tokens.load(4242).is_err(),
            "used before the device is known"
        );
        tokens.bind_to_device("ws-1");
        assert_eq!(tokens.load(4242).unwrap().as_str(), from_file.as_str());
        registry.insert(4242, from_session.clone(), i64::MAX / 2);
        assert_eq!(tokens.load(4242).unwrap().as_str(), from_session.as_str());
        let err = tokens.load(4343).unwrap_err();
        assert!(err.to_string().contains("csap login"), "{err}");
        // Issue 12: a token file holding another uid's or another device's token serves no one.
        tokens.insert(4343, &file);
        let err = tokens.load(4343).unwrap_err();
        assert!(err.to_string().contains("not uid 4343"), "{err}");
        token(4242, "ws-2", 1).save(&file).unwrap();
        registry.insert(4242, token(4242, "ws-2", 1), i64::MAX / 2);
        let err = tokens.load(4242).unwrap_err();
        assert!(err.to_string().contains("device ws-2"), "{err}");
        assert!(tokens.token_of_user("alice").is_none());
    }

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
            source.open_key(&stranger, "show/f0001.exr", &header, Access::Read),
            Err(KeyError::Denied(_))
        ));

        drop(source);
        rt.block_on(lb.server.shutdown());
    }
}
