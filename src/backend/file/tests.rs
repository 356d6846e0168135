//! Every behaviour is checked on both engines: the ring (when the kernel allows it), shared or
//! a thread's own, and the thread fallback.

use super::*;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::time::Duration;

use crate::backend::test_pattern as pattern;

fn temp_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("lun.img")
}

async fn read_vec(dev: &FileDevice, offset: u64, len: usize) -> Vec<u8> {
    dev.read(offset, BytesMut::zeroed(len))
        .await
        .unwrap()
        .to_vec()
}

/// Runs `$body(choice)` as one test per engine.
macro_rules! both_engines {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn ring() {
                $body(EngineChoice::Auto).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn threads() {
                $body(EngineChoice::Threads).await;
            }
            /// As on a network thread: the test's thread submits on a ring of its own.
            #[tokio::test(flavor = "current_thread")]
            async fn own_ring() {
                let installed = local::install();
                eprintln!("own ring: {installed:?}");
                $body(EngineChoice::Auto).await;
                if installed.is_ok() {
                    assert!(
                        local::submitted_here() > 0,
                        "nothing went through the own ring"
                    );
                }
            }
        }
    };
}

async fn round_trip(choice: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let dev = FileDevice::open_with(&temp_path(&dir), 64 << 20, true, choice).unwrap();
    if choice == EngineChoice::Auto {
        // Not asserted: a sandbox may forbid io_uring, and then the fallback is the point.
        eprintln!("io_uring in use: {}", dev.uses_io_uring());
    }
    assert_eq!(dev.size(), 64 << 20);
    let cases = [
        (0u64, 512usize, false),
        (7 * 512, 9 * 512, true),
        ((1 << 20) - 1536, 5 * 4096, false),
        ((3 << 20) + 512, 8 << 20, true), // one big transfer
        ((64 << 20) - 4096, 4096, false), // the very end
    ];
    for (i, &(offset, len, fua)) in cases.iter().enumerate() {
        let data = pattern(i as u64 + 1, len);
        dev.write(offset, Bytes::from(data.clone()), fua)
            .await
            .unwrap();
        assert_eq!(read_vec(&dev, offset, len).await, data, "case {i}");
    }
    // Never-written space reads as zeros (the file is sparse there).
    assert!(read_vec(&dev, 40 << 20, 65536)
        .await
        .iter()
        .all(|&b| b == 0));
    dev.flush().await.unwrap();
    // Empty transfers are valid no-ops.
    assert!(dev.read(512, BytesMut::new()).await.unwrap().is_empty());
    dev.write(512, Bytes::new(), true).await.unwrap();
}
both_engines!(round_trip_works, round_trip);

async fn out_of_range(choice: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let dev = FileDevice::open_with(&temp_path(&dir), 1 << 20, true, choice).unwrap();
    assert!(matches!(
        dev.read((1 << 20) - 512, BytesMut::zeroed(1024)).await,
        Err(BackendError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.write(u64::MAX - 511, Bytes::from_static(&[1; 512]), false)
            .await,
        Err(BackendError::OutOfRange { .. })
    ));
    // The last block itself is in range, and nothing leaked past the end.
    assert_eq!(read_vec(&dev, (1 << 20) - 512, 512).await, vec![0; 512]);
    assert_eq!(std::fs::metadata(temp_path(&dir)).unwrap().len(), 1 << 20);
}
both_engines!(out_of_range_is_refused, out_of_range);

async fn reopen(choice: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir);
    let data = pattern(42, 3 * 4096);
    {
        let dev = FileDevice::open_with(&path, 8 << 20, true, choice).unwrap();
        dev.write(12345 * 512, Bytes::from(data.clone()), true)
            .await
            .unwrap();
    }
    // Reopened without create, and then grown: data stays, the new tail reads as zeros.
    let dev = FileDevice::open_with(&path, 8 << 20, false, choice).unwrap();
    assert_eq!(read_vec(&dev, 12345 * 512, data.len()).await, data);
    drop(dev);
    let dev = FileDevice::open_with(&path, 16 << 20, false, choice).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 16 << 20);
    assert_eq!(read_vec(&dev, 12345 * 512, data.len()).await, data);
    assert!(read_vec(&dev, 12 << 20, 4096).await.iter().all(|&b| b == 0));
}
both_engines!(reopen_keeps_data, reopen);

async fn concurrent(choice: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(FileDevice::open_with(&temp_path(&dir), 64 << 20, true, choice).unwrap());
    // More tasks than a ring has slots, so requests also queue inside the engine.
    let tasks: Vec<_> = (0..1200u64)
        .map(|t| {
            let dev = dev.clone();
            tokio::spawn(async move {
                let len = 16 * 1024 + 512 * (t as usize % 7);
                let offset = t * 32 * 1024 + 512 * (t % 5);
                for round in 0..4 {
                    let data = pattern(t * 100 + round, len);
                    dev.write(offset, Bytes::from(data.clone()), round == 3)
                        .await
                        .unwrap();
                    assert_eq!(read_vec(&dev, offset, len).await, data);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    dev.flush().await.unwrap();
}
both_engines!(concurrent_io_from_many_tasks, concurrent);

/// Waits (up to 20 s) until `token` is dead.
async fn wait_gone<T>(token: &std::sync::Weak<T>, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while token.upgrade().is_some() {
        assert!(std::time::Instant::now() < deadline, "{what} still alive");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn drop_releases(choice: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let dev = FileDevice::open_with(&temp_path(&dir), 8 << 20, true, choice).unwrap();
    let worker = dev.worker_token();
    let files = dev.files_token();
    dev.write(0, Bytes::from(vec![1; 4096]), false)
        .await
        .unwrap();
    assert!(worker.upgrade().is_some());
    let shared_ring = dev.uses_io_uring();
    drop(dev);
    if shared_ring {
        // The ring serves other devices too: it outlives this one, which lets go of its files.
        assert!(worker.upgrade().is_some(), "shared ring thread exited");
        wait_gone(&files, "files of a dropped device").await;
    } else {
        assert!(worker.upgrade().is_none(), "I/O thread outlived its device");
        assert!(files.upgrade().is_none(), "files outlived their device");
    }
}
both_engines!(drop_releases_the_device, drop_releases);

async fn drop_with_abandoned_io(choice: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(FileDevice::open_with(&temp_path(&dir), 32 << 20, true, choice).unwrap());
    let files = dev.files_token();
    // Start I/O, then abandon it mid-flight: the buffers must stay with the engine, and the
    // device must still shut down without hanging.
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let dev = dev.clone();
            tokio::spawn(async move {
                let data = Bytes::from(vec![t as u8; 256 * 1024]);
                let _ = dev.write(t * 256 * 1024, data, true).await;
                let _ = dev.read(t * 256 * 1024, BytesMut::zeroed(256 * 1024)).await;
            })
        })
        .collect();
    tokio::task::yield_now().await;
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    let dev = Arc::into_inner(dev).expect("all tasks are gone");
    let dropped = tokio::task::spawn_blocking(move || drop(dev));
    tokio::time::timeout(Duration::from_secs(20), dropped)
        .await
        .unwrap()
        .unwrap();
    // Everything it submitted has completed and its files are closed.
    wait_gone(&files, "files of a dropped device").await;
}
both_engines!(drop_with_abandoned_io_does_not_hang, drop_with_abandoned_io);

async fn truncated_behind_our_back(choice: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir);
    let dev = FileDevice::open_with(&path, 1 << 20, true, choice).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096 + 512)
        .unwrap();
    // Straddles the new end: a short read, then EOF. Must be an error, not a hang or garbage.
    let err = dev.read(4096, BytesMut::zeroed(4096)).await.unwrap_err();
    assert!(matches!(err, BackendError::Io(ref e) if e.kind() == io::ErrorKind::UnexpectedEof));
    assert_eq!(read_vec(&dev, 0, 4096).await, vec![0; 4096]);
}
both_engines!(truncated_file_reads_fail_cleanly, truncated_behind_our_back);

#[test]
fn creates_sparse_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir);
    let dev = FileDevice::open(&path, 1 << 30, true).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    // st_blocks counts 512-byte units actually allocated; a zero-filled file would have 2M.
    assert!(meta.blocks() < 2048, "{} blocks allocated", meta.blocks());
    drop(dev);
}

#[test]
fn sizing_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir);
    // Without create, a missing file is an error.
    let err = FileDevice::open(&path, 1 << 20, false).err().unwrap();
    assert!(matches!(err, BackendError::Io(ref e) if e.kind() == io::ErrorKind::NotFound));
    // A file larger than configured is never shrunk.
    std::fs::write(&path, vec![7u8; 8192]).unwrap();
    let err = FileDevice::open(&path, 4096, true).err().unwrap();
    assert!(err.to_string().contains("refusing to shrink"), "{err}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
    // A smaller one is extended.
    drop(FileDevice::open(&path, 1 << 20, false).unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
    // A directory is not a disk.
    assert!(FileDevice::open(dir.path(), 4096, false).is_err());
}

#[tokio::test]
async fn fua_write_and_flush_succeed_on_default_engine() {
    let dir = tempfile::tempdir().unwrap();
    let dev = FileDevice::open(&temp_path(&dir), 1 << 20, true).unwrap();
    dev.write(4096, Bytes::from(pattern(5, 8192)), true)
        .await
        .unwrap();
    dev.flush().await.unwrap();
    // The bytes are in the file itself, not just in our process.
    let on_disk = std::fs::read(temp_path(&dir)).unwrap();
    assert_eq!(&on_disk[4096..4096 + 8192], &pattern(5, 8192)[..]);
}

// Direct I/O. These files live next to the test binary, on the disk the build happens on,
// because O_DIRECT needs a file system that does it (a tmpfs TMPDIR might not).

fn dio_dir() -> tempfile::TempDir {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/vvold-… → target/debug
    let build_dir = exe.parent().and_then(Path::parent).unwrap();
    tempfile::tempdir_in(build_dir).unwrap()
}

/// Addresses and offsets in the direct-I/O tests are multiples of this (or deliberately not).
const ALIGN: usize = 4096;

/// `len` zero bytes whose address is `skew` bytes past a multiple of [`ALIGN`]: a buffer
/// allocated larger and cut at the wanted address, as the data path's pool will hand out.
fn buf_at(len: usize, skew: usize) -> BytesMut {
    let mut buf = BytesMut::zeroed(len + 2 * ALIGN);
    let pad = buf.as_ptr().align_offset(ALIGN) + skew;
    let _ = buf.split_to(pad);
    buf.truncate(len);
    assert_eq!(buf.as_ptr() as usize % ALIGN, skew);
    buf
}

fn bytes_at(data: &[u8], skew: usize) -> Bytes {
    let mut buf = buf_at(data.len(), skew);
    buf.copy_from_slice(data);
    let bytes = buf.freeze();
    assert_eq!(bytes.as_ptr() as usize % ALIGN, skew);
    bytes
}

async fn read_at_skew(dev: &FileDevice, offset: u64, len: usize, skew: usize) -> Vec<u8> {
    let buf = dev.read(offset, buf_at(len, skew)).await.unwrap();
    assert_eq!(
        buf.as_ptr() as usize % ALIGN,
        skew,
        "read came back in another buffer"
    );
    buf.to_vec()
}

fn direct_options(engine: EngineChoice) -> FileOptions {
    FileOptions {
        engine,
        direct_io: true,
    }
}

/// Opens a direct-I/O device and checks the test's alignment is enough for it.
fn open_direct_dev(dir: &tempfile::TempDir, size: u64, choice: EngineChoice) -> FileDevice {
    let dev = FileDevice::open_with(&temp_path(dir), size, true, direct_options(choice)).unwrap();
    let align = dev
        .direct_align()
        .expect("the build directory's file system should accept O_DIRECT");
    assert!(
        align.mem as usize <= ALIGN && align.offset as usize <= ALIGN,
        "{align:?}"
    );
    dev
}

/// Checks the counts moved by exactly `direct` and `buffered` since `before`.
#[track_caller]
fn assert_moved(dev: &FileDevice, before: IoCounts, direct: u64, buffered: u64) -> IoCounts {
    let now = dev.io_counts();
    assert_eq!(
        (now.direct - before.direct, now.buffered - before.buffered),
        (direct, buffered),
        "(direct, buffered) transfers"
    );
    now
}

async fn routing(choice: EngineChoice) {
    let dir = dio_dir();
    let dev = open_direct_dev(&dir, 16 << 20, choice);
    let a = ALIGN as u64;
    let mut c = dev.io_counts();
    assert_eq!(c, IoCounts::default());

    // Address, offset and length all aligned: direct, one transfer each way.
    let data = pattern(1, 2 * ALIGN);
    dev.write(2 * a, bytes_at(&data, 0), false).await.unwrap();
    c = assert_moved(&dev, c, 1, 0);
    assert_eq!(read_at_skew(&dev, 2 * a, 2 * ALIGN, 0).await, data);
    c = assert_moved(&dev, c, 1, 0);
    // With FUA too (RWF_DSYNC on the ring, fdatasync on the threads).
    dev.write(8 * a, bytes_at(&data, 0), true).await.unwrap();
    c = assert_moved(&dev, c, 1, 0);

    // Any one of the three off: buffered.
    let odd = ALIGN / 2 + 8; // a multiple of neither 512 nor 4096
    dev.write(2 * a, bytes_at(&data, odd), false).await.unwrap(); // address
    c = assert_moved(&dev, c, 0, 1);
    dev.write(2 * a + odd as u64, bytes_at(&data, 0), false)
        .await
        .unwrap(); // offset
    c = assert_moved(&dev, c, 0, 1);
    dev.write(2 * a, bytes_at(&data[..ALIGN + odd], 0), false)
        .await
        .unwrap(); // length
    c = assert_moved(&dev, c, 0, 1);
    read_at_skew(&dev, 2 * a, 2 * ALIGN, odd).await;
    c = assert_moved(&dev, c, 0, 1);
    read_at_skew(&dev, 2 * a + odd as u64, 2 * ALIGN, 0).await;
    c = assert_moved(&dev, c, 0, 1);
    read_at_skew(&dev, 2 * a, ALIGN + odd, 0).await;
    c = assert_moved(&dev, c, 0, 1);

    // The flush goes to neither count: it is no data transfer.
    dev.flush().await.unwrap();
    assert_moved(&dev, c, 0, 0);
}
both_engines!(direct_io_only_when_aligned, routing);

async fn coherence(choice: EngineChoice) {
    let dir = dio_dir();
    let dev = open_direct_dev(&dir, 16 << 20, choice);
    let a = ALIGN as u64;
    let c = dev.io_counts();

    // Written direct, read buffered (and the other way round).
    let one = pattern(11, 4 * ALIGN);
    dev.write(4 * a, bytes_at(&one, 0), false).await.unwrap();
    assert_eq!(read_at_skew(&dev, 4 * a, one.len(), 8).await, one);
    let two = pattern(12, 4 * ALIGN);
    dev.write(16 * a, bytes_at(&two, 8), false).await.unwrap();
    assert_eq!(read_at_skew(&dev, 16 * a, two.len(), 0).await, two);

    // A buffered read has the range in the page cache; a direct write over part of it must
    // not leave the old bytes there for the next buffered read.
    let three = pattern(13, ALIGN);
    dev.write(5 * a, bytes_at(&three, 0), false).await.unwrap();
    let mut want = one.clone();
    want[ALIGN..2 * ALIGN].copy_from_slice(&three);
    assert_eq!(read_at_skew(&dev, 4 * a, want.len(), 8).await, want);
    // A buffered write leaves dirty pages; a direct read must see them, not the disk's bytes.
    let four = pattern(14, ALIGN);
    dev.write(6 * a, bytes_at(&four, 8), false).await.unwrap();
    want[2 * ALIGN..3 * ALIGN].copy_from_slice(&four);
    assert_eq!(read_at_skew(&dev, 4 * a, want.len(), 0).await, want);
    // Half of the requests above went each way.
    assert_moved(&dev, c, 4, 4);

    // Durable and visible to anyone once flushed: FUA writes both ways, then a flush.
    let five = pattern(15, ALIGN);
    dev.write(20 * a, bytes_at(&five, 0), true).await.unwrap();
    dev.write(21 * a, bytes_at(&five, 8), true).await.unwrap();
    dev.flush().await.unwrap();
    let on_disk = std::fs::read(temp_path(&dir)).unwrap();
    assert_eq!(&on_disk[4 * ALIGN..8 * ALIGN], &want[..]);
    assert_eq!(&on_disk[16 * ALIGN..20 * ALIGN], &two[..]);
    assert_eq!(&on_disk[20 * ALIGN..21 * ALIGN], &five[..]);
    assert_eq!(&on_disk[21 * ALIGN..22 * ALIGN], &five[..]);
}
both_engines!(direct_and_buffered_io_agree, coherence);

async fn big_and_concurrent(choice: EngineChoice) {
    let dir = dio_dir();
    let dev = Arc::new(open_direct_dev(&dir, 64 << 20, choice));
    // Mixed aligned and unaligned requests on neighbouring ranges, many in flight.
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let dev = dev.clone();
            tokio::spawn(async move {
                let (len, skew) = (64 * 1024, if t % 2 == 0 { 0 } else { 512 + 8 });
                let offset = t * 256 * 1024;
                for round in 0..3 {
                    let data = pattern(t * 10 + round, len);
                    dev.write(offset, bytes_at(&data, skew), round == 2)
                        .await
                        .unwrap();
                    // Read back the other way in the middle round.
                    let back_skew = match (round, skew) {
                        (1, 0) => 512 + 8,
                        (1, _) => 0,
                        _ => skew,
                    };
                    assert_eq!(read_at_skew(&dev, offset, len, back_skew).await, data);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let c = dev.io_counts();
    assert!(c.direct >= 64 && c.buffered >= 64, "{c:?}");
    // One transfer far larger than any page: still direct, still right.
    let data = pattern(99, 8 << 20);
    dev.write(32 << 20, bytes_at(&data, 0), true).await.unwrap();
    assert_eq!(read_at_skew(&dev, 32 << 20, data.len(), 0).await, data);
    assert!(dev.io_counts().direct >= c.direct + 2);
}
both_engines!(direct_io_concurrent_and_large, big_and_concurrent);

async fn refused(choice: EngineChoice) {
    let dir = dio_dir();
    let path = temp_path(&dir);
    // A file system that will not open the file O_DIRECT (tmpfs before Linux 6.6 says EINVAL).
    let no = |_: &Path| -> io::Result<File> { Err(io::Error::from_raw_os_error(libc::EINVAL)) };
    let dev = FileDevice::open_inner(&path, 1 << 20, true, direct_options(choice), no).unwrap();
    assert_eq!(dev.direct_align(), None);
    let data = pattern(3, 2 * ALIGN);
    dev.write(ALIGN as u64, bytes_at(&data, 0), true)
        .await
        .unwrap();
    assert_eq!(read_at_skew(&dev, ALIGN as u64, data.len(), 0).await, data);
    assert_eq!(
        dev.io_counts(),
        IoCounts {
            direct: 0,
            buffered: 2
        }
    );
    drop(dev);
    // And direct_io = false never opens it O_DIRECT at all.
    let never = |_: &Path| -> io::Result<File> { panic!("O_DIRECT open with direct_io off") };
    let options = FileOptions {
        engine: choice,
        direct_io: false,
    };
    let dev = FileDevice::open_inner(&path, 1 << 20, false, options, never).unwrap();
    assert_eq!(dev.direct_align(), None);
    assert_eq!(read_at_skew(&dev, ALIGN as u64, data.len(), 0).await, data);
    assert_eq!(dev.io_counts().direct, 0);
}
both_engines!(direct_io_refused_falls_back_to_buffered, refused);

// Shared rings.

/// How many of the process's threads are shared ring threads (named by index).
fn ring_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| {
            comm.trim_end()
                .strip_prefix(uring::THREAD_PREFIX)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count()
}

/// Opens `n` io_uring devices of `size` bytes in `dir`, or None if io_uring is refused here.
fn open_many(dir: &tempfile::TempDir, n: usize, size: u64) -> Option<Vec<FileDevice>> {
    let devs: Vec<_> = (0..n)
        .map(|i| FileDevice::open(&dir.path().join(format!("lun{i}.img")), size, true).unwrap())
        .collect();
    if !devs[0].uses_io_uring() {
        eprintln!("io_uring refused here: nothing shared to test");
        return None;
    }
    Some(devs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_devices_share_few_ring_threads() {
    const DEVICES: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let Some(devs) = open_many(&dir, DEVICES, 1 << 20) else {
        return;
    };
    let limit = uring::ring_limit();
    assert!((1..=8).contains(&limit), "{limit}");
    // Dealt round-robin over every ring (other tests opening devices meanwhile only shift
    // which device gets which).
    let mut per_ring = vec![0; limit];
    for dev in &devs {
        per_ring[dev.ring_index().expect("on a shared ring")] += 1;
    }
    assert!(per_ring.iter().all(|&n| n > 0), "{per_ring:?}");
    // So every ring is running, and nothing else is: one thread per ring, none per device.
    assert_eq!(ring_threads(), limit);

    // I/O to all of them, interleaved from concurrent tasks: task t owns the range at
    // t * 16 KiB on every device and goes from device to device, so each ring carries requests
    // of many devices at once.
    let devs = Arc::new(devs);
    let tasks: Vec<_> = (0..32u64)
        .map(|t| {
            let devs = devs.clone();
            tokio::spawn(async move {
                let (offset, len) = (t * 16 * 1024, 8 * 1024 + 512 * (t as usize % 9));
                let mut last = std::collections::HashMap::new();
                for round in 0..25u64 {
                    let d = ((t * 7 + round * 13) % DEVICES as u64) as usize;
                    let seed = t * 1_000_000 + round * 1000 + d as u64;
                    let data = pattern(seed, len);
                    devs[d]
                        .write(offset, Bytes::from(data.clone()), round % 5 == 0)
                        .await
                        .unwrap();
                    assert_eq!(read_vec(&devs[d], offset, len).await, data);
                    last.insert(d, seed);
                }
                (offset, len, last)
            })
        })
        .collect();
    let mut want = Vec::new();
    for task in tasks {
        want.push(task.await.unwrap());
    }
    for dev in devs.iter() {
        dev.flush().await.unwrap();
    }
    // The bytes went to the right files.
    let mut checked = 0;
    for (offset, len, last) in want {
        for (d, seed) in last {
            let on_disk = std::fs::read(dir.path().join(format!("lun{d}.img"))).unwrap();
            let range = offset as usize..offset as usize + len;
            assert_eq!(&on_disk[range], &pattern(seed, len)[..], "device {d}");
            checked += 1;
        }
    }
    assert!(checked > 32 * 20, "{checked}");
    assert_eq!(ring_threads(), limit, "devices in use started more rings");
}

/// Polls `fut` once, which submits the request it makes, and gives it back.
fn submit_once<F: std::future::Future>(fut: F) -> std::pin::Pin<Box<F>> {
    let mut fut = Box::pin(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = fut.as_mut().poll(&mut cx);
    fut
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_a_device_with_io_in_flight_spares_its_ring_mates() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut devs) = open_many(&dir, 1, 32 << 20) else {
        return;
    };
    // Open devices until one shares the first one's ring.
    let first = devs[0].ring_index().unwrap();
    for i in 1..=64 {
        let path = dir.path().join(format!("lun{i}.img"));
        let dev = FileDevice::open(&path, 32 << 20, true).unwrap();
        if dev.ring_index() == Some(first) {
            devs.push(dev);
            break;
        }
    }
    assert_eq!(devs.len(), 2, "no second device on ring {first}");
    let mate = Arc::new(devs.pop().unwrap());
    let doomed = devs.pop().unwrap();
    let files = doomed.files_token();

    // The ring mate keeps working throughout.
    let busy = {
        let mate = mate.clone();
        tokio::spawn(async move {
            for round in 0..200u64 {
                let offset = (round % 64) * 64 * 1024;
                let data = pattern(round + 500, 64 * 1024);
                mate.write(offset, Bytes::from(data.clone()), round % 10 == 0)
                    .await
                    .unwrap();
                assert_eq!(read_vec(&mate, offset, data.len()).await, data);
            }
        })
    };
    // Big FUA writes submitted to the doomed device, then abandoned along with the device.
    const WRITES: u64 = 32;
    const LEN: usize = 512 * 1024;
    let pending: Vec<_> = (0..WRITES)
        .map(|w| {
            let data = Bytes::from(pattern(w + 100, LEN));
            submit_once(doomed.write(w * LEN as u64, data, true))
        })
        .collect();
    drop(pending);
    // On a runtime thread, as an iSCSI task would: a drop that waited for the shared ring
    // (which never exits) would hang here and fail the timeout.
    let dropped = tokio::spawn(async move { drop(doomed) });
    tokio::time::timeout(Duration::from_secs(5), dropped)
        .await
        .expect("dropping a device waited")
        .unwrap();

    // Its writes completed after all (the files stayed open until then, and then closed).
    wait_gone(&files, "files of the dropped device").await;
    let on_disk = std::fs::read(dir.path().join("lun0.img")).unwrap();
    for w in 0..WRITES as usize {
        let range = w * LEN..(w + 1) * LEN;
        assert_eq!(
            &on_disk[range],
            &pattern(w as u64 + 100, LEN)[..],
            "write {w}"
        );
    }
    busy.await.unwrap();
    mate.flush().await.unwrap();
}

/// A ring outside the pool (the shutdown path of a ring whose last handle is gone): its
/// thread finishes abandoned I/O and then exits by itself, without anyone joining it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_ring_exits_after_its_io() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir);
    let file = open_sized(&path, 16 << 20, true).unwrap();
    let files = Arc::new(direct::Files::new(file, &path, false, direct::open_direct));
    let ring = match uring::Ring::start_private(files.clone()) {
        Ok(ring) => ring,
        Err(e) => {
            eprintln!("io_uring refused here ({e}): nothing to test");
            return;
        }
    };
    let dev = FileDevice {
        size: AtomicU64::new(16 << 20),
        thin: true,
        engine: Engine::Ring(ring),
        files,
    };
    assert_eq!(dev.ring_index(), None);
    let (worker, files) = (dev.worker_token(), dev.files_token());
    const LEN: usize = 1 << 20;
    let pending: Vec<_> = (0..8u64)
        .map(|w| submit_once(dev.write(w * LEN as u64, Bytes::from(pattern(w, LEN)), true)))
        .collect();
    drop(pending);
    drop(dev);
    wait_gone(&worker, "private ring thread").await;
    assert!(files.upgrade().is_none(), "files outlived the ring");
    let on_disk = std::fs::read(&path).unwrap();
    for w in 0..8 {
        assert_eq!(
            &on_disk[w * LEN..(w + 1) * LEN],
            &pattern(w as u64, LEN)[..]
        );
    }
}

/// A [`direct::Files`] on a fresh file of `len` bytes holding `pattern(7, len)`.
fn files_with_data(dir: &tempfile::TempDir, len: usize) -> direct::Files {
    let path = temp_path(dir);
    std::fs::write(&path, pattern(7, len)).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let files = direct::Files::new(file, &path, true, direct::open_direct);
    assert!(files.direct_align().is_some());
    files
}

/// The ring's bookkeeping for short transfers, driven with made-up completions: each
/// remainder is routed afresh by its own alignment.
#[test]
fn ring_remainders_are_routed_by_their_own_alignment() {
    use uring::Op;
    let dir = dio_dir();
    let files = files_with_data(&dir, 16 * ALIGN);
    let counts = |d, b| IoCounts {
        direct: d,
        buffered: b,
    };
    let (reply, mut rx) = oneshot::channel();
    let request = Request::Read {
        offset: 0,
        buf: buf_at(4 * ALIGN, 0),
        reply,
    };
    let mut op = Op::from(request);
    op.sqe(&files);
    assert_eq!(files.counts(), counts(1, 0));
    // Short by a whole block: the rest is still aligned.
    let mut op = op.complete(ALIGN as i32, &files).expect("more to do");
    op.sqe(&files);
    assert_eq!(files.counts(), counts(2, 0));
    // Short by an odd amount: the rest is not, so it goes buffered.
    let mut op = op.complete(100, &files).expect("more to do");
    op.sqe(&files);
    assert_eq!(files.counts(), counts(2, 1));
    // A buffered piece that ends on a boundary makes the rest direct again.
    let mut op = op.complete(ALIGN as i32 - 100, &files).expect("more to do");
    op.sqe(&files);
    assert_eq!(files.counts(), counts(3, 1));
    // The kernel refusing a direct piece: redone buffered, and direct I/O is off for good.
    let mut op = op.complete(-libc::EINVAL, &files).expect("retried");
    assert_eq!(files.direct_align(), None);
    op.sqe(&files);
    assert_eq!(files.counts(), counts(3, 2));
    assert!(op.complete(2 * ALIGN as i32, &files).is_none());
    assert_eq!(rx.try_recv().unwrap().unwrap().len(), 4 * ALIGN);
    // A buffered EINVAL is a plain error.
    let (reply, mut rx) = oneshot::channel();
    let mut op = Op::from(Request::Read {
        offset: 0,
        buf: buf_at(ALIGN, 0),
        reply,
    });
    op.sqe(&files);
    assert!(op.complete(-libc::EINVAL, &files).is_none());
    assert!(rx.try_recv().unwrap().is_err());
}

/// The thread engine's loop, with real preads whose results are cut short on purpose.
#[test]
fn thread_remainders_are_routed_by_their_own_alignment() {
    let dir = dio_dir();
    let len = 8 * ALIGN;
    let files = files_with_data(&dir, len);
    let want = pattern(7, len);
    let mut buf = buf_at(len, 0);
    let base = buf.as_ptr();
    // (direct?, bytes reported) for each call. The first call reads everything it is given
    // but reports only 100 bytes, as a direct read cut short at an odd place would.
    let mut calls = Vec::new();
    let script = [ALIGN, 100, ALIGN - 100, usize::MAX];
    threaded::transfer(
        &files,
        base,
        0,
        len,
        (io::ErrorKind::UnexpectedEof, "eof"),
        |file, done| {
            let direct = !std::ptr::eq(file, &files.buffered);
            let n = file.read_at(&mut buf[done..], done as u64)?;
            let report = n.min(script[calls.len()]);
            calls.push((direct, report));
            Ok(report)
        },
    )
    .unwrap();
    assert_eq!(
        calls,
        vec![
            (true, ALIGN),
            (true, 100),
            (false, ALIGN - 100),
            (true, 6 * ALIGN)
        ]
    );
    assert_eq!(&buf[..], &want[..]);
    assert_eq!(
        files.counts(),
        IoCounts {
            direct: 3,
            buffered: 1
        }
    );

    // EINVAL from a direct call: retried buffered, and no direct I/O from then on.
    let mut buf = buf_at(len, 0);
    let base = buf.as_ptr();
    let mut calls = Vec::new();
    threaded::transfer(
        &files,
        base,
        0,
        len,
        (io::ErrorKind::UnexpectedEof, "eof"),
        |file, done| {
            let direct = !std::ptr::eq(file, &files.buffered);
            calls.push(direct);
            if direct {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            file.read_at(&mut buf[done..], done as u64)
        },
    )
    .unwrap();
    assert_eq!(calls, vec![true, false]);
    assert_eq!(&buf[..], &want[..]);
    assert_eq!(files.direct_align(), None);
}
