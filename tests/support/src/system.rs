//! A whole installation for one test or benchmark: `csap server` with a user, enrolled devices
//! and a key scope; requests through `csap request`; rules awaited where they are enforced;
//! the audit trail as the admin reads it; `csap mount` of a backing store.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use csapfs::fs::MountOptions;
use keyserver::wire::{AuditQuery, AuditRecord, RegisterAppRequest};
use keyserver::{AdminClient, LicenseClient, UserToken};
use tokio::runtime::Runtime;

use crate::mount::{csap_mount, ArdsFlags, CsapMount, KeyServerFlags};
use crate::request::Request;
use crate::server::{CsapServer, ServerInfo, ServerOptions};
use crate::Importer;

/// How long a rule may take to reach a PEP's evaluator.
const RULES_TIMEOUT: Duration = Duration::from_secs(30);
/// The PEP id authz's templates give the key server's rules.
const KEYSERVER_PEP: &str = "keyserver";
/// Audit records per page when reading the trail from a mark.
const AUDIT_PAGE: u32 = 10_000;

/// What to provision.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The `csap` binary (`env!("CARGO_BIN_EXE_csap")` in the CLI's tests).
    pub csap: PathBuf,
    pub user: String,
    pub password: String,
    pub scope: String,
    /// Devices enrolled into `DIR/<name>`; the user logs in on the first one.
    pub devices: Vec<String>,
    /// Where `csap server` listens (see [`ServerOptions::listen`]).
    pub listen: std::net::SocketAddr,
    /// The key server's per-device license limit, `RATE/BURST`.
    pub device_rate: Option<String>,
    /// `csap server --store URL` (authz and ARDS on PostgreSQL); `None`: SQLite.
    pub store: Option<String>,
}

impl Setup {
    /// User `alice` in scope `show` on one `device`, free loopback ports, the default rate
    /// limit, SQLite.
    pub fn one_device(csap: impl Into<PathBuf>, device: &str) -> Setup {
        Setup {
            csap: csap.into(),
            user: "alice".into(),
            password: "a long passphrase".into(),
            scope: "show".into(),
            devices: vec![device.into()],
            listen: "127.0.0.1:0".parse().expect("loopback address"),
            device_rate: None,
            store: None,
        }
    }
}

/// A submitted request: its id and its rules, with the PEPs each targets.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub id: String,
    pub rules: Vec<(String, Vec<String>)>,
}

impl Submitted {
    /// Ids of the rules for `pep` (`keyserver`, `mount:<device>`).
    pub fn rules_for(&self, pep: &str) -> Vec<String> {
        self.rules
            .iter()
            .filter(|(_, targets)| targets.iter().any(|t| t == pep))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The running installation. Dropping it stops the server, then removes its directory.
pub struct System {
    pub rt: Runtime,
    pub admin: AdminClient,
    /// The user's token on the first device, also saved in [`Self::token_file`].
    pub token: UserToken,
    pub token_file: PathBuf,
    pub setup: Setup,
    server: Option<CsapServer>,
    server_opts: ServerOptions,
    /// Everything: `server/` (data), one directory per device, token files, logs.
    pub dir: tempfile::TempDir,
}

impl System {
    pub fn start(setup: Setup) -> Result<System> {
        let dir = tempfile::Builder::new().prefix("csap-e2e").tempdir()?;
        let mut server_opts = ServerOptions::new(&setup.csap, dir.path());
        server_opts.listen = setup.listen;
        server_opts.device_rate = setup.device_rate.clone();
        server_opts.store = setup.store.clone();
        let server = CsapServer::start(&server_opts)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let info = &server.info;
        let admin = AdminClient::connect(&info.keyserver_url, &info.admin_dir)?;
        let first = setup.devices.first().context("Setup::devices is empty")?;
        let token = rt
            .block_on(async {
                for device in &setup.devices {
                    admin
                        .enroll_device(device, &dir.path().join(device))
                        .await?;
                }
                admin.add_user(&setup.user, &setup.password).await?;
                admin.create_scope(&setup.scope).await?;
                let client =
                    LicenseClient::connect(&info.keyserver_url, &dir.path().join(first)).await?;
                // The mount and the programs it serves run as this process's uid.
                let me = nix::unistd::getuid().as_raw();
                Ok::<_, keyserver::ClientError>(
                    client.login(&setup.user, &setup.password, me).await?.0,
                )
            })
            .context("provisioning the devices, the user and the scope")?;
        let token_file = dir.path().join(format!("{}.token", setup.user));
        token.save(&token_file)?;
        Ok(System {
            rt,
            admin,
            token,
            token_file,
            setup,
            server: Some(server),
            server_opts,
            dir,
        })
    }

    /// Where the services are; panics while they are stopped.
    pub fn server(&self) -> &ServerInfo {
        &self.running().info
    }

    fn running(&self) -> &CsapServer {
        self.server.as_ref().expect("the server is stopped")
    }

    pub fn server_pid(&self) -> nix::unistd::Pid {
        self.running().pid()
    }

    /// The enrollment directory of `device`.
    pub fn device_dir(&self, device: &str) -> PathBuf {
        self.dir.path().join(device)
    }

    /// A license client of `device` (one TLS connection, kept alive).
    pub fn license_client(&self, device: &str) -> Result<LicenseClient> {
        Ok(self.rt.block_on(LicenseClient::connect(
            &self.server().keyserver_url,
            &self.device_dir(device),
        ))?)
    }

    /// An importer on `device` (the user logged in there) licensing for the registered
    /// import tool `digest` in the scope.
    pub fn importer(&self, device: &str, digest: &str) -> Result<Importer> {
        let client = self.license_client(device)?;
        let me = nix::unistd::getuid().as_raw();
        let (token, _) =
            self.rt
                .block_on(client.login(&self.setup.user, &self.setup.password, me))?;
        Ok(Importer {
            client,
            token,
            digest: digest.to_string(),
            scope: self.setup.scope.clone(),
        })
    }

    /// Registers the application build `digest` as `name` version 1, no code allowances.
    pub fn register(&self, digest: &str, name: &str) -> Result<()> {
        self.rt
            .block_on(self.admin.register_app(&RegisterAppRequest {
                digest: digest.to_string(),
                name: name.into(),
                version: "1".into(),
                vendor: None,
                code: Default::default(),
            }))?;
        Ok(())
    }

    /// `csap SUBCOMMAND … --authz URL --ca CERT --identity ADMIN`; its JSON answer.
    fn csap_authz(&self, args: &[&str]) -> Result<serde_json::Value> {
        let info = self.server();
        let out = Command::new(&self.setup.csap)
            .args(args)
            .args(["--authz", &info.authz_url])
            .arg("--ca")
            .arg(&info.authz_cert)
            .arg("--identity")
            .arg(&info.admin_dir)
            .output()
            .context("cannot run csap")?;
        ensure!(
            out.status.success(),
            "csap {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("csap {} printed no JSON", args.join(" ")))
    }

    /// Submits `req` with `csap request submit`, as workflow management would.
    pub fn submit(&self, req: &Request<'_>) -> Result<Submitted> {
        let file = self.dir.path().join(format!("request-{}.json", req.name));
        std::fs::write(&file, req.json())?;
        let issued = self.csap_authz(&["request", "submit", &file.to_string_lossy()])?;
        let id = issued["id"]
            .as_str()
            .context("no request id in authz's answer")?
            .to_string();
        let ids: Vec<&str> = issued["rule_ids"]
            .as_array()
            .context("no rule_ids in authz's answer")?
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        // Which PEP each rule is for, from authz's inventory.
        let live = self.csap_authz(&["rules", "list", "--json"])?;
        let rules = live
            .as_array()
            .context("no rules in authz's inventory")?
            .iter()
            .filter(|r| r["rule"]["id"].as_str().is_some_and(|id| ids.contains(&id)))
            .map(|r| {
                let targets = r["rule"]["targets"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    r["rule"]["id"].as_str().unwrap_or_default().to_string(),
                    targets,
                )
            })
            .collect();
        Ok(Submitted { id, rules })
    }

    /// Cancels a request with `csap request cancel`: its rules are revoked.
    pub fn cancel(&self, submitted: &Submitted) -> Result<()> {
        self.csap_authz(&["request", "cancel", &submitted.id])?;
        Ok(())
    }

    /// Waits until the key server's evaluator holds the request's key server rules and, with
    /// `mount_device`, that device's mount holds its own (both subscriptions write their cache
    /// file after the evaluator took the change).
    pub fn wait_rules(&self, submitted: &Submitted, mount_device: Option<&str>) -> Result<()> {
        let keyserver = submitted.rules_for(KEYSERVER_PEP);
        ensure!(!keyserver.is_empty(), "no key server rule in {submitted:?}");
        let mut want = vec![(self.server().rules_cache.clone(), keyserver)];
        if let Some(device) = mount_device {
            want.push((
                self.device_dir(device).join("mount-rules.json"),
                submitted.rules_for(&format!("mount:{device}")),
            ));
        }
        for (cache, ids) in want {
            for id in ids {
                let quoted = format!("\"{id}\"");
                crate::until(
                    &format!("rule {id} in {}", cache.display()),
                    RULES_TIMEOUT,
                    || std::fs::read_to_string(&cache).is_ok_and(|t| t.contains(&quoted)),
                )?;
            }
        }
        Ok(())
    }

    /// The id of the newest audit record (0 when there is none).
    pub fn audit_mark(&self) -> Result<i64> {
        Ok(self
            .rt
            .block_on(self.admin.audit_tail(1))?
            .last()
            .map_or(0, |r| r.id))
    }

    /// Every audit record after `mark`, oldest first.
    pub fn audit_since(&self, mark: i64) -> Result<Vec<AuditRecord>> {
        let mut after = mark;
        let mut all = Vec::new();
        loop {
            let page = self
                .rt
                .block_on(self.admin.audit_after(after, AUDIT_PAGE))?;
            let Some(last) = page.last() else {
                return Ok(all);
            };
            after = last.id;
            all.extend(page);
        }
    }

    /// The newest `n` audit records, oldest first.
    pub fn audit_tail(&self, n: u32) -> Result<Vec<AuditRecord>> {
        Ok(self.rt.block_on(self.admin.audit_tail(n))?)
    }

    /// What `csap audit query --path GLOB` answers (newest 1,000).
    pub fn audit_at(&self, glob: &str) -> Result<Vec<AuditRecord>> {
        Ok(self.rt.block_on(self.admin.audit_query(&AuditQuery {
            path: Some(glob.into()),
            limit: Some(1000),
            ..Default::default()
        }))?)
    }

    /// The `csap mount` key-server flags for `device` with the user's token file and the
    /// mount's own ARDS subscription (clear `ards` for a mount that leaves every decision to
    /// the key server).
    pub fn mount_flags(&self, device: &str) -> KeyServerFlags {
        let info = self.server();
        KeyServerFlags {
            server: info.keyserver_url.clone(),
            identity: self.device_dir(device),
            scope: Some(self.setup.scope.clone()),
            token_file: vec![self.token_file.display().to_string()],
            ards: Some(ArdsFlags {
                url: info.ards_url.clone(),
                ca: info.ards_cert.clone(),
                issuer_pub: info.issuer_pub.clone(),
            }),
            socket: None,
            audit_spool: None,
        }
    }

    /// `csap mount backing mnt` with `flags` and `options`; its log is `DIR/<mnt's name>.log`.
    pub fn mount(
        &self,
        backing: &Path,
        mnt: &Path,
        flags: &KeyServerFlags,
        options: &MountOptions,
    ) -> Result<CsapMount> {
        let name = mnt
            .file_name()
            .map_or("mount".into(), |n| n.to_string_lossy());
        let log = self.dir.path().join(format!("{name}.log"));
        csap_mount(&self.setup.csap, backing, mnt, flags, options, &log)
    }

    /// Stops every service and waits until the server process is gone.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }

    /// Starts the services again on the same ports and data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.server = Some(CsapServer::start(&self.server_opts)?);
        Ok(())
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop();
    }
}
