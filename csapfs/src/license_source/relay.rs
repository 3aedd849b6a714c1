//! Logins relayed by the mount: `csap login` sends the user's password (or, with `--oidc`, the
//! ID token of their organization's provider) to the session socket and the mount asks the key
//! server with its device identity (mTLS) for a token bound to this device and to the uid the
//! kernel reported for the sender (SO_PEERCRED).

use std::time::Duration;

use keyserver_client::{LicenseClient, UserToken};

use super::LicenseSourceError;

/// The mount's [`crate::session::DeviceLogin`]: a key server client of its own, driven on a
/// runtime made per login (logins are rare; the session thread then depends on no runtime the
/// mount may be shutting down).
pub struct MountLogin {
    client: LicenseClient,
    timeout: Duration,
}

impl MountLogin {
    pub(super) fn new(
        client: &LicenseClient,
        timeout: Duration,
    ) -> Result<Self, LicenseSourceError> {
        Ok(MountLogin {
            client: client
                .with_own_connections()
                .map_err(LicenseSourceError::Connect)?,
            timeout,
        })
    }
}

impl MountLogin {
    /// Drives one key server call on a runtime of its own, bounded by the request timeout;
    /// `Err` is the sentence the session socket answers.
    fn call<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, keyserver_client::ClientError>>,
    ) -> Result<T, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime for the login: {e}"))?;
        runtime
            .block_on(async { tokio::time::timeout(self.timeout, request).await })
            .map_err(|_| "the key server did not answer in time".to_string())?
            .map_err(|e| format!("key server: {}", super::chain(&e)))
    }
}

impl crate::session::DeviceLogin for MountLogin {
    fn device(&self) -> &str {
        self.client.device()
    }

    fn login(&self, user: &str, password: &str, uid: u32) -> Result<(UserToken, i64), String> {
        self.call(self.client.login(user, password, uid))
    }

    fn identity_provider(
        &self,
        organization: &str,
    ) -> Result<crate::session::OidcProvider, String> {
        let provider = self.call(self.client.identity_provider(organization))?;
        Ok(crate::session::OidcProvider {
            issuer: provider.issuer,
            client_id: provider.client_id,
        })
    }

    fn login_oidc(
        &self,
        organization: &str,
        id_token: &str,
        nonce: &str,
        uid: u32,
    ) -> Result<(UserToken, i64, String), String> {
        self.call(self.client.login_oidc(organization, id_token, nonce, uid))
    }
}
