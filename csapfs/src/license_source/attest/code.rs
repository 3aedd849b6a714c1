//! The code a process runs, as the kernel has it mapped — not what the process says of itself.
//!
//! `/proc/<pid>/exe` and `/proc/<pid>/environ` are both under the process's control (an
//! injected library can scrub its environment block; `prctl(PR_SET_MM_MAP)` relabels `exe`
//! after the image is unmapped). The executable mappings are not: every page of code the
//! process can run lies in one of them. So a caller is accepted only when
//! - its main image (the file `exe` names, opened once so identity and bytes agree) is mapped
//!   executable — a relabelled `exe` names a file the process does not run;
//! - every other executable file mapping is a *trusted library*: a file below a system library
//!   directory ([`SYSTEM_LIB_DIRS`]) that only root can change (root-owned, not group- or
//!   other-writable, and so is every directory from the library directory down), or a library
//!   whose digest the application's registration allows (plug-ins);
//! - no anonymous memory is executable (JIT), unless the registration allows it;
//! - it runs in the mount's own user namespace, unless the registration allows otherwise.
//!
//! A measured caller is remembered until it execs ([`super::remembered`]); what it maps
//! *afterwards* is caught by [`Probe::unchanged`], which lists the executable mappings again
//! through the `PROCMAP_QUERY` ioctl on the `maps` file opened at measurement (one ioctl per
//! executable mapping, no text to format or parse) and compares them with what was measured.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

pub use crate::procmap::Region;
use crate::procmap::{query_exec, query_supported as kernel_answers_queries};

/// Directories whose root-owned contents count as system libraries.
pub const SYSTEM_LIB_DIRS: &[&str] = &[
    "/lib",
    "/lib32",
    "/lib64",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/local/lib",
];

/// How long a library's trust verdict is kept (root can change a root-owned file; nobody else).
const TRUST_TTL: Duration = Duration::from_secs(60);

/// Mappings the kernel itself provides, executable and without a file.
const KERNEL_MAPPINGS: &[&str] = &["[vdso]", "[vsyscall]", "[uprobes]"];

/// Addresses at or above this are the kernel's (the `[vsyscall]` gate page is not a VMA of
/// the process, so `PROCMAP_QUERY` never reports it; the text listing does).
const KERNEL_SPACE: u64 = 0xffff_8000_0000_0000;

/// An executable mapping with its path (text listing only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecMapping {
    pub region: Region,
    /// The pathname column: a file path (maybe ending in ` (deleted)`), `[vdso]`-style names,
    /// or empty for anonymous memory.
    pub name: String,
}

/// What a caller's executable mappings say, before any registration is consulted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeFacts {
    /// Executable file mappings other than the main image that are not trusted libraries:
    /// `(path as mapped, device, inode)`.
    pub foreign: Vec<Foreign>,
    /// Anonymous executable memory is mapped.
    pub anonymous: bool,
    /// The main image (`exe`) is among the executable mappings.
    pub main_mapped: bool,
}

/// An executable file mapping that is neither the main image nor a trusted library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    pub path: String,
    pub region: Region,
}

/// Parses the executable lines of a `/proc/<pid>/maps` listing.
pub fn exec_mappings(maps: &str) -> Option<Vec<ExecMapping>> {
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut fields = line.splitn(6, ' ');
        let range = fields.next()?;
        let perms = fields.next()?;
        let _offset = fields.next()?;
        let dev = fields.next()?;
        let inode = fields.next()?;
        let name = fields.next().unwrap_or("").trim_start();
        if perms.as_bytes().get(2) != Some(&b'x') {
            continue;
        }
        let (start, end) = range.split_once('-')?;
        let (major, minor) = dev.split_once(':')?;
        let region = Region {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            dev_major: u32::from_str_radix(major, 16).ok()?,
            dev_minor: u32::from_str_radix(minor, 16).ok()?,
            inode: inode.parse().ok()?,
        };
        out.push(ExecMapping {
            region,
            name: name.to_string(),
        });
    }
    Some(out)
}

/// The regions the remembered check compares (user space only; see [`KERNEL_SPACE`]).
pub fn fingerprint(mappings: &[ExecMapping]) -> Vec<Region> {
    mappings
        .iter()
        .map(|m| m.region)
        .filter(|r| r.start < KERNEL_SPACE)
        .collect()
}

/// `(major, minor)` of a `st_dev`, as glibc's `major()`/`minor()` split it.
pub fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// Sorts `mappings` into the facts a decision needs; `main` is `(st_dev, st_ino)` of the
/// opened `exe`, `trusted` says whether a file mapping is a trusted library.
pub fn facts(
    mappings: &[ExecMapping],
    main: (u64, u64),
    mut trusted: impl FnMut(&ExecMapping) -> bool,
) -> CodeFacts {
    let (major, minor) = split_dev(main.0);
    let is_main = |r: &Region| r.inode == main.1 && r.dev_major == major && r.dev_minor == minor;
    let mut out = CodeFacts::default();
    for m in mappings {
        if is_main(&m.region) {
            out.main_mapped = true;
        } else if m.region.inode == 0 {
            if !KERNEL_MAPPINGS.contains(&m.name.as_str()) {
                out.anonymous = true;
            }
        } else if !trusted(m) && !out.foreign.iter().any(|f| same_file(&f.region, &m.region)) {
            out.foreign.push(Foreign {
                path: m.name.clone(),
                region: m.region,
            });
        }
    }
    out
}

/// Whether two mappings are of the same file (inode numbers repeat across devices).
fn same_file(a: &Region, b: &Region) -> bool {
    (a.dev_major, a.dev_minor, a.inode) == (b.dev_major, b.dev_minor, b.inode)
}

/// Whether `mapping` is a system library only root can change. The path in the listing is
/// where the file was opened; it counts only if that path still names the mapped inode.
pub fn is_trusted_library(mapping: &ExecMapping) -> bool {
    let path = mapping.name.as_str();
    if !path.starts_with('/') || path.ends_with(" (deleted)") || !below_system_lib_dir(path) {
        return false;
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let (major, minor) = split_dev(meta.dev());
    if meta.ino() != mapping.region.inode
        || major != mapping.region.dev_major
        || minor != mapping.region.dev_minor
        || !root_only(&meta)
    {
        return false;
    }
    // Every directory from the library directory down must be root's alone too, or a user
    // could have swapped the file in (rename needs write access to the directory).
    let mut dir = Path::new(path).parent();
    while let Some(d) = dir {
        if d.as_os_str().is_empty() || d == Path::new("/") {
            break;
        }
        match std::fs::metadata(d) {
            Ok(m) if root_only(&m) => {}
            _ => return false,
        }
        dir = d.parent();
    }
    true
}

/// Owned by root and writable by nobody else.
fn root_only(meta: &std::fs::Metadata) -> bool {
    meta.uid() == 0 && meta.mode() & 0o022 == 0
}

/// Whether `path` lies below (or is) one of [`SYSTEM_LIB_DIRS`], without `.`/`..` tricks.
pub fn below_system_lib_dir(path: &str) -> bool {
    if path.split('/').any(|c| c == ".." || c == ".") {
        return false;
    }
    let trimmed = path.trim_end_matches('/');
    SYSTEM_LIB_DIRS
        .iter()
        .any(|d| trimmed == *d || trimmed.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
}

/// Trust verdicts by `(device, inode, path)`, so a warm measurement stats nothing.
pub struct TrustCache(moka::sync::Cache<(u32, u32, u64, String), bool>);

impl Default for TrustCache {
    fn default() -> TrustCache {
        TrustCache(
            moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_live(TRUST_TTL)
                .build(),
        )
    }
}

impl TrustCache {
    pub fn trusted(&self, m: &ExecMapping) -> bool {
        let key = (
            m.region.dev_major,
            m.region.dev_minor,
            m.region.inode,
            m.name.clone(),
        );
        if let Some(v) = self.0.get(&key) {
            return v;
        }
        let v = is_trusted_library(m);
        self.0.insert(key, v);
        v
    }
}

/// What a remembered caller was measured with: its `maps` file (tied to the address space it
/// was opened on) and the executable regions seen then.
///
/// The user namespace is checked when a process is measured, not again from memory: any way
/// to reach `/proc/<pid>/ns/user` through procfs costs 20–35 µs of mount CPU per warm open
/// (`bench open`, "CPU per warm open", with and without the check), and a process that enters
/// another namespace later still runs exactly the code it was measured with — the relabelling
/// a namespace enables needs its image unmapped, which changes the mappings and forces a new
/// measurement.
pub struct Probe {
    maps: File,
    measured: Vec<Region>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("regions", &self.measured.len())
            .finish()
    }
}

impl Probe {
    pub fn new(maps: File, measured: Vec<Region>) -> Probe {
        Probe { maps, measured }
    }

    /// Whether the process still has exactly the executable mappings it was measured with.
    /// Any failure (kernel without `PROCMAP_QUERY`, address space gone) answers no.
    pub fn unchanged(&self) -> bool {
        let mut at = 0u64;
        let mut expected = self.measured.iter();
        loop {
            match query_exec(&self.maps, at) {
                Ok(Some(region)) => {
                    if expected.next() != Some(&region) {
                        return false;
                    }
                    at = region.end;
                }
                Ok(None) => return expected.next().is_none(),
                Err(_) => return false,
            }
        }
    }
}

/// Whether this kernel answers `PROCMAP_QUERY` (Linux ≥ 6.11), which remembering needs.
pub fn query_supported() -> bool {
    kernel_answers_queries()
}

/// Reads all of `maps` (from its start) and keeps the file for [`Probe`].
pub fn read_maps(mut maps: File) -> io::Result<(File, String)> {
    let mut text = String::new();
    maps.read_to_string(&mut text)?;
    Ok((maps, text))
}

/// `(st_dev, st_ino)` of a namespace link such as `/proc/<pid>/ns/user`.
pub fn namespace_id(link: &Path) -> io::Result<(u64, u64)> {
    let meta = std::fs::metadata(link)?;
    Ok((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
55d0c0a00000-55d0c0a2e000 r--p 00000000 fd:01 1311 /usr/bin/bash
55d0c0a2e000-55d0c0b0d000 r-xp 0002e000 fd:01 1311 /usr/bin/bash
7f1c2c000000-7f1c2c021000 rw-p 00000000 00:00 0 
7f1c2c200000-7f1c2c228000 r-xp 00028000 fd:01 2222 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2c300000-7f1c2c301000 r-xp 00001000 fd:01 3333 /tmp/evil.so
7f1c2c400000-7f1c2c401000 rwxp 00000000 00:00 0 
7ffd5a9f2000-7ffd5a9f4000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn the_listing_yields_executable_mappings_only() {
        let m = exec_mappings(LISTING).unwrap();
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "/usr/bin/bash",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/tmp/evil.so",
                "",
                "[vdso]",
                "[vsyscall]"
            ]
        );
        assert_eq!(m[0].region.dev_major, 0xfd);
        assert_eq!(m[0].region.inode, 1311);
        assert_eq!(fingerprint(&m).len(), 5, "the gate page is not compared");
        assert!(exec_mappings("garbage").is_none());
    }

    #[test]
    fn facts_name_foreign_code_anonymous_code_and_an_unmapped_main_image() {
        let m = exec_mappings(LISTING).unwrap();
        let dev = (0xfd << 8) | 1;
        let trusted = |m: &ExecMapping| m.name.starts_with("/usr/lib/");
        let f = facts(&m, (dev, 1311), trusted);
        assert!(f.main_mapped);
        assert!(f.anonymous);
        assert_eq!(f.foreign.len(), 1);
        assert_eq!(f.foreign[0].path, "/tmp/evil.so");
        // `exe` relabelled to a file that is not mapped.
        let f = facts(&m, (dev, 9999), trusted);
        assert!(!f.main_mapped);
        assert_eq!(f.foreign.len(), 2, "bash is then just another foreign file");
    }

    #[test]
    fn system_library_paths() {
        assert!(below_system_lib_dir("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(below_system_lib_dir("/lib64/"));
        assert!(!below_system_lib_dir("/usr/libevil/x.so"));
        assert!(!below_system_lib_dir("/usr/lib/../../tmp/x.so"));
        assert!(!below_system_lib_dir("/tmp/x.so"));
    }

    /// A file below a system library directory is trusted only while nobody but root can
    /// change it or swap it: a group- or world-writable directory on the way, or a writable
    /// file, makes it foreign (the test runs as root, as the mount does, and writes below
    /// `/usr/lib` in a directory it removes).
    #[test]
    fn a_library_someone_else_could_replace_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let dir = tempfile::Builder::new()
            .prefix("csap-attest-test-")
            .tempdir_in("/usr/lib")
            .expect("the tests run as root");
        mode(dir.path(), 0o755);
        let lib = dir.path().join("libx.so");
        std::fs::write(&lib, b"x").unwrap();
        mode(&lib, 0o644);
        let meta = std::fs::metadata(&lib).unwrap();
        let (dev_major, dev_minor) = split_dev(meta.dev());
        let mapping = ExecMapping {
            region: Region {
                start: 0,
                end: 4096,
                dev_major,
                dev_minor,
                inode: meta.ino(),
            },
            name: lib.display().to_string(),
        };
        assert!(is_trusted_library(&mapping), "root's own library");
        mode(dir.path(), 0o777);
        assert!(!is_trusted_library(&mapping), "world-writable directory");
        mode(dir.path(), 0o775);
        assert!(!is_trusted_library(&mapping), "group-writable directory");
        mode(dir.path(), 0o755);
        mode(&lib, 0o666);
        assert!(!is_trusted_library(&mapping), "world-writable file");
        mode(&lib, 0o644);
        // Another file renamed into its place: the path no longer names the mapped inode.
        let other = dir.path().join("other.so");
        std::fs::write(&other, b"y").unwrap();
        std::fs::rename(&other, &lib).unwrap();
        assert!(!is_trusted_library(&mapping), "replaced after mapping");
    }

    #[test]
    fn our_own_libc_is_a_trusted_library_and_a_temp_file_is_not() {
        let me = std::fs::read_to_string("/proc/self/maps").unwrap();
        let m = exec_mappings(&me).unwrap();
        let libc = m
            .iter()
            .find(|m| m.name.contains("/libc.so"))
            .expect("libc mapped");
        assert!(is_trusted_library(libc), "{libc:?}");
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("x.so");
        std::fs::write(&fake, b"x").unwrap();
        let meta = std::fs::metadata(&fake).unwrap();
        let (dev_major, dev_minor) = split_dev(meta.dev());
        let mapping = ExecMapping {
            region: Region {
                start: 0,
                end: 4096,
                dev_major,
                dev_minor,
                inode: meta.ino(),
            },
            name: fake.display().to_string(),
        };
        assert!(!is_trusted_library(&mapping));
    }
}
