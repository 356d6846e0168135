//! Login, discovery, authentication, digests and session identity against the real daemon.

mod common;

use common::*;
use vvold::initiator::InitiatorError;
use vvold::iscsi::pdu::{op, Bhs};

fn login_status(r: Result<vvold::initiator::Session, InitiatorError>) -> (u8, u8) {
    match r {
        Err(InitiatorError::LoginFailed { class, detail }) => (class, detail),
        Err(e) => panic!("expected a login failure status, got {e}"),
        Ok(_) => panic!("expected a login failure, but the login succeeded"),
    }
}

fn chap_opts(target: &str, secret: &str, algs: &str) -> vvold::initiator::LoginOptions {
    let mut o = opts(Some(target));
    o.chap = Some((CHAP_USER.into(), secret.into()));
    o.chap_algorithms = algs.into();
    o
}

#[tokio::test]
async fn discovery_send_targets_lists_targets_with_portal() {
    let d = Daemon::start();
    // The allow-listed target is shown only to the initiators it admits.
    for (initiator, visible) in [
        (INITIATOR, vec![T_MAIN, T_CHAP]),
        (ALLOWED_INITIATOR, vec![T_MAIN, T_CHAP, T_ACL]),
    ] {
        let o = vvold::initiator::LoginOptions::new(initiator, None);
        let mut s = login_with(&d, &o).await;
        let kv = within("SendTargets", s.send_targets("All")).await.unwrap();
        check_send_targets(&d, &kv, &visible);
        assert_eq!(within("logout", s.logout()).await.unwrap(), 0);
    }
}

fn check_send_targets(d: &Daemon, kv: &[vvold::iscsi::text::KeyValue], visible: &[&str]) {
    let names: Vec<&str> = kv
        .iter()
        .filter(|k| k.key == "TargetName")
        .map(|k| k.value.as_str())
        .collect();
    assert_eq!(names, visible, "{kv:?}");
    let portal = format!("127.0.0.1:{},1", d.addr.port());
    // Every target is followed by its TargetAddress.
    for (i, k) in kv.iter().enumerate().filter(|(_, k)| k.key == "TargetName") {
        let next = kv.get(i + 1).expect("TargetAddress after TargetName");
        assert_eq!(next.key, "TargetAddress", "{kv:?}");
        assert_eq!(next.value, portal, "address of {}", k.value);
    }
}

#[tokio::test]
async fn normal_login_and_io() {
    let d = Daemon::start();
    let mut s = login_with(&d, &opts(Some(T_MAIN))).await;
    clear_power_on_ua(&mut s, LUN_RAM).await;
    assert_eq!(within("nop", s.nop(b"ping")).await.unwrap(), b"ping");
    assert_eq!(within("logout", s.logout()).await.unwrap(), 0);
}

#[tokio::test]
async fn unknown_target_is_not_found() {
    let d = Daemon::start();
    let r = try_login(&d, &opts(Some("iqn.2026-11.io.vvold.test:nonesuch"))).await;
    assert_eq!(login_status(r), (0x02, 0x03));
}

#[tokio::test]
async fn initiator_not_on_allow_list_is_refused() {
    let d = Daemon::start();
    let r = try_login(&d, &opts(Some(T_ACL))).await;
    assert_eq!(login_status(r), (0x02, 0x02));
    let allowed = vvold::initiator::LoginOptions::new(ALLOWED_INITIATOR, Some(T_ACL));
    let mut s = login_with(&d, &allowed).await;
    clear_power_on_ua(&mut s, 0).await;
}

#[tokio::test]
async fn chap_md5_and_sha256() {
    let d = Daemon::start();
    for algs in ["5", "7"] {
        let mut s = login_with(&d, &chap_opts(T_CHAP, CHAP_SECRET, algs)).await;
        clear_power_on_ua(&mut s, 0).await;
        assert_eq!(within("logout", s.logout()).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn chap_target_without_credentials_is_refused() {
    let d = Daemon::start();
    let r = try_login(&d, &opts(Some(T_CHAP))).await;
    assert_eq!(login_status(r), (0x02, 0x01));
}

#[tokio::test]
async fn chap_wrong_secret_is_auth_failure() {
    let d = Daemon::start();
    for algs in ["5", "7"] {
        let r = try_login(&d, &chap_opts(T_CHAP, "not-the-right-secret", algs)).await;
        assert_eq!(login_status(r), (0x02, 0x01), "CHAP_A={algs}");
    }
}

#[tokio::test]
async fn mutual_chap_authenticates_the_target() {
    let d = Daemon::start();
    for algs in ["5", "7"] {
        let mut o = chap_opts(T_CHAP, CHAP_SECRET, algs);
        o.mutual_chap = Some((MUTUAL_USER.into(), MUTUAL_SECRET.into()));
        let mut s = login_with(&d, &o).await;
        clear_power_on_ua(&mut s, 0).await;
    }
    // An initiator expecting another target secret must notice the target's answer is wrong.
    let mut o = chap_opts(T_CHAP, CHAP_SECRET, "7");
    o.mutual_chap = Some((MUTUAL_USER.into(), "some-other-secret".into()));
    assert!(matches!(
        try_login(&d, &o).await,
        Err(InitiatorError::MutualAuthFailed)
    ));
}

#[tokio::test]
async fn discovery_sessions_take_mutual_chap() {
    let d = Daemon::start_with(&format!(
        "discovery_chap = {{ user = \"{CHAP_USER}\", secret = \"{CHAP_SECRET}\" }}\n\
         discovery_mutual_chap = {{ user = \"{MUTUAL_USER}\", secret = \"{MUTUAL_SECRET}\" }}"
    ));
    let mut o = chap_opts("", CHAP_SECRET, "7");
    o.target_name = None;
    o.mutual_chap = Some((MUTUAL_USER.into(), MUTUAL_SECRET.into()));
    let mut s = login_with(&d, &o).await;
    let kv = within("SendTargets", s.send_targets("All")).await.unwrap();
    assert!(
        kv.iter()
            .any(|k| k.key == "TargetName" && k.value == T_MAIN),
        "{kv:?}"
    );
    // A target answering with another secret is not the one the initiator trusts.
    o.mutual_chap = Some((MUTUAL_USER.into(), "some-other-secret".into()));
    assert!(matches!(
        try_login(&d, &o).await,
        Err(InitiatorError::MutualAuthFailed)
    ));
}

#[tokio::test]
async fn crc32c_digests_negotiated_and_io_works() {
    let d = Daemon::start();
    let mut o = opts(Some(T_MAIN));
    o.header_digest = true;
    o.data_digest = true;
    let mut s = login_with(&d, &o).await;
    let neg = |k: &str| {
        s.negotiated
            .iter()
            .find(|kv| kv.key == k)
            .map(|kv| kv.value.clone())
    };
    assert_eq!(neg("HeaderDigest").as_deref(), Some("CRC32C"));
    assert_eq!(neg("DataDigest").as_deref(), Some("CRC32C"));
    clear_power_on_ua(&mut s, LUN_RAM).await;
    let data = pattern(1 << 20, 11);
    write_blocks(&mut s, LUN_RAM, 100, 512, &data).await;
    assert_eq!(read_blocks(&mut s, LUN_RAM, 100, 512, 2048).await, data);
}

#[tokio::test]
async fn two_sessions_with_different_isids() {
    let d = Daemon::start();
    let mut o1 = opts(Some(T_MAIN));
    o1.isid = [0x80, 0, 0, 0, 0, 1];
    let mut o2 = o1.clone();
    o2.isid = [0x80, 0, 0, 0, 0, 2];
    let mut a = login_with(&d, &o1).await;
    let mut b = login_with(&d, &o2).await;
    clear_power_on_ua(&mut a, LUN_RAM).await;
    clear_power_on_ua(&mut b, LUN_RAM).await;
    let data = pattern(4096, 1);
    write_blocks(&mut a, LUN_RAM, 0, 512, &data).await;
    assert_eq!(read_blocks(&mut b, LUN_RAM, 0, 512, 8).await, data);
    let data2 = pattern(4096, 2);
    write_blocks(&mut b, LUN_RAM, 0, 512, &data2).await;
    assert_eq!(read_blocks(&mut a, LUN_RAM, 0, 512, 8).await, data2);
}

#[tokio::test]
async fn same_isid_reinstates_the_session() {
    let d = Daemon::start();
    let o = opts(Some(T_MAIN));
    let mut first = login_with(&d, &o).await;
    clear_power_on_ua(&mut first, LUN_RAM).await;
    let mut second = login_with(&d, &o).await;
    // The old connection is closed by the target (RFC 7143 §6.3.5 session reinstatement).
    expect_closed(&mut first).await;
    // The new session is a new nexus: it sees its own power-on UA, then works.
    clear_power_on_ua(&mut second, LUN_RAM).await;
    assert_eq!(within("nop", second.nop(b"x")).await.unwrap(), b"x");
}

#[tokio::test]
async fn a_second_connection_to_a_live_session_is_too_many() {
    let d = Daemon::start();
    let o = opts(Some(T_MAIN));
    let mut live = login_with(&d, &o).await;
    assert_ne!(live.tsih, 0);
    // The session is registered once its connection serves full feature PDUs: a ping answered
    // says it is (the final login response can reach us a moment before).
    assert_eq!(within("nop", live.nop(b"x")).await.unwrap(), b"x");
    // RFC 7143 §11.13.5: one connection per session here, so joining it is refused with
    // "too many connections", and the live session is left alone.
    let mut join = o.clone();
    join.tsih = live.tsih;
    assert_eq!(login_status(try_login(&d, &join).await), (0x02, 0x06));
    // A TSIH that names no session: "session does not exist".
    join.tsih = live.tsih.wrapping_add(100).max(1);
    assert_eq!(login_status(try_login(&d, &join).await), (0x02, 0x0a));
    // The same TSIH with another ISID names no session either.
    join.tsih = live.tsih;
    join.isid = [0x80, 0, 0, 0, 0, 9];
    assert_eq!(login_status(try_login(&d, &join).await), (0x02, 0x0a));
    assert_eq!(within("nop", live.nop(b"y")).await.unwrap(), b"y");
}

#[tokio::test]
async fn first_pdu_not_login_closes_connection() {
    let d = Daemon::start();
    let mut stream = raw_connect(&d).await;
    let mut b = Bhs::new(op::NOP_OUT | 0x40);
    b.0[1] = 0x80;
    b.set_u32(16, 1);
    b.set_u32(20, 0xFFFF_FFFF);
    use tokio::io::AsyncWriteExt;
    stream.write_all(&b.0).await.unwrap();
    let got = read_until_eof(&mut stream).await;
    assert!(
        got.is_empty(),
        "no answer expected, got {} bytes",
        got.len()
    );
}
