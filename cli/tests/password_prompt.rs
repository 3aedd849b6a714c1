//! Password prompts on a terminal do not echo what is typed. The terminal is a pty made by
//! script(1) (util-linux): skipped with a message where it is missing, a failure when CI=true.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CSAP: &str = env!("CARGO_BIN_EXE_csap");

fn have_script() -> bool {
    if Command::new("script").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "script(1) is missing (apt-get install bsdutils)"
    );
    eprintln!("skipped: script(1) is missing (apt-get install bsdutils)");
    false
}

/// Runs `command` on a pty, types `typed` once `prompt` has appeared, and returns everything
/// the terminal showed until the command ended.
fn on_terminal(command: &str, prompt: &str, typed: &str) -> String {
    let mut child: Child = Command::new("script")
        .args(["-q", "-e", "-c", command, "/dev/null"])
        .env_remove("CSAP_SERVER")
        .env_remove("CSAP_IDENTITY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut shown = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stdin = child.stdin.take().unwrap();
    let mut typed_yet = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out; the terminal showed: {}",
            String::from_utf8_lossy(&shown)
        );
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(chunk) => shown.extend(chunk),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        // Typed only once the program waits for it: echo is decided when the pty receives it.
        if !typed_yet && String::from_utf8_lossy(&shown).contains(prompt) {
            std::thread::sleep(Duration::from_millis(200));
            stdin.write_all(typed.as_bytes()).unwrap();
            stdin.flush().unwrap();
            typed_yet = true;
        }
    }
    drop(stdin);
    let _ = child.wait();
    assert!(
        typed_yet,
        "no prompt {prompt:?} in: {}",
        String::from_utf8_lossy(&shown)
    );
    String::from_utf8_lossy(&shown).into_owned()
}

#[test]
fn a_terminal_echoes_by_default() {
    // The control: without csap's prompt, this pty shows what is typed, so the test below
    // would see an echoed password.
    if !have_script() {
        return;
    }
    let shown = on_terminal("echo ready; head -n1 >/dev/null", "ready", "visible-text\r");
    assert!(shown.contains("visible-text"), "{shown}");
}

#[test]
fn user_add_reads_the_password_without_echo() {
    if !have_script() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let command = format!(
        "{CSAP} user add bob --server https://127.0.0.1:9 --identity {}",
        dir.path().join("no-identity").display()
    );
    let shown = on_terminal(&command, "password for bob", "hunter2-typed\r");
    assert!(
        !shown.contains("hunter2-typed"),
        "the password was echoed: {shown}"
    );
    // It was read: what failed is the connection, after it.
    assert!(
        !shown.contains("empty password") && !shown.contains("cannot read the password"),
        "{shown}"
    );
    assert!(shown.contains("csap: "), "no error line: {shown}");
}
