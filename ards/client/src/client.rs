//! The PEP side of ARDS: an HTTP client for the API, and [`RulesClient`], which keeps a PEP's
//! verified rule set in sync (long poll, resume from its revision, capped exponential backoff),
//! persists it for restarts while ARDS is down, and enforces time locally (rules enter at
//! `not_before` and leave at `not_after` even while disconnected). Fail closed: a rule whose
//! signature or issuer does not check out is dropped and logged, never used.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use csap_identity::ClientIdentity;
use csap_policy::{Evaluator, IssuerPublicKey, Revocation, Rule, SignedRule};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::clock::{Clock, SystemClock};
use crate::wire::{
    Changes, DenialReport, ErrorBody, ExceptionList, ExceptionOutcome, PublishOutcome,
    RevokeOutcome, RuleList,
};

/// Client-side failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad client configuration: {0}")]
    Config(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot reach ARDS: {0}")]
    Http(#[from] reqwest::Error),
    #[error("ARDS answered {status}: {error}{}", field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Status {
        status: u16,
        error: String,
        field: Option<String>,
    },
    #[error("ARDS is rate-limiting this PEP's exception reports")]
    Throttled,
    #[error("rule cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ARDS sent a stream for {got:?}, expected {expected:?}")]
    WrongPep { expected: String, got: String },
}

/// A thin typed client for the ARDS HTTP API (used by PEPs, tests, benchmarks and tools).
#[derive(Debug, Clone)]
pub struct ArdsHttp {
    http: reqwest::Client,
    base: String,
}

impl ArdsHttp {
    /// `url` is the ARDS base URL (`https://host:port`); `ca_pem` the certificate to trust;
    /// `identity` the client certificate to present (ARDS refuses callers without one).
    pub fn new(
        url: &str,
        ca_pem: &str,
        identity: Option<&ClientIdentity>,
    ) -> Result<Self, ClientError> {
        let base = url.trim_end_matches('/').to_owned();
        if !base.starts_with("https://") {
            return Err(ClientError::Config(format!(
                "ARDS URL must start with https://, got {url:?}"
            )));
        }
        let tls = csap_identity::tls::client_config_with(ca_pem, identity)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { http, base })
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = req.send().await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.json().await?);
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(ClientError::Throttled);
        }
        let text = resp.text().await.unwrap_or_default();
        let body: ErrorBody = serde_json::from_str(&text).unwrap_or(ErrorBody {
            error: text,
            field: None,
        });
        Err(ClientError::Status {
            status: status.as_u16(),
            error: body.error,
            field: body.field,
        })
    }

    /// `POST /v1/publish`.
    pub async fn publish(&self, rules: &[SignedRule]) -> Result<PublishOutcome, ClientError> {
        let body = crate::wire::PublishRules {
            rules: rules.to_vec(),
        };
        self.send(
            self.http
                .post(format!("{}/v1/publish", self.base))
                .json(&body),
        )
        .await
    }

    /// `POST /v1/revoke`.
    pub async fn revoke(&self, revocation: &Revocation) -> Result<RevokeOutcome, ClientError> {
        self.send(
            self.http
                .post(format!("{}/v1/revoke", self.base))
                .json(revocation),
        )
        .await
    }

    /// `GET /v1/pep/{pep}/changes?since=&wait=`.
    pub async fn changes(
        &self,
        pep: &str,
        since: u64,
        wait: Duration,
    ) -> Result<Changes, ClientError> {
        let wait_s = wait.as_secs();
        self.send(
            self.http
                .get(format!("{}/v1/pep/{pep}/changes", self.base))
                .query(&[("since", since), ("wait", wait_s)])
                .timeout(Duration::from_secs(wait_s + 20)),
        )
        .await
    }

    /// `POST /v1/pep/{pep}/exceptions`.
    pub async fn report(
        &self,
        pep: &str,
        report: &DenialReport,
    ) -> Result<ExceptionOutcome, ClientError> {
        self.send(
            self.http
                .post(format!("{}/v1/pep/{pep}/exceptions", self.base))
                .json(report)
                .timeout(Duration::from_secs(10)),
        )
        .await
    }

    /// `GET /v1/rules[?pep=]`.
    pub async fn rules(&self, pep: Option<&str>) -> Result<RuleList, ClientError> {
        let mut req = self.http.get(format!("{}/v1/rules", self.base));
        if let Some(p) = pep {
            req = req.query(&[("pep", p)]);
        }
        self.send(req).await
    }

    /// `GET /v1/health` (answers without a client certificate).
    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.send(self.http.get(format!("{}/v1/health", self.base)))
            .await
    }

    /// `GET /v1/peps`.
    pub async fn peps(&self) -> Result<Vec<crate::wire::PepStatus>, ClientError> {
        self.send(self.http.get(format!("{}/v1/peps", self.base)))
            .await
    }

    /// `GET /v1/exceptions?after=&all=`.
    pub async fn exceptions(&self, after: i64, all: bool) -> Result<ExceptionList, ClientError> {
        self.send(
            self.http
                .get(format!("{}/v1/exceptions", self.base))
                .query(&[("after", after.to_string()), ("all", all.to_string())]),
        )
        .await
    }
}

/// How a PEP reaches its one ARDS (CSAP Part 1 §5.6: a PEP has exactly one ARDS).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// ARDS base URL, `https://host:port`.
    pub url: String,
    /// This PEP's id: `"keyserver"` or `"mount:<device name>"`.
    pub pep_id: String,
    /// Certificate (PEM) that ARDS's TLS certificate must chain to.
    pub ca_pem: String,
    /// This PEP's client certificate (a device's, or the key server's service identity).
    pub identity: ClientIdentity,
    /// Issuer name → key; rules from any other issuer are dropped.
    pub trusted_issuers: Vec<(String, IssuerPublicKey)>,
    /// The persistent rule cache (JSON, written atomically).
    pub cache_path: PathBuf,
}

/// Tuning knobs; the defaults suit production.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub clock: Arc<dyn Clock>,
    /// Long-poll hold time asked of ARDS.
    pub poll_wait: Duration,
    /// First retry delay after a failed sync; doubles per failure...
    pub backoff_initial: Duration,
    /// ...up to this cap.
    pub backoff_max: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            poll_wait: Duration::from_secs(25),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// On-disk cache format.
#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    format: String,
    pep_id: String,
    revision: u64,
    rules: Vec<SignedRule>,
}

const CACHE_FORMAT: &str = "csap-ards-cache/1";

#[derive(Debug, Default)]
struct Local {
    /// Revision of ARDS's stream this set corresponds to (0: none, ask for a full snapshot).
    revision: u64,
    /// Verified, targeted, not expired.
    rules: BTreeMap<String, SignedRule>,
    active_ids: Vec<String>,
    pending_ids: Vec<String>,
}

struct Shared {
    cfg: ClientConfig,
    opts: ClientOptions,
    issuers: HashMap<String, IssuerPublicKey>,
    http: ArdsHttp,
    local: Mutex<Local>,
    evaluator: RwLock<Arc<Evaluator>>,
    pending: RwLock<Vec<Rule>>,
    changed: watch::Sender<u64>,
    synced: watch::Sender<bool>,
    timer_kick: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Local state is replaced wholesale under the lock; a panic cannot leave it half-applied.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A PEP's live, verified rule set. Dropping it stops syncing.
pub struct RulesClient {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RulesClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesClient")
            .field("url", &self.shared.cfg.url)
            .field("pep_id", &self.shared.cfg.pep_id)
            .finish()
    }
}

impl Drop for RulesClient {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RulesClient {
    /// Stops syncing now, though other holders keep the client (its rules stay as they are):
    /// a process shutting down stops its subscription before the ARDS it polls goes away.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Loads the persistent cache (re-verifying every rule), then syncs in the background.
    /// Never waits for ARDS: a PEP restarted while ARDS is down enforces its cached rules.
    pub async fn start(cfg: ClientConfig) -> Result<Self, ClientError> {
        Self::start_with(cfg, ClientOptions::default()).await
    }

    /// [`RulesClient::start`] with explicit options (test clock, backoff, poll wait).
    pub async fn start_with(cfg: ClientConfig, opts: ClientOptions) -> Result<Self, ClientError> {
        if let Some(problem) = crate::wire::pep_id_problem(&cfg.pep_id, "pep_id") {
            return Err(ClientError::Config(problem));
        }
        let http = ArdsHttp::new(&cfg.url, &cfg.ca_pem, Some(&cfg.identity))?;
        let issuers = cfg.trusted_issuers.iter().cloned().collect();
        let shared = Arc::new(Shared {
            cfg,
            opts,
            issuers,
            http,
            local: Mutex::new(Local::default()),
            evaluator: RwLock::new(Arc::new(empty_evaluator())),
            pending: RwLock::new(Vec::new()),
            changed: watch::channel(0).0,
            synced: watch::channel(false).0,
            timer_kick: Notify::new(),
        });
        shared.load_cache()?;
        let sync = tokio::spawn(shared.clone().sync_loop());
        let timer = tokio::spawn(shared.clone().timer_loop());
        Ok(Self {
            shared,
            tasks: vec![sync, timer],
        })
    }

    /// The current verified, in-window rules, as an evaluator (swapped on every change).
    pub fn evaluator(&self) -> Arc<Evaluator> {
        self.shared
            .evaluator
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A counter bumped on every change of the active or pending set (revocations included).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Rules released ahead of their window (`not_before` in the future), for pre-loading.
    pub fn pending(&self) -> Vec<Rule> {
        self.shared
            .pending
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Revision of ARDS's stream the local set corresponds to.
    pub fn revision(&self) -> u64 {
        lock(&self.shared.local).revision
    }

    /// Waits until the first successful sync with ARDS (or `timeout`); true if synced.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.synced.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Reports a denial to ARDS (CSAP Part 1 §5.7). ARDS may answer by releasing a waiting
    /// rule, which then arrives on the normal stream.
    pub async fn report_denial(&self, req: DenialReport) -> Result<ExceptionOutcome, ClientError> {
        self.shared.http.report(&self.shared.cfg.pep_id, &req).await
    }
}

fn empty_evaluator() -> Evaluator {
    // An empty rule set is always valid Cedar; failing here would be an authz bug.
    Evaluator::new(Vec::<Rule>::new()).expect("empty rule set is valid")
}

impl Shared {
    /// Fail-closed admission of one rule: trusted issuer, valid signature, targeted at this
    /// PEP. Anything else is dropped with a warning. (Invalid Cedar is dropped when the
    /// evaluator is built, see [`build_evaluator`].)
    fn accept(&self, signed: SignedRule) -> Option<SignedRule> {
        let rule = &signed.rule;
        let why = match self.issuers.get(&rule.issuer) {
            None => Some(format!("unknown issuer {:?}", rule.issuer)),
            Some(key) => match key.verify(&signed) {
                Err(err) => Some(format!("bad signature: {err}")),
                Ok(()) if !rule.targets.contains(&self.cfg.pep_id) => {
                    Some("not targeted at this PEP".into())
                }
                Ok(()) => None,
            },
        };
        match why {
            None => Some(signed),
            Some(why) => {
                tracing::warn!(pep = %self.cfg.pep_id, rule_id = %rule.id, %why, "rule rejected");
                None
            }
        }
    }

    fn load_cache(&self) -> Result<(), ClientError> {
        let path = &self.cfg.cache_path;
        // The cache is written 0600; one left looser (older version, copied file) is tightened.
        csap_base::files::tighten_secret(path).map_err(|source| ClientError::Cache {
            path: path.clone(),
            source,
        })?;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(ClientError::Cache {
                    path: path.clone(),
                    source,
                })
            }
        };
        let file: CacheFile = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(err) => {
                // Unreadable cache: start empty (deny) and resync fully.
                tracing::warn!(path = %path.display(), error = %err, "rule cache unreadable; ignoring it");
                return Ok(());
            }
        };
        if file.format != CACHE_FORMAT || file.pep_id != self.cfg.pep_id {
            tracing::warn!(path = %path.display(), "rule cache is for another format or PEP; ignoring it");
            return Ok(());
        }
        let total = file.rules.len();
        let mut local = lock(&self.local);
        for s in file.rules {
            if let Some(s) = self.accept(s) {
                local.rules.insert(s.rule.id.clone(), s);
            }
        }
        // A dropped rule means the cache is not what ARDS sent at that revision: take a full
        // snapshot on reconnect rather than trusting a delta on top of it.
        local.revision = if local.rules.len() == total {
            file.revision
        } else {
            0
        };
        self.recompute(&mut local);
        Ok(())
    }

    /// Serializes the local set for the cache file.
    fn cache_bytes(&self, local: &Local) -> Result<Vec<u8>, ClientError> {
        let file = CacheFile {
            format: CACHE_FORMAT.into(),
            pep_id: self.cfg.pep_id.clone(),
            revision: local.revision,
            rules: local.rules.values().cloned().collect(),
        };
        serde_json::to_vec_pretty(&file).map_err(|e| ClientError::Cache {
            path: self.cfg.cache_path.clone(),
            source: std::io::Error::other(e),
        })
    }

    /// Writes the cache off the async workers (fsync can take milliseconds). Called only from
    /// the sync loop, one write at a time, so a newer set never loses to an older one.
    async fn persist(&self, bytes: Vec<u8>) {
        let path = self.cfg.cache_path.clone();
        let result = tokio::task::spawn_blocking(move || write_atomic(&path, &bytes)).await;
        let err = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        // Enforcement goes on from memory; only a restart would lose these rules.
        tracing::error!(path = %self.cfg.cache_path.display(), error = %err, "cannot persist rule cache");
    }

    /// Drops expired rules, splits the rest into active and pending, and publishes the result
    /// (new evaluator, pending list, change counter) if anything moved.
    fn recompute(&self, local: &mut Local) {
        // Fail closed on an unusable clock: at "the beginning of time" every rule is pending,
        // so none is active (nothing granted) and none is dropped (all return once it heals).
        let now = self.opts.clock.now().unwrap_or_else(|err| {
            tracing::error!(error = %err, "clock unusable: no rule is active until it is fixed");
            i64::MIN
        });
        local.rules.retain(|_, s| s.rule.not_after > now);
        let mut active = Vec::new();
        let mut pending = Vec::new();
        for s in local.rules.values() {
            if s.rule.not_before <= now {
                active.push(s.rule.clone());
            } else {
                pending.push(s.rule.clone());
            }
        }
        let active_ids: Vec<String> = active.iter().map(|r| r.id.clone()).collect();
        let pending_ids: Vec<String> = pending.iter().map(|r| r.id.clone()).collect();
        if active_ids == local.active_ids && pending_ids == local.pending_ids {
            return;
        }
        let evaluator = build_evaluator(active);
        *self.evaluator.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(evaluator);
        *self.pending.write().unwrap_or_else(|e| e.into_inner()) = pending;
        local.active_ids = active_ids;
        local.pending_ids = pending_ids;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Applies one answer from ARDS; returns the cache bytes to persist if the set moved.
    fn apply(&self, changes: Changes) -> Result<Option<Vec<u8>>, ClientError> {
        if changes.pep_id != self.cfg.pep_id {
            return Err(ClientError::WrongPep {
                expected: self.cfg.pep_id.clone(),
                got: changes.pep_id,
            });
        }
        let mut local = lock(&self.local);
        if changes.reset {
            local.rules.clear();
        }
        for r in &changes.removals {
            local.rules.remove(&r.rule_id);
        }
        for s in changes.upserts {
            if let Some(s) = self.accept(s) {
                local.rules.insert(s.rule.id.clone(), s);
            }
        }
        let moved = local.revision != changes.revision;
        local.revision = changes.revision;
        // Enforce first (a revocation must not wait for an fsync); the caller persists.
        self.recompute(&mut local);
        let bytes = if moved || changes.reset {
            Some(self.cache_bytes(&local)?)
        } else {
            None
        };
        drop(local);
        self.timer_kick.notify_one();
        Ok(bytes)
    }

    async fn sync_loop(self: Arc<Self>) {
        let mut backoff = self.opts.backoff_initial;
        // The first poll asks for an immediate answer so `wait_synced` returns promptly even
        // for a PEP with no rules; later polls are held by ARDS until something changes.
        let mut wait = Duration::ZERO;
        loop {
            let since = lock(&self.local).revision;
            let result = self
                .http
                .changes(&self.cfg.pep_id, since, wait)
                .await
                .and_then(|c| self.apply(c));
            match result {
                Ok(bytes) => {
                    if let Some(bytes) = bytes {
                        self.persist(bytes).await;
                    }
                    self.synced.send_replace(true);
                    backoff = self.opts.backoff_initial;
                    wait = self.opts.poll_wait;
                }
                Err(err) => {
                    tracing::warn!(pep = %self.cfg.pep_id, error = %err, retry_in = ?backoff, "ARDS sync failed");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = next_backoff(backoff, self.opts.backoff_max);
                }
            }
        }
    }

    /// Moves rules in at `not_before` and out at `not_after` on local time, connected or not.
    async fn timer_loop(self: Arc<Self>) {
        loop {
            let now = match self.opts.clock.now() {
                Ok(now) => now,
                Err(_) => {
                    // `recompute` has deactivated every rule; look again shortly.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let mut local = lock(&self.local);
                    self.recompute(&mut local);
                    continue;
                }
            };
            let next = {
                let local = lock(&self.local);
                local
                    .rules
                    .values()
                    .flat_map(|s| [s.rule.not_before, s.rule.not_after])
                    .filter(|t| *t > now)
                    .min()
            };
            let wake = next.unwrap_or(i64::MAX).min(now.saturating_add(3600));
            tokio::select! {
                _ = self.opts.clock.sleep_until(wake) => {}
                _ = self.timer_kick.notified() => {}
            }
            let mut local = lock(&self.local);
            self.recompute(&mut local);
        }
    }
}

/// Builds one evaluator from rules that each verified alone. If the set fails as a whole
/// (e.g. two rules reuse a Cedar policy id), rules are added one by one and offenders dropped.
fn build_evaluator(rules: Vec<Rule>) -> Evaluator {
    match Evaluator::new(rules.clone()) {
        Ok(e) => e,
        Err(err) => {
            tracing::warn!(error = %err, "rule set rejected as a whole; dropping conflicting rules");
            let mut kept: Vec<Rule> = Vec::new();
            for r in rules {
                let mut trial = kept.clone();
                trial.push(r.clone());
                if Evaluator::new(trial).is_ok() {
                    kept.push(r);
                } else {
                    tracing::warn!(rule_id = %r.id, "rule dropped: conflicts with the rule set");
                }
            }
            Evaluator::new(kept).unwrap_or_else(|_| empty_evaluator())
        }
    }
}

/// Exponential backoff: doubles per failure, never above `max`.
fn next_backoff(current: Duration, max: Duration) -> Duration {
    current.saturating_mul(2).min(max)
}

/// ±20 % so a thousand PEPs that lost ARDS together do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.8 + 0.4 * (f64::from(nanos % 1000) / 1000.0);
    d.mul_f64(factor)
}

/// Writes `path` so that a crash leaves either the old or the new file, never a torn one, and
/// 0600 from its creation (the cache names rules, users and paths): `csap-base`'s writer, in a
/// directory made when missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    csap_base::files::write_secret(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitter_stays_within_20_percent() {
        let max = Duration::from_secs(30);
        let mut d = Duration::from_millis(250);
        let mut seen = vec![d];
        for _ in 0..12 {
            d = next_backoff(d, max);
            seen.push(d);
        }
        assert_eq!(seen[1], Duration::from_millis(500));
        assert_eq!(seen[7], Duration::from_secs(30)); // 250 ms * 2^7 = 32 s, capped
        assert!(seen.iter().all(|d| *d <= max));
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(8) && j <= Duration::from_secs(12),
                "{j:?}"
            );
        }
    }

    #[test]
    fn cache_writes_are_atomic_replacements() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cache.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
