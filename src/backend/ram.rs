//! A RAM disk that costs memory only where it has been written.
//!
//! The device is cut into 2 MiB chunks, each mapped on its first write (see `ram/region.rs` for why
//! the memory comes straight from the kernel, in huge pages) and guarded by
//! its own lock, so I/O from many connections only contends when it touches the same chunk, and
//! no lock is ever held across more than one chunk's copy. Unwritten chunks read as zeros
//! without being allocated. UNMAP gives whole chunks back (their memory is swapped for an
//! empty region, which marks the chunk deallocated) and zeroes partial ones.

use super::{check_range, BackendError, BlockDevice, Extent, IoResult};
use bytes::{Bytes, BytesMut};
use region::Region;
use std::ops::Range;
use std::sync::{OnceLock, RwLock};

mod region;

/// Chunk size: one huge page, so each chunk can be a single TLB entry; the chunk table stays
/// small (about 20 bytes per MiB of device).
const CHUNK: u64 = region::HUGE_PAGE as u64;

/// A chunk's bytes; an empty region means deallocated (never written, or unmapped since), which
/// reads as zeros. Keeping the lock in place while releasing the memory means a discard never
/// races with a reader over which lock guards the chunk.
type Chunk = RwLock<Region>;

/// A lazily allocated, sparse RAM disk.
pub struct RamDevice {
    size: u64,
    chunks: Box<[OnceLock<Chunk>]>,
}

impl RamDevice {
    /// A RAM disk of `size` bytes. Allocates only the chunk table up front.
    ///
    /// # Panics
    /// If even the chunk table cannot be allocated (a size beyond any real memory); use
    /// [`RamDevice::try_new`] to get an error instead.
    pub fn new(size: u64) -> Self {
        match Self::try_new(size) {
            Ok(dev) => dev,
            Err(e) => panic!("RAM device of {size} bytes: {e}"),
        }
    }

    /// Like [`RamDevice::new`], but reports an impossible size as an error.
    pub fn try_new(size: u64) -> IoResult<Self> {
        let too_big = || {
            BackendError::Io(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("cannot hold a {size}-byte RAM device"),
            ))
        };
        let count = usize::try_from(size.div_ceil(CHUNK)).map_err(|_| too_big())?;
        let mut chunks = Vec::new();
        chunks.try_reserve_exact(count).map_err(|_| too_big())?;
        chunks.resize_with(count, OnceLock::new);
        Ok(RamDevice {
            size,
            chunks: chunks.into_boxed_slice(),
        })
    }

    /// Memory committed to chunks so far, in whole chunks (for tests and statistics).
    pub fn allocated_bytes(&self) -> u64 {
        (0..self.chunks.len())
            .filter(|&i| self.is_mapped(i))
            .count() as u64
            * CHUNK
    }

    fn is_mapped(&self, index: usize) -> bool {
        self.chunks[index]
            .get()
            .is_some_and(|c| !c.read().unwrap_or_else(|e| e.into_inner()).is_empty())
    }

    /// Where the chunk entry for `offset` lives (to warm it before an I/O); None past the end.
    pub fn chunk_address(&self, offset: u64) -> Option<usize> {
        let entry = self.chunks.get(usize::try_from(offset / CHUNK).ok()?)?;
        Some(entry as *const OnceLock<Chunk> as usize)
    }

    fn chunk_len(&self, index: usize) -> usize {
        (self.size - index as u64 * CHUNK).min(CHUNK) as usize
    }

    /// The chunk at `index`, mapping it zero-filled on first use (the kernel backs it lazily,
    /// as the copy touches the pages).
    fn chunk_or_alloc(&self, index: usize) -> IoResult<&Chunk> {
        if let Some(chunk) = self.chunks[index].get() {
            return Ok(chunk);
        }
        // Two first writers may both map; the loser's region is unmapped when dropped.
        let fresh = Region::zeroed(self.chunk_len(index))?;
        Ok(self.chunks[index].get_or_init(|| RwLock::new(fresh)))
    }
}

/// Splits the device range starting at `offset` of `len` bytes into per-chunk pieces:
/// (chunk index, range within the chunk, range within the caller's buffer).
/// The caller has range-checked, so every index is within the table.
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (usize, Range<usize>, Range<usize>)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done == len {
            return None;
        }
        let pos = offset + done as u64;
        let index = (pos / CHUNK) as usize;
        let within = (pos % CHUNK) as usize;
        let n = (CHUNK as usize - within).min(len - done);
        let piece = (index, within..within + n, done..done + n);
        done += n;
        Some(piece)
    })
}

impl BlockDevice for RamDevice {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, mut buf: BytesMut) -> IoResult<BytesMut> {
        check_range(self.size, offset, buf.len() as u64)?;
        for (index, src, dst) in pieces(offset, buf.len()) {
            match self.chunks[index].get() {
                // A poisoned lock only means a writer panicked mid-copy; the bytes are still
                // bytes, and a torn block is what a crashed write looks like on any disk.
                Some(chunk) => {
                    let data = chunk.read().unwrap_or_else(|e| e.into_inner());
                    match data.get(src) {
                        Some(bytes) => buf[dst].copy_from_slice(bytes),
                        None => buf[dst].fill(0),
                    }
                }
                None => buf[dst].fill(0),
            }
        }
        Ok(buf)
    }

    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> IoResult<()> {
        check_range(self.size, offset, data.len() as u64)?;
        for (index, dst, src) in pieces(offset, data.len()) {
            let mut chunk = self
                .chunk_or_alloc(index)?
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if chunk.is_empty() {
                // Unmapped earlier: map it again, zero-filled.
                *chunk = Region::zeroed(self.chunk_len(index))?;
            }
            chunk[dst].copy_from_slice(&data[src]);
        }
        Ok(())
    }

    fn thin(&self) -> bool {
        true
    }

    /// Whole chunks are released; the edges of the range are zeroed in place, so memory is
    /// returned at chunk granularity while reads return zeros for exactly the range.
    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range(self.size, offset, len)?;
        let len = usize::try_from(len).map_err(|_| BackendError::OutOfRange { offset, len })?;
        for (index, range, _) in pieces(offset, len) {
            let Some(chunk) = self.chunks[index].get() else {
                continue;
            };
            let mut data = chunk.write().unwrap_or_else(|e| e.into_inner());
            if range.len() == self.chunk_len(index) {
                *data = Region::empty();
            } else if let Some(bytes) = data.get_mut(range) {
                bytes.fill(0);
            }
        }
        Ok(())
    }

    /// Chunk by chunk: a chunk holding memory is mapped, any other is deallocated.
    async fn allocation(&self, offset: u64, len: u64) -> IoResult<Vec<Extent>> {
        check_range(self.size, offset, len)?;
        let mut extents: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < offset + len {
            let index = (pos / CHUNK) as usize;
            let n = ((index as u64 + 1) * CHUNK).min(offset + len) - pos;
            let mapped = self.is_mapped(index);
            match extents.last_mut() {
                Some(last) if last.mapped == mapped => last.len += n,
                _ => extents.push(Extent { len: n, mapped }),
            }
            pos += n;
        }
        Ok(extents)
    }

    /// RAM is as durable as it gets; nothing to do.
    async fn flush(&self) -> IoResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::backend::test_pattern as pattern;

    async fn read_vec(dev: &RamDevice, offset: u64, len: usize) -> Vec<u8> {
        dev.read(offset, BytesMut::zeroed(len))
            .await
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn unwritten_reads_zero_without_allocating() {
        let dev = RamDevice::new(4 << 30);
        assert_eq!(dev.size(), 4 << 30);
        let mut buf = BytesMut::zeroed(65536);
        buf.fill(0xEE);
        let buf = dev.read(3 << 30, buf).await.unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(dev.allocated_bytes(), 0);
        dev.write(0, Bytes::from(vec![1; 512]), false)
            .await
            .unwrap();
        assert_eq!(dev.allocated_bytes(), CHUNK);
    }

    #[tokio::test]
    async fn round_trip_across_chunk_boundaries() {
        let dev = RamDevice::new(8 * CHUNK + 4096);
        // Odd block-multiple offsets and lengths, several straddling one or more chunk edges.
        let cases = [
            (0u64, 512usize),
            (CHUNK - 512, 1024),
            (2 * CHUNK - 4096 + 512, 3 * CHUNK as usize + 1536),
            (7 * CHUNK + 512, CHUNK as usize + 3584), // runs into the short last chunk
            (17 * 512, 7 * 512),
        ];
        for (i, &(offset, len)) in cases.iter().enumerate() {
            let data = pattern(i as u64 + 7, len);
            dev.write(offset, Bytes::from(data.clone()), i % 2 == 0)
                .await
                .unwrap();
            assert_eq!(read_vec(&dev, offset, len).await, data, "case {i}");
        }
        // Bytes around a write are untouched.
        let dev = RamDevice::new(4 * CHUNK);
        let data = pattern(99, 3 * 512);
        dev.write(CHUNK - 512, Bytes::from(data.clone()), false)
            .await
            .unwrap();
        let around = read_vec(&dev, CHUNK - 1024, 5 * 512).await;
        assert!(around[..512].iter().all(|&b| b == 0));
        assert_eq!(&around[512..2048], &data[..]);
        assert!(around[2048..].iter().all(|&b| b == 0));
        dev.flush().await.unwrap();
    }

    #[tokio::test]
    async fn rejects_out_of_range() {
        let dev = RamDevice::new(CHUNK + 512);
        assert!(matches!(
            dev.read(CHUNK, BytesMut::zeroed(1024)).await,
            Err(BackendError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.write(u64::MAX - 100, Bytes::from_static(&[0; 512]), false)
                .await,
            Err(BackendError::OutOfRange { .. })
        ));
        dev.write(CHUNK, Bytes::from_static(&[3; 512]), false)
            .await
            .unwrap();
        assert_eq!(read_vec(&dev, CHUNK, 512).await, vec![3; 512]);
    }

    #[tokio::test]
    async fn discard_frees_whole_chunks_and_zeroes_edges() {
        let dev = RamDevice::new(4 * CHUNK);
        dev.write(0, Bytes::from(vec![7u8; 3 * CHUNK as usize]), false)
            .await
            .unwrap();
        assert_eq!(dev.allocated_bytes(), 3 * CHUNK);
        // From the middle of chunk 0 to the middle of chunk 2: only chunk 1 is freed.
        dev.discard(CHUNK / 2, 2 * CHUNK).await.unwrap();
        assert_eq!(dev.allocated_bytes(), 2 * CHUNK);
        let back = read_vec(&dev, 0, 3 * CHUNK as usize).await;
        let half = (CHUNK / 2) as usize;
        assert!(back[..half].iter().all(|&b| b == 7));
        assert!(back[half..5 * half].iter().all(|&b| b == 0));
        assert!(back[5 * half..].iter().all(|&b| b == 7));
        assert_eq!(
            dev.allocation(0, 4 * CHUNK).await.unwrap(),
            vec![
                Extent {
                    len: CHUNK,
                    mapped: true
                },
                Extent {
                    len: CHUNK,
                    mapped: false
                },
                Extent {
                    len: CHUNK,
                    mapped: true
                },
                Extent {
                    len: CHUNK,
                    mapped: false
                },
            ]
        );
        // A freed chunk comes back zero-filled on its next write.
        dev.write(CHUNK + 512, Bytes::from(vec![9u8; 512]), false)
            .await
            .unwrap();
        let back = read_vec(&dev, CHUNK, 1536).await;
        assert_eq!((back[0], back[512], back[1024]), (0, 9, 0));
        assert_eq!(
            dev.allocation(CHUNK + 4096, 512).await.unwrap(),
            vec![Extent {
                len: 512,
                mapped: true
            }]
        );
        assert!(dev.discard(4 * CHUNK, 512).await.is_err());
    }

    #[test]
    fn absurd_size_is_an_error() {
        assert!(RamDevice::try_new(u64::MAX).is_err());
        let empty = RamDevice::new(0);
        assert_eq!(empty.size(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_tasks_see_their_own_data() {
        let dev = Arc::new(RamDevice::new(16 * CHUNK));
        let tasks: Vec<_> = (0..32u64)
            .map(|t| {
                let dev = dev.clone();
                tokio::spawn(async move {
                    // Each task owns a disjoint region straddling a chunk edge.
                    let len = 64 * 1024;
                    let offset = t * len as u64 * 4 + CHUNK / 2 - 4096;
                    for round in 0..20 {
                        let data = pattern(t * 1000 + round, len);
                        dev.write(offset, Bytes::from(data.clone()), false)
                            .await
                            .unwrap();
                        assert_eq!(read_vec(&dev, offset, len).await, data);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
}
