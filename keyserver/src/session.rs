//! License sessions, the server's half: the live sessions it keeps (in memory, bounded, each
//! dropped at its end). The protocol and both ends' cryptography (one HPKE agreement per device
//! session, per-license keys from the session secret) are the client crate's
//! ([`keyserver_client::session`], re-exported here).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use keyserver_client::session::{LicenseKeys, SessionSecret, SESSION_INFO};

use crate::seal::{HpkePublicKey, SealError};

/// A session as the server keeps it.
#[derive(Debug)]
pub struct ServerSession {
    pub id: String,
    pub device: String,
    pub recipient: HpkePublicKey,
    pub not_after: i64,
    pub secret: SessionSecret,
}

/// The server's live sessions: in memory only (a restart forgets them and devices open new
/// ones), bounded in number, each dropped at its end.
pub struct SessionStore {
    cache: moka::sync::Cache<String, Arc<ServerSession>>,
    ttl_secs: i64,
}

impl fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStore")
            .field("live", &self.cache.entry_count())
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

impl SessionStore {
    pub fn new(ttl_secs: i64, capacity: u64) -> Self {
        let ttl_secs = ttl_secs.max(1);
        SessionStore {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(ttl_secs as u64))
                .build(),
            ttl_secs,
        }
    }

    /// Live sessions (approximate: expired ones leave at the cache's next maintenance).
    pub fn len(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens a session for `device` to `recipient`: returns it and the encapsulated key.
    pub fn open(
        &self,
        id: String,
        device: &str,
        recipient: HpkePublicKey,
        now: i64,
    ) -> Result<(Arc<ServerSession>, Vec<u8>), SealError> {
        let (enc, secret) = SessionSecret::establish(&recipient)?;
        let session = Arc::new(ServerSession {
            id: id.clone(),
            device: device.to_string(),
            recipient,
            not_after: now + self.ttl_secs,
            secret,
        });
        self.cache.insert(id, Arc::clone(&session));
        Ok((session, enc))
    }

    /// The live session `id` of `device`; `None` when unknown, ended, or another device's (a
    /// session id learnt by another device is useless to it).
    pub fn get(&self, id: &str, device: &str, now: i64) -> Option<Arc<ServerSession>> {
        let s = self.cache.get(id)?;
        (s.device == device && now < s.not_after).then_some(s)
    }

    /// Ends every session of `device` (its revocation).
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
    use crate::seal::HpkeKeyPair;

    #[test]
    fn sessions_are_bound_to_their_device_and_lifetime() {
        let store = SessionStore::new(60, 100);
        let kp = HpkeKeyPair::generate();
        let (s, _) = store
            .open("s1".into(), "ws-07", kp.public().clone(), 1_000)
            .unwrap();
        assert_eq!(s.not_after, 1_060);
        assert!(store.get("s1", "ws-07", 1_059).is_some());
        assert!(store.get("s1", "ws-08", 1_000).is_none());
        assert!(store.get("s1", "ws-07", 1_060).is_none());
        assert!(store.get("nope", "ws-07", 1_000).is_none());
        store.end_device("ws-07");
        assert!(store.get("s1", "ws-07", 1_001).is_none());
    }
}
