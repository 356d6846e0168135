//! What reading a large RAM disk costs on this machine, and how much of it is finding the page
//! rather than loading the bytes: the floor under the ram backend's random reads.
//!
//! A 1 GiB anonymous mapping, aligned to 2 MiB and marked for transparent huge pages like the
//! RAM disk's chunks, is filled and then read by chasing pointers (each load waits for the one
//! before, so the time per load is the latency). Three rings touch the same 65,536 cache lines
//! (4 MiB, which fits the last-level cache) spread over 1,024, 4,096 or 65,536 of the mapping's
//! 4 KiB pages in random order. The bytes are the same in all three; only the number of pages
//! differs. Where the huge pages reach the TLB, all three rings fit in it (the mapping is only
//! 512 huge pages) and cost about the same. Where they do not (a hypervisor that backs the
//! guest's memory with 4 KiB pages), the spread rings pay a page walk per load. Last, random
//! 4 KiB copies out of the whole gigabyte: what a RAM-disk read costs beyond a null one.
//!
//! Not criterion: each figure is one long dependent chain, timed once, and what matters is its
//! size next to the others.

use std::time::Instant;

const REGION: usize = 1 << 30;
const HUGE: usize = 2 << 20;
const PAGE: usize = 4096;
const LINE: usize = 64;
const LINES: usize = 65_536;
const LOADS: usize = 4_000_000;
const COPIES: usize = 400_000;

/// xorshift64*: enough to scatter addresses, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// `REGION` bytes at a huge-page boundary, marked for huge pages and touched; unmapped on drop.
struct Mapping {
    base: *mut u8,
    span: usize,
    start: usize,
}

impl Mapping {
    fn new() -> Mapping {
        let span = REGION + HUGE;
        // SAFETY: a fresh private anonymous mapping, checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(base != libc::MAP_FAILED, "mmap of 1 GiB failed");
        let base = base.cast::<u8>();
        let start = (base as usize).next_multiple_of(HUGE);
        // SAFETY: [start, start + REGION) lies inside the mapping; the advice is only a hint.
        unsafe {
            libc::madvise(start as *mut libc::c_void, REGION, libc::MADV_HUGEPAGE);
            std::ptr::write_bytes(start as *mut u8, 1, REGION);
        }
        Mapping { base, span, start }
    }

    /// The address of byte `offset`.
    fn at(&self, offset: usize) -> usize {
        self.start + offset
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.base.cast(), self.span) };
    }
}

/// Nanoseconds per load around a ring of `LINES` lines, `per_page` of them in each of
/// `LINES / per_page` random 4 KiB pages, visited in random order.
fn chase(m: &Mapping, rng: &mut Rng, per_page: usize) -> f64 {
    let mut pages: Vec<usize> = (0..REGION / PAGE).collect();
    rng.shuffle(&mut pages);
    // Lines of a page are spread over its 64 slots so that rings differ only in pages.
    let step = PAGE / LINE / per_page;
    let mut addrs: Vec<usize> = (0..LINES)
        .map(|i| m.at(pages[i / per_page] * PAGE + (i % per_page) * step * LINE))
        .collect();
    rng.shuffle(&mut addrs);
    for (i, &a) in addrs.iter().enumerate() {
        let next = addrs[(i + 1) % addrs.len()];
        // SAFETY: every address is an aligned usize slot inside the mapping.
        unsafe { (a as *mut usize).write(next) };
    }
    let mut p = addrs[0];
    for _ in 0..LINES {
        // SAFETY: p always holds one of the ring's addresses.
        p = unsafe { (p as *const usize).read_volatile() };
    }
    let t = Instant::now();
    for _ in 0..LOADS {
        // SAFETY: as above.
        p = unsafe { (p as *const usize).read_volatile() };
    }
    std::hint::black_box(p);
    t.elapsed().as_nanos() as f64 / LOADS as f64
}

/// Nanoseconds per 4 KiB copy from a random block of the gigabyte.
fn copies(m: &Mapping, rng: &mut Rng) -> f64 {
    let blocks: Vec<usize> = (0..COPIES).map(|_| rng.below(REGION / PAGE)).collect();
    let mut dst = vec![0u8; PAGE];
    let t = Instant::now();
    for &b in &blocks {
        // SAFETY: block b lies inside the mapping, dst is PAGE bytes, and they do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(m.at(b * PAGE) as *const u8, dst.as_mut_ptr(), PAGE)
        };
        std::hint::black_box(&mut dst);
    }
    t.elapsed().as_nanos() as f64 / COPIES as f64
}

/// The mapping's huge-page coverage in KiB, from /proc/self/smaps.
fn huge_kib(m: &Mapping) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = lo <= m.start && m.start < hi;
                    continue;
                }
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("AnonHugePages:") {
                return v.trim().trim_end_matches(" kB").trim().parse().ok();
            }
        }
    }
    None
}

fn main() {
    // cargo bench passes --bench; nothing here takes options.
    let m = Mapping::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let huge = huge_kib(&m).map_or("unknown".to_string(), |k| format!("{} MiB", k / 1024));
    println!("1 GiB mapping, huge pages backing it (guest view): {huge}");
    let packed = chase(&m, &mut rng, 64);
    let quarter = chase(&m, &mut rng, 16);
    let spread = chase(&m, &mut rng, 1);
    println!("load, 65,536 lines in 1,024 pages:  {packed:6.1} ns");
    println!("load, 65,536 lines in 4,096 pages:  {quarter:6.1} ns");
    println!("load, 65,536 lines in 65,536 pages: {spread:6.1} ns");
    println!(
        "4 KiB copy from a random block of 1 GiB: {:6.1} ns",
        copies(&m, &mut rng)
    );
}
