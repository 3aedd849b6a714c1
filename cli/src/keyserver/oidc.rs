//! `csap login --oidc ORGANIZATION`: the person logs in at their organization's own OpenID
//! Connect provider (delegated authentication) — an authorization-code flow with PKCE (S256),
//! a `state` and a `nonce`, redirected to a loopback listener of this process (RFC 8252 §7.3) —
//! and the key server trades the ID token for a csap token, verifying it itself.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use openidconnect::{CsrfToken, Nonce, PkceCodeChallenge};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The provider endpoints the flow uses (its discovery document).
#[derive(Deserialize)]
struct Endpoints {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
}

/// What the provider's token endpoint answers (only the ID token is kept).
#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// One login's secrets: sent to the provider (challenge, state, nonce) and kept (verifier).
pub struct Flow {
    pub authorization_url: String,
    pub nonce: String,
    state: String,
    verifier: openidconnect::PkceCodeVerifier,
    redirect: String,
    token_endpoint: String,
    client_id: String,
    listener: TcpListener,
}

fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Discovers `issuer` and prepares a flow for `client_id`, listening for the redirect.
pub async fn start(issuer: &str, client_id: &str) -> Result<Flow> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let endpoints: Endpoints = http()?
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("cannot read the provider's discovery document {url}"))?
        .json()
        .await
        .with_context(|| format!("{url} is not a discovery document"))?;
    if endpoints.issuer != issuer {
        bail!(
            "the discovery document at {url} names issuer {}, not {issuer}",
            endpoints.issuer
        );
    }
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("cannot listen on loopback for the provider's redirect")?;
    let redirect = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let state = CsrfToken::new_random().secret().clone();
    let nonce = Nonce::new_random().secret().clone();
    let mut authorization_url = reqwest::Url::parse(&endpoints.authorization_endpoint)
        .context("the provider's authorization endpoint is not a URL")?;
    authorization_url
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", &redirect)
        .append_pair("scope", "openid")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", challenge.as_str())
        .append_pair("code_challenge_method", "S256");
    Ok(Flow {
        authorization_url: authorization_url.into(),
        nonce,
        state,
        verifier,
        redirect,
        token_endpoint: endpoints.token_endpoint,
        client_id: client_id.to_string(),
        listener,
    })
}

impl Flow {
    /// Waits (at most `limit`) for the browser's redirect, checks its `state`, and trades the
    /// code for the ID token (proving the PKCE verifier).
    pub async fn id_token(self, limit: Duration) -> Result<String> {
        let query = tokio::time::timeout(limit, self.redirect_query())
            .await
            .with_context(|| {
                format!(
                    "no login came back within {} s (open the URL printed above)",
                    limit.as_secs()
                )
            })??;
        let param = |name: &str| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        if let Some(error) = param("error") {
            bail!(
                "the provider refused the login: {error}{}",
                param("error_description")
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            );
        }
        if param("state").as_deref() != Some(self.state.as_str()) {
            bail!("the redirect does not answer this login (its state differs): log in again");
        }
        let code = param("code").context("the redirect carries no code")?;
        let answer: TokenAnswer = http()?
            .post(&self.token_endpoint)
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("client_id", self.client_id.as_str()),
                ("redirect_uri", self.redirect.as_str()),
                ("code_verifier", self.verifier.secret().as_str()),
            ])
            .send()
            .await
            .context("cannot reach the provider's token endpoint")?
            .json()
            .await
            .context("the provider's token endpoint did not answer JSON")?;
        if let Some(error) = answer.error {
            bail!(
                "the provider refused the code: {error}{}",
                answer
                    .error_description
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            );
        }
        answer.id_token.context(
            "the provider answered without an ID token (is `openid` allowed for the client?)",
        )
    }

    /// The query of the first request to the callback path; the browser is told to go back to
    /// the terminal. Other requests (a favicon) are answered 404 and waited past.
    async fn redirect_query(&self) -> Result<String> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            stream.read_line(&mut line).await?;
            // Drain the request's headers.
            let mut header = String::new();
            while stream.read_line(&mut header).await? > 2 {
                header.clear();
            }
            let target = line.split_whitespace().nth(1).unwrap_or_default();
            let Some(query) = target.strip_prefix("/callback?") else {
                let _ = stream
                    .get_mut()
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
                continue;
            };
            let body = "csap: the login went back to the terminal; you may close this page.\n";
            let _ = stream
                .get_mut()
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
            return Ok(query.to_string());
        }
    }
}
