//! Target NOP-In pings: an initiator that never answers loses its connection, one that
//! answers keeps it.

mod common;

use common::*;
use std::time::{Duration, Instant};
use vvold::iscsi::pdu::op;

const PINGS: &str = "nop_interval_secs = 1\nnop_timeout_secs = 1";

#[tokio::test]
async fn unanswered_pings_drop_the_connection() {
    let d = Daemon::start_with(PINGS);
    let mut s = login_main(&d).await;
    let seen = within_for(
        Duration::from_secs(20),
        "the unanswered connection to be dropped",
        expect_closed(&mut s),
    )
    .await;
    assert!(!seen.is_empty(), "the target pinged before dropping us");
    for p in &seen {
        assert_eq!(p.bhs.opcode(), op::NOP_IN, "{:?}", p.bhs);
        assert_eq!(p.bhs.u32_at(16), 0xFFFF_FFFF, "a ping has the reserved ITT");
        assert_ne!(
            p.bhs.u32_at(20),
            0xFFFF_FFFF,
            "a ping asks for an answer (TTT)"
        );
    }
    wait_for_log(&d, "NOP-In ping unanswered");
}

#[tokio::test]
async fn answered_pings_keep_the_connection() {
    let d = Daemon::start_with(PINGS);
    let mut s = login_main(&d).await;
    let start = Instant::now();
    let mut answered = 0;
    while start.elapsed() < Duration::from_secs(6) {
        match tokio::time::timeout(Duration::from_millis(500), s.recv_pdu()).await {
            Err(_) => continue,
            Ok(Ok(p)) => {
                assert_eq!(p.bhs.opcode(), op::NOP_IN, "{:?}", p.bhs);
                answer_ping(&mut s, &p).await;
                answered += 1;
            }
            Ok(Err(e)) => panic!("connection lost after {answered} answered pings: {e}"),
        }
    }
    assert!(answered >= 2, "expected repeated pings, got {answered}");
    assert_session_works(&mut s, 1).await;
}

#[tokio::test]
async fn pings_disabled_keep_idle_connections() {
    // nop_interval_secs = 0 means "never ping": the pinger has nothing to do, which must not
    // read as a dead connection.
    let d = Daemon::start_with("nop_interval_secs = 0");
    let mut s = login_main(&d).await;
    expect_silence(&mut s, Duration::from_secs(3)).await;
    assert_session_works(&mut s, 1).await;
    assert!(!d.log_text().contains("NOP-In ping unanswered"));
}

#[tokio::test]
async fn a_peer_silent_in_the_middle_of_a_pdu_is_dropped_too() {
    let d = Daemon::start_with(PINGS);
    let mut s = login_main(&d).await;
    // A WRITE header announcing 4 KiB of immediate data, 100 bytes of it, then nothing: the
    // target is left reading the rest of the segment.
    let b = scsi_command_bhs(&s, LUN_RAM, 0x99, &write10(0, 8), 4096, 0);
    let mut b = b;
    b.set_data_segment_len(4096);
    let mut bytes = b.0.to_vec();
    bytes.extend_from_slice(&[0xAB; 100]);
    within("send", s.send_bytes(&bytes)).await.unwrap();
    within_for(
        Duration::from_secs(20),
        "the connection silent mid-PDU to be dropped",
        expect_closed(&mut s),
    )
    .await;
    wait_for_log(&d, "NOP-In ping unanswered");
}
