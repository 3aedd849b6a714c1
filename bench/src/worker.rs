//! The application side of the end-to-end benchmarks: `bench __worker …` runs in a child
//! process (a registered copy of this binary, started with a clean loader environment) and does
//! the opens and reads whose cost is measured, so the mount attests a real, separate process.
//!
//! Protocol: results go to stdout as text lines; errors go to stderr with a non-zero exit (the
//! harness fails the run rather than report figures from failed opens).
//! - `opens --rounds R --per-round M PATH…`: one untimed open of each path (primes the
//!   license cache), then R rounds of M timed open+close per path, the paths interleaved round
//!   by round so load drift hits all alike. Prints one line of nanosecond samples per path.
//! - `cold --pace-ms P LIST`: one timed open+close of each path listed in the file LIST,
//!   sleeping P ms before each (keeps the key server's per-device rate limit out of the
//!   figure). Prints one line of samples.
//! - `read --index W --stride N --buf-kib K LIST`: prints `ready`, waits for a line on stdin,
//!   then reads every N-th frame of LIST from the W-th (open, read to EOF in K KiB reads,
//!   check the frame number in its first 8 bytes, close) and prints `done BYTES`.
//! - `hold PATH`: opens PATH, reads its first 4 KiB and prints `opened`; at a line on stdin,
//!   re-reads those 4 KiB through the same handle every millisecond until a read fails with
//!   `EACCES` (prints `refused`) or 5 s pass (prints `still-open`).

#![forbid(unsafe_code)]

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const ARG: &str = "__worker";

pub fn main(args: &[String]) -> Result<()> {
    let Some((cmd, rest)) = args.split_first() else {
        bail!("__worker needs a command: opens, cold, read or hold");
    };
    let mut opts = std::collections::HashMap::new();
    let mut positional = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--") {
            let v = it
                .next()
                .with_context(|| format!("--{name} needs a value"))?;
            opts.insert(name.to_string(), v.clone());
        } else {
            positional.push(PathBuf::from(a));
        }
    }
    let num = |name: &str| -> Result<u64> {
        opts.get(name)
            .with_context(|| format!("--{name} missing"))?
            .parse()
            .with_context(|| format!("--{name} is not a number"))
    };
    match cmd.as_str() {
        "opens" => opens(&positional, num("rounds")?, num("per-round")?),
        "cold" => cold(&list(&positional)?, num("pace-ms")?),
        "read" => read(
            &list(&positional)?,
            num("index")? as usize,
            num("stride")? as usize,
            num("buf-kib")? as usize,
        ),
        "hold" => hold(&positional),
        other => bail!("unknown worker command {other:?}"),
    }
}

fn list(positional: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let [file] = positional else {
        bail!("give exactly one list file");
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the list {}", file.display()))?;
    Ok(text.lines().map(PathBuf::from).collect())
}

/// One open+close; the nanoseconds it took.
fn open_close(path: &PathBuf) -> Result<u64> {
    let t = Instant::now();
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    drop(f);
    Ok(t.elapsed().as_nanos() as u64)
}

fn print_samples(out: &mut impl Write, samples: &[u64]) -> Result<()> {
    let line: Vec<String> = samples.iter().map(|s| s.to_string()).collect();
    writeln!(out, "{}", line.join(" "))?;
    Ok(())
}

fn opens(paths: &[PathBuf], rounds: u64, per_round: u64) -> Result<()> {
    for p in paths {
        open_close(p)?;
    }
    let mut samples: Vec<Vec<u64>> =
        vec![Vec::with_capacity((rounds * per_round) as usize); paths.len()];
    for _ in 0..rounds {
        for (p, s) in paths.iter().zip(samples.iter_mut()) {
            for _ in 0..per_round {
                s.push(open_close(p)?);
            }
        }
    }
    let mut out = std::io::stdout().lock();
    for s in &samples {
        print_samples(&mut out, s)?;
    }
    Ok(())
}

fn cold(paths: &[PathBuf], pace_ms: u64) -> Result<()> {
    let mut samples = Vec::with_capacity(paths.len());
    for p in paths {
        std::thread::sleep(Duration::from_millis(pace_ms));
        samples.push(open_close(p)?);
    }
    print_samples(&mut std::io::stdout().lock(), &samples)
}

fn read(frames: &[PathBuf], index: usize, stride: usize, buf_kib: usize) -> Result<()> {
    if stride == 0 || index >= stride || buf_kib == 0 {
        bail!("need index < stride and a positive buffer size");
    }
    let mut buf = vec![0u8; buf_kib * 1024];
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go)?;
    let mut bytes = 0u64;
    for (n, path) in frames.iter().enumerate().skip(index).step_by(stride) {
        let mut f =
            std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut first = true;
        loop {
            let got = f
                .read(&mut buf)
                .with_context(|| format!("read {}", path.display()))?;
            if got == 0 {
                break;
            }
            if first {
                // The frame's number, as the importer wrote it: proves the plaintext is right.
                if got < 8 || u64::from_le_bytes(buf[..8].try_into()?) != n as u64 {
                    bail!("{}: wrong plaintext (frame {n})", path.display());
                }
                first = false;
            }
            bytes += got as u64;
        }
    }
    writeln!(out, "done {bytes}")?;
    Ok(())
}

fn hold(positional: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let [path] = positional else {
        bail!("give exactly one path");
    };
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; 4096];
    f.read_at(&mut buf, 0)
        .with_context(|| format!("read {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "opened")?;
    out.flush()?;
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f.read_at(&mut buf, 0) {
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(_) => {
                writeln!(out, "still-open")?;
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(13) => {
                writeln!(out, "refused")?;
                return Ok(());
            }
            Err(e) => bail!("read {}: {e} (not EACCES)", path.display()),
        }
    }
}
