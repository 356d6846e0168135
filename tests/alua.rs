//! ALUA with two target port groups, one per portal: the daemon listens on two loopback
//! portals, group 1 (active/optimized) on the first and group 2 (active/non-optimized) on the
//! second. Each portal's target portal group tag is its group id, and the SCSI target port a
//! session reaches (VPD 83h) is the one of the portal it logged in through.

mod common;

use std::net::SocketAddr;

use common::*;

const T_PLAIN: &str = "iqn.2026-11.io.vvold.test:plain";

fn two_groups(p1: SocketAddr, p2: SocketAddr) -> String {
    format!(
        r#"
listen = ["{p1}", "{p2}"]

[[target]]
name = "{T_MAIN}"
port_groups = [
    {{ id = 1, state = "active-optimized", portals = ["{p1}"] }},
    {{ id = 2, state = "active-non-optimized", portals = ["{p2}"] }},
]

[[target.lun]]
id = 0
backend = "ram"
size = "1MiB"

[[target]]
name = "{T_PLAIN}"

[[target.lun]]
id = 0
backend = "ram"
size = "1MiB"
"#
    )
}

/// A session through portal `addr`; `isid_tail` keeps the sessions apart (the same ISID
/// would reinstate the other one).
async fn login_at(addr: SocketAddr, isid_tail: u8) -> vvold::initiator::Session {
    let mut o = opts(Some(T_MAIN));
    o.isid[5] = isid_tail;
    let mut s = within("login", vvold::initiator::Session::login(addr, &o))
        .await
        .expect("login");
    clear_power_on_ua(&mut s, 0).await;
    s
}

/// (relative target port id, target port group id) from VPD page 83h.
async fn vpd_ports(s: &mut vvold::initiator::Session) -> (u16, u16) {
    let r = cmd(s, 0, &inquiry(Some(0x83), 255), None, 255).await;
    assert_good(&r);
    let d = &r.data;
    assert_eq!(
        &d[24..28],
        &[0x51, 0x94, 0, 4],
        "relative target port designator"
    );
    assert_eq!(
        &d[32..36],
        &[0x51, 0x95, 0, 4],
        "target port group designator"
    );
    (
        u16::from_be_bytes([d[30], d[31]]),
        u16::from_be_bytes([d[38], d[39]]),
    )
}

#[tokio::test]
async fn two_port_groups_on_two_portals() {
    let d = Daemon::start_two_portals(two_groups);
    let (p1, p2) = (d.addr, d.addr2.unwrap());

    // SendTargets from either portal lists both portals, each with its group's tag; a
    // target without port groups is group 1 everywhere.
    for at in [p1, p2] {
        let mut s = within(
            "discovery login",
            vvold::initiator::Session::login(at, &opts(None)),
        )
        .await
        .expect("discovery login");
        let kv = within("SendTargets", s.send_targets("All")).await.unwrap();
        let addrs = |target: &str| -> Vec<String> {
            let i = kv
                .iter()
                .position(|k| k.key == "TargetName" && k.value == target)
                .unwrap_or_else(|| panic!("{target} in {kv:?}"));
            kv[i + 1..]
                .iter()
                .take_while(|k| k.key == "TargetAddress")
                .map(|k| k.value.clone())
                .collect()
        };
        let mut main = addrs(T_MAIN);
        main.sort();
        let mut want = vec![format!("{p1},1"), format!("{p2},2")];
        want.sort();
        assert_eq!(main, want, "{kv:?}");
        let mut plain = addrs(T_PLAIN);
        plain.sort();
        let mut want = vec![format!("{p1},1"), format!("{p2},1")];
        want.sort();
        assert_eq!(plain, want, "{kv:?}");
    }

    let mut s1 = login_at(p1, 1).await;
    let mut s2 = login_at(p2, 2).await;
    assert_eq!(s1.target_portal_group_tag, Some(1));
    assert_eq!(s2.target_portal_group_tag, Some(2));

    // Each session sees the target port of its own portal.
    assert_eq!(vpd_ports(&mut s1).await, (1, 1));
    assert_eq!(vpd_ports(&mut s2).await, (2, 2));

    // REPORT TARGET PORT GROUPS lists both groups with their states from either session.
    let rtpg = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let want = [
        0, 0, 0, 24, // RETURN DATA LENGTH
        0x00, 0x03, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, // group 1, active/optimized, port 1
        0x01, 0x03, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, // group 2, active/non-optimized, port 2
    ];
    for s in [&mut s1, &mut s2] {
        let r = cmd(s, 0, &rtpg, None, 256).await;
        assert_good(&r);
        assert_eq!(r.data, want);
    }
    assert_eq!(within("logout", s1.logout()).await.unwrap(), 0);
    assert_eq!(within("logout", s2.logout()).await.unwrap(), 0);
}

#[test]
fn listen_override_must_fit_the_port_groups() {
    // The configured groups name two portals; a third one on the command line is in no group.
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, p3) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let config = dir.path().join("vvold.toml");
    std::fs::write(&config, two_groups(p1, p2)).unwrap();
    let out = run_bounded(
        {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_vvold"));
            c.arg("--config")
                .arg(&config)
                .arg("--listen")
                .arg(p3.to_string())
                .arg("--data-dir")
                .arg(dir.path().join("data"));
            c
        },
        std::time::Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("port_groups"),
        "{out:?}"
    );
}

#[tokio::test]
async fn one_isid_keeps_a_session_in_each_portal_group() {
    // A session is an I_T nexus: initiator name and ISID at one end, target name and portal
    // group at the other (RFC 7143 §4.4.3). An initiator port that logs in through both
    // groups with one ISID, as a multipathing host may, holds two sessions; neither
    // reinstates the other.
    let d = Daemon::start_two_portals(two_groups);
    let (p1, p2) = (d.addr, d.addr2.unwrap());
    let mut s1 = login_at(p1, 7).await;
    let mut s2 = login_at(p2, 7).await;
    for (s, port) in [(&mut s1, 1), (&mut s2, 2)] {
        assert_good(&cmd(s, 0, &test_unit_ready(), None, 0).await);
        assert_eq!(vpd_ports(s).await, (port, port));
    }
    // The same ISID through the same group again is a reinstatement: the first one ends.
    let mut s3 = login_at(p1, 7).await;
    assert_good(&cmd(&mut s3, 0, &test_unit_ready(), None, 0).await);
    expect_closed(&mut s1).await;
    assert_good(&cmd(&mut s2, 0, &test_unit_ready(), None, 0).await);
}
