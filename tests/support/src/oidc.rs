//! A real OpenID Connect provider for tests: `oidc-provider` (npm, OpenID-certified) run by
//! `tests/support/oidc/provider.mjs` as a child process on a free loopback port, plus a
//! "browser" that walks the provider's real login and consent pages over HTTP.
//!
//! The node packages come from `npm ci` of `tests/support/oidc/package-lock.json`: in
//! `$CSAP_OIDC_NODE_MODULES`, else `tests/support/oidc/node_modules` (a developer's `npm ci`),
//! else `~/.cache/csap-ci/oidc-provider/node_modules` (where `.ci/run` puts them). Under
//! `CI=true` a missing provider is a failure, never a skip.
//!
//! The provider speaks plain HTTP on 127.0.0.1: production providers are HTTPS, and the key
//! server takes an http issuer only on loopback behind its test switch.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::Proc;

/// One client registered at the provider (a public native client: PKCE, no secret).
pub struct OidcClient {
    pub client_id: String,
    pub redirect_uris: Vec<String>,
}

/// A running provider; stopped on drop.
pub struct OidcProvider {
    pub issuer: String,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

/// The directory that holds `oidc-provider` and its dependencies, if installed anywhere.
pub fn node_modules() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CSAP_OIDC_NODE_MODULES") {
        return Some(PathBuf::from(dir));
    }
    let in_tree = script_dir().join("node_modules");
    if in_tree.join("oidc-provider").is_dir() {
        return Some(in_tree);
    }
    let home = std::env::var_os("HOME")?;
    let cached = Path::new(&home).join(".cache/csap-ci/oidc-provider/node_modules");
    cached.join("oidc-provider").is_dir().then_some(cached)
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// A started provider with `clients`, or `None` (a skip, said on stderr) when node or the
/// package is missing and `CI` is not `true`; under `CI=true` a missing provider panics.
pub fn oidc_provider(clients: &[OidcClient], id_token_ttl_secs: u64) -> Option<OidcProvider> {
    let Some(modules) = node_modules() else {
        crate::missing_part("the OIDC provider", "there is no oidc-provider: run `npm ci` in tests/support/oidc (as .ci/run does into ~/.cache/csap-ci/oidc-provider) or set CSAP_OIDC_NODE_MODULES");
        return None;
    };
    Some(OidcProvider::start(&modules, clients, id_token_ttl_secs).expect("start oidc-provider"))
}

impl OidcProvider {
    pub fn start(
        modules: &Path,
        clients: &[OidcClient],
        id_token_ttl_secs: u64,
    ) -> Result<OidcProvider> {
        // The script runs from a scratch directory whose node_modules links to the installed
        // packages, so the source tree needs no install of its own.
        let dir = tempfile::tempdir()?;
        std::fs::copy(
            script_dir().join("provider.mjs"),
            dir.path().join("provider.mjs"),
        )?;
        std::os::unix::fs::symlink(modules, dir.path().join("node_modules"))?;
        let config = serde_json::json!({
            "port": 0,
            "id_token_ttl": id_token_ttl_secs,
            "clients": clients.iter().map(|c| serde_json::json!({
                "client_id": c.client_id,
                "redirect_uris": c.redirect_uris,
                "application_type": "native",
            })).collect::<Vec<_>>(),
        });
        std::fs::write(dir.path().join("config.json"), config.to_string())?;
        let mut cmd = Command::new("node");
        cmd.current_dir(dir.path())
            .args(["provider.mjs", "config.json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()); // its development-mode warnings
        let mut proc = Proc::spawn(&mut cmd, "oidc-provider")?;
        let stdout = proc.child().stdout.take().context("provider stdout")?;
        // The script says `listening ISSUER` once it accepts connections. Its stdout is
        // drained to the end after that: the provider logs there, and a closed pipe kills it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .context("oidc-provider did not start within 30 s")?;
        let Some(issuer) = line.trim().strip_prefix("listening ") else {
            bail!("oidc-provider did not start: {line:?}");
        };
        Ok(OidcProvider {
            issuer: issuer.to_string(),
            _dir: dir,
            _proc: proc,
        })
    }
}

/// Walks an authorization URL as a person at a browser would: the provider's login page
/// (any `login` name is an account whose `sub` is that name), then its consent page, until
/// the provider redirects to a URL outside itself, which is returned (the client's
/// `redirect_uri` with `code` and `state`, or an `error`). Nothing is followed there.
pub fn browser_login(authorization_url: &str, login: &str) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(walk(authorization_url, login))
}

/// The authorization URL of a code flow with PKCE (S256 of `verifier`) for `client_id`,
/// asking for `openid` with `nonce` and `state`.
pub fn authorization_url(
    issuer: &str,
    client_id: &str,
    redirect: &str,
    verifier: &str,
    nonce: &str,
    state: &str,
) -> String {
    use base64::Engine;
    use sha2::Digest;
    let challenge =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier));
    format!(
        "{issuer}/auth?client_id={client_id}&response_type=code&scope=openid\
         &redirect_uri={redirect}&code_challenge={challenge}&code_challenge_method=S256\
         &nonce={nonce}&state={state}"
    )
}

/// The `code` of the provider's redirect back to the client.
pub fn code_in(redirect: &str) -> Result<&str> {
    redirect
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("code="))
        .with_context(|| format!("no code in the redirect {redirect}"))
}

/// Trades `code` at the provider's token endpoint, proving possession with `verifier` (PKCE):
/// the HTTP status and the JSON answer.
pub fn exchange_code(
    issuer: &str,
    client_id: &str,
    code: &str,
    redirect: &str,
    verifier: &str,
) -> Result<(u16, serde_json::Value)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let answer = reqwest::Client::new()
            .post(format!("{issuer}/token"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("client_id", client_id),
                ("redirect_uri", redirect),
                ("code_verifier", verifier),
            ])
            .send()
            .await?;
        let status = answer.status().as_u16();
        Ok((status, answer.json().await?))
    })
}

/// A whole code flow at `issuer` as the person `login`: the ID token it issues to `client_id`
/// for `nonce`.
pub fn id_token(
    issuer: &str,
    client_id: &str,
    redirect: &str,
    login: &str,
    nonce: &str,
) -> Result<String> {
    let verifier = "a-pkce-verifier-of-at-least-forty-three-characters-0123456789";
    let auth = authorization_url(issuer, client_id, redirect, verifier, nonce, "st");
    let back = browser_login(&auth, login)?;
    let (status, tokens) = exchange_code(issuer, client_id, code_in(&back)?, redirect, verifier)?;
    if status != 200 {
        bail!("the token endpoint answered {status}: {tokens}");
    }
    tokens["id_token"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no id_token in {tokens}"))
}

async fn walk(authorization_url: &str, login: &str) -> Result<String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        // A fresh connection per page, as node's server may close an idle one under us.
        .pool_max_idle_per_host(0)
        .build()?;
    let origin = origin_of(authorization_url)?;
    let mut cookies: Vec<(String, String)> = Vec::new();
    let mut next = http.get(authorization_url);
    for _ in 0..16 {
        if !cookies.is_empty() {
            next = next.header("cookie", cookie_header(&cookies));
        }
        let response = next.send().await?;
        remember_cookies(&mut cookies, response.headers());
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get("location")
                .context("redirect without a location")?
                .to_str()?
                .to_string();
            let location = if location.starts_with('/') {
                format!("{origin}{location}")
            } else {
                location
            };
            if !location.starts_with(&origin) {
                return Ok(location);
            }
            next = http.get(location);
            continue;
        }
        let page = response.text().await?;
        if !status.is_success() {
            bail!("the provider answered {status}: {page}");
        }
        let action = form_action(&page).context("a provider page without a form")?;
        let prompt = hidden_prompt(&page).context("a provider form without its prompt")?;
        let form: Vec<(&str, &str)> = match prompt.as_str() {
            "login" => vec![("prompt", "login"), ("login", login), ("password", "any")],
            "consent" => vec![("prompt", "consent")],
            other => bail!("unexpected provider prompt {other:?}"),
        };
        next = http.post(action).form(&form);
    }
    bail!("the provider did not redirect back after 16 steps")
}

fn origin_of(url: &str) -> Result<String> {
    let rest = url.split_once("://").context("not an absolute URL")?.1;
    let host = rest.split('/').next().unwrap_or(rest);
    Ok(format!("{}://{host}", url.split_once("://").unwrap().0))
}

fn cookie_header(cookies: &[(String, String)]) -> String {
    cookies
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn remember_cookies(cookies: &mut Vec<(String, String)>, headers: &reqwest::header::HeaderMap) {
    for set in headers.get_all("set-cookie") {
        let Ok(set) = set.to_str() else { continue };
        let pair = set.split(';').next().unwrap_or_default();
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        cookies.retain(|(n, _)| n != name);
        if !value.is_empty() {
            cookies.push((name.to_string(), value.to_string()));
        }
    }
}

fn form_action(page: &str) -> Option<String> {
    let form = &page[page.find("<form")?..];
    attribute(form, "action")
}

fn hidden_prompt(page: &str) -> Option<String> {
    let at = page.find("name=\"prompt\"")?;
    let input = &page[page[..at].rfind('<')?..];
    attribute(input, "value")
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let tag = &tag[..tag.find('>')?];
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].replace("&amp;", "&"))
}
