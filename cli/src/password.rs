//! Reading a password: from the terminal without echo, or the first line of standard input
//! when that is a pipe or a file (`csap login < password-file`, scripts, tests).

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

/// Prompts on the terminal with echo off when standard input is one; otherwise reads its first
/// line. Either way an empty password is refused rather than sent.
pub fn read_password(prompt: &str) -> Result<Zeroizing<String>> {
    let password = if std::io::stdin().is_terminal() {
        // rpassword talks to the controlling terminal (/dev/tty) and restores echo afterwards,
        // also when reading fails.
        Zeroizing::new(
            rpassword::prompt_password(format!("{prompt}: "))
                .context("cannot read the password from the terminal")?,
        )
    } else {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string())
    };
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}
