//! Micro-benchmarks of work done per login and per command above the PDU layer: text-key
//! negotiation of a typical ESXi login, and resolving a two-level LUN to a bound VVol with
//! 1,000 VVols bound across 2 PEs for 4 hosts; and the file backend's 4 KiB random reads and
//! writes at QD 16, buffered against direct I/O. Run with `cargo bench --bench array`.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use vvold::array::Array;
use vvold::backend::file::{FileDevice, FileOptions};
use vvold::backend::BlockDevice;
use vvold::config::Config;
use vvold::iscsi::negotiate::Negotiator;
use vvold::iscsi::params::TargetLimits;
use vvold::iscsi::text::{self, KeyValue};
use vvold::vvol::address::{LunAddress, SecondaryId};
use vvold::vvol::catalog::VvolType;

/// The operational keys of ESXi's software initiator's login, as one text segment.
fn esxi_login_keys() -> Vec<u8> {
    let keys = [
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxConnections", "1"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "Yes"),
        ("MaxRecvDataSegmentLength", "131072"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "262144"),
        ("DefaultTime2Wait", "0"),
        ("DefaultTime2Retain", "0"),
        ("MaxOutstandingR2T", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("ErrorRecoveryLevel", "0"),
    ];
    text::encode(
        &keys
            .iter()
            .map(|(k, v)| KeyValue::new(*k, *v))
            .collect::<Vec<_>>(),
    )
}

fn negotiation(c: &mut Criterion) {
    let data = esxi_login_keys();
    c.bench_function("login_text_negotiation", |b| {
        b.iter(|| {
            let pairs = text::parse(black_box(&data)).unwrap();
            let mut n = Negotiator::new(TargetLimits::default());
            let answer = n.negotiate(&pairs);
            text::encode(&answer)
        })
    });
}

const HOSTS: [&str; 4] = [
    "iqn.1998-01.com.vmware:esx-1",
    "iqn.1998-01.com.vmware:esx-2",
    "iqn.1998-01.com.vmware:esx-3",
    "iqn.1998-01.com.vmware:esx-4",
];

fn lun_resolution(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(
        r#"
[[target]]
name = "iqn.2026-11.io.vvold:bench"
[[target.pe]]
id = 254
[[target.pe]]
id = 255
[[container]]
name = "mem"
backend = "ram"
capacity = "1TiB"
"#,
    )
    .unwrap();
    let array = Array::open(&cfg, dir.path()).unwrap();
    let engine = array.engine.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // 1,000 VVols, each bound for one of 4 hosts, alternating between the 2 PEs.
    let mut luns = Vec::new();
    for i in 0..1000usize {
        let v = engine
            .create_vvol(
                "mem",
                VvolType::Data,
                1 << 20,
                512,
                None,
                Default::default(),
            )
            .unwrap();
        let host = HOSTS[i % 4];
        let b = rt
            .block_on(engine.bind(v.id, host, Some(254 + (i % 2) as u16)))
            .unwrap();
        luns.push((host, vvold::vvol::address::secondary_lun(b.pe, b.secondary)));
    }
    let mut i = 0usize;
    c.bench_function("lun_resolution_1000_bound_vvols", |b| {
        b.iter(|| {
            i = (i + 7) % luns.len();
            let (host, lun) = luns[i];
            let LunAddress::Secondary { pe, id } = LunAddress::decode(black_box(lun)) else {
                unreachable!()
            };
            let id: SecondaryId = id;
            engine.route(host, pe, id).map(|guard| guard.held().id)
        })
    });
}

/// Size of the image the file benchmarks use: small enough to write in a few seconds and to
/// sit in the page cache once read, so "buffered" here means a warm cache.
const FILE_BYTES: u64 = 256 << 20;
const QD: usize = 16;
const IO: usize = 4096;

/// `len` zero bytes at a 4096-aligned address, as an aligned buffer pool would hand out.
fn aligned(len: usize) -> BytesMut {
    let mut buf = BytesMut::zeroed(len + 4096);
    let pad = buf.as_ptr().align_offset(4096);
    let _ = buf.split_to(pad);
    buf.truncate(len);
    buf
}

/// 4 KiB random reads and writes on a file LUN at QD 16, through the page cache and through
/// O_DIRECT. Both get the same aligned buffers, so only the descriptor differs. The image is
/// written in full first, so reads hit real blocks, not holes. It lives in the build
/// directory, on the disk the build uses (a tmpfs TMPDIR would make "direct" meaningless).
fn file_device(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("bench.img");
    let chunk = vec![0x5au8; 1 << 20];
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).unwrap();
        for _ in 0..FILE_BYTES >> 20 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("file_4k_qd16");
    group.throughput(Throughput::Elements(QD as u64));
    for direct_io in [false, true] {
        let options = FileOptions {
            direct_io,
            ..FileOptions::default()
        };
        let dev = Arc::new(FileDevice::open_with(&path, FILE_BYTES, false, options).unwrap());
        assert_eq!(dev.direct_align().is_some(), direct_io, "O_DIRECT refused");
        let mode = if direct_io { "direct" } else { "buffered" };
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut offsets = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % (FILE_BYTES / IO as u64)) * IO as u64
        };
        group.bench_function(format!("randread_{mode}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..QD {
                        let (dev, at) = (dev.clone(), offsets());
                        set.spawn(async move { dev.read(at, aligned(IO)).await.unwrap() });
                    }
                    while let Some(r) = set.join_next().await {
                        black_box(r.unwrap());
                    }
                })
            })
        });
        let data = {
            let mut buf = aligned(IO);
            buf.fill(0xa5);
            Bytes::from(buf)
        };
        group.bench_function(format!("randwrite_{mode}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..QD {
                        let (dev, at, data) = (dev.clone(), offsets(), data.clone());
                        set.spawn(async move { dev.write(at, data, false).await.unwrap() });
                    }
                    while let Some(r) = set.join_next().await {
                        r.unwrap();
                    }
                })
            })
        });
        let counts = dev.io_counts();
        // Every transfer went the way the mode says, or the comparison means nothing.
        if direct_io {
            assert_eq!(counts.buffered, 0, "{counts:?}");
        } else {
            assert_eq!(counts.direct, 0, "{counts:?}");
        }
    }
    group.finish();
}

criterion_group!(benches, negotiation, lun_resolution, file_device);
criterion_main!(benches);
