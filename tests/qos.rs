//! Per-volume I/O control through the real daemon: limits set live through the API and
//! vvolctl (validated, kept across restarts), one cap shared by every session of a volume,
//! and the telemetry at /api/v1/qos, /metrics and `vvolctl top`. The rate figures (A1, A3,
//! A4, A5, A9) are measured by `scripts/qos-check.sh`; here only bounds that no correct
//! implementation can miss are checked.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};
use vvold::control::model::{QosReport, VvolInfo};

const RATED: &str = "rated";

fn rated_container() -> VvolOpts {
    VvolOpts {
        extra: format!(
            r#"
[[container]]
name = "{RATED}"
backend = "rated"
capacity = "1GiB"
default_upper_iops = 500
default_lower_iops = 50
rated_iops = 2000
rated_latency_us = 500
"#
        ),
        ..VvolOpts::default()
    }
}

fn vvolctl(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vvolctl"))
        .arg("--url")
        .arg(d.api_url())
        .args(args)
        .output()
        .expect("run vvolctl")
}

fn qos_report(api: &Api) -> QosReport {
    api.get("/qos").expect(200)
}

/// Keep one READ(10) of a block outstanding on `lun` for `secs`; completions.
async fn read_loop(s: &mut vvold::initiator::Session, lun: vvold::scsi::Lun, secs: f64) -> u64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0;
    while Instant::now() < end {
        let r = cmd_lun(s, lun, &[0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0], None, 512).await;
        assert_good(&r);
        n += 1;
    }
    n
}

#[tokio::test]
async fn one_cap_for_every_session_of_a_lun_set_live_and_kept() {
    let mut d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let path = format!("/targets/{T_VVOL}/luns/0/limits");
    // Validation: range, lower below upper, weight; unknown LUNs.
    let e = api
        .put(&path, serde_json::json!({"upper": 5}))
        .expect_error(422);
    assert!(e.contains("outside 10..=1000000"), "{e}");
    let e = api
        .put(&path, serde_json::json!({"upper": 100, "lower": 100}))
        .expect_error(422);
    assert!(e.contains("below upper"), "{e}");
    api.put(
        &format!("/targets/{T_VVOL}/luns/9/limits"),
        serde_json::json!({}),
    )
    .expect_error(404);
    api.put(&path, serde_json::json!({"upper": 100}))
        .expect::<serde_json::Value>(200);

    // Two sessions (two paths of one host) reading as fast as they can.
    let mut a = login_host(&d, "iqn.2026-11.io.vvold.test:host-a").await;
    let mut o = host_opts("iqn.2026-11.io.vvold.test:host-a");
    o.isid[5] = 2;
    let mut b = login_host_with(&d, &o).await;
    let t = Instant::now();
    let (na, nb) = within("capped reads", async {
        tokio::join!(
            read_loop(&mut a, lun(0), 2.0),
            read_loop(&mut b, lun(0), 2.0)
        )
    })
    .await;
    let secs = t.elapsed().as_secs_f64();
    let total = (na + nb) as f64;
    // One cap of 100 IOPS plus a 5 ms burst, not two caps.
    assert!(total <= 100.0 * secs + 8.0, "{na} + {nb} in {secs:.2} s");
    assert!(
        total >= 50.0 * secs,
        "{na} + {nb} in {secs:.2} s: the cap starves I/O"
    );
    let report = qos_report(&api);
    let lun0 = report
        .volumes
        .iter()
        .find(|v| v.name == format!("lun:{T_VVOL}/0"))
        .expect("LUN 0 is under QoS");
    assert_eq!(lun0.limits.upper, Some(100));
    assert!(lun0.capped > 0 && lun0.throttled_seconds > 0.0, "{lun0:?}");
    assert_eq!(lun0.reads, na + nb);

    // The limit survives a restart.
    drop((a, b));
    d.restart();
    let api = Api::of(&d);
    let report = qos_report(&api);
    let lun0 = report
        .volumes
        .iter()
        .find(|v| v.name == format!("lun:{T_VVOL}/0"))
        .unwrap();
    assert_eq!(lun0.limits.upper, Some(100));
}

#[tokio::test]
async fn vvol_limits_default_per_container_change_live_and_show_in_telemetry() {
    let d = Daemon::start_vvol(rated_container());
    let api = Api::of(&d);
    let v: VvolInfo = api
        .post(
            "/vvols",
            serde_json::json!({"container": RATED, "size": "64MiB"}),
        )
        .expect(201);
    assert_eq!((v.limits.upper, v.limits.lower), (Some(500), Some(50)));
    let id = v.id.to_string();

    let out = vvolctl(&d, &["qos", "set", &id, "--upper", "1000", "--weight", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = api.vvol(v.id);
    assert_eq!(
        (v.limits.upper, v.limits.lower, v.limits.weight),
        (Some(1000), Some(50), Some(3))
    );
    // `vvol limits` changes only what it is given, too.
    let out = vvolctl(&d, &["vvol", "limits", &id, "--lower", "60"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l = api.vvol(v.id).limits;
    assert_eq!(
        (l.upper, l.lower, l.weight),
        (Some(1000), Some(60), Some(3))
    );
    let out = vvolctl(&d, &["qos", "set", &id, "--lower", "none"]);
    assert!(out.status.success());
    assert_eq!(api.vvol(v.id).limits.lower, None);
    let out = vvolctl(&d, &["qos", "set", &id, "--upper", "5"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("outside"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = vvolctl(&d, &["qos", "set", &id, "--lower", "2000"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("below upper"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // I/O on the bound VVol is counted on it, in its container's pool.
    let host = "iqn.2026-11.io.vvold.test:host-q";
    let b = api.bind(v.id, host, None);
    let mut s = login_host(&d, host).await;
    let l = binding_lun(&b);
    clear_power_on_ua_at(&mut s, l).await;
    let n = within("reads", read_loop(&mut s, l, 1.2)).await;
    assert!(n > 0);
    // Let the telemetry close a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = qos_report(&api);
    let vol = r
        .volumes
        .iter()
        .find(|x| x.vvol == Some(v.id))
        .expect("the VVol is in the report");
    assert_eq!(vol.pool, RATED);
    assert_eq!(vol.reads, n);
    assert!(
        vol.window_10s.iops > 0.0 && vol.window_10s.latency_us.p50 > 0.0,
        "{vol:?}"
    );
    let pool = r.pools.iter().find(|p| p.name == RATED).unwrap();
    assert_eq!(pool.capacity, Some(2000));

    let text = ureq::get(&format!("{}/metrics", d.api_url()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        text.contains(&format!(
            "vvold_qos_ios_total{{volume=\"vvol:{id}\",pool=\"{RATED}\",op=\"read\"}} {n}"
        )),
        "{text}"
    );
    let out = vvolctl(&d, &["top", "--count", "1"]);
    let top = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && top.contains(&id) && top.contains("CAPACITY"),
        "{top}"
    );
}

/// A RAM VVol bound for a host and capped at 10 IOPS, the NAAs of it and of LUN 0, and the
/// host's session: copies out of it take about 1.5 s per 16 MiB.
struct CappedCopy {
    d: Daemon,
    v: VvolInfo,
    s: vvold::initiator::Session,
    /// The capped VVol's LUN.
    capped: vvold::scsi::Lun,
    from: [u8; 16],
    to: [u8; 16],
}

async fn capped_copy() -> CappedCopy {
    let d = Daemon::start_vvol(VvolOpts::default());
    let api = Api::of(&d);
    let host = "iqn.2026-11.io.vvold.test:host-x";
    let v = api.create_vvol(C_RAM, 32 << 20);
    let b = api.bind(v.id, host, None);
    let mut s = login_host(&d, host).await;
    let capped = binding_lun(&b);
    clear_power_on_ua_at(&mut s, capped).await;
    let (from, to) = (naa_at(&mut s, capped).await, naa_at(&mut s, lun(0)).await);
    api.put(
        &format!("/vvols/{}/limits", v.id),
        serde_json::json!({"upper": 10}),
    )
    .expect::<serde_json::Value>(200);
    CappedCopy {
        d,
        v,
        s,
        capped,
        from,
        to,
    }
}

#[tokio::test]
async fn an_aborted_copy_frees_its_list_identifier() {
    let CappedCopy {
        d,
        v,
        mut s,
        capped,
        from,
        to,
    } = capped_copy().await;
    // A 4 MiB read (128 units of 32 KiB) puts the cap 12.8 s in debt, so a copy sent to the
    // capped VVol after it waits at admission; it is aborted while it waits.
    let read = [0x28, 0, 0, 0, 0, 0, 0, 0x20, 0, 0];
    let mut bhs = scsi_command_bhs(&s, 0, 0x7FF, &read, 0, 4 << 20);
    bhs.set_lun(capped);
    s.send_pdu(bhs, &[]).await.expect("send READ");
    s.cmdsn = s.cmdsn.wrapping_add(1);
    let list = || xcopy(9, &[cscd(&from), cscd(&to)], &[b2b(0, 1, 8, 0, 0)]);
    let (cdb, params) = list();
    let mut bhs = scsi_command_bhs(&s, 0, 0x801, &cdb, params.len() as u32, 0);
    bhs.set_lun(capped);
    s.send_pdu(bhs, &params).await.expect("send EXTENDED COPY");
    s.cmdsn = s.cmdsn.wrapping_add(1);
    // The cap lets the read through at once and then owes 12.8 s.
    loop {
        let p = recv(&mut s).await;
        assert_eq!(p.bhs.u32_at(16), 0x7FF, "only the read answers");
        if p.bhs.opcode() == vvold::iscsi::pdu::op::SCSI_RESPONSE || p.bhs.flags() & 0x01 != 0 {
            assert_eq!(p.bhs.0[3], GOOD);
            break;
        }
    }
    let answer = within("ABORT TASK", s.task_mgmt(1, capped, 0x801)).await;
    assert_eq!(answer.expect("TMF answer"), 0);
    Api::of(&d)
        .put(
            &format!("/vvols/{}/limits", v.id),
            serde_json::json!({"upper": 1000000}),
        )
        .expect::<serde_json::Value>(200);
    // List 9 never ran: its identifier is free, not "in progress" for good.
    let (cdb, params) = list();
    assert_good(
        &within(
            "copy 9 again",
            cmd_lun(&mut s, capped, &cdb, Some(&params), 0),
        )
        .await,
    );
}

#[tokio::test]
async fn a_list_identifier_in_use_is_refused_while_its_copy_runs() {
    let CappedCopy {
        d, mut s, from, to, ..
    } = capped_copy().await;
    let (cdb, list) = xcopy(7, &[cscd(&from), cscd(&to)], &[b2b(0, 1, 32768, 0, 0)]);
    for itt in [0x700, 0x701] {
        let bhs = scsi_command_bhs(&s, 0, itt, &cdb, list.len() as u32, 0);
        if let Err(e) = s.send_pdu(bhs, &list).await {
            panic!("send: {e}; log:\n{}", d.log_text());
        }
        s.cmdsn = s.cmdsn.wrapping_add(1);
    }
    // The second is refused at once (SPC-4: OPERATION IN PROGRESS); the first runs on.
    let p = recv(&mut s).await;
    assert_eq!((p.bhs.u32_at(16), p.bhs.0[3]), (0x701, CHECK_CONDITION));
    assert_eq!(
        (p.data[2 + 2] & 0x0F, p.data[2 + 12], p.data[2 + 13]),
        (5, 0, 0x16)
    );
    let p = recv(&mut s).await;
    assert_eq!((p.bhs.u32_at(16), p.bhs.0[3]), (0x700, GOOD));
    // Once it has ended, the identifier is free again.
    let r = within("copy again", cmd_lun(&mut s, lun(0), &cdb, Some(&list), 0)).await;
    assert_good(&r);
}

#[tokio::test]
async fn a_copy_sent_to_another_lu_pays_the_capped_vvols_cap() {
    let CappedCopy {
        d,
        v,
        mut s,
        from,
        to,
        ..
    } = capped_copy().await;
    // 16 MiB from the VVol capped at 10 IOPS to LUN 0, sent to LUN 0 (no limits). Copies cost
    // one unit per MiB, so the VVol's cap holds it for about 1.5 s (16 units, 2 of them the
    // burst); charged to LUN 0 alone, it would take milliseconds.
    let (cdb, list) = xcopy(1, &[cscd(&from), cscd(&to)], &[b2b(0, 1, 32768, 0, 0)]);
    let t = Instant::now();
    let r = within("capped copy", cmd_lun(&mut s, lun(0), &cdb, Some(&list), 0)).await;
    assert_good(&r);
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    // Raising the cap frees what is left at once.
    let (cdb, list) = xcopy(2, &[cscd(&from), cscd(&to)], &[b2b(0, 1, 32768, 0, 0)]);
    let copy = cmd_lun(&mut s, lun(0), &cdb, Some(&list), 0);
    let raise = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let api = Api::of(&d);
        tokio::task::spawn_blocking(move || {
            api.put(
                &format!("/vvols/{}/limits", v.id),
                serde_json::json!({"upper": 1000000}),
            )
            .expect::<serde_json::Value>(200)
        })
        .await
        .unwrap();
    };
    let t = Instant::now();
    let (r, _) = within("raised copy", async { tokio::join!(copy, raise) }).await;
    assert_good(&r);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
}
