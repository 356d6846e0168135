//! Anonymous memory for a RAM disk's chunks: mapped directly from the kernel, aligned to a huge
//! page and marked for transparent huge pages.
//!
//! Random reads over a RAM disk much larger than the CPU cache touch a different page almost
//! every time. With 4 KiB pages each such read also misses the TLB, and under virtualization a
//! TLB miss walks two sets of page tables. Huge pages cut the walks (one 2 MiB entry covers
//! what 512 small ones did): 4 KiB random reads over a filled 1 GiB disk went from 247-277K to
//! 265-288K IOPS in alternating runs on the 2-vCPU development VM. Debian's default THP mode is
//! `madvise`, so the hint is what makes the difference there. Fresh mappings also read as zeros
//! without being touched, so a chunk costs nothing until it is written.

use std::io;
use std::ptr::NonNull;

/// The x86-64 (and common arm64) huge page size.
pub(super) const HUGE_PAGE: usize = 2 << 20;

/// An owned, zero-initialized, read-write block of memory: normally its own anonymous
/// mapping; from the heap when the kernel refuses another mapping (each chunk is a mapping of
/// its own, and `vm.max_map_count`, 65,530 by default, caps them: about 128 GiB of chunks),
/// so a large RAM disk loses huge pages past that point, never a write.
pub(super) enum Region {
    /// No memory at all (a deallocated chunk).
    Empty,
    Mapped {
        ptr: NonNull<u8>,
        len: usize,
    },
    Heap(Box<[u8]>),
}

// SAFETY: a Region owns its memory exclusively, like a Box<[u8]>; access goes through & and
// &mut borrows, so the usual aliasing rules apply.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    pub(super) fn empty() -> Region {
        Region::Empty
    }

    /// `len` bytes of zeros, starting on a huge-page boundary when mapped.
    pub(super) fn zeroed(len: usize) -> io::Result<Region> {
        Self::zeroed_with(len, map)
    }

    fn zeroed_with(len: usize, map: fn(usize) -> io::Result<NonNull<u8>>) -> io::Result<Region> {
        if len == 0 {
            return Ok(Region::Empty);
        }
        match map(len) {
            Ok(ptr) => Ok(Region::Mapped { ptr, len }),
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
                let mut v = Vec::new();
                v.try_reserve_exact(len)
                    .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
                v.resize(len, 0);
                Ok(Region::Heap(v.into_boxed_slice()))
            }
            Err(e) => Err(e),
        }
    }
}

/// Map `len` bytes of zeros at a huge-page boundary, marked for transparent huge pages.
fn map(len: usize) -> io::Result<NonNull<u8>> {
    let span = len
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
    // SAFETY: a fresh private anonymous mapping; the result is checked before use.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // Over-map by one huge page, then give back the unaligned head and the tail, leaving an
    // aligned mapping of exactly `len` bytes (rounded to whole pages by the kernel).
    let head = base.cast::<u8>().align_offset(HUGE_PAGE);
    let start = base.cast::<u8>().wrapping_add(head);
    let kept = len.next_multiple_of(page_size());
    let tail = span - head - kept;
    // SAFETY: both ranges lie inside the mapping just made and outside the kept part.
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap(start.add(kept).cast(), tail);
        }
        // Only a hint: a kernel without THP (or with it disabled) refuses and that is fine.
        libc::madvise(start.cast(), kept, libc::MADV_HUGEPAGE);
    }
    Ok(NonNull::new(start).expect("mmap never returns null on success"))
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(1)
}

impl std::ops::Deref for Region {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Region::Empty => &[],
            // SAFETY: ptr is valid for len initialized bytes (zero-filled by the kernel) for
            // as long as self lives.
            Region::Mapped { ptr, len } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), *len)
            },
            Region::Heap(b) => b,
        }
    }
}

impl std::ops::DerefMut for Region {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Region::Empty => &mut [],
            // SAFETY: as in deref, and &mut self guarantees exclusive access.
            Region::Mapped { ptr, len } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), *len)
            },
            Region::Heap(b) => b,
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Region::Mapped { ptr, len } = self {
            // SAFETY: the mapping was made by `map` with this start and (page-rounded) length
            // and is unmapped only here.
            unsafe { libc::munmap(ptr.as_ptr().cast(), len.next_multiple_of(page_size())) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_aligned_writable_and_released() {
        for len in [1, 4096, 1 << 20, HUGE_PAGE, HUGE_PAGE + 512] {
            let mut r = Region::zeroed(len).unwrap();
            assert_eq!(r.len(), len);
            assert_eq!(r.as_ptr() as usize % HUGE_PAGE, 0);
            assert!(r.iter().all(|&b| b == 0));
            r[len - 1] = 7;
            assert_eq!(r[len - 1], 7);
        }
        let e = Region::empty();
        assert!(e.is_empty());
    }

    #[test]
    fn refused_mappings_fall_back_to_the_heap() {
        let out_of_maps = |_| Err(io::Error::from_raw_os_error(libc::ENOMEM));
        let mut r = Region::zeroed_with(HUGE_PAGE, out_of_maps).unwrap();
        assert!(matches!(r, Region::Heap(_)));
        assert_eq!(r.len(), HUGE_PAGE);
        assert!(r.iter().all(|&b| b == 0));
        r[7] = 1;
        assert_eq!(r[7], 1);
        // Any other refusal is an error for the write to report.
        let denied = |_| Err(io::Error::from_raw_os_error(libc::EACCES));
        assert!(Region::zeroed_with(4096, denied).is_err());
    }
}
