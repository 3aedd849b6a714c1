//! The authorization service's core, independent of HTTP: submit/change/cancel requests,
//! manage global security policies, sign rules and revocations, and deliver them to ARDS
//! through the outbox.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::global::{self, Block, GlobalPolicy, Reason};
use crate::principal::{Directory, Standing, WorkflowGrant};
use crate::request::{InputError, PolicyRequest};
use crate::rule::{sign, IssuerKey, IssuerPublicKey, RuleError, SignedRule};
use crate::store::postgres::PgAuthzStore;
use crate::store::sqlite::SqliteAuthzStore;
use crate::store::{
    AuthzStore, Decide, Outgoing, Reads, RequestRow, RuleRow, Status, StoreError, Writes,
};
use crate::template;
use crate::wire::{Revocation, RuleSink, SinkError};

/// Connections one authz replica keeps to PostgreSQL.
const PG_POOL_SIZE: usize = 4;

/// Errors of the service core; the HTTP layer maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("request {id} refused by global security policy")]
    Refused { id: String, reasons: Vec<Reason> },
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this (a workflow outside its grant or another's request).
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] RuleError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    StateDir(#[from] crate::statedir::StateDirError),
    #[error(transparent)]
    Clock(#[from] crate::clock::ClockError),
}

/// Where the service keeps its files and what it calls itself.
#[derive(Clone, Debug)]
pub struct Config {
    /// Holds the issuer key, the TLS identity and (on SQLite) `authz.sqlite`; locked while
    /// the service runs, whichever engine holds the store.
    pub data_dir: PathBuf,
    /// Where the store lives: SQLite in `data_dir` (default) or a PostgreSQL database shared by
    /// replicas (open with [`Authz::connect`]).
    pub store: crate::pg::Engine,
    /// Issuer name written into every rule (ARDS/PEPs map it to `issuer.pub`).
    pub issuer: String,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            store: crate::pg::Engine::Sqlite,
            issuer: "authz".into(),
        }
    }
}

/// Who submits, changes or cancels a request, as the HTTP layer authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitter {
    /// `role:name` of the principal; recorded as the request's owner.
    pub label: String,
    /// `None`: an admin (no limit). `Some`: a workflow principal, limited to its grant and to
    /// the requests it submitted itself.
    pub grant: Option<WorkflowGrant>,
}

impl Submitter {
    /// An admin principal (`admin:<name>`).
    pub fn admin(name: &str) -> Self {
        Submitter {
            label: format!("admin:{name}"),
            grant: None,
        }
    }

    /// A workflow principal with what an admin granted it.
    pub fn workflow(name: &str, grant: WorkflowGrant) -> Self {
        Submitter {
            label: format!("workflow:{name}"),
            grant: Some(grant),
        }
    }
}

/// Result of a submit or change.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub id: String,
    pub status: Status,
    pub revision: i64,
    pub rule_ids: Vec<String>,
    /// Rules this change replaced (revoked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<String>,
    /// Whether ARDS acknowledged everything queued so far (else the outbox retries).
    pub delivered: bool,
}

/// Result of a cancel.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Cancelled {
    pub id: String,
    pub status: Status,
    pub revoked: Vec<String>,
    pub delivered: bool,
}

/// Result of adding a global policy.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct PolicyAdded {
    pub policy: GlobalPolicy,
    /// Requests the new policy contradicts (now status `revoked`).
    pub revoked_requests: Vec<String>,
    pub revoked_rules: Vec<String>,
    pub delivered: bool,
}

/// A request as workflow management reads it back.
#[derive(Serialize, Clone, Debug)]
pub struct RequestView {
    pub id: String,
    pub status: Status,
    pub revision: i64,
    pub reasons: Vec<Reason>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub change_refused: Vec<Reason>,
    /// Live (issued, not revoked) rule ids.
    pub rule_ids: Vec<String>,
    pub revoked_rule_ids: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub request: serde_json::Value,
}

/// A request row and its rules as workflow management reads them.
fn view(row: RequestRow, rules: Vec<RuleRow>) -> RequestView {
    let (live, revoked): (Vec<_>, Vec<_>) = rules.into_iter().partition(|r| r.revoked_at.is_none());
    RequestView {
        id: row.id,
        status: row.status,
        revision: row.revision,
        reasons: row.reasons,
        change_refused: row.change_refused,
        rule_ids: live.into_iter().map(|r| r.signed.rule.id).collect(),
        revoked_rule_ids: revoked.into_iter().map(|r| r.signed.rule.id).collect(),
        created_at: row.created_at,
        updated_at: row.updated_at,
        request: row.body,
    }
}

/// The service. Share it as `Arc<Authz>`.
pub struct Authz {
    /// Held for the service's life: no second process on this data directory.
    _lock: crate::statedir::DirLock,
    store: Arc<dyn AuthzStore>,
    signer: Arc<Signer>,
    sink: Arc<dyn RuleSink>,
    /// Users, devices and application builds requests may name (the key server's).
    directory: Arc<dyn Directory>,
    /// Serializes outbox delivery so entries go out once and in order.
    flushing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authz")
            .field("issuer", &self.signer.issuer)
            .field("public_key", &self.signer.key.public())
            .finish_non_exhaustive()
    }
}

/// What signs rules and revocations, shared with the decisions the store runs inside its
/// transactions.
struct Signer {
    key: IssuerKey,
    issuer: String,
}

impl Signer {
    fn sign_rules(&self, req: &PolicyRequest, id: &str, first: u64) -> Vec<SignedRule> {
        template::rules_for(req, id, &self.issuer, first)
            .into_iter()
            .map(|r| sign(r, &self.key))
            .collect()
    }

    /// Signed revocations of the rules of `rules` still live.
    fn revoke_live(&self, rules: &[RuleRow], reason: &str, now: i64) -> Vec<Revocation> {
        rules
            .iter()
            .filter(|r| r.revoked_at.is_none())
            .map(|r| Revocation::sign(&r.signed.rule.id, &self.issuer, reason, now, &self.key))
            .collect()
    }
}

/// The wall clock every window decision of the service reads; fails closed ([`crate::clock`]).
pub fn now() -> Result<i64, crate::clock::ClockError> {
    crate::clock::unix_now()
}

fn random_id(prefix: &str, bytes: usize) -> Result<String, RuleError> {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).map_err(|e| RuleError::Rng(e.to_string()))?;
    Ok(format!("{prefix}{}", hex::encode(b)))
}

fn ids(revoked: &[Revocation]) -> Vec<String> {
    revoked.iter().map(|r| r.rule_id.clone()).collect()
}

fn not_found(id: &str) -> ServiceError {
    ServiceError::NotFound {
        what: "request",
        id: id.to_string(),
    }
}

impl Authz {
    /// Opens the service state in `cfg.data_dir` (created if missing): `authz.sqlite`,
    /// `issuer.key` (0600, generated on first start) and `issuer.pub` (hex public key). A
    /// PostgreSQL store is opened by [`Authz::connect`].
    pub fn open(
        cfg: &Config,
        sink: Arc<dyn RuleSink>,
        directory: Arc<dyn Directory>,
    ) -> Result<Self, ServiceError> {
        if !matches!(cfg.store, crate::pg::Engine::Sqlite) {
            return Err(StoreError::Worker(
                "a PostgreSQL store is opened with Authz::connect".into(),
            )
            .into());
        }
        let (lock, key) = Self::open_data_dir(cfg)?;
        let db_path = cfg.data_dir.join("authz.sqlite");
        crate::statedir::private_sqlite(&db_path)?;
        let store = SqliteAuthzStore::open(&db_path)?;
        Ok(Self::with_store(
            cfg,
            lock,
            key,
            Arc::new(store),
            sink,
            directory,
        ))
    }

    /// Opens the store `cfg.store` names: SQLite as [`Authz::open`] does, or connects to
    /// PostgreSQL (migrating schema `authz`). The issuer key stays in `cfg.data_dir` either
    /// way: replicas of one authz need the same `issuer.key`.
    pub async fn connect(
        cfg: &Config,
        sink: Arc<dyn RuleSink>,
        directory: Arc<dyn Directory>,
    ) -> Result<Self, ServiceError> {
        let target = match &cfg.store {
            crate::pg::Engine::Sqlite => return Self::open(cfg, sink, directory),
            crate::pg::Engine::Postgres(target) => (**target).clone(),
        };
        let (lock, key) = Self::open_data_dir(cfg)?;
        let store = PgAuthzStore::connect(&target, PG_POOL_SIZE).await?;
        Ok(Self::with_store(
            cfg,
            lock,
            key,
            Arc::new(store),
            sink,
            directory,
        ))
    }

    /// Locks the data directory and loads (or makes) the issuer key, writing `issuer.pub`.
    fn open_data_dir(cfg: &Config) -> Result<(crate::statedir::DirLock, IssuerKey), ServiceError> {
        crate::model::check_name(&cfg.issuer).map_err(|m| InputError::new("issuer", m))?;
        let io = |p: &Path| {
            let path = p.display().to_string();
            move |source| ServiceError::Io { path, source }
        };
        let lock = crate::statedir::lock(&cfg.data_dir)?;
        let key_path = cfg.data_dir.join("issuer.key");
        // Secrets kept here: the issuer key, the TLS key, and an API token an older version left.
        for f in ["issuer.key", "api-token", "tls-key.pem"] {
            crate::statedir::private_file(&cfg.data_dir.join(f))?;
        }
        let key = IssuerKey::load_or_generate(&key_path)?;
        let pub_path = cfg.data_dir.join("issuer.pub");
        std::fs::write(&pub_path, format!("{}\n", key.public().to_hex())).map_err(io(&pub_path))?;
        Ok((lock, key))
    }

    fn with_store(
        cfg: &Config,
        lock: crate::statedir::DirLock,
        key: IssuerKey,
        store: Arc<dyn AuthzStore>,
        sink: Arc<dyn RuleSink>,
        directory: Arc<dyn Directory>,
    ) -> Self {
        Self {
            _lock: lock,
            store,
            signer: Arc::new(Signer {
                key,
                issuer: cfg.issuer.clone(),
            }),
            sink,
            directory,
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.signer.issuer
    }

    pub fn public_key(&self) -> IssuerPublicKey {
        self.signer.key.public()
    }

    /// The store, for the catalog's operations (`crate::catalog`).
    pub(crate) fn store(&self) -> &dyn AuthzStore {
        self.store.as_ref()
    }

    /// What an admin granted workflow principal `name` (from the directory).
    pub fn workflow_grant(&self, name: &str) -> Option<WorkflowGrant> {
        self.directory.workflow_grant(name)
    }

    /// Submits a new authorization policy request (wire JSON).
    pub async fn submit(&self, body: &[u8], by: &Submitter) -> Result<Issued, ServiceError> {
        let now = now()?;
        let (wire, req) = crate::intake::read(self.store.as_ref(), body, now).await?;
        self.admit(&req, by)?;
        let id = random_id("req-", 12)?;
        let signer = Arc::clone(&self.signer);
        let (row_id, owner) = (id.clone(), by.label.clone());
        let decide: Decide = Box::new(move |seen| {
            let reasons = global::check(&req, &seen.policies);
            let mut row = RequestRow {
                id: row_id.clone(),
                body: wire,
                normalized: Some(req.clone()),
                status: Status::Refused,
                reasons: reasons.clone(),
                change_refused: Vec::new(),
                revision: 1,
                next_rule: 1,
                created_at: now,
                updated_at: now,
            };
            let issued = if reasons.is_empty() {
                let signed = signer.sign_rules(&req, &row_id, 1);
                row.status = Status::Active;
                row.next_rule = 1 + signed.len() as u64;
                signed
            } else {
                Vec::new()
            };
            Ok(Writes {
                requests: vec![row],
                owner: Some(owner),
                issued,
                issued_at: now,
                ..Default::default()
            })
        });
        let written = self.store.decide(Reads::default(), decide).await?;
        let row = &written.requests[0];
        if row.status == Status::Refused {
            tracing::info!(request = %id, reasons = row.reasons.len(), "request refused");
            return Err(ServiceError::Refused {
                id,
                reasons: row.reasons.clone(),
            });
        }
        tracing::info!(request = %id, owner = %by.label, rules = written.issued.len(), "request approved");
        let delivered = self.flush_outbox().await.is_ok();
        Ok(Issued {
            id,
            status: Status::Active,
            revision: 1,
            rule_ids: written.issued.iter().map(|s| s.rule.id.clone()).collect(),
            replaced: Vec::new(),
            delivered,
        })
    }

    /// A request may only name principals the directory knows and, from a workflow principal,
    /// only assets inside its grant.
    fn admit(&self, req: &PolicyRequest, by: &Submitter) -> Result<(), ServiceError> {
        check_names(req, self.directory.as_ref())?;
        if let Some(grant) = &by.grant {
            check_grant(req, grant).map_err(|m| {
                tracing::info!(submitter = %by.label, "refused: {m}");
                ServiceError::Forbidden(format!("{}: {m}", by.label))
            })?;
        }
        Ok(())
    }

    /// A workflow principal acts only on requests it submitted (unknown ids stay 404 below,
    /// so nobody learns which ids exist).
    async fn check_owner(&self, id: &str, by: &Submitter) -> Result<(), ServiceError> {
        if by.grant.is_none() {
            return Ok(());
        }
        match self.store.owner(id).await? {
            Some(owner) if owner != by.label => Err(not_found(id)),
            _ => Ok(()),
        }
    }

    /// Replaces a request: its live rules are revoked and new ones issued. A change refused by
    /// global policies leaves the request as it was (the reasons are returned and recorded in
    /// `change_refused`). Cancelled requests cannot be changed.
    pub async fn change(
        &self,
        id: &str,
        body: &[u8],
        by: &Submitter,
    ) -> Result<Issued, ServiceError> {
        let now = now()?;
        let (wire, req) = crate::intake::read(self.store.as_ref(), body, now).await?;
        self.check_owner(id, by).await?;
        self.admit(&req, by)?;
        let signer = Arc::clone(&self.signer);
        let req_id = id.to_string();
        let decide: Decide = Box::new(move |seen| {
            let (mut row, rules) = seen.request.ok_or_else(|| not_found(&req_id))?;
            if row.status == Status::Cancelled {
                return Err(ServiceError::Conflict(format!(
                    "request {req_id} is cancelled; submit a new request instead"
                )));
            }
            let reasons = global::check(&req, &seen.policies);
            row.updated_at = now;
            if !reasons.is_empty() {
                row.change_refused = reasons.clone();
                // A refused request has nothing in force; record the refused change as its state.
                if row.status == Status::Refused {
                    row.body = wire;
                    row.normalized = Some(req);
                    row.reasons = reasons;
                    row.revision += 1;
                }
                return Ok(Writes {
                    requests: vec![row],
                    ..Default::default()
                });
            }
            row.revision += 1;
            let why = format!("request {req_id} changed (revision {})", row.revision);
            let revoked = signer.revoke_live(&rules, &why, now);
            let issued = signer.sign_rules(&req, &req_id, row.next_rule);
            row.body = wire;
            row.normalized = Some(req);
            row.status = Status::Active;
            row.reasons = Vec::new();
            row.change_refused = Vec::new();
            row.next_rule += issued.len() as u64;
            Ok(Writes {
                requests: vec![row],
                revoked,
                issued,
                issued_at: now,
                ..Default::default()
            })
        });
        let reads = Reads {
            request: Some(id.to_string()),
            active: false,
        };
        let written = self.store.decide(reads, decide).await?;
        let row = &written.requests[0];
        if !row.change_refused.is_empty() {
            return Err(ServiceError::Refused {
                id: id.to_string(),
                reasons: row.change_refused.clone(),
            });
        }
        let replaced = ids(&written.revoked);
        tracing::info!(request = %id, revision = row.revision, rules = written.issued.len(), replaced = replaced.len(), "request changed");
        let delivered = self.flush_outbox().await.is_ok();
        Ok(Issued {
            id: id.to_string(),
            status: Status::Active,
            revision: row.revision,
            rule_ids: written.issued.iter().map(|s| s.rule.id.clone()).collect(),
            replaced,
            delivered,
        })
    }

    /// Cancels a request and revokes its live rules. Cancelling twice is harmless.
    pub async fn cancel(&self, id: &str, by: &Submitter) -> Result<Cancelled, ServiceError> {
        let now = now()?;
        self.check_owner(id, by).await?;
        let signer = Arc::clone(&self.signer);
        let req_id = id.to_string();
        let decide: Decide = Box::new(move |seen| {
            let (mut row, rules) = seen.request.ok_or_else(|| not_found(&req_id))?;
            let revoked = signer.revoke_live(&rules, &format!("request {req_id} cancelled"), now);
            let mut requests = Vec::new();
            if row.status != Status::Cancelled {
                row.status = Status::Cancelled;
                row.updated_at = now;
                requests.push(row);
            }
            Ok(Writes {
                requests,
                revoked,
                ..Default::default()
            })
        });
        let reads = Reads {
            request: Some(id.to_string()),
            active: false,
        };
        let revoked = ids(&self.store.decide(reads, decide).await?.revoked);
        tracing::info!(request = %id, revoked = revoked.len(), "request cancelled");
        let delivered = self.flush_outbox().await.is_ok();
        Ok(Cancelled {
            id: id.to_string(),
            status: Status::Cancelled,
            revoked,
            delivered,
        })
    }

    /// The request's view; a workflow principal sees only its own requests.
    pub async fn get(&self, id: &str, by: &Submitter) -> Result<RequestView, ServiceError> {
        self.check_owner(id, by).await?;
        let (row, rules) = self.store.request(id).await?.ok_or_else(|| not_found(id))?;
        Ok(view(row, rules))
    }

    /// The newest `limit` requests `by` may read (a workflow: its own), newest first.
    pub async fn list(&self, by: &Submitter, limit: u32) -> Result<Vec<RequestView>, ServiceError> {
        let owner = by.grant.is_some().then_some(by.label.as_str());
        let rows = self.store.requests(owner, limit).await?;
        Ok(rows
            .into_iter()
            .map(|(row, rules)| view(row, rules))
            .collect())
    }

    /// Adds a global security policy (body as for `POST /v1/policies`) and revokes every live
    /// rule of every active request it contradicts.
    pub async fn add_policy(&self, body: &[u8]) -> Result<PolicyAdded, ServiceError> {
        let now = now()?;
        let (block, note) = Block::from_json(body)?;
        let policy = GlobalPolicy::new(random_id("gp-", 8)?, block, note, now);
        let signer = Arc::clone(&self.signer);
        let adding = policy.clone();
        let decide: Decide = Box::new(move |seen| {
            let why = format!(
                "global security policy {} [{}]",
                adding.id,
                adding.block.describe()
            );
            let mut writes = Writes::default();
            for (mut row, rules) in seen.active {
                let Some(req) = &row.normalized else { continue };
                let reasons = adding.violations(req);
                if reasons.is_empty() {
                    continue;
                }
                writes.revoked.extend(signer.revoke_live(&rules, &why, now));
                row.status = Status::Revoked;
                row.reasons = reasons;
                row.updated_at = now;
                writes.requests.push(row);
            }
            writes.policy = Some(adding);
            Ok(writes)
        });
        let reads = Reads {
            request: None,
            active: true,
        };
        let written = self.store.decide(reads, decide).await?;
        let revoked_requests: Vec<String> = written.requests.iter().map(|r| r.id.clone()).collect();
        let revoked_rules = ids(&written.revoked);
        tracing::info!(policy = %policy.id, block = %policy.block.describe(), revoked = revoked_rules.len(), "global policy added");
        let delivered = self.flush_outbox().await.is_ok();
        Ok(PolicyAdded {
            policy,
            revoked_requests,
            revoked_rules,
            delivered,
        })
    }

    /// Removes a global policy. Requests it refused or revoked stay so; resubmit them.
    pub async fn remove_policy(&self, id: &str) -> Result<(), ServiceError> {
        if !self.store.remove_policy(id).await? {
            return Err(ServiceError::NotFound {
                what: "policy",
                id: id.to_string(),
            });
        }
        tracing::info!(policy = %id, "global policy removed");
        Ok(())
    }

    pub async fn policies(&self) -> Result<Vec<GlobalPolicy>, ServiceError> {
        Ok(self.store.policies().await?)
    }

    /// Live (unrevoked, unexpired) signed rules, optionally only those targeting `pep`.
    pub async fn live_rules(&self, pep: Option<&str>) -> Result<Vec<SignedRule>, ServiceError> {
        Ok(self.store.live_rules(now()?, pep).await?)
    }

    /// Entries waiting for ARDS.
    pub async fn pending_deliveries(&self) -> Result<i64, ServiceError> {
        Ok(self.store.outbox_len().await?)
    }

    /// Delivers queued publications and revocations to ARDS in order; stops at the first
    /// failure (it stays queued). Returns how many were delivered.
    pub async fn flush_outbox(&self) -> Result<usize, FlushError> {
        let _guard = self.flushing.lock().await;
        let mut delivered = 0;
        loop {
            let next = self.store.outbox_next().await.map_err(FlushError::Store)?;
            let Some((seq, item)) = next else {
                return Ok(delivered);
            };
            let result = match &item {
                Outgoing::Publish(batch) => self.sink.publish(batch).await,
                Outgoing::Revoke(rev) => self.sink.revoke(rev).await,
            };
            match result {
                Ok(()) => {
                    self.store
                        .outbox_done(seq)
                        .await
                        .map_err(FlushError::Store)?;
                    delivered += 1;
                }
                Err(e) => {
                    tracing::warn!(seq, error = %e, "delivery to ARDS failed; will retry");
                    self.store
                        .outbox_failed(seq, &e.to_string())
                        .await
                        .map_err(FlushError::Store)?;
                    return Err(FlushError::Sink(e));
                }
            }
        }
    }

    /// Retries outbox delivery forever with capped exponential backoff. Spawn it once.
    pub async fn run_outbox_retry(self: Arc<Self>) {
        let mut delay = Duration::from_secs(1);
        loop {
            tokio::time::sleep(delay).await;
            match self.flush_outbox().await {
                Ok(_) => delay = Duration::from_secs(1),
                Err(_) => delay = (delay * 2).min(Duration::from_secs(60)),
            }
        }
    }
}

/// Every person, device and application build a request names must be active in the
/// directory: a rule naming someone who does not exist would be issued and never match.
fn check_names(req: &PolicyRequest, dir: &dyn Directory) -> Result<(), InputError> {
    let verdict =
        |field: String, what: &str, value: &str, standing: Standing, hint: &str| match standing {
            Standing::Active => Ok(()),
            Standing::Inactive => Err(InputError::new(
                field,
                format!("{what} {value:?} is disabled or revoked"),
            )),
            Standing::Unknown => Err(InputError::new(
                field,
                format!("unknown {what} {value:?} (add it with `{hint}`)"),
            )),
        };
    for (i, p) in req.participants.iter().enumerate() {
        // Organizations and services are not accounts of the key server (yet): only people
        // log in and hold licenses.
        if p.kind == crate::request::ParticipantKind::Person {
            let hint = format!("csap user add {}", p.id);
            verdict(
                format!("participants[{i}]"),
                "user",
                &p.id,
                dir.user(&p.id),
                &hint,
            )?;
        }
    }
    for (i, d) in req.devices.iter().enumerate() {
        let hint = format!("csap device enroll {d}");
        verdict(format!("devices[{i}]"), "device", d, dir.device(d), &hint)?;
    }
    for (i, a) in req.applications.iter().enumerate() {
        verdict(
            format!("applications[{i}]"),
            "application build",
            &a.digest,
            dir.application(&a.digest),
            "csap app register PATH --name NAME --version VERSION",
        )?;
    }
    Ok(())
}

/// Every asset selector of a workflow's request must lie inside its grant: a named scope must
/// be granted (or the grant allows every scope), a path pattern must lie under a granted
/// prefix (or the grant allows every path). A selector without a scope covers every scope, and
/// one without a path every path, so each needs the corresponding unrestricted grant.
fn check_grant(req: &PolicyRequest, grant: &WorkflowGrant) -> Result<(), String> {
    let every_scope = grant.scopes.iter().any(|s| s == "*");
    for (i, a) in req.assets.iter().enumerate() {
        match &a.scope {
            Some(s) if every_scope || grant.scopes.contains(s) => {}
            Some(s) => return Err(format!("assets[{i}]: key scope {s:?} is not granted to it")),
            None if every_scope => {}
            None => {
                return Err(format!(
                    "assets[{i}]: names no key scope, and it is granted only scopes {:?}",
                    grant.scopes
                ))
            }
        }
        match &a.path {
            Some(p) if crate::principal::path_within(p, &grant.paths) => {}
            Some(p) => {
                return Err(format!(
                    "assets[{i}]: path {p:?} is outside its granted paths {:?}",
                    grant.paths
                ))
            }
            None if grant.paths.iter().any(|p| p == "**") => {}
            None => {
                return Err(format!(
                    "assets[{i}]: names no path, and it is granted only paths {:?}",
                    grant.paths
                ))
            }
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Store(StoreError),
}
