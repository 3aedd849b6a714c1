//! Calls to the key server from the FUSE threads: each bounded by the request timeout, an
//! open's license request driven on the calling thread, and the key server's errors as the
//! mount's ([`KeyError`]).

use keyserver_client::wire::Action;
use keyserver_client::ClientError;
use keyserver_client::UserToken;

use super::{siblings, KeyServerSource};
use crate::keys::KeyError;

impl KeyServerSource {
    /// The license for `ids`, asked for on the calling thread: the FUSE thread drives the
    /// request on the source's current-thread runtime, so a cold open wakes no other thread of
    /// the mount (the hand-off to a runtime worker and back cost ~100 µs on the development VM).
    /// A transport failure — say on a connection the server closed while no call was polling
    /// it — is asked once more on the shared runtime. A rate-limited answer is waited out and
    /// asked again, all within the request timeout ([`siblings::retry_rate_limited`]). The
    /// outer error is the mount's (timed out, shutting down), the inner the key server's.
    pub(super) fn request_here(
        &self,
        token: &UserToken,
        app: &str,
        action: Action,
        ids: &[[u8; 16]],
    ) -> Result<Result<keyserver_client::license::OpenedLicense, ClientError>, KeyError> {
        let started = std::time::Instant::now();
        let answer = self.request_once_or_twice(token, app, action, ids);
        crate::observe::license_request(started.elapsed());
        answer
    }

    fn request_once_or_twice(
        &self,
        token: &UserToken,
        app: &str,
        action: Action,
        ids: &[[u8; 16]],
    ) -> Result<Result<keyserver_client::license::OpenedLicense, ClientError>, KeyError> {
        let ask =
            siblings::retry_rate_limited(|| self.here_client.request(token, app, action, ids));
        match self.block_on(self.here.as_ref(), ask)? {
            Err(ClientError::Http(e)) => {
                tracing::debug!(error = %chain(&e), "license request failed on this thread; asking again on the shared runtime");
                self.block_on(
                    self.runtime.as_ref(),
                    siblings::retry_rate_limited(|| self.client.request(token, app, action, ids)),
                )
            }
            answer => Ok(answer),
        }
    }

    /// Runs one key server call on the source's shared runtime.
    pub(super) fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, KeyError> {
        self.block_on(self.runtime.as_ref(), fut)?
            .map_err(client_error)
    }

    /// Runs `fut` on `runtime` (`None` once the source is shutting down), bounded by the
    /// request timeout; the inner result is the call's own.
    pub(super) fn block_on<T>(
        &self,
        runtime: Option<&tokio::runtime::Runtime>,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<Result<T, ClientError>, KeyError> {
        let runtime =
            runtime.ok_or_else(|| KeyError::Unavailable("key source is shutting down".into()))?;
        runtime
            .block_on(async { tokio::time::timeout(self.request_timeout, fut).await })
            .map_err(|_| KeyError::Unavailable("key server did not answer in time".into()))
    }
}

pub(super) fn client_error(e: ClientError) -> KeyError {
    match e {
        ClientError::Denied(reason) => KeyError::Denied(format!("key server: {reason}")),
        ClientError::Server { status, body } if (400..500).contains(&status) => {
            KeyError::Denied(format!("key server answered {status}: {}", body.error))
        }
        other => KeyError::Unavailable(chain(&other)),
    }
}

/// An error with its causes, "outer: cause: root" (client errors hide the transport detail).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
