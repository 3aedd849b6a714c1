//! `--store`: where a service keeps its state — SQLite under `--data-dir` (the default) or a
//! PostgreSQL database that replicas share (authz, ARDS and the key server, each in its own
//! schema).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// Keep the services' state (authz, ARDS, the key server's users, builds, scopes with
    /// their sealed seeds, assets, audit trail) in this PostgreSQL database instead of SQLite
    /// under --data-dir: postgres://USER[:PASSWORD]@HOST:PORT/DATABASE (libpq URL syntax;
    /// prefer the environment variable for a password). Keys (the root key among them) and
    /// certificates stay in --data-dir.
    #[arg(long, env = "CSAP_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// PEM file of the CA that signed the PostgreSQL server's certificate: connect over TLS
    /// verified against it (add sslmode=require to the URL to refuse plain connections).
    #[arg(long, value_name = "FILE", requires = "store")]
    pub store_ca: Option<PathBuf>,
}

impl StoreArgs {
    /// The engine these flags name.
    pub fn engine(&self) -> Result<authz::pg::Engine> {
        Ok(match &self.store {
            None => authz::pg::Engine::Sqlite,
            Some(url) => authz::pg::Engine::postgres(authz::pg::Target::parse(
                url,
                self.store_ca.as_deref(),
            )?),
        })
    }
}
