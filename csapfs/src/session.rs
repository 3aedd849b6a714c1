//! User sessions handed to the mount over a Unix socket (DESIGN §6): `csap login` sends the
//! user's token, the mount binds it to the sender's uid as the kernel reports it (SO_PEERCRED).
//!
//! The socket is mode 0666 on purpose: who may talk to it does not matter, because nothing a
//! client says decides *whose* session it sets — the kernel's peer credentials do. A client can
//! only ever bind a token to its own uid.
//!
//! Wire protocol, one exchange per connection, each message one JSON line (at most
//! [`MAX_MESSAGE`] bytes):
//! - request `{"token": "<user token>"}`
//! - reply `{"ok": true, "uid": 1000, "expires_at": 1795000000}` or `{"ok": false, "error": "…"}`
//!
//! The expiry is read from the token's own claims (the mount cannot verify the token's MAC — the
//! key server does that on every license request — but the only party who could lie about the
//! expiry is the token's holder, who gains nothing by it).

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

use keyserver::UserToken;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Longest request or reply line accepted (a token is a few hundred bytes).
pub const MAX_MESSAGE: usize = 16 * 1024;
/// How long one client may take to send its line, so a silent client cannot hold the server.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
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

/// The clock every session check reads; fails closed ([`authz::clock`]).
fn now() -> Result<i64, authz::clock::ClockError> {
    authz::clock::unix_now()
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
        now: Result<i64, authz::clock::ClockError>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    token: String,
}

#[derive(Serialize, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Reply {
    fn error(msg: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            uid: None,
            expires_at: None,
            error: Some(msg.into()),
        }
    }
}

/// The expiry a token claims (`v1.<hex JSON claims>.<hex MAC>`), or why it is not a token.
fn claimed_expiry(token: &str) -> Result<i64, &'static str> {
    let (body, _tag) = token.rsplit_once('.').ok_or("not a user token")?;
    let claims_hex = body.strip_prefix("v1.").ok_or("not a v1 user token")?;
    let json = hex::decode(claims_hex).map_err(|_| "user token claims are not hex")?;
    let claims: keyserver::token::Claims =
        serde_json::from_slice(&json).map_err(|_| "user token claims are malformed")?;
    Ok(claims.expires_at)
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
pub fn serve(path: &Path, registry: Arc<SessionRegistry>) -> Result<SessionServer, SessionError> {
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
                        let spawned = std::thread::Builder::new()
                            .name("csap-session".into())
                            .spawn(move || {
                                handle(stream, &registry);
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

fn handle(stream: UnixStream, registry: &SessionRegistry) {
    let reply = match answer(&stream, registry) {
        Ok(r) => r,
        Err(msg) => {
            warn!("session socket: refused a request: {msg}");
            Reply::error(msg)
        }
    };
    let mut line = serde_json::to_vec(&reply).unwrap_or_default();
    line.push(b'\n');
    let _ = (&stream).write_all(&line);
}

fn answer(stream: &UnixStream, registry: &SessionRegistry) -> Result<Reply, String> {
    let creds = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let uid = creds.uid();
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let mut line = zeroize::Zeroizing::new(Vec::new());
    BufReader::new(stream.take(MAX_MESSAGE as u64 + 1))
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("cannot read the request: {e}"))?;
    if line.len() > MAX_MESSAGE {
        return Err(format!("request longer than {MAX_MESSAGE} bytes"));
    }
    let req: Request = serde_json::from_slice(&line)
        .map_err(|_| "malformed request: expected one JSON line {\"token\": \"…\"}".to_string())?;
    let token = UserToken::new(req.token);
    let expires_at = claimed_expiry(token.as_str()).map_err(str::to_string)?;
    if expires_at <= now().map_err(|e| e.to_string())? {
        return Err("the token has expired: run `csap login` again".into());
    }
    registry.insert(uid, token, expires_at);
    info!(uid, expires_at, "session bound to uid {uid}");
    Ok(Reply {
        ok: true,
        uid: Some(uid),
        expires_at: Some(expires_at),
        error: None,
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
    let mut stream = UnixStream::connect(path).map_err(io_err(path))?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_err(path))?;
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_err(path))?;
    let mut line = zeroize::Zeroizing::new(
        serde_json::to_vec(&serde_json::json!({ "token": token.as_str() })).unwrap_or_default(),
    );
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err(path))?;
    read_reply(&stream).and_then(|r| match r {
        Reply {
            ok: true,
            uid: Some(uid),
            expires_at: Some(expires_at),
            ..
        } => Ok(Bound { uid, expires_at }),
        Reply { error: Some(e), .. } => Err(SessionError::Refused(e)),
        _ => Err(SessionError::BadReply),
    })
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
            .lookup(1001, Err(authz::clock::ClockError::BeforeEpoch), false)
            .is_none());
        assert!(registry.session(1001).is_some(), "kept for a healed clock");
    }

    fn token_expiring(expires_at: i64) -> UserToken {
        let key = keyserver::token::TokenKey::from_bytes(&[7u8; 32]).unwrap();
        key.issue(&keyserver::token::Claims {
            user: "alice".into(),
            issued_at: now() - 10,
            expires_at,
            generation: 0,
        })
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
        let server = serve(&path, Arc::clone(&registry)).unwrap();
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
        let _server = serve(&path, Arc::clone(&registry)).unwrap();
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
        let first = serve(&path, SessionRegistry::new()).unwrap();
        assert!(matches!(
            serve(&path, SessionRegistry::new()),
            Err(SessionError::InUse(_))
        ));
        drop(first);
        // A socket file left by a crashed mount (nobody listening) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let _second = serve(&path, SessionRegistry::new()).unwrap();
    }
}
