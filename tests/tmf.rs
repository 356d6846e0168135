//! Task management: aborts, LUN and target resets, and the unit attentions they leave behind.

mod common;

use common::*;
use std::time::Duration;
use vvold::iscsi::pdu::{op, Bhs};

const ABORT_TASK: u8 = 1;
const LOGICAL_UNIT_RESET: u8 = 5;
const TARGET_WARM_RESET: u8 = 6;
const FUNCTION_COMPLETE: u8 = 0;
const TASK_DOES_NOT_EXIST: u8 = 1;
const LUN_DOES_NOT_EXIST: u8 = 2;

async fn tmf(s: &mut vvold::initiator::Session, f: u8, l: u16, itt: u32) -> u8 {
    within("task management", s.task_mgmt(f, lun(l), itt))
        .await
        .expect("task management response")
}

/// ABORT TASK on the RAM LUN naming the task's CmdSN as well.
async fn abort_at(s: &mut vvold::initiator::Session, itt: u32, refcmdsn: u32) -> u8 {
    within(
        "task management",
        s.task_mgmt_ref(ABORT_TASK, lun(LUN_RAM), itt, refcmdsn),
    )
    .await
    .expect("task management response")
}

#[tokio::test]
async fn abort_task_of_unknown_or_finished_itt_completes() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    assert_eq!(
        tmf(&mut s, ABORT_TASK, LUN_RAM, 0x1234_5678).await,
        FUNCTION_COMPLETE
    );
    // The ITT of a command that has already finished (the initiator numbers ITTs from 2).
    assert_good(&cmd(&mut s, LUN_RAM, &test_unit_ready(), None, 0).await);
    assert_eq!(tmf(&mut s, ABORT_TASK, LUN_RAM, 2).await, FUNCTION_COMPLETE);
    assert_session_works(&mut s, 1).await;
}

#[tokio::test]
async fn abort_of_a_finished_command_can_answer_as_rfc_7143_says() {
    let d = Daemon::start_with(r#"abort_finished_task = "task-does-not-exist""#);
    let mut s = login_main(&d).await;
    let refcmdsn = s.cmdsn;
    assert_good(&cmd(&mut s, LUN_RAM, &test_unit_ready(), None, 0).await);
    // A finished command: ITT 2 (the initiator's first, at login) with the CmdSN of the TEST
    // UNIT READY just answered; either names a task that is gone.
    assert_eq!(abort_at(&mut s, 2, refcmdsn).await, TASK_DOES_NOT_EXIST);
    // An ITT never used, RefCmdSN not behind the TMF's CmdSN: nothing to consider received.
    assert_eq!(
        tmf(&mut s, ABORT_TASK, LUN_RAM, 0x1234_5678).await,
        TASK_DOES_NOT_EXIST
    );
    assert_session_works(&mut s, 1).await;
}

#[tokio::test]
async fn abort_of_a_command_that_never_arrived_frees_its_cmdsn() {
    // A window of 4: left waiting for the missing CmdSN, it would close after 3 more commands.
    let d = Daemon::start_with("queue_depth = 4");
    let mut s = login_main(&d).await;
    let lost = s.cmdsn;
    s.cmdsn = s.cmdsn.wrapping_add(1);
    assert_good(&cmd(&mut s, LUN_RAM, &test_unit_ready(), None, 0).await);
    assert_eq!(abort_at(&mut s, 0x0BAD_0001, lost).await, FUNCTION_COMPLETE);
    for _ in 0..8 {
        assert_good(&cmd(&mut s, LUN_RAM, &test_unit_ready(), None, 0).await);
    }
}

#[tokio::test]
async fn lun_reset_leaves_bus_device_reset_unit_attention() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    assert_eq!(
        tmf(&mut s, LOGICAL_UNIT_RESET, LUN_RAM, 0xFFFF_FFFF).await,
        FUNCTION_COMPLETE
    );
    let r = cmd(&mut s, LUN_RAM, &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x06, 0x29, 0x03);
    assert_good(&cmd(&mut s, LUN_RAM, &test_unit_ready(), None, 0).await);
    // Other LUNs were not reset.
    assert_good(&cmd(&mut s, LUN_FILE, &test_unit_ready(), None, 0).await);
}

#[tokio::test]
async fn lun_reset_of_missing_lun() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    assert_eq!(
        tmf(&mut s, LOGICAL_UNIT_RESET, 9, 0xFFFF_FFFF).await,
        LUN_DOES_NOT_EXIST
    );
    assert_session_works(&mut s, 2).await;
}

#[tokio::test]
async fn abort_write_waiting_for_r2t_data() {
    let d = Daemon::start();
    let mut o = opts(Some(T_MAIN));
    o.initial_r2t = true;
    o.immediate_data = false;
    let mut s = login_main_with(&d, &o).await;
    let itt = 0x00AB_0001;
    let b = scsi_command_bhs(&s, LUN_RAM, itt, &write10(0, 8), 4096, 0);
    s.cmdsn = s.cmdsn.wrapping_add(1);
    within("send", s.send_pdu(b, &[])).await.unwrap();
    let r2t = recv(&mut s).await;
    assert_eq!(r2t.bhs.opcode(), op::R2T, "{:?}", r2t.bhs);
    assert_eq!(r2t.bhs.u32_at(16), itt);
    assert_eq!(r2t.bhs.u32_at(40), 0, "R2T buffer offset");
    assert_eq!(r2t.bhs.u32_at(44), 4096, "R2T desired length");
    // task_mgmt fails on any other PDU arriving first (e.g. a SCSI Response for `itt`).
    assert_eq!(
        tmf(&mut s, ABORT_TASK, LUN_RAM, itt).await,
        FUNCTION_COMPLETE
    );
    // Data for the aborted task arriving late is dropped.
    let mut dout = Bhs::new(op::DATA_OUT);
    dout.0[1] = 0x80;
    dout.set_lun(lun(LUN_RAM));
    dout.set_u32(16, itt);
    dout.set_u32(20, r2t.bhs.u32_at(20));
    dout.set_u32(28, s.expstatsn);
    within("send", s.send_pdu(dout, &pattern(4096, 9)))
        .await
        .unwrap();
    expect_silence(&mut s, Duration::from_secs(1)).await;
    // Nothing was written, and the window slot was released.
    assert_eq!(read_blocks(&mut s, LUN_RAM, 0, 512, 8).await, vec![0; 4096]);
    assert_session_works(&mut s, 3).await;
}

#[tokio::test]
async fn target_warm_reset_leaves_reset_unit_attention() {
    let d = Daemon::start();
    let mut s = login_main(&d).await;
    assert_eq!(
        tmf(&mut s, TARGET_WARM_RESET, 0, 0xFFFF_FFFF).await,
        FUNCTION_COMPLETE
    );
    for l in MAIN_LUNS {
        let r = cmd(&mut s, l, &test_unit_ready(), None, 0).await;
        assert_sense(&r, 0x06, 0x29, 0x02);
        assert_good(&cmd(&mut s, l, &test_unit_ready(), None, 0).await);
    }
}
