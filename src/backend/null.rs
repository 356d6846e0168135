//! A device that stores nothing: reads return zeros, writes vanish. It exists to measure the
//! target's own overhead, so the I/O path takes no lock and allocates nothing.

use super::{check_range, BlockDevice, Extent, IoResult};
use bytes::{Bytes, BytesMut};

/// A zero-filled, write-discarding device of a fixed size.
#[derive(Debug, Clone, Copy)]
pub struct NullDevice {
    size: u64,
}

impl NullDevice {
    pub fn new(size: u64) -> Self {
        NullDevice { size }
    }
}

impl BlockDevice for NullDevice {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, mut buf: BytesMut) -> IoResult<BytesMut> {
        check_range(self.size, offset, buf.len() as u64)?;
        // The caller may hand us a recycled buffer; it must not leak old data to the initiator.
        buf.fill(0);
        Ok(buf)
    }

    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> IoResult<()> {
        // Range-checked anyway so the null device rejects exactly what a real one would.
        check_range(self.size, offset, data.len() as u64)
    }

    async fn flush(&self) -> IoResult<()> {
        Ok(())
    }

    /// Nothing is ever stored, so nothing is ever mapped: thin, with reads of zeros.
    fn thin(&self) -> bool {
        true
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range(self.size, offset, len)
    }

    async fn allocation(&self, offset: u64, len: u64) -> IoResult<Vec<Extent>> {
        check_range(self.size, offset, len)?;
        Ok(vec![Extent { len, mapped: false }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;

    #[tokio::test]
    async fn reads_zeros_and_discards_writes() {
        let dev = NullDevice::new(1 << 20);
        assert_eq!(dev.size(), 1 << 20);
        dev.write(4096, Bytes::from(vec![0xAB; 8192]), true)
            .await
            .unwrap();
        let mut buf = BytesMut::zeroed(8192);
        buf.fill(0x55);
        let buf = dev.read(4096, buf).await.unwrap();
        assert_eq!(buf.len(), 8192);
        assert!(buf.iter().all(|&b| b == 0));
        dev.flush().await.unwrap();
    }

    #[tokio::test]
    async fn thin_and_never_mapped() {
        let dev = NullDevice::new(1 << 20);
        assert!(dev.thin());
        dev.discard(0, 4096).await.unwrap();
        assert!(dev.discard(1 << 20, 512).await.is_err());
        assert_eq!(
            dev.allocation(512, 1024).await.unwrap(),
            vec![Extent {
                len: 1024,
                mapped: false
            }]
        );
    }

    #[tokio::test]
    async fn rejects_out_of_range() {
        let dev = NullDevice::new(4096);
        let err = dev.read(4096, BytesMut::zeroed(512)).await.unwrap_err();
        assert!(matches!(
            err,
            BackendError::OutOfRange {
                offset: 4096,
                len: 512
            }
        ));
        let err = dev
            .write(u64::MAX, Bytes::from_static(&[0; 512]), false)
            .await;
        assert!(matches!(err, Err(BackendError::OutOfRange { .. })));
        // The very last block is fine.
        dev.read(3584, BytesMut::zeroed(512)).await.unwrap();
    }
}
