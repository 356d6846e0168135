//! Direct I/O for file devices: the image is opened twice, once buffered (through the page
//! cache) and, when asked for and the file system allows it, once with `O_DIRECT`. Each
//! transfer (and each remainder of a short one) goes to the `O_DIRECT` descriptor when its
//! buffer address, file offset and length meet the kernel's direct-I/O alignment, and to the
//! buffered descriptor otherwise.
//!
//! Mixing the two on one file is coherent: both descriptors are the same inode, and Linux
//! writes back dirty page-cache pages of the range before an `O_DIRECT` read or write and
//! invalidates them after an `O_DIRECT` write (ext4, xfs, btrfs, block devices: the generic
//! and iomap direct-I/O paths do this), so a read returns the last completed write whichever
//! way either went. Only I/Os that overlap while both are in flight are unordered, as they are
//! for any SCSI disk. Durability needs nothing extra either: `fdatasync` on either descriptor
//! covers the inode, and `RWF_DSYNC` (FUA) applies to direct writes as to buffered ones.
//!
//! Alignment: `statx(STATX_DIOALIGN)` (Linux 6.1) when the file system reports it; otherwise
//! the logical block size of a block device (`BLKSSZGET`), or 4096 for a regular file, which
//! satisfies every common file system and device. A file system that reports direct-I/O
//! alignments of zero, or refuses the `O_DIRECT` open, leaves the device buffered only. Should
//! the kernel still refuse a transfer we judged aligned (`EINVAL`), that transfer is redone
//! buffered and the device stops using direct I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Alignment assumed for a regular file whose file system does not report its own.
const FALLBACK_ALIGN: u32 = 4096;

/// How many transfers (syscalls or SQEs, remainders of short ones included) each descriptor
/// has carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounts {
    pub direct: u64,
    pub buffered: u64,
}

/// The direct-I/O alignment a file needs: `mem` for buffer addresses, `offset` for file
/// offsets and lengths. Both are powers of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DioAlign {
    pub mem: u32,
    pub offset: u32,
}

/// A device's two descriptors on its image, and the rule for choosing between them.
pub(crate) struct Files {
    /// Always there: unaligned I/O, and thin provisioning (see `provision`).
    pub(crate) buffered: File,
    direct: Option<(File, DioAlign)>,
    /// Cleared for good if the kernel refuses a transfer that looked aligned.
    direct_ok: AtomicBool,
    direct_count: AtomicU64,
    buffered_count: AtomicU64,
}

impl Files {
    /// Wraps `buffered`, the image opened at `path`. With `want_direct`, also opens it with
    /// `O_DIRECT` through `open_direct` (a parameter so tests can play a refusing file system).
    pub(crate) fn new(
        buffered: File,
        path: &Path,
        want_direct: bool,
        open_direct: impl FnOnce(&Path) -> io::Result<File>,
    ) -> Files {
        let direct = if want_direct {
            match open_direct(path) {
                Ok(file) => match dio_align(&file) {
                    Some(align) => {
                        tracing::debug!(
                            "{}: direct I/O when aligned (memory {}, offset {})",
                            path.display(),
                            align.mem,
                            align.offset
                        );
                        Some((file, align))
                    }
                    None => {
                        tracing::info!(
                            "{}: the file system does not do direct I/O; buffered only",
                            path.display()
                        );
                        None
                    }
                },
                Err(e) => {
                    tracing::info!(
                        "{}: O_DIRECT refused ({e}); buffered I/O only",
                        path.display()
                    );
                    None
                }
            }
        } else {
            None
        };
        Files {
            buffered,
            direct_ok: AtomicBool::new(direct.is_some()),
            direct,
            direct_count: AtomicU64::new(0),
            buffered_count: AtomicU64::new(0),
        }
    }

    /// The alignment direct I/O needs, or None when the device does buffered I/O only.
    pub(crate) fn direct_align(&self) -> Option<DioAlign> {
        if !self.direct_ok.load(Ordering::Relaxed) {
            return None;
        }
        self.direct.as_ref().map(|&(_, align)| align)
    }

    /// The descriptor for a transfer of `len` bytes at file `offset` from or into memory at
    /// `ptr`, and whether it is the direct one. Counts the transfer.
    pub(crate) fn pick(&self, ptr: *const u8, offset: u64, len: usize) -> (&File, bool) {
        if let Some((file, align)) = &self.direct {
            if self.direct_ok.load(Ordering::Relaxed) && aligned(*align, ptr, offset, len) {
                self.direct_count.fetch_add(1, Ordering::Relaxed);
                return (file, true);
            }
        }
        self.buffered_count.fetch_add(1, Ordering::Relaxed);
        (&self.buffered, false)
    }

    /// The kernel answered `EINVAL` to a direct transfer we judged aligned: our idea of the
    /// alignment is wrong (or the file system changed its mind), so stop using direct I/O. The
    /// caller redoes the transfer, which then goes buffered.
    pub(crate) fn direct_refused(&self) {
        if self.direct_ok.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "direct I/O refused with EINVAL despite alignment {:?}; buffered I/O only for \
                 this device",
                self.direct.as_ref().map(|&(_, a)| a)
            );
        }
    }

    /// Give up direct I/O for this device (the LU's blocks are smaller than the alignment).
    pub(crate) fn stop_direct(&self) {
        self.direct_ok.store(false, Ordering::Relaxed);
    }

    pub(crate) fn counts(&self) -> IoCounts {
        IoCounts {
            direct: self.direct_count.load(Ordering::Relaxed),
            buffered: self.buffered_count.load(Ordering::Relaxed),
        }
    }
}

fn aligned(align: DioAlign, ptr: *const u8, offset: u64, len: usize) -> bool {
    let mem = align.mem as usize;
    let off = align.offset as u64;
    (ptr as usize) % mem == 0 && offset % off == 0 && (len as u64) % off == 0
}

/// Opens `path` read-write with `O_DIRECT`.
pub(crate) fn open_direct(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// The direct-I/O alignment of `file`, or None if its file system says it has no direct I/O.
pub(crate) fn dio_align(file: &File) -> Option<DioAlign> {
    if let Some((mem, offset)) = statx_dio_align(file) {
        if mem == 0 || offset == 0 {
            return None;
        }
        return Some(DioAlign { mem, offset });
    }
    let lbs = block_size(file).unwrap_or(FALLBACK_ALIGN);
    Some(DioAlign {
        mem: lbs,
        offset: lbs,
    })
}

/// `stx_dio_mem_align` and `stx_dio_offset_align`, when the kernel and file system report them.
fn statx_dio_align(file: &File) -> Option<(u32, u32)> {
    // SAFETY: statx of an fd we own (AT_EMPTY_PATH with an empty C string) into a zeroed,
    // properly sized struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    let (mem, offset) = (stx.stx_dio_mem_align, stx.stx_dio_offset_align);
    // Anything else would be a kernel bug; treat it as "not reported".
    if (mem != 0 && !mem.is_power_of_two()) || (offset != 0 && !offset.is_power_of_two()) {
        return None;
    }
    Some((mem, offset))
}

/// A block device's logical block size (BLKSSZGET); None for anything else.
fn block_size(file: &File) -> Option<u32> {
    use std::os::unix::fs::FileTypeExt;
    if !file.metadata().ok()?.file_type().is_block_device() {
        return None;
    }
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer we pass.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) };
    (r == 0 && size > 0 && (size as u32).is_power_of_two()).then_some(size as u32)
}
