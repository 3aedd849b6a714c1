//! The key server as the installation's directory for the rest of the control plane: which
//! certificates are active (the in-memory [`PrincipalRegistry`], as the handshake sees it) and
//! which users, devices, application builds and workflow grants exist (the store). authz checks
//! requests against it; authz and ARDS authenticate their callers with it.

use std::sync::Arc;

use authz::principal::{Directory, Principal, Principals, Standing, WorkflowGrant};

use crate::pki::PrincipalRegistry;
use crate::store::{KeyStore, StoreError};

/// Directory backed by the key server's registry and store. Cheap to clone.
#[derive(Clone)]
pub struct KeyServerDirectory {
    pub(crate) store: Arc<dyn KeyStore>,
    pub(crate) registry: Arc<PrincipalRegistry>,
}

impl std::fmt::Debug for KeyServerDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyServerDirectory").finish_non_exhaustive()
    }
}

/// A lookup that fails (the store is unavailable) counts as unknown: fail closed.
fn standing(lookup: Result<Standing, StoreError>) -> Standing {
    lookup.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "directory lookup failed; treating the name as unknown");
        Standing::Unknown
    })
}

impl Principals for KeyServerDirectory {
    fn principal(&self, serial: &str, common_name: &str) -> Option<Principal> {
        self.registry.principal(serial, common_name)
    }

    fn is_revoked(&self, serial: &str) -> bool {
        self.registry.is_revoked(serial)
    }
}

impl Directory for KeyServerDirectory {
    fn workflow_grant(&self, name: &str) -> Option<WorkflowGrant> {
        self.store.workflow_grant_now(name).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "workflow grant lookup failed; treating it as none");
            None
        })
    }

    fn user(&self, name: &str) -> Standing {
        standing(self.store.user_standing_now(name))
    }

    fn device(&self, name: &str) -> Standing {
        standing(self.store.device_standing_now(name))
    }

    fn application(&self, digest: &str) -> Standing {
        standing(self.store.app_standing_now(digest))
    }
}

/// The directory as last fetched from a key server (`GET /v1/directory`), for authz and ARDS
/// running as their own processes. [`MirroredDirectory::follow`] refreshes it every second, so
/// a revocation reaches them within about a second; while the key server is unreachable the
/// last snapshot stays in force (a revoked principal stays refused: revocations only add up).
#[derive(Debug, Default)]
pub struct MirroredDirectory {
    snapshot: std::sync::RwLock<Arc<Mirror>>,
}

/// A snapshot with its principals indexed by serial: every request of a standalone service
/// looks its caller up here.
#[derive(Debug, Default)]
struct Mirror {
    snap: crate::wire::DirectorySnapshot,
    by_serial: std::collections::HashMap<String, usize>,
}

impl Mirror {
    fn new(snap: crate::wire::DirectorySnapshot) -> Self {
        let by_serial = snap
            .principals
            .iter()
            .enumerate()
            .map(|(i, p)| (p.serial.clone(), i))
            .collect();
        Mirror { snap, by_serial }
    }

    fn entry(&self, serial: &str) -> Option<&crate::wire::PrincipalEntry> {
        self.by_serial
            .get(serial)
            .map(|&i| &self.snap.principals[i])
    }
}

impl MirroredDirectory {
    /// Fetches the first snapshot (fails if the key server cannot be reached).
    pub async fn fetch(client: &crate::AdminClient) -> Result<Arc<Self>, crate::ClientError> {
        let snap = client.directory().await?;
        Ok(Arc::new(MirroredDirectory {
            snapshot: std::sync::RwLock::new(Arc::new(Mirror::new(snap))),
        }))
    }

    /// Refreshes every `period` until the task is dropped.
    pub async fn follow(self: Arc<Self>, client: crate::AdminClient, period: std::time::Duration) {
        loop {
            tokio::time::sleep(period).await;
            match client.directory().await {
                Ok(snap) => self.replace(snap),
                Err(e) => {
                    tracing::warn!(error = %e, "directory refresh failed; keeping the last one")
                }
            }
        }
    }

    pub fn replace(&self, snap: crate::wire::DirectorySnapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Mirror::new(snap));
    }

    fn current(&self) -> Arc<Mirror> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(|e| e.into_inner()))
    }
}

fn standing_of(entry: Option<&bool>) -> Standing {
    match entry {
        Some(true) => Standing::Active,
        Some(false) => Standing::Inactive,
        None => Standing::Unknown,
    }
}

impl Principals for MirroredDirectory {
    fn principal(&self, serial: &str, common_name: &str) -> Option<Principal> {
        self.current()
            .entry(serial)
            .filter(|p| !p.revoked && p.name == common_name)
            .map(|p| Principal {
                name: p.name.clone(),
                role: p.kind,
                serial: p.serial.clone(),
            })
    }

    fn is_revoked(&self, serial: &str) -> bool {
        self.current().entry(serial).is_some_and(|p| p.revoked)
    }
}

impl Directory for MirroredDirectory {
    fn workflow_grant(&self, name: &str) -> Option<WorkflowGrant> {
        self.current().snap.workflows.get(name).cloned()
    }
    fn user(&self, name: &str) -> Standing {
        standing_of(self.current().snap.users.get(name))
    }
    fn device(&self, name: &str) -> Standing {
        standing_of(self.current().snap.devices.get(name))
    }
    fn application(&self, digest: &str) -> Standing {
        standing_of(self.current().snap.applications.get(digest))
    }
}
