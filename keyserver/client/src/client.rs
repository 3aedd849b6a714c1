//! Client library of the key server: [`LicenseClient`] for devices (login, licenses, asset
//! create/rename) and [`AdminClient`] for the admin identity. Both speak HTTPS with mTLS.
//! Enrolling devices and principals makes key pairs and CSRs locally: feature `enroll`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use csap_base::token::UserToken;
use csap_identity::pki::{self, Identity, PkiError};

use crate::license::{self, DeviceSession, LicenseError, OpenedLicense};
use crate::seal::{HpkeKeyPair, SealError};
use crate::wire::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cannot reach the key server")]
    Http(#[from] reqwest::Error),
    #[error("denied: {}", denial_text(*.0))]
    Denied(Reason),
    #[error("key server answered {status}: {}{}", body.error, body.field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Server { status: u16, body: ErrorBody },
    /// 429: this device's request rate is used up; ask again after `retry_after` (when the
    /// server said).
    #[error("key server rate limit reached{}", retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    RateLimited {
        retry_after: Option<std::time::Duration>,
    },
    #[error(transparent)]
    License(#[from] LicenseError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the server's license key differs from the one recorded at enrollment")]
    ServerKeyMismatch,
    #[error("{0}")]
    ServerUrl(String),
}

/// A refusal's reason code, with what to do about it where that is not obvious.
fn denial_text(reason: Reason) -> String {
    match reason.advice() {
        Some(advice) => format!("{reason} ({advice})"),
        None => reason.to_string(),
    }
}

/// JSON over HTTPS with a client certificate, to one key server or to any of several replicas
/// (see [`Servers`]).
#[derive(Debug, Clone)]
pub struct KsClient {
    http: reqwest::Client,
    servers: Arc<Servers>,
    tls: std::sync::Arc<rustls::ClientConfig>,
}

pub use crate::failover::Servers;

/// Idle connections of a [`KsClient::own_pool`] client are not reused after this long: a
/// server may close a connection that sends no request headers for a while (the key server's
/// header timeout is 10 s), and a client whose connection tasks run only during its own calls
/// would not notice until it used the connection again.
const OWN_POOL_IDLE: Duration = Duration::from_secs(5);

impl KsClient {
    /// `server_url` is one URL or several, comma-separated (replicas of one key server): see
    /// [`Servers`].
    pub fn new(server_url: &str, identity: &Identity) -> Result<Self, ClientError> {
        Self::build(
            Arc::new(Servers::parse(server_url)?),
            identity.client_config()?.into(),
            None,
        )
    }

    fn build(
        servers: Arc<Servers>,
        tls: std::sync::Arc<rustls::ClientConfig>,
        idle: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .https_only(true)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(idle)
            .build()?;
        Ok(KsClient { http, servers, tls })
    }

    /// The same identity and server with a connection pool of its own (for use from another
    /// runtime).
    pub fn own_pool(&self) -> Result<Self, ClientError> {
        Self::build(
            Arc::clone(&self.servers),
            std::sync::Arc::clone(&self.tls),
            Some(OWN_POOL_IDLE),
        )
    }

    async fn answer<R: DeserializeOwned>(resp: reqwest::Response) -> Result<R, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.json().await?);
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(std::time::Duration::from_secs);
            return Err(ClientError::RateLimited { retry_after });
        }
        let text = resp.text().await.unwrap_or_default();
        let body: ErrorBody = serde_json::from_str(&text).unwrap_or(ErrorBody {
            error: text,
            field: None,
            reason: None,
        });
        match body.reason {
            Some(r) if status.as_u16() == 403 => Err(ClientError::Denied(r)),
            // An unknown session is retried on a new one; other 401s are refused tokens.
            Some(r) if status.as_u16() == 401 && r != Reason::SessionUnknown => {
                Err(ClientError::Denied(r))
            }
            _ => Err(ClientError::Server {
                status: status.as_u16(),
                body,
            }),
        }
    }

    pub async fn post<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        let repeat = Servers::repeatable_post(path);
        let resp = self
            .servers
            .send(repeat, |base| {
                self.http.post(format!("{base}{path}")).json(body)
            })
            .await?;
        Self::answer(resp).await
    }

    /// A PUT (idempotent: sent again to the next server after a lost connection).
    pub async fn put<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        let resp = self
            .servers
            .send(true, |base| {
                self.http.put(format!("{base}{path}")).json(body)
            })
            .await?;
        Self::answer(resp).await
    }

    /// A DELETE (idempotent, as a PUT).
    pub async fn delete<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        let resp = self
            .servers
            .send(true, |base| self.http.delete(format!("{base}{path}")))
            .await?;
        Self::answer(resp).await
    }

    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        let resp = self
            .servers
            .send(true, |base| self.http.get(format!("{base}{path}")))
            .await?;
        Self::answer(resp).await
    }

    /// A GET with `query` as its URL-encoded query string.
    pub async fn get_query<Q: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<R, ClientError> {
        let resp = self
            .servers
            .send(true, |base| {
                self.http.get(format!("{base}{path}")).query(query)
            })
            .await?;
        Self::answer(resp).await
    }
}

/// `GET /v1/info` with any identity of the installation (device, admin, auditor…): who the
/// server takes us for, its version and license key (`csap status`).
pub async fn server_info(server_url: &str, identity_dir: &Path) -> Result<ServerInfo, ClientError> {
    KsClient::new(server_url, &read_identity(identity_dir)?)?
        .get("/v1/info")
        .await
}

fn read_identity(dir: &Path) -> Result<Identity, ClientError> {
    Ok(Identity::load(dir)?)
}

/// The device side: each request carries the user's token and the caller's application digest;
/// keys come back sealed in this client's license session (see [`crate::session`]) and are
/// opened here. Clones share the connection pool and the session.
#[derive(Debug, Clone)]
pub struct LicenseClient {
    client: KsClient,
    server_key: String,
    device: String,
    session: Arc<tokio::sync::Mutex<Option<Arc<DeviceSession>>>>,
}

/// A session is renewed this long before its end, so no request races its expiry.
const SESSION_RENEW_MARGIN_SECS: i64 = 60;

impl LicenseClient {
    /// Connects with the device identity in `identity_dir` and learns the license-signing key
    /// (checked against `server.pub` from enrollment when that file exists).
    pub async fn connect(server_url: &str, identity_dir: &Path) -> Result<Self, ClientError> {
        let client = KsClient::new(server_url, &read_identity(identity_dir)?)?;
        let info: ServerInfo = client.get("/v1/info").await?;
        if let Ok(recorded) = std::fs::read_to_string(identity_dir.join(pki::SERVER_KEY_FILE)) {
            if recorded.trim() != info.license_public_key {
                return Err(ClientError::ServerKeyMismatch);
            }
        }
        Ok(LicenseClient {
            client,
            server_key: info.license_public_key,
            device: info.peer,
            session: Arc::default(),
        })
    }

    /// The device name the server identified us as.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// A client with its own connections that shares this one's license session: for a
    /// caller that drives its requests on a runtime of its own (the mount's FUSE threads, on
    /// a current-thread runtime, so a license round trip wakes no other thread). Its idle
    /// connections expire sooner, because its connection tasks run only during its calls.
    pub fn with_own_connections(&self) -> Result<Self, ClientError> {
        Ok(LicenseClient {
            client: self.client.own_pool()?,
            ..self.clone()
        })
    }

    /// Logs `user` in for the local `uid` of this device: the token is bound to both (the
    /// device is the one of this client's certificate). Only the device's identity holder can
    /// call this, so the uid is the device's word: the mount passes the uid the kernel reported
    /// for the user who asked (SO_PEERCRED), `csap login --identity` its own or `--uid`.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        uid: u32,
    ) -> Result<(UserToken, i64), ClientError> {
        let r: LoginResponse = self
            .client
            .post(
                "/v1/login",
                &LoginRequest {
                    user: user.into(),
                    password: password.into(),
                    uid,
                },
            )
            .await?;
        Ok((UserToken::new(r.token.expose().to_string()), r.expires_at))
    }

    /// Where `organization`'s people log in: its identity provider as the key server trusts it.
    pub async fn identity_provider(
        &self,
        organization: &str,
    ) -> Result<IdentityProvider, ClientError> {
        self.client
            .get(&format!("/v1/identity-providers/{organization}"))
            .await
    }

    /// A token for the participant `id_token` (from `organization`'s provider, for the
    /// authorization request that carried `nonce`) names, bound as [`Self::login`]'s: the token,
    /// its end, and the participant's name.
    pub async fn login_oidc(
        &self,
        organization: &str,
        id_token: &str,
        nonce: &str,
        uid: u32,
    ) -> Result<(UserToken, i64, String), ClientError> {
        let r: LoginResponse = self
            .client
            .post(
                "/v1/login/oidc",
                &OidcLoginRequest {
                    organization: organization.into(),
                    id_token: id_token.into(),
                    nonce: nonce.into(),
                    uid,
                },
            )
            .await?;
        let user = r.user.clone().unwrap_or_default();
        Ok((
            UserToken::new(r.token.expose().to_string()),
            r.expires_at,
            user,
        ))
    }

    /// The live license session, opened (one HPKE key agreement) when there is none or it is
    /// about to end. Concurrent callers wait for the one being opened.
    async fn session(&self) -> Result<Arc<DeviceSession>, ClientError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            // An unusable clock renews (and the server, reading its own clock, decides).
            if csap_base::clock::unix_now()
                .is_ok_and(|now| now < s.not_after - SESSION_RENEW_MARGIN_SECS)
            {
                return Ok(Arc::clone(s));
            }
        }
        let kp = HpkeKeyPair::generate();
        let signed: SignedSession = self
            .client
            .post(
                "/v1/sessions",
                &SessionRequest {
                    hpke_public_key: kp.public().to_hex(),
                },
            )
            .await?;
        let s = Arc::new(DeviceSession::accept(
            &signed,
            &kp,
            &self.device,
            &self.server_key,
        )?);
        *slot = Some(Arc::clone(&s));
        Ok(s)
    }

    /// Drops the session `id` if it is still the current one (the server no longer knows it).
    async fn forget_session(&self, id: &str) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| s.id == id) {
            *slot = None;
        }
    }

    async fn license(
        &self,
        mut req: LicenseRequest,
        path: &str,
    ) -> Result<OpenedLicense, ClientError> {
        // The server forgets sessions when it restarts: open a new one and ask once more.
        let mut retried = false;
        loop {
            let session = self.session().await?;
            req.session = Some(session.id.clone());
            match self.client.post::<_, SignedLicense>(path, &req).await {
                Err(ClientError::Server { body, .. })
                    if !retried && body.reason == Some(Reason::SessionUnknown) =>
                {
                    self.forget_session(&session.id).await;
                    retried = true;
                }
                answer => return Ok(license::open_in_session(answer?, &session)?),
            }
        }
    }

    /// Licenses a batch of existing assets; the result holds exactly the granted subset, and
    /// `license.denials` gives the reason for each of the rest.
    pub async fn request(
        &self,
        token: &UserToken,
        app_digest: &str,
        action: Action,
        asset_ids: &[[u8; 16]],
    ) -> Result<OpenedLicense, ClientError> {
        let req = LicenseRequest {
            token: token.as_str().into(),
            app_digest: app_digest.into(),
            action,
            assets: asset_ids.iter().map(hex::encode).collect(),
            create: None,
            hpke_public_key: String::new(),
            session: None,
        };
        self.license(req, "/v1/licenses").await
    }

    /// Registers a new asset at `path` in `scope`; the server allocates its id and returns its key.
    pub async fn create(
        &self,
        token: &UserToken,
        app_digest: &str,
        path: &str,
        scope: &str,
    ) -> Result<OpenedLicense, ClientError> {
        let req = LicenseRequest {
            token: token.as_str().into(),
            app_digest: app_digest.into(),
            action: Action::Create,
            assets: Vec::new(),
            create: Some(CreateAsset {
                path: path.into(),
                scope: scope.into(),
            }),
            hpke_public_key: String::new(),
            session: None,
        };
        self.license(req, "/v1/assets").await
    }

    pub async fn rename(
        &self,
        token: &UserToken,
        app_digest: &str,
        asset_id: &[u8; 16],
        new_path: &str,
    ) -> Result<AssetInfo, ClientError> {
        self.client
            .post(
                &format!("/v1/assets/{}/rename", hex::encode(asset_id)),
                &RenameRequest {
                    token: token.as_str().into(),
                    app_digest: app_digest.into(),
                    new_path: new_path.into(),
                },
            )
            .await
    }

    /// One step of moving an asset to its next write generation (reserve, then settle: the key
    /// server's `generation` module); answers the asset's registry row after the step.
    pub async fn generation(
        &self,
        token: &UserToken,
        app_digest: &str,
        asset_id: &[u8; 16],
        step: GenerationStep,
        generation: u32,
    ) -> Result<AssetInfo, ClientError> {
        self.client
            .post(
                &format!("/v1/assets/{}/generation", hex::encode(asset_id)),
                &GenerationRequest {
                    token: token.as_str().into(),
                    app_digest: app_digest.into(),
                    step,
                    generation,
                },
            )
            .await
    }

    /// Ships a batch of the mount's own decisions (`POST /v1/audit`).
    pub async fn ship_audit(&self, batch: &AuditBatch) -> Result<AuditBatchAck, ClientError> {
        self.client.post("/v1/audit", batch).await
    }

    /// Identity revocations after `since` (see [`crate::revocation`]), waiting up to `wait`
    /// (whole seconds, at most [`crate::revocation::MAX_WAIT_SECS`]) for one when there is
    /// none yet; `since: None` asks only for the head, to start a subscription from.
    pub async fn revocations(
        &self,
        since: Option<i64>,
        wait: Duration,
    ) -> Result<crate::revocation::RevocationsResponse, ClientError> {
        let path = match since {
            Some(since) => format!("/v1/revocations?since={since}&wait={}", wait.as_secs()),
            None => "/v1/revocations".to_string(),
        };
        self.client.get(&path).await
    }

    /// What the build `digest` may map beyond the mount's defaults; `None` if it is unknown
    /// or revoked.
    pub async fn app_code(&self, digest: &str) -> Result<Option<AppCode>, ClientError> {
        match self.client.get(&format!("/v1/apps/{digest}/code")).await {
            Ok(code) => Ok(Some(code)),
            Err(ClientError::Server { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The raw client, for requests this API does not wrap.
    pub fn raw(&self) -> &KsClient {
        &self.client
    }
}

/// The admin side (identity from `DATA_DIR/admin`).
#[derive(Debug, Clone)]
pub struct AdminClient {
    client: KsClient,
}

impl AdminClient {
    pub fn connect(server_url: &str, identity_dir: &Path) -> Result<Self, ClientError> {
        Ok(AdminClient {
            client: KsClient::new(server_url, &read_identity(identity_dir)?)?,
        })
    }

    /// Enrolls a device: creates its TLS key (CSR) and X25519 key locally, has the server sign
    /// the certificate, and writes cert.pem, key.pem, ca.pem, hpke.key and server.pub to `out`.
    #[cfg(feature = "enroll")]
    pub async fn enroll_device(
        &self,
        name: &str,
        out: &Path,
    ) -> Result<EnrollResponse, ClientError> {
        let (csr_pem, key_pem) = pki::new_csr(name)?;
        let hpke = HpkeKeyPair::generate();
        let resp: EnrollResponse = self
            .client
            .post(
                "/v1/admin/devices",
                &EnrollRequest {
                    name: name.into(),
                    csr_pem,
                    hpke_public_key: hpke.public().to_hex(),
                },
            )
            .await?;
        Identity {
            cert_pem: resp.cert_pem.clone(),
            key_pem,
            ca_pem: resp.ca_pem.clone(),
        }
        .save(out)?;
        hpke.save(&out.join(pki::HPKE_KEY_FILE))?;
        let p = out.join(pki::SERVER_KEY_FILE);
        csap_base::files::write_public(&p, resp.license_public_key.as_bytes()).map_err(
            |source| ClientError::Io {
                path: p.display().to_string(),
                source,
            },
        )?;
        Ok(resp)
    }

    pub async fn list_devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        self.client.get("/v1/admin/devices").await
    }
    pub async fn revoke_device(&self, name: &str) -> Result<Revoked, ClientError> {
        self.client
            .post(
                &format!("/v1/admin/devices/{name}/revoke"),
                &serde_json::json!({}),
            )
            .await
    }
    pub async fn add_user(
        &self,
        name: &str,
        password: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.client
            .post(
                "/v1/admin/users",
                &AddUserRequest {
                    name: name.into(),
                    password: password.into(),
                },
            )
            .await
    }
    pub async fn disable_user(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.client
            .post(
                &format!("/v1/admin/users/{name}/disable"),
                &serde_json::json!({}),
            )
            .await
    }
    /// Lets a disabled user log in again; tokens issued before the disable stay void.
    pub async fn enable_user(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.client
            .post(
                &format!("/v1/admin/users/{name}/enable"),
                &serde_json::json!({}),
            )
            .await
    }
    pub async fn list_users(&self) -> Result<Vec<crate::wire::UserInfo>, ClientError> {
        self.client.get("/v1/admin/users").await
    }
    /// Trusts `issuer` (client id `client_id`) for `organization`'s people, replacing the
    /// provider it had.
    pub async fn put_identity_provider(
        &self,
        organization: &str,
        issuer: &str,
        client_id: &str,
        pseudonymous: bool,
    ) -> Result<IdentityProvider, ClientError> {
        self.client
            .put(
                &format!("/v1/admin/identity-providers/{organization}"),
                &serde_json::json!({
                    "issuer": issuer,
                    "client_id": client_id,
                    "pseudonymous": pseudonymous,
                }),
            )
            .await
    }
    pub async fn list_identity_providers(&self) -> Result<Vec<IdentityProvider>, ClientError> {
        let list: IdentityProviderList = self.client.get("/v1/admin/identity-providers").await?;
        Ok(list.providers)
    }
    pub async fn remove_identity_provider(
        &self,
        organization: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.client
            .delete(&format!("/v1/admin/identity-providers/{organization}"))
            .await
    }
    pub async fn register_app(&self, req: &RegisterAppRequest) -> Result<AppInfo, ClientError> {
        self.client.post("/v1/admin/apps", req).await
    }
    pub async fn list_apps(&self) -> Result<Vec<AppInfo>, ClientError> {
        self.client.get("/v1/admin/apps").await
    }
    pub async fn revoke_app(&self, req: &RevokeAppRequest) -> Result<Revoked, ClientError> {
        self.client.post("/v1/admin/apps/revoke", req).await
    }
    pub async fn create_scope(&self, name: &str) -> Result<ScopeInfo, ClientError> {
        self.client
            .post(
                "/v1/admin/scopes",
                &CreateScopeRequest { name: name.into() },
            )
            .await
    }
    pub async fn list_scopes(&self) -> Result<Vec<ScopeInfo>, ClientError> {
        self.client.get("/v1/admin/scopes").await
    }
    pub async fn rotate(&self, scope: &str) -> Result<ScopeInfo, ClientError> {
        self.client
            .post(
                &format!("/v1/admin/scopes/{scope}/rotate"),
                &serde_json::json!({}),
            )
            .await
    }
    pub async fn revoke_key(&self, scope: &str, version: u32) -> Result<ScopeInfo, ClientError> {
        self.client
            .post(
                &format!("/v1/admin/scopes/{scope}/revoke"),
                &RevokeKeyRequest { version },
            )
            .await
    }
    pub async fn list_assets(&self) -> Result<Vec<AssetInfo>, ClientError> {
        self.client.get("/v1/admin/assets").await
    }
    pub async fn issue(&self, req: &IssueRequest) -> Result<SignedLicense, ClientError> {
        self.client.post("/v1/admin/licenses", req).await
    }
    /// The last `n` audit records, oldest first.
    pub async fn audit_tail(&self, n: u32) -> Result<Vec<AuditRecord>, ClientError> {
        self.client.get(&format!("/v1/admin/audit?tail={n}")).await
    }
    /// Records after id `after`, oldest first.
    pub async fn audit_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, ClientError> {
        self.client
            .get(&format!("/v1/admin/audit?after={after}&limit={limit}"))
            .await
    }
    /// The newest records matching `q`, oldest first (`GET /v1/admin/audit/query`).
    pub async fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, ClientError> {
        self.client.get_query("/v1/admin/audit/query", q).await
    }
    /// Walks the audit trail's hash chain on the server (`GET /v1/admin/audit/verify`).
    pub async fn audit_verify(&self) -> Result<AuditVerification, ClientError> {
        self.client.get("/v1/admin/audit/verify").await
    }
    /// Issues a `workflow`, `auditor` or `service` certificate: creates the key (CSR) locally
    /// and writes cert.pem, key.pem and ca.pem to `out`. A workflow takes its grant.
    #[cfg(feature = "enroll")]
    pub async fn add_principal(
        &self,
        kind: &str,
        name: &str,
        grant: Option<&csap_identity::WorkflowGrant>,
        out: &Path,
    ) -> Result<AddPrincipalResponse, ClientError> {
        let (csr_pem, key_pem) = pki::new_csr(name)?;
        let resp: AddPrincipalResponse = self
            .client
            .post(
                "/v1/admin/principals",
                &AddPrincipalRequest {
                    kind: kind.into(),
                    name: name.into(),
                    csr_pem,
                    scopes: grant.map(|g| g.scopes.clone()).unwrap_or_default(),
                    paths: grant.map(|g| g.paths.clone()).unwrap_or_default(),
                },
            )
            .await?;
        Identity {
            cert_pem: resp.cert_pem.clone(),
            key_pem,
            ca_pem: resp.ca_pem.clone(),
        }
        .save(out)?;
        Ok(resp)
    }
    /// Revokes every certificate of principal `kind:name`.
    pub async fn revoke_principal(&self, kind: &str, name: &str) -> Result<Revoked, ClientError> {
        self.client
            .post(
                &format!("/v1/admin/principals/{kind}/{name}/revoke"),
                &serde_json::json!({}),
            )
            .await
    }
    /// The installation's directory (principals, users, devices, applications, grants), for
    /// authz and ARDS running apart from the key server.
    pub async fn directory(&self) -> Result<DirectorySnapshot, ClientError> {
        self.client.get("/v1/directory").await
    }
    pub fn raw(&self) -> &KsClient {
        &self.client
    }
}
