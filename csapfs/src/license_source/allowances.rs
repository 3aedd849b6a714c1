//! What an application's registration allows beyond the mount's code defaults (JIT, user
//! namespaces, plug-in libraries), asked of the key server only for a caller that maps more
//! than its executable and system libraries, and remembered briefly.

use std::sync::Arc;
use std::time::Duration;

use keyserver_client::LicenseClient;

use super::attest::{Allowances, CodeAllowance};

/// How long an answer is reused. Registrations do not change (a build is re-registered under
/// its own digest); a revoked build loses its licenses through the revocation stream.
const TTL: Duration = Duration::from_secs(30);

pub(super) struct KeyServerAllowances {
    handle: tokio::runtime::Handle,
    client: LicenseClient,
    request_timeout: Duration,
    answers: moka::sync::Cache<String, Arc<CodeAllowance>>,
}

impl KeyServerAllowances {
    pub(super) fn new(
        handle: tokio::runtime::Handle,
        client: LicenseClient,
        request_timeout: Duration,
    ) -> KeyServerAllowances {
        KeyServerAllowances {
            handle,
            client,
            request_timeout,
            answers: moka::sync::Cache::builder()
                .max_capacity(1024)
                .time_to_live(TTL)
                .build(),
        }
    }
}

impl Allowances for KeyServerAllowances {
    /// Runs on an attestation helper thread (outside the runtime), so blocking here is fine.
    fn allowance(&self, app_digest: &str) -> Result<CodeAllowance, String> {
        if let Some(known) = self.answers.get(app_digest) {
            return Ok((*known).clone());
        }
        // The timer is made inside the runtime's context (block_on's future), not out here.
        let asked = self.handle.block_on(async {
            tokio::time::timeout(self.request_timeout, self.client.app_code(app_digest)).await
        });
        let code = asked
            .map_err(|_| "the key server did not answer in time".to_string())?
            .map_err(|e| format!("key server: {e}"))?;
        // Unknown or revoked: nothing beyond the defaults.
        let allowance = code.map_or_else(CodeAllowance::default, |c| CodeAllowance {
            jit: c.allow_jit,
            user_namespaces: c.allow_user_namespaces,
            libraries: c.libraries,
        });
        self.answers
            .insert(app_digest.to_string(), Arc::new(allowance.clone()));
        Ok(allowance)
    }
}
