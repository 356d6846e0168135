//! Thin provisioning for file devices: UNMAP punches holes (`fallocate(PUNCH_HOLE |
//! KEEP_SIZE)`), GET LBA STATUS walks holes with `lseek(SEEK_DATA/SEEK_HOLE)`.
//!
//! Both run as blocking calls on `tokio::task::spawn_blocking`, on the device's buffered
//! descriptor (the same open file the I/O engine uses, so no extra descriptor is needed; a
//! punched range is dropped from the page cache, so direct reads agree with buffered ones),
//! rather than through the ring: io_uring has no lseek, the thread engine would need the same
//! code anyway, and UNMAP/GET LBA STATUS are rare next to reads and writes, so one
//! blocking-pool hop costs nothing that matters and keeps both engines identical.

use super::direct::Files;
use crate::backend::{BackendError, Extent, IoResult};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// At most this many extents per GET LBA STATUS: each costs two lseeks, and an initiator
/// asks again from where the answer ended.
const MAX_EXTENTS: usize = 64;

/// Deallocates `[offset, offset+len)`; it reads as zeros afterwards. Where the file system
/// cannot punch holes, the range is zeroed by writing instead (still correct, just not thin).
pub(super) fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (off, n) = (to_off(offset)?, to_off(len)?);
    // SAFETY: fallocate on a descriptor we own for the duration of the call; no memory passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            n,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(err);
    }
    write_zeros(file, offset, len)
}

/// Whether the file system can punch holes in `file`: a punch past its end (`KEEP_SIZE`, so
/// nothing changes) is refused with EOPNOTSUPP where it cannot (NFSv3, some FUSE file
/// systems). A device there is not thin: UNMAP would write zeros, allocating the very space
/// it was meant to free.
pub(super) fn can_punch(file: &File) -> bool {
    let Ok(end) = file.metadata().map(|m| m.len()).and_then(to_off) else {
        return false;
    };
    // SAFETY: fallocate on a descriptor we own for the duration of the call; no memory passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            end,
            4096,
        )
    };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EOPNOTSUPP)
}

fn write_zeros(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Allocation from `offset` for at most `len` bytes, as alternating data/hole extents.
pub(super) fn allocation(file: &File, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
    let end = offset + len;
    let mut extents = Vec::new();
    let mut pos = offset;
    while pos < end && extents.len() < MAX_EXTENTS {
        // Where the next data starts; ENXIO means there is none up to EOF.
        let data = seek(file, pos, libc::SEEK_DATA)?.unwrap_or(end).min(end);
        if data > pos {
            extents.push(Extent {
                len: data - pos,
                mapped: false,
            });
            pos = data;
            continue;
        }
        // There is always a hole at EOF, so SEEK_HOLE finds one.
        let hole = seek(file, pos, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        extents.push(Extent {
            len: hole.max(pos + 1) - pos,
            mapped: true,
        });
        pos = hole.max(pos + 1);
    }
    Ok(extents)
}

fn seek(file: &File, pos: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek on a descriptor we own; it only moves the shared file offset, which no
    // other I/O uses (all reads and writes are positioned).
    let r = unsafe { libc::lseek(file.as_raw_fd(), to_off(pos)?, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        _ => Err(err),
    }
}

fn to_off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Runs `f` on the blocking pool with the file; a pool that is gone reads as a closed device.
pub(super) async fn blocking<T: Send + 'static>(
    files: &Arc<Files>,
    f: impl FnOnce(&File) -> io::Result<T> + Send + 'static,
) -> IoResult<T> {
    let files = files.clone();
    match tokio::task::spawn_blocking(move || f(&files.buffered)).await {
        Ok(r) => r.map_err(BackendError::from),
        Err(_) => Err(BackendError::Closed),
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::{BlockDevice, Extent, FileDevice};
    use bytes::{Bytes, BytesMut};
    use std::os::unix::fs::MetadataExt;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_punch_probe_changes_nothing() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe.img");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.write_all(&[0x5A; 8192]).unwrap();
        // ext4, xfs and tmpfs punch holes, as where the tests run.
        assert!(super::can_punch(&f));
        let mut back = Vec::new();
        std::fs::File::open(&path)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, vec![0x5A; 8192], "size and data unchanged");
    }

    #[tokio::test]
    async fn punched_ranges_read_zeros_free_space_and_show_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thin.img");
        let dev = FileDevice::open(&path, 8 * MIB, true).unwrap();
        assert!(dev.thin());
        assert_eq!(
            dev.allocation(0, 8 * MIB).await.unwrap(),
            vec![Extent {
                len: 8 * MIB,
                mapped: false
            }]
        );
        dev.write(0, Bytes::from(vec![0xA5; 4 * MIB as usize]), true)
            .await
            .unwrap();
        let blocks_before = std::fs::metadata(&path).unwrap().blocks();
        dev.discard(MIB, 2 * MIB).await.unwrap();
        let blocks_after = std::fs::metadata(&path).unwrap().blocks();
        // st_blocks counts 512-byte units: 2 MiB is 4096 of them.
        assert!(
            blocks_before - blocks_after >= 4096,
            "{blocks_before} -> {blocks_after}"
        );
        let back = dev
            .read(MIB - 512, BytesMut::zeroed(2 * MIB as usize + 1024))
            .await
            .unwrap();
        assert_eq!(&back[..512], &[0xA5; 512][..]);
        assert!(back[512..512 + 2 * MIB as usize].iter().all(|&b| b == 0));
        assert_eq!(&back[back.len() - 512..], &[0xA5; 512][..]);
        assert_eq!(
            dev.allocation(0, 8 * MIB).await.unwrap(),
            vec![
                Extent {
                    len: MIB,
                    mapped: true
                },
                Extent {
                    len: 2 * MIB,
                    mapped: false
                },
                Extent {
                    len: MIB,
                    mapped: true
                },
                Extent {
                    len: 4 * MIB,
                    mapped: false
                },
            ]
        );
        // From inside a run, and cut to the asked length.
        assert_eq!(
            dev.allocation(MIB / 2, MIB).await.unwrap(),
            vec![
                Extent {
                    len: MIB / 2,
                    mapped: true
                },
                Extent {
                    len: MIB / 2,
                    mapped: false
                },
            ]
        );
        assert!(dev.discard(8 * MIB, 512).await.is_err());
        assert!(dev.allocation(8 * MIB - 512, 1024).await.is_err());
    }
}
