//! The mount as a policy enforcement point of its own: its subscription to ARDS as
//! `mount:<device>`, the rule set as last seen (with the scope names its selectors use), the
//! local check every open and metadata operation passes before any round trip, and the sweep
//! that revokes held licenses a change of the rule set no longer allows.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use keyserver_client::wire::Action;

use super::cache::Licenses;
use super::preload::Preloader;
use super::{revocations, KeyServerSource, LicenseSourceError, RulesConfig};
use crate::keys::KeyError;

/// The mount's rule set as last seen, and the subscription that updates it.
pub(super) struct MountRules {
    pub(super) client: ards_client::RulesClient,
    pub(super) device: String,
    pub(super) current: RwLock<Arc<LocalRules>>,
    /// Scope id → scope name, learned from licenses (rules name scopes, headers carry ids).
    pub(super) scope_names: RwLock<HashMap<[u8; 16], String>>,
    /// Called after a sweep that revoked something (page-cache invalidation).
    pub(super) listeners: revocations::Listeners,
    /// Ids of rules seen pending (released ahead of their window): pre-loaded once active.
    pub(super) pending_seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// One rule-set snapshot: the evaluator, and every scope name its rules' asset selectors use
/// (tried when a check's scope is not known yet).
pub(super) struct LocalRules {
    pub(super) evaluator: Arc<csap_policy::Evaluator>,
    pub(super) scopes: Vec<String>,
}

impl LocalRules {
    pub(super) fn from(evaluator: Arc<csap_policy::Evaluator>) -> LocalRules {
        let mut scopes: Vec<String> = evaluator
            .rules()
            .iter()
            .filter_map(|r| csap_policy::template::RuleSpec::from_rendered(&r.policy))
            .flat_map(|spec| spec.assets.into_iter().filter_map(|a| a.scope))
            .collect();
        scopes.sort();
        scopes.dedup();
        LocalRules { evaluator, scopes }
    }

    /// Allowed by some rule? With `scope` unknown, any scope a rule names (or none) will do.
    pub(super) fn allows(
        &self,
        user: &str,
        app: &str,
        device: &str,
        path: &str,
        scope: Option<&str>,
        action: Action,
    ) -> bool {
        let now = match csap_base::unix_now() {
            Ok(now) => now,
            Err(err) => {
                tracing::warn!(error = %err, "local rules deny: the clock is unusable");
                return false;
            }
        };
        let decide = |scope: &str| {
            self.evaluator
                .decide(&csap_policy::AccessRequest {
                    participant: user,
                    application_digest: app,
                    device,
                    asset_path: path,
                    asset_scope: scope,
                    action,
                    now,
                })
                .allowed
        };
        match scope {
            Some(s) => decide(s),
            None => decide("") || self.scopes.iter().any(|s| decide(s)),
        }
    }
}

impl MountRules {
    pub(super) fn snapshot(&self) -> Arc<LocalRules> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn scope_name(&self, id: &[u8; 16]) -> Option<String> {
        self.scope_names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Takes the subscription's current rules, then revokes every held license they no longer
    /// allow: its lease flag is set (open handles fail their next read) and it is dropped.
    pub(super) fn refresh(&self, licenses: &Licenses) -> usize {
        let rules = Arc::new(LocalRules::from(self.client.evaluator()));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = rules.clone();
        let mut revoked = 0;
        for (key, held) in licenses.iter() {
            if !rules.allows(
                &held.user,
                &key.app_digest,
                &self.device,
                &held.path,
                Some(&held.scope),
                key.action,
            ) {
                held.revoked.store(true, Ordering::Release);
                licenses.invalidate(key.as_ref());
                revoked += 1;
                tracing::info!(user = %held.user, app = %key.app_digest, path = %held.path, "license revoked: no rule of this mount allows it any more");
            }
        }
        crate::observe::rule_revocations(revoked);
        revoked
    }
}

impl MountRules {
    /// Active rules that were seen pending and are not pre-loaded yet (each is returned once);
    /// records the rules pending now.
    pub(super) fn due_for_preload(&self) -> Vec<csap_policy::Rule> {
        let mut seen = self.pending_seen.lock().unwrap_or_else(|p| p.into_inner());
        for r in self.client.pending() {
            seen.insert(r.id);
        }
        let active = self.snapshot();
        let due: Vec<csap_policy::Rule> = active
            .evaluator
            .rules()
            .iter()
            .filter(|r| seen.remove(&r.id))
            .cloned()
            .collect();
        due
    }
}

/// Starts the ARDS subscription as `mount:<device>` and the task that applies every change of
/// the rule set (revocation sweep, then pre-loading of rules that became active).
pub(super) fn subscribe(
    runtime: &tokio::runtime::Runtime,
    rc: RulesConfig,
    identity_dir: &Path,
    device: &str,
    licenses: &Licenses,
    preload: Option<Preloader>,
    listeners: revocations::Listeners,
) -> Result<Arc<MountRules>, LicenseSourceError> {
    let pep_id = csap_policy::template::mount_pep(device);
    // ARDS authenticates the mount with the device's certificate (PEP `mount:<device>`).
    let identity = csap_identity::ClientIdentity::load(identity_dir).map_err(|e| {
        LicenseSourceError::Ards(ards_client::ClientError::Config(format!(
            "device identity for ARDS: {e}"
        )))
    })?;
    let client = runtime
        .block_on(ards_client::RulesClient::start(ards_client::ClientConfig {
            url: rc.ards_url.clone(),
            pep_id: pep_id.clone(),
            ca_pem: rc.ards_ca_pem,
            identity,
            trusted_issuers: rc.trusted_issuers,
            cache_path: rc.cache_path,
        }))
        .map_err(LicenseSourceError::Ards)?;
    if !runtime.block_on(client.wait_synced(rc.sync_timeout)) {
        tracing::warn!(ards = %rc.ards_url, %pep_id, "ARDS not reached yet; enforcing the cached rules (none: everything is denied) until it is");
    }
    let mut changes = client.subscribe();
    let rules = Arc::new(MountRules {
        current: RwLock::new(Arc::new(LocalRules::from(client.evaluator()))),
        client,
        device: device.to_string(),
        scope_names: RwLock::new(HashMap::new()),
        pending_seen: std::sync::Mutex::new(std::collections::HashSet::new()),
        listeners,
    });
    tracing::info!(%pep_id, rules = rules.snapshot().evaluator.rules().len(), "subscribed to ARDS");
    let (weak, licenses, preload) = (Arc::downgrade(&rules), licenses.clone(), preload);
    runtime.spawn(async move {
        loop {
            if let Some(rules) = weak.upgrade() {
                let revoked = rules.refresh(&licenses);
                tracing::debug!(revoked, "rule set changed");
                if revoked > 0 {
                    revocations::notify(&rules.listeners);
                }
                if let Some(preload) = preload.as_ref() {
                    let due = rules.due_for_preload();
                    if !due.is_empty() {
                        // Off the change loop: a slow key server must not delay revocations.
                        let preload = preload.clone();
                        tokio::task::spawn_blocking(move || preload.run(due));
                    }
                }
            } else {
                break;
            }
            if changes.changed().await.is_err() {
                break;
            }
        }
    });
    Ok(rules)
}

impl KeyServerSource {
    /// Local rule check for `user`/`app` (no rules configured: allowed).
    pub(super) fn local_check(
        &self,
        user: &str,
        app: &str,
        path: &str,
        scope: Option<&str>,
        action: Action,
    ) -> Result<(), KeyError> {
        let Some(rules) = &self.rules else {
            return Ok(());
        };
        if rules
            .snapshot()
            .allows(user, app, &rules.device, path, scope, action)
        {
            return Ok(());
        }
        tracing::info!(
            user,
            app,
            path,
            ?action,
            "denied by the mount's rules (no key server round trip)"
        );
        Err(KeyError::Denied(format!(
            "no rule of this mount allows {action:?} on {path} for {user} with this application"
        )))
    }
}
