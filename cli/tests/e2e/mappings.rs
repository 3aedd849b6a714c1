//! Issue 12, part 3: a revocation reaches pages an approved process has mapped. After a rule is
//! cancelled, an identity revoked or a license's window ends, the mount invalidates the pages
//! of every file whose handles lost their lease — in both cache modes — so a mapped page,
//! whether touched before the end or not, faults back into the mount, is refused there, and
//! the process dies of `SIGBUS` instead of reading plaintext.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use csapfs::fs::{CacheMode, MountOptions};
use keyserver::wire::RegisterAppRequest;

use csap_testkit::{digest_of, Conversation};

use super::fixture::{Env, Reader, Req};
use super::wait_until_bash_opens;

/// The mapping program: maps the whole file (`MAP_SHARED`, read-only), reads page 0 and says
/// `ready` with its first byte, waits for a line on stdin, then reads page `argv[2]` and prints
/// `served` — which it must never reach after a revocation.
const MAPPER_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror("open"); return 7; }
    struct stat st;
    if (fstat(fd, &st) != 0) { perror("fstat"); return 7; }
    volatile unsigned char *map = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 8; }
    long page = sysconf(_SC_PAGESIZE);
    long later = atol(argv[2]);
    if ((later + 1) * page > st.st_size) return 2;
    printf("ready %02x\n", map[0]);
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 3;
    unsigned char byte = map[later * page];
    printf("served %02x\n", byte);
    fflush(stdout);
    return 0;
}
"#;

/// Compiles [`MAPPER_C`] into `dir` and returns its path.
fn build_mapper(dir: &Path) -> PathBuf {
    let source = dir.join("mapper.c");
    let binary = dir.join("mapper");
    std::fs::write(&source, MAPPER_C).unwrap();
    let out = Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .output()
        .expect("cc (a C compiler) is needed to build the mapping program");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    binary
}

/// One running mapping program, between `ready` and its last touch.
struct Mapper(Conversation);

impl Mapper {
    /// Maps `file`, touches page 0 (which must serve the frame's first byte) and waits.
    fn start(binary: &Path, file: &Path, later_page: u64, first_byte: u8) -> Mapper {
        let mut cmd = Command::new(binary);
        cmd.arg(file).arg(later_page.to_string());
        let (talk, line) = Conversation::start(&mut cmd, "the mapping program").unwrap();
        assert_eq!(
            line.trim(),
            format!("ready {first_byte:02x}"),
            "the approved program could not map {}",
            file.display()
        );
        Mapper(talk)
    }

    /// Lets it touch its later page; asserts it died of SIGBUS without printing a byte.
    fn assert_refused(mut self, what: &str) {
        self.0.say("go").unwrap();
        let rest = self.0.rest().unwrap_or_default();
        let status = self.0.wait().unwrap();
        assert!(
            rest.is_empty(),
            "{what}: the mapping served a page after the license ended: {rest:?}"
        );
        assert_eq!(
            status.signal(),
            Some(nix::libc::SIGBUS),
            "{what}: expected death by SIGBUS, got {status:?}"
        );
    }
}

/// How the license ends in a test.
enum LicenseEnd {
    /// The authz request is cancelled (its rules withdrawn from ARDS).
    Cancel,
    /// The user is disabled at the key server (an identity revocation).
    DisableUser,
    /// The rule's window ends at a mount without its own ARDS rules: nothing revokes the
    /// license, it ends at its `not_after` (TTL expiry without renewal).
    Window,
}

/// Maps a frame twice — one program to re-touch page 0 after the end, one to touch a page it
/// never touched — ends the license as `end` says, waits until `pread` on an open handle is
/// refused and a second more (the promise: every PEP applies a revocation within a second),
/// and asserts both programs die of SIGBUS.
fn mapped_pages_are_refused_after(cache: CacheMode, end: LicenseEnd) {
    let Some(env) = Env::start() else {
        return; // no FUSE here (never under CI=true)
    };
    let mapper = build_mapper(env.dir.path());
    let mapper_digest = digest_of(&mapper).unwrap();
    env.rt
        .block_on(env.admin.register_app(&RegisterAppRequest {
            digest: mapper_digest.clone(),
            name: "mapper".into(),
            version: "1".into(),
            vendor: None,
            code: Default::default(),
        }))
        .unwrap();
    env.with_frames(&["f1.raw"]);
    let options = MountOptions {
        cache,
        readahead_kb: 0,
        ..MountOptions::default()
    };
    let mut args = env.args();
    if matches!(end, LicenseEnd::Window) {
        // No rule stream at the mount: no rule change at the window's end tells it anything.
        args.ards = None;
    }
    let (mnt, mounted) = env.mount("mnt", &args, &options);
    let f1 = mnt.join("samples/f1.raw");
    let apps = [
        env.apps.bash.as_str(),
        env.apps.perl.as_str(),
        mapper_digest.as_str(),
    ];
    let window_end = keyserver::now().expect("system clock usable") + 8;
    let issued = match end {
        LicenseEnd::Window => env.submit(&Req {
            name: "brief",
            apps: &apps,
            actions: &["read"],
            window: (window_end - 60, window_end),
        }),
        LicenseEnd::Cancel | LicenseEnd::DisableUser => {
            env.submit(&Req::now("view", &apps, &["read"]))
        }
    };
    wait_until_bash_opens(&f1);
    // Re-reads the first 4 KiB each time: a sequential reader would reach the end of the file
    // before the window does, and a read at the end never reaches the mount.
    let mut reader = Reader::rereading(&f1);
    assert_eq!(reader.read(), "ok");
    let pages = env.frame.len() as u64 / 4096;
    let retouch = Mapper::start(&mapper, &f1, 0, env.frame[0]);
    let untouched = Mapper::start(&mapper, &f1, pages - 1, env.frame[0]);

    let since = Instant::now();
    let timeout = match end {
        LicenseEnd::Cancel => {
            env.cancel(&issued);
            Duration::from_secs(3)
        }
        LicenseEnd::DisableUser => {
            env.rt.block_on(env.admin.disable_user("alice")).unwrap();
            Duration::from_secs(3)
        }
        LicenseEnd::Window => {
            let end_at = UNIX_EPOCH + Duration::from_secs(window_end as u64);
            let left = end_at
                .duration_since(SystemTime::now())
                .expect("the setup outlasted the window");
            left + Duration::from_secs(3)
        }
    };
    let (answer, took) = reader.until_refused(since, timeout);
    assert!(
        answer.contains("Permission denied"),
        "pread after the license ended: {answer:?} after {took:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    retouch.assert_refused("page 0, touched before the end");
    untouched.assert_refused("the last page, never touched before the end");
    drop(reader);
    mounted.unmount().unwrap();
}

#[test]
fn cancelling_the_rule_refuses_mapped_pages_with_direct_io() {
    mapped_pages_are_refused_after(CacheMode::Direct, LicenseEnd::Cancel);
}

#[test]
fn cancelling_the_rule_refuses_mapped_pages_with_the_page_cache() {
    mapped_pages_are_refused_after(CacheMode::Page, LicenseEnd::Cancel);
}

#[test]
fn disabling_the_user_refuses_mapped_pages_with_direct_io() {
    mapped_pages_are_refused_after(CacheMode::Direct, LicenseEnd::DisableUser);
}

#[test]
fn the_window_end_refuses_mapped_pages_with_direct_io() {
    mapped_pages_are_refused_after(CacheMode::Direct, LicenseEnd::Window);
}

#[test]
fn the_window_end_refuses_mapped_pages_with_the_page_cache() {
    mapped_pages_are_refused_after(CacheMode::Page, LicenseEnd::Window);
}
