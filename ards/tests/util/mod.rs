//! Harness for the ARDS integration tests: a real ARDS over TLS on loopback with a manual
//! clock, an issuer key, rule builders and PEP clients.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ards::testing::{spawn_loopback, spawn_on, LoopbackArds, LoopbackOptions};
use ards::{ArdsHttp, ClientConfig, ClientOptions, ManualClock, RulesClient};
use authz::principal::{Role, Standing};
use authz::template::RuleSpec;
use authz::testing::pki::{Issued, TestDirectory, TestPki};
use authz::{AccessRequest, Action, IssuerKey, Rule, SignedRule};
pub use csap_testkit::postgres::Engine;

pub const T0: i64 = 1_795_000_000;
pub const ISSUER: &str = "authz";
pub const DIGEST: &str = "aa11bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff00112233";

pub struct Harness {
    /// The CA and directory every caller's certificate comes from.
    pub pki: Arc<TestPki>,
    /// An admin principal: `http` calls as it.
    pub admin: Issued,
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub key: IssuerKey,
    pub server: Option<LoopbackArds>,
    pub url: String,
    pub ca_pem: String,
    pub http: ArdsHttp,
    /// The store's engine (a PostgreSQL test database lives while this does).
    pub engine: Engine,
}

impl Harness {
    /// ARDS with lead time 300 s, clock at `T0`, trusting `ISSUER`, on SQLite.
    pub async fn start() -> Self {
        Self::start_on(Engine::Sqlite).await
    }

    /// [`Harness::start`] with the store on `engine`.
    pub async fn start_on(engine: Engine) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let key = IssuerKey::from_seed([7; 32]);
        let pki = Arc::new(TestPki::new(TestDirectory::new(Standing::Unknown)));
        let admin = pki.issue("admin", Role::Admin);
        let opts = Self::options(dir.path().join("ards"), &clock, &key, &pki, &engine);
        let server = spawn_loopback(opts).await.unwrap();
        let http = ArdsHttp::new(&server.url, &server.ca_pem, Some(&admin.identity)).unwrap();
        Self {
            pki,
            admin,
            url: server.url.clone(),
            ca_pem: server.ca_pem.clone(),
            dir,
            clock,
            key,
            server: Some(server),
            http,
            engine,
        }
    }

    pub fn options(
        dir: PathBuf,
        clock: &ManualClock,
        key: &IssuerKey,
        pki: &TestPki,
        engine: &Engine,
    ) -> LoopbackOptions {
        let mut opts = LoopbackOptions::new(
            dir,
            vec![(ISSUER.to_owned(), key.public())],
            pki.client_auth(),
        );
        opts.lead_time_secs = 300;
        opts.clock = Arc::new(clock.clone());
        if let Some(url) = engine.url() {
            let target = authz::pg::Target::parse(url, None).unwrap();
            opts.store = authz::pg::Engine::postgres(target);
        }
        opts
    }

    /// Whether the store is the SQLite file.
    pub fn on_sqlite(&self) -> bool {
        matches!(self.engine, Engine::Sqlite)
    }

    pub fn ards(&self) -> &ards::Ards {
        &self.server.as_ref().unwrap().ards
    }

    /// Stops the server (connections are cut).
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// Starts it again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let addr = self.url.trim_start_matches("https://").to_owned();
        // A long poll still being answered keeps the old engine (and its data-dir lock) alive
        // for up to the poll wait after the listener closed; a real restart is a new process.
        let deadline = Instant::now() + Duration::from_secs(15);
        let server = loop {
            let opts = Self::options(
                self.dir.path().join("ards"),
                &self.clock,
                &self.key,
                &self.pki,
                &self.engine,
            );
            match spawn_on(opts, &addr).await {
                Err(ards::server::ServeError::Ards(ards::ArdsError::StateDir(
                    authz::statedir::StateDirError::Locked { .. },
                ))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other.unwrap(),
            }
        };
        self.server = Some(server);
        // Pooled connections died with the old server; start clean.
        self.http = ArdsHttp::new(&self.url, &self.ca_pem, Some(&self.admin.identity)).unwrap();
    }

    /// A certificate for the PEP `pep` (`mount:<device>` or a service name).
    pub fn pep_identity(&self, pep: &str) -> Issued {
        match pep.strip_prefix("mount:") {
            Some(device) => self.pki.issue(device, Role::Device),
            None => self.pki.issue(pep, Role::Service),
        }
    }

    /// An HTTP client that calls as `issued`.
    pub fn http_as(&self, issued: &Issued) -> ArdsHttp {
        ArdsHttp::new(&self.url, &self.ca_pem, Some(&issued.identity)).unwrap()
    }

    pub fn client_config(&self, pep: &str) -> ClientConfig {
        ClientConfig {
            url: self.url.clone(),
            pep_id: pep.to_owned(),
            ca_pem: self.ca_pem.clone(),
            identity: self.pep_identity(pep).identity,
            trusted_issuers: vec![(ISSUER.to_owned(), self.key.public())],
            cache_path: self
                .dir
                .path()
                .join(format!("cache-{}.json", pep.replace(':', "_"))),
        }
    }

    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            clock: Arc::new(self.clock.clone()),
            poll_wait: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(400),
        }
    }

    pub async fn client(&self, pep: &str) -> RulesClient {
        RulesClient::start_with(self.client_config(pep), self.client_options())
            .await
            .unwrap()
    }

    pub fn sign(&self, rule: Rule) -> SignedRule {
        authz::sign(rule, &self.key)
    }
}

/// A rule letting `participant` read `show/seq1/shot010/*` with `DIGEST` on `device`.
pub fn rule(id: &str, participant: &str, device: &str, targets: &[&str], nb: i64, na: i64) -> Rule {
    let spec = RuleSpec {
        id: id.to_owned(),
        request_id: format!("req-{id}"),
        task: "comp".into(),
        participant: participant.to_owned(),
        actions: vec![Action::Read],
        devices: vec![device.to_owned()],
        applications: vec![DIGEST.to_owned()],
        assets: vec![authz::request::AssetSelector {
            path: Some("show/seq1/shot010/*".into()),
            scope: Some("shot010".into()),
        }],
        not_before: nb,
        not_after: na,
    };
    Rule {
        delegates_to: None,
        delegated_by: None,
        id: id.to_owned(),
        issuer: ISSUER.to_owned(),
        request_id: format!("req-{id}"),
        targets: targets.iter().map(|s| s.to_string()).collect(),
        not_before: nb,
        not_after: na,
        policy: spec.to_cedar(),
    }
}

pub fn access<'a>(participant: &'a str, device: &'a str, now: i64) -> AccessRequest<'a> {
    AccessRequest {
        participant,
        application_digest: DIGEST,
        device,
        asset_path: "show/seq1/shot010/f0001.exr",
        asset_scope: "shot010",
        action: Action::Read,
        now,
    }
}

pub fn denial(participant: &str, device: &str, path: &str) -> ards::DenialReport {
    ards::DenialReport {
        participant: participant.to_owned(),
        application_digest: DIGEST.to_owned(),
        device: device.to_owned(),
        asset_path: path.to_owned(),
        asset_scope: "shot010".into(),
        action: Action::Read,
    }
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes; returns how long it took.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn ids(rules: &[SignedRule]) -> Vec<String> {
    let mut v: Vec<String> = rules.iter().map(|s| s.rule.id.clone()).collect();
    v.sort();
    v
}
