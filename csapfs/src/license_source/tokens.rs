//! Whose token serves a caller: the uid → user token map (sessions handed over on the mount's
//! socket, then token files), checked against the uid and this device, and what the mount reads
//! from a token without the key server (the user it names, the session key of the cache).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyserver_client::UserToken;

use crate::keys::KeyError;

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

/// The user a token names. The claims are read without checking the MAC (only the key server
/// can); a forged name here can only make the local check stricter than the key server's.
pub(super) fn token_user(token: &UserToken) -> Option<String> {
    csap_base::token::read_claims_unverified(token.as_str())
        .ok()
        .map(|c| c.user)
}

/// The license cache's name for a session: BLAKE3 of the token (the token itself never sits in
/// a cache key).
pub(super) fn session_of(token: &UserToken) -> [u8; 32] {
    *blake3::hash(token.as_str().as_bytes()).as_bytes()
}

/// Reads one token file (for callers that configure a [`TokenMap`] from a path argument).
pub fn check_token_file(path: &Path) -> Result<(), std::io::Error> {
    UserToken::load(path).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
