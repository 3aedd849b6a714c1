//! Attacks on attestation by processes that run code other than the approved application's,
//! each through a real mount: the mount must judge the code that is *mapped*, not what the
//! process says of itself (`/proc/<pid>/environ`, `/proc/<pid>/exe`). The attack programs are
//! C, built here with `cc` into the test's temporary directory (which is not a system library
//! directory, as an attacker's files would not be).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use keyserver::wire::{AppCode, RegisterAppRequest};

use csap_testkit::{eventually, run, CsapMount};

use super::fixture::{Env, Req};
use super::{assert_frame, direct, wait_until_bash_opens};

/// A preload (or audit) library that hides itself: its constructor overwrites the names of
/// `LD_PRELOAD=`/`LD_AUDIT=` in the process's environment block, which is what
/// `/proc/<pid>/environ` shows.
const SCRUB: &str = r#"
#include <string.h>
extern char **environ;
unsigned int la_version(unsigned int v) { return v; }
static void scrub(char **env) {
    for (char **e = env; e && *e; e++)
        if (!strncmp(*e, "LD_PRELOAD=", 11) || !strncmp(*e, "LD_AUDIT=", 9))
            memset(*e, 'X', strchr(*e, '=') - *e);
}
__attribute__((constructor)) static void init(int argc, char **argv, char **envp) {
    scrub(envp);
    scrub(environ);
}
"#;

/// Runs from a library: unmaps the program's own image, relabels `exe` to an approved binary
/// with `PR_SET_MM_MAP`, then copies `target` to stdout.
const RELABEL_LIB: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <linux/prctl.h>
#include <unistd.h>

static unsigned long field(char **tok, int n) { return strtoul(tok[n - 3], NULL, 10); }

void relabel_and_read(const char *approved, const char *target) {
    char self[4096], line[8192], stat[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0) { perror("readlink"); _exit(10); }
    self[n] = 0;
    unsigned long ranges[64][2];
    int k = 0;
    FILE *m = fopen("/proc/self/maps", "r");
    while (k < 64 && fgets(line, sizeof line, m)) {
        unsigned long a, b;
        char path[4096] = "";
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %4095[^\n]", &a, &b, path) == 3
            && strcmp(path, self) == 0) {
            ranges[k][0] = a; ranges[k][1] = b; k++;
        }
    }
    fclose(m);
    int sf = open("/proc/self/stat", O_RDONLY);
    n = read(sf, stat, sizeof stat - 1);
    close(sf);
    stat[n] = 0;
    char *tok[64];
    int t = 0;
    for (char *p = strtok(strrchr(stat, ')') + 2, " "); p && t < 64; p = strtok(NULL, " "))
        tok[t++] = p;
    struct prctl_mm_map map = {
        .start_code = field(tok, 26), .end_code = field(tok, 27),
        .start_stack = field(tok, 28),
        .start_data = field(tok, 45), .end_data = field(tok, 46),
        .start_brk = field(tok, 47), .brk = (unsigned long)sbrk(0),
        .arg_start = field(tok, 48), .arg_end = field(tok, 49),
        .env_start = field(tok, 50), .env_end = field(tok, 51),
        .auxv = NULL, .auxv_size = 0,
    };
    int fd = open(approved, O_RDONLY);
    map.exe_fd = fd;
    for (int i = 0; i < k; i++) munmap((void *)ranges[i][0], ranges[i][1] - ranges[i][0]);
    if (prctl(PR_SET_MM, PR_SET_MM_MAP, &map, sizeof map, 0)) { perror("prctl"); _exit(11); }
    int in = open(target, O_RDONLY);
    if (in < 0) { perror("open"); _exit(12); }
    static char buf[65536];
    while ((n = read(in, buf, sizeof buf)) > 0) write(1, buf, n);
    if (n < 0) { perror("read"); _exit(13); }
    _exit(0);
}
"#;

const RELABEL_MAIN: &str = r#"
void relabel_and_read(const char *approved, const char *target);
int main(int argc, char **argv) { relabel_and_read(argv[1], argv[2]); return 99; }
"#;

const PLUGIN: &str = "int plugin(void) { return 42; }\n";

/// An approved program: opens `target` (first-open), then maps new code — a library with
/// `dlopen` or executable anonymous memory — and opens `target` again (second-open); mode
/// `once` stops after the first.
const LATE_CODE: &str = r#"
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Two builds, two digests. */
#ifdef ALLOWED
const char build_variant[] = "allowed";
#else
const char build_variant[] = "default";
#endif

static int open_and_read(const char *target) {
    char c;
    int fd = open(target, O_RDONLY);
    if (fd < 0 || read(fd, &c, 1) != 1) { perror("open"); return 0; }
    close(fd);
    return 1;
}

int main(int argc, char **argv) {
    const char *mode = argv[1], *target = argv[2];
    if (!open_and_read(target)) return 1;
    puts("first-open");
    fflush(stdout);
    if (!strcmp(mode, "once")) return 0;
    if (!strcmp(mode, "dlopen")) {
        if (!dlopen(argv[3], RTLD_NOW)) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 2; }
    } else if (mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    if (!open_and_read(target)) return 3;
    puts("second-open");
    return 0;
}
"#;

/// Compiles `source` with `cc` into `dir/out` (extra flags after the source).
fn cc(dir: &Path, out: &str, source: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join(format!("{out}.c"));
    std::fs::write(&src, source).unwrap();
    let target = dir.join(out);
    let built = Command::new("cc")
        .arg("-o")
        .arg(&target)
        .arg(&src)
        .args(flags)
        .output()
        .expect("cc (gcc) is needed to build the attack programs");
    assert!(
        built.status.success(),
        "cc {out}: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    target
}

/// The mount refused: no plaintext, a permission error, and a denial in the audit trail
/// whose reason contains `why`.
fn assert_refused(env: &Env, out: &Output, what: &str, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && out.stdout.is_empty() && stderr.contains("Permission denied"),
        "{what}: exit {:?}, {} bytes out, stderr {stderr}",
        out.status.code(),
        out.stdout.len()
    );
    assert_audited_denial(env, what, why);
}

/// The audit trail gets a denial for the frame whose reason contains `why`.
fn assert_audited_denial(env: &Env, what: &str, why: &str) {
    eventually(
        &format!("the audited denial of {what} ({why})"),
        Duration::from_secs(10),
        || {
            env.audit_at("samples/f1.raw").iter().any(|r| {
                r.decision == "deny" && r.reason.as_deref().is_some_and(|t| t.contains(why))
            })
        },
    );
}

/// A mount where cat and bash may read `samples/f1.raw`; returns (env, the frame's path, the
/// mount, a directory for the attack programs).
fn mounted() -> Option<(Env, PathBuf, CsapMount, PathBuf)> {
    let env = Env::start()?;
    env.with_frames(&["f1.raw"]);
    let (mnt, mounted) = env.mount("mnt", &env.args(), &direct());
    env.submit(&Req::now(
        "view",
        &[&env.apps.bash, &env.apps.cat],
        &["read"],
    ));
    let f1 = mnt.join("samples/f1.raw");
    wait_until_bash_opens(&f1);
    let tools = env.dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    Some((env, f1, mounted, tools))
}

fn cat(f1: &Path) -> Command {
    let mut cmd = Command::new("/bin/cat");
    cmd.arg(f1);
    cmd
}

/// A library injected by `LD_PRELOAD` or `LD_AUDIT` that scrubs the variable from the
/// environment block is still mapped code the approved binary does not contain.
#[test]
fn an_injected_library_that_scrubs_its_environment_is_refused() {
    let Some((env, f1, mounted, tools)) = mounted() else {
        return; // no FUSE here (never under CI=true)
    };
    assert_frame(&env, &run(cat(&f1)), "plain cat");
    let scrub = cc(&tools, "libscrub.so", SCRUB, &["-shared", "-fPIC"]);
    for var in ["LD_PRELOAD", "LD_AUDIT"] {
        let mut injected = cat(&f1);
        injected.env(var, &scrub);
        let what = format!("cat with a self-scrubbing {var}");
        assert_refused(&env, &run(injected), &what, "libscrub.so, which is neither");
    }
    mounted.unmount().unwrap();
}

/// `PR_SET_MM_MAP` makes `/proc/<pid>/exe` name the approved cat while the code that runs is
/// the attacker's library: as root, and as an unprivileged user's root inside `unshare -U -r`.
#[test]
fn a_process_that_relabels_its_executable_is_refused() {
    let Some((env, f1, mounted, tools)) = mounted() else {
        return; // no FUSE here (never under CI=true)
    };
    let lib = cc(
        &tools,
        "librelabel.so",
        RELABEL_LIB,
        &["-shared", "-fPIC", "-Wl,-z,now"],
    );
    let rpath = format!("-Wl,-rpath,{}", tools.display());
    let prog = cc(
        &tools,
        "relabel",
        RELABEL_MAIN,
        &[lib.to_str().unwrap(), &rpath, "-Wl,-z,now"],
    );
    let mut as_root = Command::new(&prog);
    as_root.arg("/bin/cat").arg(&f1);
    assert_refused(
        &env,
        &run(as_root),
        "relabelled, as root",
        "exe is not mapped",
    );
    let mut in_userns = Command::new("unshare");
    in_userns
        .args(["-U", "-r"])
        .arg(&prog)
        .arg("/bin/cat")
        .arg(&f1);
    let what = "relabelled, inside unshare -U -r";
    assert_refused(&env, &run(in_userns), what, "exe is not mapped");
    // The approved cat itself, unchanged, but in another user namespace.
    let mut cat_in_userns = Command::new("unshare");
    cat_in_userns.args(["-U", "-r", "/bin/cat"]).arg(&f1);
    let what = "cat inside unshare -U -r";
    assert_refused(&env, &run(cat_in_userns), what, "another user namespace");
    assert_frame(&env, &run(cat(&f1)), "plain cat afterwards");
    mounted.unmount().unwrap();
}

/// An approved program's first open is remembered; code it maps afterwards (a `dlopen`ed
/// library, executable anonymous memory) is seen at its next open — and allowed where the
/// build's registration says so.
#[test]
fn code_mapped_after_a_first_open_is_seen_at_the_next() {
    let Some((env, _, mounted, tools)) = mounted() else {
        return; // no FUSE here (never under CI=true)
    };
    let plugin = cc(&tools, "libplugin.so", PLUGIN, &["-shared", "-fPIC"]);
    let prog = cc(&tools, "late-code", LATE_CODE, &["-ldl"]);
    let digest = register(&env, &prog, "late-code", AppCode::default());
    env.submit(&Req::now("late", &[&digest], &["read"]));
    let f1 = mounted_path(&env, "samples/f1.raw");
    wait_until_it_opens(&prog, &f1);
    let expected = [
        ("dlopen", Some(&plugin), "libplugin.so, which is neither"),
        ("jit", None, "executable anonymous memory"),
    ];
    for (mode, extra, why) in expected {
        let mut cmd = Command::new(&prog);
        cmd.arg(mode).arg(&f1);
        if let Some(lib) = extra {
            cmd.arg(lib);
        }
        let out = run(cmd);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            stdout.contains("first-open")
                && !stdout.contains("second-open")
                && stderr.contains("Permission denied"),
            "{mode} after an attested open: {stdout} / {stderr}"
        );
        assert_audited_denial(&env, mode, why);
    }

    // Another build of the same program whose registration allows all three: it keeps
    // reading after its dlopen, after its JIT mapping, and inside a user namespace.
    let allowed = cc(
        &tools,
        "late-code-allowed",
        LATE_CODE,
        &["-ldl", "-DALLOWED"],
    );
    let code = AppCode {
        allow_jit: true,
        allow_user_namespaces: true,
        libraries: vec![csap_testkit::digest_of(&plugin).unwrap()],
    };
    let digest = register(&env, &allowed, "late-code-allowed", code);
    env.submit(&Req::now("late-allowed", &[&digest], &["read"]));
    wait_until_it_opens(&allowed, &f1);
    let mut dlopen = Command::new(&allowed);
    dlopen.arg("dlopen").arg(&f1).arg(&plugin);
    let mut jit_in_userns = Command::new("unshare");
    jit_in_userns
        .args(["-U", "-r"])
        .arg(&allowed)
        .arg("jit")
        .arg(&f1);
    for (what, cmd) in [
        ("dlopen", dlopen),
        ("jit in a user namespace", jit_in_userns),
    ] {
        let out = run(cmd);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success() && stdout.contains("second-open"),
            "{what}, allowed by the registration: {stdout} / {stderr}"
        );
    }
    mounted.unmount().unwrap();
}

/// Until the mount has a rule that lets `program` (in mode `once`) open `file`.
fn wait_until_it_opens(program: &Path, file: &Path) {
    eventually(
        "the program's rule at the mount",
        Duration::from_secs(10),
        || {
            let mut once = Command::new(program);
            once.arg("once").arg(file);
            run(once).status.success()
        },
    );
}

/// Registers `program` under `name` with `code` allowances; its digest.
fn register(env: &Env, program: &Path, name: &str, code: AppCode) -> String {
    let digest = csap_testkit::digest_of(program).unwrap();
    env.rt
        .block_on(env.admin.register_app(&RegisterAppRequest {
            digest: digest.clone(),
            name: name.into(),
            version: "1".into(),
            vendor: None,
            code,
        }))
        .unwrap();
    digest
}

fn mounted_path(env: &Env, rel: &str) -> PathBuf {
    env.dir.path().join("mnt").join(rel)
}
