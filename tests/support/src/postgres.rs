//! A real PostgreSQL server for tests: Debian's `postgresql` package (`initdb`, `pg_ctl` under
//! `/usr/lib/postgresql/*/bin`), a cluster made afresh in a temporary directory and run as the
//! unprivileged `postgres` user (the server refuses root), on a free loopback port, stopped when
//! the last test using it drops its [`TestDb`]. Every test gets a database of its own.
//!
//! Without PostgreSQL installed a test skips (it says so); under `CI=true` it fails instead.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use anyhow::{bail, Context, Result};

/// A running PostgreSQL cluster (stopped on drop).
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    user: Option<nix::unistd::User>,
    next_db: AtomicU32,
    // Dropped last: the cluster's files.
    _dir: tempfile::TempDir,
}

/// One test's own database on a shared [`PgServer`].
#[derive(Debug, Clone)]
pub struct TestDb {
    /// `postgres://postgres@127.0.0.1:PORT/DB`
    pub url: String,
    pub server: Arc<PgServer>,
}

/// Which engine a store test runs on (see [`on_both_engines!`](crate::on_both_engines)).
#[derive(Debug, Clone)]
pub enum Engine {
    Sqlite,
    /// A fresh database; holding it keeps the server running.
    Postgres(TestDb),
}

impl TestDb {
    /// The database's name.
    pub fn name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or_default()
    }

    /// Runs one SQL command in this database as the superuser; returns what it printed.
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.server.psql_in(self.name(), sql)
    }
}

impl Engine {
    /// The database URL when on PostgreSQL.
    pub fn url(&self) -> Option<&str> {
        match self {
            Engine::Sqlite => None,
            Engine::Postgres(db) => Some(&db.url),
        }
    }
}

/// Runs each named `async fn NAME(engine: Engine)` as two tokio tests, `on_sqlite::NAME` and
/// `on_postgres::NAME` (a fresh database each; skipped without PostgreSQL unless `CI=true`):
/// one body, both engines. Attributes before a name (`#[ignore]`) go on both.
#[macro_export]
macro_rules! on_both_engines {
    ($( $(#[$meta:meta])* $name:ident ),* $(,)?) => {
        mod on_sqlite {
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::postgres::Engine::Sqlite).await
                }
            )*
        }
        mod on_postgres {
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::postgres::database() else { return };
                    super::$name($crate::postgres::Engine::Postgres(db)).await
                }
            )*
        }
    };
}

/// The directory holding `initdb` and `pg_ctl`, if PostgreSQL is installed.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CSAP_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

/// A fresh database on this process's shared server, or `None` (after saying why) when
/// PostgreSQL is not installed; under `CI=true` that is a failure (panic), never a skip.
pub fn database() -> Option<TestDb> {
    let server = shared()?;
    let url = server
        .create_database()
        .expect("cannot create a test database");
    Some(TestDb { url, server })
}

/// This process's PostgreSQL server, started on first use and stopped once no test holds it.
pub fn shared() -> Option<Arc<PgServer>> {
    static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = slot.upgrade() {
        return Some(server);
    }
    let Some(bin) = bin_dir() else {
        crate::missing_part(
            "PostgreSQL",
            "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH; \
             apt-get install postgresql)",
        );
        return None;
    };
    let server = Arc::new(PgServer::start(&bin).expect("cannot start PostgreSQL"));
    *slot = Arc::downgrade(&server);
    Some(server)
}

/// A server of its own (not the shared one) that takes TLS (`ssl = on`) with a certificate for
/// 127.0.0.1 and localhost issued by a fresh test CA, and that CA's certificate (PEM) for the
/// client to trust; `None` (after saying why) without PostgreSQL, a failure under `CI=true`.
pub fn tls_server() -> Option<(PgServer, String)> {
    let Some(bin) = bin_dir() else {
        crate::missing_part(
            "PostgreSQL",
            "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH; \
             apt-get install postgresql)",
        );
        return None;
    };
    let tls = ServerTls::issue().expect("cannot issue the test CA and server certificate");
    let server = PgServer::start_with(&bin, Some(&tls)).expect("cannot start PostgreSQL with TLS");
    Some((server, tls.ca_pem))
}

/// A test CA's certificate and the server certificate and key it issued.
pub struct ServerTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServerTls {
    /// A fresh CA and a server certificate from it for 127.0.0.1 and localhost.
    pub fn issue() -> Result<ServerTls> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "csap test PostgreSQL CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?
            .signed_by(&key, &ca_cert, &ca_key)?;
        Ok(ServerTls {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl PgServer {
    /// `initdb` into a new temporary directory and `pg_ctl start` on a free loopback port.
    pub fn start(bin: &Path) -> Result<PgServer> {
        PgServer::start_with(bin, None)
    }

    /// [`PgServer::start`], with `ssl = on` and this certificate when `tls` is given.
    pub fn start_with(bin: &Path, tls: Option<&ServerTls>) -> Result<PgServer> {
        let dir = tempfile::Builder::new().prefix("csap-pg").tempdir()?;
        // The server will not run as root: the cluster belongs to `postgres` when we are root.
        let user = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")?
                .context("no `postgres` user to run PostgreSQL as (apt-get install postgresql)")?;
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))?;
            Some(user)
        } else {
            None
        };
        let data = dir.path().join("data");
        let mut server = PgServer {
            bin: bin.to_owned(),
            data,
            port: 0,
            user,
            next_db: AtomicU32::new(0),
            _dir: dir,
        };
        server.run_ok(server.command("initdb").arg("-D").arg(&server.data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]))?;
        let ssl = match tls {
            None => String::new(),
            Some(tls) => server.install_tls(tls)?,
        };
        // A port that was free a moment ago may be taken by the time the server binds: retry.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c max_connections=400 -c shared_buffers=32MB{ssl}",
                server.port,
                server._dir.path().display()
            );
            let log = server._dir.path().join("server.log");
            let started = server.run_ok(
                server
                    .command("pg_ctl")
                    .arg("-D")
                    .arg(&server.data)
                    .arg("-l")
                    .arg(&log)
                    .args(["-w", "-t", "60", "-o", &options, "start"]),
            );
            match started {
                Ok(_) => return Ok(server),
                Err(e) => {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    last = Some(e.context(log));
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Writes the certificate and its key (0600, the server's user's: PostgreSQL refuses a
    /// key others can read) beside the cluster; the server options that turn TLS on.
    fn install_tls(&self, tls: &ServerTls) -> Result<String> {
        use std::os::unix::fs::PermissionsExt;
        let cert = self._dir.path().join("server.crt");
        let key = self._dir.path().join("server.key");
        std::fs::write(&cert, &tls.cert_pem)?;
        std::fs::write(&key, &tls.key_pem)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        if let Some(user) = &self.user {
            for f in [&cert, &key] {
                nix::unistd::chown(f, Some(user.uid), Some(user.gid))?;
            }
        }
        Ok(format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        ))
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id (first line of `postmaster.pid`); its children are the
    /// backends and background processes (benchmarks read their CPU time from `/proc`).
    pub fn postmaster_pid(&self) -> Result<i32> {
        let file = self.data.join("postmaster.pid");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no pid in {}", file.display()))
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub fn create_database(&self) -> Result<String> {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        let name = format!("csap_{}_{n}", std::process::id());
        self.psql(&format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// Runs one SQL command as the superuser in database `postgres`; returns what it printed.
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.psql_in("postgres", sql)
    }

    /// Runs one SQL command as the superuser in database `db`; returns what it printed.
    pub fn psql_in(&self, db: &str, sql: &str) -> Result<String> {
        let port = self.port.to_string();
        let out = self.run_ok(Command::new(self.bin.join("psql")).args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ]))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some(user) = &self.user {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            cmd.env("HOME", self._dir.path());
        }
        cmd.current_dir(self._dir.path());
        cmd
    }

    fn run_ok(&self, cmd: &mut Command) -> Result<Output> {
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
        if !out.status.success() {
            bail!(
                "{:?} failed ({}): {}{}",
                cmd.get_program(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.port == 0 {
            return;
        }
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        if let Err(e) = self.run_ok(&mut stop) {
            eprintln!("cannot stop the test PostgreSQL: {e:#}");
        }
    }
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_server_serves_separate_databases_and_stops_on_drop() {
        let Some(a) = database() else { return };
        let b = database().expect("the server is running");
        assert_ne!(a.url, b.url);
        let port = a.server.port();
        let listed = a.server.psql("SELECT datname FROM pg_database").unwrap();
        for db in [&a.url, &b.url] {
            let name = db.rsplit('/').next().unwrap();
            assert!(listed.lines().any(|l| l == name), "{name} in {listed}");
        }
        drop((a, b));
        // Nobody holds it any more: stopped, its port closed.
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
