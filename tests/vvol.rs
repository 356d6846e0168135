//! The VVol features through the real daemon: Protocol Endpoints and their discovery, binding
//! through the embedded API, the standalone control service and in-band commands, two-level
//! LUN I/O and isolation between hosts, unbind with writes in flight, restarts, `vvolctl`.

mod common;

use common::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;
use vvold::control::model::{BindingInfo, PeInfo, VvolInfo};
use vvold::iscsi::pdu::op;
use vvold::scsi::Lun;
use vvold::vvol::address::pe_lun;
use vvold::vvol::binding::BindingState;
use vvold::vvol::inband::{self, InbandRequest, ServiceAction};

const MIB: u64 = 1 << 20;

fn pe(n: u16) -> Lun {
    pe_lun(n)
}

/// The 8 bytes of a LUN.
fn b(l: Lun) -> [u8; 8] {
    l.to_bytes()
}

/// Sense-key-specific bytes 15..18 of fixed sense: (flags byte, field pointer).
fn field_pointer(r: &vvold::initiator::ScsiResult) -> (u8, u16) {
    assert!(r.sense.len() >= 18, "sense too short: {:02x?}", r.sense);
    (r.sense[15], u16::from_be_bytes([r.sense[16], r.sense[17]]))
}

/// The NAA designator (type 3, LU association) of VPD 83h data, in lowercase hex.
fn vpd83_naa(data: &[u8]) -> String {
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    let mut d = &data[4..4 + len];
    while d.len() >= 4 {
        let dlen = d[3] as usize;
        let (assoc, kind) = ((d[1] >> 4) & 0x3, d[1] & 0xF);
        if kind == 3 && assoc == 0 {
            return d[4..4 + dlen].iter().map(|x| format!("{x:02x}")).collect();
        }
        d = &d[4 + dlen..];
    }
    panic!("no NAA designator with LU association in {data:02x?}");
}

fn pe_info(pes: &[PeInfo], lun: u16) -> &PeInfo {
    pes.iter()
        .find(|p| p.lun == lun)
        .unwrap_or_else(|| panic!("PE {lun} not in {pes:?}"))
}

// ---- 1. discovery --------------------------------------------------------------------------

#[tokio::test]
async fn pes_are_discovered_at_lun0_with_their_identity() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    // A binding exists, yet LUN 0 never lists secondaries.
    let v = api.create_vvol(C_RAM, 16 * MIB);
    api.bind(v.id, HOST_A, Some(PE_1));
    let mut s = login_host(&d, HOST_A).await;

    let mut got = report_luns_at(&mut s, lun(0), 0x00).await;
    got.sort();
    let mut want = vec![
        [0u8; 8],
        [0x00, 0xFE, 0, 0, 0, 0, 0, 0],
        [0x00, 0xFF, 0, 0, 0, 0, 0, 0],
    ];
    want.sort();
    assert_eq!(got, want, "REPORT LUNS at LUN 0: LUN 0 and the PEs only");

    let pes = api.pes();
    assert_eq!(pes.len(), 2, "{pes:?}");
    let mut naas = Vec::new();
    for p in [PE_1, PE_2] {
        let info = pe_info(&pes, p);
        assert_eq!(info.target, T_VVOL);
        // Standard INQUIRY: direct access, LU_CONG set.
        let r = cmd_lun(&mut s, pe(p), &inquiry(None, 96), None, 96).await;
        assert_good(&r);
        assert_eq!(r.data[0], 0x00, "peripheral qualifier/type of PE {p}");
        assert_ne!(r.data[1] & 0x40, 0, "LU_CONG of PE {p}");
        // VPD 86h byte 8: LU_COLL_TYPE 001b.
        let r = cmd_lun(&mut s, pe(p), &inquiry(Some(0x86), 64), None, 64).await;
        assert_good(&r);
        assert_eq!(r.data[1], 0x86);
        assert_eq!(r.data[8], 0x20, "VPD 86h byte 8 of PE {p}");
        // VPD 83h NAA = the naa the API reports.
        let r = cmd_lun(&mut s, pe(p), &inquiry(Some(0x83), 255), None, 255).await;
        assert_good(&r);
        let naa = vpd83_naa(&r.data);
        assert_eq!(naa.len(), 32, "NAA-6 registered extended: 16 bytes");
        assert_eq!(
            Some(naa.as_str()),
            info.naa.strip_prefix("naa."),
            "PE {p} naa"
        );
        naas.push(naa);
        // A PE has no data of its own: a read-only medium of zeros.
        let r = cmd_lun(&mut s, pe(p), &read10(0, 1), None, 512).await;
        assert_good(&r);
        assert_eq!(r.data, vec![0; 512]);
        let r = cmd_lun(&mut s, pe(p), &write10(0, 1), Some(&[7; 512]), 0).await;
        assert_sense(&r, 0x07, 0x27, 0x00);
    }
    assert_ne!(naas[0], naas[1], "each PE has its own NAA");
    // LUN 0 is an ordinary LU: no LU_CONG.
    let r = cmd(&mut s, 0, &inquiry(None, 96), None, 96).await;
    assert_good(&r);
    assert_eq!(r.data[1] & 0x40, 0, "LU_CONG of LUN 0");
}

// ---- 2. bind: unit attention and REPORT LUNS at the PE -------------------------------------

#[tokio::test]
async fn bind_raises_ua_for_its_host_and_the_pe_reports_the_secondary() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let v = api.create_vvol(C_RAM, 16 * MIB);
    let mut a = login_host(&d, HOST_A).await;

    let bnd = api.bind(v.id, HOST_A, Some(PE_1));
    assert_eq!(bnd.vvol, v.id);
    assert_eq!(bnd.host, HOST_A);
    assert_eq!(bnd.target, T_VVOL);
    assert_eq!(bnd.pe_lun, PE_1);
    assert_eq!(bnd.pe_naa, pe_info(&api.pes(), PE_1).naa);
    assert_eq!(bnd.state, "active");
    let sec = binding_lun(&bnd);
    // The first id on a PE is 1: `00 FE E2 00 00 00 00 01`.
    assert_eq!(b(sec), [0x00, 0xFE, 0xE2, 0, 0, 0, 0, 1]);
    assert_eq!(bnd.secondary_id, "0xe20000000001");

    // The first command to the PE reports REPORTED LUNS DATA HAS CHANGED, once.
    let r = cmd_lun(&mut a, pe(PE_1), &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x06, 0x3F, 0x0E);
    assert_good(&cmd_lun(&mut a, pe(PE_1), &test_unit_ready(), None, 0).await);
    // Only the PE the binding is on.
    assert_good(&cmd_lun(&mut a, pe(PE_2), &test_unit_ready(), None, 0).await);

    assert_eq!(report_luns_at(&mut a, pe(PE_1), 0x00).await, vec![b(sec)]);
    assert_eq!(report_luns_at(&mut a, pe(PE_1), 0x02).await, vec![b(sec)]);
    assert_eq!(
        report_luns_at(&mut a, pe(PE_1), 0x12).await,
        vec![b(pe(PE_1)), b(sec)]
    );
    assert_eq!(
        report_luns_at(&mut a, pe(PE_2), 0x00).await,
        Vec::<[u8; 8]>::new()
    );
    let reserved_select = report_luns_select(0x10, 4096);
    let r = cmd_lun(&mut a, pe(PE_1), &reserved_select, None, 4096).await;
    assert_sense(&r, 0x05, 0x24, 0x00);
    assert_eq!(
        field_pointer(&r),
        (0xC0 | 0x08 | 7, 2),
        "SELECT REPORT field"
    );

    // A second bind: REPORT LUNS (which does not report the UA) clears it for this nexus,
    // but only one that completes: a refused one reported nothing.
    let v2 = api.create_vvol(C_RAM, 16 * MIB);
    let bnd2 = api.bind(v2.id, HOST_A, Some(PE_1));
    let sec2 = binding_lun(&bnd2);
    assert_ne!(sec, sec2);
    let r = cmd_lun(&mut a, pe(PE_1), &reserved_select, None, 4096).await;
    assert_sense(&r, 0x05, 0x24, 0x00);
    let r = cmd_lun(&mut a, pe(PE_1), &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x06, 0x3F, 0x0E);
    let v3 = api.create_vvol(C_RAM, 16 * MIB);
    let sec3 = binding_lun(&api.bind(v3.id, HOST_A, Some(PE_1)));
    api.unbind(v3.id, HOST_A);
    assert_ne!(sec3, sec2);
    let mut want = vec![b(sec), b(sec2)];
    want.sort();
    assert_eq!(report_luns_at(&mut a, pe(PE_1), 0x00).await, want);
    assert_good(&cmd_lun(&mut a, pe(PE_1), &test_unit_ready(), None, 0).await);
}

// ---- 3. I/O through the two-level LUN ------------------------------------------------------

#[tokio::test]
async fn io_through_the_two_level_lun_and_isolation_between_vvols() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let v1 = api.create_vvol(C_FILE, 32 * MIB);
    let v2 = api.create_vvol(C_RAM, 16 * MIB);
    let mut a = login_host(&d, HOST_A).await;
    let l1 = binding_lun(&api.bind(v1.id, HOST_A, Some(PE_1)));
    let l2 = binding_lun(&api.bind(v2.id, HOST_A, Some(PE_2)));

    for (l, size) in [(l1, 32 * MIB), (l2, 16 * MIB)] {
        let r = cmd_lun(&mut a, l, &read_capacity16(32), None, 32).await;
        assert_good(&r);
        let last = u64::from_be_bytes(r.data[..8].try_into().unwrap());
        let block = u32::from_be_bytes(r.data[8..12].try_into().unwrap());
        assert_eq!((last + 1) * block as u64, size, "capacity of {l:?}");
        assert_eq!(block, 512);
    }

    let p1 = pattern(64 * 1024, 11);
    let p2 = pattern(64 * 1024, 22);
    write_blocks_at(&mut a, l1, 100, 512, &p1).await;
    write_blocks_at(&mut a, l2, 100, 512, &p2).await;
    assert_eq!(read_blocks_at(&mut a, l1, 100, 512, 128).await, p1);
    assert_eq!(read_blocks_at(&mut a, l2, 100, 512, 128).await, p2);
    // Around the writes: untouched.
    assert_eq!(read_blocks_at(&mut a, l1, 99, 512, 1).await, vec![0; 512]);
    assert_eq!(read_blocks_at(&mut a, l2, 228, 512, 1).await, vec![0; 512]);
    // Last block, and one past it.
    let last = (16 * MIB / 512 - 1) as u32;
    let tail = pattern(512, 33);
    let r = cmd_lun(&mut a, l2, &write10(last, 1), Some(&tail), 0).await;
    assert_good(&r);
    let r = cmd_lun(&mut a, l2, &read10(last, 1), None, 512).await;
    assert_good(&r);
    assert_eq!(r.data, tail);
    let r = cmd_lun(&mut a, l2, &read10(last + 1, 1), None, 512).await;
    assert_sense(&r, 0x05, 0x21, 0x00);
    // LUN 0 saw none of it.
    assert_eq!(read_blocks(&mut a, 0, 100, 512, 1).await, vec![0; 512]);
    // The VVols are members of the conglomerate, not administrative LUs.
    let r = cmd_lun(&mut a, l1, &inquiry(None, 96), None, 96).await;
    assert_good(&r);
    assert_eq!((r.data[0], r.data[1] & 0x40), (0x00, 0x40));
}

// ---- 4. another host -----------------------------------------------------------------------

#[tokio::test]
async fn another_host_cannot_reach_a_binding_and_sees_no_ua() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let v = api.create_vvol(C_RAM, 16 * MIB);
    // B logs in before the bind and sends nothing yet.
    let mut bs = login_with(&d, &host_opts(HOST_B)).await;
    let mut a = login_host(&d, HOST_A).await;
    let sec = binding_lun(&api.bind(v.id, HOST_A, Some(PE_1)));
    write_blocks_at(&mut a, sec, 0, 512, &pattern(4096, 4)).await;

    for cdb in [
        &test_unit_ready()[..],
        &read10(0, 1)[..],
        &write10(0, 1)[..],
    ] {
        let out = (cdb[0] == 0x2A).then_some(&[0u8; 512][..]);
        let want_in = if cdb[0] == 0x28 { 512 } else { 0 };
        let r = cmd_lun(&mut bs, sec, cdb, out, want_in).await;
        assert_sense(&r, 0x05, 0x25, 0x00);
    }
    let r = cmd_lun(&mut bs, sec, &inquiry(None, 36), None, 36).await;
    assert_good(&r);
    assert_eq!(r.data[0], 0x7F, "peripheral qualifier 011b, type 1Fh");
    // B's PE: the power-on condition, then nothing — A's bind is not B's business.
    clear_power_on_ua_at(&mut bs, pe(PE_1)).await;
    assert_eq!(
        report_luns_at(&mut bs, pe(PE_1), 0x00).await,
        Vec::<[u8; 8]>::new()
    );
    // A's data is intact (B's refused write did nothing).
    assert_eq!(
        read_blocks_at(&mut a, sec, 0, 512, 8).await,
        pattern(4096, 4)
    );
}

// ---- 5. bind twice, and for two hosts ------------------------------------------------------

#[tokio::test]
async fn bind_is_idempotent_and_two_hosts_share_the_data() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let v = api.create_vvol(C_FILE, 16 * MIB);
    let mut a = login_host(&d, HOST_A).await;
    let mut bs = login_host(&d, HOST_B).await;

    let first = api.bind(v.id, HOST_A, None);
    let again = api.bind(v.id, HOST_A, None);
    assert_eq!(
        first, again,
        "binding twice for one host returns the same binding"
    );
    let again = api.bind(v.id, HOST_A, Some(first.pe_lun));
    assert_eq!(first.secondary_id, again.secondary_id);
    let for_b = api.bind(v.id, HOST_B, None);
    assert_eq!(for_b.host, HOST_B);
    let (la, lb) = (binding_lun(&first), binding_lun(&for_b));

    let all = api.bindings();
    assert_eq!(all.iter().filter(|x| x.vvol == v.id).count(), 2, "{all:?}");
    let mut hosts = api.vvol(v.id).bound_hosts;
    hosts.sort();
    assert_eq!(hosts, vec![HOST_A.to_string(), HOST_B.to_string()]);

    // B's REPORT LUNS at its PE lists its own binding only.
    assert_eq!(
        report_luns_at(&mut bs, pe(for_b.pe_lun), 0x00).await,
        vec![b(lb)]
    );
    let data = pattern(8192, 5);
    write_blocks_at(&mut a, la, 10, 512, &data).await;
    assert_eq!(read_blocks_at(&mut bs, lb, 10, 512, 16).await, data);
    let data2 = pattern(8192, 6);
    write_blocks_at(&mut bs, lb, 10, 512, &data2).await;
    assert_eq!(read_blocks_at(&mut a, la, 10, 512, 16).await, data2);

    // vMotion's source and destination see the same LUN: one id per VVol and PE.
    assert_eq!(
        (for_b.pe_lun, &for_b.secondary_id),
        (first.pe_lun, &first.secondary_id)
    );
    // The source unbinds; the destination keeps its binding, id and data.
    api.unbind(v.id, HOST_A);
    let r = cmd_lun(&mut a, la, &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x05, 0x25, 0x00);
    assert_eq!(read_blocks_at(&mut bs, lb, 10, 512, 16).await, data2);
    assert_eq!(api.bindings(), vec![for_b.clone()]);
    // Rebinding A gets the id B still holds.
    assert_eq!(
        api.bind(v.id, HOST_A, None).secondary_id,
        for_b.secondary_id
    );
}

// ---- 6. delete while bound -----------------------------------------------------------------

#[test]
fn a_bound_vvol_cannot_be_deleted() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let v = api.create_vvol(C_FILE, 16 * MIB);
    api.bind(v.id, HOST_A, Some(PE_1));
    let msg = api.delete(&format!("/vvols/{}", v.id)).expect_error(409);
    assert!(msg.contains("bound"), "{msg}");
    assert_eq!(api.vvol(v.id).id, v.id, "still there");
    let removed = api.unbind(v.id, HOST_A);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].vvol, v.id);
    let r = api.delete(&format!("/vvols/{}", v.id));
    assert_eq!(r.status, 204, "{}", r.body);
    api.get(&format!("/vvols/{}", v.id)).expect_error(404);
}

// ---- 6b. grow while bound -----------------------------------------------------------------

/// PERSISTENT RESERVE OUT with a 24-byte parameter list carrying `key` (and `sa_key`).
async fn prout(s: &mut vvold::initiator::Session, l: Lun, action: u8, kind: u8, key: u64) {
    let mut param = [0u8; 24];
    let at = if action == 0 { 8 } else { 0 };
    param[at..at + 8].copy_from_slice(&key.to_be_bytes());
    let cdb = [0x5F, action, kind, 0, 0, 0, 0, 0, 24, 0];
    assert_good(&cmd_lun(s, l, &cdb, Some(&param), 0).await);
}

#[tokio::test]
async fn growing_a_bound_vvol_keeps_its_reservation_and_data() {
    // ESXi extends a running VM's disk through the VASA provider while the VVol is bound:
    // the host must see the new capacity, and nothing the LU held (a persistent reservation
    // of a clustered disk, the data) may be lost on the way.
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let v = api.create_vvol(C_FILE, 16 * MIB);
    let mut a = login_host(&d, HOST_A).await;
    let l = binding_lun(&api.bind(v.id, HOST_A, Some(PE_1)));
    let data = pattern(4096, 61);
    write_blocks_at(&mut a, l, 100, 512, &data).await;
    // REGISTER key 0x1234, then RESERVE WRITE EXCLUSIVE with it.
    prout(&mut a, l, 0x00, 0x00, 0x1234).await;
    prout(&mut a, l, 0x01, 0x01, 0x1234).await;

    let grown: VvolInfo = api
        .post(
            &format!("/vvols/{}/resize", v.id),
            serde_json::json!({ "size": 32 * MIB }),
        )
        .expect(200);
    assert_eq!(grown.size, 32 * MIB);

    // CAPACITY DATA HAS CHANGED once, then the new capacity.
    let r = cmd_lun(&mut a, l, &read_capacity16(32), None, 32).await;
    assert_sense(&r, 0x06, 0x2A, 0x09);
    let r = cmd_lun(&mut a, l, &read_capacity16(32), None, 32).await;
    assert_good(&r);
    let last = u64::from_be_bytes(r.data[..8].try_into().unwrap());
    assert_eq!((last + 1) * 512, 32 * MIB);

    // The reservation is still there, held with the same key and type.
    let r = cmd_lun(&mut a, l, &[0x5E, 0x01, 0, 0, 0, 0, 0, 0, 64, 0], None, 64).await;
    assert_good(&r);
    assert_eq!(
        u32::from_be_bytes(r.data[4..8].try_into().unwrap()),
        16,
        "{:02x?}",
        r.data
    );
    assert_eq!(
        u64::from_be_bytes(r.data[8..16].try_into().unwrap()),
        0x1234
    );
    assert_eq!(r.data[21] & 0x0F, 0x01, "WRITE EXCLUSIVE");
    // A nexus that never registered is still refused a write.
    let mut other = host_opts(HOST_A);
    other.isid[5] ^= 0x7F;
    let mut b = login_host_with(&d, &other).await;
    let mut r = cmd_lun(&mut b, l, &write10(0, 1), Some(&[0u8; 512]), 0).await;
    for _ in 0..3 {
        if r.status != CHECK_CONDITION || r.sense.get(2).map(|k| k & 0x0F) != Some(0x06) {
            break;
        }
        // Unit attentions a new nexus may be owed first.
        r = cmd_lun(&mut b, l, &write10(0, 1), Some(&[0u8; 512]), 0).await;
    }
    assert_eq!(r.status, 0x18, "RESERVATION CONFLICT");

    // The data is intact, and the new blocks are there, reading zeros and taking writes.
    assert_eq!(read_blocks_at(&mut a, l, 100, 512, 8).await, data);
    let end = 32 * MIB / 512 - 1;
    assert_eq!(read_blocks_at(&mut a, l, end, 512, 1).await, vec![0; 512]);
    let tail = pattern(512, 62);
    write_blocks_at(&mut a, l, end, 512, &tail).await;
    assert_eq!(read_blocks_at(&mut a, l, end, 512, 1).await, tail);
}

// ---- 7. unbind during a stream of writes ---------------------------------------------------

struct WriteLog {
    /// Writes answered GOOD, in order (write i goes to LBA i with content `index_block(i)`).
    acked: Vec<u32>,
    /// Writes refused, and whether each started after the unbind had returned.
    refused: Vec<(u32, bool)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbind_during_writes_loses_no_acknowledged_write() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let v = api.create_vvol(C_FILE, 16 * MIB);
    let mut a = login_host(&d, HOST_A).await;
    let first = api.bind(v.id, HOST_A, Some(PE_1));
    let sec = binding_lun(&first);
    let acked = Arc::new(AtomicUsize::new(0));
    let unbound = Arc::new(AtomicBool::new(false));

    let writer = {
        let (acked, unbound) = (acked.clone(), unbound.clone());
        tokio::spawn(async move {
            let mut log = WriteLog {
                acked: Vec::new(),
                refused: Vec::new(),
            };
            let deadline = Instant::now() + Duration::from_secs(120);
            for i in 0u32..100_000 {
                let after = unbound.load(Ordering::Acquire);
                let r = cmd_lun(&mut a, sec, &write10(i, 1), Some(&index_block(i)), 0).await;
                if r.status == GOOD {
                    assert!(log.refused.is_empty(), "write {i} GOOD after a refusal");
                    assert!(!after, "write {i} started after the unbind, yet GOOD");
                    log.acked.push(i);
                    acked.store(log.acked.len(), Ordering::Release);
                } else {
                    assert_sense(&r, 0x05, 0x25, 0x00);
                    log.refused.push((i, after));
                    // Keep going until a few writes were sent after the unbind returned.
                    if log.refused.iter().filter(|x| x.1).count() >= 3 {
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "writer never saw the unbind");
            }
            (a, log)
        })
    };
    // Let the stream run, then unbind in the middle of it.
    within("writes to start", async {
        while acked.load(Ordering::Acquire) < 40 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let api2 = api.clone();
    let removed = tokio::task::spawn_blocking(move || api2.unbind(v.id, HOST_A))
        .await
        .unwrap();
    unbound.store(true, Ordering::Release);
    assert_eq!(removed.len(), 1);
    let (mut a, log) = within("the writer", writer).await.unwrap();
    assert!(log.acked.len() >= 40);
    assert!(!log.refused.is_empty());
    assert!(api.bindings().is_empty());
    // Acknowledged writes are exactly 0..n: one command at a time.
    let n = log.acked.len() as u32;
    assert_eq!(log.acked, (0..n).collect::<Vec<_>>());

    // Bind again and read every acknowledged block back.
    let again = api.bind(v.id, HOST_A, Some(PE_1));
    let sec2 = binding_lun(&again);
    assert_eq!(report_luns_at(&mut a, pe(PE_1), 0x00).await, vec![b(sec2)]);
    let data = read_blocks_at(&mut a, sec2, 0, 512, n + 1).await;
    for i in 0..n {
        assert_eq!(
            &data[i as usize * 512..(i as usize + 1) * 512],
            &index_block(i)[..],
            "acknowledged write {i} lost"
        );
    }
    // The first refused write was not carried out.
    assert_eq!(log.refused[0].0, n);
    assert_eq!(
        &data[n as usize * 512..],
        &[0u8; 512][..],
        "refused write applied"
    );
    // The old LUN stays dead even for its host (it was never aliased to the new one).
    if sec != sec2 {
        let r = cmd_lun(&mut a, sec, &test_unit_ready(), None, 0).await;
        assert_sense(&r, 0x05, 0x25, 0x00);
    }
}

/// What `queue_throttled` queues.
#[derive(Clone, Copy)]
enum Queued {
    /// One-block reads of LBA i: about 3 s of the cap.
    Reads,
    /// 1 MiB reads (32 units each): about 96 s of the cap.
    LongReads,
    /// One-block writes of `pattern(512, i + 1)` to LBA i: about 3 s.
    Writes,
}

/// Set a VVol's IOPS cap (its upper limit) through the API.
fn cap_iops(api: &Api, vvol: Uuid, upper: u32) {
    let _: VvolInfo = api
        .put(
            &format!("/vvols/{vvol}/limits"),
            serde_json::json!({ "upper": upper }),
        )
        .expect(200);
}

/// Send a command on `l` (with its Data-Out, if any, as immediate data) without waiting for
/// the answer.
async fn send_command(
    s: &mut vvold::initiator::Session,
    l: Lun,
    itt: u32,
    cdb: &[u8],
    data_out: &[u8],
    read_len: u32,
) {
    let mut bhs = scsi_command_bhs(s, 0, itt, cdb, data_out.len() as u32, read_len);
    bhs.set_lun(l);
    s.send_pdu(bhs, data_out).await.expect("send command");
    s.cmdsn = s.cmdsn.wrapping_add(1);
}

/// A 4 MiB READ(10) at LBA 0: 128 QoS units, which a 10 IOPS cap lets through every 12.8 s.
const HELD_READ: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0x20, 0, 0];
const HELD_READ_LEN: u32 = 4 << 20;

/// Send a HELD_READ on `l` for each ITT of `itts`, behind a 10 IOPS cap on its VVol; returns
/// the ITTs the cap holds (what its burst lets through is answered at once).
async fn hold_reads(
    s: &mut vvold::initiator::Session,
    l: Lun,
    itts: std::ops::Range<u32>,
) -> Vec<u32> {
    for itt in itts.clone() {
        send_command(s, l, itt, &HELD_READ, &[], HELD_READ_LEN).await;
    }
    let early = answers_until_quiet(s, Duration::from_millis(300)).await;
    itts.filter(|i| !early.contains(i)).collect()
}

/// A RAM VVol bound for host A on PE 1 and capped at 10 IOPS; the API, the VVol, A's session
/// and the VVol's LUN there.
async fn capped_vvol(d: &Daemon) -> (Api, VvolInfo, vvold::initiator::Session, Lun) {
    let api = Api::of(d);
    let v = api.create_vvol(C_RAM, 16 * MIB);
    let a = login_host(d, HOST_A).await;
    let l = binding_lun(&api.bind(v.id, HOST_A, Some(PE_1)));
    cap_iops(&api, v.id, 10);
    (api, v, a, l)
}

/// A RAM VVol bound for host A on PE 1 and for host B on `pe_b`; the API, the VVol, the two
/// hosts' sessions and the VVol's LUN in each.
async fn shared_vvol(
    d: &Daemon,
    pe_b: u16,
) -> (
    Api,
    VvolInfo,
    vvold::initiator::Session,
    vvold::initiator::Session,
    Lun,
    Lun,
) {
    let api = Api::of(d);
    let v = api.create_vvol(C_RAM, 16 * MIB);
    let a = login_host(d, HOST_A).await;
    let b = login_host(d, HOST_B).await;
    let la = binding_lun(&api.bind(v.id, HOST_A, Some(PE_1)));
    let lb = binding_lun(&api.bind(v.id, HOST_B, Some(pe_b)));
    (api, v, a, b, la, lb)
}

/// Lift `vvol`'s cap (from a blocking thread: the API client is synchronous).
async fn uncap(api: &Api, vvol: Uuid) {
    let api = api.clone();
    tokio::task::spawn_blocking(move || cap_iops(&api, vvol, 1_000_000))
        .await
        .unwrap();
}

/// Nothing arrives on `s` for a second: aborted reads stay unanswered.
async fn assert_reads_silent(s: &mut vvold::initiator::Session) {
    if let Ok(p) = tokio::time::timeout(Duration::from_secs(1), s.recv_pdu()).await {
        panic!("an aborted read answered: {:?}", p.map(|p| p.bhs));
    }
}

/// Make an unbind of `vvol` (bound at `l` for host A, session `a`) slow: cap the VVol at 10
/// IOPS and queue 30 commands on it, so the commands its drain waits for take seconds.
async fn queue_throttled(
    api: &Api,
    a: &mut vvold::initiator::Session,
    vvol: Uuid,
    l: Lun,
    itt_base: u32,
    kind: Queued,
) {
    cap_iops(api, vvol, 10);
    for i in 0..30u32 {
        let itt = itt_base + i;
        match kind {
            Queued::Writes => {
                send_command(a, l, itt, &write10(i, 1), &pattern(512, i + 1), 0).await;
            }
            Queued::Reads => send_command(a, l, itt, &read10(i, 1), &[], 512).await,
            Queued::LongReads => send_command(a, l, itt, &read10(0, 2048), &[], 1 << 20).await,
        }
    }
}

/// A VVol array (`opts`) with one RAM VVol bound for host A at PE 1 whose unbind will be slow
/// (see `queue_throttled`).
struct SlowUnbind {
    d: Daemon,
    api: Api,
    v: VvolInfo,
    /// The session holding the queued commands: keep it, or they end with it.
    a: vvold::initiator::Session,
    l: Lun,
}

async fn slow_unbind(opts: VvolOpts, itt_base: u32, kind: Queued) -> SlowUnbind {
    let d = Daemon::start_vvol(opts);
    let api = Api::of(&d);
    let v = api.create_vvol(C_RAM, 16 * MIB);
    let mut a = login_host(&d, HOST_A).await;
    let l = binding_lun(&api.bind(v.id, HOST_A, Some(PE_1)));
    queue_throttled(&api, &mut a, v.id, l, itt_base, kind).await;
    SlowUnbind { d, api, v, a, l }
}

/// Wait until some binding is draining.
async fn until_draining(api: &Api) {
    within("the unbind to begin", async {
        while !api.bindings().iter().any(|b| b.state == "draining") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbind_finishes_though_its_client_gives_up() {
    // An unbind waits for the binding's commands in flight; a client that stops waiting must
    // not leave the binding half unbound (draining: refusing I/O and bind until a restart).
    let SlowUnbind {
        d, api, v, a: _a, ..
    } = slow_unbind(VvolOpts::default(), 0x100, Queued::Reads).await;
    let url = format!("{}/api/v1/unbind", d.api_url());
    let body = serde_json::json!({ "vvol": v.id, "host": HOST_A });
    let gave_up = tokio::task::spawn_blocking(move || {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(500))
            .build()
            .post(&url)
            .send_json(body)
            .is_err()
    })
    .await
    .unwrap();
    assert!(
        gave_up,
        "the unbind should have had to wait for the queued reads"
    );
    within_for(Duration::from_secs(30), "the unbind to finish", async {
        loop {
            let api = api.clone();
            let left = tokio::task::spawn_blocking(move || api.bindings())
                .await
                .unwrap();
            if left.is_empty() {
                break;
            }
            assert!(left.iter().all(|b| b.state == "draining"), "{left:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // And the VVol binds again.
    api.bind(v.id, HOST_A, Some(PE_1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xcopy_between_vvols_and_not_into_one_being_unbound() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let v1 = api.create_vvol(C_RAM, 16 * MIB);
    let v2 = api.create_vvol(C_RAM, 16 * MIB);
    let mut a = login_host(&d, HOST_A).await;
    let l1 = binding_lun(&api.bind(v1.id, HOST_A, Some(PE_1)));
    let l2 = binding_lun(&api.bind(v2.id, HOST_A, Some(PE_2)));
    let (n1, n2) = (naa_at(&mut a, l1).await, naa_at(&mut a, l2).await);
    let data = pattern(64 * 512, 5);
    write_blocks_at(&mut a, l1, 0, 512, &data).await;
    let (cdb, list) = xcopy(1, &[cscd(&n1), cscd(&n2)], &[b2b(0, 1, 64, 0, 100)]);
    assert_good(&cmd_lun(&mut a, l1, &cdb, Some(&list), 0).await);
    assert_eq!(read_blocks_at(&mut a, l2, 100, 512, 64).await, data);

    // V2 being unbound, slowly.
    queue_throttled(&api, &mut a, v2.id, l2, 0x200, Queued::Reads).await;
    let api2 = api.clone();
    let unbind = tokio::task::spawn_blocking(move || api2.unbind(v2.id, HOST_A));
    until_draining(&api).await;
    // Another session of the host copies into it: COPY TARGET DEVICE NOT REACHABLE, and
    // nothing lands in the VVol the unbind is emptying.
    let mut other = host_opts(HOST_A);
    other.isid[5] ^= 0x3C;
    let mut b = login_host_with(&d, &other).await;
    clear_power_on_ua_at(&mut b, l1).await;
    let (cdb, list) = xcopy(2, &[cscd(&n1), cscd(&n2)], &[b2b(0, 1, 64, 0, 200)]);
    let r = cmd_lun(&mut b, l1, &cdb, Some(&list), 0).await;
    assert_sense(&r, 0x0A, 0x0D, 0x02);
    assert_eq!(within("the unbind", unbind).await.unwrap().len(), 1);
    let l2 = binding_lun(&api.bind(v2.id, HOST_A, Some(PE_2)));
    assert_eq!(
        read_blocks_at(&mut b, l2, 200, 512, 64).await,
        vec![0; 64 * 512],
        "nothing landed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_management_reaches_a_vvol_being_unbound() {
    // The commands an unbind waits for are the host's to abort or reset.
    let SlowUnbind {
        d,
        api,
        v,
        a: _a,
        l,
    } = slow_unbind(VvolOpts::default(), 0x300, Queued::LongReads).await;
    let api2 = api.clone();
    let unbind = tokio::task::spawn_blocking(move || api2.unbind(v.id, HOST_A));
    until_draining(&api).await;
    // Meanwhile the rest of the array is not held up: another VVol binds while this one is
    // still draining.
    let v2 = api.create_vvol(C_RAM, 16 * MIB);
    let api2 = api.clone();
    tokio::task::spawn_blocking(move || api2.bind(v2.id, HOST_A, Some(PE_2)))
        .await
        .unwrap();
    assert!(
        api.bindings()
            .iter()
            .any(|b| b.vvol == v.id && b.state == "draining"),
        "the bind waited for another VVol's drain"
    );
    let mut other = host_opts(HOST_A);
    other.isid[5] ^= 0x5A;
    let mut b = login_host_with(&d, &other).await;
    // LOGICAL UNIT RESET at PE ‖ secondary: FUNCTION COMPLETE, not "LUN does not exist".
    let answer = within("LUN RESET", b.task_mgmt(5, l, 0xFFFF_FFFF))
        .await
        .expect("TMF answer");
    assert_eq!(answer, 0);
    // The reset ends the aborted commands' wait for the cap (about 96 s of it): the drain
    // need not sit it out.
    assert_eq!(within("the unbind", unbind).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_lands_after_an_unbind_whose_drain_timed_out() {
    // A VVol capped at 10 IOPS with 30 writes queued: the drain (1 s here) times out, the
    // unbind aborts what has not started, and nothing more is written once it has returned.
    // Every write is answered: GOOD if it landed, LOGICAL UNIT NOT SUPPORTED if the unbind
    // aborted it (the host asked no abort, so silence would leave it to time out and reset).
    let opts = VvolOpts {
        extra: "drain_timeout_secs = 1".into(),
        ..VvolOpts::default()
    };
    let SlowUnbind {
        d, api, v, mut a, ..
    } = slow_unbind(opts, 0x400, Queued::Writes).await;
    let api2 = api.clone();
    let removed = tokio::task::spawn_blocking(move || api2.unbind(v.id, HOST_A))
        .await
        .unwrap();
    assert_eq!(removed.len(), 1);
    // Count the blocks written, through a new binding and session, now and later.
    let again = binding_lun(&api.bind(v.id, HOST_A, Some(PE_2)));
    let mut other = host_opts(HOST_A);
    other.isid[5] ^= 0x66;
    let mut b = login_host_with(&d, &other).await;
    clear_power_on_ua_at(&mut b, again).await;
    let written = |data: Vec<u8>| {
        data.chunks(512)
            .filter(|c| c.iter().any(|&x| x != 0))
            .count()
    };
    let at_unbind = written(read_blocks_at(&mut b, again, 0, 512, 30).await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = written(read_blocks_at(&mut b, again, 0, 512, 30).await);
    assert!(
        at_unbind < 30,
        "every queued write landed: none was aborted"
    );
    assert_eq!(later, at_unbind, "writes landed after the unbind returned");
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < 30 {
        let p = recv(&mut a).await;
        assert_eq!(p.bhs.opcode(), op::SCSI_RESPONSE, "{:?}", p.bhs);
        let sense = p.data.get(2..).map(|s| (s[2] & 0x0F, s[12], s[13]));
        let status = (p.bhs.0[3], sense);
        assert!(
            answered.insert(p.bhs.u32_at(16), status).is_none(),
            "answered twice"
        );
    }
    let good = answered.values().filter(|s| s.0 == GOOD).count();
    assert_eq!(good, at_unbind, "GOOD for exactly the writes that landed");
    for (itt, st) in &answered {
        assert!(
            st.0 == GOOD || *st == (CHECK_CONDITION, Some((0x05, 0x25, 0x00))),
            "ITT {itt:#x}: {st:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_full_of_commands_another_nexus_aborted_is_reopened() {
    // Host A fills its whole CmdSN window with 4 MiB reads held by a 10 IOPS cap (128 units of
    // 32 KiB each: one every 12.8 s); a LUN RESET from A's second session aborts them silently
    // (TAS=0). No answer then carries the freed slots: a NOP-In must, or A could send nothing
    // until it pinged.
    let d = Daemon::start_vvol(VvolOpts::default());
    let (_, _, mut a, l) = capped_vvol(&d).await;
    let mut other = host_opts(HOST_A);
    other.isid[5] ^= 0x3C;
    let mut b = login_host_with(&d, &other).await;
    let open = |s: &vvold::initiator::Session| s.maxcmdsn.wrapping_sub(s.cmdsn) as i32 >= 0;
    let status = |p: &vvold::initiator::RxPdu| {
        p.bhs.opcode() == op::SCSI_RESPONSE
            || (p.bhs.opcode() == op::DATA_IN && p.bhs.flags() & 0x01 != 0)
    };
    let mut itt = 0x900;
    loop {
        while open(&a) {
            send_command(&mut a, l, itt, &HELD_READ, &[], HELD_READ_LEN).await;
            itt += 1;
        }
        // The ping's answer follows the routing of every read sent before it. A read the
        // cap's burst let through opened the window again: fill it and ask again.
        a.send_pdu(a.ping_bhs(0x9FF0), &[]).await.expect("ping");
        let mut released = 0;
        loop {
            let p = recv(&mut a).await;
            if p.bhs.opcode() == op::NOP_IN && p.bhs.u32_at(16) == 0x9FF0 {
                break;
            }
            released += usize::from(status(&p));
        }
        if released == 0 && !open(&a) {
            break;
        }
    }
    let answer = within("LUN RESET", b.task_mgmt(5, l, 0xFFFF_FFFF))
        .await
        .expect("TMF answer");
    assert_eq!(answer, 0);
    let mut announced = false;
    tokio::time::timeout(Duration::from_secs(5), async {
        while !open(&a) {
            let p = a.recv_pdu().await.expect("receive");
            assert!(!status(&p), "an aborted read answered: {:?}", p.bhs);
            if p.bhs.opcode() == op::NOP_IN {
                assert_eq!(
                    (p.bhs.u32_at(16), p.bhs.u32_at(20)),
                    (!0, !0),
                    "asks no reply"
                );
                announced = true;
            }
        }
    })
    .await
    .expect("the window stayed shut");
    assert!(announced);
    // The reads were routed before the reset, so its unit attention is still there.
    let r = cmd_lun(&mut a, l, &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x06, 0x29, 0x03);
}

#[tokio::test]
async fn an_unbind_forgets_the_hosts_state_on_a_vvol_another_host_keeps() {
    // Host A holds an SPC-2 reservation on a VVol that host B has bound too. Once A's
    // binding goes, A can neither use nor release it: it must not fence B off.
    let d = Daemon::start_vvol(VvolOpts::default());
    let (api, v, mut a, mut b, la, lb) = shared_vvol(&d, PE_1).await;
    assert_good(&cmd_lun(&mut a, la, &[0x16, 0, 0, 0, 0, 0], None, 0).await);
    let r = cmd_lun(&mut b, lb, &read10(0, 1), None, 512).await;
    assert_eq!(r.status, 0x18, "RESERVATION CONFLICT while A holds it");
    api.unbind(v.id, HOST_A);
    assert_good(&cmd_lun(&mut b, lb, &read10(0, 1), None, 512).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lun_reset_reaches_the_vvols_tasks_through_every_pe() {
    // One VVol, bound for host A on PE 1 and for host B on PE 2: two LUNs for one logical
    // unit. B's reads wait on a 10 IOPS cap (4 MiB each: 12.8 s apiece); A resets the LU.
    let d = Daemon::start_vvol(VvolOpts::default());
    let (api, v, mut a, mut b, la, lb) = shared_vvol(&d, PE_2).await;
    assert_ne!(la, lb);
    // LOGICAL UNIT RESET from A reaches B's tasks on the same LU through the other PE.
    assert_reset_silences_held_reads(
        &api,
        v.id,
        (&mut a, 5, la),
        (&mut b, lb, 0xA00..0xA03),
        0x03,
    )
    .await;
}

/// Host B's reads on `lun` are held by a 10 IOPS cap on `vvol`; then `reset` (a task
/// management function) comes from host A's session on its LUN. The reset answers FUNCTION
/// COMPLETE, the aborted reads answer nothing even once the cap no longer holds them, and
/// B's next command on `lun` reports the reset (06h/29h/`ascq`).
async fn assert_reset_silences_held_reads(
    api: &Api,
    vvol: Uuid,
    (a, reset, at): (&mut vvold::initiator::Session, u8, Lun),
    (b, lun, itts): (&mut vvold::initiator::Session, Lun, std::ops::Range<u32>),
    ascq: u8,
) {
    cap_iops(api, vvol, 10);
    assert!(!hold_reads(b, lun, itts).await.is_empty());
    let answer = within(
        &format!("task management function {reset}"),
        a.task_mgmt(reset, at, 0xFFFF_FFFF),
    )
    .await
    .expect("TMF answer");
    assert_eq!(answer, 0);
    uncap(api, vvol).await;
    assert_reads_silent(b).await;
    let r = cmd_lun(b, lun, &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x06, 0x29, ascq);
}

/// Send a command with task attribute `attr` (SAM-5 §8.6: 1 SIMPLE, 2 ORDERED, 3 HEAD OF
/// QUEUE, 4 ACA) and its Data-Out as immediate data, without waiting for the answer.
async fn send_with_attr(
    s: &mut vvold::initiator::Session,
    l: Lun,
    itt: u32,
    cdb: &[u8],
    data_out: &[u8],
    attr: u8,
) {
    let mut bhs = scsi_command_bhs(s, 0, itt, cdb, data_out.len() as u32, 0);
    bhs.0[1] = (bhs.0[1] & !0x07) | attr;
    bhs.set_lun(l);
    s.send_pdu(bhs, data_out).await.expect("send command");
    s.cmdsn = s.cmdsn.wrapping_add(1);
}

/// The ITT and status of a PDU that ends a command (SCSI Response, or Data-In with status).
fn final_answer(p: &vvold::initiator::RxPdu) -> Option<(u32, u8)> {
    let b = &p.bhs;
    let ends = b.opcode() == op::SCSI_RESPONSE || (b.opcode() == op::DATA_IN && b.0[1] & 0x01 != 0);
    ends.then(|| (b.u32_at(16), b.0[3]))
}

/// Every command answered within `quiet` of the one before, in order.
async fn answers_until_quiet(s: &mut vvold::initiator::Session, quiet: Duration) -> Vec<u32> {
    let mut itts = Vec::new();
    while let Ok(p) = tokio::time::timeout(quiet, s.recv_pdu()).await {
        let p = p.expect("receive");
        if let Some((itt, status)) = final_answer(&p) {
            assert_eq!(status, 0, "command {itt:#x} failed");
            itts.push(itt);
        }
    }
    itts
}

#[tokio::test]
async fn an_ordered_command_waits_for_older_ones_and_newer_ones_wait_for_it() {
    // Reads held by a 10 IOPS cap stay in the VVol's task set; an ORDERED TEST UNIT READY
    // behind them, and a SIMPLE one behind that, wait. HEAD OF QUEUE does not, and nor does a
    // command to another LU (a task set of its own).
    let d = Daemon::start_vvol(VvolOpts::default());
    let (api, v, mut a, l) = capped_vvol(&d).await;
    let held = hold_reads(&mut a, l, 0xC00..0xC03).await;
    assert!(!held.is_empty(), "the cap held no read");
    const ORDERED: u32 = 0xD01;
    const NEWER_SIMPLE: u32 = 0xD02;
    const OTHER_LU: u32 = 0xD03;
    const HEAD: u32 = 0xD04;
    send_with_attr(&mut a, l, ORDERED, &test_unit_ready(), &[], 2).await;
    send_with_attr(&mut a, l, NEWER_SIMPLE, &test_unit_ready(), &[], 1).await;
    send_with_attr(&mut a, lun(0), OTHER_LU, &test_unit_ready(), &[], 1).await;
    send_with_attr(&mut a, l, HEAD, &test_unit_ready(), &[], 3).await;
    let now = answers_until_quiet(&mut a, Duration::from_secs(1)).await;
    assert_eq!(
        now,
        [OTHER_LU, HEAD],
        "only these may run while the reads are held"
    );
    uncap(&api, v.id).await;
    let rest = answers_until_quiet(&mut a, Duration::from_secs(2)).await;
    let at = |itt: u32| rest.iter().position(|&i| i == itt).expect("answered");
    for &r in &held {
        assert!(
            at(r) < at(ORDERED),
            "the ORDERED command ran before read {r:#x}: {rest:x?}"
        );
    }
    assert!(at(ORDERED) < at(NEWER_SIMPLE), "{rest:x?}");
    assert_eq!(rest.len(), held.len() + 2, "{rest:x?}");
}

#[tokio::test]
async fn a_waiting_command_is_decoded_when_it_may_run() {
    // Host A's ORDERED TEST UNIT READY waits behind A's held reads; meanwhile host B changes
    // the VVol's mode pages. A's command, decoded when it runs, reports the change.
    let d = Daemon::start_vvol(VvolOpts::default());
    let (api, v, mut a, mut b, la, lb) = shared_vvol(&d, PE_2).await;
    cap_iops(&api, v.id, 10);
    assert!(!hold_reads(&mut a, la, 0xC00..0xC03).await.is_empty());
    send_with_attr(&mut a, la, 0xD01, &test_unit_ready(), &[], 2).await;
    // MODE SELECT(6): the control page as it is, but for SWP.
    let select = [0x15, 0x10, 0, 0, 16, 0];
    let page = [
        0, 0, 0, 0, 0x0A, 0x0A, 0x22, 0x10, 0x08, 0, 0, 0, 0xFF, 0xFF, 0, 0,
    ];
    assert_good(&cmd_lun(&mut b, lb, &select, Some(&page), 0).await);
    uncap(&api, v.id).await;
    loop {
        let p = within("the ORDERED command's answer", a.recv_pdu())
            .await
            .expect("receive");
        if final_answer(&p) == Some((0xD01, 0x02)) {
            let sense = &p.data[2..];
            assert_eq!((sense[2] & 0x0F, sense[12], sense[13]), (0x06, 0x2A, 0x01));
            break;
        }
        assert_ne!(
            final_answer(&p).map(|(itt, _)| itt),
            Some(0xD01),
            "answered GOOD"
        );
    }
}

#[tokio::test]
async fn a_write_waiting_behind_an_ordered_mode_select_is_checked_when_it_runs() {
    // Behind held reads, an ORDERED MODE SELECT sets software write protection and a SIMPLE
    // WRITE follows it: the write, decided when it may run, finds the VVol protected.
    let d = Daemon::start_vvol(VvolOpts::default());
    let (api, v, mut a, l) = capped_vvol(&d).await;
    assert!(!hold_reads(&mut a, l, 0xC00..0xC03).await.is_empty());
    let select = [0x15, 0x10, 0, 0, 16, 0];
    let swp = [
        0, 0, 0, 0, 0x0A, 0x0A, 0x22, 0x10, 0x08, 0, 0, 0, 0xFF, 0xFF, 0, 0,
    ];
    send_with_attr(&mut a, l, 0xD01, &select, &swp, 2).await;
    let write = [0x2A, 0, 0, 0, 0, 8, 0, 0, 1, 0];
    let block = vec![0xAB; v.block_size as usize];
    send_with_attr(&mut a, l, 0xD02, &write, &block, 1).await;
    uncap(&api, v.id).await;
    let mut select_done = false;
    loop {
        let p = within("the write's answer", a.recv_pdu())
            .await
            .expect("receive");
        match final_answer(&p) {
            Some((0xD01, status)) => {
                assert_eq!(status, 0, "MODE SELECT");
                select_done = true;
            }
            Some((0xD02, status)) => {
                assert!(select_done, "the write ran before the ORDERED MODE SELECT");
                assert_eq!(status, 0x02, "the write was let through");
                let sense = &p.data[2..];
                assert_eq!((sense[2] & 0x0F, sense[12], sense[13]), (0x07, 0x27, 0x02));
                break;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_unit_attention_an_aborted_command_took_is_reported_by_the_next() {
    // Host B changes the mode pages of a VVol it shares with host A, which raises a unit
    // attention for A. A's next command is an ORDERED WRITE that waits behind A's held reads;
    // routed on arrival to size its Data-Out, it takes the condition. ABORT TASK ends it
    // unanswered, so A has not been told, and its next command must tell it.
    let d = Daemon::start_vvol(VvolOpts::default());
    let (api, v, mut a, mut b, la, lb) = shared_vvol(&d, PE_2).await;
    cap_iops(&api, v.id, 10);
    let held = hold_reads(&mut a, la, 0xC00..0xC03).await;
    assert!(!held.is_empty(), "the cap held no read");
    // MODE SELECT(6): the control page as it is, but for SWP.
    let select = [0x15, 0x10, 0, 0, 16, 0];
    let page = [
        0, 0, 0, 0, 0x0A, 0x0A, 0x22, 0x10, 0x08, 0, 0, 0, 0xFF, 0xFF, 0, 0,
    ];
    assert_good(&cmd_lun(&mut b, lb, &select, Some(&page), 0).await);
    const WRITE: u32 = 0xD02;
    let write = [0x2A, 0, 0, 0, 0, 8, 0, 0, 1, 0];
    send_with_attr(
        &mut a,
        la,
        WRITE,
        &write,
        &vec![0xAB; v.block_size as usize],
        2,
    )
    .await;
    let refcmdsn = a.cmdsn.wrapping_sub(1);
    let answer = within("ABORT TASK", a.task_mgmt_ref(1, la, WRITE, refcmdsn))
        .await
        .expect("TMF answer");
    assert_eq!(answer, 0, "ABORT TASK");
    uncap(&api, v.id).await;
    let mut answered = Vec::new();
    while let Ok(p) = tokio::time::timeout(Duration::from_secs(1), a.recv_pdu()).await {
        if let Some((itt, _)) = final_answer(&p.expect("receive")) {
            answered.push(itt);
        }
    }
    assert!(!answered.contains(&WRITE), "the aborted write answered");
    assert_eq!(answered.len(), held.len(), "{answered:x?}");
    let r = cmd_lun(&mut a, la, &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x06, 0x2A, 0x01);
    assert_good(&cmd_lun(&mut a, la, &test_unit_ready(), None, 0).await);
}

#[tokio::test]
async fn the_aca_task_attribute_is_refused() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let mut a = login_host(&d, HOST_A).await;
    send_with_attr(&mut a, lun(0), 0xE01, &test_unit_ready(), &[], 4).await;
    let p = within("answer", a.recv_pdu()).await.expect("receive");
    assert_eq!(final_answer(&p), Some((0xE01, 0x02)));
    // Fixed-format sense after its two-byte length: key, ASC, ASCQ.
    let sense = &p.data[2..];
    assert_eq!((sense[2] & 0x0F, sense[12], sense[13]), (0x05, 0x49, 0x00));
    // The session goes on.
    assert_good(&cmd(&mut a, 0, &test_unit_ready(), None, 0).await);
}

/// A second target whose only LU is one PE.
const T_OTHER: &str = "iqn.2026-11.io.vvold.test:vvol-other";
const PE_3: u16 = 253;

#[tokio::test]
async fn a_target_reset_resets_the_vvols_at_its_pes_for_every_host_and_no_others() {
    // V1 is bound for host B at this target's PE 1, V2 for host A only at the other target's
    // PE 3. Host A resets this target: B's reads on V1 are aborted and B is told so by a unit
    // attention; V2, an LU of the other target, is left alone.
    let d = Daemon::start_vvol(VvolOpts {
        extra: format!("[[target]]\nname = \"{T_OTHER}\"\n\n[[target.pe]]\nid = {PE_3}\n"),
        ..VvolOpts::default()
    });
    let api = Api::of(&d);
    let v1 = api.create_vvol(C_RAM, 16 * MIB);
    let v2 = api.create_vvol(C_RAM, 16 * MIB);
    let mut a = login_host(&d, HOST_A).await;
    let mut b = login_host(&d, HOST_B).await;
    let mut a2 = login_with(
        &d,
        &vvold::initiator::LoginOptions::new(HOST_A, Some(T_OTHER)),
    )
    .await;
    clear_power_on_ua(&mut a2, PE_3).await;
    let lb = binding_lun(&api.bind(v1.id, HOST_B, Some(PE_1)));
    let la2 = binding_lun(&api.bind(v2.id, HOST_A, Some(PE_3)));
    let reset = (&mut a, 6, lun(0)); // TARGET WARM RESET
    assert_reset_silences_held_reads(&api, v1.id, reset, (&mut b, lb, 0xB00..0xB03), 0x02).await;
    assert_good(&cmd_lun(&mut a2, la2, &test_unit_ready(), None, 0).await);
    // The bind's report, and no reset.
    let r = cmd(&mut a2, PE_3, &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x06, 0x3F, 0x0E);
    assert_good(&cmd(&mut a2, PE_3, &test_unit_ready(), None, 0).await);
}

// ---- 8. API errors -------------------------------------------------------------------------

#[test]
fn api_errors_map_to_statuses_with_json_messages() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let v = api.create_vvol(C_FILE, 16 * MIB);
    let unknown = Uuid::new_v4();

    api.get(&format!("/vvols/{unknown}")).expect_error(404);
    api.delete(&format!("/vvols/{unknown}")).expect_error(404);
    api.try_bind(unknown, HOST_A, None).expect_error(404);
    api.post(
        "/unbind",
        serde_json::json!({ "vvol": v.id, "host": HOST_A }),
    )
    .expect_error(404);
    api.get("/no-such-path").expect_error(404);

    let limits = format!("/vvols/{}/limits", v.id);
    api.put(&limits, serde_json::json!({ "upper": 5 }))
        .expect_error(422);
    api.put(&limits, serde_json::json!({ "lower": 500, "upper": 500 }))
        .expect_error(422);
    api.put(&limits, serde_json::json!({ "lower": 900, "upper": 500 }))
        .expect_error(422);
    let ok: VvolInfo = api
        .put(&limits, serde_json::json!({ "lower": 100, "upper": 1000 }))
        .expect(200);
    assert_eq!((ok.limits.lower, ok.limits.upper), (Some(100), Some(1000)));
    assert_eq!(api.vvol(v.id).limits, ok.limits);
    // A misspelt field is refused, not read as "no limit".
    let msg = api
        .put(&limits, serde_json::json!({ "upper_iops": 500 }))
        .expect_error(400);
    assert!(msg.contains("upper_iops"), "{msg}");
    assert_eq!(api.vvol(v.id).limits, ok.limits, "limits untouched");
    api.post(
        "/vvols",
        serde_json::json!({ "container": C_FILE, "size": 4096, "blocksize": 4096 }),
    )
    .expect_error(400);
    // Metadata is all or nothing.
    let meta = format!("/vvols/{}/metadata", v.id);
    api.put(
        &meta,
        serde_json::json!({ "VMW_VmID": "vm-1", "bad=key": "x" }),
    )
    .expect_error(422);
    assert!(
        api.vvol(v.id).metadata.is_empty(),
        "no key of a refused request stuck"
    );

    api.raw(
        "POST",
        "/vvols",
        Some("{\"container\": \"files\", \"size\""),
    )
    .expect_error(400);
    api.raw("POST", "/bind", Some("{\"vvol\": 17}"))
        .expect_error(400);
    api.raw("POST", "/bind", Some("not json at all"))
        .expect_error(400);
    api.get("/vvols/not-a-uuid").expect_error(400);
    let msg = api.raw("PUT", "/vvols", Some("{}")).expect_error(405);
    assert!(msg.contains("PUT"), "{msg}");
    api.delete("/vvols/1234").expect_error(400);
    api.put("/vvols/xyz/metadata", serde_json::json!({ "a": "b" }))
        .expect_error(400);
    // Sizes and names out of range.
    api.post(
        "/vvols",
        serde_json::json!({ "container": C_FILE, "size": "12 parsecs" }),
    )
    .expect_error(422);
    api.post(
        "/vvols",
        serde_json::json!({ "container": "no-such-container", "size": 4096 }),
    )
    .expect_error(404);
    api.try_bind(v.id, "not-an-iqn", None).expect_error(422);
    api.try_bind(v.id, HOST_A, Some(7)).expect_error(404);
    assert!(api.bindings().is_empty(), "no error left a binding behind");
}

#[test]
fn api_token_is_required_when_configured() {
    let d = Daemon::start_vvol(VvolOpts {
        token: Some(API_TOKEN.into()),
        ..VvolOpts::default()
    });
    let bare = Api::of(&d);
    bare.get("/pes").expect_error(401);
    bare.post(
        "/vvols",
        serde_json::json!({ "container": C_FILE, "size": 4096 }),
    )
    .expect_error(401);
    Api::of(&d)
        .with_token("wrong-token-0123456789")
        .get("/vvols")
        .expect_error(401);
    let api = Api::of(&d).with_token(API_TOKEN);
    assert_eq!(api.pes().len(), 2);
    let v = api.create_vvol(C_FILE, 4096);
    assert_eq!(api.vvol(v.id).size, 4096);
    // Nothing was created by the refused request.
    let all: Vec<VvolInfo> = api.get("/vvols").expect(200);
    assert_eq!(all.len(), 1);
}

// ---- 9. restart ----------------------------------------------------------------------------

async fn bindings_survive_a_restart(kill: bool) {
    let mut d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let v = api.create_vvol(C_FILE, 16 * MIB);
    let meta: VvolInfo = api
        .put(
            &format!("/vvols/{}/metadata", v.id),
            serde_json::json!({ "VMW_VmID": "vm-42", "VMW_VVolName": "disk0" }),
        )
        .expect(200);
    let bnd = api.bind(v.id, HOST_A, Some(PE_2));
    // Host B shares the id (vMotion): both bindings must come back.
    let bnd_b = api.bind(v.id, HOST_B, Some(PE_2));
    assert_eq!(bnd_b.secondary_id, bnd.secondary_id);
    let sec = binding_lun(&bnd);
    let data = pattern(32 * 1024, 9);
    {
        let mut a = login_host(&d, HOST_A).await;
        // Bound before the login: the VVol reports power-on to the new session too.
        clear_power_on_ua_at(&mut a, sec).await;
        write_blocks_at(&mut a, sec, 64, 512, &data).await;
        if kill {
            assert_good(&cmd_lun(&mut a, sec, &synchronize_cache10(), None, 0).await);
        }
    }
    if kill {
        d.crash();
    } else {
        let status = d.stop().expect("was running");
        assert!(status.success(), "orderly stop: {status}");
    }
    d.start_again();
    let api = Api::of(&d);

    let got = api.vvol(v.id);
    assert_eq!(got.metadata, meta.metadata);
    assert_eq!(
        got.metadata.get("VMW_VmID").map(String::as_str),
        Some("vm-42")
    );
    let mut hosts = got.bound_hosts.clone();
    hosts.sort();
    assert_eq!(hosts, vec![HOST_A.to_string(), HOST_B.to_string()]);
    let mut all = api.bindings();
    all.sort_by(|x, y| x.host.cmp(&y.host));
    assert_eq!(
        all,
        vec![bnd.clone(), bnd_b.clone()],
        "bindings restored exactly"
    );
    assert_eq!(all[0].pe_naa, bnd.pe_naa, "the PE keeps its NAA");

    // A's new session: only the power-on condition, on the PE and on the VVol.
    let mut a = login_with(&d, &host_opts(HOST_A)).await;
    clear_power_on_ua_at(&mut a, pe(PE_2)).await;
    assert_eq!(report_luns_at(&mut a, pe(PE_2), 0x00).await, vec![b(sec)]);
    clear_power_on_ua_at(&mut a, sec).await;
    assert_eq!(read_blocks_at(&mut a, sec, 64, 512, 64).await, data);
    // And it is still writable, and the id counter did not go back: a new VVol bound on the
    // same PE gets another id.
    let v2 = api.create_vvol(C_FILE, 16 * MIB);
    let b2 = api.bind(v2.id, HOST_A, Some(PE_2));
    assert_ne!(b2.secondary_id, bnd.secondary_id);
}

#[tokio::test]
async fn bindings_metadata_and_data_survive_sigterm() {
    bindings_survive_a_restart(false).await;
}

#[tokio::test]
async fn bindings_metadata_and_data_survive_sigkill() {
    bindings_survive_a_restart(true).await;
}

// ---- 10. in-band binding -------------------------------------------------------------------

fn bind_request(vvol: Uuid, host: &str) -> InbandRequest {
    InbandRequest::Bind {
        vvol,
        host: host.into(),
        any_pe: false,
    }
}

/// Send VVOL BINDING OUT with exactly `params` as Data-Out (the CDB says its length).
async fn binding_out(
    s: &mut vvold::initiator::Session,
    at: u16,
    sa: ServiceAction,
    params: &[u8],
) -> vvold::initiator::ScsiResult {
    let cdb = inband::out_cdb(sa, params.len() as u32);
    let out = (!params.is_empty()).then_some(params);
    cmd_lun(s, pe(at), &cdb, out, 0).await
}

async fn report_bindings(
    s: &mut vvold::initiator::Session,
    at: u16,
) -> Vec<vvold::vvol::binding::Binding> {
    let r = cmd_lun(s, pe(at), &inband::report_cdb(8192), None, 8192).await;
    assert_good(&r);
    inband::decode_report(&r.data).expect("REPORT BINDINGS data")
}

#[tokio::test]
async fn inband_binding_is_for_control_initiators_only() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let v = api.create_vvol(C_RAM, 16 * MIB);
    let mut a = login_host(&d, HOST_A).await;
    let params = inband::encode_params(&bind_request(v.id, HOST_A));
    let r = binding_out(&mut a, PE_1, ServiceAction::Bind, &params).await;
    assert_sense(&r, 0x05, 0x20, 0x02);
    let r = cmd_lun(&mut a, pe(PE_1), &inband::report_cdb(4096), None, 4096).await;
    assert_sense(&r, 0x05, 0x20, 0x02);
    assert!(api.bindings().is_empty());
    // Nor are they anything but unsupported on a normal LU.
    let mut c = login_host(&d, CONTROL_IQN).await;
    let r = cmd_lun(
        &mut c,
        lun(0),
        &inband::bind_cdb(params.len() as u32),
        Some(&params),
        0,
    )
    .await;
    assert_sense(&r, 0x05, 0x20, 0x00);
    assert!(api.bindings().is_empty());
}

#[tokio::test]
async fn inband_bind_with_malformed_parameters_is_refused_precisely() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let v = api.create_vvol(C_RAM, 16 * MIB);
    let mut c = login_host(&d, CONTROL_IQN).await;
    let good = inband::encode_params(&bind_request(v.id, HOST_A));

    // Shorter than the 20-byte header; one byte more than 20 + N; no parameters at all.
    let r = binding_out(&mut c, PE_1, ServiceAction::Bind, &good[..10]).await;
    assert_sense(&r, 0x05, 0x1A, 0x00);
    let mut long = good.clone();
    long.push(b'x');
    let r = binding_out(&mut c, PE_1, ServiceAction::Bind, &long).await;
    assert_sense(&r, 0x05, 0x1A, 0x00);
    let r = binding_out(&mut c, PE_1, ServiceAction::Bind, &[]).await;
    assert_sense(&r, 0x05, 0x1A, 0x00);

    // Bad fields: (parameters, SKS byte 15, field pointer).
    let with_host = |h: &str| inband::encode_params(&bind_request(v.id, h));
    let mut nil = good.clone();
    nil[..16].fill(0);
    let mut flags = good.clone();
    flags[16] = 0x02;
    let mut reserved = good.clone();
    reserved[17] = 0x10;
    let mut zero_len = good.clone();
    zero_len[18..20].fill(0);
    zero_len.truncate(20);
    let cases: Vec<(&str, Vec<u8>, u8, u16)> = vec![
        (
            "host name without iqn./eui./naa.",
            with_host("esx-host-a"),
            0x80,
            20,
        ),
        (
            "space in the host name",
            with_host("iqn.2026-11.a b"),
            0x80,
            33,
        ),
        ("nil VVol id", nil, 0x80, 0),
        ("reserved FLAGS bit", flags, 0x80 | 0x08 | 7, 16),
        ("reserved byte 17", reserved, 0x80 | 0x08 | 7, 17),
        ("HOST NAME LENGTH 0", zero_len, 0x80 | 0x08 | 7, 18),
        (
            "unknown VVol",
            inband::encode_params(&bind_request(Uuid::new_v4(), HOST_A)),
            0x80,
            0,
        ),
    ];
    for (what, params, sks, field) in cases {
        let r = binding_out(&mut c, PE_1, ServiceAction::Bind, &params).await;
        assert_sense(&r, 0x05, 0x26, 0x00);
        assert_eq!(field_pointer(&r), (sks, field), "{what}");
    }
    // CDB errors: unknown service action, reserved CDB byte.
    let mut cdb = inband::bind_cdb(good.len() as u32);
    cdb[1] = 0x07;
    let r = cmd_lun(&mut c, pe(PE_1), &cdb, Some(&good), 0).await;
    assert_sense(&r, 0x05, 0x24, 0x00);
    assert_eq!(field_pointer(&r), (0xC0 | 0x08 | 4, 1));
    let mut cdb = inband::bind_cdb(good.len() as u32);
    cdb[3] = 0x01;
    let r = cmd_lun(&mut c, pe(PE_1), &cdb, Some(&good), 0).await;
    assert_sense(&r, 0x05, 0x24, 0x00);
    assert_eq!(field_pointer(&r), (0xC0 | 0x08 | 7, 3));
    assert!(api.bindings().is_empty(), "nothing was bound");
    assert!(report_bindings(&mut c, PE_1).await.is_empty());
}

#[tokio::test]
async fn inband_bind_report_and_unbind() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let v = api.create_vvol(C_FILE, 16 * MIB);
    let mut c = login_host(&d, CONTROL_IQN).await;
    let mut a = login_host(&d, HOST_A).await;
    let params = inband::encode_params(&bind_request(v.id, HOST_A));
    assert_good(&binding_out(&mut c, PE_1, ServiceAction::Bind, &params).await);

    let seen = report_bindings(&mut c, PE_1).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    let api_view = api.bindings();
    assert_eq!(api_view.len(), 1);
    assert_eq!(
        (
            seen[0].vvol,
            seen[0].host.as_str(),
            seen[0].pe,
            seen[0].state
        ),
        (v.id, HOST_A, PE_1, BindingState::Active)
    );
    assert_eq!(seen[0].secondary.to_vasa(), api_view[0].secondary_id);
    assert!(report_bindings(&mut c, PE_2).await.is_empty());
    // Host A sees it like any other bind.
    let r = cmd_lun(&mut a, pe(PE_1), &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x06, 0x3F, 0x0E);
    let sec = binding_lun(&api_view[0]);
    assert_eq!(report_luns_at(&mut a, pe(PE_1), 0x00).await, vec![b(sec)]);
    write_blocks_at(&mut a, sec, 0, 512, &pattern(1024, 1)).await;

    let unbind = InbandRequest::Unbind {
        vvol: v.id,
        host: HOST_A.into(),
    };
    let (cdb, p) = inband::encode_request(&unbind);
    assert_good(&cmd_lun(&mut c, pe(PE_1), &cdb, Some(&p), 0).await);
    assert!(report_bindings(&mut c, PE_1).await.is_empty());
    assert!(api.bindings().is_empty());
    let r = cmd_lun(&mut a, sec, &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x05, 0x25, 0x00);
    // Unbinding again: no such binding.
    let r = cmd_lun(&mut c, pe(PE_1), &cdb, Some(&p), 0).await;
    assert_eq!(r.status, CHECK_CONDITION);
    assert_eq!(r.sense_code().map(|c| c.0), Some(0x05), "{r:?}");
}

#[tokio::test]
async fn control_initiators_bind_on_a_pe_restricted_to_some_hosts() {
    let d = Daemon::start_vvol(VvolOpts {
        pe1_hosts: vec![HOST_A],
        ..VvolOpts::default()
    });
    let api = Api::of(&d);
    let v = api.create_vvol(C_FILE, 16 * MIB);
    // The control initiator reaches PE 1 (its power-on unit attention included) ...
    let mut c = login_host(&d, CONTROL_IQN).await;
    let params = inband::encode_params(&bind_request(v.id, HOST_A));
    assert_good(&binding_out(&mut c, PE_1, ServiceAction::Bind, &params).await);
    assert_eq!(report_bindings(&mut c, PE_1).await.len(), 1);
    // ... host A, allowed, gets the binding, and host B does not see the PE at all.
    let mut a = login_host(&d, HOST_A).await;
    let sec = binding_lun(&api.bindings()[0]);
    clear_power_on_ua_at(&mut a, sec).await;
    write_blocks_at(&mut a, sec, 0, 512, &pattern(512, 3)).await;
    let mut b = login_with(&d, &host_opts(HOST_B)).await;
    let r = cmd_lun(&mut b, pe(PE_1), &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x05, 0x25, 0x00);
}

/// Bind, check and unbind through a standalone control service in front of `d`, as host A
/// logged in with `host`.
async fn drive_standalone(d: &Daemon, svc: &ControlService, host: &vvold::initiator::LoginOptions) {
    let array = Api::of(d);
    let ctl = svc.api();
    // Lifecycle calls are forwarded to the array.
    let v: VvolInfo = ctl
        .post(
            "/vvols",
            serde_json::json!({ "container": C_FILE, "size": 16 * MIB }),
        )
        .expect(201);
    assert_eq!(array.vvol(v.id).id, v.id);
    assert_eq!(ctl.pes(), array.pes());
    let mut a = login_host_with(d, host).await;

    let bnd = ctl.bind(v.id, HOST_A, Some(PE_1));
    let on_array = array.bindings();
    assert_eq!(on_array, vec![bnd.clone()], "the array holds the binding");
    assert_eq!(ctl.bindings(), on_array);
    assert_eq!(bnd.pe_naa, pe_info(&array.pes(), PE_1).naa);
    let sec = binding_lun(&bnd);
    let r = cmd_lun(&mut a, pe(PE_1), &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x06, 0x3F, 0x0E);
    assert_eq!(report_luns_at(&mut a, pe(PE_1), 0x00).await, vec![b(sec)]);
    let data = pattern(4096, 77);
    write_blocks_at(&mut a, sec, 8, 512, &data).await;
    assert_eq!(read_blocks_at(&mut a, sec, 8, 512, 8).await, data);
    // Binding again through the service: the same binding.
    assert_eq!(ctl.bind(v.id, HOST_A, Some(PE_1)), bnd);
    // Unknown VVol: the array's in-band answer becomes 404.
    ctl.try_bind(Uuid::new_v4(), HOST_A, Some(PE_1))
        .expect_error(404);

    let removed = ctl.unbind(v.id, HOST_A);
    assert_eq!(removed, vec![bnd]);
    assert!(array.bindings().is_empty());
    let r = cmd_lun(&mut a, pe(PE_1), &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x06, 0x3F, 0x0E);
    let r = cmd_lun(&mut a, sec, &read10(8, 1), None, 512).await;
    assert_sense(&r, 0x05, 0x25, 0x00);
    ctl.post(
        "/unbind",
        serde_json::json!({ "vvol": v.id, "host": HOST_A }),
    )
    .expect_error(404);
}

#[tokio::test]
async fn standalone_control_service_binds_in_band() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let svc = ControlService::start(&d, CONTROL_IQN, None);
    drive_standalone(&d, &svc, &host_opts(HOST_A)).await;
    assert!(
        d.log_text().contains(CONTROL_IQN),
        "the service logged in as the control initiator"
    );
    // A service whose initiator is not a control initiator cannot bind.
    let intruder = ControlService::start(&d, HOST_B, None);
    let v = Api::of(&d).create_vvol(C_RAM, MIB);
    intruder
        .api()
        .try_bind(v.id, HOST_A, Some(PE_1))
        .expect_error(503);
    assert!(Api::of(&d).bindings().is_empty());
}

#[tokio::test]
async fn standalone_control_service_authenticates_with_chap() {
    const USER: &str = "vasa";
    const SECRET: &str = "control-secret-1";
    let d = Daemon::start_vvol(VvolOpts {
        chap: Some((USER.into(), SECRET.into())),
        ..VvolOpts::default()
    });
    // Without the right credentials the in-band session cannot log in.
    for creds in [None, Some((USER, "wrong-secret-12"))] {
        let bad = ControlService::start(&d, CONTROL_IQN, creds);
        let v = Api::of(&d).create_vvol(C_RAM, MIB);
        let msg = bad
            .api()
            .try_bind(v.id, HOST_A, Some(PE_1))
            .expect_error(503);
        assert!(msg.contains("login"), "{msg}");
    }
    assert!(Api::of(&d).bindings().is_empty());
    let svc = ControlService::start(&d, CONTROL_IQN, Some((USER, SECRET)));
    let mut host = host_opts(HOST_A);
    host.chap = Some((USER.into(), SECRET.into()));
    drive_standalone(&d, &svc, &host).await;
}

// ---- 11. vvolctl ---------------------------------------------------------------------------

fn vvolctl(d: &Daemon, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vvolctl"));
    c.env_remove("VVOLD_URL")
        .env_remove("VVOLD_TOKEN")
        .args(["--url", &d.api_url()])
        .args(args);
    run_bounded(c, Duration::from_secs(60))
}

fn vvolctl_ok(d: &Daemon, args: &[&str]) -> String {
    let out = vvolctl(d, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vvolctl {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn vvolctl_err(d: &Daemon, args: &[&str]) -> String {
    let out = vvolctl(d, args);
    assert!(!out.status.success(), "vvolctl {args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.starts_with("vvolctl: "), "{stderr}");
    stderr
}

#[test]
fn vvolctl_end_to_end() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let out = vvolctl_ok(
        &d,
        &[
            "vvol",
            "create",
            "--container",
            C_FILE,
            "--size",
            "1G",
            "--type",
            "data",
        ],
    );
    let id: Uuid = out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a UUID: {out:?}"));
    let v = api.vvol(id);
    assert_eq!((v.size, v.container.as_str()), (1 << 30, C_FILE));

    let listed: Vec<VvolInfo> =
        serde_json::from_str(&vvolctl_ok(&d, &["vvol", "list", "--json"])).expect("JSON list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    let pes: Vec<PeInfo> =
        serde_json::from_str(&vvolctl_ok(&d, &["--json", "pe", "list"])).expect("JSON PEs");
    assert_eq!(pes, api.pes());

    let out = vvolctl_ok(&d, &["bind", &id.to_string(), "--host", HOST_A]);
    let bnd = &api.bindings()[0];
    assert_eq!(
        out.trim(),
        format!(
            "pe_lun={} pe_naa={} secondary_id={}",
            bnd.pe_lun, bnd.pe_naa, bnd.secondary_id
        )
    );
    assert!(bnd.secondary_id.starts_with("0xe2"));
    let listed: Vec<BindingInfo> =
        serde_json::from_str(&vvolctl_ok(&d, &["bindings", "--json"])).expect("JSON bindings");
    assert_eq!(&listed[0], bnd);

    // Errors: a message and a non-zero exit.
    let e = vvolctl_err(&d, &["vvol", "delete", &id.to_string()]);
    assert!(e.contains("409"), "{e}");
    let e = vvolctl_err(&d, &["vvol", "show", &Uuid::new_v4().to_string()]);
    assert!(e.contains("404"), "{e}");
    let e = vvolctl_err(&d, &["bind", "not-a-uuid", "--host", HOST_A]);
    assert!(e.contains("not a VVol id"), "{e}");
    let e = vvolctl_err(
        &d,
        &["vvol", "create", "--container", "nope", "--size", "1G"],
    );
    assert!(e.contains("404"), "{e}");

    let out = vvolctl_ok(&d, &["unbind-all", "--host", HOST_A]);
    assert!(out.contains(&bnd.secondary_id), "{out}");
    assert!(api.bindings().is_empty());
    vvolctl_ok(&d, &["vvol", "delete", &id.to_string()]);
    api.get(&format!("/vvols/{id}")).expect_error(404);
    // Nobody listening.
    let mut c = Command::new(env!("CARGO_BIN_EXE_vvolctl"));
    c.args([
        "--url",
        &format!("http://127.0.0.1:{}", free_port()),
        "vvol",
        "list",
    ]);
    let out = run_bounded(c, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

// ---- 12. libiscsi against LUN 0 of the VVol array -----------------------------------------

#[test]
fn libiscsi_read10_on_lun0_of_the_vvol_array() {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("iscsi-test-cu").is_file()))
        .unwrap_or(false);
    if !found {
        eprintln!(
            "NOTICE: iscsi-test-cu not installed (apt-get install libiscsi-bin); test skipped"
        );
        return;
    }
    let d = Daemon::start_vvol(VvolOpts::default());
    // The array is busy with VVols meanwhile.
    let api = Api::of(&d);
    let v = api.create_vvol(C_RAM, 16 * MIB);
    api.bind(v.id, HOST_A, Some(PE_1));
    let mut c = Command::new("iscsi-test-cu");
    c.args(["-d", "-v", "-t", "SCSI.Read10.*"])
        .arg(format!("iscsi://{}/{T_VVOL}/0", d.addr));
    let out = run_bounded(c, Duration::from_secs(300));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let ran = text.matches("Test: ").count();
    if let Some(summary) = text.find("Run Summary") {
        eprintln!("iscsi-test-cu SCSI.Read10.*: {}", &text[summary..]);
    }
    assert!(ran >= 5, "too few tests ran ({ran}):\n{text}");
    assert!(!text.contains("[FAILED]"), "{text}");
    assert!(!text.contains("...FAILED"), "{text}");
    assert!(
        out.status.success(),
        "iscsi-test-cu: {}\n{text}",
        out.status
    );
    assert_eq!(api.bindings().len(), 1);
}
