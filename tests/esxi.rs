//! What ESXi does at rescan and datastore use, replayed against a normal LUN and against a
//! bound VVol (through its two-level LUN): REPORT LUNS, INQUIRY standard and VPD 00h/80h/83h/
//! 86h/B0h/B2h, READ CAPACITY(16), MODE SENSE(6) with and without DBD, RESERVE/RELEASE,
//! ATS (COMPARE AND WRITE) heartbeats from two sessions, WRITE SAME, UNMAP and XCOPY. Every
//! answer is checked.

mod common;

use common::*;
use std::collections::HashMap;
use vvold::initiator::Session;
use vvold::scsi::Lun;

const BS: usize = 512;

async fn login_host(d: &Daemon, isid_tail: u8) -> Session {
    let mut o = opts(Some(T_VVOL));
    o.initiator_name = HOST_A.into();
    o.isid[5] = isid_tail;
    login_with(d, &o).await
}

fn vpd(page: u8) -> [u8; 6] {
    inquiry(Some(page), 255)
}

async fn good(s: &mut Session, l: Lun, cdb: &[u8], out: Option<&[u8]>, expect_in: u32) -> Vec<u8> {
    let r = cmd_lun(s, l, cdb, out, expect_in).await;
    assert_good(&r);
    r.data
}

/// Discovery and identification, as a rescan does it.
async fn rescan(s: &mut Session, l: Lun, vvol: bool) {
    // REPORT LUNS at LUN 0: LUN 0 and the PEs, never a secondary.
    let luns = good(s, lun(0), &report_luns(4096), None, 4096).await;
    let n = u32::from_be_bytes(luns[0..4].try_into().unwrap()) as usize / 8;
    let listed: Vec<&[u8]> = (0..n).map(|i| &luns[8 + 8 * i..16 + 8 * i]).collect();
    assert!(listed.contains(&&lun(0).to_bytes()[..]));
    assert!(
        listed.iter().all(|e| e[2] != 0xE2),
        "secondaries listed at LUN 0"
    );

    let std = good(s, l, &inquiry(None, 96), None, 96).await;
    assert_eq!(std[0], 0x00, "peripheral: direct access, connected");
    assert_eq!(std[1] & 0x40 != 0, vvol, "LU_CONG only on subsidiary LUs");
    assert_eq!((std[5] >> 4) & 0x3, 0x1, "TPGS: implicit ALUA");
    assert_eq!(
        &std[16..26],
        b"VVOLD DISK",
        "one product id: VMware copies only between equals"
    );

    let pages = good(s, l, &vpd(0x00), None, 255).await;
    let list = &pages[4..4 + pages[3] as usize];
    for p in [0x00, 0x80, 0x83, 0x86, 0xB0, 0xB2] {
        assert!(list.contains(&p), "VPD {p:02X}h not listed: {list:02x?}");
    }
    let serial = good(s, l, &vpd(0x80), None, 255).await;
    assert_eq!(serial[1], 0x80);
    assert!(serial[3] > 0, "empty unit serial number");
    let ids = good(s, l, &vpd(0x83), None, 255).await;
    assert_eq!(
        &ids[4..8],
        &[0x01, 0x03, 0x00, 16],
        "NAA designator with LU association first"
    );
    assert_eq!(ids[8] >> 4, 6, "NAA-6");
    let ext = good(s, l, &vpd(0x86), None, 255).await;
    assert_eq!(ext[1], 0x86);
    assert_eq!(ext[8] >> 5 == 1, vvol, "LU_COLL_TYPE conglomerate on VVols");
    let limits = good(s, l, &vpd(0xB0), None, 255).await;
    assert_eq!(limits[1], 0xB0);
    assert!(limits[5] >= 1, "MAXIMUM COMPARE AND WRITE LENGTH");
    let max_unmap = u32::from_be_bytes(limits[20..24].try_into().unwrap());
    assert!(max_unmap > 0, "MAXIMUM UNMAP LBA COUNT");
    let gran = u32::from_be_bytes(limits[28..32].try_into().unwrap()) as usize * BS;
    assert!(
        gran > 0 && gran <= 1 << 20 && (1 << 20) % gran == 0,
        "unmap granularity {gran} must divide 1 MiB"
    );
    let prov = good(s, l, &vpd(0xB2), None, 255).await;
    assert_eq!(prov[5] & 0xC0, 0xC0, "LBPU and LBPWS");

    let cap = good(s, l, &read_capacity16(32), None, 32).await;
    assert_eq!(
        u32::from_be_bytes(cap[8..12].try_into().unwrap()),
        BS as u32
    );
    assert_ne!(cap[14] & 0x80, 0, "LBPME");

    // MODE SENSE(6), all pages: with a block descriptor (ESXi 6.5 reads it) and without.
    let with = good(s, l, &[0x1A, 0x00, 0x3F, 0, 255, 0], None, 255).await;
    assert_eq!(with[3], 8, "block descriptor length");
    assert_eq!(
        u32::from_be_bytes([0, with[9], with[10], with[11]]),
        BS as u32
    );
    let without = good(s, l, &[0x1A, 0x08, 0x3F, 0, 255, 0], None, 255).await;
    assert_eq!(without[3], 0, "DBD=1: no block descriptor");
}

/// SPC-2 RESERVE/RELEASE, as VMFS format uses them.
async fn reserve_release(s1: &mut Session, s2: &mut Session, l: Lun) {
    good(s1, l, &[0x16, 0, 0, 0, 0, 0], None, 0).await;
    let blk = pattern(BS, 7);
    let r = cmd_lun(s2, l, &write10(50, 1), Some(&blk), 0).await;
    assert_eq!(r.status, 0x18, "RESERVATION CONFLICT for the other session");
    good(s1, l, &write10(50, 1), Some(&blk), 0).await;
    good(s1, l, &[0x17, 0, 0, 0, 0, 0], None, 0).await;
    good(s2, l, &write10(50, 1), Some(&blk), 0).await;
}

fn caw(lba: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = 1;
    c
}

/// ATS heartbeats from two sessions on one block: every successful COMPARE AND WRITE must
/// replace exactly the value the other saw last, so successes form one chain.
async fn ats_heartbeats(mut s1: Session, s2: Session, l: Lun) -> (Session, Session) {
    const HB: u64 = 100;
    good(&mut s1, l, &write10(HB as u32, 1), Some(&vec![0u8; BS]), 0).await;
    async fn beat(mut s: Session, l: Lun, who: u8) -> (Session, Vec<(Vec<u8>, Vec<u8>)>, usize) {
        let mut wins = Vec::new();
        let mut misses = 0;
        for i in 0..40u8 {
            let cur = read_blocks_at(&mut s, l, HB, BS, 1).await;
            let mut next = vec![who; BS];
            next[1] = i;
            let r = cmd_lun(
                &mut s,
                l,
                &caw(HB),
                Some(&[cur.clone(), next.clone()].concat()),
                0,
            )
            .await;
            match r.status {
                0 => wins.push((cur, next)),
                2 => {
                    let (key, asc, ascq) = r.sense_code().expect("sense");
                    assert_eq!((key, asc, ascq), (0x0E, 0x1D, 0x00), "MISCOMPARE");
                    misses += 1;
                }
                other => panic!("COMPARE AND WRITE status {other:#x}"),
            }
        }
        (s, wins, misses)
    }
    let a = tokio::spawn(beat(s1, l, 0xA1));
    let b = tokio::spawn(beat(s2, l, 0xB2));
    let (s1, wins_a, _) = a.await.unwrap();
    let (mut s2, wins_b, _) = b.await.unwrap();
    let wins: Vec<_> = wins_a.into_iter().chain(wins_b).collect();
    let mut by_old: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for (old, new) in &wins {
        assert!(
            by_old.insert(old.clone(), new.clone()).is_none(),
            "two CAWs succeeded on the same old value"
        );
    }
    let mut cur = vec![0u8; BS];
    let mut steps = 0;
    while let Some(next) = by_old.get(&cur) {
        cur = next.clone();
        steps += 1;
    }
    assert_eq!(
        steps,
        wins.len(),
        "successful heartbeats do not form one chain"
    );
    assert_eq!(
        read_blocks_at(&mut s2, l, HB, BS, 1).await,
        cur,
        "final heartbeat is the last success"
    );
    (s1, s2)
}

async fn lba_status(s: &mut Session, l: Lun, lba: u64) -> u8 {
    let mut c = [0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&64u32.to_be_bytes());
    let d = good(s, l, &c, None, 64).await;
    assert_eq!(
        u64::from_be_bytes(d[8..16].try_into().unwrap()),
        lba,
        "first descriptor starts at the LBA asked"
    );
    d[20]
}

/// WRITE SAME (zeroing and pattern) and UNMAP, as VMFS zeroes and reclaims.
async fn write_same_and_unmap(s: &mut Session, l: Lun) {
    // WRITE SAME(16) of a pattern block over 8 blocks.
    let mut ws = [0u8; 16];
    ws[0] = 0x93;
    ws[2..10].copy_from_slice(&200u64.to_be_bytes());
    ws[10..14].copy_from_slice(&8u32.to_be_bytes());
    good(s, l, &ws, Some(&[0x5Au8; BS]), 0).await;
    assert!(read_blocks_at(s, l, 200, BS, 8)
        .await
        .iter()
        .all(|b| *b == 0x5A));

    // 1 MiB written, then deallocated by WRITE SAME(16) with UNMAP and a zero block.
    const MIB_BLOCKS: u32 = (1 << 20) / BS as u32;
    write_blocks_at(s, l, 2048, BS, &pattern(1 << 20, 3)).await;
    assert_eq!(lba_status(s, l, 2048).await, 0, "written: mapped");
    ws[1] = 0x08;
    ws[2..10].copy_from_slice(&2048u64.to_be_bytes());
    ws[10..14].copy_from_slice(&MIB_BLOCKS.to_be_bytes());
    good(s, l, &ws, Some(&[0u8; BS]), 0).await;
    assert!(read_blocks_at(s, l, 2048, BS, MIB_BLOCKS)
        .await
        .iter()
        .all(|b| *b == 0));
    assert_eq!(
        lba_status(s, l, 2048).await,
        1,
        "WRITE SAME UNMAP deallocated"
    );

    // UNMAP one 1 MiB range.
    write_blocks_at(s, l, 4096, BS, &pattern(1 << 20, 4)).await;
    let mut param = vec![0u8; 24];
    param[0..2].copy_from_slice(&22u16.to_be_bytes());
    param[2..4].copy_from_slice(&16u16.to_be_bytes());
    param[8..16].copy_from_slice(&4096u64.to_be_bytes());
    param[16..20].copy_from_slice(&MIB_BLOCKS.to_be_bytes());
    good(s, l, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], Some(&param), 0).await;
    assert!(read_blocks_at(s, l, 4096, BS, MIB_BLOCKS)
        .await
        .iter()
        .all(|b| *b == 0));
    assert_eq!(lba_status(s, l, 4096).await, 1, "UNMAP deallocated");
}

/// EXTENDED COPY of 16 blocks from `src` to `dst` (the clone primitive).
async fn xcopy_between(s: &mut Session, src: Lun, dst: Lun) {
    let data = pattern(16 * BS, 9);
    write_blocks_at(s, src, 300, BS, &data).await;
    let (a, b) = (naa_at(s, src).await, naa_at(s, dst).await);
    let (cdb, params) = xcopy(1, &[cscd(&a), cscd(&b)], &[b2b(0, 1, 16, 300, 400)]);
    good(s, src, &cdb, Some(&params), 0).await;
    assert_eq!(
        read_blocks_at(s, dst, 400, BS, 16).await,
        data,
        "copied data"
    );
}

async fn clear_ua(s: &mut Session, l: Lun) {
    for _ in 0..4 {
        let r = cmd_lun(s, l, &test_unit_ready(), None, 0).await;
        if r.status == 0 {
            return;
        }
        assert_eq!(
            r.sense_code().map(|c| c.0),
            Some(0x6),
            "only unit attentions may precede GOOD"
        );
    }
    panic!("unit attentions never stopped on {l:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn esxi_datastore_sequence_on_a_normal_lun() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let (mut s1, mut s2) = (login_host(&d, 1).await, login_host(&d, 2).await);
    let l = lun(0);
    clear_ua(&mut s1, l).await;
    clear_ua(&mut s2, l).await;
    rescan(&mut s1, l, false).await;
    reserve_release(&mut s1, &mut s2, l).await;
    let (mut s1, _s2) = ats_heartbeats(s1, s2, l).await;
    write_same_and_unmap(&mut s1, l).await;
    xcopy_between(&mut s1, l, l).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn esxi_datastore_sequence_on_a_bound_vvol() {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let (v1, v2) = (
        api.create_vvol(C_FILE, 16 << 20),
        api.create_vvol(C_FILE, 16 << 20),
    );
    let (mut s1, mut s2) = (login_host(&d, 1).await, login_host(&d, 2).await);
    let b1 = binding_lun(&api.bind(v1.id, HOST_A, Some(PE_1)));
    let b2 = binding_lun(&api.bind(v2.id, HOST_A, Some(PE_2)));
    for s in [&mut s1, &mut s2] {
        clear_ua(s, pe_lun(PE_1)).await;
        clear_ua(s, pe_lun(PE_2)).await;
        // After the unit attention, REPORT LUNS at the PE lists the binding.
        let at_pe = good(s, pe_lun(PE_1), &report_luns(4096), None, 4096).await;
        assert_eq!(&at_pe[8..16], &b1.to_bytes()[..]);
        clear_ua(s, b1).await;
        clear_ua(s, b2).await;
    }
    rescan(&mut s1, b1, true).await;
    reserve_release(&mut s1, &mut s2, b1).await;
    let (mut s1, _s2) = ats_heartbeats(s1, s2, b1).await;
    write_same_and_unmap(&mut s1, b1).await;
    xcopy_between(&mut s1, b1, b2).await;
}

fn pe_lun(pe: u16) -> Lun {
    vvold::vvol::address::pe_lun(pe)
}
