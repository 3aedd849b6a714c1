//! The key-server flags of `csap mount` (`--server`, `--identity`, `--scope`, `--token-file`,
//! and the mount's own ARDS subscription: `--ards`, `--ards-ca`, `--issuer-pub`) and building
//! the mount's [`KeyServerSource`] from them.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use csapfs::keys::{KeySource, NewAssetParams};
use csapfs::license_source::{KeyServerSource, LicenseSourceConfig, RulesConfig, TokenMap};

#[derive(Args, Debug, Clone)]
pub struct KeyServerArgs {
    /// Key server URL: content keys come from licenses for each attested caller
    /// (instead of --key-file).
    #[arg(long, value_name = "URL", conflicts_with = "key_file")]
    pub server: Option<String>,
    /// This device's enrollment directory (from `csap device enroll`), used for mTLS.
    #[arg(long, value_name = "DIR", requires = "server")]
    pub identity: Option<PathBuf>,
    /// Key scope that files created through the mount are licensed in (without it, creating
    /// files is refused).
    #[arg(long, value_name = "NAME", requires = "server")]
    pub scope: Option<String>,
    /// User token file: `PATH` for the mounting user, or `UID:PATH` (repeatable, for service
    /// accounts). Default per uid: the file `csap login` writes.
    #[arg(long, value_name = "[UID:]PATH", requires = "server")]
    pub token_file: Vec<String>,
    /// ARDS URL: the mount subscribes to its own rules (PEP `mount:<device>`), denies locally
    /// what they do not allow (no round trip), gates create/unlink/rename/truncate, and applies
    /// revocations to open files within a second. `csap server` prints it (key server port - 1).
    #[arg(long, value_name = "URL", requires_all = ["server", "ards_ca", "issuer_pub"])]
    pub ards: Option<String>,
    /// ARDS's TLS certificate (`csap server` prints it: DATA_DIR/ards/ards-cert.pem).
    #[arg(long, value_name = "FILE", requires = "ards")]
    pub ards_ca: Option<PathBuf>,
    /// authz's issuer public key (hex; DATA_DIR/authz/issuer.pub): rules must be signed by it.
    #[arg(long, value_name = "FILE", requires = "ards")]
    pub issuer_pub: Option<PathBuf>,
    /// Issuer name the rules carry (authz's `issuer` setting).
    #[arg(long, value_name = "NAME", default_value = "authz", requires = "ards")]
    pub issuer: String,
    /// Accept user sessions from `csap login --socket PATH` on this Unix socket (mode 0666: the
    /// user is the caller's uid from SO_PEERCRED, not the socket's permissions). Sessions are
    /// used before token files. Example: /run/csap/mount.sock.
    #[arg(long, value_name = "PATH", requires = "server")]
    pub socket: Option<PathBuf>,
}

/// A key-server key source and, with `--socket`, the session socket that feeds it (it removes
/// its socket file when dropped, so it must live as long as the mount).
pub struct KeyServerKeys {
    pub source: Arc<dyn KeySource>,
    pub sessions: Option<csapfs::session::SessionServer>,
}

impl KeyServerArgs {
    /// The key server source, or `None` when `--server` was not given. `backing` is walked
    /// for pre-loading when `--ards` is given.
    pub fn source(
        &self,
        params: NewAssetParams,
        backing: &std::path::Path,
    ) -> Result<Option<KeyServerKeys>> {
        let Some(url) = &self.server else {
            return Ok(None);
        };
        let Some(identity) = &self.identity else {
            bail!("--server needs --identity DIR (the device enrollment directory)");
        };
        let mut tokens = TokenMap::default();
        for spec in &self.token_file {
            let (uid, path) = parse_token_spec(spec)?;
            csapfs::license_source::check_token_file(&path)
                .with_context(|| format!("cannot read token file {}", path.display()))?;
            tokens.insert(uid, path);
        }
        let sessions = match &self.socket {
            Some(path) => {
                let registry = csapfs::session::SessionRegistry::new();
                tokens.use_sessions(registry.clone());
                let server = csapfs::session::serve(path, registry)
                    .with_context(|| format!("cannot serve sessions on {}", path.display()))?;
                tracing::info!(socket = %path.display(), "accepting `csap login` sessions");
                Some(server)
            }
            None => None,
        };
        let mut cfg = LicenseSourceConfig::new(url.clone(), identity.clone());
        cfg.scope = self.scope.clone();
        cfg.tokens = tokens;
        cfg.params = params;
        cfg.rules = self.rules_config(identity)?;
        cfg.backing = Some(backing.to_path_buf());
        let source = KeyServerSource::connect(cfg)
            .with_context(|| format!("key server {url} with identity {}", identity.display()))?;
        tracing::info!(
            device = source.device(),
            "licensing keys from the key server"
        );
        Ok(Some(KeyServerKeys {
            source: Arc::new(source),
            sessions,
        }))
    }
}

impl KeyServerArgs {
    /// The mount's ARDS subscription, when `--ards` was given. Its rule cache lives in the
    /// device directory (`mount-rules.json`), so a restart while ARDS is down enforces the
    /// last rules seen.
    fn rules_config(&self, identity: &std::path::Path) -> Result<Option<RulesConfig>> {
        let Some(url) = &self.ards else {
            return Ok(None);
        };
        let (Some(ca), Some(issuer_pub)) = (&self.ards_ca, &self.issuer_pub) else {
            bail!("--ards needs --ards-ca FILE and --issuer-pub FILE");
        };
        let ca_pem = std::fs::read_to_string(ca)
            .with_context(|| format!("cannot read the ARDS certificate {}", ca.display()))?;
        let hex = std::fs::read_to_string(issuer_pub)
            .with_context(|| format!("cannot read the issuer key {}", issuer_pub.display()))?;
        let key = authz::IssuerPublicKey::from_hex(hex.trim())
            .with_context(|| format!("{} is not an issuer public key", issuer_pub.display()))?;
        Ok(Some(RulesConfig {
            ards_url: url.clone(),
            ards_ca_pem: ca_pem,
            trusted_issuers: vec![(self.issuer.clone(), key)],
            cache_path: identity.join("mount-rules.json"),
            sync_timeout: Duration::from_secs(10),
        }))
    }
}

/// `PATH` (for the current uid) or `UID:PATH`.
fn parse_token_spec(spec: &str) -> Result<(u32, PathBuf)> {
    if let Some((uid, path)) = spec.split_once(':') {
        if let Ok(uid) = uid.parse::<u32>() {
            return Ok((uid, PathBuf::from(path)));
        }
    }
    if spec.is_empty() {
        bail!("--token-file needs a path");
    }
    Ok((nix::unistd::getuid().as_raw(), PathBuf::from(spec)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::path::Path;
    use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
    use std::time::Instant;

    use csapfs::format::{AssetId, Header, KeyId, ScopeId, DEFAULT_CHUNK_SIZE};
    use csapfs::fs::{CacheMode, MountOptions};
    use csapfs::{Asset, ContentKey, Suite};
    use keyserver::wire::RegisterAppRequest;
    use keyserver::{AdminClient, LicenseClient};

    use crate::server::{self, rfc3339_utc, ServerOptions};

    /// Real mounts need /dev/fuse; under CI=true its absence is a failure, not a skip.
    fn fuse_usable() -> bool {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
        {
            Ok(_) => true,
            Err(err) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI=true requires FUSE, but /dev/fuse is not usable: {err}")
            }
            Err(err) => {
                eprintln!("SKIPPED: /dev/fuse is not usable: {err}");
                false
            }
        }
    }

    /// An authorization request for alice on `device`, assets `samples/**`, window from
    /// `start` for an hour.
    fn request(name: &str, digests: &[&str], device: &str, action: &str, start: i64) -> String {
        let apps: Vec<serde_json::Value> = digests
            .iter()
            .map(|d| {
                serde_json::json!({"entityType": "Application",
                "identifier": [{"identifierScope": "blake3", "identifierValue": d}],
                "name": name, "version": "1"})
            })
            .collect();
        serde_json::json!({
            "entityType": "AuthorizationPolicyRequest",
            "identifier": [{"identifierScope": "workflow", "identifierValue": format!("wf-{name}")}],
            "task": {"entityType": "Task", "identifier": [{"identifierScope": "csap", "identifierValue": name}], "name": name},
            "participants": [{"entityType": "Participant", "identifier": [{"identifierScope": "csap", "identifierValue": "alice"}],
                              "structuralCharacteristics": {"structuralType": "person"}}],
            "applications": apps,
            "devices": [{"entityType": "Device", "identifier": [{"identifierScope": "csap", "identifierValue": device}]}],
            "assets": [{"entityType": "Asset", "identifier": [{"identifierScope": "path", "identifierValue": "samples/**"}]}],
            "actions": [action],
            "window": {"start": rfc3339_utc(start), "end": rfc3339_utc(start + 3600)}
        })
        .to_string()
    }

    fn digest_of(path: &str) -> String {
        let real = std::fs::canonicalize(path).unwrap();
        csapfs::license_source::attest::hash_file(std::fs::File::open(real).unwrap()).unwrap()
    }

    /// A bash that opened `file` on fd 3 (the open is attested as bash) and answers each
    /// input line with "ok" or "err <dd's message>" after reading 4 KiB more through that fd.
    struct Reader {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    }

    impl Reader {
        /// A perl that opened `file` and, per input line, re-reads its first 4 KiB (seek to
        /// 0, sysread): after the first read those bytes sit in the page cache of a
        /// `--cache page` mount, so only an invalidation makes the read reach the mount again.
        fn rereading(file: &Path) -> Reader {
            let script = r#"open(my $f, "<", $ARGV[0]) or exit 7; $| = 1; print "opened\n";
while (<STDIN>) { sysseek($f, 0, 0); my $n = sysread($f, my $buf, 4096);
  if (defined $n) { print "ok\n" } else { print "err $!\n" } }"#;
            let cmd = Command::new("/usr/bin/perl");
            Reader::spawn(cmd, &["-e", script], file)
        }

        fn open(file: &Path) -> Reader {
            let script = r#"exec 3< "$1" || exit 7
echo opened
while read -r _; do
  if out=$(dd bs=4096 count=1 of=/dev/null <&3 2>&1); then echo ok; else echo "err $out"; fi
done"#;
            Reader::spawn(Command::new("/bin/bash"), &["-c", script, "reader"], file)
        }

        fn spawn(mut cmd: Command, args: &[&str], file: &Path) -> Reader {
            let mut child = cmd
                .args(args)
                .arg(file)
                .env_remove("LD_LIBRARY_PATH")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            assert_eq!(
                line.trim(),
                "opened",
                "the approved reader could not open {}",
                file.display()
            );
            Reader {
                child,
                stdin,
                stdout,
            }
        }

        fn read(&mut self) -> String {
            writeln!(self.stdin, "r").unwrap();
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            line.trim().to_string()
        }
    }

    impl Drop for Reader {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Runs a one-shot bash command (attested as bash), returning (success, stderr).
    fn bash(cmd: &str) -> (bool, String) {
        let out = Command::new("/bin/bash")
            .args(["-c", cmd])
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The mount as a policy enforcement point, end to end: the embedded server (authz, ARDS,
    /// key server over TLS), an enrolled device, a real FUSE mount subscribed to ARDS as
    /// `mount:<device>`, and approved readers run as separate processes.
    /// - local rules deny create and unlink (approved apps, no create/delete rule) with EACCES
    ///   and without a key server round trip (no new audit record);
    /// - cancelling the authz request makes an already-open handle's next read fail with
    ///   EACCES within 1 s;
    /// - with the key server (and ARDS) stopped, an already-licensed frame still reads and
    ///   opens, an unlicensed one is denied.
    #[test]
    fn mount_enforces_local_rules_revocation_and_outage() {
        if !fuse_usable() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let server = rt
            .block_on(server::start(ServerOptions {
                data_dir: dir.path().join("server"),
                listen: "127.0.0.1:0".parse().unwrap(),
                root_key_hex: None,
            }))
            .unwrap();
        let ks = server.keyserver_url.clone();
        let admin = AdminClient::connect(&ks, &server.admin_dir).unwrap();
        let device = "ws-pep";
        let device_dir = dir.path().join("device");
        rt.block_on(admin.enroll_device(device, &device_dir))
            .unwrap();
        rt.block_on(admin.add_user("alice", "a long passphrase"))
            .unwrap();
        let (bash_digest, rm_digest) = (digest_of("/bin/bash"), digest_of("/bin/rm"));
        let cat_digest = digest_of("/bin/cat");
        let perl_digest = digest_of("/usr/bin/perl");
        let importer = "cd".repeat(32);
        let earlier = keyserver::now() - 60;
        for (digest, name) in [
            (&bash_digest, "bash"),
            (&rm_digest, "rm"),
            (&cat_digest, "cat"),
            (&perl_digest, "perl"),
            (&importer, "importer"),
        ] {
            rt.block_on(admin.register_app(&RegisterAppRequest {
                digest: digest.clone(),
                name: name.into(),
                version: "1".into(),
                vendor: None,
            }))
            .unwrap();
        }
        rt.block_on(admin.create_scope("pep")).unwrap();
        let client = rt
            .block_on(LicenseClient::connect(&ks, &device_dir))
            .unwrap();
        let (token, _) = rt
            .block_on(client.login("alice", "a long passphrase"))
            .unwrap();
        let token_file = dir.path().join("alice.token");
        token.save(&token_file).unwrap();

        // Readers may read; the importer may create (and is not a running program here).
        let view = rt
            .block_on(
                server.authz.submit(
                    request(
                        "view",
                        &[&bash_digest, &rm_digest, &perl_digest],
                        device,
                        "read",
                        earlier,
                    )
                    .as_bytes(),
                ),
            )
            .unwrap();
        let import = rt
            .block_on(
                server
                    .authz
                    .submit(request("import", &[&importer], device, "create", earlier).as_bytes()),
            )
            .unwrap();
        let ks_rules: Vec<String> = server
            .authz
            .live_rules(Some("keyserver"))
            .unwrap()
            .into_iter()
            .map(|r| r.rule.id)
            .collect();
        assert_eq!(ks_rules.len(), 2, "{view:?} {import:?}");
        assert!(rt.block_on(server.wait_for_rules(&ks_rules, Duration::from_secs(20))));

        // Two frames, encrypted under create licenses (as `csap import` does).
        let backing = dir.path().join("backing");
        std::fs::create_dir_all(backing.join("samples")).unwrap();
        let frame: Vec<u8> = (0..1_048_576u32).map(|k| (k * 31) as u8).collect();
        for name in ["f1.raw", "f2.raw"] {
            let path = format!("samples/{name}");
            let license = rt
                .block_on(client.create(&token, &importer, &path, "pep"))
                .unwrap();
            let grant = &license.grants[0];
            let header = Header::new(
                Suite::Gcm,
                DEFAULT_CHUNK_SIZE,
                AssetId(grant.asset_id),
                KeyId {
                    scope: ScopeId(grant.scope_id),
                    version: grant.grant.key_version,
                },
            )
            .unwrap();
            let key = ContentKey::from_bytes(*grant.key.as_bytes());
            let file = std::fs::File::create_new(backing.join(&path)).unwrap();
            let mut asset = Asset::create(file, header, &key).unwrap();
            asset.write_at(0, &frame).unwrap();
            asset.sync().unwrap();
        }

        // The mount, built from the CLI flags exactly as `csap mount` does.
        let args = KeyServerArgs {
            server: Some(ks.clone()),
            identity: Some(device_dir.clone()),
            scope: Some("pep".into()),
            token_file: vec![token_file.display().to_string()],
            ards: Some(server.ards_url.clone()),
            ards_ca: Some(server.ards_cert.clone()),
            issuer_pub: Some(server.issuer_pub.clone()),
            issuer: "authz".into(),
            socket: None,
        };
        let source = args
            .source(NewAssetParams::default(), &backing)
            .unwrap()
            .unwrap()
            .source;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let options = MountOptions {
            cache: CacheMode::Direct,
            readahead_kb: 0,
            ..MountOptions::default()
        };
        let mounted = csapfs::fs::mount(&backing, &mnt, source, &options).unwrap();
        let (f1, f2) = (mnt.join("samples/f1.raw"), mnt.join("samples/f2.raw"));
        // The same volume through the page cache, where reads may never reach the mount:
        // revocation must drop the cached plaintext too.
        let mnt_page = dir.path().join("mnt-page");
        std::fs::create_dir(&mnt_page).unwrap();
        let page_source = args
            .source(NewAssetParams::default(), &backing)
            .unwrap()
            .unwrap()
            .source;
        let page_options = MountOptions {
            cache: CacheMode::Page,
            ..options.clone()
        };
        let mounted_page =
            csapfs::fs::mount(&backing, &mnt_page, page_source, &page_options).unwrap();

        // Local rules: an approved app without a create/delete rule is refused at once.
        let last_audit = || {
            rt.block_on(admin.audit_tail(50))
                .unwrap()
                .iter()
                .filter(|r| r.decision != "admin")
                .map(|r| r.id)
                .max()
                .unwrap_or(0)
        };
        let before = last_audit();
        let new_file = mnt.join("samples/new.raw");
        let (ok, err) = bash(&format!(": > '{}'", new_file.display()));
        assert!(!ok && err.contains("Permission denied"), "create: {err}");
        assert!(
            !backing.join("samples/new.raw").exists(),
            "denied create left a file"
        );
        let out = Command::new("/bin/rm")
            .arg(&f2)
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Permission denied"),
            "unlink: {err}"
        );
        assert!(backing.join("samples/f2.raw").exists());
        // Rename (delete + create) and truncate (write) by an app that may only read.
        let perl = |code: &str| {
            let out = Command::new("/usr/bin/perl")
                .args(["-e", code])
                .arg(&f2)
                .arg(mnt.join("samples/moved.raw"))
                .env_remove("LD_LIBRARY_PATH")
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (ok, err) = perl(r#"rename($ARGV[0], $ARGV[1]) or die "$!\n""#);
        assert!(!ok && err.contains("Permission denied"), "rename: {err}");
        let (ok, err) = perl(r#"truncate($ARGV[0], 10) or die "$!\n""#);
        assert!(!ok && err.contains("Permission denied"), "truncate: {err}");
        assert!(backing.join("samples/f2.raw").exists());
        assert!(!backing.join("samples/moved.raw").exists());
        assert_eq!(
            last_audit(),
            before,
            "local denials must not reach the key server"
        );

        // Revocation: an open handle fails its next read within 1 s of the cancel, on both
        // mounts (the page-cache one has the next pages cached by readahead already).
        let mut reader = Reader::open(&f1);
        let mut page_reader = Reader::rereading(&mnt_page.join("samples/f1.raw"));
        assert_eq!(reader.read(), "ok");
        assert_eq!(page_reader.read(), "ok");
        let cancelled = Instant::now();
        rt.block_on(server.authz.cancel(&view.id)).unwrap();
        for (what, reader) in [("direct", &mut reader), ("page cache", &mut page_reader)] {
            let answer = loop {
                let answer = reader.read();
                if answer != "ok" || cancelled.elapsed() > Duration::from_secs(5) {
                    break answer;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let took = cancelled.elapsed();
            eprintln!("revocation reached the open {what} handle in {took:?}");
            assert!(
                answer.contains("Permission denied"),
                "{what}: after revocation: {answer:?}"
            );
            assert!(
                took < Duration::from_secs(1),
                "{what}: revocation took {took:?}"
            );
        }
        drop((reader, page_reader));
        mounted_page.unmount().unwrap();
        let (ok, err) = bash(&format!("exec 3< '{}'", f1.display()));
        assert!(
            !ok && err.contains("Permission denied"),
            "open after revocation: {err}"
        );

        // Outage: re-grant, license f1, then stop every service.
        let view2 = rt
            .block_on(
                server
                    .authz
                    .submit(request("view2", &[&bash_digest], device, "read", earlier).as_bytes()),
            )
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut reader = loop {
            // Until the mount and the key server both have the new rule.
            let (ok, _) = bash(&format!("exec 3< '{}'", f1.display()));
            if ok {
                break Reader::open(&f1);
            }
            assert!(
                Instant::now() < deadline,
                "new rule {view2:?} never took effect"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(reader.read(), "ok");

        // Pre-loading: a rule for `cat` released ahead of its window (opens in 2 s); when the
        // window opens the mount licenses the covered assets itself, so cat's first open of
        // f2 makes no key server round trip.
        let soon = keyserver::now() + 2;
        rt.block_on(
            server
                .authz
                .submit(request("pre", &[&cat_digest], device, "read", soon).as_bytes()),
        )
        .unwrap();
        // Before the window opens, cat is not yet allowed.
        let early = Command::new("/bin/cat")
            .arg(&f2)
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .unwrap();
        assert!(
            !early.status.success()
                && String::from_utf8_lossy(&early.stderr).contains("Permission denied"),
            "cat before its rule's window: {}",
            String::from_utf8_lossy(&early.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !rt
            .block_on(admin.audit_tail(50))
            .unwrap()
            .iter()
            .any(|r| r.decision == "grant" && r.app_digest.as_deref() == Some(cat_digest.as_str()))
        {
            assert!(
                Instant::now() < deadline,
                "the mount never pre-loaded cat's licenses"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Let the batch land in the mount's cache (the grant is audited before it answers).
        std::thread::sleep(Duration::from_millis(300));
        let before = last_audit();
        let out = Command::new("/bin/cat")
            .arg(&f2)
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cat of a pre-loaded frame: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, frame);
        assert_eq!(
            last_audit(),
            before,
            "first open of a pre-loaded asset made a round trip"
        );
        // The same approved binary with a library injected through the environment is not the
        // approved application: denied, although its license is cached.
        let injected = Command::new("/bin/cat")
            .arg(&f2)
            .env_remove("LD_LIBRARY_PATH")
            .env("LD_PRELOAD", "/lib/x86_64-linux-gnu/libm.so.6")
            .output()
            .unwrap();
        assert!(
            !injected.status.success() && injected.stdout.is_empty(),
            "LD_PRELOAD injection into an approved app was allowed"
        );
        assert!(
            String::from_utf8_lossy(&injected.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&injected.stderr)
        );

        rt.block_on(server.shutdown());
        assert_eq!(reader.read(), "ok", "a held license must keep working");
        let (ok, err) = bash(&format!(
            "exec 3< '{}' && dd bs=4096 count=1 of=/dev/null <&3",
            f1.display()
        ));
        assert!(
            ok,
            "re-open of a licensed frame while the key server is down: {err}"
        );
        let (ok, err) = bash(&format!("exec 3< '{}'", f2.display()));
        assert!(
            !ok && err.contains("Permission denied"),
            "unlicensed frame while down: {err}"
        );
        drop(reader);
        mounted.unmount().unwrap();
    }

    #[test]
    fn token_specs() {
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(parse_token_spec("/t").unwrap(), (me, PathBuf::from("/t")));
        assert_eq!(
            parse_token_spec("1001:/srv/t").unwrap(),
            (1001, PathBuf::from("/srv/t"))
        );
        // A path that merely contains a colon stays a path.
        assert_eq!(parse_token_spec("a:b").unwrap(), (me, PathBuf::from("a:b")));
        assert!(parse_token_spec("").is_err());
    }
}
