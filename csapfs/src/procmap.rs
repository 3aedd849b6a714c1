//! `PROCMAP_QUERY` (Linux ≥ 6.11): one executable mapping of a process per ioctl on its
//! `/proc/<pid>/maps` file, without formatting or parsing the text listing. The file stays
//! tied to the address space it was opened on, so a held one keeps naming that process.
#![allow(unsafe_code)] // the ioctl has no safe wrapper in std, nix or libc

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// One executable mapping as `/proc/<pid>/maps` or `PROCMAP_QUERY` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
}

/// Whether this kernel answers `PROCMAP_QUERY` (Linux ≥ 6.11) on our own `maps`.
pub fn query_supported() -> bool {
    File::open("/proc/self/maps").is_ok_and(|f| query_exec(&f, 0).is_ok_and(|r| r.is_some()))
}

/// `struct procmap_query` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: u64 = 0xC068_6611;
const QUERY_VMA_EXECUTABLE: u64 = 0x04;
const QUERY_COVERING_OR_NEXT_VMA: u64 = 0x10;

/// The first executable mapping ending above `addr`, or `None` past the last one.
pub fn query_exec(maps: &File, addr: u64) -> io::Result<Option<Region>> {
    let mut q = ProcmapQuery {
        size: std::mem::size_of::<ProcmapQuery>() as u64,
        query_flags: QUERY_VMA_EXECUTABLE | QUERY_COVERING_OR_NEXT_VMA,
        query_addr: addr,
        ..ProcmapQuery::default()
    };
    // SAFETY: `q` is a properly sized, initialised `struct procmap_query` that lives across
    // the call; its name and build-id buffers are null with size 0, so the kernel writes only
    // into `q` itself.
    let rc = unsafe { libc::ioctl(maps.as_raw_fd(), PROCMAP_QUERY as _, &mut q) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(err),
        };
    }
    Ok(Some(Region {
        start: q.vma_start,
        end: q.vma_end,
        dev_major: q.dev_major,
        dev_minor: q.dev_minor,
        inode: q.inode,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_exec(maps: &File) -> Vec<Region> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(r) = query_exec(maps, at).unwrap() {
            at = r.end;
            out.push(r);
        }
        out
    }

    #[test]
    fn the_query_sees_a_new_executable_mapping() {
        assert!(query_supported(), "PROCMAP_QUERY needs Linux >= 6.11");
        // Read the listing and open a probe on the same file; nothing maps code between.
        let maps = File::open("/proc/self/maps").unwrap();
        let before = all_exec(&maps);
        assert!(!before.is_empty());
        // What a measurement reads as text and what a remembered check queries agree (this
        // test process has threads and several libraries), else nothing would be remembered.
        let text = std::fs::read_to_string("/proc/self/maps").unwrap();
        let listed = crate::license_source::attest::code::exec_mappings(&text).unwrap();
        assert_eq!(
            crate::license_source::attest::code::fingerprint(&listed),
            before
        );
        // Executable anonymous memory appears: the probe says so.
        // SAFETY: a fresh private anonymous mapping, unmapped below; nothing else uses it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let after = all_exec(&maps);
        assert!(after.iter().any(|r| r.start == p as u64 && r.inode == 0));
        assert_eq!(after.len(), before.len() + 1);
        // SAFETY: `p` is the 4096-byte mapping made above.
        unsafe { libc::munmap(p, 4096) };
    }
}
