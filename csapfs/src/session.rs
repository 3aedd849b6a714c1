//! User sessions handed to the mount over a Unix socket (DESIGN §6): `csap login` sends the
//! user's password or an ID token of their organization's provider (the mount logs in with
//! the device identity for the sender's uid) or a token, and the mount binds the session to
//! the sender's uid as the kernel reports it (SO_PEERCRED).
//!
//! The socket is mode 0666 on purpose: who may talk to it does not matter, because nothing a
//! client says decides *whose* session it sets — the kernel's peer credentials do. A client can
//! only ever bind a token to its own uid, and only a token issued for its uid on this device
//! ([`check_binding`]): a copy of someone else's token is refused.
//!
//! Wire protocol, one exchange per connection, each message one JSON line (at most
//! [`MAX_MESSAGE`] bytes):
//! - request `{"user": "alice", "password": "…"}` (log in through the mount),
//!   `{"token": "<user token>"}` (hand over a token from `csap login --identity`),
//!   `{"oidc_provider": "acme-post"}` (where that organization's people log in: the first
//!   half of `csap login --oidc`, which then runs the browser flow itself) or
//!   `{"organization": "acme-post", "id_token": "…", "nonce": "…"}` (log in through the mount
//!   with the ID token that flow obtained; the key server verifies it)
//! - reply `{"ok": true, "uid": 1000, "user": "alice", "expires_at": 1795000000, "token"?: "…"}`
//!   (the token after a login), `{"ok": true, "issuer": "…", "client_id": "…"}` (a provider)
//!   or `{"ok": false, "error": "…"}`
//!
//! The ID token is a credential like the password: it is never logged.
//!
//! The claims are read without the token's MAC (the mount cannot verify it — the key server
//! does on every license request, and refuses tampered claims), so they serve only to refuse:
//! a token whose uid or device is not the sender's and this device's, an old token, an
//! expired one.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use csap_base::token::{Claims, UnverifiedError};
use csap_base::UserToken;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Longest request or reply line accepted (a token is a few hundred bytes).
pub const MAX_MESSAGE: usize = 16 * 1024;
/// How long one client may take to send its line, so a silent client cannot hold the server.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `csap login` waits for the mount's answer (a login is a key server round trip).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Clients served at once.
const MAX_CLIENTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("another process already serves sessions on {0}")]
    InUse(String),
    #[error("the mount refused the session: {0}")]
    Refused(String),
    #[error("the mount answered something that is not a session reply")]
    BadReply,
    #[error("cannot read the peer's credentials: {0}")]
    PeerCredentials(nix::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SessionError + '_ {
    move |source| SessionError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Why a token may not serve a uid on this device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    Unreadable(#[from] UnverifiedError),
    #[error("this token was issued for uid {token_uid}, not uid {uid}: a copied token is useless; each user runs `csap login` themselves")]
    OtherUid { token_uid: u32, uid: u32 },
    #[error("this token was issued on device {token_device}, not {device}: run `csap login` on this device")]
    OtherDevice {
        token_device: String,
        device: String,
    },
}

/// The claims of `token` if it was issued for `uid` on `device` (claims read unverified: this
/// only ever refuses; the key server checks the MAC and the device again).
pub fn check_binding(token: &str, uid: u32, device: &str) -> Result<Claims, BindError> {
    let claims = csap_base::token::read_claims_unverified(token)?;
    if claims.uid != uid {
        return Err(BindError::OtherUid {
            token_uid: claims.uid,
            uid,
        });
    }
    if claims.device != device {
        return Err(BindError::OtherDevice {
            token_device: claims.device,
            device: device.to_string(),
        });
    }
    Ok(claims)
}

/// Logs users in with the device's identity, which only the mount holds (`csap login` run by
/// an ordinary user cannot read the device key). The uid it is given comes from the kernel.
pub trait DeviceLogin: Send + Sync {
    /// The device principal this mount runs as (the token's `device` claim must name it).
    fn device(&self) -> &str;
    /// A token for `user` bound to this device and `uid`, and its expiry; `Err` says why not.
    fn login(&self, user: &str, password: &str, uid: u32) -> Result<(UserToken, i64), String>;
    /// Where `organization`'s people log in, as the key server trusts it.
    fn identity_provider(&self, organization: &str) -> Result<OidcProvider, String>;
    /// A token for the participant that `id_token` (from `organization`'s provider, for the
    /// authorization request that carried `nonce`) names, bound as [`Self::login`]'s: the
    /// token, its expiry and the participant's name; `Err` says why not (the key server's
    /// reason).
    fn login_oidc(
        &self,
        organization: &str,
        id_token: &str,
        nonce: &str,
        uid: u32,
    ) -> Result<(UserToken, i64, String), String>;
}

/// An organization's OpenID Connect provider as `csap login --oidc` needs it for the browser
/// flow (both are public at the provider too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProvider {
    pub issuer: String,
    /// The client id csap is registered under there.
    pub client_id: String,
}

/// Where the mount listens by default: `$XDG_RUNTIME_DIR/csap/mount.sock`.
pub fn default_socket_path() -> Option<PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("csap").join("mount.sock"))
}

struct Session {
    token: UserToken,
    expires_at: i64,
}

/// uid → the user token its owner handed over, until the token expires.
#[derive(Default)]
pub struct SessionRegistry {
    sessions: Mutex<HashMap<u32, Session>>,
}

impl fmt::Debug for SessionRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uids: Vec<u32> = self.lock().keys().copied().collect();
        f.debug_struct("SessionRegistry")
            .field("uids", &uids)
            .finish_non_exhaustive()
    }
}

/// The clock every session check reads; fails closed ([`csap_base::clock`]).
fn now() -> Result<i64, csap_base::clock::ClockError> {
    csap_base::clock::unix_now()
}

impl SessionRegistry {
    pub fn new() -> Arc<SessionRegistry> {
        Arc::new(SessionRegistry::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Session>> {
        // A panic while holding the lock cannot leave a half-updated map (every update is one
        // insert or remove), so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `token` (valid until `expires_at`, unix seconds) to `uid`, replacing any earlier one.
    pub fn insert(&self, uid: u32, token: UserToken, expires_at: i64) {
        self.lock().insert(uid, Session { token, expires_at });
    }

    /// The live token of `uid`. An expired token is dropped here. Without one, the caller is to
    /// be denied; the log line tells the operator what to do.
    pub fn token_for(&self, uid: u32) -> Option<String> {
        self.lookup(uid, now(), true)
            .map(|t| t.as_str().to_string())
    }

    /// Like [`Self::token_for`], as a zeroizing token and without the log line (for a caller
    /// that falls back to another source, e.g. the token file, before denying).
    pub fn session(&self, uid: u32) -> Option<UserToken> {
        self.lookup(uid, now(), false)
    }

    fn lookup(
        &self,
        uid: u32,
        now: Result<i64, csap_base::clock::ClockError>,
        log: bool,
    ) -> Option<UserToken> {
        let now = match now {
            Ok(now) => now,
            Err(err) => {
                // No session can be judged live; keep them for when the clock is fixed.
                warn!(uid, error = %err, "no session is live: the clock is unusable");
                return None;
            }
        };
        let mut sessions = self.lock();
        match sessions.get(&uid) {
            Some(s) if s.expires_at > now => return Some(s.token.clone()),
            Some(_) => {
                sessions.remove(&uid);
                if log {
                    warn!(
                        uid,
                        "the session of uid {uid} expired: run `csap login` again"
                    );
                }
            }
            None if log => {
                warn!(
                    uid,
                    "uid {uid} has no session: run `csap login` on this device"
                )
            }
            None => {}
        }
        None
    }

    /// Drops every expired session; returns how many were dropped.
    pub fn purge_expired(&self) -> usize {
        let Ok(now) = now() else {
            return 0;
        };
        let mut sessions = self.lock();
        let before = sessions.len();
        sessions.retain(|_, s| s.expires_at > now);
        before - sessions.len()
    }

    /// The uids with a session (expired or not), sorted.
    pub fn uids(&self) -> Vec<u32> {
        let mut uids: Vec<u32> = self.lock().keys().copied().collect();
        uids.sort_unstable();
        uids
    }
}

/// One request line: a login through the mount (password or ID token), a token to bind, or
/// the question where an organization logs in.
#[derive(Deserialize)]
#[serde(untagged)]
enum Request {
    Login(LoginRequest),
    Token(TokenRequest),
    OidcProvider(OidcProviderRequest),
    OidcLogin(OidcLoginRequest),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcProviderRequest {
    oidc_provider: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcLoginRequest {
    organization: String,
    id_token: keyserver_client::wire::Secret,
    nonce: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    user: String,
    password: keyserver_client::wire::Secret,
}

#[derive(Serialize, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    /// The user (or participant) the bound token names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The token a login through the mount obtained (bound to the sender's uid), for the
    /// sender's token file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<keyserver_client::wire::Secret>,
    /// An organization's provider (the answer to `oidc_provider`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
}

impl Reply {
    fn empty(ok: bool) -> Reply {
        Reply {
            ok,
            uid: None,
            user: None,
            expires_at: None,
            error: None,
            token: None,
            issuer: None,
            client_id: None,
        }
    }

    fn error(msg: impl Into<String>) -> Reply {
        Reply {
            error: Some(msg.into()),
            ..Reply::empty(false)
        }
    }
}

/// A running session socket; stops (and removes the socket file) on drop.
#[derive(Debug)]
pub struct SessionServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SessionServer {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SessionServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path` (parent directories created 0755; a stale socket replaced; mode 0666) and
/// binds tokens sent to it into `registry`, one connection at a time on a thread of its own.
pub fn serve(
    path: &Path,
    registry: Arc<SessionRegistry>,
    login: Arc<dyn DeviceLogin>,
) -> Result<SessionServer, SessionError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(SessionError::InUse(path.display().to_string()));
            }
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        Ok(_) => {
            return Err(SessionError::Io {
                path: path.display().to_string(),
                source: io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"),
            })
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(io_err(path))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let thread = std::thread::Builder::new()
        .name("csap-sessions".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                match conn {
                    // A thread per client, so one that connects and stays silent cannot delay
                    // everyone's login; bounded, so connecting in a loop cannot exhaust threads.
                    Ok(stream) if active.load(Ordering::SeqCst) < MAX_CLIENTS => {
                        active.fetch_add(1, Ordering::SeqCst);
                        let (registry, done) = (Arc::clone(&registry), Arc::clone(&active));
                        let login = Arc::clone(&login);
                        let spawned = std::thread::Builder::new()
                            .name("csap-session".into())
                            .spawn(move || {
                                handle(stream, &registry, login.as_ref());
                                done.fetch_sub(1, Ordering::SeqCst);
                            });
                        if spawned.is_err() {
                            active.fetch_sub(1, Ordering::SeqCst);
                            warn!("session socket: cannot start a client thread");
                        }
                    }
                    Ok(stream) => {
                        warn!(
                            "session socket: {MAX_CLIENTS} clients already connected; refusing one"
                        );
                        let _ =
                            (&stream).write_all(b"{\"ok\":false,\"error\":\"busy: try again\"}\n");
                    }
                    Err(e) => warn!(error = %e, "session socket: accept failed"),
                }
            }
        })
        .map_err(io_err(path))?;
    info!(socket = %path.display(), "accepting sessions from `csap login`");
    Ok(SessionServer {
        path: path.to_path_buf(),
        stop,
        thread: Some(thread),
    })
}

fn handle(stream: UnixStream, registry: &SessionRegistry, login: &dyn DeviceLogin) {
    let reply = match answer(&stream, registry, login) {
        Ok(r) => r,
        Err((uid, msg)) => {
            warn!(
                uid,
                "session socket: refused a request of uid {uid:?}: {msg}"
            );
            Reply::error(msg)
        }
    };
    let mut line = serde_json::to_vec(&reply).unwrap_or_default();
    line.push(b'\n');
    let _ = (&stream).write_all(&line);
}

/// Serves one request; `Err` carries the sender's uid (once known) and the refusal.
fn answer(
    stream: &UnixStream,
    registry: &SessionRegistry,
    login: &dyn DeviceLogin,
) -> Result<Reply, (Option<u32>, String)> {
    let creds = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| (None, format!("cannot read peer credentials: {e}")))?;
    let uid = creds.uid();
    let refuse = |msg: String| (Some(uid), msg);
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(|e| refuse(e.to_string()))?;
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let mut line = zeroize::Zeroizing::new(Vec::new());
    BufReader::new(stream.take(MAX_MESSAGE as u64 + 1))
        .read_until(b'\n', &mut line)
        .map_err(|e| refuse(format!("cannot read the request: {e}")))?;
    if line.len() > MAX_MESSAGE {
        return Err(refuse(format!("request longer than {MAX_MESSAGE} bytes")));
    }
    // The request's text is never part of a refusal: it may hold a password or an ID token.
    let req: Request = serde_json::from_slice(&line).map_err(|_| {
        refuse(
            "malformed request: expected one JSON line {\"user\": \"…\", \"password\": \"…\"}, {\"token\": \"…\"}, {\"oidc_provider\": \"…\"} or {\"organization\": \"…\", \"id_token\": \"…\", \"nonce\": \"…\"}"
                .to_string(),
        )
    })?;
    // The uid is the kernel's; the device is the mount's certificate: nothing the client says
    // decides either.
    let (token, issued_here) = match req {
        Request::Token(TokenRequest { token }) => (UserToken::new(token), false),
        Request::Login(LoginRequest { user, password }) => {
            let (token, _) = login
                .login(&user, password.expose(), uid)
                .map_err(|e| refuse(format!("login as {user} failed: {e}")))?;
            info!(uid, user = %user, "logged in through the mount for uid {uid}");
            (token, true)
        }
        Request::OidcProvider(OidcProviderRequest {
            oidc_provider: organization,
        }) => {
            let provider = login.identity_provider(&organization).map_err(|e| {
                refuse(format!(
                    "cannot find where {organization}'s people log in: {e}"
                ))
            })?;
            return Ok(Reply {
                issuer: Some(provider.issuer),
                client_id: Some(provider.client_id),
                ..Reply::empty(true)
            });
        }
        Request::OidcLogin(OidcLoginRequest {
            organization,
            id_token,
            nonce,
        }) => {
            let (token, _, user) = login
                .login_oidc(&organization, id_token.expose(), &nonce, uid)
                .map_err(|e| refuse(format!("login at {organization}'s provider failed: {e}")))?;
            info!(uid, user = %user, organization = %organization, "logged in through the mount at the organization's provider for uid {uid}");
            (token, true)
        }
    };
    let claims =
        check_binding(token.as_str(), uid, login.device()).map_err(|e| refuse(e.to_string()))?;
    if claims.expires_at <= now().map_err(|e| refuse(e.to_string()))? {
        return Err(refuse(
            "the token has expired: run `csap login` again".into(),
        ));
    }
    let reply_token = issued_here.then(|| keyserver_client::wire::Secret::new(token.as_str()));
    registry.insert(uid, token, claims.expires_at);
    info!(uid, user = %claims.user, expires_at = claims.expires_at, "session bound to uid {uid}");
    Ok(Reply {
        uid: Some(uid),
        user: Some(claims.user),
        expires_at: Some(claims.expires_at),
        token: reply_token,
        ..Reply::empty(true)
    })
}

/// What the mount answered to a handover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The uid the mount bound the token to (the sender's, from SO_PEERCRED).
    pub uid: u32,
    pub expires_at: i64,
}

/// `csap login`'s side: sends `token` to the mount listening on `path`.
pub fn hand_over(path: &Path, token: &UserToken) -> Result<Bound, SessionError> {
    #[derive(Serialize)]
    struct Line<'a> {
        token: &'a str,
    }
    match exchange(
        path,
        &Line {
            token: token.as_str(),
        },
    )? {
        Reply {
            ok: true,
            uid: Some(uid),
            expires_at: Some(expires_at),
            ..
        } => Ok(Bound { uid, expires_at }),
        Reply { error: Some(e), .. } => Err(SessionError::Refused(e)),
        _ => Err(SessionError::BadReply),
    }
}

/// `csap login`'s side without a device identity: sends `user`'s password to the mount on
/// `path`, which logs in with its device identity for this process's uid and keeps the
/// session; returns what it bound and the token (for the token file).
pub fn login_through(
    path: &Path,
    user: &str,
    password: &str,
) -> Result<(Bound, UserToken), SessionError> {
    #[derive(Serialize)]
    struct Line<'a> {
        user: &'a str,
        password: &'a str,
    }
    match exchange(path, &Line { user, password })? {
        Reply {
            ok: true,
            uid: Some(uid),
            expires_at: Some(expires_at),
            token: Some(token),
            ..
        } => Ok((
            Bound { uid, expires_at },
            UserToken::new(token.expose().to_string()),
        )),
        Reply { error: Some(e), .. } => Err(SessionError::Refused(e)),
        _ => Err(SessionError::BadReply),
    }
}

/// `csap login --oidc`'s first step without a device identity: where `organization`'s people
/// log in, as the mount on `path` learns it from the key server.
pub fn oidc_provider(path: &Path, organization: &str) -> Result<OidcProvider, SessionError> {
    #[derive(Serialize)]
    struct Line<'a> {
        oidc_provider: &'a str,
    }
    match exchange(
        path,
        &Line {
            oidc_provider: organization,
        },
    )? {
        Reply {
            ok: true,
            issuer: Some(issuer),
            client_id: Some(client_id),
            ..
        } => Ok(OidcProvider { issuer, client_id }),
        Reply { error: Some(e), .. } => Err(SessionError::Refused(e)),
        _ => Err(SessionError::BadReply),
    }
}

/// What a login through the mount bound: the uid and expiry, the token (for the token file)
/// and the user or participant it names.
#[derive(Debug)]
pub struct LoggedIn {
    pub bound: Bound,
    pub token: UserToken,
    pub user: String,
}

/// `csap login --oidc`'s last step without a device identity: sends the ID token the browser
/// flow obtained (and that flow's nonce) to the mount on `path`, which has the key server
/// trade it for a token bound to this device and this process's uid, and keeps the session.
pub fn login_through_oidc(
    path: &Path,
    organization: &str,
    id_token: &str,
    nonce: &str,
) -> Result<LoggedIn, SessionError> {
    #[derive(Serialize)]
    struct Line<'a> {
        organization: &'a str,
        id_token: &'a str,
        nonce: &'a str,
    }
    let line = Line {
        organization,
        id_token,
        nonce,
    };
    match exchange(path, &line)? {
        Reply {
            ok: true,
            uid: Some(uid),
            user: Some(user),
            expires_at: Some(expires_at),
            token: Some(token),
            ..
        } => Ok(LoggedIn {
            bound: Bound { uid, expires_at },
            token: UserToken::new(token.expose().to_string()),
            user,
        }),
        Reply { error: Some(e), .. } => Err(SessionError::Refused(e)),
        _ => Err(SessionError::BadReply),
    }
}

/// One request line to the mount on `path` and its reply.
fn exchange(path: &Path, request: &impl Serialize) -> Result<Reply, SessionError> {
    let mut stream = UnixStream::connect(path).map_err(io_err(path))?;
    stream
        .set_read_timeout(Some(LOGIN_TIMEOUT))
        .map_err(io_err(path))?;
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_err(path))?;
    let mut line = zeroize::Zeroizing::new(serde_json::to_vec(request).unwrap_or_default());
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err(path))?;
    read_reply(&stream)
}

fn read_reply(stream: &UnixStream) -> Result<Reply, SessionError> {
    let mut line = Vec::new();
    BufReader::new(stream.take(MAX_MESSAGE as u64))
        .read_until(b'\n', &mut line)
        .map_err(|_| SessionError::BadReply)?;
    serde_json::from_slice(&line).map_err(|_| SessionError::BadReply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        super::now().expect("system clock usable")
    }

    /// Issue 11: an unusable clock read as 0 made every session live; now none is.
    #[test]
    fn no_session_is_live_on_an_unusable_clock() {
        let registry = SessionRegistry::new();
        registry.insert(1001, UserToken::new("t".into()), now() + 60);
        assert!(registry
            .lookup(1001, Err(csap_base::clock::ClockError::BeforeEpoch), false)
            .is_none());
        assert!(registry.session(1001).is_some(), "kept for a healed clock");
    }

    const DEVICE: &str = "ws-test";

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    fn token_for(uid: u32, device: &str, expires_at: i64) -> UserToken {
        token_naming("alice", uid, device, expires_at)
    }

    fn token_naming(user: &str, uid: u32, device: &str, expires_at: i64) -> UserToken {
        let key = keyserver::token::TokenKey::from_bytes(&[7u8; 32]).unwrap();
        key.issue(&csap_base::token::Claims {
            user: user.into(),
            device: device.into(),
            uid,
            issued_at: now() - 10,
            expires_at,
            generation: 0,
        })
    }

    /// A token for this process's uid on [`DEVICE`].
    fn token_expiring(expires_at: i64) -> UserToken {
        token_for(me(), DEVICE, expires_at)
    }

    /// The key server's login as the mount relays it, with the uid it was handed recorded
    /// (the real relay runs against a key server in the cli crate's e2e tests).
    #[derive(Default)]
    struct FakeLogin {
        uids: Mutex<Vec<u32>>,
    }

    impl DeviceLogin for FakeLogin {
        fn device(&self) -> &str {
            DEVICE
        }
        fn login(&self, user: &str, password: &str, uid: u32) -> Result<(UserToken, i64), String> {
            if (user, password) != ("alice", "pw") {
                return Err("key server: denied: bad_password".into());
            }
            self.uids.lock().unwrap().push(uid);
            let expires_at = now() + 600;
            Ok((token_for(uid, DEVICE, expires_at), expires_at))
        }
        fn identity_provider(&self, organization: &str) -> Result<OidcProvider, String> {
            if organization != ORGANIZATION {
                return Err("key server: denied: unknown_organization".into());
            }
            Ok(OidcProvider {
                issuer: ISSUER.into(),
                client_id: "csap-cli".into(),
            })
        }
        fn login_oidc(
            &self,
            organization: &str,
            id_token: &str,
            nonce: &str,
            uid: u32,
        ) -> Result<(UserToken, i64, String), String> {
            if organization != ORGANIZATION {
                return Err("key server: denied: unknown_organization".into());
            }
            if (id_token, nonce) != (ID_TOKEN, NONCE) {
                return Err("key server: denied: id_token_bad_signature".into());
            }
            self.uids.lock().unwrap().push(uid);
            let expires_at = now() + 600;
            let participant = format!("alice@{organization}");
            Ok((
                token_naming(&participant, uid, DEVICE, expires_at),
                expires_at,
                participant,
            ))
        }
    }

    /// What the fake provider and key server accept.
    const ORGANIZATION: &str = "acme-post";
    const ISSUER: &str = "https://login.acme-post.example";
    const ID_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.the-id-token.sig";
    const NONCE: &str = "n-0S6_WzA2Mj";

    fn fake() -> Arc<FakeLogin> {
        Arc::new(FakeLogin::default())
    }

    fn raw_exchange(path: &Path, bytes: &[u8]) -> Reply {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        read_reply(&s).unwrap()
    }

    #[test]
    fn a_token_is_bound_to_the_senders_uid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/csap/mount.sock");
        let registry = SessionRegistry::new();
        let server = serve(&path, Arc::clone(&registry), fake()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(registry.token_for(me), None);

        // A client that connects and says nothing does not hold up anyone else.
        let _silent = UnixStream::connect(&path).unwrap();
        let token = token_expiring(now() + 3600);
        let started = std::time::Instant::now();
        let bound = hand_over(&path, &token).unwrap();
        assert!(started.elapsed() < CLIENT_TIMEOUT / 2);
        assert_eq!(
            bound.uid, me,
            "bound to the kernel-reported uid of this process"
        );
        assert_eq!(registry.token_for(me).as_deref(), Some(token.as_str()));
        assert_eq!(registry.uids(), vec![me]);
        // No other uid got it.
        assert_eq!(registry.token_for(me.wrapping_add(1)), None);

        // A new login replaces the session.
        let newer = token_expiring(now() + 7200);
        hand_over(&path, &newer).unwrap();
        assert_eq!(registry.token_for(me).as_deref(), Some(newer.as_str()));
        drop(server);
        assert!(!path.exists(), "socket file removed on stop");
    }

    #[test]
    fn malformed_messages_get_an_error_reply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let registry = SessionRegistry::new();
        let _server = serve(&path, Arc::clone(&registry), fake()).unwrap();
        for bad in [
            &b"not json\n"[..],
            b"{\"token\": 5}\n",
            b"{\"token\": \"v1.zz.00\"}\n",
            b"{\"token\": \"abc\", \"uid\": 0}\n",
            b"\n",
        ] {
            let r = raw_exchange(&path, bad);
            assert!(!r.ok, "{:?} accepted", String::from_utf8_lossy(bad));
            assert!(r.error.is_some());
        }
        let huge = vec![b'a'; MAX_MESSAGE + 10];
        assert!(!raw_exchange(&path, &huge).ok);
        // An expired token is refused outright.
        let expired = token_expiring(now() - 1);
        match hand_over(&path, &expired) {
            Err(SessionError::Refused(msg)) => assert!(msg.contains("csap login"), "{msg}"),
            other => panic!("expired token accepted: {other:?}"),
        }
        assert!(registry.uids().is_empty(), "nothing was bound");
        // The server still works after all that.
        hand_over(&path, &token_expiring(now() + 60)).unwrap();
    }

    /// Issue 12: a token issued for another uid or on another device, or one from before the
    /// binding, is refused with a reason and binds nothing.
    #[test]
    fn a_token_of_another_uid_or_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let registry = SessionRegistry::new();
        let _server = serve(&path, Arc::clone(&registry), fake()).unwrap();
        let later = now() + 3600;
        let other_uid = me().wrapping_add(1);
        let refused = |token: &UserToken| match hand_over(&path, token) {
            Err(SessionError::Refused(msg)) => msg,
            other => panic!("accepted: {other:?}"),
        };
        let msg = refused(&token_for(other_uid, DEVICE, later));
        assert!(
            msg.contains(&format!("uid {other_uid}, not uid {}", me())),
            "{msg}"
        );
        let msg = refused(&token_for(me(), "ws-elsewhere", later));
        assert!(msg.contains("device ws-elsewhere"), "{msg}");
        let old = UserToken::new(format!(
            "v1.{}.00",
            hex::encode(
                br#"{"user":"alice","issued_at":1,"expires_at":9999999999,"generation":0}"#
            )
        ));
        let msg = refused(&old);
        assert!(
            msg.contains("csap login") && msg.contains("device and uid"),
            "{msg}"
        );
        assert!(registry.uids().is_empty(), "nothing was bound");
    }

    /// A login through the mount is made for the sender's uid as the kernel reports it, and
    /// the session and the returned token are bound to it.
    #[test]
    fn a_login_through_the_mount_is_for_the_senders_uid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let registry = SessionRegistry::new();
        let login = fake();
        let _server = serve(&path, Arc::clone(&registry), login.clone()).unwrap();
        let (bound, token) = login_through(&path, "alice", "pw").unwrap();
        assert_eq!(bound.uid, me());
        assert_eq!(*login.uids.lock().unwrap(), vec![me()]);
        let claims = check_binding(token.as_str(), me(), DEVICE).unwrap();
        assert_eq!(claims.expires_at, bound.expires_at);
        assert_eq!(registry.token_for(me()).as_deref(), Some(token.as_str()));
        // A wrong password binds nothing and says why; a uid in the request is refused.
        match login_through(&path, "alice", "wrong") {
            Err(SessionError::Refused(msg)) => assert!(msg.contains("bad_password"), "{msg}"),
            other => panic!("{other:?}"),
        }
        let r = raw_exchange(
            &path,
            b"{\"user\":\"alice\",\"password\":\"pw\",\"uid\":0}\n",
        );
        assert!(!r.ok, "a client-chosen uid was accepted");
        assert_eq!(login.uids.lock().unwrap().len(), 1);
    }

    /// Issue 18: `csap login --oidc` without the device identity asks the mount where the
    /// organization logs in, then hands it the ID token; the login is made for the sender's uid
    /// as the kernel reports it, and the session and the returned token are bound to it.
    #[test]
    fn an_oidc_login_through_the_mount_is_for_the_senders_uid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let registry = SessionRegistry::new();
        let login = fake();
        let _server = serve(&path, Arc::clone(&registry), login.clone()).unwrap();

        let provider = oidc_provider(&path, ORGANIZATION).unwrap();
        assert_eq!(provider.issuer, ISSUER);
        assert_eq!(provider.client_id, "csap-cli");
        assert!(registry.uids().is_empty(), "asking binds nothing");
        match oidc_provider(&path, "nobody-post") {
            Err(SessionError::Refused(msg)) => {
                assert!(
                    msg.contains("nobody-post") && msg.contains("unknown_organization"),
                    "{msg}"
                )
            }
            other => panic!("{other:?}"),
        }

        let logged_in = login_through_oidc(&path, ORGANIZATION, ID_TOKEN, NONCE).unwrap();
        assert_eq!(logged_in.bound.uid, me());
        assert_eq!(logged_in.user, "alice@acme-post");
        assert_eq!(*login.uids.lock().unwrap(), vec![me()]);
        let claims = check_binding(logged_in.token.as_str(), me(), DEVICE).unwrap();
        assert_eq!(claims.user, "alice@acme-post");
        assert_eq!(claims.expires_at, logged_in.bound.expires_at);
        assert_eq!(
            registry.token_for(me()).as_deref(),
            Some(logged_in.token.as_str())
        );
    }

    /// A refused ID token binds nothing, says why with the key server's reason, and is not
    /// echoed back; a uid in the request is refused.
    #[test]
    fn a_refused_oidc_login_through_the_mount_binds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let registry = SessionRegistry::new();
        let login = fake();
        let _server = serve(&path, Arc::clone(&registry), login.clone()).unwrap();
        let forged = "eyJhbGciOiJub25lIn0.forged.";
        match login_through_oidc(&path, ORGANIZATION, forged, NONCE) {
            Err(SessionError::Refused(msg)) => {
                assert!(
                    msg.contains("acme-post's provider") && msg.contains("id_token_bad_signature"),
                    "{msg}"
                );
                assert!(!msg.contains(forged), "the ID token echoed: {msg}");
            }
            other => panic!("{other:?}"),
        }
        match login_through_oidc(&path, ORGANIZATION, ID_TOKEN, "another-login") {
            Err(SessionError::Refused(msg)) => assert!(msg.contains("id_token"), "{msg}"),
            other => panic!("{other:?}"),
        }
        let with_uid = serde_json::json!({
            "organization": ORGANIZATION, "id_token": ID_TOKEN, "nonce": NONCE, "uid": 0,
        });
        let r = raw_exchange(&path, format!("{with_uid}\n").as_bytes());
        assert!(!r.ok, "a client-chosen uid was accepted");
        let r = raw_exchange(&path, b"{\"oidc_provider\": 5}\n");
        assert!(!r.ok && r.error.is_some_and(|e| e.contains("oidc_provider")));
        assert!(login.uids.lock().unwrap().is_empty());
        assert!(registry.uids().is_empty(), "nothing was bound");
    }

    #[test]
    fn expired_sessions_are_dropped() {
        let registry = SessionRegistry::new();
        registry.insert(1001, UserToken::new("t1".into()), 1_000);
        registry.insert(1002, UserToken::new("t2".into()), 2_000);
        let at = |uid, t| {
            registry
                .lookup(uid, Ok(t), true)
                .map(|t| t.as_str().to_string())
        };
        assert_eq!(at(1001, 999).as_deref(), Some("t1"));
        assert_eq!(at(1001, 1_000), None);
        assert_eq!(registry.uids(), vec![1002], "the expired session is gone");
        registry.insert(1003, UserToken::new("t3".into()), now() + 60);
        assert_eq!(registry.purge_expired(), 1);
        assert_eq!(registry.uids(), vec![1003]);
    }

    #[test]
    fn a_live_socket_is_not_taken_over_and_a_stale_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = serve(&path, SessionRegistry::new(), fake()).unwrap();
        assert!(matches!(
            serve(&path, SessionRegistry::new(), fake()),
            Err(SessionError::InUse(_))
        ));
        drop(first);
        // A socket file left by a crashed mount (nobody listening) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let _second = serve(&path, SessionRegistry::new(), fake()).unwrap();
    }
}
