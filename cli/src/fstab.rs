//! `mount.csap`: the helper mount(8) runs for `mount -t csap` and for `csap` lines in
//! `/etc/fstab`. It turns mount(8)'s calling convention (`mount.csap SPEC DIR [-sfnvrw] [-o
//! OPTIONS]`) into `csap mount SPEC DIR --flag value … --daemon` and executes that, so the
//! helper has no mount logic of its own. Installed as a symlink to `csap` (argv[0] decides):
//!
//! ```text
//! ln -s /usr/local/bin/csap /sbin/mount.csap
//! /data/show.enc  /mnt/show  csap  key-file=/etc/csap/dev.key,cache=direct,allow_other  0 0
//! ```

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The name mount(8) looks for (`/sbin/mount.<type>`).
pub const HELPER_NAME: &str = "mount.csap";

/// `-o` options that are `csap mount` flags (`key-file=K` → `--key-file K`); `_` may stand for
/// `-`. Every other option goes to `csap mount -o` (ro, rw, allow_other, nonempty, kernel ones).
const FLAG_OPTIONS: &[&str] = &[
    "key-file",
    "server",
    "identity",
    "scope",
    "token-file",
    "ards",
    "ards-ca",
    "issuer-pub",
    "issuer",
    "socket",
    "audit-spool",
    "cache",
    "threads",
    "readahead-kb",
    "suite",
    "chunk-size",
    "log-file",
    "pid-file",
    "metrics-listen",
    "metrics-textfile",
    "config",
];

/// Options that are mount(8)'s or fstab's own, not the filesystem's.
fn is_userspace_only(option: &str) -> bool {
    matches!(
        option,
        "defaults"
            | "auto"
            | "noauto"
            | "nofail"
            | "user"
            | "users"
            | "nouser"
            | "owner"
            | "group"
            | "_netdev"
    ) || option.starts_with("x-")
        || option.starts_with("comment=")
}

/// True when this process was started as the mount helper.
pub fn is_helper(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name() == Some(OsStr::new(HELPER_NAME))
}

/// What mount(8) asked for, as `csap` arguments.
#[derive(Debug, PartialEq, Eq)]
pub struct Translated {
    /// `mount SPEC DIR …` (without the program name).
    pub csap_args: Vec<OsString>,
    /// `-f`: do everything but mount.
    pub fake: bool,
    /// `-v`: say what is run.
    pub verbose: bool,
}

/// Parses mount(8)'s arguments to a helper.
pub fn translate(args: &[OsString]) -> Result<Translated> {
    let mut positional = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let (mut fake, mut verbose) = (false, false);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "-o" {
            let value = iter.next().context("-o needs a value")?;
            options.extend(split_options(&value.to_string_lossy()));
        } else if let Some(value) = text.strip_prefix("-o") {
            options.extend(split_options(value));
        } else if text == "-t" {
            let fs_type = iter.next().context("-t needs a value")?.to_string_lossy();
            if fs_type != "csap" {
                bail!("this helper mounts type csap, not {fs_type}");
            }
        } else if text == "-N" || text.starts_with("--namespace") {
            bail!("mounting in another namespace (-N) is not supported");
        } else if text.starts_with('-') && text.len() > 1 {
            for flag in text[1..].chars() {
                match flag {
                    'f' => fake = true,
                    'v' => verbose = true,
                    'r' => options.push("ro".into()),
                    'w' => options.push("rw".into()),
                    // Sloppy, no mtab: nothing for a FUSE mount to do.
                    's' | 'n' => {}
                    other => bail!("unknown mount helper flag -{other}"),
                }
            }
        } else {
            positional.push(arg.clone());
        }
    }
    let [spec, dir] = <[OsString; 2]>::try_from(positional)
        .map_err(|_| anyhow::anyhow!("usage: {HELPER_NAME} BACKING MOUNTPOINT [-o OPTIONS]"))?;

    let mut csap_args: Vec<OsString> = vec!["mount".into(), spec, dir];
    let mut passed = Vec::new();
    for option in options {
        if is_userspace_only(&option) {
            continue;
        }
        match option.split_once('=') {
            Some((key, value)) if FLAG_OPTIONS.contains(&key.replace('_', "-").as_str()) => {
                if value.is_empty() {
                    bail!("option {key}= needs a value");
                }
                csap_args.push(format!("--{}", key.replace('_', "-")).into());
                csap_args.push(value.into());
            }
            _ => passed.push(option),
        }
    }
    if !passed.is_empty() {
        csap_args.push("-o".into());
        csap_args.push(passed.join(",").into());
    }
    // mount(8) expects the helper to return once the filesystem is mounted.
    csap_args.push("--daemon".into());
    Ok(Translated {
        csap_args,
        fake,
        verbose,
    })
}

fn split_options(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(String::from)
}

/// Runs the helper: replaces this process with `csap mount …` (it returns only on failure).
pub fn run(args: &[OsString]) -> Result<()> {
    let translated = translate(args)?;
    let csap = std::env::current_exe().context("locating the csap executable")?;
    if translated.verbose || translated.fake {
        let shown: Vec<String> = translated
            .csap_args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        eprintln!("{HELPER_NAME}: {} {}", csap.display(), shown.join(" "));
    }
    if translated.fake {
        return Ok(());
    }
    // current_exe is the resolved binary, so the new process is `csap`, not the helper again.
    let err = std::process::Command::new(&csap)
        .args(&translated.csap_args)
        .exec();
    Err(err).with_context(|| format!("cannot run {}", csap.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_become_flags_and_the_rest_stays_mount_options() {
        let t = translate(&os(&[
            "/data/show.enc",
            "/mnt/show",
            "-s",
            "-o",
            "rw,key_file=/etc/csap/dev.key,cache=direct,noauto,x-systemd.automount,allow_other,config=/etc/csap/show.toml,metrics-listen=127.0.0.1:9464",
        ]))
        .unwrap();
        assert_eq!(
            t.csap_args,
            os(&[
                "mount",
                "/data/show.enc",
                "/mnt/show",
                "--key-file",
                "/etc/csap/dev.key",
                "--cache",
                "direct",
                "--config",
                "/etc/csap/show.toml",
                "--metrics-listen",
                "127.0.0.1:9464",
                "-o",
                "rw,allow_other",
                "--daemon",
            ])
        );
        assert!(!t.fake && !t.verbose);
    }

    #[test]
    fn wrong_shapes_are_refused() {
        assert!(translate(&os(&["/only-one"])).is_err());
        assert!(translate(&os(&["a", "b", "-N", "1"])).is_err());
        assert!(translate(&os(&["a", "b", "-o", "server="])).is_err());
        assert!(translate(&os(&["a", "b", "-t", "ext4"])).is_err());
    }
}
