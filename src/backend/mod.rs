//! Block devices behind logical units. One trait, [`BlockDevice`], serves every backend; the
//! daemon holds them as [`AnyDevice`] (static dispatch: no boxed future per I/O).
//!
//! Buffers move by ownership: a read is handed a `BytesMut` of the wanted length and gives it
//! back filled (the file backend lets the kernel write straight into it); a write is handed the
//! very `Bytes` the transport received the Data-Out segments into. Nothing is copied in between.

use bytes::{Bytes, BytesMut};
use std::future::Future;

pub mod buffer;
pub mod file;
pub mod null;
pub mod ram;
pub mod rated;

pub use file::FileDevice;
pub use null::NullDevice;
pub use ram::RamDevice;
pub use rated::{RatedDevice, RatedPool};

/// Errors from a backend. Each maps to the sense a SCSI initiator should see.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("access beyond the end of the device (offset {offset}, length {len})")]
    OutOfRange { offset: u64, len: u64 },
    #[error("backend is shutting down")]
    Closed,
}

impl BackendError {
    /// The sense for a failed read or write.
    pub fn sense(&self, writing: bool) -> crate::scsi::sense::Sense {
        use crate::scsi::sense::Sense;
        match self {
            BackendError::OutOfRange { .. } => Sense::LBA_OUT_OF_RANGE,
            BackendError::Closed => Sense::INTERNAL_TARGET_FAILURE,
            BackendError::Io(e) if writing && out_of_space(e) => Sense::SPACE_ALLOCATION_FAILED,
            BackendError::Io(_) if writing => Sense::WRITE_ERROR,
            BackendError::Io(_) => Sense::UNRECOVERED_READ_ERROR,
        }
    }
}

/// The file system is full (or over quota), or a RAM disk could not get memory: every
/// backend is thin, so that is space allocation failing, not a bad medium.
fn out_of_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull
                | std::io::ErrorKind::QuotaExceeded
                | std::io::ErrorKind::OutOfMemory
        )
}

pub type IoResult<T> = Result<T, BackendError>;

/// A byte-addressed block device. Offsets and lengths are in bytes and always whole logical
/// blocks (the SCSI layer validates ranges before calling).
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// Fill `buf` (whose length is the amount wanted) from `offset` and give it back.
    fn read(&self, offset: u64, buf: BytesMut) -> impl Future<Output = IoResult<BytesMut>> + Send;

    /// Write `data` at `offset`. With `fua`, the data is durable when this returns.
    fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> impl Future<Output = IoResult<()>> + Send;

    /// Make every completed write durable (SYNCHRONIZE CACHE).
    fn flush(&self) -> impl Future<Output = IoResult<()>> + Send;

    /// Whether `discard` really deallocates (thin provisioning: LBPME, LBPU, LBPWS). Where
    /// it does not, SCSI reports a fully provisioned device.
    fn thin(&self) -> bool {
        false
    }

    /// Deallocate `[offset, offset+len)`; afterwards the range reads as zeros. The default
    /// writes zeros, which is correct for any device that cannot deallocate.
    fn discard(&self, offset: u64, len: u64) -> impl Future<Output = IoResult<()>> + Send {
        async move {
            check_range(self.size(), offset, len)?;
            let zeros = Bytes::from(vec![0u8; len.min(1 << 20) as usize]);
            let mut done = 0;
            while done < len {
                let n = (len - done).min(zeros.len() as u64) as usize;
                self.write(offset + done, zeros.slice(..n), false).await?;
                done += n as u64;
            }
            Ok(())
        }
    }

    /// Allocation state from `offset` on: a list of extents covering at most `len` bytes, in
    /// order, each (length, mapped). The default reports everything mapped.
    fn allocation(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = IoResult<Vec<Extent>>> + Send {
        async move {
            check_range(self.size(), offset, len)?;
            Ok(vec![Extent { len, mapped: true }])
        }
    }
}

/// A run of bytes with one allocation state (GET LBA STATUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub mapped: bool,
}

/// Every backend the daemon can serve, dispatched without boxing.
pub enum AnyDevice {
    /// Shared so a RAM VVol keeps its data while its logical unit is closed and reopened.
    Ram(std::sync::Arc<RamDevice>),
    Null(NullDevice),
    File(FileDevice),
    /// RAM behind an emulated disk of fixed capacity (QoS labs and tests).
    Rated(RatedDevice),
}

impl AnyDevice {
    /// Extend the device to `size` bytes. Only file devices grow: a RAM disk's chunk table is
    /// fixed at creation, and a null device has nothing to grow.
    pub fn grow(&self, size: u64) -> IoResult<()> {
        match self {
            AnyDevice::File(f) => f.grow(size),
            _ => Err(BackendError::Io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "only file devices can grow",
            ))),
        }
    }
}

impl BlockDevice for AnyDevice {
    fn size(&self) -> u64 {
        match self {
            AnyDevice::Ram(d) => d.size(),
            AnyDevice::Null(d) => d.size(),
            AnyDevice::File(d) => d.size(),
            AnyDevice::Rated(d) => d.size(),
        }
    }

    async fn read(&self, offset: u64, buf: BytesMut) -> IoResult<BytesMut> {
        match self {
            AnyDevice::Ram(d) => d.read(offset, buf).await,
            AnyDevice::Null(d) => d.read(offset, buf).await,
            AnyDevice::File(d) => d.read(offset, buf).await,
            AnyDevice::Rated(d) => d.read(offset, buf).await,
        }
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> IoResult<()> {
        match self {
            AnyDevice::Ram(d) => d.write(offset, data, fua).await,
            AnyDevice::Null(d) => d.write(offset, data, fua).await,
            AnyDevice::File(d) => d.write(offset, data, fua).await,
            AnyDevice::Rated(d) => d.write(offset, data, fua).await,
        }
    }

    async fn flush(&self) -> IoResult<()> {
        match self {
            AnyDevice::Ram(d) => d.flush().await,
            AnyDevice::Null(d) => d.flush().await,
            AnyDevice::File(d) => d.flush().await,
            AnyDevice::Rated(d) => d.flush().await,
        }
    }

    fn thin(&self) -> bool {
        match self {
            AnyDevice::Ram(d) => d.thin(),
            AnyDevice::Null(d) => d.thin(),
            AnyDevice::File(d) => d.thin(),
            AnyDevice::Rated(d) => d.thin(),
        }
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        match self {
            AnyDevice::Ram(d) => d.discard(offset, len).await,
            AnyDevice::Null(d) => d.discard(offset, len).await,
            AnyDevice::File(d) => d.discard(offset, len).await,
            AnyDevice::Rated(d) => d.discard(offset, len).await,
        }
    }

    async fn allocation(&self, offset: u64, len: u64) -> IoResult<Vec<Extent>> {
        match self {
            AnyDevice::Ram(d) => d.allocation(offset, len).await,
            AnyDevice::Null(d) => d.allocation(offset, len).await,
            AnyDevice::File(d) => d.allocation(offset, len).await,
            AnyDevice::Rated(d) => d.allocation(offset, len).await,
        }
    }
}

/// Units of work of an I/O of `len` bytes: ceil(len / unit_bytes), at least 1 (a zero-length
/// command still costs a slot); `unit_bytes` 0 counts every I/O as one. QoS limits and the
/// rated disk's capacity both count in these units.
pub fn io_units(len: u32, unit_bytes: u32) -> u32 {
    if unit_bytes == 0 {
        return 1;
    }
    len.div_ceil(unit_bytes).max(1)
}

/// Checks that `[offset, offset+len)` lies within a device of `size` bytes.
pub(crate) fn check_range(size: u64, offset: u64, len: u64) -> IoResult<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BackendError::OutOfRange { offset, len }),
    }
}

/// A cheap deterministic byte pattern (xorshift) for backend tests, so mismatches are not
/// masked by repetition.
#[cfg(test)]
pub(crate) fn test_pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod sense_tests {
    use super::BackendError;
    use crate::scsi::sense::Sense;
    use std::io;

    #[test]
    fn out_of_space_is_a_space_allocation_failure_not_a_medium_error() {
        let io = |e: io::Error| BackendError::Io(e);
        for full in [
            io::Error::from_raw_os_error(libc::ENOSPC),
            io::Error::from_raw_os_error(libc::EDQUOT),
            io::Error::from(io::ErrorKind::OutOfMemory),
        ] {
            assert_eq!(io(full).sense(true), Sense::SPACE_ALLOCATION_FAILED);
        }
        let eio = || io(io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(eio().sense(true), Sense::WRITE_ERROR);
        assert_eq!(eio().sense(false), Sense::UNRECOVERED_READ_ERROR);
    }
}
