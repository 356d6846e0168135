//! Micro-benchmarks of work done per login and per command above the PDU layer: text-key
//! negotiation of a typical ESXi login, and resolving a two-level LUN to a bound VVol with
//! 1,000 VVols bound across 2 PEs for 4 hosts. Run with `cargo bench --bench array`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use vvold::array::Array;
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
            engine.route(host, pe, id).map(|(lu, _guard)| lu.id)
        })
    });
}

criterion_group!(benches, negotiation, lun_resolution);
criterion_main!(benches);
