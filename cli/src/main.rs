//! `csap`: the one command-line tool for admins, artists and render nodes.
//!
//! Each command group lives in its own module; this file only parses arguments, sets up
//! logging and dispatches. Errors are printed as one sentence (no backtrace) with a non-zero exit.

mod ards;
mod asset;
mod atomic;
mod authz;
mod catalog;
mod config;
mod daemon_files;
mod directory;
mod errors;
mod fstab;
mod hardening;
mod import;
mod keyserver;
mod keysource;
mod manuals;
mod mount;
mod mount_observer;
mod mount_preflight;
mod output;
mod password;
mod quickstart;
mod replicas;
mod request_new;
mod root_key;
mod server;
mod status;
mod store_args;
mod store_location;

use std::io::IsTerminal;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "csap",
    version,
    about = "MovieLabs CSAP: per-asset encryption, licensed keys, rules-driven access"
)]
struct Cli {
    /// Log lines as text, or as one JSON object per line (for log collectors).
    #[arg(long, global = true, value_enum, env = "CSAP_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// The `--log-format` value, for a child process run with the same.
    fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Logs go to stderr, filtered by `CSAP_LOG` (default `warn`).
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("CSAP_LOG").unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // One object per line: time, level, target, message and the event's fields.
        LogFormat::Json => builder.json().with_current_span(false).init(),
        // Colour codes only for a person at a terminal: a log file or the journal gets text.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

// One value per run: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Encrypt, decrypt and inspect single asset files offline (break-glass and tests).
    #[command(subcommand)]
    Asset(asset::AssetCommand),
    /// Mount a backing directory of encrypted assets; the mountpoint shows plaintext.
    Mount(Box<mount::MountArgs>),
    /// Unmount a `csap mount` (it flushes open files and exits).
    Umount(mount::UmountArgs),
    /// Encrypt a directory tree into a backing store (licensed per file, resumable).
    Import(import::ImportArgs),
    /// Run the authorization service (policy requests -> signed rules for ARDS).
    #[command(subcommand)]
    Authz(authz::AuthzCommand),
    /// Submit, change, cancel or show authorization policy requests.
    Request(authz::RequestArgs),
    /// Organizations taking part (vendors), and what is delegated to each.
    Org(catalog::OrgArgs),
    /// Global security policies (block participants, apps, devices, scopes).
    Policy(authz::PolicyArgs),
    /// List the signed rules authz has issued.
    Rules(authz::RulesArgs),
    /// Run the Authorization Rules Distribution Service (rules -> PEPs, just in time).
    #[command(subcommand)]
    Ards(ards::ArdsCommand),
    /// Run authz, ARDS and the key server in one process (the embedded default).
    Server(server::ServerArgs),
    /// A self-contained demo: server, device, user, app, encrypted samples, a mount, an
    /// allowed read and a denied one.
    Quickstart(quickstart::QuickstartArgs),
    /// Run the key server on its own.
    #[command(subcommand)]
    Keyserver(keyserver::KeyserverCommand),
    /// Enroll, revoke and list devices (client certificates from the key server's CA).
    #[command(subcommand)]
    Device(keyserver::DeviceCommand),
    /// Workflow-management principals: who may submit authorization requests, for what.
    #[command(subcommand)]
    Workflow(keyserver::WorkflowCommand),
    /// Auditor principals: read the audit trail, rules and policies; change nothing.
    #[command(subcommand)]
    Auditor(keyserver::RoleCommand),
    /// Service principals: authz or ARDS running as their own processes.
    #[command(subcommand)]
    Service(keyserver::RoleCommand),
    /// Add and disable users.
    #[command(subcommand)]
    User(keyserver::UserCommand),
    /// Organizations' OpenID Connect providers: their people log in with `csap login --oidc`.
    #[command(subcommand)]
    Idp(keyserver::IdpCommand),
    /// Log in (password typed without echo, or the first line of a piped stdin; with --oidc at
    /// your organization's provider in a browser), through the local mount or with the device
    /// identity, and store a short-lived user token.
    Login(keyserver::LoginArgs),
    /// Register and revoke application builds (BLAKE3 digests of executables).
    #[command(subcommand)]
    App(keyserver::AppCommand),
    /// Create and list key scopes.
    #[command(subcommand)]
    Scope(keyserver::ScopeCommand),
    /// Rotate and revoke scope keys; issue license files to devices.
    #[command(subcommand)]
    Keys(keyserver::KeysCommand),
    /// Read the key server's audit trail.
    #[command(subcommand)]
    Audit(keyserver::AuditCommand),
    /// Is the key server reachable, this identity's certificate, the login session, and the
    /// csap mounts on this host with their rules and licenses (non-zero exit: server down).
    Status(status::StatusArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(manuals::CompletionsArgs),
    /// Print the man page, or write every page (csap-mount.1, ...) into a directory.
    Man(manuals::ManArgs),
}

fn main() -> std::process::ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.first().is_some_and(|argv0| fstab::is_helper(argv0)) {
        let json = std::env::var("CSAP_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
        init_logging(if json {
            LogFormat::Json
        } else {
            LogFormat::Text
        });
        return exit_with(fstab::run(&argv[1..]), fstab::HELPER_NAME);
    }
    let argv = match config::apply(Cli::command(), argv) {
        Ok(argv) => argv,
        Err(e) => return exit_with(Err(e), "csap"),
    };
    let cli = Cli::parse_from(argv);
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Asset(cmd) => asset::run(cmd),
        Command::Mount(args) => mount::run_mount(*args),
        Command::Umount(args) => mount::run_umount(args),
        Command::Import(args) => import::run(args),
        Command::Authz(cmd) => authz::run_authz(cmd),
        Command::Request(args) => authz::run_request(args),
        Command::Org(args) => catalog::run_org(args),
        Command::Policy(args) => authz::run_policy(args),
        Command::Rules(args) => authz::run_rules(args),
        Command::Ards(cmd) => ards::run(cmd),
        Command::Server(args) => server::run(args, cli.log_format.name()),
        Command::Quickstart(args) => quickstart::run(args),
        Command::Keyserver(cmd) => keyserver::run_keyserver(cmd),
        Command::Device(cmd) => keyserver::run_device(cmd),
        Command::User(cmd) => keyserver::run_user(cmd),
        Command::Idp(cmd) => keyserver::run_idp(cmd),
        Command::Workflow(cmd) => keyserver::run_workflow(cmd),
        Command::Auditor(cmd) => keyserver::run_role("auditor", cmd),
        Command::Service(cmd) => keyserver::run_role("service", cmd),
        Command::Login(args) => keyserver::run_login(args).map_err(errors::login_hint),
        Command::App(cmd) => keyserver::run_app(cmd),
        Command::Scope(cmd) => keyserver::run_scope(cmd),
        Command::Keys(cmd) => keyserver::run_keys(cmd),
        Command::Audit(cmd) => keyserver::run_audit(cmd),
        Command::Status(args) => status::run(args),
        Command::Completions(args) => manuals::completions(args, Cli::command()),
        Command::Man(args) => manuals::man(args, Cli::command()),
    };
    exit_with(result, "csap")
}

/// Prints a failure as one sentence, each cause once, prefixed by the program's name.
fn exit_with(result: anyhow::Result<()>, program: &str) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{program}: {}", errors::sentence(&err));
            std::process::ExitCode::FAILURE
        }
    }
}
