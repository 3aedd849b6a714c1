//! `csap audit`: the key server's audit trail, tailed, searched or its hash chain verified.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use keyserver::wire::{self, AuditRecord};

use super::{runtime, Conn};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Show the latest audit records (every grant and denial).
    Tail {
        /// Keep polling for new records.
        #[arg(long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[arg(short = 'n', default_value_t = 20)]
        n: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Search the audit trail on the server: key server and mount decisions alike (the
    /// `source` column says which enforcement point decided). Filters combine with AND.
    #[command(after_help = "\
Times (--since, --until): RFC 3339 (2026-12-01T09:00:00Z), unix seconds, or an age: 30m, 24h, 7d.

Examples:
  csap audit query --path 'show/seq1/f0001.exr' --since 7d
  csap audit query --path 'show/**/*.exr' --decision deny --app nuke
  csap audit query --user alice --device ws-07 --limit 1000 --json")]
    Query {
        /// Asset path glob: `*` within one segment, `**` across segments.
        #[arg(long, value_name = "GLOB")]
        path: Option<String>,
        #[arg(long, value_name = "U")]
        user: Option<String>,
        #[arg(long, value_name = "D")]
        device: Option<String>,
        /// An application digest, or a registered application's name.
        #[arg(long, value_name = "DIGEST|NAME")]
        app: Option<String>,
        #[arg(long, value_parser = ["grant", "deny", "admin"])]
        decision: Option<String>,
        #[arg(long, value_name = "T")]
        since: Option<String>,
        #[arg(long, value_name = "T")]
        until: Option<String>,
        /// Most records shown (the newest that match), at most 10000.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Walk the audit trail's hash chain on the server: fails (exit 1) naming the first row
    /// that was edited, deleted or moved. Rows cut off the end are not detected (yet).
    Verify {
        /// The server's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `csap audit verify`: prints the verdict; tampering is an error (non-zero exit).
fn verify(json: bool, conn: Conn) -> Result<()> {
    let v = runtime()?
        .block_on(async move { Ok::<_, anyhow::Error>(conn.admin()?.audit_verify().await?) })?;
    if json {
        println!("{}", serde_json::to_string(&v)?);
    }
    let unchained = if v.unchained > 0 {
        format!(" ({} rows from before the chain not checked)", v.unchained)
    } else {
        String::new()
    };
    match &v.tamper {
        None => {
            if !json {
                println!(
                    "audit trail intact: {} rows, chain head {}{unchained}",
                    v.rows,
                    v.head.as_deref().unwrap_or("(none)")
                );
            }
            Ok(())
        }
        Some(t) => bail!("audit trail tampered with: {t}"),
    }
}

/// A point in time for `audit query`: an age (`30m`, `24h`, `7d`: that long ago), or what
/// [`wire::parse_time`] takes (unix seconds, RFC 3339, `+4h`).
fn parse_past(s: &str, now: i64) -> Result<i64> {
    let t = s.trim();
    let unit = |c: char| match c {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86_400),
        'w' => Some(7 * 86_400),
        _ => None,
    };
    if let Some((i, c)) = t.char_indices().last() {
        if let (Some(mult), Ok(n)) = (unit(c), t[..i].parse::<i64>()) {
            if let Some(ago) = n.checked_mul(mult).and_then(|d| now.checked_sub(d)) {
                return Ok(ago);
            }
        }
    }
    wire::parse_time(t, now)
        .with_context(|| format!("{s:?}: give RFC 3339, unix seconds or an age such as 24h or 7d"))
}

fn print_record(r: &AuditRecord, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let app = r
        .app_digest
        .as_deref()
        .map(|d| &d[..d.len().min(12)])
        .unwrap_or("-");
    let count = if r.count > 1 {
        format!(" x{}", r.count)
    } else {
        String::new()
    };
    println!(
        "{} {:<6} {:<9} {:<9} path={} user={} uid={} device={} app={} asset={} rules={} {}{count}",
        wire::rfc3339(r.time),
        r.decision,
        r.action,
        r.source,
        opt(&r.path),
        opt(&r.user),
        r.uid.map_or_else(|| "-".into(), |u| u.to_string()),
        opt(&r.device),
        app,
        opt(&r.asset),
        if r.rule_ids.is_empty() {
            "-".into()
        } else {
            r.rule_ids.join(",")
        },
        opt(&r.reason)
    );
    Ok(())
}

pub fn run_audit(cmd: AuditCommand) -> Result<()> {
    let (follow, json, n, conn) = match cmd {
        AuditCommand::Verify { json, conn } => return verify(json, conn),
        AuditCommand::Tail {
            follow,
            json,
            n,
            conn,
        } => (follow, json, n, conn),
        AuditCommand::Query {
            path,
            user,
            device,
            app,
            decision,
            since,
            until,
            limit,
            json,
            conn,
        } => {
            let now = keyserver::now().context("the system clock is unusable")?;
            let q = wire::AuditQuery {
                path,
                user,
                device,
                app,
                decision,
                since: since.map(|s| parse_past(&s, now)).transpose()?,
                until: until.map(|s| parse_past(&s, now)).transpose()?,
                limit: Some(limit),
            };
            return runtime()?.block_on(async move {
                for r in conn.admin()?.audit_query(&q).await? {
                    print_record(&r, json)?;
                }
                Ok(())
            });
        }
    };
    runtime()?.block_on(async move {
        let admin = conn.admin()?;
        let mut last = 0;
        for r in admin.audit_tail(n).await? {
            print_record(&r, json)?;
            last = r.id;
        }
        if !follow {
            return Ok(());
        }
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            for r in admin.audit_after(last, 1000).await? {
                print_record(&r, json)?;
                last = r.id;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse_past;

    #[test]
    fn audit_query_times_are_ages_or_instants() {
        let now = 1_000_000;
        assert_eq!(parse_past("7d", now).unwrap(), now - 7 * 86_400);
        assert_eq!(parse_past("24h", now).unwrap(), now - 24 * 3600);
        assert_eq!(parse_past("30m", now).unwrap(), now - 1800);
        assert_eq!(parse_past("2w", now).unwrap(), now - 14 * 86_400);
        assert_eq!(
            parse_past("2026-12-01T00:00:00Z", now).unwrap(),
            1_796_083_200
        );
        assert_eq!(parse_past("1700000000", now).unwrap(), 1_700_000_000);
        let err = parse_past("last tuesday", now).unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }
}
