//! `csap completions` and `csap man` are generated from the clap definition; the man pages
//! must parse as roff (groff, from groff-base: skipped with a message where it is missing, a
//! failure when CI=true).

use std::process::Command;

const CSAP: &str = env!("CARGO_BIN_EXE_csap");

fn csap_stdout(args: &[&str]) -> String {
    let out = Command::new(CSAP).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "csap {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completion_scripts_know_the_subcommands() {
    let bash = csap_stdout(&["completions", "bash"]);
    assert!(
        bash.contains("complete -F") && bash.contains("mount"),
        "{bash}"
    );
    let zsh = csap_stdout(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef csap") && zsh.contains("umount"));
    let fish = csap_stdout(&["completions", "fish"]);
    assert!(fish.contains("complete -c csap") && fish.contains("quickstart"));
}

#[test]
fn man_pages_are_written_per_subcommand_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    csap_stdout(&["man", pages.to_str().unwrap()]);
    let mount_page = pages.join("csap-mount.1");
    let text = std::fs::read_to_string(&mount_page).unwrap();
    assert!(
        text.contains(".TH") && text.contains("key\\-file"),
        "{text}"
    );
    assert!(pages.join("csap-user-add.1").exists());
    assert!(csap_stdout(&["man"]).contains(".TH csap"));

    if Command::new("groff").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "groff is missing (apt-get install groff-base)"
        );
        eprintln!("skipped the roff check: groff is missing (apt-get install groff-base)");
        return;
    }
    // -ww: every warning; -z: parse and format, write nothing.
    let out = Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .arg(&mount_page)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "groff: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
