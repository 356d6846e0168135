//! SCSI I/O through the real daemon: data round trips on every backend, R2T-driven transfers,
//! capacity and identity, and the sense data of refused commands.

mod common;

use common::*;
use vvold::scsi::Lun;

#[tokio::test]
async fn round_trips_on_file_ram_and_4k_luns() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    for (l, block) in [(LUN_FILE, 512), (LUN_RAM, 512), (LUN_FILE_4K, 4096)] {
        let data = pattern(64 * 1024, l as u32 + 1);
        let blocks = (data.len() / block) as u32;
        write_blocks(&mut s, l, 3, block, &data).await;
        assert_eq!(
            read_blocks(&mut s, l, 3, block, blocks).await,
            data,
            "LUN {l}"
        );
        // The blocks around the write are untouched (still zero).
        assert_eq!(read_blocks(&mut s, l, 2, block, 1).await, vec![0; block]);
        let after = 3 + blocks as u64;
        assert_eq!(
            read_blocks(&mut s, l, after, block, 1).await,
            vec![0; block]
        );
        // WRITE(10)/READ(10) at the last block.
        let last = (LUN_BYTES / block as u64 - 1) as u32;
        let one = pattern(block, 99);
        assert_good(&cmd(&mut s, l, &write10(last, 1), Some(&one), 0).await);
        let r = cmd(&mut s, l, &read10(last, 1), None, block as u32).await;
        assert_good(&r);
        assert_eq!(r.data, one);
    }
}

#[tokio::test]
async fn null_lun_discards_writes_and_reads_zeros() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    write_blocks(&mut s, LUN_NULL, 0, 512, &pattern(8192, 5)).await;
    assert_eq!(
        read_blocks(&mut s, LUN_NULL, 0, 512, 16).await,
        vec![0; 8192]
    );
}

async fn large_write_read(o: vvold::initiator::LoginOptions) {
    let d = Daemon::start();
    let mut s = login_with(&d, &o).await;
    for l in MAIN_LUNS {
        clear_power_on_ua(&mut s, l).await;
    }
    let data = pattern(4 << 20, 42);
    write_blocks(&mut s, LUN_FILE, 16, 512, &data).await;
    assert_eq!(read_blocks(&mut s, LUN_FILE, 16, 512, 8192).await, data);
    let data = pattern(4 << 20, 43);
    write_blocks(&mut s, LUN_FILE_4K, 1, 4096, &data).await;
    assert_eq!(read_blocks(&mut s, LUN_FILE_4K, 1, 4096, 1024).await, data);
}

#[tokio::test]
async fn large_write_with_immediate_data_and_r2t() {
    let o = opts(Some(T_MAIN));
    assert!(o.immediate_data && !o.initial_r2t);
    large_write_read(o).await;
}

#[tokio::test]
async fn large_write_with_initial_r2t_and_no_immediate_data() {
    let mut o = opts(Some(T_MAIN));
    o.immediate_data = false;
    o.initial_r2t = true;
    large_write_read(o).await;
}

#[tokio::test]
async fn read_capacity16_reports_size_and_block_length() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    for (l, block, bytes) in [
        (LUN_FILE, 512u32, LUN_BYTES),
        (LUN_FILE_4K, 4096, LUN_BYTES),
        (LUN_RO, 512, RO_BYTES),
    ] {
        let r = cmd(&mut s, l, &read_capacity16(32), None, 32).await;
        assert_good(&r);
        assert_eq!(r.data.len(), 32);
        let last = u64::from_be_bytes(r.data[0..8].try_into().unwrap());
        let len = u32::from_be_bytes(r.data[8..12].try_into().unwrap());
        assert_eq!(last, bytes / block as u64 - 1, "LUN {l} last LBA");
        assert_eq!(len, block, "LUN {l} block length");
    }
}

/// The NAA designator (type 3, associated with the LU) of VPD page 83h.
async fn naa_of(s: &mut vvold::initiator::Session, l: u16) -> Vec<u8> {
    let r = cmd(s, l, &inquiry(Some(0x83), 255), None, 255).await;
    assert_good(&r);
    assert_eq!(r.data[1], 0x83);
    let len = u16::from_be_bytes([r.data[2], r.data[3]]) as usize;
    let page = &r.data[4..4 + len];
    let mut at = 0;
    while at + 4 <= page.len() {
        let dlen = page[at + 3] as usize;
        if page[at + 1] & 0x3F == 0x03 {
            let naa = page[at + 4..at + 4 + dlen].to_vec();
            assert_eq!(naa[0] >> 4, 6, "NAA-6 designator");
            assert_eq!(naa.len(), 16);
            return naa;
        }
        at += 4 + dlen;
    }
    panic!("no NAA designator in {page:02x?}");
}

#[tokio::test]
async fn vpd83_naa_is_stable_across_restart() {
    let mut d = Daemon::start();
    let mut s = login_main(&d).await;
    let before: Vec<Vec<u8>> = {
        let mut v = Vec::new();
        for l in MAIN_LUNS {
            v.push(naa_of(&mut s, l).await);
        }
        v
    };
    let mut distinct = before.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), MAIN_LUNS.len(), "designators are unique");
    drop(s);
    d.restart();
    let mut s = login_main(&d).await;
    for (i, l) in MAIN_LUNS.into_iter().enumerate() {
        assert_eq!(naa_of(&mut s, l).await, before[i], "LUN {l}");
    }
}

#[tokio::test]
async fn write_to_read_only_lun_is_write_protected() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    let r = cmd(&mut s, LUN_RO, &write10(0, 1), Some(&[0xAA; 512]), 0).await;
    assert_sense(&r, 0x07, 0x27, 0x00);
    assert_eq!(read_blocks(&mut s, LUN_RO, 0, 512, 1).await, vec![0; 512]);
}

#[tokio::test]
async fn lba_out_of_range() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    let blocks = LUN_BYTES / 512;
    let r = cmd(&mut s, LUN_RAM, &read16(blocks, 1), None, 512).await;
    assert_sense(&r, 0x05, 0x21, 0x00);
    // Straddling the end.
    let r = cmd(&mut s, LUN_RAM, &read16(blocks - 1, 2), None, 1024).await;
    assert_sense(&r, 0x05, 0x21, 0x00);
    let r = cmd(&mut s, LUN_RAM, &write16(blocks, 1), Some(&[1; 512]), 0).await;
    assert_sense(&r, 0x05, 0x21, 0x00);
}

#[tokio::test]
async fn unsupported_opcode_is_invalid_command() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    let r = cmd(&mut s, LUN_RAM, &[0xC0, 0, 0, 0, 0, 0], None, 0).await;
    assert_sense(&r, 0x05, 0x20, 0x00);
}

#[tokio::test]
async fn report_luns_lists_configured_luns() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    let r = cmd(&mut s, LUN_FILE, &report_luns(4096), None, 4096).await;
    assert_good(&r);
    let n = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
    assert_eq!(n, 8 * MAIN_LUNS.len());
    let mut got: Vec<[u8; 8]> = r.data[8..8 + n]
        .chunks(8)
        .map(|c| c.try_into().unwrap())
        .collect();
    got.sort();
    let want: Vec<[u8; 8]> = MAIN_LUNS.iter().map(|&l| lun(l).to_bytes()).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn unknown_lun_is_not_supported() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    let r = cmd(&mut s, 9, &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x05, 0x25, 0x00);
    let r = cmd(&mut s, 9, &inquiry(None, 36), None, 36).await;
    assert_good(&r);
    assert_eq!(r.data[0], 0x7F, "peripheral qualifier 011b, type 1Fh");
}

#[tokio::test]
async fn two_level_lun_is_not_aliased_to_lun0() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    let two = Lun::from_bytes([0, 0, 0xE2, 0, 0, 0, 0x12, 0x34]);
    let r = cmd_lun(&mut s, two, &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x05, 0x25, 0x00);
    let r = cmd_lun(&mut s, two, &read16(0, 1), None, 512).await;
    assert_sense(&r, 0x05, 0x25, 0x00);
    let r = cmd_lun(&mut s, two, &write16(0, 1), Some(&[0x55; 512]), 0).await;
    assert_sense(&r, 0x05, 0x25, 0x00);
    let r = cmd_lun(&mut s, two, &inquiry(None, 36), None, 36).await;
    assert_good(&r);
    assert_eq!(r.data[0], 0x7F);
    // LUN 0 itself was not written.
    assert_eq!(read_blocks(&mut s, LUN_FILE, 0, 512, 1).await, vec![0; 512]);
}

#[tokio::test]
async fn read_residuals() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    let data = pattern(4096, 7);
    write_blocks(&mut s, LUN_RAM, 0, 512, &data).await;
    // EDTL smaller than the 4096 bytes the CDB asks for: overflow, data truncated.
    let r = cmd(&mut s, LUN_RAM, &read10(0, 8), None, 2048).await;
    assert_good(&r);
    assert_eq!(r.data, data[..2048]);
    assert_eq!((r.residual_flags, r.residual), (0x04, 2048));
    // EDTL larger: underflow.
    let r = cmd(&mut s, LUN_RAM, &read10(0, 8), None, 8192).await;
    assert_good(&r);
    assert_eq!(r.data, data);
    assert_eq!((r.residual_flags, r.residual), (0x02, 4096));
    // Exact: no residual.
    let r = cmd(&mut s, LUN_RAM, &read10(0, 8), None, 4096).await;
    assert_good(&r);
    assert_eq!((r.residual_flags, r.residual), (0, 0));
}

#[tokio::test]
async fn parameter_lists_sent_whole_leave_no_residual() {
    // PERSISTENT RESERVE OUT and MODE SELECT answer from their parameter list without touching
    // the medium; a list the initiator sent whole is no underflow.
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    let mut register = [0u8; 24];
    register[8..16].copy_from_slice(&0x1234u64.to_be_bytes());
    let prout = [0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    let r = cmd(&mut s, LUN_RAM, &prout, Some(&register), 0).await;
    assert_good(&r);
    assert_eq!((r.residual_flags, r.residual), (0, 0));
    // MODE SELECT(10), PF=1, a bare header: nothing to change.
    let header = [0u8; 8];
    let r = cmd(
        &mut s,
        LUN_RAM,
        &[0x55, 0x10, 0, 0, 0, 0, 0, 0, 8, 0],
        Some(&header),
        0,
    )
    .await;
    assert_good(&r);
    assert_eq!((r.residual_flags, r.residual), (0, 0));
}

#[tokio::test]
async fn a_max_recv_data_segment_length_declared_after_login_bounds_data_in() {
    // RFC 7143 §13.12: the initiator may declare a new MaxRecvDataSegmentLength in a Text
    // request in full-feature phase; Data-In segments must respect it from then on.
    use vvold::iscsi::pdu::{op, Bhs};
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    let mut text = Bhs::new(op::TEXT_REQUEST | 0x40);
    text.0[1] = 0x80;
    text.set_u32(16, 0x5151);
    text.set_u32(20, 0xFFFF_FFFF);
    text.set_u32(24, s.cmdsn);
    text.set_u32(28, s.expstatsn);
    s.send_pdu(text, b"MaxRecvDataSegmentLength=8192\0")
        .await
        .unwrap();
    let answer = within("the Text Response", recv(&mut s)).await;
    assert_eq!(answer.bhs.opcode(), op::TEXT_RESPONSE);
    s.expstatsn = answer.bhs.u32_at(24).wrapping_add(1);

    let read = scsi_command_bhs(&s, LUN_RAM, 0x6161, &read10(0, 128), 0, 65536);
    s.send_pdu(read, &[]).await.unwrap();
    s.cmdsn = s.cmdsn.wrapping_add(1);
    let mut total = 0;
    loop {
        let rx = within("Data-In", recv(&mut s)).await;
        assert_eq!(rx.bhs.opcode(), op::DATA_IN, "{:02x?}", &rx.bhs.0[..4]);
        assert!(
            rx.data.len() <= 8192,
            "a {}-byte Data-In segment",
            rx.data.len()
        );
        total += rx.data.len();
        if rx.bhs.0[1] & 0x01 != 0 {
            break;
        }
    }
    assert_eq!(total, 65536);
}
