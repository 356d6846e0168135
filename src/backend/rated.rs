//! A RAM device behind an emulated disk of fixed capacity, so that contention between
//! volumes is real on any machine: reservation behaviour can be tested and shown without a
//! slow device. Every device of one [`RatedPool`] shares its capacity, as the volumes of one
//! array pool share its disks.
//!
//! The model (design study §5 and §7, backend "b"): at most `window` I/Os are in the device;
//! more wait in FIFO order. The device serves `capacity` normalized units per second as a
//! pipeline, and no I/O completes sooner than its service latency, jittered uniformly in
//! [0.5, 1.5) × latency. Completion deadlines are computed on an absolute clock, so timer
//! granularity delays a wake-up but never lowers the capacity.

use super::{BlockDevice, Extent, IoResult, RamDevice};
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// The shared emulated disk.
#[derive(Debug)]
pub struct RatedPool {
    slots: Semaphore,
    capacity: u32,
    ns_per_unit: u64,
    latency_ns: u64,
    unit_bytes: u32,
    epoch: Instant,
    /// When the pipeline can start its next unit (ns since `epoch`).
    next_free: AtomicU64,
    rng: AtomicU64,
}

impl RatedPool {
    /// `capacity` units per second, `window` I/Os in the device at once, `latency` of one
    /// I/O on an idle device, costs counted per `unit_bytes` (0: one unit per I/O).
    pub fn new(capacity: u32, window: u32, latency: std::time::Duration, unit_bytes: u32) -> Self {
        RatedPool {
            slots: Semaphore::new(window.max(1) as usize),
            capacity: capacity.max(1),
            ns_per_unit: 1_000_000_000 / capacity.max(1) as u64,
            latency_ns: latency.as_nanos() as u64,
            unit_bytes,
            epoch: Instant::now(),
            next_free: AtomicU64::new(0),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    fn jittered_latency(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        // U[0.5, 1.5) in thousandths.
        self.latency_ns * (500 + x % 1000) / 1000
    }

    /// Occupy the device for an I/O of `len` bytes: returns once it would have completed.
    async fn serve(&self, len: u64) {
        let Ok(_slot) = self.slots.acquire().await else {
            return;
        };
        let units = super::io_units(len.min(u32::MAX as u64) as u32, self.unit_bytes);
        let now = self.epoch.elapsed().as_nanos() as u64;
        let work = units as u64 * self.ns_per_unit;
        let mut free = self.next_free.load(Ordering::Relaxed);
        let done = loop {
            let done = free.max(now) + work;
            match self.next_free.compare_exchange_weak(
                free,
                done,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break done,
                Err(seen) => free = seen,
            }
        };
        let finish = done.max(now + self.jittered_latency());
        tokio::time::sleep_until(self.epoch + std::time::Duration::from_nanos(finish)).await;
    }
}

/// One volume on a rated pool: its data in RAM, its time on the shared emulated disk.
#[derive(Clone)]
pub struct RatedDevice {
    ram: Arc<RamDevice>,
    pool: Arc<RatedPool>,
}

impl RatedDevice {
    pub fn new(ram: Arc<RamDevice>, pool: Arc<RatedPool>) -> Self {
        RatedDevice { ram, pool }
    }
}

impl BlockDevice for RatedDevice {
    fn size(&self) -> u64 {
        self.ram.size()
    }

    async fn read(&self, offset: u64, buf: BytesMut) -> IoResult<BytesMut> {
        let len = buf.len() as u64;
        let r = self.ram.read(offset, buf).await;
        if r.is_ok() {
            self.pool.serve(len).await;
        }
        r
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> IoResult<()> {
        let len = data.len() as u64;
        self.ram.write(offset, data, fua).await?;
        self.pool.serve(len).await;
        Ok(())
    }

    async fn flush(&self) -> IoResult<()> {
        self.ram.flush().await
    }

    fn thin(&self) -> bool {
        self.ram.thin()
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        self.ram.discard(offset, len).await?;
        // Deallocation is metadata work: one unit however long the range.
        self.pool.serve(0).await;
        Ok(())
    }

    async fn allocation(&self, offset: u64, len: u64) -> IoResult<Vec<Extent>> {
        self.ram.allocation(offset, len).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(capacity: u32, window: u32, latency_us: u64) -> Arc<RatedPool> {
        Arc::new(RatedPool::new(
            capacity,
            window,
            Duration::from_micros(latency_us),
            32 * 1024,
        ))
    }

    /// Keep `qd` I/Os of `len` bytes going on each device for `secs`; returns completions.
    async fn closed_loop(devs: Vec<RatedDevice>, qd: usize, len: usize, secs: f64) -> Vec<u64> {
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for (i, d) in devs.into_iter().enumerate() {
            for _ in 0..qd {
                let d = d.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < end {
                        d.read(0, BytesMut::zeroed(len)).await.unwrap();
                        n += 1;
                    }
                    (i, n)
                }));
            }
        }
        let mut per = vec![0u64; tasks.len() / qd];
        for t in tasks {
            let (i, n) = t.await.unwrap();
            per[i] += n;
        }
        per
    }

    #[tokio::test]
    async fn capacity_is_shared_by_its_devices() {
        let p = pool(2000, 16, 1000);
        let devs = (0..2)
            .map(|_| RatedDevice::new(Arc::new(RamDevice::new(1 << 20)), p.clone()))
            .collect();
        let per = closed_loop(devs, 16, 4096, 1.0).await;
        let total: u64 = per.iter().sum();
        // 2000 units/s for one second, whatever the timer granularity.
        assert!((1900..=2100).contains(&total), "{per:?}");
    }

    #[tokio::test]
    async fn large_ios_cost_their_units() {
        let p = pool(1600, 8, 500);
        let dev = RatedDevice::new(Arc::new(RamDevice::new(1 << 20)), p);
        // 128 KiB = 4 units: a quarter of the I/Os.
        let per = closed_loop(vec![dev.clone()], 8, 128 * 1024, 1.0).await;
        assert!((380..=420).contains(&per[0]), "{per:?}");
        dev.write(0, Bytes::from(vec![7u8; 4096]), false)
            .await
            .unwrap();
        let back = dev.read(0, BytesMut::zeroed(4096)).await.unwrap();
        assert!(back.iter().all(|b| *b == 7));
    }

    #[tokio::test]
    async fn an_idle_device_answers_after_its_latency() {
        let p = pool(100_000, 4, 2000);
        let dev = RatedDevice::new(Arc::new(RamDevice::new(1 << 20)), p);
        let t = Instant::now();
        dev.read(0, BytesMut::zeroed(512)).await.unwrap();
        let e = t.elapsed();
        assert!(
            e >= Duration::from_micros(1000) && e < Duration::from_millis(50),
            "{e:?}"
        );
    }
}
