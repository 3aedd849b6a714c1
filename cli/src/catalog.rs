//! `csap asset map …` and `csap org …`: authz's asset-identifier map and its organizations,
//! over authz's HTTP API (`/v1/asset-ids`, `/v1/organizations`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::authz::{print, read, runtime, Client, ClientArgs};

/// Entries sent per call by `csap asset map import` (authz takes at most 10000).
const IMPORT_BATCH: usize = 5000;

#[derive(Args)]
pub struct AssetMapArgs {
    #[command(subcommand)]
    command: MapCommand,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum MapCommand {
    /// Map an asset manager's identifier (OMC identifierScope and identifierValue) to a csap
    /// path pattern; a request's asset named by it gets that path. Replaces an existing entry.
    Add {
        /// The asset manager's identifier scope, e.g. labkoat.
        #[arg(long)]
        scope: String,
        /// The identifier's value, e.g. ast/669E728D-….
        #[arg(long)]
        value: String,
        /// The csap path pattern it names, e.g. show/seq1/shot010/**.
        #[arg(long)]
        path: String,
    },
    /// List the map, by scope then value.
    List {
        #[command(flatten)]
        format: crate::output::Format,
    },
    /// Add many entries from FILE (`-`: standard input): CSV lines `scope,value,path` (a
    /// header line `scope,value,path` is skipped) or JSON lines `{"scope", "value", "path"}`.
    /// All of a batch is added or none.
    Import { file: PathBuf },
}

#[derive(Args)]
pub struct OrgArgs {
    #[command(subcommand)]
    command: OrgCommand,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Register an organization whose people take part, and what the production delegates
    /// to it (recorded and shown; not acted on yet).
    Add {
        name: String,
        /// Any of authentication, authorization, asset-protection (comma-separated).
        #[arg(long, value_delimiter = ',')]
        delegate: Vec<String>,
    },
    /// List the organizations and their delegations.
    List {
        #[command(flatten)]
        format: crate::output::Format,
    },
    /// Show one organization.
    Show {
        name: String,
        #[command(flatten)]
        format: crate::output::Format,
    },
    /// Remove an organization (requests naming it are refused from now on).
    Remove { name: String },
}

pub fn run_asset_map(args: AssetMapArgs) -> Result<()> {
    let client = Client::new(&args.client)?;
    runtime()?.block_on(async {
        match args.command {
            MapCommand::Add { scope, value, path } => {
                let body = json!({"entries": [{"scope": scope, "value": value, "path": path}]});
                let v = client
                    .call(
                        reqwest::Method::POST,
                        "/v1/asset-ids",
                        Some(body.to_string()),
                    )
                    .await?;
                print(&v)
            }
            MapCommand::List { format } => {
                let v = client
                    .call(reqwest::Method::GET, "/v1/asset-ids", None)
                    .await?;
                let list = v["entries"].as_array().cloned().unwrap_or_default();
                format.print(&list, |l| crate::output::lines(l, mapping_line))
            }
            MapCommand::Import { file } => {
                let entries = parse_import(&read(&file)?)?;
                let mut added = 0;
                for batch in entries.chunks(IMPORT_BATCH) {
                    let body = json!({"entries": batch});
                    let v = client
                        .call(
                            reqwest::Method::POST,
                            "/v1/asset-ids",
                            Some(body.to_string()),
                        )
                        .await
                        .with_context(|| format!("after {added} entries were added"))?;
                    added += v["added"].as_u64().unwrap_or(0);
                }
                print(&json!({"added": added}))
            }
        }
    })
}

/// CSV (`scope,value,path`) or JSON lines, one entry a line; blank lines are skipped.
fn parse_import(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (n == 0 && line.eq_ignore_ascii_case("scope,value,path")) {
            continue;
        }
        let entry = if line.starts_with('{') {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("line {}: not a JSON object", n + 1))?;
            for key in ["scope", "value", "path"] {
                if !v[key].is_string() {
                    bail!("line {}: needs \"{key}\" (text)", n + 1);
                }
            }
            json!({"scope": v["scope"], "value": v["value"], "path": v["path"]})
        } else {
            // The path is last and may not hold a comma; a value may not either (use JSON lines).
            let parts: Vec<&str> = line.splitn(3, ',').collect();
            let [scope, value, path] = parts[..] else {
                bail!(
                    "line {}: expected scope,value,path (or a JSON object)",
                    n + 1
                );
            };
            json!({"scope": scope.trim(), "value": value.trim(), "path": path.trim()})
        };
        out.push(entry);
    }
    if out.is_empty() {
        bail!("no entries in the file");
    }
    Ok(out)
}

fn text_of(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `labkoat ast/669E… -> show/seq1/shot010/**`.
fn mapping_line(m: &Value) -> String {
    format!(
        "{} {} -> {}",
        text_of(&m["scope"]),
        text_of(&m["value"]),
        text_of(&m["path"])
    )
}

pub fn run_org(args: OrgArgs) -> Result<()> {
    let client = Client::new(&args.client)?;
    runtime()?.block_on(async {
        match args.command {
            OrgCommand::Add { name, delegate } => {
                let body = json!({"name": name, "delegate": delegate});
                let v = client
                    .call(
                        reqwest::Method::POST,
                        "/v1/organizations",
                        Some(body.to_string()),
                    )
                    .await?;
                println!("{}", org_header());
                println!("{}", org_line(&v));
                Ok(())
            }
            OrgCommand::List { format } => {
                let v = client
                    .call(reqwest::Method::GET, "/v1/organizations", None)
                    .await?;
                let list = v["organizations"].as_array().cloned().unwrap_or_default();
                format.print(&list, |l| {
                    let mut out = vec![org_header()];
                    out.extend(l.iter().map(org_line));
                    out.join("\n")
                })
            }
            OrgCommand::Show { name, format } => {
                let v = client
                    .call(
                        reqwest::Method::GET,
                        &format!("/v1/organizations/{name}"),
                        None,
                    )
                    .await?;
                format.print(&v, |o| format!("{}\n{}", org_header(), org_line(o)))
            }
            OrgCommand::Remove { name } => {
                let v = client
                    .call(
                        reqwest::Method::DELETE,
                        &format!("/v1/organizations/{name}"),
                        None,
                    )
                    .await?;
                print(&v)
            }
        }
    })
}

/// The header of the delegation table (the seed's, CSAP Part 1 §8).
fn org_header() -> String {
    format!(
        "{:<24} {:<15} {:<14} {:<16}",
        "ORGANIZATION", "AUTHENTICATION", "AUTHORIZATION", "ASSET-PROTECTION"
    )
}

/// One organization: `acme-post  delegated  delegated  production`.
fn org_line(o: &Value) -> String {
    let who = |key: &str| {
        if o[key].as_bool() == Some(true) {
            "delegated"
        } else {
            "production"
        }
    };
    format!(
        "{:<24} {:<15} {:<14} {:<16}",
        text_of(&o["name"]),
        who("authentication"),
        who("authorization"),
        who("asset_protection")
    )
    .trim_end()
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_read_csv_and_json_lines() {
        let text = "scope,value,path\nlabkoat,ast/1,show/a/**\n\n{\"scope\":\"labkoat\",\"value\":\"ast/2\",\"path\":\"show/b\"}\n";
        let e = parse_import(text).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0]["path"], "show/a/**");
        assert_eq!(e[1]["value"], "ast/2");
        assert!(parse_import("labkoat,ast/1\n").is_err());
        assert!(parse_import("{\"scope\":\"x\"}\n").is_err());
        assert!(parse_import("\n").is_err());
    }
}
