//! Pre-loading: when a rule released ahead of its window becomes active, the licenses of the
//! assets it covers in the backing store are fetched at once, so the first open in the window is
//! served from the license cache. Assets are selected by path in the one pattern dialect of
//! every PEP ([`csap_policy::glob`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyserver_client::wire::Action;
use keyserver_client::{LicenseClient, UserToken};

use super::cache::{Held, LicenseKey, Licenses};
use super::tokens::{session_of, TokenMap};
use super::{binding, chain, siblings};
use crate::storage::{Kind, Storage};

/// Fetches licenses for the assets a newly active rule covers, so the first open in the
/// window is served from the license cache. Runs on a blocking thread of the source runtime.
#[derive(Clone)]
pub(super) struct Preloader {
    pub(super) handle: tokio::runtime::Handle,
    pub(super) client: LicenseClient,
    pub(super) tokens: TokenMap,
    pub(super) storage: Arc<dyn Storage>,
    pub(super) licenses: Licenses,
    pub(super) registry: binding::Registry,
    pub(super) request_timeout: Duration,
}

/// Whether a rule's selectors name the asset at `rel` by path — the one glob dialect of every
/// PEP ([`csap_policy::glob`]); scopes are for the key server to check.
fn selects(selectors: &[csap_policy::request::AssetSelector], rel: &str) -> bool {
    selectors.iter().any(|s| {
        s.path
            .as_deref()
            .is_none_or(|p| csap_policy::glob::matches(p, rel))
    })
}

/// Most assets per pre-load license request.
const PRELOAD_BATCH: usize = 256;

impl Preloader {
    pub(super) fn run(&self, rules: Vec<csap_policy::Rule>) {
        for rule in rules {
            let Some(spec) = csap_policy::template::RuleSpec::from_rendered(&rule.policy) else {
                tracing::debug!(rule_id = %rule.id, "not a template rule; nothing to pre-load");
                continue;
            };
            if !spec.actions.contains(&Action::Read) {
                continue;
            }
            let Some(token) = self.tokens.token_of_user(&spec.participant) else {
                tracing::info!(rule_id = %rule.id, user = %spec.participant, "no session of this user on the mount; nothing pre-loaded");
                continue;
            };
            let assets = self.covered(&spec.assets);
            for app in &spec.applications {
                let n = self.license(&token, &spec.participant, app, &assets);
                tracing::info!(rule_id = %rule.id, user = %spec.participant, app = %app, assets = assets.len(), licensed = n, "pre-loaded licenses");
            }
        }
    }

    /// (asset id, path) of every asset in the backing store a selector's path matches.
    fn covered(
        &self,
        selectors: &[csap_policy::request::AssetSelector],
    ) -> Vec<([u8; 16], String)> {
        let mut found = Vec::new();
        let mut dirs = vec![PathBuf::new()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = self.storage.list(&dir) else {
                continue;
            };
            for entry in entries {
                let path = dir.join(&entry.name);
                match entry.kind {
                    Kind::Dir => dirs.push(path),
                    Kind::File => {
                        let Some(rel) = path.to_str() else {
                            continue;
                        };
                        if !selects(selectors, rel) {
                            continue;
                        }
                        if let Some(header) = siblings::stored_header(self.storage.as_ref(), rel) {
                            found.push((header.asset_id.0, rel.to_owned()));
                        }
                    }
                    _ => {}
                }
            }
        }
        found
    }

    /// Licenses `assets` for (token, app) in batches, retrying briefly while the key server
    /// has not activated the rule yet (both sides switch at the same second). Returns how many
    /// were granted.
    fn license(
        &self,
        token: &UserToken,
        user: &str,
        app: &str,
        assets: &[([u8; 16], String)],
    ) -> usize {
        let session = session_of(token);
        let mut granted = 0;
        for batch in assets.chunks(PRELOAD_BATCH) {
            let mut left: Vec<[u8; 16]> = batch.iter().map(|(id, _)| *id).collect();
            for attempt in 0..5 {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_millis(400));
                }
                let answer = self.handle.block_on(async {
                    tokio::time::timeout(
                        self.request_timeout,
                        siblings::retry_rate_limited(|| {
                            self.client.request(token, app, Action::Read, &left)
                        }),
                    )
                    .await
                });
                let license = match answer {
                    Ok(Ok(l)) => l,
                    Ok(Err(e)) => {
                        tracing::info!(error = %chain(&e), "pre-load request failed");
                        continue;
                    }
                    Err(_) => {
                        tracing::info!("pre-load request timed out");
                        continue;
                    }
                };
                for grant in &license.grants {
                    self.registry
                        .insert(grant.asset_id, binding::registered_of(grant));
                    let held = Arc::new(Held::from_grant(user, grant, license.license.not_after));
                    self.licenses.insert(
                        LicenseKey {
                            session,
                            app_digest: app.into(),
                            asset_id: grant.asset_id,
                            action: Action::Read,
                        },
                        held,
                    );
                    granted += 1;
                }
                left.retain(|id| !license.grants.iter().any(|g| &g.asset_id == id));
                if left.is_empty() {
                    break;
                }
            }
        }
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11: the pre-loader selects assets in the rules' dialect — `*` within a segment,
    /// `**` across (it used Cedar's `like`, where `*` crossed '/').
    #[test]
    pub(super) fn preloader_selects_in_the_rule_dialect() {
        let sel = |p: &str| {
            vec![csap_policy::request::AssetSelector {
                path: Some(p.into()),
                scope: None,
            }]
        };
        assert!(!selects(&sel("show/*/f1"), "show/a/b/f1"));
        assert!(selects(&sel("show/*/f1"), "show/a/f1"));
        assert!(selects(&sel("show/**"), "show/a/b/f1"));
        assert!(!selects(&sel("show/**"), "other/f1"));
    }
}
