//! A real S3 server for tests: `s3s-fs` (real HTTP S3 with SigV4, ranges, multipart, on a
//! directory) as a child process on a free loopback port, one fresh bucket per server, with
//! random credentials. Killed and restarted on the same port and data to test outages.
//!
//! The binary is `$CSAP_S3_SERVER`, else `s3s-fs` on `PATH`, else the one `.ci/run` builds into
//! `~/.cache/csap-ci/bin/`. Under `CI=true` a missing server is a failure, never a skip.
//! (Garage, the production store we would rather test against, takes far longer than the CI
//! budget allows to build here: see `docs/operations.md`, "Assets in S3".)

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{until, Proc};

/// One running (or stopped) S3 server with one bucket.
pub struct S3Server {
    binary: PathBuf,
    data: tempfile::TempDir,
    port: u16,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    proc: Option<Proc>,
}

/// Where the S3 server binary is, if anywhere.
pub fn server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CSAP_S3_SERVER") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("s3s-fs"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let cached = Path::new(&home).join(".cache/csap-ci/bin/s3s-fs");
        cached.is_file().then_some(cached)
    })
}

/// A started server, or `None` (a skip, said on stderr) when there is no server binary and
/// `CI` is not `true`; under `CI=true` a missing binary panics.
pub fn s3_server() -> Option<S3Server> {
    let Some(binary) = server_binary() else {
        crate::missing_part("an S3 server", "there is no S3 server: install s3s-fs (`cargo install s3s-fs --version 0.14.1 --features binary`, as .ci/run does) or set CSAP_S3_SERVER");
        return None;
    };
    Some(S3Server::start(binary).expect("start the S3 server"))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .expect("random bytes");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl S3Server {
    pub fn start(binary: PathBuf) -> Result<S3Server> {
        let data = tempfile::tempdir()?;
        let bucket = format!("csap-{}", random_hex(4));
        // s3s-fs keeps a bucket as a directory of its root.
        std::fs::create_dir(data.path().join(&bucket))?;
        let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
        let mut server = S3Server {
            binary,
            data,
            port,
            bucket,
            access_key: format!("AK{}", random_hex(8)),
            secret_key: random_hex(20),
            proc: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// Starts the server (again) on its port and data.
    pub fn restart(&mut self) -> Result<()> {
        if self.proc.is_some() {
            bail!("the S3 server is running already");
        }
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--access-key",
                &self.access_key,
                "--secret-key",
                &self.secret_key,
            ])
            .arg(self.data.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        let proc = Proc::spawn(&mut cmd, "s3s-fs")
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.proc = Some(proc);
        let port = self.port;
        until("the S3 server to listen", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    }

    /// Kills the server at once (SIGKILL): connections drop mid-request.
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The location of `prefix` in this server's bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The environment a client of this server needs (credentials, region, endpoint).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_CONDITIONAL_PUT", "etag".to_string()),
        ]
    }

    /// Sets [`Self::env`] on a command.
    pub fn configure<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.envs(self.env())
    }

    /// The file that holds object `key` of the bucket (to tamper with it as an attacker with
    /// access to the store would).
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.data.path().join(&self.bucket).join(key)
    }
}
