//! Placeholder until the backend work lands.
use super::*;
pub struct FileDevice;
impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        0
    }
    async fn read(&self, _o: u64, b: BytesMut) -> IoResult<BytesMut> {
        Ok(b)
    }
    async fn write(&self, _o: u64, _d: Bytes, _f: bool) -> IoResult<()> {
        Ok(())
    }
    async fn flush(&self) -> IoResult<()> {
        Ok(())
    }
}
