//! The ARDS engine: verifies what issuers send, drives the store through time (just-in-time
//! release, expiry), wakes long-polling PEPs, and triages PEP exception reports.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use authz::wire::{PublishRules, Revocation};
use authz::{AccessRequest, Evaluator, IssuerPublicKey, SignedRule};
use tokio::sync::{watch, Notify};

use crate::clock::Clock;
use crate::error::ArdsError;
use crate::store::postgres::PgRuleStore;
use crate::store::sqlite::SqliteRuleStore;
use crate::store::{Outcome, Published, Revoked, RuleStore, StoreError, Touched};
use crate::wire::{
    Changes, DenialReport, ExceptionList, ExceptionOutcome, PepStatus, PublishOutcome, RawChanges,
    RevokeOutcome, RuleList, ThrottledCount,
};

/// Default just-in-time lead: rules reach their PEPs this long before `not_before`.
pub const DEFAULT_LEAD_TIME_SECS: i64 = 300;

/// Limits on PEP exception reports (CSAP Part 1 §5.7: a flood of exceptions must not become a
/// denial of service).
#[derive(Debug, Clone)]
pub struct ExceptionPolicy {
    /// Reports a PEP may send in a burst.
    pub burst: u32,
    /// Sustained reports per minute per PEP.
    pub per_minute: u32,
    /// An identical report within this many seconds is counted, not stored again.
    pub dedup_window_secs: i64,
    /// Rate-limit buckets kept in memory; reports from further PEPs are refused until old
    /// buckets refill (PEP ids are caller-chosen, so this bounds memory).
    pub max_tracked_peps: usize,
}

impl Default for ExceptionPolicy {
    fn default() -> Self {
        Self {
            burst: 20,
            per_minute: 60,
            dedup_window_secs: 300,
            max_tracked_peps: 10_000,
        }
    }
}

/// Everything ARDS needs to start.
#[derive(Debug, Clone)]
pub struct ArdsConfig {
    /// The SQLite file (created if missing); its directory is this ARDS's data directory
    /// (locked while it runs) whichever engine holds the store.
    pub db_path: PathBuf,
    /// Where the store lives: the SQLite file `db_path` (default) or a PostgreSQL database
    /// shared by replicas (open with [`Ards::connect`]).
    pub store: authz::pg::Engine,
    /// Issuer name → Ed25519 public key. Rules and revocations from anyone else are refused.
    pub trusted_issuers: Vec<(String, IssuerPublicKey)>,
    /// How long before `not_before` a rule is released to its PEPs.
    pub lead_time_secs: i64,
    /// Upper bound on a long poll's `wait`.
    pub max_wait_secs: u64,
    pub exceptions: ExceptionPolicy,
}

impl ArdsConfig {
    /// A config with default lead time (5 min), long-poll cap (60 s) and exception limits.
    pub fn new(
        db_path: impl Into<PathBuf>,
        trusted_issuers: Vec<(String, IssuerPublicKey)>,
    ) -> Self {
        Self {
            db_path: db_path.into(),
            store: authz::pg::Engine::Sqlite,
            trusted_issuers,
            lead_time_secs: DEFAULT_LEAD_TIME_SECS,
            max_wait_secs: 60,
            exceptions: ExceptionPolicy::default(),
        }
    }
}

/// Connections one ARDS replica keeps to PostgreSQL.
const PG_POOL_SIZE: usize = 8;

/// The data directory (`cfg.db_path`'s): private, and one process only.
fn lock_data_dir(cfg: &ArdsConfig) -> Result<authz::statedir::DirLock, ArdsError> {
    let dir = match cfg.db_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    Ok(authz::statedir::lock(&dir)?)
}

/// Longest accepted report field.
const MAX_FIELD_LEN: usize = 4096;
/// Bound on in-memory per-PEP bookkeeping (wake-up channels, acknowledgements).
const MAX_TRACKED_STREAMS: usize = 100_000;
/// Most rules in one publish call.
pub const MAX_BATCH: usize = 10_000;

/// What ARDS saw of a PEP's polling since it started.
#[derive(Debug, Clone, Copy)]
struct PollInfo {
    acked: u64,
    last_seen: i64,
    polls: u64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: i64,
}

struct Inner {
    /// Held while this ARDS lives: no second process on its data directory.
    _dir_lock: authz::statedir::DirLock,
    store: Arc<dyn RuleStore>,
    issuers: HashMap<String, IssuerPublicKey>,
    clock: Arc<dyn Clock>,
    lead_time_secs: i64,
    max_wait_secs: u64,
    exceptions: ExceptionPolicy,
    /// Earliest time the store has time-driven work (`i64::MAX`: none).
    next_due: AtomicI64,
    /// Wakes the scheduler when a publish or revocation may have moved `next_due`.
    kick: Arc<Notify>,
    /// Another replica stored time-driven work: the next tick asks the store whatever
    /// `next_due` says (a flag, not `next_due = MIN`, which a tick already under way would
    /// overwrite with what it read before that work was committed).
    recheck: AtomicBool,
    /// Per-PEP head revision, watched by that PEP's long polls.
    streams: Mutex<HashMap<String, watch::Sender<u64>>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    throttled: Mutex<HashMap<String, u64>>,
    /// Per-PEP (acknowledged revision, last poll time); in memory only.
    acks: Mutex<HashMap<String, PollInfo>>,
    /// The task that wakes long polls for other replicas' commits (PostgreSQL).
    follow: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Its end drops the store's subscription, which closes that database connection.
        if let Some(task) = lock(&self.follow).take() {
            task.abort();
        }
    }
}

/// A running ARDS (cheap to clone; clones share everything).
#[derive(Clone)]
pub struct Ards {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ards")
            .field("lead_time_secs", &self.inner.lead_time_secs)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves nothing half-done: the maps hold only
    // caches and counters.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ards {
    /// Opens the SQLite store in `cfg.db_path`'s directory (this ARDS's data directory). Call
    /// [`Ards::spawn_scheduler`] to have rules released and expired on time (the HTTP handlers
    /// also catch up on every request). A PostgreSQL store is opened by [`Ards::connect`].
    pub fn open(cfg: ArdsConfig, clock: Arc<dyn Clock>) -> Result<Self, ArdsError> {
        if !matches!(cfg.store, authz::pg::Engine::Sqlite) {
            return Err(ArdsError::Internal(
                "a PostgreSQL store is opened with Ards::connect".into(),
            ));
        }
        let dir_lock = lock_data_dir(&cfg)?;
        authz::statedir::private_sqlite(&cfg.db_path)?;
        let store = SqliteRuleStore::open(&cfg.db_path)?;
        Ok(Self::with_store(cfg, dir_lock, Arc::new(store), clock))
    }

    /// Opens the store `cfg.store` names: SQLite as [`Ards::open`] does, or connects to
    /// PostgreSQL (migrating schema `ards`) and follows the changes other replicas commit.
    pub async fn connect(cfg: ArdsConfig, clock: Arc<dyn Clock>) -> Result<Self, ArdsError> {
        let target = match &cfg.store {
            authz::pg::Engine::Sqlite => return Self::open(cfg, clock),
            authz::pg::Engine::Postgres(target) => (**target).clone(),
        };
        let dir_lock = lock_data_dir(&cfg)?;
        let store = PgRuleStore::connect(&target, PG_POOL_SIZE).await?;
        let remote = store.remote_changes();
        let ards = Self::with_store(cfg, dir_lock, Arc::new(store), clock);
        if let Some(mut remote) = remote {
            // Wakes this replica's long polls for what any replica committed.
            let weak: Weak<Inner> = Arc::downgrade(&ards.inner);
            let task = tokio::spawn(async move {
                while let Some(touched) = remote.recv().await {
                    let Some(inner) = weak.upgrade() else { return };
                    if touched.is_empty() {
                        // Another replica stored pending work: ask the store when it is due.
                        inner.recheck.store(true, Ordering::SeqCst);
                        inner.kick.notify_one();
                    }
                    Ards { inner }.wake(touched);
                }
            });
            *lock(&ards.inner.follow) = Some(task.abort_handle());
        }
        Ok(ards)
    }

    fn with_store(
        cfg: ArdsConfig,
        dir_lock: authz::statedir::DirLock,
        store: Arc<dyn RuleStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                _dir_lock: dir_lock,
                store,
                issuers: cfg.trusted_issuers.into_iter().collect(),
                clock,
                lead_time_secs: cfg.lead_time_secs.max(0),
                max_wait_secs: cfg.max_wait_secs,
                exceptions: cfg.exceptions,
                // Unknown until the first tick asks the store (it advances at once).
                next_due: AtomicI64::new(i64::MIN),
                kick: Arc::new(Notify::new()),
                recheck: AtomicBool::new(false),
                streams: Mutex::new(HashMap::new()),
                buckets: Mutex::new(HashMap::new()),
                throttled: Mutex::new(HashMap::new()),
                acks: Mutex::new(HashMap::new()),
                follow: Mutex::new(None),
            }),
        }
    }

    /// The clock ARDS runs on.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock.clone()
    }

    /// Takes in what a store mutation did: records its next due time (waking the scheduler
    /// when `reschedule`, as a publish or revocation may bring work forward) and wakes the
    /// PEPs whose logs grew.
    fn apply<T>(&self, outcome: Outcome<T>, reschedule: bool) -> T {
        if let Some(due) = outcome.next_due {
            self.inner.next_due.store(due, Ordering::SeqCst);
            if reschedule {
                self.inner.kick.notify_one();
            }
        }
        self.wake(outcome.touched);
        outcome.value
    }

    fn wake(&self, touched: Touched) {
        if touched.is_empty() {
            return;
        }
        let mut streams = lock(&self.inner.streams);
        for (pep, rev) in touched {
            if let Some(tx) = streams.get(&pep) {
                if tx.receiver_count() == 0 {
                    streams.remove(&pep);
                } else {
                    // A replica's notification may arrive after a newer local commit's.
                    tx.send_if_modified(|head| {
                        let newer = rev > *head;
                        *head = (*head).max(rev);
                        newer
                    });
                }
            }
        }
    }

    /// Releases what is due and expires what is past, as of the clock's now. Cheap when
    /// nothing is due (no store access).
    pub async fn tick(&self) -> Result<(), ArdsError> {
        let now = self.inner.clock.now()?;
        let recheck = self.inner.recheck.swap(false, Ordering::SeqCst);
        if !recheck && now < self.inner.next_due.load(Ordering::SeqCst) {
            return Ok(());
        }
        let outcome = match self.inner.store.advance(now).await {
            Ok(outcome) => outcome,
            Err(e) => {
                if recheck {
                    self.inner.recheck.store(true, Ordering::SeqCst);
                }
                return Err(e.into());
            }
        };
        self.apply(outcome, false);
        Ok(())
    }

    /// Starts the background task that runs [`Ards::tick`] whenever something falls due. It
    /// stops by itself once every clone of this `Ards` is dropped.
    pub fn spawn_scheduler(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let kick = self.inner.kick.clone();
        let clock = self.inner.clock.clone();
        tokio::spawn(async move {
            loop {
                let due = {
                    let Some(inner) = weak.upgrade() else { return };
                    let ards = Ards { inner };
                    if let Err(err) = ards.tick().await {
                        tracing::error!(error = %err, "scheduled release/expiry failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    ards.inner.next_due.load(Ordering::SeqCst)
                };
                // Wake at least once a minute so a dropped `Ards` ends this task. (`tick` read
                // the clock just now; should it fail here, wake at once and let `tick` report.)
                let cap = clock.now().map_or(i64::MIN, |now| now.saturating_add(60));
                tokio::select! {
                    _ = clock.sleep_until(due.min(cap)) => {}
                    _ = kick.notified() => {}
                }
            }
        })
    }

    /// True if rules signed by `issuer` are accepted here (its principal may publish).
    pub fn trusts_issuer(&self, issuer: &str) -> bool {
        self.inner.issuers.contains_key(issuer)
    }

    fn issuer_key(&self, issuer: &str, field: String) -> Result<&IssuerPublicKey, ArdsError> {
        self.inner
            .issuers
            .get(issuer)
            .ok_or_else(|| ArdsError::Untrusted {
                message: format!("unknown issuer {issuer:?}: this ARDS does not trust it"),
                field,
            })
    }

    /// Checks one rule of a publish batch: trusted issuer, valid signature, sane fields, valid
    /// Cedar. PEPs verify again; this keeps garbage out of every PEP's stream.
    fn check_rule(&self, i: usize, signed: &SignedRule) -> Result<(), ArdsError> {
        let rule = &signed.rule;
        let f = |name: &str| format!("rules[{i}].{name}");
        check_id(&rule.id, &f("rule.id"))?;
        check_id(&rule.issuer, &f("rule.issuer"))?;
        let key = self.issuer_key(&rule.issuer, f("rule.issuer"))?;
        key.verify(signed).map_err(|err| ArdsError::Untrusted {
            message: format!(
                "signature of rule {:?} does not verify under issuer {:?}: {err}",
                rule.id, rule.issuer
            ),
            field: f("signature"),
        })?;
        if rule.targets.is_empty() {
            return Err(ArdsError::bad(
                "a rule needs at least one target PEP",
                f("rule.targets"),
            ));
        }
        for (j, t) in rule.targets.iter().enumerate() {
            check_pep_id(t, &f(&format!("rule.targets[{j}]")))?;
        }
        if rule.not_after <= rule.not_before {
            return Err(ArdsError::bad(
                "not_after must be later than not_before",
                f("rule.not_after"),
            ));
        }
        Evaluator::new([rule.clone()]).map_err(|err| {
            ArdsError::bad(format!("invalid Cedar policy: {err}"), f("rule.policy"))
        })?;
        Ok(())
    }

    /// Verifies and stores a batch of signed rules (all or nothing), releasing at once those
    /// whose release time (`not_before - lead`) has come.
    pub async fn publish(&self, body: PublishRules) -> Result<PublishOutcome, ArdsError> {
        if body.rules.is_empty() {
            return Err(ArdsError::bad("no rules to publish", "rules"));
        }
        if body.rules.len() > MAX_BATCH {
            return Err(ArdsError::bad(
                format!("at most {MAX_BATCH} rules per publish"),
                "rules",
            ));
        }
        for (i, signed) in body.rules.iter().enumerate() {
            self.check_rule(i, signed)?;
        }
        let now = self.inner.clock.now()?;
        let lead = self.inner.lead_time_secs;
        let batch: Vec<(SignedRule, i64)> = body
            .rules
            .into_iter()
            .map(|s| {
                let at = s.rule.not_before.saturating_sub(lead);
                (s, at)
            })
            .collect();
        let ids: Vec<String> = batch.iter().map(|(s, _)| s.rule.id.clone()).collect();
        let outcome = self
            .inner
            .store
            .publish(batch, now)
            .await
            .map_err(|err| match err {
                StoreError::Conflict { id } => {
                    let i = ids.iter().position(|x| *x == id).unwrap_or(0);
                    ArdsError::Conflict {
                        message: format!("rule {id:?} is already held with different content"),
                        field: format!("rules[{i}].rule"),
                    }
                }
                other => other.into(),
            })?;
        let results = self.apply(outcome, true);
        let mut out = PublishOutcome {
            stored: vec![],
            unchanged: vec![],
            inactive: vec![],
        };
        for (id, r) in ids.into_iter().zip(results) {
            match r {
                Published::Stored => out.stored.push(id),
                Published::Unchanged => out.unchanged.push(id),
                Published::Inactive => out.inactive.push(id),
            }
        }
        tracing::info!(
            stored = out.stored.len(),
            unchanged = out.unchanged.len(),
            inactive = out.inactive.len(),
            "rules published"
        );
        Ok(out)
    }

    /// Verifies a signed revocation and removes the rule from every PEP at once. A revocation
    /// of a rule not held yet leaves a tombstone so it is never released.
    pub async fn revoke(&self, rev: Revocation) -> Result<RevokeOutcome, ArdsError> {
        check_id(&rev.rule_id, "rule_id")?;
        check_id(&rev.issuer, "issuer")?;
        if rev.reason.len() > MAX_FIELD_LEN {
            return Err(ArdsError::bad("reason is too long", "reason"));
        }
        let key = self.issuer_key(&rev.issuer, "issuer".into())?;
        rev.verify(key).map_err(|err| ArdsError::Untrusted {
            message: format!(
                "revocation signature does not verify under issuer {:?}: {err}",
                rev.issuer
            ),
            field: "signature".into(),
        })?;
        let now = self.inner.clock.now()?;
        let rule_id = rev.rule_id.clone();
        let outcome = self
            .inner
            .store
            .revoke(&rev.rule_id, &rev.issuer, &rev.reason, rev.revoked_at, now)
            .await?;
        let (known, removed_from) = match self.apply(outcome, true) {
            Revoked::Tombstoned {
                known,
                removed_from,
            } => (known, removed_from),
            Revoked::NotIssuer { owner } => {
                return Err(ArdsError::Untrusted {
                    message: format!(
                        "rule {rule_id:?} was issued by {owner:?}; only its issuer may revoke it"
                    ),
                    field: "issuer".into(),
                })
            }
        };
        tracing::info!(rule_id = %rule_id, known, peps = removed_from.len(), "rule revoked");
        Ok(RevokeOutcome {
            rule_id,
            known,
            removed_from,
        })
    }

    /// What `pep` must apply to move from revision `since` to now. With `wait > 0` and nothing
    /// new, holds the answer until something changes for `pep` or `wait` passes (long poll).
    pub async fn changes(
        &self,
        pep: &str,
        since: u64,
        wait: Duration,
    ) -> Result<Changes, ArdsError> {
        let raw = self.changes_raw(pep, since, wait).await?;
        Ok(crate::store::parse_changes(raw)?)
    }

    /// [`Ards::changes`] with upserts as stored JSON, as served over HTTP: a thousand PEPs
    /// woken by one release cost a thousand indexed reads, not a thousand rule parses.
    pub async fn changes_raw(
        &self,
        pep: &str,
        since: u64,
        wait: Duration,
    ) -> Result<RawChanges, ArdsError> {
        check_pep_id(pep, "pep_id")?;
        let wait = wait.min(Duration::from_secs(self.inner.max_wait_secs));
        // Subscribe before reading so a change committed between the read and the wait wakes us.
        let mut rx = {
            let mut streams = lock(&self.inner.streams);
            if streams.len() >= MAX_TRACKED_STREAMS && !streams.contains_key(pep) {
                // PEP ids are caller-chosen: forget streams nobody is waiting on.
                streams.retain(|_, tx| tx.receiver_count() > 0);
            }
            streams
                .entry(pep.to_owned())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        };
        self.tick().await?;
        {
            let mut acks = lock(&self.inner.acks);
            let now = self.inner.clock.now()?;
            if let Some(info) = acks.get_mut(pep) {
                info.acked = since;
                info.last_seen = now;
                info.polls += 1;
            } else if acks.len() < MAX_TRACKED_STREAMS {
                let info = PollInfo {
                    acked: since,
                    last_seen: now,
                    polls: 1,
                };
                acks.insert(pep.to_owned(), info);
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changes = self.inner.store.changes(pep, since).await?;
            // Answer as soon as the stream moved past `since` (or `since` is unknown here).
            // `since == 0` on an empty stream waits like any other up-to-date poll; answering
            // it at once would have an idle PEP spin.
            if changes.revision != since || wait.is_zero() {
                return Ok(changes);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Ok(changes) },
                _ = tokio::time::sleep_until(deadline) => return Ok(changes),
            }
        }
    }

    /// Rules neither revoked nor expired (for `csap rules list`).
    pub async fn list_rules(&self, pep: Option<String>) -> Result<RuleList, ArdsError> {
        if let Some(p) = &pep {
            check_pep_id(p, "pep")?;
        }
        self.tick().await?;
        let rules = self.inner.store.list(pep.as_deref()).await?;
        Ok(RuleList { rules })
    }

    /// Every PEP with a stream or that polled: issued and acknowledged revisions.
    pub async fn peps(&self) -> Result<Vec<PepStatus>, ArdsError> {
        let heads: HashMap<String, u64> = self.inner.store.heads().await?.into_iter().collect();
        let acks = lock(&self.inner.acks);
        let mut ids: Vec<&String> = heads.keys().chain(acks.keys()).collect();
        ids.sort();
        ids.dedup();
        Ok(ids
            .into_iter()
            .map(|pep_id| {
                let info = acks.get(pep_id);
                PepStatus {
                    pep_id: pep_id.clone(),
                    revision: heads.get(pep_id).copied().unwrap_or(0),
                    acknowledged: info.map(|i| i.acked),
                    last_seen: info.map(|i| i.last_seen),
                    polls: info.map_or(0, |i| i.polls),
                }
            })
            .collect())
    }

    /// Takes a token from `pep`'s bucket; false when it is empty (or too many PEPs are
    /// tracked).
    fn admit(&self, pep: &str, now: i64) -> bool {
        let policy = &self.inner.exceptions;
        let burst = f64::from(policy.burst.max(1));
        let per_sec = f64::from(policy.per_minute) / 60.0;
        let mut buckets = lock(&self.inner.buckets);
        if !buckets.contains_key(pep) && buckets.len() >= policy.max_tracked_peps {
            // Forget buckets that have refilled: they behave exactly like new ones.
            buckets.retain(|_, b| b.tokens + (now - b.last).max(0) as f64 * per_sec < burst);
            if buckets.len() >= policy.max_tracked_peps {
                return false;
            }
        }
        let b = buckets.entry(pep.to_owned()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        b.tokens = (b.tokens + (now - b.last).max(0) as f64 * per_sec).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Triage of a PEP's denial (CSAP Part 1 §5.7): rate-limited per PEP, deduplicated; if a
    /// rule not yet released to this PEP would allow the request once its window opens, it is
    /// released now; otherwise the report waits for the authorization service.
    pub async fn report_exception(
        &self,
        pep: &str,
        report: DenialReport,
    ) -> Result<ExceptionOutcome, ArdsError> {
        check_pep_id(pep, "pep_id")?;
        check_report(&report)?;
        let now = self.inner.clock.now()?;
        if !self.admit(pep, now) {
            *lock(&self.inner.throttled)
                .entry(pep.to_owned())
                .or_insert(0) += 1;
            return Err(ArdsError::Throttled {
                pep_id: pep.to_owned(),
            });
        }
        let window = self.inner.exceptions.dedup_window_secs;
        let asked = report.clone();
        let allows: crate::store::WouldAllow = Box::new(move |rule| would_allow(rule, &asked, now));
        let outcome = self
            .inner
            .store
            .triage_exception(pep, &report, now, window, allows)
            .await?;
        let outcome = self.apply(outcome, true);
        if let ExceptionOutcome::Released { rule_ids, .. } = &outcome {
            tracing::info!(rules = ?rule_ids, "exception answered by early release");
        }
        Ok(outcome)
    }

    /// Exceptions for the authorization service: open ones (or all with `all`) after id
    /// `after`, plus how many reports each PEP had refused by the rate limit.
    pub async fn exceptions(&self, after: i64, all: bool) -> Result<ExceptionList, ArdsError> {
        let exceptions = self.inner.store.exceptions(after, all).await?;
        let mut throttled: Vec<ThrottledCount> = lock(&self.inner.throttled)
            .iter()
            .map(|(pep_id, count)| ThrottledCount {
                pep_id: pep_id.clone(),
                count: *count,
            })
            .collect();
        throttled.sort_by(|a, b| a.pep_id.cmp(&b.pep_id));
        Ok(ExceptionList {
            exceptions,
            throttled,
        })
    }
}

/// Would `rule` allow the reported request at the start of its window (or now, if later)?
fn would_allow(rule: &authz::Rule, r: &DenialReport, now: i64) -> bool {
    let Ok(eval) = Evaluator::new([rule.clone()]) else {
        return false;
    };
    eval.decide(&AccessRequest {
        participant: &r.participant,
        application_digest: &r.application_digest,
        device: &r.device,
        asset_path: &r.asset_path,
        asset_scope: &r.asset_scope,
        action: r.action,
        now: rule.not_before.max(now),
    })
    .allowed
}

/// PEP ids travel unescaped in URL paths (the rule is the wire's, checked by PEPs too).
pub(crate) fn check_pep_id(s: &str, field: &str) -> Result<(), ArdsError> {
    crate::wire::pep_id_problem(s, field).map_or(Ok(()), |m| Err(ArdsError::bad(m, field)))
}

/// Rule ids and issuer names (the rule is the wire's).
pub(crate) fn check_id(s: &str, field: &str) -> Result<(), ArdsError> {
    crate::wire::id_problem(s, field).map_or(Ok(()), |m| Err(ArdsError::bad(m, field)))
}

fn check_report(r: &DenialReport) -> Result<(), ArdsError> {
    for (name, value) in [
        ("participant", &r.participant),
        ("application_digest", &r.application_digest),
        ("device", &r.device),
        ("asset_path", &r.asset_path),
        ("asset_scope", &r.asset_scope),
    ] {
        if value.is_empty() {
            return Err(ArdsError::bad(format!("{name} must not be empty"), name));
        }
        if value.len() > MAX_FIELD_LEN {
            return Err(ArdsError::bad(format!("{name} is too long"), name));
        }
    }
    if !r
        .application_digest
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(ArdsError::bad(
            "application_digest must be lowercase hex",
            "application_digest",
        ));
    }
    Ok(())
}
