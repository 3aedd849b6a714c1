//! `csap request new`: an authorization policy request (the OMC-JSON body `csap request submit`
//! sends) made from flags, so nobody writes dates or digests into JSON by hand. The window
//! starts now; an application may be named by its executable, whose digest is computed here
//! exactly as the mount's attestation and `csap app register` compute it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args)]
pub struct NewRequest {
    /// The task's id (also its name), e.g. `view` or `comp-shot010`.
    task: String,
    /// A participant (person) by user name; repeatable.
    #[arg(long = "user", value_name = "NAME", required = true)]
    users: Vec<String>,
    /// An application build: the path of its executable (hashed here) or its BLAKE3 digest
    /// (64 hex digits, as `csap app list` shows it); repeatable.
    #[arg(long = "app", value_name = "PATH|DIGEST", required = true)]
    apps: Vec<String>,
    /// A device by its enrolled name; repeatable.
    #[arg(long = "device", value_name = "NAME", required = true)]
    devices: Vec<String>,
    /// Assets by path pattern (`*` within a segment, `**` across), e.g. `show/seq1/**`;
    /// repeatable.
    #[arg(long = "path", value_name = "PATTERN")]
    paths: Vec<String>,
    /// Assets by key scope; repeatable.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// An action: read, write, create, delete or license; repeatable.
    #[arg(long = "action", value_name = "ACTION", required = true)]
    actions: Vec<String>,
    /// How long the rules hold from now: 3600, 90m, 8h, 5d.
    #[arg(long = "for", value_name = "DURATION", default_value = "8h",
          value_parser = crate::ards::parse_duration)]
    duration: i64,
    /// The workflow management system's own id of the request (default: the task).
    #[arg(long, value_name = "ID")]
    workflow_id: Option<String>,
}

/// Clock skew allowed between this machine and authz: the window opens a minute ago.
const SKEW_SECS: i64 = 60;

pub fn run(args: NewRequest) -> Result<()> {
    println!("{}", build(&args, now()?)?);
    Ok(())
}

fn now() -> Result<i64> {
    csap_base::clock::unix_now().context("cannot tell the time for the request's window")
}

/// The request body (pretty JSON) for `args`, its window opening at `now`.
fn build(args: &NewRequest, now: i64) -> Result<String> {
    if args.paths.is_empty() && args.scopes.is_empty() {
        bail!("name the assets: give --path PATTERN or --scope SCOPE (or both)");
    }
    let mut req = authz::request::WireRequest::builder(&args.task)
        .workflow_id(args.workflow_id.as_deref().unwrap_or(&args.task))
        .window(now - SKEW_SECS, now + args.duration);
    for user in &args.users {
        req = req.person(user);
    }
    for app in &args.apps {
        let (digest, name) = application(app)?;
        req = req.application_build(&digest, name.as_deref());
    }
    for device in &args.devices {
        req = req.device(device);
    }
    for path in &args.paths {
        req = req.asset_path(path);
    }
    for scope in &args.scopes {
        req = req.asset_scope(scope);
    }
    for action in &args.actions {
        req = req.action(action);
    }
    Ok(serde_json::to_string_pretty(&req.build())?)
}

/// `spec` as (digest, name): a digest as given, or an executable's digest with its file name.
fn application(spec: &str) -> Result<(String, Option<String>)> {
    if spec.len() == 64 && spec.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok((spec.to_ascii_lowercase(), None));
    }
    let path = Path::new(spec);
    let digest = csapfs::license_source::attest::app_digest_at(path).with_context(|| {
        format!("--app {spec}: neither a 64-hex-digit digest nor a readable executable")
    })?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    Ok((digest, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        new: NewRequest,
    }

    fn parse(args: &[&str]) -> NewRequest {
        Cli::try_parse_from(std::iter::once("new").chain(args.iter().copied()))
            .unwrap()
            .new
    }

    #[test]
    fn a_request_from_flags_is_what_authz_accepts() {
        let digest = "ab".repeat(32);
        let args = parse(&[
            "view", "--user", "alice", "--app", &digest, "--device", "ws-07", "--path", "show/**",
            "--action", "read", "--for", "2h",
        ]);
        let now = 1_800_000_000;
        let body = build(&args, now).unwrap();
        let parsed = authz::request::PolicyRequest::from_json(body.as_bytes(), now).unwrap();
        assert_eq!(parsed.task, "view");
        assert_eq!(parsed.participants[0].id, "alice");
        assert_eq!(parsed.applications[0].digest, digest);
        assert_eq!(parsed.devices, vec!["ws-07".to_string()]);
        assert_eq!(parsed.assets[0].path.as_deref(), Some("show/**"));
        assert_eq!(parsed.not_before, now - SKEW_SECS);
        assert_eq!(parsed.not_after, now + 7200);
    }

    #[test]
    fn an_executable_is_named_by_its_digest_and_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("viewer");
        std::fs::write(&exe, b"not really a program").unwrap();
        let (digest, name) = application(exe.to_str().unwrap()).unwrap();
        assert_eq!(
            digest,
            blake3::hash(b"not really a program").to_hex().to_string()
        );
        assert_eq!(name.as_deref(), Some("viewer"));
        let err = application("/nonexistent/viewer").unwrap_err();
        assert!(format!("{err:#}").contains("neither a 64-hex-digit digest"));
    }

    #[test]
    fn a_request_without_assets_is_refused_here() {
        let args = parse(&[
            "view",
            "--user",
            "a",
            "--app",
            &"0".repeat(64),
            "--device",
            "d",
            "--action",
            "read",
        ]);
        let err = build(&args, 1_800_000_000).unwrap_err();
        assert!(err.to_string().contains("--path PATTERN or --scope SCOPE"));
    }
}
