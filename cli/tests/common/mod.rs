//! `csap server` as a child process for the CLI's process tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const CSAP: &str = env!("CARGO_BIN_EXE_csap");

/// `csap server` on free loopback ports with its data in a directory; stopped on drop.
pub struct Server {
    pub child: Child,
    /// What it printed up to its last start-up line (the URLs and keys).
    pub printed: String,
}

impl Server {
    pub fn start(data: &Path) -> Server {
        let mut child = Command::new(CSAP)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env_remove("CSAP_SERVER")
            .env_remove("CSAP_IDENTITY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed = String::new();
        while !printed.contains("authz issuer key") {
            match lines.next() {
                Some(Ok(line)) => printed.push_str(&(line + "\n")),
                _ => panic!("server stopped early; printed:\n{printed}"),
            }
        }
        // Keep reading: the server prints more, and a closed pipe would kill it.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, printed }
    }

    /// The URL on the printed line that starts with `prefix` ("key server", "authz ").
    pub fn url(&self, prefix: &str) -> String {
        self.printed
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("https://")))
            .unwrap_or_else(|| panic!("{prefix} URL missing in:\n{}", self.printed))
            .to_string()
    }

    /// SIGTERM, then up to 10 s for the exit; `None` if it did not stop.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.terminate().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
