//! Key-server replicas as one server: a client given several URLs (comma-separated, e.g.
//! `https://ks1:7402,https://ks2:7402`) sends each request to the replica that answered last
//! and, when that one cannot be reached, to the next — so a replica going down costs a
//! retry, never a refusal (`EACCES` at the mount) while another replica answers.
//!
//! What moves a request on is a **transport failure** only: no connection, or (for requests
//! that are safe to send twice) a connection lost before any answer. An HTTP answer — a
//! denial, a 5xx — is the server's word and is returned as it is. Safe to send twice: every
//! GET, and the POSTs whose repeat is harmless (a license or license session is issued again,
//! each grant with its own audit row; a login issues another token; a mount's audit batch is
//! deduplicated by its sequence numbers; a generation step is idempotent). Creating or renaming
//! an asset and admin changes move on only when no connection was made.
//!
//! One DNS name with several addresses needs no list: the connector tries each address in
//! turn when connecting.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::client::ClientError;

/// The key servers a client may use, and which one answered last (shared by the client's
/// clones, so one failover moves them all).
#[derive(Debug)]
pub struct Servers {
    urls: Vec<String>,
    current: AtomicUsize,
}

impl Servers {
    /// One URL or several, comma-separated (white space around each ignored).
    pub fn parse(list: &str) -> Result<Servers, ClientError> {
        let urls: Vec<String> = list
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(ClientError::ServerUrl(format!(
                "{list:?} names no key server: give https://HOST:PORT (several, comma-separated, for replicas)"
            )));
        }
        Ok(Servers {
            urls,
            current: AtomicUsize::new(0),
        })
    }

    /// The URLs, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The URL requests go to now.
    pub fn current(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// Whether a POST to `path` may be sent again after its connection was lost.
    pub fn repeatable_post(path: &str) -> bool {
        matches!(
            path,
            "/v1/licenses" | "/v1/sessions" | "/v1/login" | "/v1/login/oidc" | "/v1/audit"
        ) || (path.starts_with("/v1/assets/") && path.ends_with("/generation"))
    }

    /// Sends the request `build` makes for a server's base URL: to the current server, then
    /// to each next one after a transport failure ([`moves_on`]); the last failure if none
    /// answered.
    pub async fn send(
        &self,
        repeatable: bool,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let n = self.urls.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            match build(&self.urls[at]).send().await {
                Ok(resp) => {
                    if at != start {
                        self.current.store(at, Ordering::Relaxed);
                        tracing::info!(server = %self.urls[at], "key server failover: using the next replica");
                    }
                    return Ok(resp);
                }
                Err(e) if n > 1 && moves_on(&e, repeatable) => {
                    tracing::warn!(server = %self.urls[at], error = %e, "key server unreachable; trying the next replica");
                    last = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last
            .map(ClientError::from)
            .unwrap_or_else(|| ClientError::ServerUrl("no key server to ask".into())))
    }
}

/// A failure after which another server may be asked: no connection was made, or (for a
/// repeatable request) the connection failed before an answer came.
fn moves_on(e: &reqwest::Error, repeatable: bool) -> bool {
    e.is_connect() || (repeatable && e.status().is_none() && (e.is_request() || e.is_timeout()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn lists_are_parsed_and_an_empty_one_is_refused() {
        let s = Servers::parse(" https://a:1/ , https://b:2,").unwrap();
        assert_eq!(s.urls(), ["https://a:1", "https://b:2"]);
        assert_eq!(s.current(), "https://a:1");
        let e = Servers::parse(" , ").unwrap_err();
        assert!(e.to_string().contains("names no key server"), "{e}");
        assert!(Servers::repeatable_post("/v1/licenses"));
        assert!(Servers::repeatable_post("/v1/assets/00ff/generation"));
        assert!(!Servers::repeatable_post("/v1/assets"));
        assert!(!Servers::repeatable_post("/v1/admin/users"));
    }

    /// A plain-HTTP server on loopback answering every request with `200 {"at": NAME}`.
    fn answering(name: &'static str) -> (String, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            for conn in listener.incoming().take(4) {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let body = format!("{{\"at\":\"{name}\"}}");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, t)
    }

    /// A plain-HTTP server on loopback that reads each request, then closes the connection
    /// without answering (a replica killed while it handled the request); counts the requests
    /// that reached it.
    fn hanging_up() -> (String, std::sync::Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let reached = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = std::sync::Arc::clone(&reached);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 4096];
                if conn.read(&mut buf).is_ok_and(|n| n > 0) {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                // Dropped: the connection ends with no answer.
            }
        });
        (url, reached)
    }

    /// A port nothing listens on (bound, then closed).
    fn dead() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }

    #[tokio::test]
    async fn a_dead_server_is_skipped_and_the_answering_one_is_kept() {
        let (live, _t) = answering("b");
        let servers = Servers::parse(&format!("{},{live}", dead())).unwrap();
        let http = reqwest::Client::new();
        for _ in 0..2 {
            let resp = servers
                .send(false, |base| http.get(format!("{base}/v1/info")))
                .await
                .expect("the second server answers");
            let v: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(v["at"], "b");
            // The client stays on the server that answered.
            assert_eq!(servers.current(), live);
        }
        // Nobody answers: the transport error comes back (not a made-up answer).
        let none = Servers::parse(&format!("{},{}", dead(), dead())).unwrap();
        let e = none
            .send(true, |base| http.get(format!("{base}/v1/info")))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Http(_)), "{e:?}");
    }

    /// Issue 16: a create (not repeatable) whose connection broke after the request was sent
    /// may have been carried out by that replica; sending it to the next one could register
    /// the asset twice, so the failure comes back instead. A license request (repeatable)
    /// that meets the same failure is answered by the next replica.
    #[tokio::test]
    async fn a_request_that_reached_a_replica_is_sent_again_only_when_repeatable() {
        let http = reqwest::Client::new();
        let create = |base: &str| http.post(format!("{base}/v1/assets")).body("{}");
        let (first, reached) = hanging_up();
        let (live, _t) = answering("b");
        let servers = Servers::parse(&format!("{first},{live}")).unwrap();
        assert!(!Servers::repeatable_post("/v1/assets"));
        let e = servers
            .send(false, create)
            .await
            .expect_err("a create that reached a replica must not move on");
        assert!(matches!(e, ClientError::Http(_)), "{e:?}");
        assert_eq!(
            reached.load(Ordering::SeqCst),
            1,
            "the create reached the first"
        );
        assert_eq!(servers.current(), first, "the client did not move");

        let license = |base: &str| http.post(format!("{base}/v1/licenses")).body("{}");
        let resp = servers
            .send(Servers::repeatable_post("/v1/licenses"), license)
            .await
            .expect("a license request moves on to the next replica");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["at"], "b");
        assert_eq!(
            reached.load(Ordering::SeqCst),
            2,
            "it reached the first too"
        );
        assert_eq!(servers.current(), live);
    }
}
