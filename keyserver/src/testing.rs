//! Helpers to run a real key server on loopback (tests, benches, load generators).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::client::{AdminClient, ClientError, LicenseClient};
use crate::ratelimit::RateLimit;
use crate::rules::RuleCheck;
use crate::server::{start, Clock, RunningServer, ServerConfig, ServerError};
use crate::token::{PasswordCost, UserToken};
use crate::wire::{Action, RegisterAppRequest};

/// A key server on 127.0.0.1 with its admin identity.
pub struct Loopback {
    pub server: RunningServer,
    pub url: String,
    pub admin_dir: PathBuf,
    pub clock: Clock,
}

impl Loopback {
    pub fn admin(&self) -> Result<AdminClient, ClientError> {
        AdminClient::connect(&self.url, &self.admin_dir)
    }
}

/// Cheap argon2id parameters (1 MiB, 1 pass) so test logins are fast. Never for production.
pub const TEST_PASSWORD_COST: PasswordCost = PasswordCost {
    m_cost_kib: 1024,
    t_cost: 1,
    p_cost: 1,
};

/// The configuration `spawn_loopback` uses: port 0, fast password hashing, a generous rate limit.
pub fn loopback_config(dir: &Path, rules: Arc<dyn RuleCheck>) -> ServerConfig {
    let mut cfg = ServerConfig::new(dir, "127.0.0.1:0".parse().expect("loopback address"), rules);
    cfg.password_cost = TEST_PASSWORD_COST;
    cfg.limits.per_device = RateLimit {
        rate: 100_000.0,
        burst: 100_000.0,
    };
    cfg
}

/// Starts a key server with its data in `dir` (created or reused) on a free loopback port.
pub async fn spawn_loopback(
    dir: &Path,
    rules: Arc<dyn RuleCheck>,
) -> Result<Loopback, ServerError> {
    spawn_with(loopback_config(dir, rules)).await
}

/// Starts a key server from an explicit config (use [`loopback_config`] and adjust).
pub async fn spawn_with(cfg: ServerConfig) -> Result<Loopback, ServerError> {
    let clock = cfg.clock.clone();
    let server = start(cfg).await?;
    Ok(Loopback {
        url: server.url.clone(),
        admin_dir: server.admin_dir(),
        server,
        clock,
    })
}

/// What [`provision`] set up: one device, user, application and scope, ready to license.
pub struct Provisioned {
    pub device_dir: PathBuf,
    pub client: LicenseClient,
    pub token: UserToken,
    pub app_digest: String,
}

/// Enrolls `device` into `device_dir`, adds `user` (password "password-1234"), registers an
/// application with digest BLAKE3(`app_name`) and creates `scope`; then logs in as the device.
pub async fn provision(
    lb: &Loopback,
    device: &str,
    device_dir: &Path,
    user: &str,
    app_name: &str,
    scope: &str,
) -> Result<Provisioned, ClientError> {
    let admin = lb.admin()?;
    admin.enroll_device(device, device_dir).await?;
    admin.add_user(user, "password-1234").await?;
    let app_digest = blake3::hash(app_name.as_bytes()).to_hex().to_string();
    admin
        .register_app(&RegisterAppRequest {
            digest: app_digest.clone(),
            name: app_name.into(),
            version: "1.0".into(),
            vendor: None,
            code: Default::default(),
        })
        .await?;
    admin.create_scope(scope).await?;
    let client = LicenseClient::connect(&lb.url, device_dir).await?;
    let (token, _) = client
        .login(user, "password-1234", nix::unistd::getuid().as_raw())
        .await?;
    Ok(Provisioned {
        device_dir: device_dir.to_path_buf(),
        client,
        token,
        app_digest,
    })
}

/// A rule (as authz templates write it) that lets `user` on `device` with `app_digest` do
/// `actions` on assets whose path matches `path_like` (the rule dialect, [`authz::glob`]: `*`
/// within one segment, `**` across) within [`not_before`, `not_after`).
#[derive(Debug, Clone)]
pub struct RuleFor<'a> {
    pub id: &'a str,
    pub user: &'a str,
    pub device: &'a str,
    pub app_digest: &'a str,
    pub path_like: &'a str,
    pub actions: &'a [Action],
    pub not_before: i64,
    pub not_after: i64,
}

impl RuleFor<'_> {
    pub fn build(&self) -> authz::Rule {
        let spec = authz::template::RuleSpec {
            id: self.id.into(),
            request_id: format!("req-{}", self.id),
            task: format!("task-{}", self.id),
            participant: self.user.into(),
            actions: self.actions.to_vec(),
            devices: vec![self.device.into()],
            applications: vec![self.app_digest.into()],
            assets: vec![authz::request::AssetSelector {
                path: Some(self.path_like.into()),
                scope: None,
            }],
            not_before: self.not_before,
            not_after: self.not_after,
        };
        authz::Rule {
            delegates_to: None,
            delegated_by: None,
            id: spec.id.clone(),
            issuer: "authz".into(),
            request_id: spec.request_id.clone(),
            targets: vec![authz::template::KEYSERVER_PEP.into()],
            not_before: self.not_before,
            not_after: self.not_after,
            policy: spec.to_cedar(),
        }
    }
}
