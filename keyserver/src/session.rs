//! License sessions, the server's half: the sessions it keeps, in the store for every replica
//! and in memory for the request path. The protocol and both ends' cryptography (one HPKE
//! agreement per device session, per-license keys from the session secret) are the client
//! crate's ([`keyserver_client::session`], re-exported here).
//!
//! # Sessions outlive a replica
//! A session is written to the store ([`KeyStore::put_session`]) before it is announced: id,
//! device, recipient, end, and the secret sealed under a key derived from the root key
//! ([`SessionSealKey`]) with every other field as associated data, so a row copied to another
//! id or device, or given a later end, does not open. Any replica given the same root key — or
//! this one after a restart — loads a session it does not hold on first use, checks its device
//! and end, and keeps it in a bounded in-memory cache: a cache hit (the license path's common
//! case) reads no database. A row that does not open (another root key, a tampered row) is an
//! unknown session, logged without its secret. Ended rows are dropped whenever a session is
//! opened; a device's revocation drops its rows in the same transaction (another replica may
//! hold one in memory until its end, where it serves no one: that replica refuses the revoked
//! certificate too).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use keyserver_client::session::{LicenseKeys, SessionSecret, SESSION_INFO};

use crate::keys::{KeyError, SessionBinding, SessionSealKey};
use crate::seal::{HpkePublicKey, SealError};
use crate::store::{KeyStore, SessionRow, StoreError};

/// A session as the server keeps it.
#[derive(Debug)]
pub struct ServerSession {
    pub id: String,
    pub device: String,
    pub recipient: HpkePublicKey,
    pub not_after: i64,
    pub secret: SessionSecret,
}

impl ServerSession {
    fn binding(&self) -> SessionBinding<'_> {
        SessionBinding {
            id: &self.id,
            device: &self.device,
            recipient: self.recipient.as_bytes(),
            not_after: self.not_after,
        }
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The server's license sessions: in the store (sealed), with the ones in use cached in
/// memory, bounded in number, each dropped at its end.
pub struct SessionStore {
    cache: moka::sync::Cache<String, Arc<ServerSession>>,
    store: Arc<dyn KeyStore>,
    seal: Arc<SessionSealKey>,
    ttl_secs: i64,
}

impl fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStore")
            .field("cached", &self.cache.entry_count())
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

impl SessionStore {
    /// Sessions of `ttl_secs` in `store`, sealed under `seal`, at most `capacity` cached.
    pub fn new(
        ttl_secs: i64,
        capacity: u64,
        store: Arc<dyn KeyStore>,
        seal: Arc<SessionSealKey>,
    ) -> Self {
        let ttl_secs = ttl_secs.max(1);
        SessionStore {
            // A session evicted early is loaded again from the store on its next use.
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(ttl_secs as u64))
                .build(),
            store,
            seal,
            ttl_secs,
        }
    }

    /// Sessions cached (approximate: expired ones leave at the cache's next maintenance).
    pub fn cached(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Opens a session for `device` to `recipient`, recorded in the store before it is
    /// returned (with the encapsulated key), so every replica knows it once it is announced.
    pub async fn open(
        &self,
        id: String,
        device: &str,
        recipient: HpkePublicKey,
        now: i64,
    ) -> Result<(Arc<ServerSession>, Vec<u8>), SessionError> {
        let (enc, secret) = SessionSecret::establish(&recipient)?;
        let session = Arc::new(ServerSession {
            id: id.clone(),
            device: device.to_string(),
            recipient,
            not_after: now + self.ttl_secs,
            secret,
        });
        let row = SessionRow {
            id: session.id.clone(),
            device: session.device.clone(),
            recipient: *session.recipient.as_bytes(),
            not_after: session.not_after,
            sealed: self.seal.seal(session.binding(), session.secret.expose())?,
        };
        self.store.put_session(&row, now).await?;
        self.cache.insert(id, Arc::clone(&session));
        Ok((session, enc))
    }

    /// The live session `id` of `device`; `None` when unknown, ended, another device's (a
    /// session id learnt by another device is useless to it), or its row does not open. From
    /// memory when cached; else read from the store once and cached.
    pub async fn get(
        &self,
        id: &str,
        device: &str,
        now: i64,
    ) -> Result<Option<Arc<ServerSession>>, StoreError> {
        let session = match self.cache.get(id) {
            Some(s) => s,
            None => match self.load(id).await? {
                Some(s) => s,
                None => return Ok(None),
            },
        };
        Ok((session.device == device && now < session.not_after).then_some(session))
    }

    /// Session `id` from the store, opened and cached; `None` when no row opens.
    async fn load(&self, id: &str) -> Result<Option<Arc<ServerSession>>, StoreError> {
        // Ids are 32 hex characters (`api::checks::new_id`): anything else is no session, and
        // costs no database read.
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let Some(row) = self.store.session(id).await? else {
            return Ok(None);
        };
        let Ok(recipient) = HpkePublicKey::from_hex(&hex::encode(row.recipient)) else {
            tracing::warn!(session = id, device = %row.device, "stored license session has a malformed recipient key; treated as unknown");
            return Ok(None);
        };
        let binding = SessionBinding {
            id: &row.id,
            device: &row.device,
            recipient: &row.recipient,
            not_after: row.not_after,
        };
        let secret = match self.seal.open(binding, &row.sealed) {
            Ok(secret) => SessionSecret::from_bytes(secret),
            Err(_) => {
                tracing::warn!(
                    session = id,
                    device = %row.device,
                    "stored license session does not open (another root key, or a tampered or moved row); treated as unknown"
                );
                return Ok(None);
            }
        };
        let session = Arc::new(ServerSession {
            id: row.id,
            device: row.device,
            recipient,
            not_after: row.not_after,
            secret,
        });
        self.cache.insert(id.to_string(), Arc::clone(&session));
        Ok(Some(session))
    }

    /// Forgets every cached session of `device` (its revocation, which drops its rows).
    pub fn end_device(&self, device: &str) {
        let device = device.to_string();
        // Invalidation by predicate needs the cache's opt-in; a scan is fine at this size.
        for (id, s) in self.cache.iter() {
            if s.device == device {
                self.cache.invalidate(id.as_str());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RootKey;
    use crate::seal::HpkeKeyPair;
    use crate::store::sqlite::SqliteStore;

    const S1: &str = "51515151515151515151515151515151";
    const S2: &str = "52525252525252525252525252525252";
    const S3: &str = "53535353535353535353535353535353";
    const S4: &str = "54545454545454545454545454545454";
    const S5: &str = "55555555555555555555555555555555";

    struct Fixture {
        dir: tempfile::TempDir,
        store: Arc<dyn KeyStore>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(SqliteStore::open(&dir.path().join("ks.sqlite"), 2).unwrap());
            Fixture { dir, store }
        }

        /// A server's sessions on this store under root key `[root; 32]`, nothing cached.
        fn sessions(&self, root: u8) -> SessionStore {
            let root = RootKey::from_bytes(&[root; 32]).unwrap();
            SessionStore::new(60, 100, Arc::clone(&self.store), root.session_seal_key())
        }

        /// Changes the stored rows behind the store's back, as someone with the database would.
        fn tamper(&self, sql: &str) {
            let c = rusqlite::Connection::open(self.dir.path().join("ks.sqlite")).unwrap();
            assert_eq!(c.execute(sql, []).unwrap(), 1, "{sql}");
        }
    }

    #[tokio::test]
    async fn sessions_are_bound_to_their_device_and_lifetime() {
        let f = Fixture::new();
        let store = f.sessions(9);
        let kp = HpkeKeyPair::generate();
        let (s, _) = store
            .open(S1.into(), "ws-07", kp.public().clone(), 1_000)
            .await
            .unwrap();
        assert_eq!(s.not_after, 1_060);
        assert!(store.get(S1, "ws-07", 1_059).await.unwrap().is_some());
        assert!(store.get(S1, "ws-08", 1_000).await.unwrap().is_none());
        assert!(store.get(S1, "ws-07", 1_060).await.unwrap().is_none());
        assert!(store.get(S2, "ws-07", 1_000).await.unwrap().is_none());
        assert!(store
            .get("not an id", "ws-07", 1_000)
            .await
            .unwrap()
            .is_none());
        // Loaded again from the store, the same rules hold.
        let again = f.sessions(9);
        assert!(again.get(S1, "ws-08", 1_000).await.unwrap().is_none());
        assert!(again.get(S1, "ws-07", 1_060).await.unwrap().is_none());
        assert!(again.get(S1, "ws-07", 1_059).await.unwrap().is_some());
    }

    /// The license path's common case reads no database: a cached session is served with its
    /// row gone from the store.
    #[tokio::test]
    async fn a_cached_session_is_served_without_the_store() {
        let f = Fixture::new();
        let sessions = f.sessions(9);
        let kp = HpkeKeyPair::generate();
        sessions
            .open(S1.into(), "ws-07", kp.public().clone(), 1_000)
            .await
            .unwrap();
        f.tamper(&format!("DELETE FROM license_sessions WHERE id = '{S1}'"));
        assert!(sessions.get(S1, "ws-07", 1_001).await.unwrap().is_some());
        assert!(f
            .sessions(9)
            .get(S1, "ws-07", 1_001)
            .await
            .unwrap()
            .is_none());
    }

    /// Another server on the same store (a restart, another replica) loads the session with
    /// its secret; under another root key it is unknown.
    #[tokio::test]
    async fn a_stored_session_opens_with_the_same_root_key_only() {
        let f = Fixture::new();
        let kp = HpkeKeyPair::generate();
        let (s, enc) = f
            .sessions(9)
            .open(S1.into(), "ws-07", kp.public().clone(), 1_000)
            .await
            .unwrap();
        let loaded = f
            .sessions(9)
            .get(S1, "ws-07", 1_001)
            .await
            .unwrap()
            .expect("loaded from the store");
        let device = SessionSecret::accept(&kp, &enc).unwrap();
        assert_eq!(loaded.secret.expose(), device.expose());
        assert_eq!(loaded.secret.expose(), s.secret.expose());
        assert_eq!(
            (loaded.recipient.clone(), loaded.not_after),
            (kp.public().clone(), 1_060)
        );
        assert!(f
            .sessions(10)
            .get(S1, "ws-07", 1_001)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_tampered_or_moved_session_row_does_not_open() {
        let f = Fixture::new();
        let kp = HpkeKeyPair::generate();
        let ids = [S1, S2, S3, S4, S5];
        for id in ids {
            f.sessions(9)
                .open(id.into(), "ws-07", kp.public().clone(), 1_000)
                .await
                .unwrap();
        }
        let moved = "5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f";
        f.tamper(&format!(
            "UPDATE license_sessions SET id = '{moved}' WHERE id = '{S1}'"
        ));
        f.tamper(&format!(
            "UPDATE license_sessions SET device = 'ws-08' WHERE id = '{S2}'"
        ));
        f.tamper(&format!(
            "UPDATE license_sessions SET not_after = not_after + 3600 WHERE id = '{S3}'"
        ));
        f.tamper(&format!(
            "UPDATE license_sessions SET sealed = zeroblob(length(sealed)) WHERE id = '{S4}'"
        ));
        f.tamper(&format!(
            "UPDATE license_sessions SET nonce = x'00' WHERE id = '{S5}'"
        ));
        let sessions = f.sessions(9);
        assert!(sessions.get(moved, "ws-07", 1_001).await.unwrap().is_none());
        assert!(sessions.get(S5, "ws-07", 1_001).await.unwrap().is_none());
        assert!(sessions.get(S2, "ws-08", 1_001).await.unwrap().is_none());
        assert!(sessions.get(S3, "ws-07", 1_001).await.unwrap().is_none());
        assert!(sessions.get(S4, "ws-07", 1_001).await.unwrap().is_none());
        // The row put back where it was sealed opens again: it was the move that failed.
        f.tamper(&format!(
            "UPDATE license_sessions SET id = '{S1}' WHERE id = '{moved}'"
        ));
        assert!(sessions.get(S1, "ws-07", 1_001).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn ended_sessions_are_dropped_when_a_session_opens() {
        let f = Fixture::new();
        let sessions = f.sessions(9);
        let kp = HpkeKeyPair::generate();
        sessions
            .open(S1.into(), "ws-07", kp.public().clone(), 1_000)
            .await
            .unwrap();
        sessions
            .open(S2.into(), "ws-07", kp.public().clone(), 1_060)
            .await
            .unwrap();
        assert!(
            f.store.session(S1).await.unwrap().is_none(),
            "ended at 1 060"
        );
        assert!(f.store.session(S2).await.unwrap().is_some());
    }

    /// A device's revocation drops its stored sessions with it; this server's cached ones go
    /// with [`SessionStore::end_device`].
    #[tokio::test]
    async fn a_revoked_device_loses_its_sessions() {
        let f = Fixture::new();
        let device = crate::pki::Principal {
            serial: "0a0b".into(),
            name: "ws-07".into(),
            kind: crate::pki::PrincipalKind::Device,
            revoked: false,
        };
        f.store.add_cert(&device, None, 1).await.unwrap();
        let sessions = f.sessions(9);
        let kp = HpkeKeyPair::generate();
        sessions
            .open(S1.into(), "ws-07", kp.public().clone(), 1_000)
            .await
            .unwrap();
        sessions
            .open(S2.into(), "ws-08", kp.public().clone(), 1_000)
            .await
            .unwrap();
        assert_eq!(f.store.revoke_device("ws-07", 1_001).await.unwrap(), 1);
        sessions.end_device("ws-07");
        assert!(sessions.get(S1, "ws-07", 1_002).await.unwrap().is_none());
        assert!(f.store.session(S1).await.unwrap().is_none());
        assert!(sessions.get(S2, "ws-08", 1_002).await.unwrap().is_some());
    }
}
