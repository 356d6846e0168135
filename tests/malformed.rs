//! Malformed input: the offending connection gets the RFC 7143 answer (Reject, login failure
//! or a clean close), while a session opened before it keeps working and the daemon lives on.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use vvold::iscsi::digest;
use vvold::iscsi::pdu::{op, Bhs};

/// A daemon, plus a bystander session opened before any bad input.
async fn setup() -> (Daemon, vvold::initiator::Session) {
    start_with_bystander([0x80, 0, 0, 0, 0xB7, 0x01]).await
}

async fn bystander_ok(d: &mut Daemon, s: &mut vvold::initiator::Session, seed: u32) {
    assert_session_works(s, seed).await;
    d.assert_alive();
}

fn assert_reject(p: &vvold::initiator::RxPdu, reason: u8, offending: &Bhs) {
    assert_eq!(p.bhs.opcode(), op::REJECT, "expected a Reject: {:?}", p.bhs);
    assert_eq!(p.bhs.0[2], reason, "reject reason");
    assert_eq!(p.bhs.u32_at(16), 0xFFFF_FFFF, "Reject ITT is reserved");
    assert_eq!(
        &p.data[..48],
        &offending.0[..],
        "Reject carries the offending BHS"
    );
}

fn nop_out(s: &vvold::initiator::Session, itt: u32, data_len: usize) -> Bhs {
    let mut b = s.ping_bhs(itt);
    b.set_data_segment_len(data_len);
    b
}

#[tokio::test]
async fn truncated_bhs_then_close() {
    let (mut d, mut by) = setup().await;
    // Before login.
    let mut raw = raw_connect(&d).await;
    raw.write_all(&[
        0x43, 0x87, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    ])
    .await
    .unwrap();
    raw.shutdown().await.unwrap();
    assert!(read_until_eof(&mut raw).await.is_empty());
    // In full feature phase.
    let mut bad = login_main(&d).await;
    let b = nop_out(&bad, 77, 0);
    within("send", bad.send_bytes(&b.0[..30])).await.unwrap();
    drop(bad);
    bystander_ok(&mut d, &mut by, 1).await;
}

#[tokio::test]
async fn unknown_opcode_is_rejected_command_not_supported() {
    let (mut d, mut by) = setup().await;
    let mut bad = login_main(&d).await;
    let mut b = Bhs::new(0x1F | 0x40);
    b.0[1] = 0x80;
    b.set_u32(16, 5);
    within("send", bad.send_pdu(b, &[])).await.unwrap();
    let p = recv(&mut bad).await;
    assert_reject(&p, 0x05, &b);
    // The connection survives a rejected PDU.
    assert_session_works(&mut bad, 2).await;
    bystander_ok(&mut d, &mut by, 3).await;
}

#[tokio::test]
async fn data_segment_beyond_max_recv_closes_connection() {
    let (mut d, mut by) = setup().await;
    let mut bad = login_main(&d).await;
    // The target declared MaxRecvDataSegmentLength=262144 (the configured default).
    let b = nop_out(&bad, 9, 262_144 + 4);
    within("send", bad.send_bytes(&b.0)).await.unwrap();
    let seen = expect_closed(&mut bad).await;
    // RFC 7143 §13.12 forbids it: a protocol error (Reject 04h), then the close, since the
    // stream cannot be reframed past a segment we refuse to read.
    assert_eq!(seen.len(), 1, "one Reject, then the close: {seen:?}");
    assert_reject(&seen[0], 0x04, &b);
    bystander_ok(&mut d, &mut by, 4).await;
}

#[tokio::test]
async fn bad_header_digest_closes_connection() {
    let (mut d, mut by) = setup().await;
    let mut o = opts(Some(T_MAIN));
    o.header_digest = true;
    let mut bad = login_main_with(&d, &o).await;
    let b = nop_out(&bad, 11, 0);
    let mut wire = b.0.to_vec();
    wire.extend_from_slice(&(digest::crc32c(&b.0) ^ 0x1).to_le_bytes());
    within("send", bad.send_bytes(&wire)).await.unwrap();
    let seen = expect_closed(&mut bad).await;
    assert!(
        seen.is_empty(),
        "nothing answers a corrupt header: {seen:?}"
    );
    bystander_ok(&mut d, &mut by, 5).await;
}

#[tokio::test]
async fn bad_data_digest_is_rejected() {
    let (mut d, mut by) = setup().await;
    let mut o = opts(Some(T_MAIN));
    o.header_digest = true;
    o.data_digest = true;
    let mut bad = login_main_with(&d, &o).await;
    let payload = b"ping data";
    let b = nop_out(&bad, 12, payload.len());
    let mut wire = b.0.to_vec();
    wire.extend_from_slice(&digest::crc32c(&b.0).to_le_bytes());
    wire.extend_from_slice(payload);
    wire.resize(wire.len() + 3, 0); // pad 9 -> 12
    wire.extend_from_slice(&(digest::data_digest([&payload[..]]) ^ 0x100).to_le_bytes());
    within("send", bad.send_bytes(&wire)).await.unwrap();
    let p = recv(&mut bad).await;
    assert_reject(&p, 0x02, &b);
    // A NOP-Out's data can be dropped and the stream stays framed: the session goes on.
    assert_session_works(&mut bad, 6).await;
    bystander_ok(&mut d, &mut by, 7).await;
}

#[tokio::test]
async fn cmdsn_outside_window_is_ignored() {
    let (mut d, mut by) = setup().await;
    let mut s = login_main(&d).await;
    let mut b = scsi_command_bhs(&s, LUN_RAM, 0x4242, &test_unit_ready(), 0, 0);
    b.set_u32(24, s.cmdsn.wrapping_add(1_000_000));
    within("send", s.send_pdu(b, &[])).await.unwrap();
    expect_silence(&mut s, Duration::from_secs(2)).await;
    // The window did not move: the next in-window command runs.
    assert_good(&cmd(&mut s, LUN_RAM, &test_unit_ready(), None, 0).await);
    assert_session_works(&mut s, 8).await;
    bystander_ok(&mut d, &mut by, 9).await;
}

#[tokio::test]
async fn data_out_for_unknown_itt_is_ignored() {
    let (mut d, mut by) = setup().await;
    let mut s = login_main(&d).await;
    let mut b = Bhs::new(op::DATA_OUT);
    b.0[1] = 0x80;
    b.set_lun(lun(LUN_RAM));
    b.set_u32(16, 0xDEAD);
    b.set_u32(20, 5);
    b.set_u32(28, s.expstatsn);
    within("send", s.send_pdu(b, &[0xEE; 512])).await.unwrap();
    expect_silence(&mut s, Duration::from_secs(1)).await;
    assert_session_works(&mut s, 10).await;
    bystander_ok(&mut d, &mut by, 11).await;
}

#[tokio::test]
async fn garbage_before_login_closes_connection() {
    let (mut d, mut by) = setup().await;
    let mut raw = raw_connect(&d).await;
    let mut junk = pattern(200, 3);
    junk[0] = 0xFF; // opcode 3Fh with I: not a Login Request
    raw.write_all(&junk).await.unwrap();
    assert!(read_until_eof(&mut raw).await.is_empty());
    bystander_ok(&mut d, &mut by, 12).await;
}

#[tokio::test]
async fn scsi_command_on_discovery_session_is_rejected() {
    let (mut d, mut by) = setup().await;
    let mut disc = login_with(&d, &opts(None)).await;
    let b = scsi_command_bhs(&disc, 0, 0x77, &test_unit_ready(), 0, 0);
    within("send", disc.send_pdu(b, &[])).await.unwrap();
    let p = recv(&mut disc).await;
    assert_reject(&p, 0x04, &b);
    // Discovery goes on.
    let kv = within("SendTargets", disc.send_targets("All"))
        .await
        .unwrap();
    assert!(kv
        .iter()
        .any(|k| k.key == "TargetName" && k.value == T_MAIN));
    bystander_ok(&mut d, &mut by, 13).await;
}

#[tokio::test]
async fn a_command_reusing_the_itt_of_a_write_awaiting_data_is_rejected() {
    let (mut d, mut by) = setup().await;
    let mut o = opts(Some(T_MAIN));
    o.initial_r2t = true;
    o.immediate_data = false;
    let mut s = login_main_with(&d, &o).await;
    // WRITE(10) of 8 blocks: the target asks for its data with an R2T.
    let w = scsi_command_bhs(&s, LUN_RAM, 0x51, &write10(40, 8), 4096, 0);
    within("send", s.send_pdu(w, &[])).await.unwrap();
    s.cmdsn = s.cmdsn.wrapping_add(1);
    let r2t = within("r2t", s.recv_pdu()).await.unwrap();
    assert_eq!(r2t.bhs.opcode(), op::R2T);
    // Another command under the same ITT: Task in progress, and its CmdSN does not count.
    let dup = scsi_command_bhs(&s, LUN_RAM, 0x51, &test_unit_ready(), 0, 0);
    within("send", s.send_pdu(dup, &[])).await.unwrap();
    assert_reject(&within("reject", s.recv_pdu()).await.unwrap(), 0x07, &dup);
    // The waiting write completes with its data, and the unused CmdSN is the next one.
    let data = pattern(4096, 0x51);
    let mut out = Bhs::new(op::DATA_OUT);
    out.0[1] = 0x80;
    out.set_lun(lun(LUN_RAM));
    out.set_u32(16, 0x51);
    out.set_u32(20, r2t.bhs.u32_at(20));
    out.set_u32(28, s.expstatsn);
    within("data", s.send_pdu(out, &data)).await.unwrap();
    let status = within("status", s.recv_pdu()).await.unwrap();
    assert_eq!(
        (status.bhs.opcode(), status.bhs.0[3]),
        (op::SCSI_RESPONSE, 0)
    );
    s.expstatsn = status.bhs.u32_at(24).wrapping_add(1);
    assert_good(&cmd(&mut s, LUN_RAM, &test_unit_ready(), None, 0).await);
    assert_eq!(read_blocks(&mut s, LUN_RAM, 40, 512, 8).await, data);
    bystander_ok(&mut d, &mut by, 12).await;
}

#[tokio::test]
async fn a_ping_is_echoed_within_what_the_initiator_accepts() {
    let (mut d, mut by) = setup().await;
    let mut o = opts(Some(T_MAIN));
    o.max_recv_data_segment_length = 8192;
    let mut s = login_main_with(&d, &o).await;
    let ping = pattern(16384, 3);
    let echo = within("nop", s.nop(&ping)).await.unwrap();
    assert_eq!(echo, ping[..8192]);
    bystander_ok(&mut d, &mut by, 13).await;
}

#[tokio::test]
async fn closing_another_connection_id_is_cid_not_found() {
    let (mut d, mut by) = setup().await;
    let mut s = login_main(&d).await;
    let mut b = Bhs::new(op::LOGOUT_REQUEST | 0x40);
    b.0[1] = 0x80 | 1;
    b.set_u32(16, 0x77);
    b.0[20..22].copy_from_slice(&0x0505u16.to_be_bytes());
    b.set_u32(24, s.cmdsn);
    b.set_u32(28, s.expstatsn);
    within("send", s.send_pdu(b, &[])).await.unwrap();
    let r = within("logout response", s.recv_pdu()).await.unwrap();
    assert_eq!((r.bhs.opcode(), r.bhs.0[2]), (op::LOGOUT_RESPONSE, 1));
    s.expstatsn = r.bhs.u32_at(24).wrapping_add(1);
    // The connection carries on.
    assert_session_works(&mut s, 14).await;
    bystander_ok(&mut d, &mut by, 15).await;
}

#[tokio::test]
async fn immediate_commands_past_the_allowance_are_rejected() {
    let (mut d, mut by) = setup().await;
    let mut o = opts(Some(T_MAIN));
    o.initial_r2t = true;
    o.immediate_data = false;
    let mut s = login_main_with(&d, &o).await;
    // Immediate WRITEs waiting for their data hold a place each; the window's 128 plus the
    // allowance of 8 are taken, the next is "too many immediate commands" (0x06).
    for itt in 0..136u32 {
        let mut w = scsi_command_bhs(&s, LUN_RAM, 0x1000 + itt, &write10(itt, 1), 512, 0);
        w.0[0] |= 0x40;
        within("send", s.send_pdu(w, &[])).await.unwrap();
        let r2t = within("r2t", s.recv_pdu()).await.unwrap();
        assert_eq!(r2t.bhs.opcode(), op::R2T, "immediate write {itt}");
    }
    let mut w = scsi_command_bhs(&s, LUN_RAM, 0x2000, &write10(200, 1), 512, 0);
    w.0[0] |= 0x40;
    within("send", s.send_pdu(w, &[])).await.unwrap();
    assert_reject(&within("reject", s.recv_pdu()).await.unwrap(), 0x06, &w);
    // An immediate ping still goes through.
    assert_eq!(within("nop", s.nop(b"imm")).await.unwrap(), b"imm");
    bystander_ok(&mut d, &mut by, 16).await;
}
