//! `csap-view`: a tiny frame viewer used by `csap quickstart` as the approved application.
//!
//! It opens one file, prints its size and first bytes, and exits non-zero with the OS error
//! (for example "Permission denied") when the mount refuses it. Its BLAKE3 digest is what an
//! admin registers; any other program reading the same file is refused by the mount.

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: csap-view FILE");
        return ExitCode::from(2);
    };
    let shown = std::path::Path::new(&path).display().to_string();
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("csap-view: cannot open {shown}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut data = Vec::new();
    if let Err(e) = file.read_to_end(&mut data) {
        eprintln!("csap-view: cannot read {shown}: {e}");
        return ExitCode::FAILURE;
    }
    let head = &data[..data.len().min(16)];
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = head
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    println!(
        "{shown}: {} bytes; first bytes {} |{text}|",
        data.len(),
        hex.join(" ")
    );
    ExitCode::SUCCESS
}
