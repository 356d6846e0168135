//! Micro-benchmarks of the per-PDU protocol work: BHS decode/encode, CRC32C digests, CDB
//! planning for READ/WRITE, CmdSN admission. Run with `cargo bench --bench protocol`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vvold::iscsi::digest;
use vvold::iscsi::pdu::{self, op, Bhs, InitiatorPdu, Itt, Residual, Seq, SerialNumber};
use vvold::iscsi::window::CmdWindow;
use vvold::scsi::disk::{DiskIdentity, DiskLu};
use vvold::scsi::{Lun, NexusId};
use vvold::vvol::qos::{Arbiter, CapLimiter, Gate, Offer};

fn read10_command() -> Bhs {
    let mut b = Bhs::new(op::SCSI_COMMAND);
    b.0[1] = 0x80 | 0x40 | 0x01;
    b.set_lun(Lun::single(0));
    b.set_u32(16, 42);
    b.set_u32(20, 4096);
    b.set_u32(24, 7);
    b.0[32] = 0x28;
    b.0[37] = 0x10;
    b.0[40] = 8;
    b
}

fn pdu_codec(c: &mut Criterion) {
    let cmd = read10_command();
    c.bench_function("bhs_decode_scsi_command", |b| {
        b.iter(|| InitiatorPdu::decode(black_box(&cmd), &[]).unwrap())
    });
    let seq = Seq {
        statsn: 1,
        expcmdsn: 2,
        maxcmdsn: 3,
    };
    c.bench_function("bhs_encode_data_in_with_status", |b| {
        b.iter(|| {
            // Every argument opaque, so no field is folded into a constant header.
            pdu::data_in(
                black_box(Lun::single(0)),
                Itt(black_box(42)),
                black_box(0),
                black_box(0),
                black_box(4096),
                black_box(Some((0, Residual::None))),
                black_box(true),
                black_box(seq),
            )
        })
    });
}

fn crc32c(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [48usize, 4096, 65536, 1 << 20] {
        let data = vec![0xA5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, d| {
            b.iter(|| digest::crc32c(black_box(d)))
        });
    }
    g.finish();
}

fn cdb_plan(c: &mut Criterion) {
    let lu = DiskLu::new(DiskIdentity {
        vendor: "VVOLD".into(),
        product: "VVOLD DISK".into(),
        revision: "0001".into(),
        serial: "bench".into(),
        naa: [0x60; 16],
        block_size: 512,
        num_blocks: (1 << 23).into(),
        read_only: false,
        port_groups: Vec::new(),
        conglomerate: false,
        administrative: false,
        thin: true,
    });
    let read10 = [0x28u8, 0, 0, 0, 0x10, 0, 0, 0, 8, 0];
    let write16 = [0x8Au8, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 8, 0, 0];
    c.bench_function("plan_read10", |b| {
        b.iter(|| lu.plan(NexusId(1), black_box(&read10)))
    });
    c.bench_function("plan_write16", |b| {
        b.iter(|| lu.plan(NexusId(1), black_box(&write16)))
    });
}

fn cmd_window(c: &mut Criterion) {
    c.bench_function("cmdsn_admit_and_complete", |b| {
        let mut w = CmdWindow::new(SerialNumber(0), 128);
        let mut sn = 0u32;
        b.iter(|| {
            let a = w.admit(SerialNumber(black_box(sn)), false);
            w.complete();
            sn = sn.wrapping_add(1);
            black_box((a, w.maxcmdsn()))
        })
    });
}

fn qos_admit(c: &mut Criterion) {
    let capped = CapLimiter::new(Some(1_000_000));
    let mut now = 0u64;
    c.bench_function("qos_cap_admit", |b| {
        b.iter(|| {
            now += 1_000;
            capped.admit(black_box(now), 1)
        })
    });
    let unlimited = CapLimiter::new(None);
    c.bench_function("qos_cap_admit_unlimited", |b| {
        b.iter(|| unlimited.admit(black_box(1), 1))
    });
}

/// The tier-2 decision under contention: `n` volumes each with I/Os queued (half with a
/// reservation), the window full; one iteration is a completion that dispatches the next I/O
/// plus the arrival that keeps its volume backlogged (design study A8: <= 150 ns at 1,000 and
/// <= 500 ns at 10,000 backlogged volumes).
fn qos_arbiter(c: &mut Criterion) {
    let mut g = c.benchmark_group("qos_arbiter_decision");
    for n in [8usize, 1_000, 10_000] {
        // The window full, as the pool keeps it: every completion passes its slot on.
        let gate = Gate::new(32);
        let mut arb: Arbiter<usize> = Arbiter::new(500_000_000);
        let keys: Vec<_> = (0..n)
            .map(|i| arb.register((i % 2 == 0).then_some(10 + (i % 1000) as u32), 1))
            .collect();
        let mut now = 0u64;
        for _ in 0..32 {
            assert!(gate.try_enter(1));
        }
        for (i, k) in keys.iter().enumerate() {
            for _ in 0..2 {
                assert_eq!(gate.offer(&mut arb, now, *k, 1, i), Offer::Queued);
            }
        }
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                now += 50;
                let v = gate.pass_on(&mut arb, black_box(now)).expect("backlogged");
                gate.offer(&mut arb, now, keys[v], 1, v);
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    pdu_codec,
    crc32c,
    cdb_plan,
    cmd_window,
    qos_admit,
    qos_arbiter
);
criterion_main!(benches);
