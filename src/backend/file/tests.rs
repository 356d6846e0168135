//! Every behaviour is checked on both engines: the ring (when the kernel allows it) and the
//! thread fallback.

use super::*;
use std::os::unix::fs::MetadataExt;
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
    // Nothing leaked past the end.
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
    // More tasks than the ring has slots, so requests also queue inside the engine.
    let tasks: Vec<_> = (0..300u64)
        .map(|t| {
            let dev = dev.clone();
            tokio::spawn(async move {
                let len = 16 * 1024 + 512 * (t as usize % 7);
                let offset = t * 128 * 1024 + 512 * (t % 5);
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

async fn drop_stops_thread(choice: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let dev = FileDevice::open_with(&temp_path(&dir), 8 << 20, true, choice).unwrap();
    let token = dev.worker_token();
    dev.write(0, Bytes::from(vec![1; 4096]), false)
        .await
        .unwrap();
    assert!(token.upgrade().is_some());
    drop(dev);
    assert!(token.upgrade().is_none(), "I/O thread outlived its device");
}
both_engines!(drop_stops_the_thread, drop_stops_thread);

async fn drop_with_abandoned_io(choice: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(FileDevice::open_with(&temp_path(&dir), 32 << 20, true, choice).unwrap());
    let token = dev.worker_token();
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
    assert!(token.upgrade().is_none());
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
