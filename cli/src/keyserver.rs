//! `csap keyserver|device|user|login|app|scope|keys|audit`: run the key server and administer it
//! (devices, users, application builds, key scopes, admin-issued licenses, the audit trail),
//! one module per command family; what they share (the connection flags, the runtime, the
//! password prompt) is here.

mod apps;
mod audit;
mod keys;
mod oidc;
mod principals;
mod serve;
mod users;

pub(crate) use apps::digest_file;
pub use apps::{run_app, AppCommand};
pub use audit::{run_audit, AuditCommand};
pub use keys::{run_keys, run_scope, KeysCommand, ScopeCommand};
pub use principals::{
    run_device, run_role, run_workflow, DeviceCommand, RoleCommand, WorkflowCommand,
};
pub use serve::{run_keyserver, KeyserverCommand};
pub use users::{run_idp, run_login, run_user, IdpCommand, LoginArgs, UserCommand};

use std::path::PathBuf;

use crate::password::read_password;

use anyhow::{Context, Result};
use clap::Args;
use keyserver::client::AdminClient;

/// Where the key server is and who we are (an admin or device identity directory).
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Key server URL, e.g. https://127.0.0.1:7402; replicas comma-separated (the next one is
    /// asked when one cannot be reached).
    #[arg(long, env = "CSAP_SERVER")]
    pub server: String,
    /// Identity directory with cert.pem, key.pem and ca.pem (DATA_DIR/admin for admins, the
    /// `csap device enroll --out` directory for devices).
    #[arg(long, env = "CSAP_IDENTITY")]
    pub identity: PathBuf,
}

impl Conn {
    fn admin(&self) -> Result<AdminClient> {
        AdminClient::connect(&self.server, &self.identity)
            .with_context(|| format!("cannot use identity {}", self.identity.display()))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
