//! The key server's directory for `csap authz serve` and `csap ards serve` running as their own
//! processes: fetched at start (no directory, no service) and refreshed every second.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

/// How often a standalone service refreshes the directory (revocations reach it this fast).
const REFRESH: Duration = Duration::from_secs(1);

/// The first snapshot and the task that keeps it current (spawn it).
pub async fn mirror(
    keyserver_url: &str,
    identity_dir: &Path,
) -> Result<(
    Arc<dyn authz::principal::Directory>,
    impl Future<Output = ()> + Send + 'static,
)> {
    let client =
        keyserver_client::AdminClient::connect(keyserver_url, identity_dir).with_context(|| {
            format!(
                "cannot use the identity in {} for the key server",
                identity_dir.display()
            )
        })?;
    let dir = keyserver::directory::MirroredDirectory::fetch(&client)
        .await
        .with_context(|| {
            format!(
                "cannot read the directory from the key server at {keyserver_url} \
                 (the identity must be a service principal: `csap service add NAME`)"
            )
        })?;
    let follow = Arc::clone(&dir).follow(client, REFRESH);
    Ok((dir, follow))
}
