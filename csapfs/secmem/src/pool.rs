//! The slab of locked pages behind [`crate::Secret`] and [`crate::LockedBox`].
//!
//! Keys are small (32 bytes; an expanded AES-GCM key a few hundred), so pages are taken in
//! 64 KiB arenas and cut into slots of one power-of-two size (32 B to 4 KiB): one `mmap` and
//! one `mlock` per arena, not per key, which keeps the count of locked mappings and the use
//! of `RLIMIT_MEMLOCK` small. Arenas are never returned: a freed slot is zeroized and reused.
//!
//! An arena comes from `memfd_secret(2)` where the kernel offers it (Linux ≥ 5.14 with
//! `secretmem.enable`): its pages are locked, excluded from core dumps and removed from the
//! kernel's direct map, so not even the kernel reads them through `/proc/<pid>/mem`. Else it is
//! an anonymous mapping with `MADV_DONTDUMP`, `MADV_WIPEONFORK` and `mlock`. Secret memory
//! cannot be handed to a system call (the kernel cannot read it): callers copy key bytes out
//! before a `write` and copy random bytes in after a `getrandom`.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Bytes per arena.
const ARENA: usize = 64 * 1024;
/// Smallest and largest slot.
const MIN_SLOT: usize = 32;
pub(crate) const MAX_SLOT: usize = 4096;
/// Slot sizes 32, 64, …, 4096.
const CLASSES: usize = 8;

/// Where the arenas of this process come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// `memfd_secret`: locked, not dumped, not in the kernel's direct map.
    SecretMemory,
    /// Anonymous pages with `mlock` and `MADV_DONTDUMP`.
    LockedPages,
    /// Anonymous pages with `MADV_DONTDUMP`, but `mlock` was refused (`RLIMIT_MEMLOCK`): they
    /// may be swapped. Logged as an error when it happens.
    UnlockedPages,
}

struct Pools {
    /// Free slot addresses per size class.
    free: [Vec<usize>; CLASSES],
    /// The backing of the most recent arena.
    backing: Option<Backing>,
}

static POOLS: Mutex<Pools> = Mutex::new(Pools {
    free: [const { Vec::new() }; CLASSES],
    backing: None,
});

/// Set once `memfd_secret` failed: later arenas go straight to the fallback.
static NO_SECRET_MEMORY: AtomicBool = AtomicBool::new(false);

/// What backs the arenas so far (`None` before the first allocation).
pub fn backing() -> Option<Backing> {
    POOLS.lock().unwrap_or_else(|p| p.into_inner()).backing
}

fn class_of(size: usize, align: usize) -> (usize, usize) {
    let slot = size.max(align).max(MIN_SLOT).next_power_of_two();
    assert!(
        slot <= MAX_SLOT,
        "secmem holds values of at most {MAX_SLOT} bytes"
    );
    (
        slot.trailing_zeros() as usize - MIN_SLOT.trailing_zeros() as usize,
        slot,
    )
}

/// A zeroed slot of at least `size` bytes aligned to `align` (both ≤ 4 KiB). Aborts like a
/// failed heap allocation when no memory can be mapped at all.
pub(crate) fn alloc(size: usize, align: usize) -> NonNull<u8> {
    let (class, slot) = class_of(size, align);
    let mut pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(addr) = pools.free[class].pop() {
        return NonNull::new(addr as *mut u8).expect("slots are never null");
    }
    let (arena, backing) = map_arena();
    pools.backing = Some(backing);
    let base = arena.as_ptr() as usize;
    // Slot 0 is handed out now; the rest go to the free list.
    pools.free[class].extend((1..ARENA / slot).map(|k| base + k * slot));
    arena
}

/// Zeroizes the slot at `ptr` (from [`alloc`] with the same size and alignment) and frees it.
///
/// # Safety
/// `ptr` came from `alloc(size, align)` and is not used again.
pub(crate) unsafe fn free(ptr: NonNull<u8>, size: usize, align: usize) {
    let (class, slot) = class_of(size, align);
    // SAFETY: the caller owns the slot's `slot` bytes exclusively (contract above).
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), slot) };
    zeroize::Zeroize::zeroize(bytes);
    POOLS.lock().unwrap_or_else(|p| p.into_inner()).free[class].push(ptr.as_ptr() as usize);
}

fn map_arena() -> (NonNull<u8>, Backing) {
    if !NO_SECRET_MEMORY.load(Ordering::Relaxed) {
        match secret_arena() {
            Ok(arena) => return (arena, Backing::SecretMemory),
            Err(err) => {
                NO_SECRET_MEMORY.store(true, Ordering::Relaxed);
                tracing::info!(%err, "memfd_secret unavailable: keys in mlock'ed, dump-excluded pages");
            }
        }
    }
    locked_arena()
}

/// An arena from `memfd_secret` (the fd is closed; the mapping keeps the memory).
fn secret_arena() -> std::io::Result<NonNull<u8>> {
    // SAFETY: memfd_secret takes one flags argument and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = fd as libc::c_int;
    // SAFETY: fd is ours; ftruncate and mmap only read their arguments; fd is closed once.
    unsafe {
        let mapped = if libc::ftruncate(fd, ARENA as libc::off_t) == 0 {
            libc::mmap(
                std::ptr::null_mut(),
                ARENA,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        } else {
            libc::MAP_FAILED
        };
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if mapped == libc::MAP_FAILED {
            return Err(err);
        }
        Ok(NonNull::new(mapped.cast()).expect("mmap never returns null on success"))
    }
}

/// An anonymous arena, excluded from dumps and from forked children, locked if allowed.
fn locked_arena() -> (NonNull<u8>, Backing) {
    // SAFETY: a fresh private anonymous mapping; madvise and mlock act on it alone.
    unsafe {
        let mapped = libc::mmap(
            std::ptr::null_mut(),
            ARENA,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if mapped == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(ARENA, 4096).expect("a valid layout"),
            );
        }
        if libc::madvise(mapped, ARENA, libc::MADV_DONTDUMP) != 0 {
            tracing::error!(err = %std::io::Error::last_os_error(), "MADV_DONTDUMP refused: key pages may appear in core dumps");
        }
        // Best effort: a forked child (before its exec) sees zeros instead of keys.
        let _ = libc::madvise(mapped, ARENA, libc::MADV_WIPEONFORK);
        let backing = if libc::mlock(mapped, ARENA) == 0 {
            Backing::LockedPages
        } else {
            tracing::error!(err = %std::io::Error::last_os_error(), "mlock refused (raise RLIMIT_MEMLOCK, `ulimit -l`): key pages may be swapped");
            Backing::UnlockedPages
        };
        (
            NonNull::new(mapped.cast()).expect("mmap never returns null on success"),
            backing,
        )
    }
}
