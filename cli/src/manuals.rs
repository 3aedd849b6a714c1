//! `csap completions SHELL` and `csap man [DIR]`: shell completion scripts and roff man pages,
//! both generated from the clap definition so they never drift from `--help`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use clap_complete::{Generator, Shell};

#[derive(Args)]
#[command(after_help = "\
Install, for example:
  csap completions bash > /etc/bash_completion.d/csap
  csap completions zsh > /usr/local/share/zsh/site-functions/_csap
  csap completions fish > ~/.config/fish/completions/csap.fish")]
pub struct CompletionsArgs {
    /// The shell to write a completion script for (to standard output).
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Args)]
#[command(after_help = "\
Without DIR the page of `csap` itself goes to standard output (`csap man | man -l -`). With DIR: \
csap.1 and one page per subcommand (csap-mount.1, csap-user-add.1, ...), e.g. \
`csap man /usr/local/share/man/man1 && mandb`.")]
pub struct ManArgs {
    /// Directory to write every page into (created if missing).
    pub dir: Option<PathBuf>,
}

/// Writes the completion script for `shell` of the command `cmd` (named as it is invoked).
pub fn completions(args: CompletionsArgs, mut cmd: clap::Command) -> Result<()> {
    let name = cmd.get_name().to_string();
    // What clap_complete::generate does, but a closed pipe (`| head`) is an error, not a panic.
    cmd.set_bin_name(name);
    cmd.build();
    args.shell
        .try_generate(&cmd, &mut std::io::stdout().lock())
        .context("cannot write the completion script")
}

/// Writes the man page of `cmd` to standard output, or every page of its tree into a directory.
pub fn man(args: ManArgs, cmd: clap::Command) -> Result<()> {
    match args.dir {
        None => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .context("cannot write the man page"),
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            // generate_to walks the subcommands itself (csap-mount.1, csap-user-add.1, ...).
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))
        }
    }
}
