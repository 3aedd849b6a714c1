//! Where the key server's root key comes from (every replica of a shared PostgreSQL store needs
//! the same one; it never goes in the database): `--root-key-file`, `--root-key-command` (a
//! KMS-style command whose standard output is the key), the `CSAP_ROOT_KEY` environment
//! variable, or else `DATA_DIR/keyserver/root.key` (created on first start).
//!
//! The key is 32 bytes, given as 64 hex digits (a file may also hold the 32 raw bytes, as the
//! data directory's `root.key` does).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::Args;
use zeroize::Zeroizing;

#[derive(Args, Clone, Debug, Default)]
pub struct RootKeyArgs {
    /// Read the key server's root key from this file (64 hex digits, or 32 raw bytes like
    /// DATA_DIR/keyserver/root.key): give every replica the same one.
    #[arg(long, value_name = "FILE", conflicts_with = "root_key_command")]
    pub root_key_file: Option<PathBuf>,
    /// Run this command (with `sh -c`) and take the root key from its standard output (64 hex
    /// digits), e.g. a KMS or vault client. Its standard error goes to ours.
    #[arg(long, value_name = "CMD")]
    pub root_key_command: Option<String>,
}

impl RootKeyArgs {
    /// The root key as hex, when a source other than the data directory names it:
    /// `--root-key-file`, `--root-key-command`, else `CSAP_ROOT_KEY`.
    pub fn hex(&self) -> Result<Option<Zeroizing<String>>> {
        if let Some(path) = &self.root_key_file {
            let bytes =
                Zeroizing::new(std::fs::read(path).with_context(|| {
                    format!("cannot read the root key file {}", path.display())
                })?);
            let hex = if bytes.len() == 32 {
                Zeroizing::new(hex::encode(bytes.as_slice()))
            } else {
                text(&bytes).with_context(|| format!("root key file {}", path.display()))?
            };
            return Ok(Some(hex));
        }
        if let Some(cmd) = &self.root_key_command {
            let out = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .with_context(|| format!("cannot run --root-key-command {cmd:?}"))?;
            let stdout = Zeroizing::new(out.stdout);
            if !out.status.success() {
                bail!("--root-key-command {cmd:?} failed ({})", out.status);
            }
            return Ok(Some(
                text(&stdout).with_context(|| format!("--root-key-command {cmd:?}"))?,
            ));
        }
        Ok(std::env::var("CSAP_ROOT_KEY").ok().map(Zeroizing::new))
    }
}

/// 64 hex digits (surrounding white space ignored), checked here so a wrong source is named.
fn text(bytes: &[u8]) -> Result<Zeroizing<String>> {
    let s = std::str::from_utf8(bytes)
        .ok()
        .map(str::trim)
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    match s {
        Some(s) => Ok(Zeroizing::new(s.to_owned())),
        None => bail!("the root key must be 64 hex digits (32 bytes)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn the_root_key_comes_from_a_file_or_a_command_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let hex_file = dir.path().join("k.hex");
        std::fs::write(&hex_file, format!("{KEY}\n")).unwrap();
        let raw_file = dir.path().join("root.key");
        std::fs::write(&raw_file, hex::decode(KEY).unwrap()).unwrap();
        for f in [&hex_file, &raw_file] {
            let args = RootKeyArgs {
                root_key_file: Some(f.clone()),
                root_key_command: None,
            };
            assert_eq!(args.hex().unwrap().unwrap().as_str(), KEY);
        }
        let cmd = RootKeyArgs {
            root_key_file: None,
            root_key_command: Some(format!("echo {KEY}")),
        };
        assert_eq!(cmd.hex().unwrap().unwrap().as_str(), KEY);
        let short = RootKeyArgs {
            root_key_file: None,
            root_key_command: Some("echo 0011".into()),
        };
        let e = short.hex().unwrap_err();
        assert!(format!("{e:#}").contains("64 hex digits"), "{e:#}");
        let failing = RootKeyArgs {
            root_key_file: None,
            root_key_command: Some(format!("echo {KEY}; exit 3")),
        };
        assert!(format!("{:#}", failing.hex().unwrap_err()).contains("failed"));
    }
}
