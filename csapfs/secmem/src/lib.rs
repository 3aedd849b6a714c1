//! Memory for key material that is locked (never swapped) and left out of core dumps: content
//! keys in the mount, seeds and the root key in the key server.
//!
//! [`Secret`] holds a fixed-size byte array, [`LockedBox`] any value without heap parts of its
//! own (an expanded cipher key). Both live in slots of [`pool`]'s arenas (`memfd_secret` where
//! the kernel has it, else `mlock` + `MADV_DONTDUMP`) and are zeroized when dropped. What this
//! does not cover: copies the compiler leaves on the stack or in registers while a key is
//! built, and anything root can still do (docs/security.md).
//!
//! `unsafe` is allowed here only: mapping memory and owning raw slots. Each block has a
//! `// SAFETY:` line.

#![allow(unsafe_code)]

mod pool;

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

pub use pool::{backing, Backing};

/// `N` secret bytes in locked memory; zeroized on drop, never printed.
pub struct Secret<const N: usize> {
    ptr: NonNull<[u8; N]>,
}

// SAFETY: a Secret owns its slot exclusively, like a Box<[u8; N]>.
unsafe impl<const N: usize> Send for Secret<N> {}
// SAFETY: shared access is read-only (`&self` gives `&[u8; N]`).
unsafe impl<const N: usize> Sync for Secret<N> {}

impl<const N: usize> Secret<N> {
    /// All zeros; fill it through [`Self::as_bytes_mut`].
    pub fn zeroed() -> Self {
        const { assert!(N <= pool::MAX_SLOT, "a Secret holds at most 4 KiB") };
        let ptr = pool::alloc(N, 1).cast::<[u8; N]>();
        Secret { ptr }
    }

    /// A copy of `bytes` (the caller zeroizes its own copy).
    pub fn new(bytes: &[u8; N]) -> Self {
        let mut secret = Self::zeroed();
        secret.as_bytes_mut().copy_from_slice(bytes);
        secret
    }

    pub fn as_bytes(&self) -> &[u8; N] {
        // SAFETY: the slot holds N initialized bytes for as long as `self` lives.
        unsafe { self.ptr.as_ref() }
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8; N] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { self.ptr.as_mut() }
    }
}

impl<const N: usize> Clone for Secret<N> {
    fn clone(&self) -> Self {
        Secret::new(self.as_bytes())
    }
}

impl<const N: usize> PartialEq for Secret<N> {
    /// Constant time: no early exit on the first differing byte.
    fn eq(&self, other: &Self) -> bool {
        let diff = self
            .as_bytes()
            .iter()
            .zip(other.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl<const N: usize> Eq for Secret<N> {}

impl<const N: usize> Drop for Secret<N> {
    fn drop(&mut self) {
        // SAFETY: the slot came from `pool::alloc(N, 1)` and is not used after this.
        unsafe { pool::free(self.ptr.cast(), N, 1) }
    }
}

impl<const N: usize> fmt::Debug for Secret<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A value in locked memory, dropped and then zeroized in place. For values whose secret parts
/// are inline (no heap allocation of their own), such as an expanded AES key; at most 4 KiB.
pub struct LockedBox<T> {
    ptr: NonNull<T>,
    _owns: PhantomData<T>,
}

// SAFETY: a LockedBox owns its value like a Box<T>.
unsafe impl<T: Send> Send for LockedBox<T> {}
// SAFETY: as Box<T>: shared access gives `&T`.
unsafe impl<T: Sync> Sync for LockedBox<T> {}

impl<T> LockedBox<T> {
    pub fn new(value: T) -> Self {
        let ptr = pool::alloc(size_of::<T>(), align_of::<T>()).cast::<T>();
        // SAFETY: the slot is at least size_of::<T>() bytes, aligned for T, and unused.
        unsafe { ptr.as_ptr().write(value) };
        LockedBox {
            ptr,
            _owns: PhantomData,
        }
    }
}

impl<T> Deref for LockedBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the slot holds an initialized T for as long as `self` lives.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> DerefMut for LockedBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T> Drop for LockedBox<T> {
    fn drop(&mut self) {
        // SAFETY: the slot holds a T that nothing uses after this; it came from
        // `pool::alloc(size_of::<T>(), align_of::<T>())`.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            pool::free(self.ptr.cast(), size_of::<T>(), align_of::<T>());
        }
    }
}

impl<T> fmt::Debug for LockedBox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockedBox(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `VmFlags` line of the mapping of this process that holds `addr` (proc(5)).
    fn vm_flags_at(addr: usize) -> (String, String) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut current: Option<String> = None;
        for line in smaps.lines() {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                if let Some(header) = current.take() {
                    return (header, flags.to_string());
                }
                continue;
            }
            let Some((range, _)) = line.split_once(' ') else {
                continue;
            };
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    if (lo..hi).contains(&addr) {
                        current = Some(line.to_string());
                    }
                }
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn secrets_live_in_locked_pages_left_out_of_core_dumps() {
        let secret = Secret::new(&[7u8; 32]);
        let (mapping, flags) = vm_flags_at(secret.as_bytes().as_ptr() as usize);
        let flags: Vec<&str> = flags.split_whitespace().collect();
        assert!(
            flags.contains(&"dd"),
            "not excluded from dumps: {mapping} {flags:?}"
        );
        assert_ne!(
            backing(),
            Some(Backing::UnlockedPages),
            "mlock refused here"
        );
        assert!(flags.contains(&"lo"), "not locked: {mapping} {flags:?}");
        // Where the kernel offers secret memory, it is used.
        let offered = std::fs::read_to_string("/sys/module/secretmem/parameters/enable")
            .is_ok_and(|v| v.trim() == "Y");
        if offered {
            assert_eq!(backing(), Some(Backing::SecretMemory));
            assert!(mapping.contains("secretmem"), "{mapping}");
        }
    }

    #[test]
    fn a_freed_slot_is_zeroized_and_reused() {
        let secret = Secret::new(&[0xa5u8; 64]);
        assert_eq!(secret.as_bytes(), &[0xa5u8; 64]);
        assert_eq!(secret.clone(), secret);
        assert_ne!(Secret::new(&[0u8; 64]), secret);
        drop(secret);
        // Whichever slots these get (the freed one among them, unless another test took it).
        let fresh: Vec<Secret<64>> = (0..64).map(|_| Secret::zeroed()).collect();
        for s in &fresh {
            assert_eq!(s.as_bytes(), &[0u8; 64], "a reused slot kept old bytes");
        }
    }

    #[test]
    fn a_locked_box_drops_its_value() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Counted([u64; 40]);
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }
        let boxed = LockedBox::new(Counted([3; 40]));
        assert_eq!(boxed.0[39], 3);
        assert_eq!(format!("{boxed:?}"), "LockedBox(<redacted>)");
        drop(boxed);
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn debug_never_prints_the_bytes() {
        let secret = Secret::new(&[0x41u8; 32]);
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }
}
