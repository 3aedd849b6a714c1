//! `csap idp add` and `csap login --oidc` as real processes against a real `csap server` and a
//! real OpenID Connect provider (`oidc-provider`, `csap_testkit::oidc`): the CLI prints the
//! provider's authorization URL, a "browser" logs in there, the provider sends it back to the
//! CLI's loopback listener, and the key server trades the ID token for a token of the
//! organization's participant — audited as theirs. An artist without the device key does the
//! same through a real mount's session socket, and then reads what a rule grants them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};

use csap_testkit::oidc::{browser_login, oidc_provider, OidcClient};
use csap_testkit::{Request, Setup, System};
use csapfs::fs::MountOptions;

const CSAP: &str = env!("CARGO_BIN_EXE_csap");
const DEVICE: &str = "ws-vendor";

fn csap(args: &[&str]) -> Command {
    let mut cmd = Command::new(CSAP);
    cmd.args(args);
    for var in [
        "CSAP_SERVER",
        "CSAP_IDENTITY",
        "XDG_RUNTIME_DIR",
        "CSAP_MOUNT_SOCKET",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `GET url` over plain HTTP (the CLI's loopback listener): the status line.
fn get(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = TcpStream::connect(host).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or_default().to_string()
}

/// The provider's authorization URL `csap login --oidc` prints on standard error.
fn authorization_url(stderr: &mut impl BufRead) -> String {
    for line in stderr.lines() {
        let line = line.unwrap();
        if let Some(url) = line.trim().strip_prefix("http") {
            return format!("http{url}");
        }
        assert!(!line.contains("error"), "{line}");
    }
    panic!("csap login printed no authorization URL");
}

fn csap_cli() -> OidcClient {
    OidcClient {
        client_id: "csap-cli".into(),
        redirect_uris: vec!["http://127.0.0.1/callback".into()],
    }
}

#[test]
fn a_vendor_logs_in_at_its_own_provider_and_the_key_server_names_them() {
    let client = OidcClient {
        client_id: "csap-cli".into(),
        redirect_uris: vec!["http://127.0.0.1/callback".into()],
    };
    let Some(provider) = oidc_provider(&[client], 600) else {
        return;
    };
    let system = System::start(Setup::one_device(CSAP, DEVICE)).unwrap();
    let server = system.server();
    let admin = server.admin_dir.to_str().unwrap().to_string();
    let url = server.keyserver_url.clone();

    let added = ok(csap(&[
        "idp",
        "add",
        "acme-post",
        "--issuer",
        &provider.issuer,
        "--client-id",
        "csap-cli",
        "--server",
        &url,
        "--identity",
        &admin,
    ])
    .output()
    .unwrap());
    assert!(added.contains("acme-post logs in at"), "{added}");
    let listed = ok(
        csap(&["idp", "list", "--server", &url, "--identity", &admin])
            .output()
            .unwrap(),
    );
    assert!(
        listed.contains("acme-post") && listed.contains("csap-cli"),
        "{listed}"
    );

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let device_dir = system.device_dir(DEVICE);
    let mut login = csap(&["login", "--oidc", "acme-post", "--server", &url])
        .arg("--identity")
        .arg(&device_dir)
        .arg("--token-file")
        .arg(&token_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The URL to open is the line after the prompt on standard error.
    let mut stderr = BufReader::new(login.stderr.take().unwrap());
    let url_to_open = authorization_url(&mut stderr);
    assert!(
        url_to_open.contains("code_challenge_method=S256")
            && url_to_open.contains("nonce=")
            && url_to_open.contains("state="),
        "{url_to_open}"
    );
    let back = browser_login(&url_to_open, "alice").unwrap();
    assert!(back.starts_with("http://127.0.0.1:"), "{back}");
    assert!(get(&back).contains("200"), "the CLI answers the browser");
    let out = login.wait_with_output().unwrap();
    let stdout = ok(out);
    assert!(
        stdout.contains("logged in as alice@acme-post (acme-post)"),
        "{stdout}"
    );
    assert!(std::fs::metadata(&token_file).unwrap().len() > 0);

    let audit = system.audit_tail(200).unwrap();
    assert!(
        audit.iter().any(|r| r.action == "login"
            && r.decision == "grant"
            && r.user.as_deref() == Some("alice@acme-post")
            && r.device.as_deref() == Some(DEVICE)),
        "{audit:#?}"
    );

    // A browser sent back with another login's state gets nothing: the CLI refuses it.
    let mut second = csap(&["login", "--oidc", "acme-post", "--server", &url])
        .arg("--identity")
        .arg(&device_dir)
        .arg("--token-file")
        .arg(dir.path().join("token2"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(second.stderr.take().unwrap());
    let next = authorization_url(&mut stderr);
    let port = next
        .split("redirect_uri=http%3A%2F%2F127.0.0.1%3A")
        .nth(1)
        .and_then(|r| r.split('%').next())
        .unwrap()
        .to_string();
    get(&format!(
        "http://127.0.0.1:{port}/callback?code=stolen&state=not-this-one"
    ));
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(!second.wait().unwrap().success());
    assert!(rest.contains("state differs"), "{rest}");
    assert!(!dir.path().join("token2").exists());
}

/// Issue 18: an artist who cannot read the device key logs in at their organization's provider
/// through the mount's session socket. `csap login --oidc` without `--identity` asks the mount
/// where acme-post logs in, runs the browser flow itself and hands the ID token over; the mount
/// has the key server trade it (with the device identity, for the uid the kernel reports) and
/// keeps the session: with no token file at the mount, a file a rule grants `alice@acme-post`
/// reads.
#[test]
fn an_artist_logs_in_at_its_provider_through_the_mount() {
    let Some(provider) = oidc_provider(&[csap_cli()], 600) else {
        return;
    };
    if !csap_testkit::fuse::fuse_usable() {
        return;
    }
    let system = System::start(Setup::one_device(CSAP, DEVICE)).unwrap();
    system
        .rt
        .block_on(system.admin.put_identity_provider(
            "acme-post",
            &provider.issuer,
            "csap-cli",
            false,
        ))
        .unwrap();
    let cat = csap_testkit::digest_of("/bin/cat").unwrap();
    let importer = "cd".repeat(32);
    system.register(&cat, "cat").unwrap();
    system.register(&importer, "importer").unwrap();
    let now = keyserver::now().unwrap();
    let (import_apps, view_apps) = ([importer.as_str()], [cat.as_str()]);
    let request = |name, user, app, action| Request {
        name,
        user,
        apps: app,
        devices: &[DEVICE],
        assets: "show/**",
        actions: action,
        window: (now - 60, now + 3600),
    };
    // The import is the local user alice's; the view, below, the organization's participant's.
    let imports = system
        .submit(&request("import", "alice", &import_apps, &["create"]))
        .unwrap();
    system.wait_rules(&imports, None).unwrap();
    let backing = system.dir.path().join("backing");
    system
        .importer(DEVICE, &importer)
        .unwrap()
        .import(&system.rt, &backing, "show/a.txt", &[b"hello"])
        .unwrap();

    // A mount with no token file of its own: the session socket is the only way in.
    let socket = system.dir.path().join("run/mount.sock");
    let mut flags = system.mount_flags(DEVICE);
    flags.token_file.clear();
    flags.socket = Some(socket.clone());
    let mnt = system.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = system
        .mount(&backing, &mnt, &flags, &MountOptions::default())
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let mut login = csap(&["login", "--oidc", "acme-post"])
        .arg("--socket")
        .arg(&socket)
        .arg("--token-file")
        .arg(&token_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(login.stderr.take().unwrap());
    let url = authorization_url(&mut stderr);
    assert!(url.starts_with(&provider.issuer), "{url}");
    let back = browser_login(&url, "alice").unwrap();
    assert!(get(&back).contains("200"), "the CLI answers the browser");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let out = login.wait_with_output().unwrap();
    assert!(out.status.success(), "csap login: {rest}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let me = nix::unistd::getuid().as_raw();
    assert!(
        stdout.contains("logged in as alice@acme-post (acme-post) through the mount")
            && stdout.contains(&format!("for uid {me}")),
        "{stdout}"
    );
    let token = keyserver::UserToken::load(&token_file).unwrap();
    let claims = keyserver::token::read_claims_unverified(token.as_str()).unwrap();
    assert_eq!(
        (claims.user.as_str(), claims.device.as_str(), claims.uid),
        ("alice@acme-post", DEVICE, me)
    );

    // The participant exists since its first login: a request may name it now.
    let views = system
        .submit(&request("view", "alice@acme-post", &view_apps, &["read"]))
        .unwrap();
    system.wait_rules(&views, Some(DEVICE)).unwrap();
    let read = csap_testkit::run({
        let mut c = Command::new("/bin/cat");
        c.arg(mnt.join("show/a.txt"));
        c
    });
    assert!(
        read.status.success(),
        "read after the login: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(read.stdout, b"hello");
    let audit = system.audit_tail(200).unwrap();
    assert!(
        audit.iter().any(|r| r.action == "login"
            && r.decision == "grant"
            && r.user.as_deref() == Some("alice@acme-post")
            && r.device.as_deref() == Some(DEVICE)),
        "{audit:#?}"
    );

    // The mount says who logged in, and never what the ID token (a JWT, `eyJ…`) was.
    let log = std::fs::read_to_string(mount.log()).unwrap();
    assert!(
        log.contains("logged in through the mount at the organization's provider"),
        "{log}"
    );
    assert!(!log.contains("eyJ"), "a JWT in the mount's log:\n{log}");

    // An organization the key server does not trust is refused by name, before any browser.
    let refused = csap(&["login", "--oidc", "nobody-post"])
        .arg("--socket")
        .arg(&socket)
        .arg("--token-file")
        .arg(dir.path().join("token2"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(said.contains("unknown_organization"), "{said}");
    mount.unmount().unwrap();
}
