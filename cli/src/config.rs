//! `--config FILE` of `csap server` and `csap mount`: a TOML file whose keys are the command's
//! long flags without the dashes (`data-dir`, `metrics-listen`, `key-file`, …; `backing` and
//! `mountpoint` for the mount's two paths). A flag on the command line, or its environment
//! variable, wins over the file; the file wins over the defaults.
//!
//! How: before the real parse, the file's entries become the arguments they stand for, inserted
//! right after the subcommand, for every flag the command line (and environment) left unset. So
//! every value passes the same parser and checks as a typed flag, `--help` stays the reference,
//! and `csap mount --daemon` hands the same command line to its background process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::Command;

/// The subcommands that take `--config`.
pub const CONFIGURABLE: &[&str] = &["server", "mount"];

/// Flags a file may not set, and why: `csap mount --daemon` runs itself again without
/// `--daemon` and `--log-file` (and with the same `--config`), so from a file they would reach
/// the background process too.
const COMMAND_LINE_ONLY: &[(&str, &str)] = &[
    ("config", "a config file cannot name another"),
    (
        "daemon",
        "give --daemon on the command line (the background process reads the same file)",
    ),
    (
        "log-file",
        "give --log-file on the command line, with --daemon",
    ),
];

/// Where the subcommand is in `argv`, skipping the global `--log-format VALUE`.
fn subcommand_at(argv: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while i < argv.len() {
        let a = argv[i].to_string_lossy();
        if a == "--log-format" {
            i += 2;
            continue;
        }
        if a.starts_with('-') {
            i += 1;
            continue;
        }
        return Some(i);
    }
    None
}

/// The value of `--config FILE` / `--config=FILE` after the subcommand (before any `--`).
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            return None;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// `argv` with the entries of the subcommand's `--config` file added (unchanged without one).
pub fn apply(cli: Command, argv: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(at) = subcommand_at(&argv) else {
        return Ok(argv);
    };
    let name = argv[at].to_string_lossy().into_owned();
    if !CONFIGURABLE.contains(&name.as_str()) {
        return Ok(argv);
    }
    let Some(path) = config_path(&argv[at + 1..]) else {
        return Ok(argv);
    };
    let table = load(&path)?;
    // What the command line and the environment set already (errors are the real parse's).
    let matches = cli
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&argv)
        .ok();
    let given = matches
        .as_ref()
        .and_then(|m| m.subcommand_matches(&name))
        .cloned();
    let sub = cli
        .find_subcommand(&name)
        .context("the subcommand has no definition")?
        .clone();
    let mut added: Vec<OsString> = Vec::new();
    let mut positionals: Vec<(usize, OsString)> = Vec::new();
    for (key, value) in &table {
        let Some(arg) = sub.get_arguments().find(|a| {
            a.get_long() == Some(key.as_str()) || (a.is_positional() && a.get_id() == key.as_str())
        }) else {
            bail!(
                "{}: unknown key {key:?} (keys are the long flags of `csap {name}`, see `csap {name} --help`)",
                path.display()
            );
        };
        if let Some((_, why)) = COMMAND_LINE_ONLY.iter().find(|(k, _)| k == key) {
            bail!("{}: {key}: {why}", path.display());
        }
        let id = arg.get_id().as_str();
        let set = given.as_ref().and_then(|m| m.value_source(id));
        if matches!(
            set,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let values = scalars(&path, key, value)?;
        if arg.is_positional() {
            let [one] = values.as_slice() else {
                bail!("{}: {key} takes one value", path.display());
            };
            positionals.push((arg.get_index().unwrap_or(0), one.clone().into()));
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        for v in values {
            match (takes_value, v.as_str()) {
                (true, _) => {
                    added.push(format!("--{key}").into());
                    added.push(v.into());
                }
                (false, "true") => added.push(format!("--{key}").into()),
                (false, "false") => {}
                (false, other) => bail!(
                    "{}: {key} is a switch: give true or false, not {other:?}",
                    path.display()
                ),
            }
        }
    }
    // The file's paths only stand in when the command line gave none of them.
    let cli_positionals = given.as_ref().is_some_and(|m| {
        sub.get_arguments()
            .filter(|a| a.is_positional())
            .any(|a| m.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
    });
    if !cli_positionals {
        positionals.sort_by_key(|(index, _)| *index);
        added.extend(positionals.into_iter().map(|(_, v)| v));
    }
    let mut out = argv[..=at].to_vec();
    out.extend(added);
    out.extend(argv[at + 1..].iter().cloned());
    Ok(out)
}

fn load(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    text.parse::<toml::Table>()
        .map_err(|e| anyhow::anyhow!("{} is not valid TOML: {}", path.display(), e.message()))
}

/// A key's value as the strings a command line would carry (an array: one per element).
fn scalars(path: &Path, key: &str, value: &toml::Value) -> Result<Vec<String>> {
    let one = |v: &toml::Value| -> Result<String> {
        Ok(match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => bail!(
                "{}: {key} must be a string, number or boolean (or an array of them)",
                path.display()
            ),
        })
    };
    match value {
        toml::Value::Array(items) => items.iter().map(one).collect(),
        v => Ok(vec![one(v)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use std::ffi::OsStr;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter()
            .map(OsStr::new)
            .map(OsStr::to_os_string)
            .collect()
    }

    fn contrib(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../contrib/config")
            .join(file)
    }

    fn parse(args: &[&str]) -> crate::Cli {
        let argv = apply(crate::Cli::command(), os(args)).unwrap();
        crate::Cli::try_parse_from(argv).unwrap()
    }

    /// The shipped examples parse, every key a flag of its command, with the values they show.
    #[test]
    fn the_contrib_examples_load() {
        let server = contrib("server.toml");
        let crate::Cli {
            command: crate::Command::Server(s),
            ..
        } = parse(&["csap", "server", "--config", server.to_str().unwrap()])
        else {
            panic!("not a server command");
        };
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/csap"));
        assert_eq!(s.listen.to_string(), "0.0.0.0:7400");
        assert_eq!(
            s.metrics_listen,
            Some(authz::ops::ListenChoice(Some(
                "127.0.0.1:7403".parse().unwrap()
            )))
        );
        assert!(s.device_rate.is_some());

        let mount = contrib("mount.toml");
        let crate::Cli {
            command: crate::Command::Mount(m),
            ..
        } = parse(&["csap", "mount", "--config", mount.to_str().unwrap()])
        else {
            panic!("not a mount command");
        };
        assert_eq!(m.backing, PathBuf::from("/srv/csap/show.enc"));
        assert_eq!(m.mountpoint, PathBuf::from("/mnt/show"));
        assert_eq!(
            m.key_server.server.as_deref(),
            Some("https://csap.example:7402")
        );
        assert_eq!(m.options, vec!["ro".to_string(), "allow_other".to_string()]);
        assert_eq!(
            m.observe.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
    }

    /// A flag on the command line wins over the file; the file over the default.
    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mount.toml");
        std::fs::write(
            &file,
            "backing = \"/b\"\nmountpoint = \"/m\"\nkey-file = \"/k\"\ncache = \"page\"\noptions = [\"ro\"]\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let crate::Cli {
            command: crate::Command::Mount(m),
            ..
        } = parse(&[
            "csap", "mount", "--config", f, "--cache", "direct", "-o", "rw", "/b2", "/m2",
        ])
        else {
            panic!("not a mount command");
        };
        assert_eq!(m.backing, PathBuf::from("/b2"));
        assert_eq!(m.mountpoint, PathBuf::from("/m2"));
        assert_eq!(m.key_file, Some(PathBuf::from("/k")));
        assert!(matches!(m.cache, crate::mount::CacheArg::Direct));
        assert_eq!(m.options, vec!["rw".to_string()]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        let f = file.to_str().unwrap().to_string();
        let err = |text: &str| {
            std::fs::write(&file, text).unwrap();
            let e = apply(
                crate::Cli::command(),
                os(&["csap", "server", "--config", &f]),
            )
            .unwrap_err();
            crate::errors::sentence(&e)
        };
        let e = err("data_dir = \"/x\"\n");
        assert!(
            e.contains("unknown key \"data_dir\"") && e.contains(&f),
            "{e}"
        );
        let e = err("data-dir = { a = 1 }\n");
        assert!(e.contains("must be a string"), "{e}");
        let e = err("data-dir = \n");
        assert!(e.contains("is not valid TOML"), "{e}");
        let e = err("config = \"/other.toml\"\n");
        assert!(e.contains("cannot name another"), "{e}");
        let mount = dir.path().join("mount.toml");
        std::fs::write(&mount, "daemon = true\n").unwrap();
        let e = apply(
            crate::Cli::command(),
            os(&["csap", "mount", "--config", mount.to_str().unwrap()]),
        )
        .unwrap_err();
        let e = crate::errors::sentence(&e);
        assert!(
            e.contains("daemon: give --daemon on the command line"),
            "{e}"
        );
    }
}
