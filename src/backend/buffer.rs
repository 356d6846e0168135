//! Data buffers for the I/O path: aligned for direct I/O and recycled per thread, so a steady
//! stream of reads and writes allocates nothing.
//!
//! A buffer comes from [`take`] and, once the transport has sent it (a read's Data-In) or the
//! backend has written it (a write's Data-Out), goes back with [`recycle`]. Every pool is
//! thread-local: the network workers run a connection's reader, commands and writer on one
//! thread, so a buffer is normally taken and returned on the same thread and no lock is ever
//! touched. A buffer returned on another thread simply joins that thread's pool.
//!
//! Buffers are shared-mode `BytesMut`s cut at an [`ALIGN`] boundary out of a slightly larger
//! allocation. That mode matters: `freeze` and `Bytes::try_into_mut` then convert in place
//! (no allocation either way), which a plain vector-backed `BytesMut` does not guarantee.
//!
//! Contents of a taken buffer are whatever its last user left there. Every user overwrites the
//! whole length before anything reads it: a backend read fills the buffer (the [`BlockDevice`]
//! contract), and a write's buffer only runs once its Data-Out covered every byte (the transfer
//! accepts only in-order, gap-free offsets).
//!
//! [`BlockDevice`]: super::BlockDevice

use bytes::{Bytes, BytesMut};
use std::cell::RefCell;

/// Alignment of every buffer's start: a page, which satisfies O_DIRECT on any Linux
/// filesystem or block device.
pub const ALIGN: usize = 4096;

/// Size classes are powers of two from one page up to this; larger buffers are allocated
/// per use (they are rare: only transfers above 1 MiB in one command).
const LARGEST_CLASS: usize = 1 << 20;
const CLASSES: usize = (LARGEST_CLASS / ALIGN).trailing_zeros() as usize + 1;

/// Memory one thread keeps per size class (at least one buffer). Enough for the in-flight I/O
/// of the connections on a worker (4 MiB is 1,024 pages or 32 buffers of 128 KiB); beyond it,
/// returned buffers are freed, so a burst cannot pin memory for good.
const KEEP_PER_CLASS: usize = 4 << 20;

thread_local! {
    static POOLS: RefCell<[Vec<BytesMut>; CLASSES]> = RefCell::new(Default::default());
}

/// The class index and size for a buffer of `len` bytes, or `None` above the largest class.
fn class_of(len: usize) -> Option<(usize, usize)> {
    let size = len.max(ALIGN).checked_next_power_of_two()?;
    (size <= LARGEST_CLASS).then(|| ((size / ALIGN).trailing_zeros() as usize, size))
}

/// A new zeroed buffer of `capacity` bytes whose start is [`ALIGN`]-aligned, in shared mode.
fn allocate(capacity: usize) -> BytesMut {
    let mut whole = BytesMut::zeroed(capacity + ALIGN);
    let skip = whole.as_ptr().align_offset(ALIGN);
    // Splitting switches the buffer to shared mode even at zero; dropping the head leaves the
    // tail the sole owner of the allocation.
    drop(whole.split_to(skip));
    whole.truncate(capacity);
    whole
}

/// A buffer of exactly `len` bytes, starting on an [`ALIGN`] boundary. Its contents are
/// unspecified (zeros when new, old data when recycled): the caller must overwrite them all.
pub fn take(len: usize) -> BytesMut {
    let Some((class, size)) = class_of(len) else {
        return allocate(len);
    };
    let recycled = POOLS.with(|p| p.borrow_mut()[class].pop());
    let mut buf = recycled.unwrap_or_else(|| allocate(size));
    buf.truncate(len);
    buf
}

/// Hand a buffer back once nothing else refers to it. Anything that did not come from
/// [`take`] (or is still shared, or was advanced past its aligned start) is just dropped.
/// Pass the whole buffer `take` gave, never a slice of it: a slice from the middle that
/// happens to be aligned cannot be told from a small buffer, and would pin the whole
/// allocation under a smaller class (the writer therefore recycles only each read's owner).
pub fn recycle(data: Bytes) {
    // The cheap test first: headers and other small payloads are never page-aligned.
    if data.as_ptr().align_offset(ALIGN) != 0 {
        return;
    }
    if let Ok(buf) = data.try_into_mut() {
        recycle_mut(buf);
    }
}

/// [`recycle`] for a buffer that was never frozen.
pub fn recycle_mut(mut buf: BytesMut) {
    let Some((class, size)) = class_of(buf.len()) else {
        return;
    };
    // Only a buffer about the size of its class: anything larger (a slice of a bigger buffer
    // that happens to be aligned) would pin more memory than the class accounts for.
    if buf.capacity() < size
        || buf.capacity() > size + ALIGN
        || buf.as_ptr().align_offset(ALIGN) != 0
    {
        return;
    }
    // Within capacity, so this only writes zeros into the slack of a short buffer; a full
    // one is unchanged.
    buf.resize(size, 0);
    POOLS.with(|p| {
        let mut pools = p.borrow_mut();
        let pool = &mut pools[class];
        if pool.is_empty() || (pool.len() + 1) * size <= KEEP_PER_CLASS {
            pool.push(buf);
        }
    });
}

/// Buffers this thread's pools hold, per size in bytes (for tests and diagnostics).
pub fn pooled() -> Vec<(usize, usize)> {
    POOLS.with(|p| {
        p.borrow()
            .iter()
            .enumerate()
            .map(|(class, v)| (ALIGN << class, v.len()))
            .filter(|&(_, n)| n > 0)
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_sized() {
        for len in [
            1,
            512,
            4096,
            4097,
            65536,
            100_000,
            LARGEST_CLASS,
            LARGEST_CLASS + 512,
        ] {
            let b = take(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0, "len {len}");
        }
    }

    #[test]
    fn a_sent_buffer_comes_back_without_copy_or_move() {
        let mut b = take(4096);
        b.fill(7);
        let at = b.as_ptr();
        let frozen = b.freeze();
        assert_eq!(frozen.as_ptr(), at, "freeze kept the memory");
        recycle(frozen);
        assert_eq!(pooled(), vec![(4096, 1)]);
        let again = take(4096);
        assert_eq!(again.as_ptr(), at, "the same memory is handed out again");
        assert!(pooled().is_empty());
    }

    #[test]
    fn short_buffers_share_a_class_and_come_back_full_size() {
        let b = take(6000);
        let at = b.as_ptr();
        recycle_mut(b);
        assert_eq!(pooled(), vec![(8192, 1)]);
        let c = take(8192);
        assert_eq!((c.as_ptr(), c.len()), (at, 8192));
    }

    #[test]
    fn shared_advanced_or_foreign_buffers_are_not_pooled() {
        let b = take(4096).freeze();
        let other = b.clone();
        recycle(b);
        assert!(pooled().is_empty(), "still referenced elsewhere");
        let mut advanced = other;
        bytes::Buf::advance(&mut advanced, 512);
        recycle(advanced);
        recycle(Bytes::from(vec![0u8; 4096]));
        recycle(Bytes::from_static(&[0u8; 16]));
        // A foreign vector might happen to be aligned; it is only kept if it is.
        assert!(pooled().iter().all(|&(size, n)| size == 4096 && n <= 1));
    }

    #[test]
    fn the_head_of_a_bigger_buffer_is_not_pooled() {
        let whole = take(1 << 20).freeze();
        let head = whole.slice(..4096);
        drop(whole);
        recycle(head);
        assert!(pooled().is_empty(), "would pin 1 MiB in the 4 KiB class");
    }

    #[test]
    fn pools_are_bounded() {
        let size = 1 << 20;
        let held: Vec<_> = (0..10).map(|_| take(size)).collect();
        for b in held {
            recycle_mut(b);
        }
        assert_eq!(pooled(), vec![(size, KEEP_PER_CLASS / size)]);
    }
}

/// The contract the pool relies on: every backend overwrites the whole buffer it is handed,
/// so a recycled buffer never carries one volume's data into another's read.
#[cfg(test)]
mod backend_contract {
    use super::*;
    use crate::backend::{BlockDevice, FileDevice, NullDevice, RamDevice, RatedDevice, RatedPool};
    use std::sync::Arc;

    /// A recycled buffer full of someone else's bytes.
    fn dirty(len: usize) -> BytesMut {
        let mut b = take(len);
        b.fill(0xA5);
        b
    }

    async fn overwrites(dev: &impl BlockDevice, what: &str) {
        // Never written: must read as zeros. Then written: must read back exactly.
        let got = dev.read(8192, dirty(8192)).await.unwrap();
        assert!(got.iter().all(|&b| b == 0), "{what}: unwritten range");
        let data = Bytes::from(crate::backend::test_pattern(3, 4096));
        dev.write(4096, data.clone(), false).await.unwrap();
        let got = dev.read(4096, dirty(4096)).await.unwrap();
        if what != "null" {
            assert_eq!(got, data, "{what}: written range");
        }
    }

    #[tokio::test]
    async fn every_backend_overwrites_the_whole_buffer() {
        overwrites(&NullDevice::new(1 << 20), "null").await;
        let ram = Arc::new(RamDevice::new(1 << 20));
        overwrites(&*ram, "ram").await;
        let pool = Arc::new(RatedPool::new(
            100_000,
            8,
            std::time::Duration::from_micros(1),
            32768,
        ));
        overwrites(
            &RatedDevice::new(Arc::new(RamDevice::new(1 << 20)), pool),
            "rated",
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let file = FileDevice::open(&dir.path().join("disk"), 1 << 20, true).unwrap();
        overwrites(&file, "file").await;
    }

    /// What the alignment is for: the data path's buffers qualify for O_DIRECT, so a file LUN
    /// with `direct_io` bypasses the page cache for whole-block transfers.
    #[tokio::test]
    async fn pool_buffers_take_the_direct_path() {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::backend::file::FileOptions {
            direct_io: true,
            ..Default::default()
        };
        let file = FileDevice::open_with(&dir.path().join("disk"), 1 << 20, true, options).unwrap();
        if file.direct_align().is_none() {
            eprintln!("file system without O_DIRECT here: nothing to check");
            return;
        }
        let mut data = take(8192);
        data.fill(0x3C);
        let data = data.freeze();
        file.write(4096, data.clone(), false).await.unwrap();
        let got = file.read(4096, take(8192)).await.unwrap();
        assert_eq!(got, data);
        let counts = file.io_counts();
        assert_eq!((counts.direct, counts.buffered), (2, 0));

        // Blocks smaller than the alignment would mix the two paths on one file: the device
        // then stays buffered.
        let align = file.direct_align().unwrap().offset;
        file.fit_direct_io_to(align);
        assert!(file.direct_align().is_some());
        file.fit_direct_io_to(align / 2);
        assert!(file.direct_align().is_none());
        file.read(4096, take(8192)).await.unwrap();
        assert_eq!(file.io_counts().buffered, 1);
    }
}
