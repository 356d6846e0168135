//! EXTENDED COPY, RECEIVE COPY RESULTS and REPORT TARGET PORT GROUPS through the real daemon:
//! the copy runs in the backends between two LUs named by their VPD 83h designators.

mod common;

use common::*;

async fn naa(s: &mut vvold::initiator::Session, l: u16) -> [u8; 16] {
    naa_at(s, lun(l)).await
}

#[tokio::test]
async fn copies_between_luns_and_reports_status() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    let (file, ram) = (naa(&mut s, LUN_FILE).await, naa(&mut s, LUN_RAM).await);
    let data = pattern(3 << 20, 7);
    write_blocks(&mut s, LUN_FILE, 100, 512, &data).await;
    // 3 MiB from the file LUN to the RAM LUN (more than one backend chunk), plus 1 block
    // inside the RAM LUN, in one command sent to the RAM LUN.
    let (cdb, list) = xcopy(
        9,
        &[cscd(&file), cscd(&ram)],
        &[b2b(0, 1, 6144, 100, 50), b2b(1, 1, 1, 50, 10)],
    );
    assert_good(&cmd(&mut s, LUN_RAM, &cdb, Some(&list), 0).await);
    assert_eq!(read_blocks(&mut s, LUN_RAM, 50, 512, 6144).await, data);
    assert_eq!(read_blocks(&mut s, LUN_RAM, 10, 512, 1).await, data[..512]);

    let mut status = [0u8; 16];
    status[0] = 0x84;
    status[2] = 9;
    status[13] = 12;
    let r = cmd(&mut s, LUN_RAM, &status, None, 12).await;
    assert_good(&r);
    let bytes = (3u32 << 20) + 512;
    let mut want = vec![0, 0, 0, 8, 0x01, 0, 2, 0];
    want.extend_from_slice(&bytes.to_be_bytes());
    assert_eq!(r.data, want);

    // Overlapping copy inside one LU, destination above the source: must read before write.
    let (cdb, list) = xcopy(10, &[cscd(&ram)], &[b2b(0, 0, 4096, 50, 51)]);
    assert_good(&cmd(&mut s, LUN_RAM, &cdb, Some(&list), 0).await);
    assert_eq!(
        read_blocks(&mut s, LUN_RAM, 51, 512, 4096).await,
        data[..4096 * 512]
    );

    // Past the end of the destination: COPY ABORTED, and nothing is written.
    let end = LUN_BYTES / 512;
    let (cdb, list) = xcopy(
        11,
        &[cscd(&file), cscd(&ram)],
        &[b2b(0, 1, 2, 100, end - 1)],
    );
    let r = cmd(&mut s, LUN_RAM, &cdb, Some(&list), 0).await;
    assert_sense(&r, 0x0A, 0x0D, 0x02);
}

#[tokio::test]
async fn report_target_port_groups_default_group() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    let r = cmd(
        &mut s,
        LUN_FILE,
        &[0xA3, 0x2A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        None,
        256,
    )
    .await;
    assert_good(&r);
    assert_eq!(
        r.data,
        [0, 0, 0, 16, 0x10, 0, 0, 0, 0x00, 0x03, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    );
    let inq = cmd(&mut s, LUN_FILE, &inquiry(None, 96), None, 96).await;
    assert_eq!(inq.data[5], 0x18, "TPGS=01b, 3PC");
}

#[tokio::test]
async fn a_copy_cannot_write_through_another_nexus_reservation() {
    // A node fenced from the RAM LU by a reservation must not overwrite it by asking the
    // copy manager (EXTENDED COPY sent to another LU it still reaches).
    let d = Daemon::start();
    let mut holder = login_main(&d).await;
    let mut o = opts(Some(T_MAIN));
    o.isid[5] ^= 0x21;
    let mut fenced = login_main_with(&d, &o).await;
    let (file, ram) = (
        naa(&mut fenced, LUN_FILE).await,
        naa(&mut fenced, LUN_RAM).await,
    );
    write_blocks(&mut fenced, LUN_FILE, 0, 512, &pattern(8 * 512, 3)).await;
    // The holder registers and reserves WRITE EXCLUSIVE on the RAM LU.
    let mut param = [0u8; 24];
    param[8..16].copy_from_slice(&0x77u64.to_be_bytes());
    let register = [0x5F, 0x00, 0x00, 0, 0, 0, 0, 0, 24, 0];
    assert_good(&cmd(&mut holder, LUN_RAM, &register, Some(&param), 0).await);
    let mut param = [0u8; 24];
    param[..8].copy_from_slice(&0x77u64.to_be_bytes());
    let reserve = [0x5F, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0];
    assert_good(&cmd(&mut holder, LUN_RAM, &reserve, Some(&param), 0).await);

    let (cdb, list) = xcopy(3, &[cscd(&file), cscd(&ram)], &[b2b(0, 1, 8, 0, 500)]);
    let r = cmd(&mut fenced, LUN_FILE, &cdb, Some(&list), 0).await;
    assert_sense(&r, 0x0A, 0x0D, 0x02);
    assert_eq!(
        read_blocks(&mut fenced, LUN_RAM, 500, 512, 8).await,
        vec![0; 8 * 512],
        "nothing written"
    );
    // Reading the reserved LU as a source is still allowed under WRITE EXCLUSIVE.
    let (cdb, list) = xcopy(4, &[cscd(&ram), cscd(&file)], &[b2b(0, 1, 8, 500, 900)]);
    assert_good(&cmd(&mut fenced, LUN_FILE, &cdb, Some(&list), 0).await);
}

#[tokio::test]
async fn every_segment_is_checked_before_any_is_copied() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    let (file, ram) = (naa(&mut s, LUN_FILE).await, naa(&mut s, LUN_RAM).await);
    write_blocks(&mut s, LUN_FILE, 0, 512, &pattern(8 * 512, 5)).await;
    // The RAM LU's CSCD claims 4096-byte blocks; its blocks are 512 bytes, so destination
    // LBA 10 would land at LBA 80. The good first segment must not be copied either.
    let mut lying = cscd(&ram);
    lying[29..32].copy_from_slice(&[0, 0x10, 0]);
    let (cdb, list) = xcopy(
        5,
        &[cscd(&file), cscd(&ram), lying],
        &[b2b(0, 1, 8, 0, 300), b2b(0, 2, 8, 0, 10)],
    );
    let r = cmd(&mut s, LUN_RAM, &cdb, Some(&list), 0).await;
    assert_sense(&r, 0x05, 0x26, 0x00);
    for lba in [300, 80, 10] {
        assert_eq!(
            read_blocks(&mut s, LUN_RAM, lba, 512, 8).await,
            vec![0; 8 * 512],
            "nothing written at LBA {lba}"
        );
    }
}
